//! The reader pipeline, tried as an attacker would (DESIGN §4; `docs/security.md` maps
//! each invariant to these tests). Every test here fails if its attack works again.
//!
//! The world: the card company's issuer key, one reader, city 0731's load script and a
//! data script for a 100.00 CNY load, sealed for that reader; a simulated 3DES card with
//! 5.00 CNY on it.

use cardvm::asm::{AsmOptions, MapLoader, assemble, compile_data};
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::{
    EnvelopeHeader, MemoryReplayStore, OpenError, ProtectedReplayStore, ReplayStore, ScriptKind,
    StoreError, seal,
};
use cardvm::reader::{
    BoxedStore, Clock, FixedClock, JournalFailure, JournalStatus, MemoryJournal, Policy, Reader,
    ReaderConfig, ReaderError, ReceiptJournal,
};
use cardvm::receipt::{Mode, Receipt, ReceiptError};
use cardvm::sim::SimCard;
use cardvm::storage::MemoryRecord;
use cardvm::transport::{CardTransport, TransportError};
use cardvm::vm::{Limits, NoTrace, Outcome};
use std::sync::{Arc, Mutex};

const NOW: u64 = 1_800_000_000;
const READER: &str = "kiosk-0731-0001";
const CITY: &str = "scripts/city0731-des3";

fn rng() -> impl rand_core::CryptoRng {
    cardvm::crypto::rng::os_rng()
}

/// The city's sources, with `ep_load.casm` optionally edited by the attacker.
fn load_script(edit: impl Fn(String) -> String) -> Vec<u8> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let mut loader = MapLoader::new();
    loader.insert(
        "common/ep_load.casm",
        edit(read("scripts/common/ep_load.casm")),
    );
    loader.insert("common/purse.casm", read("scripts/common/purse.casm"));
    assemble(
        &read(&format!("{CITY}/load.casm")),
        "city/load.casm",
        &AsmOptions::default(),
        &mut loader,
    )
    .unwrap()
    .script
    .encode()
}

/// One line added after the amount is read: credit 9000.00 CNY instead.
fn evil(text: String) -> String {
    let edited = text.replacen(
        "    ldin   amt, amount\n",
        "    ldin   amt, amount\n    ldi    amt, 900000\n",
        1,
    );
    assert_ne!(edited, text, "the attack's edit applies");
    edited
}

struct World {
    issuer: Sm2PrivateKey,
    reader: Sm2PrivateKey,
    command: Vec<u8>,
    data: Vec<u8>,
    sealed_command: Vec<u8>,
    sealed_data: Vec<u8>,
}

impl World {
    fn new() -> Self {
        let mut rng = rng();
        let issuer = Sm2PrivateKey::generate(&mut rng);
        let reader = Sm2PrivateKey::generate(&mut rng);
        let command = load_script(|t| t);
        let data = compile_data(&std::fs::read_to_string(format!("{CITY}/load.toml")).unwrap())
            .unwrap()
            .encode();
        let mut w = World {
            issuer,
            reader,
            sealed_command: Vec::new(),
            sealed_data: Vec::new(),
            command,
            data,
        };
        w.sealed_command = w.seal(
            ScriptKind::Command,
            1,
            &w.command.clone(),
            &w.command.clone(),
        );
        w.sealed_data = w.seal(ScriptKind::Data, 2, &w.data.clone(), &w.command.clone());
        w
    }

    /// Seals `payload` for the reader, bound to `command`.
    fn seal(&self, kind: ScriptKind, seq: u64, payload: &[u8], command: &[u8]) -> Vec<u8> {
        let header = EnvelopeHeader {
            kind,
            city: 731,
            script_id: 2,
            script_version: 1,
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
            payload,
            &mut rng(),
        )
        .unwrap()
    }

    fn config(&self, policy: Policy) -> ReaderConfig {
        ReaderConfig {
            reader_id: READER.into(),
            reader_key: Some(self.reader.clone()),
            issuers: vec![self.issuer.public_key().clone()],
            policy,
            limits: Limits::default(),
        }
    }

