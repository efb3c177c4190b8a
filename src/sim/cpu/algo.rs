//! The purse algorithm profiles `des3` (PBOC 2.0) and `sm4` (this project's definition),
//! as in `reference/epurse.md` §"Cryptography". Everything algorithm-specific of the
//! simulated CPU card goes through here.

use crate::crypto;
use crypto::{KeyAlg, KeyUsage, SecretKey};

use crate::sim::SimError;

/// An algorithm profile of the purse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// DES/3DES (PBOC 2.0): 16-byte 3DES keys, single-DES CBC-MAC under 8-byte process keys.
    Des3,
    /// SM4: 16-byte keys, SM4 CBC-MAC, 16-byte process keys, TAC key = DTK.
    Sm4,
}

impl Algorithm {
    /// The name used in CARD.toml (`des3` / `sm4`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Des3 => "des3",
            Algorithm::Sm4 => "sm4",
        }
    }

    /// Parses `des3` / `sm4`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "des3" => Some(Algorithm::Des3),
            "sm4" => Some(Algorithm::Sm4),
            _ => None,
        }
    }

    /// algId returned by INITIALIZE (epurse.md: "00 = 3DES (this project uses 04 for SM4)").
    pub fn alg_id(self) -> u8 {
        match self {
            Algorithm::Des3 => 0x00,
            Algorithm::Sm4 => 0x04,
        }
    }

    /// The crypto API's algorithm of the card's (16-byte) keys.
    pub fn key_alg(self) -> KeyAlg {
        match self {
            Algorithm::Des3 => KeyAlg::Des3,
            Algorithm::Sm4 => KeyAlg::Sm4,
        }
    }

    /// A card key of this profile from its bytes.
    pub fn key(self, usage: KeyUsage, bytes: &[u8]) -> Result<SecretKey, SimError> {
        SecretKey::new(self.key_alg(), usage, bytes)
            .map_err(|_| SimError::Field("keys", "a key must be 16 bytes"))
    }

    /// Diversifies a master key for a card: F = rightmost 8 bytes of the application
    /// serial; 3DES: DK = 3DES(MK, F) ‖ 3DES(MK, NOT F); SM4: DK = SM4(MK, F ‖ NOT F). The
    /// card key's usage follows the master's (`load-master` gives `load`, …).
    pub fn diversify(self, mk: &SecretKey, serial: &[u8]) -> Result<SecretKey, SimError> {
        let f =
            rightmost8(serial).ok_or(SimError::Field("card_number", "must be 8 or 10 bytes"))?;
        crypto::diversify(mk, &f).map_err(|_| SimError::Crypto("diversification"))
    }

    /// Process (session) key: 3DES-ECB / SM4-ECB of the 8 input bytes under DLK or DPK.
    pub(crate) fn process_key(self, key: &SecretKey, input: &[u8; 8]) -> Option<SecretKey> {
        crypto::process_key(key, input).ok()
    }

    /// TAC key: DTK_L XOR DTK_R (3DES) or DTK itself (SM4).
    pub(crate) fn tac_key(self, dtk: &SecretKey) -> Option<SecretKey> {
        crypto::tac_key(dtk).ok()
    }
}

/// PBOC MAC (ISO 9797-1 method 2 padding, zero IV, CBC, leftmost 4 bytes).
pub(crate) fn mac(key: &SecretKey, data: &[u8]) -> Option<[u8; 4]> {
    crypto::pboc_mac(key, data).ok()
}

/// Constant-time comparison of MACs.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    crypto::ct_eq(a, b)
}

/// The rightmost 8 bytes of an application serial of 8 or 10 bytes.
pub(crate) fn rightmost8(serial: &[u8]) -> Option<[u8; 8]> {
    if serial.len() != 8 && serial.len() != 10 {
        return None;
    }
    let mut f = [0u8; 8];
    f.copy_from_slice(&serial[serial.len() - 8..]);
    Some(f)
}
