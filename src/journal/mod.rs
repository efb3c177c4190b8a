//! The reader's offline store-and-forward journal of signed receipts.
//!
//! An append-only, crash-safe log. The journal stores **opaque entries** (the canonical bytes
//! of signed receipts); it does not interpret them.
//!
//! # Files
//!
//! For a journal at `PATH`:
//! - `PATH` — the log: an 84-byte header, then entries;
//! - `PATH.ack` — the acknowledgement record (absent until the first [`Journal::ack`]);
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
//! # Durability and crashes
//!
//! - [`Journal::append`] writes the entry and `fdatasync`s before it returns: an append that
//!   returned survives a crash or power loss (given honest storage).
//! - Only the last append can be torn. On open, an incomplete last entry (the file ends
//!   inside it), or a last entry whose hash does not match, with **no checksum-valid entry
//!   anywhere after it**, is a *torn tail*: a writer's open truncates it and syncs, and the
//!   number of bytes dropped is reported ([`Journal::torn_tail_bytes`]). A read-only open and
//!   [`verify`] only report it.
//! - A bad entry **followed by** a checksum-valid entry, a sequence break or a broken chain is
//!   tampering (or media corruption): open fails with a typed error; nothing is dropped.
//! - Acknowledgements go to `PATH.ack`, written atomically (temp file, fsync, rename, fsync of
//!   the directory). It records the acked-up-to seq and that entry's hash, which open checks
//!   against the log.
//! - [`Journal::compact`] writes a new log with only the pending entries (header base seq =
//!   first pending seq, genesis = hash of the last acknowledged entry), fsyncs it, renames it
//!   over `PATH` and fsyncs the directory. A crash leaves either the old or the new log, both
//!   consistent with `PATH.ack`.
//! - If writing an entry fails the file is cut back to its previous end; if the sync fails
//!   the handle is *poisoned* (every later call fails) and the journal must be reopened, since
//!   after a failed fsync nothing is known about what reached the disk.
//!
//! # What the chain detects, and what it does not
//!
//! A flipped byte anywhere in the header, any entry, or the ack file is detected (open or
//! [`verify`] fails), except inside the **last** entry, where it is indistinguishable from a
//! torn write: that entry is then dropped as a torn tail and the drop is reported. Truncating
//! the file inside an entry is reported the same way. Truncating exactly at an entry boundary,
//! or rewriting the whole file with recomputed hashes, is **not** detectable from the file
//! alone: the hashes are unkeyed. The receipts' SM2 signatures give authenticity, and the
//! server detects rollback through sequence numbers and the chain across uploaded batches
//! (see [`parse_batch`]).
//!
//! # One writer
//!
//! At most one [`Journal`] opened for writing ([`Journal::open`], [`Journal::open_existing`])
//! may exist per `PATH` at a time, across all processes. The journal does not take a lock
//! (the crate's minimum Rust version predates `File::lock`); the embedding reader firmware
//! must serialize writers. Read-only handles may coexist with a writer but may observe a
//! partially written tail, which they report as torn.

mod batch;
mod format;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use batch::{BATCH_HEADER_LEN, BATCH_MAGIC, BATCH_VERSION, Batch, ExportLimits, parse_batch};
use format::{
    ACK_LEN, AckRecord, ENTRY_HEAD_LEN, ENTRY_MAGIC, ENTRY_OVERHEAD, EntryHead, FileHeader,
    HEADER_LEN, HeaderFault, check_entry, encode_entry,
};

/// Journal file format version.
pub const FORMAT_VERSION: u16 = 1;
/// Largest payload one entry can hold (1 MiB).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// The chain value the first entry of a new journal points to.
pub const GENESIS: [u8; 32] = [0; 32];

