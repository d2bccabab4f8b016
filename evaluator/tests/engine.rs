//! Evaluation precedence and sources: every row of pbflags v0.6's source/path table and every
//! behaviour its evaluator tests pin, plus the improvements (negative caching, coalescing, bounded
//! memory, stale rules, batched bulk evaluation).

#[path = "support/engine.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::{Harness, def};
use pbflags_evaluator::core::source::FlagState;
use pbflags_proto::v1::{EvaluationSource as Src, EvaluatorStatus, FlagValue, State};

fn b(v: bool) -> Option<FlagValue> {
    Some(FlagValue::bool(v))
}
fn s(v: &str) -> Option<FlagValue> {
    Some(FlagValue::string(v))
}

// ---- v0.6 matrix -------------------------------------------------------------------------------

#[test]
fn global_enabled_with_value_returns_the_value_as_global() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Enabled, b(true));
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Global));
}

#[test]
fn global_enabled_without_value_returns_the_compiled_default() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Enabled, None);
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(false).as_ref(), Src::Default));
}

#[test]
fn global_default_state_returns_the_compiled_default() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    h.source.set_flag("f/1", State::Default, b(false));
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Default));
}

#[test]
fn killed_row_before_the_kill_set_knows_returns_the_default() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Killed, b(true));
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(false).as_ref(), Src::Default));
}

#[test]
fn unknown_flag_without_a_row_has_no_value() {
    let h = Harness::new(vec![]);
    let ev = h.eval("nope/1", "");
    assert_eq!((ev.value(), ev.source), (None, Src::Default));
}

#[test]
fn kill_set_beats_an_enabled_global_state() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Killed, b(true));
    assert!(h.poll_kills());
    h.source.set_flag("f/1", State::Enabled, b(true));
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(false).as_ref(), Src::Killed));
}

#[test]
fn kill_set_beats_an_entity_override() {
    let h = Harness::new(vec![def("f/1", "user", b(true))]);
    h.source.set_override("f/1", "u1", State::Enabled, b(false));
    h.source.set_flag("f/1", State::Killed, None);
    assert!(h.poll_kills());
    let ev = h.eval("f/1", "u1");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Killed));
}

#[test]
fn an_unknown_killed_flag_is_killed_without_a_value() {
    let h = Harness::new(vec![]);
    h.source.set_flag("ghost/1", State::Killed, None);
    assert!(h.poll_kills());
    let ev = h.eval("ghost/1", "");
    assert_eq!((ev.value(), ev.source), (None, Src::Killed));
}

#[test]
fn a_stored_value_of_another_type_is_served_as_absent_and_counted() {
    // The descriptors now declare f/1 a string and f/2 (user layer) a string; the stored values
    // are still bools from before the type change.
    let h = Harness::new(vec![
        def("f/1", "", s("compiled-1")),
        def("f/2", "user", s("compiled-2")),
    ]);
    h.source.set_flag("f/1", State::Enabled, b(true));
    h.source.set_override("f/2", "u1", State::Enabled, b(true));
    h.source.set_flag("f/2", State::Enabled, s("global-2"));

    let ev = h.eval("f/1", "");
    assert_eq!(
        (ev.value(), ev.source),
        (s("compiled-1").as_ref(), Src::Default)
    );
    // The mistyped override decides nothing more than a value-less ENABLED override does.
    let ev = h.eval("f/2", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("compiled-2").as_ref(), Src::Default)
    );
    assert_eq!(h.metrics.invalid_values.get(), 2);
    // Bulk takes the same path; a value of the right type is served.
    let bulk = h.bulk(&["f/1", "f/2"], "u2");
    assert_eq!(bulk[0].1.source, Src::Default);
    assert_eq!(
        (bulk[1].1.value(), bulk[1].1.source),
        (s("global-2").as_ref(), Src::Global)
    );
}

#[test]
fn enabled_override_on_a_user_layer_flag_returns_the_override() {
    let h = Harness::new(vec![def("f/2", "user", s("compiled"))]);
    h.source
        .set_override("f/2", "u1", State::Enabled, s("per-user"));
    let ev = h.eval("f/2", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("per-user").as_ref(), Src::Override)
    );
}

