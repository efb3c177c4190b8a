//! The reader: one type that owns a transaction from sealed scripts to a signed,
//! journaled receipt, and the whole security policy on the way.
//!
//! Every embedding of cardvm — the `cardvm run` command, the C ABI, the examples, the
//! scenario runner, reader firmware — goes through [`Reader`]; no other code assembles
//! open → verify → bind → run → sign → journal, so the policy exists once:
//!
//! 1. **Sealed only** ([`Policy::SealedOnly`], the default once an issuer key is
//!    configured): a plain command *or* data script is refused
//!    ([`ReaderError::PlainRefused`]). [`Policy::AllowPlain`] is the explicit development
//!    mode; its receipts say [`Mode::Development`] in a signed field and never settle.
//!    A reader with no issuer key runs plain scripts only (authoring).
//! 2. **Command ↔ data binding**: a sealed data script opens only for the command script
//!    whose SM3 it names ([`OpenError::WrongCommand`]), in every mode, before the card
//!    is touched and before its sequence number is spent.
//! 3. **Expiry fails closed**: an unset clock, a clock before 2020, or one behind the
//!    issue time of an accepted script refuses sealed scripts
//!    ([`OpenError::ClockUnset`], [`OpenError::ClockBehind`]).
//! 4. **Replay store checked against the journal** when the reader is built: a store
//!    that is missing or older than the receipts in the journal fails closed
//!    ([`StoreError::Missing`], [`StoreError::RolledBack`]); an edited one fails its MAC.
//! 5. **No committed transaction without a receipt**: the journal is part of the reader
//!    (opened and locked by the embedder before the reader is built, so before any card
//!    is touched); sealed scripts need one ([`ReaderError::NoJournal`]). If appending
//!    fails after the run, [`Completed::journal`] says so and still carries the signed
//!    receipt, which the embedder must deliver another way (the CLI prints it and writes
//!    a fallback file).
//! 6. **Receipts say what ran**: the command script's SM3, the data script's identity
//!    (issuer key id, seq), the mode, and the card as the card reports it (the script's
//!    `card_id` output).
//!
//! What the reader needs from the device is small and abstract, so the pipeline is part
//! of the `no_std` core: a [`Clock`], a [`ReplayStore`] (on any
//! [`crate::storage::RecordStorage`]), a [`ReceiptJournal`], and randomness passed to
//! each call. The `std` feature provides the system clock, the file replay store and the
//! file journal.

#[cfg(feature = "std")]
mod std_impls;
#[cfg(test)]
mod tests;

#[cfg(feature = "std")]
pub use std_impls::SystemClock;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use crate::envelope::{
    Expect, OpenError, Opener, ReplayEntry, ReplayKey, ReplayStore, ScriptKind, StoreError,
};
use crate::receipt::{DataIdentity, Mode, Receipt};
use crate::script::{CommandScript, DataScript};
use crate::transport::{ApduLayer, CardTransport};
use crate::verify::{Binding, VerifiedProgram};
use crate::vm::{Limits, RunReport, Tracer, Vm};

/// The time, as the device knows it.
pub trait Clock {
    /// Unix seconds; 0 when the clock is not set.
    fn now(&self) -> u64;
}

/// A clock that always reads the same time (tests, replays, firmware that sets it).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now(&self) -> u64 {
        self.0
    }
}

/// Why a journal operation failed (the journal's own error, as one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalFailure(pub String);

/// Where the reader keeps its signed receipts until the card company has them.
pub trait ReceiptJournal {
    /// Appends one receipt's canonical bytes durably; returns its journal sequence number.
    fn append(&mut self, receipt: &[u8]) -> Result<u64, JournalFailure>;
    /// Calls `f` with every stored receipt, oldest first (replay-store reconciliation).
    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure>;
}

/// A list of receipts in memory, with none of the journal's chain or crash guarantees
/// (tests; `Journal<MemoryStorage>` is the journal proper without a filesystem).
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    /// The stored receipts, oldest first.
    pub entries: Vec<Vec<u8>>,
}

