//! The bytecode verifier: turns a parsed [`CommandScript`] into a [`VerifiedProgram`],
//! the only form the VM runs.
//!
//! Checked once, here, so the interpreter needs no re-checks:
//! - every byte of the code decodes, and every jump/branch/call target is the start of
//!   an instruction;
//! - register, key-slot, constant, input and output indices are in range; immediates
//!   are in the ranges the instruction table gives them ([`crate::isa::Role::Imm`]);
//! - a value-input operand (`ldin`) names a non-key input and a key-input operand
//!   (`ldkey`) a key input (key bytes can never reach a register);
//! - control cannot fall off the end of the code;
//! - routines are not recursive, `ret` is only reachable inside a routine, and the
//!   static call depth is at most [`MAX_CALL_DEPTH`];
//! - SAM channels (instructions flagged `to_sam`, i.e. `samapdu`): no command sent to a
//!   SAM may be built from a value a key produced (`mac`, `enc`, `dec` results, followed
//!   through every register-to-register instruction, whatever the order: a conservative
//!   flow-insensitive pass); no `samapdu` may be reachable from a *decision* on such a
//!   value — a conditional branch reading a key-derived register, a `chkmac`, or an
//!   instruction that may fail on a key-derived value (integer arithmetic, `slicer`,
//!   `tobe`, `tobcd`, `frombcd`) — since whether, when and with what the SAM is then
//!   addressed depends on the key (an implicit flow: a loop comparing a counter with a
//!   MAC byte, then sending the counter); and a script that addresses a SAM has no
//!   `ldrkey` (M1 key bytes go only to the reader's key store, never to a terminal that
//!   also holds a SAM it could be mistaken for). The SAM slots used are recorded so a
//!   run on a terminal without them fails before any byte is sent
//!   ([`VerifiedProgram::sam_slots_needed`]).
//!
//! Binding a data script ([`VerifiedProgram::bind`]) then checks that every declared
//! input exists in the data script with a compatible type.

use crate::isa::{DecodeError, Instr, Opcode, Operand, Role};
use crate::script::{
    CommandScript, Constant, DataScript, DebugInfo, Decl, FieldValue, Header, ValueType,
};
use crate::transport::{MAX_SAMS, Slot};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// Deepest static call nesting accepted.
pub const MAX_CALL_DEPTH: u32 = 32;
/// Most distinct routines (call targets) in one script; bounds verification time.
pub const MAX_ROUTINES: usize = 256;

