//! PBOC / CJ/T 166 purse key derivations: process (session) keys, the TAC key and card-key
//! diversification, for the 3DES profile and this project's SM4 profile
//! (`/work/shared/reference/epurse.md`). None of these allocate.
//!
//! Each derivation accepts only its source usages and labels its result by
//! [`KeyUsage::derive`]: the caller never names the derived key's usage.

use zeroize::Zeroize;

use super::block::{enc8, enc16, sm4_cipher, tdes_cipher};
use super::error::CryptoError;
use super::key::{Derivation, KeyAlg, KeyUsage, SecretKey};

/// The usage of the key `d` derives from `source`, or [`CryptoError::WrongUsage`].
fn derived_usage(source: &SecretKey, d: Derivation) -> Result<KeyUsage, CryptoError> {
    source.usage().derive(d).ok_or(CryptoError::WrongUsage {
        op: d.name(),
        usage: source.usage(),
    })
}

/// Process (session) key from a purse key (DLK or DPK) and the 8 input bytes
/// (`random(4) ‖ onlineATC(2) ‖ 8000` for load, `random(4) ‖ offlineATC(2) ‖ terminalSeq[2..4]`
/// for purchase).
///
/// - [`KeyAlg::Des3`] master: `3DES-ECB(master, input)`, an 8-byte [`KeyAlg::Des`] key.
/// - [`KeyAlg::Sm4`] master: `SM4-ECB(master, input ‖ 80 00..00)`, a 16-byte [`KeyAlg::Sm4`] key.
///
/// The source must be a [`KeyUsage::Load`] or [`KeyUsage::Purchase`] key; the result is a
/// [`KeyUsage::LoadSession`] or [`KeyUsage::PurchaseSession`] key (else
/// [`CryptoError::WrongUsage`]). A single-DES master is [`CryptoError::UnsupportedAlg`]; an
/// M1 key is [`CryptoError::NotABlockCipher`].
pub fn process_key(master: &SecretKey, input: &[u8; 8]) -> Result<SecretKey, CryptoError> {
    let usage = derived_usage(master, Derivation::Process)?;
    match master.alg() {
        KeyAlg::Des3 => {
            let c = tdes_cipher(master)?;
            let mut b = *input;
            enc8(&c, &mut b);
            let key = SecretKey::new(KeyAlg::Des, usage, &b);
            b.zeroize();
            key
        }
        KeyAlg::Sm4 => {
            let c = sm4_cipher(master)?;
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(input);
            b[8] = 0x80;
            enc16(&c, &mut b);
            let key = SecretKey::new(KeyAlg::Sm4, usage, &b);
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
/// [`KeyAlg::Des`] key; for [`KeyAlg::Sm4`] the DTK itself. The DTK must be a
/// [`KeyUsage::Tac`] key and so is the result (else [`CryptoError::WrongUsage`]).
/// A single-DES DTK is [`CryptoError::UnsupportedAlg`]; an M1 key is
/// [`CryptoError::NotABlockCipher`].
pub fn tac_key(dtk: &SecretKey) -> Result<SecretKey, CryptoError> {
    let usage = derived_usage(dtk, Derivation::Tac)?;
    match dtk.alg() {
        KeyAlg::Des3 => {
            let (l, r) = dtk.expose().split_at(8);
            let mut b = [0u8; 8];
            for ((o, a), c) in b.iter_mut().zip(l).zip(r) {
                *o = a ^ c;
            }
            let key = SecretKey::new(KeyAlg::Des, usage, &b);
            b.zeroize();
            key
        }
        KeyAlg::Sm4 => SecretKey::new(KeyAlg::Sm4, usage, dtk.expose()),
        KeyAlg::Des => Err(CryptoError::UnsupportedAlg {
            op: "tac_key",
            alg: KeyAlg::Des,
        }),
        KeyAlg::M1 => Err(CryptoError::NotABlockCipher(KeyAlg::M1)),
    }
}

/// Card key diversified from a master key with `f` (the rightmost 8 bytes of the application
/// serial).
///
/// - [`KeyAlg::Des3`]: `3DES(MK, F) ‖ 3DES(MK, NOT F)`, a [`KeyAlg::Des3`] key.
/// - [`KeyAlg::Sm4`]: `SM4(MK, F ‖ NOT F)`, a [`KeyAlg::Sm4`] key.
///
/// The master says what it is the master of: a [`KeyUsage::LoadMaster`] gives a
/// [`KeyUsage::Load`] key, [`KeyUsage::PurchaseMaster`] a [`KeyUsage::Purchase`] key,
/// [`KeyUsage::TacMaster`] a [`KeyUsage::Tac`] key; any other usage is
/// [`CryptoError::WrongUsage`]. A single-DES master is [`CryptoError::UnsupportedAlg`]; an M1
/// key is [`CryptoError::NotABlockCipher`].
pub fn diversify(master: &SecretKey, f: &[u8; 8]) -> Result<SecretKey, CryptoError> {
    let usage = derived_usage(master, Derivation::Diversify)?;
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
    use crate::crypto::block::tests::{h, key, key_as};
    use crate::crypto::mac::pboc_mac;
    use crate::crypto::{ecb_encrypt, pad_iso9797_m2};
    use alloc::vec::Vec;

    fn arr8(hex: &str) -> [u8; 8] {
        h(hex).try_into().unwrap()
    }

    #[test]
    fn pboc_load_example() {
        // epurse.md published load example.
        let dlk = key_as(
            KeyAlg::Des3,
            KeyUsage::Load,
            "3F013F013F013F013F013F013F013F01",
        );
        let input = arr8("F9CABA91 0000 8000");
        let seslk = process_key(&dlk, &input).unwrap();
        assert_eq!(seslk.alg(), KeyAlg::Des);
        assert_eq!(seslk.usage(), KeyUsage::LoadSession);
        assert_eq!(seslk.expose(), &h("03015BEA347EA231")[..]);
        let mac1 = pboc_mac(&seslk, &h("00000000 00001234 02 000000000001")).unwrap();
        assert_eq!(mac1.to_vec(), h("6C394D64"));
        // A different random gives a different process key and MAC.
        let other = process_key(&dlk, &arr8("F9CABA92 0000 8000")).unwrap();
        assert_ne!(other.expose(), seslk.expose());
    }

    #[test]
    fn sm4_process_key_is_padded_ecb() {
        let hex = "11223344556677888877665544332211";
        let dpk = key_as(KeyAlg::Sm4, KeyUsage::Purchase, hex);
        let input = arr8("F9CABA91 0000 8000");
        let sk = process_key(&dpk, &input).unwrap();
        assert_eq!(sk.alg(), KeyAlg::Sm4);
        assert_eq!(sk.usage(), KeyUsage::PurchaseSession);
        let mut padded = Vec::new();
        pad_iso9797_m2(&input, 16, &mut padded);
        assert_eq!(padded.len(), 16);
        let mut want = Vec::new();
        // The same bytes as an `enc` key: ECB accepts nothing else.
        ecb_encrypt(&key(KeyAlg::Sm4, hex), &padded, &mut want).unwrap();
        assert_eq!(sk.expose(), &want[..]);
    }

    #[test]
    fn tac_key_vectors() {
        // epurse.md: DTK 0011..EEFF -> TAC key 8888888888888888.
        let dtk = key_as(
            KeyAlg::Des3,
            KeyUsage::Tac,
            "00112233445566778899AABBCCDDEEFF",
        );
        let t = tac_key(&dtk).unwrap();
        assert_eq!(t.alg(), KeyAlg::Des);
        assert_eq!(t.usage(), KeyUsage::Tac);
        assert_eq!(t.expose(), &h("8888888888888888")[..]);
        // SM4 profile: the DTK itself.
        let dtk = key_as(
            KeyAlg::Sm4,
            KeyUsage::Tac,
            "00112233445566778899AABBCCDDEEFF",
        );
        let t = tac_key(&dtk).unwrap();
        assert_eq!(t.alg(), KeyAlg::Sm4);
        assert_eq!(t.usage(), KeyUsage::Tac);
        assert_eq!(t.expose(), dtk.expose());
    }

    #[test]
    fn diversification_vectors() {
        // epurse.md cross-checks.
        let f = arr8("4100000089999985");
        let mk = key_as(
            KeyAlg::Des3,
            KeyUsage::LoadMaster,
            "11223344556677888877665544332211",
        );
        let dk = diversify(&mk, &f).unwrap();
        assert_eq!(dk.alg(), KeyAlg::Des3);
        assert_eq!(dk.usage(), KeyUsage::Load);
        assert_eq!(dk.expose(), &h("A0068F366D0535ADF42057760F84B2F5")[..]);

        let mk = key_as(
            KeyAlg::Sm4,
            KeyUsage::PurchaseMaster,
            "11223344556677888877665544332211",
        );
        let dk = diversify(&mk, &f).unwrap();
        assert_eq!(dk.alg(), KeyAlg::Sm4);
        assert_eq!(dk.usage(), KeyUsage::Purchase);
        assert_eq!(dk.expose(), &h("18DC6B934AF686E3CA806AC3D4095DB7")[..]);
        let mk = key_as(
            KeyAlg::Sm4,
            KeyUsage::TacMaster,
            "11223344556677888877665544332211",
        );
        let dk = diversify(&mk, &f).unwrap();
        assert_eq!(dk.usage(), KeyUsage::Tac);
        assert_eq!(dk.expose(), &h("18DC6B934AF686E3CA806AC3D4095DB7")[..]);
    }

    #[test]
    fn derivations_refuse_keys_that_are_not_their_source() {
        let hex = "11223344556677888877665544332211";
        let f = [0u8; 8];
        for usage in KeyUsage::ALL {
            let k = key_as(KeyAlg::Des3, usage, hex);
            let wrong = |op| CryptoError::WrongUsage { op, usage };
            match usage.derive(Derivation::Diversify) {
                Some(u) => assert_eq!(diversify(&k, &f).unwrap().usage(), u),
                None => assert_eq!(diversify(&k, &f).unwrap_err(), wrong("diversify")),
            }
            match usage.derive(Derivation::Process) {
                Some(u) => assert_eq!(process_key(&k, &f).unwrap().usage(), u),
                None => assert_eq!(process_key(&k, &f).unwrap_err(), wrong("process_key")),
            }
            match usage.derive(Derivation::Tac) {
                Some(u) => assert_eq!(tac_key(&k).unwrap().usage(), u),
                None => assert_eq!(tac_key(&k).unwrap_err(), wrong("tac_key")),
            }
        }
        // An `enc` key is no derivation source (its ECB results are readable).
        let e = key(KeyAlg::Des3, hex);
        assert!(diversify(&e, &f).is_err());
        assert!(process_key(&e, &f).is_err());
        assert!(tac_key(&e).is_err());
        let msg = alloc::format!(
            "{}",
            CryptoError::WrongUsage {
                op: "diversify",
                usage: KeyUsage::Encrypt
            }
        );
        assert!(msg.contains("diversify") && msg.contains("enc"), "{msg}");
    }

    #[test]
    fn unsupported_algorithms() {
        let as_ = |alg, usage, hex| key_as(alg, usage, hex);
        let (des, m1) = (
            |u| as_(KeyAlg::Des, u, "0123456789ABCDEF"),
            |u| as_(KeyAlg::M1, u, "FFFFFFFFFFFF"),
        );
        let x = [0u8; 8];
        assert_eq!(
            process_key(&des(KeyUsage::Load), &x).unwrap_err(),
            CryptoError::UnsupportedAlg {
                op: "process_key",
                alg: KeyAlg::Des
            }
        );
        assert_eq!(
            tac_key(&des(KeyUsage::Tac)).unwrap_err(),
            CryptoError::UnsupportedAlg {
                op: "tac_key",
                alg: KeyAlg::Des
            }
        );
        assert_eq!(
            diversify(&des(KeyUsage::LoadMaster), &x).unwrap_err(),
            CryptoError::UnsupportedAlg {
                op: "diversify",
                alg: KeyAlg::Des
            }
        );
        let nb = CryptoError::NotABlockCipher(KeyAlg::M1);
        assert_eq!(process_key(&m1(KeyUsage::Load), &x).unwrap_err(), nb);
        assert_eq!(tac_key(&m1(KeyUsage::Tac)).unwrap_err(), nb);
        assert_eq!(diversify(&m1(KeyUsage::LoadMaster), &x).unwrap_err(), nb);
        let msg = alloc::format!("{nb}");
        assert!(msg.contains("m1"), "{msg}");
    }
}