impl ReceiptJournal for MemoryJournal {
    fn append(&mut self, receipt: &[u8]) -> Result<u64, JournalFailure> {
        self.entries.push(receipt.to_vec());
        Ok(self.entries.len() as u64)
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure> {
        self.entries.iter().for_each(|e| f(e));
        Ok(())
    }
}

/// The crate's journal on any storage (files in `std`, flash pages in firmware) is a
/// receipt journal. Lost-entry records left by a repair are not receipts and are skipped.
impl<S: crate::journal::Storage> ReceiptJournal for crate::journal::Journal<S> {
    fn append(&mut self, receipt: &[u8]) -> Result<u64, JournalFailure> {
        crate::journal::Journal::append(self, receipt)
            .map_err(|e| JournalFailure(alloc::format!("{e}")))
    }

    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure> {
        for entry in self.entries() {
            let entry = entry.map_err(|e| JournalFailure(alloc::format!("{e}")))?;
            if entry.lost().is_none() {
                f(&entry.payload);
            }
        }
        Ok(())
    }
}

impl<T: ReceiptJournal + ?Sized> ReceiptJournal for Box<T> {
    fn append(&mut self, receipt: &[u8]) -> Result<u64, JournalFailure> {
        (**self).append(receipt)
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> Result<(), JournalFailure> {
        (**self).for_each(f)
    }
}

/// Which scripts a reader runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Only scripts sealed by a trusted issuer for this reader (production).
    #[default]
    SealedOnly,
    /// Plain scripts too: the explicit development mode (`cardvm run --allow-plain`).
    /// Sealed data scripts still run only with the command script they are bound to.
    AllowPlain,
}

/// Why a transaction did not get to the card.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// A plain script on a reader that runs sealed scripts only.
    #[error(
        "plain {which} script refused: this reader runs only scripts sealed by its issuer (development mode: --allow-plain)"
    )]
    PlainRefused {
        /// `command` or `data`.
        which: &'static str,
    },
    /// A sealed script on a reader with no issuer key or reader key.
    #[error("sealed {which} script, but this reader has no issuer key and reader key to open it")]
    CannotOpen {
        /// `command` or `data`.
        which: &'static str,
    },
    /// Sealed scripts need a journal (no committed transaction without a receipt).
    #[error("sealed scripts need a receipt journal: configure one before running")]
    NoJournal,
    /// Opening a sealed script failed.
    #[error("open sealed {which} script: {error}")]
    Open {
        /// `command` or `data`.
        which: &'static str,
        /// Why.
        error: OpenError,
    },
    /// The command and data scripts name different cities.
    #[error("data script is for city {data}, command script for city {command}")]
    CityMismatch {
        /// The command script's city.
        command: u32,
        /// The data script's city.
        data: u32,
    },
    /// The command script does not parse or verify.
    #[error("command script: {0}")]
    Command(String),
    /// The data script does not parse or does not fit the command script.
    #[error("data script: {0}")]
    Data(String),
    /// The replay store failed or failed its integrity checks.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The journal could not be read (reconciliation).
    #[error("journal: {0}")]
    Journal(JournalFailure),
}

/// What became of the receipt after the run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a receipt that did not reach the journal must be delivered another way"]
pub enum JournalStatus {
    /// Appended as this journal entry.
    Appended(u64),
    /// The reader has no journal (plain scripts only).
    NotConfigured,
    /// Appending failed: the receipt exists only in [`Completed::receipt`].
    Failed(JournalFailure),
}

/// A finished transaction: the card was reached (whatever the outcome).
#[derive(Debug)]
pub struct Completed {
    /// The receipt (signed when the reader has a key).
    pub receipt: Receipt,
    /// What the VM reported.
    pub report: RunReport,
    /// Whether the receipt reached the journal.
    pub journal: JournalStatus,
    /// Why the receipt is unsigned although the reader has a key (the random generator
    /// failed): the card was reached, so the receipt is still journaled and returned.
    pub sign_error: Option<crate::receipt::ReceiptError>,
}

/// Both scripts opened, verified and paired; ready to run on a card.
pub struct Prepared {
    program: alloc::sync::Arc<VerifiedProgram>,
    data: DataScript,
    command_sm3: [u8; 32],
    data_identity: Option<DataIdentity>,
    mode: Mode,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("header", self.program.header())
            .field("command_sm3", &hex(&self.command_sm3))
            .field("data", &self.data_identity)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The verified command script (for tracers that show its source).
    pub fn program(&self) -> &VerifiedProgram {
        &self.program
    }

