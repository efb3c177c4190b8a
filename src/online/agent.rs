//! The local reader agent (`cardvm agent`, docs/agent.md): the card company's web page,
//! in the cardholder's browser, drives the reader on the cardholder's desk through it.
//!
//! The agent listens on loopback only and answers **only the configured origins** (the
//! card company's page): a request from any other origin, or with no origin, gets `403`
//! and no CORS headers, so a browser never lets another page read the answer; a preflight
//! (including Chrome's Private Network Access, `Access-Control-Request-Private-Network`)
//! is answered for the configured origins only. The `Host` header must name loopback, so
//! a DNS-rebinding page cannot reach it under another name.
//!
//! A page **pairs** first (`POST /v1/pair`) and gets a token; every other request carries
//! it (`Authorization: Bearer …`; the event stream, which a browser's `EventSource` opens
//! without headers, as `?token=`). A money-moving request carries the **cardholder's
//! confirmation** — the amount and card number the page showed and the cardholder
//! accepted: the agent reads the card first and refuses (`409 confirmation`) when the
//! card on the reader or the amount is not the confirmed one.
//!
//! Events (`GET /v1/events`, server-sent events, one JSON object per `data:` line) use the
//! kiosk schema ([`super::kiosk`]): `progress`, `card`, `result`, plus `card_present`
//! and `card_removed` when the reader reports a card arriving or leaving. A transaction's
//! HTTP answer is its `result` event, whatever the outcome; the agent's own refusals
//! (origin, token, body, confirmation, busy) are `{"code","error"}` with a 4xx status.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::client::{CardInfo, Client, RechargeError, Step};
use super::kiosk::{Code, Event, Final, Progress};
use crate::reader::Reader;
use crate::transport::CardTransport;

/// Where the agent finds the card for each transaction.
pub trait CardSlot: Send {
    /// Runs `f` with the card on the reader now (a simulated card saves its state after).
    fn with_card(
        &mut self,
        f: &mut dyn FnMut(&mut dyn CardTransport) -> Result<(), String>,
    ) -> Result<(), String>;

    /// Whether a card is on the reader now (`None`: the slot cannot tell); polled for the
    /// `card_present` and `card_removed` events.
    fn present(&mut self) -> Option<bool> {
        None
    }
}

/// How the agent reaches the card company (a client is made per transaction, on the
/// transaction's own runtime).
#[derive(Clone)]
pub struct ServiceLink {
    /// `https://host:port`.
    pub url: String,
    /// The service's TLS CA (PEM), if not the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// This reader's id.
    pub reader_id: String,
    /// This reader's key.
    pub key: crate::crypto::sm2::Sm2PrivateKey,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for ServiceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLink")
            .field("url", &self.url)
            .field("reader_id", &self.reader_id)
            .finish_non_exhaustive()
    }
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The origins allowed to drive the reader, exactly as browsers send them
    /// (`https://pay.citycard.example`).
    pub origins: Vec<String>,
    /// The city whose cards this reader serves.
    pub city: u32,
    /// The card company.
    pub service: ServiceLink,
    /// How often the card slot is polled for a card arriving or leaving.
    pub poll: Duration,
}

struct Card {
    reader: Reader,
    slot: Box<dyn CardSlot>,
}

/// Paired tokens kept at once (the oldest is forgotten first).
const MAX_TOKENS: usize = 8;

struct Agent {
    config: AgentConfig,
    card: Mutex<Card>,
    /// A transaction is running: another request is `409 busy` (the card's lock alone
    /// would also be held, briefly, by the presence poll).
    busy: std::sync::atomic::AtomicBool,
    tokens: Mutex<VecDeque<String>>,
    events: broadcast::Sender<String>,
    /// Whether a card is on the reader, as last polled (a new event stream starts with it).
    present: Mutex<Option<bool>>,
    port: u16,
}

