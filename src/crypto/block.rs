//! Raw block-cipher operations: ISO 9797-1 method 2 padding and ECB over DES, 3DES (2-key EDE)
//! and SM4, plus the crate-internal cipher constructors the MAC and purse code share.

use alloc::vec::Vec;

use des::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use des::{Des, TdesEde2};
use sm4::Sm4;

use super::error::CryptoError;
use super::key::{KeyAlg, KeyUsage, SecretKey};

/// Append `data` to `out` padded with ISO/IEC 9797-1 padding method 2: one `80` byte, then `00`
/// bytes up to a multiple of `block`. Padding is always added (an aligned input gains a whole
/// block). A `block` of 0 is treated as 1.
pub fn pad_iso9797_m2(data: &[u8], block: usize, out: &mut Vec<u8>) {
    let block = block.max(1);
    let zeros = block - 1 - data.len() % block;
    out.reserve(data.len() + 1 + zeros);
    out.extend_from_slice(data);
    out.push(0x80);
    out.resize(out.len() + zeros, 0);
}

/// Single DES keyed by 8 bytes.
pub(crate) fn des_cipher(alg: KeyAlg, key: &[u8]) -> Result<Des, CryptoError> {
    Des::new_from_slice(key).map_err(|_| CryptoError::WrongKeyLength {
        alg,
        len: key.len(),
    })
}

/// Two-key triple DES (EDE) keyed by 16 bytes.
pub(crate) fn tdes_cipher(key: &SecretKey) -> Result<TdesEde2, CryptoError> {
    TdesEde2::new_from_slice(key.expose()).map_err(|_| CryptoError::WrongKeyLength {
        alg: key.alg(),
        len: key.len(),
    })
}

/// SM4 keyed by 16 bytes.
pub(crate) fn sm4_cipher(key: &SecretKey) -> Result<Sm4, CryptoError> {
    Sm4::new_from_slice(key.expose()).map_err(|_| CryptoError::WrongKeyLength {
        alg: key.alg(),
        len: key.len(),
    })
}

/// Encrypt one 8-byte block in place.
#[inline]
pub(crate) fn enc8<C: BlockCipherEncrypt<BlockSize = des::cipher::consts::U8>>(
    c: &C,
    b: &mut [u8; 8],
) {
    c.encrypt_block(b.into());
}

/// Decrypt one 8-byte block in place.
#[inline]
pub(crate) fn dec8<C: BlockCipherDecrypt<BlockSize = des::cipher::consts::U8>>(
    c: &C,
    b: &mut [u8; 8],
) {
    c.decrypt_block(b.into());
}

/// Encrypt one 16-byte block in place.
#[inline]
pub(crate) fn enc16<C: BlockCipherEncrypt<BlockSize = des::cipher::consts::U16>>(
    c: &C,
    b: &mut [u8; 16],
) {
    c.encrypt_block(b.into());
}

/// Decrypt one 16-byte block in place.
#[inline]
pub(crate) fn dec16<C: BlockCipherDecrypt<BlockSize = des::cipher::consts::U16>>(
    c: &C,
    b: &mut [u8; 16],
) {
    c.decrypt_block(b.into());
}

/// Apply `f` to each `N`-byte block of `data` (length already checked to be a multiple of `N`)
/// and append the results to `out`.
fn ecb_blocks<const N: usize>(data: &[u8], out: &mut Vec<u8>, mut f: impl FnMut(&mut [u8; N])) {
    out.reserve(data.len());
    let mut buf = [0u8; N];
    for chunk in data.chunks_exact(N) {
        buf.copy_from_slice(chunk);
        f(&mut buf);
        out.extend_from_slice(&buf);
    }
    zeroize::Zeroize::zeroize(&mut buf);
}

/// Check that `key` is an `enc` block-cipher key and `data` is a whole number of its blocks.
fn check_ecb(key: &SecretKey, data: &[u8], op: &'static str) -> Result<(), CryptoError> {
    // Diversification and process keys are ECB encryptions: ECB under any derivation source
    // would hand its derived keys out in clear.
    if key.usage() != KeyUsage::Encrypt {
        return Err(CryptoError::WrongUsage {
            op,
            usage: key.usage(),
        });
    }
    let block = key
        .alg()
        .block_len()
        .ok_or(CryptoError::NotABlockCipher(key.alg()))?;
    if !data.len().is_multiple_of(block) {
        return Err(CryptoError::NotBlockAligned {
            len: data.len(),
            block,
        });
    }
    Ok(())
}

