//! Transaction receipts, signed by the reader.
//!
//! A [`Receipt`] records what one script run did: which script, which reader and
//! card, the outcome, the script's declared outputs (in declaration order), the APDU
//! count, the modelled air time and the SM3 hash of the APDU transcript
//! ([`TranscriptHasher`]). The reader signs the **canonical binary encoding** (SM2,
//! default distinguishing id); JSON (std builds) is a faithful view of the same
//! values, so JSON → [`Receipt`] → canonical bytes reproduces exactly what was
//! signed.
//!
//! # Canonical encoding, version 1
//!
//! Big-endian integers; every length is checked against the limits below.
//!
//! ```text
//! "CVRC" | version u8 = 1 | city u32 | script id u32 | script version u16
//! | reader id: len u8 (1..=64) + UTF-8
//! | card id: len u8 (0..=32) + bytes
//! | outcome u8: 0 committed
//! |             1 failed:  code u16, reason len u16 (≤ 256) + UTF-8
//! |             2 unknown: reason len u16 (≤ 256) + UTF-8
//! | field count u16 (≤ 64), each: name len u8 (1..=32) + UTF-8, value:
//! |             0 int: u64 | 1 bytes: len u16 (≤ 1024) + bytes   (names unique)
//! | apdu count u32
//! | air time: 0 | 1 + u64 microseconds
//! | transcript SM3 [32]
//! ---- the signature covers every byte above ----
//! | signature: 0 (unsigned) | 1 + r ‖ s [64]
//! ```
//! Nothing may follow. Every value has exactly one encoding, so equal receipts
//! give equal bytes.

use alloc::string::String;
use alloc::vec::Vec;

use nom::Parser;
use nom::bytes::complete::{tag, take};
use nom::number::complete::{be_u8, be_u16, be_u32, be_u64};
use rand_core::CryptoRng;

use crate::crypto::sm2::{Sm2Error, Sm2PrivateKey, Sm2PublicKey};

/// Magic bytes of the canonical encoding.
pub const MAGIC: [u8; 4] = *b"CVRC";
/// The receipt format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Longest reader id.
pub const MAX_READER_ID: usize = 64;
/// Longest card id.
pub const MAX_CARD_ID: usize = 32;
/// Longest outcome reason.
pub const MAX_REASON: usize = 256;
/// Most output fields.
pub const MAX_FIELDS: usize = 64;
/// Longest field name.
pub const MAX_FIELD_NAME: usize = 32;
/// Longest byte-string field value.
pub const MAX_FIELD_BYTES: usize = 1024;

/// How the transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The card committed the transaction.
    Committed,
    /// The script failed before the card committed anything.
    Failed {
        /// The script's failure code.
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
    /// Unknown whether the card committed (tearing); recovery needed.
    Unknown {
        /// What recovery needs to know.
        reason: String,
    },
}

/// An output field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// An integer (amounts, balances, counters).
    Int(u64),
    /// A byte string (MACs, TAC, terminal id, date/time).
    Bytes(Vec<u8>),
}

/// A reader-signed record of one script run (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Format version (1).
    pub format_version: u8,
    /// City / issuer id.
    pub city: u32,
    /// Command script id.
    pub script_id: u32,
    /// Command script version.
    pub script_version: u16,
    /// The reader that ran it.
    pub reader_id: String,
    /// Card UID or application serial number (may be empty).
    pub card_id: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
    /// The script's declared outputs in declaration order (conventional names:
    /// `txn_type`, `amount`, `balance_before`, `balance_after`, `atc`,
    /// `terminal_id`, `datetime`, `mac1`, `mac2`, `tac`, `card_id`).
    pub fields: Vec<(String, FieldValue)>,
    /// APDUs exchanged.
    pub apdu_count: u32,
    /// Modelled air time, microseconds.
    pub air_time_us: Option<u64>,
    /// SM3 over the APDU transcript ([`TranscriptHasher`]).
    pub transcript_sm3: [u8; 32],
    /// Reader signature `r ‖ s` over the canonical bytes before it.
    pub signature: Option<[u8; 64]>,
}

