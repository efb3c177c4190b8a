//! The APDU transcript digest that receipts carry.
//!
//! SM3 over every exchange in order: for a command `0x01 ‖ len(4, BE) ‖ bytes`, for a
//! response `0x02 ‖ len(4, BE) ‖ data ‖ SW1 SW2`. Commands that carried key bytes
//! (`ldrkey`) are hashed with the key replaced by zeros.
//!
//! An exchange with SAM slot `n` is tagged with its slot: `0x03 ‖ n ‖ len(4, BE) ‖ bytes`
//! for the command, `0x04 ‖ n ‖ len(4, BE) ‖ data ‖ SW1 SW2` for the response. Card
//! exchanges keep the tags above, so a card-only run hashes exactly as before SAMs
//! existed, and no SAM exchange can be passed off as a card one.

use crate::crypto::Sm3Hasher;
use crate::transport::Slot;

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

    /// Adds a command APDU sent to `slot`.
    pub fn command_on(&mut self, slot: Slot, apdu: &[u8]) {
        match slot {
            Slot::Card => self.command(apdu),
            Slot::Sam(n) => {
                self.h.update(&[0x03, n]);
                self.h.update(&(apdu.len() as u32).to_be_bytes());
                self.h.update(apdu);
            }
            Slot::Host => {
                self.h.update(&[0x05]);
                self.h.update(&(apdu.len() as u32).to_be_bytes());
                self.h.update(apdu);
            }
        }
    }

    /// Adds a response from `slot`.
    pub fn response_on(&mut self, slot: Slot, data: &[u8], sw: u16) {
        match slot {
            Slot::Card => self.response(data, sw),
            Slot::Sam(n) => {
                self.h.update(&[0x04, n]);
                self.h.update(&(data.len() as u32 + 2).to_be_bytes());
                self.h.update(data);
                self.h.update(&sw.to_be_bytes());
            }
            Slot::Host => {
                self.h.update(&[0x06]);
                self.h.update(&(data.len() as u32 + 2).to_be_bytes());
                self.h.update(data);
                self.h.update(&sw.to_be_bytes());
            }
        }
    }

    /// The digest.
    pub fn finalize(self) -> [u8; 32] {
        self.h.finalize()
    }
}
