//! Host-secured mode tried as the owner of a desktop reader would (DESIGN §4, invariants
//! 11 and 12): the real card company (HTTPS service, SQLite ledger, key store) and a
//! desktop reader whose owner holds everything the reader holds — its key, its bundles,
//! its replay store. Each test fails if its attack works again.

#[path = "support/cluster.rs"]
mod cluster;

use cardvm::crypto::rng::os_rng;
use cardvm::envelope::{Expect, MemoryReplayStore, Opener};
use cardvm::online::client::{Client, ClientError, new_request_id, run_bundle};
use cardvm::online::protocol::{BundleReply, from_hex};
use cardvm::reader::Reader;
use cardvm::receipt::{FieldValue, Outcome, Receipt};
use cardvm::script::DataScript;
use cardvm::sim::CpuCard;
use cardvm::vm::NoTrace;
use cluster::{CITY, Cluster, LoadMode, card};
use des::cipher::{BlockCipherEncrypt, KeyInit};

const MASTERS: [&str; 3] = [
    "11223344556677888877665544332211",
    "0123456789ABCDEFFEDCBA9876543210",
    "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8",
];

fn unhex(s: &str) -> Vec<u8> {
    from_hex(s).expect("hex")
}

/// DK = 3DES(MK, F) ‖ 3DES(MK, NOT F), computed here with the `des` crate.
fn diversified(master: &str, serial: &[u8]) -> Vec<u8> {
    let c = des::TdesEde2::new_from_slice(&unhex(master)).expect("key");
    let mut l: [u8; 8] = serial.try_into().expect("8 bytes");
    let mut r = l.map(|b| !b);
    c.encrypt_block((&mut l).into());
    c.encrypt_block((&mut r).into());
    [l, r].concat()
}

/// The serial of the cluster's card `i` (`cluster::card`).
fn serial(i: u32) -> Vec<u8> {
    let mut s = vec![0x41, 0, 0, 0];
    s.extend_from_slice(&i.to_be_bytes());
    s
}

async fn cluster(tag: &str) -> (Cluster, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("cardvm-hostatk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("issuer.db");
    let c = Cluster::start_with(db.to_str().expect("path"), 1, 3, false, LoadMode::Host).await;
    (c, dir)
}

/// The card's signed query receipt, with the city's sealed query script.
async fn query(client: &Client, reader: &mut Reader, card: &mut CpuCard) -> Receipt {
    let q = client.query_script(CITY).await.expect("query script");
    let q = from_hex(&q.script).expect("hex");
    reader
        .query(&q, b"nonce", card, &mut NoTrace, &mut os_rng())
        .expect("query")
        .receipt
}

/// The card query and a bundle for `amount` fen.
async fn bundle(
    client: &Client,
    reader: &mut Reader,
    card: &mut CpuCard,
    amount: u64,
) -> (BundleReply, Receipt) {
    let query = query(client, reader, card).await;
    let b = client
        .start(&new_request_id(), &query.to_json(), amount)
        .await
        .expect("bundle");
    (b, query)
}

/// Registers the repository's `file` as the city's `role` script.
async fn register(c: &Cluster, role: &str, file: &str) {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let script = cardvm::asm::assemble_file(&p, &Default::default())
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .script
        .encode();
    c.ledger
        .set_script(CITY, role, &script)
        .await
        .expect("script");
}

fn run(client: &Client, reader: &mut Reader, card: &mut CpuCard, b: &BundleReply) -> Receipt {
    let (cmd, data) = (
        from_hex(&b.command).expect("hex"),
        from_hex(&b.data).expect("hex"),
    );
    tokio::task::block_in_place(|| {
        run_bundle(client, reader, card, b.seq, &cmd, &data, &mut NoTrace).expect("run")
    })
    .receipt
}

fn refusal(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Refused { status, code, .. } => (status, code),
        other => panic!("not a refusal: {other}"),
    }
}

