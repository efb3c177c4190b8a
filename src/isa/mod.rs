//! The instruction set: one table ([`table`]) from which the encoder, decoder, verifier
//! checks, lints, assembler, disassembler, the VM's dispatch and key-usage checks, and the
//! generated reference are all derived.
//!
//! Each instruction is an opcode byte followed by fixed-size operands (big-endian). The
//! table lists, per instruction, its opcode, mnemonic, typed operands with their roles
//! ([`OperandSpec`], [`Role`]), flags ([`Flags`]), a one-line doc and its VM handler;
//! this module expands it into [`Opcode`], the decoded [`Instr`] enum, and the generic
//! operand view ([`Instr::operands`], [`Instr::from_operands`]) that the assembler and
//! disassembler use.
//!
//! Operand kinds (the encoding, see [`OperandKind`]): `R` register, `K` key slot, `C`
//! constant-pool index, `I` declared input, `O` declared output, `L` code offset (a
//! label), `U8`/`U16`/`U32` immediates, and `SW` a status-word pattern (value + mask,
//! e.g. `63Cx`).

mod operand;
mod reference;
pub mod table;

pub(crate) use table::for_each_op;

use crate::crypto::{Derivation, KeyUsage};
use alloc::vec::Vec;
use operand::OperandField;
pub use operand::{Flags, Operand, OperandKind, OperandSpec, Role, SwPattern};
pub use reference::reference_markdown;

/// Why bytes do not decode as an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The opcode byte names no instruction.
    #[error("unknown opcode 0x{0:02X}")]
    UnknownOpcode(u8),
    /// The code ends inside an instruction.
    #[error("instruction truncated: {needed} bytes needed, {available} left")]
    Truncated {
        /// Bytes the instruction needs.
        needed: usize,
        /// Bytes left in the code.
        available: usize,
    },
    /// A status-word pattern has value bits outside its mask (not canonical).
    #[error("status-word pattern has value bits outside its mask")]
    NonCanonicalPattern,
}

/// Most operands any instruction has.
pub const MAX_OPERANDS: usize = 4;

/// The operands of one instruction, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operands {
    items: [Operand; MAX_OPERANDS],
    len: u8,
}

impl Operands {
    fn from_slice(ops: &[Operand]) -> Self {
        let mut items = [Operand::U8(0); MAX_OPERANDS];
        items[..ops.len()].copy_from_slice(ops);
        Operands {
            items,
            len: ops.len() as u8,
        }
    }

    /// The operands as a slice.
    pub fn as_slice(&self) -> &[Operand] {
        &self.items[..usize::from(self.len)]
    }
}

