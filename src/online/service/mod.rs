//! The issuer's HTTPS service (`cardvm issuer serve`): the `/v1` API of
//! [`protocol`](super::protocol) over one [`Issuer`].
//!
//! Each `POST` goes through the same steps, in this order, before any work: body size
//! ([`MAX_BODY`], else 413), the reader's signature headers and clock (401), the reader's
//! certificate (403), its rate limit (429), the JSON body (400), the request id (a stored
//! answer is returned as it was). Refusals are an [`ErrorBody`]; every request is logged
//! as one JSON line on stderr (no key, no receipt content, no signature).
//!
//! Nothing the service keeps in memory matters for correctness: sequence numbers,
//! settlement and stored answers live in the ledger, so several instances can serve one
//! PostgreSQL database. The rate limiter is per instance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::*;

mod merchant;
mod notify;
mod page;
mod payment;
use crate::issuer::ledger::{Reservation, hex};
use crate::issuer::{Issuer, IssuerError, Settled};
use crate::receipt::Receipt;
pub use notify::{NotifyConfig, notify_url_ok};

/// Service tunables.
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfig {
    /// Requests per second a reader may make (sustained).
    pub rate_per_sec: f64,
    /// Requests a reader may make in a burst.
    pub burst: f64,
    /// Log one JSON line per request on stderr.
    pub log: bool,
    /// Requests per second one client address may make, counted before authentication
    /// (sustained).
    pub addr_rate_per_sec: f64,
    /// Requests one client address may make in a burst, before authentication.
    pub addr_burst: f64,
    /// Time a client has to send a request's headers (after connecting or after the
    /// previous request on the connection).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Connections open at once (TLS handshakes included); more are closed at once.
    pub max_connections: usize,
    /// Merchants' paid notifications.
    pub notify: NotifyConfig,
    /// How often the trust anchors and CRLs recorded in the ledger are compared with the
    /// ones in use, and installed when they changed (`cardvm issuer crl` from any process
    /// reaches a running service); `None`: never (an issuer whose trust does not come
    /// from its ledger).
    pub trust_reload: Option<Duration>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            rate_per_sec: 10.0,
            burst: 40.0,
            log: true,
            addr_rate_per_sec: 50.0,
            addr_burst: 200.0,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 256,
            notify: NotifyConfig::default(),
            trust_reload: Some(Duration::from_secs(2)),
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A reader whose certificate verified: its key, checked again after a trust reload or
/// at `until` (its certificate's end, or a few minutes).
struct Known {
    key: crate::crypto::sm2::Sm2PublicKey,
    generation: u64,
    until: u64,
}

/// How long a verified reader certificate is trusted without verifying its chain and
/// CRLs again (a CRL reload ends it at once).
const KNOWN_FOR: u64 = 300;

/// The service state shared by every connection.
pub struct Service {
    issuer: Issuer,
    config: ServiceConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    known: Mutex<HashMap<String, Known>>,
    metrics: super::metrics::Metrics,
    /// Extra CA certificates (PEM) the notifier trusts for merchants' HTTPS URLs, beside
    /// the system's roots.
    notify_ca: std::sync::OnceLock<Vec<u8>>,
}

/// A refusal on its way out.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    error: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, error: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            error: error.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.into(),
            error: self.error,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<IssuerError> for Refusal {
    fn from(e: IssuerError) -> Self {
        use IssuerError as E;
        let (status, code) = match &e {
            E::UnknownReader(_) => (StatusCode::FORBIDDEN, "unknown_reader"),
            E::Certificate { .. } => (StatusCode::FORBIDDEN, "certificate"),
            E::Receipt { .. } => (StatusCode::BAD_REQUEST, "bad_receipt"),
            E::NotAQuery(_) | E::Query(_) => (StatusCode::BAD_REQUEST, "not_a_query"),
            E::StaleQuery { .. } => (StatusCode::CONFLICT, "stale_query"),
            E::QueryFromFuture { .. } => (StatusCode::BAD_REQUEST, "clock_skew"),
            E::QueryUsed { .. } => (StatusCode::CONFLICT, "query_used"),
            E::City { .. } => (StatusCode::NOT_FOUND, "unknown_city"),
            E::Blocked { .. } => (StatusCode::FORBIDDEN, "card_blocked"),
            E::Suspect { .. } => (StatusCode::FORBIDDEN, "card_suspect"),
            E::CardNotValid { .. } => (StatusCode::FORBIDDEN, "card_not_valid"),
            E::Limit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "limit"),
            E::Insufficient { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_balance"),
            E::NoBundle { .. } => (StatusCode::NOT_FOUND, "no_bundle"),
            E::UnknownOrder(_) => (StatusCode::NOT_FOUND, "unknown_order"),
            E::Order { .. } => (StatusCode::CONFLICT, "order_not_payable"),
            E::NotOurs { .. } => (StatusCode::BAD_REQUEST, "not_ours"),
            E::Mismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "mismatch"),
            E::TacMismatch { .. } | E::OfflineTac { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "tac_mismatch")
            }
            E::NotATerminal { .. } => (StatusCode::FORBIDDEN, "not_a_terminal"),
            E::SettledByOther { .. } => (StatusCode::CONFLICT, "settled_by_other"),
            E::KeysToDesktop { .. } => (StatusCode::FORBIDDEN, "keys_refused"),
            // A constraint decided: the row is there (a conflict, not retryable as it is);
            // any other database failure decided nothing and is retryable.
            E::Ledger(crate::issuer::ledger::LedgerError::Conflict { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            E::Ledger(_) => (StatusCode::SERVICE_UNAVAILABLE, "ledger"),
            E::Keys(_) | E::Seal { .. } | E::Script { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "issuer")
            }
        };
        Refusal::new(status, code, e.to_string())
    }
}

