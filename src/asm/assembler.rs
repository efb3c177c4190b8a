//! `.casm` text → [`CommandScript`]. The syntax is described in [`crate::asm`].
//!
//! Two phases: the preprocessor reads files, follows `.include`s and expands macros
//! into logical lines; the assembler then makes two passes over them — the first
//! places labels, declarations and instructions (instruction sizes come from the
//! table), the second parses operands (driven by [`Opcode::operand_specs`]: each
//! operand's name and kind) and encodes.

use super::error::{AsmError, Warning};
use super::lexer::{Kind, Pos, Token, lex_line};
use super::loader::SourceLoader;
use crate::crypto::{KeyAlg, KeyUsage};
use crate::isa::{Instr, MAX_OPERANDS, Opcode, Operand, OperandKind, SwPattern};
use crate::script::{
    CommandScript, Constant, DEBUG_VERSION, DebugFile, DebugInfo, DebugScope, DebugVar, Decl,
    Header, LineEntry, MAX_BYTES_LEN, MAX_CODE_LEN, MAX_DEBUG_NAME, MAX_ENTRIES, MAX_SCRIPT_LEN,
    UnsupportedDebug, ValueType, VarKind, is_valid_name,
};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Deepest `.include` nesting.
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Deepest macro-expansion nesting (a recursive macro stops here).
pub const MAX_MACRO_DEPTH: usize = 16;
/// Most logical lines after includes and macro expansion.
pub const MAX_LINES: usize = 200_000;
/// Most distinct source files.
pub const MAX_FILES: usize = 256;

/// Assembler options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsmOptions {
    /// Emit the debug section (file table with each source's SM3, offset → line table).
    pub debug: bool,
}

/// A source file the assembler read: the main file and every `.include`d one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    /// The resolved name (as in diagnostics and the debug section).
    pub name: String,
    /// The text; its SM3 is the file's hash in the debug section.
    pub text: String,
}

/// The result of a successful assembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The command script.
    pub script: CommandScript,
    /// Non-fatal diagnostics (lints).
    pub warnings: Vec<Warning>,
    /// Every source file read, in debug-file-table order (index 0: the main file). A
    /// debugger takes source lines from here, never by opening the names in the script.
    pub sources: Vec<SourceText>,
}

/// Assembles the `.casm` text `source` (called `name` in diagnostics and as the base
/// of relative `.include` paths); `loader` supplies included files.
/// [`assemble`](super::assemble) also takes the high-level language.
pub fn assemble_casm(
    source: &str,
    name: &str,
    opts: &AsmOptions,
    loader: &mut dyn SourceLoader,
) -> Result<Assembled, AsmError> {
    let mut pre = Pre {
        srcs: Sources {
            files: alloc::vec![(String::from(name), String::from(source))],
        },
        loader,
        stack: alloc::vec![String::from(name)],
        macros: BTreeMap::new(),
        lines: Vec::new(),
        work: 0,
    };
    pre.run_file(0, 0)?;
    let Pre { srcs, lines, .. } = pre;
    let mut asm = Asm::new(&srcs);
    for line in &lines {
        asm.pass1(line)?;
    }
    let labels = asm
        .labels
        .iter()
        .map(|(name, (off, pos))| (name.clone(), *off, pos.file, pos.line, pos.col))
        .collect();
    let lines = asm.auto_lines.clone();
    let script = asm.finish(opts)?;
    let files = srcs
        .files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let warnings = super::lint::lint(
        &script,
        &super::lint::LintInput {
            files,
            labels,
            lines: &lines,
        },
    );
    let sources = srcs
        .files
        .into_iter()
        .map(|(name, text)| SourceText { name, text })
        .collect();
    Ok(Assembled {
        script,
        warnings,
        sources,
    })
}

/// Assembles the file at `path` (`.casm`, or `.cvs` through [`crate::lang`]), reading
/// `.include`s from the file system (regular files of at most [`MAX_SOURCE_FILE`](super::loader::MAX_SOURCE_FILE) bytes),
/// confined to the include root of `path` ([`include_root`](super::loader::include_root)).
#[cfg(feature = "std")]
pub fn assemble_file(path: &std::path::Path, opts: &AsmOptions) -> Result<Assembled, AsmError> {
    let name = path.to_string_lossy().into_owned();
    let unreadable = |message: String| AsmError {
        file: name.clone(),
        line: 0,
        col: 0,
        message,
        source_line: String::new(),
    };
    let text = super::loader::read_source_file(path, super::loader::MAX_SOURCE_FILE)
        .map_err(|e| unreadable(format!("cannot read: {e}")))?;
    let mut loader = super::FsLoader::for_root_file(path)
        .map_err(|e| unreadable(format!("cannot find the include root: {e}")))?;
    super::assemble(&text, &name, opts, &mut loader)
}

// ---------------------------------------------------------------------------------
// Sources and errors

pub(crate) struct Sources {
    /// (resolved name, text) per file; index = `Pos::file`.
    files: Vec<(String, String)>,
}

impl Sources {
    fn err(&self, pos: Pos, message: impl Into<String>) -> AsmError {
        let (file, text) = self
            .files
            .get(usize::from(pos.file))
            .map(|(n, t)| (n.clone(), t.as_str()))
            .unwrap_or_default();
        let source_line = text
            .lines()
            .nth((pos.line as usize).saturating_sub(1))
            .map(String::from)
            .unwrap_or_default();
        AsmError {
            file,
            line: pos.line,
            col: pos.col,
            message: message.into(),
            source_line,
        }
    }
}

type R<T> = Result<T, AsmError>;

/// The position just after the last token (for "missing …" errors).
fn end_pos(toks: &[Token]) -> Pos {
    toks.last()
        .map(|t| {
            let width = match t.kind {
                Kind::Str => t.text.chars().count() + 2,
                _ => t.text.chars().count(),
            };
            Pos {
                col: t.pos.col.saturating_add(width as u32),
                ..t.pos
            }
        })
        .unwrap_or_default()
}

