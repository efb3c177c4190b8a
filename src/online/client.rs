//! The reader's side of the online protocol: signed requests to the issuer's service.
//!
//! [`Client`] speaks HTTPS (reqwest over rustls with the `ring` provider). It trusts the
//! server certificate through the system's roots, or only through the CA certificate it
//! is given (`--server-ca`, for a card company's private CA). Every request is signed
//! with the reader's SM2 key ([`protocol`](super::protocol)).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::*;
use crate::crypto::rng::os_rng;
use crate::crypto::sm2::Sm2PrivateKey;
use crate::reader::Clock;

/// Why a request did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The service could not be reached, or the connection broke (retry with the same
    /// request id).
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The service refused: its status, code and one-line reason.
    #[error("{url}: {error} ({status} {code})")]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The [`ErrorBody`] code.
        code: String,
        /// The [`ErrorBody`] text.
        error: String,
    },
    /// The answer is not what the protocol says.
    #[error("{url}: unreadable answer: {detail}")]
    BadReply {
        /// The URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The service's TLS certificate was not accepted (an unknown CA, another name, an
    /// expired certificate): nothing was sent.
    #[error("{url}: the service's TLS certificate is not trusted ({detail})")]
    Untrusted {
        /// The URL.
        url: String,
        /// What rustls said.
        detail: String,
    },
    /// Setting up TLS or signing failed.
    #[error("client setup: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether retrying the same request (same id) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A reader's client for one service.
pub struct Client {
    http: reqwest::Client,
    base: String,
    reader_id: String,
    key: Arc<Sm2PrivateKey>,
    clock: Arc<dyn Clock + Send + Sync>,
    /// What [`Client::fork`] needs to build another connection pool.
    server_ca_pem: Option<Vec<u8>>,
    timeout: Duration,
    /// Signing as a merchant ([`MerchantClient`]) rather than as a reader.
    merchant: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("reader_id", &self.reader_id)
            .finish_non_exhaustive()
    }
}

/// A merchant's client of the card company's service (`docs/clearing.md`): every
/// request signed with the merchant's SM2 key.
#[derive(Debug)]
pub struct MerchantClient(Client);

impl MerchantClient {
    /// A client of the service at `base`, trusting only `server_ca_pem` when given,
    /// signing as merchant `merchant_id` with `key`.
    pub fn new(
        base: &str,
        server_ca_pem: Option<&[u8]>,
        merchant_id: &str,
        key: Sm2PrivateKey,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut c = Client::new(base, server_ca_pem, merchant_id, key, timeout)?;
        c.merchant = true;
        Ok(MerchantClient(c))
    }

    /// Uses `clock` for the request time.
    pub fn with_clock(self, clock: Arc<dyn Clock + Send + Sync>) -> Self {
        MerchantClient(self.0.with_clock(clock))
    }

    /// A signed `POST` to any merchant endpoint.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        self.0.post(path, req).await
    }

    /// Creates an order (the same `merchant_order` again returns the same order).
    pub async fn create_order(
        &self,
        merchant_order: &str,
        amount: u64,
        description: &str,
        expires_in: Option<u64>,
    ) -> Result<OrderReply, ClientError> {
        self.post(
            "/v1/merchant/orders",
            &CreateOrderRequest {
                request_id: new_request_id(),
                merchant_order: merchant_order.into(),
                amount,
                description: description.into(),
                expires_in,
            },
        )
        .await
    }

    /// One of its orders, by the card company's id.
    pub async fn order(&self, order_id: &str) -> Result<OrderReply, ClientError> {
        self.post("/v1/merchant/orders/query", &Self::by_id(order_id))
            .await
    }

    /// Cancels an open order.
    pub async fn cancel(&self, order_id: &str) -> Result<OrderReply, ClientError> {
        self.post("/v1/merchant/orders/cancel", &Self::by_id(order_id))
            .await
    }

    /// Refunds a paid order in full.
    pub async fn refund(&self, order_id: &str, reason: &str) -> Result<OrderReply, ClientError> {
        self.post(
            "/v1/merchant/orders/refund",
            &RefundRequest {
                request_id: new_request_id(),
                order_id: order_id.into(),
                reason: reason.into(),
            },
        )
        .await
    }

    fn by_id(order_id: &str) -> OrderRequest {
        OrderRequest {
            request_id: new_request_id(),
            order_id: Some(order_id.into()),
            merchant_order: None,
        }
    }
}

