//! Engine hot paths over an in-memory source.
//! `cargo bench -p pbflags-evaluator --bench engine`

#[path = "../tests/support/engine.rs"]
mod harness;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use harness::{Harness, def};
use pbflags_evaluator::engine::cache::CacheConfig;
use pbflags_proto::v1::{FlagValue, State};

fn long_ttl() -> CacheConfig {
    CacheConfig::default()
}

fn bench(c: &mut Criterion) {
    let mut flags: Vec<_> = (1..=100)
        .map(|i| def(&format!("bench/{i}"), "user", Some(FlagValue::bool(false))))
        .collect();
    flags.push(def("bench/killed", "", Some(FlagValue::bool(false))));
    let h = Harness::with_config(flags, long_ttl());
    for i in 1..=100 {
        h.source.set_flag(
            &format!("bench/{i}"),
            State::Enabled,
            Some(FlagValue::bool(true)),
        );
    }
    h.source.set_override(
        "bench/1",
        "user-1",
        State::Enabled,
        Some(FlagValue::bool(false)),
    );
    h.source.set_flag("bench/killed", State::Killed, None);
    assert!(h.poll_kills());
    let ids: Vec<String> = (1..=100).map(|i| format!("bench/{i}")).collect();
    h.eval("bench/1", "");
    h.eval("bench/1", "user-1");
    h.bulk(&ids.iter().map(String::as_str).collect::<Vec<_>>(), "");

    c.bench_function("evaluate_cached_global", |b| {
        b.iter(|| {
            h.engine
                .evaluate(black_box("bench/1"), black_box(""))
                .now_or_never()
        })
    });
    c.bench_function("evaluate_killed", |b| {
        b.iter(|| {
            h.engine
                .evaluate(black_box("bench/killed"), black_box(""))
                .now_or_never()
        })
    });
    c.bench_function("evaluate_cached_override", |b| {
        b.iter(|| {
            h.engine
                .evaluate(black_box("bench/1"), black_box("user-1"))
                .now_or_never()
        })
    });
    c.bench_function("bulk_evaluate_100_cached", |b| {
        b.iter(|| {
            h.engine
                .bulk_evaluate(black_box(&ids), black_box(""))
                .now_or_never()
        })
    });

    let miss = Harness::with_config(vec![], long_ttl());
    let mut n = 0u64;
    c.bench_function("evaluate_miss_memory_source", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("miss/{n}")
            },
            |id| miss.engine.evaluate(&id, "").now_or_never(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
