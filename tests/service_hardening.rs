//! The HTTPS service against hostile clients, over real TLS on loopback (`cardvm issuer
//! serve` as a process): headers that never end, a body that stalls, more connections
//! than the cap, a flood of forged requests from one address. Each is cut off by the
//! service, and the service keeps answering. No timing assertions: each test waits,
//! bounded, for what the service must do.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::online::client::{Client, ClientError};
use common::*;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn addr(url: &str) -> String {
    url.trim_start_matches("https://").to_string()
}

/// A TLS connection to the service, handshake done, trusting the test's certificate.
fn tls_connect(cwd: &Path, url: &str) -> std::io::Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    cardvm::online::service::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cwd.join("tls.crt"))?;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(c.map_err(|e| std::io::Error::other(e.to_string()))?)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tcp = TcpStream::connect(addr(url))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads until the server closes the connection (or 20 s pass: an error here).
fn read_to_close(tls: &mut Tls) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "still open after 20 s: {}",
                    String::from_utf8_lossy(&got)
                ));
            }
            // Closed without close_notify, or reset: closed all the same.
            Err(_) => return Ok(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client signing as `reader` with a key of its own (no registered reader has it).
fn forger(cwd: &Path, url: &str, reader: &str) -> Client {
    let ca = std::fs::read(cwd.join("tls.crt")).expect("ca");
    Client::new(
        url,
        Some(&ca),
        reader,
        Sm2PrivateKey::generate(&mut cardvm::crypto::rng::os_rng()),
        Duration::from_secs(20),
    )
    .expect("client")
}

fn started(tag: &str, extra: &[&str]) -> (Setup, Server) {
    let s = setup(tag);
    tls(&s.cwd);
    let server = serve(&s.cwd, extra);
    (s, server)
}

/// Headers that never end are cut off after --header-timeout; a body that stalls gets
/// `408 timeout` after --body-timeout; the service answers the next client.
#[test]
fn slow_headers_and_slow_bodies_are_cut_off() {
    let (s, server) = started(
        "harden-slow",
        &["--header-timeout", "1", "--body-timeout", "1"],
    );
    let mut t = tls_connect(&s.cwd, &server.url).expect("connect");
    t.write_all(b"POST /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ")
        .expect("write");
    t.flush().expect("flush");
    read_to_close(&mut t).expect("the server closes a connection whose headers never end");

    let mut t = tls_connect(&s.cwd, &server.url).expect("connect");
    t.write_all(
        b"POST /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"request_id\":",
    )
    .expect("write");
    t.flush().expect("flush");
    let answer = read_to_close(&mut t).expect("the server answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");

    let c = forger(&s.cwd, &server.url, "R1");
    let rt = runtime();
    assert_eq!(rt.block_on(c.health()).expect("health").status, "ok");
}

/// More connections than --max-connections: the extra one is closed before its TLS
/// handshake; once one closes, a new one is served.
#[test]
fn connections_beyond_the_cap_are_closed() {
    let (s, server) = started(
        "harden-cap",
        &["--max-connections", "3", "--header-timeout", "60"],
    );
    let held: Vec<Tls> = (0..3)
        .map(|_| tls_connect(&s.cwd, &server.url).expect("within the cap"))
        .collect();
    assert!(
        tls_connect(&s.cwd, &server.url).is_err(),
        "a fourth connection completed its TLS handshake"
    );
    drop(held);
    let until = Instant::now() + Duration::from_secs(20);
    let mut t = loop {
        match tls_connect(&s.cwd, &server.url) {
            Ok(t) => break t,
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no connection after the others closed: {e}"),
        }
    };
    t.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let answer = read_to_close(&mut t).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A flood of forged requests from one address is refused by the per-address limit
/// before any signature work (`429`, naming the address); forged and unknown readers
/// get the same `401` until then.
#[test]
fn forged_requests_are_limited_per_address_before_authentication() {
    let (s, server) = started(
        "harden-flood",
        &["--addr-burst", "6", "--addr-rate", "0.01"],
    );
    let rt = runtime();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let c = forger(
            &s.cwd,
            &server.url,
            if i % 2 == 0 { "R1" } else { "NOBODY" },
        );
        match rt.block_on(c.query_script(731)) {
            Err(ClientError::Refused {
                status,
                code,
                error,
                ..
            }) => {
                statuses.push((status, code.clone()));
                if status == 429 {
                    assert!(error.contains("address 127.0.0.1"), "{error}");
                }
            }
            other => panic!("forged request: {other:?}"),
        }
    }
    let unauth = statuses.iter().filter(|(s, _)| *s == 401).count();
    let limited = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!((unauth, limited), (6, 4), "{statuses:?}");
}

/// `GET /metrics`: requests by path and status (a forged request counted as 401, with its
/// SM2 verification), latency histograms, the ledger's transactions by state, the CRLs'
/// age and time left — and nothing of a reader's identity.
#[test]
fn metrics_count_requests_ledger_crls_and_sm2() {
    let (s, server) = started("harden-metrics", &[]);
    let rt = runtime();
    let c = forger(&s.cwd, &server.url, "R1");
    assert!(rt.block_on(c.query_script(731)).is_err(), "forged");
    assert_eq!(rt.block_on(c.health()).expect("health").status, "ok");
    let mut t = tls_connect(&s.cwd, &server.url).expect("connect");
    t.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let m = read_to_close(&mut t).expect("metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for want in [
        "cardvm_requests_total{path=\"/v1/query-script\",status=\"401\"} 1",
        "cardvm_requests_total{path=\"/v1/health\",status=\"200\"} 1",
        "cardvm_request_duration_seconds_count{path=\"/v1/query-script\"} 1",
        "# TYPE cardvm_ledger_transactions gauge",
        "cardvm_crl_expires_in_seconds{issuer=",
        "cardvm_crl_age_seconds{issuer=",
    ] {
        assert!(m.contains(want), "missing {want}:\n{m}");
    }
    let verifies: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("cardvm_sm2_operations_total{op=\"verify\"} "))
        .and_then(|n| n.trim().parse().ok())
        .expect("SM2 verify count");
    assert!(verifies >= 1, "{m}");
    assert!(!m.contains("R1"), "a reader id in the metrics:\n{m}");
}
