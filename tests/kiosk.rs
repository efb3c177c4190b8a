//! The kiosk contract (docs/kiosk.md): `cardvm client card|recharge|purchase --json`
//! prints JSON Lines events on stdout in every case — progress, then exactly one result
//! with a stable code — and exits with its class's code; messages for the cardholder never
//! name an operator command; a TLS failure is one sentence; a card that stops answering is
//! reported as not answering, not as removed. Against a real `cardvm issuer serve` on
//! loopback, and the library's online client for the mute card.

#[path = "support/cluster.rs"]
mod cluster;
mod common;

use std::path::Path;
use std::process::Command;

use cardvm::online::kiosk::{Class, Code};
use common::*;

struct Run {
    events: Vec<serde_json::Value>,
    exit: i32,
    stderr: String,
}

impl Run {
    fn result(&self) -> &serde_json::Value {
        let results: Vec<_> = self
            .events
            .iter()
            .filter(|e| e["event"] == "result")
            .collect();
        assert_eq!(results.len(), 1, "exactly one result: {:#?}", self.events);
        assert_eq!(
            self.events.last().map(|e| &e["event"]),
            Some(&serde_json::json!("result")),
            "the result comes last"
        );
        results[0]
    }

    fn code(&self) -> &str {
        self.result()["code"].as_str().unwrap_or("")
    }
}

/// `cardvm client WHAT --json …`: every stdout line must be a JSON object.
fn client(cwd: &Path, what: &str, url: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "client",
        what,
        "--server",
        url,
        "--reader-dir",
        "r1",
        "--issuer-pub",
        "issuer.pub",
        "--city",
        "731",
        "--sim",
        "c731.toml",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args(&args)
        .output()
        .expect("cardvm client");
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let events = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    Run {
        events,
        exit: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).to_string(),
    }
}

fn check_messages(r: &serde_json::Value) {
    for key in ["message", "message_zh"] {
        let m = r[key].as_str().unwrap_or("");
        assert!(!m.is_empty(), "{r}");
        assert!(!m.contains("cardvm") && !m.contains("--"), "{key}: {m}");
    }
    let code = Code::ALL
        .iter()
        .find(|c| c.as_str() == r["code"])
        .unwrap_or_else(|| panic!("undocumented code {}", r["code"]));
    assert_eq!(
        r["class"],
        serde_json::to_value(code.class()).expect("class")
    );
    assert_eq!(r["exit_code"], code.class().exit_code());
}

