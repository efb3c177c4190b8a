//! PBOC CBC-MAC: ISO 9797-1 padding method 2, zero IV, streamed over the input without heap
//! allocation.

use zeroize::Zeroize;

use super::block::{dec8, des_cipher, enc8, enc16, sm4_cipher};
use super::error::CryptoError;
use super::key::{KeyAlg, SecretKey};

/// The full last block of a CBC-MAC (8 bytes for DES/3DES, 16 for SM4).
///
/// No `PartialEq`: compare MACs with [`MacBlock::ct_eq`] or [`crate::crypto::ct_eq`].
#[derive(Debug, Clone, Copy)]
pub struct MacBlock {
    bytes: [u8; 16],
    len: u8,
}

impl MacBlock {
    fn from_block<const N: usize>(block: &[u8; N]) -> Self {
        let mut bytes = [0u8; 16];
        let n = N.min(16);
        bytes[..n].copy_from_slice(&block[..n]);
        MacBlock {
            bytes,
            len: n as u8,
        }
    }

    /// The MAC block (8 or 16 bytes).
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The leftmost 4 bytes: the PBOC MAC / TAC value.
    pub fn first4(&self) -> [u8; 4] {
        [self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]]
    }

    /// Constant-time comparison of the whole block with `other`.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        super::ct_eq(self.as_slice(), other)
    }
}

/// CBC chaining with zero IV over `data` padded (on the fly) with ISO 9797-1 method 2; `enc`
/// encrypts one block in place. Returns the last chaining value.
#[inline]
fn cbc_chain<const N: usize>(data: &[u8], mut enc: impl FnMut(&mut [u8; N])) -> [u8; N] {
    let mut state = [0u8; N];
    let mut chunks = data.chunks_exact(N);
    for chunk in &mut chunks {
        for (s, d) in state.iter_mut().zip(chunk) {
            *s ^= d;
        }
        enc(&mut state);
    }
    // Final block: the tail (< N bytes) followed by 80 00 .. 00.
    let tail = chunks.remainder();
    for (s, d) in state.iter_mut().zip(tail) {
        *s ^= d;
    }
    if let Some(s) = state.get_mut(tail.len()) {
        *s ^= 0x80;
    }
    enc(&mut state);
    state
}

/// CBC-MAC of `data` under `key` with ISO 9797-1 padding method 2 and a zero IV, returning the
/// full last block.
///
/// - [`KeyAlg::Des`]: single-DES CBC-MAC (ISO 9797-1 MAC algorithm 1), the PBOC MAC.
/// - [`KeyAlg::Des3`]: ISO 9797-1 MAC algorithm 3 ("retail MAC"): single-DES CBC under the left
///   half K1 over all blocks, then the last value is decrypted under K2 and encrypted under K1.
/// - [`KeyAlg::Sm4`]: SM4 CBC-MAC (16-byte block).
/// - [`KeyAlg::M1`] keys are refused with [`CryptoError::NotABlockCipher`].
///
/// Does not allocate.
pub fn cbc_mac_full(key: &SecretKey, data: &[u8]) -> Result<MacBlock, CryptoError> {
    match key.alg() {
        KeyAlg::Des => {
            let c = des_cipher(KeyAlg::Des, key.expose())?;
            let mac = cbc_chain::<8>(data, |b| enc8(&c, b));
            Ok(MacBlock::from_block(&mac))
        }
        KeyAlg::Des3 => {
            let (k1, k2) = key.expose().split_at(8);
            let c1 = des_cipher(KeyAlg::Des3, k1)?;
            let c2 = des_cipher(KeyAlg::Des3, k2)?;
            let mut mac = cbc_chain::<8>(data, |b| enc8(&c1, b));
            dec8(&c2, &mut mac);
            enc8(&c1, &mut mac);
            Ok(MacBlock::from_block(&mac))
        }
        KeyAlg::Sm4 => {
            let c = sm4_cipher(key)?;
            let mac = cbc_chain::<16>(data, |b| enc16(&c, b));
            Ok(MacBlock::from_block(&mac))
        }
        KeyAlg::M1 => Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    }
}