// Role token → encoding, field type and role value (used by `define_isa!`).
macro_rules! role_kind {
    (Rd) => {
        OperandKind::Reg
    };
    (Rs) => {
        OperandKind::Reg
    };
    (Kd) => {
        OperandKind::Key
    };
    (Ks) => {
        OperandKind::Key
    };
    (C) => {
        OperandKind::Const
    };
    (Iv) => {
        OperandKind::Input
    };
    (Ik) => {
        OperandKind::Input
    };
    (O) => {
        OperandKind::Output
    };
    (L) => {
        OperandKind::Target
    };
    (U8) => {
        OperandKind::U8
    };
    (U16) => {
        OperandKind::U16
    };
    (U32) => {
        OperandKind::U32
    };
    (Code) => {
        OperandKind::U16
    };
    (SW) => {
        OperandKind::Sw
    };
}
macro_rules! role_ty {
    (Rd) => {
        u8
    };
    (Rs) => {
        u8
    };
    (Kd) => {
        u8
    };
    (Ks) => {
        u8
    };
    (C) => {
        u16
    };
    (Iv) => {
        u16
    };
    (Ik) => {
        u16
    };
    (O) => {
        u16
    };
    (L) => {
        u32
    };
    (U8) => {
        u8
    };
    (U16) => {
        u16
    };
    (U32) => {
        u32
    };
    (Code) => {
        u16
    };
    (SW) => {
        SwPattern
    };
}
macro_rules! role_value {
    ($m:literal $f:ident Rd) => { Role::RegDst };
    ($m:literal $f:ident Rs) => { Role::RegSrc };
    ($m:literal $f:ident Kd) => { Role::KeyDst { derivation: None } };
    ($m:literal $f:ident Kd ($d:ident)) => { Role::KeyDst { derivation: Some(Derivation::$d) } };
    ($m:literal $f:ident Ks ($($u:ident),+)) => { Role::KeySrc { usages: &[$(KeyUsage::$u),+] } };
    ($m:literal $f:ident C) => { Role::Const };
    ($m:literal $f:ident Iv) => { Role::ValueInput };
    ($m:literal $f:ident Ik) => { Role::KeyInput };
    ($m:literal $f:ident O) => { Role::Output };
    ($m:literal $f:ident L) => { Role::Target };
    ($m:literal $f:ident U8) => { role_value!($m $f U8 (0 ..= 255)) };
    ($m:literal $f:ident U16) => { role_value!($m $f U16 (0 ..= 65535)) };
    ($m:literal $f:ident U32) => { role_value!($m $f U32 (0 ..= 4294967295)) };
    ($m:literal $f:ident $k:ident ($lo:literal ..= $hi:literal)) => {
        Role::Imm {
            min: $lo,
            max: $hi,
            what: concat!($m, " ", stringify!($f), " (", stringify!($lo), "..=", stringify!($hi), ")"),
        }
    };
    ($m:literal $f:ident Code) => { Role::FailCode };
    ($m:literal $f:ident SW) => { Role::StatusWord };
}
macro_rules! operand_spec {
    ($m:literal $f:ident $role:ident $( ( $($arg:tt)* ) )?) => {
        OperandSpec {
            name: stringify!($f),
            kind: role_kind!($role),
            role: role_value!($m $f $role $( ( $($arg)* ) )?),
        }
    };
}

