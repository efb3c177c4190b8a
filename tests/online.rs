//! The online protocol end to end on loopback: `cardvm issuer serve` (a real HTTPS server
//! process) and readers talking to it, the three cities on simulated cards, and the faults
//! of issue "online recharge": a connection lost after the card committed, the service
//! killed and restarted mid-transaction, duplicate and replayed requests, a revoked
//! reader, a reader clock 10 minutes off, oversized and malformed bodies.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::online::client::{Client, ClientError, new_request_id, sync};
use cardvm::reader::{Clock, Policy, Reader, ReaderConfig, SystemClock};
use cardvm::vm::Limits;
use common::*;

fn reader_key(cwd: &Path) -> Sm2PrivateKey {
    let text = std::fs::read_to_string(cwd.join("r1/reader.key")).expect("reader key");
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("key line");
    let bytes = cardvm::issuer::ledger::unhex(line).expect("hex");
    Sm2PrivateKey::from_bytes(&bytes).expect("key")
}

fn client(cwd: &Path, url: &str) -> Client {
    let ca = std::fs::read(cwd.join("tls.crt")).expect("ca");
    Client::new(
        url,
        Some(&ca),
        "R1",
        reader_key(cwd),
        Duration::from_secs(20),
    )
    .expect("client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client_recharge(
    cwd: &Path,
    url: &str,
    city: &str,
    card: &str,
    amount: &str,
) -> std::process::Output {
    client_txn("recharge", cwd, url, city, card, amount)
}

/// `cardvm client recharge|purchase` on a simulated card.
fn client_txn(
    what: &str,
    cwd: &Path,
    url: &str,
    city: &str,
    card: &str,
    amount: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args([
            "client",
            what,
            "--server",
            url,
            "--server-ca",
            "tls.crt",
            "--reader-dir",
            "r1",
            "--issuer-pub",
            "issuer.pub",
            "--city",
            city,
            "--amount",
            amount,
            "--sim",
            card,
        ])
        .output()
        .expect("cardvm client")
}

fn ledger(cwd: &Path) -> Vec<serde_json::Value> {
    ok(cwd, &["issuer", "ledger", "--json"])
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn three_cities_recharge_over_https() {
    let s = setup("online-three");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    cpu_card("scripts/city0755-sm4/card.toml", &cwd.join("c755.toml"));
    m1_card(&cwd.join("c571.toml"));
    let server = serve(cwd, &[]);
    for (city, card, amount) in [
        ("731", "c731.toml", "100.00"),
        ("755", "c755.toml", "25.00"),
        ("571", "c571.toml", "12.34"),
    ] {
        let o = client_recharge(cwd, &server.url, city, card, amount);
        let t = text(&o);
        assert!(o.status.success(), "city {city}: {t}");
        // Progress for a person at a kiosk: one line per step.
        assert!(
            t.contains("[1/5]") && t.contains("card company: load committed"),
            "{t}"
        );
    }
    // The card kept its state: a second load on 731 sees the first.
    let o = client_recharge(cwd, &server.url, "731", "c731.toml", "1.00");
    let t = text(&o);
    assert!(o.status.success() && t.contains("balance 105.00"), "{t}");
    let rows = ledger(cwd);
    let committed: Vec<_> = rows.iter().filter(|r| r["state"] == "committed").collect();
    assert_eq!(committed.len(), 4, "{rows:?}");
    // Every receipt (queries included) was delivered and the journal compacted.
    let o = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args(["journal", "list", "r1/reader.journal"])
        .output()
        .expect("journal list");
    assert!(!text(&o).contains("pending"), "{}", text(&o));
}

#[test]
fn online_purchases_host_secured_on_3des_and_sm4() {
    let s = setup("online-purchase");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    cpu_card("scripts/city0755-sm4/card.toml", &cwd.join("c755.toml"));
    let server = serve(cwd, &[]);
    // 731's cards want the authentication code in MAC1 (a city variant); 755's do not.
    for (city, card) in [("731", "c731.toml"), ("755", "c755.toml")] {
        let o = client_txn("purchase", cwd, &server.url, city, card, "2.50");
        let t = text(&o);
        assert!(o.status.success(), "city {city}: {t}");
        assert!(
            t.contains("balance 5.00")
                && t.contains("payment approved")
                && t.contains("card company: purchase committed"),
            "city {city}: {t}"
        );
        // The card paid: the next query reads 2.50.
        let o = client_recharge(cwd, &server.url, city, card, "1.00");
        let t = text(&o);
        assert!(
            o.status.success() && t.contains("balance 2.50"),
            "city {city}: {t}"
        );
        // More than the balance is refused before anything is sealed.
        let o = client_txn("purchase", cwd, &server.url, city, card, "100.00");
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains("less than the amount"),
            "city {city}: {t}"
        );
    }
    let rows = ledger(cwd);
    let purchases: Vec<_> = rows
        .iter()
        .filter(|r| r["kind"] == "purchase" && r["state"] == "committed")
        .collect();
    assert_eq!(purchases.len(), 2, "{rows:?}");
    assert!(
        purchases
            .iter()
            .all(|r| r["amount"] == 250 && r["tac"].is_string()),
        "{rows:?}"
    );
}

/// The reader as `cardvm client` builds it, in-process (for timing faults exactly).
fn reader(cwd: &Path) -> Reader {
    let key = reader_key(cwd);
    let store = cardvm::envelope::FileReplayStore::open_file(cwd.join("r1/reader.replay"), &key)
        .expect("replay store");
    let journal = cardvm::journal::Journal::open(cwd.join("r1/reader.journal")).expect("journal");
    let issuer = std::fs::read_to_string(cwd.join("issuer.pub")).expect("issuer.pub");
    let line = issuer
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("key line");
    let issuer = cardvm::crypto::sm2::Sm2PublicKey::from_sec1_bytes(
        &cardvm::issuer::ledger::unhex(line).expect("hex"),
    )
    .expect("issuer key");
    Reader::new(
        ReaderConfig {
            reader_id: "R1".into(),
            reader_key: Some(key),
            issuers: vec![issuer],
            policy: Policy::SealedOnly,
            limits: Limits::default(),
        },
        Some(Box::new(store)),
        Some(Box::new(journal)),
        Box::new(SystemClock),
    )
    .expect("reader")
}

fn card(cwd: &Path) -> cardvm::sim::SimCard {
    cardvm::sim::SimCard::load(&cwd.join("c731.toml")).expect("card")
}

#[test]
fn service_killed_after_the_card_committed_then_restarted() {
    let s = setup("online-kill");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    let rt = runtime();
    let mut server = serve(cwd, &[]);
    let c = client(cwd, &server.url);
    let mut r = reader(cwd);
    let mut card = card(cwd);
    let mut rng = cardvm::crypto::rng::os_rng();
    let q = rt.block_on(c.query_script(731)).expect("query script");
    let q = cardvm::online::protocol::from_hex(&q.script).expect("hex");
    let query = r
        .query(&q, b"n", &mut card, &mut cardvm::vm::NoTrace, &mut rng)
        .expect("query");
    let start_id = new_request_id();
    let bundle = rt
        .block_on(c.start(&start_id, &query.receipt.to_json(), 5_000))
        .expect("bundle");
    let cmd = cardvm::online::protocol::from_hex(&bundle.command).expect("hex");
    let data = cardvm::online::protocol::from_hex(&bundle.data).expect("hex");
    let done = cardvm::online::client::run_bundle(
        &c,
        &mut r,
        &mut card,
        bundle.seq,
        &cmd,
        &data,
        &mut cardvm::vm::NoTrace,
    )
    .expect("load");
    assert_eq!(done.receipt.outcome, cardvm::receipt::Outcome::Committed);
    // The service dies after the card committed, before the receipt arrives.
    drop(server);
    let e = rt
        .block_on(c.complete(&new_request_id(), &done.receipt.to_json()))
        .expect_err("no service");
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert!(e.is_retryable());
    // Restarted (same ledger): the bundle is still `issued`, nothing was lost.
    server = serve(cwd, &[]);
    let c = client(cwd, &server.url);
    let st = rt.block_on(c.status(bundle.seq)).expect("status");
    assert_eq!(st.state, "issued");
    // The same start request again is answered as before (stored), not with a new bundle.
    let again = rt
        .block_on(c.start(&start_id, &query.receipt.to_json(), 5_000))
        .expect("idempotent start");
    assert_eq!(again, bundle);
    // The reader's journal delivers the receipt.
    drop(r);
    let mut j = cardvm::journal::Journal::open(cwd.join("r1/reader.journal")).expect("journal");
    let rep = rt.block_on(sync(&c, &mut j)).expect("sync");
    assert_eq!(rep.settled, 1, "{rep:?}");
    assert!(rep.refused.is_empty(), "{rep:?}");
    assert_eq!(
        rt.block_on(c.status(bundle.seq)).expect("status").state,
        "committed"
    );
    // Replaying the receipt: settled once, the answer says so.
    let re = rt
        .block_on(c.complete(&new_request_id(), &done.receipt.to_json()))
        .expect("replayed receipt");
    assert!(re.already, "{re:?}");
    let rows = ledger(cwd);
    assert_eq!(
        rows.iter().filter(|r| r["state"] == "committed").count(),
        1,
        "{rows:?}"
    );
}

struct Skewed(i64);
impl Clock for Skewed {
    fn now(&self) -> u64 {
        SystemClock.now().saturating_add_signed(self.0)
    }
}

fn refused_ref(e: &ClientError) -> (u16, String, String) {
    match e {
        ClientError::Refused {
            status,
            code,
            error,
            ..
        } => (*status, code.clone(), error.clone()),
        other => panic!("expected a refusal, got {other}"),
    }
}

fn refused(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Refused {
            status,
            code,
            error,
            ..
        } => (status, code, error),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[test]
fn hostile_requests_get_clear_refusals_and_the_service_stays_up() {
    let s = setup("online-hostile");
    let cwd = &s.cwd;
    tls(cwd);
    let rt = runtime();
    let server = serve(cwd, &[]);
    let c = client(cwd, &server.url);
    assert_eq!(rt.block_on(c.health()).expect("health").status, "ok");
    // A reader clock 10 minutes off, either way.
    for skew in [600, -600] {
        let ca = std::fs::read(cwd.join("tls.crt")).expect("ca");
        let off = Client::new(
            &server.url,
            Some(&ca),
            "R1",
            reader_key(cwd),
            Duration::from_secs(20),
        )
        .expect("client")
        .with_clock(Arc::new(Skewed(skew)));
        let (status, code, error) = refused(rt.block_on(off.query_script(731)).expect_err("skew"));
        assert_eq!((status, code.as_str()), (401, "clock_skew"), "{error}");
        assert!(error.contains("600 s"), "{error}");
    }
    // Another key signing as R1.
    let ca = std::fs::read(cwd.join("tls.crt")).expect("ca");
    let impostor = Client::new(
        &server.url,
        Some(&ca),
        "R1",
        Sm2PrivateKey::generate(&mut cardvm::crypto::rng::os_rng()),
        Duration::from_secs(20),
    )
    .expect("client");
    let (status, code, impostor_error) = refused(
        rt.block_on(impostor.query_script(731))
            .expect_err("impostor"),
    );
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    // A reader the issuer does not know.
    let stranger = Client::new(
        &server.url,
        Some(&ca),
        "R9",
        reader_key(cwd),
        Duration::from_secs(20),
    )
    .expect("client");
    let (status, code, stranger_error) = refused(
        rt.block_on(stranger.query_script(731))
            .expect_err("stranger"),
    );
    // The same answer as a registered reader's bad signature: nothing tells whether a
    // reader id exists.
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    assert_eq!(
        impostor_error.replace("`R1`", "`R?`"),
        stranger_error.replace("`R9`", "`R?`")
    );
    // Malformed and oversized bodies.
    let (status, code, error) = refused(
        rt.block_on(c.post::<_, serde_json::Value>(
            "/v1/recharge/start",
            &serde_json::json!({"request_id": "x"}),
        ))
        .expect_err("missing fields"),
    );
    assert_eq!((status, code.as_str()), (400, "bad_json"), "{error}");
    assert!(error.contains("missing field"), "{error}");
    let (status, code, _) = refused(
        rt.block_on(c.post::<_, serde_json::Value>(
            "/v1/recharge/start",
            &serde_json::json!({"request_id": "y", "query": "q".repeat(200_000), "amount": 1}),
        ))
        .expect_err("oversized"),
    );
    assert_eq!((status, code.as_str()), (413, "bad_body"));
    let (status, code, _) = refused(
        rt.block_on(c.post::<_, serde_json::Value>(
            "/v1/recharge/start",
            &serde_json::json!({"request_id": "bad id", "query": "q", "amount": 1}),
        ))
        .expect_err("request id"),
    );
    assert_eq!((status, code.as_str()), (400, "bad_request_id"));
    let (status, code, _) = refused(
        rt.block_on(c.post::<_, serde_json::Value>(
            "/v1/recharge/start",
            &serde_json::json!({"request_id": "z", "query": "{not a receipt", "amount": 1}),
        ))
        .expect_err("bad receipt"),
    );
    assert_eq!((status, code.as_str()), (400, "bad_receipt"));
    let (status, code, _) = refused(
        rt.block_on(c.post::<_, serde_json::Value>("/v1/nowhere", &serde_json::json!({})))
            .expect_err("no endpoint"),
    );
    assert_eq!((status, code.as_str()), (404, "not_found"));
    // Still up.
    assert_eq!(rt.block_on(c.health()).expect("health").status, "ok");
    // A request id reused for another endpoint is refused, not confused.
    let id = new_request_id();
    rt.block_on(c.post::<_, serde_json::Value>(
        "/v1/query-script",
        &serde_json::json!({"request_id": id, "city": 731}),
    ))
    .expect("query script");
    let (status, code, _) = refused(rt.block_on(c.journal(&id, vec![])).expect_err("reused id"));
    assert_eq!((status, code.as_str()), (409, "request_id_reused"));
}

#[test]
fn revoked_reader_is_refused_by_the_running_service() {
    let s = setup("online-revoked");
    let cwd = &s.cwd;
    tls(cwd);
    let rt = runtime();
    let server = serve(cwd, &[]);
    let c = client(cwd, &server.url);
    rt.block_on(c.query_script(731))
        .expect("served before revocation");
    let serial = cardvm::issuer::cert::serial_of(
        &cardvm::issuer::trust::certs_from_pem(
            &std::fs::read_to_string(cwd.join("R1.crt")).expect("cert"),
        )
        .expect("pem")[0],
    );
    ok(cwd, &["ca", "revoke", "--dir", "ca", &serial]);
    ok(
        cwd,
        &["ca", "crl", "--dir", "ca", "--days", "7", "-o", "ca2.crl"],
    );
    ok(cwd, &["issuer", "crl", "ca2.crl"]);
    // The service re-reads its CRLs from the ledger within seconds.
    let mut last = None;
    for _ in 0..50 {
        match rt.block_on(c.query_script(731)) {
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    let (status, code, error) = refused(last.expect("still served after revocation"));
    assert_eq!((status, code.as_str()), (403, "certificate"), "{error}");
    assert!(error.to_lowercase().contains("revoked"), "{error}");
    // Invariant 15: the older CRL (before the revocation, still valid) is not installed
    // again, and the running service keeps refusing the reader.
    let e = fails(cwd, &["issuer", "crl", "ca.crl"]);
    assert!(e.contains("no rollback"), "{e}");
    // A forged signature under the revoked reader's id: refused as a bad signature
    // (checked before any certificate work), not as a revoked certificate.
    let ca = std::fs::read(cwd.join("tls.crt")).expect("ca");
    let impostor = Client::new(
        &server.url,
        Some(&ca),
        "R1",
        Sm2PrivateKey::generate(&mut cardvm::crypto::rng::os_rng()),
        Duration::from_secs(20),
    )
    .expect("client");
    let (status, code, _) = refused(rt.block_on(impostor.query_script(731)).expect_err("forged"));
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    let status = ok(cwd, &["issuer", "status"]);
    assert!(
        status.contains("CRL of") && status.contains("number 2"),
        "{status}"
    );
    std::thread::sleep(Duration::from_millis(2_500)); // past one reload
    let (status, code, _) = refused(
        rt.block_on(c.query_script(731))
            .expect_err("still revoked after the rollback attempt"),
    );
    assert_eq!((status, code.as_str()), (403, "certificate"));
}

/// A card pulled while the load was being written (`unknown`): at the card's next
/// recharge the service answers with its recovery first; the card proves the load (or
/// its counter proves it never counted), the ledger records it once, and the new load
/// follows. On the same card, one after the other: the reference card, a vendor's card
/// that names a transaction by the next counter in GET TRANSACTION PROVE, and a card
/// that answers PROVE once with zeros for the load's MAC2 — torn after and before the
/// card's commit (invariant 17 through `cardvm issuer serve`).
#[test]
fn card_pulled_mid_write_is_recovered_at_the_next_recharge() {
    let s = setup("online-recover");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    let rt = runtime();
    let server = serve(cwd, &[]);
    let c = client(cwd, &server.url);
    let mut r = reader(cwd);
    let cardvm::sim::SimCard::Cpu(mut card) = card(cwd) else {
        panic!("a CPU card");
    };
    let start_balance = u64::from(card.balance());
    let mut rng = cardvm::crypto::rng::os_rng();
    type Edit = fn(&mut cardvm::sim::Variant);
    let cases: [(&str, Edit, bool); 5] = [
        ("reference", |_| {}, true),
        (
            "PROVE by the next counter",
            |v| v.prove_atc = cardvm::sim::ProveAtc::Next,
            true,
        ),
        (
            "PROVE by the next counter",
            |v| v.prove_atc = cardvm::sim::ProveAtc::Next,
            false,
        ),
        (
            "PROVE once, zero MAC2",
            |v| {
                v.prove_atc = cardvm::sim::ProveAtc::Initialize;
                v.prove_once = true;
                v.prove_zero_mac = true;
            },
            true,
        ),
        (
            "PROVE once, zero MAC2",
            |v| {
                v.prove_once = true;
                v.prove_zero_mac = true;
            },
            false,
        ),
    ];
    for (name, edit, committed) in cases {
        let what = format!(
            "{name}, torn {} the commit",
            if committed { "after" } else { "before" }
        );
        let mut profile = card.to_profile();
        let mut variant = *card.variant();
        edit(&mut variant);
        profile.variant = (&variant).into();
        card = profile.build().expect("card");
        let q = rt.block_on(c.query_script(731)).expect("query script");
        let q = cardvm::online::protocol::from_hex(&q.script).expect("hex");
        let query = r
            .query(&q, b"n", &mut card, &mut cardvm::vm::NoTrace, &mut rng)
            .expect("query");
        let bundle = rt
            .block_on(c.start(&new_request_id(), &query.receipt.to_json(), 5_000))
            .expect("bundle");
        // Torn at CREDIT FOR LOAD (the load's fourth APDU), after or before the card wrote it.
        let at = card.apdu_index() + 4;
        card.faults_mut().push(if committed {
            cardvm::sim::Fault::TearAfter(at)
        } else {
            cardvm::sim::Fault::TearBefore(at)
        });
        let before = card.balance();
        let done = cardvm::online::client::run_bundle(
            &c,
            &mut r,
            &mut card,
            bundle.seq,
            &cardvm::online::protocol::from_hex(&bundle.command).expect("hex"),
            &cardvm::online::protocol::from_hex(&bundle.data).expect("hex"),
            &mut cardvm::vm::NoTrace,
        )
        .expect("load");
        assert!(
            matches!(
                done.receipt.outcome,
                cardvm::receipt::Outcome::Unknown { .. }
            ),
            "{what}: {:?}",
            done.receipt.outcome
        );
        let s1 = rt
            .block_on(c.complete(&new_request_id(), &done.receipt.to_json()))
            .expect("complete");
        assert_eq!(s1.state, "unknown", "{what}");
        let loaded = if committed { 5_000 } else { 0 };
        assert_eq!(card.balance(), before + loaded, "{what}");
        // The customer taps again and asks for 10.00 more.
        cardvm::transport::CardTransport::power_on(&mut card).expect("power on");
        let mut steps = Vec::new();
        let out = rt
            .block_on(cardvm::online::client::recharge(
                &c,
                &mut r,
                &mut card,
                731,
                1_000,
                |s| steps.push(s.clone()),
            ))
            .expect("recharge");
        assert_eq!(out.recovered.len(), 1, "{what}: {steps:?}");
        assert_eq!(out.recovered[0].decided_seq, Some(bundle.seq), "{what}");
        assert_eq!(
            out.recovered[0].decided_state.as_deref(),
            Some(if committed {
                "recovered-committed"
            } else {
                "recovered-failed"
            }),
            "{what}"
        );
        assert_eq!(out.settled.expect("settled").state, "committed", "{what}");
        assert_eq!(card.balance(), before + loaded + 1_000, "{what}");
        let rows = ledger(cwd);
        let credited: u64 = rows
            .iter()
            .filter(|r| {
                r["kind"] == "load"
                    && (r["state"] == "committed" || r["state"] == "recovered-committed")
            })
            .map(|r| r["amount"].as_u64().expect("amount"))
            .sum();
        assert_eq!(
            start_balance + credited,
            u64::from(card.balance()),
            "{what}: the ledger credits each load once: {rows:?}"
        );
    }
}

/// One request id raced (invariant 13): 8 `start` requests with the same id at once —
/// the same body, or 8 different queries of one card — have exactly one effect: one
/// bundle in the ledger; every identical request gets that bundle, every other body is
/// refused as a reused id, and nothing is left `issued` that nobody got.
#[test]
fn one_request_id_raced_has_one_effect() {
    let s = setup("online-idrace");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    let rt = runtime();
    let server = serve(cwd, &[]);
    let c = Arc::new(client(cwd, &server.url));
    let mut r = reader(cwd);
    let cardvm::sim::SimCard::Cpu(mut card) = card(cwd) else {
        panic!("a CPU card");
    };
    let mut rng = cardvm::crypto::rng::os_rng();
    let q = rt.block_on(c.query_script(731)).expect("query script");
    let q = cardvm::online::protocol::from_hex(&q.script).expect("hex");
    let mut queries = Vec::new();
    for i in 0..9u8 {
        let done = r
            .query(&q, &[i], &mut card, &mut cardvm::vm::NoTrace, &mut rng)
            .expect("query");
        queries.push(done.receipt.to_json());
    }
    // queries[..8]: 8 bodies under one id; queries[8]: one body sent 8 times.
    for same_body in [false, true] {
        let id = new_request_id();
        let results = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, query) in queries[..8].iter().enumerate() {
                let body = if same_body {
                    queries[8].clone()
                } else {
                    query.clone()
                };
                let (c, id) = (c.clone(), id.clone());
                let amount = if same_body { 1_000 } else { 1_000 + i as u64 };
                tasks.spawn(async move { c.start(&id, &body, amount).await });
            }
            let mut out = Vec::new();
            while let Some(r) = tasks.join_next().await {
                out.push(r.expect("task"));
            }
            out
        });
        let bundles: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let what = if same_body { "same body" } else { "8 bodies" };
        if same_body {
            assert_eq!(bundles.len(), 8, "{what}: every retry gets the answer");
            assert!(bundles.iter().all(|b| b.seq == bundles[0].seq), "{what}");
        } else {
            assert_eq!(bundles.len(), 1, "{what}");
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                let (status, code, _) = refused_ref(e);
                assert_eq!((status, code.as_str()), (409, "request_id_reused"), "{e}");
            }
        }
    }
    // Two bundles in all: one per raced id.
    let rows = ledger(cwd);
    assert_eq!(rows.len(), 2, "{rows:?}");
}

/// The README's two-party quick start (`examples/two_party.sh`) runs as written.
#[test]
fn readme_two_party_script_runs() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CARDVM_REQUIRE_OPENSSL").is_none(),
            "openssl is required"
        );
        eprintln!("skipping: no openssl for the TLS certificate");
        return;
    }
    let o = Command::new("bash")
        .arg("examples/two_party.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARDVM", env!("CARGO_BIN_EXE_cardvm"))
        .output()
        .expect("bash");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("[5/5] card company: load committed"), "{t}");
    assert!(t.contains("[5/5] card company: purchase committed"), "{t}");
    assert!(t.contains("[6/6] card company: purchase committed"), "{t}");
    assert!(
        t.contains("25.00 yuan, paid, Two notebooks, paid by card ****"),
        "{t}"
    );
    // The shop's PSAM terminal: one offline sale, uploaded and settled on its TAC.
    assert!(t.contains("sent 1 receipt(s): 1 settled"), "{t}");
    assert!(t.contains("offline purchase (PSAM terminal)"), "{t}");
    assert!(t.contains("4 transaction(s)"), "{t}");
}