/// Whether an error says nothing about the receipt (the ledger or the key store failed):
/// a journal upload stops there and acknowledges nothing after it.
fn transient(e: &IssuerError) -> bool {
    matches!(
        e,
        IssuerError::Ledger(_) | IssuerError::Keys(_) | IssuerError::Seal { .. }
    )
}

/// What an authenticated request carries.
struct Caller {
    /// The reader id, or `merchant:ID` for a merchant (the key of its stored answers and
    /// of its rate limit).
    reader_id: String,
    /// The merchant, for a merchant request.
    merchant: Option<crate::issuer::merchant::MerchantRow>,
}

/// Who signs a request to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    Reader,
    Merchant,
}

impl Service {
    /// A service over `issuer`.
    pub fn new(issuer: Issuer, config: ServiceConfig) -> Arc<Self> {
        Arc::new(Service {
            issuer,
            config,
            buckets: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            metrics: super::metrics::Metrics::default(),
            notify_ca: std::sync::OnceLock::new(),
        })
    }

    /// Trusts the CA certificates in `pem` (beside the system's roots) for merchants'
    /// HTTPS notification URLs: a card company's own CA for its merchants. Set before the
    /// service starts; once.
    pub fn set_notify_ca(&self, pem: &[u8]) -> Result<(), String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("notification CA: {e}"))?;
        if certs.is_empty() {
            return Err("notification CA: no certificate in the PEM".into());
        }
        self.notify_ca
            .set(pem.to_vec())
            .map_err(|_| "notification CA: already set".to_string())
    }

    /// The issuer it serves.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Refusal> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    format!("missing or unreadable header {name}"),
                )
            })
    }

    /// Checks the reader's signature, clock and certificate.
    async fn authenticate(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Caller, Refusal> {
        let reader_id = Self::header(headers, HDR_READER)?.to_string();
        let (time, sig) = parse_auth_headers(
            Self::header(headers, HDR_TIME)?,
            Self::header(headers, HDR_SIGNATURE)?,
        )
        .map_err(|e| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                match e {
                    AuthHeaderError::Time => format!("{HDR_TIME}: not unix seconds"),
                    AuthHeaderError::Signature => format!("{HDR_SIGNATURE}: not 64 bytes of hex"),
                },
            )
        })?;
        let now = self.issuer.now();
        let skew = now.abs_diff(time);
        if skew > MAX_CLOCK_SKEW {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "clock_skew",
                format!(
                    "reader `{reader_id}` clock is {skew} s {} the service's (at most {MAX_CLOCK_SKEW} s): set the reader's clock",
                    if time > now { "ahead of" } else { "behind" }
                ),
            ));
        }
        // The signature first, against the certificate's key (cached, or read from the
        // ledger without any chain or CRL work): a forged request costs one SM2
        // verification, and says nothing about whether the reader exists.
        let msg = signing_input("POST", path, &reader_id, time, body);
        let bad_signature = || {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!(
                    "request signature of reader `{reader_id}` does not verify (or no such reader is registered)"
                ),
            )
        };
        let generation = self.issuer.trust_generation();
        let cached = self.known.lock().ok().and_then(|k| {
            k.get(&reader_id)
                .filter(|k| k.generation == generation && now < k.until)
                .map(|k| k.key.clone())
        });
        match cached {
            Some(key) => key.verify(&msg, &sig).map_err(|_| bad_signature())?,
            None => {
                let key = self
                    .issuer
                    .reader_key_unverified(&reader_id)
                    .await?
                    .ok_or_else(bad_signature)?;
                key.verify(&msg, &sig).map_err(|_| bad_signature())?;
                // Signed by the certificate's key: now its chain and revocation.
                let (_, identity) = self.issuer.verify_reader(&reader_id).await?;
                if identity.public_key != key {
                    return Err(bad_signature());
                }
                if let Ok(mut k) = self.known.lock() {
                    if k.len() > 100_000 {
                        k.clear();
                    }
                    k.insert(
                        reader_id.clone(),
                        Known {
                            key,
                            generation,
                            until: identity.not_after.min(now.saturating_add(KNOWN_FOR)),
                        },
                    );
                }
            }
        }
        self.rate_limit(&reader_id)?;
        Ok(Caller {
            reader_id,
            merchant: None,
        })
    }

    /// Checks a merchant's signature (its registered SM2 key), clock and standing.
    async fn authenticate_merchant(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Caller, Refusal> {
        let merchant_id = Self::header(headers, HDR_MERCHANT)?.to_string();
        let unauthenticated =
            |e: String| Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", e);
        let (time, sig) = parse_auth_headers(
            Self::header(headers, HDR_TIME)?,
            Self::header(headers, HDR_SIGNATURE)?,
        )
        .map_err(|e| {
            unauthenticated(match e {
                AuthHeaderError::Time => format!("{HDR_TIME}: not unix seconds"),
                AuthHeaderError::Signature => format!("{HDR_SIGNATURE}: not 64 bytes of hex"),
            })
        })?;
        let now = self.issuer.now();
        let skew = now.abs_diff(time);
        if skew > MAX_CLOCK_SKEW {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "clock_skew",
                format!(
                    "merchant `{merchant_id}` clock is {skew} s off the service's (at most {MAX_CLOCK_SKEW} s)"
                ),
            ));
        }
        let bad_signature = || {
            unauthenticated(format!(
                "request signature of merchant `{merchant_id}` does not verify (or no such merchant is registered)"
            ))
        };
        if !crate::issuer::merchant::valid_id(&merchant_id) {
            return Err(bad_signature());
        }
        let merchant = self
            .issuer
            .ledger()
            .merchant(&merchant_id)
            .await
            .map_err(IssuerError::from)?
            .ok_or_else(bad_signature)?;
        let key = from_hex(&merchant.public_key)
            .and_then(|k| crate::crypto::sm2::Sm2PublicKey::from_sec1_bytes(&k).ok())
            .ok_or_else(bad_signature)?;
        key.verify(
            &merchant_signing_input("POST", path, &merchant_id, time, body),
            &sig,
        )
        .map_err(|_| bad_signature())?;
        if !merchant.enabled {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "merchant_disabled",
                format!("merchant `{merchant_id}` is disabled by the card company"),
            ));
        }
        let key = format!("merchant:{merchant_id}");
        self.rate_limit(&key)?;
        Ok(Caller {
            reader_id: key,
            merchant: Some(merchant),
        })
    }

    fn rate_limit(&self, reader_id: &str) -> Result<(), Refusal> {
        self.limit(
            reader_id,
            self.config.rate_per_sec,
            self.config.burst,
            &format!("reader `{reader_id}`"),
        )
    }

    /// One token bucket per key (a reader id, or `addr IP` before authentication).
    fn limit(&self, key: &str, rate: f64, burst: f64, who: &str) -> Result<(), Refusal> {
        let mut buckets = self.buckets.lock().map_err(|_| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "rate limiter poisoned",
            )
        })?;
        let now = Instant::now();
        if buckets.len() > 100_000 {
            // Bounded memory under a flood of addresses: full buckets are forgotten.
            buckets.retain(|_, b| now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.last = now;
        if b.tokens < 1.0 {
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{who}: more than {rate} requests per second; retry shortly"),
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        path: &str,
        reader: Option<&str>,
        request_id: Option<&str>,
        status: StatusCode,
        started: Instant,
        note: &str,
    ) {
        if !self.config.log {
            return;
        }
        let line = serde_json::json!({
            "ts": self.issuer.now(),
            "path": path,
            "reader": reader,
            "request_id": request_id,
            "status": status.as_u16(),
            "us": started.elapsed().as_micros() as u64,
            "note": note,
        });
        eprintln!("{line}");
    }

    /// The common path of every signed `POST` (module docs).
    async fn signed<Req, Resp, F, Fut>(
        self: Arc<Self>,
        path: &'static str,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
        store: bool,
        work: F,
    ) -> Response
    where
        Req: DeserializeOwned + HasRequestId,
        Resp: Serialize,
        F: FnOnce(Arc<Self>, Caller, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Refusal>>,
    {
        self.signed_by(Signer::Reader, path, headers, body, store, work)
            .await
    }

    /// [`Service::signed`] for a reader's or a merchant's request.
    async fn signed_by<Req, Resp, F, Fut>(
        self: Arc<Self>,
        signer: Signer,
        path: &'static str,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
        store: bool,
        work: F,
    ) -> Response
    where
        Req: DeserializeOwned + HasRequestId,
        Resp: Serialize,
        F: FnOnce(Arc<Self>, Caller, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Refusal>>,
    {
        let started = Instant::now();
        let mut reader = None;
        let mut logged_id = None;
        let result: Result<String, Refusal> = async {
            let body = body.map_err(|e| {
                Refusal::new(
                    e.status(),
                    "bad_body",
                    format!("request body: {} (at most {MAX_BODY} bytes)", e.body_text()),
                )
            })?;
            too_large(&body)?;
            let caller = match signer {
                Signer::Reader => self.authenticate(path, &headers, &body).await?,
                Signer::Merchant => self.authenticate_merchant(path, &headers, &body).await?,
            };
            reader = Some(caller.reader_id.clone());
            let req: Req = serde_json::from_slice(&body).map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    format!("request body: {e}"),
                )
            })?;
            let request_id = req.request_id().to_string();
            if valid_request_id(&request_id) {
                logged_id = Some(request_id.clone());
            } else {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request_id",
                    "request_id: 1-64 printable characters without spaces",
                ));
            }
            let ledger = self.issuer.ledger();
            if !store {
                // Read-only: answered fresh every time, nothing stored.
                let resp = work(self.clone(), caller, req).await?;
                return serde_json::to_string(&resp).map_err(|e| {
                    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                });
            }
            // The request id is reserved before any work (DESIGN invariant 13): a raced
            // id has one effect; the same id with another body is refused.
            let reader_id = caller.reader_id.clone();
            let body_sm3 = hex(&crate::crypto::sm3(&body));
            let mut waited = 0;
            loop {
                let now = self.issuer.now();
                match ledger
                    .reserve_request(&reader_id, &request_id, path, &body_sm3, now, STALE_REQUEST)
                    .await
                    .map_err(IssuerError::from)?
                {
                    Reservation::Reserved => break,
                    Reservation::Answered {
                        endpoint,
                        body_sm3: stored,
                        response,
                    } => {
                        same_request(&endpoint, stored.as_deref(), path, &body_sm3)?;
                        return Ok(response);
                    }
                    Reservation::Pending {
                        endpoint,
                        body_sm3: stored,
                    } => {
                        same_request(&endpoint, stored.as_deref(), path, &body_sm3)?;
                        if waited >= PENDING_WAIT_STEPS {
                            return Err(Refusal::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "request_pending",
                                "this request_id is still being answered: retry with the same request_id",
                            ));
                        }
                        waited += 1;
                        tokio::time::sleep(PENDING_WAIT_STEP).await;
                    }
                }
            }
            match work(self.clone(), caller, req).await {
                Ok(resp) => {
                    let text = serde_json::to_string(&resp).map_err(|e| {
                        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    })?;
                    ledger
                        .answer_request(&reader_id, &request_id, &text)
                        .await
                        .map_err(IssuerError::from)?;
                    Ok(text)
                }
                Err(refusal) => {
                    // Nothing was done: the id may be used again. (If the release fails
                    // the reservation goes stale and is taken over.)
                    let _ = ledger.release_request(&reader_id, &request_id).await;
                    Err(refusal)
                }
            }
        }
        .await;
        match result {
            Ok(text) => {
                self.log(
                    path,
                    reader.as_deref(),
                    logged_id.as_deref(),
                    StatusCode::OK,
                    started,
                    "",
                );
                (
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    text,
                )
                    .into_response()
            }
            Err(r) => {
                self.log(
                    path,
                    reader.as_deref(),
                    logged_id.as_deref(),
                    r.status,
                    started,
                    r.code,
                );
                r.into_response()
            }
        }
    }
}

