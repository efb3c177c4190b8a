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
//! # What the card company can tell from a receipt
//!
//! - **which program ran**: SM3 of the command script's bytes ([`Receipt::command_sm3`]);
//! - **which transaction it was**: the sealed data script's identity — the issuer key
//!   that sealed it and its sequence number ([`Receipt::data`]); `None` for plain
//!   (unsealed) data scripts and for card queries, whose data script the reader built;
//! - **whether it counts**: [`Mode::Production`] only when the command script (and the
//!   data script, if any came from the issuer) was sealed and verified; anything run
//!   with plain scripts says [`Mode::Development`] in a signed field and is never
//!   settled;
//! - **whether it is a card query**: [`Mode::Production`] with `data: None`
//!   ([`Receipt::is_query`]) is the receipt of the city's sealed query script run by
//!   [`Reader::query`](crate::reader::Reader::query) — the reader's signed request for a
//!   bundle (DESIGN §7). It names no bundle and carries no TAC: **settlement must refuse
//!   it** (check [`Receipt::data`] is `Some` and matches an issued bundle);
//! - **whether it is an offline terminal purchase**: [`Mode::Terminal`] (always with
//!   `data: None`) is the receipt of the city's sealed terminal program run by
//!   [`Reader::prepare_terminal`](crate::reader::Reader::prepare_terminal) with the
//!   amount keyed in at the terminal: the card company settles it on the card's TAC,
//!   once per terminal sequence number (docs/psam.md "Offline purchases");
//! - **which card**: read from the card by the script (CPU: the application serial
//!   number of EF 0015; M1: the UID), whatever the transport.
//!
//! # Canonical encoding, version 2
//!
//! Read and written through [`crate::codec`]; big-endian integers; every length is
//! checked against the limits below. Version 1 receipts are refused as unsupported.
//!
//! ```text
//! "CVRC" | version u8 = 2 | mode u8 (0 production, 1 development, 2 terminal)
//! | city u32 | script id u32 | script version u16 | command SM3 [32]
//! | data: 0 (plain) | 1 + issuer key id [8] + seq u64
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
//! give equal bytes. The JSON view has exactly one text per receipt too, and
//! [`Receipt::from_json`] accepts only that text (see its docs).

use alloc::string::String;
use alloc::vec::Vec;

use rand_core::CryptoRng;

use crate::codec::{Codec, CodecError, CodecErrorKind, Reader, Writer};

use crate::crypto::sm2::{Sm2Error, Sm2PrivateKey, Sm2PublicKey};

/// Magic bytes of the canonical encoding.
pub const MAGIC: [u8; 4] = *b"CVRC";
/// The receipt format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 2;
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

/// Whether a receipt can be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Both scripts were sealed by a trusted issuer and opened by this reader — or, with
    /// no data identity, a card query sealed as one ([`Receipt::is_query`]).
    Production,
    /// Plain (unsealed) scripts ran: authoring and tests; never settled.
    Development,
    /// The card company's sealed offline terminal program ran, with the data the reader
    /// built (the amount keyed in at the terminal, its clock); no data identity.
    Terminal,
}

impl Mode {
    /// `production` / `development`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Production => "production",
            Mode::Development => "development",
            Mode::Terminal => "terminal",
        }
    }
}

/// The sealed data script a receipt's transaction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataIdentity {
    /// Key id of the issuer key that sealed it.
    pub issuer_key_id: [u8; 8],
    /// Its sequence number (unique per issuer, city and reader).
    pub seq: u64,
}

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

