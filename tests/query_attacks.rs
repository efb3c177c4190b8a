//! The card query (`Reader::query`, DESIGN §7), tried as an attacker would. Each test
//! fails if its attack works again: a query that holds a key, that can commit or change
//! the card, that runs unsealed on a production reader, that lies about the card, or
//! whose receipt passes for a transaction to settle.
//!
//! The world: the card company's issuer key, one reader, each city's sealed
//! `query.casm`, and each city's simulated card (`scripts/<city>/card.toml`) with
//! counters moved off zero.

use cardvm::asm::{AsmOptions, MapLoader, assemble, assemble_file};
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::{
    EnvelopeHeader, MemoryReplayStore, OpenError, ReplayEntry, ReplayKey, ReplayStore, ScriptKind,
    StoreError, seal,
};
use cardvm::reader::{
    BoxedStore, FixedClock, JournalStatus, MAX_QUERY_NONCE, MemoryJournal, Policy, QueryRefusal,
    Reader, ReaderConfig, ReaderError,
};
use cardvm::receipt::{FieldValue, Mode, Receipt, ReceiptError};
use cardvm::sim::{CardProfile, Fault, SimCard};
use cardvm::transport::{CardTransport, TransportError};
use cardvm::vm::{Limits, NoTrace, Outcome};
use std::sync::{Arc, Mutex};

/// 2027-01-15T08:00:00Z.
const NOW: u64 = 1_800_000_000;
const NOW_BCD: &str = "20270115080000";
const READER: &str = "kiosk-0001";
const NONCE: [u8; 16] = *b"card-company-16b";

fn rng() -> impl rand_core::CryptoRng {
    cardvm::crypto::rng::os_rng()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// A city's query script as assembled from `scripts/`.
fn city_query(dir: &str) -> Vec<u8> {
    assemble_file(format!("{dir}/query.casm").as_ref(), &AsmOptions::default())
        .unwrap()
        .script
        .encode()
}

/// City 0731's query with `ep_query.casm` edited by the attacker.
fn edited_query(edit: impl Fn(String) -> String) -> Vec<u8> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let mut loader = MapLoader::new();
    let text = read("scripts/common/ep_query.casm");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the attack's edit applies");
    loader.insert("common/ep_query.casm", edited);
    loader.insert("common/purse.casm", read("scripts/common/purse.casm"));
    assemble(
        &read("scripts/city0731-des3/query.casm"),
        "city/query.casm",
        &AsmOptions::default(),
        &mut loader,
    )
    .unwrap()
    .script
    .encode()
}

struct World {
    issuer: Sm2PrivateKey,
    reader: Sm2PrivateKey,
}

impl World {
    fn new() -> Self {
        let mut rng = rng();
        World {
            issuer: Sm2PrivateKey::generate(&mut rng),
            reader: Sm2PrivateKey::generate(&mut rng),
        }
    }

    /// Seals a query script for the reader (city and id from its own header).
    fn seal(&self, command: &[u8], seq: u64) -> Vec<u8> {
        self.seal_as(ScriptKind::Query, command, seq)
    }

    /// Seals a command or query script for the reader.
    fn seal_as(&self, kind: ScriptKind, command: &[u8], seq: u64) -> Vec<u8> {
        let script = cardvm::script::CommandScript::parse(command).unwrap();
        let header = EnvelopeHeader {
            kind,
            city: script.header.city,
            script_id: script.header.script_id,
            script_version: script.header.version,
            seq,
            issued: NOW - 60,
            expires: NOW + 600,
            binding: cardvm::crypto::sm3(command),
            reader_id: READER.into(),
        };
        seal(
            &self.issuer,
            self.reader.public_key(),
            &header,
            command,
            &mut rng(),
        )
        .unwrap()
    }

    fn reader(&self, policy: Policy) -> Reader {
        self.reader_on(policy, Box::new(MemoryReplayStore::new()))
    }

