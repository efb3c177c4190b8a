//! The journal over any [`Storage`]: open (scan, classify the tail, check the ack record),
//! append, read back, export, ack, compact, repair. No `std`: this is what a reader's
//! firmware runs.

use alloc::vec;
use alloc::vec::Vec;

use super::batch::{self, BATCH_HEADER_LEN, Batch, ExportLimits};
#[cfg(feature = "std")]
use super::file::FileStorage;
use super::format::{
    ACK_LEN, AckRecord, ENTRY_HEAD_LEN, ENTRY_MAGIC, ENTRY_OVERHEAD, EntryHead, FileHeader,
    HEADER_LEN, HeaderFault, check_entry, encode_entry,
};
use super::storage::Storage;
use super::{
    CompactReport, Entry, GENESIS, JournalError, LOST_MARKER, LostEntry, MAX_PAYLOAD_LEN,
    RepairReport, VerifyReport,
};
use crate::crypto::sm3;

/// Largest damaged tail [`Journal::repair_in`] keeps aside (a few entries' worth); anything
/// bigger is not one damaged entry and needs a person.
const MAX_REPAIR_TAIL: u64 = 4 * (MAX_PAYLOAD_LEN as u64 + ENTRY_OVERHEAD as u64);

/// Chunk size of the scans that look at arbitrary amounts of tail data.
const CHUNK: usize = 64 * 1024;

/// Where an entry lives.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    len: u32,
    hash: [u8; 32],
    /// A lost-entry record.
    lost: bool,
}

impl Slot {
    fn size(&self) -> u64 {
        ENTRY_OVERHEAD as u64 + u64::from(self.len)
    }
}

// The struct is defined twice so that `std` builds can default the storage to files
// (`Journal` alone then means `Journal<FileStorage>`, as before the storage trait).
macro_rules! journal_struct {
    ($($default:tt)*) => {
        /// An open journal over a [`Storage`]. See the [module docs](super) for the format
        /// and guarantees.
        ///
        /// Core constructors take a storage ([`Journal::create_in`], [`Journal::open_in`],
        /// [`Journal::open_in_read_only`], [`Journal::repair_in`]); `std` adds the
        /// path-based ones on `Journal<FileStorage>` ([`Journal::open_locked`], …).
        #[derive(Debug)]
        pub struct Journal<S: Storage $($default)*> {
            storage: S,
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
    };
}
#[cfg(feature = "std")]
journal_struct!(= FileStorage);
#[cfg(not(feature = "std"))]
journal_struct!();

/// What follows the last valid entry.
enum Tail {
    Clean,
    /// An interrupted append: this many bytes, safe to drop.
    Torn(u64),
    /// A complete entry that does not check, or other data: never dropped silently.
    Damaged {
        offset: u64,
        reason: &'static str,
    },
}

/// Result of scanning the entries of a log.
struct Scan {
    header: FileHeader,
    slots: Vec<Slot>,
    end: u64,
    tail: Tail,
}

impl Scan {
    fn next_seq(&self) -> u64 {
        self.header.base_seq + self.slots.len() as u64
    }

    fn head_hash(&self) -> [u8; 32] {
        self.slots.last().map_or(self.header.genesis, |s| s.hash)
    }
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
            Bad::Incomplete => "bytes after the last entry are not an interrupted append",
            Bad::Magic => "bad entry magic",
            Bad::TooLarge => "length field over the limit",
            Bad::Hash => "entry hash mismatch",
        }
    }
}

fn read_header<S: Storage>(s: &S) -> Result<FileHeader, JournalError> {
    let bad = |reason| JournalError::BadHeader {
        location: s.location().into(),
        reason,
    };
    if s.log_len()? < HEADER_LEN as u64 {
        return Err(bad("shorter than the header"));
    }
    let mut h = [0u8; HEADER_LEN];
    s.read_at(0, &mut h)?;
    FileHeader::decode(&h).map_err(|fault| match fault {
        HeaderFault::Short => bad("shorter than the header"),
        HeaderFault::Magic => bad("bad magic"),
        HeaderFault::Checksum => bad("header checksum mismatch"),
        HeaderFault::Reserved => bad("reserved header bytes set"),
        HeaderFault::BaseSeq => bad("base sequence number 0"),
        HeaderFault::Version(version) => JournalError::UnsupportedVersion {
            location: s.location().into(),
            version,
        },
    })
}

