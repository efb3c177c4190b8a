//! The reader's offline store-and-forward journal of signed receipts.
//!
//! An append-only, crash-safe log. The journal stores **opaque entries** (the canonical bytes
//! of signed receipts); it does not interpret them.
//!
//! The format, the hash chain and every operation (open, scan, append, ack, compact, repair)
//! live in the `no_std` + `alloc` core, over a small [`Storage`] trait the embedder implements
//! (flash pages in a reader's firmware). The core ships [`MemoryStorage`], a model and test
//! double; `std` builds add [`FileStorage`] and the path-based API used by the CLI
//! ([`Journal::open_locked`], [`verify`], [`repair`]).
//!
//! # Files (std)
//!
//! For a journal at `PATH`:
//! - `PATH` — the log: an 84-byte header, then entries;
//! - `PATH.ack` — the acknowledgement record (absent until the first [`Journal::ack`]);
//! - `PATH.lock` — the writers' lock file (see *One writer*); empty, never removed;
//! - `PATH.bad-<seq>` — bytes of a damaged entry kept aside by [`repair`]; never overwritten;
//! - `PATH.new`, `PATH.compact`, `PATH.ack.tmp` — temporaries of atomic writes; removed by a
//!   writer's open if a crash left them behind.
//!
//! # Format (version 1, integers big-endian)
//!
//! ```text
//! header: "CVMJRNL\0" ‖ version u16 ‖ reserved u16 ‖ base seq u64 ‖ genesis (32)
//!         ‖ SM3(the preceding 52 bytes)
//! entry:  "CVJE" ‖ payload length u32 ‖ seq u64 ‖ prev hash (32) ‖ payload
//!         ‖ entry hash = SM3(every preceding byte of this entry)
//! ```
//!
//! The entry hash is both the checksum and the chain value: entry `n`'s prev hash is entry
//! `n-1`'s entry hash (which covers all of `n-1`'s bytes). The first entry in the file has
//! seq = base seq and chains to the header's genesis: all zeros ([`GENESIS`]) for a new
//! journal, the hash of the last dropped entry after [`Journal::compact`]. Payloads are at
//! most [`MAX_PAYLOAD_LEN`] bytes.
//!
//! A **lost-entry record** (tombstone) is an ordinary, chained entry whose payload starts
//! with [`LOST_MARKER`]; [`repair`] writes one in place of a damaged entry (see
//! [`LostEntry`] for its payload). Payloads starting with the marker are refused by
//! [`Journal::append`], so a receipt can never be mistaken for one.
//!
//! # Durability and crashes
//!
//! - [`Journal::append`] writes the entry and syncs (`fdatasync`) before it returns: an
//!   append that returned survives a crash or power loss (given honest storage).
//! - Only the last append can be torn. On open, the bytes after the last valid entry are a
//!   *torn tail* when they are what an interrupted append leaves: a **strict prefix** of the
//!   entry that was being written (its magic, seq and prev hash as far as present agree with
//!   the journal; its length runs past the end), or all zeros (size extended, data never
//!   written). A writer's open truncates a torn tail and syncs, and reports the number of
//!   bytes dropped ([`Journal::torn_tail_bytes`]). A read-only open and [`verify`] only
//!   report it.
//! - A **complete** last entry that does not check (a flipped byte anywhere in it, its length
//!   field included), or any other bytes after the last valid entry, is never dropped and its
//!   seq never reused: every open fails with [`JournalError::CorruptLastEntry`] and nothing is
//!   changed. Recovery is explicit: see *Recovery* below.
//! - A bad entry **followed by** a checksum-valid entry, a sequence break or a broken chain is
//!   tampering (or media corruption): open fails with a typed error; nothing is dropped.
//! - The acknowledgement record is written atomically ([`Storage::write_ack`]; for files:
//!   temp file, fsync, rename, fsync of the directory). It records the acked-up-to seq and that
//!   entry's hash, which open checks against the log.
//! - [`Journal::compact`] writes a new log with only the pending entries (header base seq =
//!   first pending seq, genesis = hash of the last acknowledged entry) and swaps it in
//!   atomically ([`Storage::commit_replace`]; for files: fsync, rename over `PATH`, fsync of
//!   the directory). A crash leaves either the old or the new log, both consistent with the
//!   ack record.
//! - If writing an entry fails the log is cut back to its previous end; if the sync fails
//!   the handle is *poisoned* (every later call fails) and the journal must be reopened, since
//!   after a failed fsync nothing is known about what reached the disk.
//!
//! # Recovery (for operators)
//!
//! When `cardvm journal verify PATH` (or the reader) reports *"the last entry … is complete
//! but damaged … run `cardvm journal repair PATH`"*:
//!
//! 1. Stop the reader (repair takes the writers' lock and fails while it runs).
//! 2. Optionally copy `PATH*` away for investigation.
//! 3. Run `cardvm journal repair PATH`. It
//!    - writes the damaged bytes, byte for byte, to `PATH.bad-<seq>` (fsynced; a name that
//!      already holds other bytes is never overwritten, a numbered name is used instead);
//!    - atomically replaces the log by the same entries followed by a lost-entry record
//!      carrying the damaged entry's seq, chained like any entry, which names the aside file
//!      and the SM3 hash and length of the damaged bytes;
//!    - so the damaged entry's seq is **never reused**: the next append gets the next seq.
//! 4. `cardvm journal verify PATH` then says `ok …, 1 lost entry (seq N, repaired; bytes kept
//!    in PATH.bad-N)`. The lost-entry record is uploaded with the next batch, so the server
//!    learns which seq was lost; send it `PATH.bad-<seq>` if it asks.
//!
//! Repair is idempotent: a crash during repair leaves either the damaged journal (run repair
//! again; it reuses the aside file holding the same bytes) or the repaired one. Damage
//! *before* valid entries ([`JournalError::CorruptEntry`], [`JournalError::SequenceBreak`],
//! [`JournalError::ChainBroken`]) is not repaired automatically: keep the files and escalate.
//!
//! # What the chain detects, and what it does not
//!
//! A flipped byte anywhere in the header, any entry (the last one included), or the ack
//! record is detected (open or [`verify`] fails). Truncating the file inside the last entry
//! looks exactly like a torn append: it is reported, and a writer's open drops it. Truncating
//! exactly at an entry boundary, or rewriting the whole file with recomputed hashes, is
//! **not** detectable from the file alone: the hashes are unkeyed. The receipts' SM2
//! signatures give authenticity, and the server detects rollback through sequence numbers and
//! the chain across uploaded batches (see [`parse_batch`]).
//!
//! # One writer
//!
//! At most one writer ([`Journal::open_locked`], [`Journal::open`], [`Journal::open_existing`],
//! [`repair`]) may exist per `PATH` at a time, across all processes: a writer holds an
//! exclusive, non-blocking OS lock on `PATH.lock` (a separate file, because compaction
//! replaces `PATH` itself). A second writer, in this process or another, gets
//! [`JournalError::Locked`]. The OS releases the lock when the handle is dropped or the
//! process dies. (Open retries for about 100 ms first: a child being forked by another
//! thread holds a copy of the lock until its `exec`; a child process that does not `exec`
//! keeps the lock as long as it lives.) Read-only handles take no lock and may coexist with a writer, but may
//! observe an append in flight: as a torn tail, or (rarely, mid-`write`) as a damaged last
//! entry; retry such a read. With another [`Storage`], serializing writers is the embedder's
//! job.

