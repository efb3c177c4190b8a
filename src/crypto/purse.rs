//! PBOC / CJ/T 166 purse key derivations: process (session) keys, the TAC key and card-key
//! diversification, for the 3DES profile and this project's SM4 profile
//! (`/work/shared/reference/epurse.md`). None of these allocate.

use zeroize::Zeroize;

use super::block::{enc8, enc16, sm4_cipher, tdes_cipher};
use super::error::CryptoError;
use super::key::{KeyAlg, KeyUsage, SecretKey};

/// Process (session) key from a purse key (DLK or DPK) and the 8 input bytes
/// (`random(4) ‖ onlineATC(2) ‖ 8000` for load, `random(4) ‖ offlineATC(2) ‖ terminalSeq[2..4]`
/// for purchase).
///
/// - [`KeyAlg::Des3`] master: `3DES-ECB(master, input)`, an 8-byte [`KeyAlg::Des`] key.
/// - [`KeyAlg::Sm4`] master: `SM4-ECB(master, input ‖ 80 00..00)`, a 16-byte [`KeyAlg::Sm4`] key.
///
/// The result has usage [`KeyUsage::Session`]. A single-DES master is
/// [`CryptoError::UnsupportedAlg`]; an M1 key is [`CryptoError::NotABlockCipher`].
pub fn process_key(master: &SecretKey, input: &[u8; 8]) -> Result<SecretKey, CryptoError> {
    match master.alg() {
        KeyAlg::Des3 => {
            let c = tdes_cipher(master)?;
            let mut b = *input;
            enc8(&c, &mut b);
            let key = SecretKey::new(KeyAlg::Des, KeyUsage::Session, &b);
            b.zeroize();
            key
        }
        KeyAlg::Sm4 => {
            let c = sm4_cipher(master)?;
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(input);
            b[8] = 0x80;
            enc16(&c, &mut b);
            let key = SecretKey::new(KeyAlg::Sm4, KeyUsage::Session, &b);
            b.zeroize();
            key
        }
        KeyAlg::Des => Err(CryptoError::UnsupportedAlg {
            op: "process_key",
            alg: KeyAlg::Des,
        }),
        KeyAlg::M1 => Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    }
}

/// TAC key from the card's DTK: for [`KeyAlg::Des3`] `DTK[0..8] XOR DTK[8..16]` as a single
/// [`KeyAlg::Des`] key; for [`KeyAlg::Sm4`] the DTK itself. Usage [`KeyUsage::Tac`].
/// A single-DES DTK is [`CryptoError::UnsupportedAlg`]; an M1 key is
/// [`CryptoError::NotABlockCipher`].
pub fn tac_key(dtk: &SecretKey) -> Result<SecretKey, CryptoError> {
    match dtk.alg() {
        KeyAlg::Des3 => {
            let (l, r) = dtk.expose().split_at(8);
            let mut b = [0u8; 8];
            for ((o, a), c) in b.iter_mut().zip(l).zip(r) {
                *o = a ^ c;
            }
            let key = SecretKey::new(KeyAlg::Des, KeyUsage::Tac, &b);
            b.zeroize();
            key
        }
        KeyAlg::Sm4 => Ok(dtk.clone().with_usage(KeyUsage::Tac)),
        KeyAlg::Des => Err(CryptoError::UnsupportedAlg {
            op: "tac_key",
            alg: KeyAlg::Des,
        }),
        KeyAlg::M1 => Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    }
}