    /// A production reader over the given store and journal.
    fn reader_with(
        &self,
        policy: Policy,
        store: BoxedStore,
        journal: Box<dyn ReceiptJournal + Send>,
        clock: u64,
    ) -> Result<Reader, ReaderError> {
        Reader::new(
            self.config(policy),
            Some(store),
            Some(journal),
            Box::new(FixedClock(clock)),
        )
    }

    fn reader(&self, policy: Policy) -> Reader {
        self.reader_with(
            policy,
            Box::new(MemoryReplayStore::new()),
            Box::new(MemoryJournal::default()),
            NOW,
        )
        .unwrap()
    }
}

/// The city's simulated card (balance 500), counting the APDUs that reach it.
struct CountingCard {
    card: SimCard,
    sent: usize,
}

impl CountingCard {
    fn new() -> Self {
        CountingCard {
            card: SimCard::load(format!("{CITY}/card.toml").as_ref()).unwrap(),
            sent: 0,
        }
    }
    fn balance(&self) -> u32 {
        match &self.card {
            SimCard::Cpu(c) => c.balance(),
            _ => unreachable!("the city's card is a CPU card"),
        }
    }
}

impl CardTransport for CountingCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.sent += 1;
        self.card.transmit(command, response)
    }
}

fn untouched(card: &CountingCard) {
    assert_eq!(card.sent, 0, "an APDU reached the card");
    assert_eq!(card.balance(), 500);
}

/// The attack of the review: the sealed data script (amount 10000, the issuer's keys) run
/// under an unsealed copy of the load script that sets the amount to 900000. Refused in
/// production; refused in development mode too (the binding); the card is never touched,
/// and the data script's sequence number is not spent.
#[test]
fn sealed_data_never_runs_under_an_attackers_command_script() {
    let w = World::new();
    let evil_command = load_script(evil);
    assert_ne!(evil_command, w.command);
    let mut card = CountingCard::new();

    let mut reader = w.reader(Policy::SealedOnly);
    let e = reader
        .transact(
            &evil_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(e, ReaderError::PlainRefused { which: "command" }),
        "{e}"
    );
    untouched(&card);

    let mut dev = w.reader(Policy::AllowPlain);
    let e = dev
        .transact(
            &evil_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                which: "data",
                error: OpenError::WrongCommand { .. }
            }
        ),
        "{e}"
    );
    untouched(&card);

    // The genuine pairing still runs on that reader and loads exactly 100.00 CNY.
    let done = dev
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap();
    assert_eq!(done.report.outcome, Outcome::Committed);
    assert_eq!(card.balance(), 500 + 10_000);
}

/// A sealed data script paired with another command script the issuer sealed (say, an
/// older version or another city's) is refused as well.
#[test]
fn sealed_data_never_runs_under_another_sealed_command_script() {
    let w = World::new();
    let other = load_script(|t| t.replacen("    halt\n", "    nop\n    halt\n", 1));
    assert_ne!(other, w.command);
    let sealed_other = w.seal(ScriptKind::Command, 3, &other, &other);
    let mut card = CountingCard::new();
    let e = w
        .reader(Policy::SealedOnly)
        .transact(
            &sealed_other,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                error: OpenError::WrongCommand { .. },
                ..
            }
        ),
        "{e}"
    );
    untouched(&card);
}

