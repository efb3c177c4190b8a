//! One reader and one writer for the binary wire formats (sealed envelope, receipt).
//!
//! Every format reads through [`Reader`], which knows its byte position, so every
//! decoding error says **where** it happened and **which field** was being read
//! ([`CodecError`]); and writes through [`Writer`], the symmetric encoder. A format
//! decodes with [`Codec::read`] and encodes with [`Codec::write`]; `decode(encode(x))
//! == x` is a property test of each format.
//!
//! All integers are big endian. Lengths are read as a prefix of a stated width and
//! checked against the format's bounds *before* any byte is taken, so no input can
//! make a reader allocate more than it holds.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// What went wrong at a position (see [`CodecError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecErrorKind {
    /// The input ended inside the field.
    Truncated {
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A length prefix outside the format's bounds.
    Length {
        /// The length found.
        len: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Text that is not UTF-8.
    NotUtf8,
    /// A tag or code this format does not define.
    BadTag(u8),
    /// Wrong magic bytes: not this format at all.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u8),
    /// Bytes after the end of the value.
    TrailingBytes(usize),
    /// A value the format forbids (the text says why).
    Invalid(&'static str),
}

impl fmt::Display for CodecErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecErrorKind::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} left")
            }
            CodecErrorKind::Length { len, min, max } => {
                write!(f, "length {len} outside {min}..={max}")
            }
            CodecErrorKind::NotUtf8 => f.write_str("not UTF-8"),
            CodecErrorKind::BadTag(t) => write!(f, "unknown tag {t}"),
            CodecErrorKind::BadMagic => f.write_str("bad magic bytes"),
            CodecErrorKind::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            CodecErrorKind::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
            CodecErrorKind::Invalid(why) => f.write_str(why),
        }
    }
}

/// A decoding error: the byte offset, the field being read, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` at byte {at}: {kind}")]
pub struct CodecError {
    /// Byte offset in the input where the field starts.
    pub at: usize,
    /// The field being read.
    pub field: &'static str,
    /// What was wrong.
    pub kind: CodecErrorKind,
}

/// A cursor over input bytes that knows its position.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Every byte consumed so far (e.g. what a trailing signature covers).
    pub fn consumed(&self) -> &'a [u8] {
        &self.buf[..self.pos]
    }

    /// An error of `kind` in `field` at the current position.
    pub fn error(&self, field: &'static str, kind: CodecErrorKind) -> CodecError {
        CodecError {
            at: self.pos,
            field,
            kind,
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], CodecError> {
        let available = self.remaining();
        if n > available {
            return Err(self.error(
                field,
                CodecErrorKind::Truncated {
                    needed: n,
                    available,
                },
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Checks the magic bytes.
    pub fn magic(&mut self, magic: &[u8]) -> Result<(), CodecError> {
        let at = self.pos;
        match self.take("magic", magic.len()) {
            Ok(m) if m == magic => Ok(()),
            _ => Err(CodecError {
                at,
                field: "magic",
                kind: CodecErrorKind::BadMagic,
            }),
        }
    }

    /// A version byte that must equal `expected`.
    pub fn version(&mut self, expected: u8) -> Result<u8, CodecError> {
        let at = self.pos;
        let v = self.u8("version")?;
        if v != expected {
            return Err(CodecError {
                at,
                field: "version",
                kind: CodecErrorKind::UnsupportedVersion(v),
            });
        }
        Ok(v)
    }

    /// Bytes behind a length prefix of `width` bytes (1, 2 or 4), the length in
    /// `min..=max`.
    pub fn bytes(
        &mut self,
        field: &'static str,
        width: usize,
        min: usize,
        max: usize,
    ) -> Result<&'a [u8], CodecError> {
        let at = self.pos;
        let len = match width {
            1 => usize::from(self.u8(field)?),
            2 => usize::from(self.u16(field)?),
            _ => usize::try_from(self.u32(field)?).unwrap_or(usize::MAX),
        };
        if len < min || len > max {
            return Err(CodecError {
                at,
                field,
                kind: CodecErrorKind::Length { len, min, max },
            });
        }
        self.take(field, len)
    }

    /// UTF-8 text behind a length prefix (see [`bytes`](Self::bytes)).
    pub fn str(
        &mut self,
        field: &'static str,
        width: usize,
        min: usize,
        max: usize,
    ) -> Result<String, CodecError> {
        let at = self.pos;
        let b = self.bytes(field, width, min, max)?;
        core::str::from_utf8(b)
            .map(String::from)
            .map_err(|_| CodecError {
                at,
                field,
                kind: CodecErrorKind::NotUtf8,
            })
    }

    /// A presence tag: 0 = absent, 1 = present; anything else is an error.
    pub fn present(&mut self, field: &'static str) -> Result<bool, CodecError> {
        let at = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(CodecError {
                at,
                field,
                kind: CodecErrorKind::BadTag(t),
            }),
        }
    }

    /// Fails unless every byte was consumed.
    pub fn end(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error("end", CodecErrorKind::TrailingBytes(n))),
        }
    }
}

