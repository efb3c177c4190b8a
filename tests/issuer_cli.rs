//! A card company on the command line: CA, reader provisioning, master keys, cities, and
//! one recharge per city (query → bundle → run → settle) on simulated cards, with the
//! refusals a user sees as one line.

mod common;

use common::*;
use std::path::Path;

/// One recharge by hand: `issuer query-script`, `run --query`, `issuer bundle`, `run` (a
/// host-secured bundle reaches the card company at `host`), `issuer settle`.
fn recharge(cwd: &Path, host: &str, city: &str, card: &str, amount: &str, tag: &str) -> String {
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
        "--host",
        host,
        "--server-ca",
        "tls.crt",
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
    // The card company's service answers the host-secured loads' MAC2 (docs/host.md).
    tls(cwd);
    let server = serve(cwd, &[]);
    for (city, card, amount) in [
        ("731", "c731.toml", "100.00"),
        ("755", "c755.toml", "2500"),
        ("571", "c571.toml", "12.34"),
    ] {
        let out = recharge(cwd, &server.url, city, card, amount, city);
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