/// A refusal by the agent itself.
fn refuse(status: StatusCode, code: &str, error: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "code": code, "error": error })),
    )
        .into_response()
}

impl Agent {
    fn publish(&self, e: &Event) {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = self.events.send(line);
        }
    }

    fn paired(&self, token: &str) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .iter()
            .any(|t| crate::crypto::ct_eq(t.as_bytes(), token.as_bytes()))
    }
}

/// Origin, Host and CORS, before anything else (module docs).
async fn guard(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| {
            [
                format!("127.0.0.1:{}", agent.port),
                format!("localhost:{}", agent.port),
            ]
            .iter()
            .any(|ok| h.eq_ignore_ascii_case(ok))
        });
    if !host_ok {
        return refuse(
            StatusCode::FORBIDDEN,
            "host_refused",
            "the agent answers only as 127.0.0.1 or localhost",
        );
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let Some(origin) = origin.filter(|o| agent.config.origins.iter().any(|a| a == o)) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "origin_refused",
            "this page may not use the card reader",
        );
    };
    let allow = HeaderValue::from_str(&origin).unwrap_or(HeaderValue::from_static("null"));
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        if req
            .headers()
            .get("access-control-request-private-network")
            .is_some_and(|v| v == "true")
        {
            h.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return r;
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn unpaired() -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        "not_paired",
        "pair this page with the agent first",
    )
}

async fn pair(State(agent): State<Arc<Agent>>) -> Response {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no randomness",
        );
    }
    let token = super::protocol::to_hex(&bytes);
    {
        let mut tokens = agent.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() == MAX_TOKENS {
            tokens.pop_front();
        }
        tokens.push_back(token.clone());
    }
    axum::Json(serde_json::json!({ "token": token, "city": agent.config.city })).into_response()
}