#[test]
fn default_or_killed_override_returns_the_compiled_default_without_consulting_global() {
    let h = Harness::new(vec![
        def("f/2", "user", s("compiled")),
        def("f/3", "user", Some(FlagValue::int64(42))),
    ]);
    h.source.set_flag("f/2", State::Enabled, s("global"));
    h.source
        .set_override("f/2", "u1", State::Default, s("ignored"));
    h.source
        .set_override("f/3", "u1", State::Killed, Some(FlagValue::int64(7)));
    let ev = h.eval("f/2", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("compiled").as_ref(), Src::Default)
    );
    let ev = h.eval("f/3", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (Some(&FlagValue::int64(42)), Src::Default)
    );
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 0);
}

#[test]
fn enabled_override_without_value_returns_the_compiled_default() {
    let h = Harness::new(vec![def("f/1", "user", b(true))]);
    h.source.set_override("f/1", "u1", State::Enabled, None);
    let ev = h.eval("f/1", "u1");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Default));
}

#[test]
fn unspecified_override_state_falls_through_to_global() {
    let h = Harness::new(vec![def("f/1", "user", b(true))]);
    h.source
        .set_override("f/1", "u1", State::Unspecified, b(false));
    h.source.set_flag("f/1", State::Enabled, b(false));
    let ev = h.eval("f/1", "u1");
    assert_eq!((ev.value(), ev.source), (b(false).as_ref(), Src::Global));
}

#[test]
fn global_layer_flag_with_an_entity_skips_overrides_entirely() {
    let h = Harness::new(vec![
        def("f/1", "global", b(false)),
        def("f/2", "", b(false)),
        def("f/3", "GLOBAL", b(false)),
    ]);
    for id in ["f/1", "f/2", "f/3"] {
        h.source.set_flag(id, State::Enabled, b(true));
        h.source.set_override(id, "u1", State::Enabled, b(false));
        let ev = h.eval(id, "u1");
        assert_eq!(
            (ev.value(), ev.source),
            (b(true).as_ref(), Src::Global),
            "{id}"
        );
    }
    assert_eq!(h.source.calls.overrides.load(Ordering::SeqCst), 0);
}

#[test]
fn user_layer_flag_without_an_override_returns_global_state() {
    let h = Harness::new(vec![def("f/1", "user", s("compiled"))]);
    h.source.set_flag("f/1", State::Enabled, s("global-val"));
    let ev = h.eval("f/1", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("global-val").as_ref(), Src::Global)
    );
}

#[test]
fn archived_row_with_value_returns_it_as_archived_whatever_its_state() {
    let h = Harness::new(vec![
        def("f/1", "", b(false)),
        def("f/2", "", s("fallback")),
    ]);
    h.source.set_flag_state(
        "f/1",
        FlagState {
            state: State::Default,
            value: b(true),
            archived: true,
        },
    );
    h.source.set_flag_state(
        "f/2",
        FlagState {
            state: State::Enabled,
            value: None,
            archived: true,
        },
    );
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Archived));
    let ev = h.eval("f/2", "");
    assert_eq!(
        (ev.value(), ev.source),
        (s("fallback").as_ref(), Src::Default)
    );
}

#[test]
fn cached_override_is_served_as_cached_when_the_source_fails_after_ttl() {
    let h = Harness::new(vec![def("f/1", "user", s("compiled"))]);
    h.source
        .set_override("f/1", "u1", State::Enabled, s("stale-override"));
    assert_eq!(h.eval("f/1", "u1").source, Src::Override);
    h.expire();
    h.source.set_failing(true);
    let ev = h.eval("f/1", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("stale-override").as_ref(), Src::Cached)
    );
}

#[test]
fn cached_global_state_is_served_as_cached_when_the_source_fails_after_ttl() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Enabled, b(true));
    assert_eq!(h.eval("f/1", "").source, Src::Global);
    h.expire();
    h.source.set_failing(true);
    let ev = h.eval("f/1", "");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Cached));
}

#[test]
fn all_fetches_failing_without_history_returns_the_compiled_default() {
    let h = Harness::new(vec![def("f/1", "user", Some(FlagValue::double(9.99)))]);
    h.source.set_failing(true);
    for entity in ["", "u1"] {
        let ev = h.eval("f/1", entity);
        assert_eq!(
            (ev.value(), ev.source),
            (Some(&FlagValue::double(9.99)), Src::Default)
        );
    }
    let ev = h.eval("unknown/1", "u1");
    assert_eq!((ev.value(), ev.source), (None, Src::Default));
}