/// Bodies up to [`READ_LIMIT`] are read in full so that the client, still writing, gets
/// this answer instead of a reset connection; beyond [`MAX_BODY`] they are refused.
fn too_large(body: &[u8]) -> Result<(), Refusal> {
    if body.len() > MAX_BODY {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_body",
            format!(
                "request body of {} bytes is over the limit of {MAX_BODY} bytes",
                body.len()
            ),
        ));
    }
    Ok(())
}

/// The most the service reads of one request body (larger ones are cut off unread).
pub const READ_LIMIT: usize = 1024 * 1024;

/// A reserved or answered request id may be used again only for the same endpoint and
/// the same body (a retry).
fn same_request(
    stored_endpoint: &str,
    stored_body: Option<&str>,
    path: &str,
    body_sm3: &str,
) -> Result<(), Refusal> {
    if stored_endpoint != path {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "request_id_reused",
            format!("request_id was already used for {stored_endpoint}"),
        ));
    }
    if stored_body.is_some_and(|b| !b.eq_ignore_ascii_case(body_sm3)) {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "request_id_reused",
            "request_id was already used for another request body",
        ));
    }
    Ok(())
}

/// A reservation older than this (seconds) belonged to an instance that died mid-request.
const STALE_REQUEST: u64 = 60;
/// How long a caller waits for another caller's answer to the same request id.
const PENDING_WAIT_STEP: Duration = Duration::from_millis(50);
const PENDING_WAIT_STEPS: u32 = 200;