/// Anything that can go wrong with a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a journal or its header is damaged.
    #[error("{}: not a valid journal ({reason})", path.display())]
    BadHeader {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The journal was written by an unknown format version.
    #[error("{}: journal format version {version} is not supported", path.display())]
    UnsupportedVersion {
        /// The journal file.
        path: PathBuf,
        /// The version found.
        version: u16,
    },
    /// A damaged entry with a valid entry after it: tampering or media damage, not a crash.
    #[error(
        "{}: corrupt entry at byte {offset} (expected seq {expected_seq}): {reason}; a valid entry follows at byte {next_valid}",
        path.display()
    )]
    CorruptEntry {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the damaged entry.
        offset: u64,
        /// The sequence number it should have had.
        expected_seq: u64,
        /// What is wrong with it.
        reason: &'static str,
        /// Byte offset of the valid entry found after it.
        next_valid: u64,
    },
    /// A checksum-valid entry with the wrong sequence number (entries removed, duplicated
    /// or reordered).
    #[error("{}: sequence break at byte {offset}: expected seq {expected}, found {found}", path.display())]
    SequenceBreak {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the entry.
        offset: u64,
        /// The sequence number expected there.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// A checksum-valid entry whose prev hash is not the previous entry's hash.
    #[error("{}: hash chain broken at seq {seq} (byte {offset})", path.display())]
    ChainBroken {
        /// The journal file.
        path: PathBuf,
        /// Sequence number of the entry.
        seq: u64,
        /// Its byte offset.
        offset: u64,
    },
    /// An entry read back after open no longer matches what open verified.
    #[error("{}: entry seq {seq} changed on disk since the journal was opened", path.display())]
    EntryChanged {
        /// The journal file.
        path: PathBuf,
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
    /// The ack file is damaged.
    #[error("{}: bad acknowledgement file ({reason})", path.display())]
    BadAckFile {
        /// The ack file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The ack file does not agree with the log.
    #[error("{}: acknowledgement up to seq {acked} does not match the journal ({reason})", path.display())]
    AckMismatch {
        /// The journal file.
        path: PathBuf,
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
    /// The opaque payload (a signed receipt's canonical bytes).
    pub payload: Vec<u8>,
}

/// Summary of a journal check ([`verify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Sequence number of the first stored entry (the header's base seq).
    pub first_seq: u64,
    /// The next sequence number to be assigned.
    pub next_seq: u64,
    /// Entries stored (acknowledged and pending).
    pub entries: usize,
    /// Entries not yet acknowledged.
    pub pending: usize,
    /// Acknowledged up to this seq (`first_seq - 1` when nothing stored is acknowledged).
    pub acked_upto: u64,
    /// Bytes of torn tail after the last valid entry (0 when the file is clean).
    pub torn_tail_bytes: u64,
}

/// What [`Journal::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactReport {
    /// Acknowledged entries removed.
    pub dropped_entries: usize,
    /// Bytes the log shrank by.
    pub dropped_bytes: u64,
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    len: u32,
    hash: [u8; 32],
}

impl Slot {
    fn size(&self) -> u64 {
        ENTRY_OVERHEAD as u64 + u64::from(self.len)
    }
}

/// An open journal. See the [module docs](self) for the format and guarantees.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    writable: bool,
    poisoned: bool,
    base_seq: u64,
    genesis: [u8; 32],
    slots: Vec<Slot>,
    /// End of the last valid entry.
    end: u64,
    acked: u64,
    torn: u64,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// fsyncs the directory holding `path`, so a rename or create in it is durable.
fn sync_parent(path: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory of", path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync directory.
fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let mut f = File::create(tmp).map_err(io_err("create", tmp))?;
    f.write_all(bytes).map_err(io_err("write", tmp))?;
    f.sync_all().map_err(io_err("sync", tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io_err("rename onto", path))?;
    sync_parent(path)
}

fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(not(unix))]
    {
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

/// Result of scanning the entries of a log.
struct Scan {
    slots: Vec<Slot>,
    end: u64,
    torn: u64,
}

/// Why an entry at the scan position is bad.
enum Bad {
    Incomplete,
    Magic,
    TooLarge,
    Hash,
}

impl Bad {
    fn reason(&self) -> &'static str {
        match self {
            Bad::Incomplete => "incomplete entry",
            Bad::Magic => "bad entry magic",
            Bad::TooLarge => "length field over the limit",
            Bad::Hash => "entry hash mismatch",
        }
    }
}

/// Looks for a checksum-valid entry starting anywhere in `from..file_len`.
fn find_valid_entry(file: &File, from: u64, file_len: u64) -> io::Result<Option<u64>> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut start = from;
    while start + (ENTRY_OVERHEAD as u64) <= file_len {
        let n = ((file_len - start).min(CHUNK as u64)) as usize;
        read_at(file, start, &mut buf[..n])?;
        for i in 0..n.saturating_sub(3) {
            if buf[i..i + 4] != ENTRY_MAGIC {
                continue;
            }
            let at = start + i as u64;
            if at + ENTRY_OVERHEAD as u64 > file_len {
                return Ok(None);
            }
            let mut head = [0u8; ENTRY_HEAD_LEN];
            read_at(file, at, &mut head)?;
            let Some(h) = EntryHead::decode(&head) else {
                continue;
            };
            if h.len as usize > MAX_PAYLOAD_LEN || at + h.entry_size() > file_len {
                continue;
            }
            let mut e = vec![0u8; h.entry_size() as usize];
            read_at(file, at, &mut e)?;
            if check_entry(&e).is_some() {
                return Ok(Some(at));
            }
        }
        // Overlap by 3 so a magic split across chunks is seen.
        start += (n as u64).saturating_sub(3).max(1);
    }
    Ok(None)
}