/// A fresh request id (random, 32 hex characters).
pub fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand_core::Rng::fill_bytes(&mut os_rng(), &mut b);
    to_hex(&b)
}

impl Client {
    /// A client of the service at `base` (`https://host:port`), trusting only
    /// `server_ca_pem` when given, signing as `reader_id` with `key`.
    pub fn new(
        base: &str,
        server_ca_pem: Option<&[u8]>,
        reader_id: &str,
        key: Sm2PrivateKey,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = Self::http(server_ca_pem, timeout)?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            reader_id: reader_id.into(),
            key: Arc::new(key),
            clock: Arc::new(crate::reader::SystemClock),
            server_ca_pem: server_ca_pem.map(<[u8]>::to_vec),
            timeout,
            merchant: false,
        })
    }

    /// The same client with its own connection pool, for use from another tokio runtime
    /// (the host link's thread: a pool's connections live on the runtime that made them).
    pub fn fork(&self) -> Result<Self, ClientError> {
        Ok(Client {
            http: Self::http(self.server_ca_pem.as_deref(), self.timeout)?,
            base: self.base.clone(),
            reader_id: self.reader_id.clone(),
            key: Arc::clone(&self.key),
            clock: Arc::clone(&self.clock),
            server_ca_pem: self.server_ca_pem.clone(),
            timeout: self.timeout,
            merchant: self.merchant,
        })
    }

    fn http(
        server_ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<reqwest::Client, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        if let Some(pem) = server_ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ClientError::Setup(format!("server CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Setup(format!("server CA: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(ClientError::Setup(
                    "server CA: no certificate in the PEM".into(),
                ));
            }
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(config);
        }
        builder
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))
    }

    /// Uses `clock` for the request time (tests, firmware clocks).
    pub fn with_clock(mut self, clock: Arc<dyn Clock + Send + Sync>) -> Self {
        self.clock = clock;
        self
    }

    /// The reader id it signs as.
    pub fn reader_id(&self) -> &str {
        &self.reader_id
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answer<Resp: DeserializeOwned>(
        &self,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<Resp, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.into(),
            detail: e.to_string(),
        })?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
                url: url.into(),
                detail: e.to_string(),
            })
        } else {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            Err(ClientError::Refused {
                url: url.into(),
                status: status.as_u16(),
                code: body.as_ref().map(|b| b.code.clone()).unwrap_or_default(),
                error: body
                    .map(|b| b.error)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect()),
            })
        }
    }

    /// A signed `POST`.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Setup(e.to_string()))?;
        let time = self.clock.now();
        let (header, msg) = if self.merchant {
            (
                HDR_MERCHANT,
                merchant_signing_input("POST", path, &self.reader_id, time, &body),
            )
        } else {
            (
                HDR_READER,
                signing_input("POST", path, &self.reader_id, time, &body),
            )
        };
        let sig = self
            .key
            .sign(&mut os_rng(), &msg)
            .map_err(|e| ClientError::Setup(format!("signing: {e}")))?;
        let url = self.url(path);
        let resp = self
            .http
            .post(&url)
            .header(header, &self.reader_id)
            .header(HDR_TIME, time.to_string())
            .header(HDR_SIGNATURE, to_hex(&sig))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        self.answer(&url, resp).await
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let url = self.url("/v1/health");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        self.answer(&url, resp).await
    }

    /// The city's query script, sealed for this reader.
    pub async fn query_script(&self, city: u32) -> Result<SealedReply, ClientError> {
        self.post(
            "/v1/query-script",
            &QueryScriptRequest {
                request_id: new_request_id(),
                city,
            },
        )
        .await
    }

    /// The city's offline terminal program, sealed for this reader (a merchant terminal
    /// with a PSAM: docs/psam.md "Offline purchases").
    pub async fn terminal_script(&self, city: u32) -> Result<SealedReply, ClientError> {
        self.post(
            "/v1/terminal-script",
            &QueryScriptRequest {
                request_id: new_request_id(),
                city,
            },
        )
        .await
    }

    /// Starts a recharge from a signed query receipt (canonical JSON).
    pub async fn start(
        &self,
        request_id: &str,
        query_json: &str,
        amount: u64,
    ) -> Result<BundleReply, ClientError> {
        self.start_at("/v1/recharge/start", request_id, query_json, amount)
            .await
    }

    /// A recharge order for `card_id` (hex) of `amount` fen, to be paid at
    /// `provider_id` before the load (`docs/clearing.md`).
    pub async fn recharge_order(
        &self,
        city: u32,
        card_id: &str,
        amount: u64,
        provider_id: &str,
    ) -> Result<RechargeOrderReply, ClientError> {
        self.post(
            "/v1/recharge/order",
            &RechargeOrderRequest {
                request_id: new_request_id(),
                city,
                card_id: card_id.into(),
                amount,
                provider_id: provider_id.into(),
            },
        )
        .await
    }

    /// Where a recharge order stands (`paid` once its provider confirmed it).
    pub async fn recharge_order_state(
        &self,
        order_id: &str,
    ) -> Result<RechargeOrderReply, ClientError> {
        self.post(
            "/v1/recharge/order/query",
            &OrderRequest {
                request_id: new_request_id(),
                order_id: Some(order_id.into()),
                merchant_order: None,
            },
        )
        .await
    }

    /// The order `order_id` as a cardholder about to pay it sees it.
    pub async fn order(&self, order_id: &str) -> Result<OrderReply, ClientError> {
        self.post(
            "/v1/order",
            &OrderRequest {
                request_id: new_request_id(),
                order_id: Some(order_id.into()),
                merchant_order: None,
            },
        )
        .await
    }

    /// Starts an online purchase from a signed query receipt (canonical JSON): a
    /// host-secured purchase bundle (or the card's recovery bundle first).
    pub async fn start_purchase(
        &self,
        request_id: &str,
        query_json: &str,
        amount: u64,
    ) -> Result<BundleReply, ClientError> {
        self.start_at("/v1/purchase/start", request_id, query_json, amount)
            .await
    }

    async fn start_at(
        &self,
        path: &str,
        request_id: &str,
        query_json: &str,
        amount: u64,
    ) -> Result<BundleReply, ClientError> {
        self.post(
            path,
            &StartRequest {
                request_id: request_id.into(),
                query: query_json.into(),
                amount,
                order_id: None,
            },
        )
        .await
    }

    /// Sends a transaction's signed receipt (canonical JSON).
    pub async fn complete(
        &self,
        request_id: &str,
        receipt_json: &str,
    ) -> Result<SettleReply, ClientError> {
        self.post(
            "/v1/recharge/complete",
            &CompleteRequest {
                request_id: request_id.into(),
                receipt: receipt_json.into(),
            },
        )
        .await
    }

    /// Uploads journaled receipts.
    pub async fn journal(
        &self,
        request_id: &str,
        items: Vec<JournalItem>,
    ) -> Result<JournalReply, ClientError> {
        self.post(
            "/v1/journal",
            &JournalRequest {
                request_id: request_id.into(),
                items,
            },
        )
        .await
    }

    /// One host command of a host-secured bundle (`hostapdu`): the card company's
    /// response APDU (data ‖ SW).
    pub async fn host(
        &self,
        request_id: &str,
        seq: u64,
        apdu: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url("/v1/host");
        let reply: HostReply = self
            .post(
                "/v1/host",
                &HostRequest {
                    request_id: request_id.into(),
                    seq,
                    apdu: to_hex(apdu),
                },
            )
            .await?;
        from_hex(&reply.response)
            .filter(|r| r.len() >= 2)
            .ok_or_else(|| ClientError::BadReply {
                url,
                detail: "host response: not hex, or shorter than a status word".into(),
            })
    }

    /// One of this reader's transactions.
    pub async fn status(&self, seq: u64) -> Result<StatusReply, ClientError> {
        self.post(
            "/v1/status",
            &StatusRequest {
                request_id: new_request_id(),
                seq,
            },
        )
        .await
    }
}