/// Splits tokens at top-level commas (not inside `(..)` or `[..]`). Empty groups are errors.
fn split_commas<'t>(srcs: &Sources, toks: &'t [Token], at: Pos) -> R<Vec<&'t [Token]>> {
    let mut out = Vec::new();
    if toks.is_empty() {
        return Ok(out);
    }
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if t.is_punct('(') || t.is_punct('[') {
            depth += 1;
        } else if t.is_punct(')') || t.is_punct(']') {
            depth -= 1;
        } else if t.is_punct(',') && depth <= 0 {
            if i == start {
                return Err(srcs.err(t.pos, "missing operand before `,`"));
            }
            out.push(&toks[start..i]);
            start = i + 1;
        }
    }
    if start == toks.len() {
        let p = toks.last().map(|t| t.pos).unwrap_or(at);
        return Err(srcs.err(p, "missing operand after `,`"));
    }
    out.push(&toks[start..]);
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Preprocessor: includes and macros

struct Macro {
    params: Vec<String>,
    body: Vec<Vec<Token>>,
}

/// A macro being defined: name, parameters, body lines so far, position of `.macro`.
type MacroDef = (String, Vec<String>, Vec<Vec<Token>>, Pos);

struct Pre<'l> {
    srcs: Sources,
    loader: &'l mut dyn SourceLoader,
    /// Names of the files being read, outermost first (cycle detection).
    stack: Vec<String>,
    macros: BTreeMap<String, Macro>,
    lines: Vec<Vec<Token>>,
    /// Lines processed so far (bounded by [`MAX_LINES`]).
    work: usize,
}

impl Pre<'_> {
    fn err(&self, pos: Pos, message: impl Into<String>) -> AsmError {
        self.srcs.err(pos, message)
    }

    fn run_file(&mut self, file: u16, macro_depth: usize) -> R<()> {
        let text = self.srcs.files[usize::from(file)].1.clone();
        let mut def: Option<MacroDef> = None;
        for (i, line) in text.lines().enumerate() {
            let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let toks = lex_line(line, file, line_no).map_err(|(col, msg)| {
                self.err(
                    Pos {
                        file,
                        line: line_no,
                        col,
                    },
                    msg,
                )
            })?;
            let Some(first) = toks.first() else { continue };
            if let Some((name, params, mut body, at)) = def.take() {
                match first.word() {
                    Some(".endm") => {
                        if let Some(t) = toks.get(1) {
                            return Err(self.err(t.pos, "unexpected text after `.endm`"));
                        }
                        self.macros.insert(name, Macro { params, body });
                    }
                    Some(".macro") => {
                        return Err(self.err(first.pos, "`.macro` inside a macro definition"));
                    }
                    _ => {
                        body.push(toks);
                        def = Some((name, params, body, at));
                    }
                }
                continue;
            }
            if first.word() == Some(".macro") {
                let (name, params) = self.macro_header(&toks)?;
                def = Some((name, params, Vec::new(), first.pos));
                continue;
            }
            self.line(toks, macro_depth)?;
        }
        if let Some((name, _, _, at)) = def {
            return Err(self.err(at, format!("macro `{name}` has no `.endm`")));
        }
        Ok(())
    }

    fn macro_header(&self, toks: &[Token]) -> R<(String, Vec<String>)> {
        let Some(name_tok) = toks.get(1) else {
            return Err(self.err(end_pos(toks), "`.macro` needs a name"));
        };
        let name = name_tok.text.clone();
        if name_tok.kind != Kind::Word || !is_valid_name(&name) {
            return Err(self.err(
                name_tok.pos,
                "a macro name is a letter or `_` then letters, digits or `_`",
            ));
        }
        if Opcode::from_mnemonic(&name).is_some() {
            return Err(self.err(
                name_tok.pos,
                format!("macro `{name}` would hide the instruction `{name}`"),
            ));
        }
        if self.macros.contains_key(&name) {
            return Err(self.err(name_tok.pos, format!("macro `{name}` is already defined")));
        }
        let mut params: Vec<String> = Vec::new();
        for t in toks[2..].iter().filter(|t| !t.is_punct(',')) {
            if t.kind != Kind::Word || !is_valid_name(&t.text) {
                return Err(self.err(t.pos, format!("bad macro parameter {}", t.describe())));
            }
            if params.contains(&t.text) {
                return Err(self.err(t.pos, format!("duplicate macro parameter `{}`", t.text)));
            }
            params.push(t.text.clone());
        }
        Ok((name, params))
    }

    fn push(&mut self, line: Vec<Token>) -> R<()> {
        self.lines.push(line);
        Ok(())
    }

    fn line(&mut self, toks: Vec<Token>, macro_depth: usize) -> R<()> {
        // Every line counts, also `.include`s and macro calls that emit nothing.
        self.work += 1;
        if self.work > MAX_LINES {
            let at = toks.first().map(|t| t.pos).unwrap_or_default();
            return Err(self.err(
                at,
                format!("more than {MAX_LINES} lines after includes and macro expansion"),
            ));
        }
        // Leading `name:` labels become their own line.
        let mut start = 0;
        while toks.len() >= start + 2
            && toks[start].kind == Kind::Word
            && toks[start + 1].is_punct(':')
        {
            start += 2;
        }
        if start > 0 {
            self.push(toks[..start].to_vec())?;
        }
        let rest = &toks[start..];
        let Some(first) = rest.first() else {
            return Ok(());
        };
        match first.word() {
            Some(".include") => self.include(rest, macro_depth),
            Some(".endm") => Err(self.err(first.pos, "`.endm` without `.macro`")),
            Some(w) if self.macros.contains_key(w) => self.expand(rest, macro_depth),
            _ => self.push(rest.to_vec()),
        }
    }

    fn include(&mut self, toks: &[Token], macro_depth: usize) -> R<()> {
        let path = match toks.get(1) {
            Some(t) if t.kind == Kind::Str => t,
            Some(t) => return Err(self.err(t.pos, "`.include` takes a quoted path")),
            None => return Err(self.err(end_pos(toks), "`.include` takes a quoted path")),
        };
        if let Some(t) = toks.get(2) {
            return Err(self.err(t.pos, format!("unexpected {} after the path", t.describe())));
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(self.err(
                path.pos,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH}"),
            ));
        }
        let from = self.srcs.files[usize::from(path.pos.file)].0.clone();
        let (name, text) = self.loader.load(&path.text, &from).map_err(|why| {
            self.err(path.pos, format!("cannot include \"{}\": {why}", path.text))
        })?;
        if self.stack.contains(&name) {
            let mut chain = self.stack.join(" -> ");
            chain.push_str(" -> ");
            chain.push_str(&name);
            return Err(self.err(path.pos, format!("include cycle: {chain}")));
        }
        let file = match self.srcs.files.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                if self.srcs.files.len() >= MAX_FILES {
                    return Err(self.err(path.pos, format!("more than {MAX_FILES} source files")));
                }
                self.srcs.files.push((name.clone(), text));
                self.srcs.files.len() - 1
            }
        };
        self.stack.push(name);
        // MAX_FILES keeps the index within u16.
        let r = self.run_file(file as u16, macro_depth);
        self.stack.pop();
        r
    }

    fn expand(&mut self, toks: &[Token], macro_depth: usize) -> R<()> {
        let call = &toks[0];
        if macro_depth >= MAX_MACRO_DEPTH {
            return Err(self.err(
                call.pos,
                format!(
                    "macro expansion nested deeper than {MAX_MACRO_DEPTH} (recursive macro `{}`?)",
                    call.text
                ),
            ));
        }
        let args = split_commas(&self.srcs, &toks[1..], call.pos)?;
        let Some(m) = self.macros.get(&call.text) else {
            return Ok(());
        };
        if args.len() != m.params.len() {
            return Err(self.err(
                call.pos,
                format!(
                    "macro `{}` takes {} argument(s) ({}), found {}",
                    call.text,
                    m.params.len(),
                    m.params.join(", "),
                    args.len()
                ),
            ));
        }
        let mut expanded = Vec::with_capacity(m.body.len());
        for body_line in &m.body {
            let mut line = Vec::with_capacity(body_line.len());
            for t in body_line {
                match m
                    .params
                    .iter()
                    .position(|p| t.kind == Kind::Word && *p == t.text)
                {
                    Some(i) => line.extend(args[i].iter().cloned()),
                    None => line.push(t.clone()),
                }
            }
            expanded.push(line);
        }
        for line in expanded {
            self.line(line, macro_depth + 1)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The two passes

enum Item {
    Instr { op: Opcode, toks: Vec<Token> },
    Raw(Vec<u8>),
}

/// Constant-pool key for deduplicating inline literals.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum CKey {
    Int(u64),
    Bytes(Vec<u8>),
}

fn ckey(c: &Constant) -> CKey {
    match c {
        Constant::Int(v) => CKey::Int(*v),
        Constant::Bytes(b) => CKey::Bytes(b.clone()),
    }
}

struct Asm<'s> {
    srcs: &'s Sources,
    header: Header,
    /// Header directives seen (for duplicates).
    seen: BTreeMap<&'static str, Pos>,
    registers: Option<u8>,
    key_slots: Option<u8>,
    reg_names: BTreeMap<String, u8>,
    key_names: BTreeMap<String, u8>,
    const_names: BTreeMap<String, u16>,
    pool: BTreeMap<CKey, u16>,
    constants: Vec<Constant>,
    inputs: Vec<Decl>,
    outputs: Vec<Decl>,
    labels: BTreeMap<String, (u32, Pos)>,
    items: Vec<Item>,
    offset: u32,
    /// (offset, file, line) of every instruction, for `AsmOptions::debug`.
    auto_lines: Vec<LineEntry>,
    /// Explicit debug info from `.debug` / `.file` / `.loc`.
    explicit_debug: Option<DebugInfo>,
    /// A kept debug section of another version, from `.debug_raw`.
    raw_debug: Option<UnsupportedDebug>,
    /// Highest register / key slot an instruction names, and where.
    max_reg: Option<(u8, Pos)>,
    max_key: Option<(u8, Pos)>,
}

