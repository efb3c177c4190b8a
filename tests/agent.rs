//! The local reader agent (docs/agent.md), as a page in the cardholder's browser would use
//! it and as another page would attack it: only the configured origin gets an answer (CORS
//! and Chrome's Private Network Access preflight included), a DNS-rebinding host name is
//! refused, nothing works before pairing, a money-moving request needs the cardholder's
//! confirmation of this card and this amount, and the event stream carries the kiosk
//! schema (card arriving and leaving, each step, one result). Against the card company's
//! HTTPS service on loopback; the card is simulated.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardvm::online::agent::{AgentConfig, CardSlot, ServiceLink, spawn};
use cardvm::sim::CpuCard;
use cardvm::transport::CardTransport;
use serde_json::{Value, json};

const PAGE: &str = "https://pay.citycard.example";

/// A simulated card that can be taken off the reader.
struct Slot {
    card: Arc<Mutex<CpuCard>>,
    present: Arc<AtomicBool>,
    /// Set by the test to keep a transaction on the card.
    hold: Arc<AtomicBool>,
}

impl CardSlot for Slot {
    fn with_card(
        &mut self,
        f: &mut dyn FnMut(&mut dyn CardTransport) -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.present.load(Ordering::SeqCst) {
            return Err("no card on the reader".into());
        }
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut card = self.card.lock().map_err(|_| "poisoned".to_string())?;
        f(&mut *card)
    }

    fn present(&mut self) -> Option<bool> {
        Some(self.present.load(Ordering::SeqCst))
    }
}

struct Page {
    http: reqwest::Client,
    base: String,
    origin: String,
}

impl Page {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, HeaderView, Value) {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("origin", &self.origin)
            .json(&body);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        let resp = r.send().await.expect("agent");
        let status = resp.status().as_u16();
        let headers = HeaderView(resp.headers().clone());
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, headers, v)
    }
}

struct HeaderView(reqwest::header::HeaderMap);
impl HeaderView {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Reads the event stream into `into` until the task is dropped.
async fn listen(url: String, into: Arc<Mutex<Vec<Value>>>) {
    let http = reqwest::Client::new();
    let mut resp = http
        .get(url)
        .header("origin", PAGE)
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status().as_u16(), 200);
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line = buf[..i].to_string();
            buf.drain(..=i);
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<Value>(data)
            {
                into.lock().expect("lock").push(v);
            }
        }
    }
}

