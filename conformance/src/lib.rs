//! cardvm's `/v1` API checked against its OpenAPI document (`docs/openapi.json`):
//! `tests/openapi.rs` compares the document with the service's routes and refusals and
//! validates the answers of a running service. In its own crate, so that building
//! cardvm, its examples and its tests never builds the JSON Schema validator.
//!
//! ```sh
//! cargo test -p cardvm-conformance
//! ```
#![forbid(unsafe_code)]
