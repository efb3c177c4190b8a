//! Online recharges on this machine: throughput and host latency of the whole protocol
//! (query script, card query, bundle, load, settlement) over loopback HTTPS, on SQLite and
//! on PostgreSQL (when `CARDVM_TEST_PG` names one), and the SM2 floor — the cost of the
//! SM2 operations one recharge needs, measured in the same run.
//!
//! `cargo bench -p cardvm-bench --bench online` (add `CARDVM_TEST_PG=postgres://…` for PostgreSQL).
//! The simulated card answers in process: its modelled air time is not slept, so the
//! latencies here are host time only.

#[path = "../../tests/support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::online::client::recharge;
use cluster::{CITY, Cluster, LoadMode, card};

/// SM2 operations per recharge are counted in the run (`cardvm::crypto::sm2::counts`,
/// reader and service in this one process) over the latency loop, so the floor follows
/// the protocol of each mode: host-secured adds one signed round trip (`POST /v1/host`).
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

    /// The SM2 time of the operations `n` recharges made.
    fn per_recharge(&self, ops: &cardvm::crypto::sm2::Sm2Counts, n: u64) -> Duration {
        let each = |count: u64, d: Duration| d.mul_f64(count as f64 / n as f64);
        each(ops.sign, self.sign)
            + each(ops.verify, self.verify)
            + each(ops.encrypt, self.encrypt)
            + each(ops.decrypt, self.decrypt)
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    name: &str,
    db: &str,
    mode: LoadMode,
    instances: usize,
    readers: usize,
    each: usize,
    floor: &Floor,
) {
    // Latency: one reader, one recharge at a time.
    let cluster = Cluster::start_with(db, instances, readers.max(1), false, mode).await;
    let (mut reader, client) = cluster.reader(0);
    let mut c = card(0, 0);
    let mut lat = Vec::new();
    let before = cardvm::crypto::sm2::counts();
    for _ in 0..each * 2 {
        let t = Instant::now();
        let out = recharge(&client, &mut reader, &mut c, CITY, 1, |_| {})
            .await
            .expect("recharge");
        assert!(out.settled.is_some(), "{:?}", out.delivery_error);
        lat.push(t.elapsed());
    }
    let after = cardvm::crypto::sm2::counts();
    let ops = cardvm::crypto::sm2::Sm2Counts {
        sign: after.sign - before.sign,
        verify: after.verify - before.verify,
        encrypt: after.encrypt - before.encrypt,
        decrypt: after.decrypt - before.decrypt,
    };
    let n = (each * 2) as u64;
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
    let f = floor.per_recharge(&ops, n);
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "{name}, {}: SM2 per recharge {:.1} signs, {:.1} verifies, {:.1} encryptions, {:.1} decryptions",
        mode_name(mode),
        ops.sign as f64 / n as f64,
        ops.verify as f64 / n as f64,
        ops.encrypt as f64 / n as f64,
        ops.decrypt as f64 / n as f64,
    );
    println!(
        "{name}, {}: {rate:.1} recharges/s ({readers} readers × {each}, {instances} instance(s), 2 cores); \
         latency p50 {:.2} ms, p99 {:.2} ms; SM2 floor {:.2} ms/recharge = {:.0}% of p50 \
         (p50 / floor = {:.2}x); throughput / floor-bound ({:.1}/s on 2 cores) = {:.2}",
        mode_name(mode),
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

fn mode_name(mode: LoadMode) -> &'static str {
    match mode {
        LoadMode::Host => "host-secured",
        LoadMode::SealedKeys => "sealed keys",
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let floor = Floor::measure();
    println!(
        "SM2 on this machine: sign {:.0} µs, verify {:.0} µs, encrypt {:.0} µs, decrypt {:.0} µs",
        floor.sign.as_secs_f64() * 1e6,
        floor.verify.as_secs_f64() * 1e6,
        floor.encrypt.as_secs_f64() * 1e6,
        floor.decrypt.as_secs_f64() * 1e6,
    );
    let dir = std::env::temp_dir().join(format!("cardvm-bench-online-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for mode in [LoadMode::Host, LoadMode::SealedKeys] {
        let sqlite = dir.join(format!("issuer-{}.db", mode_name(mode).replace(' ', "-")));
        rt.block_on(run(
            "SQLite",
            sqlite.to_str().expect("path"),
            mode,
            1,
            8,
            25,
            &floor,
        ));
    }
    match std::env::var("CARDVM_TEST_PG") {
        Ok(base) if !base.is_empty() => {
            for mode in [LoadMode::Host, LoadMode::SealedKeys] {
                let db = cluster::pg_database(&base, "bench");
                rt.block_on(run("PostgreSQL", &db, mode, 2, 8, 25, &floor));
            }
        }
        _ => println!("PostgreSQL: skipped (set CARDVM_TEST_PG=postgres://…)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
