//! The `/v1` API: request and response bodies (JSON), and request signatures.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | — | [`Health`] (no authentication) |
//! | `POST /v1/query-script` | [`QueryScriptRequest`] | [`SealedReply`] |
//! | `POST /v1/recharge/start` | [`StartRequest`] (signed query receipt + amount) | [`BundleReply`] |
//! | `POST /v1/recharge/complete` | [`CompleteRequest`] (signed receipt) | [`SettleReply`] |
//! | `POST /v1/journal` | [`JournalRequest`] (offline receipts) | [`JournalReply`] |
//! | `POST /v1/status` | [`StatusRequest`] | [`StatusReply`] |
//!
//! Every `POST` carries three headers: [`HDR_READER`] (the reader id), [`HDR_TIME`] (its
//! clock, unix seconds) and [`HDR_SIGNATURE`] (hex `r ‖ s`): the reader's SM2 signature over
//! [`signing_input`] — method, path, reader id, time and the SM3 of the body. A request
//! whose time is more than [`MAX_CLOCK_SKEW`] from the service's is refused (the reader's
//! clock is wrong; its sealed scripts would not open either).
//!
//! Every `POST` body has a `request_id` (1..=64 printable characters, chosen by the reader):
//! the service stores each successful answer under `(reader, request_id)` and answers a
//! retry with it, so a request repeated after a lost connection does nothing twice.
//!
//! A refusal is an HTTP 4xx/5xx with an [`ErrorBody`]: a stable `code` and a one-line
//! `error`.

use serde::{Deserialize, Serialize};

/// The API version prefix.
pub const API: &str = "/v1";
/// Header: the reader id.
pub const HDR_READER: &str = "x-cardvm-reader";
/// Header: the reader's clock, unix seconds.
pub const HDR_TIME: &str = "x-cardvm-time";
/// Header: hex SM2 signature over [`signing_input`].
pub const HDR_SIGNATURE: &str = "x-cardvm-signature";
/// Largest request body the service reads.
pub const MAX_BODY: usize = 64 * 1024;
/// How far a reader's clock may be from the service's, seconds.
pub const MAX_CLOCK_SKEW: u64 = 300;
/// Longest request id.
pub const MAX_REQUEST_ID: usize = 64;

/// What a reader signs for one request.
pub fn signing_input(method: &str, path: &str, reader_id: &str, time: u64, body: &[u8]) -> Vec<u8> {
    let digest = crate::crypto::sm3(body);
    let mut s = format!("cardvm-request-v1\n{method}\n{path}\n{reader_id}\n{time}\n");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s.into_bytes()
}

/// Why a request's authentication headers were refused (before any signature work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthHeaderError {
    /// [`HDR_TIME`] is not Unix seconds.
    Time,
    /// [`HDR_SIGNATURE`] is not 64 bytes of hex.
    Signature,
}

/// The values of [`HDR_TIME`] and [`HDR_SIGNATURE`]: Unix seconds and the 64-byte
/// `r ‖ s` signature.
pub fn parse_auth_headers(time: &str, signature: &str) -> Result<(u64, [u8; 64]), AuthHeaderError> {
    let time = time.parse().map_err(|_| AuthHeaderError::Time)?;
    let sig = from_hex(signature)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or(AuthHeaderError::Signature)?;
    Ok((time, sig))
}

/// Whether a request id is acceptable (1..=64 printable ASCII, no spaces).
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok` when the ledger answers.
    pub status: String,
    /// The service's clock, unix seconds (a reader can see its own skew).
    pub time: u64,
    /// The crate version.
    pub version: String,
}

/// `POST /v1/query-script`: the city's query script, sealed for the calling reader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueryScriptRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The city whose cards this reader serves.
    pub city: u32,
}

/// A sealed script.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedReply {
    /// Its seq.
    pub seq: u64,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// The envelope, hex.
    pub script: String,
}

/// `POST /v1/recharge/start`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The signed query receipt, canonical JSON text.
    pub query: String,
    /// Amount to load, fen.
    pub amount: u64,
}

/// A bundle: the sealed scripts the reader runs next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleReply {
    /// `load`, or `recover` (the card has a load in state unknown: run this first).
    pub kind: String,
    /// Seq of both envelopes.
    pub seq: u64,
    /// City.
    pub city: u32,
    /// Card id, hex.
    pub card_id: String,
    /// Amount, fen (0 for a recovery).
    pub amount: u64,
    /// For a recovery: the seq of the load it asks about.
    pub recovers_seq: Option<u64>,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// Sealed command script, hex.
    pub command: String,
    /// Sealed data script, hex.
    pub data: String,
}

/// `POST /v1/recharge/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The signed receipt, canonical JSON text.
    pub receipt: String,
}

