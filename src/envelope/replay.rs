//! Replay protection: the last accepted sequence number per stream.
//!
//! # The rule
//!
//! A *stream* is `(city, script kind, reader id)`; a city's card query script
//! ([`ScriptKind::Query`]) has its own stream, so the card company can seal each
//! transaction's command script with a fresh sequence number while the reader keeps
//! re-opening the query it was given once. For each stream the store keeps
//! the sequence number and SM3 digest of the last envelope that opened
//! successfully. A new envelope is accepted when
//!
//! * the stream has no entry yet, or
//! * its sequence number is **strictly greater** than the stored one, or
//! * it is a **command** (or **query**) script whose sequence number equals the stored one *and*
//!   whose whole sealed blob has the same SM3 digest — i.e. the reader re-opens the
//!   very command script it already accepted (after a restart, or after it fell out
//!   of the [`OpenCache`](super::OpenCache)). Data scripts carry one transaction and
//!   never get this exception.
//!
//! Everything else is [`OpenError::Replayed`](super::OpenError::Replayed). The new
//! entry is recorded only after the whole open (signature, reader, expiry, key
//! unwrap, tag) succeeded, so a forged or corrupted envelope cannot advance the
//! counter.
//!
//! # Integrity
//!
//! A reader keeps its store in a [`ProtectedReplayStore`]: the entries are encoded with
//! [`crate::codec`] and carry an HMAC-SM3 under a key derived from the reader's private
//! key, so an edited store is refused ([`StoreError::Tampered`]). A store that is
//! *missing* or *rolled back* to an older valid copy is caught by the reader against its
//! journal, which records the sequence number of every data script it ran
//! ([`crate::reader`]); both fail closed with [`StoreError::Missing`] /
//! [`StoreError::RolledBack`]. Recovery is explicit: `cardvm reader replay-rebuild`
//! (see `docs/security.md`).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::ScriptKind;
use crate::codec::{Codec, CodecError, CodecErrorKind, Reader, Writer};
use crate::crypto::sm2::Sm2PrivateKey;
use crate::storage::{RecordStorage, StorageError};

/// One replay stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplayKey {
    /// City / issuer id.
    pub city: u32,
    /// Script kind code ([`ScriptKind::code`]).
    pub kind: u8,
    /// Reader id.
    pub reader_id: String,
}

impl ReplayKey {
    /// The stream of an envelope header.
    pub fn new(city: u32, kind: ScriptKind, reader_id: &str) -> Self {
        ReplayKey {
            city,
            kind: kind.code(),
            reader_id: reader_id.into(),
        }
    }
}

impl core::fmt::Display for ReplayKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = ScriptKind::from_code(self.kind).map_or("?", ScriptKind::name);
        write!(
            f,
            "city {} {kind} scripts for reader {:?}",
            self.city, self.reader_id
        )
    }
}

/// The last accepted envelope of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayEntry {
    /// Its sequence number.
    pub seq: u64,
    /// SM3 of the whole sealed blob.
    pub digest: [u8; 32],
    /// Its issue time (unix seconds), for the clock check.
    pub issued: u64,
}

/// A replay-store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The device storage failed.
    #[error("replay store: {0}")]
    Storage(#[from] StorageError),
    /// The stored bytes do not decode.
    #[error("replay store {location} is corrupt: {error}")]
    Corrupt {
        /// Where the store lives.
        location: String,
        /// What does not decode, and where.
        error: CodecError,
    },
    /// The store's MAC does not verify: it was edited, or belongs to another reader key.
    #[error(
        "replay store {location} fails its integrity check (edited, or made for another reader key); refusing sealed scripts until it is rebuilt: cardvm reader replay-rebuild"
    )]
    Tampered {
        /// Where the store lives.
        location: String,
    },
    /// The store is missing, but the journal shows data scripts were accepted before.
    #[error(
        "replay store {location} is missing but the journal holds receipts up to data seq {journal_seq} ({stream}); refusing sealed scripts until it is rebuilt: cardvm reader replay-rebuild"
    )]
    Missing {
        /// Where the store should be.
        location: String,
        /// The stream the journal shows.
        stream: String,
        /// The newest data seq in the journal for it.
        journal_seq: u64,
    },
    /// The store is older than the journal: it was rolled back to an earlier copy.
    #[error(
        "replay store {location} was rolled back: it accepts {stream} after seq {store_seq}, but the journal holds a receipt for seq {journal_seq}; refusing sealed scripts until it is rebuilt: cardvm reader replay-rebuild"
    )]
    RolledBack {
        /// Where the store lives.
        location: String,
        /// The stream concerned.
        stream: String,
        /// The store's last accepted seq (0: none).
        store_seq: u64,
        /// The newest seq in the journal.
        journal_seq: u64,
    },
}

