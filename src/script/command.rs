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
/// The first debug section: file names without source hashes (debug info version 1).
const SEC_DEBUG_V1: u8 = 0x05;
/// The versioned debug section: a version byte, then the body of that version.
const SEC_DEBUG: u8 = 0x06;

/// The newest debug info version this build reads and writes. Version 2: file names with
/// the SM3 of each source file's bytes, and the line table. Version 3 adds the variable
/// table and the inline routine scopes of a `.cvs` program (written only when there are
/// variables or scopes, so a `.casm` script keeps its version 2 bytes). Version 1 is the
/// older section 05 (names only); sections of other versions are kept as
/// [`UnsupportedDebug`] so the script still parses and runs.
pub const DEBUG_VERSION: u8 = 3;

/// The debug info version of a line table without variables or scopes.
const DEBUG_VERSION_LINES: u8 = 2;

/// Longest variable or routine name kept in the debug section (bytes).
pub const MAX_DEBUG_SYMBOL: usize = 64;

/// Longest source file name kept in the debug section (bytes).
pub const MAX_DEBUG_NAME: usize = 1024;

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

/// One entry of the debug file table: a display label and the hash of the source text.
///
/// The name is only a label: nothing opens a file because the bytecode names it (a
/// crafted script could name a key file, a device or a FIFO). A debugger shows source
/// lines only from text it was handed (the assembler's own input, or a file the user
/// names) whose SM3 equals [`DebugFile::sm3`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugFile {
    /// The file name as the assembler resolved it (display only; see [`display_safe`]).
    pub name: String,
    /// SM3 of the source file's bytes; all zeros when unknown (matches no text).
    pub sm3: [u8; 32],
}

impl DebugFile {
    /// The hash value that stands for "no source hash recorded".
    pub const NO_HASH: [u8; 32] = [0; 32];

    /// A file entry without a source hash (its lines are never shown).
    pub fn unhashed(name: impl Into<String>) -> Self {
        DebugFile {
            name: name.into(),
            sm3: Self::NO_HASH,
        }
    }

    /// Whether a source hash was recorded.
    pub fn has_hash(&self) -> bool {
        self.sm3 != Self::NO_HASH
    }

    /// The name, safe to print to a terminal (see [`display_safe`]).
    pub fn label(&self) -> String {
        display_safe(&self.name)
    }
}

/// `text` with every control character (C0, DEL, C1 — so no ANSI escape sequence) and
/// every bidirectional-override or line-separator character written as `\u{..}`, so text
/// taken from a script can be printed to a terminal without acting on it.
pub fn display_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if acts_on_terminal(c) {
            let _ = core::fmt::Write::write_fmt(&mut out, format_args!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether printing `c` could act on a terminal or reorder what it shows: controls (C0,
/// DEL, C1), bidirectional marks, embeddings, overrides and isolates, line separators.
pub(crate) fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A debug section of a version this build does not read, kept byte for byte so the
/// script re-encodes to itself. Tools report "unsupported debug info version N" and run
/// without source lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedDebug {
    /// The section's version: 1 (section 05) or above [`DEBUG_VERSION`] (section 06).
    pub version: u8,
    /// The section body after the version byte (version 1 has none).
    pub body: Vec<u8>,
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

/// What a source variable holds: how a debugger shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarKind {
    /// An integer in a register.
    Int,
    /// A byte string in a register.
    Bytes,
    /// A key slot: a debugger shows only its algorithm and usage, never its bytes.
    Key,
}

impl VarKind {
    fn code(self) -> u8 {
        match self {
            VarKind::Int => 0,
            VarKind::Bytes => 1,
            VarKind::Key => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(VarKind::Int),
            1 => Some(VarKind::Bytes),
            2 => Some(VarKind::Key),
            _ => None,
        }
    }

    /// The type's name in the language (`int`, `bytes`, `key`).
    pub fn name(self) -> &'static str {
        match self {
            VarKind::Int => "int",
            VarKind::Bytes => "bytes",
            VarKind::Key => "key",
        }
    }
}

/// One row of the variable table: source variable `name` is in register (or key slot)
/// `slot` from the instruction at `start` (which writes it) to the one at `end` (the
/// last that reads it), both code offsets, inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugVar {
    /// The source name (an identifier of at most [`MAX_DEBUG_SYMBOL`] bytes).
    pub name: String,
    /// Integer, byte string or key.
    pub kind: VarKind,
    /// Register index, or key slot index for [`VarKind::Key`].
    pub slot: u8,
    /// Code offset of the first instruction of its live range.
    pub start: u32,
    /// Code offset of the last instruction of its live range (inclusive).
    pub end: u32,
    /// 0: the flow itself; `n`: the routine expansion [`DebugInfo::scopes`]`[n - 1]`.
    pub scope: u16,
}