/// `POST /v1/host`: one host command of a host-secured bundle (`hostapdu`, docs/host.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostRequest {
    /// Idempotency key: a lost reply is asked again with the same id and body.
    pub request_id: String,
    /// The bundle's seq (the reader is the signer).
    pub seq: u64,
    /// The command APDU, hex.
    pub apdu: String,
}

/// The card company's answer to a host command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostReply {
    /// The response APDU (data ‖ SW), hex: what the script receives.
    pub response: String,
}

/// How a receipt was settled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettleReply {
    /// Reader.
    pub reader_id: String,
    /// Seq.
    pub seq: u64,
    /// `load` / `recover`.
    pub kind: String,
    /// The transaction's state now.
    pub state: String,
    /// True when it had already been settled by this receipt.
    pub already: bool,
    /// For a recovery: the load it decided…
    pub decided_seq: Option<u64>,
    /// …and how.
    pub decided_state: Option<String>,
}

/// One journaled receipt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JournalItem {
    /// Its sequence number in the reader's journal.
    pub journal_seq: u64,
    /// The receipt, canonical JSON text.
    pub receipt: String,
}

/// `POST /v1/journal`: receipts a reader stored while offline, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JournalRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The receipts, in journal order.
    pub items: Vec<JournalItem>,
}

/// What happened to one journaled receipt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalResult {
    /// Its journal seq.
    pub journal_seq: u64,
    /// `settled`, `query` (a query receipt: nothing to settle) or `refused`.
    pub status: String,
    /// The settlement, when settled.
    pub settled: Option<SettleReply>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// The acknowledgement of a journal batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalReply {
    /// The reader may mark every entry up to and including this seq as delivered (0: none).
    /// Refused receipts are acknowledged too: they were delivered, and the service keeps
    /// the refusal; retrying them cannot change it.
    pub acknowledged_up_to: u64,
    /// One result per item.
    pub results: Vec<JournalResult>,
}

/// `POST /v1/status`: one of the calling reader's transactions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// Idempotency key (status is read-only; any id).
    pub request_id: String,
    /// The seq.
    pub seq: u64,
}

/// A transaction's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReply {
    /// Seq.
    pub seq: u64,
    /// `load` / `recover`.
    pub kind: String,
    /// Card id, hex.
    pub card_id: String,
    /// Amount, fen.
    pub amount: u64,
    /// State.
    pub state: String,
}

/// A refusal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine-readable code (`unauthenticated`, `clock_skew`, `stale_query`, …).
    pub code: String,
    /// One line for a person.
    pub error: String,
}

/// Hex of bytes (lower case is accepted back).
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Bytes of hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_input_covers_every_part() {
        let base = signing_input("POST", "/v1/x", "R1", 5, b"{}");
        for other in [
            signing_input("GET", "/v1/x", "R1", 5, b"{}"),
            signing_input("POST", "/v1/y", "R1", 5, b"{}"),
            signing_input("POST", "/v1/x", "R2", 5, b"{}"),
            signing_input("POST", "/v1/x", "R1", 6, b"{}"),
            signing_input("POST", "/v1/x", "R1", 5, b"{ }"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("r-1"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"x".repeat(65)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<StartRequest>(
            r#"{"request_id":"a","query":"q","amount":1,"extra":1}"#,
        );
        assert!(e.is_err());
    }
}
