//! Faults under load, nothing lost or doubled (issue "ledger races and hostile load"):
//! readers recharging concurrently through service instances while a TCP proxy cuts every
//! fifth connection after the request went through (the service did the work, the reader
//! never heard), an instance is killed mid-request and a new one started, and — where the
//! environment says how (`CARDVM_PG_RESTART`, set by `.ci/run`) — PostgreSQL itself is
//! restarted. Readers retry through the other instances; receipts whose delivery failed are
//! delivered again at the end (as `cardvm client sync` does). Afterwards every card's
//! balance equals its start plus the ledger's committed loads for it, and no load is
//! settled twice. Traffic stays on loopback; every wait is bounded.

#[path = "support/cluster.rs"]
mod cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cardvm::issuer::TxnState;
use cardvm::online::client::{Client, ClientError, new_request_id, recharge};
use cluster::{CITY, Cluster, card, credited};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const AMOUNT: u64 = 100;
const START: u32 = 1_000;

/// A TCP proxy to `target` on an ephemeral loopback port: every `cut_every`-th connection
/// is cut after a varying number of the service's bytes (during the TLS handshake, or
/// after the request went through and while its answer was on the way); the others are
/// relayed whole. Returns its address and how many it cut.
async fn cutting_proxy(target: SocketAddr, cut_every: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let addr = listener.local_addr().expect("proxy addr");
    let cuts = Arc::new(AtomicUsize::new(0));
    let counted = cuts.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut client, _)) = listener.accept().await {
            n += 1;
            let cut = n.is_multiple_of(cut_every);
            let cuts = counted.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                if !cut {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let cut_after = (n * 997) % 6_000 + 1;
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = [0u8; 16 * 1024];
                let mut relayed = 0;
                loop {
                    match tokio::time::timeout(Duration::from_secs(20), sr.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(k)) => {
                            let take = k.min(cut_after - relayed);
                            if cw.write_all(&buf[..take]).await.is_err() {
                                break;
                            }
                            relayed += take;
                            if relayed >= cut_after {
                                cuts.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                }
                up.abort();
            });
        }
    });
    (addr, cuts)
}

struct Plan {
    instances: usize,
    readers: usize,
    each: usize,
    restart_pg: Option<String>,
}