#[test]
fn a_kiosk_reads_events_and_exit_codes_in_every_case() {
    let s = setup("kiosk");
    let cwd = &s.cwd;
    tls(cwd);
    cpu_card("scripts/city0731-des3/card.toml", &cwd.join("c731.toml"));
    let server = serve(cwd, &[]);
    let ca = ["--server-ca", "tls.crt"];

    // The card first: its balance, before an amount is chosen.
    let r = client(cwd, "card", &server.url, &ca);
    assert_eq!((r.code(), r.exit), ("card_read", 0), "{}", r.stderr);
    let card = r
        .events
        .iter()
        .find(|e| e["event"] == "card")
        .expect("card");
    assert_eq!(card["balance_fen"], 500);
    assert_eq!(card["balance"], "5.00");
    check_messages(r.result());

    // A recharge: five steps numbered 1..5 of 5, then `loaded` with the balances.
    let r = client(
        cwd,
        "recharge",
        &server.url,
        &[&ca[..], &["--amount", "100.00"]].concat(),
    );
    assert_eq!((r.code(), r.exit), ("loaded", 0), "{}", r.stderr);
    let steps: Vec<(u64, u64)> = r
        .events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| {
            (
                e["step"].as_u64().unwrap_or(0),
                e["of"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(steps, [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]);
    let res = r.result();
    assert_eq!(
        (
            &res["amount_fen"],
            &res["amount"],
            &res["balance_before_fen"],
            &res["balance_after_fen"]
        ),
        (
            &serde_json::json!(10_000),
            &serde_json::json!("100.00"),
            &serde_json::json!(500),
            &serde_json::json!(10_500)
        )
    );
    assert!(res["receipt"].is_object());
    check_messages(res);

    // Declined by the card company: over the single-load limit (100000 fen).
    let r = client(
        cwd,
        "recharge",
        &server.url,
        &[&ca[..], &["--amount", "2000.00"]].concat(),
    );
    assert_eq!(
        (r.code(), r.exit),
        ("over_limit", Class::Declined.exit_code())
    );
    check_messages(r.result());
    // A purchase over the balance: insufficient, nothing sealed, exit 11.
    let r = client(
        cwd,
        "purchase",
        &server.url,
        &[&ca[..], &["--amount", "900.00"]].concat(),
    );
    assert_eq!(
        (r.code(), r.exit),
        ("insufficient_balance", Class::CardDeclined.exit_code())
    );
    check_messages(r.result());

    // The service's certificate not trusted (no --server-ca): one sentence, exit 14.
    let r = client(cwd, "recharge", &server.url, &["--amount", "1.00"]);
    assert_eq!(
        (r.code(), r.exit),
        ("service_untrusted", 14),
        "{}",
        r.stderr
    );
    let detail = r.result()["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.contains("not trusted"), "{detail}");
    assert!(
        !detail.contains('{') && !detail.contains("Error {") && !detail.contains('\n'),
        "{detail}"
    );
    // Nothing listens: unreachable, exit 14, still one result on stdout.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let r = client(
        cwd,
        "recharge",
        &format!("https://127.0.0.1:{closed}"),
        &[&ca[..], &["--amount", "1.00"]].concat(),
    );
    assert_eq!((r.code(), r.exit), ("service_unreachable", 14));
    assert_eq!(r.result()["amount"], "1.00");
    // A reader the service does not know: out of service, exit 20.
    std::fs::write(cwd.join("r1/reader.id"), "R9\n").expect("write");
    let r = client(
        cwd,
        "recharge",
        &server.url,
        &[&ca[..], &["--amount", "1.00"]].concat(),
    );
    assert_eq!((r.code(), r.exit), ("reader_not_accepted", 20));
    std::fs::write(cwd.join("r1/reader.id"), "R1\n").expect("write");
    // A city this service does not serve: the cardholder is not told an operator command.
    let mut args = ca.to_vec();
    args.extend(["--amount", "1.00"]);
    let o = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(cwd)
        .args([
            "client",
            "recharge",
            "--server",
            &server.url,
            "--reader-dir",
            "r1",
            "--issuer-pub",
            "issuer.pub",
            "--city",
            "999",
            "--sim",
            "c731.toml",
            "--json",
        ])
        .args(&args)
        .output()
        .expect("cardvm");
    let last: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("result line");
    assert_eq!(last["code"], "not_served");
    check_messages(&last);
}

/// A card that stops answering is `card_not_answering` before the commit point and
/// `interrupted_not_answering` after it — never "removed".
#[test]
fn a_mute_card_is_not_answering_not_removed() {
    use cardvm::online::client::{CardFault, recharge};
    use cardvm::online::kiosk::classify;
    use cardvm::transport::{CardTransport, TransportError};

    /// The card goes mute from APDU `at` on (counted from 1).
    struct Mute<'a> {
        card: &'a mut cardvm::sim::CpuCard,
        n: u32,
        at: u32,
    }
    impl CardTransport for Mute<'_> {
        fn transmit(&mut self, apdu: &[u8], resp: &mut [u8]) -> Result<usize, TransportError> {
            self.n += 1;
            if self.n >= self.at {
                return Err(TransportError::Timeout);
            }
            self.card.transmit(apdu, resp)
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("cardvm-kiosk-mute-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let _tmp = cluster::Temp(dir.clone());
        let c = cluster::Cluster::start(&dir.join("l.db").display().to_string(), 1, 1, false).await;
        let (mut reader, client) = c.reader(0);
        // Mute from the first APDU: the query never completes.
        let mut card = cluster::card(1, 1_000);
        let mut mute = Mute {
            card: &mut card,
            n: 0,
            at: 1,
        };
        let r = recharge(&client, &mut reader, &mut mute, cluster::CITY, 100, |_| {}).await;
        assert_eq!(classify(&r, false), Code::CardNotAnswering, "{r:?}");
        // Count the load's APDUs on a healthy card, then go mute at its last one (the
        // CREDIT, after the commit point).
        let mut probe = cluster::card(2, 1_000);
        let before = probe.apdu_index();
        let ok = recharge(&client, &mut reader, &mut probe, cluster::CITY, 100, |_| {}).await;
        assert_eq!(classify(&ok, false), Code::Loaded, "{ok:?}");
        let used = probe.apdu_index() - before;
        let mut card = cluster::card(3, 1_000);
        let mut mute = Mute {
            card: &mut card,
            n: 0,
            at: used,
        };
        let r = recharge(&client, &mut reader, &mut mute, cluster::CITY, 100, |_| {}).await;
        assert_eq!(
            r.as_ref().ok().and_then(|o| o.card_fault),
            Some(CardFault::NotAnswering),
            "{r:?}"
        );
        assert_eq!(classify(&r, false), Code::InterruptedNotAnswering, "{r:?}");
        c.shutdown().await;
    });
}

/// docs/kiosk.md's table is exactly `Code::ALL`, each with its class and exit code.
#[test]
fn the_documented_codes_are_the_library_codes() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kiosk.md"))
        .expect("docs/kiosk.md");
    let table = doc.split("## Codes").nth(1).expect("a Codes section");
    let rows: Vec<(String, String, i32)> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_string(),
                cells[2].trim_matches('`').to_string(),
                cells[3].parse().expect("exit code"),
            )
        })
        .collect();
    let expected: Vec<(String, String, i32)> = Code::ALL
        .iter()
        .map(|c| {
            (
                c.as_str().to_string(),
                serde_json::to_value(c.class())
                    .expect("class")
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                c.class().exit_code(),
            )
        })
        .collect();
    assert_eq!(rows, expected);
}
