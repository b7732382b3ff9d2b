//! The notifier: delivers the outbox to Alertmanager and webhooks, on the active only.
//!
//! ```text
//!   load transaction ──▶ outbox (events opened / cleared) ──▶ notifier worker
//!                                                              │ per receiver, in order:
//!                                                              │ POST a batch, then record
//!                                                              ▼ delivered(receiver, seq)
//! ```
//!
//! At least once: a batch is recorded delivered only after the receiver answered 2xx to the POST
//! itself (redirects are never followed: a 3xx is a failure that names where it pointed), so a
//! crash or a takeover in between sends it again, with the same event ids, from the new active.
//! The record is a repository write with the epoch: a deposed active is fenced at its next one,
//! and sends nothing after its successor claimed the repository. Each receiver is a worker of
//! its own with its own place in the outbox, so one that is down, slow or hanging holds back
//! only itself (every post has the `notify.timeout` deadline; an answer's body is never read);
//! it is retried with backoff (1 s doubling to 1 min). Open events are sent to Alertmanager
//! again every `resend_interval`, so it never resolves them on its own while they are open.

use super::term::{Term, Wake};
use super::worker::{Worker, WorkerState};
use crate::config::NotifyConfig;
use crate::metrics::Metrics;
use crate::node::Node;
use pollux_model::wire::{ReceiverKind as Kind, ReceiverStatus};
use pollux_repository::{Epoch, Event, EventFilter, EventState, OutboxEntry, RepoError, Repository};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Notifications sent in one POST.
const BATCH: usize = 200;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Longest sleep with nothing to do; a load that opens or clears an event wakes the notifier.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The receivers' figures, shared with the HTTP handlers.
#[derive(Debug, Default)]
pub struct NotifyHealth {
    receivers: Mutex<Vec<ReceiverStatus>>,
}

impl NotifyHealth {
    pub fn new(config: &NotifyConfig) -> NotifyHealth {
        let receivers = receivers(config)
            .into_iter()
            .map(|(kind, url)| ReceiverStatus {
                kind,
                url: redact(&url),
                delivered: 0,
                failures: 0,
                last_ok_ms: None,
                last_error_ms: None,
                last_error: None,
            })
            .collect();
        NotifyHealth { receivers: Mutex::new(receivers) }
    }

    pub fn receivers(&self) -> Vec<ReceiverStatus> {
        self.receivers.lock().expect("notify health").clone()
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut ReceiverStatus)) {
        if let Some(r) = self.receivers.lock().expect("notify health").get_mut(index) {
            f(r);
        }
    }
}

/// A URL as the status shows it: without `user:password@`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

fn receivers(config: &NotifyConfig) -> Vec<(Kind, String)> {
    let am = config.alertmanager.iter().map(|r| (Kind::Alertmanager, r.url.trim_end_matches('/').to_owned()));
    let hooks = config.webhook.iter().map(|r| (Kind::Webhook, r.url.clone()));
    am.chain(hooks).collect()
}

/// A receiver's name in the repository's cursor table.
fn cursor_name(kind: Kind, url: &str) -> String {
    match kind {
        Kind::Alertmanager => format!("alertmanager {url}"),
        Kind::Webhook => format!("webhook {url}"),
    }
}

struct Receiver {
    index: usize,
    kind: Kind,
    url: String,
    cursor: String,
    next_try: Instant,
    backoff: Duration,
}

/// What the notifiers work with.
#[derive(Clone)]
pub struct NotifierParts {
    pub repo: Arc<dyn Repository>,
    /// Whether this node is still the ready active of the term's epoch, checked before every
    /// post; and its URL, for the links in notifications.
    pub node: Arc<Node>,
    pub config: NotifyConfig,
    pub client_tls: pollux_transport::ClientTls,
    pub health: Arc<NotifyHealth>,
    pub metrics: Arc<Metrics>,
    /// One per receiver (at least one): a load that opened or cleared an event wakes them all.
    pub wakes: Vec<Arc<Wake>>,
}

impl NotifierParts {
    /// The wakes one per receiver, for the parts' builder.
    pub fn wakes_for(config: &NotifyConfig) -> Vec<Arc<Wake>> {
        (0..receivers(config).len().max(1)).map(|_| Arc::default()).collect()
    }
}

/// The notifier of one receiver for one term; without receivers, the one that keeps the outbox
/// empty.
pub struct Notifier {
    parts: NotifierParts,
    receiver: Option<Receiver>,
    /// Every receiver's place: an entry leaves the outbox once all have had it.
    cursors: Vec<String>,
    agent: ureq::Agent,
    /// A new active sends the open events at once: its predecessor's last resend may be old.
    last_resend: Option<Instant>,
    wake: Arc<Wake>,
}