fn unreachable(url: &str, e: &(dyn std::error::Error + 'static)) -> ClientError {
    match tls_error(e) {
        Some(detail) => ClientError::Untrusted {
            url: url.into(),
            detail,
        },
        None => ClientError::Unreachable {
            url: url.into(),
            detail: error_chain(e),
        },
    }
}

/// The TLS certificate error somewhere in `e`'s sources, if that is what failed.
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let cert = match find_rustls(e, 0)? {
        rustls::Error::InvalidCertificate(c) => c,
        _ => return None,
    };
    Some(match cert {
        rustls::CertificateError::UnknownIssuer => {
            "issued by a CA this client does not trust".into()
        }
        rustls::CertificateError::NotValidForName
        | rustls::CertificateError::NotValidForNameContext { .. } => {
            "issued for another name".into()
        }
        rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
            "expired".into()
        }
        other => format!("{other:?}").to_lowercase(),
    })
}

/// A `rustls::Error` in `e` or its sources. An `io::Error` hides the error it wraps from
/// `source()`, so each one is opened too.
fn find_rustls<'a>(
    e: &'a (dyn std::error::Error + 'static),
    depth: u32,
) -> Option<&'a rustls::Error> {
    if depth > 16 {
        return None;
    }
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(r) = find_rustls(inner, depth + 1)
    {
        return Some(r);
    }
    find_rustls(e.source()?, depth + 1)
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One step of a recharge, for a progress line at a kiosk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fetching the city's query script.
    QueryScript,
    /// The card was read: its id and balance.
    CardRead {
        /// Card id, hex.
        card_id: String,
        /// Balance, fen, when read.
        balance: Option<u64>,
    },
    /// The service answered with a bundle.
    Bundle {
        /// `load`, `purchase` or `recover`.
        kind: String,
        /// Its seq.
        seq: u64,
    },
    /// The card ran it.
    CardDone {
        /// The receipt's outcome (`committed`, `failed …`, `unknown …`).
        outcome: String,
    },
    /// The service settled it.
    Settled(SettleReply),
    /// The order about to be paid ([`pay_order`]): show it to the cardholder.
    Order(OrderReply),
}

