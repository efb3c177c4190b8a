//! Where a journal's bytes live: the [`Storage`] trait, and [`MemoryStorage`].
//!
//! A storage holds three things: the **log** (append-only bytes, cut back only by the
//! journal), one small **ack record** replaced atomically, and **aside** copies of damaged
//! bytes kept by repair. Compaction and repair swap in a whole new log atomically through a
//! *replacement* log (`begin_replace`, `replace_append`, `commit_replace`): think two flash
//! regions and a durable pointer flip, or a temp file renamed over the log.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A storage operation failed: the crate's one device-storage error (shared with the
/// replay store's [`RecordStorage`](crate::storage::RecordStorage)).
pub use crate::storage::StorageError;

/// The durable medium under a [`Journal`](super::Journal). Implement it for the reader's
/// flash; `std` provides [`FileStorage`](super::FileStorage), the core [`MemoryStorage`].
///
/// The journal calls these in a fixed discipline: `append` then `sync` for every entry;
/// `truncate` then `sync` to drop a torn tail or a failed write; `commit_replace` after
/// writing a whole new log. A storage need not be safe for two writers: the journal assumes
/// it is the only one (see the module docs, *One writer*).
pub trait Storage {
    /// A short name for messages (a file path, a flash partition label).
    fn location(&self) -> &str;

    /// The log's current length in bytes (0 for a storage that holds no journal yet).
    fn log_len(&self) -> Result<u64, StorageError>;

    /// Reads exactly `buf.len()` bytes of the log starting at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;

    /// Appends `bytes` at the end of the log. Need not be durable until [`Storage::sync`]; may
    /// leave a prefix of `bytes` behind if it fails.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError>;

    /// Makes every append and truncation so far durable. After an error here, the journal
    /// assumes nothing about what reached the medium and refuses further use.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// Cuts the log back to `len` bytes (`len` ≤ the current length).
    fn truncate(&mut self, len: u64) -> Result<(), StorageError>;

    /// The ack record last written by [`Storage::write_ack`], if any.
    fn read_ack(&self) -> Result<Option<Vec<u8>>, StorageError>;

    /// Replaces the ack record **atomically and durably**: after a crash, the old or the
    /// new record is read back whole.
    fn write_ack(&mut self, record: &[u8]) -> Result<(), StorageError>;

    /// Starts an empty replacement log, discarding any unfinished one.
    fn begin_replace(&mut self) -> Result<(), StorageError>;

    /// Appends to the replacement log.
    fn replace_append(&mut self, bytes: &[u8]) -> Result<(), StorageError>;

    /// Makes the replacement log the log, **atomically and durably**: after a crash, the
    /// old or the new log is read back whole. Afterwards reads and appends go to the new log.
    fn commit_replace(&mut self) -> Result<(), StorageError>;

    /// Stores `bytes` (a damaged entry with sequence number `seq`) durably beside the log
    /// and returns where. Never overwrites other bytes kept earlier; storing bytes equal to
    /// a copy already kept for `seq` returns that copy's name (repair must be re-runnable).
    fn keep_aside(&mut self, seq: u64, bytes: &[u8]) -> Result<String, StorageError>;
}

/// A [`Storage`] in memory: the model of a firmware's flash for tests, and a double for
/// the journal's own tests. It can simulate a power cut after a given number of written
/// bytes ([`MemoryStorage::cut_power_after`]); "durable" here means "survives
/// [`MemoryStorage::restore_power`]", i.e. everything written before the cut.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    label: String,
    log: Vec<u8>,
    ack: Option<Vec<u8>>,
    staging: Option<Vec<u8>>,
    aside: Vec<(String, Vec<u8>)>,
    /// Bytes that may still be written before the simulated power cut (`None`: no cut).
    budget: Option<usize>,
    dead: bool,
}

impl MemoryStorage {
    /// An empty storage named `label` (the name in messages).
    pub fn new(label: impl Into<String>) -> Self {
        MemoryStorage {
            label: label.into(),
            ..MemoryStorage::default()
        }
    }

    /// The log's bytes.
    pub fn log(&self) -> &[u8] {
        &self.log
    }

    /// The log's bytes, mutable (to model media damage in tests).
    pub fn log_mut(&mut self) -> &mut Vec<u8> {
        &mut self.log
    }

    /// The ack record, if one was written.
    pub fn ack_record(&self) -> Option<&[u8]> {
        self.ack.as_deref()
    }

    /// The ack record, mutable (to model damage in tests).
    pub fn ack_record_mut(&mut self) -> &mut Option<Vec<u8>> {
        &mut self.ack
    }

    /// Copies kept aside by repair: `(name, bytes)`, oldest first.
    pub fn aside(&self) -> &[(String, Vec<u8>)] {
        &self.aside
    }

    /// Simulates a power cut once `bytes` more bytes have been written (log, replacement
    /// log, ack record): the write that crosses the limit stores only its first bytes up to
    /// it (an ack record, being atomic, stores nothing) and fails, and every later write,
    /// sync, truncation or commit fails until [`MemoryStorage::restore_power`].
    pub fn cut_power_after(&mut self, bytes: usize) {
        self.budget = Some(bytes);
        self.dead = false;
    }

