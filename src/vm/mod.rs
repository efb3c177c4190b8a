//! The interpreter: runs a [`Bound`] program against a card.
//!
//! - Registers hold an integer (`u64`) or a byte string. Each register keeps its byte
//!   buffer between writes, and results are built in one scratch buffer that is swapped
//!   in, so ordinary instructions do not allocate once the buffers have grown (a [`Vm`]
//!   reused across transactions does not allocate at all in the dispatch loop).
//! - Keys live in key slots. No instruction copies a slot into a register: keys reach
//!   the card only through MAC, process-key, encrypt results, or `ldrkey` (M1 reader key
//!   store), whose APDU is redacted in traces and in the transcript.
//! - Key usages: each instruction that reads a key slot accepts only the usages of
//!   [`Opcode::allowed_key_usages`](crate::isa::Opcode::allowed_key_usages), and a derived
//!   key (`divkey`, `pkey`, `tackey`) takes the usage its source's usage gives it
//!   ([`KeyUsage::derive`](crate::crypto::KeyUsage::derive)): no script chooses a usage, and no sequence of instructions
//!   turns a purse, TAC or master key into an `enc` key (the only usage whose results a
//!   script can read back).
//! - `ldrkey` runs only on a transport that declares a reader key store
//!   ([`CardTransport::reader_key_store`]); elsewhere it is a fault before any byte is sent.
//! - SAM slots: `samapdu` sends to a SAM of the terminal ([`SamSlots`]), never to the card;
//!   a script that addresses a slot the terminal lacks fails before any byte is sent
//!   ([`VmErrorKind::NoSam`]). The trace ([`ApduEvent::slot`]), the transcript and
//!   [`LastExchange`] name each APDU's [`Slot`].
//! - Limits ([`Limits`]): fuel (instructions), APDU count, byte-string length and total
//!   memory (registers and output slots together). Exceeding one is a typed [`VmError`]
//!   carrying the code offset.
//! - Outcome: `halt` → committed; `fail` → failed with the script's code; a transport
//!   failure or VM fault → failed before `commit_point`, **unknown** after it (the card
//!   may or may not have committed: recovery must ask the card).

mod exec;
mod outputs;
mod trace;
mod transcript;

pub use outputs::{OutputRef, OutputValue, Outputs};
pub use trace::{ApduEvent, KeyHandle, NoTrace, RegValue, RegView, Tracer};
pub use transcript::TranscriptHasher;

use crate::crypto::{self, SecretKey};
use crate::isa::Opcode;
use crate::transport::{
    Apdu, ApduError, ApduLayer, CardTransport, SamSlots, Slot, StatusWord, TransportError,
};
use crate::verify::Bound;
use alloc::string::String;
use alloc::vec::Vec;

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most instructions executed.
    pub fuel: u64,
    /// Most APDUs sent (including `ldrkey`).
    pub max_apdus: u32,
    /// Longest byte string a register may hold.
    pub max_bytes: usize,
    /// Most bytes all registers and output slots may hold together.
    pub max_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 100_000,
            max_apdus: 256,
            max_bytes: 4096,
            max_memory: 64 * 1024,
        }
    }
}

