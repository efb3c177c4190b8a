//! Cryptography: DES/3DES and SM4 block ciphers, PBOC MAC, process keys, key
//! diversification, SM3 and SM2.

#[cfg(feature = "std")]
pub mod rng;
pub mod sm2;

/// SM3 digest of `data` (GB/T 32905).
pub fn sm3(data: &[u8]) -> [u8; 32] {
    use sm3::Digest;
    sm3::Sm3::digest(data).into()
}
