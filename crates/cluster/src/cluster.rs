//! The proxy and two aggregators on one machine, sharing one directory.

use crate::process::{Launch, LogTo, Process};
use crate::security::{self, Security};
use crate::{free_port, health, wait_for, Health, Role, NODE_HOSTS, NODE_NAMES, PROXY_HOST};
use std::path::PathBuf;
use std::time::Duration;

/// How long a process may take to answer its first request.
const START: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `pollux` binary.
    pub bin: PathBuf,
    /// Where the configuration files (and, with `log_dir`, the logs) go.
    pub dir: PathBuf,
    pub shared: PathBuf,
    pub failwait: String,
    pub startwait: String,
    /// Ports of the proxy, da1 and da2; 0 picks a free one.
    pub ports: [u16; 3],
    pub security: Option<Security>,
    /// More keys for both aggregators' configuration file.
    pub aggregator_toml: String,
    /// `--repository` of both aggregators; the SQLite file in the shared directory when `None`.
    pub repository: Option<String>,
    /// Environment of each aggregator (crash points, for instance).
    pub env: [Vec<(String, String)>; 2],
    /// Environment of every process.
    pub common_env: Vec<(String, String)>,
    /// Logs appended to `<log_dir>/<name>.log`; kept in memory when `None`.
    pub log_dir: Option<PathBuf>,
    /// Processes die with the thread that started them (tests and benchmarks).
    pub harnessed: bool,
}

impl ClusterSpec {
    pub fn new(bin: impl Into<PathBuf>, dir: impl Into<PathBuf>, shared: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            bin: bin.into(),
            dir: dir.into(),
            shared: shared.into(),
            failwait: "2s".into(),
            startwait: "6s".into(),
            ports: [0; 3],
            security: None,
            aggregator_toml: String::new(),
            repository: None,
            env: [Vec::new(), Vec::new()],
            common_env: Vec::new(),
            log_dir: None,
            harnessed: true,
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.security.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn launch(&self, name: &str, args: Vec<String>, env: &[(String, String)]) -> Launch {
        let mut launch = Launch::new(name, &self.bin, &args);
        if let Some(dir) = &self.log_dir {
            launch = launch.log_to(LogTo::File(dir.join(format!("{name}.log"))));
        }
        if self.harnessed {
            launch = launch.harnessed();
        }
        for (k, v) in self.common_env.iter().chain(env) {
            launch = launch.env(k, v);
        }
        launch
    }
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub proxy: Process,
    pub nodes: [Option<Process>; 2],
    ports: [u16; 3],
    client: ureq::Agent,
    aggregator_config: Option<PathBuf>,
}

impl Cluster {
    /// Starts the proxy, then da1 until it holds the lease (so it becomes the active), then da2;
    /// each is up when it answers over HTTP.
    pub fn start(spec: ClusterSpec) -> Result<Cluster, String> {
        let mut ports = spec.ports;
        for (i, host) in [PROXY_HOST, NODE_HOSTS[0], NODE_HOSTS[1]].iter().enumerate() {
            if ports[i] == 0 {
                ports[i] = free_port(host).map_err(|e| format!("no free port on {host}: {e}"))?;
            }
        }
        std::fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
        if let Some(logs) = &spec.log_dir {
            std::fs::create_dir_all(logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        }
        let write = |name: &str, text: String| -> Result<Option<PathBuf>, String> {
            if text.is_empty() {
                return Ok(None);
            }
            let path = spec.dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Some(path))
        };
        let security = spec.security.as_ref();
        let aggregator_config = write(
            "aggregator.toml",
            format!("{}{}", security.map(Security::aggregator_toml).unwrap_or_default(), spec.aggregator_toml),
        )?;
        let proxy_config = write("proxy.toml", security.map(Security::proxy_toml).unwrap_or_default())?;
        let client = security::client(security, Duration::from_secs(30));
        let scheme = spec.scheme();
        let mut args: Vec<String> = vec!["proxy".into(), "--listen".into(), format!("{PROXY_HOST}:{}", ports[0])];
        for i in 0..2 {
            args.extend(["--aggregator".into(), format!("{scheme}://{}:{}", NODE_HOSTS[i], ports[i + 1])]);
        }
        if let Some(config) = &proxy_config {
            args.extend(["--config".into(), config.display().to_string()]);
        }
        let mut proxy = spec.launch("proxy", args, &[]).spawn().map_err(|e| format!("starting the proxy: {e}"))?;
        proxy.url = format!("{scheme}://{PROXY_HOST}:{}", ports[0]);
        let mut cluster = Cluster { spec, proxy, nodes: [None, None], ports, client, aggregator_config };
        let status = format!("{}/proxy/status", cluster.proxy.url);
        wait_for(START, "the proxy to answer", || cluster.client.get(&status).call().ok().map(|_| ()))
            .map_err(|e| format!("{e}\n{}", cluster.proxy.log()))?;
        cluster.start_node(0)?;
        wait_for(START, "da1 to take the lease", || {
            cluster.health(0).filter(|h| matches!(h.role, Role::Starting | Role::Active))
        })
        .map_err(|e| format!("{e}\n{}", cluster.logs()))?;
        cluster.start_node(1)?;
        Ok(cluster)
    }

