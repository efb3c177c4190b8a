//! Operands: their encodings ([`OperandKind`], [`Operand`]), and what each position
//! means to the instruction ([`Role`], [`OperandSpec`]), plus the instruction flags
//! ([`Flags`]). The table in [`super::table`] gives every operand a role; the verifier's
//! checks, the VM's key-usage checks, the disassembler and the generated reference read
//! the roles, never the operand names.

use crate::crypto::{Derivation, KeyUsage};
use alloc::vec::Vec;
use core::fmt;

/// A status-word pattern: matches when `(sw & mask) == value & mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SwPattern {
    /// Expected bits.
    pub value: u16,
    /// Which bits are compared (a `x` nibble in the text form is a zero nibble here).
    pub mask: u16,
}

impl SwPattern {
    /// An exact status word.
    pub const fn exact(sw: u16) -> Self {
        SwPattern {
            value: sw,
            mask: 0xFFFF,
        }
    }

    /// Whether `sw` matches.
    pub fn matches(self, sw: u16) -> bool {
        sw & self.mask == self.value & self.mask
    }

    /// Parses the text form: four hex digits, each of which may be `x`/`X` (any nibble).
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() != 4 {
            return None;
        }
        let (mut value, mut mask) = (0u16, 0u16);
        for &c in b {
            value <<= 4;
            mask <<= 4;
            if c == b'x' || c == b'X' {
                continue;
            }
            value |= u16::from((c as char).to_digit(16)? as u8);
            mask |= 0xF;
        }
        Some(SwPattern {
            value: value & mask,
            mask,
        })
    }
}

impl fmt::Display for SwPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in (0..4).rev() {
            let m = (self.mask >> (i * 4)) & 0xF;
            if m == 0 {
                f.write_str("x")?;
            } else {
                write!(f, "{:X}", (self.value >> (i * 4)) & 0xF)?;
            }
        }
        Ok(())
    }
}

/// What an operand position holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperandKind {
    /// A register (`r0`…`r254` or a named alias).
    Reg,
    /// A key slot (`k0`… or a named alias).
    Key,
    /// A constant-pool index.
    Const,
    /// A declared input (by name in the text form).
    Input,
    /// A declared output (by name in the text form).
    Output,
    /// A code offset (a label in the text form).
    Target,
    /// An 8-bit immediate.
    U8,
    /// A 16-bit immediate.
    U16,
    /// A 32-bit immediate.
    U32,
    /// A status-word pattern.
    Sw,
}

impl OperandKind {
    /// Encoded size in bytes.
    pub const fn size(self) -> usize {
        match self {
            OperandKind::Reg | OperandKind::Key | OperandKind::U8 => 1,
            OperandKind::Const | OperandKind::Input | OperandKind::Output | OperandKind::U16 => 2,
            OperandKind::Target | OperandKind::U32 | OperandKind::Sw => 4,
        }
    }
}

/// One operand value, tagged with its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// Register index.
    Reg(u8),
    /// Key slot index.
    Key(u8),
    /// Constant-pool index.
    Const(u16),
    /// Declared-input index.
    Input(u16),
    /// Declared-output index.
    Output(u16),
    /// Code offset (bytes from the start of the code section), or, after
    /// verification, an instruction index.
    Target(u32),
    /// 8-bit immediate.
    U8(u8),
    /// 16-bit immediate.
    U16(u16),
    /// 32-bit immediate.
    U32(u32),
    /// Status-word pattern.
    Sw(SwPattern),
}

impl Operand {
    /// The kind of this operand.
    pub fn kind(&self) -> OperandKind {
        match self {
            Operand::Reg(_) => OperandKind::Reg,
            Operand::Key(_) => OperandKind::Key,
            Operand::Const(_) => OperandKind::Const,
            Operand::Input(_) => OperandKind::Input,
            Operand::Output(_) => OperandKind::Output,
            Operand::Target(_) => OperandKind::Target,
            Operand::U8(_) => OperandKind::U8,
            Operand::U16(_) => OperandKind::U16,
            Operand::U32(_) => OperandKind::U32,
            Operand::Sw(_) => OperandKind::Sw,
        }
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Operand::Reg(v) | Operand::Key(v) | Operand::U8(v) => out.push(v),
            Operand::Const(v) | Operand::Input(v) | Operand::Output(v) | Operand::U16(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            Operand::Target(v) | Operand::U32(v) => out.extend_from_slice(&v.to_be_bytes()),
            Operand::Sw(p) => {
                out.extend_from_slice(&p.value.to_be_bytes());
                out.extend_from_slice(&p.mask.to_be_bytes());
            }
        }
    }

