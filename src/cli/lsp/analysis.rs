//! What the server says about a document: diagnostics from the compiler and the lints,
//! hover text, definitions. Pure functions of the text and the files on disk.

use super::outline::{Kind, Lang, Outline, Symbol, Tok, TokKind, VarOrigin, token_at, tokens};
use cardvm::asm::{AsmError, AsmOptions, FsLoader, MapLoader, SourceLoader, Warning};
use cardvm::isa::Opcode;
use lsp_types::{Diagnostic, DiagnosticSeverity, NumberOrString, Position, Range};
use std::path::{Path, PathBuf};

/// The path of a `file:` URI (percent-decoded), if it is one.
pub fn uri_to_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    // `file:///p` or `file://localhost/p`.
    let path = if rest.starts_with('/') {
        rest
    } else {
        rest.strip_prefix("localhost")?
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    // `file:///C:/x` on Windows.
    let s = match s.as_bytes() {
        [b'/', d, b':', ..] if d.is_ascii_alphabetic() && cfg!(windows) => s[1..].to_string(),
        _ => s,
    };
    let p = PathBuf::from(s);
    p.is_absolute().then_some(p)
}

/// The `file:` URI of an absolute path.
pub fn path_to_uri(path: &Path) -> String {
    let s = path.to_string_lossy().replace('\\', "/");
    let mut out = String::from("file://");
    if !s.starts_with('/') {
        out.push('/');
    }
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A document as the server holds it.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The URI as the client wrote it.
    pub uri: String,
    /// The current text.
    pub text: String,
    /// The file it is, when it is a `file:` URI.
    pub path: Option<PathBuf>,
    /// Its language, from the extension.
    pub lang: Option<Lang>,
}

impl Doc {
    /// A document with `uri` and `text`.
    pub fn new(uri: String, text: String) -> Doc {
        let path = uri_to_path(&uri);
        let lang = Lang::of(path.as_deref().and_then(Path::to_str).unwrap_or(&uri));
        Doc {
            uri,
            text,
            path,
            lang,
        }
    }

    /// The name the compiler knows the document by (its path, as `cardvm asm` would).
    pub fn name(&self) -> String {
        match &self.path {
            Some(p) => p.to_string_lossy().into_owned(),
            None => self.uri.clone(),
        }
    }

    /// A loader for its includes: files on disk inside the include root, or none for a
    /// document that is not a file in an existing directory.
    fn loader(&self) -> Box<dyn SourceLoader> {
        match self.path.as_deref().map(FsLoader::for_root_file) {
            Some(Ok(l)) => Box::new(l),
            _ => Box::new(MapLoader::new()),
        }
    }

    /// The URI of a file the compiler named `name`.
    fn uri_of(&self, name: &str) -> Option<String> {
        if name == self.name() {
            return Some(self.uri.clone());
        }
        let p = Path::new(name);
        p.is_absolute().then(|| path_to_uri(p))
    }
}

/// The diagnostics of a check: per URI (the document's first, possibly empty).
pub type Published = Vec<(String, Vec<Diagnostic>)>;

/// A variable's, parameter's or loaded input's type as the compiler gave it
/// ([`cardvm::lang::Binding`]), with its file by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed {
    /// The name.
    pub name: String,
    /// The file it is bound in (the compiler's name for it).
    pub file: String,
    /// 1-based line of the binding.
    pub line: u32,
    /// `int`, `bytes` or `key`.
    pub ty: &'static str,
    /// The routine that binds it; `None` for the flow.
    pub routine: Option<String>,
}

/// A check's result: the diagnostics, and the compiler's types when it compiled.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Diagnostics per URI (the document's first).
    pub published: Published,
    /// The bindings with their types (`.cvs` that compiles).
    pub types: Option<Vec<Typed>>,
}

