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
//! | host-secured mode: the card company as a remote SAM | [`host`] |
//! | **the transaction pipeline and its policy** | [`reader`] |
//! | one reader/writer for the binary formats | [`codec`] |
//! | durable device state (replay store) | [`storage`] |
//! | offline receipt store (storage trait; files in `std`) | [`journal`] |
//! | reader → server message frame | [`frame`] |
//! | simulated cards | `sim` (feature `sim`) |
//! | real readers, virtual readers | `transport::pcsc` (feature `pcsc`), `transport::vpcd` |
//!
//! The core builds with `--no-default-features` under `#![no_std]` + `alloc`.
//!
//! ## A reader's transaction: one call
//!
//! [`reader::Reader`] owns the whole transaction and its security policy: it opens the
//! sealed scripts (issuer signature, reader, expiry, replay, command ↔ data binding),
//! verifies and binds them, runs them on the card, signs the receipt and journals it.
//! Everything the device provides — replay store, journal, clock, randomness — is a
//! small trait, so the same code runs in reader firmware (`no_std`).
//!
//! ```
//! use cardvm::envelope::{EnvelopeHeader, MemoryReplayStore, ScriptKind, seal};
//! use cardvm::crypto::sm2::Sm2PrivateKey;
//! use cardvm::reader::{MemoryJournal, Policy, Reader, ReaderConfig, SystemClock};
//! use cardvm::sim::SimCard;
//! use cardvm::vm::{Limits, NoTrace, Outcome};
//!
//! let mut rng = cardvm::crypto::rng::os_rng();
//! let (issuer, reader_key) = (Sm2PrivateKey::generate(&mut rng), Sm2PrivateKey::generate(&mut rng));
//!
//! // The card company seals the city's load script and one transaction's data for R1.
//! let command = cardvm::asm::assemble_file(
//!     "scripts/city0731-des3/load.casm".as_ref(), &Default::default())?.script.encode();
//! let data = cardvm::asm::compile_data(
//!     &std::fs::read_to_string("scripts/city0731-des3/load.toml")?)?.encode();
//! let now = cardvm::envelope::unix_now();
//! let header = |kind, seq| EnvelopeHeader {
//!     kind, city: 731, script_id: 2, script_version: 1, seq, issued: now,
//!     expires: now + 600, binding: cardvm::crypto::sm3(&command), reader_id: "R1".into(),
//! };
//! let sealed_command = seal(&issuer, reader_key.public_key(), &header(ScriptKind::Command, 1), &command, &mut rng)?;
//! let sealed_data = seal(&issuer, reader_key.public_key(), &header(ScriptKind::Data, 2), &data, &mut rng)?;
//!
//! // The reader: built once, one call per transaction.
//! let mut reader = Reader::new(
//!     ReaderConfig {
//!         reader_id: "R1".into(),
//!         reader_key: Some(reader_key.clone()),
//!         issuers: vec![issuer.public_key().clone()],
//!         policy: Policy::SealedOnly,
//!         limits: Limits::default(),
//!     },
//!     Some(Box::new(MemoryReplayStore::new())), // desktop: FileReplayStore
//!     Some(Box::new(MemoryJournal::default())), // desktop: cardvm::journal::Journal
//!     Box::new(SystemClock),
//! )?;
//! let mut card = SimCard::load("scripts/city0731-des3/card.toml".as_ref())?;
//! let done = reader.transact(&sealed_command, &sealed_data, &mut card, &mut NoTrace, &mut rng)?;
//! assert_eq!(done.report.outcome, Outcome::Committed);
//! done.receipt.verify_production(reader_key.public_key())?; // what the card company checks
//! println!("{}", done.receipt.to_json());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod asm;
pub mod codec;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod isa;
pub mod journal;
pub mod lang;
pub mod reader;
pub mod receipt;
pub mod script;
pub mod storage;
pub mod transport;
pub mod verify;
pub mod vm;

#[cfg(feature = "pki")]
pub mod issuer;
#[cfg(any(feature = "service", feature = "client", feature = "fuzzing"))]
pub mod online;
#[cfg(feature = "sim")]
pub mod sim;

pub use error::Error;
