//! The binary sealed-envelope format, version 1 (parse with nom, symmetric encoder).
//!
//! All integers are big endian. Every length is checked; nothing may follow the
//! signature.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `CVSE` |
//! | 4 | 1 | format version = 1 |
//! | 5 | 1 | kind: 1 = command script, 2 = data script |
//! | 6 | 4 | city / issuer id |
//! | 10 | 4 | script id |
//! | 14 | 2 | script version |
//! | 16 | 8 | sequence number |
//! | 24 | 8 | expiry, unix seconds (valid while `now < expires`) |
//! | 32 | 8 | issuer key id (first 8 bytes of SM3 of the issuer's uncompressed public key) |
//! | 40 | 8 | reader key id (same, of the reader's public key) |
//! | 48 | 1 | reader id length n, 1..=64 |
//! | 49 | n | reader id, UTF-8 |
//! | | 113 | SM2 ciphertext (C1‖C3‖C2) of the 16-byte SM4 content key, to the reader's key |
//! | | 16 | SM4-CTR initial counter block (random) |
//! | | 4 | payload ciphertext length m ≤ [`MAX_PAYLOAD`] |
//! | | m | SM4-CTR ciphertext of the script |
//! | | 32 | HMAC-SM3 tag over every byte before it |
//! | | 64 | issuer SM2 signature `r ‖ s` over every byte before it |

use alloc::string::String;
use alloc::vec::Vec;

use nom::Parser;
use nom::bytes::complete::{tag, take};
use nom::number::complete::{be_u8, be_u16, be_u32, be_u64};

use crate::crypto::sm2::SIGNATURE_LEN;

/// The four magic bytes that start every sealed envelope.
pub const MAGIC: [u8; 4] = *b"CVSE";
/// The envelope format version this module reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Longest reader id, in bytes.
pub const MAX_READER_ID: usize = 64;
/// Largest sealed payload (script) in bytes.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Length of the SM2-encrypted content key (16-byte key + 97 bytes SM2 overhead).
pub const WRAPPED_KEY_LEN: usize = 16 + crate::crypto::sm2::CIPHERTEXT_OVERHEAD;
/// Length of the SM4-CTR initial counter block.
pub const NONCE_LEN: usize = 16;
/// Length of the HMAC-SM3 tag.
pub const TAG_LEN: usize = 32;
/// Bytes an envelope adds around a reader id of length 0 and an empty payload.
pub const FIXED_OVERHEAD: usize = 49 + WRAPPED_KEY_LEN + NONCE_LEN + 4 + TAG_LEN + SIGNATURE_LEN;

/// What a sealed payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScriptKind {
    /// A command script (`.cvm`): bytecode, cacheable per city/script/version.
    Command,
    /// A data script (`.cvd`): one transaction's amounts and keys; never cached.
    Data,
}

impl ScriptKind {
    /// The wire code of this kind.
    pub fn code(self) -> u8 {
        match self {
            ScriptKind::Command => 1,
            ScriptKind::Data => 2,
        }
    }

    /// The kind for a wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ScriptKind::Command),
            2 => Some(ScriptKind::Data),
            _ => None,
        }
    }

    /// Lower-case name (`command` / `data`).
    pub fn name(self) -> &'static str {
        match self {
            ScriptKind::Command => "command",
            ScriptKind::Data => "data",
        }
    }
}

/// The clear-text header the issuer chooses when sealing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Command or data script.
    pub kind: ScriptKind,
    /// City / issuer id.
    pub city: u32,
    /// Script id.
    pub script_id: u32,
    /// Script version.
    pub script_version: u16,
    /// Sequence number (see [`crate::envelope::replay`] for the rule).
    pub seq: u64,
    /// Expiry, unix seconds: the envelope opens only while `now < expires`.
    pub expires: u64,
    /// The reader this is sealed for (1..=64 bytes UTF-8).
    pub reader_id: String,
}

/// A parsed (not yet verified) sealed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// The clear-text header.
    pub header: EnvelopeHeader,
    /// Key id of the issuer key that signed it.
    pub issuer_key_id: [u8; 8],
    /// Key id of the reader key it is encrypted to.
    pub reader_key_id: [u8; 8],
    /// The SM2-encrypted content key.
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
    /// SM4-CTR initial counter block.
    pub nonce: [u8; NONCE_LEN],
    /// The encrypted payload.
    pub ciphertext: Vec<u8>,
    /// HMAC-SM3 tag over all preceding bytes.
    pub tag: [u8; TAG_LEN],
    /// Issuer signature over all preceding bytes.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why bytes are not a well-formed envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The magic bytes are not `CVSE`.
    #[error("not a sealed script (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Unknown script kind code.
    #[error("unknown script kind {0}")]
    BadKind(u8),
    /// The input ends inside a field.
    #[error("envelope truncated in field `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The reader id is empty or longer than 64 bytes.
    #[error("reader id length {0} out of range 1..=64")]
    ReaderIdLength(usize),
    /// The reader id is not UTF-8.
    #[error("reader id is not UTF-8")]
    ReaderIdNotUtf8,
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload length {len} exceeds the maximum {max}")]
    PayloadTooLarge {
        /// Declared length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// Bytes follow the signature.
    #[error("{0} trailing bytes after the signature")]
    TrailingBytes(usize),
}

