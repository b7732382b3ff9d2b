//! The health checker: which aggregator is the ready active, checked every `check_interval`.
//!
//! Each aggregator's `GET /health/active` answers 200 only on the ready active whose
//! acknowledgement window is open. During a takeover two may answer 200 for a moment (the old
//! one has not noticed yet); the proxy then prefers the higher epoch.

use crate::config::ProxyConfig;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::RwLock;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct BackendState {
    pub url: String,
    pub active: bool,
    pub epoch: u64,
    pub node: Option<String>,
    pub checked: Option<Instant>,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Backends {
    states: RwLock<Vec<BackendState>>,
    /// The current active's URL, for requests in flight to notice when it changes.
    active_tx: tokio::sync::watch::Sender<Option<String>>,
}

impl Backends {
    pub fn new(config: &ProxyConfig) -> Backends {
        let states = config
            .aggregators
            .iter()
            .map(|url| BackendState {
                url: url.clone(),
                active: false,
                epoch: 0,
                node: None,
                checked: None,
                error: None,
            })
            .collect();
        let (active_tx, _) = tokio::sync::watch::channel(None);
        Backends { states: RwLock::new(states), active_tx }
    }

    /// Resolves when `url` is no longer the active: a request forwarded to an active that froze
    /// is answered 503 then, instead of hanging until the old active resumes.
    pub async fn deposed(&self, url: &str) {
        let mut rx = self.active_tx.subscribe();
        let _ = rx.wait_for(|active| active.as_deref() != Some(url)).await;
    }

    fn publish_active(&self) {
        let active = self.active();
        self.active_tx.send_if_modified(|current| {
            let changed = *current != active;
            *current = active;
            changed
        });
    }

    /// The URL of the ready active with the highest epoch.
    pub fn active(&self) -> Option<String> {
        let states = self.states.read().expect("backends");
        states.iter().filter(|b| b.active).max_by_key(|b| b.epoch).map(|b| b.url.clone())
    }

    /// Marks a backend down at once when a forwarded request could not reach it.
    pub fn mark_down(&self, url: &str, error: String) {
        {
            let mut states = self.states.write().expect("backends");
            if let Some(b) = states.iter_mut().find(|b| b.url == url) {
                b.active = false;
                b.error = Some(error);
            }
        }
        self.publish_active();
    }

    pub fn snapshot(&self) -> Vec<BackendState> {
        self.states.read().expect("backends").clone()
    }

    fn update(&self, index: usize, next: BackendState) {
        {
            let mut states = self.states.write().expect("backends");
            let was = states[index].active;
            if was != next.active {
                tracing::info!(url = %next.url, epoch = next.epoch, active = next.active, "backend changed");
            }
            states[index] = next;
        }
        self.publish_active();
    }
}

pub async fn run(
    backends: std::sync::Arc<Backends>,
    config: ProxyConfig,
    tls: pollux_transport::ClientTls,
    stop: CancellationToken,
) {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(tls.connector());
    let mut tick = tokio::time::interval(config.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let checks = config.aggregators.iter().enumerate().map(|(i, url)| {
            let client = client.clone();
            let url = url.clone();
            let timeout = config.check_timeout;
            async move {
                let result = tokio::time::timeout(timeout, check(&client, &url)).await;
                let state = match result {
                    Ok(Ok((active, epoch, node))) => {
                        BackendState { url, active, epoch, node, checked: Some(Instant::now()), error: None }
                    }
                    Ok(Err(e)) => down(url, e),
                    Err(_) => down(url, format!("no answer within {timeout:?}")),
                };
                (i, state)
            }
        });
        for (i, state) in futures_join(checks).await {
            backends.update(i, state);
        }
    }
}

fn down(url: String, error: String) -> BackendState {
    BackendState { url, active: false, epoch: 0, node: None, checked: Some(Instant::now()), error: Some(error) }
}

async fn check(
    client: &Client<pollux_transport::tls::Connector, Empty<bytes::Bytes>>,
    url: &str,
) -> Result<(bool, u64, Option<String>), String> {
    let uri: hyper::Uri = format!("{url}/health/active").parse().map_err(|e| format!("{e}"))?;
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    let active = response.status() == hyper::StatusCode::OK;
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    // A login page or another service answering where an aggregator should be is not one.
    let health: pollux_model::wire::Health = serde_json::from_slice(&body)
        .ok()
        .filter(|h: &pollux_model::wire::Health| !h.node.is_empty())
        .ok_or_else(|| format!("{url}/health/active did not answer as a Pollux aggregator"))?;
    Ok((active, health.epoch, Some(health.node)))
}

/// Runs the checks concurrently (one per aggregator: a handful) without another dependency.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