/// What went wrong with the card itself, when a run ended on a transport fault on the
/// card's slot (the receipt's 0xFF02 / 0xFF03): a kiosk tells the cardholder which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFault {
    /// The card left the field during an exchange (tearing).
    Removed,
    /// The card is there but did not answer in time (a mute card).
    NotAnswering,
    /// No card was in the field.
    Absent,
    /// The reader failed (unplugged, in use by another application, …).
    Reader,
}

impl CardFault {
    /// The fault behind a run's failure, if it was the card's transport.
    pub fn of(report: &crate::vm::RunReport) -> Option<Self> {
        use crate::transport::{Slot, TransportError as T};
        let failure = match &report.outcome {
            crate::vm::Outcome::Failed(f) | crate::vm::Outcome::Unknown(f) => f,
            crate::vm::Outcome::Committed => return None,
        };
        match failure {
            crate::vm::Failure::Transport {
                error,
                slot: Slot::Card,
                ..
            } => Some(match error {
                T::CardRemoved => CardFault::Removed,
                T::Timeout => CardFault::NotAnswering,
                T::NoCard => CardFault::Absent,
                _ => CardFault::Reader,
            }),
            _ => None,
        }
    }
}

/// How a recharge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RechargeOutcome {
    /// The load's signed receipt (canonical JSON).
    pub receipt: String,
    /// The load's outcome.
    pub outcome: String,
    /// The settlement, or `None` when the receipt could not be delivered: it is in the
    /// journal; `cardvm client sync` delivers it.
    pub settled: Option<SettleReply>,
    /// Why delivery failed, when it did.
    pub delivery_error: Option<String>,
    /// Loads recovered on the way (a previous `unknown` of this card).
    pub recovered: Vec<SettleReply>,
    /// When the run ended on the card's transport: which fault.
    pub card_fault: Option<CardFault>,
    /// The card's balance as its last query read it (after any recovery), fen.
    pub balance_before: Option<u64>,
    /// The card's id (hex), as its query read it.
    pub card_id: String,
}