#[test]
fn a_changed_global_state_is_served_after_its_ttl_and_then_from_the_cache() {
    let h = Harness::with_config(vec![def("f/1", "", s("d"))], harness::exact_ttl());
    h.source.set_flag("f/1", State::Enabled, s("one"));
    assert_eq!(h.eval("f/1", "").value(), s("one").as_ref());
    h.source.set_flag("f/1", State::Enabled, s("two"));
    assert_eq!(
        h.eval("f/1", "").value(),
        s("one").as_ref(),
        "cached within the TTL"
    );
    h.expire();
    assert_eq!(
        h.eval("f/1", "").value(),
        s("two").as_ref(),
        "fetched after it"
    );
    // The cached path (this thread's copy of the slot) now serves the new entry.
    for _ in 0..3 {
        let ev = h.eval("f/1", "");
        assert_eq!((ev.value(), ev.source), (s("two").as_ref(), Src::Global));
    }
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 2);
}

#[test]
fn a_second_evaluation_within_ttl_does_not_call_the_source() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Enabled, b(true));
    h.eval("f/1", "");
    h.eval("f/1", "");
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 1);
}

#[test]
fn all_four_value_types_round_trip_as_global() {
    let values = [
        FlagValue::bool(true),
        FlagValue::string("x"),
        FlagValue::int64(-5),
        FlagValue::double(0.5),
    ];
    let h = Harness::new(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| pbflags_evaluator::core::descriptor::FlagDef {
                // Declared with the type of its stored value, without a default.
                flag_type: pbflags_evaluator::core::descriptor::value_type(v).unwrap(),
                ..def(&format!("t/{}", i + 1), "", None)
            })
            .collect(),
    );
    for (i, v) in values.iter().enumerate() {
        h.source
            .set_flag(&format!("t/{}", i + 1), State::Enabled, Some(v.clone()));
    }
    for (i, v) in values.iter().enumerate() {
        let ev = h.eval(&format!("t/{}", i + 1), "");
        assert_eq!((ev.value(), ev.source), (Some(v), Src::Global));
    }
}

#[test]
fn a_flag_known_only_to_the_database_still_resolves_its_state() {
    let h = Harness::new(vec![]);
    h.source.set_flag("db-only/1", State::Enabled, s("from-db"));
    h.source.set_flag("db-only/2", State::Default, s("ignored"));
    let ev = h.eval("db-only/1", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("from-db").as_ref(), Src::Global)
    );
    assert_eq!(h.eval("db-only/2", "").value(), None);
}

#[test]
fn a_removed_override_stops_applying_after_its_ttl() {
    let h = Harness::new(vec![def("f/1", "user", b(true))]);
    h.source.set_override("f/1", "u1", State::Enabled, b(false));
    assert_eq!(h.eval("f/1", "u1").source, Src::Override);
    assert_eq!(h.eval("f/1", "u2").source, Src::Default);
    h.source.remove_override("f/1", "u1");
    h.expire();
    let ev = h.eval("f/1", "u1");
    assert_eq!((ev.value(), ev.source), (b(true).as_ref(), Src::Default));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_evaluations_are_all_correct() {
    let h = Harness::new(vec![def("f/1", "user", b(true))]);
    h.source
        .set_override("f/1", "even", State::Enabled, b(false));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let engine = h.engine.clone();
            tokio::spawn(async move {
                let entity = if i % 2 == 0 { "even" } else { "odd" };
                (i, engine.evaluate("f/1", entity).await)
            })
        })
        .collect();
    for t in tasks {
        let (i, ev) = t.await.expect("no panic");
        let want = if i % 2 == 0 {
            (b(false), Src::Override)
        } else {
            (b(true), Src::Default)
        };
        assert_eq!((ev.value().cloned(), ev.source), want);
    }
}

// ---- health and the kill poll -----------------------------------------------------------------------

