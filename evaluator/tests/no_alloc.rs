//! The cached evaluation path allocates nothing (counted by allocation-counter's global allocator).

#[path = "support/engine.rs"]
mod harness;

use futures_util::FutureExt as _;
use harness::{Harness, def};
use pbflags_evaluator::engine::cache::CacheConfig;
use pbflags_proto::v1::{EvaluationSource, FlagValue, State};

fn allocations_during(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[test]
fn cached_global_override_and_killed_evaluations_allocate_nothing() {
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
    let cases = [
        ("f/1", "", EvaluationSource::Global),
        ("f/1", "u1", EvaluationSource::Override),
        ("f/2", "", EvaluationSource::Killed),
    ];
    for (flag, entity, want) in cases {
        let n = allocations_during(|| {
            for _ in 0..1_000 {
                let ev = h
                    .engine
                    .evaluate(flag, entity)
                    .now_or_never()
                    .expect("cached");
                assert_eq!(ev.source, want);
            }
        });
        assert_eq!(
            n, 0,
            "{flag} for {entity:?}: {n} allocations in 1000 cached evaluations"
        );
    }
}