/// Bodies with an idempotency key.
trait HasRequestId {
    fn request_id(&self) -> &str;
}
macro_rules! has_request_id {
    ($($t:ty),*) => {$(impl HasRequestId for $t { fn request_id(&self) -> &str { &self.request_id } })*};
}
has_request_id!(
    RechargeOrderRequest,
    OrderRequest,
    CreateOrderRequest,
    RefundRequest,
    HostRequest,
    QueryScriptRequest,
    StartRequest,
    CompleteRequest,
    JournalRequest,
    StatusRequest
);

fn parse_receipt(text: &str, caller: &Caller, what: &str) -> Result<Receipt, Refusal> {
    let r = Receipt::from_json(text).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_receipt",
            format!("{what}: {e}"),
        )
    })?;
    if r.reader_id != caller.reader_id {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "not_your_receipt",
            format!(
                "{what} was signed by reader `{}`, not by `{}`",
                r.reader_id, caller.reader_id
            ),
        ));
    }
    Ok(r)
}

fn bundle_reply(b: &crate::issuer::Bundle) -> BundleReply {
    BundleReply {
        kind: b.kind.name().into(),
        seq: b.seq,
        city: b.city,
        card_id: to_hex(&b.card_id),
        amount: b.amount,
        recovers_seq: b.recovers_seq,
        expires: b.expires,
        command: to_hex(&b.command),
        data: to_hex(&b.data),
    }
}

