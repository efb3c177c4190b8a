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
    key: Sm2PrivateKey,
    clock: Arc<dyn Clock + Send + Sync>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("reader_id", &self.reader_id)
            .finish_non_exhaustive()
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
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            reader_id: reader_id.into(),
            key,
            clock: Arc::new(crate::reader::SystemClock),
        })
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
        let msg = signing_input("POST", path, &self.reader_id, time, &body);
        let sig = self
            .key
            .sign(&mut os_rng(), &msg)
            .map_err(|e| ClientError::Setup(format!("signing: {e}")))?;
        let url = self.url(path);
        let resp = self
            .http
            .post(&url)
            .header(HDR_READER, &self.reader_id)
            .header(HDR_TIME, time.to_string())
            .header(HDR_SIGNATURE, to_hex(&sig))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                detail: error_chain(&e),
            })?;
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
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                detail: error_chain(&e),
            })?;
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

    /// Starts a recharge from a signed query receipt (canonical JSON).
    pub async fn start(
        &self,
        request_id: &str,
        query_json: &str,
        amount: u64,
    ) -> Result<BundleReply, ClientError> {
        self.post(
            "/v1/recharge/start",
            &StartRequest {
                request_id: request_id.into(),
                query: query_json.into(),
                amount,
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
