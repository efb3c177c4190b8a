//! The binary sealed-envelope format, version 2 (read and written through
//! [`crate::codec`], so every error names its field and byte offset).
//!
//! All integers are big endian. Every length is checked; nothing may follow the
//! signature. Version 1 envelopes (no binding, no issue time) are refused with
//! [`CodecErrorKind::UnsupportedVersion`].
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `CVSE` |
//! | 4 | 1 | format version = 2 |
//! | 5 | 1 | kind: 1 = command script, 2 = data script |
//! | 6 | 4 | city / issuer id |
//! | 10 | 4 | script id |
//! | 14 | 2 | script version |
//! | 16 | 8 | sequence number |
//! | 24 | 8 | issued, unix seconds |
//! | 32 | 8 | expiry, unix seconds (valid while `now < expires`) |
//! | 40 | 32 | binding: SM3 of the command script (`.cvm` bytes) — of the payload itself for a command script, of the command script it may run with for a data script |
//! | 72 | 8 | issuer key id (first 8 bytes of SM3 of the issuer's uncompressed public key) |
//! | 80 | 8 | reader key id (same, of the reader's public key) |
//! | 88 | 1 | reader id length n, 1..=64 |
//! | 89 | n | reader id, UTF-8 |
//! | | 113 | SM2 ciphertext (C1‖C3‖C2) of the 16-byte SM4 content key, to the reader's key |
//! | | 16 | SM4-CTR initial counter block (random) |
//! | | 4 | payload ciphertext length m ≤ [`MAX_PAYLOAD`] |
//! | | m | SM4-CTR ciphertext of the script |
//! | | 32 | HMAC-SM3 tag over every byte before it |
//! | | 64 | issuer SM2 signature `r ‖ s` over every byte before it |

use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::{Codec, CodecError, CodecErrorKind, Reader, Writer};
use crate::crypto::sm2::SIGNATURE_LEN;

/// The four magic bytes that start every sealed envelope.
pub const MAGIC: [u8; 4] = *b"CVSE";
/// The envelope format version this module reads and writes.
pub const FORMAT_VERSION: u8 = 2;
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
/// Bytes before the reader id.
pub const HEADER_LEN: usize = 89;
/// Bytes an envelope adds around a reader id of length 0 and an empty payload.
pub const FIXED_OVERHEAD: usize =
    HEADER_LEN + WRAPPED_KEY_LEN + NONCE_LEN + 4 + TAG_LEN + SIGNATURE_LEN;

/// What a sealed payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScriptKind {
    /// A command script (`.cvm`): bytecode, cacheable per city/script/version.
    Command,
    /// A data script (`.cvd`): one transaction's amounts and keys; never cached.
    Data,
    /// A card query script (`.cvm`): bytecode like a command script, sealed to run only
    /// as the reader's card query ([`crate::reader::Reader::query`]), never as a
    /// transaction's command script, and in a replay stream of its own, so the reader
    /// keeps its query while it runs the card company's bundles.
    Query,
    /// An offline terminal program (`.cvm`): bytecode sealed to run only as the
    /// terminal's PSAM purchase ([`crate::reader::Reader::prepare_terminal`]), with the
    /// data the reader builds (the amount keyed in at the terminal and its clock), many
    /// times while offline; in a replay stream of its own. It may declare no key: the
    /// PSAM holds them (docs/psam.md "Offline purchases").
    Terminal,
}

impl ScriptKind {
    /// The wire code of this kind.
    pub fn code(self) -> u8 {
        match self {
            ScriptKind::Command => 1,
            ScriptKind::Data => 2,
            ScriptKind::Query => 3,
            ScriptKind::Terminal => 4,
        }
    }