mod batch;
#[cfg(feature = "std")]
mod file;
mod format;
mod log;
#[cfg(test)]
mod memory_tests;
mod storage;
#[cfg(all(test, feature = "std"))]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;

pub use batch::{BATCH_HEADER_LEN, BATCH_MAGIC, BATCH_VERSION, Batch, ExportLimits, parse_batch};
#[cfg(feature = "std")]
pub use file::{FileJournal, FileStorage, repair, verify};
pub use log::{Entries, Journal};
pub use storage::{MemoryStorage, Storage, StorageError};

/// Journal file format version.
pub const FORMAT_VERSION: u16 = 1;
/// Largest payload one entry can hold (1 MiB).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// The chain value the first entry of a new journal points to.
pub const GENESIS: [u8; 32] = [0; 32];
/// First bytes of a lost-entry record's payload (reserved: [`Journal::append`] refuses
/// payloads that start with them).
pub const LOST_MARKER: [u8; 8] = *b"CVJLOST\0";

/// Anything that can go wrong with a journal. `location` names the storage (a file path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The storage failed (an operating-system call, for files).
    #[error(transparent)]
    Io(#[from] StorageError),
    /// Another writer holds the journal (in this process or another).
    #[error(
        "{location} is in use by another writer (lock on {location}.lock held); stop it or use a read-only command"
    )]
    Locked {
        /// The journal.
        location: String,
    },
    /// The storage is not a journal or its header is damaged.
    #[error("{location}: not a valid journal ({reason})")]
    BadHeader {
        /// The journal.
        location: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The journal was written by an unknown format version.
    #[error("{location}: journal format version {version} is not supported")]
    UnsupportedVersion {
        /// The journal.
        location: String,
        /// The version found.
        version: u16,
    },
    /// [`Journal::create_in`] on storage that already holds a log.
    #[error("{location}: cannot create a journal: the storage already holds {len} bytes")]
    NotEmpty {
        /// The storage.
        location: String,
        /// Bytes it holds.
        len: u64,
    },
    /// A damaged entry with a valid entry after it: tampering or media damage, not a crash.
    #[error(
        "{location}: corrupt entry at byte {offset} (expected seq {expected_seq}): {reason}; a valid entry follows at byte {next_valid}"
    )]
    CorruptEntry {
        /// The journal.
        location: String,
        /// Byte offset of the damaged entry.
        offset: u64,
        /// The sequence number it should have had.
        expected_seq: u64,
        /// What is wrong with it.
        reason: &'static str,
        /// Byte offset of the valid entry found after it.
        next_valid: u64,
    },
    /// The bytes after the last valid entry are not an interrupted append: a complete entry
    /// that does not check, or other data. Nothing was changed; [`repair`] keeps the bytes
    /// aside and records the seq as lost.
    #[error(
        "{location}: the last entry (seq {seq}, byte {offset}) is complete but damaged ({reason}); nothing was changed; run `cardvm journal repair {location}`"
    )]
    CorruptLastEntry {
        /// The journal.
        location: String,
        /// The sequence number the damaged entry holds.
        seq: u64,
        /// Its byte offset.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A damaged tail too large to be kept aside by [`repair`]: not one damaged entry.
    #[error(
        "{location}: {len} bytes of unrecognised data after seq {after}; too large to repair automatically, keep the file and escalate"
    )]
    TailTooLarge {
        /// The journal.
        location: String,
        /// The last valid seq.
        after: u64,
        /// Bytes after it.
        len: u64,
    },
    /// A checksum-valid entry with the wrong sequence number (entries removed, duplicated
    /// or reordered).
    #[error("{location}: sequence break at byte {offset}: expected seq {expected}, found {found}")]
    SequenceBreak {
        /// The journal.
        location: String,
        /// Byte offset of the entry.
        offset: u64,
        /// The sequence number expected there.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// A checksum-valid entry whose prev hash is not the previous entry's hash.
    #[error("{location}: hash chain broken at seq {seq} (byte {offset})")]
    ChainBroken {
        /// The journal.
        location: String,
        /// Sequence number of the entry.
        seq: u64,
        /// Its byte offset.
        offset: u64,
    },
    /// An entry read back after open no longer matches what open verified.
    #[error("{location}: entry seq {seq} changed in storage since the journal was opened")]
    EntryChanged {
        /// The journal.
        location: String,
        /// Its sequence number.
        seq: u64,
    },
    /// A payload over [`MAX_PAYLOAD_LEN`].
    #[error("entry of {len} bytes exceeds the {max}-byte limit")]
    EntryTooLarge {
        /// The payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A payload starting with [`LOST_MARKER`], which only lost-entry records may use.
    #[error("payload starts with the reserved lost-entry marker")]
    ReservedPayload,
    /// The ack record is damaged.
    #[error("{location}: bad acknowledgement record ({reason})")]
    BadAckFile {
        /// The journal.
        location: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The ack record does not agree with the log.
    #[error("{location}: acknowledgement up to seq {acked} does not match the journal ({reason})")]
    AckMismatch {
        /// The journal.
        location: String,
        /// The acked-up-to seq recorded.
        acked: u64,
        /// What disagrees.
        reason: &'static str,
    },
    /// [`Journal::ack`] with a sequence number the journal does not hold.
    #[error(
        "cannot acknowledge up to seq {upto}: the journal holds seqs {first}..{next} (exclusive end)"
    )]
    AckOutOfRange {
        /// The requested seq.
        upto: u64,
        /// The first seq stored.
        first: u64,
        /// The next seq to be assigned.
        next: u64,
    },
    /// No entry with this sequence number is stored.
    #[error("no entry with seq {0} in the journal")]
    NoSuchEntry(u64),
    /// A write on a journal opened read-only.
    #[error("the journal is open read-only")]
    ReadOnly,
    /// An earlier sync failed; reopen the journal.
    #[error("the journal handle is unusable after a failed sync; reopen it")]
    Poisoned,
    /// Sequence numbers are exhausted.
    #[error("journal sequence numbers exhausted")]
    SeqOverflow,
    /// A batch blob does not parse or check.
    #[error("bad batch at byte {offset}: {reason}")]
    BadBatch {
        /// Byte offset in the batch.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number (1, 2, 3, … over the journal's life; never reused).
    pub seq: u64,
    /// The previous entry's hash (or the genesis value).
    pub prev_hash: [u8; 32],
    /// This entry's hash (SM3 over its encoded bytes before the hash).
    pub hash: [u8; 32],
    /// The opaque payload (a signed receipt's canonical bytes), or a lost-entry record.
    pub payload: Vec<u8>,
}

impl Entry {
    /// The lost-entry record this entry carries, if it is one (written by [`repair`] in
    /// place of a damaged entry). Receipts never are.
    pub fn lost(&self) -> Option<LostEntry> {
        LostEntry::decode(&self.payload)
    }
}

/// The payload of a lost-entry record:
/// `LOST_MARKER ‖ lost length u64 ‖ SM3 of the lost bytes (32) ‖ where they were kept (UTF-8)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostEntry {
    /// How many damaged bytes were removed from the log.
    pub lost_len: u64,
    /// SM3 of those bytes (check the aside copy against it).
    pub lost_sm3: [u8; 32],
    /// Where the storage kept them (for files: the `PATH.bad-<seq>` path).
    pub kept_at: String,
}