/// Looks for a checksum-valid entry starting anywhere in `from..log_len`.
fn find_valid_entry<S: Storage>(
    s: &S,
    from: u64,
    log_len: u64,
) -> Result<Option<u64>, JournalError> {
    let mut buf = vec![0u8; CHUNK];
    let mut start = from;
    while start + (ENTRY_OVERHEAD as u64) <= log_len {
        let n = ((log_len - start).min(CHUNK as u64)) as usize;
        s.read_at(start, &mut buf[..n])?;
        for i in 0..n.saturating_sub(3) {
            if buf[i..i + 4] != ENTRY_MAGIC {
                continue;
            }
            let at = start + i as u64;
            if at + ENTRY_OVERHEAD as u64 > log_len {
                return Ok(None);
            }
            let mut head = [0u8; ENTRY_HEAD_LEN];
            s.read_at(at, &mut head)?;
            let Some(h) = EntryHead::decode(&head) else {
                continue;
            };
            if h.len as usize > MAX_PAYLOAD_LEN || at + h.entry_size() > log_len {
                continue;
            }
            let mut e = vec![0u8; h.entry_size() as usize];
            s.read_at(at, &mut e)?;
            if check_entry(&e).is_some() {
                return Ok(Some(at));
            }
        }
        // Overlap by 3 so a magic split across chunks is seen.
        start += (n as u64).saturating_sub(3).max(1);
    }
    Ok(None)
}