/// The encoder: appends to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    /// Bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The written bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// Raw bytes.
    pub fn put(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// Bytes behind a length prefix of `width` bytes (1, 2 or 4). The caller has
    /// checked the length against the format's bounds; a longer value is cut to the
    /// prefix's range rather than written with a wrong length.
    pub fn bytes(&mut self, width: usize, b: &[u8]) -> &mut Self {
        let max = match width {
            1 => usize::from(u8::MAX),
            2 => usize::from(u16::MAX),
            _ => usize::try_from(u32::MAX).unwrap_or(usize::MAX),
        };
        let b = &b[..b.len().min(max)];
        match width {
            1 => self.u8(b.len() as u8),
            2 => self.u16(b.len() as u16),
            _ => self.u32(b.len() as u32),
        };
        self.put(b)
    }
}

/// A value with one binary encoding.
pub trait Codec: Sized {
    /// Appends the encoding of `self`.
    fn write(&self, w: &mut Writer);
    /// Reads one value from the front of `r`.
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError>;

    /// The encoding as a new vector.
    fn to_vec(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.write(&mut w);
        w.into_vec()
    }

    /// Decodes a whole buffer (nothing may follow the value).
    fn from_slice(b: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(b);
        let v = Self::read(&mut r)?;
        r.end()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_position_and_field() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        let e = r.u16("b").unwrap_err();
        assert_eq!(
            e,
            CodecError {
                at: 2,
                field: "b",
                kind: CodecErrorKind::Truncated {
                    needed: 2,
                    available: 1
                }
            }
        );
        assert_eq!(
            e.to_string(),
            "`b` at byte 2: truncated: needs 2 bytes, 1 left"
        );
    }

    #[test]
    fn length_checked_before_taking() {
        let mut r = Reader::new(&[200, 0]);
        let e = r.bytes("name", 1, 1, 64).unwrap_err();
        assert_eq!(e.at, 0);
        assert_eq!(
            e.kind,
            CodecErrorKind::Length {
                len: 200,
                min: 1,
                max: 64
            }
        );
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            r.bytes("payload", 4, 0, 1 << 20).unwrap_err().kind,
            CodecErrorKind::Length { .. }
        ));
    }

    #[test]
    fn strings_tags_and_end() {
        let mut w = Writer::default();
        w.bytes(1, "é".as_bytes()).u8(1).u8(7);
        let b = w.into_vec();
        let mut r = Reader::new(&b);
        assert_eq!(r.str("s", 1, 0, 8).unwrap(), "é");
        assert!(r.present("p").unwrap());
        assert_eq!(r.end().unwrap_err().kind, CodecErrorKind::TrailingBytes(1));
        assert_eq!(r.present("q").unwrap_err().kind, CodecErrorKind::BadTag(7));
        let mut r = Reader::new(&[1, 0xFF]);
        assert_eq!(
            r.str("s", 1, 0, 8).unwrap_err().kind,
            CodecErrorKind::NotUtf8
        );
    }
}