/// A receipt problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The magic bytes are not `CVRC`.
    #[error("not a receipt (bad magic)")]
    BadMagic,
    /// A format version this build does not know.
    #[error("unsupported receipt version {0}")]
    UnsupportedVersion(u8),
    /// Input ends inside a field.
    #[error("receipt truncated in `{0}`")]
    Truncated(&'static str),
    /// A length outside its limits.
    #[error("receipt `{field}` length {len} outside 0..={max}")]
    Length {
        /// Which field.
        field: &'static str,
        /// The length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Text that is not UTF-8.
    #[error("receipt `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    /// An unknown tag byte.
    #[error("receipt `{field}` has unknown tag {tag}")]
    BadTag {
        /// Which field.
        field: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// Two output fields with the same name.
    #[error("duplicate receipt field `{0}`")]
    DuplicateField(String),
    /// Bytes after the end.
    #[error("{0} trailing bytes after the receipt")]
    TrailingBytes(usize),
    /// The receipt carries no signature.
    #[error("receipt is not signed")]
    Unsigned,
    /// The signature does not verify under the given reader key.
    #[error("receipt signature does not verify")]
    BadSignature,
    /// Signing failed.
    #[error("cannot sign receipt: {0}")]
    Crypto(#[from] Sm2Error),
    /// The JSON form is malformed (std builds).
    #[error("receipt JSON: {0}")]
    Json(String),
}

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), ReceiptError> {
    if len < min || len > max {
        Err(ReceiptError::Length { field, len, max })
    } else {
        Ok(())
    }
}

impl Receipt {
    /// A new unsigned receipt with no fields, APDUs or air time.
    pub fn new(
        city: u32,
        script_id: u32,
        script_version: u16,
        reader_id: &str,
        outcome: Outcome,
    ) -> Self {
        Receipt {
            format_version: FORMAT_VERSION,
            city,
            script_id,
            script_version,
            reader_id: reader_id.into(),
            card_id: Vec::new(),
            outcome,
            fields: Vec::new(),
            apdu_count: 0,
            air_time_us: None,
            transcript_sm3: [0; 32],
            signature: None,
        }
    }

    /// The unsigned receipt of a VM run of the script with `header`.
    ///
    /// Byte outputs longer than [`MAX_FIELD_BYTES`] and reasons longer than
    /// [`MAX_REASON`] are cut to fit (the transcript hash still covers every byte);
    /// an empty `reader_id` becomes `"-"`.
    pub fn from_run(
        header: &crate::script::Header,
        reader_id: &str,
        card_id: &[u8],
        report: &crate::vm::RunReport,
        air_time_us: Option<u64>,
    ) -> Self {
        use crate::vm::{Outcome as VmOutcome, OutputRef};
        let reason = |f: &crate::vm::Failure| {
            let mut r = alloc::format!("{f}");
            let mut cut = r.len().min(MAX_REASON);
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            r.truncate(cut);
            r
        };
        let outcome = match &report.outcome {
            VmOutcome::Committed => Outcome::Committed,
            VmOutcome::Failed(f) => Outcome::Failed {
                code: f.code(),
                reason: reason(f),
            },
            VmOutcome::Unknown(f) => Outcome::Unknown { reason: reason(f) },
        };
        let mut reader: String = reader_id.chars().take(MAX_READER_ID).collect();
        while reader.len() > MAX_READER_ID {
            reader.pop();
        }
        if reader.is_empty() {
            reader.push('-');
        }
        let mut r = Receipt::new(
            header.city,
            header.script_id,
            header.version,
            &reader,
            outcome,
        );
        r.card_id = card_id[..card_id.len().min(MAX_CARD_ID)].to_vec();
        r.fields = report
            .outputs
            .iter()
            .take(MAX_FIELDS)
            .map(|(name, v)| {
                let v = match v {
                    OutputRef::Int(i) => FieldValue::Int(i),
                    OutputRef::Bytes(b) => {
                        FieldValue::Bytes(b[..b.len().min(MAX_FIELD_BYTES)].to_vec())
                    }
                };
                (String::from(name), v)
            })
            .collect();
        r.apdu_count = report.apdu_count;
        r.air_time_us = air_time_us;
        r.transcript_sm3 = report.transcript_sm3;
        r
    }

    /// The value of the output field `name`.
    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Checks every limit of the canonical encoding.
    pub fn validate(&self) -> Result<(), ReceiptError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ReceiptError::UnsupportedVersion(self.format_version));
        }
        check_len("reader id", self.reader_id.len(), 1, MAX_READER_ID)?;
        check_len("card id", self.card_id.len(), 0, MAX_CARD_ID)?;
        match &self.outcome {
            Outcome::Committed => {}
            Outcome::Failed { reason, .. } | Outcome::Unknown { reason } => {
                check_len("reason", reason.len(), 0, MAX_REASON)?
            }
        }
        check_len("fields", self.fields.len(), 0, MAX_FIELDS)?;
        for (i, (name, value)) in self.fields.iter().enumerate() {
            check_len("field name", name.len(), 1, MAX_FIELD_NAME)?;
            if let FieldValue::Bytes(b) = value {
                check_len("field value", b.len(), 0, MAX_FIELD_BYTES)?;
            }
            if self.fields[..i].iter().any(|(n, _)| n == name) {
                return Err(ReceiptError::DuplicateField(name.clone()));
            }
        }
        Ok(())
    }

    /// The canonical bytes the signature covers (everything but the signature).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ReceiptError> {
        self.validate()?;
        let mut o = Vec::with_capacity(128 + self.fields.len() * 16);
        o.extend_from_slice(&MAGIC);
        o.push(self.format_version);
        o.extend_from_slice(&self.city.to_be_bytes());
        o.extend_from_slice(&self.script_id.to_be_bytes());
        o.extend_from_slice(&self.script_version.to_be_bytes());
        // Lengths were validated above, so the narrowing casts are exact.
        o.push(self.reader_id.len() as u8);
        o.extend_from_slice(self.reader_id.as_bytes());
        o.push(self.card_id.len() as u8);
        o.extend_from_slice(&self.card_id);
        let reason = |o: &mut Vec<u8>, r: &str| {
            o.extend_from_slice(&(r.len() as u16).to_be_bytes());
            o.extend_from_slice(r.as_bytes());
        };
        match &self.outcome {
            Outcome::Committed => o.push(0),
            Outcome::Failed { code, reason: r } => {
                o.push(1);
                o.extend_from_slice(&code.to_be_bytes());
                reason(&mut o, r);
            }
            Outcome::Unknown { reason: r } => {
                o.push(2);
                reason(&mut o, r);
            }
        }
        o.extend_from_slice(&(self.fields.len() as u16).to_be_bytes());
        for (name, value) in &self.fields {
            o.push(name.len() as u8);
            o.extend_from_slice(name.as_bytes());
            match value {
                FieldValue::Int(v) => {
                    o.push(0);
                    o.extend_from_slice(&v.to_be_bytes());
                }
                FieldValue::Bytes(b) => {
                    o.push(1);
                    o.extend_from_slice(&(b.len() as u16).to_be_bytes());
                    o.extend_from_slice(b);
                }
            }
        }
        o.extend_from_slice(&self.apdu_count.to_be_bytes());
        match self.air_time_us {
            None => o.push(0),
            Some(t) => {
                o.push(1);
                o.extend_from_slice(&t.to_be_bytes());
            }
        }
        o.extend_from_slice(&self.transcript_sm3);
        Ok(o)
    }

    /// The full canonical encoding, signature included.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ReceiptError> {
        let mut o = self.signed_bytes()?;
        match &self.signature {
            None => o.push(0),
            Some(s) => {
                o.push(1);
                o.extend_from_slice(s);
            }
        }
        Ok(o)
    }

    /// Parses the canonical encoding (rejecting anything non-canonical).
    pub fn from_bytes(input: &[u8]) -> Result<Self, ReceiptError> {
        parse(input)
    }

    /// Signs the canonical bytes with the reader's key (replacing any signature).
    pub fn sign<R: CryptoRng>(
        &mut self,
        reader_key: &Sm2PrivateKey,
        rng: &mut R,
    ) -> Result<(), ReceiptError> {
        let bytes = self.signed_bytes()?;
        self.signature = Some(reader_key.sign(rng, &bytes)?);
        Ok(())
    }

    /// Verifies the signature under the reader's public key.
    pub fn verify(&self, reader_pub: &Sm2PublicKey) -> Result<(), ReceiptError> {
        let sig = self.signature.as_ref().ok_or(ReceiptError::Unsigned)?;
        let bytes = self.signed_bytes()?;
        reader_pub
            .verify(&bytes, sig)
            .map_err(|_| ReceiptError::BadSignature)
    }
}

