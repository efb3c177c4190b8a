//! The opened-command-script cache.
//!
//! A reader runs the same command script (per city, script id and version) for
//! thousands of transactions; only the data script changes. [`OpenCache`] keeps
//! the opened payload of command scripts keyed by `(city, script id, version, SM3 of
//! the whole sealed blob)`. A blob whose digest matches an entry is byte-for-byte the
//! blob that was fully opened before (signature verified, key unwrapped, tag
//! checked, replay-checked), so re-opening it costs one SM3 and **no asymmetric
//! operation**; only its expiry and reader id are checked again. Data scripts are
//! never cached (they hold keys and are single-use), so a transaction costs one
//! SM2 verify + one SM2 decrypt (for its data script) once the command script is
//! cached.

use alloc::collections::VecDeque;

use zeroize::Zeroizing;

use super::EnvelopeHeader;
use alloc::vec::Vec;

/// Cache key: `(city, script id, script version, SM3 of the sealed blob)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// City / issuer id.
    pub city: u32,
    /// Script id.
    pub script_id: u32,
    /// Script version.
    pub script_version: u16,
    /// SM3 of the whole sealed blob.
    pub digest: [u8; 32],
}

struct Entry {
    key: CacheKey,
    header: EnvelopeHeader,
    payload: Zeroizing<Vec<u8>>,
}

/// A small FIFO cache of opened command scripts (see the module docs).
pub struct OpenCache {
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl core::fmt::Debug for OpenCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for OpenCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl OpenCache {
    /// Default number of command scripts kept.
    pub const DEFAULT_CAPACITY: usize = 16;

    /// A cache holding at most `capacity` scripts (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        OpenCache {
            entries: VecDeque::new(),
            capacity,
        }
    }

    /// Number of cached scripts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry (their payloads are zeroized).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The cached header and payload for `key`.
    pub fn get(&self, key: &CacheKey) -> Option<(&EnvelopeHeader, &[u8])> {
        self.entries
            .iter()
            .find(|e| e.key == *key)
            .map(|e| (&e.header, e.payload.as_slice()))
    }

    /// Inserts an opened script, evicting the oldest when full. An older version of
    /// the same (city, script id) is replaced.
    pub fn insert(&mut self, key: CacheKey, header: EnvelopeHeader, payload: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        self.entries
            .retain(|e| !(e.key.city == key.city && e.key.script_id == key.script_id));
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            key,
            header,
            payload: Zeroizing::new(payload.to_vec()),
        });
    }
}
