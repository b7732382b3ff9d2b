//! Says which tests a build without crash points leaves out, so that `cargo test` without
//! `--features failpoints` does not look like the whole proof. (`.ci/run` builds with them.)

#[cfg(not(feature = "failpoints"))]
#[test]
fn skipped_without_features_failpoints() {
    eprintln!(
        "SKIPPED (build without crash points; run `cargo test --features failpoints`):\n\
         - tests/crash_points.rs: every test (a crash at each point of the durability path)\n\
         - tests/chaos.rs: the crash-point cases (crash inside a DTO write and a load, a hung start,\n\
           the shared directory unwritable)\n\
         - tests/hardening.rs: status_exits_1_whenever_data_is_not_flowing"
    );
}

/// With the feature, the binary the tests start really carries the crash points: it accepts a
/// crash-point configuration (a build without them refuses one with status 64).
#[cfg(feature = "failpoints")]
#[test]
fn the_binary_under_test_has_crash_points() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollux"))
        .args(["status", "--url", "http://127.0.0.1:9"])
        .env("POLLUX_FAILPOINTS", "store.mid_write=abort")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}
