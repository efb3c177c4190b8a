//! The context's transaction pipeline: a [`cardvm_core::reader::Reader`] and what it
//! is built from.
//!
//! The C ABI holds no security policy of its own. Opening sealed scripts, the
//! sealed-only rule, the command ↔ data binding, replay, expiry, signing and
//! journaling are all the reader's. This module only keeps what the embedder
//! configured (keys, replay store, journal, development mode, reader id) so that the
//! reader can be rebuilt when one of them changes, and maps [`ReaderError`] to
//! `CARDVM_E_*` codes.
//!
//! The replay store and the journal are shared between the successive readers of one
//! context ([`SharedStore`], [`SharedJournal`]): rebuilding the reader keeps what the
//! store has accepted (an in-memory store included) and the journal's open handle
//! (and with it the journal's writers' lock).

use crate::registry::lock;
use crate::{
    CARDVM_E_INTERNAL, CARDVM_E_INVALID_ARG, CARDVM_E_JOURNAL, CARDVM_E_OPEN, CARDVM_E_POLICY,
    CARDVM_E_SCRIPT, CARDVM_E_STATE, CARDVM_E_STORE, Error, Result,
};
use cardvm_core::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use cardvm_core::envelope::{OpenError, ReplayEntry, ReplayKey, ReplayStore, StoreError};
use cardvm_core::reader::{
    BoxedStore, Clock, JournalFailure, Policy, QueryRefusal, Reader, ReaderConfig, ReaderError,
    ReceiptJournal, SystemClock,
};
use cardvm_core::vm::Limits;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A replay store shared by the successive readers of one context.
#[derive(Clone)]
pub(crate) struct SharedStore(Arc<Mutex<Box<dyn ReplayStore + Send>>>);

impl SharedStore {
    pub(crate) fn new(store: impl ReplayStore + Send + 'static) -> Self {
        SharedStore(Arc::new(Mutex::new(Box::new(store))))
    }
}

impl ReplayStore for SharedStore {
    fn last(&self, key: &ReplayKey) -> core::result::Result<Option<ReplayEntry>, StoreError> {
        lock(&self.0).last(key)
    }
    fn record(
        &mut self,
        key: &ReplayKey,
        entry: ReplayEntry,
    ) -> core::result::Result<(), StoreError> {
        lock(&self.0).record(key, entry)
    }
    fn latest_issued(&self) -> core::result::Result<u64, StoreError> {
        lock(&self.0).latest_issued()
    }
}

struct JournalSlot {
    journal: Mutex<Box<dyn ReceiptJournal + Send>>,
    /// The journal file, directory resolved (`None`: not a file).
    path: Option<PathBuf>,
}

/// A receipt journal shared by the successive readers of one context.
#[derive(Clone)]
pub(crate) struct SharedJournal(Arc<JournalSlot>);

/// `path` with its directory resolved, so two spellings of one file compare equal.
pub(crate) fn canonical(path: &Path) -> Result<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p);
    }
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            CARDVM_E_JOURNAL,
            format!("journal {}: not a file path", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| {
        Error::new(
            CARDVM_E_JOURNAL,
            format!("journal {}: {}: {e}", path.display(), dir.display()),
        )
    })?;
    Ok(dir.join(name))
}

impl SharedJournal {
    /// Opens the journal file at `path` (canonical, see [`canonical`]) for writing,
    /// creating it, now — before any card is touched. The journal takes its writers'
    /// lock: a file another context or process writes to is refused.
    pub(crate) fn open_file(path: PathBuf) -> Result<Self> {
        let journal = cardvm_core::journal::Journal::open(&path)
            .map_err(|e| Error::new(CARDVM_E_JOURNAL, format!("journal: {e}")))?;
        Ok(SharedJournal(Arc::new(JournalSlot {
            journal: Mutex::new(Box::new(journal)),
            path: Some(path),
        })))
    }

    /// The journal's file, if it is one.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// A journal that is not a file (tests).
    #[cfg(test)]
    pub(crate) fn from_journal(journal: impl ReceiptJournal + Send + 'static) -> Self {
        SharedJournal(Arc::new(JournalSlot {
            journal: Mutex::new(Box::new(journal)),
            path: None,
        }))
    }
}

impl ReceiptJournal for SharedJournal {
    fn append(&mut self, receipt: &[u8]) -> core::result::Result<u64, JournalFailure> {
        lock(&self.0.journal).append(receipt)
    }
    fn for_each(&self, f: &mut dyn FnMut(&[u8])) -> core::result::Result<(), JournalFailure> {
        lock(&self.0.journal).for_each(f)
    }
}