fn failed_code(r: &Receipt) -> Option<u16> {
    match &r.outcome {
        Outcome::Failed { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_readers_bundles_hold_no_key() {
    let (c, dir) = cluster("nokey").await;
    let (mut reader, client) = c.reader(0);
    let mut card = card(0, 500);
    let sn = serial(0);
    let keys: Vec<Vec<u8>> = MASTERS.iter().map(|m| diversified(m, &sn)).collect();
    // A load bundle, and — after a load torn mid-write — the recovery bundle.
    let (load, _) = bundle(&client, &mut reader, &mut card, 1_000).await;
    let at = card.apdu_index() + 4;
    card.faults_mut().push(cardvm::sim::Fault::TearAfter(at));
    let torn = run(&client, &mut reader, &mut card, &load);
    assert!(
        matches!(torn.outcome, Outcome::Unknown { .. }),
        "{:?}",
        torn.outcome
    );
    client
        .complete(&new_request_id(), &torn.to_json())
        .await
        .expect("unknown settles as unknown");
    cardvm::transport::CardTransport::power_on(&mut card).expect("card back on the reader");
    let (recover, _) = bundle(&client, &mut reader, &mut card, 1_000).await;
    assert_eq!(recover.kind, "recover");
    for b in [&load, &recover] {
        // The owner opens the bundle with the reader's own key, as `cardvm open` would.
        let mut opener = Opener::new(
            Some(&c.readers[0].0),
            c.readers[0].1.clone(),
            c.issuer_key.public_key().clone(),
            MemoryReplayStore::new(),
        );
        let now = cardvm::envelope::unix_now();
        let cmd = opener
            .open(&from_hex(&b.command).expect("hex"), now, Expect::Command)
            .expect("command");
        let digest = cardvm::crypto::sm3(cmd.payload());
        let data = opener
            .open(
                &from_hex(&b.data).expect("hex"),
                now,
                Expect::DataFor(&digest),
            )
            .expect("data");
        let fields = DataScript::parse(data.payload())
            .expect("data script")
            .fields;
        assert!(
            fields
                .iter()
                .all(|f| !matches!(f.value, cardvm::script::FieldValue::Key(_))),
            "{} bundle: a key field",
            b.kind
        );
        for (payload, what) in [(cmd.payload(), "command"), (data.payload(), "data")] {
            for (k, role) in keys.iter().zip(["load", "purchase", "TAC"]) {
                assert!(
                    !payload.windows(k.len()).any(|w| w == k.as_slice()),
                    "{} bundle's {what} script holds the card's {role} key",
                    b.kind
                );
            }
        }
    }
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bearing_script_is_refused_to_a_desktop_reader() {
    let (c, dir) = cluster("keysrefused").await;
    // The card company registers the sealed-key load script; its readers are desktops.
    register(&c, "load", "scripts/city0731-des3/load.casm").await;
    let (mut reader, client) = c.reader(0);
    let mut card = card(0, 500);
    let query = query(&client, &mut reader, &mut card).await;
    let e = client
        .start(&new_request_id(), &query.to_json(), 1_000)
        .await
        .expect_err("keys to a desktop");
    let text = e.to_string();
    assert_eq!(refusal(e), (403, "keys_refused".into()));
    assert!(
        text.contains("desktop reader") && text.contains("secure-element") && !text.contains('\n'),
        "{text}"
    );
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn one_bundle_run_twice_or_on_another_card_credits_once_on(
    c: Cluster,
    dir: std::path::PathBuf,
) {
    let (mut reader, client) = c.reader(0);
    let mut card_a = card(0, 500);
    let mut card_b = card(1, 500);
    let (b, _) = bundle(&client, &mut reader, &mut card_a, 10_000).await;
    // On another card first: its MAC1 is not under the bundle's card's key.
    let other = run(&client, &mut reader, &mut card_b, &b);
    assert_eq!(failed_code(&other), Some(0x13), "{:?}", other.outcome);
    assert_eq!(card_b.balance(), 500);
    // The bundle's card: committed once.
    let (mut fresh, _) = c.reader(0);
    let first = run(&client, &mut fresh, &mut card_a, &b);
    assert_eq!(first.outcome, Outcome::Committed);
    assert_eq!(card_a.balance(), 10_500);
    // The same bundle again on a reader with a fresh replay store and journal: the card
    // company issued this bundle's MAC2 once, for the card's old counter.
    let (mut again, _) = c.reader(0);
    let second = run(&client, &mut again, &mut card_a, &b);
    assert_eq!(failed_code(&second), Some(0x12), "{:?}", second.outcome);
    assert_eq!(card_a.balance(), 10_500, "credited once");
    let settled = client
        .complete(&new_request_id(), &first.to_json())
        .await
        .expect("settle");
    assert_eq!(settled.state, "committed");
    let (_, total) = cluster::credited(&c.ledger, &serial(0)).await;
    assert_eq!(total, 10_000);
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Re-signs `r` as its reader (the owner holds the reader key).
fn resign(c: &Cluster, mut r: Receipt) -> Receipt {
    r.signature = None;
    r.sign(&c.readers[0].1, &mut os_rng()).expect("sign");
    r
}

fn set_field(r: &mut Receipt, name: &str, v: FieldValue) {
    let f = r.fields.iter_mut().find(|(n, _)| n == name).expect("field");
    f.1 = v;
}

async fn receipts_the_card_did_not_sign_are_refused_on(c: Cluster, dir: std::path::PathBuf) {
    let (mut reader, client) = c.reader(0);
    let mut card = card(0, 500);
    let (b1, _) = bundle(&client, &mut reader, &mut card, 10_000).await;
    let real = run(&client, &mut reader, &mut card, &b1);
    assert_eq!(real.outcome, Outcome::Committed);
    // 1. A forged TAC (the owner has no TAC key; any guess).
    let mut forged = real.clone();
    set_field(&mut forged, "tac", FieldValue::Bytes(vec![0xA5; 4]));
    let e = client
        .complete(&new_request_id(), &resign(&c, forged).to_json())
        .await
        .expect_err("forged TAC");
    assert_eq!(refusal(e), (422, "tac_mismatch".into()));
    // 2. A 500.00 load that never ran: a second bundle, never run; the owner copies the
    // committed receipt onto it and invents the balances.
    let (b2, _) = bundle(&client, &mut reader, &mut card, 50_000).await;
    let mut never = real.clone();
    if let Some(d) = never.data.as_mut() {
        d.seq = b2.seq;
    }
    set_field(&mut never, "amount", FieldValue::Int(50_000));
    set_field(&mut never, "balance_before", FieldValue::Int(10_500));
    set_field(&mut never, "balance_after", FieldValue::Int(60_500));
    let e = client
        .complete(&new_request_id(), &resign(&c, never).to_json())
        .await
        .expect_err("a load that never ran");
    let (status, code) = refusal(e);
    assert_eq!((status, code.as_str()), (422, "mismatch"));
    // 3. The owner says the real load failed (after the card company issued its MAC2):
    // not evidence — it stays undecided until the card speaks.
    // Its outputs end before the host exchange, as when the reply is lost (0xFF06): the
    // counter the card company recorded with the MAC2 is what recovery asks the card about.
    let mut lie = real.clone();
    lie.outcome = Outcome::Failed {
        code: 0xFF06,
        reason: "card company: the host link stopped".into(),
    };
    lie.fields.retain(|(n, _)| n == "card_id");
    let s = client
        .complete(&new_request_id(), &resign(&c, lie).to_json())
        .await
        .expect("settles as unknown");
    assert_eq!(s.state, "unknown");
    // Nothing was credited on the ledger; the next query of the card recovers the truth.
    let (_, total) = cluster::credited(&c.ledger, &serial(0)).await;
    assert_eq!(total, 0);
    let (rec, _) = bundle(&client, &mut reader, &mut card, 1_000).await;
    assert_eq!(rec.kind, "recover");
    let proof = run(&client, &mut reader, &mut card, &rec);
    let decided = client
        .complete(&new_request_id(), &proof.to_json())
        .await
        .expect("recovery");
    assert_eq!(
        decided.decided_state.as_deref(),
        Some("recovered-committed")
    );
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_for_a_card_never_presented_buys_nothing_usable() {
    let (c, dir) = cluster("phantom").await;
    let (mut reader, client) = c.reader(0);
    let mut card = card(0, 500);
    let query = query(&client, &mut reader, &mut card).await;
    // The owner re-signs the query for another card number.
    let mut phantom = query.clone();
    let victim = vec![0x41, 0, 0, 0, 0, 0, 0x30, 0x39];
    phantom.card_id = victim.clone();
    for (n, v) in phantom.fields.iter_mut() {
        if n == "card_id" {
            *v = FieldValue::Bytes(victim.clone());
        }
    }
    let phantom = resign(&c, phantom);
    let b = client
        .start(&new_request_id(), &phantom.to_json(), 10_000)
        .await
        .expect("a key-free bundle");
    // The bundle holds no key (above); the owner asks the card company for a MAC2 with an
    // invented card answer (the queried balance, any counter, random and MAC1).
    let mut apdu = vec![0x80, 0x7A, 0x00, 0x02, 0x10];
    apdu.extend_from_slice(&500u32.to_be_bytes());
    apdu.extend_from_slice(&[0, 1, 0x01, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 0x04]);
    let answer = client
        .host(&new_request_id(), b.seq, &apdu)
        .await
        .expect("answer");
    assert_eq!(answer, vec![0x93, 0x02], "MAC1 refused, no MAC2");
    let row = c
        .ledger
        .txn(&c.readers[0].0, b.seq)
        .await
        .expect("ledger")
        .expect("row");
    assert_eq!(row.mac2, None, "no MAC2 was issued");
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cluster card `i` of city 731 as its real cards are: the authentication code in MAC1.
fn card_731(i: usize, balance: u32) -> CpuCard {
    let c = card(i, balance);
    let mut p = c.to_profile();
    let v = cardvm::sim::Variant {
        auth_code: Some([0x3A, 0x5C, 0x7E, 0x91, 0x02, 0xB4, 0xD6, 0xF8]),
        ..cardvm::sim::Variant::default()
    };
    p.variant = (&v).into();
    p.build().expect("card")
}

async fn an_online_purchase_is_bound_once_and_settled_on_the_cards_proof_on(
    c: Cluster,
    dir: std::path::PathBuf,
) {
    register(&c, "purchase", "scripts/city0731-des3/purchase_host.cvs").await;
    let (mut reader, client) = c.reader(0);
    let mut card = card_731(0, 10_000);
    let query = query(&client, &mut reader, &mut card).await;
    let b = client
        .start_purchase(&new_request_id(), &query.to_json(), 2_500)
        .await
        .expect("purchase bundle");
    assert_eq!(b.kind, "purchase");
    // On another card: the card company's MAC1 is for the bundle's card only.
    let mut other = card_731(1, 10_000);
    let r = run(&client, &mut reader, &mut other, &b);
    assert_eq!(failed_code(&r), Some(0x12), "{:?}", r.outcome);
    assert_eq!(other.balance(), 10_000);
    // The bundle's card pays once.
    let (mut fresh, _) = c.reader(0);
    let paid = run(&client, &mut fresh, &mut card, &b);
    assert_eq!(paid.outcome, Outcome::Committed);
    assert_eq!(card.balance(), 7_500);
    let (mut again, _) = c.reader(0);
    let twice = run(&client, &mut again, &mut card, &b);
    assert_eq!(failed_code(&twice), Some(0x12), "{:?}", twice.outcome);
    assert_eq!(card.balance(), 7_500, "debited once");
    // Settlement on the card's proof: a forged TAC, or a forged MAC2, is refused.
    for field in ["tac", "mac2"] {
        let mut forged = paid.clone();
        set_field(&mut forged, field, FieldValue::Bytes(vec![0x5A; 4]));
        let e = client
            .complete(&new_request_id(), &resign(&c, forged).to_json())
            .await
            .expect_err("forged");
        assert_eq!(refusal(e), (422, "tac_mismatch".into()), "{field}");
    }
    let s = client
        .complete(&new_request_id(), &paid.to_json())
        .await
        .expect("settle");
    assert_eq!(
        (s.kind.as_str(), s.state.as_str()),
        ("purchase", "committed")
    );
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bundle_run_twice_or_on_another_card_credits_once() {
    let (c, dir) = cluster("twice").await;
    one_bundle_run_twice_or_on_another_card_credits_once_on(c, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_the_card_did_not_sign_are_refused() {
    let (c, dir) = cluster("forged").await;
    receipts_the_card_did_not_sign_are_refused_on(c, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_purchase_is_bound_once_and_settled_on_the_cards_proof() {
    let (c, dir) = cluster("purchase").await;
    an_online_purchase_is_bound_once_and_settled_on_the_cards_proof_on(c, dir).await;
}

/// The money attacks again with the ledger on PostgreSQL (skipped without one, unless
/// CARDVM_REQUIRE_PG is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_money_attacks_on_postgresql() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    for (i, tag) in ["twice", "forged", "purchase"].into_iter().enumerate() {
        let db = cluster::pg_database(&base, &format!("hostatk{i}"));
        let c = Cluster::start_with(&db, 1, 3, false, LoadMode::Host).await;
        let dir =
            std::env::temp_dir().join(format!("cardvm-hostatk-pg-{tag}-{}", std::process::id()));
        match tag {
            "twice" => one_bundle_run_twice_or_on_another_card_credits_once_on(c, dir).await,
            "forged" => receipts_the_card_did_not_sign_are_refused_on(c, dir).await,
            _ => an_online_purchase_is_bound_once_and_settled_on_the_cards_proof_on(c, dir).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_torn_mid_debit_is_decided_by_the_cards_proof_only() {
    let (c, dir) = cluster("purchase-torn").await;
    register(&c, "purchase", "scripts/city0731-des3/purchase_host.cvs").await;
    for (i, committed) in [(0usize, true), (1, false)] {
        let (mut reader, client) = c.reader(0);
        let mut card = card_731(i, 10_000);
        let query = query(&client, &mut reader, &mut card).await;
        let b = client
            .start_purchase(&new_request_id(), &query.to_json(), 2_500)
            .await
            .expect("purchase bundle");
        // Torn at DEBIT FOR PURCHASE (the fifth APDU), after or before the card wrote it.
        let at = card.apdu_index() + 5;
        card.faults_mut().push(if committed {
            cardvm::sim::Fault::TearAfter(at)
        } else {
            cardvm::sim::Fault::TearBefore(at)
        });
        let torn = run(&client, &mut reader, &mut card, &b);
        assert!(
            matches!(torn.outcome, Outcome::Unknown { .. }),
            "{:?}",
            torn.outcome
        );
        let s = client
            .complete(&new_request_id(), &torn.to_json())
            .await
            .expect("unknown");
        assert_eq!(s.state, "unknown");
        cardvm::transport::CardTransport::power_on(&mut card).expect("card back");
        // The card's next transaction recovers it first.
        let r =
            cardvm::online::client::purchase(&client, &mut reader, &mut card, CITY, 100, |_| {})
                .await;
        if committed {
            let out = r.expect("recovered, then the new purchase");
            assert_eq!(
                out.recovered
                    .first()
                    .and_then(|s| s.decided_state.as_deref()),
                Some("recovered-committed"),
                "{out:?}"
            );
            assert_eq!(card.balance(), 10_000 - 2_500 - 100);
        } else {
            // No MAC protects a purchase's counter: nothing proves it was never counted,
            // so it stays unknown for the operator (never decided `failed` on a guess).
            match r {
                Err(cardvm::online::client::RechargeError::Undecided { .. }) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(card.balance(), 10_000);
            let row = c
                .ledger
                .txn(&c.readers[0].0, b.seq)
                .await
                .expect("ledger")
                .expect("row");
            assert_eq!(row.state, cardvm::issuer::TxnState::Unknown);
        }
    }
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Eight genuine INITIALIZE FOR LOAD answers of one card for one amount at reader 0's
/// terminal (each INITIALIZE draws a new random, so each has its own valid MAC1), sent to
/// the card company for one bundle at once, each twice: the database issues the bundle's
/// MAC2 once — one card state wins, its repeats get the same answer, every other is refused.
async fn one_mac2_per_bundle_under_a_race_on(c: Cluster, dir: std::path::PathBuf) {
    use cardvm::transport::CardTransport;
    let (mut reader, client) = c.reader(0);
    let mut card = card(0, 500);
    let (b, _) = bundle(&client, &mut reader, &mut card, 1_000).await;
    let mut buf = [0u8; 64];
    let select = [
        0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0, 0, 0, 0x03, 0x86, 0x98, 0x07, 0x01, 0x00,
    ];
    card.transmit(&select, &mut buf).expect("select");
    let mut init = vec![0x80, 0x50, 0x00, 0x02, 0x0B, 0x01];
    init.extend_from_slice(&1_000u32.to_be_bytes());
    init.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0x10]);
    let mut apdus = Vec::new();
    for _ in 0..8 {
        let n = card.transmit(&init, &mut buf).expect("initialize");
        assert_eq!(&buf[n - 2..n], [0x90, 0x00]);
        let mut apdu = vec![0x80, 0x7A, 0x00, 0x02, 0x10];
        apdu.extend_from_slice(&buf[..16]);
        apdu.push(0x04);
        apdus.push(apdu);
    }
    let mut tasks = Vec::new();
    for (k, apdu) in apdus.iter().chain(apdus.iter()).enumerate() {
        // Spread over the instances (two on PostgreSQL).
        let client = c.client_for(0, &c.services[k % c.services.len()].url());
        let (apdu, seq) = (apdu.clone(), b.seq);
        tasks.push(tokio::spawn(async move {
            let r = client
                .host(&new_request_id(), seq, &apdu)
                .await
                .expect("answer");
            (k % 8, r)
        }));
    }
    let mut won: Vec<(usize, Vec<u8>)> = Vec::new();
    for t in tasks {
        let (k, r) = t.await.expect("task");
        if r.ends_with(&[0x90, 0x00]) {
            won.push((k, r));
        } else {
            assert_eq!(r, vec![0x69, 0x85], "card state {k}");
        }
    }
    assert_eq!(won.len(), 2, "one card state, answered twice: {won:?}");
    assert!(won[0] == won[1], "the same MAC2 both times: {won:?}");
    let row = c
        .ledger
        .txn(&c.readers[0].0, b.seq)
        .await
        .expect("ledger")
        .expect("row");
    assert_eq!(
        row.mac2.as_deref(),
        Some(cardvm::issuer::ledger::hex(&won[0].1[..4]).as_str()),
        "the ledger holds the MAC2 it gave"
    );
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_mac2_per_bundle_under_a_race() {
    let (c, dir) = cluster("mac2race").await;
    one_mac2_per_bundle_under_a_race_on(c, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_mac2_per_bundle_under_a_race_on_postgresql() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    let db = cluster::pg_database(&base, "mac2race");
    let c = Cluster::start_with(&db, 2, 1, false, LoadMode::Host).await;
    let dir = std::env::temp_dir().join(format!("cardvm-mac2race-pg-{}", std::process::id()));
    one_mac2_per_bundle_under_a_race_on(c, dir).await;
}
