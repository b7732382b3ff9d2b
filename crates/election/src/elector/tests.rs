//! The election's decisions, driven with an injected clock: no files, no sleeps.

use super::*;

const FAILWAIT: Duration = Duration::from_secs(10);
const STARTWAIT: Duration = Duration::from_secs(30);

fn timing() -> Timing {
    Timing::new(FAILWAIT, STARTWAIT)
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn lease(holder: &str, epoch: u64, counter: u64, state: LeaseState) -> Lease {
    Lease { holder: holder.into(), advertise: format!("http://{holder}"), epoch, counter, state }
}

/// Performs the writes of `actions` against an in-memory lease, as the runtime would, and
/// returns the non-write actions.
fn perform(e: &mut Elector, now: Instant, store: &mut Option<Lease>, actions: Vec<Action>) -> Vec<Action> {
    let mut rest = Vec::new();
    for action in actions {
        match action {
            Action::Write { expected, new } => {
                let result = if *store == expected {
                    *store = Some(new);
                    Ok(())
                } else {
                    Err(StoreError::Conflict)
                };
                let more = e.on_write(now, result);
                rest.extend(perform(e, now, store, more));
            }
            other => rest.push(other),
        }
    }
    rest
}

fn tick(e: &mut Elector, now: Instant, store: &mut Option<Lease>) -> Vec<Action> {
    let actions = e.on_lease(now, Ok(store.clone()), 0);
    perform(e, now, store, actions)
}

/// A node that took an empty lease and became active at `t0`.
fn active(name: &str, t0: Instant, store: &mut Option<Lease>) -> Elector {
    let mut e = Elector::new(name, format!("http://{name}"), timing(), t0);
    assert_eq!(tick(&mut e, t0, store), [Action::Start { epoch: 1 }]);
    assert_eq!(e.role(), Role::Starting);
    let actions = e.on_ready(t0);
    assert!(perform(&mut e, t0, store, actions).is_empty());
    assert_eq!(e.role(), Role::Active);
    e
}

#[test]
fn the_first_node_takes_a_free_lease_and_becomes_active() {
    let t0 = Instant::now();
    let mut store = None;
    let e = active("da1", t0, &mut store);
    assert_eq!(store.as_ref().unwrap().state, LeaseState::Active);
    assert_eq!(e.acknowledge_until(), Some((1, t0 + FAILWAIT - FAILWAIT / 4)));
}

#[test]
fn a_new_epoch_is_above_the_fence_file() {
    let t0 = Instant::now();
    let mut e = Elector::new("da1", "u", timing(), t0);
    let actions = e.on_lease(t0, Ok(None), 41);
    assert!(matches!(&actions[..], [Action::Write { new, .. }] if new.epoch == 42));
}

#[test]
fn the_active_renews_every_heartbeat_and_the_standby_waits() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    let hb = timing().heartbeat.as_millis() as u64;
    for step in 1..=100 {
        let now = at(t0, step * hb / 2);
        assert!(tick(&mut a, now, &mut store).is_empty());
        assert!(tick(&mut b, now, &mut store).is_empty(), "standby took a live lease at step {step}");
    }
    assert_eq!((a.role(), b.role()), (Role::Active, Role::Standby));
    assert!(store.unwrap().counter >= 49);
}

#[test]
fn the_standby_takes_over_after_failwait_of_silence_and_not_before() {
    let t0 = Instant::now();
    let mut store = None;
    let _dead = active("da1", t0, &mut store);
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    assert!(tick(&mut b, at(t0, 100), &mut store).is_empty());
    assert!(tick(&mut b, at(t0, 100) + FAILWAIT - Duration::from_millis(1), &mut store).is_empty());
    assert_eq!(tick(&mut b, at(t0, 100) + FAILWAIT, &mut store), [Action::Start { epoch: 2 }]);
    assert_eq!(store.as_ref().unwrap().holder, "da2");
}

#[test]
fn a_paused_active_fences_itself_before_the_standby_can_take_over() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let (epoch, until) = a.acknowledge_until().unwrap();
    assert_eq!(epoch, 1);
    // The standby's failwait cannot end before the active's acknowledgement window does.
    assert!(until < t0 + FAILWAIT);
    // SIGSTOP for 3 x failwait; meanwhile da2 took over.
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    tick(&mut b, at(t0, 1), &mut store);
    assert_eq!(tick(&mut b, at(t0, 1) + FAILWAIT, &mut store), [Action::Start { epoch: 2 }]);
    // SIGCONT: the first thing da1 does is fence itself, whatever the lease says.
    let resumed = t0 + 3 * FAILWAIT;
    let actions = a.on_lease(resumed, Ok(store.clone()), 2);
    assert!(matches!(&actions[..], [Action::Stop { .. }]), "{actions:?}");
    assert_eq!(a.role(), Role::Fenced);
    assert_eq!(a.acknowledge_until(), None);
    // And it rejoins as a standby that leaves the new active alone.
    assert!(tick(&mut a, resumed + Duration::from_millis(500), &mut store).is_empty());
    assert_eq!(a.role(), Role::Standby);
}

