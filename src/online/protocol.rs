//! The `/v1` API: request and response bodies (JSON), and request signatures.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | — | [`Health`] (no authentication) |
//! | `POST /v1/query-script` | [`QueryScriptRequest`] | [`SealedReply`] |
//! | `POST /v1/terminal-script` | [`QueryScriptRequest`] | [`SealedReply`] (a merchant terminal's offline purchase program) |
//! | `POST /v1/recharge/start` | [`StartRequest`] (signed query receipt + amount) | [`BundleReply`] |
//! | `POST /v1/recharge/complete` | [`CompleteRequest`] (signed receipt) | [`SettleReply`] |
//! | `POST /v1/journal` | [`JournalRequest`] (offline receipts) | [`JournalReply`] |
//! | `POST /v1/status` | [`StatusRequest`] | [`StatusReply`] |
//! | `POST /v1/order` | [`OrderRequest`] (an order the cardholder is about to pay) | [`OrderReply`] |
//! | `POST /v1/purchase/start` | [`StartRequest`] with `order_id` | [`BundleReply`] |
//!
//! Merchants (`docs/clearing.md`) sign the same way with their own key, under
//! [`HDR_MERCHANT`] and [`merchant_signing_input`] (another domain string, so a reader's
//! signature is never a merchant's):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/merchant/orders` | [`CreateOrderRequest`] | [`OrderReply`] |
//! | `POST /v1/merchant/orders/query` | [`OrderRequest`] | [`OrderReply`] |
//! | `POST /v1/merchant/orders/cancel` | [`OrderRequest`] | [`OrderReply`] |
//! | `POST /v1/merchant/orders/refund` | [`RefundRequest`] | [`OrderReply`] |
//!
//! The card company posts a [`Notification`] to the merchant's URL when an order is paid,
//! signed over [`notification_signing_input`] with its sealing key
//! ([`verify_notification`]).
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
/// Header: the merchant id (merchant requests, instead of [`HDR_READER`]).
pub const HDR_MERCHANT: &str = "x-cardvm-merchant";
/// Header: the payment provider id (a provider's payment notification).
pub const HDR_PROVIDER: &str = "x-cardvm-provider";
/// Header of a notification: the key id (hex) of the card company's key that signed it.
pub const HDR_ISSUER_KEY: &str = "x-cardvm-issuer-key";
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

/// What a merchant signs for a request: as [`signing_input`], under its own domain
/// string.
pub fn merchant_signing_input(
    method: &str,
    path: &str,
    merchant_id: &str,
    time: u64,
    body: &[u8],
) -> Vec<u8> {
    domain_input("cardvm-merchant-v1", method, path, merchant_id, time, body)
}

/// What the card company signs for a notification posted to `path` (the path of the
/// merchant's notification URL) for `merchant_id` at `time`.
pub fn notification_signing_input(
    path: &str,
    merchant_id: &str,
    time: u64,
    body: &[u8],
) -> Vec<u8> {
    domain_input("cardvm-notify-v1", "POST", path, merchant_id, time, body)
}

fn domain_input(
    domain: &str,
    method: &str,
    path: &str,
    id: &str,
    time: u64,
    body: &[u8],
) -> Vec<u8> {
    let digest = crate::crypto::sm3(body);
    let mut s = format!("{domain}\n{method}\n{path}\n{id}\n{time}\n");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s.into_bytes()
}

/// What a payment provider signs for its notification (`docs/clearing.md`): the domain
/// string, its id and time, and the body as sent. SM2 (default distinguishing id) or
/// RSA PKCS#1 v1.5 with SHA-256 over these bytes, hex in [`HDR_SIGNATURE`].
pub fn provider_signing_input(provider_id: &str, time: u64, body: &[u8]) -> Vec<u8> {
    let mut s = format!("cardvm-provider-v1\n{provider_id}\n{time}\n").into_bytes();
    s.extend_from_slice(body);
    s
}

/// Checks a notification as a merchant receives it (`docs/clearing.md`): the
/// [`HDR_TIME`] and [`HDR_SIGNATURE`] header values, the body, the path it was posted
/// to, the merchant's own id, the card company's public key, and the merchant's clock
/// (`now`, unix seconds; at most [`MAX_CLOCK_SKEW`] apart). Returns the notification.
pub fn verify_notification(
    issuer: &crate::crypto::sm2::Sm2PublicKey,
    merchant_id: &str,
    path: &str,
    time: &str,
    signature: &str,
    body: &[u8],
    now: u64,
) -> Result<Notification, String> {
    let (time, sig) = parse_auth_headers(time, signature).map_err(|e| match e {
        AuthHeaderError::Time => format!("{HDR_TIME}: not unix seconds"),
        AuthHeaderError::Signature => format!("{HDR_SIGNATURE}: not 64 bytes of hex"),
    })?;
    if now.abs_diff(time) > MAX_CLOCK_SKEW {
        return Err(format!(
            "signed at {time}, {} s from now",
            now.abs_diff(time)
        ));
    }
    issuer
        .verify(
            &notification_signing_input(path, merchant_id, time, body),
            &sig,
        )
        .map_err(|_| "the card company's signature does not verify".to_string())?;
    let n: Notification =
        serde_json::from_slice(body).map_err(|e| format!("notification body: {e}"))?;
    if n.merchant_id != merchant_id {
        return Err(format!("notification for merchant `{}`", n.merchant_id));
    }
    Ok(n)
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
    /// Amount to load (or pay), fen.
    pub amount: u64,
    /// `/v1/purchase/start` only: the merchant order this purchase pays (its amount
    /// must be the order's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// `POST /v1/order` (a reader, before paying) and `POST /v1/merchant/orders/query` and
/// `…/cancel` (the merchant): one order, by the card company's id or (merchants only)
/// the merchant's own order number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The card company's order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The merchant's order number (merchant requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_order: Option<String>,
}