/// The bindings of the `.cvs` program `root` (read through `loader`).
fn types_of(root: &Doc, loader: &mut dyn SourceLoader) -> Option<Vec<Typed>> {
    if root.lang != Some(Lang::Cvs) {
        return None;
    }
    let c = cardvm::lang::compile(&root.text, &root.name(), loader).ok()?;
    Some(
        c.bindings
            .iter()
            .filter_map(|b| {
                Some(Typed {
                    name: b.name.clone(),
                    file: c.sources.get(usize::from(b.span.file))?.name.clone(),
                    line: b.span.line,
                    ty: b.ty,
                    routine: b.routine.clone(),
                })
            })
            .collect(),
    )
}

/// Whether two compiler file names are one file.
fn same_file(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// A loader that reads includes through another (which resolves and confines them) and
/// hands the editor's text for the files open in it.
struct Overlay<'a> {
    inner: Box<dyn SourceLoader>,
    open: &'a [&'a Doc],
}

impl SourceLoader for Overlay<'_> {
    fn load(&mut self, path: &str, from: &str) -> Result<(String, String), String> {
        let (name, text) = self.inner.load(path, from)?;
        match self.open.iter().find(|d| d.name() == name) {
            Some(d) => Ok((name, d.text.clone())),
            None => Ok((name, text)),
        }
    }
}

/// Whether a source is a fragment for other files to include: it has no header line
/// (`city N` / `.city N`), so compiled alone its names are undeclared.
fn is_fragment(text: &str, lang: Lang) -> bool {
    let header = match lang {
        Lang::Cvs => "city",
        Lang::Casm => ".city",
    };
    !text
        .lines()
        .any(|l| tokens(l, lang).first().is_some_and(|t| t.text == header))
}

/// Most files looked at for a root that includes a fragment.
const MAX_ROOT_CANDIDATES: usize = 512;

/// The files that may include `doc`: the open documents, then the sources of its
/// language in its include root and the root's subdirectories (`scripts/` and
/// `scripts/<city>/` in the shipped layout), in name order.
fn root_candidates(doc: &Doc, open: &[&Doc]) -> Vec<(String, String)> {
    let lang = doc.lang;
    let mut out: Vec<(String, String)> = open
        .iter()
        .filter(|d| d.uri != doc.uri && d.lang == lang && d.path.is_some())
        .map(|d| (d.name(), d.text.clone()))
        .collect();
    let Some(root) = doc
        .path
        .as_deref()
        .and_then(|p| cardvm::asm::include_root(p).ok())
    else {
        return out;
    };
    let ext = match lang {
        Some(Lang::Cvs) => "cvs",
        _ => "casm",
    };
    let mut dirs = vec![root.clone()];
    if let Ok(entries) = std::fs::read_dir(&root) {
        let mut subs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        dirs.extend(subs);
    }
    let mut files = Vec::new();
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(&d) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext) && p.is_file()),
            );
        }
        if files.len() > MAX_ROOT_CANDIDATES {
            break;
        }
    }
    files.sort();
    files.truncate(MAX_ROOT_CANDIDATES);
    for f in files {
        let name = f.to_string_lossy().into_owned();
        if out.iter().any(|(n, _)| *n == name) || Some(f.as_path()) == doc.path.as_deref() {
            continue;
        }
        if let Ok(text) = cardvm::asm::read_source_file(&f, cardvm::asm::MAX_SOURCE_FILE) {
            out.push((name, text));
        }
    }
    out
}

/// A file with a header that includes `doc` (directly or not), if one is found.
fn find_root(doc: &Doc, open: &[&Doc]) -> Option<Doc> {
    let lang = doc.lang?;
    let me = doc
        .path
        .as_deref()
        .and_then(|p| std::fs::canonicalize(p).ok())?;
    for (name, text) in root_candidates(doc, open) {
        if is_fragment(&text, lang) {
            continue;
        }
        let root = Doc::new(path_to_uri(Path::new(&name)), text);
        let mut loader = root.loader();
        let o = Outline::build(&name, &root.text, lang, &mut *loader);
        let includes_me = o
            .files
            .iter()
            .skip(1)
            .any(|(n, _)| std::fs::canonicalize(n).is_ok_and(|c| c == me));
        if includes_me {
            return Some(root);
        }
    }
    None
}

