//! Bounded load on loopback: 50 concurrent simulated readers × 20 recharges against 2
//! service instances sharing one PostgreSQL database (a smaller run on SQLite with one
//! instance). Afterwards every card's balance equals the ledger's total for it, nothing is
//! lost or doubled, and no transaction is left `issued`.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cardvm::issuer::TxnState;
use cardvm::issuer::ledger::Filter;
use cardvm::online::client::recharge;
use cluster::{CITY, Cluster, card};

const AMOUNT: u64 = 100;

async fn load(db: &str, instances: usize, readers: usize, each: usize) {
    let cluster = Cluster::start(db, instances, readers, false).await;
    let mut tasks = Vec::new();
    for i in 0..readers {
        let (mut reader, client) = cluster.reader(i);
        tasks.push(tokio::spawn(async move {
            let mut c = card(i, 1_000);
            let mut committed = 0u64;
            for n in 0..each {
                let out = recharge(&client, &mut reader, &mut c, CITY, AMOUNT, |_| {})
                    .await
                    .unwrap_or_else(|e| panic!("reader {i} recharge {n}: {e}"));
                assert_eq!(out.outcome, "committed", "reader {i} recharge {n}");
                let s = out.settled.unwrap_or_else(|| {
                    panic!(
                        "reader {i} recharge {n}: undelivered: {:?}",
                        out.delivery_error
                    )
                });
                assert_eq!(s.state, "committed");
                committed += 1;
            }
            (
                i,
                c.card_number().to_vec(),
                u64::from(c.balance()),
                committed,
            )
        }));
    }
    // No request may hang: the whole run has a deadline.
    let results = tokio::time::timeout(Duration::from_secs(900), async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("reader task"));
        }
        out
    })
    .await
    .expect("the load run did not finish within 900 s");
    for (i, serial, balance, committed) in results {
        let (rows, total) = cluster::credited(&cluster.ledger, &serial).await;
        assert_eq!(committed, each as u64, "reader {i}");
        assert_eq!(rows.len(), each, "reader {i}: one ledger row per recharge");
        assert_eq!(balance, 1_000 + total, "reader {i}: card balance vs ledger");
        assert_eq!(total, AMOUNT * each as u64, "reader {i}");
    }
    let hanging = cluster
        .ledger
        .list(&Filter {
            state: Some(TxnState::Issued),
            ..Filter::default()
        })
        .await
        .expect("ledger");
    assert!(hanging.is_empty(), "left issued: {hanging:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_readers_two_instances_one_postgresql() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    let db = cluster::pg_database(&base, "load");
    load(&db, 2, 50, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_readers_one_instance_sqlite() {
    let dir = std::env::temp_dir().join(format!("cardvm-load-sqlite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("issuer.db");
    load(db.to_str().expect("path"), 1, 10, 5).await;
    let _ = std::fs::remove_dir_all(&dir);
}
