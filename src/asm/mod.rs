//! The `.casm` assembler and disassembler, and the TOML data-script compiler.
//!
//! The assembler and disassembler are generated from the instruction table
//! ([`crate::isa`]): mnemonics, operand counts and operand kinds all come from it, so a
//! new instruction needs no change here. [`assemble`] turns text into a
//! [`CommandScript`](crate::script::CommandScript); [`disassemble`] turns one back into
//! text that re-assembles to identical bytes. The core is `no_std` + `alloc`;
//! [`assemble_file`], [`FsLoader`] and the data compiler ([`compile_data`]) need `std`.
//!
//! # Syntax
//!
//! One statement per line; `;` starts a comment. A line may start with labels
//! (`name:`). Operands are separated by commas.
//!
//! ```text
//! ; city 731, balance enquiry and a little of everything
//! .city    731                ; header: .city N, .script N, .version N (decimal or 0x hex)
//! .script  1
//! .version 3
//! .input   amount  u32        ; types: u8 u16 u32 u64 bytes bytes[N] bcd_datetime key(ALG, USAGE)
//! .input   dlk     key(des3, load)
//! .output  mac2    bytes[4]
//! .reg     bal, atc, rnd      ; named registers: r0, r1, r2 (in declaration order)
//! .key     sk                 ; named key slots: k0 (k0.. also usable directly)
//! .const   SELECT = [00 A4 04 00 09 A0 00 00 00 03 86 98 07 01 00]
//! .const   TEN    = 10
//! .include "common.casm"      ; relative to this file; cycles are an error
//! .macro   check_ok code      ; a textual macro with one parameter
//!     expect 9000, code
//! .endm
//!
//! start:
//!     ldc    r3, SELECT       ; constant operand: a .const name, or an inline literal
//!     apdu   r4, r3
//!     check_ok 0x01           ; macros are used like instructions
//!     ldc    r5, [80 5C 00 02 04]   ; inline literal, pooled and deduplicated
//!     bsw    63Cx, retry      ; status words: 4 hex digits, x = any nibble
//!     ldin   bal, amount      ; inputs and outputs by declared name
//!     ldkey  sk, dlk
//!     divkey k1, k0, r2       ; the card key's usage follows the master's
//!     jmp    start            ; targets: a label, or @N (a raw code offset)
//! retry: fail 0x63
//! ```
//!
//! Details:
//! - **Numbers** are decimal or `0x` hex and must fit the operand (`u8`, `u16`, `u32`).
//! - **Registers** are `r0`..`r254` or `.reg` names, which alias `r0`, `r1`, … in
//!   declaration order (mixing both refers to the same registers). **Key slots** are
//!   `k0`..`k254` or `.key` names, likewise.
//! - The header's `registers` is the highest register an instruction names plus one,
//!   and `key_slots` likewise, unless `.registers N` / `.key_slots N` set them.
//! - **Constants**: `.const NAME = [hex bytes]` or `= number`. `.const` entries take
//!   pool indices in declaration order, then inline literals in order of first use;
//!   an inline literal equal to an earlier entry reuses it. `#N` names pool entry `N`
//!   directly (the disassembler uses it only for indices past the pool).
//! - **Inputs/outputs** are named by their declaration (`#N`: declaration `N`).
//! - **Status words**: `9000`, `63Cx`, `6xxx`; any mask: `VVVV/MMMM` (value/mask hex).
//! - **Includes** name files relative to the including one. [`FsLoader`] (what
//!   [`assemble_file`] uses) refuses absolute paths and any file outside the include
//!   root ([`include_root`]: the root file's directory, or its parent when that holds
//!   `common/`), as written and after canonicalization.
//! - **Macros**: `.macro NAME p1, p2` … `.endm`, defined before use. Parameters are
//!   replaced by the call's arguments (whole tokens). Expansion nests at most
//!   [`MAX_MACRO_DEPTH`] deep, so a recursive macro is an error, not a hang.
//! - **Debug info**: with [`AsmOptions::debug`] (CLI `asm -g`) the script gets a debug
//!   section (every source file with the SM3 of its bytes, one line entry per
//!   instruction); [`Assembled::sources`] hands the texts read to a debugger. File names
//!   are display labels only: nothing opens a file because a script names it, and a
//!   debugger shows a file's lines only from a text whose SM3 matches. Explicit
//!   directives replace the section: `.debug` (emit a section), `.file "name"` or
//!   `.file "name" [32-byte SM3]` (next file-table entry; without a hash its lines are
//!   never shown), `.loc FILE LINE` (the next code byte comes from that line), and
//!   `.debug_raw VERSION [bytes]` (a debug section of another version, kept as it is).
//!   The disassembler writes these so its output re-assembles to identical bytes.
//! - **Raw code**: `.code [hex]` appends bytes to the code as they are (the disassembler
//!   uses it for bytes that do not decode).
//!
//! Errors are [`AsmError`]s: `file:line:col: error: message`, the source line and a
//! caret. Any input text gives a script or a positioned error; includes, macro
//! expansion and the total number of lines are bounded.

mod assembler;
#[cfg(feature = "std")]
mod data_toml;
mod disasm;
mod error;
mod lexer;
mod lint;
mod loader;

#[cfg(test)]
mod tests;

#[cfg(feature = "std")]
pub use assembler::assemble_file;
pub use assembler::{
    AsmOptions, Assembled, MAX_FILES, MAX_INCLUDE_DEPTH, MAX_LINES, MAX_MACRO_DEPTH, SourceText,
    assemble_casm,
};
#[cfg(feature = "std")]
pub use data_toml::{DataError, compile_data, compile_data_for};
pub use disasm::disassemble;
pub use error::{AsmError, Lint, Warning};
#[cfg(feature = "std")]
pub use loader::{FsLoader, MAX_SOURCE_FILE, SourceFileError, include_root, read_source_file};
pub use loader::{MapLoader, SourceLoader, resolve_relative};

/// Assembles `source`, called `name`: a high-level program when `name` ends in `.cvs`
/// ([`crate::lang::assemble`]: its warnings and debug info name the `.cvs` lines),
/// else `.casm` ([`assemble_casm`]). `loader` supplies included files.
pub fn assemble(
    source: &str,
    name: &str,
    opts: &AsmOptions,
    loader: &mut dyn SourceLoader,
) -> Result<Assembled, AsmError> {
    if crate::lang::is_high_level(name) {
        crate::lang::assemble(source, name, opts, loader)
    } else {
        assemble_casm(source, name, opts, loader)
    }
}
