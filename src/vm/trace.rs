//! Observing a run: each executed instruction and each APDU exchange.

use crate::isa::Instr;
use crate::transport::{Slot, StatusWord, TransportError};

/// One APDU exchange as the tracer sees it.
#[derive(Debug)]
pub struct ApduEvent<'a> {
    /// 1-based APDU number in this run (card and SAM exchanges counted together).
    pub index: u32,
    /// Where the command went: the card, or a SAM slot (`samapdu`).
    pub slot: Slot,
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
    /// Whether [`Tracer::after_step`] should be called (default `false`: the VM then
    /// builds no register view, so ordinary runs pay nothing).
    fn wants_registers(&self) -> bool {
        false
    }
    /// The instruction at `offset` executed and the run goes on; `regs` is a read-only
    /// view of the registers (key slots show only their algorithm and usage).
    fn after_step(&mut self, _offset: u32, _regs: &RegView<'_>) {}
}

/// A register's value as a tracer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegValue<'a> {
    /// Never written.
    Unset,
    /// An integer.
    Int(u64),
    /// A byte string.
    Bytes(&'a [u8]),
}

/// What a tracer may know about a key slot: never its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHandle {
    /// Algorithm name (`des3`, `sm4`, `m1`, …).
    pub alg: &'static str,
    /// Usage name (`load`, `tac`, …).
    pub usage: &'static str,
}

impl core::fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "<{} {} key>", self.alg, self.usage)
    }
}

/// A read-only view of the VM's registers and key slots after a step.
pub struct RegView<'a> {
    pub(super) regs: &'a [super::Reg],
    pub(super) keys: &'a [Option<crate::crypto::SecretKey>],
}

impl core::fmt::Debug for RegView<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RegView")
            .field("registers", &self.regs.len())
            .field("key_slots", &self.keys.len())
            .finish()
    }
}

impl RegView<'_> {
    /// Number of registers.
    pub fn registers(&self) -> usize {
        self.regs.len()
    }

    /// Register `r` (`Unset` when out of range).
    pub fn get(&self, r: usize) -> RegValue<'_> {
        self.regs.get(r).map_or(RegValue::Unset, super::Reg::view)
    }

    /// Number of key slots.
    pub fn key_slots(&self) -> usize {
        self.keys.len()
    }

    /// Key slot `slot`: `None` when empty; otherwise only its algorithm and usage.
    pub fn key(&self, slot: usize) -> Option<KeyHandle> {
        let k = self.keys.get(slot)?.as_ref()?;
        Some(KeyHandle {
            alg: k.alg().name(),
            usage: k.usage().name(),
        })
    }
}

/// A tracer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrace;

impl Tracer for NoTrace {}