/// Why a recharge stopped before the card committed anything.
#[derive(Debug, thiserror::Error)]
pub enum RechargeError {
    /// The service refused or could not be reached.
    #[error(transparent)]
    Service(#[from] ClientError),
    /// The reader refused (sealed scripts, journal, policy) or the card failed.
    #[error("reader: {0}")]
    Reader(String),
    /// The card could not be read (the query did not complete): nothing was asked of
    /// the card company and nothing changed on the card.
    #[error("card query {outcome}")]
    Card {
        /// The transport fault, when it was one.
        fault: Option<CardFault>,
        /// The query's outcome.
        outcome: String,
    },
    /// The order cannot be paid (paid, cancelled or expired).
    #[error("order {order} is {state}: it cannot be paid")]
    OrderState {
        /// The order.
        order: String,
        /// Its state.
        state: String,
    },
    /// The card's earlier load is still `unknown`: its recovery (`recovery_seq`) found
    /// no proof either way, so the card gets no new load until the card company decides
    /// (`cardvm issuer decide`).
    #[error(
        "the card's earlier load is still undecided: recovery {recovery_seq} found no proof either way; the card company decides it (cardvm issuer decide) before this card is loaded again"
    )]
    Undecided {
        /// The recovery transaction's seq (its note in the ledger holds the evidence).
        recovery_seq: u64,
    },
}

/// The reader's channel to the card company for one host-secured transaction: the
/// transport `hostapdu` reaches ([`crate::transport::SamSlots::with_host`]).
///
/// The VM runs synchronously and keeps its whole state (registers, the card's session)
/// while a host command is out; the link's own thread carries the signed `POST /v1/host`
/// on its own runtime and connection pool, so the caller's runtime — even a
/// current-thread one blocked in the VM — is never re-entered. A lost reply is asked again
/// with the same request id (the card company answers it the same); what cannot be
/// answered fails the exchange, and the run reports it (0xFF06) before the card commits.
pub struct HostLink {
    to: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    from: std::sync::mpsc::Receiver<Result<Vec<u8>, ClientError>>,
    worker: Option<std::thread::JoinHandle<()>>,
    wait: Duration,
    /// Exchanges made.
    pub exchanges: u32,
}

impl std::fmt::Debug for HostLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLink")
            .field("exchanges", &self.exchanges)
            .finish_non_exhaustive()
    }
}

impl HostLink {
    /// A link for bundle `seq` of `client`'s reader.
    pub fn open(client: &Client, seq: u64) -> Result<Self, ClientError> {
        let fork = client.fork()?;
        let (to, requests) = std::sync::mpsc::channel::<Vec<u8>>();
        let (answers, from) = std::sync::mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("cardvm-host-link".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = answers.send(Err(ClientError::Setup(format!("host link: {e}"))));
                        return;
                    }
                };
                while let Ok(apdu) = requests.recv() {
                    let id = new_request_id();
                    let answer = rt.block_on(async {
                        let mut last = None;
                        for attempt in 0..3u64 {
                            match fork.host(&id, seq, &apdu).await {
                                Err(e) if e.is_retryable() => {
                                    last = Some(e);
                                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1)))
                                        .await;
                                }
                                other => return other,
                            }
                        }
                        Err(last.unwrap_or_else(|| ClientError::Setup("no attempt made".into())))
                    });
                    if answers.send(answer).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| ClientError::Setup(format!("host link thread: {e}")))?;
        Ok(HostLink {
            to: Some(to),
            from,
            worker: Some(worker),
            // Three attempts and their pauses.
            wait: client.timeout * 3 + Duration::from_secs(1),
            exchanges: 0,
        })
    }
}

