//! Thresholds, events and notifications, black-box: real aggregators behind the proxy, a real
//! Alertmanager (Debian's `prometheus-alertmanager`) and a webhook receiver, and a kill -9 of
//! the active between two violating polls.

mod common;

use common::cluster::Cluster;
use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::Duration;

const FAILWAIT: &str = "2s";
const STARTWAIT: &str = "6s";
const TAKEOVER: Duration = Duration::from_secs(20);
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

fn send(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).http_status_as_error(false).build(),
    );
    let result = match (method, body) {
        ("POST", Some(b)) => agent.post(url).header("content-type", "application/json").send(b.to_string()),
        ("PUT", Some(b)) => agent.put(url).header("content-type", "application/json").send(b.to_string()),
        ("DELETE", _) => agent.delete(url).call(),
        _ => agent.get(url).call(),
    };
    match result {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// A real Alertmanager on loopback, killed (by pid) when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Alertmanager {
        assert!(
            std::path::Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} is missing: apt-get install prometheus-alertmanager (.ci/run does)"
        );
        let dir = tempdir();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: none\nreceivers:\n  - name: none\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let child = harnessed(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start alertmanager");
        let am = Alertmanager { child, url, _dir: dir };
        wait_until(Duration::from_secs(30), "alertmanager to be ready", || {
            (send("GET", &format!("{}/-/ready", am.url), None).0 == 200).then_some(())
        });
        am
    }

    /// The alert for `event_id`, as Alertmanager lists it.
    fn alert(&self, event_id: i64) -> Option<Value> {
        let (status, alerts) = send("GET", &format!("{}/api/v2/alerts", self.url), None);
        assert_eq!(status, 200);
        alerts
            .as_array()?
            .iter()
            .find(|a| a["labels"]["event_id"].as_str() == Some(event_id.to_string().as_str()))
            .cloned()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Interface DTO with two items of rtr-0: ge-0/0/0 at `hot` in_util, ge-0/0/1 calm.
fn poll(id: &str, cycle: i64, hot: f64) -> Value {
    let record = |item: &str, util: f64| json!({"device": "rtr-0", "item": item, "ts": cycle + 3, "values": {"in_util": util, "in_bps": util * 1e7}});
    json!({"id": id, "collector": "dc1", "family": "Interface", "cycle": cycle, "interval": 300,
           "records": [record("ge-0/0/0", hot), record("ge-0/0/1", 5.0)]})
}

fn put_acked(base: &str, dto: &Value) {
    wait_until(TAKEOVER, "the DTO to be acknowledged", || matches!(put_json(base, dto).0, 200 | 201).then_some(()));
}

fn events(base: &str) -> Vec<Value> {
    let (status, body) = send("GET", &format!("{base}/api/v1/events"), None);
    if status != 200 {
        return Vec::new();
    }
    body["events"].as_array().cloned().unwrap_or_default()
}

/// The promise of the thresholds issue: a metric crosses its threshold while the active is
/// killed -9 between violating polls; the event opens once, at the right poll, clears once, and
/// both receivers hear of it (the webhook after being down through the takeover).
#[test]
fn an_event_opens_and_clears_exactly_once_across_a_kill_9() {
    let am = Alertmanager::start();
    let hook = Receiver::start();
    hook.refusing.store(true, std::sync::atomic::Ordering::SeqCst);
    let config = format!(
        "[notify]\nresend_interval = \"2s\"\n[[notify.alertmanager]]\nurl = \"{}\"\n[[notify.webhook]]\nurl = \"{}\"\n",
        am.url, hook.url
    );
    let mut c = Cluster::start_configured(FAILWAIT, STARTWAIT, [&[], &[]], &config);
    c.wait_active(0, TAKEOVER);
    let base = c.proxy.url.clone();
    let rule = json!({"name": "ge0 hot", "family": "Interface", "metric": "in_util", "op": ">", "value": 90,
                      "for_polls": 3, "clear_value": 60, "clear_polls": 2, "severity": "critical",
                      "device": "rtr-*", "item": "ge-0/0/0"});
    let (status, created) = send("POST", &format!("{base}/api/v1/thresholds"), Some(&rule));
    assert_eq!(status, 201, "{created}");
    let rule_id = created["id"].as_i64().unwrap();

    let first = (unix_now() / 300 - 40) * 300;
    let cycle = |k: i64| first + k * 300;
    // Poll 0 is calm; 1 and 2 violate. Once both are loaded, the state (two violations) is in
    // the repository, and the active dies.
    for (k, util) in [(0, 10.0), (1, 95.0), (2, 96.0)] {
        put_acked(&base, &poll(&format!("p{k}"), cycle(k), util));
    }
    wait_until(TAKEOVER, "poll 2 to be loaded", || {
        (get(&format!("{base}/api/v1/dto/p2")).1["state"] == "loaded").then_some(())
    });
    assert!(events(&base).is_empty(), "two violating polls of three open nothing");
    c.kill9(0);
    c.wait_active(1, TAKEOVER);
    // Poll 3 is the third violation in a row: da2 opens the event from da1's state.
    put_acked(&base, &poll("p3", cycle(3), 97.0));
    let event = wait_until(TAKEOVER, "the event to open", || events(&base).into_iter().next());
    let id = event["id"].as_i64().unwrap();
    assert_eq!(event["rule"], rule_id);
    assert_eq!(event["state"], "open");
    assert_eq!(event["opened_cycle"], cycle(3), "opened at the third violating poll: {event}");
    assert_eq!((event["value"].as_f64(), event["severity"].as_str()), (Some(97.0), Some("critical")));
    assert_eq!((event["device"].as_str(), event["item"].as_str()), (Some("rtr-0"), Some("ge-0/0/0")));
    let alert = wait_until(TAKEOVER, "Alertmanager to show the alert", || am.alert(id));
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["labels"]["alertname"], "ge0 hot");
    assert_eq!(alert["labels"]["severity"], "critical");
    // Open alerts are sent again every resend_interval (2 s here), each time with an endsAt
    // further ahead: Alertmanager never resolves an open event by itself.
    wait_until(TAKEOVER, "a resend that moves endsAt forward", || {
        let again = am.alert(id)?;
        (again["endsAt"].as_str()? > alert["endsAt"].as_str()?).then_some(())
    });
    // The webhook comes back: the outbox still holds the opening for it.
    hook.refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until(TAKEOVER, "the webhook to receive the opening", || {
        hook.notifications().contains(&(id, "open".into())).then_some(())
    });

    // 98 raises the peak; 70 is below 90 but above the clear value 60; 50 and 40 clear.
    for (k, util) in [(4, 98.0), (5, 70.0), (6, 50.0), (7, 40.0), (8, 10.0)] {
        put_acked(&base, &poll(&format!("p{k}"), cycle(k), util));
    }
    let cleared =
        wait_until(TAKEOVER, "the event to clear", || events(&base).into_iter().find(|e| e["state"] == "cleared"));
    assert_eq!(cleared["id"], id);
    assert_eq!(cleared["cleared_at"], cycle(7) + 3, "cleared by the second calm poll: {cleared}");
    assert_eq!((cleared["peak"].as_f64(), cleared["cleared_by"].as_str()), (Some(98.0), Some("value")));
    assert_eq!(events(&base).len(), 1, "exactly one event");
    wait_until(TAKEOVER, "the webhook to receive the clearing", || {
        hook.notifications().contains(&(id, "clear".into())).then_some(())
    });
    wait_until(TAKEOVER, "Alertmanager to resolve the alert", || {
        am.alert(id).is_none_or(|a| a["status"]["state"] != "active").then_some(())
    });
    let heard: BTreeSet<(i64, String)> = hook.notifications().into_iter().collect();
    assert_eq!(heard, BTreeSet::from([(id, "open".into()), (id, "clear".into())]), "duplicates only by event id");

    let (_, status) = get(&format!("{base}/api/v1/status"));
    let receivers = status["alerting"]["receivers"].as_array().unwrap().clone();
    assert_eq!(receivers.len(), 2, "{status}");
    assert!(receivers.iter().all(|r| r["delivered"].as_u64() > Some(0)), "{receivers:?}");
    let metrics = get_text(&format!("{base}/metrics"));
    assert!(metrics.contains("pollux_events_open{severity=\"critical\"} 0"), "{metrics}");
}

