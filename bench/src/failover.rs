//! Failover: kill -9 of the active to the first 201 through the proxy; planned switchover's
//! time without an active; the proxy's overhead on ingest and query latency.

use crate::ingest::make_dto;
use crate::util::{self, median, percentile, wait_for, Rng};
use anyhow::Context;
use pollux_cluster::{Cluster, ClusterSpec};
use pollux_model::codec::json;
use std::time::{Duration, Instant};

const FAILWAIT: &str = "2s";

/// The cluster harness's proxy and two aggregators, with the benchmark's HTTPS and tokens when
/// they are on.
fn start_cluster(shared: &tempfile::TempDir) -> anyhow::Result<Cluster> {
    let mut spec = ClusterSpec::new(util::pollux_bin()?, shared.path(), shared.path());
    spec.failwait = FAILWAIT.into();
    spec.startwait = "10s".into();
    spec.security = util::tls().cloned();
    spec.common_env = vec![(
        "RUST_LOG".into(),
        "warn,pollux=info,pollux_aggregator=info,pollux_proxy=info,pollux_collector=info".into(),
    )];
    let cluster = Cluster::start(spec).map_err(anyhow::Error::msg)?;
    cluster.wait_active(0, Duration::from_secs(30)).map_err(anyhow::Error::msg)?;
    Ok(cluster)
}

fn active(c: &Cluster) -> anyhow::Result<usize> {
    (0..2)
        .find(|&i| {
            c.nodes[i].is_some() && pollux_cluster::health(c.client(), &c.url(i), true).is_some_and(|(s, _)| s == 200)
        })
        .context("no active")
}

fn wait_standby(c: &Cluster, i: usize) -> anyhow::Result<()> {
    pollux_cluster::wait_for(Duration::from_secs(30), "the standby", || {
        c.health(i).filter(|h| h.role == pollux_cluster::Role::Standby)
    })
    .map_err(anyhow::Error::msg)?;
    Ok(())
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
    let shared = tempfile::tempdir()?;
    let mut c = start_cluster(&shared)?;
    let mut rng = Rng::new(17);
    let mut seq = 0;
    println!("failover: two aggregators (127.0.0.2, 127.0.0.3) and a proxy (127.0.0.1), failwait {FAILWAIT}, {rounds} rounds");
    let proxy = c.proxy.url.clone();
    first_201_after(&proxy, Instant::now(), &mut seq, &mut rng)?;
    let mut kill_gaps = Vec::new();
    for _ in 0..rounds {
        let active = active(&c)?;
        wait_standby(&c, 1 - active)?;
        let killed = Instant::now();
        c.kill9(active);
        let done = first_201_after(&proxy, killed, &mut seq, &mut rng)?;
        kill_gaps.push((done - killed).as_secs_f64());
        c.start_node(active).map_err(anyhow::Error::msg)?;
    }
    let worst = kill_gaps.iter().cloned().fold(0.0, f64::max);
    println!(
        "  kill -9 of the active -> first 201 through the proxy: median {:.2} s, worst {:.2} s (target <= failwait + 1 s = 3 s; the original product: failwait 5 min plus a start of tens of minutes)",
        median(&mut kill_gaps),
        worst
    );

    let mut switch_gaps = Vec::new();
    for _ in 0..rounds {
        let active = active(&c)?;
        let other = c.url(1 - active);
        wait_standby(&c, 1 - active)?;
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
    let active = c.url(active(c)?);
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
    let proxy = c.proxy.url.clone();
    let (direct_put, proxied_put) = (put_lat(&active, "direct")?, put_lat(&proxy, "proxied")?);
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
    let (direct_day, proxied_day) = (get_lat(&active, day.0, day.1)?, get_lat(&proxy, day.0, day.1)?);
    let hour = (day_end - 3600, day_end);
    let (direct_hour, proxied_hour) = (get_lat(&active, hour.0, hour.1)?, get_lat(&proxy, hour.0, hour.1)?);
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
