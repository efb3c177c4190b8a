//! The export blob: a batch of journal entries for upload (put it in a [`crate::frame`]).
//!
//! ```text
//! magic "CVJB" (4) ‖ version u16 = 1 ‖ reserved u16 = 0 ‖ entry count u32 ‖ body length u32
//! ‖ entries, each exactly as stored in the journal:
//!     magic "CVJE" ‖ payload length u32 ‖ seq u64 ‖ prev hash (32) ‖ payload ‖ entry hash (32)
//! ```
//! All integers big-endian. The entries are consecutive (seq n, n+1, …) and chained (each
//! prev hash is the previous entry's hash), so the server can check continuity across
//! batches: the first entry's prev hash must equal the hash of the last entry it already
//! holds (a fork there means the journal was rolled back or replaced).

use alloc::vec::Vec;

use super::JournalError;
use super::format::{ENTRY_HEAD_LEN, EntryHead, check_entry};
use super::{Entry, MAX_PAYLOAD_LEN};

/// Batch magic.
pub const BATCH_MAGIC: [u8; 4] = *b"CVJB";
/// Batch format version.
pub const BATCH_VERSION: u16 = 1;
/// Length of the batch header.
pub const BATCH_HEADER_LEN: usize = 16;

/// An exported batch of pending entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The encoded batch, ready to frame and upload.
    pub bytes: Vec<u8>,
    /// Number of entries in it.
    pub count: usize,
    /// Sequence number of the first entry (`None` if the batch is empty).
    pub first_seq: Option<u64>,
    /// Sequence number of the last entry: acknowledge up to this once the server has
    /// confirmed the batch (`None` if the batch is empty).
    pub last_seq: Option<u64>,
}

/// How much [`super::Journal::export`] puts into one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// At most this many entries (0 gives an empty batch).
    pub max_entries: usize,
    /// At most this many bytes of batch (header included). A single pending entry larger
    /// than this is still exported, alone, so that it can never block the queue.
    pub max_bytes: usize,
}

impl Default for ExportLimits {
    /// 256 entries, 256 KiB.
    fn default() -> Self {
        ExportLimits {
            max_entries: 256,
            max_bytes: 256 * 1024,
        }
    }
}

/// Starts a batch (header with zero counts).
pub(crate) fn begin() -> Vec<u8> {
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN);
    b.extend_from_slice(&BATCH_MAGIC);
    b.extend_from_slice(&BATCH_VERSION.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&[0; 8]);
    b
}

/// Fills in the header's count and body length.
pub(crate) fn finish(b: &mut [u8], count: u32, body_len: u32) {
    b[8..12].copy_from_slice(&count.to_be_bytes());
    b[12..16].copy_from_slice(&body_len.to_be_bytes());
}

fn bad(offset: usize, reason: &'static str) -> JournalError {
    JournalError::BadBatch { offset, reason }
}

/// Parses and checks a batch: header, every entry's hash, consecutive sequence numbers and
/// the hash chain inside the batch. Returns the entries in order.
///
/// This is the server-side counterpart of [`super::Journal::export`]; it needs no key. The
/// receipts inside still have to be verified by their SM2 signatures.
pub fn parse_batch(bytes: &[u8]) -> Result<Vec<Entry>, JournalError> {
    if bytes.len() < BATCH_HEADER_LEN {
        return Err(bad(0, "shorter than the batch header"));
    }
    if bytes[..4] != BATCH_MAGIC {
        return Err(bad(0, "bad magic"));
    }
    if u16::from_be_bytes([bytes[4], bytes[5]]) != BATCH_VERSION {
        return Err(bad(4, "unsupported version"));
    }
    if bytes[6..8] != [0, 0] {
        return Err(bad(6, "reserved bytes set"));
    }
    let count = super::format::be_u32(&bytes[8..12]);
    let body_len = super::format::be_u32(&bytes[12..16]) as usize;
    if body_len != bytes.len() - BATCH_HEADER_LEN {
        return Err(bad(12, "body length does not match"));
    }
    // Each entry is at least 80 bytes, so `count` cannot make us allocate much.
    let mut out: Vec<Entry> = Vec::with_capacity((count as usize).min(body_len / 80));
    let mut pos = BATCH_HEADER_LEN;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let head = EntryHead::decode(rest).ok_or_else(|| bad(pos, "bad entry head"))?;
        if head.len as usize > MAX_PAYLOAD_LEN {
            return Err(bad(pos, "entry too large"));
        }
        let size = head.entry_size() as usize;
        if size > rest.len() {
            return Err(bad(pos, "entry runs past the end"));
        }
        let raw = &rest[..size];
        let hash = check_entry(raw).ok_or_else(|| bad(pos, "entry hash mismatch"))?;
        if let Some(last) = out.last() {
            if Some(head.seq) != last.seq.checked_add(1) {
                return Err(bad(pos, "sequence numbers not consecutive"));
            }
            if head.prev != last.hash {
                return Err(bad(pos, "hash chain broken"));
            }
        }
        out.push(Entry {
            seq: head.seq,
            prev_hash: head.prev,
            hash,
            payload: raw[ENTRY_HEAD_LEN..size - 32].to_vec(),
        });
        pos += size;
    }
    if out.len() != count as usize {
        return Err(bad(8, "entry count does not match"));
    }
    Ok(out)
}