async fn wait_for(events: &Arc<Mutex<Vec<Value>>>, what: impl Fn(&Value) -> bool) -> bool {
    for _ in 0..100 {
        if events.lock().expect("lock").iter().any(&what) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_card_companys_page_drives_the_reader_with_confirmation() {
    let dir = std::env::temp_dir().join(format!("cardvm-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let _tmp = cluster::Temp(dir.clone());
    let c = cluster::Cluster::start(&dir.join("l.db").display().to_string(), 1, 1, false).await;
    let (reader, _) = c.reader(0);
    let card = Arc::new(Mutex::new(cluster::card(7, 500)));
    let present = Arc::new(AtomicBool::new(true));
    let hold = Arc::new(AtomicBool::new(false));
    let card_id = cardvm::issuer::ledger::hex(card.lock().expect("lock").card_number());
    let agent = spawn(
        AgentConfig {
            origins: vec![PAGE.into()],
            city: cluster::CITY,
            service: ServiceLink {
                url: c.services[0].url(),
                ca_pem: Some(c.tls_ca.clone()),
                reader_id: c.readers[0].0.clone(),
                key: c.readers[0].1.clone(),
                timeout: Duration::from_secs(20),
            },
            poll: Duration::from_millis(50),
        },
        reader,
        Box::new(Slot {
            card: card.clone(),
            present: present.clone(),
            hold: hold.clone(),
        }),
        0,
    )
    .await
    .expect("agent");
    let page = Page {
        http: reqwest::Client::new(),
        base: agent.url.clone(),
        origin: PAGE.into(),
    };
    let evil = Page {
        http: reqwest::Client::new(),
        base: agent.url.clone(),
        origin: "https://evil.example".into(),
    };

    // Another page: refused, and without CORS headers the browser shows it nothing.
    let (s, h, v) = evil.post("/v1/pair", None, json!({})).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("origin_refused")));
    assert!(h.get("access-control-allow-origin").is_none());
    let pre = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/recharge", agent.url),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-private-network", "true")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status().as_u16(), 403);
    assert!(
        pre.headers()
            .get("access-control-allow-private-network")
            .is_none()
    );
    // No origin at all, or a rebinding host name: refused.
    let no_origin = reqwest::Client::new()
        .post(format!("{}/v1/pair", agent.url))
        .send()
        .await
        .expect("agent");
    assert_eq!(no_origin.status().as_u16(), 403);
    let port = agent.url.rsplit(':').next().expect("port");
    let rebound = reqwest::Client::new()
        .post(format!("{}/v1/pair", agent.url))
        .header("origin", PAGE)
        .header("host", format!("cards.evil.example:{port}"))
        .send()
        .await
        .expect("agent");
    assert_eq!(rebound.status().as_u16(), 403);

    // The card company's page: the Private Network Access preflight is answered.
    let pre = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/recharge", agent.url),
        )
        .header("origin", PAGE)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .header("access-control-request-private-network", "true")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status().as_u16(), 204);
    let hv = |n: &str| {
        pre.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(hv("access-control-allow-origin").as_deref(), Some(PAGE));
    assert_eq!(
        hv("access-control-allow-private-network").as_deref(),
        Some("true")
    );

    // Nothing before pairing.
    let (s, _, v) = page.post("/v1/card", None, json!({})).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("not_paired")));
    let (s, h, v) = page.post("/v1/pair", None, json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(h.get("access-control-allow-origin"), Some(PAGE));
    let token = v["token"].as_str().expect("token").to_string();
    let (s, _, _) = page.post("/v1/card", Some("0000"), json!({})).await;
    assert_eq!(s, 401, "a made-up token");

    let events = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::spawn(listen(
        format!("{}/v1/events?token={token}", agent.url),
        events.clone(),
    ));
    assert!(
        wait_for(&events, |e| e["event"] == "card_present").await,
        "the card on the reader is announced"
    );

    // The card first, then the confirmed recharge.
    let (s, _, v) = page.post("/v1/card", Some(&token), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (200, Some("card_read")), "{v}");
    assert_eq!(v["balance_before_fen"], 500);
    assert_eq!(v["card_id"], card_id.as_str());

    // A confirmation for another card, or another amount: refused, nothing charged.
    let (s, _, v) = page
        .post(
            "/v1/recharge",
            Some(&token),
            json!({"amount_fen": 10_000, "confirm": {"card_id": "4100000000000000", "amount_fen": 10_000}}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("confirmation")), "{v}");
    let (s, _, v) = page
        .post(
            "/v1/recharge",
            Some(&token),
            json!({"amount_fen": 90_000, "confirm": {"card_id": card_id, "amount_fen": 10_000}}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("confirmation")), "{v}");
    let (s, _, v) = page
        .post("/v1/recharge", Some(&token), json!({"amount_fen": 10_000}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("bad_json")),
        "no confirmation: {v}"
    );
    assert_eq!(card.lock().expect("lock").balance(), 500);

    let (s, _, v) = page
        .post(
            "/v1/recharge",
            Some(&token),
            json!({"amount_fen": 10_000, "confirm": {"card_id": card_id, "amount_fen": 10_000}}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (200, Some("loaded")), "{v}");
    assert_eq!(v["balance_after_fen"], 10_500);
    assert_eq!(card.lock().expect("lock").balance(), 10_500);
    assert!(
        wait_for(&events, |e| e["event"] == "result" && e["code"] == "loaded").await,
        "the result on the stream"
    );
    let steps: Vec<(u64, u64)> = events
        .lock()
        .expect("lock")
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

    // One transaction at a time: while one is on the card, another is `409 busy`, and
    // the presence poll does not make a request busy.
    hold.store(true, Ordering::SeqCst);
    let first = {
        let (http, base, t) = (page.http.clone(), page.base.clone(), token.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/card"))
                .header("origin", PAGE)
                .header("authorization", format!("Bearer {t}"))
                .json(&json!({}))
                .send()
                .await
                .expect("agent")
                .status()
                .as_u16()
        })
    };
    let mut running = false;
    for _ in 0..200 {
        let status: Value = page
            .http
            .get(format!("{}/v1/status", page.base))
            .header("origin", PAGE)
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("agent")
            .json()
            .await
            .expect("json");
        if status["busy"] == true {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "the first request is on the card");
    let (s, _, v) = page.post("/v1/card", Some(&token), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("busy")), "{v}");
    hold.store(false, Ordering::SeqCst);
    assert_eq!(first.await.expect("first"), 200);
    for _ in 0..5 {
        let (s, _, v) = page.post("/v1/card", Some(&token), json!({})).await;
        assert_eq!((s, v["code"].as_str()), (200, Some("card_read")), "{v}");
    }

    // The card taken off the reader: announced; a request now says there is no card.
    present.store(false, Ordering::SeqCst);
    assert!(wait_for(&events, |e| e["event"] == "card_removed").await);
    let (s, _, v) = page.post("/v1/card", Some(&token), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (200, Some("no_card")), "{v}");

    listener.abort();
    agent.shutdown().await;
    c.shutdown().await;
}