/// The reader's keys and its replay store.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) reader: Sm2PrivateKey,
    pub(crate) issuer: Sm2PublicKey,
    pub(crate) store: SharedStore,
}

/// What a context's reader is built from: everything the embedder configured.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    /// `None`: an authoring reader (plain scripts, unsigned development receipts).
    pub(crate) keys: Option<Keys>,
    /// Set by the embedder; otherwise the reader key's id, or `local`.
    pub(crate) reader_id: Option<String>,
    /// [`Policy::AllowPlain`], the explicit development mode.
    pub(crate) allow_plain: bool,
    pub(crate) journal: Option<SharedJournal>,
    /// A fixed clock instead of the system clock (tests).
    #[cfg(test)]
    pub(crate) clock: Option<u64>,
}

impl Settings {
    /// An authoring reader's settings.
    pub(crate) fn new(limits: Limits) -> Self {
        Settings {
            limits,
            keys: None,
            reader_id: None,
            allow_plain: false,
            journal: None,
            #[cfg(test)]
            clock: None,
        }
    }

    fn clock(&self) -> Box<dyn Clock + Send> {
        #[cfg(test)]
        if let Some(t) = self.clock {
            return Box::new(cardvm_core::reader::FixedClock(t));
        }
        Box::new(SystemClock)
    }

    /// Builds the reader (which reconciles the replay store with the journal).
    pub(crate) fn build(&self) -> Result<Pipeline> {
        let reader_id = self.reader_id.clone().unwrap_or_else(|| {
            cardvm_core::reader::default_reader_id(
                self.keys.as_ref().map(|k| k.reader.public_key()),
            )
        });
        let config = ReaderConfig {
            reader_id,
            reader_key: self.keys.as_ref().map(|k| k.reader.clone()),
            issuers: self.keys.iter().map(|k| k.issuer.clone()).collect(),
            policy: if self.allow_plain {
                Policy::AllowPlain
            } else {
                Policy::SealedOnly
            },
            limits: self.limits,
        };
        let store = self.keys.as_ref().map(|k| k.store.clone());
        Pipeline::new(config, store, self.journal.clone(), self.clock())
    }
}

/// A [`Reader`] built only from parts that may move between threads.
pub(crate) struct Pipeline {
    pub(crate) reader: Reader,
}

// `Reader` is `Send` (its boxed store, journal and clock are), so a `Pipeline` may move
// between the threads that call into a context.

impl Pipeline {
    fn new(
        config: ReaderConfig,
        store: Option<SharedStore>,
        journal: Option<SharedJournal>,
        clock: Box<dyn Clock + Send>,
    ) -> Result<Self> {
        let store = store.map(|s| Box::new(s) as BoxedStore);
        let journal = journal.map(|j| Box::new(j) as Box<dyn ReceiptJournal + Send>);
        let reader = Reader::new(config, store, journal, clock).map_err(|e| reader_error(&e))?;
        Ok(Pipeline { reader })
    }
}

/// The `CARDVM_E_*` code and one-line message of a reader error (with the C call that
/// fixes it, where the reader's message names a CLI flag or none).
pub(crate) fn reader_error(e: &ReaderError) -> Error {
    let (code, hint) = match e {
        ReaderError::PlainRefused { .. } => {
            (CARDVM_E_POLICY, "; from C: cardvm_set_allow_plain(ctx, 1)")
        }
        ReaderError::CannotOpen { .. } => (CARDVM_E_OPEN, " (cardvm_set_keys)"),
        ReaderError::NoJournal => (CARDVM_E_STATE, " (cardvm_set_journal)"),
        ReaderError::Open {
            error: OpenError::Store(_),
            ..
        } => (CARDVM_E_STORE, ""),
        ReaderError::Open { .. } => (CARDVM_E_OPEN, ""),
        ReaderError::CityMismatch { .. } | ReaderError::Command(_) | ReaderError::Data(_) => {
            (CARDVM_E_SCRIPT, "")
        }
        ReaderError::Query(QueryRefusal::NonceTooLong { .. }) => (CARDVM_E_INVALID_ARG, ""),
        ReaderError::Query(_) => (CARDVM_E_SCRIPT, ""),
        ReaderError::Store(_) => (CARDVM_E_STORE, ""),
        ReaderError::Journal(_) => (CARDVM_E_JOURNAL, ""),
        _ => (CARDVM_E_INTERNAL, ""),
    };
    Error::new(code, format!("{e}{hint}"))
}