type In<'a> = &'a [u8];

fn field<'a, O, P>(input: In<'a>, name: &'static str, mut p: P) -> Result<(In<'a>, O), FormatError>
where
    P: Parser<In<'a>, Output = O, Error = nom::error::Error<In<'a>>>,
{
    p.parse(input)
        .map_err(|_| FormatError::Truncated { field: name })
}

fn array<'a, const N: usize>(
    input: In<'a>,
    name: &'static str,
) -> Result<(In<'a>, [u8; N]), FormatError> {
    let (rest, bytes) = field(input, name, take(N))?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok((rest, out))
}

impl SealedEnvelope {
    /// Parses an envelope. Checks structure only; see [`crate::envelope::Opener`] for
    /// the cryptographic checks.
    pub fn parse(input: &[u8]) -> Result<Self, FormatError> {
        let magic: nom::IResult<In<'_>, In<'_>> = tag(&MAGIC[..]).parse(input);
        let (i, _) = magic.map_err(|_| FormatError::BadMagic)?;
        let (i, version) = field(i, "version", be_u8)?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let (i, kind) = field(i, "kind", be_u8)?;
        let kind = ScriptKind::from_code(kind).ok_or(FormatError::BadKind(kind))?;
        let (i, city) = field(i, "city", be_u32)?;
        let (i, script_id) = field(i, "script id", be_u32)?;
        let (i, script_version) = field(i, "script version", be_u16)?;
        let (i, seq) = field(i, "sequence", be_u64)?;
        let (i, expires) = field(i, "expires", be_u64)?;
        let (i, issuer_key_id) = array::<8>(i, "issuer key id")?;
        let (i, reader_key_id) = array::<8>(i, "reader key id")?;
        let (i, id_len) = field(i, "reader id length", be_u8)?;
        let id_len = usize::from(id_len);
        if id_len == 0 || id_len > MAX_READER_ID {
            return Err(FormatError::ReaderIdLength(id_len));
        }
        let (i, id) = field(i, "reader id", take(id_len))?;
        let reader_id = core::str::from_utf8(id)
            .map_err(|_| FormatError::ReaderIdNotUtf8)?
            .into();
        let (i, wrapped_key) = array::<WRAPPED_KEY_LEN>(i, "wrapped key")?;
        let (i, nonce) = array::<NONCE_LEN>(i, "nonce")?;
        let (i, ct_len) = field(i, "payload length", be_u32)?;
        let ct_len = usize::try_from(ct_len).unwrap_or(usize::MAX);
        if ct_len > MAX_PAYLOAD {
            return Err(FormatError::PayloadTooLarge {
                len: ct_len,
                max: MAX_PAYLOAD,
            });
        }
        let (i, ct) = field(i, "payload", take(ct_len))?;
        let (i, tag_bytes) = array::<TAG_LEN>(i, "tag")?;
        let (i, signature) = array::<SIGNATURE_LEN>(i, "signature")?;
        if !i.is_empty() {
            return Err(FormatError::TrailingBytes(i.len()));
        }
        Ok(SealedEnvelope {
            header: EnvelopeHeader {
                kind,
                city,
                script_id,
                script_version,
                seq,
                expires,
                reader_id,
            },
            issuer_key_id,
            reader_key_id,
            wrapped_key,
            nonce,
            ciphertext: ct.to_vec(),
            tag: tag_bytes,
            signature,
        })
    }

    /// Encodes every byte up to (not including) the tag: the data the tag covers.
    pub fn encode_tagged_part(&self, out: &mut Vec<u8>) {
        let h = &self.header;
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(h.kind.code());
        out.extend_from_slice(&h.city.to_be_bytes());
        out.extend_from_slice(&h.script_id.to_be_bytes());
        out.extend_from_slice(&h.script_version.to_be_bytes());
        out.extend_from_slice(&h.seq.to_be_bytes());
        out.extend_from_slice(&h.expires.to_be_bytes());
        out.extend_from_slice(&self.issuer_key_id);
        out.extend_from_slice(&self.reader_key_id);
        // Lengths are validated by `check_lengths` before sealing; clamp defensively.
        let id = h.reader_id.as_bytes();
        let id = &id[..id.len().min(MAX_READER_ID)];
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(&self.nonce);
        let ct = &self.ciphertext[..self.ciphertext.len().min(MAX_PAYLOAD)];
        out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        out.extend_from_slice(ct);
    }

