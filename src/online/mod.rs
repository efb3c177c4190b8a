//! The online protocol between a reader and the card company (DESIGN §7), over HTTPS.
//!
//! * [`protocol`] — the JSON bodies of `/v1` and how a reader signs a request.
//! * [`service`] (feature `service`) — the issuer's HTTPS service: axum on tokio, rustls,
//!   one [`crate::issuer::Issuer`] over a shared ledger (SQLite or PostgreSQL).
//! * [`client`] (feature `client`) — the reader's side: reqwest over rustls.
//! * [`kiosk`] (feature `client`) — outcome codes, messages and the JSON Lines events a
//!   kiosk or a web page shows (docs/kiosk.md).
//! * [`agent`] (feature `agent`) — the local reader agent a web page drives, on loopback,
//!   for the card company's origins only (docs/agent.md).
//! * `metrics` (with `service`) — the service's Prometheus counters (`GET /metrics`).
//!
//! TLS gives confidentiality and the server's identity. It is ordinary TLS 1.2/1.3 with
//! ECDSA/RSA certificates: SM2 TLS (TLCP, GB/T 38636) is not available in Rust's TLS stacks.
//! The reader is authenticated by its SM2 signature over every request and by the
//! certificate the card company's CA issued it, re-verified (chain, validity, revocation)
//! on every request; the scripts inside are sealed for that one reader anyway.

pub mod protocol;

#[cfg(feature = "service")]
pub mod service;

#[cfg(feature = "service")]
mod metrics;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "client")]
pub mod kiosk;

#[cfg(feature = "agent")]
pub mod agent;