/// Card key diversified from a master key with `f` (the rightmost 8 bytes of the application
/// serial), labelled `usage`.
///
/// - [`KeyAlg::Des3`]: `3DES(MK, F) ‖ 3DES(MK, NOT F)`, a [`KeyAlg::Des3`] key.
/// - [`KeyAlg::Sm4`]: `SM4(MK, F ‖ NOT F)`, a [`KeyAlg::Sm4`] key.
///
/// A single-DES master is [`CryptoError::UnsupportedAlg`]; an M1 key is
/// [`CryptoError::NotABlockCipher`].
pub fn diversify(
    master: &SecretKey,
    f: &[u8; 8],
    usage: KeyUsage,
) -> Result<SecretKey, CryptoError> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(f);
    for (o, x) in b[8..].iter_mut().zip(f) {
        *o = !x;
    }
    let key = match master.alg() {
        KeyAlg::Des3 => {
            let c = tdes_cipher(master)?;
            let (l, r) = b.split_at_mut(8);
            if let (Ok(l), Ok(r)) = (<&mut [u8; 8]>::try_from(l), <&mut [u8; 8]>::try_from(r)) {
                enc8(&c, l);
                enc8(&c, r);
            }
            SecretKey::new(KeyAlg::Des3, usage, &b)
        }
        KeyAlg::Sm4 => {
            let c = sm4_cipher(master)?;
            enc16(&c, &mut b);
            SecretKey::new(KeyAlg::Sm4, usage, &b)
        }
        KeyAlg::Des => Err(CryptoError::UnsupportedAlg {
            op: "diversify",
            alg: KeyAlg::Des,
        }),
        KeyAlg::M1 => Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    };
    b.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::block::tests::{h, key};
    use crate::crypto::mac::pboc_mac;
    use crate::crypto::{ecb_encrypt, pad_iso9797_m2};
    use alloc::vec::Vec;

    fn arr8(hex: &str) -> [u8; 8] {
        h(hex).try_into().unwrap()
    }

    #[test]
    fn pboc_load_example() {
        // epurse.md published load example.
        let dlk = key(KeyAlg::Des3, "3F013F013F013F013F013F013F013F01");
        let input = arr8("F9CABA91 0000 8000");
        let seslk = process_key(&dlk, &input).unwrap();
        assert_eq!(seslk.alg(), KeyAlg::Des);
        assert_eq!(seslk.usage(), KeyUsage::Session);
        assert_eq!(seslk.expose(), &h("03015BEA347EA231")[..]);
        let mac1 = pboc_mac(&seslk, &h("00000000 00001234 02 000000000001")).unwrap();
        assert_eq!(mac1.to_vec(), h("6C394D64"));
        // A different random gives a different process key and MAC.
        let other = process_key(&dlk, &arr8("F9CABA92 0000 8000")).unwrap();
        assert_ne!(other.expose(), seslk.expose());
    }

    #[test]
    fn sm4_process_key_is_padded_ecb() {
        let dlk = key(KeyAlg::Sm4, "11223344556677888877665544332211");
        let input = arr8("F9CABA91 0000 8000");
        let sk = process_key(&dlk, &input).unwrap();
        assert_eq!(sk.alg(), KeyAlg::Sm4);
        assert_eq!(sk.usage(), KeyUsage::Session);
        let mut padded = Vec::new();
        pad_iso9797_m2(&input, 16, &mut padded);
        assert_eq!(padded.len(), 16);
        let mut want = Vec::new();
        ecb_encrypt(&dlk, &padded, &mut want).unwrap();
        assert_eq!(sk.expose(), &want[..]);
    }

    #[test]
    fn tac_key_vectors() {
        // epurse.md: DTK 0011..EEFF -> TAC key 8888888888888888.
        let dtk = key(KeyAlg::Des3, "00112233445566778899AABBCCDDEEFF");
        let t = tac_key(&dtk).unwrap();
        assert_eq!(t.alg(), KeyAlg::Des);
        assert_eq!(t.usage(), KeyUsage::Tac);
        assert_eq!(t.expose(), &h("8888888888888888")[..]);
        // SM4 profile: the DTK itself.
        let dtk = key(KeyAlg::Sm4, "00112233445566778899AABBCCDDEEFF");
        let t = tac_key(&dtk).unwrap();
        assert_eq!(t.alg(), KeyAlg::Sm4);
        assert_eq!(t.usage(), KeyUsage::Tac);
        assert_eq!(t.expose(), dtk.expose());
    }

    #[test]
    fn diversification_vectors() {
        // epurse.md cross-checks.
        let f = arr8("4100000089999985");
        let mk = key(KeyAlg::Des3, "11223344556677888877665544332211");
        let dk = diversify(&mk, &f, KeyUsage::Load).unwrap();
        assert_eq!(dk.alg(), KeyAlg::Des3);
        assert_eq!(dk.usage(), KeyUsage::Load);
        assert_eq!(dk.expose(), &h("A0068F366D0535ADF42057760F84B2F5")[..]);

        let mk = key(KeyAlg::Sm4, "11223344556677888877665544332211");
        let dk = diversify(&mk, &f, KeyUsage::Purchase).unwrap();
        assert_eq!(dk.alg(), KeyAlg::Sm4);
        assert_eq!(dk.usage(), KeyUsage::Purchase);
        assert_eq!(dk.expose(), &h("18DC6B934AF686E3CA806AC3D4095DB7")[..]);
    }

    #[test]
    fn unsupported_algorithms() {
        let d = key(KeyAlg::Des, "0123456789ABCDEF");
        let m = key(KeyAlg::M1, "FFFFFFFFFFFF");
        let x = [0u8; 8];
        assert_eq!(
            process_key(&d, &x).unwrap_err(),
            CryptoError::UnsupportedAlg {
                op: "process_key",
                alg: KeyAlg::Des
            }
        );
        assert_eq!(
            tac_key(&d).unwrap_err(),
            CryptoError::UnsupportedAlg {
                op: "tac_key",
                alg: KeyAlg::Des
            }
        );
        assert_eq!(
            diversify(&d, &x, KeyUsage::Load).unwrap_err(),
            CryptoError::UnsupportedAlg {
                op: "diversify",
                alg: KeyAlg::Des
            }
        );
        let nb = CryptoError::NotABlockCipher(KeyAlg::M1);
        assert_eq!(process_key(&m, &x).unwrap_err(), nb);
        assert_eq!(tac_key(&m).unwrap_err(), nb);
        assert_eq!(diversify(&m, &x, KeyUsage::Load).unwrap_err(), nb);
        let msg = alloc::format!("{nb}");
        assert!(msg.contains("m1"), "{msg}");
    }
}