    fn reader_on(&self, policy: Policy, store: BoxedStore) -> Reader {
        Reader::new(
            ReaderConfig {
                reader_id: READER.into(),
                reader_key: Some(self.reader.clone()),
                issuers: vec![self.issuer.public_key().clone()],
                policy,
                limits: Limits::default(),
            },
            Some(store),
            Some(Box::new(MemoryJournal::default())),
            Box::new(FixedClock(NOW)),
        )
        .unwrap()
    }
}

/// A city's simulated card, its counters off zero, counting the APDUs that reach it
/// and keeping each command.
struct Card {
    card: SimCard,
    sent: Vec<Vec<u8>>,
}

impl Card {
    fn city(dir: &str) -> Self {
        let text = std::fs::read_to_string(format!("{dir}/card.toml")).unwrap();
        let mut profile = CardProfile::from_toml(&text).unwrap();
        if let CardProfile::Cpu(p) = &mut profile {
            p.balance = 12_345;
            p.online_atc = 5;
            p.offline_atc = 9;
        }
        Card {
            card: profile.build().unwrap(),
            sent: Vec::new(),
        }
    }

    /// Everything a transaction could change: the committed purse and the PIN counter
    /// (CPU), every block (M1).
    fn state(&self) -> String {
        match &self.card {
            SimCard::Cpu(c) => format!("{:?} pin {}", c.purse(), c.pin_tries_left()),
            SimCard::M1(c) => format!("{:?}", c.blocks()),
            _ => unreachable!(),
        }
    }

    fn cpu(&mut self) -> &mut cardvm::sim::CpuCard {
        match &mut self.card {
            SimCard::Cpu(c) => c,
            _ => unreachable!("a CPU card"),
        }
    }
}

impl CardTransport for Card {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.sent.push(command.to_vec());
        self.card.transmit(command, response)
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        self.card.power_on()
    }
    fn uid(&self) -> Option<&[u8]> {
        self.card.uid()
    }
    fn air_time_us(&self) -> Option<u64> {
        self.card.air_time_us()
    }
}

fn int(r: &Receipt, name: &str) -> u64 {
    match r.field(name) {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn bytes(r: &Receipt, name: &str) -> String {
    match r.field(name) {
        Some(FieldValue::Bytes(b)) => hex(b),
        other => panic!("{name}: {other:?}"),
    }
}

/// The sealed query on each CPU city's card returns what the card holds (compared with
/// the card's own state, not with the script's idea of it), in a production receipt
/// that verifies, names no data script, and is a query receipt; it is journaled.
#[test]
fn sealed_query_reads_the_true_card_on_each_cpu_city() {
    for dir in ["scripts/city0731-des3", "scripts/city0755-sm4"] {
        let w = World::new();
        let sealed = w.seal(&city_query(dir), 1);
        let mut card = Card::city(dir);
        let before = card.state();
        let done = w
            .reader(Policy::SealedOnly)
            .query(&sealed, &NONCE, &mut card, &mut NoTrace, &mut rng())
            .unwrap();
        let r = &done.receipt;
        assert_eq!(done.report.outcome, Outcome::Committed, "{dir}");
        assert_eq!(r.mode, Mode::Production);
        assert_eq!(r.data, None);
        assert!(r.is_query());
        r.verify_production(w.reader.public_key()).unwrap();
        assert!(matches!(done.journal, JournalStatus::Appended(1)));
        let profile = match card.card.to_profile() {
            CardProfile::Cpu(p) => p,
            _ => unreachable!(),
        };
        assert_eq!(hex(&r.card_id), profile.card_number);
        assert_eq!(bytes(r, "card_id"), profile.card_number);
        assert_eq!(bytes(r, "issuer_id"), profile.public_info.issuer);
        assert_eq!(
            int(r, "card_type"),
            u64::from(profile.public_info.card_type)
        );
        assert_eq!(bytes(r, "valid_from"), profile.public_info.valid_from);
        assert_eq!(bytes(r, "valid_until"), profile.public_info.valid_to);
        assert_eq!(int(r, "balance"), 12_345);
        assert_eq!(int(r, "online_atc"), 5);
        assert_eq!(int(r, "offline_atc"), 9);
        assert_eq!(bytes(r, "now"), NOW_BCD);
        assert_eq!(bytes(r, "nonce"), hex(&NONCE));
        let names: Vec<&str> = r.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "card_id",
                "issuer_id",
                "card_type",
                "valid_from",
                "valid_until",
                "balance",
                "online_atc",
                "offline_atc",
                "now",
                "nonce"
            ]
        );
        assert_eq!(card.state(), before, "{dir}: the query changed the card");
    }
}

