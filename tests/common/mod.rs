//! Shared by the CLI tests of the card company's side: a temporary world with a CA, a
//! provisioned reader `R1`, the issuer's keys and ledger, and the three cities.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, ecb_encrypt};

pub const PASS: &str = "correct horse battery staple";
pub const MLK: &str = "11223344556677888877665544332211";
pub const MPK: &str = "0123456789ABCDEFFEDCBA9876543210";
pub const MTK: &str = "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8";

pub struct Dir(pub PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("cardvm-issuer-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("temp dir");
    Dir(p)
}

pub fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .to_string_lossy()
        .into_owned()
}

pub fn cardvm(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args(args)
        .env("CARDVM_KEYSTORE_PASSPHRASE", PASS)
        .output()
        .expect("run cardvm")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = cardvm(cwd, args);
    assert!(o.status.success(), "cardvm {args:?} failed:\n{}", text(&o));
    text(&o)
}

pub fn fails(cwd: &Path, args: &[&str]) -> String {
    let o = cardvm(cwd, args);
    assert!(
        !o.status.success(),
        "cardvm {args:?} should fail:\n{}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The M1 sector key cardvm's issuer derives for `uid` from a 3DES master: the leftmost
/// 6 bytes of 3DES(MK, UID padded with 00), computed here with the ECB primitive.
pub fn m1_key(master: &str, uid: &[u8]) -> String {
    let mk = SecretKey::new(
        KeyAlg::Des3,
        KeyUsage::Encrypt,
        &cardvm::issuer::ledger::unhex(master).expect("hex"),
    )
    .expect("key");
    let mut f = [0u8; 8];
    f[..uid.len()].copy_from_slice(uid);
    let mut out = Vec::new();
    ecb_encrypt(&mk, &f, &mut out).expect("ecb");
    cardvm::issuer::ledger::hex(&out[..6])
}

pub fn masters(path: &Path, alg: &str) {
    std::fs::write(
        path,
        format!("alg = \"{alg}\"\nload = \"{MLK}\"\npurchase = \"{MPK}\"\ntac = \"{MTK}\"\n"),
    )
    .expect("write masters");
}

/// A CPU card of the city that holds the city's masters (it diversifies them itself).
pub fn cpu_card(src: &str, out: &Path) {
    let t = std::fs::read_to_string(repo(src)).expect("card");
    let mut lines = Vec::new();
    let mut in_keys = false;
    for l in t.lines() {
        if l.starts_with('[') {
            in_keys = l.trim() == "[keys]";
        }
        let key = l.split('=').next().unwrap_or("").trim();
        let l = match (in_keys, key) {
            (true, "master") => "master = true".to_string(),
            (true, "load") => format!("load = \"{MLK}\""),
            (true, "purchase") => format!("purchase = \"{MPK}\""),
            (true, "tac") => format!("tac = \"{MTK}\""),
            _ => l.to_string(),
        };
        lines.push(l);
    }
    std::fs::write(out, lines.join("\n") + "\n").expect("write card");
}

/// The city's M1 card with sector 1's keys set to the issuer's per-UID keys.
pub fn m1_card(out: &Path) {
    let t = std::fs::read_to_string(repo("scripts/city0571-m1/card.toml")).expect("card");
    let uid = [0xA1, 0xB2, 0xC3, 0xD4];
    let trailer = format!("{}6C378969{}", m1_key(MPK, &uid), m1_key(MLK, &uid));
    let t = t.replace("A0A1A2A3A4A56C378969B0B1B2B3B4B5", &trailer);
    std::fs::write(out, t).expect("write card");
}

pub struct Setup {
    pub _d: Dir,
    pub cwd: PathBuf,
}

pub fn setup(tag: &str) -> Setup {
    let d = dir(tag);
    let cwd = d.0.clone();
    let c = |a: &[&str]| ok(&cwd, a);
    c(&[
        "ca",
        "init",
        "--dir",
        "ca",
        "--subject",
        "CN=City Card CA,O=City Card",
        "--days",
        "3650",
    ]);
    c(&["reader", "init", "--reader-id", "R1", "--dir", "r1"]);
    c(&[
        "ca",
        "issue",
        "--dir",
        "ca",
        "--csr",
        "r1/R1.csr",
        "--days",
        "365",
        "-o",
        "R1.crt",
    ]);
    c(&[
        "reader",
        "install",
        "R1.crt",
        "--ca",
        "ca/ca.crt",
        "--dir",
        "r1",
    ]);
    c(&["ca", "crl", "--dir", "ca", "--days", "7", "-o", "ca.crl"]);
    c(&["keygen", "--out", "issuer"]);
    c(&["issuer", "keys", "init", "--store", "issuer.keys"]);
    masters(&cwd.join("m731.toml"), "des3");
    masters(&cwd.join("m755.toml"), "sm4");
    masters(&cwd.join("m571.toml"), "des3");
    for city in ["731", "755", "571"] {
        c(&[
            "issuer",
            "keys",
            "import",
            city,
            &format!("m{city}.toml"),
            "--store",
            "issuer.keys",
        ]);
    }
    let out = c(&[
        "issuer",
        "init",
        "--ca",
        "ca/ca.crt",
        "--crl",
        "ca.crl",
        "--key",
        "issuer.key",
        "--keys",
        "issuer.keys",
    ]);
    assert!(out.contains("trusts 1 CA certificate"), "{out}");
    for (city, dir, alg, recover) in [
        ("731", "scripts/city0731-des3", "des3", true),
        ("755", "scripts/city0755-sm4", "sm4", true),
        ("571", "scripts/city0571-m1", "m1", false),
    ] {
        let (q, l, r) = (
            repo(&format!("{dir}/query.casm")),
            // Host-secured where the card allows it (no card key in any bundle); an M1
            // card needs its sector keys in the reader.
            repo(&if alg == "m1" {
                format!("{dir}/load.casm")
            } else {
                format!("{dir}/load_host.cvs")
            }),
            repo(&format!("{dir}/recover.casm")),
        );
        let p = repo(&format!("{dir}/purchase_host.cvs"));
        let mut args = vec![
            "issuer", "city", "add", city, "--alg", alg, "--query", &q, "--load", &l,
        ];
        if recover {
            // A CPU city also takes online payments, host-secured.
            args.extend(["--recover", &r, "--purchase", &p]);
        }
        c(&args);
    }
    let out = c(&["issuer", "reader", "add", "R1.crt"]);
    assert!(out.contains("reader R1 registered"), "{out}");
    Setup { _d: d, cwd }
}

pub const READER: [&str; 6] = [
    "--reader-key",
    "r1/reader.key",
    "--issuer-pub",
    "issuer.pub",
    "--reader-id",
    "R1",
];

/// A `cardvm issuer serve` process on 127.0.0.1 (an OS-chosen port); killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed TLS certificate for 127.0.0.1: tls.crt (also the client's --server-ca)
/// and tls.key.
pub fn tls(cwd: &Path) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("TLS certificate");
    std::fs::write(cwd.join("tls.crt"), ck.cert.pem()).expect("write");
    std::fs::write(cwd.join("tls.key"), ck.signing_key.serialize_pem()).expect("write");
}

pub fn serve(cwd: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args([
            "issuer",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "tls.crt",
            "--tls-key",
            "tls.key",
            "--rate",
            "1000",
            "--burst",
            "1000",
        ])
        .args(extra)
        .env("CARDVM_KEYSTORE_PASSPHRASE", PASS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cardvm issuer serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("cardvm issuer: serving ") {
                let url = rest.split("/v1").next().unwrap_or("").to_string();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the service did not start within 60 s");
    Server { child, url }
}
