//! The high-level script language (`.cvs`): what card-company engineers write.
//!
//! A `.cvs` program compiles to `.casm` text plus a line map (generated line → source
//! `file:line:col`); the `.casm` goes through the one assembler ([`crate::asm`]), so
//! both levels give the same verified bytecode. The debug section, the lints and any
//! error are then mapped back to the `.cvs` lines: `--trace-vm` and `--step` show the
//! high-level source. [`crate::asm::assemble`] and [`crate::asm::assemble_file`]
//! dispatch here for names ending in `.cvs`. The reference is `docs/casm.md`.
//!
//! ```text
//! ; city 731, load — the shared flow is in ../common/ep_load.cvs
//! city 731
//! script 2
//! version 1
//! input amount: u32, terminal: bytes[6], now: bcd_datetime
//! input dlk: key(des3, load), dtk: key(des3, tac)
//! const ALG_ID = [00]
//! include "../common/ep_load.cvs"
//! ```
//!
//! In brief: one statement per line, `;` comments; `name = expr` (registers are
//! allocated by the compiler and reused when dead); byte strings `[80 00 {expr}]`,
//! `a ++ b` (or `a ‖ b`), `x[4..8]`; integers with `+ - * / % & << >>`; conversions
//! `n:u32be`, `n:bcd4`, `b:int`, `b:bcd_int`; `apdu 80 50 00 02 [data] le 0x10 -> r`
//! or `-> bal:4 atc:2 _:1 …`, followed by `on 9403 fail code` / `else fail code`
//! lines; `fail_codes { name = 5 }`, `const`, `routine name(p) { … }` (inline),
//! `if`/`else`, `for i in 0..N { }`, `repeat N { }`, `include "f.cvs"`, `out name =
//! expr`, `commit_point`, `done`, `fail code`. Keys are their own type: `mac(k, d)`,
//! `check_mac(k, d, m) else fail c`, `session_key(k, d)`, `tac_key(k)`, `div_key(k,
//! d)`, `encrypt`/`decrypt`, `load_reader_key(k, n)`; any expression that would make
//! key bytes into a byte string or an integer is a type error.
//!
//! Any input gives a program or a positioned error: includes, expression and block
//! nesting, routine expansion and the program size are bounded, and so is the total
//! work ([`MAX_COMPILE_STEPS`]: every statement of every inline routine expansion
//! counts, calls of empty routines too). Files are read through the caller's
//! [`SourceLoader`]; [`crate::asm::assemble_file`] confines them to the root file's
//! include root ([`crate::asm::include_root`]).

mod ast;
mod codegen;
mod lexer;
mod parser;
mod regalloc;
pub(crate) mod suggest;

pub use suggest::closest;

#[cfg(test)]
mod tests;

use crate::asm::{AsmError, AsmOptions, Assembled, MapLoader, SourceLoader, SourceText, Warning};
use crate::script::{
    DebugFile, DebugInfo, DebugScope, DebugVar, LineEntry, MAX_DEBUG_NAME, VarKind, is_debug_symbol,
};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub use codegen::{
    BYTES_PER_STEP, MAX_COMPILE_STEPS, MAX_DECLS, MAX_INSTRUCTIONS, MAX_LOOPS, MAX_ROUTINE_DEPTH,
};
pub use parser::{KEYWORDS, MAX_BLOCK_DEPTH, MAX_EXPR_DEPTH};

/// The file extension of the high-level language.
pub const EXTENSION: &str = "cvs";

/// Whether `name` is a high-level source (ends in `.cvs`).
pub fn is_high_level(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| ext == EXTENSION)
}

/// A position in a high-level source: file index (into [`Compiled::sources`]),
/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Span {
    /// Index into the source files.
    pub file: u16,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub col: u32,
}

/// A compiler diagnostic before it is given a file name and the source line.
#[derive(Debug, Clone)]
pub(crate) struct Diag {
    span: Span,
    message: String,
}

impl Diag {
    pub(crate) fn new(span: Span, message: impl Into<String>) -> Self {
        Diag {
            span,
            message: message.into(),
        }
    }
}

/// A source variable, loaded input or routine parameter, where it is bound and its
/// type: what an editor shows on hover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The name as written.
    pub name: String,
    /// Where it is bound (its first assignment, the declaration of an input, or the
    /// routine's parameter list).
    pub span: Span,
    /// `int`, `bytes` or `key`.
    pub ty: &'static str,
    /// The routine whose expansion binds it (a parameter or a routine's own variable);
    /// `None` for the flow itself.
    pub routine: Option<String>,
}