/// A deposed active's notifier posts nothing more. da1's notifier has read an opening from the
/// outbox and is parked before posting it (crash point `notify.before_post`); da1 is frozen past
/// failwait, da2 takes over and delivers the opening; da1 resumes with the batch in hand and
/// must drop it: the webhook hears the opening once.
#[cfg(feature = "failpoints")]
#[test]
fn a_frozen_and_resumed_active_posts_nothing_more() {
    let park = tempdir();
    let parked = park.path().join("park");
    std::fs::write(&parked, b"").unwrap();
    let env = format!("notify.before_post=delay-while:8000:{}", parked.display());
    let hook = Receiver::start();
    let config = format!("[[notify.webhook]]\nurl = \"{}\"\n", hook.url);
    let c = Cluster::start_configured(FAILWAIT, STARTWAIT, [&[("POLLUX_FAILPOINTS", &env)], &[]], &config);
    c.wait_active(0, TAKEOVER);
    let base = c.proxy.url.clone();
    let rule = json!({"family": "Interface", "metric": "in_util", "op": ">", "value": 90, "device": "rtr-0",
                      "item": "ge-0/0/0"});
    assert_eq!(send("POST", &format!("{base}/api/v1/thresholds"), Some(&rule)).0, 201);
    put_acked(&base, &poll("hot", (unix_now() / 300 - 2) * 300, 95.0));
    wait_until(TAKEOVER, "da1's notifier parked with the opening", || {
        c.node(0).log().contains("failpoint notify.before_post: delay").then_some(())
    });
    c.node(0).signal("STOP");
    c.wait_active(1, TAKEOVER);
    let id = wait_until(TAKEOVER, "da2 to deliver the opening", || {
        hook.notifications().into_iter().find(|(_, t)| t == "open").map(|(id, _)| id)
    });
    std::fs::remove_file(&parked).unwrap();
    c.node(0).signal("CONT");
    wait_until(Duration::from_secs(30), "da1's notifier to stop", || {
        c.node(0).log().contains("notifier of this epoch stopped").then_some(())
    });
    let opens = hook.notifications().into_iter().filter(|n| *n == (id, "open".to_owned())).count();
    assert_eq!(opens, 1, "the deposed notifier posted its batch:\n{}", c.logs());
}