/// PBOC MAC / TAC: the leftmost 4 bytes of [`cbc_mac_full`]. Does not allocate.
pub fn pboc_mac(key: &SecretKey, data: &[u8]) -> Result<[u8; 4], CryptoError> {
    let mut full = cbc_mac_full(key, data)?;
    let mac = full.first4();
    full.bytes.zeroize();
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::block::pad_iso9797_m2;
    use crate::crypto::block::tests::{h, key};
    use crate::crypto::key::KeyUsage;
    use alloc::vec::Vec;
    use des::Des;
    use des::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
    use proptest::prelude::*;
    use sm4::Sm4;

    /// Naive, allocating reference: pad into a Vec, then CBC block by block with the cipher
    /// crates directly; Des3 follows ISO 9797-1 MAC algorithm 3 step by step.
    fn naive_mac(k: &SecretKey, data: &[u8]) -> Vec<u8> {
        let bytes = k.expose().to_vec();
        let bl = k.alg().block_len().unwrap();
        let mut padded = Vec::new();
        pad_iso9797_m2(data, bl, &mut padded);
        let blocks: Vec<&[u8]> = padded.chunks(bl).collect();
        let mut h = alloc::vec![0u8; bl];
        match k.alg() {
            KeyAlg::Des | KeyAlg::Des3 => {
                let k1 = Des::new_from_slice(&bytes[..8]).unwrap();
                for blk in &blocks {
                    let x: Vec<u8> = h.iter().zip(blk.iter()).map(|(a, b)| a ^ b).collect();
                    let mut a = Array::try_from(&x[..]).unwrap();
                    k1.encrypt_block(&mut a);
                    h = a.to_vec();
                }
                if k.alg() == KeyAlg::Des3 {
                    // Output transformation 3: G = e_K1(d_K2(H_q)).
                    let k2 = Des::new_from_slice(&bytes[8..16]).unwrap();
                    let mut a = Array::try_from(&h[..]).unwrap();
                    k2.decrypt_block(&mut a);
                    k1.encrypt_block(&mut a);
                    h = a.to_vec();
                }
            }
            KeyAlg::Sm4 => {
                let c = Sm4::new_from_slice(&bytes).unwrap();
                for blk in &blocks {
                    let x: Vec<u8> = h.iter().zip(blk.iter()).map(|(a, b)| a ^ b).collect();
                    let mut a = Array::try_from(&x[..]).unwrap();
                    c.encrypt_block(&mut a);
                    h = a.to_vec();
                }
            }
            KeyAlg::M1 => unreachable!(),
        }
        h
    }

    #[test]
    fn pboc_load_mac1_vector() {
        // epurse.md published load example: MAC1 under SESLK.
        let seslk = key(KeyAlg::Des, "03015BEA347EA231");
        let data = h("00000000 00001234 02 000000000001");
        assert_eq!(pboc_mac(&seslk, &data).unwrap().to_vec(), h("6C394D64"));
        let full = cbc_mac_full(&seslk, &data).unwrap();
        assert_eq!(full.as_slice().len(), 8);
        assert_eq!(&full.as_slice()[..4], &h("6C394D64")[..]);
        assert!(!full.ct_eq(&h("6C394D64")));
        assert!(full.ct_eq(full.as_slice()));
    }

    #[test]
    fn sm4_cbc_mac_full_vector() {
        // epurse.md SM4 profile cross-check.
        let k = key(KeyAlg::Sm4, "11223344556677888877665544332211");
        let data = h("00000000 00001000 01 001122334455");
        let full = cbc_mac_full(&k, &data).unwrap();
        assert_eq!(
            full.as_slice().to_vec(),
            h("0F68799134353A1714BD68FCC6F197BD")
        );
        assert_eq!(pboc_mac(&k, &data).unwrap().to_vec(), h("0F687991"));
    }

    #[test]
    fn retail_mac_matches_definition() {
        // No published vector in epurse.md: check against ISO 9797-1 MAC algorithm 3 computed
        // step by step with the des crate, for lengths around the block boundaries.
        let k = key(KeyAlg::Des3, "0123456789ABCDEFFEDCBA9876543210");
        let data: Vec<u8> = (0u8..40).collect();
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 40] {
            let got = cbc_mac_full(&k, &data[..n]).unwrap();
            assert_eq!(got.as_slice(), &naive_mac(&k, &data[..n])[..], "len {n}");
        }
        // It is not plain 3DES-CBC nor single-DES CBC under K1.
        let d = key(KeyAlg::Des, "0123456789ABCDEF");
        assert_ne!(
            cbc_mac_full(&k, &data).unwrap().as_slice(),
            cbc_mac_full(&d, &data).unwrap().as_slice()
        );
        // With K1 == K2 the output transformation cancels and it equals single-DES CBC-MAC.
        let kk = key(KeyAlg::Des3, "0123456789ABCDEF0123456789ABCDEF");
        assert_eq!(
            cbc_mac_full(&kk, &data).unwrap().as_slice(),
            cbc_mac_full(&d, &data).unwrap().as_slice()
        );
    }

    #[test]
    fn retail_mac_external_vector() {
        // Computed independently with Python `cryptography` (TripleDES-ECB with 8-byte keys as
        // single DES), ISO 9797-1 MAC algorithm 3, padding method 2.
        let k = key(KeyAlg::Des3, "0123456789ABCDEFFEDCBA9876543210");
        let data = b"Now is the time for all ";
        assert_eq!(
            cbc_mac_full(&k, data).unwrap().as_slice().to_vec(),
            h(RETAIL_VECTOR)
        );
    }

    const RETAIL_VECTOR: &str = "E9086230CA3BE796";

    #[test]
    fn mac_errors() {
        let m = key(KeyAlg::M1, "A0A1A2A3A4A5");
        assert_eq!(
            cbc_mac_full(&m, b"x").unwrap_err(),
            CryptoError::NotABlockCipher(KeyAlg::M1)
        );
        assert_eq!(
            pboc_mac(&m, b"").unwrap_err(),
            CryptoError::NotABlockCipher(KeyAlg::M1)
        );
    }

    fn any_block_key() -> impl Strategy<Value = SecretKey> {
        (
            prop_oneof![Just(KeyAlg::Des), Just(KeyAlg::Des3), Just(KeyAlg::Sm4)],
            proptest::array::uniform16(any::<u8>()),
        )
            .prop_map(|(alg, b)| SecretKey::new(alg, KeyUsage::Mac, &b[..alg.key_len()]).unwrap())
    }

    proptest! {
        #[test]
        fn pboc_mac_matches_naive(k in any_block_key(), data in proptest::collection::vec(any::<u8>(), 0..70)) {
            let want = naive_mac(&k, &data);
            let full = cbc_mac_full(&k, &data).unwrap();
            prop_assert_eq!(full.as_slice(), &want[..]);
            prop_assert_eq!(&pboc_mac(&k, &data).unwrap()[..], &want[..4]);
        }
    }
}
