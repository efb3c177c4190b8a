//! The command script: header, constants, declared inputs and outputs, code, debug info.

use super::codec::{
    FormatError, FormatErrorKind, PResult, bytes16, count16, fail, finish_script, magic, name_str,
    put_bytes16, put_name, take_n, u8_, u16_, u32_, u64_,
};
use super::{MAX_BYTES_LEN, MAX_CODE_LEN, MAX_ENTRIES, ValueType};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

const MAGIC: &[u8; 4] = b"CVMS";
const VERSION: u8 = 1;

const SEC_CONSTS: u8 = 0x01;
const SEC_INPUTS: u8 = 0x02;
const SEC_OUTPUTS: u8 = 0x03;
const SEC_CODE: u8 = 0x04;
const SEC_DEBUG: u8 = 0x05;

/// Identity and resource needs of a command script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// City / issuer id.
    pub city: u32,
    /// Script id within the city.
    pub script_id: u32,
    /// Script version.
    pub version: u16,
    /// Number of registers the code uses (indices below this).
    pub registers: u8,
    /// Number of key slots the code uses.
    pub key_slots: u8,
}

/// A constant-pool entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constant {
    /// An integer.
    Int(u64),
    /// A byte string.
    Bytes(Vec<u8>),
}

/// A declared input or output: a name and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decl {
    /// Name (matches a data-script field for inputs; a receipt field for outputs).
    /// Shared, so a run report names its outputs without copying strings.
    pub name: Arc<str>,
    /// Type.
    pub ty: ValueType,
}

/// One row of the line table: the instruction at `offset` came from `file:line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineEntry {
    /// Code offset.
    pub offset: u32,
    /// Index into [`DebugInfo::files`].
    pub file: u16,
    /// 1-based source line.
    pub line: u32,
}

/// Optional debug information from the assembler.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DebugInfo {
    /// Source file names.
    pub files: Vec<String>,
    /// Line table, sorted by offset.
    pub lines: Vec<LineEntry>,
}

impl DebugInfo {
    /// The source location of the instruction at `offset`, if recorded.
    pub fn location(&self, offset: u32) -> Option<(&str, u32)> {
        let i = self
            .lines
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        let e = self.lines[i];
        Some((self.files.get(usize::from(e.file))?.as_str(), e.line))
    }
}

/// A command script.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandScript {
    /// Identity and resources.
    pub header: Header,
    /// Constant pool.
    pub constants: Vec<Constant>,
    /// Declared inputs (data-script fields the code reads).
    pub inputs: Vec<Decl>,
    /// Declared outputs (receipt fields the code writes).
    pub outputs: Vec<Decl>,
    /// Bytecode.
    pub code: Vec<u8>,
    /// Optional source mapping.
    pub debug: Option<DebugInfo>,
}

impl CommandScript {
    /// Parses a `.cvm` file.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        finish_script(bytes, parse_script)
    }

    /// Encodes to the canonical `.cvm` bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.code.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        let h = &self.header;
        out.extend_from_slice(&h.city.to_be_bytes());
        out.extend_from_slice(&h.script_id.to_be_bytes());
        out.extend_from_slice(&h.version.to_be_bytes());
        out.push(h.registers);
        out.push(h.key_slots);

        let mut body = Vec::new();
        body.extend_from_slice(&(self.constants.len() as u16).to_be_bytes());
        for c in &self.constants {
            match c {
                Constant::Int(v) => {
                    body.push(0x01);
                    body.extend_from_slice(&v.to_be_bytes());
                }
                Constant::Bytes(b) => {
                    body.push(0x02);
                    put_bytes16(&mut body, b);
                }
            }
        }
        section(&mut out, SEC_CONSTS, &body);
        for (tag, decls) in [(SEC_INPUTS, &self.inputs), (SEC_OUTPUTS, &self.outputs)] {
            body.clear();
            body.extend_from_slice(&(decls.len() as u16).to_be_bytes());
            for d in decls {
                put_name(&mut body, &d.name);
                d.ty.encode(&mut body);
            }
            section(&mut out, tag, &body);
        }
        section(&mut out, SEC_CODE, &self.code);
        if let Some(dbg) = &self.debug {
            body.clear();
            body.extend_from_slice(&(dbg.files.len() as u16).to_be_bytes());
            for f in &dbg.files {
                put_bytes16(&mut body, f.as_bytes());
            }
            body.extend_from_slice(&(dbg.lines.len() as u32).to_be_bytes());
            for e in &dbg.lines {
                body.extend_from_slice(&e.offset.to_be_bytes());
                body.extend_from_slice(&e.file.to_be_bytes());
                body.extend_from_slice(&e.line.to_be_bytes());
            }
            section(&mut out, SEC_DEBUG, &body);
        }
        out
    }
}