fn settle_reply(s: &Settled) -> SettleReply {
    SettleReply {
        reader_id: s.reader_id.clone(),
        seq: s.seq,
        kind: s.kind.name().into(),
        state: s.state.name().into(),
        already: s.already,
        decided_seq: s.decided.map(|d| d.0),
        decided_state: s.decided.map(|d| d.1.name().into()),
    }
}

async fn health(State(svc): State<Arc<Service>>) -> Response {
    match svc.issuer.ledger().ping().await {
        Ok(()) => axum::Json(Health {
            status: "ok".into(),
            time: svc.issuer.now(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .into_response(),
        Err(e) => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "ledger", e.to_string()).into_response()
        }
    }
}

async fn query_script(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/query-script",
        headers,
        body,
        true,
        |svc, caller, req: QueryScriptRequest| async move {
            let s = svc.issuer.query_script(&caller.reader_id, req.city).await?;
            Ok(SealedReply {
                seq: s.seq,
                expires: s.expires,
                script: to_hex(&s.bytes),
            })
        },
    )
    .await
}

async fn terminal_script(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/terminal-script",
        headers,
        body,
        true,
        |svc, caller, req: QueryScriptRequest| async move {
            let s = svc
                .issuer
                .terminal_script(&caller.reader_id, req.city)
                .await?;
            Ok(SealedReply {
                seq: s.seq,
                expires: s.expires,
                script: to_hex(&s.bytes),
            })
        },
    )
    .await
}

