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
        (
            KeyRole::Purchase,
            "purchase",
            KeyUsage::PurchaseMaster,
            KeyUsage::Purchase,
        ),
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
        (
            toml_for("des3", "ZZ223344556677888877665544332211"),
            "`load`: not hex",
        ),
        (
            toml_for("des3", "0102030405060708" /* K1 == K2 */)
                .replace("0102030405060708", "01020304050607080102030405060708"),
            "single DES",
        ),
        (
            toml_for("des3", "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"),
            "`load` and `purchase` are the same key",
        ),
        (toml_for("des3", MK).replace("tac", "mac"), "missing `tac`"),
        (
            format!("{}extra = 1\n", toml_for("des3", MK)),
            "unknown field `extra`",
        ),
        (
            toml_for("des3", MK).replace("alg = \"des3\"\n", ""),
            "missing `alg`",
        ),
        ("alg = 3\n".to_string(), "`alg` must be a string"),
        (
            format!("alg = \"des3\"\nload = \"{MK}\"\npurchase = 7\n"),
            "`purchase` must be a hex string",
        ),
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
        for needle in [
            "11223344", "1122", "A1A2", "a1a2", "C1C2", "17, 34", "0x11", "161",
        ] {
            assert!(!dbg.contains(needle), "{dbg}");
        }
    }
    let k = keys
        .card_key(1, KeyRole::Load, &[0x41, 0, 0, 0, 0x89, 0x99, 0x99, 0x85])
        .unwrap();
    let dbg = format!("{k:?}");
    assert!(
        !dbg.contains("A006") && !dbg.contains("a006") && !dbg.contains("160"),
        "{dbg}"
    );
}

// ---- the file store ----

use std::path::PathBuf;

/// Cheap Argon2 costs so the attack loops below stay fast; the format is the same.
const FAST: KdfParams = KdfParams {
    m_cost: 64,
    t_cost: 1,
    p_cost: 1,
};
const PASS: &[u8] = b"correct horse battery staple";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-keys-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("masters.cks")
}

fn two_cities(path: &std::path::Path) -> FileKeyStore {
    let mut s = FileKeyStore::create_with_params(path, PASS, FAST).unwrap();
    s.import(
        731,
        &MasterKeys::from_toml(&toml_for("des3", MK)).unwrap(),
        false,
    )
    .unwrap();
    s.import(
        1,
        &MasterKeys::from_toml(&toml_for("sm4", MK)).unwrap(),
        false,
    )
    .unwrap();
    s
}

const SERIAL: [u8; 8] = [0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85];

#[test]
fn file_store_round_trips_and_diversifies_to_the_reference() {
    let path = tmp("roundtrip");
    drop(two_cities(&path));
    let s = FileKeyStore::open(&path, PASS).unwrap();
    assert_eq!(s.params(), FAST);
    assert_eq!(
        s.cities().unwrap(),
        vec![(1, KeyAlg::Sm4), (731, KeyAlg::Des3)]
    );
    let k = s.card_key(731, KeyRole::Load, &SERIAL).unwrap();
    assert_eq!(k.expose(), h16("A0068F366D0535ADF42057760F84B2F5"));
    assert_eq!((k.alg(), k.usage()), (KeyAlg::Des3, KeyUsage::Load));
    let k = s.card_key(1, KeyRole::Load, &SERIAL).unwrap();
    assert_eq!(k.expose(), h16("18DC6B934AF686E3CA806AC3D4095DB7"));
    let masters = MasterKeys::from_toml(&toml_for("des3", MK)).unwrap();
    for role in KeyRole::ALL {
        let k = s.card_key(731, role, &SERIAL).unwrap();
        assert_eq!(k.usage(), role.card_usage());
        assert_eq!(
            k.expose(),
            diversify(masters.master(role), &SERIAL).unwrap().expose()
        );
    }
    assert_eq!(
        s.card_key(999, KeyRole::Tac, &SERIAL).unwrap_err(),
        KeyStoreError::UnknownCity { city: 999 }
    );
    // The masters are not in the file in the clear.
    let bytes = std::fs::read(&path).unwrap();
    for m in [h16(MK), h16("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8")] {
        assert!(!bytes.windows(8).any(|w| w == &m[..8]));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "store readable by others: {mode:o}");
    }
}

#[test]
fn import_refuses_an_existing_city_unless_replace() {
    let path = tmp("replace");
    let mut s = two_cities(&path);
    let other =
        MasterKeys::from_toml(&toml_for("des3", "0123456789ABCDEFFEDCBA9876543210")).unwrap();
    let e = s.import(731, &other, false).unwrap_err();
    assert_eq!(e, KeyStoreError::CityExists { city: 731 });
    assert!(e.to_string().contains("731"), "{e}");
    // Nothing changed, on disk either.
    let k = FileKeyStore::open(&path, PASS)
        .unwrap()
        .card_key(731, KeyRole::Load, &SERIAL)
        .unwrap();
    assert_eq!(k.expose(), h16("A0068F366D0535ADF42057760F84B2F5"));
    s.import(731, &other, true).unwrap();
    let k = FileKeyStore::open(&path, PASS)
        .unwrap()
        .card_key(731, KeyRole::Load, &SERIAL)
        .unwrap();
    assert_ne!(k.expose(), h16("A0068F366D0535ADF42057760F84B2F5"));
    assert_eq!(
        k.expose(),
        diversify(other.master(KeyRole::Load), &SERIAL)
            .unwrap()
            .expose()
    );
}

