//! The portal in a real browser (headless Chromium over the DevTools protocol), against the
//! chaos suite's environment: two aggregators, the proxy, a simulator and a collector.

mod common;

use common::browser::{self, Browser};
use common::cluster::Cluster;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const FAILWAIT: Duration = Duration::from_secs(2);
const TAKEOVER: Duration = Duration::from_secs(30);

/// A hostile device name: if the portal let it through unescaped, the page would set the flag.
const HOSTILE: &str = "<img src=x onerror=\"window.__pwned=1\">\"'/é";

fn free_udp_base(count: u16) -> u16 {
    loop {
        let base = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base.checked_add(count).is_some()
            && (0..count).all(|k| std::net::UdpSocket::bind(("127.0.0.1", base + k)).is_ok())
        {
            return base;
        }
    }
}

#[test]
fn the_portal_follows_a_failover_draws_charts_and_escapes_names() {
    let mut c = Cluster::start("2s", "6s", [&[], &[]]);
    c.wait_active(0, TAKEOVER);
    let dir = tempdir();
    let inventory = dir.path().join("inventory.toml");
    let port = free_udp_base(4);
    let _simulator = Aggregator::spawn(
        &["simulate", "--devices", "4", "--interfaces", "3", "--listen", &format!("127.0.0.1:{port}")]
            .iter()
            .map(|s| s.to_string())
            .chain(["--inventory-out".into(), inventory.display().to_string()])
            .collect::<Vec<_>>(),
        &[],
    );
    wait_until(Duration::from_secs(10), "the inventory", || inventory.exists().then_some(()));
    let spool = dir.path().join("spool").display().to_string();
    let collector_args: Vec<String> = [
        "collector",
        "--id",
        "dc1",
        "--aggregator",
        &c.proxy.url,
        "--inventory",
        &inventory.display().to_string(),
        "--spool-dir",
        &spool,
        "--interval",
        "2s",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _collector = Aggregator::spawn(&collector_args, &[]);
    let proxy = c.proxy.url.clone();
    wait_until(TAKEOVER, "four devices and the collector's report", || {
        let (_, status) = get(&format!("{proxy}/api/v1/status"));
        let (_, devices) = get(&format!("{proxy}/api/v1/devices"));
        (devices["devices"].as_array()?.len() >= 4 && status["collectors"].as_array()?.len() == 1).then_some(())
    });
    // A device whose name is markup, and an item with a slash and quotes.
    let cycle = (unix_now() / 300 - 1) * 300;
    let dto = json!({"id": "hostile.1", "collector": "test", "family": "Interface", "cycle": cycle, "interval": 300,
        "records": [{"device": HOSTILE, "item": "a/b\"c'<i>", "ts": cycle + 1, "values": {"in_bps": 5.0, "in_util": 1.0}}]});
    assert_eq!(put_json(&proxy, &dto).0, 201);

    let mut b = Browser::start();
    b.navigate(&format!("{proxy}/"));
    assert_eq!(b.eval("document.querySelectorAll('[data-node]').length"), 2);
    assert_eq!(b.eval("document.querySelector('[data-node=\"da1\"]').dataset.state"), "active");
    assert_eq!(b.eval("document.querySelector('[data-node=\"da2\"]').dataset.state"), "standby");
    let collector = b.eval("document.querySelector('[data-collector=\"dc1\"]').textContent");
    assert!(collector.as_str().unwrap().contains("connected"), "{collector}");

    // kill -9 of the active: the open page shows da2 active, with no reload by hand.
    let marker = b.eval("window.__sameDocument = 42");
    assert_eq!(marker, 42);
    let killed = Instant::now();
    c.kill9(0);
    let shown = wait_until(TAKEOVER, "the page to show da2 active", || {
        let state = b.eval("(document.querySelector('[data-node=\"da2\"]') || {dataset: {}}).dataset.state || ''");
        (state == "active").then(|| killed.elapsed())
    });
    assert_eq!(b.eval("window.__sameDocument"), 42, "the page was not reloaded");
    let bound = FAILWAIT + Duration::from_secs(2) * 2 + Duration::from_secs(2);
    assert!(shown <= bound, "shown after {shown:?}, more than failwait + two refreshes (+2 s)");
    eprintln!("the status page showed the new active {:.1} s after kill -9", shown.as_secs_f64());
    assert_eq!(b.eval("document.querySelector('[data-node=\"da1\"]').dataset.state"), "down");

    // The device page draws its charts: points in the SVG, not just HTML.
    b.navigate(&format!("{proxy}/devices/sim-000?range=6h"));
    let points = b.eval("[...document.querySelectorAll('svg[data-points]')].map(s => +s.dataset.points)");
    let points: Vec<u64> = points.as_array().unwrap().iter().filter_map(|p| p.as_u64()).collect();
    assert!(points.len() >= 4 && points.iter().any(|&p| p > 0), "charts with points: {points:?}");
    let drawn = b.eval("document.querySelector('svg polyline').getAttribute('points').split(' ').length");
    assert!(drawn.as_u64() > Some(0), "a drawn line: {drawn}");
    let box_width = b.eval("document.querySelector('svg').getBoundingClientRect().width");
    assert!(box_width.as_f64() > Some(200.0), "the chart is laid out: {box_width}");

    // Markup in names is text, in the list and on the device's own page.
    b.navigate(&format!("{proxy}/devices"));
    assert!(b.eval("document.body.textContent").as_str().unwrap().contains(HOSTILE));
    let link = b.eval("[...document.querySelectorAll('#devices a')].find(a => a.textContent.startsWith('<img')).href");
    b.navigate(link.as_str().unwrap());
    assert!(b.eval("document.querySelector('h1').textContent").as_str().unwrap().contains(HOSTILE));
    assert!(b.eval("document.body.textContent").as_str().unwrap().contains("a/b\"c'<i>"));
    assert_eq!(b.eval("typeof window.__pwned"), "undefined", "no markup of a name ran");
    for page in ["/top", "/events", "/rules", "/reports/percentile"] {
        b.navigate(&format!("{proxy}{page}"));
        assert_eq!(b.eval("document.querySelectorAll('main table').length"), 1, "{page}");
    }
    assert!(b.errors.is_empty(), "JavaScript errors: {:?}", b.errors);
    // Unknown devices and odd names: 404, never 500.
    for name in ["nope", "a%2Fb", "%22%27", "%E2%98%83", "%3Cscript%3E"] {
        let (status, _) = get(&format!("{proxy}/devices/{name}"));
        assert_eq!(status, 404, "{name}");
    }

    // Screenshots for the README when asked for (POLLUX_SCREENSHOTS=<dir>).
    if let Ok(dir) = std::env::var("POLLUX_SCREENSHOTS") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        browser::screenshot(&format!("{proxy}/"), &dir.join("status.png"));
        // A day of a busy core router, so the device page has something to show.
        let end = unix_now() / 300 * 300;
        for k in 0..288i64 {
            let cycle = end - (288 - k) * 300;
            let hour = (cycle % 86_400) as f64 / 3600.0;
            let wave = (std::f64::consts::PI * (hour - 8.0) / 12.0).sin().max(-0.6);
            let jitter = ((k * 7919) % 97) as f64 / 97.0;
            let in_bps = 4.0e9 + 3.0e9 * wave + 2.0e8 * jitter;
            let out_bps = 2.5e9 + 1.5e9 * wave + 3.0e8 * (1.0 - jitter);
            let family = |id: &str, family: &str, item: &str, values: serde_json::Value| {
                json!({"id": format!("shot.{id}.{k}"), "collector": "shot", "family": family, "cycle": cycle,
                       "interval": 300, "records": [{"device": "core-rtr-1", "item": item, "ts": cycle + 5, "values": values}]})
            };
            for dto in [
                family(
                    "if",
                    "Interface",
                    "xe-0/0/0",
                    json!({"in_bps": in_bps, "out_bps": out_bps,
                    "in_util": in_bps / 1e8, "out_util": out_bps / 1e8, "in_errors": 0.0, "out_errors": 0.0}),
                ),
                family("cpu", "CPU", "0", json!({"util": 20.0 + 25.0 * wave.max(0.0) + 5.0 * jitter})),
                family("mem", "Memory", "RAM", json!({"used_pct": 61.0 + 4.0 * jitter})),
                family(
                    "av",
                    "Availability",
                    "core-rtr-1",
                    json!({"reachable": 1.0, "response_ms": 1.5 + 2.0 * jitter}),
                ),
            ] {
                assert_eq!(put_json(&proxy, &dto).0, 201);
            }
        }
        wait_until(TAKEOVER, "the day to be loaded", || {
            (get(&format!("{proxy}/api/v1/dto/shot.av.287")).1["state"] == "loaded").then_some(())
        });
        browser::screenshot(&format!("{proxy}/devices/core-rtr-1?range=24h"), &dir.join("device.png"));
    }
}

