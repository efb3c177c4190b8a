//! nom plumbing shared by the script parsers: an error type that keeps the offset and
//! the reason, and small checked readers.

use alloc::string::String;
use core::fmt;
use nom::IResult;
use nom::number::complete::{be_u8, be_u16, be_u32};

/// Why a script failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatErrorKind {
    /// The magic bytes are not those of this format.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u8),
    /// The input ended before a field was complete.
    Truncated,
    /// Bytes remain after the last section.
    TrailingBytes,
    /// A section tag is unknown, repeated or out of order.
    UnexpectedSection(u8),
    /// A required section is missing.
    MissingSection(u8),
    /// A section's declared length disagrees with its content.
    SectionLength,
    /// A value tag is unknown.
    UnknownTag(u8),
    /// A name is empty, too long or has characters outside `[A-Za-z0-9_]`.
    BadName,
    /// The same name is declared twice.
    DuplicateName(String),
    /// A count or length exceeds this build's limit.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        limit: usize,
    },
    /// An integer type's width is not 8, 16, 32 or 64 bits.
    BadIntWidth(u8),
    /// A key algorithm or usage code is unknown.
    UnknownKeyCode(u8),
    /// A key's length does not suit its algorithm.
    BadKey,
    /// A key declared with a usage only a derivation gives (`load-session`,
    /// `purchase-session`; see [`crate::crypto::KeyUsage::is_declarable`]).
    DerivedKeyUsage(u8),
    /// A BCD value has a nibble above 9 or is not a valid date-time.
    BadBcd,
    /// The debug section points outside the code or the file table.
    BadDebugInfo,
}

impl fmt::Display for FormatErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatErrorKind::BadMagic => f.write_str("bad magic bytes"),
            FormatErrorKind::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            FormatErrorKind::Truncated => f.write_str("truncated"),
            FormatErrorKind::TrailingBytes => f.write_str("trailing bytes after the last section"),
            FormatErrorKind::UnexpectedSection(t) => write!(f, "unexpected section tag {t:#04x}"),
            FormatErrorKind::MissingSection(t) => write!(f, "missing section {t:#04x}"),
            FormatErrorKind::SectionLength => {
                f.write_str("section length disagrees with its content")
            }
            FormatErrorKind::UnknownTag(t) => write!(f, "unknown value tag {t:#04x}"),
            FormatErrorKind::BadName => f.write_str("invalid name"),
            FormatErrorKind::DuplicateName(n) => write!(f, "duplicate name `{n}`"),
            FormatErrorKind::TooLarge { what, value, limit } => {
                write!(f, "{what} {value} exceeds the limit {limit}")
            }
            FormatErrorKind::BadIntWidth(w) => {
                write!(f, "integer width {w} is not 8, 16, 32 or 64")
            }
            FormatErrorKind::UnknownKeyCode(c) => {
                write!(f, "unknown key algorithm or usage code {c}")
            }
            FormatErrorKind::BadKey => f.write_str("key length does not suit its algorithm"),
            FormatErrorKind::DerivedKeyUsage(c) => write!(
                f,
                "key usage code {c} ({}) is only derived in a transaction, never declared",
                crate::crypto::KeyUsage::from_code(*c).map_or("?", |u| u.name())
            ),
            FormatErrorKind::BadBcd => f.write_str("invalid BCD date-time"),
            FormatErrorKind::BadDebugInfo => {
                f.write_str("debug info points outside the code or file table")
            }
        }
    }
}

/// A parse failure at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct FormatError {
    /// Offset from the start of the input.
    pub offset: usize,
    /// What was wrong.
    pub kind: FormatErrorKind,
}

/// The nom error type of the parsers: the remaining input and the reason.
#[derive(Debug)]
pub(crate) struct PErr<'a> {
    pub rest: &'a [u8],
    pub kind: FormatErrorKind,
}

impl<'a> nom::error::ParseError<&'a [u8]> for PErr<'a> {
    fn from_error_kind(input: &'a [u8], kind: nom::error::ErrorKind) -> Self {
        let kind = match kind {
            nom::error::ErrorKind::Eof | nom::error::ErrorKind::Complete => {
                FormatErrorKind::Truncated
            }
            _ => FormatErrorKind::Truncated,
        };
        PErr { rest: input, kind }
    }
    fn append(_: &'a [u8], _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

pub(crate) type PResult<'a, T> = IResult<&'a [u8], T, PErr<'a>>;

/// Fails at `rest` with `kind`.
pub(crate) fn fail<T>(rest: &[u8], kind: FormatErrorKind) -> PResult<'_, T> {
    Err(nom::Err::Failure(PErr { rest, kind }))
}

