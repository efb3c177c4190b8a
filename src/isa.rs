//! The instruction set: one table from which the encoder, decoder, assembler and
//! disassembler are all derived.
//!
//! Each instruction is an opcode byte followed by fixed-size operands (big-endian). The
//! table in `isa!` lists, per instruction, its opcode, mnemonic and operand kinds; the
//! macro generates [`Opcode`], the decoded [`Instr`] enum, and the generic operand view
//! ([`Instr::operands`], [`Instr::from_operands`]) that the assembler and disassembler
//! use, so a new instruction is one line here plus its meaning in the VM.
//!
//! Operand kinds (see [`OperandKind`]): `R` register, `K` key slot, `C` constant-pool
//! index, `I` declared input, `O` declared output, `L` code offset (a label), `U8`/`U16`/
//! `U32` immediates, and `SW` a status-word pattern (value + mask, e.g. `63Cx`).

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

    fn encode(&self, out: &mut Vec<u8>) {
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
    fn decode(kind: OperandKind, b: &[u8]) -> Option<Operand> {
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

// Maps an operand-kind token to its Rust field type and `Operand` variant.
macro_rules! operand_ty {
    (R) => {
        u8
    };
    (K) => {
        u8
    };
    (C) => {
        u16
    };
    (I) => {
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
    (SW) => {
        SwPattern
    };
}
macro_rules! operand_kind {
    (R) => {
        OperandKind::Reg
    };
    (K) => {
        OperandKind::Key
    };
    (C) => {
        OperandKind::Const
    };
    (I) => {
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
    (SW) => {
        OperandKind::Sw
    };
}
macro_rules! operand_wrap {
    (R, $v:expr) => {
        Operand::Reg($v)
    };
    (K, $v:expr) => {
        Operand::Key($v)
    };
    (C, $v:expr) => {
        Operand::Const($v)
    };
    (I, $v:expr) => {
        Operand::Input($v)
    };
    (O, $v:expr) => {
        Operand::Output($v)
    };
    (L, $v:expr) => {
        Operand::Target($v)
    };
    (U8, $v:expr) => {
        Operand::U8($v)
    };
    (U16, $v:expr) => {
        Operand::U16($v)
    };
    (U32, $v:expr) => {
        Operand::U32($v)
    };
    (SW, $v:expr) => {
        Operand::Sw($v)
    };
}
macro_rules! operand_unwrap {
    (R, $o:expr) => {
        match $o {
            Operand::Reg(v) => v,
            _ => return None,
        }
    };
    (K, $o:expr) => {
        match $o {
            Operand::Key(v) => v,
            _ => return None,
        }
    };
    (C, $o:expr) => {
        match $o {
            Operand::Const(v) => v,
            _ => return None,
        }
    };
    (I, $o:expr) => {
        match $o {
            Operand::Input(v) => v,
            _ => return None,
        }
    };
    (O, $o:expr) => {
        match $o {
            Operand::Output(v) => v,
            _ => return None,
        }
    };
    (L, $o:expr) => {
        match $o {
            Operand::Target(v) => v,
            _ => return None,
        }
    };
    (U8, $o:expr) => {
        match $o {
            Operand::U8(v) => v,
            _ => return None,
        }
    };
    (U16, $o:expr) => {
        match $o {
            Operand::U16(v) => v,
            _ => return None,
        }
    };
    (U32, $o:expr) => {
        match $o {
            Operand::U32(v) => v,
            _ => return None,
        }
    };
    (SW, $o:expr) => {
        match $o {
            Operand::Sw(v) => v,
            _ => return None,
        }
    };
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

macro_rules! isa {
    ($(
        $(#[doc = $doc:literal])*
        $code:literal $variant:ident $mnemonic:literal ( $($field:ident : $kind:ident),* );
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
            pub fn mnemonic(self) -> &'static str {
                match self { $( Opcode::$variant => $mnemonic, )* }
            }

            /// The opcode for a mnemonic, if any.
            pub fn from_mnemonic(m: &str) -> Option<Opcode> {
                match m {
                    $( $mnemonic => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            /// Operand kinds, in order.
            pub fn operand_kinds(self) -> &'static [OperandKind] {
                match self { $( Opcode::$variant => &[ $( operand_kind!($kind), )* ], )* }
            }

            /// Operand names as written in the table (for documentation and errors).
            pub fn operand_names(self) -> &'static [&'static str] {
                match self { $( Opcode::$variant => &[ $( stringify!($field), )* ], )* }
            }

            /// Encoded size of the instruction in bytes.
            pub fn size(self) -> usize {
                match self { $( Opcode::$variant => 1 $( + operand_kind!($kind).size() )*, )* }
            }

            /// Whether an operand is a status-word pattern (checked for canonical form
            /// when decoding).
            #[inline]
            fn has_sw_operand(self) -> bool {
                match self { $( Opcode::$variant => false $( || matches!(operand_kind!($kind), OperandKind::Sw) )*, )* }
            }

            /// One-line description from the table.
            pub fn summary(self) -> &'static str {
                match self { $( Opcode::$variant => concat!($($doc, )* ""), )* }
            }
        }

        /// A decoded instruction. Operand fields are raw: registers, slots and indices
        /// are unchecked until [`crate::verify`] checks them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Instr {
            $( $(#[doc = $doc])* $variant { $( $field: operand_ty!($kind), )* }, )*
        }

        impl Instr {
            /// This instruction's opcode.
            pub fn opcode(&self) -> Opcode {
                match self { $( Instr::$variant { .. } => Opcode::$variant, )* }
            }

            /// The operands in table order.
            #[allow(unused_variables)]
            pub fn operands(&self) -> Operands {
                match *self {
                    $( Instr::$variant { $($field),* } => Operands::from_slice(&[ $( operand_wrap!($kind, $field), )* ]), )*
                }
            }

            /// Calls `f` on each operand in table order, stopping at the first error.
            /// Unlike [`Instr::operands`] it builds no array: once inlined, each opcode
            /// runs only the checks its operand kinds need (the verifier's hot loop).
            #[inline]
            #[allow(unused_variables, unused_mut)]
            pub fn try_for_each_operand<E>(
                &self,
                mut f: impl FnMut(Operand) -> Result<(), E>,
            ) -> Result<(), E> {
                match *self {
                    $( Instr::$variant { $($field),* } => { $( f(operand_wrap!($kind, $field))?; )* } )*
                }
                Ok(())
            }

            /// Reads the operand fields of `op` straight into its variant (one match
            /// arm per opcode: no operand array, no second match). `code` starts at the
            /// opcode byte; `None` if it is too short.
            #[inline]
            #[allow(unused_variables, unused_mut, unused_assignments)]
            fn decode_fields(op: Opcode, code: &[u8]) -> Option<Instr> {
                let mut at = 1usize;
                match op {
                    $( Opcode::$variant => {
                        $( let $field = {
                            let kind = operand_kind!($kind);
                            let o = Operand::decode(kind, code.get(at..)?)?;
                            at += kind.size();
                            operand_unwrap!($kind, o)
                        }; )*
                        Some(Instr::$variant { $($field),* })
                    } )*
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
                        $( let $field = operand_unwrap!($kind, it.next()?); )*
                        Some(Instr::$variant { $($field),* })
                    } )*
                }
            }
        }
    };
}

isa! {
    // ---- control flow ----
    /// Do nothing.
    0x00 Nop "nop" ();
    /// Stop: the transaction completed (outcome `committed`).
    0x01 Halt "halt" ();
    /// Stop: the transaction failed with `code` (outcome `failed`: the script knows the card did not commit).
    0x02 Fail "fail" (code: U16);
    /// Jump to `target`.
    0x03 Jmp "jmp" (target: L);
    /// Call the routine at `target`; `ret` comes back.
    0x04 Call "call" (target: L);
    /// Return from a routine.
    0x05 Ret "ret" ();
    /// From here on the card may commit: a later transport failure (tearing) or VM fault is reported as `unknown`.
    0x06 CommitPoint "commit_point" ();
    // ---- branches ----
    /// Branch if `a == b` (integers, or byte strings — not constant-time: use `cteq` for MACs).
    0x10 Beq "beq" (a: R, b: R, target: L);
    /// Branch if `a != b`.
    0x11 Bne "bne" (a: R, b: R, target: L);
    /// Branch if integer `a < b`.
    0x12 Blt "blt" (a: R, b: R, target: L);
    /// Branch if integer `a <= b`.
    0x13 Ble "ble" (a: R, b: R, target: L);
    /// Branch if integer `a > b`.
    0x14 Bgt "bgt" (a: R, b: R, target: L);
    /// Branch if integer `a >= b`.
    0x15 Bge "bge" (a: R, b: R, target: L);
    /// Branch if integer `a` is zero.
    0x16 Bz "bz" (a: R, target: L);
    /// Branch if integer `a` is not zero.
    0x17 Bnz "bnz" (a: R, target: L);
    // ---- moves, constants, inputs, outputs ----
    /// `dst = src`.
    0x20 Mov "mov" (dst: R, src: R);
    /// `dst = constant`.
    0x21 Ldc "ldc" (dst: R, index: C);
    /// `dst = value` (integer immediate).
    0x22 Ldi "ldi" (dst: R, value: U32);
    /// `dst = input` (a non-key data-script field).
    0x23 Ldin "ldin" (dst: R, input: I);
    /// Key slot `slot = input` (a key field of the data script; its bytes stay in the slot).
    0x24 Ldkey "ldkey" (slot: K, input: I);
    /// Receipt field `output = src`.
    0x25 Out "out" (output: O, src: R);
    // ---- integers (u64; overflow is an error) ----
    /// `dst = a + b`.
    0x30 Add "add" (dst: R, a: R, b: R);
    /// `dst = a - b`.
    0x31 Sub "sub" (dst: R, a: R, b: R);
    /// `dst = a * b`.
    0x32 Mul "mul" (dst: R, a: R, b: R);
    /// `dst = a / b` (division by zero is an error).
    0x33 Div "div" (dst: R, a: R, b: R);
    /// `dst = a % b`.
    0x34 Rem "rem" (dst: R, a: R, b: R);
    /// `dst = a + value`.
    0x35 Addi "addi" (dst: R, a: R, value: U32);
    /// `dst = a - value`.
    0x36 Subi "subi" (dst: R, a: R, value: U32);
    /// `dst = a & value`.
    0x37 Andi "andi" (dst: R, a: R, value: U32);
    /// `dst = a >> bits`.
    0x38 Shri "shri" (dst: R, a: R, bits: U8);
    /// `dst = a << bits` (bits shifted out are an overflow).
    0x39 Shli "shli" (dst: R, a: R, bits: U8);
    // ---- byte strings ----
    /// `dst = a ‖ b`.
    0x40 Cat "cat" (dst: R, a: R, b: R);
    /// `dst = src[offset .. offset + len]`.
    0x41 Slice "slice" (dst: R, src: R, offset: U16, len: U16);
    /// `dst = src[offset .. offset + len]` with offset and length in registers.
    0x42 Slicer "slicer" (dst: R, src: R, offset: R, len: R);
    /// `dst = a XOR b` (equal lengths).
    0x43 Xor "xor" (dst: R, a: R, b: R);
    /// `dst = NOT src` (every byte inverted).
    0x44 Not "not" (dst: R, src: R);
    /// `dst = src` padded with ISO 9797-1 method 2 to a multiple of `block`.
    0x45 Pad "pad" (dst: R, src: R, block: U8);
    /// `dst = length of src` (integer).
    0x46 Len "len" (dst: R, src: R);
    /// `dst = src` (integer) as `width` big-endian bytes.
    0x47 ToBe "tobe" (dst: R, src: R, width: U8);
    /// `dst = src` (at most 8 bytes, big-endian) as an integer.
    0x48 FromBe "frombe" (dst: R, src: R);
    /// `dst = src` (integer) as `width` bytes of packed BCD.
    0x49 ToBcd "tobcd" (dst: R, src: R, width: U8);
    /// `dst = src` (packed BCD) as an integer.
    0x4A FromBcd "frombcd" (dst: R, src: R);
    /// `dst = count` copies of `byte`.
    0x4B Fill "fill" (dst: R, byte: U8, count: U16);
    // ---- APDUs ----
    /// Send the command APDU in `cmd`; `resp` = response data; the status word is kept for `sw`/`bsw`/`expect`.
    0x50 Apdu "apdu" (resp: R, cmd: R);
    /// `dst` = APDU from a 4-byte header, data and Le (0 = no Le); short or extended as needed.
    0x51 MkApdu "mkapdu" (dst: R, header: R, data: R, le: U32);
    /// `dst` = the last status word (integer).
    0x52 Sw "sw" (dst: R);
    /// Branch if the last status word matches `pattern`.
    0x53 Bsw "bsw" (pattern: SW, target: L);
    /// Branch if the last status word does not match `pattern`.
    0x54 Bnsw "bnsw" (pattern: SW, target: L);
    /// Fail with `code` unless the last status word matches `pattern`.
    0x55 Expect "expect" (pattern: SW, code: U16);
    /// `dst` = the card's UID (empty when the transport does not know it).
    0x56 Uid "uid" (dst: R);
    // ---- cryptography over key slots ----
    /// Key slot `dst` = process (session) key of key slot `master` (`load` or `purchase`) over the 8 bytes in `data`; a `load-session` or `purchase-session` key.
    0x60 ProcessKey "pkey" (dst: K, master: K, data: R);
    /// `dst` = 4-byte PBOC MAC of `data` under key slot `key`.
    0x61 Mac "mac" (dst: R, key: K, data: R);
    /// Fail with `code` unless `mac` is the MAC of `data` under `key` (constant-time).
    0x62 CheckMac "chkmac" (key: K, data: R, mac: R, code: U16);
    /// Key slot `dst` = TAC key derived from key slot `src` (`tac`); a `tac` key.
    0x63 TacKey "tackey" (dst: K, src: K);
    /// Key slot `dst` = `master` diversified by the 8 bytes in `data`; its usage follows the master's: `load-master` gives `load`, `purchase-master` `purchase`, `tac-master` `tac`.
    0x64 Diversify "divkey" (dst: K, master: K, data: R);
    /// `dst` = ECB encryption of `data` under key slot `key` (usage `enc`).
    0x65 Encrypt "enc" (dst: R, key: K, data: R);
    /// `dst` = ECB decryption of `data` under key slot `key` (usage `enc`).
    0x66 Decrypt "dec" (dst: R, key: K, data: R);
    /// `dst` = SM3 digest of `src`.
    0x67 Sm3 "sm3" (dst: R, src: R);
    /// Send M1 key slot `key` (`m1-a`/`m1-b`) to the reader's volatile key store `number` (FF 82), only on a transport with a reader key store; the only way key bytes leave a slot.
    0x68 LoadReaderKey "ldrkey" (key: K, number: U8);
    /// `dst` = 1 if `a` and `b` are equal byte strings (constant-time), else 0.
    0x69 CtEq "cteq" (dst: R, a: R, b: R);
}

impl Opcode {
    /// The key usages the instruction accepts in the key slot it reads (`master` of `pkey`
    /// and `divkey`, `src` of `tackey`, `key` of `mac`/`chkmac`/`enc`/`dec`/`ldrkey`);
    /// empty for instructions that read no key slot. The one table the VM checks usages
    /// against. For a derivation it is exactly the usages [`KeyUsage::derive`] accepts,
    /// and no usage that is a derivation source is accepted by `enc`/`dec`.
    #[inline]
    pub const fn allowed_key_usages(self) -> &'static [KeyUsage] {
        use KeyUsage as U;
        match self {
            Opcode::ProcessKey => &[U::Load, U::Purchase],
            Opcode::Mac | Opcode::CheckMac => &[U::LoadSession, U::PurchaseSession, U::Tac, U::Mac],
            Opcode::TacKey => &[U::Tac],
            Opcode::Diversify => &[U::LoadMaster, U::PurchaseMaster, U::TacMaster],
            Opcode::Encrypt | Opcode::Decrypt => &[U::Encrypt],
            Opcode::LoadReaderKey => &[U::M1A, U::M1B],
            _ => &[],
        }
    }

    /// The key derivation the instruction performs, if any (`divkey`, `pkey`, `tackey`):
    /// the derived key's usage is [`KeyUsage::derive`] of the source's.
    #[inline]
    pub const fn derivation(self) -> Option<Derivation> {
        match self {
            Opcode::Diversify => Some(Derivation::Diversify),
            Opcode::ProcessKey => Some(Derivation::Process),
            Opcode::TacKey => Some(Derivation::Tac),
            _ => None,
        }
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
        let first = *code.first().ok_or(DecodeError::Truncated {
            needed: 1,
            available: 0,
        })?;
        let op = Opcode::from_byte(first).ok_or(DecodeError::UnknownOpcode(first))?;
        let size = op.size();
        if code.len() < size {
            return Err(DecodeError::Truncated {
                needed: size,
                available: code.len(),
            });
        }
        if op.has_sw_operand() {
            let kinds = op.operand_kinds();
            let mut at = 1;
            for &kind in kinds {
                if kind == OperandKind::Sw {
                    let b = &code[at..at + 4];
                    let value = u16::from_be_bytes([b[0], b[1]]);
                    let mask = u16::from_be_bytes([b[2], b[3]]);
                    if value & !mask != 0 {
                        return Err(DecodeError::NonCanonicalPattern);
                    }
                }
                at += kind.size();
            }
        }
        let instr = Instr::decode_fields(op, &code[..size]).ok_or(DecodeError::Truncated {
            needed: size,
            available: code.len(),
        })?;
        Ok((instr, size))
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

    /// Whether control never falls through to the next instruction.
    pub fn is_terminator(&self) -> bool {
        matches!(
            self,
            Instr::Halt {} | Instr::Fail { .. } | Instr::Jmp { .. } | Instr::Ret {}
        )
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

    #[test]
    fn key_usage_table_agrees_with_the_derivation_rules() {
        for &op in ALL_OPCODES {
            let allowed = op.allowed_key_usages();
            let reads_key = op.operand_kinds().contains(&OperandKind::Key) && op != Opcode::Ldkey;
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

    #[test]
    fn the_sw_shortcut_agrees_with_the_operand_table() {
        let mut with_sw = 0;
        for byte in 0..=255u8 {
            if let Some(op) = Opcode::from_byte(byte) {
                let table = op.operand_kinds().contains(&OperandKind::Sw);
                assert_eq!(op.has_sw_operand(), table, "{op:?}");
                with_sw += usize::from(table);
            }
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
