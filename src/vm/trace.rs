//! Observing a run: each executed instruction and each APDU exchange.

use crate::isa::Instr;
use crate::transport::{StatusWord, TransportError};

/// One APDU exchange as the tracer sees it.
#[derive(Debug)]
pub struct ApduEvent<'a> {
    /// 1-based APDU number in this run.
    pub index: u32,
    /// The command bytes; for a redacted command (`ldrkey`), only its header and Lc.
    pub command: &'a [u8],
    /// Whether `command` was cut because it carried key bytes.
    pub redacted: bool,
    /// Response data (without SW).
    pub response: &'a [u8],
    /// The status word, when the card answered.
    pub sw: Option<StatusWord>,
    /// The transport failure, when it did not.
    pub error: Option<&'a TransportError>,
}

/// Receives run events. Every method has an empty default.
pub trait Tracer {
    /// About to execute the instruction at code offset `offset`.
    fn step(&mut self, _offset: u32, _instr: &Instr) {}
    /// An APDU is about to be sent (for timing).
    fn before_apdu(&mut self) {}
    /// An APDU exchange finished (or failed).
    fn apdu(&mut self, _event: &ApduEvent<'_>) {}
}

/// A tracer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrace;

impl Tracer for NoTrace {}