fn section(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads a section header with the expected tag and returns its body.
fn expect_section(i: &[u8], tag: u8) -> PResult<'_, &[u8]> {
    if i.is_empty() {
        return fail(i, FormatErrorKind::MissingSection(tag));
    }
    let (rest, t) = u8_(i)?;
    if t != tag {
        return fail(i, FormatErrorKind::UnexpectedSection(t));
    }
    let (rest2, len) = u32_(rest)?;
    if len as usize > rest2.len() {
        return fail(rest, FormatErrorKind::Truncated);
    }
    take_n(rest2, len as usize)
}

/// Runs `p` over a whole section body; leftover bytes are a section-length error.
fn whole<'a, T>(body: &'a [u8], p: impl FnOnce(&'a [u8]) -> PResult<'a, T>) -> PResult<'a, T> {
    let (rest, v) = p(body)?;
    if !rest.is_empty() {
        return fail(rest, FormatErrorKind::SectionLength);
    }
    Ok((rest, v))
}

fn parse_script(i: &[u8]) -> PResult<'_, CommandScript> {
    let (i, ()) = magic(i, MAGIC)?;
    let (rest, version) = u8_(i)?;
    if version != VERSION {
        return fail(i, FormatErrorKind::UnsupportedVersion(version));
    }
    let i = rest;
    let (i, city) = u32_(i)?;
    let (i, script_id) = u32_(i)?;
    let (i, version) = u16_(i)?;
    let (i, registers) = u8_(i)?;
    let (i, key_slots) = u8_(i)?;
    let header = Header {
        city,
        script_id,
        version,
        registers,
        key_slots,
    };

    let (i, body) = expect_section(i, SEC_CONSTS)?;
    let (_, constants) = whole(body, parse_constants)?;
    let (i, body) = expect_section(i, SEC_INPUTS)?;
    let (_, inputs) = whole(body, parse_decls)?;
    let (i, body) = expect_section(i, SEC_OUTPUTS)?;
    let (_, outputs) = whole(body, parse_decls)?;
    let (i, code) = expect_section(i, SEC_CODE)?;
    if code.len() > MAX_CODE_LEN {
        return fail(
            i,
            FormatErrorKind::TooLarge {
                what: "code length",
                value: code.len(),
                limit: MAX_CODE_LEN,
            },
        );
    }
    let (i, debug) = if i.first() == Some(&SEC_DEBUG) {
        let (i, body) = expect_section(i, SEC_DEBUG)?;
        let (_, dbg) = whole(body, |b| parse_debug(b, code.len()))?;
        (i, Some(dbg))
    } else {
        (i, None)
    };
    if let Some(&t) = i.first() {
        return fail(i, FormatErrorKind::UnexpectedSection(t));
    }
    Ok((
        i,
        CommandScript {
            header,
            constants,
            inputs,
            outputs,
            code: code.to_vec(),
            debug,
        },
    ))
}

