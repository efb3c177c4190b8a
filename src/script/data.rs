//! The data script: the typed, named per-transaction values and keys.

use super::codec::{
    FormatError, FormatErrorKind, PResult, bytes16, count16, fail, finish_script, magic, name,
    put_bytes16, put_name, take_n, u8_, u64_,
};
use super::types::is_valid_bcd_datetime;
use super::{MAX_BYTES_LEN, MAX_ENTRIES, ValueType};
use crate::crypto::{KeyAlg, KeyUsage, SecretKey};
use alloc::string::String;
use alloc::vec::Vec;
use zeroize::Zeroize;

const MAGIC: &[u8; 4] = b"CVMD";
const VERSION: u8 = 1;

/// A data-script value.
#[derive(Debug, Clone)]
pub enum FieldValue {
    /// An unsigned integer.
    Int(u64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A BCD date-time YYYYMMDDhhmmss.
    BcdDateTime([u8; 7]),
    /// A key (its Debug output is redacted).
    Key(SecretKey),
}

impl FieldValue {
    /// Whether this value can bind to an input of type `ty`.
    pub fn fits(&self, ty: &ValueType) -> bool {
        match (self, ty) {
            (FieldValue::Int(v), ValueType::Int { bits }) => *bits >= 64 || *v >> bits == 0,
            (FieldValue::Bytes(_), ValueType::Bytes) => true,
            (FieldValue::Bytes(b), ValueType::BytesN { len }) => b.len() == usize::from(*len),
            (FieldValue::BcdDateTime(_), ValueType::BcdDateTime | ValueType::Bytes) => true,
            (FieldValue::BcdDateTime(_), ValueType::BytesN { len }) => *len == 7,
            (FieldValue::Key(k), ValueType::Key { alg, usage }) => {
                k.alg() == *alg && k.usage() == *usage
            }
            _ => false,
        }
    }

    /// A short description of the value's type, for error messages (never the value).
    pub fn type_name(&self) -> String {
        match self {
            FieldValue::Int(_) => String::from("integer"),
            FieldValue::Bytes(b) => alloc::format!("bytes[{}]", b.len()),
            FieldValue::BcdDateTime(_) => String::from("bcd_datetime"),
            FieldValue::Key(k) => alloc::format!("key({}, {})", k.alg().name(), k.usage().name()),
        }
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FieldValue::Int(a), FieldValue::Int(b)) => a == b,
            (FieldValue::Bytes(a), FieldValue::Bytes(b)) => a == b,
            (FieldValue::BcdDateTime(a), FieldValue::BcdDateTime(b)) => a == b,
            (FieldValue::Key(a), FieldValue::Key(b)) => {
                a.alg() == b.alg()
                    && a.usage() == b.usage()
                    && crate::crypto::ct_eq(a.expose(), b.expose())
            }
            _ => false,
        }
    }
}
impl Eq for FieldValue {}

/// A named field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name (matches a command script's declared input).
    pub name: String,
    /// Value.
    pub value: FieldValue,
}

/// A data script: per-transaction values and keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataScript {
    /// Fields, unique by name.
    pub fields: Vec<Field>,
}

impl DataScript {
    /// The field called `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }

    /// Parses a `.cvd` file.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        finish_script(bytes, parse_data)
    }

    /// Encodes to the canonical `.cvd` bytes. The result holds key bytes: zeroize it
    /// (or seal it) when done.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.fields.len() as u16).to_be_bytes());
        for f in &self.fields {
            put_name(&mut out, &f.name);
            match &f.value {
                FieldValue::Int(v) => {
                    out.push(0x01);
                    out.extend_from_slice(&v.to_be_bytes());
                }
                FieldValue::Bytes(b) => {
                    out.push(0x02);
                    put_bytes16(&mut out, b);
                }
                FieldValue::BcdDateTime(d) => {
                    out.push(0x04);
                    out.extend_from_slice(d);
                }
                FieldValue::Key(k) => {
                    out.extend_from_slice(&[0x05, k.alg().code(), k.usage().code(), k.len() as u8]);
                    out.extend_from_slice(k.expose());
                }
            }
        }
        out
    }
}

fn parse_data(i: &[u8]) -> PResult<'_, DataScript> {
    let (i, ()) = magic(i, MAGIC)?;
    let (rest, version) = u8_(i)?;
    if version != VERSION {
        return fail(i, FormatErrorKind::UnsupportedVersion(version));
    }
    let (mut i, n) = count16(rest, "field count", MAX_ENTRIES)?;
    let mut fields: Vec<Field> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = i;
        let (rest, name) = name(i)?;
        if fields.iter().any(|f| f.name == name) {
            return fail(at, FormatErrorKind::DuplicateName(name));
        }
        let (rest, value) = parse_value(rest)?;
        fields.push(Field { name, value });
        i = rest;
    }
    Ok((i, DataScript { fields }))
}

