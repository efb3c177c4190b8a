//! Recharges paid first, end to end on loopback: a city that loads only paid recharge
//! orders, a payment provider process (tests/provider/notify.py, signing with its own
//! RSA key through OpenSSL) and an SM2-signing provider. Attacks: a load without an
//! order, with an unpaid, underpaid, expired or already used order, for another card or
//! amount, and a forged provider notification — none gets a bundle.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::online::client::Client;
use cardvm::online::protocol::{provider_signing_input, to_hex};
use common::*;

fn key_file(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).expect("key file");
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("key line");
    cardvm::issuer::ledger::unhex(line).expect("hex")
}

fn recharge(cwd: &Path, url: &str, amount: &str, order: Option<&str>) -> (bool, String) {
    let mut args = vec![
        "client",
        "recharge",
        "--server",
        url,
        "--server-ca",
        "tls.crt",
        "--reader-dir",
        "r1",
        "--issuer-pub",
        "issuer.pub",
        "--city",
        "731",
        "--amount",
        amount,
        "--sim",
        "c731.toml",
    ];
    if let Some(o) = order {
        args.extend(["--order", o]);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args(&args)
        .output()
        .expect("cardvm client recharge");
    (o.status.success(), text(&o))
}

/// The provider process: (status, body).
fn provider_notify(
    cwd: &Path,
    url: &str,
    key: &str,
    order: &str,
    amount: u64,
    r: &str,
) -> (u16, String) {
    let o = Command::new("/usr/bin/python3")
        .current_dir(cwd)
        .arg(repo("tests/provider/notify.py"))
        .args([url, "tls.crt", "bank", key, order, &amount.to_string(), r])
        .output()
        .expect("python3 provider");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "provider: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (status, body) = out.trim().split_once(' ').expect("status and body");
    (status.parse().expect("status"), body.to_string())
}

fn openssl(cwd: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn only_a_recharge_paid_first_is_loaded_once() {
    let s = setup("paid-first");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    let dir = "scripts/city0731-des3";
    let (q, l, r, p) = (
        repo(&format!("{dir}/query.casm")),
        repo(&format!("{dir}/load_host.cvs")),
        repo(&format!("{dir}/recover.casm")),
        repo(&format!("{dir}/purchase_host.cvs")),
    );
    ok(
        cwd,
        &[
            "issuer",
            "city",
            "add",
            "731",
            "--alg",
            "des3",
            "--query",
            &q,
            "--load",
            &l,
            "--recover",
            &r,
            "--purchase",
            &p,
            "--paid-first",
        ],
    );
    // The bank signs with RSA (its key made by OpenSSL), the wallet with SM2.
    for k in ["bank", "forger"] {
        openssl(
            cwd,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &format!("{k}.pem"),
            ],
        );
    }
    openssl(
        cwd,
        &["pkey", "-in", "bank.pem", "-pubout", "-out", "bank.pub.pem"],
    );
    let out = ok(
        cwd,
        &[
            "issuer",
            "provider",
            "add",
            "bank",
            "--name",
            "Bank",
            "--alg",
            "rsa-sha256",
            "--key",
            "bank.pub.pem",
        ],
    );
    assert!(out.contains("signs with rsa-sha256"), "{out}");
    ok(cwd, &["keygen", "--out", "wallet"]);
    ok(
        cwd,
        &[
            "issuer",
            "provider",
            "add",
            "wallet",
            "--name",
            "Wallet",
            "--alg",
            "sm2",
            "--key",
            "wallet.pub",
        ],
    );
    // A key of the wrong kind is refused at registration.
    let e = fails(
        cwd,
        &[
            "issuer",
            "provider",
            "add",
            "w2",
            "--name",
            "W",
            "--alg",
            "rsa-sha256",
            "--key",
            "wallet.pub",
        ],
    );
    assert!(e.contains("not an RSA public key"), "{e}");
    let server = serve(cwd, &[]);
    let url = server.url.clone();

    // No order: no bundle, and the card is untouched.
    let (done, t) = recharge(cwd, &url, "100.00", None);
    assert!(
        !done && t.contains("loads only recharges paid first"),
        "{t}"
    );
    // "[2/5] card 4100000089999985: balance 5.00"
    let card = t
        .lines()
        .find(|l| l.contains(": balance"))
        .and_then(|l| l.split("card ").nth(1))
        .and_then(|r| r.split(':').next())
        .expect("the card's id in the progress")
        .to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let reader = Client::new(
        &url,
        Some(&std::fs::read(cwd.join("tls.crt")).expect("ca")),
        "R1",
        Sm2PrivateKey::from_bytes(&key_file(&cwd.join("r1/reader.key"))).expect("key"),
        Duration::from_secs(20),
    )
    .expect("client");
    let order = rt
        .block_on(reader.recharge_order(731, &card, 10_000, "bank"))
        .expect("order");
    assert_eq!(order.state, "unpaid");
    let id = order.order_id.clone();

    // Unpaid.
    let (done, t) = recharge(cwd, &url, "100.00", Some(&id));
    assert!(!done && t.contains("not paid"), "{t}");
    // A notification signed with another key is refused and records nothing.
    let (status, body) = provider_notify(cwd, &url, "forger.pem", &id, 10_000, "B-1");
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        rt.block_on(reader.recharge_order_state(&id))
            .expect("state")
            .state,
        "unpaid"
    );
    // The bank's notification, from its own process.
    let (status, body) = provider_notify(cwd, &url, "bank.pem", &id, 10_000, "B-1");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"result\":\"recorded\"") && body.contains("\"state\":\"paid\""),
        "{body}"
    );
    // Again (the provider retries): the same answer, nothing changes.
    let (status, body) = provider_notify(cwd, &url, "bank.pem", &id, 10_000, "B-1");
    assert!(
        status == 200 && body.contains("\"result\":\"already\""),
        "{body}"
    );
    // Another payment for the same order is not this one.
    let (status, body) = provider_notify(cwd, &url, "bank.pem", &id, 10_000, "B-2");
    assert_eq!(status, 409, "{body}");
    // Paid, but another amount: refused.
    let (done, t) = recharge(cwd, &url, "99.00", Some(&id));
    assert!(!done && t.contains("is not the order's"), "{t}");
    // Paid: loaded, once.
    let (done, t) = recharge(cwd, &url, "100.00", Some(&id));
    assert!(done && t.contains("card company: load committed"), "{t}");
    let (done, t) = recharge(cwd, &url, "100.00", Some(&id));
    assert!(!done && t.contains("it is loaded"), "{t}");
    assert_eq!(
        rt.block_on(reader.recharge_order_state(&id))
            .expect("state")
            .state,
        "loaded"
    );

    // Underpaid: recorded, never loaded.
    let under = rt
        .block_on(reader.recharge_order(731, &card, 5_000, "bank"))
        .expect("order");
    let (status, body) = provider_notify(cwd, &url, "bank.pem", &under.order_id, 4_999, "B-3");
    assert!(
        status == 200 && body.contains("\"state\":\"mispaid\""),
        "{body}"
    );
    let (done, t) = recharge(cwd, &url, "50.00", Some(&under.order_id));
    assert!(!done && t.contains("reported 4999 paid, not 5000"), "{t}");

    // An order for another card.
    let other = rt
        .block_on(reader.recharge_order(731, "4100000000000001", 1_000, "bank"))
        .expect("order");
    let (status, _) = provider_notify(cwd, &url, "bank.pem", &other.order_id, 1_000, "B-4");
    assert_eq!(status, 200);
    let (done, t) = recharge(cwd, &url, "10.00", Some(&other.order_id));
    assert!(!done && t.contains("not this card"), "{t}");

    // The SM2 wallet, signed in process.
    let wallet_order = rt
        .block_on(reader.recharge_order(731, &card, 2_000, "wallet"))
        .expect("order");
    let wallet = Sm2PrivateKey::from_bytes(&key_file(&cwd.join("wallet.key"))).expect("key");
    let body = serde_json::json!({
        "order_id": wallet_order.order_id, "amount": 2_000, "provider_ref": "W-1", "status": "paid"
    })
    .to_string();
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let sig = wallet
        .sign(
            &mut cardvm::crypto::rng::os_rng(),
            &provider_signing_input("wallet", time, body.as_bytes()),
        )
        .expect("sign");
    // Posted by a second process, as a provider would.
    let o = Command::new("/usr/bin/python3")
        .current_dir(cwd)
        .arg("-c")
        .arg(
            "import ssl,sys,urllib.request as u\n\
             r=u.Request(sys.argv[1]+'/v1/provider/notify',data=sys.argv[2].encode(),method='POST',\
             headers={'content-type':'application/json','x-cardvm-provider':'wallet',\
             'x-cardvm-time':sys.argv[3],'x-cardvm-signature':sys.argv[4]})\n\
             print(u.urlopen(r,context=ssl.create_default_context(cafile='tls.crt')).status)",
        )
        .args([&url, &body, &time.to_string(), &to_hex(&sig)])
        .output()
        .expect("post");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (done, t) = recharge(cwd, &url, "20.00", Some(&wallet_order.order_id));
    assert!(done, "{t}");
    drop(server);

    // Expired after it was paid: not loaded.
    rt.block_on(async {
        let l = cardvm::issuer::Ledger::open(&cwd.join("issuer.db").display().to_string())
            .await
            .expect("ledger");
        l.create_recharge_order("P-OLD", 731, &card, 3_000, "bank", 1_000, 2_000)
            .await
            .expect("order");
        l.record_payment("P-OLD", "bank", 3_000, "B-OLD", 1_500)
            .await
            .expect("paid");
        l.close().await;
    });
    let server = serve(cwd, &[]);
    let (done, t) = recharge(cwd, &server.url, "30.00", Some("P-OLD"));
    assert!(!done && t.contains("it is expired"), "{t}");
    // The ledger: two loads committed, 100.00 and 20.00, each with its order.
    let rows: Vec<serde_json::Value> = ok(cwd, &["issuer", "ledger", "--json"])
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut loads: Vec<_> = rows
        .iter()
        .filter(|r| r["kind"] == "load" && r["state"] == "committed")
        .map(|r| r["amount"].as_u64().unwrap_or(0))
        .collect();
    loads.sort();
    assert_eq!(loads, [2_000, 10_000], "{rows:?}");
}