    /// Ends a simulated power cut (the reboot): what was written stays, an unfinished
    /// replacement log is gone.
    pub fn restore_power(&mut self) {
        self.budget = None;
        self.dead = false;
        self.staging = None;
    }

    fn err(&self, op: &'static str, detail: &str) -> StorageError {
        StorageError {
            op,
            location: self.label.clone(),
            detail: detail.into(),
        }
    }

    fn alive(&self, op: &'static str) -> Result<(), StorageError> {
        if self.dead {
            return Err(self.err(op, "power lost (simulated)"));
        }
        Ok(())
    }

    /// How many of `want` bytes may be written now; marks the power as lost when short.
    fn take(&mut self, want: usize) -> usize {
        match self.budget.as_mut() {
            None => want,
            Some(b) if *b >= want => {
                *b -= want;
                want
            }
            Some(b) => {
                let n = *b;
                *b = 0;
                self.dead = true;
                n
            }
        }
    }
}

impl Storage for MemoryStorage {
    fn location(&self) -> &str {
        &self.label
    }

    fn log_len(&self) -> Result<u64, StorageError> {
        Ok(self.log.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let start = usize::try_from(offset).map_err(|_| self.err("read", "offset too large"))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.log.get(start..end))
            .ok_or_else(|| self.err("read", "past the end of the log"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.alive("append to")?;
        let n = self.take(bytes.len());
        self.log.extend_from_slice(&bytes[..n]);
        self.alive("append to")
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.alive("sync")
    }

    fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        self.alive("truncate")?;
        let len = usize::try_from(len).map_err(|_| self.err("truncate", "length too large"))?;
        if len > self.log.len() {
            return Err(self.err("truncate", "length beyond the end of the log"));
        }
        self.log.truncate(len);
        Ok(())
    }

    fn read_ack(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.ack.clone())
    }

    fn write_ack(&mut self, record: &[u8]) -> Result<(), StorageError> {
        self.alive("write ack of")?;
        // Atomic: a cut in the middle leaves the old record.
        if self.take(record.len()) < record.len() {
            return Err(self.err("write ack of", "power lost (simulated)"));
        }
        self.ack = Some(record.to_vec());
        Ok(())
    }

    fn begin_replace(&mut self) -> Result<(), StorageError> {
        self.alive("start replacement of")?;
        self.staging = Some(Vec::new());
        Ok(())
    }

    fn replace_append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.alive("write replacement of")?;
        let n = self.take(bytes.len());
        let Some(s) = self.staging.as_mut() else {
            return Err(self.err("write replacement of", "no replacement started"));
        };
        s.extend_from_slice(&bytes[..n]);
        self.alive("write replacement of")
    }

    fn commit_replace(&mut self) -> Result<(), StorageError> {
        self.alive("commit replacement of")?;
        let new = self
            .staging
            .take()
            .ok_or_else(|| self.err("commit replacement of", "no replacement started"))?;
        self.log = new;
        Ok(())
    }

    fn keep_aside(&mut self, seq: u64, bytes: &[u8]) -> Result<String, StorageError> {
        self.alive("keep aside from")?;
        let base = format!("{}.bad-{seq}", self.label);
        let mut name = base.clone();
        for n in 2u32.. {
            match self.aside.iter().find(|(k, _)| *k == name) {
                Some((_, b)) if b[..] == bytes[..] => return Ok(name),
                Some(_) => name = format!("{base}.{n}"),
                None => break,
            }
        }
        if self.take(bytes.len()) < bytes.len() {
            return Err(self.err("keep aside from", "power lost (simulated)"));
        }
        self.aside.push((name.clone(), bytes.to_vec()));
        Ok(name)
    }
}

/// A journal can borrow its storage (`Journal::open_in(&mut flash)`), so the embedder keeps
/// it when an open or a repair fails.
impl<S: Storage + ?Sized> Storage for &mut S {
    fn location(&self) -> &str {
        (**self).location()
    }
    fn log_len(&self) -> Result<u64, StorageError> {
        (**self).log_len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        (**self).read_at(offset, buf)
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        (**self).append(bytes)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        (**self).sync()
    }
    fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        (**self).truncate(len)
    }
    fn read_ack(&self) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).read_ack()
    }
    fn write_ack(&mut self, record: &[u8]) -> Result<(), StorageError> {
        (**self).write_ack(record)
    }
    fn begin_replace(&mut self) -> Result<(), StorageError> {
        (**self).begin_replace()
    }
    fn replace_append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        (**self).replace_append(bytes)
    }
    fn commit_replace(&mut self) -> Result<(), StorageError> {
        (**self).commit_replace()
    }
    fn keep_aside(&mut self, seq: u64, bytes: &[u8]) -> Result<String, StorageError> {
        (**self).keep_aside(seq, bytes)
    }
}