/// Why a command script failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyErrorKind {
    /// The code section is empty.
    #[error("the code is empty")]
    EmptyCode,
    /// Bytes that are not an instruction.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A target that is not the start of an instruction.
    #[error("target {0} is not the start of an instruction")]
    BadTarget(u32),
    /// A register index at or above the header's register count.
    #[error("register r{reg} out of range (the script declares {count})")]
    RegisterOutOfRange {
        /// The register.
        reg: u8,
        /// Declared count.
        count: u8,
    },
    /// A key-slot index at or above the header's key-slot count.
    #[error("key slot k{slot} out of range (the script declares {count})")]
    KeySlotOutOfRange {
        /// The slot.
        slot: u8,
        /// Declared count.
        count: u8,
    },
    /// A constant index past the pool.
    #[error("constant #{index} out of range (the pool has {count})")]
    ConstantOutOfRange {
        /// The index.
        index: u16,
        /// Pool size.
        count: usize,
    },
    /// An input index past the declarations.
    #[error("input #{index} out of range ({count} declared)")]
    InputOutOfRange {
        /// The index.
        index: u16,
        /// Declared inputs.
        count: usize,
    },
    /// An output index past the declarations.
    #[error("output #{index} out of range ({count} declared)")]
    OutputOutOfRange {
        /// The index.
        index: u16,
        /// Declared outputs.
        count: usize,
    },
    /// `ldin` of a key input: key bytes may not enter a register.
    #[error("input `{0}` is a key: load it with ldkey, never into a register")]
    KeyIntoRegister(String),
    /// `ldkey` of a non-key input.
    #[error("input `{0}` is not a key")]
    NotAKey(String),
    /// An output declared with a key type.
    #[error("output `{0}` has a key type: keys never reach a receipt")]
    KeyOutput(String),
    /// An immediate outside its documented range.
    #[error("immediate {value} out of range for {what}")]
    BadImmediate {
        /// Which operand.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// Control can run past the last instruction.
    #[error("control falls off the end of the code")]
    FallsOffEnd,
    /// `ret` reachable outside any routine.
    #[error("ret reachable outside a called routine")]
    ReturnOutsideRoutine,
    /// A routine calls itself, directly or not.
    #[error("recursive call")]
    RecursiveCall,
    /// Static call nesting beyond [`MAX_CALL_DEPTH`].
    #[error("call depth {0} exceeds {MAX_CALL_DEPTH}")]
    CallTooDeep(u32),
    /// More routines than [`MAX_ROUTINES`].
    #[error("more than {MAX_ROUTINES} routines")]
    TooManyRoutines,
    /// A command sent to a SAM may carry bytes derived from a key slot (a MAC, an
    /// encryption result): key-derived material never goes to a SAM.
    #[error("register r{reg} sent to {slot} may hold a value derived from a key")]
    KeyMaterialToSam {
        /// The command register.
        reg: u8,
        /// The SAM slot (or the card company, `hostapdu`).
        slot: Slot,
    },
    /// `ldrkey` in a script that also addresses a SAM.
    #[error("ldrkey in a script that addresses a SAM: M1 keys go only to the reader's key store")]
    ReaderKeyWithSam,
    /// A `hostapdu` can run more than once in a run (it is reachable from itself): the
    /// round trips to the card company must be bounded by the code itself.
    #[error(
        "hostapdu can be reached again from itself (a loop): each exchange with the card company must run at most once"
    )]
    HostInLoop,
    /// A `hostapdu` inside a routine (which may be called from several places): exchanges
    /// with the card company belong to the script's main flow, where they are counted.
    #[error("hostapdu inside a routine: exchanges with the card company belong to the main flow")]
    HostInRoutine,
    /// A command to a SAM can run after a decision on key-derived bytes (a branch on
    /// them, a `chkmac`, or an instruction that may fail on their value): whether,
    /// when and with what it is sent would reveal them (an implicit flow).
    #[error(
        "{slot} is addressed after a decision on key-derived bytes at code offset \
         {decision}: whether and what the SAM is sent would reveal them"
    )]
    KeyDependentSam {
        /// The SAM slot (or the card company, `hostapdu`).
        slot: Slot,
        /// Code offset of the decision.
        decision: u32,
    },
}

/// A verification failure at a code offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at code offset {offset}: {kind}")]
pub struct VerifyError {
    /// Byte offset in the code section.
    pub offset: u32,
    /// What was wrong.
    pub kind: VerifyErrorKind,
}

/// Why a data script does not fit a program's declared inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A declared input has no field of that name.
    #[error("the data script has no field `{0}`")]
    MissingInput(String),
    /// The field's type does not fit the declaration.
    #[error("field `{name}` is {found}, the script declares {expected}")]
    TypeMismatch {
        /// The input.
        name: String,
        /// Declared type.
        expected: ValueType,
        /// What the data script holds (type only, never the value).
        found: String,
    },
}

/// A command script that passed verification, pre-decoded for the VM.
#[derive(Debug, Clone)]
pub struct VerifiedProgram {
    pub(crate) header: Header,
    /// Instructions; targets are instruction indices.
    pub(crate) code: Vec<Instr>,
    /// Byte offset of each instruction (for errors and traces).
    pub(crate) offsets: Vec<u32>,
    pub(crate) constants: Vec<Constant>,
    pub(crate) inputs: Vec<Decl>,
    pub(crate) outputs: Arc<[Decl]>,
    pub(crate) debug: Option<DebugInfo>,
    /// Version of a debug section this build does not read, if the script had one.
    pub(crate) unsupported_debug: Option<u8>,
    pub(crate) max_call_depth: u32,
    /// For each SAM slot, the code offset of the first instruction that addresses it.
    pub(crate) sam_uses: [Option<u32>; MAX_SAMS],
    /// Code offset of the first `hostapdu`, and how many there are (each runs at most
    /// once: the bound on round trips to the card company).
    pub(crate) host_uses: Option<(u32, u32)>,
}

/// A verified program together with the data script it will run on.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    pub(crate) program: &'a VerifiedProgram,
    pub(crate) data: &'a DataScript,
    /// For each declared input, the index of its field in `data`.
    pub(crate) fields: &'a [u16],
}

/// The result of binding: which data field feeds which input. `Binding::default()` is
/// an empty binding to fill with [`VerifiedProgram::bind_into`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binding {
    fields: Vec<u16>,
}