    /// The receipt's mode for this pairing.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// SM3 of the command script.
    pub fn command_sm3(&self) -> &[u8; 32] {
        &self.command_sm3
    }

    /// The sealed data script's identity (`None` for a plain one).
    pub fn data_identity(&self) -> Option<DataIdentity> {
        self.data_identity
    }
}

/// Everything a [`Reader`] is built from.
pub struct ReaderConfig {
    /// This reader's id (sealed scripts must name it; receipts carry it).
    pub reader_id: String,
    /// The reader's SM2 key: opens sealed scripts, signs receipts. `None`: authoring
    /// (plain scripts, unsigned receipts).
    pub reader_key: Option<Sm2PrivateKey>,
    /// Issuer keys whose sealed scripts this reader trusts.
    pub issuers: Vec<Sm2PublicKey>,
    /// Sealed only, or the development mode.
    pub policy: Policy,
    /// VM limits.
    pub limits: Limits,
}

impl fmt::Debug for ReaderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderConfig")
            .field("reader_id", &self.reader_id)
            .field("reader_key", &self.reader_key.as_ref().map(|_| "REDACTED"))
            .field("issuers", &self.issuers.len())
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A replay store behind a box, so a [`Reader`] is one type whatever the device (and
/// `Send`, so a service can keep readers' pipelines across threads).
pub type BoxedStore = Box<dyn ReplayStore + Send>;

/// The transaction pipeline (see the module docs).
pub struct Reader {
    reader_id: String,
    reader_key: Option<Sm2PrivateKey>,
    opener: Option<Opener<BoxedStore>>,
    journal: Option<Box<dyn ReceiptJournal + Send>>,
    clock: Box<dyn Clock + Send>,
    policy: Policy,
    vm: Vm,
    binding: Binding,
    /// The last verified command script, by SM3 (a reader runs one city's script for
    /// thousands of transactions).
    verified: Option<([u8; 32], alloc::sync::Arc<VerifiedProgram>)>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("reader_id", &self.reader_id)
            .field("signs", &self.reader_key.is_some())
            .field("opens_sealed", &self.opener.is_some())
            .field("journal", &self.journal.is_some())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| alloc::format!("{x:02X}")).collect()
}

/// Whether `bytes` are a sealed envelope (rather than a plain script).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(&crate::envelope::format::MAGIC)
}

/// The reader id when none is configured: the reader key's id in hex, else `local`
/// (an authoring reader without keys).
pub fn default_reader_id(key: Option<&Sm2PublicKey>) -> String {
    key.map_or_else(|| String::from("local"), |k| hex(&k.key_id()))
}

impl Reader {
    /// Builds a reader and reconciles its replay store with its journal (see the module
    /// docs): `store` and `journal` must be the device's durable ones, already opened
    /// (a file journal is locked by its open).
    pub fn new(
        config: ReaderConfig,
        store: Option<BoxedStore>,
        journal: Option<Box<dyn ReceiptJournal + Send>>,
        clock: Box<dyn Clock + Send>,
    ) -> Result<Self, ReaderError> {
        let ReaderConfig {
            reader_id,
            reader_key,
            issuers,
            policy,
            limits,
        } = config;
        let opener = match (&reader_key, issuers.split_first(), store) {
            (Some(key), Some((first, rest)), Some(store)) => {
                let mut o = Opener::new(Some(&reader_id), key.clone(), first.clone(), store);
                for i in rest {
                    o = o.with_issuer(i.clone());
                }
                Some(o)
            }
            _ => None,
        };
        // Without an issuer there is nothing sealed to run: plain scripts are the only
        // ones, so the policy is moot.
        let policy = if opener.is_none() {
            Policy::AllowPlain
        } else {
            policy
        };
        let mut reader = Reader {
            reader_id,
            reader_key,
            opener,
            journal,
            clock,
            policy,
            vm: Vm::new(limits),
            binding: Binding::default(),
            verified: None,
        };
        reader.reconcile()?;
        Ok(reader)
    }