/// Compiles `doc` (`.cvs` or `.casm`) and turns its error or its lint warnings into
/// diagnostics. An error in an included file is published on that file and, on the
/// document, on the `include` line that leads to it. Included files open in the editor
/// (`open`) are read from the editor's text.
///
/// A fragment (no header: a file for others to include) is checked as part of a file
/// that includes it — an open one, or one found in its include root — and shows what
/// that check finds in the fragment; without such a file it is checked alone.
///
/// For a `.cvs` program that compiles, [`Checked::types`] has the compiler's bindings.
pub fn check(doc: &Doc, open: &[&Doc]) -> Checked {
    let Some(lang) = doc.lang else {
        return Checked {
            published: vec![(doc.uri.clone(), Vec::new())],
            types: None,
        };
    };
    let mut with_me: Vec<&Doc> = open.iter().copied().filter(|d| d.uri != doc.uri).collect();
    with_me.push(doc);
    if is_fragment(&doc.text, lang)
        && let Some(root) = find_root(doc, open)
    {
        let published = check_in(doc, &root, open);
        let mut loader = Overlay {
            inner: root.loader(),
            open: &with_me,
        };
        return Checked {
            published,
            types: types_of(&root, &mut loader),
        };
    }
    let published = check_alone(doc, open);
    let mut loader = Overlay {
        inner: doc.loader(),
        open: &with_me,
    };
    Checked {
        published,
        types: types_of(doc, &mut loader),
    }
}

/// The fragment `doc`'s diagnostics as `root` (which includes it) compiles.
fn check_in(doc: &Doc, root: &Doc, open: &[&Doc]) -> Published {
    let mine = doc.name();
    let me = doc
        .path
        .as_deref()
        .and_then(|p| std::fs::canonicalize(p).ok());
    let is_me = |name: &str| name == mine || std::fs::canonicalize(name).ok() == me;
    let mut with_me: Vec<&Doc> = open.iter().copied().filter(|d| d.uri != doc.uri).collect();
    with_me.push(doc);
    let mut loader = Overlay {
        inner: root.loader(),
        open: &with_me,
    };
    let mut diags = Vec::new();
    match cardvm::asm::assemble(
        &root.text,
        &root.name(),
        &AsmOptions::default(),
        &mut loader,
    ) {
        Ok(asm) => {
            for w in asm.warnings.iter().filter(|w| is_me(&w.file)) {
                let line = doc.text.lines().nth(w.line.saturating_sub(1) as usize);
                diags.push(warning(w, line.unwrap_or("")));
            }
        }
        Err(e) if is_me(&e.file) => diags.push(error(&e, &e.source_line, &e.message)),
        Err(e) => diags.push(Diagnostic {
            range: Range::default(),
            severity: Some(DiagnosticSeverity::INFORMATION),
            source: Some(String::from("cardvm")),
            message: format!(
                "checked as part of {}, which does not compile: {}",
                root.name(),
                e.headline()
            ),
            ..Diagnostic::default()
        }),
    }
    vec![(doc.uri.clone(), diags)]
}

/// `doc` compiled on its own.
fn check_alone(doc: &Doc, open: &[&Doc]) -> Published {
    let mut out: Published = vec![(doc.uri.clone(), Vec::new())];
    let name = doc.name();
    let mut loader = Overlay {
        inner: doc.loader(),
        open,
    };
    let result = cardvm::asm::assemble(&doc.text, &name, &AsmOptions::default(), &mut loader);
    match result {
        Ok(asm) => {
            for w in &asm.warnings {
                let text = asm
                    .sources
                    .iter()
                    .find(|s| s.name == w.file)
                    .map(|s| s.text.as_str());
                let line = text.and_then(|t| t.lines().nth(w.line.saturating_sub(1) as usize));
                let d = warning(w, line.unwrap_or(""));
                push(
                    &mut out,
                    doc.uri_of(&w.file).unwrap_or_else(|| doc.uri.clone()),
                    d,
                );
            }
        }
        Err(e) => {
            let d = error(&e, &e.source_line, &e.message);
            match doc.uri_of(&e.file) {
                Some(uri) if uri == doc.uri => out[0].1.push(d),
                other => {
                    if let Some(uri) = other {
                        push(&mut out, uri, d);
                    }
                    out[0].1.push(include_line_error(doc, &e));
                }
            }
        }
    }
    out
}