#[test]
fn an_active_that_cannot_renew_fences_itself_at_failwait_minus_margin() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let mut now = t0;
    let window = timing().ack_window();
    // Every write fails on I/O (the shared dir is unwritable); reads still work.
    loop {
        now += timing().heartbeat;
        let actions = a.on_lease(now, Ok(store.clone()), 0);
        if actions.iter().any(|a| matches!(a, Action::Stop { .. })) {
            break;
        }
        for action in actions {
            if let Action::Write { .. } = action {
                assert!(a.on_write(now, Err(StoreError::Io("read-only".into()))).is_empty());
            }
        }
        assert!(now < t0 + window + timing().heartbeat, "never fenced");
    }
    assert!(now >= t0 + window);
    assert_eq!(a.role(), Role::Fenced);
}

#[test]
fn a_higher_epoch_in_the_lease_or_the_repository_fences_the_active() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    store = Some(lease("da2", 5, 0, LeaseState::Starting));
    let actions = a.on_lease(at(t0, 10), Ok(store.clone()), 5);
    assert!(matches!(&actions[..], [Action::Stop { reason }] if reason.contains("da2")));
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let actions = a.on_fenced(at(t0, 10), "repository is at epoch 9".into());
    assert!(matches!(&actions[..], [Action::Stop { .. }]));
    assert_eq!(a.role(), Role::Fenced);
}

#[test]
fn a_start_that_hangs_yields_after_startwait_and_the_nodes_alternate() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = Elector::new("da1", "http://da1", timing(), t0);
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    let mut now = t0;
    let mut starts = Vec::new();
    // Neither node ever reports ready; both keep heartbeating.
    while now < t0 + 5 * STARTWAIT {
        now += Duration::from_millis(250);
        for (name, e) in [("da1", &mut a), ("da2", &mut b)] {
            for action in tick(e, now, &mut store) {
                if let Action::Start { epoch } = action {
                    starts.push((name, epoch, now));
                }
            }
        }
    }
    let names: Vec<&str> = starts.iter().map(|s| s.0).collect();
    assert!(starts.len() >= 4, "{starts:?}");
    assert!(names.windows(2).all(|w| w[0] != w[1]), "turns alternate: {names:?}");
    assert!(starts.windows(2).all(|w| w[1].1 == w[0].1 + 1), "each turn a new epoch");
    for w in starts.windows(2) {
        let gap = w[1].2 - w[0].2;
        assert!(gap >= STARTWAIT && gap < STARTWAIT + Duration::from_secs(1), "turn lasted {gap:?}");
    }
}

#[test]
fn the_standby_takes_a_start_that_never_ends_even_if_the_starter_never_yields() {
    let t0 = Instant::now();
    // da1 heartbeats in Starting forever (a stuck process whose lease thread still runs).
    let mut store = Some(lease("da1", 3, 0, LeaseState::Starting));
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    let mut now = t0;
    let mut counter = 0;
    loop {
        now += Duration::from_millis(500);
        counter += 1;
        store.as_mut().unwrap().counter = counter;
        if tick(&mut b, now, &mut store) == [Action::Start { epoch: 4 }] {
            break;
        }
        assert!(now <= t0 + STARTWAIT + Duration::from_secs(1), "never took over");
    }
    assert!(now >= t0 + STARTWAIT);
}

#[test]
fn planned_switchover_hands_over_at_the_next_read() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    tick(&mut b, at(t0, 100), &mut store);
    let actions = a.on_release(at(t0, 200)).unwrap();
    let rest = perform(&mut a, at(t0, 200), &mut store, actions);
    assert!(matches!(&rest[..], [Action::Stop { .. }]));
    assert_eq!(a.role(), Role::Standby);
    assert_eq!(store.as_ref().unwrap().state, LeaseState::Released);
    assert_eq!(tick(&mut b, at(t0, 300), &mut store), [Action::Start { epoch: 2 }]);
    // The released node does not take its own release back while the other starts.
    assert!(tick(&mut a, at(t0, 400), &mut store).is_empty());
    assert!(b.on_release(at(t0, 500)).is_ok());
    assert!(Elector::new("x", "u", timing(), t0).on_release(t0).is_err());
}