type In<'a> = &'a [u8];

fn field<'a, O, P>(i: In<'a>, name: &'static str, mut p: P) -> Result<(In<'a>, O), ReceiptError>
where
    P: Parser<In<'a>, Output = O, Error = nom::error::Error<In<'a>>>,
{
    p.parse(i).map_err(|_| ReceiptError::Truncated(name))
}

fn bytes_n<'a>(
    i: In<'a>,
    name: &'static str,
    n: usize,
    min: usize,
    max: usize,
) -> Result<(In<'a>, &'a [u8]), ReceiptError> {
    check_len(name, n, min, max)?;
    field(i, name, take(n))
}

fn utf8(b: &[u8], name: &'static str) -> Result<String, ReceiptError> {
    core::str::from_utf8(b)
        .map(String::from)
        .map_err(|_| ReceiptError::NotUtf8(name))
}

fn parse(input: &[u8]) -> Result<Receipt, ReceiptError> {
    let magic: nom::IResult<In<'_>, In<'_>> = tag(&MAGIC[..]).parse(input);
    let (i, _) = magic.map_err(|_| ReceiptError::BadMagic)?;
    let (i, version) = field(i, "version", be_u8)?;
    if version != FORMAT_VERSION {
        return Err(ReceiptError::UnsupportedVersion(version));
    }
    let (i, city) = field(i, "city", be_u32)?;
    let (i, script_id) = field(i, "script id", be_u32)?;
    let (i, script_version) = field(i, "script version", be_u16)?;
    let (i, n) = field(i, "reader id length", be_u8)?;
    let (i, rid) = bytes_n(i, "reader id", n.into(), 1, MAX_READER_ID)?;
    let reader_id = utf8(rid, "reader id")?;
    let (i, n) = field(i, "card id length", be_u8)?;
    let (i, card_id) = bytes_n(i, "card id", n.into(), 0, MAX_CARD_ID)?;
    let (i, otag) = field(i, "outcome", be_u8)?;
    fn reason(i: In<'_>) -> Result<(In<'_>, String), ReceiptError> {
        let (i, n) = field(i, "reason length", be_u16)?;
        let (i, r) = bytes_n(i, "reason", n.into(), 0, MAX_REASON)?;
        Ok((i, utf8(r, "reason")?))
    }
    let (i, outcome) = match otag {
        0 => (i, Outcome::Committed),
        1 => {
            let (i, code) = field(i, "failure code", be_u16)?;
            let (i, reason) = reason(i)?;
            (i, Outcome::Failed { code, reason })
        }
        2 => {
            let (i, reason) = reason(i)?;
            (i, Outcome::Unknown { reason })
        }
        t => {
            return Err(ReceiptError::BadTag {
                field: "outcome",
                tag: t,
            });
        }
    };
    let (mut i, count) = field(i, "field count", be_u16)?;
    check_len("fields", count.into(), 0, MAX_FIELDS)?;
    let mut fields: Vec<(String, FieldValue)> = Vec::with_capacity(count.into());
    for _ in 0..count {
        let (r, n) = field(i, "field name length", be_u8)?;
        let (r, name) = bytes_n(r, "field name", n.into(), 1, MAX_FIELD_NAME)?;
        let name = utf8(name, "field name")?;
        if fields.iter().any(|(n, _)| *n == name) {
            return Err(ReceiptError::DuplicateField(name));
        }
        let (r, vtag) = field(r, "field type", be_u8)?;
        let (r, value) = match vtag {
            0 => {
                let (r, v) = field(r, "field value", be_u64)?;
                (r, FieldValue::Int(v))
            }
            1 => {
                let (r, n) = field(r, "field value length", be_u16)?;
                let (r, b) = bytes_n(r, "field value", n.into(), 0, MAX_FIELD_BYTES)?;
                (r, FieldValue::Bytes(b.to_vec()))
            }
            t => {
                return Err(ReceiptError::BadTag {
                    field: "field type",
                    tag: t,
                });
            }
        };
        fields.push((name, value));
        i = r;
    }
    let (i, apdu_count) = field(i, "apdu count", be_u32)?;
    let (i, atag) = field(i, "air time", be_u8)?;
    let (i, air_time_us) = match atag {
        0 => (i, None),
        1 => {
            let (i, t) = field(i, "air time", be_u64)?;
            (i, Some(t))
        }
        t => {
            return Err(ReceiptError::BadTag {
                field: "air time",
                tag: t,
            });
        }
    };
    let (i, t) = field(i, "transcript sm3", take(32usize))?;
    let mut transcript_sm3 = [0u8; 32];
    transcript_sm3.copy_from_slice(t);
    let (i, stag) = field(i, "signature", be_u8)?;
    let (i, signature) = match stag {
        0 => (i, None),
        1 => {
            let (i, s) = field(i, "signature", take(64usize))?;
            let mut sig = [0u8; 64];
            sig.copy_from_slice(s);
            (i, Some(sig))
        }
        t => {
            return Err(ReceiptError::BadTag {
                field: "signature",
                tag: t,
            });
        }
    };
    if !i.is_empty() {
        return Err(ReceiptError::TrailingBytes(i.len()));
    }
    Ok(Receipt {
        format_version: version,
        city,
        script_id,
        script_version,
        reader_id,
        card_id: card_id.to_vec(),
        outcome,
        fields,
        apdu_count,
        air_time_us,
        transcript_sm3,
        signature,
    })
}