fn push(out: &mut Published, uri: String, d: Diagnostic) {
    match out.iter_mut().find(|(u, _)| *u == uri) {
        Some((_, v)) => v.push(d),
        None => out.push((uri, vec![d])),
    }
}

/// The range of the word at 1-based `line`/`col` (characters) of `text_line`; at least
/// one character where there is one.
fn range_at(line: u32, col: u32, text_line: &str) -> Range {
    let l = line.saturating_sub(1);
    let skip = col.saturating_sub(1) as usize;
    let mut start = 0u32;
    let mut chars = text_line.chars();
    for c in chars.by_ref().take(skip) {
        start += c.len_utf16() as u32;
    }
    let mut end = start;
    let mut rest = chars.peekable();
    if let Some(&c) = rest.peek() {
        end += c.len_utf16() as u32;
        rest.next();
        if c.is_ascii_alphanumeric() || c == '_' {
            for c in rest.take_while(|c| c.is_ascii_alphanumeric() || *c == '_') {
                end += c.len_utf16() as u32;
            }
        }
    }
    Range::new(Position::new(l, start), Position::new(l, end))
}

fn error(e: &AsmError, text_line: &str, message: &str) -> Diagnostic {
    Diagnostic {
        range: range_at(e.line, e.col, text_line),
        severity: Some(DiagnosticSeverity::ERROR),
        source: Some(String::from("cardvm")),
        message: message.to_string(),
        ..Diagnostic::default()
    }
}

fn warning(w: &Warning, text_line: &str) -> Diagnostic {
    Diagnostic {
        range: range_at(w.line, w.col, text_line),
        severity: Some(DiagnosticSeverity::WARNING),
        code: Some(NumberOrString::String(w.lint.name().to_string())),
        source: Some(String::from("cardvm")),
        message: w.message.clone(),
        ..Diagnostic::default()
    }
}

/// The error of an included file, shown on the document's `include` line that reads it
/// (directly or through other includes), else on the first line.
fn include_line_error(doc: &Doc, e: &AsmError) -> Diagnostic {
    let lang = doc.lang.unwrap_or(Lang::Cvs);
    let mut loader = doc.loader();
    let o = Outline::build(&doc.name(), &doc.text, lang, &mut *loader);
    // Which of the document's own includes reaches the failing file.
    let failing = o.files.iter().position(|f| f.0 == e.file);
    let reaches = |start: Option<usize>| -> bool {
        let Some(mut todo) = start.map(|s| vec![s]) else {
            return false;
        };
        let mut seen = vec![false; o.files.len()];
        while let Some(f) = todo.pop() {
            if Some(f) == failing {
                return true;
            }
            if seen.get(f).copied().unwrap_or(true) {
                continue;
            }
            seen[f] = true;
            todo.extend(
                o.includes
                    .iter()
                    .filter(|i| i.file == f)
                    .filter_map(|i| i.target),
            );
        }
        false
    };
    let own: Vec<_> = o.includes.iter().filter(|i| i.file == 0).collect();
    let at = own
        .iter()
        .find(|i| reaches(i.target))
        .or_else(|| own.iter().find(|i| i.target.is_none()))
        .map(|i| Range::new(Position::new(i.line, i.start), Position::new(i.line, i.end)))
        .unwrap_or_default();
    Diagnostic {
        range: at,
        severity: Some(DiagnosticSeverity::ERROR),
        source: Some(String::from("cardvm")),
        message: format!("in {}:{}:{}: {}", e.file, e.line, e.col, e.message),
        ..Diagnostic::default()
    }
}