const INT_TYPES: &str = "u8, u16, u32, u64, bytes, bytes[N], bcd_datetime or key(ALG, USAGE)";

impl<'s> Asm<'s> {
    fn new(srcs: &'s Sources) -> Self {
        Asm {
            srcs,
            header: Header::default(),
            seen: BTreeMap::new(),
            registers: None,
            key_slots: None,
            reg_names: BTreeMap::new(),
            key_names: BTreeMap::new(),
            const_names: BTreeMap::new(),
            pool: BTreeMap::new(),
            constants: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            labels: BTreeMap::new(),
            items: Vec::new(),
            offset: 0,
            auto_lines: Vec::new(),
            explicit_debug: None,
            raw_debug: None,
            max_reg: None,
            max_key: None,
        }
    }

    fn err(&self, pos: Pos, message: impl Into<String>) -> AsmError {
        self.srcs.err(pos, message)
    }

    fn unexpected(&self, t: &Token) -> AsmError {
        self.err(t.pos, format!("unexpected {}", t.describe()))
    }

    /// Fails unless `toks` is empty.
    fn no_more(&self, toks: &[Token]) -> R<()> {
        match toks.first() {
            Some(t) => Err(self.unexpected(t)),
            None => Ok(()),
        }
    }

    fn pass1(&mut self, line: &[Token]) -> R<()> {
        let Some(first) = line.first() else {
            return Ok(());
        };
        if line.get(1).is_some_and(|t| t.is_punct(':')) {
            // A labels-only line (the preprocessor split them off).
            for pair in line.chunks(2) {
                self.label(&pair[0])?;
            }
            return Ok(());
        }
        let Some(word) = first.word() else {
            return Err(self.unexpected(first));
        };
        if word.starts_with('.') {
            return self.directive(first, &line[1..]);
        }
        let Some(op) = Opcode::from_mnemonic(word) else {
            return Err(self.err(first.pos, format!("unknown mnemonic `{word}`")));
        };
        let size = op.size() as u32;
        self.check_code_room(first.pos, size)?;
        self.auto_lines.push(LineEntry {
            offset: self.offset,
            file: first.pos.file,
            line: first.pos.line,
        });
        self.items.push(Item::Instr {
            op,
            toks: line.to_vec(),
        });
        self.offset += size;
        Ok(())
    }

    fn check_code_room(&self, pos: Pos, size: u32) -> R<()> {
        if self.offset as usize + size as usize > MAX_CODE_LEN {
            return Err(self.err(pos, format!("the code exceeds {MAX_CODE_LEN} bytes")));
        }
        Ok(())
    }

    fn label(&mut self, t: &Token) -> R<()> {
        if !is_valid_name(&t.text) {
            return Err(self.err(t.pos, format!("bad label name `{}`", t.text)));
        }
        if let Some((_, first)) = self.labels.get(&t.text) {
            let (file, _) = &self.srcs.files[usize::from(first.file)];
            return Err(self.err(
                t.pos,
                format!(
                    "duplicate label `{}` (first defined at {file}:{})",
                    t.text, first.line
                ),
            ));
        }
        self.labels.insert(t.text.clone(), (self.offset, t.pos));
        Ok(())
    }

