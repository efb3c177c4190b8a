//! Binary formats of command scripts (`.cvm`) and data scripts (`.cvd`).
//!
//! Both are parsed with nom into owned values and written back by a symmetric encoder:
//! `parse(encode(x)) == x`, and for canonical input `encode(parse(b)) == b`. Every
//! length, count and index is checked while parsing; a failure is a [`FormatError`]
//! carrying the byte offset where it was found.
//!
//! Command script layout (all integers big-endian):
//! ```text
//! "CVMS" version(1)=1
//! city(4) script_id(4) script_version(2) registers(1) key_slots(1)
//! section*  — tag(1) length(4) body, tags in this order, each once (debug optional):
//!   01 constants   count(2) { 01 int(8) | 02 len(2) bytes }
//!   02 inputs      count(2) { name type }
//!   03 outputs     count(2) { name type }
//!   04 code        instructions (see [`crate::isa`])
//!   06 debug       version(1)=2 files count(2) { len(2) name sm3(32) } ;
//!                  lines count(4) { offset(4) file(2) line(4) }
//!                  (05: the version-1 debug section, names without hashes; it and 06 bodies
//!                  of later versions are kept as bytes, not read: see `UnsupportedDebug`)
//! name = len(1) ASCII [A-Za-z_][A-Za-z0-9_]* (1..=32)
//! type = 01 bits(1) | 02 (bytes, any length) | 03 len(2) (bytes, exact) | 04 (BCD date-time, 7 bytes)
//!      | 05 alg(1) usage(1) (key)
//! ```
//! Data script layout:
//! ```text
//! "CVMD" version(1)=1 count(2) { name value }
//! value = 01 int(8) | 02 len(2) bytes | 04 bcd(7) | 05 alg(1) usage(1) len(1) key-bytes
//! ```

mod codec;
mod command;
mod data;
mod types;

pub use codec::{FormatError, FormatErrorKind};
pub(crate) use command::acts_on_terminal;
pub use command::{
    CommandScript, Constant, DEBUG_VERSION, DebugFile, DebugInfo, DebugScope, DebugVar, Decl,
    Header, LineEntry, MAX_DEBUG_NAME, MAX_DEBUG_SYMBOL, UnsupportedDebug, VarKind, display_safe,
    is_debug_symbol,
};
pub use data::{DataScript, Field, FieldValue, with_encoded};
pub use types::{ValueType, is_valid_name};

/// Largest command or data script accepted (bytes).
pub const MAX_SCRIPT_LEN: usize = 1 << 20;
/// Largest code section (bytes); targets are offsets into it.
pub const MAX_CODE_LEN: usize = 1 << 16;
/// Longest byte-string constant or data field.
pub const MAX_BYTES_LEN: usize = 4096;
/// Most constants, inputs, outputs or data fields in one script.
pub const MAX_ENTRIES: usize = 1024;