/// The transcript digest receipts carry (defined with the VM that feeds it).
pub use crate::vm::TranscriptHasher;

#[cfg(feature = "std")]
mod json {
    //! The JSON view of a receipt (DESIGN §3): bytes as uppercase hex, fields as an
    //! object in declaration order, every key required and no unknown keys.

    use super::*;
    use serde_json::{Map, Value};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    fn err(msg: impl Into<String>) -> ReceiptError {
        ReceiptError::Json(msg.into())
    }

    fn unhex(s: &str, what: &str) -> Result<Vec<u8>, ReceiptError> {
        let b = s.as_bytes();
        if !b.len().is_multiple_of(2) {
            return Err(err(format!("`{what}`: odd-length hex")));
        }
        b.chunks(2)
            .map(|p| {
                core::str::from_utf8(p)
                    .ok()
                    .and_then(|t| u8::from_str_radix(t, 16).ok())
                    .ok_or_else(|| err(format!("`{what}`: not hex")))
            })
            .collect()
    }

    fn get<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a Value, ReceiptError> {
        m.get(k).ok_or_else(|| err(format!("missing `{k}`")))
    }

    fn uint(m: &Map<String, Value>, k: &str, max: u64) -> Result<u64, ReceiptError> {
        get(m, k)?
            .as_u64()
            .filter(|v| *v <= max)
            .ok_or_else(|| err(format!("`{k}` must be an integer 0..={max}")))
    }