/// A batch the repository cannot take for a while (crash point `repository.load.before_commit`
/// failing until a file is removed) is retried before anything newer: a violating poll stored
/// during the outage is evaluated in its turn, and the calm poll sent after it does not make it
/// late. Without the kept batch, the newer poll (in the loader's handoff) would load first.
#[cfg(feature = "failpoints")]
#[test]
fn a_poll_the_repository_could_not_take_is_evaluated_before_newer_ones() {
    let dir = tempdir();
    let outage = dir.path().join("outage");
    let env = format!("repository.load.before_commit=error-while:{}", outage.display());
    let da = Aggregator::start(dir.path(), &["--failwait", "2s", "--startwait", "6s"], &[("POLLUX_FAILPOINTS", &env)]);
    da.wait_active();
    let rule = json!({"family": "Interface", "metric": "in_util", "op": ">", "value": 90, "device": "rtr-0",
                      "item": "ge-0/0/0"});
    assert_eq!(send("POST", &format!("{}/api/v1/thresholds", da.url), Some(&rule)).0, 201);
    let first = (unix_now() / 300 - 10) * 300;
    let loaded = |id: &str| get(&format!("{}/api/v1/dto/{id}", da.url)).1["state"] == "loaded";
    put_acked(&da.url, &poll("calm0", first, 10.0));
    wait_until(TAKEOVER, "the first poll loaded", || loaded("calm0").then_some(()));
    std::fs::write(&outage, b"").unwrap();
    put_acked(&da.url, &poll("hot1", first + 300, 95.0));
    wait_until(TAKEOVER, "four refusals", || (da.log().matches("load failed").count() >= 4).then_some(()));
    // The newer poll arrives (into the loader's in-memory handoff) just as the outage ends.
    put_acked(&da.url, &poll("calm2", first + 600, 10.0));
    std::fs::remove_file(&outage).unwrap();
    wait_until(TAKEOVER, "both polls loaded", || (loaded("hot1") && loaded("calm2")).then_some(()));
    let events = events(&da.url);
    assert_eq!(events.len(), 1, "the violating poll was evaluated: {events:?}\n{}", da.log());
    assert_eq!(events[0]["opened_cycle"], first + 300);
    assert_eq!(events[0]["state"], "cleared", "and the calm poll after it cleared it: {}", events[0]);
    assert!(!da.log().contains("late DTOs loaded"), "nothing was late:\n{}", da.log());
}