/// The M1 query names the card by its UID and echoes `now` and `nonce`; nothing else.
#[test]
fn sealed_query_names_the_m1_card_by_its_uid() {
    let dir = "scripts/city0571-m1";
    let w = World::new();
    let sealed = w.seal(&city_query(dir), 1);
    let mut card = Card::city(dir);
    let before = card.state();
    let done = w
        .reader(Policy::SealedOnly)
        .query(&sealed, &[], &mut card, &mut NoTrace, &mut rng())
        .unwrap();
    let r = &done.receipt;
    assert_eq!(done.report.outcome, Outcome::Committed);
    assert!(r.is_query());
    r.verify_production(w.reader.public_key()).unwrap();
    assert_eq!(r.card_id, card.card.card_id());
    assert_eq!(bytes(r, "card_id"), "A1B2C3D4");
    assert_eq!(bytes(r, "now"), NOW_BCD);
    assert_eq!(bytes(r, "nonce"), "");
    assert_eq!(r.fields.len(), 3);
    assert_eq!(card.state(), before);
}

/// The query leaves the card as it was: a second query reads the same balance and
/// counters, and a load right after it runs as on an untouched card (the INITIALIZEs
/// left nothing pending) and moves the online ATC by exactly one.
#[test]
fn query_does_not_change_the_card() {
    let dir = "scripts/city0731-des3";
    let w = World::new();
    let sealed = w.seal(&city_query(dir), 1);
    let mut reader = w.reader(Policy::SealedOnly);
    let mut card = Card::city(dir);
    let before = card.state();
    let first = reader
        .query(&sealed, &NONCE, &mut card, &mut NoTrace, &mut rng())
        .unwrap();
    let second = reader
        .query(&sealed, &NONCE, &mut card, &mut NoTrace, &mut rng())
        .unwrap();
    assert_eq!(card.state(), before);
    for name in ["balance", "online_atc", "offline_atc"] {
        assert_eq!(
            int(&first.receipt, name),
            int(&second.receipt, name),
            "{name}"
        );
    }
    // No CREDIT can follow the query's INITIALIZE FOR LOAD: the card answers 6985.
    let mut resp = [0u8; 64];
    let n = card
        .transmit(
            &[
                0x80, 0x52, 0x00, 0x00, 0x0B, 0x20, 0x27, 0x01, 0x15, 0x08, 0, 0, 1, 2, 3, 4, 0x04,
            ],
            &mut resp,
        )
        .unwrap();
    assert_eq!(&resp[..n], [0x69, 0x85]);
    // A real load afterwards: the counters the query reported are the ones it uses.
    let load = assemble_file(format!("{dir}/load.casm").as_ref(), &AsmOptions::default())
        .unwrap()
        .script
        .encode();
    let data =
        cardvm::asm::compile_data(&std::fs::read_to_string(format!("{dir}/load.toml")).unwrap())
            .unwrap()
            .encode();
    let mut dev = w.reader(Policy::AllowPlain);
    let done = dev
        .transact(&load, &data, &mut card, &mut NoTrace, &mut rng())
        .unwrap();
    assert_eq!(done.report.outcome, Outcome::Committed);
    assert_eq!(int(&done.receipt, "atc"), int(&first.receipt, "online_atc"));
    assert_eq!(
        int(&done.receipt, "balance_before"),
        int(&first.receipt, "balance")
    );
    assert_eq!(card.cpu().purse().online_atc, 6);
}