/// A fault inside the VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmErrorKind {
    /// The fuel limit was reached.
    #[error("out of fuel after {0} instructions")]
    OutOfFuel(u64),
    /// The APDU limit was reached.
    #[error("APDU limit of {0} reached")]
    TooManyApdus(u32),
    /// A register was read before any write.
    #[error("register r{0} read before it was written")]
    Uninitialized(u8),
    /// A register holds the wrong kind of value.
    #[error("register r{reg} holds {found}, {expected} needed")]
    TypeMismatch {
        /// The register.
        reg: u8,
        /// What the instruction needs.
        expected: &'static str,
        /// What it holds.
        found: &'static str,
    },
    /// Integer overflow or underflow.
    #[error("integer overflow")]
    Overflow,
    /// Division or remainder by zero.
    #[error("division by zero")]
    DivideByZero,
    /// A slice outside its source.
    #[error("slice {offset}+{len} outside a string of {available} bytes")]
    SliceOutOfRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Source length.
        available: usize,
    },
    /// Operands of different lengths where equal lengths are needed.
    #[error("lengths differ: {0} and {1}")]
    LengthMismatch(usize, usize),
    /// A byte string above [`Limits::max_bytes`].
    #[error("byte string of {len} bytes exceeds the limit {limit}")]
    StringTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Register and output memory above [`Limits::max_memory`].
    #[error("VM memory (registers and outputs) would reach {used} bytes, limit {limit}")]
    OutOfMemory {
        /// Bytes needed.
        used: usize,
        /// The limit.
        limit: usize,
    },
    /// A value does not fit the requested width.
    #[error("value does not fit in {0} bytes")]
    DoesNotFit(u8),
    /// More than 8 bytes given to `frombe`.
    #[error("{0} bytes are too many for an integer")]
    IntTooWide(usize),
    /// A nibble above 9 in `frombcd`, or too many digits.
    #[error("invalid BCD")]
    BadBcd,
    /// `ret` with an empty call stack, or the call stack full.
    #[error("call stack fault")]
    CallStack,
    /// A status word was needed before any APDU.
    #[error("no APDU has been sent yet")]
    NoStatusWord,
    /// A malformed command APDU.
    #[error("malformed APDU: {0}")]
    BadApdu(ApduError),
    /// A key slot used before `ldkey` or a derivation filled it.
    #[error("key slot k{0} is empty")]
    EmptyKeySlot(u8),
    /// A key used for an operation its usage does not allow (see
    /// [`Opcode::allowed_key_usages`](crate::isa::Opcode::allowed_key_usages)).
    #[error("key slot k{slot} ({usage}) may not be used for {op}")]
    KeyUsage {
        /// The slot.
        slot: u8,
        /// Its usage name.
        usage: &'static str,
        /// The operation.
        op: &'static str,
    },
    /// A derivation input of the wrong length.
    #[error("{op} needs {expected} bytes of input, got {found}")]
    InputLength {
        /// The operation.
        op: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// The crypto layer refused.
    #[error("crypto: {0}")]
    Crypto(crypto::CryptoError),
    /// A value written to an output does not fit its declared type.
    #[error("value does not fit output `{0}`")]
    OutputType(String),
    /// `ldrkey` on a transport without a reader key store (a CPU card, a replay, an unknown
    /// backend): the key would go to whatever answers. Nothing was sent.
    #[error(
        "ldrkey needs a reader key store (a PC/SC Part 3 storage-card reader); this card transport has none, nothing was sent"
    )]
    NoReaderKeyStore,
    /// The script addresses SAM slot `slot` and the terminal has `available` SAMs. Checked
    /// when the run starts: nothing was sent to the card or a SAM.
    #[error(
        "the script needs SAM slot {slot} and this terminal has {available} SAM(s); nothing was sent"
    )]
    NoSam {
        /// The slot the script addresses.
        slot: u8,
        /// SAM slots the terminal has.
        available: usize,
    },
    /// The script reaches the card company (`hostapdu`, host-secured mode) and the run has
    /// no channel to it (an offline run). Checked when the run starts: nothing was sent.
    #[error(
        "the script is host-secured: it needs the card company online (cardvm client), and this run has no host channel; nothing was sent"
    )]
    NoHost,
}

/// A VM fault at a code offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at code offset {offset}: {kind}")]
pub struct VmError {
    /// Byte offset of the faulting instruction in the code section.
    pub offset: u32,
    /// What went wrong.
    pub kind: VmErrorKind,
}