/// Plain scripts need the explicit development mode, and what they produce never passes
/// the card company's verification.
#[test]
fn plain_scripts_only_in_development_mode_and_never_settle() {
    let w = World::new();
    let mut card = CountingCard::new();
    for (cmd, data, which) in [
        (&w.command, &w.data, "command"),
        (&w.sealed_command, &w.data, "data"),
    ] {
        let e = w
            .reader(Policy::SealedOnly)
            .transact(cmd, data, &mut card, &mut NoTrace, &mut rng())
            .unwrap_err();
        assert!(
            matches!(e, ReaderError::PlainRefused { which: w } if w == which),
            "{e}"
        );
    }
    untouched(&card);
    let done = w
        .reader(Policy::AllowPlain)
        .transact(&w.command, &w.data, &mut card, &mut NoTrace, &mut rng())
        .unwrap();
    assert_eq!(done.report.outcome, Outcome::Committed);
    assert_eq!(done.receipt.mode, Mode::Development);
    done.receipt.verify(w.reader.public_key()).unwrap();
    assert_eq!(
        done.receipt.verify_production(w.reader.public_key()),
        Err(ReceiptError::Development)
    );
    // A receipt edited to claim production no longer verifies.
    let mut forged = done.receipt.clone();
    forged.mode = Mode::Production;
    forged.data = Some(cardvm::receipt::DataIdentity {
        issuer_key_id: w.issuer.public_key().key_id(),
        seq: 99,
    });
    assert_eq!(
        forged.verify_production(w.reader.public_key()),
        Err(ReceiptError::BadSignature)
    );
}

/// A production receipt says exactly what ran and on which card.
#[test]
fn production_receipt_names_program_transaction_and_card() {
    let w = World::new();
    let mut card = CountingCard::new();
    let done = w
        .reader(Policy::SealedOnly)
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap();
    let r = &done.receipt;
    assert_eq!(done.report.outcome, Outcome::Committed);
    assert_eq!(r.mode, Mode::Production);
    assert_eq!(r.command_sm3, cardvm::crypto::sm3(&w.command));
    let d = r.data.expect("data identity");
    assert_eq!(
        (d.issuer_key_id, d.seq),
        (w.issuer.public_key().key_id(), 2)
    );
    assert_eq!(r.card_id, [0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85]);
    r.verify_production(w.reader.public_key()).unwrap();
    assert!(matches!(done.journal, JournalStatus::Appended(1)));
    // The canonical JSON round-trips to the signed bytes.
    let back = Receipt::from_json(&r.to_json()).unwrap();
    assert_eq!(back.to_bytes().unwrap(), r.to_bytes().unwrap());
}

/// A journal that keeps its receipts where the test can still see them after the reader
/// that wrote them is gone (a reader restart).
#[derive(Clone, Default)]
struct SharedJournal(Arc<Mutex<MemoryJournal>>);

impl ReceiptJournal for SharedJournal {
    fn append(&mut self, receipt: &[u8]) -> Result<u64, JournalFailure> {
        self.0.lock().unwrap().append(receipt)
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure> {
        self.0.lock().unwrap().for_each(f)
    }
}

/// Deleting the replay store, or rolling it back to an earlier copy, would let the same
/// sealed data script commit again: the reader refuses to start against its journal.
/// Editing it fails its MAC. The documented recovery rebuilds it from the journal, after
/// which the replay is still refused.
#[test]
fn replay_store_deleted_rolled_back_or_edited_fails_closed() {
    let w = World::new();
    let journal = SharedJournal::default();
    let record = Arc::new(Mutex::new(MemoryRecord::default()));
    // A store on shared storage, so a "restart" can reopen what was written.
    struct Shared(Arc<Mutex<MemoryRecord>>);
    impl cardvm::storage::RecordStorage for Shared {
        fn load(&mut self) -> Result<Option<Vec<u8>>, cardvm::storage::StorageError> {
            self.0.lock().unwrap().load()
        }
        fn store(&mut self, b: &[u8]) -> Result<(), cardvm::storage::StorageError> {
            self.0.lock().unwrap().store(b)
        }
        fn location(&self) -> String {
            String::from("(test flash)")
        }
    }
    let open_store = |r: &Arc<Mutex<MemoryRecord>>| -> Result<BoxedStore, StoreError> {
        Ok(Box::new(ProtectedReplayStore::open(
            Shared(r.clone()),
            &w.reader,
        )?))
    };

    // Transaction 1 (data seq 2) commits; keep a copy of the store from before it.
    let before = record.lock().unwrap().clone();
    let mut reader = w
        .reader_with(
            Policy::SealedOnly,
            open_store(&record).unwrap(),
            Box::new(journal.clone()),
            NOW,
        )
        .unwrap();
    let mut card = CountingCard::new();
    let done = reader
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap();
    assert_eq!(done.report.outcome, Outcome::Committed);
    drop(reader);

    // Deleted: a fresh, empty store.
    let deleted = Arc::new(Mutex::new(MemoryRecord::default()));
    let e = w
        .reader_with(
            Policy::SealedOnly,
            open_store(&deleted).unwrap(),
            Box::new(journal.clone()),
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Store(StoreError::Missing { journal_seq: 2, .. })
        ),
        "{e}"
    );