#[test]
fn while_the_source_is_down_misses_answer_without_calling_it_but_one_probe_per_interval() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    h.source.set_failing(true);
    for i in 0..3 {
        h.eval(&format!("x/{i}"), "");
    }
    assert_eq!(h.engine.health().status(), EvaluatorStatus::Degraded);
    let calls = h.source.calls.fetches();
    // Ten misses within the probe interval: none calls the source.
    for i in 0..10 {
        let ev = h.eval(&format!("y/{i}"), "");
        assert_eq!(ev.source, Src::Default);
    }
    assert_eq!(h.source.calls.fetches(), calls);
    assert_eq!(h.metrics.source_fast_failures.get(), 10);
    // After the interval one miss probes (and fails again); the rest stay fast. (Without a
    // runtime the probe runs in the caller; with one, in the background.) All five are answered
    // at once, so all count.
    h.clock.advance(Duration::from_millis(500));
    for i in 0..5 {
        h.eval(&format!("w/{i}"), "");
    }
    assert_eq!(h.source.calls.fetches(), calls + 1);
    assert_eq!(h.metrics.source_fast_failures.get(), 15);
    // The next probe once the interval has passed; it finds the source back.
    h.source.set_failing(false);
    h.eval("z/1", "");
    assert_eq!(
        h.source.calls.fetches(),
        calls + 1,
        "still within the interval"
    );
    h.clock.advance(Duration::from_millis(500));
    h.eval("z/2", "");
    assert_eq!(h.source.calls.fetches(), calls + 2);
    assert_eq!(h.engine.health().status(), EvaluatorStatus::Serving);
    h.eval("z/3", "");
    h.eval("z/4", "");
    assert_eq!(
        h.source.calls.fetches(),
        calls + 4,
        "every miss calls the source again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_source_is_down_a_probe_runs_in_the_background_and_its_caller_does_not_wait() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    h.source.set_failing(true);
    for i in 0..3 {
        h.engine.evaluate(&format!("x/{i}"), "").await;
    }
    assert_eq!(h.engine.health().status(), EvaluatorStatus::Degraded);
    // The source comes back, but slow: every call is held until released.
    h.source.set_failing(false);
    h.source.hold();
    h.clock.advance(Duration::from_millis(500));
    let calls = h.source.calls.fetches();
    // The probe's caller is answered without waiting for the held call ...
    let ev = tokio::time::timeout(Duration::from_secs(10), h.engine.evaluate("f/1", ""))
        .await
        .expect("not held back by the probe");
    assert_eq!(ev.source, Src::Default);
    let ids = ["f/1".to_owned()];
    let ev = tokio::time::timeout(
        Duration::from_secs(10),
        h.engine.bulk_evaluate(ids.to_vec(), ""),
    )
    .await
    .expect("not held back");
    assert_eq!(ev[0].1.source, Src::Default, "other misses stay fast");
    // ... and the probe, released, brings the source back and fills the cache.
    wait_for(|| h.source.calls.fetches() > calls).await;
    h.source.release();
    wait_for(|| h.engine.health().status() == EvaluatorStatus::Serving).await;
    let ev = h.engine.evaluate("f/1", "").await;
    assert_eq!(ev.source, Src::Default);
    assert_eq!(
        h.source.calls.fetches(),
        calls + 1,
        "served from the cache the probe filled"
    );
}

/// Waits (bounded: a hang guard, not a performance claim) until `f` holds.
async fn wait_for(f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 10 s");
}

#[test]
fn health_degrades_after_three_failed_fetches_and_recovers_on_one_success() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    assert_eq!(h.engine.health().status(), EvaluatorStatus::Connecting);
    h.source.set_failing(true);
    for i in 0..3 {
        h.eval(&format!("x/{i}"), "");
    }
    assert_eq!(h.engine.health_report().status, EvaluatorStatus::Degraded);
    assert_eq!(h.engine.health_report().consecutive_failures, 3);
    h.source.set_failing(false);
    // The next miss to reach the source is the probe, one interval after the last failure.
    h.clock.advance(Duration::from_millis(500));
    h.eval("f/1", "");
    assert_eq!(h.engine.health_report().status, EvaluatorStatus::Serving);
}

#[test]
fn a_failed_kill_poll_keeps_the_last_kill_set_and_counts_towards_health() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    h.source.set_flag("f/1", State::Killed, None);
    assert!(h.poll_kills());
    assert_eq!(
        h.engine.health().status(),
        EvaluatorStatus::Serving,
        "the kill poll counts as contact"
    );
    h.source.set_failing(true);
    for _ in 0..3 {
        assert!(!h.poll_kills());
    }
    assert_eq!(h.eval("f/1", "").source, Src::Killed, "sticky kill");
    assert_eq!(h.engine.health().status(), EvaluatorStatus::Degraded);
    assert_eq!(h.engine.health().backoff_multiplier(), 4);
    assert_eq!(h.metrics.kill_set_size.get(), 1);
}

#[test]
fn health_reports_real_cache_counts() {
    let h = Harness::new(vec![def("f/1", "", b(true)), def("f/2", "", b(true))]);
    h.eval("f/1", "");
    h.eval("f/2", "");
    // An undeclared id is cached from its second fetch on.
    h.eval("unsynced/9", "");
    assert_eq!(h.engine.health_report().cached_flags, 2);
    h.eval("unsynced/9", "");
    assert_eq!(h.engine.health_report().cached_flags, 3);
    assert_eq!(h.metrics.flag_cache_size.get(), 3);
}

