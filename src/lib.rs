//! # cardvm
//!
//! A bytecode virtual machine that runs the transaction scripts of city smart-card
//! companies against contactless cards, inside the reader.
//!
//! The card company sends the reader, for every transaction, a **command script**
//! (bytecode that builds ISO 7816-4 APDUs, checks status words, computes MACs) and a
//! **data script** (the transaction's amount, terminal id, date/time and the keys it
//! needs). Both arrive sealed for that one reader; the reader opens them, verifies the
//! bytecode, runs it against the card and signs a receipt of what happened.
//!
//! The pipeline, one module per step:
//!
//! | step | module |
//! |---|---|
//! | text `.casm` → bytecode, TOML → data script | [`asm`] |
//! | binary formats (parse / encode) | [`script`] |
//! | instruction set (one table for all tools) | [`isa`] |
//! | bytecode → [`verify::VerifiedProgram`] | [`verify`] |
//! | run it against a card | [`vm`] over [`transport`] |
//! | DES/3DES, SM4, SM3, SM2, PBOC MAC | [`crypto`] |
//! | seal / open scripts, signed receipts | [`envelope`], [`receipt`] |
//! | offline receipt store | `journal` (std) |
//! | reader → server message frame | [`frame`] |
//! | simulated cards | `sim` (feature `sim`) |
//! | real readers | `pcsc` (feature `pcsc`) |
//!
//! The core builds with `--no-default-features` under `#![no_std]` + `alloc`.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod asm;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod isa;
pub mod receipt;
pub mod script;
pub mod transport;
pub mod verify;
pub mod vm;

#[cfg(feature = "std")]
pub mod journal;
#[cfg(feature = "pcsc")]
pub mod pcsc;
#[cfg(feature = "sim")]
pub mod scenario;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "std")]
pub mod vpcd;

pub use error::Error;