/// What the cursor is on: the outline, the file's line tokens and the token.
struct At<'a> {
    outline: Outline,
    line_text: &'a str,
}

fn at(doc: &Doc, pos: Position) -> Option<At<'_>> {
    let lang = doc.lang?;
    let line_text = doc.text.lines().nth(pos.line as usize)?;
    let mut loader = doc.loader();
    let outline = Outline::build(&doc.name(), &doc.text, lang, &mut *loader);
    Some(At { outline, line_text })
}

/// Hover text (Markdown) for the position, and the range it is about.
/// `types`: the compiler's bindings from the last check that compiled, if any.
pub fn hover(doc: &Doc, pos: Position, types: &[Typed]) -> Option<(String, Range)> {
    let lang = doc.lang?;
    let a = at(doc, pos)?;
    let toks = tokens(a.line_text, lang);
    let tok = token_at(&toks, pos.character)?;
    let range = Range::new(
        Position::new(pos.line, tok.start),
        Position::new(pos.line, tok.end),
    );
    if tok.kind == TokKind::Str {
        let inc = a.outline.include_at(0, pos.line, pos.character)?;
        let text = match inc.target.and_then(|t| a.outline.files.get(t)) {
            Some((name, _)) => format!("include `{name}`"),
            None => format!(
                "include `{}` (not readable inside the include root)",
                tok.text
            ),
        };
        return Some((text, range));
    }
    if tok.kind != TokKind::Word {
        return None;
    }
    let text = match lang {
        Lang::Casm => hover_casm(&a.outline, &toks, &tok, pos.line),
        Lang::Cvs => hover_cvs(&a.outline, &toks, &tok, pos.line, types),
    }?;
    Some((text, range))
}