impl VerifiedProgram {
    /// Verifies `script`.
    pub fn verify(script: &CommandScript) -> Result<Self, VerifyError> {
        let c = Verifier::new(script).run()?;
        Ok(VerifiedProgram {
            header: script.header,
            code: c.code,
            offsets: c.offsets,
            constants: script.constants.clone(),
            inputs: script.inputs.clone(),
            outputs: Arc::from(script.outputs.as_slice()),
            debug: script.debug.clone(),
            unsupported_debug: script.unsupported_debug.as_ref().map(|u| u.version),
            max_call_depth: c.max_call_depth,
            sam_uses: c.sam_uses,
            host_uses: c.host_uses,
        })
    }

    /// Verifies `script`, taking its tables without copying them.
    pub fn from_script(script: CommandScript) -> Result<Self, VerifyError> {
        let c = Verifier::new(&script).run()?;
        Ok(VerifiedProgram {
            header: script.header,
            code: c.code,
            offsets: c.offsets,
            constants: script.constants,
            inputs: script.inputs,
            outputs: Arc::from(script.outputs),
            debug: script.debug,
            unsupported_debug: script.unsupported_debug.map(|u| u.version),
            max_call_depth: c.max_call_depth,
            sam_uses: c.sam_uses,
            host_uses: c.host_uses,
        })
    }

    /// The script's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Declared inputs.
    pub fn inputs(&self) -> &[Decl] {
        &self.inputs
    }

    /// Declared outputs.
    pub fn outputs(&self) -> &[Decl] {
        &self.outputs
    }

    /// The pre-decoded instructions (targets are instruction indices).
    pub fn instructions(&self) -> &[Instr] {
        &self.code
    }

    /// The code offset of instruction `index`.
    pub fn offset_of(&self, index: usize) -> Option<u32> {
        self.offsets.get(index).copied()
    }

    /// The source location of the instruction at code offset `offset`, if the script has debug info.
    pub fn source_location(&self, offset: u32) -> Option<(&str, u32)> {
        self.debug.as_ref()?.location(offset)
    }

    /// The script's debug info (file labels with source hashes, line table), if any.
    pub fn debug_info(&self) -> Option<&DebugInfo> {
        self.debug.as_ref()
    }

    /// The version of the script's debug section when this build cannot read it (e.g. 1:
    /// written before source hashes); the program runs, without source lines.
    pub fn unsupported_debug_version(&self) -> Option<u8> {
        self.unsupported_debug
    }

    /// The deepest static call nesting.
    pub fn max_call_depth(&self) -> u32 {
        self.max_call_depth
    }

