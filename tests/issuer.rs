//! The card company's side, attacked and exercised: query → bundle → run on a simulated
//! card → settle, every refusal, and every ledger state transition.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cardvm::asm::{AsmOptions, assemble_file};
use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey};
use cardvm::envelope::{Expect, MemoryReplayStore, Opener};
use cardvm::issuer::ledger::{CityRow, Filter, hex};
use cardvm::issuer::pki::parse_name;
use cardvm::issuer::{
    Ca, Certificate, Issuer, IssuerError, Ledger, ReaderKind, TrustStore, TxnKind, TxnState,
};
use cardvm::reader::{Clock, MemoryJournal, Policy, Reader, ReaderConfig};
use cardvm::receipt::{FieldValue, Mode, Outcome, Receipt};
use cardvm::script::DataScript;
use cardvm::sim::{Algorithm, CpuCard, Fault, ProveAtc, RandomSource, Variant};
use cardvm::vm::{Limits, NoTrace};

const NOW: u64 = 1_795_435_200; // 2026-11-23T12:00:00Z
const DAY: u64 = 86_400;
const SERIAL: [u8; 8] = [0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85];
const MLK: &str = "11223344556677888877665544332211";
const MPK: &str = "0123456789ABCDEFFEDCBA9876543210";
const MTK: &str = "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8";

fn unhex(s: &str) -> Vec<u8> {
    cardvm::issuer::ledger::unhex(s).expect("hex")
}

/// The issuer's clock, moved by the tests.
#[derive(Default)]
struct TestClock(AtomicU64);
impl Clock for TestClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The reader's clock, shared with the test.
struct Shared(Arc<TestClock>);
impl Clock for Shared {
    fn now(&self) -> u64 {
        self.0.now()
    }
}

struct City {
    dir: &'static str,
    city: u32,
    alg: Algorithm,
}

const DES3: City = City {
    dir: "scripts/city0731-des3",
    city: 731,
    alg: Algorithm::Des3,
};
const SM4: City = City {
    dir: "scripts/city0755-sm4",
    city: 755,
    alg: Algorithm::Sm4,
};