/// One inline routine expansion: the code from `start` to `end` (inclusive) is the body
/// of `routine`, called at `call_file:call_line`. Routines are expanded inline, so this
/// is what a backtrace shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugScope {
    /// The routine's name.
    pub routine: String,
    /// Index into [`DebugInfo::files`] of the call.
    pub call_file: u16,
    /// 1-based line of the call.
    pub call_line: u32,
    /// Code offset of the body's first instruction.
    pub start: u32,
    /// Code offset of the body's last instruction (inclusive).
    pub end: u32,
    /// 0: called from the flow itself; `n`: from [`DebugInfo::scopes`]`[n - 1]`, which
    /// comes earlier in the table.
    pub parent: u16,
}

/// Optional debug information from the assembler.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DebugInfo {
    /// Source files: display labels and source hashes.
    pub files: Vec<DebugFile>,
    /// Line table, sorted by offset.
    pub lines: Vec<LineEntry>,
    /// Source variables and where each lives (version 3; empty for `.casm`).
    pub vars: Vec<DebugVar>,
    /// Inline routine expansions (version 3; empty for `.casm`).
    pub scopes: Vec<DebugScope>,
}

impl DebugInfo {
    /// The source location of the instruction at `offset`, if recorded.
    /// The file name is the raw label: print it through [`display_safe`].
    pub fn location(&self, offset: u32) -> Option<(&str, u32)> {
        let e = self.entry(offset)?;
        Some((self.files.get(usize::from(e.file))?.name.as_str(), e.line))
    }

    /// The line-table row of the instruction at `offset`, if recorded.
    pub fn entry(&self, offset: u32) -> Option<LineEntry> {
        let i = self
            .lines
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        Some(self.lines[i])
    }

    /// The routine expansions that contain `offset`, innermost first (a backtrace
    /// without its bottom frame, the flow itself), with their indices in
    /// [`DebugInfo::scopes`].
    pub fn scopes_at(&self, offset: u32) -> Vec<(usize, &DebugScope)> {
        let mut out: Vec<(usize, &DebugScope)> = self
            .scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.start <= offset && offset <= s.end)
            .collect();
        // Parents come first in the table, so the innermost expansion is the last.
        out.reverse();
        out
    }

    /// The variable `pick` selects that holds its value at `offset`: of several, the one
    /// in the innermost routine expansion around `offset` (then outer ones, then the
    /// flow), and within one scope the latest to start.
    pub fn var_at(&self, offset: u32, pick: impl Fn(&DebugVar) -> bool) -> Option<&DebugVar> {
        // Scope numbers from innermost out, then the flow (0).
        let mut chain: Vec<u16> = self
            .scopes_at(offset)
            .into_iter()
            .filter_map(|(i, _)| u16::try_from(i + 1).ok())
            .collect();
        chain.push(0);
        let live: Vec<&DebugVar> = self
            .vars
            .iter()
            .filter(|v| v.start <= offset && offset <= v.end && pick(v))
            .collect();
        chain
            .iter()
            .find_map(|s| {
                live.iter()
                    .filter(|v| v.scope == *s)
                    .max_by_key(|v| v.start)
                    .copied()
            })
            .or_else(|| live.iter().max_by_key(|v| v.start).copied())
    }

    /// The variable called `name` at `offset` (see [`DebugInfo::var_at`]).
    pub fn var_named(&self, offset: u32, name: &str) -> Option<&DebugVar> {
        self.var_at(offset, |v| v.name == name)
    }

    /// Every variable that holds its value at `offset`, one per name (the one
    /// [`DebugInfo::var_named`] gives), in table order.
    pub fn live_vars(&self, offset: u32) -> Vec<&DebugVar> {
        let mut seen: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for v in &self.vars {
            if v.start <= offset
                && offset <= v.end
                && !seen.contains(&v.name.as_str())
                && let Some(best) = self.var_named(offset, &v.name)
            {
                seen.push(best.name.as_str());
                out.push(best);
            }
        }
        out
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
    /// Optional source mapping ([`DEBUG_VERSION`]).
    pub debug: Option<DebugInfo>,
    /// A debug section of another version, kept as bytes. At most one of `debug` and
    /// `unsupported_debug` is set; the encoder writes `debug` if both are.
    pub unsupported_debug: Option<UnsupportedDebug>,
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
            let v3 = !dbg.vars.is_empty() || !dbg.scopes.is_empty();
            body.push(if v3 {
                DEBUG_VERSION
            } else {
                DEBUG_VERSION_LINES
            });
            body.extend_from_slice(&(dbg.files.len() as u16).to_be_bytes());
            for f in &dbg.files {
                put_bytes16(&mut body, f.name.as_bytes());
                body.extend_from_slice(&f.sm3);
            }
            body.extend_from_slice(&(dbg.lines.len() as u32).to_be_bytes());
            for e in &dbg.lines {
                body.extend_from_slice(&e.offset.to_be_bytes());
                body.extend_from_slice(&e.file.to_be_bytes());
                body.extend_from_slice(&e.line.to_be_bytes());
            }
            if v3 {
                encode_symbols(&mut body, dbg);
            }
            section(&mut out, SEC_DEBUG, &body);
        } else if let Some(u) = &self.unsupported_debug {
            if u.version == 1 {
                section(&mut out, SEC_DEBUG_V1, &u.body);
            } else {
                body.clear();
                body.push(u.version);
                body.extend_from_slice(&u.body);
                section(&mut out, SEC_DEBUG, &body);
            }
        }
        out
    }
}

