//! The cached evaluation path allocates nothing (counted by allocation-counter's global allocator):
//! the borrowing path for any value, and `evaluate` for values whose clone does not allocate.

#[path = "support/engine.rs"]
mod harness;

use futures_util::FutureExt as _;
use harness::{Harness, def};
use pbflags_evaluator::core::cache::CacheConfig;
use pbflags_proto::v1::{EvaluationSource, FlagValue, State};

fn allocations_during(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

/// Allocations in 1000 back-to-back runs of `f` once warm. moka's housekeeping (run on a reader's
/// thread when due, by read count or elapsed time) allocates a little; a round that catches a
/// due run is repeated, up to 10 times. A path that allocates per evaluation fails every round.
fn steady_state_allocations(mut f: impl FnMut()) -> u64 {
    let mut round = || allocations_during(|| (0..1_000).for_each(|_| f()));
    for _ in 0..10 {
        let n = round();
        if n == 0 {
            return 0;
        }
    }
    round()
}

/// One test, so no other test's caches are created or dropped meanwhile: moka reclaims memory
/// through a process-wide epoch scheme, and another thread's dropped cache makes this thread's
/// reads do (allocating) reclamation work that is not the measured path's.
#[test]
fn cached_evaluations_allocate_nothing() {
    borrowed_global_override_and_killed_evaluations_allocate_nothing();
    evaluate_allocates_nothing_for_scalar_values();
}

/// The borrowing path, for any value type.
fn borrowed_global_override_and_killed_evaluations_allocate_nothing() {
    let h = Harness::with_config(
        vec![
            def("f/1", "user", Some(FlagValue::string("d"))),
            def("f/2", "", None),
        ],
        CacheConfig::default(),
    );
    h.source
        .set_flag("f/1", State::Enabled, Some(FlagValue::string("global")));
    h.source
        .set_override("f/1", "u1", State::Enabled, Some(FlagValue::string("mine")));
    h.source.set_flag("f/2", State::Killed, None);
    assert!(h.poll_kills());
    // Warm the caches (and moka's internal buffers).
    for _ in 0..100 {
        h.eval("f/1", "");
        h.eval("f/1", "u1");
    }
    // (flag, entity, source, has a value): f/2 has no compiled default.
    let cases = [
        ("f/1", "", EvaluationSource::Global, true),
        ("f/1", "u1", EvaluationSource::Override, true),
        ("f/2", "", EvaluationSource::Killed, false),
    ];
    for (flag, entity, want, has_value) in cases {
        let n = steady_state_allocations(|| {
            let (source, value) = h
                .engine
                .evaluate_cached_with(flag, entity, |(s, v)| (s, v.is_some()))
                .expect("cached");
            assert_eq!((source, value), (want, has_value));
        });
        assert_eq!(
            n, 0,
            "{flag} for {entity:?}: {n} allocations in 1000 cached evaluations"
        );
    }
}

/// `evaluate` clones the value out; for scalar values that allocates nothing either.
fn evaluate_allocates_nothing_for_scalar_values() {
    let h = Harness::with_config(
        vec![def("f/1", "user", Some(FlagValue::bool(false)))],
        CacheConfig::default(),
    );
    h.source
        .set_flag("f/1", State::Enabled, Some(FlagValue::bool(true)));
    h.source
        .set_override("f/1", "u1", State::Enabled, Some(FlagValue::bool(false)));
    for _ in 0..100 {
        h.eval("f/1", "");
        h.eval("f/1", "u1");
    }
    for (entity, want) in [
        ("", EvaluationSource::Global),
        ("u1", EvaluationSource::Override),
    ] {
        let n = steady_state_allocations(|| {
            let ev = h
                .engine
                .evaluate("f/1", entity)
                .now_or_never()
                .expect("cached");
            assert_eq!(ev.source, want);
        });
        assert_eq!(
            n, 0,
            "{entity:?}: {n} allocations in 1000 cached evaluations"
        );
    }
}
