//! Parsing a generated descriptor set with 1,000 flags.
//! `cargo bench -p pbflags-evaluator --bench descriptors`

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};

fn parse_1000_flags(c: &mut Criterion) {
    let bytes = support::many_flags("bench", 1000);
    c.bench_function("parse_descriptor_set_1000_flags", |b| {
        b.iter(|| {
            let parsed = pbflags_evaluator::core::descriptor::parse(std::hint::black_box(&bytes))
                .expect("parses");
            assert_eq!(parsed.flags.len(), 1000);
        })
    });
    c.bench_function("snapshot_from_bytes_1000_flags", |b| {
        b.iter(|| {
            pbflags_evaluator::core::registry::Snapshot::from_bytes(std::hint::black_box(&bytes))
                .expect("parses")
        })
    });
}

criterion_group!(benches, parse_1000_flags);
criterion_main!(benches);