    // Rolled back: the store as it was after the command script was accepted (seq 1 of
    // the command stream) but before the data script — simulate with the copy taken
    // before the transaction plus the command stream only.
    let rolled = Arc::new(Mutex::new(before));
    {
        let mut s = ProtectedReplayStore::open(Shared(rolled.clone()), &w.reader).unwrap();
        s.record(
            &cardvm::envelope::ReplayKey::new(731, ScriptKind::Data, READER),
            cardvm::envelope::ReplayEntry {
                seq: 1,
                digest: [0; 32],
                issued: NOW - 120,
            },
        )
        .unwrap();
    }
    let e = w
        .reader_with(
            Policy::SealedOnly,
            open_store(&rolled).unwrap(),
            Box::new(journal.clone()),
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Store(StoreError::RolledBack {
                store_seq: 1,
                journal_seq: 2,
                ..
            })
        ),
        "{e}"
    );

    // Edited: one byte of the real store changed.
    let edited = Arc::new(Mutex::new(record.lock().unwrap().clone()));
    if let Some(b) = edited.lock().unwrap().bytes.as_mut() {
        let i = b.len() / 2;
        b[i] ^= 0x01;
    }
    assert!(matches!(
        open_store(&edited).err(),
        Some(StoreError::Tampered { .. })
    ));

    // Recovery: rebuild the deleted store from the journal. The replay is still refused.
    {
        let mut s = ProtectedReplayStore::open(Shared(deleted.clone()), &w.reader).unwrap();
        s.rebuild(Reader::replay_entries_from_journal(&journal, READER).unwrap())
            .unwrap();
    }
    let mut reader = w
        .reader_with(
            Policy::SealedOnly,
            open_store(&deleted).unwrap(),
            Box::new(journal.clone()),
            NOW,
        )
        .unwrap();
    let mut card = CountingCard::new();
    let e = reader
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                which: "data",
                error: OpenError::Replayed { seq: 2, last: 2 }
            }
        ),
        "{e}"
    );
    untouched(&card);
}