/// Keeps the last accepted sequence number per stream (see the module docs).
pub trait ReplayStore {
    /// The last accepted entry of `key`'s stream, if any.
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError>;
    /// Records `entry` as the last accepted one of `key`'s stream (durably, for
    /// persistent stores, before returning `Ok`).
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError>;
    /// The latest issue time of any accepted envelope (0 when none).
    fn latest_issued(&self) -> Result<u64, StoreError>;
}

impl<T: ReplayStore + ?Sized> ReplayStore for alloc::boxed::Box<T> {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        (**self).last(key)
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        (**self).record(key, entry)
    }
    fn latest_issued(&self) -> Result<u64, StoreError> {
        (**self).latest_issued()
    }
}

impl<T: ReplayStore + ?Sized> ReplayStore for &mut T {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        (**self).last(key)
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        (**self).record(key, entry)
    }
    fn latest_issued(&self) -> Result<u64, StoreError> {
        (**self).latest_issued()
    }
}

/// Applies the acceptance rule. `Err(last_seq)` when the envelope is a replay.
pub fn accept(
    kind: ScriptKind,
    last: Option<ReplayEntry>,
    seq: u64,
    digest: &[u8; 32],
) -> Result<(), u64> {
    match last {
        None => Ok(()),
        Some(l) if seq > l.seq => Ok(()),
        Some(l) if kind.is_program() && seq == l.seq && l.digest == *digest => Ok(()),
        Some(l) => Err(l.seq),
    }
}

/// An in-memory replay store: lost on restart, no integrity protection. For tests and
/// as the state inside [`ProtectedReplayStore`].
#[derive(Debug, Clone, Default)]
pub struct MemoryReplayStore {
    map: BTreeMap<ReplayKey, ReplayEntry>,
}

impl MemoryReplayStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every stream's last accepted entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&ReplayKey, &ReplayEntry)> {
        self.map.iter()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        Ok(self.map.get(key).copied())
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        self.map.insert(key.clone(), entry);
        Ok(())
    }
    fn latest_issued(&self) -> Result<u64, StoreError> {
        Ok(self.map.values().map(|e| e.issued).max().unwrap_or(0))
    }
}

/// Magic bytes of the protected store's encoding.
pub const STORE_MAGIC: [u8; 4] = *b"CVRS";
/// Version of the protected store's encoding.
pub const STORE_VERSION: u8 = 2;
/// Most streams a store holds.
pub const MAX_STREAMS: usize = 4096;

/// The encoded state: `"CVRS" | version u8 = 2 | count u16 | count × (city u32, kind u8,
/// reader id: len u8 + UTF-8, seq u64, issued u64, digest [32]) | HMAC-SM3 [32]` over
/// every byte before it.
struct StoreImage(MemoryReplayStore);