async fn status(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    if !bearer(&headers).is_some_and(|t| agent.paired(t)) {
        return unpaired();
    }
    let busy = agent.busy.load(std::sync::atomic::Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "city": agent.config.city,
        "busy": busy,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn event_stream(State(agent): State<Arc<Agent>>, Query(q): Query<TokenQuery>) -> Response {
    if !agent.paired(&q.token) {
        return unpaired();
    }
    let rx = agent.events.subscribe();
    // A page that subscribes late still learns whether a card is on the reader.
    let now: Vec<Result<SseEvent, Infallible>> =
        (*agent.present.lock().unwrap_or_else(|e| e.into_inner()))
            .map(|p| Ok(SseEvent::default().data(presence_event(p))))
            .into_iter()
            .collect();
    let later = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => return Some((Ok::<_, Infallible>(SseEvent::default().data(line)), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(now), later);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The cardholder's confirmation of a money-moving request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    card_id: String,
    amount_fen: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RechargeBody {
    amount_fen: u64,
    confirm: Confirm,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayBody {
    order_id: String,
    confirm: Confirm,
}

#[derive(Debug, Clone)]
enum Job {
    Read,
    Recharge(u64, Confirm2),
    Pay(String, Confirm2),
}

#[derive(Debug, Clone)]
struct Confirm2 {
    card_id: String,
    amount_fen: u64,
}

/// Why a job stopped before the card company was asked for anything.
enum Stop {
    Refused(StatusCode, &'static str, String),
    Final(Box<Final>),
}

async fn read(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    run_job(agent, &headers, Job::Read).await
}

async fn recharge(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match serde_json::from_slice::<RechargeBody>(&body) {
        Ok(b) => {
            let c = Confirm2 {
                card_id: b.confirm.card_id,
                amount_fen: b.confirm.amount_fen,
            };
            run_job(agent, &headers, Job::Recharge(b.amount_fen, c)).await
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    }
}

async fn pay(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match serde_json::from_slice::<PayBody>(&body) {
        Ok(b) => {
            let c = Confirm2 {
                card_id: b.confirm.card_id,
                amount_fen: b.confirm.amount_fen,
            };
            run_job(agent, &headers, Job::Pay(b.order_id, c)).await
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
    }
}

async fn run_job(agent: Arc<Agent>, headers: &HeaderMap, job: Job) -> Response {
    if !bearer(headers).is_some_and(|t| agent.paired(t)) {
        return unpaired();
    }
    let worker = agent.clone();
    let done = tokio::task::spawn_blocking(move || {
        use std::sync::atomic::Ordering;
        if worker
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Stop::Refused(
                StatusCode::CONFLICT,
                "busy",
                "the reader is busy with another request".into(),
            ));
        }
        /// Clears `busy` however the job ends.
        struct Idle<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _idle = Idle(&worker.busy);
        // Waits for a presence poll that holds the card, never for another job.
        let mut guard = worker.card.lock().unwrap_or_else(|p| p.into_inner());
        let card = &mut *guard;
        job_on_card(&worker, card, &job)
    })
    .await;
    match done {
        Ok(Ok(f)) => {
            agent.publish(&Event::Result(f.clone()));
            axum::Json(&*f).into_response()
        }
        Ok(Err(Stop::Final(f))) => {
            agent.publish(&Event::Result(f.clone()));
            axum::Json(&*f).into_response()
        }
        Ok(Err(Stop::Refused(status, code, error))) => refuse(status, code, &error),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("the transaction's task failed: {e}"),
        ),
    }
}

/// One job on the card, on this blocking thread with its own runtime and client.
fn job_on_card(agent: &Agent, card: &mut Card, job: &Job) -> Result<Box<Final>, Stop> {
    let amount = match job {
        Job::Read => 0,
        Job::Recharge(a, _) => *a,
        Job::Pay(_, c) => c.amount_fen,
    };
    let setup = |e: String| Stop::Final(Box::new(Final::new(Code::ReaderNotAccepted, amount, e)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| setup(e.to_string()))?;
    let s = &agent.config.service;
    let client = Client::new(
        &s.url,
        s.ca_pem.as_deref(),
        &s.reader_id,
        s.key.clone(),
        s.timeout,
    )
    .map_err(|e| setup(e.to_string()))?;
    let city = agent.config.city;
    let Card { reader, slot } = card;
    let mut outcome: Option<Result<Box<Final>, Stop>> = None;
    let ran = slot.with_card(&mut |t: &mut dyn CardTransport| {
        let mut t = t;
        // The card on the reader now, read first: a money-moving request must be for it.
        let info = rt.block_on(super::client::read_card(&client, reader, &mut t, city));
        let info: CardInfo = match info {
            Ok(i) => i,
            Err(e) => {
                let r = Err(e);
                outcome = Some(Err(Stop::Final(Box::new(Final::of(&r, amount, false)))));
                return Ok(());
            }
        };
        agent.publish(&super::kiosk::card_event(&info));
        let confirmed = |c: &Confirm2, amount: u64| -> Result<(), Stop> {
            if !c.card_id.eq_ignore_ascii_case(&info.card_id) {
                return Err(Stop::Refused(
                    StatusCode::CONFLICT,
                    "confirmation",
                    format!(
                        "the card on the reader is {}, not the confirmed {}",
                        info.card_id, c.card_id
                    ),
                ));
            }
            if c.amount_fen != amount {
                return Err(Stop::Refused(
                    StatusCode::CONFLICT,
                    "confirmation",
                    format!(
                        "the amount is {amount} fen, not the confirmed {} fen",
                        c.amount_fen
                    ),
                ));
            }
            Ok(())
        };
        let mut steps = Progress::new(matches!(job, Job::Pay(..)), matches!(job, Job::Pay(..)));
        let progress = |st: &Step| agent.publish(&steps.event(st));
        let result = match job {
            Job::Read => {
                let mut f = Final::new(Code::CardRead, 0, format!("card {}", info.card_id));
                f.card_id = Some(info.card_id.clone());
                f.balance_before_fen = info.balance;
                outcome = Some(Ok(Box::new(f)));
                return Ok(());
            }
            Job::Recharge(a, c) => {
                if let Err(stop) = confirmed(c, *a) {
                    outcome = Some(Err(stop));
                    return Ok(());
                }
                (
                    rt.block_on(super::client::recharge(
                        &client, reader, &mut t, city, *a, progress,
                    )),
                    *a,
                    false,
                )
            }
            Job::Pay(order, c) => {
                let o = match rt.block_on(client.order(order)) {
                    Ok(o) => o,
                    Err(e) => {
                        let r = Err(RechargeError::Service(e));
                        outcome = Some(Err(Stop::Final(Box::new(Final::of(
                            &r,
                            c.amount_fen,
                            true,
                        )))));
                        return Ok(());
                    }
                };
                if let Err(stop) = confirmed(c, o.amount) {
                    outcome = Some(Err(stop));
                    return Ok(());
                }
                (
                    rt.block_on(super::client::pay_order(
                        &client, reader, &mut t, city, order, progress,
                    )),
                    o.amount,
                    true,
                )
            }
        };
        let (r, amount, purchase) = result;
        outcome = Some(Ok(Box::new(Final::of(&r, amount, purchase))));
        Ok(())
    });
    match (ran, outcome) {
        (_, Some(o)) => o,
        (Err(e), None) => Err(Stop::Final(Box::new(Final::new(Code::NoCard, amount, e)))),
        (Ok(()), None) => Err(Stop::Final(Box::new(Final::new(
            Code::Internal,
            amount,
            "the card slot did not run the transaction".into(),
        )))),
    }
}

/// `card_present` or `card_removed`.
fn presence_event(present: bool) -> String {
    let event = if present {
        "card_present"
    } else {
        "card_removed"
    };
    serde_json::json!({ "event": event }).to_string()
}

/// Polls the slot for a card arriving or leaving (when the reader is not in use).
fn watch(agent: Arc<Agent>) {
    let mut last: Option<bool> = None;
    loop {
        std::thread::sleep(agent.config.poll);
        if Arc::strong_count(&agent) == 1 {
            return;
        }
        let now = match agent.card.try_lock() {
            Ok(mut g) => g.slot.present(),
            Err(_) => continue,
        };
        if let Some(p) = now
            && now != last
        {
            *agent.present.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            let _ = agent.events.send(presence_event(p));
            last = now;
        }
    }
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// Stops it and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Starts the agent on `127.0.0.1:port` (0: any free port), with the reader and the card
/// slot it owns from now on.
pub async fn spawn(
    config: AgentConfig,
    reader: Reader,
    slot: Box<dyn CardSlot>,
    port: u16,
) -> Result<RunningAgent, String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("agent: cannot listen on 127.0.0.1:{port}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("agent: {e}"))?
        .port();
    let (events, _) = broadcast::channel(256);
    let agent = Arc::new(Agent {
        config,
        card: Mutex::new(Card { reader, slot }),
        busy: std::sync::atomic::AtomicBool::new(false),
        tokens: Mutex::new(VecDeque::new()),
        events,
        present: Mutex::new(None),
        port,
    });
    let watcher = agent.clone();
    std::thread::Builder::new()
        .name("cardvm-agent-watch".into())
        .spawn(move || watch(watcher))
        .map_err(|e| format!("agent: {e}"))?;
    let app = Router::new()
        .route("/v1/pair", post(pair))
        .route("/v1/status", get(status))
        .route("/v1/events", get(event_stream))
        .route("/v1/card", post(read))
        .route("/v1/recharge", post(recharge))
        .route("/v1/pay", post(pay))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), guard))
        .with_state(agent);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(RunningAgent {
        url: format!("http://127.0.0.1:{port}"),
        shutdown: Some(tx),
        task,
    })
}
