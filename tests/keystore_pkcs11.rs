//! The PKCS#11 master-key store against SoftHSM2: masters imported into (or generated in) a
//! token diversify, inside the token, to the same card keys as `crypto::diversify` and the
//! reference's cross-check vector; the token never lets the masters out; SM4 is refused.
//!
//! Needs Debian's `softhsm2` (`softhsm2-util`, `/usr/lib/softhsm/libsofthsm2.so`). Skipped, with
//! a message, when it is missing and `CARDVM_REQUIRE_SOFTHSM` is unset; CI sets it, so there a
//! missing SoftHSM2 fails. Run with `cargo test --features pkcs11 --test keystore_pkcs11`.
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) when the module is initialised, so the
//! test makes its own token in a temporary directory and re-runs itself as a child process
//! with `SOFTHSM2_CONF` pointing there (no process-global environment change in a threaded
//! test harness).
#![cfg(feature = "pkcs11")]

use std::path::{Path, PathBuf};
use std::process::Command;

use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, cbc_mac_full, diversify};
use cardvm::issuer::keys::{KeyRole, KeyStoreError, MasterKeyStore, MasterKeys, Pkcs11KeyStore};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "cardvm-test";
const PIN: &str = "246810";
const SO_PIN: &str = "13579111";
const CHILD: &str = "CARDVM_SOFTHSM_CHILD";
const MK: &str = "11223344556677888877665544332211";
const SERIAL: [u8; 8] = [0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85];

fn softhsm_available() -> bool {
    let found = Path::new(MODULE).exists()
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CARDVM_REQUIRE_SOFTHSM").is_none(),
            "CARDVM_REQUIRE_SOFTHSM is set but softhsm2 is not installed ({MODULE}, softhsm2-util)"
        );
        eprintln!(
            "SKIPPED: softhsm2 is not installed (apt-get install softhsm2, or set CARDVM_REQUIRE_SOFTHSM=1 to fail instead)"
        );
    }
    found
}

/// A fresh SoftHSM2 configuration and token in a temporary directory; returns the config path.
fn make_token(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-softhsm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            SO_PIN,
            "--pin",
            PIN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util --init-token: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

fn h16(s: &str) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (i, b) in o.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    o
}

fn masters(alg: &str, load: &str) -> MasterKeys {
    MasterKeys::from_toml(&format!(
        "alg = \"{alg}\"\nload = \"{load}\"\npurchase = \"A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8\"\ntac = \"C1C2C3C4C5C6C7C8D1D2D3D4D5D6D7D8\"\n"
    ))
    .unwrap()
}

/// Key bytes are not readable outside the crate: two keys are compared by their retail MACs
/// over several messages (equal MACs for all of them only if the keys are equal).
fn fingerprint(k: &SecretKey) -> Vec<Vec<u8>> {
    [&b""[..], b"cardvm", &[0xA5; 40]]
        .iter()
        .map(|m| cbc_mac_full(k, m).unwrap().as_slice().to_vec())
        .collect()
}

fn same_key(a: &SecretKey, b: &SecretKey) -> bool {
    a.alg() == b.alg() && fingerprint(a) == fingerprint(b)
}

/// The software reference: `crypto::diversify` of the same master.
fn software(alg: KeyAlg, role: KeyRole, master: &[u8; 16]) -> SecretKey {
    let m = SecretKey::new(alg, role.master_usage(), master).unwrap();
    diversify(&m, &SERIAL).unwrap()
}

#[test]
fn softhsm2_store() {
    if std::env::var_os(CHILD).is_some() {
        return in_token();
    }
    if !softhsm_available() {
        return;
    }
    let conf = make_token("lib");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "softhsm2_store",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, "1")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child run failed:\n{log}");
    // The child really ran the checks (not a filtered-out empty run).
    assert!(log.contains("1 passed"), "{log}");
    cli(&make_token("cli"));
}