fn parse_constants(i: &[u8]) -> PResult<'_, Vec<Constant>> {
    let (mut i, n) = count16(i, "constant count", MAX_ENTRIES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (rest, tag) = u8_(i)?;
        let (rest, c) = match tag {
            0x01 => {
                let (rest, v) = u64_(rest)?;
                (rest, Constant::Int(v))
            }
            0x02 => {
                let (rest, b) = bytes16(rest, MAX_BYTES_LEN)?;
                (rest, Constant::Bytes(b.to_vec()))
            }
            t => return fail(i, FormatErrorKind::UnknownTag(t)),
        };
        out.push(c);
        i = rest;
    }
    Ok((i, out))
}

fn parse_decls(i: &[u8]) -> PResult<'_, Vec<Decl>> {
    let (mut i, n) = count16(i, "declaration count", MAX_ENTRIES)?;
    let mut out: Vec<Decl> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = i;
        let (rest, name) = name_str(i)?;
        if out.iter().any(|d| &*d.name == name) {
            return fail(at, FormatErrorKind::DuplicateName(String::from(name)));
        }
        let (rest, ty) = ValueType::parse(rest)?;
        out.push(Decl {
            name: Arc::from(name),
            ty,
        });
        i = rest;
    }
    Ok((i, out))
}