/// Expiry fails closed: a clock at 0 (unset, or before 1970 as the OS reports it) or set
/// back behind an accepted script's issue time refuses sealed scripts before the card.
#[test]
fn bad_clock_refuses_sealed_scripts() {
    let w = World::new();
    let mut card = CountingCard::new();
    for now in [0, 86_400] {
        let mut reader = w
            .reader_with(
                Policy::SealedOnly,
                Box::new(MemoryReplayStore::new()),
                Box::new(MemoryJournal::default()),
                now,
            )
            .unwrap();
        let e = reader
            .transact(
                &w.sealed_command,
                &w.sealed_data,
                &mut card,
                &mut NoTrace,
                &mut rng(),
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                ReaderError::Open {
                    error: OpenError::ClockUnset { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
    untouched(&card);
}

/// A clock that can be set back between transactions.
struct SettableClock(Arc<Mutex<u64>>);

impl Clock for SettableClock {
    fn now(&self) -> u64 {
        *self.0.lock().unwrap()
    }
}

#[test]
fn clock_set_back_after_a_transaction_refuses_the_next() {
    let w = World::new();
    let time = Arc::new(Mutex::new(NOW));
    let mut reader = Reader::new(
        w.config(Policy::SealedOnly),
        Some(Box::new(MemoryReplayStore::new())),
        Some(Box::new(MemoryJournal::default())),
        Box::new(SettableClock(time.clone())),
    )
    .unwrap();
    let mut card = CountingCard::new();
    reader
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap();
    // The attacker sets the clock a day back so that an expired script opens.
    *time.lock().unwrap() = NOW - 86_400;
    let next = w.seal(ScriptKind::Data, 3, &w.data, &w.command);
    let e = reader
        .transact(
            &w.sealed_command,
            &next,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReaderError::Open {
                error: OpenError::ClockBehind { .. },
                ..
            }
        ),
        "{e}"
    );
}

/// Sealed scripts never run without a journal (the receipt must have somewhere to go).
#[test]
fn sealed_scripts_need_a_journal() {
    let w = World::new();
    let mut reader = Reader::new(
        w.config(Policy::SealedOnly),
        Some(Box::new(MemoryReplayStore::new())),
        None,
        Box::new(FixedClock(NOW)),
    )
    .unwrap();
    let mut card = CountingCard::new();
    let e = reader
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap_err();
    assert!(matches!(e, ReaderError::NoJournal), "{e}");
    untouched(&card);
}

/// A journal that accepts nothing (disk full, flash worn out).
struct BrokenJournal;

impl ReceiptJournal for BrokenJournal {
    fn append(&mut self, _: &[u8]) -> Result<u64, JournalFailure> {
        Err(JournalFailure(String::from(
            "write: no space left on device",
        )))
    }
    fn for_each(&self, _: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure> {
        Ok(())
    }
}

/// The journal fails after the card committed: the signed receipt is still returned,
/// marked as not journaled, for the embedder to deliver another way.
#[test]
fn journal_failure_after_commit_still_delivers_the_signed_receipt() {
    let w = World::new();
    let mut reader = w
        .reader_with(
            Policy::SealedOnly,
            Box::new(MemoryReplayStore::new()),
            Box::new(BrokenJournal),
            NOW,
        )
        .unwrap();
    let mut card = CountingCard::new();
    let done = reader
        .transact(
            &w.sealed_command,
            &w.sealed_data,
            &mut card,
            &mut NoTrace,
            &mut rng(),
        )
        .unwrap();
    assert_eq!(done.report.outcome, Outcome::Committed);
    assert_eq!(card.balance(), 10_500);
    assert!(
        matches!(&done.journal, JournalStatus::Failed(e) if e.0.contains("no space")),
        "{:?}",
        done.journal
    );
    done.receipt
        .verify_production(w.reader.public_key())
        .unwrap();
}

/// The card id comes from the card through the script, whatever the transport: a
/// recorded exchange replayed gives the same card id as the live card.
#[test]
fn card_id_comes_from_the_card_over_any_transport() {
    let w = World::new();
    /// Records the exchange in the `--trace` text format.
    struct Recorder(CountingCard, String);
    impl CardTransport for Recorder {
        fn transmit(&mut self, c: &[u8], r: &mut [u8]) -> Result<usize, TransportError> {
            let n = self.0.transmit(c, r)?;
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X} ")).collect::<String>();
            self.1 += &format!(">> {}\n<< {}\n", hex(c), hex(&r[..n]));
            Ok(n)
        }
    }
    let mut live = Recorder(CountingCard::new(), String::new());
    let a = w
        .reader(Policy::AllowPlain)
        .transact(&w.command, &w.data, &mut live, &mut NoTrace, &mut rng())
        .unwrap();
    let mut replay = cardvm::transport::replay::ReplayCard::parse(&live.1).unwrap();
    let b = w
        .reader(Policy::AllowPlain)
        .transact(&w.command, &w.data, &mut replay, &mut NoTrace, &mut rng())
        .unwrap();
    assert_eq!(b.report.outcome, Outcome::Committed);
    assert_eq!(a.receipt.card_id, b.receipt.card_id);
    assert_eq!(b.receipt.card_id.len(), 8);
}