/// `POST /v1/recharge/order`: a recharge to be paid first at a payment provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RechargeOrderRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The card's city.
    pub city: u32,
    /// The card to load (hex, as the card query read it).
    pub card_id: String,
    /// Fen.
    pub amount: u64,
    /// The provider the cardholder pays at.
    pub provider_id: String,
}

/// A recharge order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RechargeOrderReply {
    /// The card company's id (the provider is told it; the load presents it).
    pub order_id: String,
    /// City.
    pub city: u32,
    /// Card (hex).
    pub card_id: String,
    /// Fen.
    pub amount: u64,
    /// Yuan, for display.
    pub amount_display: String,
    /// The provider.
    pub provider_id: String,
    /// `unpaid`, `mispaid`, `paid`, `loading`, `loaded` or `expired`.
    pub state: String,
    /// Unix seconds: no load for it starts from then on.
    pub expires_at: u64,
    /// When the provider confirmed payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<u64>,
}

/// `POST /v1/provider/notify`: a payment provider confirms a recharge order was paid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderNotification {
    /// The card company's order id.
    pub order_id: String,
    /// What was paid, fen.
    pub amount: u64,
    /// The provider's own reference of the payment (unique per provider).
    pub provider_ref: String,
    /// `paid`.
    pub status: String,
}

/// The card company's acknowledgement of a provider's notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderAck {
    /// The order.
    pub order_id: String,
    /// `recorded` now or `already` recorded.
    pub result: String,
    /// The order's state now.
    pub state: String,
}

/// `POST /v1/merchant/orders`: a payment order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The merchant's own order number (1–32 of `A-Z a-z 0-9 - _ .`); the same number
    /// again returns the same order.
    pub merchant_order: String,
    /// Fen (> 0).
    pub amount: u64,
    /// What is bought, shown to the cardholder (at most 200 characters).
    pub description: String,
    /// Seconds until no payment for it starts (60..=604800; default 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// `POST /v1/merchant/orders/refund`: refund a paid order in full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Idempotency key.
    pub request_id: String,
    /// The card company's order id.
    pub order_id: String,
    /// Why (kept with the refund; at most 200 characters).
    pub reason: String,
}

/// An order as its merchant, or the cardholder about to pay it, sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderReply {
    /// The card company's order id (the cardholder pays this).
    pub order_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The merchant's name.
    pub merchant_name: String,
    /// The merchant's order number.
    pub merchant_order: String,
    /// Fen.
    pub amount: u64,
    /// Yuan, for display (`12.34`).
    pub amount_display: String,
    /// What is bought.
    pub description: String,
    /// `open`, `paying`, `paid`, `cancelled`, `expired` or `refunded`.
    pub state: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// When its purchase settled, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<u64>,
    /// The card that paid, masked to its last 4 digits (merchant answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
    /// When it was refunded, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<u64>,
    /// The card company's fee on it (fen; merchant answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<u64>,
}

/// What the card company posts to a merchant's notification URL when an order is paid
/// (signed: [`verify_notification`]). Delivered until the merchant answers 2xx; the
/// same `notify_id` may arrive more than once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notification {
    /// Stable id of this event (deduplicate on it).
    pub notify_id: String,
    /// `order.paid`.
    pub event: String,
    /// The card company's order id.
    pub order_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The merchant's order number.
    pub merchant_order: String,
    /// Fen.
    pub amount: u64,
    /// When the purchase settled, unix seconds.
    pub paid_at: u64,
    /// The card, masked to its last 4 digits.
    pub card: String,
    /// Delivery attempt (1, 2, …).
    pub attempt: u64,
}

/// Yuan text of an amount in fen: `12345` → `123.45`.
pub fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// A card id shown outside the card company: its last 4 characters.
pub fn mask_card(card_hex: &str) -> String {
    let tail: String = card_hex
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

/// A bundle: the sealed scripts the reader runs next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BundleReply {
    /// `load`, `purchase`, or `recover` (the card has a transaction in state unknown:
    /// run this first).
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
    /// `load`, `purchase` or `recover`.
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
    /// `settled`, `query` (a query receipt: nothing to settle), `failed` (an offline
    /// terminal sale that failed before the card's commit point: nothing moved),
    /// `refused`, or `retry`
    /// (the ledger failed: nothing after it is acknowledged; send it again).
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
    /// `load`, `purchase` or `recover`.
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
