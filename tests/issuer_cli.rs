//! A card company on the command line: CA, reader provisioning, master keys, cities, and
//! one recharge per city (query → bundle → run → settle) on simulated cards, with the
//! refusals a user sees as one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, ecb_encrypt};

const PASS: &str = "correct horse battery staple";
const MLK: &str = "11223344556677888877665544332211";
const MPK: &str = "0123456789ABCDEFFEDCBA9876543210";
const MTK: &str = "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8";

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("cardvm-issuer-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("temp dir");
    Dir(p)
}

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .to_string_lossy()
        .into_owned()
}

fn cardvm(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args(args)
        .env("CARDVM_KEYSTORE_PASSPHRASE", PASS)
        .output()
        .expect("run cardvm")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = cardvm(cwd, args);
    assert!(o.status.success(), "cardvm {args:?} failed:\n{}", text(&o));
    text(&o)
}

fn fails(cwd: &Path, args: &[&str]) -> String {
    let o = cardvm(cwd, args);
    assert!(
        !o.status.success(),
        "cardvm {args:?} should fail:\n{}",
        text(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    stderr
}

/// The M1 sector key cardvm's issuer derives for `uid` from a 3DES master: the leftmost
/// 6 bytes of 3DES(MK, UID padded with 00), computed here with the ECB primitive.
fn m1_key(master: &str, uid: &[u8]) -> String {
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

fn masters(path: &Path, alg: &str) {
    std::fs::write(
        path,
        format!("alg = \"{alg}\"\nload = \"{MLK}\"\npurchase = \"{MPK}\"\ntac = \"{MTK}\"\n"),
    )
    .expect("write masters");
}

/// A CPU card of the city that holds the city's masters (it diversifies them itself).
fn cpu_card(src: &str, out: &Path) {
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
fn m1_card(out: &Path) {
    let t = std::fs::read_to_string(repo("scripts/city0571-m1/card.toml")).expect("card");
    let uid = [0xA1, 0xB2, 0xC3, 0xD4];
    let trailer = format!("{}6C378969{}", m1_key(MPK, &uid), m1_key(MLK, &uid));
    let t = t.replace("A0A1A2A3A4A56C378969B0B1B2B3B4B5", &trailer);
    std::fs::write(out, t).expect("write card");
}

struct Setup {
    _d: Dir,
    cwd: PathBuf,
}

fn setup(tag: &str) -> Setup {
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
            repo(&format!("{dir}/load.casm")),
            repo(&format!("{dir}/recover.casm")),
        );
        let mut args = vec![
            "issuer", "city", "add", city, "--alg", alg, "--query", &q, "--load", &l,
        ];
        if recover {
            args.extend(["--recover", &r]);
        }
        c(&args);
    }
    let out = c(&["issuer", "reader", "add", "R1.crt"]);
    assert!(out.contains("reader R1 registered"), "{out}");
    Setup { _d: d, cwd }
}

const READER: [&str; 6] = [
    "--reader-key",
    "r1/reader.key",
    "--issuer-pub",
    "issuer.pub",
    "--reader-id",
    "R1",
];

fn recharge(cwd: &Path, city: &str, card: &str, amount: &str, tag: &str) -> String {
    let c = |a: &[&str]| ok(cwd, a);
    let q = format!("q{city}.sealed");
    if !cwd.join(&q).exists() {
        c(&[
            "issuer",
            "query-script",
            "--reader",
            "R1",
            "--city",
            city,
            "-o",
            &q,
        ]);
    }
    let qr = format!("q-{tag}.json");
    let mut a = vec![
        "run",
        q.as_str(),
        "--query",
        "--sim",
        card,
        "--receipt",
        qr.as_str(),
    ];
    a.extend(READER);
    c(&a);
    let b = format!("b-{tag}");
    let out = c(&[
        "issuer", "bundle", "--query", &qr, "--amount", amount, "-o", &b,
    ]);
    assert!(out.contains("bundle R1/"), "{out}");
    let (cmd, data, r) = (
        format!("{b}/command.sealed"),
        format!("{b}/data.sealed"),
        format!("r-{tag}.json"),
    );
    let mut a = vec![
        "run",
        cmd.as_str(),
        "--data",
        data.as_str(),
        "--sim",
        card,
        "--save",
        "--receipt",
        r.as_str(),
    ];
    a.extend(READER);
    c(&a);
    c(&["issuer", "settle", &r])
}

#[test]
fn three_cities_recharge_through_the_cli() {
    let s = setup("three");
    let cwd = &s.cwd;
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    cpu_card("scripts/city0755-sm4/card.toml", &cwd.join("c755.toml"));
    m1_card(&cwd.join("c571.toml"));
    for (city, card, amount) in [
        ("731", "c731.toml", "100.00"),
        ("755", "c755.toml", "2500"),
        ("571", "c571.toml", "12.34"),
    ] {
        let out = recharge(cwd, city, card, amount, city);
        assert!(
            out.contains("load R1/") && out.contains(" committed"),
            "{city}: {out}"
        );
    }
    // Settling the same receipt again changes nothing.
    let out = ok(cwd, &["issuer", "settle", "r-731.json"]);
    assert!(out.contains("already settled"), "{out}");
    // The ledger: three committed loads with their balances.
    let json = ok(cwd, &["issuer", "ledger", "--json", "--state", "committed"]);
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 3, "{json}");
    let by_city = |c: u64| rows.iter().find(|r| r["city"] == c).expect("row").clone();
    assert_eq!(by_city(731)["amount"], 10_000);
    assert_eq!(by_city(731)["balance_after"], 10_500);
    assert_eq!(by_city(755)["amount"], 2_500);
    assert_eq!(by_city(571)["amount"], 1_234);
    let table = ok(cwd, &["issuer", "ledger"]);
    assert!(table.contains("3 transaction(s)"), "{table}");
}

#[test]
fn refusals_are_one_line() {
    let s = setup("refuse");
    let cwd = &s.cwd;
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    ok(
        cwd,
        &[
            "issuer",
            "query-script",
            "--reader",
            "R1",
            "--city",
            "731",
            "-o",
            "q.sealed",
        ],
    );
    let mut a = vec![
        "run",
        "q.sealed",
        "--query",
        "--sim",
        "c731.toml",
        "--receipt",
        "q.json",
    ];
    a.extend(READER);
    ok(cwd, &a);
    let e = fails(
        cwd,
        &[
            "issuer", "bundle", "--query", "q.json", "--amount", "2000.00", "-o", "b",
        ],
    );
    assert!(e.contains("over the per-load limit"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = fails(
        cwd,
        &[
            "issuer", "bundle", "--query", "q.json", "--amount", "1e3", "-o", "b",
        ],
    );
    assert!(e.contains("--amount 1e3"), "{e}");
    ok(
        cwd,
        &[
            "issuer",
            "block",
            "4100000089999985",
            "--reason",
            "reported lost",
        ],
    );
    let e = fails(
        cwd,
        &[
            "issuer", "bundle", "--query", "q.json", "--amount", "1.00", "-o", "b",
        ],
    );
    assert!(
        e.contains("card 4100000089999985 is blocked: reported lost"),
        "{e}"
    );
    ok(cwd, &["issuer", "unblock", "4100000089999985"]);
    // A tampered query receipt.
    let q = std::fs::read_to_string(cwd.join("q.json")).expect("q");
    let t = q.replacen("\"balance\": 500", "\"balance\": 0", 1);
    assert_ne!(q, t, "the receipt names the balance");
    std::fs::write(cwd.join("t.json"), t).expect("write");
    let e = fails(
        cwd,
        &[
            "issuer", "bundle", "--query", "t.json", "--amount", "1.00", "-o", "b",
        ],
    );
    assert!(e.contains("signature does not verify"), "{e}");
    // A revoked reader: revoke, publish the CRL, install it.
    let serial = ok(
        cwd,
        &[
            "ca",
            "verify",
            "--ca",
            "ca/ca.crt",
            "--crl",
            "ca.crl",
            "R1.crt",
        ],
    );
    let serial = serial
        .split_whitespace()
        .skip_while(|w| *w != "serial")
        .nth(1)
        .map(|s| s.trim_matches(|c: char| !c.is_ascii_hexdigit()).to_string())
        .unwrap_or_else(|| "01".into());
    ok(cwd, &["ca", "revoke", "--dir", "ca", &serial]);
    ok(
        cwd,
        &["ca", "crl", "--dir", "ca", "--days", "7", "-o", "ca2.crl"],
    );
    ok(cwd, &["issuer", "crl", "ca2.crl"]);
    let e = fails(
        cwd,
        &[
            "issuer", "bundle", "--query", "q.json", "--amount", "1.00", "-o", "b",
        ],
    );
    assert!(e.to_lowercase().contains("revoked"), "{e}");
    // A receipt file that is not a receipt.
    std::fs::write(cwd.join("x.json"), "{}").expect("write");
    let e = fails(cwd, &["issuer", "settle", "x.json"]);
    assert!(e.contains("x.json"), "{e}");
}