// ---- better than v0.6 --------------------------------------------------------------------------------

#[test]
fn an_undeclared_flag_is_cached_from_its_second_fetch_and_ids_seen_once_are_not() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    for _ in 0..10 {
        assert_eq!(h.eval("stray/1", "").source, Src::Default);
    }
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 2);
    // A stream of ids each seen once is fetched (and answered) but takes no cache space.
    for i in 0..1000 {
        h.eval(&format!("probe/{i}"), "");
    }
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 1002);
    assert_eq!(h.engine.health_report().cached_flags, 1);
}

#[test]
fn an_unsynced_flag_is_fetched_once_per_ttl_not_per_evaluation() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    for _ in 0..10 {
        assert_eq!(h.eval("f/1", "").source, Src::Default);
    }
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 1);
}

#[test]
fn an_entity_without_override_is_looked_up_once_per_ttl() {
    let h = Harness::new(vec![def("f/1", "user", b(true))]);
    h.source.set_flag("f/1", State::Enabled, b(false));
    for _ in 0..10 {
        assert_eq!(h.eval("f/1", "no-override").source, Src::Global);
    }
    assert_eq!(h.source.calls.overrides.load(Ordering::SeqCst), 1);
}

/// Waits (bounded: a hang guard) until `n` callers have joined a fetch already in flight.
async fn until_joined(h: &Harness, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.metrics.coalesced_fetches.get() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "callers did not join the fetch in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_for_one_flag_make_one_source_call() {
    let h = Harness::new(vec![def("f/1", "", b(false))]);
    h.source.set_flag("f/1", State::Enabled, b(true));
    h.source.hold();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let engine = h.engine.clone();
            tokio::spawn(async move { engine.evaluate("f/1", "").await })
        })
        .collect();
    until_joined(&h, 99).await;
    h.source.release();
    for t in tasks {
        assert_eq!(t.await.expect("no panic").source, Src::Global);
    }
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_bulk_misses_for_the_same_flags_make_one_source_call() {
    let h = Harness::new(vec![def("f/1", "", b(false)), def("f/2", "", b(false))]);
    h.source.set_flag("f/1", State::Enabled, b(true));
    h.source.set_flag("f/2", State::Enabled, b(true));
    h.source.hold();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let engine = h.engine.clone();
            // The same flags, in either order.
            let ids = if i % 2 == 0 {
                ["f/1", "f/2"]
            } else {
                ["f/2", "f/1"]
            };
            let ids = ids.map(String::from).to_vec();
            tokio::spawn(async move { engine.bulk_evaluate(ids, "").await })
        })
        .collect();
    until_joined(&h, 99).await;
    h.source.release();
    for t in tasks {
        for (id, ev) in t.await.expect("no panic") {
            assert_eq!(ev.source, Src::Global, "{id}");
            assert_eq!(ev.value(), b(true).as_ref(), "{id}");
        }
    }
    assert_eq!(h.source.calls.flag_states.load(Ordering::SeqCst), 1);
    // A different set of missing flags is a different fetch.
    h.expire();
    h.bulk(&["f/1"], "");
    assert_eq!(h.source.calls.flag_states.load(Ordering::SeqCst), 2);
}

#[test]
fn memory_for_high_cardinality_entities_is_bounded() {
    let config = pbflags_evaluator::core::cache::CacheConfig {
        override_max_entries: 500,
        last_known_max_entries: 1_000,
        ..harness::exact_ttl()
    };
    let h = Harness::with_config(vec![def("f/1", "user", b(true))], config);
    for i in 0..20_000 {
        h.eval("f/1", &format!("entity-{i}"));
    }
    let (_, overrides, last_known) = h.engine.caches().sizes();
    assert!(overrides <= 500, "override cache holds {overrides}");
    assert!(last_known <= 2_000, "last-known stores hold {last_known}");
}

#[test]
fn a_stale_default_state_yields_the_compiled_default_not_the_stale_value() {
    let h = Harness::new(vec![def("f/1", "", s("compiled"))]);
    h.source.set_flag("f/1", State::Default, s("leftover"));
    assert_eq!(h.eval("f/1", "").value(), s("compiled").as_ref());
    h.expire();
    h.source.set_failing(true);
    let ev = h.eval("f/1", "");
    assert_eq!(
        (ev.value(), ev.source),
        (s("compiled").as_ref(), Src::Default)
    );
}

