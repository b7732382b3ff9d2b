//! Failover: kill -9 of the active to the first 201 through the proxy; planned switchover's
//! time without an active; the proxy's overhead on ingest and query latency.

use crate::ingest::make_dto;
use crate::util::{self, agent, median, percentile, spawn, wait_for, Proc, Rng};
use anyhow::Context;
use pollux_model::codec::json;
use std::time::{Duration, Instant};

const FAILWAIT: &str = "2s";
const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];

struct Cluster {
    shared: tempfile::TempDir,
    ports: [u16; 2],
    nodes: [Option<Proc>; 2],
    _proxy: Proc,
    proxy: String,
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let shared = tempfile::tempdir()?;
        let port = |h: &str| -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind((h, 0))?.local_addr()?.port()) };
        let ports = [port(HOSTS[0])?, port(HOSTS[1])?];
        let mut args: Vec<String> = vec!["proxy".into(), "--listen".into(), "127.0.0.1:0".into()];
        for i in 0..2 {
            args.extend(["--aggregator".into(), format!("{}://{}:{}", util::scheme(), HOSTS[i], ports[i])]);
        }
        args.extend(util::security_args("proxy", shared.path())?);
        let (proxy_proc, proxy) = spawn(&args)?;
        let mut c = Cluster { shared, ports, nodes: [None, None], _proxy: proxy_proc, proxy };
        c.start_node(0)?;
        wait_for(Duration::from_secs(30), || Ok(util::get_status(&format!("{}/health/active", c.url(0)))? == 200))?;
        c.start_node(1)?;
        Ok(c)
    }

    fn url(&self, i: usize) -> String {
        format!("{}://{}:{}", util::scheme(), HOSTS[i], self.ports[i])
    }

    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let security = util::security_args("aggregator", self.shared.path())?;
        let (proc, _) = spawn(
            &[
                "aggregator".into(),
                "--node-id".into(),
                format!("da{}", i + 1),
                "--listen".into(),
                format!("{}:{}", HOSTS[i], self.ports[i]),
                "--failwait".into(),
                FAILWAIT.into(),
                "--startwait".into(),
                "10s".into(),
                "--shared-dir".into(),
                self.shared.path().display().to_string(),
            ]
            .into_iter()
            .chain(security)
            .collect::<Vec<_>>(),
        )?;
        self.nodes[i] = Some(proc);
        Ok(())
    }

    fn active(&self) -> anyhow::Result<Option<usize>> {
        for i in 0..2 {
            if self.nodes[i].is_some() && util::get_status(&format!("{}/health/active", self.url(i)))? == 200 {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn wait_standby(&self, i: usize) -> anyhow::Result<()> {
        wait_for(Duration::from_secs(30), || {
            let text = agent()
                .get(&format!("{}/health", self.url(i)))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok());
            Ok(text.is_some_and(|t| t.contains("\"role\":\"standby\"")))
        })
    }
}

/// PUTs small DTOs through the proxy until one sent after `after` is answered 201.
fn first_201_after(proxy: &str, after: Instant, seq: &mut u64, rng: &mut Rng) -> anyhow::Result<Instant> {
    let agent = util::agent();
    let cycle = (util::unix_now() / 300 - 1) * 300;
    loop {
        *seq += 1;
        let dto = make_dto(&format!("fo.{seq}"), cycle, 2, 5, rng);
        let sent = Instant::now();
        let status = agent
            .put(&format!("{proxy}/api/v1/dto/{}", dto.id))
            .header("content-type", "application/json")
            .send(&json::encode(&dto)[..])
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 201 && sent >= after {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    let mut c = Cluster::start()?;
    let mut rng = Rng::new(17);
    let mut seq = 0;
    println!("failover: two aggregators (127.0.0.2, 127.0.0.3) and a proxy (127.0.0.1), failwait {FAILWAIT}, {rounds} rounds");
    first_201_after(&c.proxy, Instant::now(), &mut seq, &mut rng)?;
    let mut kill_gaps = Vec::new();
    for _ in 0..rounds {
        let active = c.active()?.context("no active")?;
        let standby = 1 - active;
        c.wait_standby(standby)?;
        let killed = Instant::now();
        c.nodes[active] = None; // kill -9 (Proc's drop)
        let done = first_201_after(&c.proxy, killed, &mut seq, &mut rng)?;
        kill_gaps.push((done - killed).as_secs_f64());
        c.start_node(active)?;
    }
    let worst = kill_gaps.iter().cloned().fold(0.0, f64::max);
    println!(
        "  kill -9 of the active -> first 201 through the proxy: median {:.2} s, worst {:.2} s (target <= failwait + 1 s = 3 s; the original product: failwait 5 min plus a start of tens of minutes)",
        median(&mut kill_gaps),
        worst
    );

    let mut switch_gaps = Vec::new();
    for _ in 0..rounds {
        let active = c.active()?.context("no active")?;
        let other = c.url(1 - active);
        c.wait_standby(1 - active)?;
        let agent = util::agent();
        let asked = Instant::now();
        let r = agent.post(&format!("{}/api/v1/failover", c.url(active))).send_empty()?;
        anyhow::ensure!(r.status() == 200, "failover refused: {}", r.status());
        wait_for(Duration::from_secs(10), || Ok(util::get_status(&format!("{other}/health/active"))? == 200))?;
        switch_gaps.push(asked.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "  planned switchover, request to the new active ready: median {:.0} ms, worst {:.0} ms (target < 1000 ms)",
        median(&mut switch_gaps.clone()),
        switch_gaps.iter().cloned().fold(0.0, f64::max)
    );

    proxy_overhead(&c, &mut rng)
}

fn proxy_overhead(c: &Cluster, rng: &mut Rng) -> anyhow::Result<()> {
    let active = c.url(c.active()?.context("no active")?);
    let agent = util::agent();
    let cycle = (util::unix_now() / 300 - 1) * 300;
    let mut put_lat = |base: &str, tag: &str| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for i in 0..300 {
            let dto = make_dto(&format!("px.{tag}.{i}"), cycle, 10, 10, rng);
            let body = json::encode(&dto);
            let t = Instant::now();
            let r = agent
                .put(&format!("{base}/api/v1/dto/{}", dto.id))
                .header("content-type", "application/json")
                .send(&body[..])?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(r.status() == 201, "PUT {}", r.status());
        }
        Ok(percentile(&mut times, 50.0))
    };
    let (direct_put, proxied_put) = (put_lat(&active, "direct")?, put_lat(&c.proxy, "proxied")?);
    // A day of 5-minute cycles for 100 interfaces, to query a realistic 24-hour series.
    let day_end = util::unix_now() / 300 * 300 - 300;
    for n in 0..288 {
        let dto = make_dto(&format!("day.{n}"), day_end - (288 - n) * 300, 10, 10, rng);
        agent
            .put(&format!("{active}/api/v1/dto/{}", dto.id))
            .header("content-type", "application/json")
            .send(&json::encode(&dto)[..])?;
    }
    wait_for(Duration::from_secs(60), || {
        let page = util::get_text(&agent, &format!("{active}/metrics"))?;
        Ok(util::metric(&page, "pollux_dto_backlog") == Some(0.0))
    })?;
    let get_lat = |base: &str, from: i64, to: i64| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            let mut r = agent
                .get(&format!("{base}/api/v1/series?family=Interface&device=rtr-00001&item=ge-0/0/1&metric=in_bps&from={from}&to={to}&resolution=raw"))
                .call()?;
            r.body_mut().read_to_string()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(percentile(&mut times, 50.0))
    };
    let day = (day_end - 86_400, day_end);
    let (direct_day, proxied_day) = (get_lat(&active, day.0, day.1)?, get_lat(&c.proxy, day.0, day.1)?);
    let hour = (day_end - 3600, day_end);
    let (direct_hour, proxied_hour) = (get_lat(&active, hour.0, hour.1)?, get_lat(&c.proxy, hour.0, hour.1)?);
    let pct = |via: f64, direct: f64| (via / direct - 1.0) * 100.0;
    println!("  proxy overhead at p50 (target < 10 %), direct vs via the proxy:");
    println!(
        "    ingest, 100 records     {direct_put:.3} ms vs {proxied_put:.3} ms ({:+.0} %)",
        pct(proxied_put, direct_put)
    );
    println!(
        "    24 h raw series         {direct_day:.3} ms vs {proxied_day:.3} ms ({:+.0} %)",
        pct(proxied_day, direct_day)
    );
    println!(
        "    1 h raw series          {direct_hour:.3} ms vs {proxied_hour:.3} ms ({:+.0} %)",
        pct(proxied_hour, direct_hour)
    );
    Ok(())
}