/// A query script that declares a key is refused before the card is touched, sealed or
/// not, in either policy.
#[test]
fn query_with_a_key_input_is_refused() {
    let w = World::new();
    let evil = edited_query(|t| {
        t.replacen(
            ".input   nonce    bytes",
            ".input   nonce    bytes\n.input   dlk      key(des3, load)",
            1,
        )
    });
    for (policy, script) in [
        (Policy::SealedOnly, w.seal(&evil, 1)),
        (Policy::AllowPlain, evil.clone()),
    ] {
        let mut card = Card::city("scripts/city0731-des3");
        let e = w
            .reader(policy)
            .query(&script, &NONCE, &mut card, &mut NoTrace, &mut rng())
            .unwrap_err();
        assert!(
            matches!(&e, ReaderError::Query(QueryRefusal::KeyInput { name }) if name == "dlk"),
            "{e}"
        );
        assert!(card.sent.is_empty(), "an APDU reached the card");
    }
}

/// A query script with a commit point is refused before the card is touched.
#[test]
fn query_with_a_commit_point_is_refused() {
    let w = World::new();
    let evil = edited_query(|t| {
        t.replacen(
            "    send   SELECT_PURSE, 0x01\n",
            "    send   SELECT_PURSE, 0x01\n    commit_point\n",
            1,
        )
    });
    let mut card = Card::city("scripts/city0731-des3");
    let e = w
        .reader(Policy::SealedOnly)
        .query(
            &w.seal(&evil, 1),
            &NONCE,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(e, ReaderError::Query(QueryRefusal::CommitPoint { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("must not change the card"), "{e}");
    assert!(card.sent.is_empty());
}

/// A query that asks for an input the reader does not give (an amount, a terminal id:
/// an issuer's transaction data) is refused too; so is an over-long nonce.
#[test]
fn query_with_other_inputs_or_a_long_nonce_is_refused() {
    let w = World::new();
    let evil = edited_query(|t| {
        t.replacen(
            ".input   nonce    bytes",
            ".input   nonce    bytes\n.input   amount   u32",
            1,
        )
    });
    let mut card = Card::city("scripts/city0731-des3");
    let e = w
        .reader(Policy::SealedOnly)
        .query(
            &w.seal(&evil, 1),
            &NONCE,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, ReaderError::Query(QueryRefusal::OtherInput { name }) if name == "amount"),
        "{e}"
    );
    let sealed = w.seal(&city_query("scripts/city0731-des3"), 2);
    let e = w
        .reader(Policy::SealedOnly)
        .query(
            &sealed,
            &[0; MAX_QUERY_NONCE + 1],
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Query(QueryRefusal::NonceTooLong { len: 33 })
        ),
        "{e}"
    );
    assert!(card.sent.is_empty());
}

/// A production reader refuses a plain query; in development mode it runs, and its
/// receipt says development (signed) — relabelling it production, which would make it a
/// query receipt, breaks the signature.
#[test]
fn plain_query_is_refused_by_a_sealed_only_reader() {
    let w = World::new();
    let plain = city_query("scripts/city0731-des3");
    let mut card = Card::city("scripts/city0731-des3");
    let e = w
        .reader(Policy::SealedOnly)
        .query(&plain, &NONCE, &mut card, &mut NoTrace, &mut rng())
        .unwrap_err();
    assert!(
        matches!(e, ReaderError::PlainRefused { which: "command" }),
        "{e}"
    );
    assert!(card.sent.is_empty());
    let done = w
        .reader(Policy::AllowPlain)
        .query(&plain, &NONCE, &mut card, &mut NoTrace, &mut rng())
        .unwrap();
    let r = done.receipt;
    assert_eq!(r.mode, Mode::Development);
    assert!(!r.is_query());
    assert_eq!(
        r.verify_production(w.reader.public_key()),
        Err(ReceiptError::Development)
    );
    let mut forged = r.clone();
    forged.mode = Mode::Production;
    assert!(forged.is_query());
    assert_eq!(
        forged.verify_production(w.reader.public_key()),
        Err(ReceiptError::BadSignature)
    );
    // Nor does a query receipt pass for a transaction: giving it a data identity (a
    // bundle's seq) breaks the signature as well.
    let sealed = w.seal(&plain, 1);
    let q = w
        .reader(Policy::SealedOnly)
        .query(&sealed, &NONCE, &mut card, &mut NoTrace, &mut rng())
        .unwrap()
        .receipt;
    let mut forged = q.clone();
    forged.data = Some(cardvm::receipt::DataIdentity {
        issuer_key_id: w.issuer.public_key().key_id(),
        seq: 7,
    });
    assert_eq!(
        forged.verify_production(w.reader.public_key()),
        Err(ReceiptError::BadSignature)
    );
    // The query receipt round-trips through its canonical JSON and bytes as a query.
    let back = Receipt::from_json(&q.to_json()).unwrap();
    assert_eq!(back, q);
    assert!(
        Receipt::from_bytes(&q.to_bytes().unwrap())
            .unwrap()
            .is_query()
    );
}

/// Even a sealed query script (no key, no commit point) cannot change the card: the
/// reader sends only read-only commands while a query runs. A CREDIT FOR LOAD after the
/// query's INITIALIZE, a VERIFY that would spend a PIN try, an UPDATE of the CAPP
/// record: each fails the run, and the card never sees it.
#[test]
fn query_cannot_send_a_state_changing_command() {
    let w = World::new();
    let attacks = [
        (
            "credit",
            "[80 52 00 00 0B 20 27 01 15 08 00 00 01 02 03 04 04]",
        ),
        ("verify", "[00 20 00 00 03 99 99 99]"),
        ("update", "[80 DC 01 BC 04 00 00 00 00]"),
    ];
    for (seq, (what, apdu)) in attacks.into_iter().enumerate() {
        let evil = edited_query(|t| {
            t.replacen(
                "; drop the pending INITIALIZE: the card is as it was\n",
                &format!("    ldc    cmd, {apdu}\n    apdu   resp, cmd\n"),
                1,
            )
        });
        let mut card = Card::city("scripts/city0731-des3");
        let before = card.state();
        let done = w
            .reader(Policy::SealedOnly)
            .query(
                &w.seal(&evil, seq as u64 + 1),
                &NONCE,
                &mut card,
                &mut NoTrace,
                &mut rng(),
            )
            .unwrap();
        assert!(
            matches!(done.report.outcome, Outcome::Failed(_)),
            "{what}: {:?}",
            done.report.outcome
        );
        assert!(
            !card
                .sent
                .iter()
                .any(|c| c[1] == 0x52 || c[1] == 0x20 || c[1] == 0xDC),
            "{what} reached the card"
        );
        assert_eq!(card.state(), before, "{what} changed the card");
        // The failed query is still signed and journaled.
        done.receipt
            .verify_production(w.reader.public_key())
            .unwrap();
        assert!(matches!(done.journal, JournalStatus::Appended(1)));
    }
}

/// Tearing at every APDU of the query: the outcome is `failed` (a query has no commit
/// point, so never `unknown`), the receipt is signed and journaled, and the card is
/// as it was.
#[test]
fn tearing_during_a_query_fails_and_changes_nothing() {
    let w = World::new();
    let sealed = w.seal(&city_query("scripts/city0731-des3"), 1);
    for n in 1..=6 {
        for fault in [Fault::TearBefore(n), Fault::TearAfter(n)] {
            let mut card = Card::city("scripts/city0731-des3");
            let before = card.state();
            card.cpu().faults_mut().push(fault);
            let done = w
                .reader(Policy::SealedOnly)
                .query(&sealed, &NONCE, &mut card, &mut NoTrace, &mut rng())
                .unwrap();
            match &done.report.outcome {
                Outcome::Failed(f) => assert_eq!(f.code(), 0xFF02, "{fault:?}: {f}"),
                other => panic!("{fault:?}: {other:?}"),
            }
            assert!(matches!(
                done.receipt.outcome,
                cardvm::receipt::Outcome::Failed { code: 0xFF02, .. }
            ));
            done.receipt
                .verify_production(w.reader.public_key())
                .unwrap();
            assert!(matches!(done.journal, JournalStatus::Appended(1)));
            card.power_on().unwrap();
            assert_eq!(card.state(), before, "{fault:?} changed the card");
        }
    }
}

/// A query must be sealed *as a query*: the issuer's command script for a transaction
/// (here the balance enquiry, which would pass every other check) does not run as a
/// query, and a sealed query does not run as a transaction's command script.
#[test]
fn query_and_command_envelopes_do_not_stand_in_for_each_other() {
    let dir = "scripts/city0731-des3";
    let w = World::new();
    let balance = assemble_file(
        format!("{dir}/balance.casm").as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script
    .encode();
    let mut card = Card::city(dir);
    let e = w
        .reader(Policy::SealedOnly)
        .query(
            &w.seal_as(ScriptKind::Command, &balance, 1),
            &NONCE,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                error: OpenError::WrongKind {
                    expected: "query",
                    found: "command"
                },
                ..
            }
        ),
        "{e}"
    );
    let e = w
        .reader(Policy::AllowPlain)
        .transact(
            &w.seal(&city_query(dir), 1),
            &cardvm::script::DataScript::default().encode(),
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                error: OpenError::WrongKind {
                    expected: "command",
                    found: "query"
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(card.sent.is_empty());
}

/// A replay store shared by the readers of one test (a reader restarting on its
/// durable store).
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<MemoryReplayStore>>);

impl ReplayStore for SharedStore {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        self.0.lock().unwrap().last(key)
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        self.0.lock().unwrap().record(key, entry)
    }
    fn latest_issued(&self) -> Result<u64, StoreError> {
        self.0.lock().unwrap().latest_issued()
    }
}