/// The rules page creates and deletes a rule through the JSON API, in the browser.
#[test]
fn rules_are_created_and_deleted_from_the_page() {
    let dir = tempdir();
    let da = Aggregator::start(dir.path(), &["--failwait", "2s", "--startwait", "6s"], &[]);
    da.wait_active();
    let mut b = Browser::start();
    b.navigate(&format!("{}/rules", da.url));
    b.eval(
        "(() => { const f = document.getElementById('new-rule');
                  const e = f.elements;
                  e.metric.value = 'in_util'; e.value.value = '90'; e.namedItem('name').value = 'hot';
                  f.requestSubmit(); return 1; })()",
    );
    wait_until(Duration::from_secs(10), "the rule to be listed", || {
        (get(&format!("{}/api/v1/thresholds", da.url)).1["thresholds"].as_array()?.len() == 1).then_some(())
    });
    b.navigate(&format!("{}/rules", da.url));
    assert_eq!(b.eval("document.querySelectorAll('[data-rule]').length"), 1);
    // A bad rule shows the API's reason on the page.
    b.eval(
        "(() => { const f = document.getElementById('new-rule');
                  f.elements.metric.value = 'no_such'; f.elements.value.value = '1'; f.requestSubmit(); return 1; })()",
    );
    wait_until(Duration::from_secs(10), "the reason on the page", || {
        let text = b.eval("document.getElementById('rule-error').textContent");
        text.as_str().is_some_and(|t| t.contains("metric")).then_some(())
    });
    b.eval("document.querySelector('[data-delete-rule]').click(), 1");
    wait_until(Duration::from_secs(10), "the rule to be deleted", || {
        (get(&format!("{}/api/v1/thresholds", da.url)).1["thresholds"].as_array()?.is_empty()).then_some(())
    });
    assert!(b.errors.iter().all(|e| e.contains("400")), "only the refused rule's 400: {:?}", b.errors);
}