/// `cardvm issuer-keys` with `--pkcs11-module`: the PIN from a file or the environment only.
fn cli(conf: &Path) {
    let dir = conf.parent().unwrap();
    let run = |args: &[&str], pin: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cardvm"));
        c.arg("issuer-keys")
            .args(args)
            .args(["--pkcs11-module", MODULE, "--token", TOKEN])
            .env("SOFTHSM2_CONF", conf)
            .env_remove("CARDVM_PKCS11_PIN");
        if let Some(p) = pin {
            c.env("CARDVM_PKCS11_PIN", p);
        }
        let o = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !text.to_uppercase().contains(&MK[4..20]),
            "key bytes in output: {text}"
        );
        (o.status.success(), text)
    };
    let toml = |name: &str, alg: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!(
            "alg = \"{alg}\"\nload = \"{MK}\"\npurchase = \"A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8\"\ntac = \"C1C2C3C4C5C6C7C8D1D2D3D4D5D6D7D8\"\n"
        )).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let pf = pin_file.to_str().unwrap();

    let (ok, t) = run(&["init"], None);
    assert!(
        !ok && t.contains("CARDVM_PKCS11_PIN") && t.contains("--pin-file"),
        "{t}"
    );
    let (ok, t) = run(&["init"], Some("000000"));
    assert!(
        !ok && t.contains("PinIncorrect") && t.trim().lines().count() == 1,
        "{t}"
    );
    let (ok, t) = run(&["init", "--pin-file", pf], None);
    assert!(ok && t.contains("CKM_DES3_ECB available, 0 cities"), "{t}");
    let (ok, t) = run(&["import", "731", &toml("731.toml", "des3")], Some(PIN));
    assert!(ok, "{t}");
    let (ok, t) = run(&["import", "731", &toml("731.toml", "des3")], Some(PIN));
    assert!(!ok && t.contains("already has master keys"), "{t}");
    let (ok, t) = run(&["import", "1", &toml("1.toml", "sm4")], Some(PIN));
    assert!(!ok && t.contains("no CKM_SM4_ECB mechanism"), "{t}");
    let (ok, t) = run(&["generate", "20"], Some(PIN));
    assert!(ok, "{t}");
    let (ok, t) = run(&["list"], Some(PIN));
    assert!(ok && t == "20 des3\n731 des3\n", "{t}");
}