/// Why a run did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The script executed `fail code` (at `offset`).
    Script {
        /// The script's failure code.
        code: u16,
        /// Where.
        offset: u32,
    },
    /// The VM faulted.
    Fault(VmError),
    /// A transport failed (at the APDU instruction at `offset`); `CardRemoved` on the
    /// card's slot is tearing.
    Transport {
        /// The error.
        error: TransportError,
        /// Where.
        offset: u32,
        /// Which device: the card, or the SAM the instruction addressed (a SAM pulled
        /// mid-purchase is not the card torn: the receipt code says which).
        slot: Slot,
    },
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Script { code, offset } => {
                write!(f, "script failed with code {code:#06x} at offset {offset}")
            }
            Failure::Fault(e) => write!(f, "VM fault {e}"),
            Failure::Transport {
                error,
                offset,
                slot: Slot::Sam(n),
            } => write!(f, "at code offset {offset}: SAM slot {n}: {error}"),
            Failure::Transport {
                error,
                offset,
                slot: Slot::Host,
            } => write!(f, "at code offset {offset}: card company: {error}"),
            Failure::Transport { error, offset, .. } => {
                write!(f, "at code offset {offset}: {error}")
            }
        }
    }
}

impl Failure {
    /// The numeric code for receipts: the script's code, or 0xFFxx for VM/transport
    /// faults: 0xFF01 VM fault, 0xFF02 card removed (tearing), 0xFF03 other card transport
    /// failure, 0xFF04 SAM removed, 0xFF05 other SAM transport failure, 0xFF06 the card
    /// company (host-secured mode) did not answer.
    pub fn code(&self) -> u16 {
        match self {
            Failure::Script { code, .. } => *code,
            Failure::Fault(_) => 0xFF01,
            Failure::Transport {
                error: TransportError::CardRemoved,
                slot: Slot::Card,
                ..
            } => 0xFF02,
            Failure::Transport {
                slot: Slot::Card, ..
            } => 0xFF03,
            Failure::Transport {
                slot: Slot::Host, ..
            } => 0xFF06,
            Failure::Transport {
                error: TransportError::CardRemoved,
                ..
            } => 0xFF04,
            Failure::Transport { .. } => 0xFF05,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `halt` was reached.
    Committed,
    /// The transaction did not happen.
    Failed(Failure),
    /// The failure came after `commit_point`: the card may have committed. Recovery
    /// (e.g. GET TRANSACTION PROVE) must find out.
    Unknown(Failure),
}

impl Outcome {
    /// `committed`, `failed` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Failed(_) => "failed",
            Outcome::Unknown(_) => "unknown",
        }
    }
}

/// The last APDU exchange, for failure reports and recovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastExchange {
    /// Where the command went (the card or a SAM).
    pub slot: Slot,
    /// The command header (CLA INS P1 P2).
    pub header: [u8; 4],
    /// The status word, if a response came back.
    pub sw: Option<u16>,
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Declared outputs that were written, in declaration order.
    pub outputs: Outputs,
    /// APDUs sent.
    pub apdu_count: u32,
    /// Instructions executed.
    pub fuel_used: u64,
    /// SM3 over the APDU transcript (see [`crate::receipt`]).
    pub transcript_sm3: [u8; 32],
    /// The last exchange, if any.
    pub last_exchange: Option<LastExchange>,
    /// Most register and output bytes held at once.
    pub peak_memory: usize,
}

impl RunReport {
    /// The value written to output `name`, if the run wrote it.
    pub fn output(&self, name: &str) -> Option<OutputRef<'_>> {
        self.outputs.get(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Unset,
    Int,
    Bytes,
}

#[derive(Debug, Clone)]
struct Reg {
    tag: Tag,
    int: u64,
    bytes: Vec<u8>,
}

impl Reg {
    const EMPTY: Reg = Reg {
        tag: Tag::Unset,
        int: 0,
        bytes: Vec::new(),
    };

    fn view(&self) -> RegValue<'_> {
        match self.tag {
            Tag::Unset => RegValue::Unset,
            Tag::Int => RegValue::Int(self.int),
            Tag::Bytes => RegValue::Bytes(&self.bytes),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.tag {
            Tag::Unset => "nothing",
            Tag::Int => "an integer",
            Tag::Bytes => "a byte string",
        }
    }
}

/// A reusable interpreter. Create once, run many programs: buffers are kept.
pub struct Vm {
    limits: Limits,
    regs: Vec<Reg>,
    keys: Vec<Option<SecretKey>>,
    scratch: Vec<u8>,
    stack: Vec<u32>,
    /// One slot per declared output, reused across runs like the registers.
    outputs: Vec<Reg>,
    mem_used: usize,
    peak_memory: usize,
    ex: Exchanges,
    in_commit: bool,
}

/// What the trace and the transcript see of one command.
struct Shown<'a> {
    /// Bytes the transcript hashes.
    hashed: &'a [u8],
    /// Bytes the tracer is shown.
    traced: &'a [u8],
    /// Whether `traced` was cut because the command carries key bytes.
    redacted: bool,
}

