//! The mutation engine alone, side by side with the floor: parse → mutate → patch →
//! serialise for each benchmark input in `tests/fixtures/bench` (see
//! `bench/make_inputs.py`).

#[path = "../bench/floor.rs"]
mod floor;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use django_migrate_webhook::admission::{self, Outcome};

const INPUTS: [&str; 5] = ["small", "typical", "large", "update", "rollout"];

fn engine(c: &mut Criterion) {
    for name in INPUTS {
        let path = format!(
            "{}/tests/fixtures/bench/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let reply = admission::review(&body);
        // Benchmark the real path: every input is an opted-in Deployment that gets a patch.
        assert_eq!(reply.outcome, Outcome::Patched, "{name}: {reply:?}");
        let prepared = floor::Prepared::from_response(&reply.body);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("webhook", |b| {
            b.iter(|| admission::review(black_box(&body)))
        });
        group.bench_function("floor", |b| {
            b.iter(|| floor::answer(black_box(&body), &prepared))
        });
        group.finish();
    }
}

criterion_group!(benches, engine);
criterion_main!(benches);