#[test]
fn a_release_nobody_takes_is_taken_back_after_failwait() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let actions = a.on_release(at(t0, 10)).unwrap();
    perform(&mut a, at(t0, 10), &mut store, actions);
    assert!(tick(&mut a, at(t0, 20), &mut store).is_empty());
    assert_eq!(tick(&mut a, at(t0, 20) + FAILWAIT, &mut store), [Action::Start { epoch: 2 }]);
}

#[test]
fn a_restarted_node_takes_back_its_own_stale_lease_at_once() {
    let t0 = Instant::now();
    let mut store = Some(lease("da1", 7, 99, LeaseState::Active));
    let mut again = Elector::new("da1", "http://da1", timing(), t0);
    assert_eq!(tick(&mut again, t0, &mut store), [Action::Start { epoch: 8 }]);
}

#[test]
fn two_standbys_racing_for_the_lease_have_one_winner() {
    let t0 = Instant::now();
    let mut store = Some(lease("dead", 1, 5, LeaseState::Active));
    let mut a = Elector::new("da1", "u1", timing(), t0);
    let mut b = Elector::new("da2", "u2", timing(), t0);
    tick(&mut a, t0, &mut store);
    tick(&mut b, t0, &mut store);
    let later = t0 + FAILWAIT;
    // Both read the same stale lease, then both write: the second write conflicts.
    let wa = a.on_lease(later, Ok(store.clone()), 0);
    let wb = b.on_lease(later, Ok(store.clone()), 0);
    let ra = perform(&mut a, later, &mut store, wa);
    let rb = perform(&mut b, later, &mut store, wb);
    assert_eq!(ra, [Action::Start { epoch: 2 }]);
    assert!(rb.is_empty());
    assert_eq!((a.role(), b.role()), (Role::Starting, Role::Standby));
}

#[test]
fn an_unreadable_lease_changes_nothing_for_a_standby() {
    let t0 = Instant::now();
    let mut b = Elector::new("da2", "u", timing(), t0);
    assert!(b.on_lease(t0 + 10 * FAILWAIT, Err("EIO".into()), 0).is_empty());
    assert_eq!(b.role(), Role::Standby);
}

#[test]
fn a_node_in_maintenance_never_takes_the_lease() {
    let t0 = Instant::now();
    let mut store = None;
    let mut m = Elector::new("da1", "u", timing(), t0);
    assert!(m.set_maintenance(true, t0).is_empty());
    assert_eq!(m.role(), Role::Maintenance);
    // A free lease, a stale one, its own from before a restart: none is taken.
    assert!(tick(&mut m, t0, &mut store).is_empty());
    let mut store = Some(lease("dead", 3, 1, LeaseState::Active));
    tick(&mut m, at(t0, 1), &mut store);
    assert!(tick(&mut m, at(t0, 1) + 10 * FAILWAIT, &mut store).is_empty());
    let mut own = Some(lease("da1", 4, 1, LeaseState::Active));
    assert!(tick(&mut m, at(t0, 2) + 10 * FAILWAIT, &mut own).is_empty());
    // Out of maintenance, it is a standby again and takes what is due.
    assert!(m.set_maintenance(false, at(t0, 3) + 10 * FAILWAIT).is_empty());
    assert_eq!(m.role(), Role::Standby);
    assert_eq!(tick(&mut m, at(t0, 4) + 10 * FAILWAIT, &mut own), [Action::Start { epoch: 5 }]);
}

#[test]
fn an_active_put_into_maintenance_hands_over_first() {
    let t0 = Instant::now();
    let mut store = None;
    let mut a = active("da1", t0, &mut store);
    let mut b = Elector::new("da2", "http://da2", timing(), t0);
    tick(&mut b, at(t0, 100), &mut store);
    let actions = a.set_maintenance(true, at(t0, 200));
    let rest = perform(&mut a, at(t0, 200), &mut store, actions);
    assert!(matches!(&rest[..], [Action::Stop { reason }] if reason.contains("maintenance")), "{rest:?}");
    assert_eq!(a.role(), Role::Maintenance);
    assert_eq!(store.as_ref().unwrap().state, LeaseState::Released);
    assert_eq!(tick(&mut b, at(t0, 300), &mut store), [Action::Start { epoch: 2 }]);
    // Its own release is never taken back, even after failwait with nobody taking it.
    let mut alone = None;
    let mut c = active("da3", t0, &mut alone);
    let actions = c.set_maintenance(true, at(t0, 10));
    perform(&mut c, at(t0, 10), &mut alone, actions);
    assert!(tick(&mut c, at(t0, 20) + 2 * FAILWAIT, &mut alone).is_empty());
    assert!(c.set_maintenance(true, at(t0, 30)).is_empty(), "already in maintenance: nothing to do");
}