/// Converts a nom result over `whole` into a positioned error.
pub(crate) fn finish<T>(whole: &[u8], r: PResult<'_, T>) -> Result<T, FormatError> {
    match r {
        Ok(([], v)) => Ok(v),
        Ok((rest, _)) => Err(FormatError {
            offset: whole.len() - rest.len(),
            kind: FormatErrorKind::TrailingBytes,
        }),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(FormatError {
            offset: whole.len() - e.rest.len(),
            kind: e.kind,
        }),
        Err(nom::Err::Incomplete(_)) => Err(FormatError {
            offset: whole.len(),
            kind: FormatErrorKind::Truncated,
        }),
    }
}

/// Parses a whole script with `parser`, refusing inputs above [`super::MAX_SCRIPT_LEN`]
/// before looking at them.
pub(crate) fn finish_script<'a, T>(
    whole: &'a [u8],
    parser: impl FnOnce(&'a [u8]) -> PResult<'a, T>,
) -> Result<T, FormatError> {
    if whole.len() > super::MAX_SCRIPT_LEN {
        return Err(FormatError {
            offset: 0,
            kind: FormatErrorKind::TooLarge {
                what: "script length",
                value: whole.len(),
                limit: super::MAX_SCRIPT_LEN,
            },
        });
    }
    finish(whole, parser(whole))
}

pub(crate) fn u8_(i: &[u8]) -> PResult<'_, u8> {
    be_u8(i)
}
pub(crate) fn u16_(i: &[u8]) -> PResult<'_, u16> {
    be_u16(i)
}
pub(crate) fn u32_(i: &[u8]) -> PResult<'_, u32> {
    be_u32(i)
}
pub(crate) fn u64_(i: &[u8]) -> PResult<'_, u64> {
    nom::number::complete::be_u64(i)
}

/// Takes `n` bytes or fails as truncated.
pub(crate) fn take_n(i: &[u8], n: usize) -> PResult<'_, &[u8]> {
    if i.len() < n {
        return fail(i, FormatErrorKind::Truncated);
    }
    Ok((&i[n..], &i[..n]))
}

/// Expects `magic` at the front.
pub(crate) fn magic<'a>(i: &'a [u8], magic: &[u8]) -> PResult<'a, ()> {
    match i.strip_prefix(magic) {
        Some(rest) => Ok((rest, ())),
        None => fail(i, FormatErrorKind::BadMagic),
    }
}

/// A count, checked against `limit`.
pub(crate) fn count16<'a>(i: &'a [u8], what: &'static str, limit: usize) -> PResult<'a, usize> {
    let (rest, n) = u16_(i)?;
    let n = usize::from(n);
    if n > limit {
        return fail(
            i,
            FormatErrorKind::TooLarge {
                what,
                value: n,
                limit,
            },
        );
    }
    Ok((rest, n))
}

/// A name: length byte and ASCII identifier.
pub(crate) fn name(i: &[u8]) -> PResult<'_, String> {
    let (rest, s) = name_str(i)?;
    Ok((rest, String::from(s)))
}

/// A length-prefixed (u8) identifier, borrowed from the input.
pub(crate) fn name_str(i: &[u8]) -> PResult<'_, &str> {
    let (rest, len) = u8_(i)?;
    let (rest, bytes) = take_n(rest, usize::from(len))?;
    match core::str::from_utf8(bytes) {
        Ok(s) if super::is_valid_name(s) => Ok((rest, s)),
        _ => fail(i, FormatErrorKind::BadName),
    }
}

/// A length-prefixed (u16) byte string of at most `limit` bytes.
pub(crate) fn bytes16<'a>(i: &'a [u8], limit: usize) -> PResult<'a, &'a [u8]> {
    let (rest, len) = u16_(i)?;
    let len = usize::from(len);
    if len > limit {
        return fail(
            i,
            FormatErrorKind::TooLarge {
                what: "byte string length",
                value: len,
                limit,
            },
        );
    }
    take_n(rest, len)
}

pub(crate) fn put_name(out: &mut alloc::vec::Vec<u8>, name: &str) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

pub(crate) fn put_bytes16(out: &mut alloc::vec::Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}
