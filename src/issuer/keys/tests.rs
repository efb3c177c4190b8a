//! Master-key files, roles and the file store, attacked.

use super::*;
use crate::crypto::{KeyAlg, KeyUsage, diversify};

/// The reference's 3DES/SM4 cross-check master (epurse.md, "Key diversification").
const MK: &str = "11223344556677888877665544332211";

fn h16(s: &str) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (i, b) in o.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    o
}

fn toml_for(alg: &str, load: &str) -> String {
    format!(
        "alg = \"{alg}\"\nload = \"{load}\"\npurchase = \"{}\"\ntac = \"{}\"\n",
        "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8", "C1C2C3C4C5C6C7C8D1D2D3D4D5D6D7D8"
    )
}

fn err(text: &str) -> String {
    MasterKeys::from_toml(text).unwrap_err().to_string()
}

#[test]
fn roles_name_and_usage() {
    for (r, n, mu, cu) in [
        (KeyRole::Load, "load", KeyUsage::LoadMaster, KeyUsage::Load),
        (KeyRole::Purchase, "purchase", KeyUsage::PurchaseMaster, KeyUsage::Purchase),
        (KeyRole::Tac, "tac", KeyUsage::TacMaster, KeyUsage::Tac),
    ] {
        assert_eq!(r.name(), n);
        assert_eq!(KeyRole::from_name(n), Some(r));
        assert_eq!(r.master_usage(), mu);
        assert_eq!(r.card_usage(), cu);
        assert_eq!(r.derived_usage(), cu);
    }
    assert_eq!(KeyRole::from_name("LOAD"), None);
    assert_eq!(KeyRole::from_name("enc"), None);
}

#[test]
fn master_file_parses_and_diversifies_to_the_reference() {
    let keys = MasterKeys::from_toml(&toml_for("des3", MK)).unwrap();
    assert_eq!(keys.alg(), KeyAlg::Des3);
    let serial = h16("0000FFFF4100000089999985FFFFFFFF");
    // A 10-byte serial: F is its rightmost 8 bytes.
    let k = keys.card_key(731, KeyRole::Load, &serial[2..12]).unwrap();
    assert_eq!(k.usage(), KeyUsage::Load);
    assert_eq!(k.alg(), KeyAlg::Des3);
    assert_eq!(k.expose(), h16("A0068F366D0535ADF42057760F84B2F5"));
    let sm4 = MasterKeys::from_toml(&toml_for("sm4", MK)).unwrap();
    let k = sm4.card_key(1, KeyRole::Load, &serial[4..12]).unwrap();
    assert_eq!(k.alg(), KeyAlg::Sm4);
    assert_eq!(k.expose(), h16("18DC6B934AF686E3CA806AC3D4095DB7"));
    // Each role's key comes from its own master, labelled with its own usage.
    for role in KeyRole::ALL {
        let k = keys.card_key(731, role, &serial[4..12]).unwrap();
        let f: [u8; 8] = serial[4..12].try_into().unwrap();
        let want = diversify(keys.master(role), &f).unwrap();
        assert_eq!(k.expose(), want.expose());
        assert_eq!(k.usage(), role.card_usage());
    }
}

#[test]
fn serial_lengths() {
    let keys = MasterKeys::from_toml(&toml_for("des3", MK)).unwrap();
    for len in [0usize, 1, 7, 11, 16] {
        let e = keys.card_key(5, KeyRole::Tac, &vec![1; len]).unwrap_err();
        assert_eq!(e, KeyStoreError::BadSerial { len });
        assert!(e.to_string().contains("8 to 10"), "{e}");
    }
    for len in 8..=10 {
        keys.card_key(5, KeyRole::Tac, &vec![1; len]).unwrap();
    }
}

#[test]
fn bad_master_files_are_refused_by_field_without_the_key() {
    let cases = [
        (toml_for("des", MK), "alg `des`"),
        (toml_for("aes", MK), "alg `aes`"),
        (toml_for("des3", "1122"), "`load`: 4 hex digits"),
        (toml_for("des3", "ZZ223344556677888877665544332211"), "`load`: not hex"),
        (toml_for("des3", "0102030405060708" /* K1 == K2 */).replace(
            "0102030405060708", "01020304050607080102030405060708"), "single DES"),
        (toml_for("des3", "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"), "`load` and `purchase` are the same key"),
        (toml_for("des3", MK).replace("tac", "mac"), "missing `tac`"),
        (format!("{}extra = 1\n", toml_for("des3", MK)), "unknown field `extra`"),
        (toml_for("des3", MK).replace("alg = \"des3\"\n", ""), "missing `alg`"),
        ("alg = 3\n".to_string(), "`alg` must be a string"),
        (format!("alg = \"des3\"\nload = \"{MK}\"\npurchase = 7\n"), "`purchase` must be a hex string"),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{e} (want {want})");
        assert!(e.starts_with("master-key file: "), "{e}");
        for secret in [MK, "A1A2A3A4", "C1C2C3C4", "8877665544332211"] {
            assert!(!e.contains(secret), "{e}");
        }
    }
    // A syntax error on a key's line: toml's Display would quote the line, ours does not.
    let e = err(&format!("alg = \"des3\"\nload = \"{MK}\" garbage\n"));
    assert!(e.contains("not TOML"), "{e}");
    assert!(!e.contains(MK) && !e.contains("1122334455"), "{e}");
}

#[test]
fn debug_prints_no_key_bytes() {
    let keys = MasterKeys::from_toml(&toml_for("des3", MK)).unwrap();
    for dbg in [format!("{keys:?}"), format!("{keys:#?}")] {
        assert!(dbg.contains("REDACTED"), "{dbg}");
        for needle in ["11223344", "1122", "A1A2", "a1a2", "C1C2", "17, 34", "0x11", "161"] {
            assert!(!dbg.contains(needle), "{dbg}");
        }
    }
    let k = keys.card_key(1, KeyRole::Load, &[0x41, 0, 0, 0, 0x89, 0x99, 0x99, 0x85]).unwrap();
    let dbg = format!("{k:?}");
    assert!(!dbg.contains("A006") && !dbg.contains("a006") && !dbg.contains("160"), "{dbg}");
}
