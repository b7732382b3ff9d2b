//! The command line's HTTP client (`status`, `failover`, `maintenance`): HTTPS trusting
//! `--ca-file` (or the system's roots), and the token from `--token-file`, never from the
//! command line itself, where `ps` would show it.

use pollux_transport::auth::{read_token_file, Secret};
use pollux_transport::ClientTls;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// CA certificates to trust for https:// URLs (default: the system's roots).
    #[arg(long, value_name = "FILE", env = "POLLUX_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the token to send: the admin token for failover and maintenance, any token
    /// for status (when the aggregators require one).
    #[arg(long, value_name = "FILE", env = "POLLUX_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

pub struct Client {
    pub agent: ureq::Agent,
    token: Option<Secret>,
}

impl ClientArgs {
    /// The client, or why the files cannot be used.
    pub fn client(&self, timeout: Duration) -> Result<Client, String> {
        let tls =
            ClientTls::load(self.ca_file.as_deref()).map_err(|e| format!("--{e}").replace("--ca_file", "--ca-file"))?;
        let token = match &self.token_file {
            Some(path) => Some(read_token_file("--token-file", path).map_err(|(k, p)| format!("{k} {p}"))?),
            None => None,
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .tls_config(tls.ureq())
                .http_status_as_error(false)
                // A failover or maintenance request answered with a redirect was not done: it
                // is said so, never followed with a GET whose 200 would read as done.
                .max_redirects(0)
                .build(),
        );
        Ok(Client { agent, token })
    }
}

/// `--url`: an `http://` or `https://` URL with a host (a clap value parser: anything else is a
/// usage error, exit 64).
pub fn parse_url(text: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} must be an http:// or https:// URL with a host"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// What a refusal says: a redirect names where it pointed (it is not followed).
pub fn refused(status: u16, headers: &ureq::http::HeaderMap, body: &serde_json::Value) -> String {
    if (300..400).contains(&status) {
        let to = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
        return format!("{status}: a redirect to {to}, not followed: give the proxy's or an aggregator's own URL");
    }
    format!("{status}: {}", body["error"].as_str().unwrap_or("refused"))
}

impl Client {
    /// A GET without the token: for open routes (`/health/active`) at URLs the servers name,
    /// which must never receive the token.
    pub fn get_open(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.agent.get(url)
    }

    pub fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = self.agent.get(url);
        match &self.token {
            Some(t) => request.header("Authorization", t.bearer()),
            None => request,
        }
    }

    pub fn post(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = self.agent.post(url);
        match &self.token {
            Some(t) => request.header("Authorization", t.bearer()),
            None => request,
        }
    }
}