    /// How many SAM slots the terminal needs for this script: one more than the highest
    /// slot a `samapdu` addresses, 0 for a card-only script.
    pub fn sam_slots_needed(&self) -> usize {
        self.sam_uses
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1)
    }

    /// The code offset of the first `hostapdu` when the script is host-secured (it
    /// reaches the card company during the run), `None` for a script that runs offline.
    pub fn host_use(&self) -> Option<u32> {
        self.host_uses.map(|(at, _)| at)
    }

    /// The most round trips to the card company one run can make: the number of
    /// `hostapdu` instructions (the verifier proved each runs at most once).
    pub fn host_exchanges(&self) -> u32 {
        self.host_uses.map_or(0, |(_, n)| n)
    }

    /// The first SAM slot the script addresses that a terminal with `available` SAMs
    /// lacks, with the code offset of an instruction that addresses it.
    pub fn missing_sam(&self, available: usize) -> Option<(u32, u8)> {
        self.sam_uses
            .iter()
            .enumerate()
            .skip(available)
            .find_map(|(i, at)| at.map(|off| (off, i as u8)))
    }

    /// Checks `data` against the declared inputs.
    pub fn bind(&self, data: &DataScript) -> Result<Binding, BindError> {
        let mut binding = Binding::default();
        self.fill_binding(data, &mut binding.fields)?;
        Ok(binding)
    }

    /// Checks `data` against the declared inputs and pairs it with this program in one
    /// step, like [`VerifiedProgram::bind`] then [`VerifiedProgram::with_data`], but
    /// reusing `binding`'s storage: a reader that keeps one [`Binding`] per worker binds
    /// each transaction's data without allocating, and checks each field once.
    ///
    /// ```
    /// # use cardvm::asm::{assemble, compile_data, AsmOptions, MapLoader};
    /// # use cardvm::verify::{Binding, VerifiedProgram};
    /// let source = ".input amount u32\n.reg a\n    ldin a, amount\n    halt\n";
    /// let opts = AsmOptions::default();
    /// let script = assemble(source, "doc.casm", &opts, &mut MapLoader::new())?.script;
    /// let program = VerifiedProgram::verify(&script)?;
    /// let mut binding = Binding::default();
    /// for amount in [100, 200] {
    ///     let data = compile_data(&format!("amount = {amount}"))?;
    ///     let bound = program.bind_into(&data, &mut binding)?;
    ///     assert_eq!(bound.program().inputs().len(), 1);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind_into<'a>(
        &'a self,
        data: &'a DataScript,
        binding: &'a mut Binding,
    ) -> Result<Bound<'a>, BindError> {
        self.fill_binding(data, &mut binding.fields)?;
        Ok(Bound {
            program: self,
            data,
            fields: &binding.fields,
        })
    }

    /// For each declared input, finds its field in `data` and checks its type.
    fn fill_binding(&self, data: &DataScript, fields: &mut Vec<u16>) -> Result<(), BindError> {
        fields.clear();
        fields.reserve(self.inputs.len());
        for decl in &self.inputs {
            let idx = data
                .fields
                .iter()
                .position(|f| *f.name == *decl.name)
                .ok_or_else(|| BindError::MissingInput(String::from(&*decl.name)))?;
            let value = &data.fields[idx].value;
            if !value.fits(&decl.ty) {
                return Err(BindError::TypeMismatch {
                    name: String::from(&*decl.name),
                    expected: decl.ty,
                    found: value.type_name(),
                });
            }
            // MAX_ENTRIES keeps field indices within u16.
            fields.push(idx as u16);
        }
        Ok(())
    }

    /// Pairs this program with `data` using a [`Binding`] from [`VerifiedProgram::bind`].
    ///
    /// The binding must come from `bind(data)` on this program; a binding of another
    /// length is refused.
    pub fn with_data<'a>(
        &'a self,
        data: &'a DataScript,
        binding: &'a Binding,
    ) -> Result<Bound<'a>, BindError> {
        let ok = binding.fields.len() == self.inputs.len()
            && binding.fields.iter().zip(&self.inputs).all(|(&f, decl)| {
                data.fields
                    .get(usize::from(f))
                    .is_some_and(|field| *field.name == *decl.name && field.value.fits(&decl.ty))
            });
        if !ok {
            return Err(self
                .bind(data)
                .err()
                .unwrap_or(BindError::MissingInput(String::from("<binding>"))));
        }
        Ok(Bound {
            program: self,
            data,
            fields: &binding.fields,
        })
    }
}

impl<'a> Bound<'a> {
    /// The program.
    pub fn program(&self) -> &'a VerifiedProgram {
        self.program
    }

    pub(crate) fn input(&self, index: u16) -> &'a FieldValue {
        // The verifier checked index < inputs.len(); with_data checked the binding.
        &self.data.fields[usize::from(self.fields[usize::from(index)])].value
    }
}

/// What verification produces besides the script's own tables.
struct Checked {
    code: Vec<Instr>,
    offsets: Vec<u32>,
    max_call_depth: u32,
    sam_uses: [Option<u32>; MAX_SAMS],
    host_uses: Option<(u32, u32)>,
}

struct Verifier<'s> {
    script: &'s CommandScript,
}

impl<'s> Verifier<'s> {
    fn new(script: &'s CommandScript) -> Self {
        Verifier { script }
    }

