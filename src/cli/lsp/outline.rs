//! A tolerant outline of `.cvs` and `.casm` sources: what each name is declared as, and
//! where, for hover and go to definition.
//!
//! The compiler stops at the first error; an editor asks about a file that is half
//! written. So this reads the sources line by line with a small tokenizer of its own
//! (the languages' line structure: one statement per line, `;` comments) and records
//! every declaration it recognizes, skipping what it does not. Included files are read
//! through the same [`SourceLoader`] the compiler uses, so they stay in the include root.

use cardvm::asm::SourceLoader;

/// Which language a source is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// The high-level language (`.cvs`).
    Cvs,
    /// Assembly (`.casm`).
    Casm,
}

impl Lang {
    /// The language of a file name: `.cvs` or `.casm`, else none.
    pub fn of(name: &str) -> Option<Lang> {
        if cardvm::lang::is_high_level(name) {
            Some(Lang::Cvs)
        } else if name.ends_with(".casm") {
            Some(Lang::Casm)
        } else {
            None
        }
    }
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokKind {
    /// Letters, digits, `_` (and a leading `.` for `.casm` directives).
    Word,
    /// A quoted string (`text` without the quotes; the range with them).
    Str,
    /// Punctuation.
    Punct,
}

/// A token of one line; columns in UTF-16 code units (LSP's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tok<'a> {
    /// The kind.
    pub kind: TokKind,
    /// The text (a string's content).
    pub text: &'a str,
    /// Start column (UTF-16).
    pub start: u32,
    /// End column (UTF-16, exclusive).
    pub end: u32,
    /// Byte offset of the start in the line.
    pub byte: usize,
    /// Byte offset past the end in the line.
    pub byte_end: usize,
}

const TWO: [&str; 9] = ["++", "->", "..", "==", "!=", "<=", ">=", "<<", ">>"];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits one line into tokens, up to a `;` comment.
pub fn tokens(line: &str, lang: Lang) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut col16 = Vec::with_capacity(chars.len() + 1);
    let mut c = 0u32;
    for &(_, ch) in &chars {
        col16.push(c);
        c = c.saturating_add(ch.len_utf16() as u32);
    }
    col16.push(c);
    let byte_at = |i: usize| chars.get(i).map_or(line.len(), |&(b, _)| b);
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i].1;
        if ch == ';' {
            break;
        }
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let kind;
        let (text_from, text_to);
        if ch == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j].1 != '"' {
                j += 1;
            }
            text_from = byte_at(i + 1);
            text_to = byte_at(j);
            i = (j + 1).min(chars.len());
            kind = TokKind::Str;
        } else if is_word_char(ch)
            || (lang == Lang::Casm
                && ch == '.'
                && chars
                    .get(i + 1)
                    .is_some_and(|&(_, n)| n.is_ascii_alphabetic()))
        {
            let mut j = i + 1;
            while j < chars.len() && is_word_char(chars[j].1) {
                j += 1;
            }
            text_from = byte_at(i);
            text_to = byte_at(j);
            i = j;
            kind = TokKind::Word;
        } else {
            let two = chars.get(i + 1).map(|&(_, n)| {
                let mut s = String::from(ch);
                s.push(n);
                s
            });
            let len = if two.is_some_and(|t| TWO.contains(&t.as_str())) {
                2
            } else {
                1
            };
            text_from = byte_at(i);
            text_to = byte_at(i + len);
            i += len;
            kind = TokKind::Punct;
        }
        out.push(Tok {
            kind,
            text: line.get(text_from..text_to).unwrap_or(""),
            start: col16[start],
            end: col16[i.min(chars.len())],
            byte: byte_at(start),
            byte_end: byte_at(i),
        });
    }
    out
}

/// The token at UTF-16 column `col` (a cursor just past a word is on it).
pub fn token_at<'a>(toks: &[Tok<'a>], col: u32) -> Option<Tok<'a>> {
    toks.iter()
        .find(|t| t.start <= col && col < t.end)
        .or_else(|| {
            toks.iter()
                .find(|t| t.end == col && t.kind != TokKind::Punct)
        })
        .cloned()
}