async fn start(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/recharge/start",
        headers,
        body,
        true,
        |svc, caller, req: StartRequest| async move {
            let query = parse_receipt(&req.query, &caller, "query")?;
            let b = svc
                .issuer
                .bundle_for(&query, req.amount, req.order_id.as_deref())
                .await?;
            Ok(bundle_reply(&b))
        },
    )
    .await
}

async fn purchase_start(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/purchase/start",
        headers,
        body,
        true,
        |svc, caller, req: StartRequest| async move {
            let query = parse_receipt(&req.query, &caller, "query")?;
            let b = match &req.order_id {
                Some(order) => svc.issuer.purchase_order(&query, req.amount, order).await?,
                None => svc.issuer.purchase(&query, req.amount).await?,
            };
            Ok(bundle_reply(&b))
        },
    )
    .await
}

async fn complete(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/recharge/complete",
        headers,
        body,
        true,
        |svc, caller, req: CompleteRequest| async move {
            let receipt = parse_receipt(&req.receipt, &caller, "receipt")?;
            let s = svc.issuer.settle(&receipt).await?;
            Ok(settle_reply(&s))
        },
    )
    .await
}

async fn host(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/host",
        headers,
        body,
        true,
        |svc, caller, req: HostRequest| async move {
            let apdu = from_hex(&req.apdu)
                .filter(|a| a.len() <= 261)
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "bad_apdu",
                        "apdu: not hex, or longer than a short APDU",
                    )
                })?;
            let a = svc
                .issuer
                .host_exchange(&caller.reader_id, req.seq, &apdu)
                .await?;
            // The script sees only the status word; the reason goes to the log.
            if let Some(why) = &a.refused
                && svc.config.log
            {
                let line = serde_json::json!({
                    "ts": svc.issuer.now(),
                    "path": "/v1/host",
                    "reader": caller.reader_id,
                    "seq": req.seq,
                    "host_refused": to_hex(&a.response),
                    "note": why,
                });
                eprintln!("{line}");
            }
            Ok(HostReply {
                response: to_hex(&a.response),
            })
        },
    )
    .await
}

async fn journal(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/journal",
        headers,
        body,
        true,
        |svc, caller, req: JournalRequest| async move {
            let mut results = Vec::new();
            let mut acked = 0;
            let mut last = 0;
            for item in &req.items {
                if item.journal_seq <= last {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "bad_batch",
                        format!("journal_seq {} out of order", item.journal_seq),
                    ));
                }
                last = item.journal_seq;
                let receipt = match parse_receipt(&item.receipt, &caller, "receipt") {
                    Ok(r) => r,
                    Err(r) => {
                        results.push(JournalResult {
                            journal_seq: item.journal_seq,
                            status: "refused".into(),
                            settled: None,
                            error: Some(r.error),
                        });
                        acked = item.journal_seq;
                        continue;
                    }
                };
                let offline = receipt.mode == crate::receipt::Mode::Terminal;
                if receipt.mode == crate::receipt::Mode::Development {
                    results.push(JournalResult {
                        journal_seq: item.journal_seq,
                        status: "refused".into(),
                        settled: None,
                        error: Some(
                            "a development receipt (plain scripts) is never settled".into(),
                        ),
                    });
                    acked = item.journal_seq;
                    continue;
                }
                if receipt.data.is_none() && !offline {
                    // A query receipt: delivered, nothing to settle.
                    results.push(JournalResult {
                        journal_seq: item.journal_seq,
                        status: "query".into(),
                        settled: None,
                        error: None,
                    });
                    acked = item.journal_seq;
                    continue;
                }
                let settled = if offline {
                    svc.issuer.settle_offline(&receipt).await
                } else {
                    svc.issuer.settle(&receipt).await
                };
                match settled {
                    Ok(s) if offline && s.state == crate::issuer::TxnState::Failed => {
                        // A sale that failed before the card's commit point: nothing moved.
                        results.push(JournalResult {
                            journal_seq: item.journal_seq,
                            status: "failed".into(),
                            settled: None,
                            error: None,
                        })
                    }
                    Ok(s) => results.push(JournalResult {
                        journal_seq: item.journal_seq,
                        status: "settled".into(),
                        settled: Some(settle_reply(&s)),
                        error: None,
                    }),
                    Err(e) if transient(&e) => {
                        results.push(JournalResult {
                            journal_seq: item.journal_seq,
                            status: "retry".into(),
                            settled: None,
                            error: Some(e.to_string()),
                        });
                        break;
                    }
                    Err(e) => results.push(JournalResult {
                        journal_seq: item.journal_seq,
                        status: "refused".into(),
                        settled: None,
                        error: Some(e.to_string()),
                    }),
                }
                acked = item.journal_seq;
            }
            Ok(JournalReply {
                acknowledged_up_to: acked,
                results,
            })
        },
    )
    .await
}

