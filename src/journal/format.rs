//! On-disk encodings: file header, entries, the acknowledgement file.

use alloc::vec::Vec;

use crate::crypto::sm3;

/// Magic at the start of a journal file.
pub(crate) const FILE_MAGIC: [u8; 8] = *b"CVMJRNL\0";
/// magic 8 ‖ version 2 ‖ reserved 2 ‖ base seq 8 ‖ genesis 32 ‖ SM3 of the preceding 52 bytes.
pub(crate) const HEADER_LEN: usize = 84;
const HEADER_BODY: usize = 52;

/// Magic at the start of every entry (lets the scanner tell "bad entry followed by more
/// entries" from a torn tail).
pub(crate) const ENTRY_MAGIC: [u8; 4] = *b"CVJE";
/// magic 4 ‖ payload length u32 ‖ seq u64 ‖ prev hash 32.
pub(crate) const ENTRY_HEAD_LEN: usize = 48;
/// Head plus the trailing 32-byte entry hash.
pub(crate) const ENTRY_OVERHEAD: usize = ENTRY_HEAD_LEN + 32;

/// Magic of the acknowledgement file.
const ACK_MAGIC: [u8; 4] = *b"CVJA";
/// magic 4 ‖ version 2 ‖ reserved 2 ‖ acked-up-to seq 8 ‖ that entry's hash 32 ‖ SM3 of the
/// preceding 48 bytes.
pub(crate) const ACK_LEN: usize = 80;
const ACK_BODY: usize = 48;

/// The file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHeader {
    pub base_seq: u64,
    pub genesis: [u8; 32],
}

/// Why a header did not decode.
pub(crate) enum HeaderFault {
    Short,
    Magic,
    Version(u16),
    Reserved,
    Checksum,
    BaseSeq,
}

impl FileHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&FILE_MAGIC);
        h[8..10].copy_from_slice(&super::FORMAT_VERSION.to_be_bytes());
        h[12..20].copy_from_slice(&self.base_seq.to_be_bytes());
        h[20..52].copy_from_slice(&self.genesis);
        let c = sm3(&h[..HEADER_BODY]);
        h[HEADER_BODY..].copy_from_slice(&c);
        h
    }

    pub fn decode(h: &[u8]) -> Result<Self, HeaderFault> {
        if h.len() < HEADER_LEN {
            return Err(HeaderFault::Short);
        }
        if h[..8] != FILE_MAGIC {
            return Err(HeaderFault::Magic);
        }
        if sm3(&h[..HEADER_BODY])[..] != h[HEADER_BODY..HEADER_LEN] {
            return Err(HeaderFault::Checksum);
        }
        let version = u16::from_be_bytes([h[8], h[9]]);
        if version != super::FORMAT_VERSION {
            return Err(HeaderFault::Version(version));
        }
        if h[10..12] != [0, 0] {
            return Err(HeaderFault::Reserved);
        }
        let base_seq = be_u64(&h[12..20]);
        if base_seq == 0 {
            return Err(HeaderFault::BaseSeq);
        }
        let mut genesis = [0u8; 32];
        genesis.copy_from_slice(&h[20..52]);
        Ok(FileHeader { base_seq, genesis })
    }
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub(crate) fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// A decoded entry head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryHead {
    pub len: u32,
    pub seq: u64,
    pub prev: [u8; 32],
}

impl EntryHead {
    /// `None` if the magic is wrong.
    pub fn decode(h: &[u8]) -> Option<Self> {
        if h.len() < ENTRY_HEAD_LEN || h[..4] != ENTRY_MAGIC {
            return None;
        }
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&h[16..48]);
        Some(EntryHead {
            len: be_u32(&h[4..8]),
            seq: be_u64(&h[8..16]),
            prev,
        })
    }

    /// Total size of the entry on disk.
    pub fn entry_size(&self) -> u64 {
        ENTRY_OVERHEAD as u64 + u64::from(self.len)
    }
}

/// Encodes one entry; returns its bytes and its hash (the last 32 bytes).
pub(crate) fn encode_entry(seq: u64, prev: &[u8; 32], payload: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut e = Vec::with_capacity(ENTRY_OVERHEAD + payload.len());
    e.extend_from_slice(&ENTRY_MAGIC);
    e.extend_from_slice(&len.to_be_bytes());
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(prev);
    e.extend_from_slice(payload);
    let h = sm3(&e);
    e.extend_from_slice(&h);
    (e, h)
}

/// Checks a complete entry's trailing hash. `e` must be exactly one entry.
/// Returns the hash if it matches.
pub(crate) fn check_entry(e: &[u8]) -> Option<[u8; 32]> {
    if e.len() < ENTRY_OVERHEAD {
        return None;
    }
    let (body, tail) = e.split_at(e.len() - 32);
    let h = sm3(body);
    (h[..] == tail[..]).then_some(h)
}

/// The acknowledgement record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckRecord {
    pub upto: u64,
    pub hash: [u8; 32],
}

impl AckRecord {
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut a = [0u8; ACK_LEN];
        a[..4].copy_from_slice(&ACK_MAGIC);
        a[4..6].copy_from_slice(&super::FORMAT_VERSION.to_be_bytes());
        a[8..16].copy_from_slice(&self.upto.to_be_bytes());
        a[16..48].copy_from_slice(&self.hash);
        let c = sm3(&a[..ACK_BODY]);
        a[ACK_BODY..].copy_from_slice(&c);
        a
    }

    pub fn decode(a: &[u8]) -> Result<Self, &'static str> {
        if a.len() != ACK_LEN {
            return Err("wrong length");
        }
        if a[..4] != ACK_MAGIC {
            return Err("bad magic");
        }
        if sm3(&a[..ACK_BODY])[..] != a[ACK_BODY..] {
            return Err("bad checksum");
        }
        if u16::from_be_bytes([a[4], a[5]]) != super::FORMAT_VERSION {
            return Err("unsupported version");
        }
        if a[6..8] != [0, 0] {
            return Err("reserved bytes set");
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&a[16..48]);
        Ok(AckRecord {
            upto: be_u64(&a[8..16]),
            hash,
        })
    }
}