    fn string<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a str, ReceiptError> {
        get(m, k)?
            .as_str()
            .ok_or_else(|| err(format!("`{k}` must be a string")))
    }

    fn fixed<const N: usize>(s: &str, what: &str) -> Result<[u8; N], ReceiptError> {
        unhex(s, what)?
            .try_into()
            .map_err(|_| err(format!("`{what}` must be {N} bytes")))
    }

    impl Receipt {
        /// The JSON view as a `serde_json::Value` (keys in a fixed order).
        pub fn to_json_value(&self) -> Value {
            let mut m = Map::new();
            m.insert("format".into(), self.format_version.into());
            m.insert("city".into(), self.city.into());
            m.insert("script_id".into(), self.script_id.into());
            m.insert("script_version".into(), self.script_version.into());
            m.insert("reader_id".into(), self.reader_id.clone().into());
            m.insert("card_id".into(), hex(&self.card_id).into());
            match &self.outcome {
                Outcome::Committed => {
                    m.insert("outcome".into(), "committed".into());
                }
                Outcome::Failed { code, reason } => {
                    m.insert("outcome".into(), "failed".into());
                    m.insert("failure_code".into(), (*code).into());
                    m.insert("reason".into(), reason.clone().into());
                }
                Outcome::Unknown { reason } => {
                    m.insert("outcome".into(), "unknown".into());
                    m.insert("reason".into(), reason.clone().into());
                }
            }
            let mut f = Map::new();
            for (name, value) in &self.fields {
                let v = match value {
                    FieldValue::Int(i) => Value::from(*i),
                    FieldValue::Bytes(b) => Value::from(hex(b)),
                };
                f.insert(name.clone(), v);
            }
            m.insert("fields".into(), Value::Object(f));
            m.insert("apdu_count".into(), self.apdu_count.into());
            m.insert(
                "air_time_us".into(),
                self.air_time_us.map_or(Value::Null, Value::from),
            );
            m.insert("transcript_sm3".into(), hex(&self.transcript_sm3).into());
            m.insert(
                "signature".into(),
                self.signature.map_or(Value::Null, |s| hex(&s).into()),
            );
            Value::Object(m)
        }