/// ECB-encrypt `data` (a multiple of the block size; may be empty) under `key` and append the
/// ciphertext to `out`. DES, 2-key 3DES (EDE) or SM4 by the key's algorithm; an M1 key is
/// [`CryptoError::NotABlockCipher`]. Only a [`KeyUsage::Encrypt`] key is accepted
/// ([`CryptoError::WrongUsage`] otherwise).
pub fn ecb_encrypt(key: &SecretKey, data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    check_ecb(key, data, "ecb_encrypt")?;
    match key.alg() {
        KeyAlg::Des => {
            let c = des_cipher(KeyAlg::Des, key.expose())?;
            ecb_blocks::<8>(data, out, |b| enc8(&c, b));
        }
        KeyAlg::Des3 => {
            let c = tdes_cipher(key)?;
            ecb_blocks::<8>(data, out, |b| enc8(&c, b));
        }
        KeyAlg::Sm4 => {
            let c = sm4_cipher(key)?;
            ecb_blocks::<16>(data, out, |b| enc16(&c, b));
        }
        KeyAlg::M1 => return Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    }
    Ok(())
}

/// ECB-decrypt `data` (a multiple of the block size; may be empty) under `key` and append the
/// plaintext to `out`. Same algorithms and errors as [`ecb_encrypt`].
pub fn ecb_decrypt(key: &SecretKey, data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    check_ecb(key, data, "ecb_decrypt")?;
    match key.alg() {
        KeyAlg::Des => {
            let c = des_cipher(KeyAlg::Des, key.expose())?;
            ecb_blocks::<8>(data, out, |b| dec8(&c, b));
        }
        KeyAlg::Des3 => {
            let c = tdes_cipher(key)?;
            ecb_blocks::<8>(data, out, |b| dec8(&c, b));
        }
        KeyAlg::Sm4 => {
            let c = sm4_cipher(key)?;
            ecb_blocks::<16>(data, out, |b| dec16(&c, b));
        }
        KeyAlg::M1 => return Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::key::KeyUsage;
    use alloc::vec;
    use proptest::prelude::*;

    /// Hex decoder for test vectors.
    pub(crate) fn h(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// An `enc` key (what ECB accepts).
    pub(crate) fn key(alg: KeyAlg, hex: &str) -> SecretKey {
        key_as(alg, KeyUsage::Encrypt, hex)
    }

    /// A key of `usage`.
    pub(crate) fn key_as(alg: KeyAlg, usage: KeyUsage, hex: &str) -> SecretKey {
        SecretKey::new(alg, usage, &h(hex)).unwrap()
    }

    #[test]
    fn pad_edge_cases() {
        let mut out = Vec::new();
        pad_iso9797_m2(&[], 8, &mut out);
        assert_eq!(out, h("8000000000000000"));

        out.clear();
        pad_iso9797_m2(&[1; 8], 8, &mut out);
        assert_eq!(out, h("0101010101010101 8000000000000000"));

        out.clear();
        pad_iso9797_m2(&[1; 7], 8, &mut out);
        assert_eq!(out, h("0101010101010180"));

        out.clear();
        pad_iso9797_m2(&[2; 16], 16, &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out[16], 0x80);
        assert!(out[17..].iter().all(|&b| b == 0));

        out.clear();
        pad_iso9797_m2(&[3; 9], 16, &mut out);
        assert_eq!(out.len(), 16);
        assert_eq!(&out[..10], &h("03030303030303030380")[..]);

        // Appends, does not overwrite.
        let mut out = vec![0xAA];
        pad_iso9797_m2(&[0x11], 4, &mut out);
        assert_eq!(out, h("AA 11800000"));

        // Degenerate block size does not panic.
        let mut out = Vec::new();
        pad_iso9797_m2(&[5], 0, &mut out);
        assert_eq!(out, h("0580"));
    }

    #[test]
    fn sm4_single_block_vector() {
        // epurse.md, national-algorithm vectors (GB/T 32907).
        let k = key(KeyAlg::Sm4, "0123456789ABCDEFFEDCBA9876543210");
        let mut out = Vec::new();
        ecb_encrypt(&k, &h("0123456789ABCDEFFEDCBA9876543210"), &mut out).unwrap();
        assert_eq!(out, h("681EDF34D206965E86B3E94F536E4246"));
        let mut back = Vec::new();
        ecb_decrypt(&k, &out, &mut back).unwrap();
        assert_eq!(back, h("0123456789ABCDEFFEDCBA9876543210"));
    }

    /// About 0.35 s in the test profile (opt-level 1; dependencies opt-level 2), so not ignored.
    #[test]
    fn sm4_million_iterations_vector() {
        let k = key(KeyAlg::Sm4, "0123456789ABCDEFFEDCBA9876543210");
        let c = sm4_cipher(&k).unwrap();
        let mut b: [u8; 16] = h("0123456789ABCDEFFEDCBA9876543210").try_into().unwrap();
        for _ in 0..1_000_000 {
            enc16(&c, &mut b);
        }
        assert_eq!(b.to_vec(), h("595298C7C6FD271F0402F804C33D3F66"));
    }

    #[test]
    fn des3_two_key_is_ede() {
        // 3DES-EDE2 with K1 == K2 degenerates to single DES under K1.
        let k1 = "0123456789ABCDEF";
        let d = key(KeyAlg::Des, k1);
        let t = key(KeyAlg::Des3, &alloc::format!("{k1}{k1}"));
        let data = h("4E6F772069732074 68652074696D6520");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ecb_encrypt(&d, &data, &mut a).unwrap();
        ecb_encrypt(&t, &data, &mut b).unwrap();
        assert_eq!(a, b);
        // FIPS 81 / classic DES example: "Now is t" under 0123456789ABCDEF.
        assert_eq!(&a[..8], &h("3FA40E8A984D4815")[..]);
    }

    #[test]
    fn ecb_errors() {
        let mut out = Vec::new();
        let d = key(KeyAlg::Des, "0123456789ABCDEF");
        assert_eq!(
            ecb_encrypt(&d, &[0; 7], &mut out),
            Err(CryptoError::NotBlockAligned { len: 7, block: 8 })
        );
        let s = key(KeyAlg::Sm4, "0123456789ABCDEFFEDCBA9876543210");
        assert_eq!(
            ecb_decrypt(&s, &[0; 8], &mut out),
            Err(CryptoError::NotBlockAligned { len: 8, block: 16 })
        );
        let m = key(KeyAlg::M1, "FFFFFFFFFFFF");
        assert_eq!(
            ecb_encrypt(&m, &[0; 8], &mut out),
            Err(CryptoError::NotABlockCipher(KeyAlg::M1))
        );
        assert_eq!(
            ecb_decrypt(&m, &[], &mut out),
            Err(CryptoError::NotABlockCipher(KeyAlg::M1))
        );
        assert!(out.is_empty());
        // Empty data is aligned and produces nothing.
        ecb_encrypt(&s, &[], &mut out).unwrap();
        assert!(out.is_empty());
        let msg = alloc::format!("{}", CryptoError::NotBlockAligned { len: 7, block: 8 });
        assert!(msg.contains('7') && msg.contains('8'), "{msg}");
    }

    #[test]
    fn ecb_refuses_every_key_that_is_not_an_enc_key() {
        // ECB under a master or purse key computes its derived keys: the key oracle.
        for usage in KeyUsage::ALL {
            let k = key_as(KeyAlg::Des3, usage, "0123456789ABCDEFFEDCBA9876543210");
            let mut out = Vec::new();
            let enc = ecb_encrypt(&k, &[0x41; 8], &mut out);
            let dec = ecb_decrypt(&k, &[0x41; 8], &mut out);
            if usage == KeyUsage::Encrypt {
                assert!(enc.is_ok() && dec.is_ok());
                assert_eq!(out.len(), 16);
            } else {
                assert_eq!(
                    enc,
                    Err(CryptoError::WrongUsage {
                        op: "ecb_encrypt",
                        usage
                    })
                );
                assert_eq!(
                    dec,
                    Err(CryptoError::WrongUsage {
                        op: "ecb_decrypt",
                        usage
                    })
                );
                assert!(out.is_empty(), "{usage:?}");
            }
        }
    }

    fn any_block_key() -> impl Strategy<Value = SecretKey> {
        (
            prop_oneof![Just(KeyAlg::Des), Just(KeyAlg::Des3), Just(KeyAlg::Sm4)],
            proptest::array::uniform16(any::<u8>()),
        )
            .prop_map(|(alg, b)| {
                SecretKey::new(alg, KeyUsage::Encrypt, &b[..alg.key_len()]).unwrap()
            })
    }

    proptest! {
        #[test]
        fn ecb_round_trip(k in any_block_key(), blocks in 0usize..6, fill in any::<u64>()) {
            let bl = k.alg().block_len().unwrap();
            let data: Vec<u8> = (0..blocks * bl)
                .map(|i| (fill.rotate_left(i as u32) as u8) ^ i as u8)
                .collect();
            let mut ct = vec![0xEE];
            ecb_encrypt(&k, &data, &mut ct).unwrap();
            prop_assert_eq!(ct.len(), 1 + data.len());
            prop_assert_eq!(ct[0], 0xEE);
            let mut pt = Vec::new();
            ecb_decrypt(&k, &ct[1..], &mut pt).unwrap();
            prop_assert_eq!(pt, data);
        }
    }
}