macro_rules! define_isa {
    ($(
        $(#[doc = $doc:literal])+
        $code:literal $variant:ident $mnemonic:literal
            ( $( $field:ident : $role:ident $( ( $($arg:tt)* ) )? ),* )
            [ $( $flag:ident ),* ]
            => $handler:ident;
    )*) => {
        /// Instruction opcodes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $( $(#[doc = $doc])* $variant = $code, )*
        }

        /// Every opcode, in table order.
        pub const ALL_OPCODES: &[Opcode] = &[ $( Opcode::$variant, )* ];

        impl Opcode {
            /// The opcode for a byte, if any.
            pub fn from_byte(b: u8) -> Option<Opcode> {
                match b {
                    $( $code => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            /// The assembler mnemonic.
            pub const fn mnemonic(self) -> &'static str {
                match self { $( Opcode::$variant => $mnemonic, )* }
            }

            /// The opcode for a mnemonic, if any.
            pub fn from_mnemonic(m: &str) -> Option<Opcode> {
                match m {
                    $( $mnemonic => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            /// The operands as the table declares them: name, encoding and role.
            pub const fn operand_specs(self) -> &'static [OperandSpec] {
                match self {
                    $( Opcode::$variant => &[ $( operand_spec!($mnemonic $field $role $( ( $($arg)* ) )?), )* ], )*
                }
            }

            /// Operand kinds, in order.
            pub fn operand_kinds(self) -> &'static [OperandKind] {
                match self { $( Opcode::$variant => &[ $( role_kind!($role), )* ], )* }
            }

            /// Operand names as written in the table (for documentation and errors).
            pub fn operand_names(self) -> &'static [&'static str] {
                match self { $( Opcode::$variant => &[ $( stringify!($field), )* ], )* }
            }

            /// The instruction's flags (terminator, sends an APDU, reads the status word,
            /// commit point).
            #[inline]
            pub const fn flags(self) -> Flags {
                match self {
                    $( Opcode::$variant => Flags { $( $flag: true, )* ..Flags::NONE }, )*
                }
            }

            /// Encoded size of the instruction in bytes.
            pub const fn size(self) -> usize {
                match self { $( Opcode::$variant => 1 $( + role_kind!($role).size() )*, )* }
            }

            /// One-line description from the table.
            pub fn summary(self) -> &'static str {
                match self { $( Opcode::$variant => concat!($($doc, )* ""), )* }
            }

            /// The name of the VM handler that executes it (in `src/vm/exec/`).
            pub fn handler_name(self) -> &'static str {
                match self { $( Opcode::$variant => stringify!($handler), )* }
            }
        }

        /// A decoded instruction. Operand fields are raw: registers, slots and indices
        /// are unchecked until [`crate::verify`] checks them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Instr {
            $( $(#[doc = $doc])* $variant { $( $field: role_ty!($role), )* }, )*
        }

        impl Instr {
            /// This instruction's opcode.
            pub fn opcode(&self) -> Opcode {
                match self { $( Instr::$variant { .. } => Opcode::$variant, )* }
            }

            /// Whether control never falls through to the next instruction (the table's
            /// `terminator` flag; one constant per arm, no second lookup).
            #[inline]
            pub fn is_terminator(&self) -> bool {
                match self { $( Instr::$variant { .. } => Opcode::$variant.flags().terminator, )* }
            }

            /// The operands in table order.
            #[allow(unused_variables)]
            pub fn operands(&self) -> Operands {
                match *self {
                    $( Instr::$variant { $($field),* } => Operands::from_slice(&[ $( $field.wrap(role_kind!($role)), )* ]), )*
                }
            }

            /// Calls `f` on each operand in table order, stopping at the first error.
            /// Unlike [`Instr::operands`] it builds no array.
            #[inline]
            #[allow(unused_variables, unused_mut)]
            pub fn try_for_each_operand<E>(
                &self,
                mut f: impl FnMut(Operand) -> Result<(), E>,
            ) -> Result<(), E> {
                match *self {
                    $( Instr::$variant { $($field),* } => { $( f($field.wrap(role_kind!($role)))?; )* } )*
                }
                Ok(())
            }

            /// Decodes one instruction from the front of `code` and hands each operand,
            /// with its table spec, to `visitor`; returns the instruction and its size.
            ///
            /// One match arm per opcode byte reads the fields, checks status-word
            /// patterns for canonical form and (once inlined) runs the caller's checks
            /// with the specs as constants: the verifier dispatches once per instruction,
            /// not once per question it asks. Every operand is decoded before the visitor
            /// sees the first, so a decoding error wins over a check.
            #[inline(always)]
            #[allow(unused_variables, unused_mut, unused_assignments)]
            pub fn decode_with<V: OperandVisitor>(
                code: &[u8],
                visitor: &mut V,
            ) -> Result<(Instr, usize), V::Error> {
                let Some(&first) = code.first() else {
                    return Err(DecodeError::Truncated { needed: 1, available: 0 }.into());
                };
                match first {
                    $( $code => {
                        const SIZE: usize = Opcode::$variant.size();
                        let truncated = DecodeError::Truncated { needed: SIZE, available: code.len() };
                        let Some(b) = code.get(..SIZE) else {
                            return Err(truncated.into());
                        };
                        let mut at = 1usize;
                        $( let $field = {
                            let kind = role_kind!($role);
                            let raw = b.get(at..).unwrap_or_default();
                            if kind == OperandKind::Sw
                                && let [v0, v1, m0, m1, ..] = *raw
                                && u16::from_be_bytes([v0, v1]) & !u16::from_be_bytes([m0, m1]) != 0
                            {
                                return Err(DecodeError::NonCanonicalPattern.into());
                            }
                            let Some(o) = Operand::decode(kind, raw) else {
                                return Err(truncated.into());
                            };
                            at += kind.size();
                            let Some(v) = <role_ty!($role) as OperandField>::unwrap(o, kind) else {
                                return Err(truncated.into());
                            };
                            v
                        }; )*
                        $( visitor.visit(
                            $field.wrap(role_kind!($role)),
                            &operand_spec!($mnemonic $field $role $( ( $($arg)* ) )?),
                        )?; )*
                        Ok((Instr::$variant { $($field),* }, SIZE))
                    } )*
                    _ => Err(DecodeError::UnknownOpcode(first).into()),
                }
            }

            /// Builds an instruction from an opcode and operands of the right kinds.
            #[allow(unused_variables, unused_mut, unused_assignments)]
            pub fn from_operands(op: Opcode, ops: &[Operand]) -> Option<Instr> {
                if ops.len() != op.operand_kinds().len() {
                    return None;
                }
                match op {
                    $( Opcode::$variant => {
                        let mut it = ops.iter().copied();
                        $( let $field = OperandField::unwrap(it.next()?, role_kind!($role))?; )*
                        Some(Instr::$variant { $($field),* })
                    } )*
                }
            }
        }
    };
}

for_each_op!(define_isa);

/// What a decoder does with each operand as it reads it ([`Instr::decode_with`]): the
/// verifier's checks. Implement [`OperandVisitor::visit`] `#[inline(always)]`: it is then
/// compiled into each opcode's arm with the operand's kind and spec as constants.
pub trait OperandVisitor {
    /// The error a check reports; a decoding error converts into it.
    type Error: From<DecodeError>;
    /// Checks one operand; `spec` is its entry in the instruction table.
    fn visit(&mut self, op: Operand, spec: &'static OperandSpec) -> Result<(), Self::Error>;
}

/// Decoding alone.
struct NoChecks;

impl OperandVisitor for NoChecks {
    type Error = DecodeError;
    #[inline(always)]
    fn visit(&mut self, _: Operand, _: &'static OperandSpec) -> Result<(), DecodeError> {
        Ok(())
    }
}

impl Opcode {
    /// The key usages the instruction accepts in the key slot it reads (the usages of its
    /// [`Role::KeySrc`] operand: `master` of `pkey` and `divkey`, `src` of `tackey`, `key`
    /// of `mac`/`chkmac`/`enc`/`dec`/`ldrkey`); empty for instructions that read no key
    /// slot. The one table the VM checks usages against. For a derivation it is exactly
    /// the usages [`KeyUsage::derive`] accepts, and no usage that is a derivation source
    /// is accepted by `enc`/`dec`.
    #[inline]
    pub const fn allowed_key_usages(self) -> &'static [KeyUsage] {
        let specs = self.operand_specs();
        let mut i = 0;
        while i < specs.len() {
            if let Role::KeySrc { usages } = specs[i].role {
                return usages;
            }
            i += 1;
        }
        &[]
    }

    /// The key derivation the instruction performs, if any (`divkey`, `pkey`, `tackey`):
    /// the derived key's usage is [`KeyUsage::derive`] of the source's.
    #[inline]
    pub const fn derivation(self) -> Option<Derivation> {
        let specs = self.operand_specs();
        let mut i = 0;
        while i < specs.len() {
            if let Role::KeyDst {
                derivation: Some(d),
            } = specs[i].role
            {
                return Some(d);
            }
            i += 1;
        }
        None
    }
}

impl Instr {
    /// Appends the encoded instruction to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.opcode() as u8);
        for op in self.operands().as_slice() {
            op.encode(out);
        }
    }

    /// Decodes one instruction from the front of `code`; returns it and its size.
    #[inline]
    pub fn decode(code: &[u8]) -> Result<(Instr, usize), DecodeError> {
        Instr::decode_with(code, &mut NoChecks)
    }

    /// The branch/jump/call target, if this instruction has one.
    pub fn target(&self) -> Option<u32> {
        // The visitor stops at the target by "failing" with it.
        self.try_for_each_operand(|o| match o {
            Operand::Target(t) => Err(t),
            _ => Ok(()),
        })
        .err()
    }
}