fn assemble(path: &str) -> Vec<u8> {
    assemble_file(path.as_ref(), &AsmOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .script
        .encode()
}

struct World {
    issuer: Arc<Issuer>,
    /// What a second service instance on the same database needs.
    db: String,
    issuer_key: Sm2PrivateKey,
    trust: TrustStore,
    cities: Vec<(u32, cardvm::crypto::KeyAlg)>,
    clock: Arc<TestClock>,
    ca: Ca,
    reader_key: Sm2PrivateKey,
    reader_cert: Certificate,
    reader: RefCell<Reader>,
    reader_clock: Arc<TestClock>,
    queries: RefCell<HashMap<u32, Vec<u8>>>,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "cardvm-issuer-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn key() -> Sm2PrivateKey {
    Sm2PrivateKey::generate(&mut os_rng())
}

impl World {
    async fn new(tag: &str, cities: &[&City]) -> World {
        World::on(tag, cities, None).await
    }

    /// On the database `db` (default: an SQLite file in a temporary directory).
    async fn on(tag: &str, cities: &[&City], db: Option<String>) -> World {
        let dir = tempdir::Dir::new(tag);
        let mut ca = Ca::new_root(
            parse_name("CN=City Card CA,O=City Card").expect("name"),
            key(),
            NOW - 10 * DAY,
            NOW + 3650 * DAY,
            None,
            os_rng(),
        )
        .expect("ca");
        let reader_key = key();
        let reader_cert = ca
            .issue_reader(
                "R1",
                reader_key.public_key(),
                // Reader firmware: the kind card keys go to.
                ReaderKind::SecureElement,
                NOW - DAY,
                NOW + 30 * DAY,
                os_rng(),
            )
            .expect("reader cert");
        let mut trust = TrustStore::new();
        trust.add_root(ca.cert.clone()).expect("root");
        trust.add_crl(ca.crl(NOW - DAY, NOW + 30 * DAY, os_rng()).expect("crl"));
        let db = db.unwrap_or_else(|| dir.0.join("issuer.db").to_string_lossy().into_owned());
        let ledger = Ledger::open(&db).await.expect("ledger");
        let clock = Arc::new(TestClock(AtomicU64::new(NOW)));
        let issuer_key = key();
        let city_algs: Vec<_> = cities.iter().map(|c| (c.city, c.alg.key_alg())).collect();
        let masters = cluster::Masters(city_algs.clone());
        let issuer = Arc::new(Issuer::new(
            ledger,
            trust.clone(),
            issuer_key.clone(),
            Arc::new(masters),
            clock.clone(),
        ));
        for c in cities {
            issuer
                .ledger()
                .set_city(&CityRow {
                    city: c.city,
                    alg: c.alg.name().into(),
                    purse_limit: 1_000_000,
                    txn_limit: 50_000,
                    day_limit: 80_000,
                })
                .await
                .expect("city");
            for (role, file) in [("query", "query"), ("load", "load"), ("recover", "recover")] {
                let bytes = assemble(&format!("{}/{file}.casm", c.dir));
                issuer
                    .ledger()
                    .set_script(c.city, role, &bytes)
                    .await
                    .expect("script");
            }
        }
        let pem = cardvm::issuer::pki::to_pem(&reader_cert, "certificate").expect("pem");
        issuer
            .ledger()
            .add_reader("R1", &pem, "01", &[0, 0, 0, 0, 0, 7], NOW)
            .await
            .expect("reader");
        let reader_clock = Arc::new(TestClock(AtomicU64::new(NOW)));
        let reader = Reader::new(
            ReaderConfig {
                reader_id: "R1".into(),
                reader_key: Some(reader_key.clone()),
                issuers: vec![issuer_key.public_key().clone()],
                policy: Policy::SealedOnly,
                limits: Limits::default(),
            },
            Some(Box::new(MemoryReplayStore::new())),
            Some(Box::new(MemoryJournal::default())),
            Box::new(Shared(reader_clock.clone())),
        )
        .expect("reader");
        World {
            issuer,
            db,
            issuer_key,
            trust,
            cities: city_algs,
            clock,
            ca,
            reader_key,
            reader_cert,
            reader: RefCell::new(reader),
            reader_clock,
            queries: RefCell::new(HashMap::new()),
            _dir: dir,
        }
    }

    /// Another service instance on the same database (its own connection pool).
    async fn second_instance(&self) -> Arc<Issuer> {
        let ledger = Ledger::open(&self.db).await.expect("ledger");
        Arc::new(Issuer::new(
            ledger,
            self.trust.clone(),
            self.issuer_key.clone(),
            Arc::new(cluster::Masters(self.cities.clone())),
            self.clock.clone(),
        ))
    }

    /// The reader runs the city's sealed query script on `card` with its clock at `at`.
    async fn query_receipt(&self, city: u32, card: &mut CpuCard, at: u64) -> Receipt {
        let cached = self.queries.borrow().get(&city).cloned();
        let sealed = match cached {
            Some(s) => s,
            None => {
                let s = self
                    .issuer
                    .query_script("R1", city)
                    .await
                    .expect("query script")
                    .bytes;
                self.queries.borrow_mut().insert(city, s.clone());
                s
            }
        };
        self.reader_clock.0.store(at, Ordering::SeqCst);
        let done = self
            .reader
            .borrow_mut()
            .query(&sealed, &[0xAB; 8], card, &mut NoTrace, &mut os_rng())
            .expect("query runs");
        self.reader_clock.0.store(NOW, Ordering::SeqCst);
        assert!(done.receipt.is_query(), "{:?}", done.receipt);
        done.receipt
    }

    fn run(&self, bundle: &cardvm::issuer::Bundle, card: &mut CpuCard) -> Receipt {
        let done = self
            .reader
            .borrow_mut()
            .transact(
                &bundle.command,
                &bundle.data,
                card,
                &mut NoTrace,
                &mut os_rng(),
            )
            .expect("reader runs the bundle");
        done.receipt
    }

    /// A receipt re-signed by the reader after `edit` (a compromised reader).
    fn forge(&self, mut r: Receipt, edit: impl FnOnce(&mut Receipt)) -> Receipt {
        edit(&mut r);
        r.signature = None;
        r.sign(&self.reader_key, &mut os_rng()).expect("sign");
        r
    }
}

fn card(c: &City, balance: u32) -> CpuCard {
    card_counting_from(c, balance, 0)
}

/// A card whose online and offline ATCs start at `atc` (cards in the field start at 1:
/// reference/epurse.md "City variants").
fn card_counting_from(c: &City, balance: u32, atc: u16) -> CpuCard {
    card_like(c, balance, atc, Variant::default())
}

/// A card that behaves like `variant` (a card in the field).
fn card_like(c: &City, balance: u32, atc: u16, variant: Variant) -> CpuCard {
    CpuCard::builder()
        .variant(variant)
        .algorithm(c.alg)
        .card_number(&SERIAL)
        .master_keys(&unhex(MLK), &unhex(MPK), &unhex(MTK))
        .balance(balance, 1_000_000)
        .counters(atc, atc)
        .random(RandomSource::Fixed([0xF9, 0xCA, 0xBA, 0x91]))
        .build()
        .expect("card")
}

fn state_of(rows: &[cardvm::issuer::ledger::TxnRow], seq: u64) -> TxnState {
    rows.iter().find(|r| r.seq == seq).expect("row").state
}

async fn load_flow(c: &City) {
    let w = World::new(&format!("flow{}", c.city), &[c]).await;
    let mut card = card(c, 500);
    let q = w.query_receipt(c.city, &mut card, NOW - 5).await;
    let bundle = w.issuer.bundle(&q, 10_000).await.expect("bundle");
    assert_eq!((bundle.kind, bundle.amount), (TxnKind::Load, 10_000));
    let receipt = w.run(&bundle, &mut card);
    assert_eq!(receipt.outcome, Outcome::Committed, "{receipt:?}");
    assert_eq!(card.balance(), 10_500);
    let settled = w.issuer.settle(&receipt).await.expect("settle");
    assert_eq!(
        (settled.state, settled.already),
        (TxnState::Committed, false)
    );
    // The same receipt again (a retry): idempotent, nothing moves twice.
    let again = w.issuer.settle(&receipt).await.expect("settle again");
    assert_eq!((again.state, again.already), (TxnState::Committed, true));
    let rows = w
        .issuer
        .ledger()
        .list(&Filter::default())
        .await
        .expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].balance_after, Some(10_500));
    assert_eq!(rows[0].card_id, hex(&SERIAL));
    // The card was given Beijing time (NOW is 12:00 UTC), and its TAC verified over it.
    assert_eq!(rows[0].datetime, "20261123200000");
    assert_eq!(
        w.issuer.local_bcd(NOW),
        [0x20, 0x26, 0x11, 0x23, 0x20, 0, 0]
    );
    let utc = Issuer::new(
        w.issuer.ledger().clone(),
        TrustStore::new(),
        key(),
        Arc::new(cluster::Masters(vec![])),
        Arc::new(TestClock(AtomicU64::new(NOW))),
    )
    .with_zone("UTC")
    .expect("zone");
    assert_eq!(utc.local_bcd(NOW), [0x20, 0x26, 0x11, 0x23, 0x12, 0, 0]);
}

#[tokio::test]
async fn des3_city_query_bundle_run_settle() {
    load_flow(&DES3).await;
}

#[tokio::test]
async fn sm4_city_query_bundle_run_settle() {
    load_flow(&SM4).await;
}