/// The APDU side of a run: count, last status word, last exchange.
#[derive(Debug, Default)]
struct Exchanges {
    count: u32,
    sw: Option<StatusWord>,
    last: Option<LastExchange>,
}

impl Exchanges {
    /// Sends `command`, leaving the response data in `scratch`. The outer error is a VM
    /// fault (APDU limit, malformed command); the inner one the transport's, which ends
    /// the run.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn send<T: CardTransport, R: Tracer + ?Sized>(
        &mut self,
        slot: Slot,
        card: &mut ApduLayer<T>,
        tracer: &mut R,
        transcript: &mut TranscriptHasher,
        scratch: &mut Vec<u8>,
        command: &[u8],
        shown: Shown<'_>,
        limits: Limits,
    ) -> Result<Result<(), TransportError>, VmErrorKind> {
        if self.count >= limits.max_apdus {
            return Err(VmErrorKind::TooManyApdus(limits.max_apdus));
        }
        let apdu = Apdu::parse(command).map_err(VmErrorKind::BadApdu)?;
        self.count += 1;
        let mut header = [0u8; 4];
        header.copy_from_slice(&command[..4]);
        self.last = Some(LastExchange {
            slot,
            header,
            sw: None,
        });
        transcript.command_on(slot, shown.hashed);
        tracer.before_apdu();
        let result = card.exchange_parsed(command, &apdu, scratch);
        let event = |response, sw, error| ApduEvent {
            index: self.count,
            slot,
            command: shown.traced,
            redacted: shown.redacted,
            response,
            sw,
            error,
        };
        match result {
            Ok(sw) => {
                transcript.response_on(slot, scratch, sw.0);
                tracer.apdu(&event(scratch, Some(sw), None));
                self.sw = Some(sw);
                self.last = Some(LastExchange {
                    slot,
                    header,
                    sw: Some(sw.0),
                });
                Ok(Ok(()))
            }
            Err(e) => {
                tracer.apdu(&event(&[], None, Some(&e)));
                Ok(Err(e))
            }
        }
    }
}

impl core::fmt::Debug for Vm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Registers may hold cryptograms; keys are never printed (SecretKey redacts anyway).
        f.debug_struct("Vm")
            .field("limits", &self.limits)
            .field("registers", &self.regs.len())
            .field("key_slots", &self.keys.len())
            .field("apdu_count", &self.ex.count)
            .finish_non_exhaustive()
    }
}

impl Default for Vm {
    fn default() -> Self {
        Vm::new(Limits::default())
    }
}

enum Stop {
    Halt,
    Fail(u16),
    Transport(Slot, TransportError),
}

/// Why [`Vm::step`] did not simply go on to the next instruction. Stops and faults
/// share the error path so the common case, `Ok(())`, is one compare in the dispatch
/// loop.
enum Exit {
    Stop(Stop),
    Fault(VmErrorKind),
}

impl From<VmErrorKind> for Exit {
    fn from(kind: VmErrorKind) -> Self {
        Exit::Fault(kind)
    }
}

fn int_of(regs: &[Reg], r: u8) -> Result<u64, VmErrorKind> {
    let reg = &regs[usize::from(r)];
    match reg.tag {
        Tag::Int => Ok(reg.int),
        Tag::Unset => Err(VmErrorKind::Uninitialized(r)),
        Tag::Bytes => Err(VmErrorKind::TypeMismatch {
            reg: r,
            expected: "an integer",
            found: reg.kind_name(),
        }),
    }
}

