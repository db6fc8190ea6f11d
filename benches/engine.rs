//! The mutation engine alone, side by side with the floor: parse → mutate → patch →
//! serialise for each benchmark input in `tests/fixtures/bench` (see
//! `bench/make_inputs.py`).
//!
//! `cargo bench --bench engine` measures time. For instruction counts, which stay the
//! same on a busy machine, run the bench binary under callgrind with
//! `ENGINE_ITERATIONS=N ENGINE_INPUT=typical ENGINE_SIDE=webhook|floor`: it then runs
//! exactly N answers and exits (see `bench/instructions.sh`).
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../bench/floor.rs"]
mod floor;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use django_migrate_webhook::admission::{self, Outcome};
use django_migrate_webhook::injected::CodeImage;

/// The allocator of the `serve` binary and of the floor server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INPUTS: [&str; 5] = ["small", "typical", "large", "update", "rollout"];

/// The input's body and the floor's prepared answer for it.
fn load(name: &str) -> (Vec<u8>, floor::Prepared) {
    let path = format!(
        "{}/tests/fixtures/bench/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let reply = admission::review(&body, &Default::default());
    // Benchmark the real path: every input is an opted-in Deployment that gets a patch.
    assert_eq!(reply.outcome, Outcome::Patched, "{name}: {reply:?}");
    let prepared = floor::Prepared::from_response(&reply.body);
    (body, prepared)
}

fn engine(c: &mut Criterion) {
    for name in INPUTS {
        let (body, prepared) = load(name);
        let image = CodeImage::default();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("webhook", |b| {
            b.iter(|| admission::review(black_box(&body), &image))
        });
        group.bench_function("floor", |b| {
            b.iter(|| floor::answer(black_box(&body), &prepared))
        });
        group.finish();
    }
}

criterion_group!(benches, engine);

fn main() {
    let Some(n) = std::env::var("ENGINE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
    else {
        benches();
        Criterion::default().configure_from_args().final_summary();
        return;
    };
    let name = std::env::var("ENGINE_INPUT").unwrap_or_else(|_| "typical".into());
    let side = std::env::var("ENGINE_SIDE").unwrap_or_else(|_| "webhook".into());
    let (body, prepared) = load(&name);
    let image = CodeImage::default();
    for _ in 0..n {
        match side.as_str() {
            "floor" => drop(black_box(floor::answer(black_box(&body), &prepared))),
            _ => drop(black_box(admission::review(black_box(&body), &image))),
        }
    }
}