#[test]
fn a_stale_default_override_yields_the_compiled_default() {
    let h = Harness::new(vec![def("f/1", "user", s("compiled"))]);
    h.source
        .set_override("f/1", "u1", State::Default, s("leftover"));
    h.eval("f/1", "u1");
    h.expire();
    h.source.set_failing(true);
    let ev = h.eval("f/1", "u1");
    assert_eq!(
        (ev.value(), ev.source),
        (s("compiled").as_ref(), Src::Default)
    );
}

#[test]
fn bulk_with_an_entity_makes_one_override_call_and_one_state_call() {
    let ids: Vec<String> = (1..=50).map(|i| format!("f/{i}")).collect();
    let h = Harness::new(ids.iter().map(|id| def(id, "user", b(false))).collect());
    h.source.set_override("f/7", "u1", State::Enabled, b(true));
    h.source.set_flag("f/8", State::Enabled, b(true));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let out = h.bulk(&refs, "u1");
    assert_eq!(out.len(), 50);
    assert_eq!(
        (out[6].1.source, out[7].1.source, out[0].1.source),
        (Src::Override, Src::Global, Src::Default)
    );
    assert_eq!(h.source.calls.overrides.load(Ordering::SeqCst), 1);
    assert_eq!(h.source.calls.flag_states.load(Ordering::SeqCst), 1);
    assert_eq!(h.source.calls.flag_state.load(Ordering::SeqCst), 0);
    // Everything is cached now, negatives included.
    h.bulk(&refs, "u1");
    assert_eq!(h.source.calls.fetches(), 2);
}

#[test]
fn bulk_with_no_ids_evaluates_every_known_flag_in_declaration_order() {
    let h = Harness::new(vec![
        def("a/2", "", b(true)),
        def("a/1", "", b(false)),
        def("b/1", "", None),
    ]);
    let out = h.bulk(&[], "");
    let ids: Vec<&str> = out.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a/2", "a/1", "b/1"]);
}

#[test]
fn bulk_keeps_request_order_duplicates_and_unknown_ids() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    let out = h.bulk(&["f/1", "zzz/1", "f/1"], "u1");
    let ids: Vec<&str> = out.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["f/1", "zzz/1", "f/1"]);
    assert_eq!(out[1].1.value(), None);
    assert_eq!(out[2].1.value(), b(true).as_ref());
}

#[test]
fn bulk_falls_back_to_last_known_values_when_the_batch_fails() {
    let h = Harness::new(vec![def("f/1", "user", b(false)), def("f/2", "", b(false))]);
    h.source.set_override("f/1", "u1", State::Enabled, b(true));
    h.source.set_flag("f/2", State::Enabled, b(true));
    h.bulk(&["f/1", "f/2"], "u1");
    h.expire();
    h.source.set_failing(true);
    let out = h.bulk(&["f/1", "f/2"], "u1");
    assert_eq!(
        (out[0].1.source, out[1].1.source),
        (Src::Cached, Src::Cached)
    );
    assert_eq!(
        (out[0].1.value(), out[1].1.value()),
        (b(true).as_ref(), b(true).as_ref())
    );
}

#[test]
fn bulk_and_single_evaluation_agree() {
    let h = Harness::new(vec![
        def("f/1", "user", b(false)),
        def("f/2", "", s("d")),
        def("f/3", "user", None),
    ]);
    h.source.set_override("f/1", "u1", State::Enabled, b(true));
    h.source.set_flag("f/2", State::Enabled, s("g"));
    h.source.set_flag("f/3", State::Killed, None);
    assert!(h.poll_kills());
    let bulk = h.bulk(&["f/1", "f/2", "f/3", "x/1"], "u1");
    for (id, ev) in bulk {
        let single = h.eval(&id, "u1");
        assert_eq!(
            (ev.value(), ev.source),
            (single.value(), single.source),
            "{id}"
        );
    }
}

#[test]
fn evaluation_metrics_count_each_source() {
    let h = Harness::new(vec![def("f/1", "", b(true))]);
    h.source.set_flag("f/1", State::Enabled, b(false));
    h.eval("f/1", "");
    h.bulk(&["f/1", "f/1"], "");
    let text = h.metrics.render();
    assert!(
        text.contains("pbflags_evaluations_total{source=\"global\",status=\"ok\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("pbflags_cache_hits_total{tier=\"flags\"} 2"),
        "one hit per evaluation served from cache: {text}"
    );
    assert!(
        text.contains("pbflags_cache_misses_total{tier=\"flags\"} 1"),
        "{text}"
    );
}