/// What a name is declared as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A data-script input (`input` / `.input`); the type as written.
    Input(String),
    /// A receipt output; the type as written.
    Output(String),
    /// A constant; its value as written.
    Const(String),
    /// A failure code; its number as written.
    FailCode(String),
    /// A routine (`.cvs`); its parameter list as written.
    Routine(String),
    /// A routine parameter.
    Param,
    /// A variable (`.cvs`): its first assignment (`rhs`), or the APDU response field
    /// (`field_len`), or a loop counter.
    Variable(VarOrigin),
    /// A label (`.casm`).
    Label,
    /// A `.reg` name and its register number.
    Register(usize),
    /// A `.key` name and its key slot number.
    KeySlot(usize),
    /// A `.macro` and its parameters as written.
    Macro(String),
}

/// How a `.cvs` variable got its value (at its first assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarOrigin {
    /// `name = rhs`.
    Assign(String),
    /// `apdu … -> name`: the whole response.
    Response,
    /// `apdu … -> name:N …`: an N-byte field of the response.
    Field(String),
    /// `for name in a..b`.
    Loop,
}

/// One declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// The file (index into [`Outline::files`]).
    pub file: usize,
    /// 0-based line.
    pub line: u32,
    /// Start column of the name (UTF-16).
    pub start: u32,
    /// End column of the name (UTF-16).
    pub end: u32,
    /// The routine it belongs to (parameters, variables assigned in a routine).
    pub scope: Option<String>,
    /// The declaring line, trimmed (comments kept out).
    pub source: String,
}

/// An `include "path"` / `.include "path"` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The including file (index into [`Outline::files`]).
    pub file: usize,
    /// 0-based line.
    pub line: u32,
    /// Start column of the string (UTF-16, with the quotes).
    pub start: u32,
    /// End column of the string.
    pub end: u32,
    /// The included file, when it could be read.
    pub target: Option<usize>,
}

/// A routine's extent (`.cvs`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoutineSpan {
    name: String,
    file: usize,
    first: u32,
    last: u32,
}

/// The declarations of a source and the files it includes.
#[derive(Debug, Clone, Default)]
pub struct Outline {
    /// The files read: index 0 is the document; the others by resolved name.
    pub files: Vec<(String, String)>,
    /// Every declaration found, in reading order.
    pub symbols: Vec<Symbol>,
    /// Every include line found.
    pub includes: Vec<Include>,
    routines: Vec<RoutineSpan>,
    regs: usize,
    keys: usize,
}

/// Records one declaration (the scanners' callback).
type AddSymbol<'f> = dyn FnMut(&mut Outline, &Tok<'_>, Kind, Option<String>) + 'f;

/// Most files an outline reads (the compiler's own limit).
const MAX_FILES: usize = cardvm::asm::MAX_FILES;

impl Outline {
    /// Reads `text` (called `name`, in `lang`) and, through `loader`, what it includes.
    pub fn build(name: &str, text: &str, lang: Lang, loader: &mut dyn SourceLoader) -> Outline {
        let mut o = Outline {
            files: vec![(name.to_string(), text.to_string())],
            ..Outline::default()
        };
        let mut next = 0;
        while next < o.files.len() {
            let pending = o.scan(next, lang);
            for (line, start, end, path) in pending {
                let from = o.files[next].0.clone();
                let target = match loader.load(&path, &from) {
                    Ok((resolved, _)) if o.files.iter().any(|f| f.0 == resolved) => {
                        o.files.iter().position(|f| f.0 == resolved)
                    }
                    Ok((resolved, text)) if o.files.len() < MAX_FILES => {
                        o.files.push((resolved, text));
                        Some(o.files.len() - 1)
                    }
                    _ => None,
                };
                o.includes.push(Include {
                    file: next,
                    line,
                    start,
                    end,
                    target,
                });
            }
            next += 1;
        }
        o
    }