fn bytes_of(regs: &[Reg], r: u8) -> Result<&[u8], VmErrorKind> {
    let reg = &regs[usize::from(r)];
    match reg.tag {
        Tag::Bytes => Ok(&reg.bytes),
        Tag::Unset => Err(VmErrorKind::Uninitialized(r)),
        Tag::Int => Err(VmErrorKind::TypeMismatch {
            reg: r,
            expected: "a byte string",
            found: reg.kind_name(),
        }),
    }
}

/// The key in `slot`, if its usage is one `op` accepts ([`Opcode::allowed_key_usages`]).
#[inline]
fn slot_key(keys: &[Option<SecretKey>], slot: u8, op: Opcode) -> Result<&SecretKey, VmErrorKind> {
    let k = keys[usize::from(slot)]
        .as_ref()
        .ok_or(VmErrorKind::EmptyKeySlot(slot))?;
    if !op.allowed_key_usages().contains(&k.usage()) {
        return Err(VmErrorKind::KeyUsage {
            slot,
            usage: k.usage().name(),
            op: op.mnemonic(),
        });
    }
    Ok(k)
}

fn slice_range(len: usize, offset: u64, n: u64) -> Result<core::ops::Range<usize>, VmErrorKind> {
    let end = offset.checked_add(n).filter(|&e| e <= len as u64);
    match end {
        Some(end) => Ok(offset as usize..end as usize),
        None => Err(VmErrorKind::SliceOutOfRange {
            offset,
            len: n,
            available: len,
        }),
    }
}