fn scan(path: &Path, file: &File, header: &FileHeader) -> Result<Scan, JournalError> {
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut f = file;
    f.seek(SeekFrom::Start(HEADER_LEN as u64))
        .map_err(io_err("seek", path))?;
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut pos = HEADER_LEN as u64;
    let mut expected = header.base_seq;
    let mut prev = header.genesis;
    let mut slots = Vec::new();
    let mut head = [0u8; ENTRY_HEAD_LEN];
    let mut buf = Vec::new();
    loop {
        if pos == file_len {
            return Ok(Scan {
                slots,
                end: pos,
                torn: 0,
            });
        }
        let remaining = file_len - pos;
        // Sizes are checked against the file length first, so a failed read is a real I/O
        // error and must not be mistaken for a torn tail.
        let outcome: Result<(EntryHead, [u8; 32]), Bad> = {
            if remaining < ENTRY_HEAD_LEN as u64 {
                Err(Bad::Incomplete)
            } else {
                r.read_exact(&mut head).map_err(io_err("read", path))?;
                match EntryHead::decode(&head) {
                    None => Err(Bad::Magic),
                    Some(h) if h.entry_size() > remaining => Err(Bad::Incomplete),
                    Some(h) if h.len as usize > MAX_PAYLOAD_LEN => Err(Bad::TooLarge),
                    Some(h) => {
                        buf.clear();
                        buf.extend_from_slice(&head);
                        buf.resize(h.entry_size() as usize, 0);
                        r.read_exact(&mut buf[ENTRY_HEAD_LEN..])
                            .map_err(io_err("read", path))?;
                        check_entry(&buf).map(|hash| (h, hash)).ok_or(Bad::Hash)
                    }
                }
            }
        };
        match outcome {
            Ok((h, hash)) => {
                if h.seq != expected {
                    return Err(JournalError::SequenceBreak {
                        path: path.to_path_buf(),
                        offset: pos,
                        expected,
                        found: h.seq,
                    });
                }
                if h.prev != prev {
                    return Err(JournalError::ChainBroken {
                        path: path.to_path_buf(),
                        seq: h.seq,
                        offset: pos,
                    });
                }
                slots.push(Slot {
                    offset: pos,
                    len: h.len,
                    hash,
                });
                prev = hash;
                pos += h.entry_size();
                expected = expected.checked_add(1).ok_or(JournalError::SeqOverflow)?;
            }
            Err(bad) => {
                let next =
                    find_valid_entry(file, pos + 1, file_len).map_err(io_err("read", path))?;
                if let Some(next_valid) = next {
                    return Err(JournalError::CorruptEntry {
                        path: path.to_path_buf(),
                        offset: pos,
                        expected_seq: expected,
                        reason: bad.reason(),
                        next_valid,
                    });
                }
                return Ok(Scan {
                    slots,
                    end: pos,
                    torn: remaining,
                });
            }
        }
    }
}

fn read_header(path: &Path, file: &File) -> Result<FileHeader, JournalError> {
    let mut h = [0u8; HEADER_LEN];
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    if len < HEADER_LEN as u64 {
        return Err(JournalError::BadHeader {
            path: path.to_path_buf(),
            reason: "file shorter than the header",
        });
    }
    read_at(file, 0, &mut h).map_err(io_err("read", path))?;
    FileHeader::decode(&h).map_err(|fault| {
        let reason = match fault {
            HeaderFault::Short => "file shorter than the header",
            HeaderFault::Magic => "bad magic",
            HeaderFault::Checksum => "header checksum mismatch",
            HeaderFault::Reserved => "reserved header bytes set",
            HeaderFault::BaseSeq => "base sequence number 0",
            HeaderFault::Version(version) => {
                return JournalError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version,
                };
            }
        };
        JournalError::BadHeader {
            path: path.to_path_buf(),
            reason,
        }
    })
}