    /// Scans file `f`; returns its include lines (line, start, end, path).
    fn scan(&mut self, f: usize, lang: Lang) -> Vec<(u32, u32, u32, String)> {
        let text = self.files[f].1.clone();
        let mut includes = Vec::new();
        let mut in_fail_codes = false;
        let mut routine: Option<(String, u32, i64)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = u32::try_from(i).unwrap_or(u32::MAX);
            let toks = tokens(raw, lang);
            let source = source_text(raw, &toks);
            let mut add = |o: &mut Outline, t: &Tok<'_>, kind: Kind, scope: Option<String>| {
                o.symbols.push(Symbol {
                    name: t.text.to_string(),
                    kind,
                    file: f,
                    line: line_no,
                    start: t.start,
                    end: t.end,
                    scope,
                    source: source.clone(),
                });
            };
            if let Some(t) = toks.iter().find(|t| t.kind == TokKind::Str)
                && toks
                    .first()
                    .is_some_and(|k| k.text == "include" || k.text == ".include")
            {
                includes.push((line_no, t.start, t.end, t.text.to_string()));
            }
            match lang {
                Lang::Casm => self.scan_casm(&toks, raw, &mut add),
                Lang::Cvs => {
                    let scope = routine.as_ref().map(|r| r.0.clone());
                    self.scan_cvs(&toks, raw, &mut in_fail_codes, scope, &mut add);
                    // Routine extents by brace depth.
                    if let [kw, name, ..] = toks.as_slice()
                        && kw.text == "routine"
                        && name.kind == TokKind::Word
                        && routine.is_none()
                    {
                        routine = Some((name.text.to_string(), line_no, 0));
                    }
                    if let Some((name, first, depth)) = routine.as_mut() {
                        for t in &toks {
                            match t.text {
                                "{" if t.kind == TokKind::Punct => *depth += 1,
                                "}" if t.kind == TokKind::Punct => *depth -= 1,
                                _ => {}
                            }
                        }
                        if *depth <= 0 && toks.iter().any(|t| t.text == "}") {
                            self.routines.push(RoutineSpan {
                                name: name.clone(),
                                file: f,
                                first: *first,
                                last: line_no,
                            });
                            routine = None;
                        }
                    }
                }
            }
        }
        if let Some((name, first, _)) = routine {
            self.routines.push(RoutineSpan {
                name,
                file: f,
                first,
                last: u32::MAX,
            });
        }
        includes
    }

    fn scan_casm(&mut self, toks: &[Tok<'_>], raw: &str, add: &mut AddSymbol<'_>) {
        let mut k = 0;
        while let [name, colon, ..] = &toks[k..] {
            if name.kind == TokKind::Word && colon.text == ":" && !name.text.starts_with('.') {
                add(self, name, Kind::Label, None);
                k += 2;
            } else {
                break;
            }
        }
        let rest = &toks[k..];
        let Some(first) = rest.first() else { return };
        let after = |t: &Tok<'_>| raw.get(t.byte_end..).unwrap_or("").trim().to_string();
        match (first.text, rest.get(1)) {
            (".input" | ".output", Some(name)) if name.kind == TokKind::Word => {
                let ty = after(name);
                let kind = if first.text == ".input" {
                    Kind::Input(ty)
                } else {
                    Kind::Output(ty)
                };
                add(self, name, kind, None);
            }
            (".const", Some(name)) if name.kind == TokKind::Word => {
                let value = rest
                    .get(2)
                    .filter(|t| t.text == "=")
                    .map(after)
                    .unwrap_or_default();
                add(self, name, Kind::Const(value), None);
            }
            (".macro", Some(name)) if name.kind == TokKind::Word => {
                add(self, name, Kind::Macro(after(name)), None);
            }
            (".reg" | ".key", _) => {
                for t in rest[1..].iter().filter(|t| t.kind == TokKind::Word) {
                    let kind = if first.text == ".reg" {
                        self.regs += 1;
                        Kind::Register(self.regs - 1)
                    } else {
                        self.keys += 1;
                        Kind::KeySlot(self.keys - 1)
                    };
                    add(self, t, kind, None);
                }
            }
            _ => {}
        }
    }

    fn scan_cvs(
        &mut self,
        toks: &[Tok<'_>],
        raw: &str,
        in_fail_codes: &mut bool,
        scope: Option<String>,
        add: &mut AddSymbol<'_>,
    ) {
        let text_between = |a: &Tok<'_>, b: Option<&Tok<'_>>| {
            raw.get(a.byte..b.map_or(raw.len(), |b| b.byte))
                .unwrap_or("")
                .trim()
                .trim_end_matches(',')
                .trim()
                .to_string()
        };
        let mut k = 0;
        if *in_fail_codes || toks.first().is_some_and(|t| t.text == "fail_codes") {
            if !*in_fail_codes {
                k = 1;
                *in_fail_codes = true;
            }
            while k < toks.len() {
                let t = &toks[k];
                if t.text == "}" {
                    *in_fail_codes = false;
                    break;
                }
                if t.kind == TokKind::Word
                    && toks.get(k + 1).is_some_and(|e| e.text == "=")
                    && let Some(v) = toks.get(k + 2)
                {
                    add(self, t, Kind::FailCode(v.text.to_string()), None);
                    k += 3;
                    continue;
                }
                k += 1;
            }
            return;
        }
        let Some(first) = toks.first() else { return };
        match first.text {
            "input" | "output" => {
                // name: TYPE, name: TYPE (commas inside `key(…)` do not split).
                let mut j = 1;
                while j + 1 < toks.len() {
                    let name = &toks[j];
                    if name.kind != TokKind::Word || toks[j + 1].text != ":" {
                        break;
                    }
                    let mut end = j + 2;
                    let mut depth = 0i32;
                    while end < toks.len() {
                        match toks[end].text {
                            "(" | "[" => depth += 1,
                            ")" | "]" => depth -= 1,
                            "," if depth <= 0 => break,
                            _ => {}
                        }
                        end += 1;
                    }
                    let ty = match toks.get(j + 2) {
                        Some(t) => text_between(t, toks.get(end)),
                        None => String::new(),
                    };
                    let kind = if first.text == "input" {
                        Kind::Input(ty)
                    } else {
                        Kind::Output(ty)
                    };
                    add(self, name, kind, None);
                    j = end + 1;
                }
            }
            "const" => {
                if let (Some(name), Some(eq)) = (toks.get(1), toks.get(2))
                    && name.kind == TokKind::Word
                    && eq.text == "="
                {
                    let value = toks
                        .get(3)
                        .map(|t| text_between(t, None))
                        .unwrap_or_default();
                    add(self, name, Kind::Const(value), None);
                }
            }
            "routine" => {
                if let Some(name) = toks.get(1).filter(|t| t.kind == TokKind::Word) {
                    let close = toks.iter().position(|t| t.text == ")");
                    let params: Vec<&Tok<'_>> = toks
                        .get(3..close.unwrap_or(toks.len()))
                        .unwrap_or(&[])
                        .iter()
                        .filter(|t| t.kind == TokKind::Word)
                        .collect();
                    let list: Vec<&str> = params.iter().map(|t| t.text).collect();
                    add(self, name, Kind::Routine(list.join(", ")), None);
                    for p in params {
                        add(self, p, Kind::Param, Some(name.text.to_string()));
                    }
                }
            }
            "for" => {
                if let Some(var) = toks.get(1).filter(|t| t.kind == TokKind::Word) {
                    add(self, var, Kind::Variable(VarOrigin::Loop), scope.clone());
                }
            }
            _ => {
                if first.kind == TokKind::Word
                    && !cardvm::lang::KEYWORDS.contains(&first.text)
                    && toks.get(1).is_some_and(|t| t.text == "=")
                {
                    let rhs = toks
                        .get(2)
                        .map(|t| text_between(t, None))
                        .unwrap_or_default();
                    add(
                        self,
                        first,
                        Kind::Variable(VarOrigin::Assign(rhs)),
                        scope.clone(),
                    );
                }
            }
        }
        // `-> r` or `-> a:4 b:2 _:1`.
        if let Some(arrow) = toks.iter().position(|t| t.text == "->") {
            let rest = &toks[arrow + 1..];
            if let [name] = rest
                && name.kind == TokKind::Word
            {
                add(
                    self,
                    name,
                    Kind::Variable(VarOrigin::Response),
                    scope.clone(),
                );
            }
            let mut j = 0;
            while let [name, colon, len, ..] = &rest[j..] {
                if name.kind != TokKind::Word || colon.text != ":" {
                    break;
                }
                if name.text != "_" {
                    add(
                        self,
                        name,
                        Kind::Variable(VarOrigin::Field(len.text.to_string())),
                        scope.clone(),
                    );
                }
                j += 3;
            }
        }
    }

    /// The routine around `line` of file `file`, if any.
    fn routine_at(&self, file: usize, line: u32) -> Option<&str> {
        self.routines
            .iter()
            .find(|r| r.file == file && r.first <= line && line <= r.last)
            .map(|r| r.name.as_str())
    }

    /// The declaration `name` means at `line` of file `file`: a parameter or variable of
    /// the routine around it first, then a global declaration, then the first
    /// assignment of a flow variable.
    pub fn lookup(&self, name: &str, file: usize, line: u32) -> Option<&Symbol> {
        let scope = self.routine_at(file, line);
        let named = || self.symbols.iter().filter(move |s| s.name == name);
        if let Some(r) = scope
            && let Some(s) = named().find(|s| s.scope.as_deref() == Some(r))
        {
            return Some(s);
        }
        named()
            .find(|s| !matches!(s.kind, Kind::Variable(_) | Kind::Param))
            .or_else(|| named().find(|s| s.scope.is_none()))
            .or_else(|| named().next())
    }

    /// The include whose string is at (`line`, `col`) of file `file`.
    pub fn include_at(&self, file: usize, line: u32, col: u32) -> Option<&Include> {
        self.includes
            .iter()
            .find(|i| i.file == file && i.line == line && i.start <= col && col <= i.end)
    }
}

/// The line without its comment, trimmed.
fn source_text(raw: &str, toks: &[Tok<'_>]) -> String {
    match (toks.first(), toks.last()) {
        (Some(a), Some(b)) => raw.get(a.byte..b.byte_end).unwrap_or("").to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardvm::asm::MapLoader;

    #[test]
    fn tokens_count_utf16_columns_and_stop_at_comments() {
        let t = tokens("x = [01] ‖ é·b ; c", Lang::Cvs);
        let texts: Vec<&str> = t.iter().map(|t| t.text).collect();
        assert_eq!(texts, ["x", "=", "[", "01", "]", "‖", "é", "·", "b"]);
        let b = t.last().expect("tokens");
        assert_eq!((b.start, b.end), (13, 14));
        let c = tokens("l1: .input amount u32", Lang::Casm);
        assert_eq!(c[2].text, ".input");
    }

    #[test]
    fn outline_of_a_cvs_program_with_an_include() {
        let mut loader = MapLoader::new();
        loader.insert("dir/common.cvs", "routine greet(a, b) {\n  t = a ++ b\n}\n");
        let text = "include \"common.cvs\"\ninput amount: u32, dlk: key(des3, load)\n\
                    const SELECT = [00 A4]\nfail_codes {\n  locked = 0x08\n}\n\
                    apdu SELECT -> bal:4 _:2 rnd:4\nsk = session_key(dlk, rnd)\ngreet(bal, rnd)\n";
        let o = Outline::build("dir/main.cvs", text, Lang::Cvs, &mut loader);
        let kinds: Vec<(&str, &Kind)> = o
            .symbols
            .iter()
            .map(|s| (s.name.as_str(), &s.kind))
            .collect();
        assert!(
            kinds.contains(&("amount", &Kind::Input("u32".into()))),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("dlk", &Kind::Input("key(des3, load)".into()))),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("SELECT", &Kind::Const("[00 A4]".into()))),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("locked", &Kind::FailCode("0x08".into()))),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("greet", &Kind::Routine("a, b".into()))),
            "{kinds:?}"
        );
        let sk = o.lookup("sk", 0, 8).expect("sk");
        assert_eq!(
            sk.kind,
            Kind::Variable(VarOrigin::Assign("session_key(dlk, rnd)".into()))
        );
        assert_eq!(o.lookup("rnd", 0, 8).map(|s| s.line), Some(6));
        let t = o.lookup("t", 1, 1).expect("t");
        assert_eq!((t.file, t.scope.as_deref()), (1, Some("greet")));
        assert_eq!(o.includes[0].target, Some(1));
    }
}
