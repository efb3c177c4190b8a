//! `cardvm issuer-keys` (to become `cardvm issuer keys`) with the encrypted file store, as an
//! operator and as an attacker would use it: secrets only from the environment or a file, every
//! refusal one line, no master key in any output, and what the CLI writes is what the library
//! reads back and diversifies to the reference's vector.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, cbc_mac_full};
use cardvm::issuer::keys::{FileKeyStore, KeyRole, MasterKeyStore};

const PASS_ENV: &str = "CARDVM_KEYSTORE_PASSPHRASE";
const PASS: &str = "a long operator passphrase";
const MK: &str = "11223344556677888877665544332211";
const OTHER: [&str; 2] = [
    "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8",
    "C1C2C3C4C5C6C7C8D1D2D3D4D5D6D7D8",
];

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-keycli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cardvm(args: &[&str], pass: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cardvm"));
    c.arg("issuer-keys").args(args).env_remove(PASS_ENV);
    if let Some(p) = pass {
        c.env(PASS_ENV, p);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No output may carry a master key (or a long piece of one), in any case.
fn no_keys(out: &str) {
    for k in [MK, OTHER[0], OTHER[1]] {
        for piece in [&k[..12], &k[12..24], &k[20..]] {
            assert!(
                !out.to_uppercase().contains(piece),
                "key bytes in output: {out}"
            );
        }
    }
}

fn ok(args: &[&str], pass: Option<&str>) -> String {
    let o = cardvm(args, pass);
    let t = text(&o);
    assert!(
        o.status.success(),
        "cardvm issuer-keys {args:?} failed: {t}"
    );
    no_keys(&t);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str], pass: Option<&str>) -> String {
    let o = cardvm(args, pass);
    assert!(
        !o.status.success(),
        "cardvm issuer-keys {args:?} should fail"
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    no_keys(&text(&o));
    err
}

fn master_file(dir: &Path, name: &str, alg: &str) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "alg = \"{alg}\"\nload = \"{MK}\"\npurchase = \"{}\"\ntac = \"{}\"\n",
            OTHER[0], OTHER[1]
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_owned()
}

fn fingerprint(k: &SecretKey) -> Vec<u8> {
    let mut v = cbc_mac_full(k, b"").unwrap().as_slice().to_vec();
    v.extend_from_slice(cbc_mac_full(k, &[0x5A; 33]).unwrap().as_slice());
    v
}

fn hex16(s: &str) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (i, b) in o.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    o
}

#[test]
fn file_store_through_the_cli() {
    let d = tmp_dir("file");
    let store = d.join("masters.cks");
    let s = store.to_str().unwrap();
    let des3 = master_file(&d, "731.toml", "des3");
    let sm4 = master_file(&d, "1.toml", "sm4");
    let pass_file = d.join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();

    // No passphrase: refused, pointing at the environment variable and the file option.
    let e = fails(&["init", "--store", s], None);
    assert!(
        e.contains(PASS_ENV) && e.contains("--passphrase-file"),
        "{e}"
    );
    assert!(!store.exists());
    // There is no way to give the passphrase on the command line.
    let e = String::from_utf8_lossy(
        &cardvm(&["init", "--store", s, "--passphrase", PASS], None).stderr,
    )
    .into_owned();
    assert!(e.contains("unexpected argument"), "{e}");
    assert!(!store.exists());

    let out = ok(&["init", "--store", s], Some(PASS));
    assert!(
        out.contains("created key store") && out.contains("Argon2id"),
        "{out}"
    );
    let e = fails(&["init", "--store", s], Some(PASS));
    assert!(e.contains("already exists"), "{e}");

    // Import from the environment and from a passphrase file (newline stripped).
    ok(&["import", "731", &des3, "--store", s], Some(PASS));
    ok(
        &["import", "1", &sm4, "--store", s, "--passphrase-file", pf],
        None,
    );
    assert_eq!(ok(&["list", "--store", s], Some(PASS)), "1 sm4\n731 des3\n");

    // An existing city needs --replace.
    let e = fails(&["import", "731", &des3, "--store", s], Some(PASS));
    assert!(e.contains("city 731 already has master keys"), "{e}");
    ok(
        &["import", "731", &des3, "--store", s, "--replace"],
        Some(PASS),
    );

    // Wrong passphrase, tampered file: the same one-line refusal.
    let wrong = format!("cardvm: key store {s}: wrong passphrase or tampered file\n");
    assert_eq!(fails(&["list", "--store", s], Some("not it")), wrong);
    let good = std::fs::read(&store).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x04;
    std::fs::write(&store, &bad).unwrap();
    assert_eq!(fails(&["list", "--store", s], Some(PASS)), wrong);
    std::fs::write(&store, &good[..good.len() - 1]).unwrap();
    assert_eq!(fails(&["list", "--store", s], Some(PASS)), wrong);
    std::fs::write(&store, &good).unwrap();

    // A bad master file names the file and the field, never the value.
    let bad_file = d.join("bad.toml");
    std::fs::write(
        &bad_file,
        format!(
            "alg = \"des3\"\nload = \"{MK}\"\npurchase = \"{MK}\"\ntac = \"{}\"\n",
            OTHER[1]
        ),
    )
    .unwrap();
    let e = fails(
        &["import", "2", bad_file.to_str().unwrap(), "--store", s],
        Some(PASS),
    );
    assert!(
        e.contains("bad.toml") && e.contains("`load` and `purchase` are the same key"),
        "{e}"
    );
    let e = fails(&["generate", "3", "--store", s], Some(PASS));
    assert!(e.contains("PKCS#11 token"), "{e}");

    // What the CLI wrote, the library reads, and diversifies to the reference vector.
    let lib = FileKeyStore::open(&store, PASS.as_bytes()).unwrap();
    assert_eq!(
        lib.cities().unwrap(),
        vec![(1, KeyAlg::Sm4), (731, KeyAlg::Des3)]
    );
    let serial = [0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85];
    let want = [
        (731, KeyAlg::Des3, "A0068F366D0535ADF42057760F84B2F5"),
        (1, KeyAlg::Sm4, "18DC6B934AF686E3CA806AC3D4095DB7"),
    ];
    for (city, alg, dk) in want {
        let k = lib.card_key(city, KeyRole::Load, &serial).unwrap();
        assert_eq!(k.usage(), KeyUsage::Load);
        let reference = SecretKey::new(alg, KeyUsage::Load, &hex16(dk)).unwrap();
        assert_eq!(fingerprint(&k), fingerprint(&reference), "city {city}");
    }
    // The file holds no master in the clear.
    let bytes = std::fs::read(&store).unwrap();
    for k in [MK, OTHER[0], OTHER[1]] {
        let k = hex16(k);
        assert!(!bytes.windows(6).any(|w| w == &k[..6] || w == &k[10..]));
    }
}