/// The version 3 tables: variables, then scopes. Names are a length byte and the bytes.
fn encode_symbols(body: &mut Vec<u8>, dbg: &DebugInfo) {
    body.extend_from_slice(&(dbg.vars.len() as u16).to_be_bytes());
    for v in &dbg.vars {
        put_name(body, &v.name);
        body.push(v.kind.code());
        body.push(v.slot);
        body.extend_from_slice(&v.start.to_be_bytes());
        body.extend_from_slice(&v.end.to_be_bytes());
        body.extend_from_slice(&v.scope.to_be_bytes());
    }
    body.extend_from_slice(&(dbg.scopes.len() as u16).to_be_bytes());
    for s in &dbg.scopes {
        put_name(body, &s.routine);
        body.extend_from_slice(&s.call_file.to_be_bytes());
        body.extend_from_slice(&s.call_line.to_be_bytes());
        body.extend_from_slice(&s.start.to_be_bytes());
        body.extend_from_slice(&s.end.to_be_bytes());
        body.extend_from_slice(&s.parent.to_be_bytes());
    }
}

/// Whether `s` may name a debug variable or routine: an identifier of at most
/// [`MAX_DEBUG_SYMBOL`] bytes.
pub fn is_debug_symbol(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_DEBUG_SYMBOL
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn symbol(i: &[u8]) -> PResult<'_, String> {
    let (rest, len) = u8_(i)?;
    let (rest, bytes) = take_n(rest, usize::from(len))?;
    match core::str::from_utf8(bytes) {
        Ok(s) if is_debug_symbol(s) => Ok((rest, String::from(s))),
        _ => fail(i, FormatErrorKind::BadName),
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
    let (i, debug, unsupported_debug) = match i.first() {
        Some(&SEC_DEBUG_V1) => {
            // Version 1 had no source hashes: kept, not read (its names are not trusted
            // to mean anything, and there is nothing to check a source against).
            let (i, body) = expect_section(i, SEC_DEBUG_V1)?;
            let old = UnsupportedDebug {
                version: 1,
                body: body.to_vec(),
            };
            (i, None, Some(old))
        }
        Some(&SEC_DEBUG) => {
            let (i, body) = expect_section(i, SEC_DEBUG)?;
            let (rest, version) = u8_(body)?;
            match version {
                DEBUG_VERSION_LINES | DEBUG_VERSION => {
                    let (_, dbg) = whole(rest, |b| {
                        parse_debug(b, code.len(), version == DEBUG_VERSION)
                    })?;
                    (i, Some(dbg), None)
                }
                // A later version: still a valid script, just no source mapping here.
                v if v > DEBUG_VERSION => {
                    let newer = UnsupportedDebug {
                        version: v,
                        body: rest.to_vec(),
                    };
                    (i, None, Some(newer))
                }
                // Versions below 2 never used this section.
                _ => return fail(body, FormatErrorKind::BadDebugInfo),
            }
        }
        _ => (i, None, None),
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
            unsupported_debug,
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

fn parse_debug(i: &[u8], code_len: usize, symbols: bool) -> PResult<'_, DebugInfo> {
    let (mut i, n) = count16(i, "debug file count", MAX_ENTRIES)?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        let at = i;
        let (rest, b) = bytes16(i, MAX_DEBUG_NAME)?;
        let name = match core::str::from_utf8(b) {
            Ok(s) => String::from(s),
            Err(_) => return fail(at, FormatErrorKind::BadName),
        };
        let (rest, hash) = take_n(rest, 32)?;
        let mut sm3 = [0u8; 32];
        sm3.copy_from_slice(hash);
        files.push(DebugFile { name, sm3 });
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
    let mut dbg = DebugInfo {
        files,
        lines,
        vars: Vec::new(),
        scopes: Vec::new(),
    };
    if !symbols {
        return Ok((i, dbg));
    }
    let in_code = |start: u32, end: u32| start <= end && (end as usize) < code_len;
    let (mut i, nvars) = count16(i, "debug variable count", MAX_ENTRIES)?;
    for _ in 0..nvars {
        let at = i;
        let (rest, name) = symbol(i)?;
        let (rest, kind) = u8_(rest)?;
        let (rest, slot) = u8_(rest)?;
        let (rest, start) = u32_(rest)?;
        let (rest, end) = u32_(rest)?;
        let (rest, scope) = u16_(rest)?;
        let Some(kind) = VarKind::from_code(kind) else {
            return fail(at, FormatErrorKind::BadDebugInfo);
        };
        dbg.vars.push(DebugVar {
            name,
            kind,
            slot,
            start,
            end,
            scope,
        });
        if !in_code(start, end) {
            return fail(at, FormatErrorKind::BadDebugInfo);
        }
        i = rest;
    }
    let (mut i, nscopes) = count16(i, "debug scope count", MAX_ENTRIES)?;
    for index in 0..nscopes {
        let at = i;
        let (rest, routine) = symbol(i)?;
        let (rest, call_file) = u16_(rest)?;
        let (rest, call_line) = u32_(rest)?;
        let (rest, start) = u32_(rest)?;
        let (rest, end) = u32_(rest)?;
        let (rest, parent) = u16_(rest)?;
        // A parent comes earlier in the table: no cycles, and a backtrace ends.
        if !in_code(start, end)
            || usize::from(call_file) >= dbg.files.len()
            || usize::from(parent) > index
        {
            return fail(at, FormatErrorKind::BadDebugInfo);
        }
        dbg.scopes.push(DebugScope {
            routine,
            call_file,
            call_line,
            start,
            end,
            parent,
        });
        i = rest;
    }
    // Every variable's scope exists; version 3 is written only with symbols, so the
    // bytes re-encode to themselves.
    if dbg
        .vars
        .iter()
        .any(|v| usize::from(v.scope) > dbg.scopes.len())
        || (dbg.vars.is_empty() && dbg.scopes.is_empty())
    {
        return fail(i, FormatErrorKind::BadDebugInfo);
    }
    Ok((i, dbg))
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
            0u8..5,
            any::<[u8; 32]>(),
        )
            .prop_map(
                |(
                    (city, script_id, version, registers, key_slots),
                    constants,
                    inputs,
                    outputs,
                    code,
                    dbg,
                    sm3,
                )| {
                    // 0: none, 1: version 2 (lines), 2: version 1 kept, 3: a later version
                    // kept, 4: version 3 (lines, variables and scopes).
                    let last = code.len() as u32 - 1;
                    let debug = (dbg == 1 || dbg == 4).then(|| DebugInfo {
                        files: alloc::vec![DebugFile {
                            name: String::from("city.casm"),
                            sm3
                        }],
                        lines: (0..code.len() as u32)
                            .step_by(3)
                            .map(|o| LineEntry {
                                offset: o,
                                file: 0,
                                line: o + 1,
                            })
                            .collect(),
                        vars: if dbg == 4 {
                            alloc::vec![DebugVar {
                                name: String::from("balance"),
                                kind: VarKind::Bytes,
                                slot: registers,
                                start: 0,
                                end: last,
                                scope: 1,
                            }]
                        } else {
                            Vec::new()
                        },
                        scopes: if dbg == 4 {
                            alloc::vec![DebugScope {
                                routine: String::from("check_balance"),
                                call_file: 0,
                                call_line: 7,
                                start: last / 2,
                                end: last,
                                parent: 0,
                            }]
                        } else {
                            Vec::new()
                        },
                    });
                    let unsupported_debug = match dbg {
                        2 => Some(UnsupportedDebug {
                            version: 1,
                            body: sm3[..5].to_vec(),
                        }),
                        3 => Some(UnsupportedDebug {
                            version: DEBUG_VERSION + 1,
                            body: sm3.to_vec(),
                        }),
                        _ => None,
                    };
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
                        unsupported_debug,
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
                    let without = CommandScript { debug: None, unsupported_debug: None, ..s.clone() };
                    prop_assert!(s.debug.is_some() || s.unsupported_debug.is_some());
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

    /// A section 05 as `asm -g` wrote it before source hashes: names and rows only.
    fn v1_debug_section(name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&1u16.to_be_bytes());
        put_bytes16(&mut body, name.as_bytes());
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&7u32.to_be_bytes());
        let mut out = alloc::vec![SEC_DEBUG_V1];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn version_1_debug_sections_are_kept_but_not_read() {
        let s = CommandScript {
            code: alloc::vec![1],
            ..Default::default()
        };
        let mut bytes = s.encode();
        bytes.extend_from_slice(&v1_debug_section("/etc/cardvm/reader.key"));
        let parsed = CommandScript::parse(&bytes).unwrap();
        assert_eq!(parsed.debug, None);
        assert_eq!(
            parsed.unsupported_debug.as_ref().map(|u| u.version),
            Some(1)
        );
        assert_eq!(parsed.encode(), bytes);
    }

    #[test]
    fn debug_section_versions() {
        let s = CommandScript {
            code: alloc::vec![1, 2],
            debug: Some(DebugInfo {
                files: alloc::vec![DebugFile {
                    name: "a.casm".into(),
                    sm3: [7; 32]
                }],
                lines: alloc::vec![LineEntry {
                    offset: 1,
                    file: 0,
                    line: 3
                }],
                ..DebugInfo::default()
            }),
            ..Default::default()
        };
        let bytes = s.encode();
        let at = CommandScript {
            debug: None,
            ..s.clone()
        }
        .encode()
        .len();
        // tag, length(4), then the version byte.
        // Lines only: version 2, byte for byte what earlier builds wrote.
        assert_eq!((bytes[at], bytes[at + 5]), (SEC_DEBUG, DEBUG_VERSION_LINES));
        assert_eq!(CommandScript::parse(&bytes).unwrap().debug, s.debug);
        // A later version parses (kept as bytes); versions below 2 never used section 06.
        let mut later = bytes.clone();
        later[at + 5] = DEBUG_VERSION + 1;
        let p = CommandScript::parse(&later).unwrap();
        assert_eq!(
            p.unsupported_debug.as_ref().map(|u| u.version),
            Some(DEBUG_VERSION + 1)
        );
        assert_eq!(p.encode(), later);
        for v in [0, 1] {
            let mut old = bytes.clone();
            old[at + 5] = v;
            let err = CommandScript::parse(&old).unwrap_err();
            assert_eq!(err.kind, FormatErrorKind::BadDebugInfo);
        }
    }

    fn with_symbols(vars: Vec<DebugVar>, scopes: Vec<DebugScope>) -> CommandScript {
        CommandScript {
            code: alloc::vec![0; 10],
            debug: Some(DebugInfo {
                files: alloc::vec![DebugFile::unhashed("a.cvs")],
                vars,
                scopes,
                ..DebugInfo::default()
            }),
            ..Default::default()
        }
    }

    fn var(start: u32, end: u32, scope: u16) -> DebugVar {
        DebugVar {
            name: String::from("balance"),
            kind: VarKind::Bytes,
            slot: 3,
            start,
            end,
            scope,
        }
    }

    fn scope(start: u32, end: u32, parent: u16) -> DebugScope {
        DebugScope {
            routine: String::from("read_balance"),
            call_file: 0,
            call_line: 4,
            start,
            end,
            parent,
        }
    }

    #[test]
    fn version_3_carries_variables_and_scopes() {
        let s = with_symbols(
            alloc::vec![var(2, 9, 0), var(5, 6, 2)],
            alloc::vec![scope(4, 8, 0), scope(5, 7, 1)],
        );
        let bytes = s.encode();
        let parsed = CommandScript::parse(&bytes).unwrap();
        assert_eq!(parsed, s);
        assert_eq!(parsed.encode(), bytes);
        let dbg = parsed.debug.unwrap();
        let at: Vec<usize> = dbg.scopes_at(6).into_iter().map(|(i, _)| i).collect();
        assert_eq!(at, [1, 0], "innermost first");
        assert!(dbg.scopes_at(9).is_empty());
        // Two `balance`s: inside the inner expansion its own, outside it the flow's.
        assert_eq!(dbg.var_named(6, "balance").map(|v| v.scope), Some(2));
        assert_eq!(dbg.var_named(8, "balance").map(|v| v.scope), Some(0));
        assert_eq!(dbg.var_named(1, "balance"), None);
        assert_eq!(dbg.live_vars(6).len(), 1);
    }

    #[test]
    fn version_3_refuses_what_a_debugger_would_misread() {
        for (what, s) in [
            (
                "range past the code",
                with_symbols(alloc::vec![var(2, 10, 0)], Vec::new()),
            ),
            (
                "range backwards",
                with_symbols(alloc::vec![var(5, 4, 0)], Vec::new()),
            ),
            (
                "unknown scope",
                with_symbols(alloc::vec![var(1, 2, 1)], Vec::new()),
            ),
            (
                "parent after child",
                with_symbols(Vec::new(), alloc::vec![scope(1, 2, 1)]),
            ),
            ("call in no file", {
                let mut s = with_symbols(Vec::new(), alloc::vec![scope(1, 2, 0)]);
                if let Some(d) = s.debug.as_mut() {
                    d.scopes[0].call_file = 1;
                }
                s
            }),
        ] {
            let err = CommandScript::parse(&s.encode()).unwrap_err();
            assert_eq!(err.kind, FormatErrorKind::BadDebugInfo, "{what}");
        }
        // Version 3 without symbols would re-encode as version 2: not canonical.
        let plain = with_symbols(Vec::new(), Vec::new()).encode();
        let mut v3 = plain.clone();
        // The section ends the file: version, file count, name length, "a.cvs", SM3,
        // line count.
        let at = plain.len() - (1 + 2 + 2 + 5 + 32 + 4);
        assert_eq!(v3[at], DEBUG_VERSION_LINES);
        v3[at] = DEBUG_VERSION;
        v3.extend_from_slice(&[0, 0, 0, 0]);
        let len_at = at - 4;
        let len = u32::from_be_bytes([v3[len_at], v3[len_at + 1], v3[len_at + 2], v3[len_at + 3]]);
        v3[len_at..at].copy_from_slice(&(len + 4).to_be_bytes());
        let err = CommandScript::parse(&v3).unwrap_err();
        assert_eq!(err.kind, FormatErrorKind::BadDebugInfo);
        // A name that is not an identifier (a terminal escape, say) is refused.
        let mut s = with_symbols(alloc::vec![var(1, 2, 0)], Vec::new());
        if let Some(d) = s.debug.as_mut() {
            d.vars[0].name = String::from("a\u{1b}[31m");
        }
        let err = CommandScript::parse(&s.encode()).unwrap_err();
        assert_eq!(err.kind, FormatErrorKind::BadName);
    }

    #[test]
    fn labels_never_carry_terminal_controls() {
        let f = DebugFile::unhashed("a\u{1b}]0;x\u{7}\u{1b}[31m\u{9b}b\u{202e}c\nd");
        let shown = f.label();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert!(!shown.contains('\u{202e}'), "{shown}");
        assert_eq!(
            shown,
            "a\\u{1b}]0;x\\u{7}\\u{1b}[31m\\u{9b}b\\u{202e}c\\u{a}d"
        );
        assert_eq!(display_safe("scripts/城市.casm"), "scripts/城市.casm");
    }
}
