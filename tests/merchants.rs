//! A merchant takes a payment from a cardholder at home, end to end on loopback: `cardvm
//! issuer serve` (a real HTTPS server process), a merchant signing with its own key, the
//! cardholder's `cardvm client pay --order` on a simulated card, the signed notification
//! (its first delivery refused by the merchant, then retried), a refund, and the day's
//! clearing with its signed files. Attacks: a forged merchant request, a reader calling
//! the merchant API, one merchant reading another's order, paying an order twice, a
//! tampered clearing file.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardvm::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use cardvm::online::client::{ClientError, MerchantClient};
use cardvm::online::protocol::{HDR_SIGNATURE, HDR_TIME, Notification, verify_notification};
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

fn merchant(cwd: &Path, url: &str, id: &str, key: &str) -> MerchantClient {
    let ca = std::fs::read(cwd.join("tls.crt")).expect("ca");
    MerchantClient::new(
        url,
        Some(&ca),
        id,
        Sm2PrivateKey::from_bytes(&key_file(&cwd.join(key))).expect("key"),
        Duration::from_secs(20),
    )
    .expect("merchant client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What the merchant's notification endpoint received: headers and body of each post.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// The merchant's notification endpoint: HTTPS on 127.0.0.1 under its own CA
/// (`merchant-tls.crt`, which the card company is told to trust with `--notify-ca`).
/// It refuses the first delivery with 500 and acknowledges the rest.
fn notification_endpoint(rt: &tokio::runtime::Runtime, cwd: &Path) -> (String, Received) {
    cardvm::online::service::install_crypto_provider();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("tls");
    std::fs::write(cwd.join("merchant-tls.crt"), ck.cert.pem()).expect("write");
    let got: Received = Arc::default();
    let seen = got.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/shop/notify",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let mut s = seen.lock().expect("lock");
                    s.push((h(HDR_TIME), h(HDR_SIGNATURE), body.to_vec()));
                    if s.len() == 1 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    let config = rt
        .block_on(axum_server::tls_rustls::RustlsConfig::from_pem(
            ck.cert.pem().into_bytes(),
            ck.signing_key.serialize_pem().into_bytes(),
        ))
        .expect("merchant TLS");
    listener.set_nonblocking(true).expect("nonblocking");
    rt.spawn(async move {
        match axum_server::tls_rustls::from_tcp_rustls(listener, config) {
            Ok(server) => {
                let _ = server.serve(app.into_make_service()).await;
            }
            Err(e) => eprintln!("merchant endpoint: {e}"),
        }
    });
    (format!("https://{addr}/shop/notify"), got)
}

fn pay(cwd: &Path, url: &str, order: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args([
            "client",
            "pay",
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
            "--order",
            order,
            "--sim",
            "c731.toml",
        ])
        .output()
        .expect("cardvm client pay")
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_merchant_is_paid_from_home_notified_and_cleared() {
    let s = setup("merchants");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    ok(cwd, &["keygen", "--out", "shop"]);
    ok(cwd, &["keygen", "--out", "cafe"]);
    let rt = runtime();
    let (notify_url, received) = notification_endpoint(&rt, cwd);
    let out = ok(
        cwd,
        &[
            "issuer",
            "merchant",
            "add",
            "shop",
            "--name",
            "Corner Shop",
            "--fee-bp",
            "60",
            "--account",
            "ICBC 6222 0000 1111",
            "--key",
            "shop.pub",
            "--notify-url",
            &notify_url,
        ],
    );
    assert!(
        out.contains("merchant shop (Corner Shop): fee 0.60 %"),
        "{out}"
    );
    ok(
        cwd,
        &[
            "issuer",
            "merchant",
            "add",
            "cafe",
            "--name",
            "Cafe",
            "--fee-bp",
            "25",
            "--account",
            "BOC 1",
            "--key",
            "cafe.pub",
        ],
    );
    // Notifications in clear go to this machine only.
    let e = fails(
        cwd,
        &[
            "issuer",
            "merchant",
            "add",
            "far",
            "--name",
            "Far",
            "--fee-bp",
            "1",
            "--account",
            "x",
            "--key",
            "cafe.pub",
            "--notify-url",
            "http://shop.example/notify",
        ],
    );
    assert!(e.contains("http:// only to this machine"), "{e}");
    let server = serve(cwd, &["--notify-ca", "merchant-tls.crt"]);
    let url = server.url.clone();
    let o = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args([
            "client",
            "recharge",
            "--server",
            &url,
            "--server-ca",
            "tls.crt",
            "--reader-dir",
            "r1",
            "--issuer-pub",
            "issuer.pub",
            "--city",
            "731",
            "--amount",
            "100.00",
            "--sim",
            "c731.toml",
        ])
        .output()
        .expect("recharge");
    assert!(o.status.success(), "{}", text(&o));

    let shop = merchant(cwd, &url, "shop", "shop.key");
    let cafe = merchant(cwd, &url, "cafe", "cafe.key");
    let o1 = rt
        .block_on(shop.create_order("A-1001", 2_500, "Two notebooks", None))
        .expect("order");
    assert_eq!(
        (o1.state.as_str(), o1.amount_display.as_str()),
        ("open", "25.00")
    );
    // The same order number again: the same order (a retried request).
    let again = rt
        .block_on(shop.create_order("A-1001", 2_500, "Two notebooks", None))
        .expect("again");
    assert_eq!(again.order_id, o1.order_id);
    // …with another amount: refused.
    assert_eq!(
        refused(rt.block_on(shop.create_order("A-1001", 9_999, "Two notebooks", None))),
        (409, "order_exists".into())
    );
    let o2 = rt
        .block_on(shop.create_order("A-1002", 1_000, "A pen", None))
        .expect("order");

    // Attacks on the merchant API.
    // A request signed with another key under the shop's id.
    let forged = merchant(cwd, &url, "shop", "cafe.key");
    assert_eq!(
        refused(rt.block_on(forged.create_order("A-666", 1, "forged", None))),
        (401, "unauthenticated".into())
    );
    assert_eq!(
        refused(rt.block_on(forged.refund(&o1.order_id, "forged"))),
        (401, "unauthenticated".into())
    );
    // Another merchant does not see the shop's order.
    assert_eq!(
        refused(rt.block_on(cafe.order(&o1.order_id))),
        (404, "unknown_order".into())
    );
    // A reader's signature is not a merchant's.
    let reader_client = cardvm::online::client::Client::new(
        &url,
        Some(&std::fs::read(cwd.join("tls.crt")).expect("ca")),
        "R1",
        Sm2PrivateKey::from_bytes(&key_file(&cwd.join("r1/reader.key"))).expect("key"),
        Duration::from_secs(20),
    )
    .expect("client");
    let r: Result<serde_json::Value, _> = rt.block_on(reader_client.post(
        "/v1/merchant/orders",
        &serde_json::json!({"request_id": "x1", "merchant_order": "R", "amount": 1, "description": "d"}),
    ));
    assert_eq!(refused(r).0, 401);
    // An unpaid order cannot be refunded.
    assert_eq!(
        refused(rt.block_on(shop.refund(&o1.order_id, "early"))),
        (409, "order_not_payable".into())
    );

    // The cardholder pays from home.
    let o = pay(cwd, &url, &o1.order_id);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("25.00 yuan to Corner Shop for Two notebooks")
            && t.contains("card company: purchase committed")
            && t.contains("[6/6]"),
        "{t}"
    );
    // Paid once: paying it again is refused before the card is touched.
    let o = pay(cwd, &url, &o1.order_id);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("is paid"), "{t}");
    let paid = rt.block_on(shop.order(&o1.order_id)).expect("query");
    assert_eq!(paid.state, "paid");
    assert_eq!(paid.fee, Some(15)); // 25.00 × 0.60 %
    assert!(
        paid.card.as_deref().is_some_and(|c| c.starts_with("****")),
        "{paid:?}"
    );
    let o = pay(cwd, &url, &o2.order_id);
    assert!(o.status.success(), "{}", text(&o));

    // The notification: refused once, retried, signed by the card company.
    let issuer = Sm2PublicKey::from_sec1_bytes(&key_file(&cwd.join("issuer.pub"))).expect("pub");
    let mut notes: Vec<Notification> = Vec::new();
    for _ in 0..120 {
        let got = received.lock().expect("lock").clone();
        notes = got
            .iter()
            .map(|(time, sig, body)| {
                verify_notification(&issuer, "shop", "/shop/notify", time, sig, body, now())
                    .unwrap_or_else(|e| panic!("notification does not verify: {e}"))
            })
            .collect();
        // The first delivery (whichever order it was for) was refused: that order's
        // notification comes again.
        let retried = notes
            .first()
            .is_some_and(|f| notes.iter().filter(|n| n.order_id == f.order_id).count() >= 2);
        let both = [&o1.order_id, &o2.order_id]
            .iter()
            .all(|id| notes.iter().any(|n| &n.order_id == *id));
        if retried && both {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let refused_first = notes.first().expect("a notification").order_id.clone();
    let first: Vec<_> = notes
        .iter()
        .filter(|n| n.order_id == refused_first)
        .collect();
    assert!(
        first.len() >= 2,
        "the refused delivery was not retried: {notes:?}"
    );
    assert_eq!(first[0].notify_id, first[1].notify_id);
    assert_eq!((first[0].attempt, first[1].attempt), (1, 2));
    let n1 = notes
        .iter()
        .find(|n| n.order_id == o1.order_id)
        .expect("order 1 notified");
    assert_eq!((n1.event.as_str(), n1.amount), ("order.paid", 2_500));
    // A notification edited on the way does not verify.
    let (time, sig, body) = received.lock().expect("lock")[0].clone();
    let edited = String::from_utf8(body)
        .expect("utf-8")
        .replace("\"amount\":", "\"amount\":1");
    assert!(
        verify_notification(
            &issuer,
            "shop",
            "/shop/notify",
            &time,
            &sig,
            edited.as_bytes(),
            now()
        )
        .is_err()
    );

    // The pen is refunded (a record the card company owes the cardholder).
    let r = rt
        .block_on(shop.refund(&o2.order_id, "out of stock"))
        .expect("refund");
    assert_eq!(r.state, "refunded");
    assert_eq!(
        refused(rt.block_on(shop.refund(&o2.order_id, "again"))),
        (409, "order_not_payable".into())
    );
    let shown = ok(cwd, &["issuer", "merchant", "show", "shop"]);
    assert!(
        shown.contains("A-1001") && shown.contains("paid") && shown.contains("[notified]"),
        "{shown}"
    );

    // A disabled merchant is refused.
    ok(cwd, &["issuer", "merchant", "disable", "cafe"]);
    assert_eq!(
        refused(rt.block_on(cafe.create_order("C-1", 100, "tea", None))),
        (403, "merchant_disabled".into())
    );
    drop(server);

    // Clearing: the day before (empty here) through the CLI, signed and verified; a
    // tampered file is caught.
    ok(
        cwd,
        &[
            "issuer",
            "clearing",
            "config",
            "--zone",
            "Asia/Shanghai",
            "--cutoff",
            "00:00",
        ],
    );
    let bd = cardvm::issuer::clearing::BusinessDay::new("Asia/Shanghai", "00:00").expect("day");
    let today = bd.day_of(now()).expect("today");
    let yesterday = today.yesterday().expect("yesterday").to_string();
    let out = ok(
        cwd,
        &[
            "issuer", "clearing", "run", "--date", &yesterday, "-o", "clearing",
        ],
    );
    assert!(out.contains(&format!("cleared {yesterday}")), "{out}");
    let summary = format!("clearing/clearing-{yesterday}.summary.json");
    let v = ok(cwd, &["issuer", "clearing", "verify", &summary]);
    assert!(v.contains("3 file(s) match"), "{v}");
    // The reader's journal against the ledger: everything it still holds was settled
    // as journaled, and the card's counters follow one another.
    let rec = ok(
        cwd,
        &[
            "issuer",
            "reconcile",
            "r1/reader.journal",
            "-o",
            "reconcile",
        ],
    );
    assert!(
        rec.contains("from 1 journal(s)") && rec.contains(" 0 finding(s)"),
        "{rec}"
    );
    let summary_path = rec.lines().last().expect("summary path").to_string();
    let v = ok(cwd, &["issuer", "clearing", "verify", &summary_path]);
    assert!(
        v.contains("reconcile") && v.contains("2 file(s) match"),
        "{v}"
    );
    let again = ok(
        cwd,
        &[
            "issuer", "clearing", "run", "--date", &yesterday, "-o", "clearing",
        ],
    );
    assert!(again.contains("already cleared"), "{again}");
    let today_err = fails(
        cwd,
        &["issuer", "clearing", "run", "--date", &today.to_string()],
    );
    assert!(
        today_err.contains("it is cleared after its end"),
        "{today_err}"
    );
    let csv = cwd.join(format!("clearing/clearing-{yesterday}.csv"));
    let mut body = std::fs::read_to_string(&csv).expect("csv");
    body.push_str("edited\n");
    std::fs::write(&csv, body).expect("write");
    let bad = fails(cwd, &["issuer", "clearing", "verify", &summary]);
    assert!(bad.contains("changed since it was signed"), "{bad}");

    // Today's traffic, cleared as the day's end would (the library takes the clock):
    // the card's balance moved by loads − purchases, the shop is credited its net.
    let day = rt.block_on(async {
        let l = cardvm::issuer::Ledger::open(&cwd.join("issuer.db").display().to_string())
            .await
            .expect("ledger");
        let (_, end) = bd.bounds(today).expect("bounds");
        let rows = l
            .list(&cardvm::issuer::ledger::Filter::default())
            .await
            .expect("rows");
        let mut days: Vec<_> = rows
            .iter()
            .map(|r| bd.day_of(r.issued_at).expect("day"))
            .collect();
        days.sort();
        days.dedup();
        let mut cleared = Vec::new();
        for d in days {
            let c = l.clear_day(&bd, d, end + 86_400 * 2).await.expect("clear");
            cleared.push(c.clearing().clone());
        }
        let first = rows
            .iter()
            .filter(|r| r.state == cardvm::issuer::TxnState::Committed)
            .min_by_key(|r| (r.issued_at, r.seq))
            .and_then(|r| r.balance_before)
            .expect("first balance");
        let last = rows
            .iter()
            .filter(|r| r.state == cardvm::issuer::TxnState::Committed)
            .max_by_key(|r| (r.issued_at, r.seq))
            .and_then(|r| r.balance_after)
            .expect("last balance");
        l.close().await;
        (cleared, first, last)
    });
    let (cleared, first, last) = day;
    let sum =
        |f: fn(&cardvm::issuer::clearing::Clearing) -> i64| -> i64 { cleared.iter().map(f).sum() };
    let loads = sum(|c| c.totals.loads.sum as i64);
    let purchases = sum(|c| c.totals.purchases.sum as i64);
    let refunds = sum(|c| c.totals.refunds.sum as i64);
    assert_eq!((loads, purchases, refunds), (10_000, 3_500, 1_000));
    assert_eq!(last as i64 - first as i64, loads - purchases);
    let shop_net: i64 = cleared
        .iter()
        .flat_map(|c| c.lines.iter())
        .filter(|l| l.scope == "merchant" && l.id == "shop")
        .map(|l| l.net)
        .sum();
    assert_eq!(shop_net, 3_500 - 1_000 - 15);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