    /// Reads an operand of `kind` from the front of `b` (which must hold `kind.size()` bytes).
    #[inline]
    pub(super) fn decode(kind: OperandKind, b: &[u8]) -> Option<Operand> {
        let u16_at = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        let u32_at = || {
            Some(u32::from_be_bytes([
                *b.first()?,
                *b.get(1)?,
                *b.get(2)?,
                *b.get(3)?,
            ]))
        };
        Some(match kind {
            OperandKind::Reg => Operand::Reg(*b.first()?),
            OperandKind::Key => Operand::Key(*b.first()?),
            OperandKind::U8 => Operand::U8(*b.first()?),
            OperandKind::Const => Operand::Const(u16_at(0)?),
            OperandKind::Input => Operand::Input(u16_at(0)?),
            OperandKind::Output => Operand::Output(u16_at(0)?),
            OperandKind::U16 => Operand::U16(u16_at(0)?),
            OperandKind::Target => Operand::Target(u32_at()?),
            OperandKind::U32 => Operand::U32(u32_at()?),
            OperandKind::Sw => {
                let (value, mask) = (u16_at(0)?, u16_at(2)?);
                Operand::Sw(SwPattern {
                    value: value & mask,
                    mask,
                })
            }
        })
    }
}

/// What an operand position means to its instruction. The encoding ([`OperandKind`])
/// follows from the role; the role says what the verifier checks and how tools show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A register the instruction writes (`Rd`).
    RegDst,
    /// A register the instruction reads (`Rs`).
    RegSrc,
    /// A key slot the instruction fills (`Kd`): from a key input (`ldkey`), or by the
    /// derivation named, from the key in the instruction's [`Role::KeySrc`] slot.
    KeyDst {
        /// The derivation that produces the new key, if any.
        derivation: Option<Derivation>,
    },
    /// A key slot the instruction reads (`Ks`); the VM refuses a key whose usage is not
    /// in `usages`.
    KeySrc {
        /// The key usages accepted.
        usages: &'static [KeyUsage],
    },
    /// A constant-pool index (`C`).
    Const,
    /// A declared input that is not a key (`Iv`): its value goes to a register.
    ValueInput,
    /// A declared key input (`Ik`): its key goes to a key slot, never a register.
    KeyInput,
    /// A declared output (`O`).
    Output,
    /// A code offset (`L`, a label in the text form).
    Target,
    /// An immediate number with its accepted range (inclusive); the verifier refuses
    /// values outside it.
    Imm {
        /// Smallest value accepted.
        min: u32,
        /// Largest value accepted.
        max: u32,
        /// How a refusal names the operand (e.g. `tobe width (1..=8)`).
        what: &'static str,
    },
    /// A failure code (`Code`, a 16-bit number shown in hex): what the receipt says.
    FailCode,
    /// A status-word pattern (`SW`).
    StatusWord,
}

impl Role {
    /// The short notation of the generated reference (`Rd`, `Ks`, `U8`, …).
    pub const fn notation(self, kind: OperandKind) -> &'static str {
        match self {
            Role::RegDst => "Rd",
            Role::RegSrc => "Rs",
            Role::KeyDst { .. } => "Kd",
            Role::KeySrc { .. } => "Ks",
            Role::Const => "C",
            Role::ValueInput => "Iv",
            Role::KeyInput => "Ik",
            Role::Output => "O",
            Role::Target => "L",
            Role::Imm { .. } => match kind {
                OperandKind::U8 => "U8",
                OperandKind::U16 => "U16",
                _ => "U32",
            },
            Role::FailCode => "Code",
            Role::StatusWord => "SW",
        }
    }
}

/// One operand position of an instruction, as the table declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperandSpec {
    /// Its name in the table (the reference's syntax column, assembler errors).
    pub name: &'static str,
    /// How it is encoded.
    pub kind: OperandKind,
    /// What it means.
    pub role: Role,
}