impl Notifier {
    /// The notifiers of a term: one per receiver, or one that keeps the outbox empty.
    pub fn all(parts: &NotifierParts) -> Vec<Notifier> {
        let receivers: Vec<Receiver> = receivers(&parts.config)
            .into_iter()
            .enumerate()
            .map(|(index, (kind, url))| Receiver {
                index,
                kind,
                cursor: cursor_name(kind, &url),
                url,
                next_try: Instant::now(),
                backoff: FIRST_RETRY,
            })
            .collect();
        let cursors: Vec<String> = receivers.iter().map(|r| r.cursor.clone()).collect();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(parts.config.timeout))
            .tls_config(parts.client_tls.ureq())
            .http_status_as_error(false)
            // Only a 2xx to the POST itself delivers: a redirect (an http->https front end, a
            // login page) is a failure to fix, never a GET whose 200 would count as delivered.
            .max_redirects(0)
            .user_agent(concat!("pollux/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let notifier = |receiver: Option<Receiver>, wake: &Arc<Wake>| Notifier {
            parts: parts.clone(),
            receiver,
            cursors: cursors.clone(),
            agent: agent.clone(),
            last_resend: None,
            wake: wake.clone(),
        };
        if receivers.is_empty() {
            return vec![notifier(None, &parts.wakes[0])];
        }
        receivers.into_iter().zip(&parts.wakes).map(|(r, wake)| notifier(Some(r), wake)).collect()
    }
}

impl Worker for Notifier {
    fn name(&self) -> &'static str {
        "notifier"
    }

    fn label(&self) -> String {
        self.receiver
            .as_ref()
            .map_or("notifier".to_owned(), |r| format!("notifier {} {}", r.kind.name(), redact(&r.url)))
    }

    fn work(&mut self, term: &Term) -> Result<WorkerState, RepoError> {
        let epoch = term.epoch;
        let Some(r) = self.receiver.as_mut() else {
            // Nobody to tell: keep the outbox empty.
            self.parts.repo.delivered(epoch, None, &[])?;
            return Ok(WorkerState::Idle);
        };
        if r.next_try <= Instant::now() {
            deliver(&self.parts, &self.agent, epoch, r, &self.cursors)?;
        }
        if r.kind == Kind::Alertmanager
            && self.last_resend.is_none_or(|t| t.elapsed() >= self.parts.config.resend_interval)
        {
            resend_open(&self.parts, &self.agent, epoch, r)?;
            self.last_resend = Some(Instant::now());
        }
        Ok(WorkerState::Idle)
    }

    fn idle_wait(&self) -> Duration {
        let wait = self
            .receiver
            .as_ref()
            .map_or(IDLE_WAIT, |r| r.next_try.saturating_duration_since(Instant::now()).min(IDLE_WAIT));
        wait.max(Duration::from_millis(10))
    }

    fn wake(&self) -> Arc<Wake> {
        self.wake.clone()
    }
}

/// Sends what `r` has not had yet, batch by batch, until it is up to date or fails.
fn deliver(
    p: &NotifierParts,
    agent: &ureq::Agent,
    epoch: Epoch,
    r: &mut Receiver,
    cursors: &[String],
) -> Result<(), RepoError> {
    loop {
        let entries = p.repo.outbox(&r.cursor, BATCH)?;
        let Some(last) = entries.last().map(|e| e.seq) else { return Ok(()) };
        // A test parks the notifier here, batch in hand, and freezes the process past failwait.
        pollux_failpoint::hit("notify.before_post");
        // The delivery record is a fenced write, but the post goes first: a node deposed (or
        // frozen past failwait and resumed) must not post what its successor now delivers.
        if p.node.active_epoch() != Some(epoch) {
            r.next_try = Instant::now() + IDLE_WAIT;
            return Ok(());
        }
        let body = match r.kind {
            Kind::Alertmanager => Value::Array(entries.iter().map(|e| alert(p, &e.event)).collect()),
            Kind::Webhook => webhook_body(p, &entries),
        };
        match post(agent, r, &body) {
            Ok(()) => {
                p.repo.delivered(epoch, Some((&r.cursor, last)), cursors)?;
                Metrics::add(&p.metrics.notifications_sent, entries.len() as u64);
                r.backoff = FIRST_RETRY;
                p.health.update(r.index, |s| {
                    s.delivered += entries.len() as u64;
                    s.last_ok_ms = Some(crate::unix_now_ms());
                });
            }
            Err(problem) => {
                failed(p, r, problem);
                return Ok(());
            }
        }
    }
}