/// Invariant 11: the bundle's data script carries keys diversified for this card, never
/// the master keys.
#[tokio::test]
async fn bundle_carries_diversified_keys_never_masters() {
    let w = World::new("divkeys", &[&DES3]).await;
    let mut card = card(&DES3, 500);
    let bundle = w
        .issuer
        .bundle(&w.query_receipt(731, &mut card, NOW).await, 100)
        .await
        .expect("bundle");
    let mut opener = Opener::new(
        Some("R1"),
        w.reader_key.clone(),
        w.issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    let cmd = opener
        .open(&bundle.command, NOW, Expect::Command)
        .expect("command opens");
    let digest = cardvm::crypto::sm3(cmd.payload());
    let data = opener
        .open(&bundle.data, NOW, Expect::DataFor(&digest))
        .expect("data opens for its command");
    let data = DataScript::parse(data.payload()).expect("data parses");
    let mut keys = 0;
    for f in &data.fields {
        if let cardvm::script::FieldValue::Key(k) = &f.value {
            keys += 1;
            // Keys compare in constant time through the data-script value type; their
            // bytes are not readable outside the crate.
            let same = |bytes: &[u8]| {
                let other = SecretKey::new(k.alg(), k.usage(), bytes).expect("key");
                f.value == cardvm::script::FieldValue::Key(other)
            };
            for master in [MLK, MPK, MTK] {
                assert!(!same(&unhex(master)), "{} is a master key", f.name);
            }
            let master = match k.usage() {
                KeyUsage::Load => (KeyUsage::LoadMaster, MLK),
                KeyUsage::Tac => (KeyUsage::TacMaster, MTK),
                other => panic!("unexpected usage {other:?}"),
            };
            let mk = SecretKey::new(KeyAlg::Des3, master.0, &unhex(master.1)).expect("mk");
            let dk = cardvm::crypto::diversify(&mk, &SERIAL).expect("dk");
            assert!(
                f.value == cardvm::script::FieldValue::Key(dk),
                "{} is not diversified for this card",
                f.name
            );
        }
    }
    assert_eq!(keys, 2, "load and TAC keys");
}

#[tokio::test]
async fn refusals_before_sealing() {
    let w = World::new("refuse", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    let err = |r: Result<cardvm::issuer::Bundle, IssuerError>| match r {
        Ok(b) => panic!("bundle {} issued", b.seq),
        Err(e) => e,
    };
    // Stale: read 10 minutes ago.
    let e = err(w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW - 600).await, 100)
        .await);
    assert!(matches!(e, IssuerError::StaleQuery { .. }), "{e}");
    // A reader clock 10 minutes ahead.
    let e = err(w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 600).await, 100)
        .await);
    assert!(matches!(e, IssuerError::QueryFromFuture { .. }), "{e}");
    // Over the per-load limit, over the purse limit.
    let e = err(w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 50_001)
        .await);
    assert!(e.to_string().contains("per-load limit"), "{e}");
    // (another card: the same number with another balance would be suspect)
    let mut p = card(&DES3, 990_000).to_profile();
    p.card_number = "4100000089999986".into();
    let mut rich = p.build().expect("card");
    let e = err(w
        .issuer
        .bundle(&w.query_receipt(731, &mut rich, NOW).await, 20_000)
        .await);
    assert!(e.to_string().contains("purse limit"), "{e}");
    // Daily limit: 50000 + 40000 > 80000.
    w.issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 50_000)
        .await
        .expect("first");
    let e = err(w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 1).await, 40_000)
        .await);
    assert!(e.to_string().contains("daily limit"), "{e}");
    // A query buys one bundle.
    let q = w.query_receipt(731, &mut c, NOW).await;
    w.issuer.bundle(&q, 100).await.expect("bundle");
    let e = err(w.issuer.bundle(&q, 100).await);
    assert!(matches!(e, IssuerError::QueryUsed { .. }), "{e}");
    // Blocked card.
    w.issuer
        .ledger()
        .block_card(&hex(&SERIAL), "reported lost", NOW)
        .await
        .expect("block");
    let e = err(w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 100)
        .await);
    assert_eq!(
        e.to_string(),
        format!("card {} is blocked: reported lost", hex(&SERIAL))
    );
    w.issuer
        .ledger()
        .unblock_card(&hex(&SERIAL))
        .await
        .expect("unblock");
    // Not the registered query script.
    let other = w.forge(w.query_receipt(731, &mut c, NOW).await, |r| {
        r.command_sm3 = [7; 32]
    });
    let e = err(w.issuer.bundle(&other, 100).await);
    assert!(matches!(e, IssuerError::NotAQuery(_)), "{e}");
    // A development receipt.
    let dev = w.forge(w.query_receipt(731, &mut c, NOW).await, |r| {
        r.mode = Mode::Development
    });
    let e = err(w.issuer.bundle(&dev, 100).await);
    assert!(e.to_string().contains("development receipt"), "{e}");
    // A tampered field (signature no longer verifies).
    let mut tampered = w.query_receipt(731, &mut c, NOW).await;
    tampered.fields[1].1 = FieldValue::Int(0);
    let e = err(w.issuer.bundle(&tampered, 100).await);
    assert!(e.to_string().contains("signature does not verify"), "{e}");
    // An unknown reader.
    let stranger = w.forge(w.query_receipt(731, &mut c, NOW).await, |r| {
        r.reader_id = "R9".into()
    });
    let e = err(w.issuer.bundle(&stranger, 100).await);
    assert!(matches!(e, IssuerError::UnknownReader(_)), "{e}");
    // A query from a card of a city this issuer has no script for.
    let foreign = w.forge(w.query_receipt(731, &mut c, NOW).await, |r| r.city = 999);
    let e = err(w.issuer.bundle(&foreign, 100).await);
    assert!(e.to_string().contains("city 999"), "{e}");
}

#[tokio::test]
async fn reader_certificates_checked_on_every_request() {
    let mut w = World::new("certs", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    // Expired: the issuer's clock passes the certificate's end.
    let q = w.query_receipt(731, &mut c, NOW).await;
    w.clock.0.store(NOW + 31 * DAY, Ordering::SeqCst);
    let e = w
        .issuer
        .bundle(&q, 100)
        .await
        .expect_err("expired certificate");
    assert!(matches!(e, IssuerError::Certificate { .. }), "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    w.clock.0.store(NOW, Ordering::SeqCst);
    // Foreign CA: a certificate for R1 from another CA.
    let mut other = Ca::new_root(
        parse_name("CN=Other CA,O=Other").expect("name"),
        key(),
        NOW - DAY,
        NOW + 10 * DAY,
        None,
        os_rng(),
    )
    .expect("ca");
    let forged = other
        .issue_reader(
            "R1",
            w.reader_key.public_key(),
            ReaderKind::SecureElement,
            NOW - DAY,
            NOW + 9 * DAY,
            os_rng(),
        )
        .expect("cert");
    let pem = cardvm::issuer::pki::to_pem(&forged, "certificate").expect("pem");
    w.issuer
        .ledger()
        .add_reader("R1", &pem, "02", &[0; 6], NOW)
        .await
        .expect("replace");
    let e = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 100)
        .await
        .expect_err("foreign CA");
    assert!(matches!(e, IssuerError::Certificate { .. }), "{e}");
    // Wrong id: R2's certificate registered as R1.
    let r2 =
        w.ca.issue_reader(
            "R2",
            w.reader_key.public_key(),
            ReaderKind::SecureElement,
            NOW - DAY,
            NOW + 9 * DAY,
            os_rng(),
        )
        .expect("cert");
    let pem = cardvm::issuer::pki::to_pem(&r2, "certificate").expect("pem");
    w.issuer
        .ledger()
        .add_reader("R1", &pem, "03", &[0; 6], NOW)
        .await
        .expect("replace");
    let e = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 100)
        .await
        .expect_err("wrong id");
    assert!(e.to_string().contains("R2"), "{e}");
    let _ = &w.reader_cert;
}

