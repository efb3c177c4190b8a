//! Cryptography: DES/3DES and SM4 block ciphers, PBOC MAC, process keys, key
//! diversification, SM3 and SM2.
//!
//! Symmetric keys are [`SecretKey`] values (algorithm, usage, zeroized bytes). The purse
//! algorithms follow `/work/shared/reference/epurse.md`: the PBOC 2.0 DES/3DES profile and this
//! project's SM4 profile. The MAC and key-derivation routines ([`cbc_mac_full`], [`pboc_mac`],
//! [`process_key`], [`tac_key`], [`diversify`]) do not allocate.

mod block;
mod error;
mod hash;
mod key;
mod mac;
mod purse;
#[cfg(feature = "std")]
pub mod rng;
pub mod sm2;

pub use block::{ecb_decrypt, ecb_encrypt, pad_iso9797_m2};
pub use error::CryptoError;
pub use hash::{Sm3Hasher, sm3};
pub use key::{Derivation, KeyAlg, KeyUsage, MAX_KEY_LEN, SecretKey};
pub use mac::{MacBlock, cbc_mac_full, pboc_mac};
pub use purse::{diversify, process_key, tac_key};

/// Constant-time equality of two byte strings (for MACs, TACs, signatures). Lengths are not
/// secret: different lengths return `false` at once.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_cases() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(&[1, 2, 3, 4], &[1, 2, 3, 4]));
        assert!(!ct_eq(&[1, 2, 3, 4], &[1, 2, 3, 5]));
        assert!(!ct_eq(&[0x80, 2, 3, 4], &[0, 2, 3, 4]));
        assert!(!ct_eq(&[1, 2, 3], &[1, 2, 3, 4]));
        assert!(!ct_eq(&[1, 2, 3, 4], &[1, 2, 3]));
        assert!(!ct_eq(&[], &[0]));
    }
}