async fn status(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    svc.signed(
        "/v1/status",
        headers,
        body,
        false,
        |svc, caller, req: StatusRequest| async move {
            let row = svc
                .issuer
                .ledger()
                .txn(&caller.reader_id, req.seq)
                .await
                .map_err(IssuerError::from)?
                .ok_or_else(|| IssuerError::NoBundle {
                    reader: caller.reader_id.clone(),
                    seq: req.seq,
                })?;
            Ok(StatusReply {
                seq: row.seq,
                kind: row.kind.name().into(),
                card_id: row.card_id,
                amount: row.amount,
                state: row.state.name().into(),
            })
        },
    )
    .await
}

/// `GET /metrics`: Prometheus text (counts only; see `online::metrics`).
async fn metrics(State(svc): State<Arc<Service>>) -> Response {
    let now = svc.issuer.now();
    let gauges = super::metrics::Gauges {
        ledger: svc.issuer.ledger().state_counts().await.unwrap_or_default(),
        crls: svc
            .issuer
            .crl_summary()
            .into_iter()
            .map(|(issuer, _, this, next)| {
                let age = i64::try_from(now.saturating_sub(this)).unwrap_or(i64::MAX);
                let left = next.map_or(0, |n| {
                    i64::try_from(n).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(i64::MAX)
                });
                (issuer, age, left)
            })
            .collect(),
    };
    let text = svc.metrics.render(&gauges);
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see /v1/health; the API is under /v1)",
    )
    .into_response()
}

/// The `/v1` routes.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/query-script", post(query_script))
        .route("/v1/terminal-script", post(terminal_script))
        .route("/v1/recharge/start", post(start))
        .route("/v1/recharge/complete", post(complete))
        .route("/v1/host", post(host))
        .route("/v1/purchase/start", post(purchase_start))
        .route("/v1/order", post(merchant::order_for_payment))
        .route("/v1/recharge/order", post(payment::create))
        .route("/v1/recharge/order/query", post(payment::query))
        .route("/v1/provider/notify", post(payment::notify))
        .route("/v1/merchant/orders", post(merchant::create))
        .route("/v1/merchant/orders/query", post(merchant::query))
        .route("/v1/merchant/orders/cancel", post(merchant::cancel))
        .route("/v1/merchant/orders/refund", post(merchant::refund))
        .route("/v1/journal", post(journal))
        .route("/v1/status", post(status))
        .route("/metrics", get(metrics))
        .merge(page::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(READ_LIMIT))
        .layer(axum::middleware::from_fn_with_state(svc.clone(), guard))
        .with_state(svc)
}

/// Before any handler: the per-address limit (ahead of authentication, so a flood of
/// forged requests from one address is refused before any signature work), and the
/// body read under [`ServiceConfig::body_timeout`] (a slow body is answered 408 and its
/// connection freed).
async fn guard(
    State(svc): State<Arc<Service>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let resp = guarded(&svc, req, next).await;
    svc.metrics
        .record(&path, resp.status().as_u16(), started.elapsed());
    resp
}

