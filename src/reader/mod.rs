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
//! 7. **A card query reads, and only reads** ([`Reader::query`], the first step of the
//!    online protocol): the script must be sealed as a query
//!    ([`ScriptKind::Query`]) unless in development mode; the reader builds its data
//!    script (`now`, `nonce`) and nothing else, so it holds no key; a query script
//!    declaring a key or another input, or containing `commit_point`, is refused
//!    before the card is touched ([`QueryRefusal`]); only read-only commands reach the
//!    card ([`QueryGuard`]). Its receipt is [`Mode::Production`] with `data: None` —
//!    a query receipt ([`Receipt::is_query`]): the request the card company answers
//!    with a bundle, which names no bundle itself, so **settlement must refuse it**.
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
use crate::script::{CommandScript, DataScript, Field, FieldValue};
use crate::transport::{ApduLayer, CardTransport, SamSlots, TransportError};
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
    /// The command script cannot run as a card query ([`Reader::query`]).
    #[error("card query refused: {0}")]
    Query(#[from] QueryRefusal),
    /// The command script cannot run as an offline terminal purchase
    /// ([`Reader::prepare_terminal`]).
    #[error("terminal purchase refused: {0}")]
    Terminal(#[from] TerminalRefusal),
    /// The script addresses SAM slots this terminal does not have
    /// ([`Reader::run_with_sams`]); nothing was sent to the card or a SAM.
    #[error(
        "the script needs {needed} SAM slot(s) (a PSAM for purchases) and this terminal has {available}; nothing was sent"
    )]
    NoSam {
        /// SAM slots the script needs.
        needed: usize,
        /// SAM slots the terminal has.
        available: usize,
    },
}

/// Why [`Reader::query`] refused a command script or its arguments, before the card was
/// touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryRefusal {
    /// The script declares a key input: a query holds no key.
    #[error("the script declares the key input `{name}`: a query holds no key")]
    KeyInput {
        /// The input's name.
        name: String,
    },
    /// The script declares an input the reader does not supply.
    #[error(
        "the script declares the input `{name}`: a query gets only `now` and `nonce`, from the reader"
    )]
    OtherInput {
        /// The input's name.
        name: String,
    },
    /// The script contains `commit_point`: it means to change the card.
    #[error(
        "the script has a commit point at code offset {offset}: a query must not change the card"
    )]
    CommitPoint {
        /// Code offset of the `commit_point` instruction.
        offset: u32,
    },
    /// The nonce is longer than [`MAX_QUERY_NONCE`].
    #[error("nonce of {len} bytes: at most {MAX_QUERY_NONCE}")]
    NonceTooLong {
        /// Its length.
        len: usize,
    },
    /// The reader's clock does not give a BCD date-time (past year 9999).
    #[error("the reader's clock ({now}) is not a date a card can carry")]
    Clock {
        /// The clock's reading, unix seconds.
        now: u64,
    },
}

/// Why [`Reader::prepare_terminal`] refused a terminal program or its amount, before the
/// card was touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TerminalRefusal {
    /// The program declares a key input: whatever a terminal holds, its owner holds, so
    /// the purchase keys stay in the PSAM.
    #[error(
        "the script declares the key input `{name}`: a terminal program holds no key (the PSAM does)"
    )]
    KeyInput {
        /// The input's name.
        name: String,
    },
    /// The program declares an input the reader does not supply.
    #[error(
        "the script declares the input `{name}`: a terminal program gets only `amount` and `now`, from the terminal"
    )]
    OtherInput {
        /// The input's name.
        name: String,
    },
    /// The program addresses no SAM: an offline purchase's MAC1 comes from the PSAM.
    #[error("the script sends nothing to a SAM: an offline purchase needs the terminal's PSAM")]
    NoSam,
    /// The amount does not fit the program's `amount` input.
    #[error("amount {amount} fen does not fit the script's `amount` input")]
    Amount {
        /// The amount, fen.
        amount: u64,
    },
    /// The reader's clock does not give a BCD date-time.
    #[error("the reader's clock ({now}) is not a date a card can carry")]
    Clock {
        /// The clock's reading (local), unix seconds.
        now: i64,
    },
}