    /// Checks the lengths [`encode`](Self::encode) relies on.
    pub fn check_lengths(&self) -> Result<(), FormatError> {
        let n = self.header.reader_id.len();
        if n == 0 || n > MAX_READER_ID {
            return Err(FormatError::ReaderIdLength(n));
        }
        if self.ciphertext.len() > MAX_PAYLOAD {
            return Err(FormatError::PayloadTooLarge {
                len: self.ciphertext.len(),
                max: MAX_PAYLOAD,
            });
        }
        Ok(())
    }

    /// Encodes the envelope (the exact inverse of [`parse`](Self::parse) for every
    /// value that passes [`check_lengths`](Self::check_lengths)).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            FIXED_OVERHEAD + self.header.reader_id.len() + self.ciphertext.len(),
        );
        self.encode_tagged_part(&mut out);
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&self.signature);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_envelope() -> impl Strategy<Value = SealedEnvelope> {
        (
            (
                prop::bool::ANY,
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u64>(),
                any::<u64>(),
                "[a-zA-Z0-9_\\-é]{1,21}",
            ),
            any::<[u8; 8]>(),
            any::<[u8; 8]>(),
            prop::collection::vec(any::<u8>(), WRAPPED_KEY_LEN),
            any::<[u8; 16]>(),
            prop::collection::vec(any::<u8>(), 0..300),
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 64),
        )
            .prop_map(|(h, ik, rk, wk, nonce, ct, tag, sig)| SealedEnvelope {
                header: EnvelopeHeader {
                    kind: if h.0 {
                        ScriptKind::Command
                    } else {
                        ScriptKind::Data
                    },
                    city: h.1,
                    script_id: h.2,
                    script_version: h.3,
                    seq: h.4,
                    expires: h.5,
                    reader_id: h.6,
                },
                issuer_key_id: ik,
                reader_key_id: rk,
                wrapped_key: wk.try_into().unwrap(),
                nonce,
                ciphertext: ct,
                tag,
                signature: sig.try_into().unwrap(),
            })
    }

    proptest! {
        #[test]
        fn parse_encode_round_trip(env in arb_envelope()) {
            prop_assert!(env.check_lengths().is_ok());
            let bytes = env.encode();
            prop_assert_eq!(SealedEnvelope::parse(&bytes).unwrap(), env);
        }

        #[test]
        fn every_truncation_is_an_error(env in arb_envelope(), cut in 0usize..2000) {
            let bytes = env.encode();
            let cut = cut % bytes.len();
            prop_assert!(SealedEnvelope::parse(&bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = SealedEnvelope::parse(&bytes);
        }
    }

    fn sample() -> SealedEnvelope {
        SealedEnvelope {
            header: EnvelopeHeader {
                kind: ScriptKind::Data,
                city: 731,
                script_id: 2,
                script_version: 3,
                seq: 4,
                expires: 5,
                reader_id: "R1".into(),
            },
            issuer_key_id: [1; 8],
            reader_key_id: [2; 8],
            wrapped_key: [3; WRAPPED_KEY_LEN],
            nonce: [4; 16],
            ciphertext: alloc::vec![5; 10],
            tag: [6; 32],
            signature: [7; 64],
        }
    }

    #[test]
    fn typed_format_errors() {
        let good = sample().encode();
        assert_eq!(good.len(), FIXED_OVERHEAD + 2 + 10);
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(SealedEnvelope::parse(&b), Err(FormatError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(
            SealedEnvelope::parse(&b),
            Err(FormatError::UnsupportedVersion(2))
        );
        let mut b = good.clone();
        b[5] = 9;
        assert_eq!(SealedEnvelope::parse(&b), Err(FormatError::BadKind(9)));
        let mut b = good.clone();
        b[48] = 0;
        assert_eq!(
            SealedEnvelope::parse(&b),
            Err(FormatError::ReaderIdLength(0))
        );
        let mut b = good.clone();
        b[48] = 65;
        assert_eq!(
            SealedEnvelope::parse(&b),
            Err(FormatError::ReaderIdLength(65))
        );
        let mut b = good.clone();
        b[49] = 0xFF;
        assert_eq!(SealedEnvelope::parse(&b), Err(FormatError::ReaderIdNotUtf8));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            SealedEnvelope::parse(&b),
            Err(FormatError::TrailingBytes(1))
        );
        let len_at = 49 + 2 + WRAPPED_KEY_LEN + NONCE_LEN;
        let mut b = good.clone();
        b[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            SealedEnvelope::parse(&b),
            Err(FormatError::PayloadTooLarge { .. })
        ));
        assert_eq!(
            SealedEnvelope::parse(&good[..good.len() - 1]),
            Err(FormatError::Truncated { field: "signature" })
        );
    }
}
