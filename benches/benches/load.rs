//! A full 3DES and SM4 load against the in-process simulated CPU card, side by side with
//! the same flow in Lua 5.4 (mlua, vendored) driving the same card through the same Rust
//! crypto. Method (total / card / crypto / overhead): see benches/benches/common/mod.rs.
//!
//! `cargo bench -p cardvm-bench --bench load`; the DESIGN §5 ratios: `cargo run --release -p cardvm-bench --example targets`.

mod common;

use common::{LuaPeer, cases, check_lua, run_vm};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn load(c: &mut Criterion) {
    let peer = LuaPeer::new();
    for case in cases() {
        check_lua(&case, &peer);
        let mut g = c.benchmark_group(format!("load/{}", case.name));
        let mut reader = common::Reader::default();
        g.bench_function("cardvm total", |b| {
            b.iter_batched_ref(
                || case.card(),
                |card| run_vm(&case, &mut reader, card),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("lua total", |b| {
            b.iter_batched(
                || case.card(),
                |card| peer.run(&case, card),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("card only (same APDUs)", |b| {
            b.iter_batched_ref(
                || case.card(),
                |card| case.replay_on(card),
                BatchSize::SmallInput,
            )
        });
        let inputs = case.crypto_inputs();
        g.bench_function("crypto only (same calls)", |b| {
            b.iter(|| case.crypto_only(black_box(&inputs)))
        });
        g.bench_function("transcript SM3 (cardvm only)", |b| {
            b.iter(|| case.transcript_only())
        });
        g.finish();
    }
}

criterion_group!(benches, load);
criterion_main!(benches);