    /// This reader's id.
    pub fn reader_id(&self) -> &str {
        &self.reader_id
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The newest data-script seq per stream that the journal holds receipts for.
    fn journal_streams(
        journal: &dyn ReceiptJournal,
        reader_id: &str,
    ) -> Result<BTreeMap<ReplayKey, u64>, ReaderError> {
        let mut newest: BTreeMap<ReplayKey, u64> = BTreeMap::new();
        journal
            .for_each(&mut |bytes| {
                // Entries that are not receipts of this reader's sealed transactions do
                // not bear on the replay store.
                let Ok(r) = Receipt::from_bytes(bytes) else {
                    return;
                };
                let Some(d) = r.data else { return };
                if r.reader_id != reader_id {
                    return;
                }
                let k = ReplayKey::new(r.city, ScriptKind::Data, &r.reader_id);
                let e = newest.entry(k).or_insert(0);
                *e = (*e).max(d.seq);
            })
            .map_err(ReaderError::Journal)?;
        Ok(newest)
    }

    /// Fails closed when the replay store is missing or older than the journal.
    fn reconcile(&mut self) -> Result<(), ReaderError> {
        let (Some(opener), Some(journal)) = (&self.opener, &self.journal) else {
            return Ok(());
        };
        let newest = Self::journal_streams(journal.as_ref(), &self.reader_id)?;
        let store = opener.store();
        for (key, journal_seq) in newest {
            match store.last(&key)? {
                None => {
                    return Err(StoreError::Missing {
                        location: String::from("replay store"),
                        stream: alloc::format!("{key}"),
                        journal_seq,
                    }
                    .into());
                }
                Some(e) if e.seq < journal_seq => {
                    return Err(StoreError::RolledBack {
                        location: String::from("replay store"),
                        stream: alloc::format!("{key}"),
                        store_seq: e.seq,
                        journal_seq,
                    }
                    .into());
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The replay entries the journal proves were accepted: what `replay-rebuild` writes
    /// into a fresh store (the documented recovery after [`StoreError::Missing`],
    /// [`StoreError::RolledBack`] or [`StoreError::Tampered`]).
    pub fn replay_entries_from_journal(
        journal: &dyn ReceiptJournal,
        reader_id: &str,
    ) -> Result<Vec<(ReplayKey, ReplayEntry)>, ReaderError> {
        Ok(Self::journal_streams(journal, reader_id)?
            .into_iter()
            .map(|(k, seq)| {
                (
                    k,
                    ReplayEntry {
                        seq,
                        digest: [0; 32],
                        issued: 0,
                    },
                )
            })
            .collect())
    }

    /// Opens (when sealed), parses and verifies the two scripts and pairs them, applying
    /// the policy. Nothing here touches a card. Whether the data fits the program's
    /// inputs is checked once, by [`run`](Self::run), before its first APDU.
    pub fn prepare(&mut self, command: &[u8], data: &[u8]) -> Result<Prepared, ReaderError> {
        if (is_sealed(command) || is_sealed(data)) && self.journal.is_none() {
            return Err(ReaderError::NoJournal);
        }
        let now = self.clock.now();
        // The command script first: the data script must be bound to its digest.
        let (command_bytes, command_sealed): (Zeroizing<Vec<u8>>, bool) = if is_sealed(command) {
            let opener = self
                .opener
                .as_mut()
                .ok_or(ReaderError::CannotOpen { which: "command" })?;
            let opened = opener
                .open(command, now, Expect::Command)
                .map_err(|error| ReaderError::Open {
                    which: "command",
                    error,
                })?;
            (opened.into_payload(), true)
        } else {
            if self.policy == Policy::SealedOnly {
                return Err(ReaderError::PlainRefused { which: "command" });
            }
            (Zeroizing::new(command.to_vec()), false)
        };
        let command_sm3 = crate::crypto::sm3(&command_bytes);
        let (data_bytes, data_identity, data_city) = if is_sealed(data) {
            let opener = self
                .opener
                .as_mut()
                .ok_or(ReaderError::CannotOpen { which: "data" })?;
            // The binding is checked whatever the policy: a sealed data script (with
            // the issuer's keys) never runs under another program.
            let opened = opener
                .open(data, now, Expect::DataFor(&command_sm3))
                .map_err(|error| ReaderError::Open {
                    which: "data",
                    error,
                })?;
            let identity = DataIdentity {
                issuer_key_id: opened.issuer_key_id,
                seq: opened.header.seq,
            };
            let city = opened.header.city;
            (opened.into_payload(), Some(identity), Some(city))
        } else {
            if self.policy == Policy::SealedOnly {
                return Err(ReaderError::PlainRefused { which: "data" });
            }
            (Zeroizing::new(data.to_vec()), None, None)
        };
        let program = match &self.verified {
            Some((digest, p)) if *digest == command_sm3 => p.clone(),
            _ => {
                let script = CommandScript::parse(&command_bytes)
                    .map_err(|e| ReaderError::Command(alloc::format!("{e}")))?;
                let p = alloc::sync::Arc::new(
                    VerifiedProgram::from_script(script)
                        .map_err(|e| ReaderError::Command(alloc::format!("verify: {e}")))?,
                );
                self.verified = Some((command_sm3, p.clone()));
                p
            }
        };
        if let Some(city) = data_city
            && city != program.header().city
        {
            return Err(ReaderError::CityMismatch {
                command: program.header().city,
                data: city,
            });
        }
        let data =
            DataScript::parse(&data_bytes).map_err(|e| ReaderError::Data(alloc::format!("{e}")))?;
        let mode = if command_sealed && data_identity.is_some() {
            Mode::Production
        } else {
            Mode::Development
        };
        Ok(Prepared {
            program,
            data,
            command_sm3,
            data_identity,
            mode,
        })
    }

    /// Runs a prepared transaction on `card`, signs the receipt and journals it.
    ///
    /// Returns `Ok` whenever the card was reached, whatever the outcome; the receipt
    /// is in [`Completed::receipt`] even when the journal failed
    /// ([`JournalStatus::Failed`]).
    pub fn run<T: CardTransport, Tr: Tracer + ?Sized, R: CryptoRng>(
        &mut self,
        prepared: &Prepared,
        card: &mut T,
        tracer: &mut Tr,
        rng: &mut R,
    ) -> Result<Completed, ReaderError> {
        let bound = prepared
            .program
            .bind_into(&prepared.data, &mut self.binding)
            .map_err(|e| ReaderError::Data(alloc::format!("{e}")))?;
        let air_before = card.air_time_us();
        let report = {
            let mut layer = ApduLayer::new(&mut *card);
            self.vm.run(bound, &mut layer, tracer)
        };
        let air_time = match (air_before, card.air_time_us()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        // The card as the card reports it: the script's `card_id` output.
        let card_id: Vec<u8> = match report.output("card_id") {
            Some(crate::vm::OutputRef::Bytes(b)) => b.to_vec(),
            _ => Vec::new(),
        };
        let mut receipt = Receipt::from_run(
            prepared.program.header(),
            &self.reader_id,
            &card_id,
            &report,
            air_time,
        );
        receipt.mode = prepared.mode;
        receipt.command_sm3 = prepared.command_sm3;
        receipt.data = prepared.data_identity;
        // A failed signature must not lose the receipt of a card that was reached.
        let sign_error = match &self.reader_key {
            Some(key) => receipt.sign(key, rng).err(),
            None => None,
        };
        let journal = match &mut self.journal {
            None => JournalStatus::NotConfigured,
            Some(j) => match receipt.to_bytes() {
                Ok(bytes) => match j.append(&bytes) {
                    Ok(seq) => JournalStatus::Appended(seq),
                    Err(e) => JournalStatus::Failed(e),
                },
                Err(e) => JournalStatus::Failed(JournalFailure(alloc::format!("{e}"))),
            },
        };
        Ok(Completed {
            receipt,
            report,
            journal,
            sign_error,
        })
    }

    /// [`prepare`](Self::prepare) then [`run`](Self::run): one transaction from sealed
    /// scripts to a signed, journaled receipt.
    pub fn transact<T: CardTransport, Tr: Tracer + ?Sized, R: CryptoRng>(
        &mut self,
        command: &[u8],
        data: &[u8],
        card: &mut T,
        tracer: &mut Tr,
        rng: &mut R,
    ) -> Result<Completed, ReaderError> {
        let prepared = self.prepare(command, data)?;
        self.run(&prepared, card, tracer, rng)
    }
}