#[tokio::test]
async fn revoked_reader_is_refused_and_its_receipts_too() {
    // Revocation needs the CRL in the trust store: build the world, then revoke.
    let mut w = World::new("revoked", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    let bundle = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 100)
        .await
        .expect("bundle");
    let receipt = w.run(&bundle, &mut c);
    let serial = cardvm::issuer::cert::serial_of(&w.reader_cert);
    let serial = u64::from_str_radix(&serial, 16).expect("serial");
    w.ca.revoke(serial, NOW - 1).expect("revoke");
    let crl = w.ca.crl(NOW - 1, NOW + 7 * DAY, os_rng()).expect("crl");
    let mut trust = TrustStore::new();
    trust.add_root(w.ca.cert.clone()).expect("root");
    trust.add_crl(crl);
    let issuer = Issuer::new(
        w.issuer.ledger().clone(),
        trust,
        key(),
        Arc::new(cluster::Masters(vec![(731, KeyAlg::Des3)])),
        w.clock.clone(),
    );
    let e = issuer
        .settle(&receipt)
        .await
        .expect_err("revoked reader's receipt");
    assert!(e.to_string().to_lowercase().contains("revoked"), "{e}");
    let e = issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 100)
        .await
        .expect_err("revoked reader's query");
    assert!(e.to_string().to_lowercase().contains("revoked"), "{e}");
}

#[tokio::test]
async fn settlement_refusals() {
    let w = World::new("settle", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    let bundle = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 2_000)
        .await
        .expect("bundle");
    let receipt = w.run(&bundle, &mut c);
    assert_eq!(receipt.outcome, Outcome::Committed);
    // A compromised reader reports a TAC the card did not produce.
    let bad_tac = w.forge(receipt.clone(), |r| {
        for (n, v) in &mut r.fields {
            if n == "tac" {
                *v = FieldValue::Bytes(vec![0, 0, 0, 0]);
            }
        }
    });
    let e = w.issuer.settle(&bad_tac).await.expect_err("bad TAC");
    assert!(matches!(e, IssuerError::TacMismatch { .. }), "{e}");
    assert!(e.to_string().contains("TAC does not verify"), "{e}");
    // ... and a balance that does not add up.
    let bad_sum = w.forge(receipt.clone(), |r| {
        for (n, v) in &mut r.fields {
            if n == "balance_after" {
                *v = FieldValue::Int(999_999);
            }
        }
    });
    let e = w.issuer.settle(&bad_sum).await.expect_err("bad arithmetic");
    assert!(e.to_string().contains("is not 999999"), "{e}");
    // A receipt for a bundle never issued.
    let never = w.forge(receipt.clone(), |r| {
        if let Some(d) = &mut r.data {
            d.seq = 999;
        }
    });
    let e = w.issuer.settle(&never).await.expect_err("never issued");
    assert_eq!(
        e.to_string(),
        "no bundle was issued for reader `R1` seq 999"
    );
    // A query receipt is not a transaction.
    let e = w
        .issuer
        .settle(&w.query_receipt(731, &mut c, NOW).await)
        .await
        .expect_err("query");
    assert!(e.to_string().contains("names no bundle"), "{e}");
    // Unsettled so far.
    let rows = w
        .issuer
        .ledger()
        .list(&Filter::default())
        .await
        .expect("list");
    assert_eq!(state_of(&rows, bundle.seq), TxnState::Issued);
    // The true receipt settles; then a different receipt for the same seq is refused.
    w.issuer.settle(&receipt).await.expect("settle");
    let other = w.forge(receipt.clone(), |r| r.apdu_count += 1);
    let e = w.issuer.settle(&other).await.expect_err("second receipt");
    assert!(matches!(e, IssuerError::SettledByOther { .. }), "{e}");
}

#[tokio::test]
async fn failed_load_settles_failed_and_frees_the_daily_limit() {
    let w = World::new("failed", &[&DES3]).await;
    // The card answers 9403 at INITIALIZE (key index not supported): nothing moves.
    let mut c = card(&DES3, 500);
    let q = w.query_receipt(731, &mut c, NOW).await;
    // The third APDU of the load (SELECT, READ EF 0015, INITIALIZE); fault indices
    // count the card's APDUs since power-on from 1.
    let at = c.apdu_index() + 3;
    c.faults_mut().push(Fault::ForceSw(at, 0x9403));
    let bundle = w.issuer.bundle(&q, 50_000).await.expect("bundle");
    let receipt = w.run(&bundle, &mut c);
    assert!(
        matches!(receipt.outcome, Outcome::Failed { .. }),
        "{receipt:?}"
    );
    let s = w.issuer.settle(&receipt).await.expect("settle");
    assert_eq!(s.state, TxnState::Failed);
    assert_eq!(c.balance(), 500);
    // A failed load does not count against the day: 50000 more is allowed.
    w.issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 1).await, 50_000)
        .await
        .expect("failed loads do not use the daily limit");
}

/// unknown → recovered, both ways: the card committed (TearAfter the CREDIT) or not
/// (TearBefore it); the recovery bundle asks the card and the ledger follows.
async fn recovery(tear: fn(u32) -> Fault, committed: bool) {
    recovery_on(tear, committed, None).await
}