    /// The kind for a wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ScriptKind::Command),
            2 => Some(ScriptKind::Data),
            3 => Some(ScriptKind::Query),
            4 => Some(ScriptKind::Terminal),
            _ => None,
        }
    }

    /// Lower-case name (`command` / `data` / `query` / `terminal`).
    pub fn name(self) -> &'static str {
        match self {
            ScriptKind::Command => "command",
            ScriptKind::Data => "data",
            ScriptKind::Query => "query",
            ScriptKind::Terminal => "terminal",
        }
    }

    /// Whether the payload is bytecode (a command, query or terminal script): bound to
    /// its own SM3, cacheable, and re-openable at the same sequence number.
    pub fn is_program(self) -> bool {
        matches!(
            self,
            ScriptKind::Command | ScriptKind::Query | ScriptKind::Terminal
        )
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
    /// When the issuer sealed it, unix seconds (a reader whose clock reads earlier
    /// than an accepted script's issue time has a clock set back).
    pub issued: u64,
    /// Expiry, unix seconds: the envelope opens only while `now < expires`.
    pub expires: u64,
    /// SM3 of the command script: of the payload itself for a command script; for a
    /// data script, of the only command script it may run with.
    pub binding: [u8; 32],
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

/// Why bytes are not a well-formed envelope (or cannot be encoded as one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Malformed bytes: which field, at which offset, and what is wrong.
    #[error("sealed script {0}")]
    Codec(#[from] CodecError),
    /// The reader id is empty or longer than 64 bytes (when sealing).
    #[error("reader id length {0} out of range 1..=64")]
    ReaderIdLength(usize),
    /// The payload is larger than [`MAX_PAYLOAD`] (when sealing).
    #[error("payload length {len} exceeds the maximum {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
}

impl FormatError {
    /// The codec error kind, when the bytes were malformed.
    pub fn kind(&self) -> Option<&CodecErrorKind> {
        match self {
            FormatError::Codec(e) => Some(&e.kind),
            _ => None,
        }
    }
}

impl EnvelopeHeader {
    fn write(&self, w: &mut Writer, issuer_key_id: &[u8; 8], reader_key_id: &[u8; 8]) {
        w.put(&MAGIC)
            .u8(FORMAT_VERSION)
            .u8(self.kind.code())
            .u32(self.city)
            .u32(self.script_id)
            .u16(self.script_version)
            .u64(self.seq)
            .u64(self.issued)
            .u64(self.expires)
            .put(&self.binding)
            .put(issuer_key_id)
            .put(reader_key_id)
            .bytes(1, self.reader_id.as_bytes());
    }
}

impl Codec for SealedEnvelope {
    fn write(&self, w: &mut Writer) {
        self.write_tagged_part(w);
        w.put(&self.tag).put(&self.signature);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        r.magic(&MAGIC)?;
        r.version(FORMAT_VERSION)?;
        let at = r.position();
        let kind = r.u8("kind")?;
        let kind = ScriptKind::from_code(kind).ok_or(CodecError {
            at,
            field: "kind",
            kind: CodecErrorKind::BadTag(kind),
        })?;
        let city = r.u32("city")?;
        let script_id = r.u32("script id")?;
        let script_version = r.u16("script version")?;
        let seq = r.u64("sequence")?;
        let issued = r.u64("issued")?;
        let expires = r.u64("expires")?;
        let binding = r.array("binding")?;
        let issuer_key_id = r.array("issuer key id")?;
        let reader_key_id = r.array("reader key id")?;
        let reader_id = r.str("reader id", 1, 1, MAX_READER_ID)?;
        let wrapped_key = r.array("wrapped key")?;
        let nonce = r.array("nonce")?;
        let ciphertext = r.bytes("payload", 4, 0, MAX_PAYLOAD)?.to_vec();
        let tag = r.array("tag")?;
        let signature = r.array("signature")?;
        Ok(SealedEnvelope {
            header: EnvelopeHeader {
                kind,
                city,
                script_id,
                script_version,
                seq,
                issued,
                expires,
                binding,
                reader_id,
            },
            issuer_key_id,
            reader_key_id,
            wrapped_key,
            nonce,
            ciphertext,
            tag,
            signature,
        })
    }
}

impl SealedEnvelope {
    /// Parses an envelope. Checks structure only; see [`crate::envelope::Opener`] for
    /// the cryptographic checks.
    pub fn parse(input: &[u8]) -> Result<Self, FormatError> {
        Ok(Self::from_slice(input)?)
    }

    /// Encodes every byte up to (not including) the tag: the data the tag covers.
    pub fn write_tagged_part(&self, w: &mut Writer) {
        self.header
            .write(w, &self.issuer_key_id, &self.reader_key_id);
        w.put(&self.wrapped_key)
            .put(&self.nonce)
            .bytes(4, &self.ciphertext);
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
        self.to_vec()
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
                    kind: match (h.0, h.5 % 4) {
                        (true, 0) => ScriptKind::Query,
                        (true, 1) => ScriptKind::Terminal,
                        (true, _) => ScriptKind::Command,
                        _ => ScriptKind::Data,
                    },
                    city: h.1,
                    script_id: h.2,
                    script_version: h.3,
                    seq: h.4,
                    issued: h.5 / 2,
                    expires: h.5,
                    binding: nonce.repeat(2).try_into().unwrap(),
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
                issued: 3,
                expires: 5,
                binding: [8; 32],
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

    fn kind(b: &[u8]) -> (usize, &'static str, CodecErrorKind) {
        match SealedEnvelope::parse(b) {
            Err(FormatError::Codec(e)) => (e.at, e.field, e.kind),
            other => panic!("expected a codec error, got {other:?}"),
        }
    }

    #[test]
    fn typed_format_errors() {
        let good = sample().encode();
        assert_eq!(good.len(), FIXED_OVERHEAD + 2 + 10);
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(kind(&b), (0, "magic", CodecErrorKind::BadMagic));
        let mut b = good.clone();
        b[4] = 1;
        assert_eq!(
            kind(&b),
            (4, "version", CodecErrorKind::UnsupportedVersion(1))
        );
        let mut b = good.clone();
        b[5] = 9;
        assert_eq!(kind(&b), (5, "kind", CodecErrorKind::BadTag(9)));
        let mut b = good.clone();
        b[HEADER_LEN - 1] = 0;
        assert!(matches!(
            kind(&b),
            (88, "reader id", CodecErrorKind::Length { len: 0, .. })
        ));
        let mut b = good.clone();
        b[HEADER_LEN - 1] = 65;
        assert!(matches!(
            kind(&b),
            (88, "reader id", CodecErrorKind::Length { len: 65, .. })
        ));
        let mut b = good.clone();
        b[HEADER_LEN] = 0xFF;
        assert_eq!(kind(&b), (88, "reader id", CodecErrorKind::NotUtf8));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(kind(&b).2, CodecErrorKind::TrailingBytes(1));
        let len_at = HEADER_LEN + 2 + WRAPPED_KEY_LEN + NONCE_LEN;
        let mut b = good.clone();
        b[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            kind(&b),
            (at, "payload", CodecErrorKind::Length { .. }) if at == len_at
        ));
        assert!(matches!(
            kind(&good[..good.len() - 1]),
            (
                _,
                "signature",
                CodecErrorKind::Truncated {
                    needed: 64,
                    available: 63
                }
            )
        ));
    }
}