    /// Checks the script; returns the retargeted code, offsets and call depth.
    fn run(self) -> Result<Checked, VerifyError> {
        let s = self.script;
        if s.code.is_empty() {
            return Err(VerifyError {
                offset: 0,
                kind: VerifyErrorKind::EmptyCode,
            });
        }
        for d in &s.outputs {
            if d.ty.is_key() {
                return Err(VerifyError {
                    offset: 0,
                    kind: VerifyErrorKind::KeyOutput(String::from(&*d.name)),
                });
            }
        }
        // Pass 1: decode and check operands; `offsets` (ascending) records the
        // instruction boundaries that pass 2 resolves targets against.
        let mut code = Vec::with_capacity(s.code.len() / 3 + 1);
        let mut offsets = Vec::with_capacity(s.code.len() / 3 + 1);
        let mut with_target = Vec::new();
        // For each SAM slot, the first instruction that addresses it.
        let mut sam_uses = [None; MAX_SAMS];
        let mut host_uses: Option<(u32, u32)> = None;
        let mut at = 0usize;
        while at < s.code.len() {
            let err = |kind| VerifyError {
                offset: at as u32,
                kind,
            };
            let mut check = OperandChecks {
                script: s,
                has_target: false,
            };
            let (instr, size) = Instr::decode_with(&s.code[at..], &mut check).map_err(err)?;
            if check.has_target {
                with_target.push(code.len());
            }
            if let Instr::SamApdu { sam, .. } = instr
                && let Some(u) = sam_uses.get_mut(usize::from(sam))
            {
                u.get_or_insert(at as u32);
            }
            if let Instr::HostApdu { .. } = instr {
                host_uses.get_or_insert((at as u32, 0)).1 += 1;
            }
            code.push(instr);
            offsets.push(at as u32);
            at += size;
        }
        // Pass 2: byte targets become instruction indices, by binary search of the
        // boundaries (only the instructions pass 1 saw a target in: no second operand
        // walk, and no offset-indexed table four times the size of the code).
        for &i in &with_target {
            let (Some(instr), Some(&off)) = (code.get_mut(i), offsets.get(i)) else {
                continue;
            };
            *instr = retarget(*instr, |t| match offsets.binary_search(&t) {
                Ok(i) => Ok(i as u32),
                Err(_) => Err(VerifyErrorKind::BadTarget(t)),
            })
            .map_err(|kind| VerifyError { offset: off, kind })?;
        }
        // Nothing may fall off the end.
        if let Some(last) = code.last()
            && !last.is_terminator()
        {
            return Err(VerifyError {
                offset: offsets[code.len() - 1],
                kind: VerifyErrorKind::FallsOffEnd,
            });
        }
        let max_call_depth = call_depth(&code, &offsets)?;
        check_sam_channels(&code, &offsets, &sam_uses, host_uses.is_some())?;
        if host_uses.is_some() {
            check_host_once(&code, &offsets)?;
        }
        Ok(Checked {
            code,
            offsets,
            max_call_depth,
            sam_uses,
            host_uses,
        })
    }
}

/// The verifier's operand checks, run by the decoder as it reads each operand: forced
/// inline into each opcode's arm, where the operand kind and spec are constants, so each
/// arm keeps only the checks its operands need.
struct OperandChecks<'s> {
    script: &'s CommandScript,
    /// Whether the instruction has a branch target (to be rewritten in pass 2).
    has_target: bool,
}

impl crate::isa::OperandVisitor for OperandChecks<'_> {
    type Error = VerifyErrorKind;

    #[inline(always)]
    fn visit(
        &mut self,
        op: crate::isa::Operand,
        spec: &'static crate::isa::OperandSpec,
    ) -> Result<(), VerifyErrorKind> {
        check_index(self.script, op, &mut self.has_target)?;
        check_role(self.script, op, spec)
    }
}