/// Sends every open event to an Alertmanager again.
fn resend_open(p: &NotifierParts, agent: &ureq::Agent, epoch: Epoch, r: &mut Receiver) -> Result<(), RepoError> {
    if r.next_try > Instant::now() {
        return Ok(());
    }
    let mut open = Vec::new();
    loop {
        let filter =
            EventFilter { state: Some(EventState::Open), limit: 10_000, offset: open.len(), ..EventFilter::default() };
        let page = p.repo.events(&filter)?;
        let done = page.len() < filter.limit;
        open.extend(page);
        if done {
            break;
        }
    }
    for chunk in open.chunks(BATCH) {
        // A resend is a read, not a fenced write: a node deposed (or frozen and resumed)
        // meanwhile must not post an open alert after its successor sent the clear.
        if p.node.active_epoch() != Some(epoch) {
            return Ok(());
        }
        let body = Value::Array(chunk.iter().map(|e| alert(p, e)).collect());
        if let Err(problem) = post(agent, r, &body) {
            failed(p, r, problem);
            break;
        }
    }
    Ok(())
}

fn failed(p: &NotifierParts, r: &mut Receiver, problem: String) {
    tracing::warn!(receiver = %r.url, retry_in = ?r.backoff, %problem, "notification not delivered; kept in the outbox");
    Metrics::add(&p.metrics.notification_failures, 1);
    r.next_try = Instant::now() + r.backoff;
    r.backoff = (r.backoff * 2).min(MAX_RETRY);
    p.health.update(r.index, |s| {
        s.failures += 1;
        s.last_error_ms = Some(crate::unix_now_ms());
        s.last_error = Some(problem);
    });
}

fn post(agent: &ureq::Agent, r: &Receiver, body: &Value) -> Result<(), String> {
    let url = match r.kind {
        Kind::Alertmanager => format!("{}/api/v2/alerts", r.url),
        Kind::Webhook => r.url.clone(),
    };
    match agent.post(&url).send_json(body) {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) if response.status().is_redirection() => {
            let to = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
            Err(format!(
                "{url} answered {} redirect to {to}: not delivered (redirects are not followed; set the receiver's url to where it points)",
                response.status()
            ))
        }
        Ok(response) => Err(format!("{url} answered {}", response.status())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// An Alertmanager alert (API v2 `postableAlert`). The event id is a label, so each event is
/// its own alert and a resend is recognised as the same one.
fn alert(p: &NotifierParts, e: &Event) -> Value {
    let ends_at = match e.cleared_at {
        // Cleared, even if this is its opening sent late: never revive a resolved alert.
        Some(at) => at,
        // Open: valid a while beyond the next resend, so Alertmanager keeps it active.
        None => crate::unix_now() + 4 * p.config.resend_interval.as_secs() as i64,
    };
    json!({
        "labels": {
            "alertname": e.rule_name,
            "device": e.device,
            "item": e.item,
            "family": e.family,
            "metric": e.metric,
            "severity": e.severity.name(),
            "event_id": e.id.to_string(),
        },
        "annotations": {
            "summary": format!("{} {} {} on {} {}", e.metric, e.op, e.threshold, e.device, e.item),
            "value": e.value.to_string(),
            "peak": e.peak.to_string(),
            "threshold": format!("{} {}", e.op, e.threshold),
        },
        "startsAt": rfc3339(e.opened_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": format!("{}/api/v1/events?rule={}", p.node.advertise, e.rule),
    })
}

fn webhook_body(p: &NotifierParts, entries: &[OutboxEntry]) -> Value {
    let notifications: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "event_id": e.event.id,
                "transition": match e.transition { EventState::Open => "open", EventState::Cleared => "clear" },
                "event": e.event,
            })
        })
        .collect();
    json!({ "source": p.node.advertise, "notifications": notifications })
}

/// Unix seconds as RFC 3339 UTC (`2026-12-02T01:30:00Z`).
pub fn rfc3339(ts: i64) -> String {
    let (year, month, day, secs) = pollux_model::period::civil(ts);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(super::redact("http://bob:secret@am.example.net:9093/x"), "http://am.example.net:9093/x");
        assert_eq!(super::redact("http://am:9093"), "http://am:9093");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_175_045), "2026-12-02T01:30:45Z");
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