    fn directive(&mut self, d: &Token, args: &[Token]) -> R<()> {
        match d.text.as_str() {
            ".city" => self
                .header_value(d, args, u32::MAX.into())
                .map(|v| self.header.city = v as u32),
            ".script" => self
                .header_value(d, args, u32::MAX.into())
                .map(|v| self.header.script_id = v as u32),
            ".version" => self
                .header_value(d, args, u16::MAX.into())
                .map(|v| self.header.version = v as u16),
            ".registers" => self
                .header_value(d, args, u8::MAX.into())
                .map(|v| self.registers = Some(v as u8)),
            ".key_slots" => self
                .header_value(d, args, u8::MAX.into())
                .map(|v| self.key_slots = Some(v as u8)),
            ".input" | ".output" => self.decl(d, args),
            ".reg" | ".key" => self.names(d, args),
            ".const" => self.constant(d, args),
            ".code" => {
                let (bytes, rest) = self.bytes_literal(args, d, MAX_CODE_LEN)?;
                self.no_more(rest)?;
                self.check_code_room(d.pos, bytes.len() as u32)?;
                self.offset += bytes.len() as u32;
                self.items.push(Item::Raw(bytes));
                Ok(())
            }
            ".debug" => {
                self.no_more(args)?;
                self.debug_section(d.pos)?;
                Ok(())
            }
            ".debug_raw" => {
                let Some(v) = args.first() else {
                    return Err(self.err(
                        after(d, args),
                        "`.debug_raw` takes a version and the section body: `.debug_raw 1 [..]`",
                    ));
                };
                let version = self.number(v, u8::MAX.into())? as u8;
                // Versions 2 and up to this build's are read, not kept as bytes.
                if (2..=DEBUG_VERSION).contains(&version) || version == 0 {
                    return Err(self.err(
                        v.pos,
                        format!(
                            "`.debug_raw` keeps a debug section of a version this build does not \
                             read (1, or above {DEBUG_VERSION}); write the line table with \
                             `.debug`, `.file` and `.loc`"
                        ),
                    ));
                }
                let (body, rest) = self.bytes_literal(&args[1..], v, MAX_SCRIPT_LEN)?;
                self.no_more(rest)?;
                if self.explicit_debug.is_some() || self.raw_debug.is_some() {
                    return Err(self.err(d.pos, "a script has one debug section"));
                }
                self.raw_debug = Some(UnsupportedDebug { version, body });
                Ok(())
            }
            ".file" => {
                let t = match args.first() {
                    Some(t) if t.kind == Kind::Str => t,
                    Some(t) => return Err(self.err(t.pos, "`.file` takes a quoted file name")),
                    None => {
                        return Err(self.err(
                            end_pos(core::slice::from_ref(d)),
                            "`.file` takes a quoted file name",
                        ));
                    }
                };
                // Optional: the SM3 of the source text, `[32 hex bytes]`.
                let sm3 = if args.len() > 1 {
                    let (hash, rest) = self.bytes_literal(&args[1..], t, 64)?;
                    self.no_more(rest)?;
                    <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                        self.err(
                            args[1].pos,
                            format!("a source hash is 32 bytes (SM3), found {}", hash.len()),
                        )
                    })?
                } else {
                    DebugFile::NO_HASH
                };
                self.debug_section(d.pos)?;
                let dbg = self.explicit_debug.get_or_insert_with(DebugInfo::default);
                if dbg.files.len() >= MAX_ENTRIES || t.text.len() > MAX_DEBUG_NAME {
                    return Err(self.srcs.err(
                        t.pos,
                        format!("at most {MAX_ENTRIES} `.file`s of at most {MAX_DEBUG_NAME} bytes"),
                    ));
                }
                dbg.files.push(DebugFile {
                    name: t.text.clone(),
                    sm3,
                });
                Ok(())
            }
            ".loc" => {
                let (Some(f), Some(l)) = (args.first(), args.get(1)) else {
                    return Err(self.err(
                        after(d, args),
                        "`.loc` takes a file index and a line: `.loc 0 12`",
                    ));
                };
                self.no_more(&args[2..])?;
                let file = self.number(f, u16::MAX.into())? as u16;
                let line = self.number(l, u32::MAX.into())? as u32;
                let offset = self.offset;
                self.debug_section(d.pos)?;
                let dbg = self.explicit_debug.get_or_insert_with(DebugInfo::default);
                if usize::from(file) >= dbg.files.len() {
                    return Err(self.srcs.err(
                        f.pos,
                        format!(
                            "no `.file` number {file} (declare files with `.file \"name\"` first)"
                        ),
                    ));
                }
                if dbg.lines.last().is_some_and(|e| e.offset == offset) {
                    dbg.lines.pop();
                }
                dbg.lines.push(LineEntry { offset, file, line });
                Ok(())
            }
            ".var" | ".scope" => {
                // `.var NAME int|bytes|key SLOT START END SCOPE` and
                // `.scope ROUTINE FILE LINE START END PARENT`: a `.cvs` script's variable
                // table as the disassembler writes it (code offsets, not labels).
                let Some(name) = args
                    .first()
                    .filter(|t| t.kind == Kind::Word && crate::script::is_debug_symbol(&t.text))
                else {
                    return Err(self.err(
                        after(d, args),
                        format!("`{}` starts with a name (an identifier)", d.text),
                    ));
                };
                let want = 6;
                if args.len() != want {
                    return Err(self.err(
                        after(d, args),
                        format!(
                            "`{}` takes {want} fields: {}",
                            d.text,
                            if d.text == ".var" {
                                "NAME int|bytes|key SLOT START END SCOPE"
                            } else {
                                "ROUTINE FILE LINE START END PARENT"
                            }
                        ),
                    ));
                }
                self.debug_section(d.pos)?;
                let n = |me: &Self, i: usize, max: u64| me.number(&args[i], max);
                if d.text == ".var" {
                    let kind = match args[1].text.as_str() {
                        "int" => VarKind::Int,
                        "bytes" => VarKind::Bytes,
                        "key" => VarKind::Key,
                        _ => return Err(self.err(args[1].pos, "a variable is int, bytes or key")),
                    };
                    let var = DebugVar {
                        name: name.text.clone(),
                        kind,
                        slot: n(self, 2, u8::MAX.into())? as u8,
                        start: n(self, 3, u32::MAX.into())? as u32,
                        end: n(self, 4, u32::MAX.into())? as u32,
                        scope: n(self, 5, u16::MAX.into())? as u16,
                    };
                    let dbg = self.explicit_debug.get_or_insert_with(DebugInfo::default);
                    if usize::from(var.scope) > dbg.scopes.len() || dbg.vars.len() >= MAX_ENTRIES {
                        return Err(self.err(
                            args[5].pos,
                            format!("no `.scope` number {} before this `.var`", var.scope),
                        ));
                    }
                    dbg.vars.push(var);
                } else {
                    let scope = DebugScope {
                        routine: name.text.clone(),
                        call_file: n(self, 1, u16::MAX.into())? as u16,
                        call_line: n(self, 2, u32::MAX.into())? as u32,
                        start: n(self, 3, u32::MAX.into())? as u32,
                        end: n(self, 4, u32::MAX.into())? as u32,
                        parent: n(self, 5, u16::MAX.into())? as u16,
                    };
                    let dbg = self.explicit_debug.get_or_insert_with(DebugInfo::default);
                    if usize::from(scope.call_file) >= dbg.files.len()
                        || usize::from(scope.parent) > dbg.scopes.len()
                        || dbg.scopes.len() >= MAX_ENTRIES
                    {
                        return Err(self.err(
                            args[1].pos,
                            "a `.scope` names a declared `.file` and an earlier `.scope` (or 0)",
                        ));
                    }
                    dbg.scopes.push(scope);
                }
                Ok(())
            }
            ".include" | ".macro" => Err(self.err(
                d.pos,
                format!("`{}` is handled earlier; this should not happen", d.text),
            )),
            other => Err(self.err(d.pos, format!("unknown directive `{other}`"))),
        }
    }

    /// Starts (or continues) the explicit debug section; `.debug_raw` excludes it.
    fn debug_section(&mut self, at: Pos) -> R<()> {
        if self.raw_debug.is_some() {
            return Err(self.err(at, "a script has one debug section (`.debug_raw` given)"));
        }
        self.explicit_debug.get_or_insert_with(DebugInfo::default);
        Ok(())
    }

    fn header_value(&mut self, d: &Token, args: &[Token], max: u64) -> R<u64> {
        let key: &'static str = match d.text.as_str() {
            ".city" => ".city",
            ".script" => ".script",
            ".version" => ".version",
            ".registers" => ".registers",
            _ => ".key_slots",
        };
        if let Some(first) = self.seen.get(key) {
            return Err(self.err(
                d.pos,
                format!("`{key}` given twice (first at line {})", first.line),
            ));
        }
        self.seen.insert(key, d.pos);
        let Some(v) = args.first() else {
            return Err(self.err(
                end_pos(core::slice::from_ref(d)),
                format!("`{key}` needs a number"),
            ));
        };
        self.no_more(&args[1..])?;
        self.number(v, max)
    }

    fn decl(&mut self, d: &Token, args: &[Token]) -> R<()> {
        let Some(name) = args.first() else {
            return Err(self.err(
                end_pos(core::slice::from_ref(d)),
                format!("`{}` needs a name and a type", d.text),
            ));
        };
        if name.kind != Kind::Word || !is_valid_name(&name.text) {
            return Err(self.err(
                name.pos,
                format!(
                    "bad name {} (a letter or `_`, then letters, digits or `_`, at most 32)",
                    name.describe()
                ),
            ));
        }
        let ty = self.value_type(&args[1..], name)?;
        let list = if d.text == ".input" {
            &self.inputs
        } else {
            &self.outputs
        };
        if list.iter().any(|x| *x.name == *name.text) {
            return Err(self.err(name.pos, format!("`{}` is declared twice", name.text)));
        }
        if list.len() >= MAX_ENTRIES {
            return Err(self.err(name.pos, format!("more than {MAX_ENTRIES} declarations")));
        }
        let decl = Decl {
            name: Arc::from(name.text.as_str()),
            ty,
        };
        if d.text == ".input" {
            self.inputs.push(decl);
        } else {
            self.outputs.push(decl);
        }
        Ok(())
    }

    fn value_type(&self, toks: &[Token], after: &Token) -> R<ValueType> {
        let Some(t) = toks.first() else {
            return Err(self.err(
                end_pos(core::slice::from_ref(after)),
                format!("missing type ({INT_TYPES})"),
            ));
        };
        let bad = || {
            self.err(
                t.pos,
                format!("unknown type {} (expected {INT_TYPES})", t.describe()),
            )
        };
        let (ty, used) = match t.word().ok_or_else(bad)? {
            "u8" => (ValueType::Int { bits: 8 }, 1),
            "u16" => (ValueType::Int { bits: 16 }, 1),
            "u32" => (ValueType::Int { bits: 32 }, 1),
            "u64" => (ValueType::Int { bits: 64 }, 1),
            "bcd_datetime" => (ValueType::BcdDateTime, 1),
            "bytes" => match toks.get(1) {
                Some(open) if open.is_punct('[') => {
                    let n = toks
                        .get(2)
                        .ok_or_else(|| self.err(end_pos(toks), "expected a length: `bytes[N]`"))?;
                    let len = self.number(n, u16::MAX.into())? as u16;
                    match toks.get(3) {
                        Some(c) if c.is_punct(']') => {}
                        Some(c) => return Err(self.err(c.pos, "expected `]`")),
                        None => return Err(self.err(end_pos(toks), "expected `]`")),
                    }
                    (ValueType::BytesN { len }, 4)
                }
                _ => (ValueType::Bytes, 1),
            },
            "key" => {
                // key ( ALG , USAGE )
                let shape = [
                    toks.get(1).is_some_and(|t| t.is_punct('(')),
                    toks.get(2).is_some_and(|t| t.kind == Kind::Word),
                    toks.get(3).is_some_and(|t| t.is_punct(',')),
                    toks.get(4).is_some_and(|t| t.kind == Kind::Word),
                    toks.get(5).is_some_and(|t| t.is_punct(')')),
                ];
                if let Some(i) = shape.iter().position(|ok| !ok) {
                    let at = toks
                        .get(i + 1)
                        .map(|t| t.pos)
                        .unwrap_or_else(|| end_pos(toks));
                    return Err(self.err(at, "expected `key(ALG, USAGE)`, e.g. `key(des3, load)`"));
                }
                let alg = KeyAlg::from_name(&toks[2].text).ok_or_else(|| {
                    self.err(
                        toks[2].pos,
                        format!(
                            "unknown key algorithm `{}` (des, des3, sm4, m1)",
                            toks[2].text
                        ),
                    )
                })?;
                let usage = KeyUsage::from_name(&toks[4].text)
                    .filter(|u| u.is_declarable())
                    .ok_or_else(|| {
                        self.err(
                            toks[4].pos,
                            format!("unknown key usage `{}` ({})", toks[4].text, usage_names()),
                        )
                    })?;
                (ValueType::Key { alg, usage }, 6)
            }
            _ => return Err(bad()),
        };
        self.no_more(&toks[used..])?;
        Ok(ty)
    }

    fn names(&mut self, d: &Token, args: &[Token]) -> R<()> {
        let is_reg = d.text == ".reg";
        let groups = split_commas(self.srcs, args, d.pos)?;
        if groups.is_empty() {
            return Err(self.err(
                end_pos(core::slice::from_ref(d)),
                format!("`{}` needs at least one name", d.text),
            ));
        }
        for g in groups {
            let t = &g[0];
            self.no_more(&g[1..])?;
            if t.kind != Kind::Word || !is_valid_name(&t.text) {
                return Err(self.err(t.pos, format!("bad name {}", t.describe())));
            }
            let raw = if is_reg {
                raw_index(&t.text, 'r')
            } else {
                raw_index(&t.text, 'k')
            };
            if raw.is_some() {
                return Err(self.err(
                    t.pos,
                    format!(
                        "`{}` already names a {}",
                        t.text,
                        if is_reg { "register" } else { "key slot" }
                    ),
                ));
            }
            let map = if is_reg {
                &mut self.reg_names
            } else {
                &mut self.key_names
            };
            if map.contains_key(&t.text) {
                return Err(self
                    .srcs
                    .err(t.pos, format!("`{}` is declared twice", t.text)));
            }
            let next = map.len();
            if next > 255 {
                let what = if is_reg { "registers" } else { "key slots" };
                return Err(self
                    .srcs
                    .err(t.pos, format!("too many {what}: at most 256 names")));
            }
            map.insert(t.text.clone(), next as u8);
        }
        Ok(())
    }

    fn constant(&mut self, d: &Token, args: &[Token]) -> R<()> {
        let (Some(name), Some(eq)) = (args.first(), args.get(1)) else {
            return Err(self.err(
                after(d, args),
                "expected `.const NAME = [hex bytes]` or `.const NAME = number`",
            ));
        };
        if name.kind != Kind::Word || !is_valid_name(&name.text) {
            return Err(self.err(name.pos, format!("bad constant name {}", name.describe())));
        }
        if !eq.is_punct('=') {
            return Err(self.err(eq.pos, "expected `=`"));
        }
        if self.const_names.contains_key(&name.text) {
            return Err(self.err(
                name.pos,
                format!("constant `{}` is defined twice", name.text),
            ));
        }
        let value = &args[2..];
        let c = self.literal(value, eq)?;
        let index = self.add_constant(c, name.pos, false)?;
        self.const_names.insert(name.text.clone(), index);
        Ok(())
    }

    /// A `[hex]` or integer literal filling `toks` completely.
    fn literal(&self, toks: &[Token], after: &Token) -> R<Constant> {
        match toks.first() {
            Some(t) if t.is_punct('[') => {
                let (bytes, rest) = self.bytes_literal(toks, after, MAX_CODE_LEN)?;
                self.no_more(rest)?;
                if bytes.len() > MAX_BYTES_LEN {
                    return Err(self.err(
                        t.pos,
                        format!("constant of {} bytes exceeds {MAX_BYTES_LEN}", bytes.len()),
                    ));
                }
                Ok(Constant::Bytes(bytes))
            }
            Some(t) => {
                self.no_more(&toks[1..])?;
                Ok(Constant::Int(self.number(t, u64::MAX)?))
            }
            None => Err(self.err(
                end_pos(core::slice::from_ref(after)),
                "expected `[hex bytes]` or a number",
            )),
        }
    }

    /// Adds a pool entry (or, for inline literals, reuses an equal one).
    fn add_constant(&mut self, c: Constant, pos: Pos, dedup: bool) -> R<u16> {
        let key = ckey(&c);
        if dedup && let Some(&i) = self.pool.get(&key) {
            return Ok(i);
        }
        if self.constants.len() >= MAX_ENTRIES {
            return Err(self.err(pos, format!("more than {MAX_ENTRIES} constants")));
        }
        let index = self.constants.len() as u16;
        self.pool.entry(key).or_insert(index);
        self.constants.push(c);
        Ok(index)
    }

    /// Parses `[ hex… ]` at the front of `toks`; returns the bytes and what follows.
    fn bytes_literal<'t>(
        &self,
        toks: &'t [Token],
        after: &Token,
        limit: usize,
    ) -> R<(Vec<u8>, &'t [Token])> {
        match toks.first() {
            Some(t) if t.is_punct('[') => {}
            Some(t) => {
                return Err(self.err(
                    t.pos,
                    format!("expected `[hex bytes]`, found {}", t.describe()),
                ));
            }
            None => {
                return Err(self.err(
                    end_pos(core::slice::from_ref(after)),
                    "expected `[hex bytes]`",
                ));
            }
        }
        let mut bytes = Vec::new();
        for (i, t) in toks.iter().enumerate().skip(1) {
            if t.is_punct(']') {
                return Ok((bytes, &toks[i + 1..]));
            }
            let w = t.word().ok_or_else(|| {
                self.err(
                    t.pos,
                    format!("expected hex bytes or `]`, found {}", t.describe()),
                )
            })?;
            if let Some(bad) = w.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
                let col = t.pos.col + bad.0 as u32;
                return Err(self.err(
                    Pos { col, ..t.pos },
                    format!("bad hex digit {:?} in `{w}`", bad.1),
                ));
            }
            if w.len() % 2 != 0 {
                return Err(self.err(t.pos, format!("bad hex: `{w}` has an odd number of digits")));
            }
            if bytes.len() + w.len() / 2 > limit {
                return Err(self.err(t.pos, "byte string too long"));
            }
            for pair in w.as_bytes().chunks(2) {
                let hi = (pair[0] as char).to_digit(16).unwrap_or(0);
                let lo = (pair[1] as char).to_digit(16).unwrap_or(0);
                bytes.push((hi * 16 + lo) as u8);
            }
        }
        Err(self.err(end_pos(toks), "missing `]`"))
    }

    /// A decimal or `0x` hex number no greater than `max`.
    fn number(&self, t: &Token, max: u64) -> R<u64> {
        let w = t
            .word()
            .ok_or_else(|| self.err(t.pos, format!("expected a number, found {}", t.describe())))?;
        let v = parse_number(w).ok_or_else(|| {
            if is_numeric_shape(w) {
                self.err(t.pos, format!("value {w} out of range (at most {max})"))
            } else {
                self.err(t.pos, format!("expected a number, found `{w}`"))
            }
        })?;
        if v > max {
            return Err(self.err(t.pos, format!("value {w} out of range (at most {max})")));
        }
        Ok(v)
    }

    // ---- pass 2 ----

    fn finish(mut self, opts: &AsmOptions) -> R<CommandScript> {
        let items = core::mem::take(&mut self.items);
        let mut code = Vec::with_capacity(self.offset as usize);
        for item in &items {
            match item {
                Item::Raw(b) => code.extend_from_slice(b),
                Item::Instr { op, toks } => {
                    let instr = self.instruction(*op, toks)?;
                    instr.encode(&mut code);
                }
            }
        }
        let registers = match (self.registers, self.max_reg) {
            (Some(n), _) => n,
            (None, None) => 0,
            (None, Some((255, at))) => {
                return Err(self.err(
                    at,
                    "too many registers: r255 needs 256 (use at most r254, or set `.registers`)",
                ));
            }
            (None, Some((m, _))) => m + 1,
        };
        let key_slots = match (self.key_slots, self.max_key) {
            (Some(n), _) => n,
            (None, None) => 0,
            (None, Some((255, at))) => {
                return Err(self.err(
                    at,
                    "too many key slots: k255 needs 256 (use at most k254, or set `.key_slots`)",
                ));
            }
            (None, Some((m, _))) => m + 1,
        };
        let code_len = code.len() as u32;
        let debug = match self.explicit_debug.take() {
            Some(mut d) => {
                d.lines.retain(|e| e.offset < code_len);
                // An edited listing whose variable table no longer fits the code: the
                // table goes (a debugger then shows instructions), the lines stay.
                let fits = |start: u32, end: u32| start <= end && end < code_len;
                if !d.vars.iter().all(|v| fits(v.start, v.end))
                    || !d.scopes.iter().all(|s| fits(s.start, s.end))
                {
                    d.vars.clear();
                    d.scopes.clear();
                }
                Some(d)
            }
            None if opts.debug && self.raw_debug.is_none() => Some(DebugInfo {
                files: self
                    .srcs
                    .files
                    .iter()
                    .map(|(n, text)| DebugFile {
                        name: truncate(n, MAX_DEBUG_NAME),
                        sm3: crate::crypto::sm3(text.as_bytes()),
                    })
                    .collect(),
                lines: core::mem::take(&mut self.auto_lines),
                ..DebugInfo::default()
            }),
            None => None,
        };
        let unsupported_debug = self.raw_debug.take();
        Ok(CommandScript {
            header: Header {
                registers,
                key_slots,
                ..self.header
            },
            constants: self.constants,
            inputs: self.inputs,
            outputs: self.outputs,
            code,
            debug,
            unsupported_debug,
        })
    }

    fn instruction(&mut self, op: Opcode, toks: &[Token]) -> R<Instr> {
        let m = &toks[0];
        let specs = op.operand_specs();
        let groups = split_commas(self.srcs, &toks[1..], m.pos)?;
        if groups.len() != specs.len() {
            let want = if specs.is_empty() {
                String::from("no operands")
            } else {
                let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
                format!("{} operand(s): {}", specs.len(), names.join(", "))
            };
            let at = groups.get(specs.len()).map(|g| g[0].pos).unwrap_or(m.pos);
            return Err(self.err(
                at,
                format!("`{}` takes {want}; found {}", m.text, groups.len()),
            ));
        }
        let mut ops = [Operand::U8(0); MAX_OPERANDS];
        for (i, (spec, g)) in specs.iter().zip(&groups).enumerate() {
            ops[i] = self.operand(spec.kind, spec.name, g, m)?;
        }
        Instr::from_operands(op, &ops[..specs.len()])
            .ok_or_else(|| self.err(m.pos, "operands do not fit the instruction"))
    }

    /// A register or key-slot operand: a declared name or a raw `r`/`k` index. Records
    /// the highest one used (the header counts come from it).
    fn slot_operand(&mut self, w: &str, pos: Pos, which: SlotKind, expected: &str) -> R<u8> {
        let (names, prefix, noun, directive) = match which {
            SlotKind::Reg => (&self.reg_names, 'r', "register", ".reg"),
            SlotKind::Key => (&self.key_names, 'k', "key slot", ".key"),
        };
        let index = match names.get(w).copied().or_else(|| raw_index(w, prefix)) {
            Some(i) => i,
            None if looks_raw(w, prefix) => {
                return Err(self.err(
                    pos,
                    format!("{noun} `{w}` out of range ({prefix}0..{prefix}255)"),
                ));
            }
            None if is_valid_name(w) => {
                return Err(self.err(
                    pos,
                    format!("unknown {noun} `{w}` (declare it with `{directive} {w}` or use {prefix}0..{prefix}254)"),
                ));
            }
            None => return Err(self.err(pos, format!("{expected}, found `{w}`"))),
        };
        let max = match which {
            SlotKind::Reg => &mut self.max_reg,
            SlotKind::Key => &mut self.max_key,
        };
        if max.is_none_or(|(m, _)| index > m) {
            *max = Some((index, pos));
        }
        Ok(index)
    }

    fn operand(&mut self, kind: OperandKind, name: &str, g: &[Token], m: &Token) -> R<Operand> {
        let t = &g[0];
        let what = |desc: &str| format!("operand `{name}` of `{}` must be {desc}", m.text);
        if kind == OperandKind::Const {
            return self.const_operand(g, m, name);
        }
        let Some(w) = t.word() else {
            return Err(self.err(
                t.pos,
                format!("{}, found {}", what(kind_desc(kind)), t.describe()),
            ));
        };
        self.no_more(&g[1..])?;
        Ok(match kind {
            OperandKind::Reg => {
                Operand::Reg(self.slot_operand(w, t.pos, SlotKind::Reg, &what(kind_desc(kind)))?)
            }
            OperandKind::Key => {
                Operand::Key(self.slot_operand(w, t.pos, SlotKind::Key, &what(kind_desc(kind)))?)
            }
            OperandKind::Input | OperandKind::Output => {
                let (list, label) = if kind == OperandKind::Input {
                    (&self.inputs, "input")
                } else {
                    (&self.outputs, "output")
                };
                let index =
                    if let Some(n) = w.strip_prefix('#') {
                        self.number(
                            &Token {
                                text: n.into(),
                                pos: Pos {
                                    col: t.pos.col + 1,
                                    ..t.pos
                                },
                                kind: Kind::Word,
                            },
                            u16::MAX.into(),
                        )? as u16
                    } else {
                        match list.iter().position(|d| &*d.name == w) {
                            Some(i) => i as u16,
                            None => return Err(self.err(
                                t.pos,
                                format!(
                                    "unknown {label} `{w}` (declare it with `.{label} {w} TYPE`)"
                                ),
                            )),
                        }
                    };
                if kind == OperandKind::Input {
                    Operand::Input(index)
                } else {
                    Operand::Output(index)
                }
            }
            OperandKind::Target => {
                let target = if let Some(n) = w.strip_prefix('@') {
                    self.number(
                        &Token {
                            text: n.into(),
                            pos: Pos {
                                col: t.pos.col + 1,
                                ..t.pos
                            },
                            kind: Kind::Word,
                        },
                        u32::MAX.into(),
                    )? as u32
                } else {
                    match self.labels.get(w) {
                        Some((off, _)) => *off,
                        None => return Err(self.err(t.pos, format!("unknown label `{w}`"))),
                    }
                };
                Operand::Target(target)
            }
            OperandKind::U8 => Operand::U8(self.number(t, u8::MAX.into())? as u8),
            OperandKind::U16 => Operand::U16(self.number(t, u16::MAX.into())? as u16),
            OperandKind::U32 => Operand::U32(self.number(t, u32::MAX.into())? as u32),
            OperandKind::Sw => Operand::Sw(parse_sw(w).ok_or_else(|| {
                self.err(t.pos, format!("{}, found `{w}`", what(kind_desc(kind))))
            })?),
            OperandKind::Const => return self.const_operand(g, m, name),
        })
    }

    fn const_operand(&mut self, g: &[Token], m: &Token, name: &str) -> R<Operand> {
        let t = &g[0];
        if let Some(w) = t.word() {
            if let Some(&i) = self.const_names.get(w) {
                self.no_more(&g[1..])?;
                return Ok(Operand::Const(i));
            }
            if let Some(n) = w.strip_prefix('#') {
                self.no_more(&g[1..])?;
                let tok = Token {
                    text: n.into(),
                    pos: Pos {
                        col: t.pos.col + 1,
                        ..t.pos
                    },
                    kind: Kind::Word,
                };
                return Ok(Operand::Const(self.number(&tok, u16::MAX.into())? as u16));
            }
            if is_valid_name(w) {
                return Err(self.err(
                    t.pos,
                    format!("unknown constant `{w}` (define it with `.const {w} = …`)"),
                ));
            }
        }
        if !(t.is_punct('[') || t.word().is_some()) {
            return Err(self.err(
                t.pos,
                format!(
                    "operand `{name}` of `{}` must be a constant, found {}",
                    m.text,
                    t.describe()
                ),
            ));
        }
        let c = self.literal(g, m)?;
        Ok(Operand::Const(self.add_constant(c, t.pos, true)?))
    }
}