/// The online flow on one reader over restarts: the query the card company sealed once
/// (seq 1) keeps opening after the reader accepted a transaction's command script with
/// a later sequence number (its own stream); an older query is still a replay.
#[test]
fn query_keeps_opening_beside_fresh_command_scripts() {
    let dir = "scripts/city0731-des3";
    let w = World::new();
    let store = SharedStore::default();
    let query = w.seal(&city_query(dir), 2);
    let balance = assemble_file(
        format!("{dir}/balance.casm").as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script
    .encode();
    let mut card = Card::city(dir);
    for command_seq in [10, 11] {
        // A fresh reader each time: nothing cached, only the durable store.
        let done = w
            .reader_on(Policy::SealedOnly, Box::new(store.clone()))
            .query(&query, &NONCE, &mut card, &mut NoTrace, &mut rng())
            .unwrap();
        assert_eq!(done.report.outcome, Outcome::Committed);
        w.reader_on(Policy::AllowPlain, Box::new(store.clone()))
            .prepare(
                &w.seal_as(ScriptKind::Command, &balance, command_seq),
                &cardvm::script::DataScript::default().encode(),
            )
            .unwrap();
    }
    let e = w
        .reader_on(Policy::SealedOnly, Box::new(store.clone()))
        .query(
            &w.seal(&city_query(dir), 1),
            &NONCE,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                error: OpenError::Replayed { seq: 1, last: 2 },
                ..
            }
        ),
        "{e}"
    );
}