impl crate::transport::CardTransport for HostLink {
    fn transmit(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, crate::transport::TransportError> {
        use crate::transport::TransportError;
        let gone = || TransportError::Other("card company: the host link stopped".into());
        self.to
            .as_ref()
            .ok_or_else(gone)?
            .send(command.to_vec())
            .map_err(|_| gone())?;
        self.exchanges += 1;
        let r = match self.from.recv_timeout(self.wait) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(TransportError::Other(format!("card company: {e}"))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Err(TransportError::Timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(gone()),
        };
        crate::transport::copy_response(&r, response)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its exchange in flight.
        self.to = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Runs one sealed bundle on `card`: opens and verifies it, and — when its script is
/// host-secured (no card key in the bundle) — gives it a [`HostLink`] to the card company
/// for bundle `seq`. The receipt is signed and journaled as by [`Reader::run`].
///
/// [`Reader::run`]: crate::reader::Reader::run
pub fn run_bundle<T: crate::transport::CardTransport, Tr: crate::vm::Tracer + ?Sized>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    seq: u64,
    command: &[u8],
    data: &[u8],
    tracer: &mut Tr,
) -> Result<crate::reader::Completed, RechargeError> {
    let mut rng = os_rng();
    let prepared = reader
        .prepare(command, data)
        .map_err(|e| RechargeError::Reader(e.to_string()))?;
    if prepared.program().host_exchanges() > 0 {
        let mut link = HostLink::open(client, seq)?;
        let mut sams = crate::transport::SamSlots::none().with_host(&mut link);
        reader.run_with_sams(&prepared, card, &mut sams, tracer, &mut rng)
    } else {
        reader.run(&prepared, card, tracer, &mut rng)
    }
    .map_err(|e| RechargeError::Reader(e.to_string()))
}

/// Delivers a receipt, retrying the same request a few times on a broken connection.
async fn deliver(client: &Client, receipt_json: &str) -> Result<SettleReply, ClientError> {
    let id = new_request_id();
    let mut last = None;
    for attempt in 0..3u64 {
        match client.complete(&id, receipt_json).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Setup("no attempt made".into())))
}

/// One recharge of `amount` fen on `card` (DESIGN §7): query the card with the city's
/// sealed query script, ask the service, run what it sealed (a pending recovery first,
/// then the load), send the receipt. The reader journals every receipt before it is sent,
/// so a receipt the service did not get is delivered later by [`sync`].
pub async fn recharge<T: crate::transport::CardTransport>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    city: u32,
    amount: u64,
    progress: impl FnMut(&Step),
) -> Result<RechargeOutcome, RechargeError> {
    online(
        client,
        reader,
        card,
        city,
        amount,
        Mode::Load(None),
        progress,
    )
    .await
}

/// [`recharge`] presenting a recharge order paid first at a payment provider
/// (`docs/clearing.md`): required in a city that loads only paid recharges.
pub async fn recharge_paid<T: crate::transport::CardTransport>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    city: u32,
    amount: u64,
    order_id: &str,
    progress: impl FnMut(&Step),
) -> Result<RechargeOutcome, RechargeError> {
    online(
        client,
        reader,
        card,
        city,
        amount,
        Mode::Load(Some(order_id.into())),
        progress,
    )
    .await
}

/// One online purchase of `amount` fen from `card` (`docs/host.md`): as [`recharge`], with
/// a host-secured purchase bundle — the card company is the terminal's PSAM, the reader
/// holds no purchase key.
pub async fn purchase<T: crate::transport::CardTransport>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    city: u32,
    amount: u64,
    progress: impl FnMut(&Step),
) -> Result<RechargeOutcome, RechargeError> {
    online(
        client,
        reader,
        card,
        city,
        amount,
        Mode::Purchase(None),
        progress,
    )
    .await
}

/// Pays a merchant's order from `card` (`docs/clearing.md`): asks the card company what
/// the order is (merchant, amount, description: [`Step::Order`], for the cardholder to
/// see), then runs [`purchase`] for exactly its amount, bound to the order. The card
/// company notifies the merchant once the purchase is settled committed.
pub async fn pay_order<T: crate::transport::CardTransport>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    city: u32,
    order_id: &str,
    mut progress: impl FnMut(&Step),
) -> Result<RechargeOutcome, RechargeError> {
    let order = client.order(order_id).await?;
    progress(&Step::Order(order.clone()));
    if order.state != "open" {
        return Err(RechargeError::OrderState {
            order: order_id.into(),
            state: order.state,
        });
    }
    online(
        client,
        reader,
        card,
        city,
        order.amount,
        Mode::Purchase(Some(order_id.to_string())),
        progress,
    )
    .await
}

/// What an online transaction does on the card.
enum Mode {
    /// A load, with the paid recharge order it uses.
    Load(Option<String>),
    /// A purchase, paying an order or the card company itself.
    Purchase(Option<String>),
}