        /// Pretty-printed JSON.
        pub fn to_json(&self) -> String {
            // Serializing a `Value` built from strings and integers cannot fail.
            serde_json::to_string_pretty(&self.to_json_value()).unwrap_or_default()
        }

        /// Parses the JSON view. Strict: every key required, no unknown keys, and
        /// the result must satisfy the canonical-encoding limits.
        pub fn from_json(text: &str) -> Result<Self, ReceiptError> {
            let v: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
            Self::from_json_value(&v)
        }

        /// Parses a `serde_json::Value` (see [`from_json`](Self::from_json)).
        pub fn from_json_value(v: &Value) -> Result<Self, ReceiptError> {
            let m = v.as_object().ok_or_else(|| err("not a JSON object"))?;
            let outcome_name = string(m, "outcome")?;
            let mut allowed = vec![
                "format",
                "city",
                "script_id",
                "script_version",
                "reader_id",
                "card_id",
                "outcome",
                "fields",
                "apdu_count",
                "air_time_us",
                "transcript_sm3",
                "signature",
            ];
            let outcome = match outcome_name {
                "committed" => Outcome::Committed,
                "failed" => {
                    allowed.extend(["failure_code", "reason"]);
                    Outcome::Failed {
                        code: uint(m, "failure_code", u16::MAX.into())? as u16,
                        reason: string(m, "reason")?.into(),
                    }
                }
                "unknown" => {
                    allowed.push("reason");
                    Outcome::Unknown {
                        reason: string(m, "reason")?.into(),
                    }
                }
                other => return Err(err(format!("unknown outcome `{other}`"))),
            };
            if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(err(format!("unknown key `{k}`")));
            }
            let fields_obj = get(m, "fields")?
                .as_object()
                .ok_or_else(|| err("`fields` must be an object"))?;
            let mut fields = Vec::with_capacity(fields_obj.len());
            for (name, value) in fields_obj {
                let value = match value {
                    Value::Number(n) => FieldValue::Int(
                        n.as_u64()
                            .ok_or_else(|| err(format!("field `{name}`: not a u64")))?,
                    ),
                    Value::String(s) => FieldValue::Bytes(unhex(s, name)?),
                    _ => return Err(err(format!("field `{name}`: want integer or hex"))),
                };
                fields.push((name.clone(), value));
            }
            let air_time_us = match get(m, "air_time_us")? {
                Value::Null => None,
                v => Some(v.as_u64().ok_or_else(|| err("`air_time_us`: not a u64"))?),
            };
            let signature = match get(m, "signature")? {
                Value::Null => None,
                Value::String(s) => Some(fixed::<64>(s, "signature")?),
                _ => return Err(err("`signature` must be hex or null")),
            };
            let r = Receipt {
                format_version: uint(m, "format", u8::MAX.into())? as u8,
                city: uint(m, "city", u32::MAX.into())? as u32,
                script_id: uint(m, "script_id", u32::MAX.into())? as u32,
                script_version: uint(m, "script_version", u16::MAX.into())? as u16,
                reader_id: string(m, "reader_id")?.into(),
                card_id: unhex(string(m, "card_id")?, "card_id")?,
                outcome,
                fields,
                apdu_count: uint(m, "apdu_count", u32::MAX.into())? as u32,
                air_time_us,
                transcript_sm3: fixed::<32>(string(m, "transcript_sm3")?, "transcript_sm3")?,
                signature,
            };
            r.validate()?;
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sm2::test_rng::TestRng;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Receipt {
        let mut t = TranscriptHasher::new();
        t.command(&[0x80, 0x5C, 0x00, 0x02, 0x04]);
        t.response(&[0x00, 0x00, 0x27, 0x10], 0x9000);
        let mut r = Receipt::new(731, 7, 2, "reader-0001", Outcome::Committed);
        r.card_id = vec![0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85];
        r.fields = vec![
            ("txn_type".into(), FieldValue::Int(2)),
            ("amount".into(), FieldValue::Int(10_000)),
            ("balance_before".into(), FieldValue::Int(10_000)),
            ("balance_after".into(), FieldValue::Int(20_000)),
            ("atc".into(), FieldValue::Int(1)),
            ("terminal_id".into(), FieldValue::Bytes(vec![0x11; 6])),
            (
                "tac".into(),
                FieldValue::Bytes(vec![0xA1, 0xB2, 0xC3, 0xD4]),
            ),
        ];
        r.apdu_count = 1;
        r.air_time_us = Some(12_345);
        r.transcript_sm3 = t.finalize();
        r
    }