/// `committed`, `failed 0xCODE: reason`, `unknown: reason` (one line for people and logs).
impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Outcome::Committed => f.write_str("committed"),
            Outcome::Failed { code, reason } => write!(f, "failed 0x{code:02X}: {reason}"),
            Outcome::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
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
    /// Format version (2).
    pub format_version: u8,
    /// Production (sealed scripts) or development (plain scripts).
    pub mode: Mode,
    /// City / issuer id.
    pub city: u32,
    /// Command script id.
    pub script_id: u32,
    /// Command script version.
    pub script_version: u16,
    /// SM3 of the command script's bytes (the program that ran).
    pub command_sm3: [u8; 32],
    /// The sealed data script's identity (`None`: a plain data script, or a card query
    /// whose data script the reader built — see [`Receipt::is_query`]).
    pub data: Option<DataIdentity>,
    /// The reader that ran it.
    pub reader_id: String,
    /// The card, as the card itself reports it: application serial number (CPU) or UID
    /// (M1); empty when the script read neither.
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
    /// Malformed canonical bytes: which field, at which offset, what is wrong.
    #[error("receipt {0}")]
    Codec(#[from] CodecError),
    /// A value outside the canonical encoding's limits (when encoding).
    #[error("receipt `{field}` length {len} outside 0..={max}")]
    Length {
        /// Which field.
        field: &'static str,
        /// The length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Two output fields with the same name.
    #[error("duplicate receipt field `{0}`")]
    DuplicateField(String),
    /// A format version this build does not read.
    #[error("unsupported receipt version {0}")]
    UnsupportedVersion(u8),
    /// The receipt carries no signature.
    #[error("receipt is not signed")]
    Unsigned,
    /// The signature does not verify under the given reader key.
    #[error("receipt signature does not verify")]
    BadSignature,
    /// A development receipt where a production one is required.
    #[error("development receipt (plain scripts ran): not valid for settlement")]
    Development,
    /// Signing failed.
    #[error("cannot sign receipt: {0}")]
    Crypto(#[from] Sm2Error),
    /// The JSON form is malformed or not canonical (std builds).
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
            mode: Mode::Development,
            city,
            script_id,
            script_version,
            command_sm3: [0; 32],
            data: None,
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

    /// Whether this is the receipt of a sealed card query ([`Mode::Production`], no data
    /// script from the issuer): a signed request, never a transaction to settle.
    pub fn is_query(&self) -> bool {
        self.mode == Mode::Production && self.data.is_none()
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
        let mut w = Writer::with_capacity(192 + self.fields.len() * 16);
        self.write_signed_part(&mut w);
        Ok(w.into_vec())
    }

    fn write_signed_part(&self, w: &mut Writer) {
        w.put(&MAGIC)
            .u8(self.format_version)
            .u8(match self.mode {
                Mode::Production => 0,
                Mode::Development => 1,
                Mode::Terminal => 2,
            })
            .u32(self.city)
            .u32(self.script_id)
            .u16(self.script_version)
            .put(&self.command_sm3);
        match &self.data {
            None => w.u8(0),
            Some(d) => w.u8(1).put(&d.issuer_key_id).u64(d.seq),
        };
        w.bytes(1, self.reader_id.as_bytes())
            .bytes(1, &self.card_id);
        match &self.outcome {
            Outcome::Committed => w.u8(0),
            Outcome::Failed { code, reason } => w.u8(1).u16(*code).bytes(2, reason.as_bytes()),
            Outcome::Unknown { reason } => w.u8(2).bytes(2, reason.as_bytes()),
        };
        w.u16(self.fields.len() as u16);
        for (name, value) in &self.fields {
            w.bytes(1, name.as_bytes());
            match value {
                FieldValue::Int(v) => w.u8(0).u64(*v),
                FieldValue::Bytes(b) => w.u8(1).bytes(2, b),
            };
        }
        w.u32(self.apdu_count);
        match self.air_time_us {
            None => w.u8(0),
            Some(t) => w.u8(1).u64(t),
        };
        w.put(&self.transcript_sm3);
    }

    /// The full canonical encoding, signature included.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ReceiptError> {
        self.validate()?;
        Ok(self.to_vec())
    }

    /// Parses the canonical encoding (rejecting anything non-canonical).
    pub fn from_bytes(input: &[u8]) -> Result<Self, ReceiptError> {
        Ok(Self::from_slice(input)?)
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

    /// Verifies the signature under the reader's public key **and** that the receipt is a
    /// production one (sealed scripts): [`Mode::Production`] or [`Mode::Terminal`]. A
    /// sealed card query passes too: settlement must also require [`Receipt::data`] (see
    /// [`Receipt::is_query`]) for a bundle, and `Mode::Terminal` for an offline purchase.
    pub fn verify_production(&self, reader_pub: &Sm2PublicKey) -> Result<(), ReceiptError> {
        self.verify(reader_pub)?;
        match self.mode {
            Mode::Production | Mode::Terminal => Ok(()),
            Mode::Development => Err(ReceiptError::Development),
        }
    }

    /// Verifies the signature under the reader's public key (either mode).
    pub fn verify(&self, reader_pub: &Sm2PublicKey) -> Result<(), ReceiptError> {
        let sig = self.signature.as_ref().ok_or(ReceiptError::Unsigned)?;
        let bytes = self.signed_bytes()?;
        reader_pub
            .verify(&bytes, sig)
            .map_err(|_| ReceiptError::BadSignature)
    }
}

impl Codec for Receipt {
    fn write(&self, w: &mut Writer) {
        self.write_signed_part(w);
        match &self.signature {
            None => w.u8(0),
            Some(s) => w.u8(1).put(s),
        };
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        fn tag(r: &mut Reader<'_>, field: &'static str, max: u8) -> Result<u8, CodecError> {
            let at = r.position();
            let t = r.u8(field)?;
            if t > max {
                return Err(CodecError {
                    at,
                    field,
                    kind: CodecErrorKind::BadTag(t),
                });
            }
            Ok(t)
        }
        r.magic(&MAGIC)?;
        let format_version = r.version(FORMAT_VERSION)?;
        let mode = match tag(r, "mode", 2)? {
            0 => Mode::Production,
            1 => Mode::Development,
            _ => Mode::Terminal,
        };
        let city = r.u32("city")?;
        let script_id = r.u32("script id")?;
        let script_version = r.u16("script version")?;
        let command_sm3 = r.array("command sm3")?;
        let data = if r.present("data")? {
            Some(DataIdentity {
                issuer_key_id: r.array("issuer key id")?,
                seq: r.u64("data seq")?,
            })
        } else {
            None
        };
        let reader_id = r.str("reader id", 1, 1, MAX_READER_ID)?;
        let card_id = r.bytes("card id", 1, 0, MAX_CARD_ID)?.to_vec();
        let outcome = match tag(r, "outcome", 2)? {
            0 => Outcome::Committed,
            1 => {
                let code = r.u16("failure code")?;
                let reason = r.str("reason", 2, 0, MAX_REASON)?;
                Outcome::Failed { code, reason }
            }
            _ => Outcome::Unknown {
                reason: r.str("reason", 2, 0, MAX_REASON)?,
            },
        };
        let at = r.position();
        let count = usize::from(r.u16("field count")?);
        if count > MAX_FIELDS {
            return Err(CodecError {
                at,
                field: "field count",
                kind: CodecErrorKind::Length {
                    len: count,
                    min: 0,
                    max: MAX_FIELDS,
                },
            });
        }
        let mut fields: Vec<(String, FieldValue)> = Vec::with_capacity(count);
        for _ in 0..count {
            let at = r.position();
            let name = r.str("field name", 1, 1, MAX_FIELD_NAME)?;
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(CodecError {
                    at,
                    field: "field name",
                    kind: CodecErrorKind::Invalid("duplicate field name"),
                });
            }
            let value = match tag(r, "field type", 1)? {
                0 => FieldValue::Int(r.u64("field value")?),
                _ => FieldValue::Bytes(r.bytes("field value", 2, 0, MAX_FIELD_BYTES)?.to_vec()),
            };
            fields.push((name, value));
        }
        let apdu_count = r.u32("apdu count")?;
        let air_time_us = if r.present("air time")? {
            Some(r.u64("air time")?)
        } else {
            None
        };
        let transcript_sm3 = r.array("transcript sm3")?;
        let signature = if r.present("signature")? {
            Some(r.array("signature")?)
        } else {
            None
        };
        Ok(Receipt {
            format_version,
            mode,
            city,
            script_id,
            script_version,
            command_sm3,
            data,
            reader_id,
            card_id,
            outcome,
            fields,
            apdu_count,
            air_time_us,
            transcript_sm3,
            signature,
        })
    }
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
            m.insert("mode".into(), self.mode.name().into());
            m.insert("city".into(), self.city.into());
            m.insert("script_id".into(), self.script_id.into());
            m.insert("script_version".into(), self.script_version.into());
            m.insert("command_sm3".into(), hex(&self.command_sm3).into());
            let data = match &self.data {
                None => Value::Null,
                Some(d) => {
                    let mut o = Map::new();
                    o.insert("issuer_key_id".into(), hex(&d.issuer_key_id).into());
                    o.insert("seq".into(), d.seq.into());
                    Value::Object(o)
                }
            };
            m.insert("data".into(), data);
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

        /// Parses the JSON view, accepting **only its canonical text**: exactly what
        /// [`to_json`](Self::to_json) writes for the receipt (one trailing newline
        /// allowed). A duplicate key, an unknown or missing field, another key order,
        /// `+1`, `1.0`, `1e0`, lower-case hex or a `\u` escape is refused with the line
        /// and column of the first difference, so what a person (or a first-key-wins
        /// parser) reads is exactly what the signature covers.
        pub fn from_json(text: &str) -> Result<Self, ReceiptError> {
            let v: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
            let r = Self::from_json_value(&v)?;
            let canonical = r.to_json();
            let body = text.strip_suffix('\n').unwrap_or(text);
            if body != canonical {
                let at = body
                    .bytes()
                    .zip(canonical.bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(body.len().min(canonical.len()));
                let mut cut = at;
                while !body.is_char_boundary(cut) {
                    cut -= 1;
                }
                let before = &body[..cut];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                return Err(err(format!(
                    "not in canonical form at line {line} column {col} (duplicate or unknown keys, key order, number or hex spelling, escapes): refusing to read values that might not be the signed ones"
                )));
            }
            Ok(r)
        }

        /// Parses a `serde_json::Value` (see [`from_json`](Self::from_json)).
        pub fn from_json_value(v: &Value) -> Result<Self, ReceiptError> {
            let m = v.as_object().ok_or_else(|| err("not a JSON object"))?;
            let outcome_name = string(m, "outcome")?;
            let mut allowed = vec![
                "format",
                "mode",
                "city",
                "script_id",
                "script_version",
                "command_sm3",
                "data",
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
            let mode = match string(m, "mode")? {
                "production" => Mode::Production,
                "development" => Mode::Development,
                "terminal" => Mode::Terminal,
                other => return Err(err(format!("unknown mode `{other}`"))),
            };
            let data = match get(m, "data")? {
                Value::Null => None,
                Value::Object(d) => {
                    if let Some(k) = d.keys().find(|k| *k != "issuer_key_id" && *k != "seq") {
                        return Err(err(format!("unknown key `data.{k}`")));
                    }
                    Some(DataIdentity {
                        issuer_key_id: fixed::<8>(string(d, "issuer_key_id")?, "issuer_key_id")?,
                        seq: uint(d, "seq", u64::MAX)?,
                    })
                }
                _ => return Err(err("`data` must be an object or null")),
            };
            let r = Receipt {
                format_version: uint(m, "format", u8::MAX.into())? as u8,
                mode,
                city: uint(m, "city", u32::MAX.into())? as u32,
                script_id: uint(m, "script_id", u32::MAX.into())? as u32,
                script_version: uint(m, "script_version", u16::MAX.into())? as u16,
                command_sm3: fixed::<32>(string(m, "command_sm3")?, "command_sm3")?,
                data,
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
            (
                any::<bool>(),
                any::<[u8; 32]>(),
                any::<Option<([u8; 8], u64)>>(),
            ),
        )
            .prop_map(|(ids, card_id, outcome, fields, tail, sig, m)| Receipt {
                format_version: FORMAT_VERSION,
                mode: if m.0 {
                    Mode::Production
                } else {
                    Mode::Development
                },
                command_sm3: m.1,
                data: m
                    .2
                    .map(|(issuer_key_id, seq)| DataIdentity { issuer_key_id, seq }),
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

    fn codec_kind(r: Result<Receipt, ReceiptError>) -> (&'static str, CodecErrorKind) {
        match r {
            Err(ReceiptError::Codec(e)) => (e.field, e.kind),
            other => panic!("expected a codec error, got {other:?}"),
        }
    }

    #[test]
    fn typed_errors() {
        let good = sample().to_bytes().unwrap();
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(
            codec_kind(Receipt::from_bytes(&b)).1,
            CodecErrorKind::BadMagic
        );
        let mut b = good.clone();
        b[4] = 1;
        assert_eq!(
            codec_kind(Receipt::from_bytes(&b)).1,
            CodecErrorKind::UnsupportedVersion(1)
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            codec_kind(Receipt::from_bytes(&b)).1,
            CodecErrorKind::TrailingBytes(1)
        );
        assert!(matches!(
            codec_kind(Receipt::from_bytes(&good[..good.len() - 1])),
            ("signature", CodecErrorKind::Truncated { .. })
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
            Receipt::from_json("{\"format\": 2}"),
            Err(ReceiptError::Json(_))
        ));
        let mut v = sample().to_json_value();
        v.as_object_mut().unwrap().insert("extra".into(), 1.into());
        assert!(matches!(
            Receipt::from_json_value(&v),
            Err(ReceiptError::Json(_))
        ));
    }

    /// DESIGN §4 invariant 10, as the attack: a signed receipt's JSON edited so that a
    /// first-key-wins reader (or a person) sees values that were never signed, while a
    /// last-key-wins parser still sees the signed ones. Every such text is refused.
    #[test]
    fn only_the_canonical_json_text_is_accepted() {
        let mut rng = TestRng(21);
        let key = Sm2PrivateKey::generate(&mut rng);
        let mut r = sample();
        r.outcome = Outcome::Committed;
        r.sign(&key, &mut rng).unwrap();
        let json = r.to_json();
        Receipt::from_json(&json)
            .unwrap()
            .verify(key.public_key())
            .unwrap();
        Receipt::from_json(&(json.clone() + "\n")).unwrap();
        let attacks = [
            // A duplicate key placed first: a first-key-wins reader sees "failed".
            json.replacen(
                "\"outcome\": \"committed\"",
                "\"outcome\": \"failed\",\n  \"outcome\": \"committed\"",
                1,
            ),
            json.replacen(
                "\"amount\": 10000",
                "\"amount\": 99999,\n    \"amount\": 10000",
                1,
            ),
            // Non-canonical spellings of the same values.
            json.replacen("\"amount\": 10000", "\"amount\": 1e4", 1),
            json.replacen("\"amount\": 10000", "\"amount\": 10000.0", 1),
            json.replacen("\"apdu_count\": 1", "\"apdu_count\": +1", 1),
            json.replacen("A1B2C3D4", "a1b2c3d4", 1),
            json.replacen("\"committed\"", "\"\\u0063ommitted\"", 1),
            // An unknown field, and a reordered one.
            json.replacen("{\n", "{\n  \"note\": \"refunded\",\n", 1),
            json.replacen(
                "  \"mode\": \"development\",\n  \"city\": 731,",
                "  \"city\": 731,\n  \"mode\": \"development\",",
                1,
            ),
            // Whitespace games.
            json.replace("\n", "\r\n"),
            format!(" {json}"),
        ];
        for (i, bad) in attacks.iter().enumerate() {
            assert_ne!(bad, &json, "attack {i} did not change the text");
            assert!(
                matches!(Receipt::from_json(bad), Err(ReceiptError::Json(_))),
                "attack {i} accepted: {bad}"
            );
        }
    }

    /// A development receipt verifies as signed but never as a production receipt.
    #[test]
    fn development_receipts_never_pass_as_production() {
        let mut rng = TestRng(22);
        let key = Sm2PrivateKey::generate(&mut rng);
        let mut r = sample();
        r.sign(&key, &mut rng).unwrap();
        r.verify(key.public_key()).unwrap();
        assert_eq!(
            r.verify_production(key.public_key()),
            Err(ReceiptError::Development)
        );
        // Relabelling it production breaks the signature (and needs a data identity).
        let mut p = r.clone();
        p.mode = Mode::Production;
        p.data = Some(DataIdentity {
            issuer_key_id: [1; 8],
            seq: 9,
        });
        assert_eq!(
            p.verify_production(key.public_key()),
            Err(ReceiptError::BadSignature)
        );
        p.sign(&key, &mut rng).unwrap();
        p.verify_production(key.public_key()).unwrap();
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