async fn online<T: crate::transport::CardTransport>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    city: u32,
    amount: u64,
    mode: Mode,
    mut progress: impl FnMut(&Step),
) -> Result<RechargeOutcome, RechargeError> {
    let mut rng = os_rng();
    progress(&Step::QueryScript);
    let query_script = from_hex(&client.query_script(city).await?.script)
        .ok_or_else(|| RechargeError::Reader("query script: not hex".into()))?;
    let mut recovered = Vec::new();
    // At most one recovery before the load: the service answers a card with an unknown
    // load by its recovery bundle; after that the card gets its load.
    for _round in 0..3 {
        let q = query_card(reader, card, &query_script, &mut rng)?;
        let balance = match q.receipt.field("balance") {
            Some(crate::receipt::FieldValue::Int(b)) => Some(*b),
            _ => None,
        };
        let card_id = to_hex(&q.receipt.card_id);
        let balance_before = balance;
        progress(&Step::CardRead {
            card_id: card_id.clone(),
            balance,
        });
        let bundle: BundleReply = match &mode {
            Mode::Purchase(order) => {
                client
                    .post(
                        "/v1/purchase/start",
                        &StartRequest {
                            request_id: new_request_id(),
                            query: q.receipt.to_json(),
                            amount,
                            order_id: order.clone(),
                        },
                    )
                    .await?
            }
            Mode::Load(order) => {
                client
                    .post(
                        "/v1/recharge/start",
                        &StartRequest {
                            request_id: new_request_id(),
                            query: q.receipt.to_json(),
                            amount,
                            order_id: order.clone(),
                        },
                    )
                    .await?
            }
        };
        progress(&Step::Bundle {
            kind: bundle.kind.clone(),
            seq: bundle.seq,
        });
        let (command, data) = match (from_hex(&bundle.command), from_hex(&bundle.data)) {
            (Some(c), Some(d)) => (c, d),
            _ => return Err(RechargeError::Reader("bundle: not hex".into())),
        };
        let mut run = || {
            run_bundle(
                client,
                reader,
                card,
                bundle.seq,
                &command,
                &data,
                &mut crate::vm::NoTrace,
            )
        };
        // The card work is synchronous and, host-secured, waits on the card company: on
        // a multi-threaded runtime (which may be serving that card company too) the
        // worker hands its other tasks on meanwhile.
        let done = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }?;
        let outcome = done.receipt.outcome.to_string();
        let card_fault = CardFault::of(&done.report);
        progress(&Step::CardDone {
            outcome: outcome.clone(),
        });
        let json = done.receipt.to_json();
        let delivered = deliver(client, &json).await;
        if let Ok(s) = &delivered {
            progress(&Step::Settled(s.clone()));
        }
        if bundle.kind == "recover" {
            match delivered {
                // Undecided: asking again cannot help (a card may answer PROVE once).
                Ok(s) if s.decided_seq.is_none() && !s.already => {
                    return Err(RechargeError::Undecided {
                        recovery_seq: s.seq,
                    });
                }
                Ok(s) => {
                    recovered.push(s);
                    continue;
                }
                Err(e) => {
                    return Ok(RechargeOutcome {
                        receipt: json,
                        outcome,
                        settled: None,
                        delivery_error: Some(e.to_string()),
                        recovered,
                        card_fault,
                        balance_before,
                        card_id,
                    });
                }
            }
        }
        let (settled, delivery_error) = match delivered {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        return Ok(RechargeOutcome {
            receipt: json,
            outcome,
            settled,
            delivery_error,
            recovered,
            card_fault,
            balance_before,
            card_id,
        });
    }
    Err(RechargeError::Reader(
        "the service kept answering with recoveries; the card's earlier load is still undecided"
            .into(),
    ))
}

/// Runs the city's sealed query on the card with a fresh nonce; a query that did not
/// complete is [`RechargeError::Card`], with the card's fault when it was one.
fn query_card<T: crate::transport::CardTransport, R: rand_core::CryptoRng>(
    reader: &mut crate::reader::Reader,
    card: &mut T,
    query_script: &[u8],
    rng: &mut R,
) -> Result<crate::reader::Completed, RechargeError> {
    let mut nonce = [0u8; 16];
    rand_core::Rng::fill_bytes(rng, &mut nonce);
    let q = reader
        .query(query_script, &nonce, card, &mut crate::vm::NoTrace, rng)
        .map_err(|e| RechargeError::Reader(e.to_string()))?;
    if !matches!(q.receipt.outcome, crate::receipt::Outcome::Committed) {
        return Err(RechargeError::Card {
            fault: CardFault::of(&q.report),
            outcome: q.receipt.outcome.to_string(),
        });
    }
    Ok(q)
}