impl Codec for StoreImage {
    fn write(&self, w: &mut Writer) {
        w.put(&STORE_MAGIC).u8(STORE_VERSION);
        w.u16(self.0.map.len().min(MAX_STREAMS) as u16);
        for (k, e) in self.0.map.iter().take(MAX_STREAMS) {
            w.u32(k.city)
                .u8(k.kind)
                .bytes(1, k.reader_id.as_bytes())
                .u64(e.seq)
                .u64(e.issued)
                .put(&e.digest);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        r.magic(&STORE_MAGIC)?;
        r.version(STORE_VERSION)?;
        let at = r.position();
        let n = usize::from(r.u16("stream count")?);
        if n > MAX_STREAMS {
            return Err(CodecError {
                at,
                field: "stream count",
                kind: CodecErrorKind::Length {
                    len: n,
                    min: 0,
                    max: MAX_STREAMS,
                },
            });
        }
        let mut store = MemoryReplayStore::new();
        for _ in 0..n {
            let city = r.u32("city")?;
            let at = r.position();
            let kind = r.u8("kind")?;
            if ScriptKind::from_code(kind).is_none() {
                return Err(CodecError {
                    at,
                    field: "kind",
                    kind: CodecErrorKind::BadTag(kind),
                });
            }
            let reader_id = r.str("reader id", 1, 1, super::format::MAX_READER_ID)?;
            let seq = r.u64("seq")?;
            let issued = r.u64("issued")?;
            let digest = r.array("digest")?;
            store.map.insert(
                ReplayKey {
                    city,
                    kind,
                    reader_id,
                },
                ReplayEntry {
                    seq,
                    digest,
                    issued,
                },
            );
        }
        Ok(StoreImage(store))
    }
}

/// A replay store on device storage, protected by an HMAC-SM3 under a key derived from
/// the reader's private key (see the module docs).
pub struct ProtectedReplayStore<S: RecordStorage> {
    storage: S,
    mac_key: zeroize::Zeroizing<[u8; 32]>,
    mem: MemoryReplayStore,
    fresh: bool,
}

impl<S: RecordStorage> core::fmt::Debug for ProtectedReplayStore<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProtectedReplayStore")
            .field("location", &self.storage.location())
            .field("streams", &self.mem.map.len())
            .field("fresh", &self.fresh)
            .finish_non_exhaustive()
    }
}

/// The store's MAC key: HMAC-SM3 keyed by the reader's private scalar over a fixed label.
fn store_mac_key(reader_key: &Sm2PrivateKey) -> zeroize::Zeroizing<[u8; 32]> {
    let scalar = reader_key.to_bytes();
    zeroize::Zeroizing::new(super::aead::hmac_sm3(
        &scalar[..],
        b"cardvm/replay-store/v2",
    ))
}

impl<S: RecordStorage> ProtectedReplayStore<S> {
    /// Loads the store from `storage` and checks its MAC. Nothing stored yet gives an
    /// empty store that reports [`is_fresh`](Self::is_fresh) (the reader then checks
    /// its journal for signs that a store existed).
    pub fn open(mut storage: S, reader_key: &Sm2PrivateKey) -> Result<Self, StoreError> {
        let mac_key = store_mac_key(reader_key);
        let location = storage.location();
        let (mem, fresh) = match storage.load()? {
            None => (MemoryReplayStore::new(), true),
            Some(bytes) => {
                let Some(body_len) = bytes.len().checked_sub(32) else {
                    return Err(StoreError::Tampered { location });
                };
                let (body, mac) = bytes.split_at(body_len);
                let expected = super::aead::hmac_sm3(&mac_key[..], body);
                if !crate::crypto::ct_eq(&expected, mac) {
                    return Err(StoreError::Tampered { location });
                }
                let image = StoreImage::from_slice(body)
                    .map_err(|error| StoreError::Corrupt { location, error })?;
                (image.0, false)
            }
        };
        Ok(ProtectedReplayStore {
            storage,
            mac_key,
            mem,
            fresh,
        })
    }

    /// Replaces the store's content with `entries` (the recovery procedure: rebuilt
    /// from the journal) and persists it.
    pub fn rebuild(
        &mut self,
        entries: impl IntoIterator<Item = (ReplayKey, ReplayEntry)>,
    ) -> Result<(), StoreError> {
        self.mem = MemoryReplayStore::new();
        for (k, e) in entries {
            self.mem.map.insert(k, e);
        }
        self.persist()
    }

    /// True when nothing was stored before this open.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Where the store lives.
    pub fn location(&self) -> String {
        self.storage.location()
    }

    /// Every stream's last accepted entry.
    pub fn entries(&self) -> impl Iterator<Item = (&ReplayKey, &ReplayEntry)> {
        self.mem.entries()
    }

    fn persist(&mut self) -> Result<(), StoreError> {
        let mut bytes: Vec<u8> = StoreImage(self.mem.clone()).to_vec();
        let mac = super::aead::hmac_sm3(&self.mac_key[..], &bytes);
        bytes.extend_from_slice(&mac);
        self.storage.store(&bytes)?;
        self.fresh = false;
        Ok(())
    }
}

impl<S: RecordStorage> ReplayStore for ProtectedReplayStore<S> {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        self.mem.last(key)
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        // Keep the newer entry in memory even if persisting fails: the reader stays
        // protected for this run, and the caller sees the error.
        self.mem.record(key, entry)?;
        self.persist()
    }
    fn latest_issued(&self) -> Result<u64, StoreError> {
        self.mem.latest_issued()
    }
}