impl Journal {
    /// Opens the journal at `path` for writing, creating an empty one (atomically) if there
    /// is none. Truncates a torn tail (see [`Journal::torn_tail_bytes`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Journal, JournalError> {
        let path = path.as_ref();
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let header = FileHeader {
                    base_seq: 1,
                    genesis: GENESIS,
                };
                write_atomic(path, &with_suffix(path, ".new"), &header.encode())?;
            }
            Err(e) => return Err(io_err("stat", path)(e)),
        }
        Self::open_inner(path, true)
    }

    /// Opens an existing journal for writing. Truncates a torn tail.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Journal, JournalError> {
        Self::open_inner(path.as_ref(), true)
    }

    /// Opens an existing journal without modifying anything: a torn tail is reported, not
    /// truncated, and every write fails with [`JournalError::ReadOnly`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Journal, JournalError> {
        Self::open_inner(path.as_ref(), false)
    }

    fn open_inner(path: &Path, writable: bool) -> Result<Journal, JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io_err("open", path))?;
        let header = read_header(path, &file)?;
        let scan = scan(path, &file, &header)?;
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            writable,
            poisoned: false,
            base_seq: header.base_seq,
            genesis: header.genesis,
            slots: scan.slots,
            end: scan.end,
            acked: header.base_seq - 1,
            torn: scan.torn,
        };
        j.acked = j.load_ack()?;
        if writable {
            if j.torn > 0 {
                j.file.set_len(j.end).map_err(io_err("truncate", path))?;
                j.file.sync_all().map_err(io_err("sync", path))?;
            }
            for suffix in [".new", ".compact", ".ack.tmp"] {
                let p = with_suffix(path, suffix);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &p)(e)),
                }
            }
        }
        Ok(j)
    }

    fn ack_path(&self) -> PathBuf {
        with_suffix(&self.path, ".ack")
    }

    /// Reads and checks the ack file; returns the acked-up-to seq.
    fn load_ack(&self) -> Result<u64, JournalError> {
        let ap = self.ack_path();
        let bytes = match fs::read(&ap) {
            Ok(b) => b,
            // No ack file: nothing in the log is acknowledged.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(self.base_seq - 1),
            Err(e) => return Err(io_err("read", &ap)(e)),
        };
        if bytes.len() != ACK_LEN {
            return Err(JournalError::BadAckFile {
                path: ap,
                reason: "wrong length",
            });
        }
        let rec = AckRecord::decode(&bytes)
            .map_err(|reason| JournalError::BadAckFile { path: ap, reason })?;
        let mismatch = |reason| JournalError::AckMismatch {
            path: self.path.clone(),
            acked: rec.upto,
            reason,
        };
        let prior = self.base_seq - 1;
        if rec.upto < prior {
            return Err(mismatch("older than the compaction point"));
        }
        let expected = if rec.upto == prior {
            self.genesis
        } else {
            self.slot(rec.upto)
                .ok_or_else(|| mismatch("beyond the last entry"))?
                .hash
        };
        if expected != rec.hash {
            return Err(mismatch("entry hash differs"));
        }
        Ok(rec.upto)
    }

    fn slot(&self, seq: u64) -> Option<&Slot> {
        let i = seq.checked_sub(self.base_seq)?;
        self.slots.get(usize::try_from(i).ok()?)
    }

    fn check_writable(&self) -> Result<(), JournalError> {
        if !self.writable {
            return Err(JournalError::ReadOnly);
        }
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        Ok(())
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of torn tail found at open: truncated by a writer's open, only reported by a
    /// read-only one. Non-zero means the last append before a crash had not completed (or the
    /// last entry was damaged; the two cannot be told apart).
    pub fn torn_tail_bytes(&self) -> u64 {
        self.torn
    }

    /// Sequence number of the first stored entry.
    pub fn first_seq(&self) -> u64 {
        self.base_seq
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.base_seq + self.slots.len() as u64
    }

    /// Acknowledged up to this seq (`first_seq() - 1` if no stored entry is acknowledged).
    pub fn acked_upto(&self) -> u64 {
        self.acked
    }

    /// Number of stored entries (acknowledged but not yet compacted, and pending).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of pending (unacknowledged) entries.
    pub fn pending_count(&self) -> usize {
        (self.next_seq() - 1 - self.acked) as usize
    }

    /// Hash of the last stored entry (the genesis value if none): the chain head.
    pub fn head_hash(&self) -> [u8; 32] {
        self.slots.last().map_or(self.genesis, |s| s.hash)
    }

    /// Appends one entry and returns its sequence number. The entry is on stable storage
    /// when this returns.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        self.check_writable()?;
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(JournalError::EntryTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let seq = self.next_seq();
        seq.checked_add(1).ok_or(JournalError::SeqOverflow)?;
        let (bytes, hash) = encode_entry(seq, &self.head_hash(), payload);
        let written = (|| {
            self.file.seek(SeekFrom::Start(self.end))?;
            self.file.write_all(&bytes)
        })();
        if let Err(e) = written {
            // Cut back a partial write so the next append does not follow garbage.
            if self.file.set_len(self.end).is_err() {
                self.poisoned = true;
            }
            return Err(io_err("append to", &self.path)(e));
        }
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io_err("sync", &self.path)(e));
        }
        self.slots.push(Slot {
            offset: self.end,
            len: payload.len() as u32,
            hash,
        });
        self.end += bytes.len() as u64;
        Ok(seq)
    }

    /// Reads one entry's raw bytes and checks them against what open verified.
    fn read_raw(&self, seq: u64, slot: &Slot) -> Result<Vec<u8>, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        let mut raw = vec![0u8; slot.size() as usize];
        read_at(&self.file, slot.offset, &mut raw).map_err(io_err("read", &self.path))?;
        match check_entry(&raw) {
            Some(h) if h == slot.hash => Ok(raw),
            _ => Err(JournalError::EntryChanged {
                path: self.path.clone(),
                seq,
            }),
        }
    }

    fn read_entry(&self, seq: u64, slot: &Slot) -> Result<Entry, JournalError> {
        let raw = self.read_raw(seq, slot)?;
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(&raw[16..48]);
        Ok(Entry {
            seq,
            prev_hash,
            hash: slot.hash,
            payload: raw[ENTRY_HEAD_LEN..raw.len() - 32].to_vec(),
        })
    }

    /// Reads the entry with sequence number `seq`.
    pub fn get(&self, seq: u64) -> Result<Entry, JournalError> {
        let slot = self.slot(seq).ok_or(JournalError::NoSuchEntry(seq))?;
        self.read_entry(seq, slot)
    }

    /// Iterates over every stored entry, acknowledged (not yet compacted) and pending.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            journal: self,
            next: 0,
        }
    }

    /// Iterates over the pending (unacknowledged) entries, oldest first.
    pub fn pending(&self) -> Entries<'_> {
        Entries {
            journal: self,
            next: (self.acked + 1 - self.base_seq) as usize,
        }
    }

    /// Builds a batch of the oldest pending entries within `limits`, for upload. Nothing is
    /// changed; call [`Journal::ack`] with [`Batch::last_seq`] once the server confirmed it.
    pub fn export(&self, limits: ExportLimits) -> Result<Batch, JournalError> {
        let mut bytes = batch::begin();
        let mut count = 0usize;
        let mut first_seq = None;
        let mut last_seq = None;
        let start = (self.acked + 1 - self.base_seq) as usize;
        for (i, slot) in self.slots.iter().enumerate().skip(start) {
            if count >= limits.max_entries {
                break;
            }
            if count > 0 && bytes.len() as u64 + slot.size() > limits.max_bytes as u64 {
                break;
            }
            let seq = self.base_seq + i as u64;
            let raw = self.read_raw(seq, slot)?;
            // Keep the batch's length fields in range (u32).
            if bytes.len() + raw.len() > u32::MAX as usize {
                break;
            }
            bytes.extend_from_slice(&raw);
            count += 1;
            first_seq.get_or_insert(seq);
            last_seq = Some(seq);
        }
        let body = (bytes.len() - BATCH_HEADER_LEN) as u32;
        batch::finish(&mut bytes, count as u32, body);
        Ok(Batch {
            bytes,
            count,
            first_seq,
            last_seq,
        })
    }

    /// Records durably that every entry up to and including `upto` was accepted by the
    /// server. Acknowledging at or below the current point is a no-op. Entries stay in the
    /// file until [`Journal::compact`].
    pub fn ack(&mut self, upto: u64) -> Result<(), JournalError> {
        self.check_writable()?;
        if upto <= self.acked {
            return Ok(());
        }
        let slot = self.slot(upto).ok_or(JournalError::AckOutOfRange {
            upto,
            first: self.base_seq,
            next: self.next_seq(),
        })?;
        let rec = AckRecord {
            upto,
            hash: slot.hash,
        };
        let ap = self.ack_path();
        write_atomic(&ap, &with_suffix(&self.path, ".ack.tmp"), &rec.encode())?;
        self.acked = upto;
        Ok(())
    }

    /// Removes acknowledged entries from the file, keeping every pending one. The new file's
    /// chain is anchored on the hash of the last removed entry.
    pub fn compact(&mut self) -> Result<CompactReport, JournalError> {
        self.check_writable()?;
        let drop_n = (self.acked + 1 - self.base_seq) as usize;
        if drop_n == 0 {
            return Ok(CompactReport::default());
        }
        let genesis = self.slots[drop_n - 1].hash;
        let header = FileHeader {
            base_seq: self.acked + 1,
            genesis,
        };
        let tmp = with_suffix(&self.path, ".compact");
        let mut out = File::create(&tmp).map_err(io_err("create", &tmp))?;
        out.write_all(&header.encode())
            .map_err(io_err("write", &tmp))?;
        let mut new_slots = Vec::with_capacity(self.slots.len() - drop_n);
        let mut pos = HEADER_LEN as u64;
        for (i, slot) in self.slots.iter().enumerate().skip(drop_n) {
            let seq = self.base_seq + i as u64;
            // Re-checks every kept entry against what open verified.
            let raw = self.read_raw(seq, slot)?;
            out.write_all(&raw).map_err(io_err("write", &tmp))?;
            new_slots.push(Slot {
                offset: pos,
                ..*slot
            });
            pos += raw.len() as u64;
        }
        out.sync_all().map_err(io_err("sync", &tmp))?;
        drop(out);
        fs::rename(&tmp, &self.path).map_err(io_err("rename onto", &self.path))?;
        // From here the old handle points at the unlinked old file: reopen.
        let reopened = OpenOptions::new().read(true).write(true).open(&self.path);
        let synced = sync_parent(&self.path);
        match reopened {
            Ok(f) => self.file = f,
            Err(e) => {
                self.poisoned = true;
                return Err(io_err("reopen", &self.path)(e));
            }
        }
        if let Err(e) = synced {
            self.poisoned = true;
            return Err(e);
        }
        let report = CompactReport {
            dropped_entries: drop_n,
            dropped_bytes: self.end - pos,
        };
        self.base_seq = header.base_seq;
        self.genesis = genesis;
        self.slots = new_slots;
        self.end = pos;
        Ok(report)
    }

    /// The summary [`verify`] reports, for this handle.
    pub fn report(&self) -> VerifyReport {
        VerifyReport {
            first_seq: self.base_seq,
            next_seq: self.next_seq(),
            entries: self.slots.len(),
            pending: self.pending_count(),
            acked_upto: self.acked,
            torn_tail_bytes: self.torn,
        }
    }
}

/// Iterator over stored entries (see [`Journal::entries`], [`Journal::pending`]). Every
/// entry is re-read from disk and checked against the hash verified at open.
#[derive(Debug)]
pub struct Entries<'a> {
    journal: &'a Journal,
    next: usize,
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        let slot = self.journal.slots.get(self.next)?;
        let seq = self.journal.base_seq + self.next as u64;
        self.next += 1;
        Some(self.journal.read_entry(seq, slot))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.journal.slots.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

/// Checks the whole journal at `path` (header, every entry hash, sequence numbers, the
/// chain, the ack file) without modifying anything. A torn tail is not an error here; it is
/// reported in [`VerifyReport::torn_tail_bytes`] (callers that want a clean file must check
/// it).
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, JournalError> {
    Journal::open_read_only(path).map(|j| j.report())
}