impl LostEntry {
    /// Encodes the record as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(48 + self.kept_at.len());
        p.extend_from_slice(&LOST_MARKER);
        p.extend_from_slice(&self.lost_len.to_be_bytes());
        p.extend_from_slice(&self.lost_sm3);
        p.extend_from_slice(self.kept_at.as_bytes());
        p
    }

    /// Decodes a payload; `None` if it is not a lost-entry record.
    pub fn decode(payload: &[u8]) -> Option<LostEntry> {
        if payload.len() < 48 || payload[..8] != LOST_MARKER {
            return None;
        }
        let mut lost_sm3 = [0u8; 32];
        lost_sm3.copy_from_slice(&payload[16..48]);
        Some(LostEntry {
            lost_len: format::be_u64(&payload[8..16]),
            lost_sm3,
            kept_at: String::from_utf8_lossy(&payload[48..]).into_owned(),
        })
    }
}

/// Summary of a journal check ([`verify`], [`Journal::report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Sequence number of the first stored entry (the header's base seq).
    pub first_seq: u64,
    /// The next sequence number to be assigned.
    pub next_seq: u64,
    /// Entries stored (acknowledged and pending, lost-entry records included).
    pub entries: usize,
    /// Entries not yet acknowledged.
    pub pending: usize,
    /// Acknowledged up to this seq (`first_seq - 1` when nothing stored is acknowledged).
    pub acked_upto: u64,
    /// Bytes of torn tail after the last valid entry (0 when the file is clean).
    pub torn_tail_bytes: u64,
    /// Stored lost-entry records (entries replaced by [`repair`]); list them with
    /// [`Journal::entries`] and [`Entry::lost`].
    pub lost_entries: usize,
}

/// What [`Journal::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactReport {
    /// Acknowledged entries removed.
    pub dropped_entries: usize,
    /// Bytes the log shrank by.
    pub dropped_bytes: u64,
}

/// What [`Journal::repair_in`] (and [`repair`]) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairReport {
    /// The seq recorded as lost (`None`: there was no damaged last entry).
    pub lost_seq: Option<u64>,
    /// Damaged bytes removed from the log and kept aside.
    pub lost_bytes: u64,
    /// Where they were kept.
    pub kept_at: Option<String>,
    /// Bytes of torn tail truncated (an interrupted append; nothing was lost).
    pub torn_tail_bytes: u64,
}