async fn faults_under_load(db: &str, plan: Plan) {
    let started = std::time::Instant::now();
    let retries = Arc::new(AtomicUsize::new(0));
    let mut cluster = Cluster::start(db, plan.instances, plan.readers, false).await;
    let (proxy, cuts) = cutting_proxy(cluster.services[0].addr, 5).await;
    // Readers reach the service through the proxy or an instance; on an error they try
    // the next URL. The list changes when an instance is killed and another started.
    let urls = Arc::new(std::sync::Mutex::new(
        std::iter::once(format!("https://{proxy}"))
            .chain(cluster.services.iter().map(|s| s.url()))
            .collect::<Vec<_>>(),
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let total = plan.readers * plan.each;
    let mut tasks = Vec::new();
    for i in 0..plan.readers {
        let (mut reader, _) = cluster.reader(i);
        let clients: Vec<(String, Client)> = urls
            .lock()
            .expect("urls")
            .iter()
            .map(|u| (u.clone(), cluster.client_for(i, u)))
            .collect();
        let (urls, done, retries) = (urls.clone(), done.clone(), retries.clone());
        let reader_key = cluster.readers[i].clone();
        let tls_ca = cluster.tls_ca.clone();
        tasks.push(tokio::spawn(async move {
            let mut clients = clients;
            let mut c = card(i, START);
            let mut undelivered = Vec::new();
            let mut attempt = 0usize;
            for n in 0..plan.each {
                let mut tries = 0;
                loop {
                    tries += 1;
                    assert!(tries < 200, "reader {i} recharge {n}: no instance answered");
                    // Pick up instances started since.
                    for u in urls.lock().expect("urls").iter() {
                        if !clients.iter().any(|(have, _)| have == u) {
                            let client = Client::new(
                                u,
                                Some(&tls_ca),
                                &reader_key.0,
                                reader_key.1.clone(),
                                Duration::from_secs(20),
                            )
                            .expect("client");
                            clients.push((u.clone(), client));
                        }
                    }
                    attempt += 1;
                    let (_, client) = &clients[(i + attempt) % clients.len()];
                    match recharge(client, &mut reader, &mut c, CITY, AMOUNT, |_| {}).await {
                        // The instance went away during the host exchange: the load failed
                        // before the card's commit (0xFF06), nothing moved; its receipt
                        // still goes to the card company, and the card is asked again.
                        Ok(out) if out.outcome.starts_with("failed 0xFF06") => {
                            if out.settled.is_none() {
                                // Another instance takes it now, so a MAC2 issued just
                                // before the cut is recovered at the card's next recharge.
                                let (_, other) = &clients[(i + attempt + 1) % clients.len()];
                                if other
                                    .complete(&new_request_id(), &out.receipt)
                                    .await
                                    .is_err()
                                {
                                    undelivered.push(out.receipt);
                                }
                            }
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Ok(out) => {
                            assert_eq!(out.outcome, "committed", "reader {i} recharge {n}");
                            if out.settled.is_none() {
                                undelivered.push(out.receipt);
                            }
                            break;
                        }
                        // Nothing ran on the card: try again elsewhere.
                        Err(e) => {
                            if tries % 50 == 49 {
                                eprintln!("reader {i} recharge {n}: try {tries}: {e}");
                            }
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            (i, c, undelivered)
        }));
    }
    // The faults, as the load passes a third, a half and two thirds.
    let wait_for = |share: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::SeqCst) < total * share / 6 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let killed = plan.instances - 1;
    tokio::time::timeout(Duration::from_secs(600), wait_for(2))
        .await
        .expect("load stalled before the kill");
    let dead = cluster.services.remove(killed);
    let dead_url = dead.url();
    dead.kill();
    if let Some(cmd) = &plan.restart_pg {
        tokio::time::timeout(Duration::from_secs(600), wait_for(3))
            .await
            .expect("load stalled before the database restart");
        let status = tokio::task::spawn_blocking({
            let cmd = cmd.clone();
            move || std::process::Command::new("sh").args(["-c", &cmd]).status()
        })
        .await
        .expect("restart task")
        .expect("run the restart command");
        assert!(status.success(), "{cmd}: {status}");
    }
    tokio::time::timeout(Duration::from_secs(600), wait_for(4))
        .await
        .expect("load stalled before the restart");
    let fresh = cluster.instance().await;
    {
        let mut u = urls.lock().expect("urls");
        u.retain(|x| x != &dead_url);
        u.push(fresh.url());
    }
    cluster.services.push(fresh);

    let results = tokio::time::timeout(Duration::from_secs(900), async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("reader task"));
        }
        out
    })
    .await
    .expect("the load did not finish within 900 s");
    assert!(cuts.load(Ordering::SeqCst) > 0, "the proxy cut nothing");

    // Deliver what the faults kept from the service (the reader's journal has them).
    let redelivered: usize = results.iter().map(|(_, _, u)| u.len()).sum();
    eprintln!(
        "faults under load: {total} recharges by {} readers on {} instances in {:.1} s; {} connections cut, {} recharges retried, {redelivered} receipts delivered late{}",
        plan.readers,
        plan.instances,
        started.elapsed().as_secs_f64(),
        cuts.load(Ordering::SeqCst),
        retries.load(Ordering::SeqCst),
        if plan.restart_pg.is_some() {
            ", database restarted"
        } else {
            ""
        }
    );
    let live = cluster.services[0].url();
    for (i, _, undelivered) in &results {
        let client = cluster.client_for(*i, &live);
        for receipt in undelivered {
            let s = client
                .complete(&new_request_id(), receipt)
                .await
                .unwrap_or_else(|e| panic!("reader {i}: redelivery: {e}"));
            // A load cut during its host exchange failed before the card committed; it
            // is `unknown` when its MAC2 had been issued (the card's counter decides).
            assert!(
                ["committed", "failed", "unknown"].contains(&s.state.as_str()),
                "reader {i}: {s:?}"
            );
        }
    }
    for (i, c, _) in &results {
        let (rows, credited) = credited(&cluster.ledger, c.card_number()).await;
        let loaded = u64::from(c.balance()) - u64::from(START);
        assert_eq!(
            loaded,
            AMOUNT * plan.each as u64,
            "reader {i}: each recharge once"
        );
        assert_eq!(credited, loaded, "reader {i}: ledger vs card: {rows:?}");
        assert!(
            rows.iter().all(|r| r.state != TxnState::Unknown
                || r.note
                    .as_deref()
                    .is_some_and(|n| n.contains("recovery decides"))),
            "reader {i}: nothing torn here (an unknown only from a host exchange cut after its MAC2): {rows:?}"
        );
    }
    for s in cluster.services.drain(..) {
        s.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_load_three_instances_postgresql() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    let db = cluster::pg_database(&base, "faults");
    faults_under_load(
        &db,
        Plan {
            instances: 3,
            readers: 50,
            each: 20,
            restart_pg: std::env::var("CARDVM_PG_RESTART")
                .ok()
                .filter(|c| !c.is_empty()),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_load_two_instances_sqlite() {
    let dir = std::env::temp_dir().join(format!("cardvm-faults-sqlite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("issuer.db");
    faults_under_load(
        db.to_str().expect("path"),
        Plan {
            instances: 2,
            readers: 10,
            each: 6,
            restart_pg: None,
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SQLite on a full disk (a 4 MiB tmpfs the test mounts; root only, as in CI): while the
/// disk is full no bundle is issued and no card is loaded — the service answers `503`,
/// retryable — and a receipt that could not be settled is settled once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("cardvm-full-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CARDVM_REQUIRE_TMPFS").is_none(),
            "CARDVM_REQUIRE_TMPFS is set but mounting a tmpfs failed (root is needed)"
        );
        eprintln!("skipping: cannot mount a tmpfs here (not root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());
    let db = dir.join("issuer.db");
    let cluster = Cluster::start(db.to_str().expect("path"), 1, 2, false).await;
    let url = cluster.services[0].url();
    let client = cluster.client_for(0, &url);
    let (mut reader, _) = cluster.reader(0);
    let mut c = card(0, START);
    // One recharge while there is room.
    let first = recharge(&client, &mut reader, &mut c, CITY, AMOUNT, |_| {})
        .await
        .expect("recharge");
    assert_eq!(first.settled.expect("settled").state, "committed");
    // A bundle issued while there is room; then the disk fills before its receipt.
    let mut rng = cardvm::crypto::rng::os_rng();
    let q = client.query_script(CITY).await.expect("query script");
    let q = cardvm::online::protocol::from_hex(&q.script).expect("hex");
    let query = reader
        .query(&q, b"n", &mut c, &mut cardvm::vm::NoTrace, &mut rng)
        .expect("query");
    let bundle = client
        .start(&new_request_id(), &query.receipt.to_json(), AMOUNT)
        .await
        .expect("bundle");
    // The load runs (its MAC2 recorded while there is room); then the disk fills.
    let done = tokio::task::block_in_place(|| {
        cardvm::online::client::run_bundle(
            &client,
            &mut reader,
            &mut c,
            bundle.seq,
            &cardvm::online::protocol::from_hex(&bundle.command).expect("hex"),
            &cardvm::online::protocol::from_hex(&bundle.data).expect("hex"),
            &mut cardvm::vm::NoTrace,
        )
    })
    .expect("load");
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    assert_eq!(c.balance(), START + 2 * AMOUNT as u32, "the card committed");
    let receipt = done.receipt.to_json();
    let e = client
        .complete(&new_request_id(), &receipt)
        .await
        .map(|s| s.state)
        .expect_err("no settlement on a full disk");
    assert!(e.is_retryable(), "a full disk is retryable: {e}");
    // Nothing new is issued meanwhile, so no card is loaded without the ledger.
    for _ in 0..3 {
        let e = recharge(&client, &mut reader, &mut c, CITY, AMOUNT, |_| {})
            .await
            .map(|o| o.outcome)
            .expect_err("a recharge on a full disk");
        assert!(e.to_string().contains("503"), "{e}");
    }
    assert_eq!(c.balance(), START + 2 * AMOUNT as u32);
    // Space again: the journaled receipt settles once, and recharges go on.
    std::fs::remove_file(&filler).expect("free");
    let s = client
        .complete(&new_request_id(), &receipt)
        .await
        .expect("settled once there is room");
    assert_eq!(s.state, "committed");
    let out = recharge(&client, &mut reader, &mut c, CITY, AMOUNT, |_| {})
        .await
        .expect("recharge after the disk has room");
    assert_eq!(out.settled.expect("settled").state, "committed");
    assert_eq!(c.balance(), START + 3 * AMOUNT as u32);
    let (rows, credited) = credited(&cluster.ledger, c.card_number()).await;
    assert_eq!(
        u64::from(c.balance()),
        u64::from(START) + credited,
        "{rows:?}"
    );
    let mut services = cluster.services;
    for s in services.drain(..) {
        s.kill();
    }
}

/// A revocation installed into the ledger (as `cardvm issuer crl` does, from any
/// process) reaches an embedded service while it runs, and every instance: the revoked
/// reader is refused within seconds; the others are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_services_reload_a_revocation_from_the_ledger() {
    let dir = std::env::temp_dir().join(format!("cardvm-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let _keep = cluster::Temp(dir.clone());
    let db = dir.join("ledger.db").display().to_string();
    let c = Cluster::start(&db, 2, 2, false).await;
    let (_, r0) = c.reader(0);
    let (_, r1) = c.reader(1);
    r0.query_script(CITY)
        .await
        .expect("served before the revocation");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let pem = {
        let mut ca = c.ca.lock().expect("ca");
        let serial = ca
            .state
            .issued
            .iter()
            .find(|i| i.subject.contains("R000"))
            .map(|i| i.serial)
            .expect("R000's certificate");
        ca.revoke(serial, now - 1).expect("revoke");
        let crl = ca
            .crl(now - 60, now + 86_400, cardvm::crypto::rng::os_rng())
            .expect("crl");
        cardvm::issuer::pki::to_pem(&crl, "CRL").expect("pem")
    };
    cardvm::issuer::bootstrap::install_crls(&c.ledger, &pem, now)
        .await
        .expect("install");
    // Each instance reloads within its period (2 s); both are asked.
    let mut refused = [false, false];
    for _ in 0..40 {
        for (i, s) in c.services.iter().enumerate() {
            let client = c.client_for(0, &s.url());
            if let Err(ClientError::Refused { status, error, .. }) = client.query_script(CITY).await
            {
                assert_eq!(status, 403, "{error}");
                assert!(error.contains("revoked"), "{error}");
                refused[i] = true;
            }
        }
        if refused == [true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        refused,
        [true, true],
        "the revocation did not reach every instance"
    );
    r1.query_script(CITY)
        .await
        .expect("the other reader is still served");
    c.shutdown().await;
}