    pub fn url(&self, i: usize) -> String {
        format!("{}://{}:{}", self.spec.scheme(), NODE_HOSTS[i], self.ports[i + 1])
    }

    /// A client that trusts the cluster's CA and sends its tokens.
    pub fn client(&self) -> &ureq::Agent {
        &self.client
    }

    /// Starts aggregator `i` (again) and waits until it answers `/health`.
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        let spec = &self.spec;
        let mut args: Vec<String> = [
            "aggregator",
            "--node-id",
            NODE_NAMES[i],
            "--listen",
            &format!("{}:{}", NODE_HOSTS[i], self.ports[i + 1]),
            "--failwait",
            &spec.failwait,
            "--startwait",
            &spec.startwait,
            "--shared-dir",
            &spec.shared.display().to_string(),
        ]
        .map(String::from)
        .into();
        if let Some(config) = &self.aggregator_config {
            args.extend(["--config".into(), config.display().to_string()]);
        }
        if let Some(repository) = &spec.repository {
            args.extend(["--repository".into(), repository.clone()]);
        }
        let mut node = spec
            .launch(NODE_NAMES[i], args, &spec.env[i])
            .spawn()
            .map_err(|e| format!("starting {}: {e}", NODE_NAMES[i]))?;
        node.url = self.url(i);
        let base = node.url.clone();
        let answered = wait_for(START, &format!("{} to answer /health", NODE_NAMES[i]), || {
            if !node.running() {
                return Some(Err(format!("{} exited", NODE_NAMES[i])));
            }
            health(&self.client, &base, false).filter(|(_, h)| h.node == NODE_NAMES[i]).map(Ok)
        });
        if let Err(e) = answered.and_then(|r| r) {
            return Err(format!("{e}:\n{}", node.log()));
        }
        self.nodes[i] = Some(node);
        Ok(())
    }

    pub fn node(&self, i: usize) -> &Process {
        self.nodes[i].as_ref().expect("node running")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Process {
        self.nodes[i].as_mut().expect("node running")
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill9();
        }
    }

    /// Node `i`'s `/health`, or `None` when it does not answer.
    pub fn health(&self, i: usize) -> Option<Health> {
        health(&self.client, &self.url(i), false).filter(|(status, _)| *status == 200).map(|(_, h)| h)
    }

    /// The active's index and epoch, as the proxy routes.
    pub fn active(&self) -> Option<(usize, u64)> {
        let (status, h) = health(&self.client, &self.proxy.url, true)?;
        let i = NODE_NAMES.iter().position(|n| h.node == *n)?;
        (status == 200).then_some((i, h.epoch))
    }

    /// Waits until node `i` is the ready active, as the proxy sees it; returns its epoch. On a
    /// timeout the error carries every process's log.
    pub fn wait_active(&self, i: usize, limit: Duration) -> Result<u64, String> {
        wait_for(limit, &format!("{} to become the active", NODE_NAMES[i]), || {
            self.active().filter(|(active, _)| *active == i).map(|(_, epoch)| epoch)
        })
        .map_err(|e| format!("{e}\n{}", self.logs()))
    }

    /// The processes, aggregators first, to stop as the caller sees fit.
    pub fn into_processes(self) -> Vec<Process> {
        let Cluster { proxy, nodes, .. } = self;
        nodes.into_iter().flatten().chain([proxy]).collect()
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- proxy\n{}", self.proxy.log());
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(n) = node {
                out.push_str(&format!("--- {}\n{}", NODE_NAMES[i], n.log()));
            }
        }
        out
    }
}
