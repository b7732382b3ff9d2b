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