impl OperandSpec {
    /// The immediate range, if the operand is an immediate number.
    pub const fn range(&self) -> Option<(u32, u32)> {
        match self.role {
            Role::Imm { min, max, .. } => Some((min, max)),
            _ => None,
        }
    }
}

/// What an instruction does besides computing: read by the verifier (`terminator`), the
/// lints (`sends_apdu`, `reads_sw`), the SAM checks (`to_sam`) and the generated reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// Control never falls through to the next instruction.
    pub terminator: bool,
    /// Sends an APDU (its status word should be checked).
    pub sends_apdu: bool,
    /// Reads the status word of the last APDU.
    pub reads_sw: bool,
    /// Marks the commit point: later faults are `unknown`.
    pub commit_point: bool,
    /// Its APDU goes to a SAM slot of the terminal, not to the card. Only these
    /// instructions reach a SAM; no key-bearing instruction (`ldrkey`) has the flag.
    pub to_sam: bool,
    /// Its APDU goes to the card company (host-secured mode): a remote SAM reached over
    /// the online protocol. Always together with `to_sam`, so every SAM rule applies.
    pub to_host: bool,
}

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags {
        terminator: false,
        sends_apdu: false,
        reads_sw: false,
        commit_point: false,
        to_sam: false,
        to_host: false,
    };

    /// The names of the flags set, for the reference.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (self.terminator, "terminator"),
            (self.sends_apdu, "sends APDU"),
            (self.reads_sw, "reads SW"),
            (self.commit_point, "commit point"),
            (self.to_sam, "to a SAM"),
            (self.to_host, "to the card company"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }
}

/// The Rust types of instruction fields, converted to and from [`Operand`] by kind.
pub(super) trait OperandField: Sized + Copy {
    fn wrap(self, kind: OperandKind) -> Operand;
    fn unwrap(op: Operand, kind: OperandKind) -> Option<Self>;
}

impl OperandField for u8 {
    #[inline(always)]
    fn wrap(self, kind: OperandKind) -> Operand {
        match kind {
            OperandKind::Reg => Operand::Reg(self),
            OperandKind::Key => Operand::Key(self),
            _ => Operand::U8(self),
        }
    }
    #[inline(always)]
    fn unwrap(op: Operand, kind: OperandKind) -> Option<Self> {
        match (op, kind) {
            (Operand::Reg(v), OperandKind::Reg)
            | (Operand::Key(v), OperandKind::Key)
            | (Operand::U8(v), OperandKind::U8) => Some(v),
            _ => None,
        }
    }
}

impl OperandField for u16 {
    #[inline(always)]
    fn wrap(self, kind: OperandKind) -> Operand {
        match kind {
            OperandKind::Const => Operand::Const(self),
            OperandKind::Input => Operand::Input(self),
            OperandKind::Output => Operand::Output(self),
            _ => Operand::U16(self),
        }
    }
    #[inline(always)]
    fn unwrap(op: Operand, kind: OperandKind) -> Option<Self> {
        match (op, kind) {
            (Operand::Const(v), OperandKind::Const)
            | (Operand::Input(v), OperandKind::Input)
            | (Operand::Output(v), OperandKind::Output)
            | (Operand::U16(v), OperandKind::U16) => Some(v),
            _ => None,
        }
    }
}

impl OperandField for u32 {
    #[inline(always)]
    fn wrap(self, kind: OperandKind) -> Operand {
        match kind {
            OperandKind::Target => Operand::Target(self),
            _ => Operand::U32(self),
        }
    }
    #[inline(always)]
    fn unwrap(op: Operand, kind: OperandKind) -> Option<Self> {
        match (op, kind) {
            (Operand::Target(v), OperandKind::Target) | (Operand::U32(v), OperandKind::U32) => {
                Some(v)
            }
            _ => None,
        }
    }
}

impl OperandField for SwPattern {
    #[inline(always)]
    fn wrap(self, _: OperandKind) -> Operand {
        Operand::Sw(self)
    }
    #[inline(always)]
    fn unwrap(op: Operand, _: OperandKind) -> Option<Self> {
        match op {
            Operand::Sw(p) => Some(p),
            _ => None,
        }
    }
}