fn parse_debug(i: &[u8], code_len: usize) -> PResult<'_, DebugInfo> {
    let (mut i, n) = count16(i, "debug file count", MAX_ENTRIES)?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        let at = i;
        let (rest, b) = bytes16(i, 1024)?;
        match core::str::from_utf8(b) {
            Ok(s) => files.push(String::from(s)),
            Err(_) => return fail(at, FormatErrorKind::BadName),
        }
        i = rest;
    }
    let (mut i, count) = u32_(i)?;
    let count = count as usize;
    // Each row is 10 bytes; refuse counts the body cannot hold before allocating.
    if count > i.len() / 10 {
        return fail(i, FormatErrorKind::SectionLength);
    }
    let mut lines = Vec::with_capacity(count);
    let mut last: Option<u32> = None;
    for _ in 0..count {
        let at = i;
        let (rest, offset) = u32_(i)?;
        let (rest, file) = u16_(rest)?;
        let (rest, line) = u32_(rest)?;
        if offset as usize >= code_len
            || usize::from(file) >= files.len()
            || last.is_some_and(|l| offset <= l)
        {
            return fail(at, FormatErrorKind::BadDebugInfo);
        }
        last = Some(offset);
        lines.push(LineEntry { offset, file, line });
        i = rest;
    }
    Ok((i, DebugInfo { files, lines }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::{KeyAlg, KeyUsage};
    use proptest::prelude::*;

    fn any_type() -> impl Strategy<Value = ValueType> {
        prop_oneof![
            proptest::sample::select(&[8u8, 16, 32, 64][..])
                .prop_map(|bits| ValueType::Int { bits }),
            Just(ValueType::Bytes),
            any::<u16>().prop_map(|len| ValueType::BytesN { len }),
            Just(ValueType::BcdDateTime),
            (
                1u8..=4,
                proptest::sample::select(
                    KeyUsage::ALL
                        .into_iter()
                        .filter(|u| u.is_declarable())
                        .collect::<Vec<_>>()
                )
            )
                .prop_map(|(a, usage)| ValueType::Key {
                    alg: KeyAlg::from_code(a).unwrap(),
                    usage
                }),
        ]
    }

    fn any_decls() -> impl Strategy<Value = Vec<Decl>> {
        proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", any_type(), 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(name, ty)| Decl {
                    name: name.into(),
                    ty,
                })
                .collect()
        })
    }

    pub(crate) fn any_script() -> impl Strategy<Value = CommandScript> {
        (
            (
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u8>(),
                any::<u8>(),
            ),
            proptest::collection::vec(
                prop_oneof![
                    any::<u64>().prop_map(Constant::Int),
                    proptest::collection::vec(any::<u8>(), 0..20).prop_map(Constant::Bytes)
                ],
                0..5,
            ),
            any_decls(),
            any_decls(),
            proptest::collection::vec(any::<u8>(), 1..40),
            any::<bool>(),
        )
            .prop_map(
                |(
                    (city, script_id, version, registers, key_slots),
                    constants,
                    inputs,
                    outputs,
                    code,
                    dbg,
                )| {
                    let debug = dbg.then(|| DebugInfo {
                        files: alloc::vec![String::from("city.casm")],
                        lines: (0..code.len() as u32)
                            .step_by(3)
                            .map(|o| LineEntry {
                                offset: o,
                                file: 0,
                                line: o + 1,
                            })
                            .collect(),
                    });
                    CommandScript {
                        header: Header {
                            city,
                            script_id,
                            version,
                            registers,
                            key_slots,
                        },
                        constants,
                        inputs,
                        outputs,
                        code,
                        debug,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(s in any_script()) {
            let bytes = s.encode();
            prop_assert_eq!(CommandScript::parse(&bytes), Ok(s.clone()));
            prop_assert_eq!(CommandScript::parse(&bytes).unwrap().encode(), bytes);
        }

        #[test]
        fn truncation_is_an_error_never_a_panic(s in any_script(), cut in 0usize..200) {
            let bytes = s.encode();
            let cut = cut % bytes.len();
            match CommandScript::parse(&bytes[..cut]) {
                Err(err) => prop_assert!(err.offset <= cut),
                // The one valid strict prefix: the script without its optional debug section.
                Ok(prefix) => {
                    let without = CommandScript { debug: None, ..s.clone() };
                    prop_assert!(s.debug.is_some());
                    prop_assert_eq!(cut, without.encode().len());
                    prop_assert_eq!(prefix, without);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CommandScript::parse(&bytes);
        }

        #[test]
        fn mutated_scripts_never_panic(s in any_script(), pos in any::<usize>(), val: u8) {
            let mut bytes = s.encode();
            let p = pos % bytes.len();
            bytes[p] = val;
            let _ = CommandScript::parse(&bytes);
        }
    }

    #[test]
    fn errors_carry_offsets() {
        let s = CommandScript {
            code: alloc::vec![0x01],
            ..Default::default()
        };
        let mut bytes = s.encode();
        assert_eq!(
            CommandScript::parse(b"XXXX").unwrap_err(),
            FormatError {
                offset: 0,
                kind: FormatErrorKind::BadMagic
            }
        );
        bytes[4] = 9;
        assert_eq!(
            CommandScript::parse(&bytes).unwrap_err().kind,
            FormatErrorKind::UnsupportedVersion(9)
        );
        bytes[4] = 1;
        bytes.push(0x07);
        let err = CommandScript::parse(&bytes).unwrap_err();
        assert_eq!(
            (err.offset, err.kind),
            (bytes.len() - 1, FormatErrorKind::UnexpectedSection(7))
        );
    }

    #[test]
    fn duplicate_input_names_are_rejected() {
        let d = Decl {
            name: "amount".into(),
            ty: ValueType::Int { bits: 32 },
        };
        let s = CommandScript {
            inputs: alloc::vec![d.clone(), d],
            code: alloc::vec![1],
            ..Default::default()
        };
        let err = CommandScript::parse(&s.encode()).unwrap_err();
        assert_eq!(
            err.kind,
            FormatErrorKind::DuplicateName(String::from("amount"))
        );
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        let s = CommandScript {
            code: alloc::vec![1],
            ..Default::default()
        };
        let mut bytes = s.encode();
        // constants section starts at 4+1+12 = 17: tag, len(4), count(2)
        bytes[22] = 0xFF;
        bytes[23] = 0xFF;
        let err = CommandScript::parse(&bytes).unwrap_err();
        assert!(
            matches!(err.kind, FormatErrorKind::TooLarge { .. }),
            "{err:?}"
        );
    }
}