    fn arb_receipt() -> impl Strategy<Value = Receipt> {
        let outcome = prop_oneof![
            Just(Outcome::Committed),
            (any::<u16>(), "\\PC{0,20}")
                .prop_map(|(code, reason)| Outcome::Failed { code, reason }),
            "\\PC{0,20}".prop_map(|reason| Outcome::Unknown { reason }),
        ];
        let value = prop_oneof![
            any::<u64>().prop_map(FieldValue::Int),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(FieldValue::Bytes),
        ];
        (
            (
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                "[a-z0-9\\-]{1,30}",
            ),
            prop::collection::vec(any::<u8>(), 0..=32),
            outcome,
            prop::collection::btree_map("[a-z_]{1,12}", value, 0..8),
            (any::<u32>(), any::<Option<u64>>(), any::<[u8; 32]>()),
            prop::option::of(prop::collection::vec(any::<u8>(), 64)),
        )
            .prop_map(|(ids, card_id, outcome, fields, tail, sig)| Receipt {
                format_version: FORMAT_VERSION,
                city: ids.0,
                script_id: ids.1,
                script_version: ids.2,
                reader_id: ids.3,
                card_id,
                outcome,
                fields: fields.into_iter().collect(),
                apdu_count: tail.0,
                air_time_us: tail.1,
                transcript_sm3: tail.2,
                signature: sig.map(|s| s.try_into().unwrap()),
            })
    }