async fn recovery_on(tear: fn(u32) -> Fault, committed: bool, db: Option<String>) {
    let w = World::on(&format!("recover{committed}"), &[&DES3], db).await;
    let mut c = card(&DES3, 500);
    let q = w.query_receipt(731, &mut c, NOW).await;
    // The fourth APDU of the load: CREDIT FOR LOAD.
    let at = c.apdu_index() + 4;
    c.faults_mut().push(tear(at));
    let bundle = w.issuer.bundle(&q, 3_000).await.expect("bundle");
    let receipt = w.run(&bundle, &mut c);
    assert!(
        matches!(receipt.outcome, Outcome::Unknown { .. }),
        "{receipt:?}"
    );
    let s = w.issuer.settle(&receipt).await.expect("settle unknown");
    assert_eq!(s.state, TxnState::Unknown);
    // The customer taps the card again.
    cardvm::transport::CardTransport::power_on(&mut c).expect("power on");
    // While unknown, the card gets no new load: its next query yields the recovery.
    let recover = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 10).await, 1_000)
        .await
        .expect("recovery bundle");
    assert_eq!(recover.kind, TxnKind::Recover);
    assert_eq!(recover.recovers_seq, Some(bundle.seq));
    let r = w.run(&recover, &mut c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    let s = w.issuer.settle(&r).await.expect("settle recovery");
    let decided = if committed {
        TxnState::RecoveredCommitted
    } else {
        TxnState::RecoveredFailed
    };
    assert_eq!(s.decided, Some((bundle.seq, decided)));
    assert_eq!(c.balance(), if committed { 3_500 } else { 500 });
    let rows = w
        .issuer
        .ledger()
        .list(&Filter::default())
        .await
        .expect("list");
    assert_eq!(state_of(&rows, bundle.seq), decided);
    assert_eq!(state_of(&rows, recover.seq), TxnState::Committed);
    // The recovery receipt again: idempotent; the load is not decided twice.
    let again = w.issuer.settle(&r).await.expect("again");
    assert!(again.already);
    // Decided: the next query gets a load again.
    let next = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 20).await, 1_000)
        .await
        .expect("load after recovery");
    assert_eq!(next.kind, TxnKind::Load);
}

#[tokio::test]
async fn unknown_recovered_as_committed() {
    recovery(Fault::TearAfter, true).await;
}

#[tokio::test]
async fn unknown_recovered_as_failed() {
    recovery(Fault::TearBefore, false).await;
}

/// A card whose ATCs start at 1: the load settles on the card's TAC (computed with
/// ATC 1), and a torn load is recovered with the ATC the receipt carries.
#[tokio::test]
async fn atcs_starting_at_1_settle_and_recover() {
    for c in [&DES3, &SM4] {
        let w = World::new(&format!("atc1-{}", c.city), &[c]).await;
        let mut card = card_counting_from(c, 500, 1);
        let q = w.query_receipt(c.city, &mut card, NOW).await;
        let bundle = w.issuer.bundle(&q, 1_000).await.expect("bundle");
        let receipt = w.run(&bundle, &mut card);
        assert_eq!(receipt.outcome, Outcome::Committed, "{receipt:?}");
        assert_eq!(receipt.field("atc"), Some(&FieldValue::Int(1)));
        let s = w
            .issuer
            .settle(&receipt)
            .await
            .expect("settle: the TAC with ATC 1");
        assert_eq!(s.state, TxnState::Committed);
        // The next load (ATC 2) is torn after the card committed; recovery asks about ATC 2.
        let q = w.query_receipt(c.city, &mut card, NOW + 10).await;
        let at = card.apdu_index() + 4;
        card.faults_mut().push(Fault::TearAfter(at));
        let bundle = w.issuer.bundle(&q, 2_000).await.expect("bundle");
        let receipt = w.run(&bundle, &mut card);
        assert!(
            matches!(receipt.outcome, Outcome::Unknown { .. }),
            "{receipt:?}"
        );
        assert_eq!(receipt.field("atc"), Some(&FieldValue::Int(2)));
        w.issuer.settle(&receipt).await.expect("settle unknown");
        cardvm::transport::CardTransport::power_on(&mut card).expect("power on");
        let recover = w
            .issuer
            .bundle(&w.query_receipt(c.city, &mut card, NOW + 20).await, 1_000)
            .await
            .expect("recovery bundle");
        assert_eq!(recover.kind, TxnKind::Recover);
        let r = w.run(&recover, &mut card);
        assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
        let s = w.issuer.settle(&r).await.expect("settle recovery");
        assert_eq!(s.decided, Some((bundle.seq, TxnState::RecoveredCommitted)));
        assert_eq!(card.balance(), 3_500);
    }
}

#[tokio::test]
async fn sequence_numbers_are_never_reused() {
    let w = World::new("seq", &[&DES3]).await;
    let mut handles = Vec::new();
    let ledger = w.issuer.ledger().clone();
    for _ in 0..40 {
        let l = ledger.clone();
        handles.push(tokio::spawn(async move { l.allocate_seq("R1").await }));
    }
    let mut seqs = Vec::new();
    for h in handles {
        seqs.push(h.await.expect("task").expect("ledger").expect("reader"));
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 40);
    assert_eq!(ledger.allocate_seq("nobody").await.expect("ledger"), None);
}

#[tokio::test]
async fn ledger_state_names_round_trip() {
    for s in TxnState::ALL {
        assert_eq!(s.name().parse::<TxnState>(), Ok(s));
    }
    assert!("settled".parse::<TxnState>().is_err());
}

#[path = "support/cluster.rs"]
mod cluster;

/// The ledger's transitions on PostgreSQL: issued → unknown → recovered, both ways.
#[tokio::test]
async fn recovery_on_postgresql() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    recovery_on(
        Fault::TearAfter,
        true,
        Some(cluster::pg_database(&base, "rec1")),
    )
    .await;
    recovery_on(
        Fault::TearBefore,
        false,
        Some(cluster::pg_database(&base, "rec0")),
    )
    .await;
}