#[test]
fn create_refuses_an_existing_file_and_an_empty_passphrase() {
    let path = tmp("create");
    drop(two_cities(&path));
    let before = std::fs::read(&path).unwrap();
    let e = FileKeyStore::create_with_params(&path, PASS, FAST).unwrap_err();
    assert!(matches!(e, KeyStoreError::AlreadyExists { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let fresh = path.with_extension("new");
    let e = FileKeyStore::create_with_params(&fresh, b"", FAST).unwrap_err();
    assert!(matches!(e, KeyStoreError::EmptyPassphrase { .. }), "{e}");
    assert!(!fresh.exists());
}

fn wrong(path: &std::path::Path) -> String {
    format!(
        "key store {}: wrong passphrase or tampered file",
        path.display()
    )
}

#[test]
fn wrong_passphrase_is_refused() {
    let path = tmp("wrongpass");
    drop(two_cities(&path));
    for p in [
        &b"correct horse battery stapl"[..],
        b"Correct horse battery staple",
        b"x",
    ] {
        let e = FileKeyStore::open(&path, p).unwrap_err();
        assert_eq!(e.to_string(), wrong(&path));
    }
    assert!(matches!(
        FileKeyStore::open(&path, b"").unwrap_err(),
        KeyStoreError::EmptyPassphrase { .. }
    ));
}

#[test]
fn every_flipped_bit_is_refused() {
    let path = tmp("flip");
    drop(two_cities(&path));
    let good = std::fs::read(&path).unwrap();
    let bad = path.with_extension("bad");
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            std::fs::write(&bad, &b).unwrap();
            let e = FileKeyStore::open(&bad, PASS).unwrap_err();
            let msg = e.to_string();
            match i {
                0..8 => assert!(
                    matches!(e, KeyStoreError::NotAKeyStore { .. }),
                    "{i}: {msg}"
                ),
                8 => assert!(
                    matches!(e, KeyStoreError::UnsupportedVersion { .. }),
                    "{i}: {msg}"
                ),
                // A cost made huge is refused before any memory is asked for.
                10..22 => assert!(
                    matches!(
                        e,
                        KeyStoreError::WrongPassphraseOrTampered { .. }
                            | KeyStoreError::KdfParams { .. }
                    ),
                    "{i}: {msg}"
                ),
                _ => assert_eq!(msg, wrong(&bad), "byte {i}"),
            }
            assert!(msg.contains(&bad.display().to_string()), "{msg}");
        }
    }
}

#[test]
fn truncated_or_extended_files_are_refused() {
    let path = tmp("trunc");
    drop(two_cities(&path));
    let good = std::fs::read(&path).unwrap();
    let bad = path.with_extension("bad");
    for len in 0..good.len() {
        std::fs::write(&bad, &good[..len]).unwrap();
        let e = FileKeyStore::open(&bad, PASS).unwrap_err();
        if len < 8 {
            assert!(
                matches!(e, KeyStoreError::NotAKeyStore { .. }),
                "{len}: {e}"
            );
        } else {
            assert_eq!(e.to_string(), wrong(&bad), "length {len}");
        }
    }
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).unwrap();
    assert_eq!(
        FileKeyStore::open(&bad, PASS).unwrap_err().to_string(),
        wrong(&bad)
    );
    // A missing file is an I/O error naming what failed, not a panic.
    let e = FileKeyStore::open(path.with_extension("missing"), PASS).unwrap_err();
    assert!(matches!(e, KeyStoreError::Io { op: "open", .. }), "{e}");
}

#[test]
fn hostile_kdf_costs_are_refused_before_allocating() {
    let path = tmp("costs");
    drop(two_cities(&path));
    let good = std::fs::read(&path).unwrap();
    let bad = path.with_extension("bad");
    for (at, v) in [
        (10usize, u32::MAX),
        (10, KdfParams::MAX_M_COST + 1),
        (14, 1000),
        (18, 0),
        (14, 0),
    ] {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        std::fs::write(&bad, &b).unwrap();
        let e = FileKeyStore::open(&bad, PASS).unwrap_err();
        assert!(matches!(e, KeyStoreError::KdfParams { .. }), "{e}");
        assert!(e.to_string().contains("outside"), "{e}");
    }
}

#[test]
fn store_debug_shows_no_key_bytes() {
    let path = tmp("debug");
    let s = two_cities(&path);
    for dbg in [format!("{s:?}"), format!("{s:#?}")] {
        assert!(dbg.contains("REDACTED") && dbg.contains("731"), "{dbg}");
        for needle in ["1122334455", "A1A2A3", "a1a2a3", "17, 34, 51"] {
            assert!(!dbg.contains(needle), "{dbg}");
        }
    }
}

#[test]
fn a_failed_write_leaves_the_store_as_it_was() {
    let dir = tmp("readonly");
    let path = dir.parent().unwrap().join("sub").join("masters.cks");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut s = FileKeyStore::create_with_params(&path, PASS, FAST).unwrap();
    // Make the rename impossible: a directory where the temp file goes.
    let mut tmpname = path.clone().into_os_string();
    tmpname.push(".tmp");
    std::fs::create_dir_all(PathBuf::from(&tmpname).join("x")).unwrap();
    let keys = MasterKeys::from_toml(&toml_for("des3", MK)).unwrap();
    let e = s.import(731, &keys, false).unwrap_err();
    assert!(matches!(e, KeyStoreError::Io { .. }), "{e}");
    assert!(s.cities().unwrap().is_empty());
    assert!(
        FileKeyStore::open(&path, PASS)
            .unwrap()
            .cities()
            .unwrap()
            .is_empty()
    );
}