/// The replay store of a desktop reader: a protected store in one file.
#[cfg(feature = "std")]
pub type FileReplayStore = ProtectedReplayStore<crate::storage::FileRecord>;

#[cfg(feature = "std")]
impl FileReplayStore {
    /// Opens (or starts) the protected store in the file at `path`.
    pub fn open_file(
        path: impl AsRef<std::path::Path>,
        reader_key: &Sm2PrivateKey,
    ) -> Result<Self, StoreError> {
        Self::open(crate::storage::FileRecord::new(path), reader_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sm2::test_rng::TestRng;
    use crate::storage::MemoryRecord;

    fn entry(seq: u64, d: u8) -> ReplayEntry {
        ReplayEntry {
            seq,
            digest: [d; 32],
            issued: seq * 10,
        }
    }

    #[test]
    fn rule() {
        let d = [1u8; 32];
        let e = Some(entry(5, 1));
        assert_eq!(accept(ScriptKind::Data, None, 0, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Data, e, 6, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Data, e, 5, &d), Err(5));
        assert_eq!(accept(ScriptKind::Data, e, 4, &d), Err(5));
        assert_eq!(accept(ScriptKind::Command, e, 5, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Command, e, 5, &[2; 32]), Err(5));
        assert_eq!(accept(ScriptKind::Command, e, 4, &d), Err(5));
        assert_eq!(accept(ScriptKind::Query, e, 5, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Query, e, 5, &[2; 32]), Err(5));
    }

    #[test]
    fn protected_store_survives_reopen_and_detects_edits() {
        let key = Sm2PrivateKey::generate(&mut TestRng(1));
        let mut record = MemoryRecord::default();
        let k1 = ReplayKey::new(731, ScriptKind::Data, "reader 1");
        let k2 = ReplayKey::new(731, ScriptKind::Command, "reader 1");
        {
            let mut s = ProtectedReplayStore::open(&mut record, &key).unwrap();
            assert!(s.is_fresh());
            s.record(&k1, entry(9, 3)).unwrap();
            s.record(&k2, entry(2, 4)).unwrap();
        }
        let s = ProtectedReplayStore::open(&mut record, &key).unwrap();
        assert!(!s.is_fresh());
        assert_eq!(s.last(&k1).unwrap(), Some(entry(9, 3)));
        assert_eq!(s.last(&k2).unwrap(), Some(entry(2, 4)));
        assert_eq!(s.latest_issued().unwrap(), 90);

        // The attacker lowers seq 9 to 1 in the stored bytes: refused.
        let good = record.bytes.clone().unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let mut r = MemoryRecord { bytes: Some(bad) };
            assert!(
                matches!(
                    ProtectedReplayStore::open(&mut r, &key),
                    Err(StoreError::Tampered { .. })
                ),
                "flip at byte {i} not detected"
            );
        }
        // Truncated to nothing, or another reader's key: refused too.
        let mut r = MemoryRecord {
            bytes: Some(good[..10].to_vec()),
        };
        assert!(matches!(
            ProtectedReplayStore::open(&mut r, &key),
            Err(StoreError::Tampered { .. })
        ));
        let other = Sm2PrivateKey::generate(&mut TestRng(2));
        let mut r = MemoryRecord { bytes: Some(good) };
        assert!(matches!(
            ProtectedReplayStore::open(&mut r, &other),
            Err(StoreError::Tampered { .. })
        ));
    }

    #[cfg(feature = "std")]
    #[test]
    fn file_store_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("cardvm-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("replay.db");
        let _ = std::fs::remove_file(&path);
        let key = Sm2PrivateKey::generate(&mut TestRng(3));
        let k1 = ReplayKey::new(731, ScriptKind::Data, "reader 1");
        {
            let mut s = FileReplayStore::open_file(&path, &key).unwrap();
            s.record(&k1, entry(9, 3)).unwrap();
        }
        let s = FileReplayStore::open_file(&path, &key).unwrap();
        assert_eq!(s.last(&k1).unwrap(), Some(entry(9, 3)));
        std::fs::write(&path, b"731 2 zz 1 00\n").unwrap();
        assert!(matches!(
            FileReplayStore::open_file(&path, &key),
            Err(StoreError::Tampered { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