/// Decodes a whole code section into `(offset, instruction)` pairs.
pub fn decode_all(code: &[u8]) -> Result<Vec<(u32, Instr)>, (u32, DecodeError)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < code.len() {
        let (instr, size) = Instr::decode(&code[at..]).map_err(|e| (at as u32, e))?;
        out.push((at as u32, instr));
        at += size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_is_consistent() {
        for &op in ALL_OPCODES {
            assert_eq!(Opcode::from_byte(op as u8), Some(op));
            assert_eq!(Opcode::from_mnemonic(op.mnemonic()), Some(op));
            assert!(op.operand_kinds().len() <= MAX_OPERANDS);
            assert_eq!(op.operand_kinds().len(), op.operand_names().len());
            assert!(!op.summary().is_empty(), "{op:?} lacks a summary");
        }
    }

    /// The roles agree with the encodings, and the table says each thing once: one key
    /// slot read per instruction, a derivation reads one key and fills one, a key input
    /// fills a key slot and never a register, one handler per opcode, ranges inside
    /// their encodings, and the four terminators.
    #[test]
    fn operand_roles_are_coherent() {
        let mut handlers = Vec::new();
        for &op in ALL_OPCODES {
            let specs = op.operand_specs();
            let kinds: Vec<_> = specs.iter().map(|s| s.kind).collect();
            assert_eq!(kinds, op.operand_kinds(), "{op:?}");
            let names: Vec<_> = specs.iter().map(|s| s.name).collect();
            assert_eq!(names, op.operand_names(), "{op:?}");
            let count = |f: fn(&Role) -> bool| specs.iter().filter(|s| f(&s.role)).count();
            let key_srcs = count(|r| matches!(r, Role::KeySrc { .. }));
            let derived = count(|r| {
                matches!(
                    r,
                    Role::KeyDst {
                        derivation: Some(_)
                    }
                )
            });
            assert!(key_srcs <= 1, "{op:?} reads two key slots");
            assert_eq!(derived, usize::from(op.derivation().is_some()), "{op:?}");
            if derived == 1 {
                assert_eq!(key_srcs, 1, "{op:?} derives from no key");
            }
            if count(|r| *r == Role::KeyInput) > 0 {
                assert_eq!(count(|r| *r == Role::KeyDst { derivation: None }), 1);
                assert_eq!(
                    count(|r| *r == Role::RegDst),
                    0,
                    "{op:?}: key into a register"
                );
            }
            for s in specs {
                let expected_kind = match s.role {
                    Role::RegDst | Role::RegSrc => OperandKind::Reg,
                    Role::KeyDst { .. } | Role::KeySrc { .. } => OperandKind::Key,
                    Role::Const => OperandKind::Const,
                    Role::ValueInput | Role::KeyInput => OperandKind::Input,
                    Role::Output => OperandKind::Output,
                    Role::Target => OperandKind::Target,
                    Role::FailCode => OperandKind::U16,
                    Role::StatusWord => OperandKind::Sw,
                    Role::Imm { min, max, what } => {
                        assert!(min <= max, "{op:?}");
                        assert!(u64::from(max) < 1u64 << (8 * s.kind.size()), "{op:?}");
                        assert!(what.starts_with(op.mnemonic()), "{what}");
                        s.kind
                    }
                };
                assert_eq!(s.kind, expected_kind, "{op:?} {}", s.name);
                if let Role::KeySrc { usages } = s.role {
                    assert!(!usages.is_empty(), "{op:?}");
                }
            }
            assert!(!handlers.contains(&op.handler_name()), "{op:?}");
            handlers.push(op.handler_name());
        }
        let terminators: Vec<_> = ALL_OPCODES
            .iter()
            .filter(|o| o.flags().terminator)
            .map(|o| o.mnemonic())
            .collect();
        assert_eq!(terminators, ["halt", "fail", "jmp", "ret"]);
    }

    #[test]
    fn key_usage_table_agrees_with_the_derivation_rules() {
        for &op in ALL_OPCODES {
            let allowed = op.allowed_key_usages();
            let reads_key = op
                .operand_specs()
                .iter()
                .any(|s| matches!(s.role, Role::KeySrc { .. }));
            assert_eq!(!allowed.is_empty(), reads_key, "{op:?}");
            if let Some(d) = op.derivation() {
                for u in KeyUsage::ALL {
                    assert_eq!(allowed.contains(&u), u.derive(d).is_some(), "{op:?} {u:?}");
                }
            }
        }
        // No key that can be a derivation source may be used for enc/dec (the key oracle).
        for op in [Opcode::Encrypt, Opcode::Decrypt] {
            assert_eq!(op.allowed_key_usages(), &[KeyUsage::Encrypt]);
            for &u in op.allowed_key_usages() {
                for d in Derivation::ALL {
                    assert_eq!(u.derive(d), None, "{u:?} is a {d:?} source");
                }
            }
        }
        // divkey chooses nothing: it has no usage operand.
        assert_eq!(
            Opcode::Diversify.operand_names(),
            &["dst", "master", "data"]
        );
    }

    #[test]
    fn sw_pattern_text() {
        let p = SwPattern::parse("63Cx").unwrap();
        assert_eq!(
            p,
            SwPattern {
                value: 0x63C0,
                mask: 0xFFF0
            }
        );
        assert!(p.matches(0x63C3));
        assert_eq!(p.to_string(), "63Cx");
        assert_eq!(SwPattern::parse("61xx").unwrap().to_string(), "61xx");
        assert!(SwPattern::parse("61x").is_none());
        assert!(SwPattern::parse("6G00").is_none());
    }

    #[test]
    fn decode_reports_truncation_and_unknown_opcodes() {
        assert_eq!(
            Instr::decode(&[0xFF]),
            Err(DecodeError::UnknownOpcode(0xFF))
        );
        assert_eq!(
            Instr::decode(&[0x03, 0, 0]),
            Err(DecodeError::Truncated {
                needed: 5,
                available: 3
            })
        );
        assert_eq!(
            Instr::decode(&[0x55, 0x90, 0x01, 0xFF, 0x00, 0, 1]),
            Err(DecodeError::NonCanonicalPattern)
        );
    }

    /// Every opcode with a status-word operand refuses a non-canonical pattern (a value
    /// bit outside the mask) wherever the operand sits.
    #[test]
    fn every_sw_operand_is_checked_for_canonical_form() {
        let mut with_sw = 0;
        for &op in ALL_OPCODES {
            let kinds = op.operand_kinds();
            if !kinds.contains(&OperandKind::Sw) {
                continue;
            }
            with_sw += 1;
            let mut code = vec![op as u8];
            for &kind in kinds {
                match kind {
                    OperandKind::Sw => code.extend_from_slice(&[0x90, 0x01, 0xFF, 0x00]),
                    _ => code.extend(core::iter::repeat_n(0, kind.size())),
                }
            }
            assert_eq!(
                Instr::decode(&code),
                Err(DecodeError::NonCanonicalPattern),
                "{op:?}"
            );
        }
        assert_eq!(with_sw, 3, "bsw, bnsw, expect");
    }

    fn any_operand(kind: OperandKind) -> BoxedStrategy<Operand> {
        match kind {
            OperandKind::Reg => any::<u8>().prop_map(Operand::Reg).boxed(),
            OperandKind::Key => any::<u8>().prop_map(Operand::Key).boxed(),
            OperandKind::Const => any::<u16>().prop_map(Operand::Const).boxed(),
            OperandKind::Input => any::<u16>().prop_map(Operand::Input).boxed(),
            OperandKind::Output => any::<u16>().prop_map(Operand::Output).boxed(),
            OperandKind::Target => any::<u32>().prop_map(Operand::Target).boxed(),
            OperandKind::U8 => any::<u8>().prop_map(Operand::U8).boxed(),
            OperandKind::U16 => any::<u16>().prop_map(Operand::U16).boxed(),
            OperandKind::U32 => any::<u32>().prop_map(Operand::U32).boxed(),
            OperandKind::Sw => (any::<u16>(), any::<u16>())
                .prop_map(|(v, m)| {
                    Operand::Sw(SwPattern {
                        value: v & m,
                        mask: m,
                    })
                })
                .boxed(),
        }
    }

    /// Any instruction the table can express.
    pub(crate) fn any_instr() -> impl Strategy<Value = Instr> {
        proptest::sample::select(ALL_OPCODES).prop_flat_map(|op| {
            let strategies: Vec<_> = op.operand_kinds().iter().map(|&k| any_operand(k)).collect();
            strategies.prop_map(move |ops| Instr::from_operands(op, &ops).unwrap())
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(instr in any_instr()) {
            let mut bytes = Vec::new();
            instr.encode(&mut bytes);
            prop_assert_eq!(bytes.len(), instr.opcode().size());
            prop_assert_eq!(Instr::decode(&bytes), Ok((instr, bytes.len())));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_all(&bytes);
        }
    }
}