/// Rules are validated whole, name the field at fault, and follow the active.
#[test]
fn rules_are_validated_and_kept_by_the_repository() {
    let dir = tempdir();
    let da = Aggregator::start(dir.path(), &["--failwait", "2s", "--startwait", "6s"], &[]);
    da.wait_active();
    let url = format!("{}/api/v1/thresholds", da.url);
    let good = json!({"family": "Interface", "metric": "in_util", "op": ">=", "value": 80});
    for (change, field) in [
        (json!({"family": "Nope"}), "family"),
        (json!({"metric": "in_utl"}), "metric"),
        (json!({"op": "=>"}), "op"),
        (json!({"for_polls": -1}), "for_polls"),
        (json!({"for_polls": 0}), "for_polls"),
        (json!({"for_polls": 3, "window_polls": 2}), "window_polls"),
        (json!({"clear_value": 95}), "clear_value"),
        (json!({"severity": "urgent"}), "severity"),
        (json!({"device": ""}), "device"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let mut rule = good.clone();
        rule.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        let (status, body) = send("POST", &url, Some(&rule));
        assert_eq!(status, 400, "{rule}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{rule}: {body}");
    }
    // A body not declared JSON is refused: a form on another site cannot create a rule.
    let forged = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
        .post(&url)
        .header("content-type", "text/plain")
        .send(good.to_string())
        .unwrap();
    assert_eq!(forged.status(), 415);
    let (status, created) = send("POST", &url, Some(&good));
    assert_eq!((status, created["for_polls"].as_u64(), created["severity"].as_str()), (201, Some(1), Some("warning")));
    let id = created["id"].as_i64().unwrap();
    let (status, _) =
        send("PUT", &format!("{url}/{id}"), Some(&json!({"family": "CPU", "metric": "x", "op": "<", "value": 1})));
    assert_eq!(status, 400);
    let (status, _) = send("PUT", &format!("{url}/999"), Some(&good));
    assert_eq!(status, 404);
    assert_eq!(send("DELETE", &format!("{url}/999"), None).0, 404);
    assert_eq!(send("GET", &format!("{url}/abc"), None).0, 400);
    assert_eq!(send("POST", &format!("{}/api/v1/events/5/ack", da.url), Some(&json!({"by": "me"}))).0, 404);
    assert_eq!(send("GET", &format!("{}/api/v1/events?state=closed", da.url), None).0, 400);
    let mut da = da;
    da.stop();
    // A new aggregator on the same shared directory has the rule.
    let again = Aggregator::start(dir.path(), &["--failwait", "2s", "--startwait", "6s"], &[]);
    again.wait_active();
    let (status, list) = send("GET", &url.replace(&url[..url.find("/api").unwrap()], &again.url), None);
    assert_eq!(status, 200);
    assert_eq!(list["thresholds"][0]["id"], id, "{list}");
    assert_eq!(send("DELETE", &format!("{}/api/v1/thresholds/{id}", again.url), None).0, 204);
}

/// A receiver that hangs (takes the connection, never answers) holds up no other receiver, and
/// one that answers with a redirect has delivered nothing: its failure shows in the status (a
/// redirect followed with a GET whose 200 counted as delivery lost notifications unseen).
#[test]
fn a_hanging_or_redirecting_receiver_holds_up_no_other() {
    let good = Receiver::start();
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = hanging.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let redirect_url = format!("{}/hook", common::receiver::redirecting_to(&good.url));
    let shared = tempdir();
    let config = shared.path().join("notify.toml");
    std::fs::write(
        &config,
        format!(
            "[notify]\ntimeout = \"10s\"\n[[notify.webhook]]\nurl = \"{hanging_url}\"\n[[notify.webhook]]\nurl = \"{redirect_url}\"\n[[notify.webhook]]\nurl = \"{}\"\n",
            good.url
        ),
    )
    .unwrap();
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    let rule = json!({"family": "Interface", "metric": "in_util", "op": ">", "value": 90, "device": "rtr-0",
                      "item": "ge-0/0/0"});
    assert_eq!(send("POST", &format!("{}/api/v1/thresholds", da.url), Some(&rule)).0, 201);
    put_acked(&da.url, &poll("hot", (unix_now() / 300 - 2) * 300, 95.0));
    let opened = wait_until(TAKEOVER, "the event to open", || events(&da.url).into_iter().next());
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(3), "the good receiver to hear the opening", || {
        good.notifications().into_iter().find(|(id, t)| Some(*id) == opened["id"].as_i64() && t == "open")
    });
    eprintln!("the good receiver heard it {:.1} s after the event opened", started.elapsed().as_secs_f64());
    let receivers = wait_until(Duration::from_secs(10), "the redirect's failure in the status", || {
        let (_, status) = get(&format!("{}/api/v1/status", da.url));
        let receivers = status["alerting"]["receivers"].as_array().cloned().unwrap_or_default();
        receivers.iter().any(|r| r["url"] == redirect_url && r["failures"].as_u64() >= Some(1)).then_some(receivers)
    });
    let redirect = receivers.iter().find(|r| r["url"] == redirect_url).unwrap();
    assert_eq!(redirect["delivered"], 0, "{redirect}");
    assert!(redirect["last_error"].as_str().unwrap_or("").contains("302"), "{redirect}");
    let opens = good.notifications().into_iter().filter(|(_, t)| t == "open").count();
    assert_eq!(opens, 1, "the good receiver heard the opening once, not again through the redirect");
}
