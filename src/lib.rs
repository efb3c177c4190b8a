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
//! | offline receipt store (storage trait; files in `std`) | [`journal`] |
//! | reader → server message frame | [`frame`] |
//! | simulated cards | `sim` (feature `sim`) |
//! | real readers, virtual readers | `transport::pcsc` (feature `pcsc`), `transport::vpcd` |
//!
//! The core builds with `--no-default-features` under `#![no_std]` + `alloc`.
//!
//! ## A reader's transaction loop
//!
//! Verify a command script once (cache it per city and version); per transaction, bind
//! that transaction's data script and run. A [`vm::Vm`] and a [`verify::Binding`] kept
//! between transactions make a warm run allocate only its report.
//!
//! ```
//! use cardvm::asm::{assemble_file, compile_data, AsmOptions};
//! use cardvm::sim::SimCard;
//! use cardvm::transport::ApduLayer;
//! use cardvm::verify::{Binding, VerifiedProgram};
//! use cardvm::vm::{NoTrace, Outcome, OutputRef, Vm};
//!
//! let script = assemble_file("scripts/examples/load.casm".as_ref(), &AsmOptions::default())?;
//! let program = VerifiedProgram::verify(&script.script)?; // once, then cached
//! let (mut vm, mut binding) = (Vm::default(), Binding::default());
//! let mut card = SimCard::load("scripts/cards/cpu_des3.toml".as_ref())?;
//! for _ in 0..2 {
//!     let data = compile_data(&std::fs::read_to_string("scripts/examples/load.toml")?)?;
//!     let bound = program.bind_into(&data, &mut binding)?;
//!     let report = vm.run(bound, &mut ApduLayer::new(&mut card), &mut NoTrace);
//!     assert_eq!(report.outcome, Outcome::Committed);
//!     if let Some(OutputRef::Int(after)) = report.output("balance_after") {
//!         println!("balance after: {after}");
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod asm;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod isa;
pub mod journal;
pub mod receipt;
pub mod script;
pub mod transport;
pub mod verify;
pub mod vm;

#[cfg(feature = "sim")]
pub mod sim;

pub use error::Error;