/// The SAM rules (module docs), for a script whose SAM slots pass 1 recorded in `uses`:
/// refuses `ldrkey` next to them, a SAM command register that may hold a key-derived
/// value, and a SAM command reachable from a decision on one ([`check_sam_control`]). A
/// card-only script costs nothing here.
fn check_sam_channels(
    code: &[Instr],
    offsets: &[u32],
    uses: &[Option<u32>; MAX_SAMS],
    host: bool,
) -> Result<(), VerifyError> {
    if uses.iter().all(Option::is_none) && !host {
        return Ok(());
    }
    if let Some(i) = code
        .iter()
        .position(|c| c.opcode() == Opcode::LoadReaderKey)
    {
        return Err(VerifyError {
            offset: offsets[i],
            kind: VerifyErrorKind::ReaderKeyWithSam,
        });
    }
    // Registers that may hold key-derived bytes, to a fixpoint: each pass taints at least
    // one more register or stops, so at most 257 passes.
    let mut tainted = [false; 256];
    loop {
        let mut changed = false;
        for instr in code {
            let key_result = matches!(
                instr.opcode(),
                Opcode::Mac | Opcode::Encrypt | Opcode::Decrypt
            );
            // A response is what another device answered, not a computation here.
            if instr.opcode().flags().sends_apdu {
                continue;
            }
            let mut dst = None;
            let mut from_taint = key_result;
            let specs = instr.opcode().operand_specs();
            for (op, spec) in instr.operands().as_slice().iter().zip(specs) {
                if let Operand::Reg(r) = *op {
                    match spec.role {
                        Role::RegDst => dst = Some(r),
                        Role::RegSrc if tainted[usize::from(r)] => from_taint = true,
                        _ => {}
                    }
                }
            }
            if let Some(d) = dst
                && from_taint
                && !tainted[usize::from(d)]
            {
                tainted[usize::from(d)] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (i, instr) in code.iter().enumerate() {
        if let Some((cmd, slot)) = sam_command(instr)
            && tainted[usize::from(cmd)]
        {
            return Err(VerifyError {
                offset: offsets[i],
                kind: VerifyErrorKind::KeyMaterialToSam { reg: cmd, slot },
            });
        }
    }
    check_sam_control(code, offsets, &tainted)
}

/// The command register and channel of an instruction flagged `to_sam`.
fn sam_command(instr: &Instr) -> Option<(u8, Slot)> {
    match *instr {
        Instr::SamApdu { cmd, sam, .. } => Some((cmd, Slot::Sam(sam))),
        Instr::HostApdu { cmd, .. } => Some((cmd, Slot::Host)),
        _ => None,
    }
}

/// Each `hostapdu` runs at most once, so the number of `hostapdu` instructions bounds the
/// round trips to the card company: every one is in the script's main flow (reached from
/// the entry stepping over calls — the verifier already proved routines return and are not
/// recursive), and none is reachable from itself there. A `hostapdu` inside a routine is
/// refused (a routine may be called from several places).
fn check_host_once(code: &[Instr], offsets: &[u32]) -> Result<(), VerifyError> {
    let n = code.len();
    // Successors in the main flow: a call steps over its routine.
    let successors = |i: usize, out: &mut Vec<usize>| {
        let instr = &code[i];
        if let Some(t) = instr.target()
            && !matches!(instr, Instr::Call { .. })
        {
            out.push(t as usize);
        }
        if !instr.is_terminator() && i + 1 < n {
            out.push(i + 1);
        }
    };
    let walk = |from: usize, seen: &mut Vec<bool>, stop: Option<usize>| -> bool {
        let mut stack = vec![from];
        let mut next = Vec::with_capacity(2);
        while let Some(i) = stack.pop() {
            if i >= n || seen[i] {
                continue;
            }
            if Some(i) == stop {
                return true;
            }
            seen[i] = true;
            next.clear();
            successors(i, &mut next);
            stack.extend_from_slice(&next);
        }
        false
    };
    let mut main = vec![false; n];
    walk(0, &mut main, None);
    let mut seen = vec![false; n];
    for (h, instr) in code.iter().enumerate() {
        if !matches!(instr, Instr::HostApdu { .. }) {
            continue;
        }
        let err = |kind| VerifyError {
            offset: offsets[h],
            kind,
        };
        if !main[h] {
            return Err(err(VerifyErrorKind::HostInRoutine));
        }
        seen.iter_mut().for_each(|s| *s = false);
        if walk(h + 1, &mut seen, Some(h)) {
            return Err(err(VerifyErrorKind::HostInLoop));
        }
    }
    Ok(())
}

/// Whether `instr` decides on key-derived bytes: which instruction runs next, or whether
/// the run goes on at all, may depend on them. `tainted`: the registers that may hold
/// key-derived bytes.
fn decides_on_key_bytes(instr: &Instr, tainted: &[bool; 256]) -> bool {
    let reads_taint = || {
        let specs = instr.opcode().operand_specs();
        instr
            .operands()
            .as_slice()
            .iter()
            .zip(specs)
            .any(|(op, spec)| {
                matches!((*op, spec.role), (Operand::Reg(r), Role::RegSrc) if tainted[usize::from(r)])
            })
    };
    match instr.opcode() {
        // Compares a MAC made from a key, and fails unless it matches.
        Opcode::CheckMac => true,
        // Conditional branches, and instructions that fail on their operands' values
        // (overflow, division by zero, bounds, digits). Instructions that fail only on
        // lengths (`cat`, `slice`, `xor`, `pad`, `frombe`, `mkapdu`) are not here: the
        // length of a key result is public (a MAC's is fixed, a cipher's is its
        // input's), and a length made from a key-derived value comes from `slicer`.
        Opcode::Beq
        | Opcode::Bne
        | Opcode::Blt
        | Opcode::Ble
        | Opcode::Bgt
        | Opcode::Bge
        | Opcode::Bz
        | Opcode::Bnz
        | Opcode::Add
        | Opcode::Sub
        | Opcode::Mul
        | Opcode::Div
        | Opcode::Rem
        | Opcode::Addi
        | Opcode::Subi
        | Opcode::Shli
        | Opcode::Slicer
        | Opcode::ToBe
        | Opcode::ToBcd
        | Opcode::FromBcd => reads_taint(),
        _ => false,
    }
}

/// The implicit-flow half of the SAM rule: no `samapdu` reachable from a decision on
/// key-derived bytes ([`decides_on_key_bytes`]).
///
/// Everything that runs after such a decision depends on it — not only what its two
/// sides compute, but whether the script is still running (one side may `fail`, and
/// the fuel left differs), so the region does not end where the branches re-join:
/// every instruction reachable from the decision is refused a SAM. Reachability
/// follows jumps, both sides of branches, calls and (context-insensitively) every
/// `ret` to every return site. Registers written after the decision need no taint of
/// their own: any `samapdu` that could read them is reachable from it too.
fn check_sam_control(
    code: &[Instr],
    offsets: &[u32],
    tainted: &[bool; 256],
) -> Result<(), VerifyError> {
    let n = code.len();
    // The decision each reached instruction was first reached from.
    let mut from: Vec<Option<u32>> = vec![None; n];
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let return_sites: Vec<usize> = code
        .iter()
        .enumerate()
        .filter(|(i, c)| matches!(c, Instr::Call { .. }) && i + 1 < n)
        .map(|(i, _)| i + 1)
        .collect();
    let mut returns_seen = false;
    let successors = |i: usize, out: &mut Vec<usize>| {
        let instr = &code[i];
        if let Some(t) = instr.target() {
            out.push(t as usize);
        }
        if !instr.is_terminator() && i + 1 < n {
            out.push(i + 1);
        }
    };
    let mut next = Vec::with_capacity(2);
    for (d, instr) in code.iter().enumerate() {
        if !decides_on_key_bytes(instr, tainted) {
            continue;
        }
        next.clear();
        successors(d, &mut next);
        for &s in &next {
            stack.push((s, offsets[d]));
        }
        while let Some((i, decision)) = stack.pop() {
            if i >= n || from[i].is_some() {
                continue;
            }
            from[i] = Some(decision);
            let instr = &code[i];
            if let Some((_, slot)) = sam_command(instr) {
                return Err(VerifyError {
                    offset: offsets[i],
                    kind: VerifyErrorKind::KeyDependentSam { slot, decision },
                });
            }
            if matches!(instr, Instr::Ret {}) && !returns_seen {
                returns_seen = true;
                stack.extend(return_sites.iter().map(|&r| (r, decision)));
            }
            next.clear();
            successors(i, &mut next);
            stack.extend(next.iter().map(|&s| (s, decision)));
        }
    }
    Ok(())
}

/// An operand's index is inside the script's tables (registers, key slots, constants,
/// inputs, outputs); notes a branch target.
#[inline(always)]
fn check_index(
    s: &CommandScript,
    op: crate::isa::Operand,
    has_target: &mut bool,
) -> Result<(), VerifyErrorKind> {
    use crate::isa::Operand;
    let h = &s.header;
    match op {
        Operand::Reg(r) if r >= h.registers => Err(VerifyErrorKind::RegisterOutOfRange {
            reg: r,
            count: h.registers,
        }),
        Operand::Key(k) if k >= h.key_slots => Err(VerifyErrorKind::KeySlotOutOfRange {
            slot: k,
            count: h.key_slots,
        }),
        Operand::Const(c) if usize::from(c) >= s.constants.len() => {
            Err(VerifyErrorKind::ConstantOutOfRange {
                index: c,
                count: s.constants.len(),
            })
        }
        Operand::Input(i) if usize::from(i) >= s.inputs.len() => {
            Err(VerifyErrorKind::InputOutOfRange {
                index: i,
                count: s.inputs.len(),
            })
        }
        Operand::Output(o) if usize::from(o) >= s.outputs.len() => {
            Err(VerifyErrorKind::OutputOutOfRange {
                index: o,
                count: s.outputs.len(),
            })
        }
        Operand::Target(_) => {
            *has_target = true;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// What an operand's role asks beyond its index: a value input is not a key (key bytes
/// never reach a register), a key input is one, an immediate is in its range.
#[inline(always)]
fn check_role(
    s: &CommandScript,
    op: crate::isa::Operand,
    spec: &crate::isa::OperandSpec,
) -> Result<(), VerifyErrorKind> {
    use crate::isa::{Operand, Role};
    match (op, spec.role) {
        (Operand::Input(i), Role::ValueInput | Role::KeyInput) => {
            let Some(d) = s.inputs.get(usize::from(i)) else {
                return Ok(());
            };
            if spec.role == Role::ValueInput && d.ty.is_key() {
                return Err(VerifyErrorKind::KeyIntoRegister(String::from(&*d.name)));
            }
            if spec.role == Role::KeyInput && !d.ty.is_key() {
                return Err(VerifyErrorKind::NotAKey(String::from(&*d.name)));
            }
            Ok(())
        }
        (Operand::U8(_) | Operand::U16(_) | Operand::U32(_), Role::Imm { min, max, what }) => {
            let value = match op {
                Operand::U8(v) => u32::from(v),
                Operand::U16(v) => u32::from(v),
                Operand::U32(v) => v,
                _ => 0,
            };
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(VerifyErrorKind::BadImmediate { what, value })
            }
        }
        _ => Ok(()),
    }
}

/// Rewrites the target operand of `instr` with `f`.
fn retarget(
    instr: Instr,
    f: impl Fn(u32) -> Result<u32, VerifyErrorKind>,
) -> Result<Instr, VerifyErrorKind> {
    use crate::isa::Operand;
    let Some(_) = instr.target() else {
        return Ok(instr);
    };
    let ops = instr.operands();
    let mut new = [Operand::U8(0); crate::isa::MAX_OPERANDS];
    let n = ops.as_slice().len();
    for (slot, op) in new.iter_mut().zip(ops.as_slice()) {
        *slot = match *op {
            Operand::Target(t) => Operand::Target(f(t)?),
            other => other,
        };
    }
    // Same opcode and operand kinds: cannot fail.
    Instr::from_operands(instr.opcode(), &new[..n]).ok_or(VerifyErrorKind::BadTarget(0))
}

/// Explores routines (main at 0, one per call target), rejects recursion and `ret`
/// outside a routine, and returns the deepest static call nesting.
fn call_depth(code: &[Instr], offsets: &[u32]) -> Result<u32, VerifyError> {
    // Without calls and returns there is nothing to explore.
    if !code
        .iter()
        .any(|i| matches!(i, Instr::Call { .. } | Instr::Ret {}))
    {
        return Ok(0);
    }
    // Routine entries in discovery order; callees[r] = routines r calls.
    let mut entries: Vec<u32> = vec![0];
    let mut callees: Vec<Vec<usize>> = Vec::new();
    let mut seen = vec![u32::MAX; code.len()]; // last routine that visited each instruction
    // One work list for every routine, sized so it never grows: each instruction is
    // pushed at most twice per visit (its branch target and its successor).
    let mut stack: Vec<u32> = Vec::with_capacity(2 * code.len() + 1);
    let mut r = 0;
    while r < entries.len() {
        let mut calls = Vec::new();
        stack.clear();
        stack.push(entries[r]);
        while let Some(i) = stack.pop() {
            let iu = i as usize;
            if seen[iu] == r as u32 {
                continue;
            }
            seen[iu] = r as u32;
            let instr = &code[iu];
            let err = |kind| VerifyError {
                offset: offsets[iu],
                kind,
            };
            match instr {
                Instr::Ret {} if r == 0 => return Err(err(VerifyErrorKind::ReturnOutsideRoutine)),
                Instr::Call { target } => {
                    let callee = match entries.iter().position(|e| e == target) {
                        Some(p) => p,
                        None => {
                            if entries.len() >= MAX_ROUTINES {
                                return Err(err(VerifyErrorKind::TooManyRoutines));
                            }
                            entries.push(*target);
                            entries.len() - 1
                        }
                    };
                    calls.push(callee);
                }
                _ => {}
            }
            if let Some(t) = instr.target()
                && !matches!(instr, Instr::Call { .. })
            {
                stack.push(t);
            }
            // Terminators never fall through; the verifier checked the last instruction is one.
            if !instr.is_terminator() && iu + 1 < code.len() {
                stack.push(i + 1);
            }
        }
        callees.push(calls);
        r += 1;
    }
    // Longest path in the call graph, rejecting cycles (iterative DFS with colours).
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let n = entries.len();
    let mut colour = vec![WHITE; n];
    let mut depth = vec![0u32; n];
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    colour[0] = GREY;
    while let Some(&mut (node, ref mut next)) = stack.last_mut() {
        if let Some(&c) = callees[node].get(*next) {
            *next += 1;
            match colour[c] {
                GREY => {
                    let at = offsets[entries[c] as usize];
                    return Err(VerifyError {
                        offset: at,
                        kind: VerifyErrorKind::RecursiveCall,
                    });
                }
                WHITE => {
                    colour[c] = GREY;
                    stack.push((c, 0));
                }
                _ => {}
            }
        } else {
            colour[node] = BLACK;
            depth[node] = callees[node]
                .iter()
                .map(|&c| depth[c] + 1)
                .max()
                .unwrap_or(0);
            if depth[node] > MAX_CALL_DEPTH {
                let at = offsets[entries[node] as usize];
                return Err(VerifyError {
                    offset: at,
                    kind: VerifyErrorKind::CallTooDeep(depth[node]),
                });
            }
            stack.pop();
        }
    }
    Ok(depth[0])
}