fn parse_value(i: &[u8]) -> PResult<'_, FieldValue> {
    let (rest, tag) = u8_(i)?;
    match tag {
        0x01 => {
            let (rest, v) = u64_(rest)?;
            Ok((rest, FieldValue::Int(v)))
        }
        0x02 => {
            let (rest, b) = bytes16(rest, MAX_BYTES_LEN)?;
            Ok((rest, FieldValue::Bytes(b.to_vec())))
        }
        0x04 => {
            let (rest2, b) = take_n(rest, 7)?;
            let mut d = [0u8; 7];
            d.copy_from_slice(b);
            if !is_valid_bcd_datetime(&d) {
                return fail(rest, FormatErrorKind::BadBcd);
            }
            Ok((rest2, FieldValue::BcdDateTime(d)))
        }
        0x05 => {
            let (r, a) = u8_(rest)?;
            let Some(alg) = KeyAlg::from_code(a) else {
                return fail(rest, FormatErrorKind::UnknownKeyCode(a));
            };
            let (r2, u) = u8_(r)?;
            let Some(usage) = KeyUsage::from_code(u) else {
                return fail(r, FormatErrorKind::UnknownKeyCode(u));
            };
            if !usage.is_declarable() {
                return fail(r, FormatErrorKind::DerivedKeyUsage(u));
            }
            let (r3, len) = u8_(r2)?;
            let (r4, bytes) = take_n(r3, usize::from(len))?;
            match SecretKey::new(alg, usage, bytes) {
                Ok(k) => Ok((r4, FieldValue::Key(k))),
                Err(_) => fail(r2, FormatErrorKind::BadKey),
            }
        }
        t => fail(i, FormatErrorKind::UnknownTag(t)),
    }
}

/// Encodes `data`, hands the bytes to `f`, then wipes them.
pub fn with_encoded<R>(data: &DataScript, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut bytes = data.encode();
    let r = f(&bytes);
    bytes.zeroize();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<u64>().prop_map(FieldValue::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(FieldValue::Bytes),
            Just(FieldValue::BcdDateTime([
                0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00
            ])),
            (
                1u8..=4,
                proptest::sample::select(
                    KeyUsage::ALL
                        .into_iter()
                        .filter(|u| u.is_declarable())
                        .collect::<Vec<_>>()
                ),
                any::<[u8; 16]>()
            )
                .prop_map(|(a, usage, k)| {
                    let alg = KeyAlg::from_code(a).unwrap();
                    FieldValue::Key(SecretKey::new(alg, usage, &k[..alg.key_len()]).unwrap())
                }),
        ]
    }

    fn any_data() -> impl Strategy<Value = DataScript> {
        proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", any_value(), 0..8).prop_map(|m| {
            DataScript {
                fields: m
                    .into_iter()
                    .map(|(name, value)| Field { name, value })
                    .collect(),
            }
        })
    }

    proptest! {
        #[test]
        fn round_trip(d in any_data()) {
            let bytes = d.encode();
            let back = DataScript::parse(&bytes).unwrap();
            prop_assert_eq!(&back, &d);
            prop_assert_eq!(back.encode(), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if bytes.len() > 5 { bytes[..5].copy_from_slice(b"CVMD\x01"); }
            let _ = DataScript::parse(&bytes);
        }
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let k = SecretKey::new(KeyAlg::Des3, KeyUsage::Load, &[0xA5; 16]).unwrap();
        let d = DataScript {
            fields: alloc::vec![Field {
                name: "dlk".into(),
                value: FieldValue::Key(k)
            }],
        };
        let text = alloc::format!("{d:?}");
        assert!(
            !text.contains("A5") && !text.contains("a5") && !text.contains("165"),
            "{text}"
        );
    }

    #[test]
    fn bad_datetime_and_key_lengths_are_rejected() {
        let mut bytes = b"CVMD\x01\x00\x01\x01t\x04".to_vec();
        bytes.extend_from_slice(&[0x20, 0x26, 0x13, 0x01, 0, 0, 0]);
        assert_eq!(
            DataScript::parse(&bytes).unwrap_err().kind,
            FormatErrorKind::BadBcd
        );
        let mut bytes = b"CVMD\x01\x00\x01\x01k\x05\x02\x01\x08".to_vec();
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(
            DataScript::parse(&bytes).unwrap_err().kind,
            FormatErrorKind::BadKey
        );
    }

    #[test]
    fn retired_and_derived_usage_codes_are_refused() {
        // `CVMD` v1, one field `k`: key, des3, usage code, 16 bytes.
        let with_usage = |u: u8| {
            let mut b = b"CVMD\x01\x00\x01\x01k\x05\x02".to_vec();
            b.extend_from_slice(&[u, 16]);
            b.extend_from_slice(&[0x11; 16]);
            b
        };
        assert!(DataScript::parse(&with_usage(KeyUsage::LoadMaster.code())).is_ok());
        // 4 `master`, 5 `session`, 10 `any` are retired.
        for u in [4, 5, 10] {
            assert_eq!(
                DataScript::parse(&with_usage(u)).unwrap_err().kind,
                FormatErrorKind::UnknownKeyCode(u)
            );
        }
        for u in [KeyUsage::LoadSession, KeyUsage::PurchaseSession] {
            let e = DataScript::parse(&with_usage(u.code())).unwrap_err();
            assert_eq!(e.kind, FormatErrorKind::DerivedKeyUsage(u.code()));
            assert!(alloc::format!("{e}").contains(u.name()), "{e}");
        }
    }

    #[test]
    fn fits_checks_int_width() {
        assert!(FieldValue::Int(255).fits(&ValueType::Int { bits: 8 }));
        assert!(!FieldValue::Int(256).fits(&ValueType::Int { bits: 8 }));
        assert!(FieldValue::Int(u64::MAX).fits(&ValueType::Int { bits: 64 }));
    }
}