fn is_mnemonic_position(toks: &[Tok<'_>], tok: &Tok<'_>) -> bool {
    let mut k = 0;
    while let [name, colon, ..] = &toks[k..] {
        if name.kind == TokKind::Word && colon.text == ":" {
            k += 2;
        } else {
            break;
        }
    }
    toks.get(k).is_some_and(|t| t.start == tok.start)
}

/// The instruction's reference row as hover text.
pub fn instruction_doc(op: Opcode) -> String {
    let code = format!("| `0x{:02X}` |", op as u8);
    let table = cardvm::isa::reference_markdown();
    let row = table.lines().find(|l| l.starts_with(&code));
    let cells: Vec<String> = row
        .map(|r| {
            r.trim()
                .trim_start_matches('|')
                .trim_end_matches('|')
                .splitn(6, " | ")
                .map(|c| c.trim().replace("\\|", "|"))
                .collect()
        })
        .unwrap_or_default();
    let syntax = cells
        .get(1)
        .map(|s| s.trim_matches('`').to_string())
        .unwrap_or_else(|| op.mnemonic().to_string());
    let mut s = format!("```casm\n{syntax}\n```\n{}\n\n", op.summary().trim());
    s.push_str(&format!("opcode `0x{:02X}`, {} bytes", op as u8, op.size()));
    if let Some(operands) = cells.get(2).filter(|c| *c != "—") {
        s.push_str(&format!("; operands: {operands}"));
    }
    if let Some(flags) = cells.get(4).filter(|c| !c.is_empty()) {
        s.push_str(&format!("; flags: {flags}"));
    }
    s
}

fn hover_casm(o: &Outline, toks: &[Tok<'_>], tok: &Tok<'_>, line: u32) -> Option<String> {
    if is_mnemonic_position(toks, tok)
        && let Some(op) = Opcode::from_mnemonic(tok.text)
    {
        return Some(instruction_doc(op));
    }
    o.lookup(tok.text, 0, line).map(|s| describe(o, s, &[]))
}

fn hover_cvs(
    o: &Outline,
    toks: &[Tok<'_>],
    tok: &Tok<'_>,
    line: u32,
    types: &[Typed],
) -> Option<String> {
    let called = toks
        .iter()
        .skip_while(|t| t.start != tok.start)
        .nth(1)
        .is_some_and(|t| t.text == "(");
    if let Some(sym) = o.lookup(tok.text, 0, line)
        && !(called && builtin_doc(tok.text).is_some() && !matches!(sym.kind, Kind::Routine(_)))
    {
        return Some(describe(o, sym, types));
    }
    builtin_doc(tok.text)
}

/// A `.cvs` builtin or statement keyword: its form, what it does, and the instruction it
/// compiles to (with that instruction's doc from the table).
pub fn builtin_doc(word: &str) -> Option<String> {
    let (form, what, mnemonic) = match word {
        "mac" => (
            "mac(k, data)",
            "a byte string: the MAC of `data` under key `k`",
            "mac",
        ),
        "check_mac" => (
            "check_mac(k, data, mac) else fail code",
            "constant-time MAC check: fail with `code` unless `mac` is the MAC of `data` under `k`",
            "chkmac",
        ),
        "session_key" => (
            "session_key(k, data)",
            "a key: the session (process) key of `k` for `data` (usage inherited)",
            "pkey",
        ),
        "div_key" => (
            "div_key(k, data)",
            "a key: `k` diversified with `data` (usage inherited)",
            "divkey",
        ),
        "tac_key" => ("tac_key(k)", "a key: the TAC key of `k`", "tackey"),
        "encrypt" => (
            "encrypt(k, d)",
            "a byte string: `d` encrypted under `k`",
            "enc",
        ),
        "decrypt" => (
            "decrypt(k, d)",
            "a byte string: `d` decrypted under `k`",
            "dec",
        ),
        "load_reader_key" => (
            "load_reader_key(k, n) else fail code",
            "an M1 key into the reader's key store",
            "ldrkey",
        ),
        "sm3" => ("sm3(b)", "a byte string: the SM3 hash of `b`", "sm3"),
        "xor" => ("xor(a, b)", "a byte string: `a` XOR `b`", "xor"),
        "invert" => (
            "invert(b)",
            "a byte string: `b` with every bit inverted",
            "not",
        ),
        "pad" => (
            "pad(b, 8)",
            "a byte string: `b` padded to a multiple of the block",
            "pad",
        ),
        "len" => ("len(b)", "an integer: the length of `b` in bytes", "len"),
        "fill" => ("fill(0, 7)", "a byte string: a byte repeated", "fill"),
        "ct_eq" => (
            "ct_eq(a, b)",
            "an integer: 1 if equal, compared in constant time (for MACs)",
            "cteq",
        ),
        "uid" => ("uid()", "a byte string: the card's UID", "uid"),
        "sw" => ("sw", "an integer: the last status word", "sw"),
        "apdu" => (
            "apdu CMD [-> r | -> a:4 b:2 _:1]",
            "send a command APDU to the card; the handlers on the next lines (`on 9403 fail c`, `else fail c`) check its status word",
            "apdu",
        ),
        "commit_point" => (
            "commit_point",
            "from here on the card may commit: a failure is `unknown`",
            "commit_point",
        ),
        "done" => ("done", "the transaction completed (`committed`)", "halt"),
        "fail" => ("fail code", "the transaction failed with `code`", "fail"),
        _ => return None,
    };
    let mut s = format!("```cvs\n{form}\n```\n{what}.");
    if let Some(op) = Opcode::from_mnemonic(mnemonic) {
        s.push_str(&format!(
            "\n\nCompiles to `{}`: {}",
            op.mnemonic(),
            op.summary().trim()
        ));
    }
    Some(s)
}

/// The type noun of an input's or output's declared type.
fn type_noun(ty: &str) -> &'static str {
    if ty.starts_with("key") {
        "a key"
    } else if ty.starts_with('u') {
        "an integer"
    } else {
        "a byte string"
    }
}

/// The type of a `.cvs` expression as far as its text shows (`None`: not known).
fn infer(o: &Outline, rhs: &str, file: usize, line: u32, depth: u32) -> Option<&'static str> {
    let t = rhs.trim();
    let toks = tokens(t, Lang::Cvs);
    let first = toks.first()?;
    let last = toks.last()?;
    let call =
        |names: &[&str]| names.contains(&first.text) && toks.get(1).is_some_and(|t| t.text == "(");
    if toks.len() >= 2 && toks[toks.len() - 2].text == ":" {
        return match last.text {
            "int" | "bcd_int" => Some("an integer"),
            _ => Some("a byte string"),
        };
    }
    if toks.iter().any(|t| t.text == "++" || t.text == "‖") || first.text == "[" {
        return Some("a byte string");
    }
    if call(&["session_key", "div_key", "tac_key"]) {
        return Some("a key");
    }
    if call(&["len", "ct_eq"]) {
        return Some("an integer");
    }
    if call(&[
        "mac", "encrypt", "decrypt", "sm3", "xor", "invert", "pad", "fill", "uid",
    ]) {
        return Some("a byte string");
    }
    if toks
        .iter()
        .any(|t| ["+", "-", "*", "/", "%", "&", "<<", ">>"].contains(&t.text))
    {
        return Some("an integer");
    }
    if toks.len() == 1 && first.kind == TokKind::Word {
        if first.text.starts_with(|c: char| c.is_ascii_digit()) {
            return Some("an integer");
        }
        if first.text == "sw" {
            return Some("an integer");
        }
        if depth < 8 {
            let sym = o.lookup(first.text, file, line)?;
            return symbol_type(o, sym, depth + 1);
        }
    }
    None
}

fn symbol_type(o: &Outline, s: &Symbol, depth: u32) -> Option<&'static str> {
    match &s.kind {
        Kind::Input(ty) | Kind::Output(ty) => Some(type_noun(ty)),
        Kind::Const(v) => infer(o, v, s.file, s.line, depth),
        Kind::Variable(VarOrigin::Assign(rhs)) => infer(o, rhs, s.file, s.line, depth),
        Kind::Variable(VarOrigin::Response | VarOrigin::Field(_)) => Some("a byte string"),
        Kind::Variable(VarOrigin::Loop) => Some("an integer"),
        _ => None,
    }
}

