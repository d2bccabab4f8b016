//! Engine hot paths over an in-memory source, with the coarse clock the server uses (ticked every
//! millisecond by a thread, as the server's ticker does).
//! `cargo bench -p pbflags-evaluator --bench engine`

#[path = "../tests/support/engine.rs"]
mod harness;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use harness::{Harness, def};
use pbflags_evaluator::core::cache::CacheConfig;
use pbflags_evaluator::core::clock::Clock;
use pbflags_proto::v1::{FlagValue, State};

fn ticking() -> Clock {
    let clock = Clock::coarse();
    let c = clock.clone();
    std::thread::spawn(move || {
        loop {
            c.tick();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    clock
}

fn bench(c: &mut Criterion) {
    let clock = ticking();
    let mut flags: Vec<_> = (1..=100)
        .map(|i| def(&format!("bench/{i}"), "user", Some(FlagValue::bool(false))))
        .collect();
    flags.push(def("bench/killed", "", Some(FlagValue::bool(false))));
    let h = Harness::with_clock(flags.clone(), CacheConfig::default(), clock.clone());
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

    // The borrowing path the server's hot path is built on: the value is read in place.
    for (name, flag, entity) in [
        ("cached_with_global", "bench/1", ""),
        ("cached_with_killed", "bench/killed", ""),
        ("cached_with_override", "bench/1", "user-1"),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                h.engine
                    .evaluate_cached_with(black_box(flag), black_box(entity), |(s, v)| {
                        (s, v.is_some())
                    })
            })
        });
    }
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
                .bulk_evaluate(black_box(ids.clone()), black_box(""))
                .now_or_never()
        })
    });

    // A zero TTL makes every evaluation of a declared flag a miss that goes to the source.
    let miss = Harness::with_clock(
        flags,
        CacheConfig {
            flag_ttl: Duration::ZERO,
            ..CacheConfig::default()
        },
        clock.clone(),
    );
    miss.source
        .set_flag("bench/2", State::Enabled, Some(FlagValue::bool(true)));
    c.bench_function("evaluate_miss_memory_source", |b| {
        b.iter(|| {
            miss.engine
                .evaluate(black_box("bench/2"), black_box(""))
                .now_or_never()
        })
    });

    let unknown = Harness::with_clock(vec![], CacheConfig::default(), clock);
    let mut n = 0u64;
    c.bench_function("evaluate_miss_undeclared_flag", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("miss/{n}")
            },
            |id| unknown.engine.evaluate(&id, "").now_or_never(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