impl Vm {
    /// A VM with `limits`.
    pub fn new(limits: Limits) -> Self {
        Vm {
            limits,
            regs: Vec::new(),
            keys: Vec::new(),
            scratch: Vec::new(),
            stack: Vec::new(),
            outputs: Vec::new(),
            mem_used: 0,
            peak_memory: 0,
            ex: Exchanges::default(),
            in_commit: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn reset(&mut self, bound: &Bound<'_>) {
        let h = bound.program.header;
        self.regs.resize(usize::from(h.registers), Reg::EMPTY);
        for r in &mut self.regs {
            r.tag = Tag::Unset;
            r.bytes.clear();
        }
        // Dropping the old keys zeroizes them.
        self.keys.clear();
        self.keys.resize(usize::from(h.key_slots), None);
        self.stack.clear();
        self.outputs.resize(bound.program.outputs.len(), Reg::EMPTY);
        for o in &mut self.outputs {
            o.tag = Tag::Unset;
            o.bytes.clear();
        }
        self.mem_used = 0;
        self.peak_memory = 0;
        self.ex = Exchanges::default();
        self.in_commit = false;
    }

    fn set_int(&mut self, r: u8, v: u64) {
        let reg = &mut self.regs[usize::from(r)];
        if reg.tag == Tag::Bytes {
            self.mem_used -= reg.bytes.len();
        }
        reg.tag = Tag::Int;
        reg.int = v;
    }

    /// Checks that register `r` may hold `len` bytes (string and memory limits) and
    /// accounts for them. Called before the register changes, so a fault leaves it as
    /// it was.
    #[inline]
    fn reserve(&mut self, r: u8, len: usize) -> Result<(), VmErrorKind> {
        if len > self.limits.max_bytes {
            return Err(VmErrorKind::StringTooLong {
                len,
                limit: self.limits.max_bytes,
            });
        }
        let reg = &self.regs[usize::from(r)];
        let old = if reg.tag == Tag::Bytes {
            reg.bytes.len()
        } else {
            0
        };
        let used = self.mem_used - old + len;
        if used > self.limits.max_memory {
            return Err(VmErrorKind::OutOfMemory {
                used,
                limit: self.limits.max_memory,
            });
        }
        self.mem_used = used;
        self.peak_memory = self.peak_memory.max(used);
        Ok(())
    }

    /// Copies the scratch buffer into register `r`. Copying (not swapping) lets each
    /// register's buffer settle at the largest value it holds, so a reused VM stops
    /// allocating after its first run.
    #[inline]
    fn set_from_scratch(&mut self, r: u8) -> Result<(), VmErrorKind> {
        // Taken out for the copy (no allocation) and put back with its capacity.
        let scratch = core::mem::take(&mut self.scratch);
        let result = self.set_bytes(r, &scratch);
        self.scratch = scratch;
        result
    }

    /// Copies `b` (a constant, an input, a crypto result or the scratch buffer: never a
    /// register) into register `r`.
    #[inline]
    fn set_bytes(&mut self, r: u8, b: &[u8]) -> Result<(), VmErrorKind> {
        self.reserve(r, b.len())?;
        let reg = &mut self.regs[usize::from(r)];
        reg.bytes.clear();
        reg.bytes.extend_from_slice(b);
        reg.tag = Tag::Bytes;
        Ok(())
    }

    /// `dst = a[ra] ‖ b[rb]`, copied straight into `dst`'s buffer (`rb` may be empty).
    /// The caller checked that `a` and `b` hold byte strings, the ranges, and that
    /// neither source is `dst` itself.
    #[inline]
    fn set_from_regs(
        &mut self,
        dst: u8,
        (a, ra): (u8, core::ops::Range<usize>),
        (b, rb): (u8, core::ops::Range<usize>),
    ) -> Result<(), VmErrorKind> {
        self.reserve(dst, ra.len() + rb.len())?;
        // Taking the buffer out (no allocation) lets the sources be read while it fills.
        let mut buf = core::mem::take(&mut self.regs[usize::from(dst)].bytes);
        buf.clear();
        buf.extend_from_slice(&self.regs[usize::from(a)].bytes[ra]);
        if !rb.is_empty() {
            buf.extend_from_slice(&self.regs[usize::from(b)].bytes[rb]);
        }
        let reg = &mut self.regs[usize::from(dst)];
        reg.bytes = buf;
        reg.tag = Tag::Bytes;
        Ok(())
    }

    /// `dst = src[range]` for a byte-string `src` and a checked `range`.
    #[inline]
    fn set_slice(
        &mut self,
        dst: u8,
        src: u8,
        range: core::ops::Range<usize>,
    ) -> Result<(), VmErrorKind> {
        if dst != src {
            return self.set_from_regs(dst, (src, range), (src, 0..0));
        }
        // In place: move the slice to the front and cut.
        self.reserve(dst, range.len())?;
        let bytes = &mut self.regs[usize::from(dst)].bytes;
        let n = range.len();
        bytes.copy_within(range, 0);
        bytes.truncate(n);
        Ok(())
    }

    fn input8(&self, r: u8, op: &'static str) -> Result<[u8; 8], VmErrorKind> {
        let b = bytes_of(&self.regs, r)?;
        b.try_into().map_err(|_| VmErrorKind::InputLength {
            op,
            expected: 8,
            found: b.len(),
        })
    }

    /// Runs `bound` against the card behind `card`, reporting each step and APDU to
    /// `tracer`. Never panics; every failure is in the report's outcome. A terminal
    /// without SAMs: a script that uses `samapdu` fails before sending anything.
    pub fn run<T: CardTransport, R: Tracer + ?Sized>(
        &mut self,
        bound: Bound<'_>,
        card: &mut ApduLayer<T>,
        tracer: &mut R,
    ) -> RunReport {
        self.run_with_sams(bound, card, &mut SamSlots::none(), tracer)
    }

    /// [`Vm::run`] on a terminal with SAM slots: `samapdu` sends to `sams`. When the
    /// script addresses a slot `sams` lacks ([`VerifiedProgram::sam_slots_needed`]), the
    /// run fails with [`VmErrorKind::NoSam`] before any byte reaches the card or a SAM.
    ///
    /// [`VerifiedProgram::sam_slots_needed`]: crate::verify::VerifiedProgram::sam_slots_needed
    pub fn run_with_sams<T: CardTransport, R: Tracer + ?Sized>(
        &mut self,
        bound: Bound<'_>,
        card: &mut ApduLayer<T>,
        sams: &mut SamSlots<'_>,
        tracer: &mut R,
    ) -> RunReport {
        self.reset(&bound);
        let mut transcript = TranscriptHasher::new();
        let mut fuel_used = 0u64;
        let result = match (
            bound.program.missing_sam(sams.len()),
            bound.program.host_use(),
        ) {
            (Some((offset, slot)), _) => Err(VmError {
                offset,
                kind: VmErrorKind::NoSam {
                    slot,
                    available: sams.len(),
                },
            }),
            (None, Some(offset)) if !sams.has_host() => Err(VmError {
                offset,
                kind: VmErrorKind::NoHost,
            }),
            _ => self.exec(&bound, card, sams, tracer, &mut transcript, &mut fuel_used),
        };
        let failure = match result {
            Ok((Stop::Halt, _)) => None,
            Ok((Stop::Fail(code), offset)) => Some((Failure::Script { code, offset }, false)),
            Ok((Stop::Transport(slot, error), offset)) => Some((
                Failure::Transport {
                    error,
                    offset,
                    slot,
                },
                true,
            )),
            Err(e) => Some((Failure::Fault(e), true)),
        };
        let outcome = match failure {
            None => Outcome::Committed,
            Some((f, may_be_committed)) if may_be_committed && self.in_commit => {
                Outcome::Unknown(f)
            }
            Some((f, _)) => Outcome::Failed(f),
        };
        let (mut count, mut bytes) = (0, 0);
        for o in &self.outputs {
            count += usize::from(o.tag != Tag::Unset);
            bytes += o.bytes.len();
        }
        let mut outputs = Outputs::with_capacity(&bound.program.outputs, count, bytes);
        for (i, o) in self.outputs.iter().enumerate() {
            // Declaration counts are u16 (MAX_ENTRIES).
            match o.tag {
                Tag::Unset => {}
                Tag::Int => outputs.push(i as u16, OutputRef::Int(o.int)),
                Tag::Bytes => outputs.push(i as u16, OutputRef::Bytes(&o.bytes)),
            }
        }
        // Wipe derived keys now rather than at the next run.
        self.keys.clear();
        RunReport {
            outcome,
            outputs,
            apdu_count: self.ex.count,
            fuel_used,
            transcript_sm3: transcript.finalize(),
            last_exchange: self.ex.last.take(),
            peak_memory: self.peak_memory,
        }
    }

    fn exec<T: CardTransport, R: Tracer + ?Sized>(
        &mut self,
        bound: &Bound<'_>,
        card: &mut ApduLayer<T>,
        sams: &mut SamSlots<'_>,
        tracer: &mut R,
        transcript: &mut TranscriptHasher,
        fuel_used: &mut u64,
    ) -> Result<(Stop, u32), VmError> {
        let program = bound.program;
        let code = &program.code[..];
        // The code offset of instruction `at`, looked up only when reported: the
        // verifier made every index valid, and the fallback keeps this panic-free.
        let offset_of = |at: usize| program.offsets.get(at).copied().unwrap_or(0);
        let fuel = self.limits.fuel;
        let mut ex = exec::Exec {
            vm: self,
            bound: *bound,
            card,
            sams,
            tracer,
            transcript,
            pc: 0,
        };
        loop {
            let at = ex.pc;
            if *fuel_used >= fuel {
                return Err(VmError {
                    offset: offset_of(at),
                    kind: VmErrorKind::OutOfFuel(*fuel_used),
                });
            }
            *fuel_used += 1;
            let instr = &code[at];
            ex.tracer.step(offset_of(at), instr);
            ex.pc += 1;
            match ex.step(instr) {
                Ok(()) => {
                    if ex.tracer.wants_registers() {
                        ex.tracer.after_step(
                            offset_of(at),
                            &RegView {
                                regs: &ex.vm.regs,
                                keys: &ex.vm.keys,
                            },
                        );
                    }
                }
                Err(Exit::Stop(stop)) => return Ok((stop, offset_of(at))),
                Err(Exit::Fault(kind)) => {
                    return Err(VmError {
                        offset: offset_of(at),
                        kind,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