/// A load torn at CREDIT FOR LOAD (`tear`), after an earlier load that settled (so a
/// card holds that one's proof): the settled `unknown` bundle.
async fn torn_load(w: &World, c: &mut CpuCard, tear: fn(u32) -> Fault) -> cardvm::issuer::Bundle {
    let q = w.query_receipt(731, c, NOW).await;
    let first = w.issuer.bundle(&q, 1_000).await.expect("bundle");
    let r = w.run(&first, c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    w.issuer.settle(&r).await.expect("settle");
    let q = w.query_receipt(731, c, NOW + 10).await;
    let at = c.apdu_index() + 4;
    c.faults_mut().push(tear(at));
    let bundle = w.issuer.bundle(&q, 3_000).await.expect("bundle");
    let receipt = w.run(&bundle, c);
    assert!(
        matches!(receipt.outcome, Outcome::Unknown { .. }),
        "{receipt:?}"
    );
    let s = w.issuer.settle(&receipt).await.expect("settle unknown");
    assert_eq!(s.state, TxnState::Unknown);
    cardvm::transport::CardTransport::power_on(c).expect("power on");
    bundle
}

/// The card's next query gets the recovery of `torn`; the reader runs it.
async fn recovery_receipt(
    w: &World,
    c: &mut CpuCard,
    torn: &cardvm::issuer::Bundle,
    at: u64,
) -> (cardvm::issuer::Bundle, Receipt) {
    let recover = w
        .issuer
        .bundle(&w.query_receipt(731, c, at).await, 1_000)
        .await
        .expect("recovery bundle");
    assert_eq!(recover.kind, TxnKind::Recover);
    assert_eq!(recover.recovers_seq, Some(torn.seq));
    let r = w.run(&recover, c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    (recover, r)
}

/// Invariant 17 at the card company, on cards that prove by the next counter, answer
/// PROVE once, or answer zeros for a load's MAC2: each torn load is decided right and
/// once, from the card's proof (TAC) or its MAC1-signed counter.
#[tokio::test]
async fn recovery_decides_right_on_every_prove_convention() {
    let cards = [
        (
            "next",
            Variant {
                prove_atc: ProveAtc::Next,
                ..Variant::default()
            },
        ),
        (
            "once-zero-mac",
            Variant {
                prove_once: true,
                prove_zero_mac: true,
                ..Variant::default()
            },
        ),
        (
            "next-once",
            Variant {
                prove_atc: ProveAtc::Next,
                prove_once: true,
                ..Variant::default()
            },
        ),
    ];
    for (name, variant) in cards {
        for (tear, committed) in [
            (Fault::TearAfter as fn(u32) -> Fault, true),
            (Fault::TearBefore, false),
        ] {
            let what = format!("{name}, committed {committed}");
            let w = World::new(&format!("conv-{name}-{committed}"), &[&DES3]).await;
            let mut c = card_like(&DES3, 500, 0, variant);
            let torn = torn_load(&w, &mut c, tear).await;
            let (recover, r) = recovery_receipt(&w, &mut c, &torn, NOW + 20).await;
            let s = w.issuer.settle(&r).await.expect("settle recovery");
            let decided = if committed {
                TxnState::RecoveredCommitted
            } else {
                TxnState::RecoveredFailed
            };
            assert_eq!(s.decided, Some((torn.seq, decided)), "{what}");
            assert_eq!(c.balance(), if committed { 4_500 } else { 1_500 }, "{what}");
            let again = w.issuer.settle(&r).await.expect("again");
            assert!(again.already && again.decided.is_none(), "{what}");
            let rows = w
                .issuer
                .ledger()
                .list(&Filter::default())
                .await
                .expect("list");
            assert_eq!(state_of(&rows, torn.seq), decided, "{what}");
            assert_eq!(state_of(&rows, recover.seq), TxnState::Committed, "{what}");
            let credited: u64 = rows
                .iter()
                .filter(|r| {
                    matches!(r.state, TxnState::Committed | TxnState::RecoveredCommitted)
                        && r.kind == TxnKind::Load
                })
                .map(|r| r.amount)
                .sum();
            assert_eq!(
                credited + 500,
                u64::from(c.balance()),
                "{what}: the ledger is the card"
            );
        }
    }
}

/// The reader's own verdict decides nothing: a recovery receipt re-signed by the reader
/// to say "never counted" (no proof, its counter put back, the card's MAC1 kept), or with
/// a proof whose TAC is not the card's, leaves the load `unknown`; the genuine answer
/// decides it. Undecided, the card keeps getting its recovery, and an operator can decide
/// it with the evidence in the ledger.
#[tokio::test]
async fn forged_recovery_evidence_decides_nothing() {
    let w = World::new("forged-recovery", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    let torn = torn_load(&w, &mut c, Fault::TearAfter).await;
    let set = |r: &mut Receipt, name: &str, v: FieldValue| {
        for f in &mut r.fields {
            if f.0 == name {
                f.1 = v.clone();
            }
        }
    };
    type Edit<'a> = Box<dyn Fn(&mut Receipt) + 'a>;
    let forgeries: [(&str, Edit<'_>); 3] = [
        (
            "no proof, committed = 0",
            Box::new(|r: &mut Receipt| {
                r.fields
                    .retain(|(n, _)| n != "mac" && n != "tac" && n != "prove_atc");
                set(r, "committed", FieldValue::Int(0));
            }),
        ),
        (
            "counter put back to the load's",
            Box::new(|r: &mut Receipt| {
                r.fields
                    .retain(|(n, _)| n != "mac" && n != "tac" && n != "prove_atc");
                set(r, "counter", FieldValue::Int(1));
                set(r, "committed", FieldValue::Int(0));
            }),
        ),
        (
            "a TAC that is not the card's",
            Box::new(|r: &mut Receipt| set(r, "tac", FieldValue::Bytes(vec![0xAB; 4]))),
        ),
    ];
    let mut at = NOW + 20;
    for (what, edit) in &forgeries {
        let (_, genuine) = recovery_receipt(&w, &mut c, &torn, at).await;
        at += 5;
        let forged = w.forge(genuine, |r| edit(r));
        let s = w
            .issuer
            .settle(&forged)
            .await
            .expect("settles, decides nothing");
        assert_eq!(s.decided, None, "{what}");
        let row = w
            .issuer
            .ledger()
            .txn("R1", torn.seq)
            .await
            .expect("ledger")
            .expect("row");
        assert_eq!(row.state, TxnState::Unknown, "{what}");
    }
    // The evidence is kept: the recovery's note says what it saw.
    let rows = w
        .issuer
        .ledger()
        .list(&Filter::default())
        .await
        .expect("list");
    assert!(
        rows.iter().filter(|r| r.kind == TxnKind::Recover).all(|r| r
            .note
            .as_deref()
            .is_some_and(|n| n.contains("recovery undecided"))),
        "{rows:?}"
    );
    // The genuine answer decides it, once.
    let (_, genuine) = recovery_receipt(&w, &mut c, &torn, at).await;
    let s = w.issuer.settle(&genuine).await.expect("settle");
    assert_eq!(s.decided, Some((torn.seq, TxnState::RecoveredCommitted)));
    // Decided: an operator cannot decide it again.
    assert!(
        !w.issuer
            .ledger()
            .decide_unknown("R1", torn.seq, TxnState::RecoveredFailed, "test")
            .await
            .expect("ledger")
    );
}

/// An operator decides an `unknown` load the card cannot prove (`cardvm issuer
/// decide`): only an `unknown` one, only to a recovered state, with the reason kept.
#[tokio::test]
async fn operator_decides_an_undecided_load() {
    let w = World::new("operator-decides", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    let torn = torn_load(&w, &mut c, Fault::TearBefore).await;
    let l = w.issuer.ledger();
    assert!(
        l.decide_unknown("R1", torn.seq, TxnState::Committed, "no")
            .await
            .is_err()
    );
    assert!(
        l.decide_unknown(
            "R1",
            torn.seq,
            TxnState::RecoveredFailed,
            "decided by an operator: card statement"
        )
        .await
        .expect("ledger")
    );
    let row = l.txn("R1", torn.seq).await.expect("ledger").expect("row");
    assert_eq!(row.state, TxnState::RecoveredFailed);
    assert!(
        row.note
            .as_deref()
            .is_some_and(|n| n.contains("card statement"))
    );
    assert!(
        !l.decide_unknown("R1", torn.seq, TxnState::RecoveredCommitted, "again")
            .await
            .expect("ledger")
    );
    // Decided: the card gets loads again.
    let next = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 30).await, 1_000)
        .await
        .expect("load");
    assert_eq!(next.kind, TxnKind::Load);
}

/// Limits are decided by the database, per card (invariant 13): `n` loads for one card
/// at once, spread over `instances` service instances on one database. The city allows
/// 80 000 a day; each load is 30 000, so exactly two are issued, whatever the race. All
/// that were issued then run and settle: the card and the ledger end at 60 000 more.
async fn daily_limit_race(db: Option<String>, tag: &str, n: usize, instances: usize) {
    let w = World::on(tag, &[&DES3], db).await;
    let mut c = card(&DES3, 500);
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(w.query_receipt(731, &mut c, NOW).await);
    }
    let mut issuers = vec![w.issuer.clone()];
    for _ in 1..instances {
        issuers.push(w.second_instance().await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, q) in queries.into_iter().enumerate() {
        let issuer = issuers[i % instances].clone();
        tasks.spawn(async move { issuer.bundle(&q, 30_000).await });
    }
    let mut issued = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(b) => issued.push(b),
            Err(IssuerError::Limit { .. }) => {}
            Err(e) => panic!("{tag}: {e}"),
        }
    }
    assert_eq!(
        issued.len(),
        2,
        "{tag}: {n} racing loads of 30 000 under a daily 80 000"
    );
    // The reader opens sealed bundles in seq order only (replay protection).
    issued.sort_by_key(|b| b.seq);
    for b in &issued {
        let r = w.run(b, &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
        assert_eq!(
            w.issuer.settle(&r).await.expect("settle").state,
            TxnState::Committed
        );
    }
    assert_eq!(c.balance(), 60_500);
    let rows = w
        .issuer
        .ledger()
        .list(&Filter::default())
        .await
        .expect("list");
    let settled: u64 = rows
        .iter()
        .filter(|r| r.state == TxnState::Committed)
        .map(|r| r.amount)
        .sum();
    assert_eq!(settled, 60_000, "{tag}");
    assert_eq!(rows.len(), 2, "{tag}: no orphan bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daily_limit_holds_against_8_and_50_racing_loads_on_sqlite() {
    daily_limit_race(None, "race8x1", 8, 1).await;
    daily_limit_race(None, "race50x1", 50, 1).await;
    daily_limit_race(None, "race8x2", 8, 2).await;
    daily_limit_race(None, "race50x2", 50, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daily_limit_holds_against_8_and_50_racing_loads_on_postgresql() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    for (n, instances) in [(8, 1), (50, 1), (8, 2), (50, 2)] {
        let tag = format!("race{n}x{instances}");
        daily_limit_race(Some(cluster::pg_database(&base, &tag)), &tag, n, instances).await;
    }
}

/// Loads issued and not yet settled count toward the purse limit until they settle,
/// fail or expire: two 45 000 loads one after the other under a 60 000 purse limit — the
/// second is refused while the first is open, allowed once it failed, and an expired
/// bundle no longer counts.
#[tokio::test]
async fn unsettled_loads_count_toward_the_purse_limit() {
    let w = World::new("purse-open", &[&DES3]).await;
    w.issuer
        .ledger()
        .set_city(&CityRow {
            city: 731,
            alg: "des3".into(),
            purse_limit: 60_000,
            txn_limit: 50_000,
            day_limit: 1_000_000,
        })
        .await
        .expect("city");
    let mut c = card(&DES3, 500);
    let first = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 45_000)
        .await
        .expect("first");
    let e = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 45_000)
        .await
        .map(|b| b.seq)
        .expect_err("the first is still open");
    assert!(
        matches!(&e, IssuerError::Limit { detail, .. } if detail.contains("unsettled loads 45000")),
        "{e}"
    );
    // The first fails on the card (key index refused): it no longer counts.
    let at = c.apdu_index() + 3;
    c.faults_mut().push(Fault::ForceSw(at, 0x9403));
    let r = w.run(&first, &mut c);
    assert!(matches!(r.outcome, Outcome::Failed { .. }), "{r:?}");
    w.issuer.settle(&r).await.expect("settle failed");
    let second = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 45_000)
        .await
        .expect("allowed once the first failed");
    // Expired without a receipt: released (the bundle can no longer be opened).
    let later = second.expires + 1;
    w.clock.0.store(later, Ordering::SeqCst);
    w.issuer
        .bundle(&w.query_receipt(731, &mut c, later).await, 45_000)
        .await
        .expect("an expired bundle no longer counts");
}

/// Database errors keep their meaning (invariant 13): a unique violation is a conflict
/// (this query already bought its bundle), and any other failure — here a closed pool —
/// decided nothing and is retryable, never answered as a conflict.
async fn database_errors_are_typed_on(db: Option<String>, tag: &str) {
    let w = World::on(tag, &[&DES3], db).await;
    let mut c = card(&DES3, 500);
    let q = w.query_receipt(731, &mut c, NOW).await;
    let b = w.issuer.bundle(&q, 1_000).await.expect("bundle");
    let row = w
        .issuer
        .ledger()
        .txn("R1", b.seq)
        .await
        .expect("ledger")
        .expect("row");
    // The same (reader, seq) again: the primary key refuses it.
    let again = cardvm::issuer::ledger::NewTxn {
        reader_id: "R1".into(),
        seq: b.seq,
        kind: TxnKind::Load,
        city: 731,
        card_id: row.card_id.clone(),
        amount: 1_000,
        terminal_id: [0, 0, 0, 0, 0, 7],
        datetime: row.datetime.clone(),
        command_sm3: "00".into(),
        query_sm3: None,
        balance_before: Some(500),
        recovers_seq: None,
        issued_at: NOW,
        expires_at: NOW + 600,
        host_secured: false,
        order_id: None,
    };
    let e = w
        .issuer
        .ledger()
        .insert(&again, None)
        .await
        .expect_err("recorded already");
    assert!(
        matches!(e, cardvm::issuer::ledger::LedgerError::Conflict { .. }) && !e.is_retryable(),
        "{tag}: {e}"
    );
    let down = w.second_instance().await;
    down.ledger().close().await;
    let fresh = w.query_receipt(731, &mut c, NOW).await;
    let e = down
        .bundle(&fresh, 1_000)
        .await
        .map(|b| b.seq)
        .expect_err("no database");
    assert!(
        matches!(&e, IssuerError::Ledger(l) if l.is_retryable()),
        "{tag}: {e}"
    );
    // The same query on a working instance still buys its bundle: nothing was decided.
    w.issuer.bundle(&fresh, 1_000).await.expect("retried");
}

#[tokio::test]
async fn database_errors_are_typed() {
    database_errors_are_typed_on(None, "typed-sqlite").await;
    if let Some(base) = cluster::pg_base() {
        database_errors_are_typed_on(Some(cluster::pg_database(&base, "typed")), "typed-pg").await;
    }
}

/// Invariant 14, as the attacks: a card whose balance and online counter moved without
/// the ledger (9000.00 loaded with keys a reader held, a bundle run twice) is suspect at
/// its next query — no bundle, the evidence kept — until an operator clears it; a second
/// card under the same number (its counter behind what the ledger settled) too. Honest
/// flows (a receipt not delivered yet, a torn load, a failed one) never are: every other
/// test in this file runs them on the same check.
#[tokio::test]
async fn a_card_that_moved_without_the_ledger_is_suspect() {
    let w = World::new("suspect", &[&DES3]).await;
    let mut c = card(&DES3, 500);
    let b = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW).await, 1_000)
        .await
        .expect("bundle");
    let r = w.run(&b, &mut c);
    w.issuer.settle(&r).await.expect("settle");
    // A second bundle that runs but whose receipt has not arrived: explained (open).
    let b2 = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 1).await, 1_000)
        .await
        .expect("bundle");
    let r2 = w.run(&b2, &mut c);
    assert_eq!(r2.outcome, Outcome::Committed);
    let b3 = w
        .issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 2).await, 1_000)
        .await
        .expect("an undelivered receipt is no suspicion");
    assert_eq!(b3.kind, TxnKind::Load);
    w.issuer.settle(&r2).await.expect("late receipt");
    // Off the ledger: 9000.00 and a counter step the ledger never saw.
    let mut p = c.to_profile();
    p.balance += 900_000;
    p.online_atc += 2; // one step is explained by the open bundle above, not two
    let mut c = p.build().expect("card");
    let refused = |e: IssuerError| match e {
        IssuerError::Suspect { evidence, .. } => evidence,
        other => panic!("expected suspect, got {other}"),
    };
    let evidence = refused(
        w.issuer
            .bundle(&w.query_receipt(731, &mut c, NOW + 3).await, 1_000)
            .await
            .map(|b| b.seq)
            .expect_err("suspect"),
    );
    assert!(
        evidence.contains("online counter") && evidence.contains("balance 902500"),
        "{evidence}"
    );
    let l = w.issuer.ledger();
    let card_hex = hex(&SERIAL);
    let state = l
        .card_state(731, &card_hex)
        .await
        .expect("ledger")
        .expect("row");
    assert!(state.suspect.is_some() && state.history.contains("suspect"));
    // Still refused at the next query, though nothing moved since.
    refused(
        w.issuer
            .bundle(&w.query_receipt(731, &mut c, NOW + 4).await, 1_000)
            .await
            .map(|b| b.seq)
            .expect_err("still suspect"),
    );
    // An operator checks and clears it: loads again, the history kept.
    assert!(
        l.clear_card(731, &card_hex, "checked with the cardholder", NOW + 5)
            .await
            .expect("ledger")
    );
    assert!(
        !l.clear_card(731, &card_hex, "again", NOW + 6)
            .await
            .expect("ledger")
    );
    w.issuer
        .bundle(&w.query_receipt(731, &mut c, NOW + 7).await, 1_000)
        .await
        .expect("cleared");
    let state = l
        .card_state(731, &card_hex)
        .await
        .expect("ledger")
        .expect("row");
    assert!(state.suspect.is_none() && state.history.contains("cleared by an operator"));
    // Another card under the same number, its counter behind what the ledger settled.
    let mut twin = card(&DES3, 500);
    let evidence = refused(
        w.issuer
            .bundle(&w.query_receipt(731, &mut twin, NOW + 8).await, 1_000)
            .await
            .map(|b| b.seq)
            .expect_err("a twin"),
    );
    assert!(evidence.contains("below"), "{evidence}");
}
