//! Forwarding: every request to the current active, bodies streamed, hop-by-hop headers dropped
//! and the HTTP version the proxy's own on each side (so its listener keeps each client's
//! connection as that client asked, HTTP/1.0 keep-alive included).

use crate::health::Backends;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pollux_transport::tls::Connector;
use pollux_transport::{ClientTls, ServerLimits, ServerTls, TimedBody};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, hyper::Error>;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How long the proxy keeps an idle connection to an aggregator: well below the aggregators'
/// own idle timeout, so a pooled connection is never reused just as the aggregator closes it.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// How long a request in flight to an active that has just been deposed may still take to be
/// answered before the proxy gives up on it with a 503. A frozen active never answers; one that
/// stepped down answers at once.
const DEPOSED_GRACE: Duration = Duration::from_secs(1);

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    upstream: &ClientTls,
    backends: Arc<Backends>,
    limits: ServerLimits,
    stop: CancellationToken,
) {
    let client: Client<Connector, TimedBody> =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(upstream.connector());
    let service = service_fn(move |req| {
        let (backends, client) = (backends.clone(), client.clone());
        async move { Ok::<_, Infallible>(handle(req, &backends, &client).await) }
    });
    pollux_transport::serve(listener, tls, service, limits, Arc::default(), stop).await;
}

async fn handle(req: Request<TimedBody>, backends: &Backends, client: &Client<Connector, TimedBody>) -> Response<Body> {
    if req.uri().path() == "/proxy/status" {
        if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
            let mut refused =
                json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "/proxy/status is read with GET"}));
            refused.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return refused;
        }
        return proxy_status(backends);
    }
    let Some(target) = backends.active() else {
        return unavailable("no aggregator is the ready active; retry shortly");
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: hyper::Uri = match format!("{target}{path}").parse() {
        Ok(u) => u,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, json!({"error": format!("bad request URI: {e}")})),
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    // The version, like the headers below, is the client's hop: the proxy speaks HTTP/1.1 to
    // the active whatever the client speaks, so its pooled connections are kept (an HTTP/1.0
    // request without keep-alive would make the active close each one).
    parts.version = hyper::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(hyper::header::HOST);
    let request = client.request(Request::from_parts(parts, body));
    tokio::pin!(request);
    let forwarded = tokio::select! {
        result = &mut request => result,
        _ = backends.deposed(&target) => match tokio::time::timeout(DEPOSED_GRACE, &mut request).await {
            // An answer already on its way (the planned switchover's own reply, a write the old
            // active finished as it stepped down) is still delivered.
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(%target, "the active changed while a request was in flight; answered 503");
                return unavailable("the active aggregator changed while this request was in flight; retry");
            }
        },
    };
    match forwarded {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            // The active's version and connection headers are about the proxy's connection to
            // it. Answered as HTTP/1.1, the listener downgrades to the client's version and
            // keeps the connection as the client asked (an HTTP/1.0 `Connection: keep-alive`
            // included); an HTTP/1.0 answer without `Connection: keep-alive` would close it.
            parts.version = hyper::Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            // The active died between two checks: take it out now. Other failures (a client
            // that aborted its upload, a pooled connection closed under us) say nothing about
            // the active, and the next health check decides.
            if e.is_connect() && !out_of_handles(&e) {
                backends.mark_down(&target, e.to_string());
            }
            if pollux_transport::is_body_timeout(&e) {
                // The client was too slow sending its body; the active is fine.
                return json_response(StatusCode::REQUEST_TIMEOUT, json!({"error": format!("body: {e}")}));
            }
            tracing::warn!(%target, error = %e, "forwarding failed");
            unavailable(&format!("the active aggregator at {target} did not answer; retry shortly"))
        }
    }
}

/// A connect that failed for want of file handles here says nothing about the active.
fn out_of_handles(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn unavailable(message: &str) -> Response<Body> {
    let mut response =
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": message, "role": "proxy", "active": null}));
    response.headers_mut().insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn proxy_status(backends: &Backends) -> Response<Body> {
    let list: Vec<_> = backends
        .snapshot()
        .into_iter()
        .map(|b| {
            json!({"url": b.url, "active": b.active, "epoch": b.epoch, "node": b.node, "error": b.error,
                   "checked_ms_ago": b.checked.map(|t| t.elapsed().as_millis() as u64)})
        })
        .collect();
    json_response(StatusCode::OK, json!({"active": backends.active(), "aggregators": list}))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "connect failed")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Only this process running out of file handles spares the active; any other connect
    /// failure takes it out.
    #[test]
    fn only_our_own_handle_shortage_spares_the_active() {
        let emfile = Wrapped(std::io::Error::from_raw_os_error(nix::libc::EMFILE));
        let refused = Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(out_of_handles(&emfile));
        assert!(out_of_handles(&Wrapped(std::io::Error::from_raw_os_error(nix::libc::ENFILE))));
        assert!(!out_of_handles(&refused));
    }
}
