//! The checkers of the chaos tests must be able to fail: each fault they look for is injected
//! into a real repository (written through the repository API, then damaged with SQL, since
//! the API itself refuses to do it) and the checker must see it.

mod common;

use common::*;
use pollux_repository::{conformance, Repository, SqliteOptions, SqliteRepository};

/// A stale writer that commits after a newer epoch claimed the repository, but before that
/// epoch's first load, keeps the load order's epochs rising: only the claim record shows it.
#[test]
fn a_stale_load_between_a_claim_and_the_first_load_is_caught() {
    let shared = tempdir();
    let repo = SqliteRepository::open(&shared.path().join("repository.sqlite"), SqliteOptions::default()).unwrap();
    repo.claim_epoch(1, "old").unwrap();
    for family in pollux_model::Catalog::builtin().iter() {
        repo.ensure_family(1, family).unwrap();
    }
    repo.load(1, &[conformance::dto("a", conformance::T0, &[("r1", "ge-0", 1.0)])]).unwrap();
    repo.claim_epoch(2, "new").unwrap();
    let check = RepoCheck::open(shared.path());
    assert!(check.epochs_never_go_back() && check.stale_loads_after_a_claim() == 0, "clean before the fault");
    assert_eq!(check.claims(), 2);
    // The fault: epoch 1's load registered after epoch 2's claim (what fencing prevents).
    let conn = rusqlite::Connection::open(shared.path().join("repository.sqlite")).unwrap();
    conn.execute(
        "INSERT INTO loaded_dtos (id, epoch, family, collector, cycle, records, loaded_at) VALUES ('stale', 1, 'Interface', 'dc1', 0, 1, 0)",
        [],
    )
    .unwrap();
    assert_eq!(check.stale_loads_after_a_claim(), 1);
    assert!(
        !check.epochs_never_go_back(),
        "the checker sees the stale load although epochs never go down in load order"
    );
}

/// The value and rollup checkers of the chaos tests see a value one unit in the last place
/// off, and a rollup that no longer matches its raw data.
#[test]
fn a_value_one_ulp_off_and_a_wrong_rollup_are_caught() {
    use pollux_model::{codec::json, Catalog, Limits};
    let shared = tempdir();
    let repo = SqliteRepository::open(&shared.path().join("repository.sqlite"), SqliteOptions::default()).unwrap();
    repo.claim_epoch(1, "suite").unwrap();
    for family in Catalog::builtin().iter() {
        repo.ensure_family(1, family).unwrap();
    }
    let base = week_base();
    for c in 0..24 {
        let sent = interface_dto(&format!("v{c}"), base + c * 8 * 3600, 2, 3);
        let dto = json::decode(sent.to_string().as_bytes(), &Catalog::builtin(), &Limits::default()).unwrap();
        repo.load(1, &[dto]).unwrap();
    }
    let policy = pollux_repository::RollupPolicy::immediate(std::time::Duration::ZERO);
    while repo.roll_up(1, unix_now(), &policy, 10_000).unwrap().more {}
    let check = RepoCheck::open(shared.path());
    assert_eq!(check.values_as_sent(3).unwrap(), 24 * 6 * 3);
    let (from, to) = (base, week_range_end(base));
    let compared = rollups_of_every_item(shared.path(), from, to).expect("rollups match before the fault");
    assert!(compared.iter().all(|&n| n >= 6 * 3), "{compared:?}");

    let conn = rusqlite::Connection::open(shared.path().join("repository.sqlite")).unwrap();
    let t: String =
        conn.query_row("SELECT 'f' || number FROM family_state WHERE family = 'Interface'", [], |r| r.get(0)).unwrap();
    let changed = conn
        .execute(
            &format!(
                "UPDATE {t}_recent SET in_util = in_util + in_util * 2.3e-16
                 WHERE in_util > 1 AND cycle = (SELECT max(cycle) FROM {t}_recent)"
            ),
            [],
        )
        .unwrap();
    assert!(changed > 0);
    let err = check.values_as_sent(3).unwrap_err();
    assert!(err.contains("in_util"), "{err}");

    // The same cycle resent under another id: the primary key would hide it; the count does not.
    assert_eq!(check.replaced_records(), 0);
    let again = interface_dto("v0-again", base, 2, 3);
    let dto = json::decode(again.to_string().as_bytes(), &Catalog::builtin(), &Limits::default()).unwrap();
    assert_eq!(repo.load(1, &[dto]).unwrap().replaced, 6);
    assert_eq!(check.replaced_records(), 6);
    let rows = check.interface_rows();
    assert!(rows.iter().all(|r| r.3 == 1), "the rows alone show nothing: the key keeps one record");

    conn.execute(&format!("UPDATE {t}_week SET in_bps_sum = in_bps_sum + 1"), []).unwrap();
    assert!(rollups_of_every_item(shared.path(), from, to).is_none(), "a weekly sum one off is caught");
}
