//! The APDU transcript digest that receipts carry.
//!
//! SM3 over every exchange in order: for a command `0x01 ‖ len(4, BE) ‖ bytes`, for a
//! response `0x02 ‖ len(4, BE) ‖ data ‖ SW1 SW2`. Commands that carried key bytes
//! (`ldrkey`) are hashed with the key replaced by zeros.

use crate::crypto::Sm3Hasher;

/// Incremental transcript digest.
#[derive(Clone)]
pub struct TranscriptHasher {
    h: Sm3Hasher,
}

impl core::fmt::Debug for TranscriptHasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TranscriptHasher")
    }
}

impl Default for TranscriptHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TranscriptHasher {
    /// An empty transcript.
    pub fn new() -> Self {
        TranscriptHasher {
            h: Sm3Hasher::new(),
        }
    }

    /// Adds a command APDU.
    pub fn command(&mut self, apdu: &[u8]) {
        self.h.update(&[0x01]);
        self.h.update(&(apdu.len() as u32).to_be_bytes());
        self.h.update(apdu);
    }

    /// Adds a response (data and status word).
    pub fn response(&mut self, data: &[u8], sw: u16) {
        self.h.update(&[0x02]);
        self.h.update(&(data.len() as u32 + 2).to_be_bytes());
        self.h.update(data);
        self.h.update(&sw.to_be_bytes());
    }

    /// The digest.
    pub fn finalize(self) -> [u8; 32] {
        self.h.finalize()
    }
}