fn all_zero<S: Storage>(s: &S, from: u64, to: u64) -> Result<bool, JournalError> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos).min(CHUNK as u64)) as usize;
        s.read_at(pos, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Classifies the bytes `pos..log_len` after the last valid entry (no valid entry follows).
/// Only what an interrupted append of entry `seq` leaves behind is a torn tail.
fn classify_tail<S: Storage>(
    s: &S,
    pos: u64,
    log_len: u64,
    seq: u64,
    prev: &[u8; 32],
    bad: Bad,
) -> Result<Tail, JournalError> {
    let r = log_len - pos;
    // Size extended, data never written (a file system after power loss).
    if all_zero(s, pos, log_len)? {
        return Ok(Tail::Torn(r));
    }
    // A complete entry whose damage is confined to its head (magic, length, seq, prev):
    // rebuilt with the head it must have, it checks. This catches a flipped length byte
    // that would otherwise make the entry look incomplete.
    if r >= ENTRY_OVERHEAD as u64 && r - ENTRY_OVERHEAD as u64 <= MAX_PAYLOAD_LEN as u64 {
        let mut e = vec![0u8; r as usize];
        s.read_at(pos, &mut e)?;
        let (rebuilt, _) = encode_entry(seq, prev, &e[ENTRY_HEAD_LEN..e.len() - 32]);
        if rebuilt[rebuilt.len() - 32..] == e[e.len() - 32..] {
            return Ok(Tail::Damaged {
                offset: pos,
                reason: "entry head damaged",
            });
        }
    }
    // A strict prefix of the entry being appended: the fields known in advance agree.
    let mut head = [0u8; ENTRY_HEAD_LEN];
    let n = r.min(ENTRY_HEAD_LEN as u64) as usize;
    s.read_at(pos, &mut head[..n])?;
    let mut want = [0u8; ENTRY_HEAD_LEN];
    want[..4].copy_from_slice(&ENTRY_MAGIC);
    want[8..16].copy_from_slice(&seq.to_be_bytes());
    want[16..48].copy_from_slice(prev);
    let fields_agree = (0..n).all(|i| (4..8).contains(&i) || head[i] == want[i]);
    let runs_past_end = n < 8 || {
        let len = u64::from(super::format::be_u32(&head[4..8]));
        len <= MAX_PAYLOAD_LEN as u64 && ENTRY_OVERHEAD as u64 + len > r
    };
    if fields_agree && runs_past_end {
        return Ok(Tail::Torn(r));
    }
    Ok(Tail::Damaged {
        offset: pos,
        reason: bad.reason(),
    })
}

fn scan<S: Storage>(s: &S) -> Result<Scan, JournalError> {
    let header = read_header(s)?;
    let log_len = s.log_len()?;
    let mut pos = HEADER_LEN as u64;
    let mut expected = header.base_seq;
    let mut prev = header.genesis;
    let mut slots = Vec::new();
    let mut head = [0u8; ENTRY_HEAD_LEN];
    let mut buf = Vec::new();
    let location = || s.location().into();
    loop {
        if pos == log_len {
            return Ok(Scan {
                header,
                slots,
                end: pos,
                tail: Tail::Clean,
            });
        }
        let remaining = log_len - pos;
        // Sizes are checked against the log length first, so a failed read is a real I/O
        // error and must not be mistaken for a torn tail.
        let outcome: Result<(EntryHead, [u8; 32]), Bad> = if remaining < ENTRY_HEAD_LEN as u64 {
            Err(Bad::Incomplete)
        } else {
            s.read_at(pos, &mut head)?;
            match EntryHead::decode(&head) {
                None => Err(Bad::Magic),
                Some(h) if h.len as usize > MAX_PAYLOAD_LEN => Err(Bad::TooLarge),
                Some(h) if h.entry_size() > remaining => Err(Bad::Incomplete),
                Some(h) => {
                    buf.clear();
                    buf.resize(h.entry_size() as usize, 0);
                    s.read_at(pos, &mut buf)?;
                    check_entry(&buf).map(|hash| (h, hash)).ok_or(Bad::Hash)
                }
            }
        };
        match outcome {
            Ok((h, hash)) => {
                if h.seq != expected {
                    return Err(JournalError::SequenceBreak {
                        location: location(),
                        offset: pos,
                        expected,
                        found: h.seq,
                    });
                }
                if h.prev != prev {
                    return Err(JournalError::ChainBroken {
                        location: location(),
                        seq: h.seq,
                        offset: pos,
                    });
                }
                slots.push(Slot {
                    offset: pos,
                    len: h.len,
                    hash,
                    lost: buf[ENTRY_HEAD_LEN..buf.len() - 32].starts_with(&LOST_MARKER),
                });
                prev = hash;
                pos += h.entry_size();
                expected = expected.checked_add(1).ok_or(JournalError::SeqOverflow)?;
            }
            Err(bad) => {
                if let Some(next_valid) = find_valid_entry(s, pos + 1, log_len)? {
                    return Err(JournalError::CorruptEntry {
                        location: location(),
                        offset: pos,
                        expected_seq: expected,
                        reason: bad.reason(),
                        next_valid,
                    });
                }
                let tail = classify_tail(s, pos, log_len, expected, &prev, bad)?;
                return Ok(Scan {
                    header,
                    slots,
                    end: pos,
                    tail,
                });
            }
        }
    }
}

impl<S: Storage> Journal<S> {
    /// Writes a new, empty journal (atomically) into `storage`, which must hold no log, and
    /// opens it for writing.
    pub fn create_in(mut storage: S) -> Result<Self, JournalError> {
        let len = storage.log_len()?;
        if len != 0 {
            return Err(JournalError::NotEmpty {
                location: storage.location().into(),
                len,
            });
        }
        let header = FileHeader {
            base_seq: 1,
            genesis: GENESIS,
        };
        storage.begin_replace()?;
        storage.replace_append(&header.encode())?;
        storage.commit_replace()?;
        Self::open_in(storage)
    }

    /// Opens the journal in `storage` for writing. Truncates a torn tail (see
    /// [`Journal::torn_tail_bytes`]); fails with [`JournalError::CorruptLastEntry`] on a
    /// damaged last entry, changing nothing. The caller guarantees it is the only writer.
    pub fn open_in(storage: S) -> Result<Self, JournalError> {
        Self::load(storage, true)
    }

    /// Opens the journal in `storage` without modifying anything: a torn tail is reported,
    /// not truncated, and every write fails with [`JournalError::ReadOnly`].
    pub fn open_in_read_only(storage: S) -> Result<Self, JournalError> {
        Self::load(storage, false)
    }

    fn load(storage: S, writable: bool) -> Result<Self, JournalError> {
        let scan = scan(&storage)?;
        let torn = match scan.tail {
            Tail::Clean => 0,
            Tail::Torn(n) => n,
            Tail::Damaged { offset, reason } => {
                return Err(JournalError::CorruptLastEntry {
                    location: storage.location().into(),
                    seq: scan.next_seq(),
                    offset,
                    reason,
                });
            }
        };
        let mut j = Journal {
            storage,
            writable,
            poisoned: false,
            base_seq: scan.header.base_seq,
            genesis: scan.header.genesis,
            slots: scan.slots,
            end: scan.end,
            acked: scan.header.base_seq - 1,
            torn,
        };
        j.acked = j.load_ack()?;
        if writable && j.torn > 0 {
            j.storage.truncate(j.end)?;
            j.storage.sync()?;
        }
        Ok(j)
    }

    /// Opens the journal in `storage` for writing after replacing a damaged last entry (the
    /// [`JournalError::CorruptLastEntry`] case) by a lost-entry record with the same seq.
    ///
    /// The damaged bytes are first kept aside ([`Storage::keep_aside`]); then the log is
    /// replaced atomically by its valid entries followed by the record ([`LostEntry`]), so
    /// the seq is never reused. If the ack record pointed at the damaged entry, it is moved
    /// to the record (the server already holds that entry). Re-running after a crash is
    /// safe. A torn tail is truncated as by [`Journal::open_in`]; other damage is returned
    /// as the error open gives.
    pub fn repair_in(mut storage: S) -> Result<(Self, RepairReport), JournalError> {
        let scan = scan(&storage)?;
        let Tail::Damaged { offset, .. } = scan.tail else {
            let j = Self::open_in(storage)?;
            let report = RepairReport {
                torn_tail_bytes: j.torn,
                ..RepairReport::default()
            };
            return Ok((j, report));
        };
        let seq = scan.next_seq();
        seq.checked_add(1).ok_or(JournalError::SeqOverflow)?;
        let log_len = storage.log_len()?;
        let lost_len = log_len - offset;
        if lost_len > MAX_REPAIR_TAIL {
            return Err(JournalError::TailTooLarge {
                location: storage.location().into(),
                after: seq - 1,
                len: lost_len,
            });
        }
        let mut bad = vec![0u8; lost_len as usize];
        storage.read_at(offset, &mut bad)?;
        let kept_at = storage.keep_aside(seq, &bad)?;
        let lost = LostEntry {
            lost_len,
            lost_sm3: sm3(&bad),
            kept_at,
        };
        let (record, record_hash) = encode_entry(seq, &scan.head_hash(), &lost.encode());
        let acked_damaged = storage
            .read_ack()?
            .and_then(|ack| AckRecord::decode(&ack).ok())
            .is_some_and(|a| a.upto == seq);
        if acked_damaged {
            let moved = AckRecord {
                upto: seq,
                hash: record_hash,
            };
            storage.write_ack(&moved.encode())?;
        }
        storage.begin_replace()?;
        storage.replace_append(&scan.header.encode())?;
        let mut raw = Vec::new();
        for (i, slot) in scan.slots.iter().enumerate() {
            raw.resize(slot.size() as usize, 0);
            storage.read_at(slot.offset, &mut raw)?;
            if check_entry(&raw) != Some(slot.hash) {
                return Err(JournalError::EntryChanged {
                    location: storage.location().into(),
                    seq: scan.header.base_seq + i as u64,
                });
            }
            storage.replace_append(&raw)?;
        }
        storage.replace_append(&record)?;
        storage.commit_replace()?;
        let j = Self::open_in(storage)?;
        let report = RepairReport {
            lost_seq: Some(seq),
            lost_bytes: lost_len,
            kept_at: Some(lost.kept_at),
            torn_tail_bytes: 0,
        };
        Ok((j, report))
    }

    /// Reads and checks the ack record; returns the acked-up-to seq.
    fn load_ack(&self) -> Result<u64, JournalError> {
        let location = || self.storage.location().into();
        // No ack record: nothing in the log is acknowledged.
        let Some(bytes) = self.storage.read_ack()? else {
            return Ok(self.base_seq - 1);
        };
        if bytes.len() != ACK_LEN {
            return Err(JournalError::BadAckFile {
                location: location(),
                reason: "wrong length",
            });
        }
        let rec = AckRecord::decode(&bytes).map_err(|reason| JournalError::BadAckFile {
            location: location(),
            reason,
        })?;
        let mismatch = |reason| JournalError::AckMismatch {
            location: location(),
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

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Closes the journal and returns its storage (for files: releases the writer's lock).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The storage's name ([`Storage::location`]).
    pub fn location(&self) -> &str {
        self.storage.location()
    }

    /// Bytes of torn tail (an interrupted append) found at open: truncated by a writer's
    /// open, only reported by a read-only one.
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

    /// Number of stored lost-entry records (entries replaced by repair).
    pub fn lost_count(&self) -> usize {
        self.slots.iter().filter(|s| s.lost).count()
    }

    /// Hash of the last stored entry (the genesis value if none): the chain head.
    pub fn head_hash(&self) -> [u8; 32] {
        self.slots.last().map_or(self.genesis, |s| s.hash)
    }

    /// Appends one entry and returns its sequence number. The entry is on stable storage
    /// when this returns. Payloads over [`MAX_PAYLOAD_LEN`] or starting with
    /// [`LOST_MARKER`] are refused.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        self.check_writable()?;
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(JournalError::EntryTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        if payload.starts_with(&LOST_MARKER) {
            return Err(JournalError::ReservedPayload);
        }
        let seq = self.next_seq();
        seq.checked_add(1).ok_or(JournalError::SeqOverflow)?;
        let (bytes, hash) = encode_entry(seq, &self.head_hash(), payload);
        if let Err(e) = self.storage.append(&bytes) {
            // Cut back a partial write so the next append does not follow garbage.
            if self.storage.truncate(self.end).is_err() {
                self.poisoned = true;
            }
            return Err(e.into());
        }
        if let Err(e) = self.storage.sync() {
            self.poisoned = true;
            return Err(e.into());
        }
        self.slots.push(Slot {
            offset: self.end,
            len: payload.len() as u32,
            hash,
            lost: false,
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
        self.storage.read_at(slot.offset, &mut raw)?;
        match check_entry(&raw) {
            Some(h) if h == slot.hash => Ok(raw),
            _ => Err(JournalError::EntryChanged {
                location: self.storage.location().into(),
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

    /// Iterates over every stored entry, acknowledged (not yet compacted) and pending, oldest
    /// first; `.rev()` gives newest first.
    pub fn entries(&self) -> Entries<'_, S> {
        Entries {
            journal: self,
            front: 0,
            back: self.slots.len(),
        }
    }

    /// Iterates over the pending (unacknowledged) entries, oldest first; `.rev()` gives
    /// newest first.
    pub fn pending(&self) -> Entries<'_, S> {
        Entries {
            journal: self,
            front: (self.acked + 1 - self.base_seq) as usize,
            back: self.slots.len(),
        }
    }

    /// Builds a batch of the oldest pending entries within `limits`, for upload (lost-entry
    /// records included: the server must learn which seq was lost). Nothing is changed; call
    /// [`Journal::ack`] with [`Batch::last_seq`] once the server confirmed it.
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
    /// server. Acknowledging at or below the current point is a no-op. Entries stay stored
    /// until [`Journal::compact`].
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
        self.storage.write_ack(&rec.encode())?;
        self.acked = upto;
        Ok(())
    }

    /// Removes acknowledged entries, keeping every pending one, by swapping in a new log
    /// atomically. The new log's chain is anchored on the hash of the last removed entry.
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
        self.storage.begin_replace()?;
        self.storage.replace_append(&header.encode())?;
        let mut new_slots = Vec::with_capacity(self.slots.len() - drop_n);
        let mut pos = HEADER_LEN as u64;
        for (i, slot) in self.slots.iter().enumerate().skip(drop_n) {
            let seq = self.base_seq + i as u64;
            // Re-checks every kept entry against what open verified.
            let raw = self.read_raw(seq, slot)?;
            self.storage.replace_append(&raw)?;
            new_slots.push(Slot {
                offset: pos,
                ..*slot
            });
            pos += raw.len() as u64;
        }
        if let Err(e) = self.storage.commit_replace() {
            // The swap may or may not have happened: nothing is known; reopen.
            self.poisoned = true;
            return Err(e.into());
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

    /// The summary [`verify`](super::verify) reports, for this handle.
    pub fn report(&self) -> VerifyReport {
        VerifyReport {
            first_seq: self.base_seq,
            next_seq: self.next_seq(),
            entries: self.slots.len(),
            pending: self.pending_count(),
            acked_upto: self.acked,
            torn_tail_bytes: self.torn,
            lost_entries: self.lost_count(),
        }
    }
}

/// Iterator over stored entries (see [`Journal::entries`], [`Journal::pending`]), both
/// ways. Every entry is re-read from storage and checked against the hash verified at open.
#[derive(Debug)]
pub struct Entries<'a, S: Storage> {
    journal: &'a Journal<S>,
    front: usize,
    back: usize,
}

impl<S: Storage> Entries<'_, S> {
    fn at(&self, i: usize) -> Result<Entry, JournalError> {
        let seq = self.journal.base_seq + i as u64;
        self.journal.read_entry(seq, &self.journal.slots[i])
    }
}

impl<S: Storage> Iterator for Entries<'_, S> {
    type Item = Result<Entry, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.front += 1;
        Some(self.at(self.front - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back.saturating_sub(self.front);
        (n, Some(n))
    }
}

impl<S: Storage> DoubleEndedIterator for Entries<'_, S> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        Some(self.at(self.back))
    }
}

impl<S: Storage> ExactSizeIterator for Entries<'_, S> {}