/// The inputs a terminal program may declare; the reader supplies both.
pub const TERMINAL_INPUTS: [&str; 2] = ["amount", "now"];

/// Longest nonce a card query echoes (the card company's challenge).
pub const MAX_QUERY_NONCE: usize = 32;

/// The inputs a query script may declare; the reader supplies both.
pub const QUERY_INPUTS: [&str; 2] = ["now", "nonce"];

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
    /// A card query: the card sees only read-only commands ([`QueryGuard`]).
    query: bool,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("header", self.program.header())
            .field("command_sm3", &hex(&self.command_sm3))
            .field("data", &self.data_identity)
            .field("mode", &self.mode)
            .field("query", &self.query)
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

    /// The sealed data script's identity (`None` for a plain one, and for a query,
    /// whose data script the reader built).
    pub fn data_identity(&self) -> Option<DataIdentity> {
        self.data_identity
    }

    /// Whether this is a card query ([`Reader::prepare_query`]).
    pub fn is_query(&self) -> bool {
        self.query
    }

    /// The data script's value of input `name` — never a key (`None` for a key input,
    /// as for a missing one). An in-process card company takes the bundle's amount,
    /// terminal and time from here ([`crate::host::HostSim`]).
    pub fn value_input(&self, name: &str) -> Option<&crate::script::FieldValue> {
        self.data
            .fields
            .iter()
            .find(|f| &*f.name == name)
            .map(|f| &f.value)
            .filter(|v| !matches!(v, crate::script::FieldValue::Key(_)))
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
        let (command_bytes, command_sealed) = self.open_command(command, now, Expect::Command)?;
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
        let program = self.verified_program(&command_bytes, command_sm3)?;
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
            query: false,
        })
    }

    /// Opens a command (or query) script when sealed (a plain one only under
    /// [`Policy::AllowPlain`]); returns its bytes and whether it was sealed.
    fn open_command(
        &mut self,
        command: &[u8],
        now: u64,
        expect: Expect<'_>,
    ) -> Result<(Zeroizing<Vec<u8>>, bool), ReaderError> {
        if is_sealed(command) {
            let opener = self
                .opener
                .as_mut()
                .ok_or(ReaderError::CannotOpen { which: "command" })?;
            let opened = opener
                .open(command, now, expect)
                .map_err(|error| ReaderError::Open {
                    which: "command",
                    error,
                })?;
            Ok((opened.into_payload(), true))
        } else {
            if self.policy == Policy::SealedOnly {
                return Err(ReaderError::PlainRefused { which: "command" });
            }
            Ok((Zeroizing::new(command.to_vec()), false))
        }
    }

    /// Parses and verifies a command script's bytes, or takes the last verified program
    /// when the SM3 matches.
    fn verified_program(
        &mut self,
        bytes: &[u8],
        sm3: [u8; 32],
    ) -> Result<alloc::sync::Arc<VerifiedProgram>, ReaderError> {
        if let Some((digest, p)) = &self.verified
            && *digest == sm3
        {
            return Ok(p.clone());
        }
        let script =
            CommandScript::parse(bytes).map_err(|e| ReaderError::Command(alloc::format!("{e}")))?;
        let p = alloc::sync::Arc::new(
            VerifiedProgram::from_script(script)
                .map_err(|e| ReaderError::Command(alloc::format!("verify: {e}")))?,
        );
        self.verified = Some((sm3, p.clone()));
        Ok(p)
    }

    /// Opens (when sealed), parses and verifies a **card query** script and builds its
    /// data script, applying the policy; nothing here touches a card.
    ///
    /// A query is the first step of an online load (DESIGN §7): it reads the card
    /// (number, balance, counters, …) and its signed receipt is the request the card
    /// company answers with a bundle. So:
    ///
    /// * the command script must be sealed **as a query** ([`ScriptKind::Query`]: the
    ///   card company's word that this program is its query, in a replay stream of its
    ///   own; a transaction's command script is refused with
    ///   [`OpenError::WrongKind`], and a sealed query never runs through
    ///   [`prepare`](Self::prepare)), unless the reader is in development mode, where
    ///   a plain one runs ([`ReaderError::PlainRefused`] otherwise);
    /// * there is no issuer data script: the reader builds it with two fields and nothing
    ///   else — `now` (`bcd_datetime`, its clock, UTC) and `nonce` (`bytes`, the
    ///   caller's challenge, 0..=[`MAX_QUERY_NONCE`] bytes);
    /// * the script may declare no key input ([`QueryRefusal::KeyInput`]), no input but
    ///   those two ([`QueryRefusal::OtherInput`]) and no `commit_point`
    ///   ([`QueryRefusal::CommitPoint`]): a query must not be able to change the card;
    ///   and when it runs, the reader lets only read-only commands through to the card
    ///   (see [`query`](Self::query)).
    ///
    /// The receipt of a sealed query is [`Mode::Production`] with `data: None`: see
    /// [`Receipt::is_query`].
    pub fn prepare_query(&mut self, command: &[u8], nonce: &[u8]) -> Result<Prepared, ReaderError> {
        if nonce.len() > MAX_QUERY_NONCE {
            return Err(QueryRefusal::NonceTooLong { len: nonce.len() }.into());
        }
        if is_sealed(command) && self.journal.is_none() {
            return Err(ReaderError::NoJournal);
        }
        let now = self.clock.now();
        let when = crate::envelope::time::bcd_datetime(now).ok_or(QueryRefusal::Clock { now })?;
        let (command_bytes, sealed) = self.open_command(command, now, Expect::Query)?;
        let command_sm3 = crate::crypto::sm3(&command_bytes);
        let program = self.verified_program(&command_bytes, command_sm3)?;
        // Keys first: of everything a query may not declare, a key is the gravest.
        if let Some(d) = program.inputs().iter().find(|d| d.ty.is_key()) {
            let name = String::from(&*d.name);
            return Err(QueryRefusal::KeyInput { name }.into());
        }
        if let Some(d) = program
            .inputs()
            .iter()
            .find(|d| !QUERY_INPUTS.contains(&&*d.name))
        {
            let name = String::from(&*d.name);
            return Err(QueryRefusal::OtherInput { name }.into());
        }
        if let Some(i) = program
            .instructions()
            .iter()
            .position(|i| matches!(i, crate::isa::Instr::CommitPoint {}))
        {
            return Err(QueryRefusal::CommitPoint {
                offset: program.offset_of(i).unwrap_or(0),
            }
            .into());
        }
        let data = DataScript {
            fields: alloc::vec![
                Field {
                    name: String::from("now"),
                    value: FieldValue::BcdDateTime(when),
                },
                Field {
                    name: String::from("nonce"),
                    value: FieldValue::Bytes(nonce.to_vec()),
                },
            ],
        };
        Ok(Prepared {
            program,
            data,
            command_sm3,
            data_identity: None,
            mode: if sealed {
                Mode::Production
            } else {
                Mode::Development
            },
            query: true,
        })
    }

    /// Opens (when sealed), parses and verifies an **offline terminal program** and builds
    /// its data script, applying the policy; nothing here touches a card.
    ///
    /// A terminal with a PSAM sells offline (docs/psam.md "Offline purchases"): the card
    /// company seals its purchase program once ([`ScriptKind::Terminal`], a replay stream
    /// of its own, re-opened for every sale), and the terminal supplies what only it
    /// knows. So:
    ///
    /// * the command script must be sealed **as a terminal program** (a transaction's
    ///   command script or a query is refused with [`OpenError::WrongKind`], and a
    ///   terminal program never runs through [`prepare`](Self::prepare)), unless the
    ///   reader is in development mode;
    /// * the reader builds the data script with two fields and nothing else: `amount`
    ///   (fen, keyed in at the terminal) and `now` (`bcd_datetime`: its clock moved by
    ///   `utc_offset` seconds, the terminal's local time as cards carry it);
    /// * the program may declare no key input ([`TerminalRefusal::KeyInput`]), no input
    ///   but those two ([`TerminalRefusal::OtherInput`]), and must talk to a SAM
    ///   ([`TerminalRefusal::NoSam`]): the PSAM holds the purchase key and computes MAC1.
    ///
    /// The receipt is [`Mode::Terminal`] with `data: None`; the card company settles it
    /// on the card's TAC, once per terminal sequence number.
    pub fn prepare_terminal(
        &mut self,
        command: &[u8],
        amount: u64,
        utc_offset: i32,
    ) -> Result<Prepared, ReaderError> {
        if is_sealed(command) && self.journal.is_none() {
            return Err(ReaderError::NoJournal);
        }
        let now = self.clock.now();
        let local = i64::try_from(now)
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(utc_offset));
        let when = u64::try_from(local)
            .ok()
            .and_then(crate::envelope::time::bcd_datetime)
            .ok_or(TerminalRefusal::Clock { now: local })?;
        let (command_bytes, sealed) = self.open_command(command, now, Expect::Terminal)?;
        let command_sm3 = crate::crypto::sm3(&command_bytes);
        let program = self.verified_program(&command_bytes, command_sm3)?;
        if let Some(d) = program.inputs().iter().find(|d| d.ty.is_key()) {
            let name = String::from(&*d.name);
            return Err(TerminalRefusal::KeyInput { name }.into());
        }
        if let Some(d) = program
            .inputs()
            .iter()
            .find(|d| !TERMINAL_INPUTS.contains(&&*d.name))
        {
            let name = String::from(&*d.name);
            return Err(TerminalRefusal::OtherInput { name }.into());
        }
        if program.sam_slots_needed() == 0 {
            return Err(TerminalRefusal::NoSam.into());
        }
        let amount_value = FieldValue::Int(amount);
        if let Some(d) = program.inputs().iter().find(|d| &*d.name == "amount")
            && !amount_value.fits(&d.ty)
        {
            return Err(TerminalRefusal::Amount { amount }.into());
        }
        let data = DataScript {
            fields: alloc::vec![
                Field {
                    name: String::from("amount"),
                    value: amount_value,
                },
                Field {
                    name: String::from("now"),
                    value: FieldValue::BcdDateTime(when),
                },
            ],
        };
        Ok(Prepared {
            program,
            data,
            command_sm3,
            data_identity: None,
            mode: if sealed {
                Mode::Terminal
            } else {
                Mode::Development
            },
            query: false,
        })
    }

    /// A **card query**: [`prepare_query`](Self::prepare_query) then
    /// [`run`](Self::run) — the city's query script on the tapped card, with the data
    /// script the reader builds (`now`, `nonce`), to a signed, journaled receipt.
    ///
    /// Refusals come before the card is touched (see `prepare_query`). While it runs,
    /// the card sees only read-only commands: SELECT, READ BINARY, READ RECORD, GET
    /// RESPONSE, GET DATA, GET CHALLENGE, GET BALANCE, INITIALIZE (a pending
    /// transaction is volatile and never completed), GET TRANSACTION PROVE, and for M1
    /// cards GET UID, READ BLOCK, READ VALUE and AUTHENTICATE; anything else fails the
    /// run before it reaches the card ([`QueryGuard`]).
    ///
    /// A sealed query's receipt is [`Mode::Production`] with `data: None` — a query
    /// receipt ([`Receipt::is_query`]): it names no bundle, so settlement must refuse
    /// it; the card company reads the card from its fields and acts on it.
    pub fn query<T: CardTransport, Tr: Tracer + ?Sized, R: CryptoRng>(
        &mut self,
        command: &[u8],
        nonce: &[u8],
        card: &mut T,
        tracer: &mut Tr,
        rng: &mut R,
    ) -> Result<Completed, ReaderError> {
        let prepared = self.prepare_query(command, nonce)?;
        self.run(&prepared, card, tracer, rng)
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
        self.run_with_sams(prepared, card, &mut SamSlots::none(), tracer, rng)
    }

    /// [`Reader::run`] on a terminal with SAM slots (a PSAM computes the purchase MAC1
    /// and checks MAC2): `samapdu` reaches `sams`. A script that needs more SAM slots
    /// than `sams` has is refused with [`ReaderError::NoSam`] before the card or a SAM
    /// is touched. A card query runs without SAMs.
    pub fn run_with_sams<T: CardTransport, Tr: Tracer + ?Sized, R: CryptoRng>(
        &mut self,
        prepared: &Prepared,
        card: &mut T,
        sams: &mut SamSlots<'_>,
        tracer: &mut Tr,
        rng: &mut R,
    ) -> Result<Completed, ReaderError> {
        let needed = prepared.program.sam_slots_needed();
        let available = if prepared.query { 0 } else { sams.len() };
        if needed > available {
            return Err(ReaderError::NoSam { needed, available });
        }
        let bound = prepared
            .program
            .bind_into(&prepared.data, &mut self.binding)
            .map_err(|e| ReaderError::Data(alloc::format!("{e}")))?;
        let air_before = card.air_time_us();
        let report = if prepared.query {
            let mut layer = ApduLayer::new(QueryGuard::new(&mut *card));
            self.vm.run(bound, &mut layer, tracer)
        } else {
            let mut layer = ApduLayer::new(&mut *card);
            self.vm.run_with_sams(bound, &mut layer, sams, tracer)
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

/// The transport of a card query: passes read-only commands to the card and refuses
/// everything else before it is sent ([`Reader::query`] lists them), so even a query
/// script that sends a CREDIT, DEBIT, UPDATE, VERIFY or M1 write cannot change the card.
/// It offers no reader key store: a query sends no key.
#[derive(Debug)]
pub struct QueryGuard<T> {
    inner: T,
}

impl<T: CardTransport> QueryGuard<T> {
    /// Guards `inner`.
    pub fn new(inner: T) -> Self {
        QueryGuard { inner }
    }

    /// Whether a command APDU only reads: by class and instruction byte.
    pub fn read_only(command: &[u8]) -> bool {
        let [cla, ins, ..] = command else {
            return false;
        };
        match (*cla, *ins) {
            // ISO 7816-4 (interindustry class, any logical channel): SELECT, READ
            // BINARY, READ RECORD, GET RESPONSE, GET DATA, GET CHALLENGE.
            (c, 0xA4 | 0xB0 | 0xB2 | 0xC0 | 0xCA | 0x84) if c & 0x80 == 0 => true,
            // PBOC / CJ/T 166 purse: GET BALANCE, INITIALIZE, GET TRANSACTION PROVE,
            // GET DATA (reference/epurse.md).
            (0x80, 0x5C | 0x50 | 0x5A | 0xCA) => true,
            // PC/SC Part 3 (M1): GET UID, READ BLOCK, READ VALUE, AUTHENTICATE.
            (0xFF, 0xCA | 0xB0 | 0xB1 | 0x86) => true,
            _ => false,
        }
    }
}

impl<T: CardTransport> CardTransport for QueryGuard<T> {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        if !Self::read_only(command) {
            let head: String = command
                .iter()
                .take(2)
                .map(|b| alloc::format!("{b:02X}"))
                .collect();
            return Err(TransportError::Other(alloc::format!(
                "card query: the reader does not send {head}.. (a query only reads the card)"
            )));
        }
        self.inner.transmit(command, response)
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        self.inner.power_on()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        self.inner.power_off()
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        self.inner.reset()
    }
    fn atr(&self) -> Option<&[u8]> {
        self.inner.atr()
    }
    fn uid(&self) -> Option<&[u8]> {
        self.inner.uid()
    }
    fn air_time_us(&self) -> Option<u64> {
        self.inner.air_time_us()
    }
}
