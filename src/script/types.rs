//! Types of declared inputs and outputs.

use super::codec::{FormatErrorKind, PResult, fail, u8_, u16_};
use crate::crypto::{KeyAlg, KeyUsage};
use alloc::vec::Vec;
use core::fmt;

/// Longest name of an input, output or data field.
pub const MAX_NAME_LEN: usize = 32;

/// Whether `s` is a valid name: `[A-Za-z_][A-Za-z0-9_]*`, 1 to 32 bytes.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The type of a declared input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// An unsigned integer of at most `bits` bits (8, 16, 32 or 64).
    Int {
        /// Width in bits.
        bits: u8,
    },
    /// A byte string of any length.
    Bytes,
    /// A byte string of exactly `len` bytes.
    BytesN {
        /// Required length.
        len: u16,
    },
    /// A date-time as 7 bytes of BCD: YYYYMMDD hhmmss.
    BcdDateTime,
    /// A key of the given algorithm and usage (inputs only; lives in a key slot).
    Key {
        /// Algorithm.
        alg: KeyAlg,
        /// Usage.
        usage: KeyUsage,
    },
}

impl ValueType {
    /// Whether values of this type are keys.
    pub fn is_key(&self) -> bool {
        matches!(self, ValueType::Key { .. })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ValueType::Int { bits } => out.extend_from_slice(&[0x01, bits]),
            ValueType::Bytes => out.push(0x02),
            ValueType::BytesN { len } => {
                out.push(0x03);
                out.extend_from_slice(&len.to_be_bytes());
            }
            ValueType::BcdDateTime => out.push(0x04),
            ValueType::Key { alg, usage } => {
                out.extend_from_slice(&[0x05, alg.code(), usage.code()])
            }
        }
    }

    pub(crate) fn parse(i: &[u8]) -> PResult<'_, ValueType> {
        let (rest, tag) = u8_(i)?;
        match tag {
            0x01 => {
                let (rest2, bits) = u8_(rest)?;
                if !matches!(bits, 8 | 16 | 32 | 64) {
                    return fail(rest, FormatErrorKind::BadIntWidth(bits));
                }
                Ok((rest2, ValueType::Int { bits }))
            }
            0x02 => Ok((rest, ValueType::Bytes)),
            0x03 => {
                let (rest, len) = u16_(rest)?;
                Ok((rest, ValueType::BytesN { len }))
            }
            0x04 => Ok((rest, ValueType::BcdDateTime)),
            0x05 => {
                let (rest2, a) = u8_(rest)?;
                let alg = match KeyAlg::from_code(a) {
                    Some(alg) => alg,
                    None => return fail(rest, FormatErrorKind::UnknownKeyCode(a)),
                };
                let (rest3, u) = u8_(rest2)?;
                let usage = match KeyUsage::from_code(u) {
                    Some(usage) => usage,
                    None => return fail(rest2, FormatErrorKind::UnknownKeyCode(u)),
                };
                if !usage.is_declarable() {
                    return fail(rest2, FormatErrorKind::DerivedKeyUsage(u));
                }
                Ok((rest3, ValueType::Key { alg, usage }))
            }
            t => fail(i, FormatErrorKind::UnknownTag(t)),
        }
    }
}

impl fmt::Display for ValueType {
    /// The assembler's spelling: `u8`/`u16`/`u32`/`u64`, `bytes`, `bytes[N]`,
    /// `bcd_datetime`, `key(ALG, USAGE)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Int { bits } => write!(f, "u{bits}"),
            ValueType::Bytes => f.write_str("bytes"),
            ValueType::BytesN { len } => write!(f, "bytes[{len}]"),
            ValueType::BcdDateTime => f.write_str("bcd_datetime"),
            ValueType::Key { alg, usage } => write!(f, "key({}, {})", alg.name(), usage.name()),
        }
    }
}

/// Whether 7 bytes are a valid BCD date-time YYYYMMDD hhmmss.
pub(crate) fn is_valid_bcd_datetime(b: &[u8; 7]) -> bool {
    let mut digits = [0u8; 14];
    for (i, byte) in b.iter().enumerate() {
        let (hi, lo) = (byte >> 4, byte & 0xF);
        if hi > 9 || lo > 9 {
            return false;
        }
        digits[2 * i] = hi;
        digits[2 * i + 1] = lo;
    }
    let num = |a: usize, n: usize| {
        digits[a..a + n]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(*d))
    };
    let (month, day, hour, min, sec) = (num(4, 2), num(6, 2), num(8, 2), num(10, 2), num(12, 2));
    (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && min < 60 && sec < 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("amount"));
        assert!(is_valid_name("_x9"));
        assert!(!is_valid_name("9x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a-b"));
        assert!(!is_valid_name(&"a".repeat(33)));
    }

    #[test]
    fn bcd_datetime_validation() {
        assert!(is_valid_bcd_datetime(&[
            0x20, 0x26, 0x11, 0x23, 0x12, 0x30, 0x59
        ]));
        assert!(!is_valid_bcd_datetime(&[
            0x20, 0x26, 0x13, 0x23, 0x12, 0x30, 0x59
        ]));
        assert!(!is_valid_bcd_datetime(&[
            0x20, 0x2A, 0x11, 0x23, 0x12, 0x30, 0x59
        ]));
    }
}