/// The compiler's type of a variable or parameter: the binding at its own line, else
/// every binding of the name in its routine (or the flow).
fn compiler_type(types: &[Typed], o: &Outline, s: &Symbol) -> Option<String> {
    let file = &o.files.get(s.file)?.0;
    let same: Vec<&Typed> = types
        .iter()
        .filter(|t| t.name == s.name && t.routine == s.scope)
        .collect();
    if let Some(t) = same
        .iter()
        .find(|t| t.line == s.line + 1 && same_file(&t.file, file))
    {
        return Some(t.ty.to_string());
    }
    let mut tys: Vec<&str> = same.iter().map(|t| t.ty).collect();
    tys.sort_unstable();
    tys.dedup();
    (!tys.is_empty()).then(|| tys.join("` or `"))
}

fn ty_noun(ty: &str) -> &'static str {
    match ty {
        "int" => "an integer",
        "bytes" => "a byte string",
        "key" => "a key",
        _ => "a value",
    }
}

/// Hover text for a declaration; `types`: the compiler's bindings, if known.
fn describe(o: &Outline, s: &Symbol, types: &[Typed]) -> String {
    let place = match o.files.get(s.file) {
        Some(_) if s.file == 0 => format!("line {}", s.line + 1),
        Some((name, _)) => format!("{name}:{}", s.line + 1),
        None => String::new(),
    };
    let head = match &s.kind {
        Kind::Input(ty) => format!("input `{}`: `{ty}` ({})", s.name, type_noun(ty)),
        Kind::Output(ty) => format!("output `{}`: `{ty}`", s.name),
        Kind::Const(v) => format!("const `{}` = `{v}`", s.name),
        Kind::FailCode(v) => format!("failure code `{}` = `{v}`", s.name),
        Kind::Routine(p) => format!("routine `{}({p})`", s.name),
        Kind::Param => {
            let ty = compiler_type(types, o, s)
                .map(|t| format!(": `{t}`"))
                .unwrap_or_default();
            format!(
                "parameter `{}`{ty} of routine `{}`",
                s.name,
                s.scope.as_deref().unwrap_or("?")
            )
        }
        Kind::Variable(origin) => {
            let ty = match compiler_type(types, o, s) {
                Some(t) if !t.contains(' ') => format!(": `{t}` ({})", ty_noun(&t)),
                Some(t) => format!(": `{t}` (in different expansions of the routine)"),
                None => match symbol_type(o, s, 0) {
                    Some(noun) => format!(
                        ": {noun} (as its first assignment reads; not typed by the compiler)"
                    ),
                    None => String::new(),
                },
            };
            let what = match origin {
                VarOrigin::Assign(_) => "variable",
                VarOrigin::Response => "variable (an APDU response)",
                VarOrigin::Field(n) => {
                    return format!(
                        "variable `{}`: a byte string of {n} bytes (a field of an APDU response)\n\n\
                         first assigned at {place}: `{}`",
                        s.name, s.source
                    );
                }
                VarOrigin::Loop => "loop counter",
            };
            return format!(
                "{what} `{}`{ty}\n\nfirst assigned at {place}: `{}`",
                s.name, s.source
            );
        }
        Kind::Label => format!("label `{}`", s.name),
        Kind::Register(n) => format!("register `{}` = `r{n}`", s.name),
        Kind::KeySlot(n) => format!("key slot `{}` = `k{n}`", s.name),
        Kind::Macro(p) => format!("macro `{}` {p}", s.name),
    };
    format!("{head}\n\ndeclared at {place}: `{}`", s.source)
}

