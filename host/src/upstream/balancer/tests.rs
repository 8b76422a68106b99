use super::*;
use crate::upstream::retry::BUDGET_WINDOW;

fn uris(n: usize) -> Vec<Uri> {
    (0..n)
        .map(|i| format!("http://10.0.0.{i}:80").parse().unwrap())
        .collect()
}

fn upstreams(n: usize, strategy: Strategy) -> Upstreams {
    Upstreams::new(
        "r".into(),
        &uris(n),
        BalanceSettings {
            strategy,
            ..BalanceSettings::default()
        },
        RetryBudgetSettings::default(),
        None,
    )
}

fn eject(u: &Upstreams, i: usize) {
    lock(&u.endpoints[i].state.health).eject(Instant::now(), &u.settings);
}

#[test]
fn round_robin_takes_each_endpoint_in_turn() {
    let u = upstreams(3, Strategy::RoundRobin);
    let picks: Vec<usize> = (0..6).map(|_| u.pick(&[], Instant::now())).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_skips_ejected_and_tried_endpoints() {
    let u = upstreams(3, Strategy::RoundRobin);
    eject(&u, 1);
    for _ in 0..10 {
        assert_ne!(u.pick(&[], Instant::now()), 1);
    }
    // A retry avoids the endpoint that failed.
    for _ in 0..10 {
        assert_eq!(u.pick(&[0], Instant::now()), 2);
    }
}

#[test]
fn every_endpoint_ejected_means_all_are_tried_anyway() {
    let u = upstreams(2, Strategy::RoundRobin);
    eject(&u, 0);
    eject(&u, 1);
    let picks: Vec<usize> = (0..4).map(|_| u.pick(&[], Instant::now())).collect();
    assert_eq!(picks, [0, 1, 0, 1]);
    // Retries still go to the other one, then around again.
    assert_eq!(u.pick(&[0], Instant::now()), 1);
    let again = u.pick(&[0, 1], Instant::now());
    assert!(again < 2);
}

#[test]
fn least_requests_prefers_the_endpoint_with_fewest_in_flight() {
    let u = upstreams(3, Strategy::LeastRequests);
    let _a = InFlight::enter(&u.endpoints[0].state.in_flight);
    let _b = InFlight::enter(&u.endpoints[0].state.in_flight);
    let _c = InFlight::enter(&u.endpoints[1].state.in_flight);
    for _ in 0..5 {
        assert_eq!(u.pick(&[], Instant::now()), 2);
    }
    drop(_c);
    // Ties (1 and 2 both idle) are taken in turn.
    let picks: Vec<usize> = (0..4).map(|_| u.pick(&[], Instant::now())).collect();
    assert!(
        picks.contains(&1) && picks.contains(&2) && !picks.contains(&0),
        "{picks:?}"
    );
}

#[test]
fn failures_in_a_row_eject_and_each_ejection_in_a_row_doubles_up_to_the_cap() {
    let s = BalanceSettings {
        eject_after_failures: 3,
        eject: Duration::from_secs(10),
        max_eject: Duration::from_secs(25),
        ..BalanceSettings::default()
    };
    let mut h = Health::default();
    let t0 = Instant::now();
    assert_eq!(h.record(true, t0, &s), None);
    assert_eq!(h.record(true, t0, &s), None);
    assert_eq!(h.record(true, t0, &s), Some(Duration::from_secs(10)));
    assert!(h.is_ejected(t0 + Duration::from_secs(9)));
    assert!(!h.is_ejected(t0 + Duration::from_secs(10)));
    // Back in rotation, failing again: twice as long, then capped.
    let t1 = t0 + Duration::from_secs(11);
    for _ in 0..2 {
        assert_eq!(h.record(true, t1, &s), None);
    }
    assert_eq!(h.record(true, t1, &s), Some(Duration::from_secs(20)));
    let t2 = t1 + Duration::from_secs(21);
    for _ in 0..2 {
        h.record(true, t2, &s);
    }
    assert_eq!(h.record(true, t2, &s), Some(Duration::from_secs(25)));
    // One answer re-admits and forgets the history.
    assert_eq!(h.record(false, t2, &s), None);
    assert!(!h.is_ejected(t2));
    for _ in 0..2 {
        h.record(true, t2, &s);
    }
    assert_eq!(h.record(true, t2, &s), Some(Duration::from_secs(10)));
}

#[test]
fn a_success_between_failures_resets_the_count() {
    let s = BalanceSettings::default();
    let mut h = Health::default();
    let now = Instant::now();
    for _ in 0..10 {
        assert_eq!(h.record(true, now, &s), None);
        assert_eq!(h.record(true, now, &s), None);
        assert_eq!(h.record(false, now, &s), None);
    }
}

#[test]
fn retry_budget_allows_a_floor_plus_a_share_of_requests_over_the_window() {
    let t0 = Instant::now();
    let b = RetryBudget::new(
        RetryBudgetSettings {
            percent: 20,
            min_per_sec: 1,
        },
        t0,
    );
    // Floor: 1/s over a 10 s window = 10 retries with no requests at all.
    let granted = (0..50).filter(|_| b.withdraw(t0)).count();
    assert_eq!(granted, 10);
    // 50 requests add 20% of 50 = 10 more.
    for _ in 0..50 {
        b.deposit(t0);
    }
    let granted = (0..50).filter(|_| b.withdraw(t0)).count();
    assert_eq!(granted, 10);
    // Once the window has passed, everything has expired: the floor again.
    let later = t0 + BUDGET_WINDOW + Duration::from_secs(1);
    let granted = (0..50).filter(|_| b.withdraw(later)).count();
    assert_eq!(granted, 10);
}

#[test]
fn retry_budget_forgets_only_the_seconds_that_left_the_window() {
    let t0 = Instant::now();
    let b = RetryBudget::new(
        RetryBudgetSettings {
            percent: 100,
            min_per_sec: 0,
        },
        t0,
    );
    for _ in 0..5 {
        b.deposit(t0);
    }
    let t5 = t0 + Duration::from_secs(5);
    for _ in 0..5 {
        b.deposit(t5);
    }
    assert_eq!((0..20).filter(|_| b.withdraw(t5)).count(), 10);
    // At t0 + 10 s the first second's 5 requests have left the window,
    // the 10 retries (5 s old) have not.
    let t10 = t0 + Duration::from_secs(10);
    assert!(!b.withdraw(t10));
    for _ in 0..6 {
        b.deposit(t10);
    }
    // 11 requests, 10 retries: one more.
    assert!(b.withdraw(t10));
    assert!(!b.withdraw(t10));
}

#[test]
fn a_reload_keeps_the_state_of_endpoints_that_stay() {
    let old = upstreams(2, Strategy::RoundRobin);
    eject(&old, 1);
    old.endpoints[0].state.requests.store(7, Ordering::Relaxed);
    let new_uris = vec![uris(2)[1].clone(), "http://10.0.0.9:80".parse().unwrap()];
    let new = Upstreams::new(
        "r".into(),
        &new_uris,
        BalanceSettings::default(),
        RetryBudgetSettings::default(),
        Some(&old),
    );
    let view = new.view();
    assert_eq!(view.endpoints[0].url, "http://10.0.0.1:80");
    assert!(!view.endpoints[0].healthy, "kept its ejection");
    assert!(view.endpoints[1].healthy);
    assert_eq!(view.endpoints[1].requests, 0, "a new endpoint starts fresh");
}

#[test]
fn only_idempotent_methods_are_retried() {
    for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        assert!(is_idempotent(&m.parse().unwrap()), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT"] {
        assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
    }
}