/// The result of [`compile`]: `.casm` text and where each of its lines came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The generated assembly (one instruction per line).
    pub casm: String,
    /// Per generated line (index 0 = line 1): the high-level position it came from,
    /// if any (labels and the banner have none).
    pub line_map: Vec<Option<Span>>,
    /// The high-level files read, in [`Span::file`] order (index 0: the main file).
    pub sources: Vec<SourceText>,
    /// Every variable, loaded input and routine parameter that has storage (one entry
    /// per binding; an inline routine expanded twice binds its names twice).
    pub bindings: Vec<Binding>,
    /// The variable and scope tables in generated lines, for the debug section.
    symbols: Symbols,
}

/// [`codegen::Generated`]'s variables and scopes, kept until the assembler gives each
/// generated line its code offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Symbols {
    vars: Vec<codegen::GenVar>,
    scopes: Vec<codegen::GenScope>,
}

impl Compiled {
    /// The high-level position of generated line `line` (1-based).
    pub fn origin(&self, line: u32) -> Option<Span> {
        self.line_map
            .get((line as usize).checked_sub(1)?)
            .copied()
            .flatten()
    }

    fn error(&self, span: Span, message: String) -> AsmError {
        error_at(&self.sources, span, message)
    }
}

fn error_at(sources: &[SourceText], span: Span, message: String) -> AsmError {
    let src = sources.get(usize::from(span.file));
    AsmError {
        file: src.map(|s| s.name.clone()).unwrap_or_default(),
        line: span.line,
        col: span.col,
        message,
        source_line: src
            .and_then(|s| s.text.lines().nth((span.line as usize).saturating_sub(1)))
            .map(String::from)
            .unwrap_or_default(),
    }
}

/// Compiles the `.cvs` program `source` (called `name`; `include`s are read through
/// `loader`, relative to the including file) to `.casm` and its line map.
pub fn compile(
    source: &str,
    name: &str,
    loader: &mut dyn SourceLoader,
) -> Result<Compiled, AsmError> {
    let mut sources = alloc::vec![SourceText {
        name: String::from(name),
        text: String::from(source),
    }];
    let mut stack = alloc::vec![String::from(name)];
    let mut items = Vec::new();
    read_file(0, &mut sources, &mut stack, loader, &mut items)
        .map_err(|d| error_at(&sources, d.span, d.message))?;
    let generated = codegen::generate(items).map_err(|d| error_at(&sources, d.span, d.message))?;
    let routine_of = |scope: u32| {
        let i = usize::try_from(scope).ok()?.checked_sub(1)?;
        generated.scopes.get(i).map(|s| s.routine.clone())
    };
    let bindings = generated
        .vars
        .iter()
        .map(|v| Binding {
            name: v.name.clone(),
            span: v.span,
            ty: v.ty.name(),
            routine: routine_of(v.scope),
        })
        .collect();
    let symbols = Symbols {
        vars: generated.vars,
        scopes: generated.scopes,
    };
    Ok(Compiled {
        casm: generated.casm,
        line_map: generated.line_map,
        sources,
        bindings,
        symbols,
    })
}

