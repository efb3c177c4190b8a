//! Online recharges on this machine: throughput and host latency of the whole protocol
//! (query script, card query, bundle, load, settlement) over loopback HTTPS, on SQLite and
//! on PostgreSQL (when `CARDVM_TEST_PG` names one), and the SM2 floor — the cost of the
//! SM2 operations one recharge needs, measured in the same run.
//!
//! `cargo bench --bench online` (add `CARDVM_TEST_PG=postgres://…` for PostgreSQL).
//! The simulated card answers in process: its modelled air time is not slept, so the
//! latencies here are host time only.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::online::client::recharge;
use cluster::{CITY, Cluster, card};

/// SM2 operations per recharge (reader + service), counted from the protocol:
/// reader — 3 request signatures, 2 receipt signatures (query, load), 3 envelopes opened
/// (verify + decrypt each); service — per request (3) the request signature and the
/// reader's chain (certificate + CRL), per receipt (2) the chain and the receipt
/// signature again, and 3 envelopes sealed (encrypt + sign each).
const SIGN: u32 = 3 + 2 + 3;
const VERIFY: u32 = 3 + 3 * 3 + 2 * 3;
const ENCRYPT: u32 = 3;
const DECRYPT: u32 = 3;

fn per_op(n: u32, f: &mut dyn FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed() / n
}

struct Floor {
    sign: Duration,
    verify: Duration,
    encrypt: Duration,
    decrypt: Duration,
}

impl Floor {
    fn measure() -> Floor {
        let mut rng = os_rng();
        let k = Sm2PrivateKey::generate(&mut rng);
        let msg = [0x5Au8; 600];
        let sig = k.sign(&mut rng, &msg).expect("sign");
        let ct = k
            .public_key()
            .encrypt(&mut rng, &[7u8; 16])
            .expect("encrypt");
        Floor {
            sign: per_op(200, &mut || {
                k.sign(&mut rng, &msg).expect("sign");
            }),
            verify: per_op(200, &mut || {
                k.public_key().verify(&msg, &sig).expect("verify");
            }),
            encrypt: per_op(200, &mut || {
                k.public_key()
                    .encrypt(&mut rng, &[7u8; 16])
                    .expect("encrypt");
            }),
            decrypt: per_op(200, &mut || {
                k.decrypt(&ct).expect("decrypt");
            }),
        }
    }

    fn per_recharge(&self) -> Duration {
        self.sign * SIGN + self.verify * VERIFY + self.encrypt * ENCRYPT + self.decrypt * DECRYPT
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(name: &str, db: &str, instances: usize, readers: usize, each: usize, floor: &Floor) {
    // Latency: one reader, one recharge at a time.
    let cluster = Cluster::start(db, instances, readers.max(1), false).await;
    let (mut reader, client) = cluster.reader(0);
    let mut c = card(0, 0);
    let mut lat = Vec::new();
    for _ in 0..each * 2 {
        let t = Instant::now();
        let out = recharge(&client, &mut reader, &mut c, CITY, 1, |_| {})
            .await
            .expect("recharge");
        assert!(out.settled.is_some(), "{:?}", out.delivery_error);
        lat.push(t.elapsed());
    }
    lat.sort();
    // Throughput: `readers` readers at once, spread over the instances.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..readers {
        let (mut reader, client) = cluster.reader(i);
        tasks.push(tokio::spawn(async move {
            let mut c = card(1000 + i, 0);
            for _ in 0..each {
                recharge(&client, &mut reader, &mut c, CITY, 1, |_| {})
                    .await
                    .expect("recharge");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = (readers * each) as f64 / secs;
    let f = floor.per_recharge();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "{name}: {rate:.1} recharges/s ({readers} readers × {each}, {instances} instance(s), 2 cores); \
         latency p50 {:.2} ms, p99 {:.2} ms; SM2 floor {:.2} ms/recharge = {:.0}% of p50 \
         (p50 / floor = {:.2}x); throughput / floor-bound ({:.1}/s on 2 cores) = {:.2}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        f.as_secs_f64() * 1e3,
        100.0 * f.as_secs_f64() / p50.as_secs_f64(),
        p50.as_secs_f64() / f.as_secs_f64(),
        2.0 / f.as_secs_f64(),
        rate / (2.0 / f.as_secs_f64()),
    );
    cluster.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let floor = Floor::measure();
    println!(
        "SM2 on this machine: sign {:.0} µs, verify {:.0} µs, encrypt {:.0} µs, decrypt {:.0} µs; \
         per recharge {SIGN} signs, {VERIFY} verifies, {ENCRYPT} encryptions, {DECRYPT} decryptions",
        floor.sign.as_secs_f64() * 1e6,
        floor.verify.as_secs_f64() * 1e6,
        floor.encrypt.as_secs_f64() * 1e6,
        floor.decrypt.as_secs_f64() * 1e6,
    );
    let dir = std::env::temp_dir().join(format!("cardvm-bench-online-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let sqlite = dir.join("issuer.db");
    rt.block_on(run(
        "SQLite",
        sqlite.to_str().expect("path"),
        1,
        8,
        25,
        &floor,
    ));
    match std::env::var("CARDVM_TEST_PG") {
        Ok(base) if !base.is_empty() => {
            let db = cluster::pg_database(&base, "bench");
            rt.block_on(run("PostgreSQL", &db, 2, 8, 25, &floor));
        }
        _ => println!("PostgreSQL: skipped (set CARDVM_TEST_PG=postgres://…)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