/// Where the name or include path at the position is declared: (file URI or the
/// document's, range).
pub fn definition(doc: &Doc, pos: Position) -> Option<(String, Range)> {
    let lang = doc.lang?;
    let a = at(doc, pos)?;
    let toks = tokens(a.line_text, lang);
    let tok = token_at(&toks, pos.character)?;
    let o = &a.outline;
    let (file, range) = if tok.kind == TokKind::Str {
        let inc = o.include_at(0, pos.line, pos.character)?;
        (inc.target?, Range::default())
    } else if tok.kind == TokKind::Word {
        let s = o.lookup(tok.text, 0, pos.line)?;
        (
            s.file,
            Range::new(Position::new(s.line, s.start), Position::new(s.line, s.end)),
        )
    } else {
        return None;
    };
    let uri = if file == 0 {
        doc.uri.clone()
    } else {
        let name = &o.files.get(file)?.0;
        let p = Path::new(name);
        if !p.is_absolute() {
            return None;
        }
        path_to_uri(p)
    };
    Some((uri, range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_round_trip() {
        let p = Path::new("/tmp/a b/ü#.cvs");
        let uri = path_to_uri(p);
        assert_eq!(uri, "file:///tmp/a%20b/%C3%BC%23.cvs");
        assert_eq!(uri_to_path(&uri).as_deref(), Some(p));
        assert_eq!(uri_to_path("untitled:1"), None);
        assert_eq!(uri_to_path("file:///x%zz"), None);
        assert_eq!(uri_to_path("file://host/x"), None);
        assert_eq!(uri_to_path("file://"), None);
    }

    #[test]
    fn every_instruction_has_hover_text() {
        for &op in cardvm::isa::ALL_OPCODES {
            let d = instruction_doc(op);
            assert!(d.contains(op.summary().trim()), "{d}");
            assert!(d.contains("opcode `0x"), "{d}");
        }
        let apdu = instruction_doc(Opcode::from_mnemonic("apdu").expect("apdu"));
        assert!(apdu.contains("sends APDU"), "{apdu}");
    }

    #[test]
    fn a_check_without_a_file_still_reports() {
        let doc = Doc::new("untitled:x.cvs".into(), "city 1\nx = \n".into());
        assert_eq!(doc.lang, Some(Lang::Cvs));
        let got = check(&doc, &[]).published;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 1, "{got:?}");
    }
}