/// The position after the last of `args`, or after `d` when there are none.
fn after(d: &Token, args: &[Token]) -> Pos {
    if args.is_empty() {
        end_pos(core::slice::from_ref(d))
    } else {
        end_pos(args)
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    String::from(&s[..end])
}

/// Which numbered operand space a name lives in.
#[derive(Clone, Copy)]
enum SlotKind {
    Reg,
    Key,
}

fn kind_desc(kind: OperandKind) -> &'static str {
    match kind {
        OperandKind::Reg => "a register (r0..r254 or a `.reg` name)",
        OperandKind::Key => "a key slot (k0..k254 or a `.key` name)",
        OperandKind::Const => "a constant",
        OperandKind::Input => "a declared input",
        OperandKind::Output => "a declared output",
        OperandKind::Target => "a label",
        OperandKind::U8 => "a number (0..=255)",
        OperandKind::U16 => "a number (0..=65535)",
        OperandKind::U32 => "a number (0..=4294967295)",
        OperandKind::Sw => "a status word such as `9000` or `63Cx`",
    }
}

/// The usages a `key(ALG, USAGE)` input may name (derived-only usages are left out).
fn usage_names() -> String {
    KeyUsage::ALL
        .iter()
        .filter(|u| u.is_declarable())
        .map(|u| u.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `r12` → 12 (for `prefix` 'r'); `None` unless it is that shape and fits a byte.
pub(crate) fn raw_index(w: &str, prefix: char) -> Option<u8> {
    let digits = w.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u8>().ok()
}

/// `r` followed by digits only (a raw register or key-slot spelling).
fn looks_raw(w: &str, prefix: char) -> bool {
    w.strip_prefix(prefix)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_numeric_shape(w: &str) -> bool {
    match w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        Some(h) => !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => w.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Decimal or `0x` hex.
pub(crate) fn parse_number(w: &str) -> Option<u64> {
    if !is_numeric_shape(w) {
        return None;
    }
    match w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => w.parse().ok(),
    }
}

/// `63Cx` (nibble form) or `VVVV/MMMM` (value and mask in hex).
pub(crate) fn parse_sw(w: &str) -> Option<SwPattern> {
    if let Some((v, m)) = w.split_once('/') {
        if v.len() != 4 || m.len() != 4 {
            return None;
        }
        let value = u16::from_str_radix(v, 16).ok()?;
        let mask = u16::from_str_radix(m, 16).ok()?;
        if !v.bytes().chain(m.bytes()).all(|b| b.is_ascii_hexdigit()) || value & !mask != 0 {
            return None;
        }
        return Some(SwPattern { value, mask });
    }
    SwPattern::parse(w)
}