/// The checks, in a process whose SOFTHSM2_CONF names the fresh token.
fn in_token() {
    let module = Path::new(MODULE);

    // A wrong PIN and an unknown token are one-line errors, not panics.
    let e = Pkcs11KeyStore::open(module, TOKEN, "000000").unwrap_err();
    assert!(
        e.to_string().contains("log in to `cardvm-test`") && e.to_string().contains("PinIncorrect"),
        "{e}"
    );
    let e = Pkcs11KeyStore::open(module, "no-such-token", PIN).unwrap_err();
    assert!(e.to_string().contains("no such token"), "{e}");
    let e = Pkcs11KeyStore::open(Path::new("/nonexistent/libp11.so"), TOKEN, PIN).unwrap_err();
    assert!(
        e.to_string().contains("load module /nonexistent/libp11.so"),
        "{e}"
    );

    let mut store = Pkcs11KeyStore::open(module, TOKEN, PIN).unwrap();
    assert!(store.supports_des3());
    assert!(store.cities().unwrap().is_empty());
    assert!(format!("{store:?}").contains("cardvm-test"));

    // Import a 3DES city; diversification in the token equals the software one and the
    // reference vector.
    let keys = masters("des3", MK);
    store.import(731, &keys, false).unwrap();
    assert_eq!(store.cities().unwrap(), vec![(731, KeyAlg::Des3)]);
    let load = store.card_key(731, KeyRole::Load, &SERIAL).unwrap();
    assert_eq!((load.alg(), load.usage()), (KeyAlg::Des3, KeyUsage::Load));
    let reference = SecretKey::new(
        KeyAlg::Des3,
        KeyUsage::Load,
        &h16("A0068F366D0535ADF42057760F84B2F5"),
    )
    .unwrap();
    assert!(
        same_key(&load, &reference),
        "token diversification differs from the reference vector"
    );
    let hexes = [
        MK,
        "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8",
        "C1C2C3C4C5C6C7C8D1D2D3D4D5D6D7D8",
    ];
    for (role, hex) in KeyRole::ALL.into_iter().zip(hexes) {
        let k = store.card_key(731, role, &SERIAL).unwrap();
        assert_eq!(k.usage(), role.card_usage());
        assert!(
            same_key(&k, &software(KeyAlg::Des3, role, &h16(hex))),
            "{role}"
        );
        // A 10-byte serial diversifies by its rightmost 8 bytes.
        let mut ten = vec![0xEE, 0xFF];
        ten.extend_from_slice(&SERIAL);
        assert!(same_key(&store.card_key(731, role, &ten).unwrap(), &k));
    }
    // Different roles give different keys (each from its own master).
    let purchase = store.card_key(731, KeyRole::Purchase, &SERIAL).unwrap();
    assert!(!same_key(&load, &purchase));
    assert_eq!(
        store
            .card_key(731, KeyRole::Load, &SERIAL[..7])
            .unwrap_err(),
        KeyStoreError::BadSerial { len: 7 }
    );
    assert_eq!(
        store.card_key(999, KeyRole::Load, &SERIAL).unwrap_err(),
        KeyStoreError::UnknownCity { city: 999 }
    );

    // Import over an existing city needs replace; replace swaps all three masters.
    let other = masters("des3", "0123456789ABCDEFFEDCBA9876543210");
    assert_eq!(
        store.import(731, &other, false).unwrap_err(),
        KeyStoreError::CityExists { city: 731 }
    );
    assert!(same_key(
        &store.card_key(731, KeyRole::Load, &SERIAL).unwrap(),
        &reference
    ));
    store.import(731, &other, true).unwrap();
    let swapped = store.card_key(731, KeyRole::Load, &SERIAL).unwrap();
    assert!(same_key(
        &swapped,
        &software(
            KeyAlg::Des3,
            KeyRole::Load,
            &h16("0123456789ABCDEFFEDCBA9876543210")
        )
    ));
    assert_eq!(store.cities().unwrap(), vec![(731, KeyAlg::Des3)]);

    // SM4: SoftHSM2 has no SM4 mechanism, so an SM4 city is refused, naming it.
    let e = store.import(1, &masters("sm4", MK), false).unwrap_err();
    assert_eq!(
        e,
        KeyStoreError::MechanismUnsupported {
            city: 1,
            alg: "sm4",
            mechanism: "CKM_SM4_ECB"
        }
    );
    assert!(
        e.to_string().contains("CKM_SM4_ECB") && e.to_string().contains("city 1"),
        "{e}"
    );
    assert_eq!(store.cities().unwrap(), vec![(731, KeyAlg::Des3)]);

    // Masters generated in the token: usable, distinct per role, never seen by anyone.
    store.generate(20, false).unwrap();
    let g = store.card_key(20, KeyRole::Tac, &SERIAL).unwrap();
    assert_eq!(g.usage(), KeyUsage::Tac);
    assert!(!same_key(
        &g,
        &store.card_key(20, KeyRole::Load, &SERIAL).unwrap()
    ));
    assert_eq!(
        store.generate(20, false).unwrap_err(),
        KeyStoreError::CityExists { city: 20 }
    );
    assert_eq!(
        store.cities().unwrap(),
        vec![(20, KeyAlg::Des3), (731, KeyAlg::Des3)]
    );
    drop(store);

    // Masters persist in the token, and the token refuses to reveal them.
    let store = Pkcs11KeyStore::open(module, TOKEN, PIN).unwrap();
    assert!(same_key(
        &store.card_key(731, KeyRole::Load, &SERIAL).unwrap(),
        &swapped
    ));
    drop(store);
    masters_cannot_be_read(module);
}

/// Through the raw PKCS#11 API, as any other program holding the PIN would try: the value
/// of each master is not readable (CKA_SENSITIVE / CKA_EXTRACTABLE), and the objects say so.
fn masters_cannot_be_read(module: &Path) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let ctx = Pkcs11::new(module).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    let objs = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    assert_eq!(objs.len(), 6, "two cities × three roles");
    for h in objs {
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Label,
                ],
            )
            .unwrap();
        let mut seen = 0;
        for a in &attrs {
            match a {
                Attribute::Sensitive(b) => {
                    assert!(*b);
                    seen += 1;
                }
                Attribute::Extractable(b) => {
                    assert!(!*b);
                    seen += 1;
                }
                Attribute::Label(l) => {
                    assert!(l.starts_with(b"cardvm:"));
                    seen += 1;
                }
                _ => {}
            }
        }
        assert_eq!(seen, 3);
        // The value is not among what the token returns.
        let value = session.get_attributes(h, &[AttributeType::Value]);
        match value {
            Err(_) => {}
            Ok(v) => assert!(
                !v.iter().any(|a| matches!(a, Attribute::Value(_))),
                "the token returned a master's value"
            ),
        }
    }
}
