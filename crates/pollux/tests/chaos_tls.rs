//! The chaos suite's kill -9 and planned switchover over HTTPS with a token per class: every
//! hop (harness and collectors to the proxy, proxy to the aggregators, health checks, the
//! `pollux failover` command) speaks TLS, and nothing acknowledged is lost or loaded twice.

mod common;

use common::cluster::{kill_9_of_the_active_under_load, switchover_under_load, Cluster};
use common::secure;

#[test]
fn kill_9_of_the_active_over_https_with_tokens_loses_nothing() {
    secure();
    kill_9_of_the_active_under_load(Cluster::start("2s", "6s", [&[], &[]]));
}

#[test]
fn planned_switchover_over_https_with_tokens_loses_nothing() {
    secure();
    switchover_under_load(Cluster::start("2s", "6s", [&[], &[]]));
}