    proptest! {
        #[test]
        fn binary_round_trip(r in arb_receipt()) {
            let b = r.to_bytes().unwrap();
            let back = Receipt::from_bytes(&b).unwrap();
            prop_assert_eq!(&back, &r);
            prop_assert_eq!(back.to_bytes().unwrap(), b);
        }

        #[test]
        fn json_round_trip(r in arb_receipt()) {
            let back = Receipt::from_json(&r.to_json()).unwrap();
            prop_assert_eq!(back.to_bytes().unwrap(), r.to_bytes().unwrap());
            prop_assert_eq!(back, r);
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Receipt::from_bytes(&b);
        }
    }

    #[test]
    fn sign_verify_and_json_reproduces_signed_bytes() {
        let mut rng = TestRng(20);
        let key = Sm2PrivateKey::generate(&mut rng);
        let mut r = sample();
        assert_eq!(r.verify(key.public_key()), Err(ReceiptError::Unsigned));
        r.sign(&key, &mut rng).unwrap();
        r.verify(key.public_key()).unwrap();
        let json = r.to_json();
        assert!(json.contains("\"tac\": \"A1B2C3D4\""));
        let back = Receipt::from_json(&json).unwrap();
        assert_eq!(back.signed_bytes().unwrap(), r.signed_bytes().unwrap());
        back.verify(key.public_key()).unwrap();
        // Field order is part of what is signed.
        let mut swapped = back.clone();
        swapped.fields.swap(0, 1);
        assert_eq!(
            swapped.verify(key.public_key()),
            Err(ReceiptError::BadSignature)
        );
        let other = Sm2PrivateKey::generate(&mut rng);
        assert_eq!(
            r.verify(other.public_key()),
            Err(ReceiptError::BadSignature)
        );
        // A changed amount in the JSON is caught.
        let tampered = json.replace("\"amount\": 10000", "\"amount\": 10001");
        assert_ne!(tampered, json);
        let t = Receipt::from_json(&tampered).unwrap();
        assert_eq!(t.verify(key.public_key()), Err(ReceiptError::BadSignature));
    }

    #[test]
    fn typed_errors() {
        let good = sample().to_bytes().unwrap();
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(Receipt::from_bytes(&b), Err(ReceiptError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(
            Receipt::from_bytes(&b),
            Err(ReceiptError::UnsupportedVersion(2))
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Receipt::from_bytes(&b), Err(ReceiptError::TrailingBytes(1)));
        assert!(matches!(
            Receipt::from_bytes(&good[..good.len() - 1]),
            Err(ReceiptError::Truncated(_))
        ));
        let mut r = sample();
        r.fields.push(("amount".into(), FieldValue::Int(1)));
        assert_eq!(
            r.to_bytes(),
            Err(ReceiptError::DuplicateField("amount".into()))
        );
        let mut r = sample();
        r.reader_id.clear();
        assert!(matches!(r.to_bytes(), Err(ReceiptError::Length { .. })));
        assert!(matches!(
            Receipt::from_json("{\"format\": 1}"),
            Err(ReceiptError::Json(_))
        ));
        let mut v = sample().to_json_value();
        v.as_object_mut().unwrap().insert("extra".into(), 1.into());
        assert!(matches!(
            Receipt::from_json_value(&v),
            Err(ReceiptError::Json(_))
        ));
    }

    #[test]
    fn transcript_hash_is_framed() {
        // Moving a byte across the command/response boundary changes the hash.
        let mut a = TranscriptHasher::new();
        a.command(&[1, 2, 3]);
        a.response(&[], 0x9000);
        let mut b = TranscriptHasher::new();
        b.command(&[1, 2]);
        b.response(&[3], 0x9000);
        assert_ne!(a.clone().finalize(), b.finalize());
        // And it is SM3 over the documented framing.
        let mut framed = vec![1u8, 0, 0, 0, 3, 1, 2, 3];
        framed.extend_from_slice(&[2, 0, 0, 0, 2, 0x90, 0x00]);
        assert_eq!(a.finalize(), crate::crypto::sm3(&framed));
    }
}