async fn guarded(
    svc: &Arc<Service>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let addr = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = addr {
        let c = &svc.config;
        if let Err(r) = svc.limit(
            &format!("addr {ip}"),
            c.addr_rate_per_sec,
            c.addr_burst,
            &format!("address {ip}"),
        ) {
            svc.log(
                req.uri().path(),
                None,
                None,
                r.status,
                Instant::now(),
                r.code,
            );
            return r.into_response();
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(
        svc.config.body_timeout,
        axum::body::to_bytes(body, READ_LIMIT),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_body",
                format!("request body: {e} (at most {MAX_BODY} bytes)"),
            )
            .into_response();
        }
        Err(_) => {
            return Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "request body not received within {} s",
                    svc.config.body_timeout.as_secs_f64()
                ),
            )
            .into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Closes connections beyond [`ServiceConfig::max_connections`] as they arrive (before
/// the TLS handshake); each accepted one holds a permit until it closes.
#[derive(Clone)]
struct CappedAcceptor {
    open: Arc<tokio::sync::Semaphore>,
}

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for CappedAcceptor {
    type Stream = Capped<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Capped<tokio::net::TcpStream>, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        // Small requests and answers: without TCP_NODELAY a TLS handshake or a reply
        // written in two segments waits for the peer's delayed ACK (40 ms on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            return std::future::ready(Err(e));
        }
        std::future::ready(match self.open.clone().try_acquire_owned() {
            Ok(permit) => Ok((
                Capped {
                    inner: stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => Err(std::io::Error::other("connection limit reached")),
        })
    }
}

/// A connection counted against the cap while it is open.
struct Capped<I> {
    inner: I,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Capped<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Installs the `ring` crypto provider for rustls (once per process).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves the API over HTTPS on `listen` with the PEM certificate chain and key until
/// `handle` is told to shut down. `handle.listening()` gives the bound address.
pub async fn serve_tls(
    svc: Arc<Service>,
    listen: SocketAddr,
    cert_pem: &Path,
    key_pem: &Path,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<(), String> {
    install_crypto_provider();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert_pem, key_pem)
        .await
        .map_err(|e| {
            format!(
                "TLS certificate {} / key {}: {e}",
                cert_pem.display(),
                key_pem.display()
            )
        })?;
    let c = svc.config;
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(CappedAcceptor {
        open: Arc::new(tokio::sync::Semaphore::new(c.max_connections.max(1))),
    });
    let mut server = axum_server::bind(listen).acceptor(acceptor).handle(handle);
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(c.header_timeout));
    // Merchants' notifications go out, and revocations come in, while the service runs.
    let notifier = tokio::spawn(notify::run(svc.clone()));
    let reload = c
        .trust_reload
        .map(|every| tokio::spawn(trust_reload(svc.clone(), every)));
    let served = server
        .serve(router(svc).into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|e| format!("serving on {listen}: {e}"));
    notifier.abort();
    if let Some(r) = reload {
        r.abort();
    }
    served
}

/// Re-reads the trust anchors and CRLs the ledger records every `every`; installs them
/// into the issuer when they changed. A ledger that records none (an issuer built with
/// its trust in hand) is left alone; a store that does not build is logged and the one in
/// use kept.
async fn trust_reload(svc: Arc<Service>, every: Duration) {
    use crate::issuer::bootstrap;
    let ledger = svc.issuer.ledger().clone();
    let mut seen = bootstrap::recorded(&ledger).await.ok();
    loop {
        tokio::time::sleep(every).await;
        let Ok(now) = bootstrap::recorded(&ledger).await else {
            continue; // the ledger is away; the next round asks again
        };
        if seen.as_ref() == Some(&now) || now.0.is_none() {
            continue;
        }
        let note = match bootstrap::trust_store(&ledger).await {
            Ok(t) => {
                svc.issuer.set_trust(t);
                seen = Some(now);
                "trust anchors / CRLs reloaded".to_string()
            }
            Err(e) => format!("trust reload failed, the trust in use is kept: {e}"),
        };
        if svc.config.log {
            eprintln!(
                "{}",
                serde_json::json!({"ts": svc.issuer.now(), "trust": note})
            );
        }
    }
}

/// A service running in this process (tests, benchmarks, embedding).
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    /// `https://ADDR`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops at once, as a killed process would: connections and requests in flight are
    /// dropped mid-way (tests of faults).
    pub fn kill(self) {
        self.handle.shutdown();
        self.task.abort();
    }

    /// Stops accepting, lets requests in flight finish (up to 10 s), and waits.
    pub async fn shutdown(self) -> Result<(), String> {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(10)));
        self.task.await.map_err(|e| format!("service task: {e}"))?
    }
}

/// Starts [`serve_tls`] on a tokio task and returns once it listens.
pub async fn spawn_tls(
    svc: Arc<Service>,
    listen: SocketAddr,
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<Running, String> {
    let handle = axum_server::Handle::new();
    let (cert, key) = (cert_pem.to_path_buf(), key_pem.to_path_buf());
    let h = handle.clone();
    let task = tokio::spawn(async move { serve_tls(svc, listen, &cert, &key, h).await });
    match handle.listening().await {
        Some(addr) => Ok(Running { addr, handle, task }),
        None => match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(format!("service on {listen} stopped before listening")),
            Err(e) => Err(format!("service task: {e}")),
        },
    }
}