fn read_file(
    file: u16,
    sources: &mut Vec<SourceText>,
    stack: &mut Vec<String>,
    loader: &mut dyn SourceLoader,
    items: &mut Vec<ast::Item>,
) -> Result<(), Diag> {
    let toks =
        lexer::lex(&sources[usize::from(file)].text, file).map_err(|(s, m)| Diag::new(s, m))?;
    let mut p = parser::Parser::new(&toks);
    while let Some(item) = p.item()? {
        match item {
            Ok(mut v) => items.append(&mut v),
            Err((path, span)) => {
                let from = sources[usize::from(file)].name.clone();
                let (resolved, text) = loader
                    .load(&path, &from)
                    .map_err(|why| Diag::new(span, format!("cannot include \"{path}\": {why}")))?;
                if stack.contains(&resolved) {
                    let mut chain = stack.join(" -> ");
                    chain.push_str(" -> ");
                    chain.push_str(&resolved);
                    return Err(Diag::new(span, format!("include cycle: {chain}")));
                }
                // A file is included once: a second `include` of it adds nothing.
                if sources.iter().any(|s| s.name == resolved) {
                    continue;
                }
                if stack.len() > crate::asm::MAX_INCLUDE_DEPTH {
                    return Err(Diag::new(
                        span,
                        format!(
                            "includes nested deeper than {}",
                            crate::asm::MAX_INCLUDE_DEPTH
                        ),
                    ));
                }
                if sources.len() >= crate::asm::MAX_FILES {
                    return Err(Diag::new(
                        span,
                        format!("more than {} source files", crate::asm::MAX_FILES),
                    ));
                }
                sources.push(SourceText {
                    name: resolved.clone(),
                    text,
                });
                stack.push(resolved);
                // MAX_FILES keeps the index within u16.
                read_file((sources.len() - 1) as u16, sources, stack, loader, items)?;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// Compiles and assembles a `.cvs` program: the [`Assembled`] script, its warnings
/// and its debug section all name the `.cvs` files and lines, never the generated
/// `.casm`. [`Assembled::sources`] holds the `.cvs` texts (what a trace shows).
pub fn assemble(
    source: &str,
    name: &str,
    opts: &AsmOptions,
    loader: &mut dyn SourceLoader,
) -> Result<Assembled, AsmError> {
    let compiled = compile(source, name, loader)?;
    let casm_name = format!("{name}.casm");
    let mut asm =
        crate::asm::assemble_casm(&compiled.casm, &casm_name, opts, &mut MapLoader::new())
            .map_err(|e| match compiled.origin(e.line) {
                Some(span) => compiled.error(span, e.message),
                // The compiler emits only what assembles; say so if it did not.
                None => compiled.error(
                    Span::default(),
                    format!("internal: generated code: {}", e.message),
                ),
            })?;
    asm.warnings = asm
        .warnings
        .into_iter()
        .map(|w| match compiled.origin(w.line) {
            Some(s) => Warning {
                file: compiled.sources[usize::from(s.file)].name.clone(),
                line: s.line,
                col: s.col,
                message: w.cvs_message.unwrap_or(w.message),
                cvs_message: None,
                lint: w.lint,
            },
            None => Warning {
                message: w.cvs_message.unwrap_or(w.message),
                cvs_message: None,
                ..w
            },
        })
        .collect();
    if let Some(dbg) = asm.script.debug.as_mut() {
        let (vars, scopes) = debug_symbols(&compiled, &dbg.lines);
        *dbg = DebugInfo {
            files: compiled
                .sources
                .iter()
                .map(|s| DebugFile {
                    name: truncate(&s.name, MAX_DEBUG_NAME),
                    sm3: crate::crypto::sm3(s.text.as_bytes()),
                })
                .collect(),
            lines: dbg
                .lines
                .iter()
                .filter_map(|e| {
                    let s = compiled.origin(e.line)?;
                    Some(LineEntry {
                        offset: e.offset,
                        file: s.file,
                        line: s.line,
                    })
                })
                .collect(),
            vars,
            scopes,
        };
    }
    asm.sources = compiled.sources;
    Ok(asm)
}

/// The variable and scope tables in code offsets: `lines` is the assembler's line table
/// of the generated `.casm` (one row per instruction). A variable or scope whose lines
/// hold no instruction, or whose name cannot be kept, is left out (a scope's variables
/// and inner scopes with it).
fn debug_symbols(compiled: &Compiled, lines: &[LineEntry]) -> (Vec<DebugVar>, Vec<DebugScope>) {
    let offset_of: BTreeMap<u32, u32> = lines.iter().map(|e| (e.line, e.offset)).collect();
    let offsets = |(first, last): (u32, u32)| {
        let start = offset_of.range(first..).next().map(|(_, &o)| o)?;
        let end = offset_of.range(..=last).next_back().map(|(_, &o)| o)?;
        (start <= end).then_some((start, end))
    };
    // Old scope number (1-based) -> new one; 0 stays the flow, a dropped scope is None.
    let mut renumber: Vec<Option<u16>> = alloc::vec![Some(0)];
    let mut scopes = Vec::new();
    for s in &compiled.symbols.scopes {
        let parent = renumber.get(s.parent as usize).copied().flatten();
        let kept = match (s.lines.and_then(offsets), parent) {
            (Some((start, end)), Some(parent))
                if is_debug_symbol(&s.routine) && scopes.len() < crate::script::MAX_ENTRIES =>
            {
                scopes.push(DebugScope {
                    routine: s.routine.clone(),
                    call_file: s.call.file,
                    call_line: s.call.line,
                    start,
                    end,
                    parent,
                });
                Some(scopes.len() as u16)
            }
            _ => None,
        };
        renumber.push(kept);
    }
    let vars = compiled
        .symbols
        .vars
        .iter()
        .filter(|v| is_debug_symbol(&v.name))
        .filter_map(|v| {
            let scope = renumber.get(v.scope as usize).copied().flatten()?;
            let (start, end) = offsets(v.lines)?;
            Some(DebugVar {
                name: v.name.clone(),
                kind: match v.ty {
                    ast::Ty::Int => VarKind::Int,
                    ast::Ty::Bytes => VarKind::Bytes,
                    ast::Ty::Key => VarKind::Key,
                },
                slot: u8::try_from(v.slot).ok()?,
                start,
                end,
                scope,
            })
        })
        .take(crate::script::MAX_ENTRIES)
        .collect();
    (vars, scopes)
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    String::from(&s[..end])
}