/// A card as the city's query script read it ([`read_card`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardInfo {
    /// Card id (hex).
    pub card_id: String,
    /// Balance, fen, when the query reads it.
    pub balance: Option<u64>,
    /// Every field the query reported (balance, counters, validity, …), in order.
    pub fields: Vec<(String, crate::receipt::FieldValue)>,
}

/// Reads the card on the reader with the city's sealed query script, before the
/// cardholder chooses an amount: nothing is asked of the card company but the script, and
/// nothing on the card changes (the reader lets only read-only commands through). The
/// signed query receipt is journaled like every other.
pub async fn read_card<T: crate::transport::CardTransport>(
    client: &Client,
    reader: &mut crate::reader::Reader,
    card: &mut T,
    city: u32,
) -> Result<CardInfo, RechargeError> {
    let mut rng = os_rng();
    let query_script = from_hex(&client.query_script(city).await?.script)
        .ok_or_else(|| RechargeError::Reader("query script: not hex".into()))?;
    let q = query_card(reader, card, &query_script, &mut rng)?;
    Ok(CardInfo {
        card_id: to_hex(&q.receipt.card_id),
        balance: match q.receipt.field("balance") {
            Some(crate::receipt::FieldValue::Int(b)) => Some(*b),
            _ => None,
        },
        fields: q.receipt.fields.clone(),
    })
}

/// What [`sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Receipts sent.
    pub sent: usize,
    /// Of which settled (now or before).
    pub settled: usize,
    /// Of which query receipts (nothing to settle).
    pub queries: usize,
    /// Of which offline terminal sales that failed before the card's commit point
    /// (nothing moved).
    pub failed: usize,
    /// Of which refused by the service (the reason stays in its log and answer).
    pub refused: Vec<String>,
    /// The journal is acknowledged up to here.
    pub acknowledged_up_to: u64,
}

/// Uploads the journal's pending receipts in batches, applies each acknowledgement and
/// compacts. Stops at the first batch the service does not acknowledge in full.
pub async fn sync<S: crate::journal::Storage>(
    client: &Client,
    journal: &mut crate::journal::Journal<S>,
) -> Result<SyncReport, ClientError> {
    let mut report = SyncReport {
        acknowledged_up_to: journal.acked_upto(),
        ..SyncReport::default()
    };
    loop {
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for entry in journal.pending() {
            let entry = entry.map_err(|e| ClientError::Setup(format!("journal: {e}")))?;
            // A lost-entry record (a repaired journal) has nothing to send; acknowledge it.
            let json = match crate::receipt::Receipt::from_bytes(&entry.payload) {
                Ok(r) => r.to_json(),
                Err(_) => continue,
            };
            bytes += json.len() + 64;
            if !items.is_empty() && bytes > MAX_BODY / 2 {
                break;
            }
            items.push(JournalItem {
                journal_seq: entry.seq,
                receipt: json,
            });
        }
        let last_pending = journal.pending().last().and_then(|e| e.ok()).map(|e| e.seq);
        if items.is_empty() {
            // Only lost-entry records (or nothing) are pending.
            if let Some(seq) = last_pending {
                journal
                    .ack(seq)
                    .map_err(|e| ClientError::Setup(format!("journal ack: {e}")))?;
                report.acknowledged_up_to = seq;
            }
            break;
        }
        let n = items.len();
        let last_sent = items.last().map(|i| i.journal_seq).unwrap_or(0);
        let reply = client.journal(&new_request_id(), items).await?;
        report.sent += n;
        for r in &reply.results {
            match r.status.as_str() {
                "settled" => report.settled += 1,
                "query" => report.queries += 1,
                "failed" => report.failed += 1,
                "refused" => report.refused.push(format!(
                    "journal seq {}: {}",
                    r.journal_seq,
                    r.error.clone().unwrap_or_default()
                )),
                _ => {}
            }
        }
        if reply.acknowledged_up_to > 0 {
            journal
                .ack(reply.acknowledged_up_to)
                .map_err(|e| ClientError::Setup(format!("journal ack: {e}")))?;
            report.acknowledged_up_to = reply.acknowledged_up_to;
        }
        if reply.acknowledged_up_to < last_sent {
            break;
        }
    }
    journal
        .compact()
        .map_err(|e| ClientError::Setup(format!("journal compact: {e}")))?;
    Ok(report)
}
