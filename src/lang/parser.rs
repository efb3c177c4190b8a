//! Tokens → [`Item`]s. Recursive descent, one statement per line; nesting of
//! expressions and blocks is bounded so no input can exhaust the stack.

use super::ast::*;
use super::lexer::{Tok, Token};
use super::{Diag, Span};
use crate::transport::Slot;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Deepest expression nesting.
pub const MAX_EXPR_DEPTH: usize = 64;
/// Deepest block nesting (`if`, `for`, `routine`).
pub const MAX_BLOCK_DEPTH: usize = 32;

/// Words that cannot name a variable, a constant, a routine or a failure code.
pub const KEYWORDS: &[&str] = &[
    "city",
    "script",
    "version",
    "input",
    "output",
    "const",
    "fail_codes",
    "include",
    "routine",
    "apdu",
    "le",
    "on",
    "else",
    "fail",
    "out",
    "if",
    "for",
    "in",
    "repeat",
    "done",
    "commit_point",
    "check_mac",
    "load_reader_key",
    "expect",
    "sw",
    "is",
    "not",
];

/// Builtin functions usable in expressions.
pub(crate) const BUILTINS: &[&str] = &[
    "mac",
    "session_key",
    "tac_key",
    "div_key",
    "encrypt",
    "decrypt",
    "sm3",
    "ct_eq",
    "pad",
    "xor",
    "invert",
    "len",
    "fill",
    "uid",
    "sw",
];

type R<T> = Result<T, Diag>;

/// Items of one line, or an `include` (its path and where it was written).
pub(crate) type Parsed = Result<Vec<Item>, (String, Span)>;

pub(crate) struct Parser<'t> {
    toks: &'t [Token],
    k: usize,
    expr_depth: usize,
    block_depth: usize,
}

fn err<T>(span: Span, msg: impl Into<String>) -> R<T> {
    Err(Diag::new(span, msg))
}

fn is_hex_word(w: &str) -> bool {
    !w.is_empty() && w.len().is_multiple_of(2) && w.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex_bytes(w: &str) -> Vec<u8> {
    w.as_bytes()
        .chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            d(p[0]) << 4 | d(p[1])
        })
        .collect()
}

/// Parses a decimal or `0x` hex number.
pub(crate) fn number(w: &str) -> Option<u64> {
    if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_') {
            return None;
        }
        u64::from_str_radix(&h.replace('_', ""), 16).ok()
    } else if w.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        && w.starts_with(|c: char| c.is_ascii_digit())
    {
        w.replace('_', "").parse().ok()
    } else {
        None
    }
}

fn is_name(w: &str) -> bool {
    crate::script::is_valid_name(w)
}

/// A status-word pattern: 4 hex digits, `x` for any nibble.
fn is_sw(w: &str) -> bool {
    w.len() == 4
        && w.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'x' || b == b'X')
}

impl<'t> Parser<'t> {
    pub fn new(toks: &'t [Token]) -> Self {
        Parser {
            toks,
            k: 0,
            expr_depth: 0,
            block_depth: 0,
        }
    }

    fn peek(&self) -> &Token {
        // The lexer ends every file with a line end; past it, keep returning it.
        &self.toks[self.k.min(self.toks.len() - 1)]
    }

    fn peek_at(&self, n: usize) -> &Token {
        &self.toks[(self.k + n).min(self.toks.len() - 1)]
    }

    fn at_end(&self) -> bool {
        self.k >= self.toks.len()
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        self.k += 1;
        t
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.peek().is(p) {
            self.k += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek().is_word(w) {
            self.k += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str, what: &str) -> R<Span> {
        let t = self.peek();
        if t.is(p) {
            let s = t.span;
            self.k += 1;
            Ok(s)
        } else {
            err(t.span, format!("expected {what}, found {}", t.describe()))
        }
    }

    fn skip_newlines(&mut self) {
        while !self.at_end() && self.peek().kind == Tok::Newline {
            self.k += 1;
        }
    }

    fn end_of_line(&mut self) -> R<()> {
        let t = self.peek();
        match t.kind {
            Tok::Newline => {
                self.k += 1;
                Ok(())
            }
            _ if t.is("}") => Ok(()),
            _ => err(
                t.span,
                format!("unexpected {} (one statement per line)", t.describe()),
            ),
        }
    }

    fn name(&mut self, what: &str) -> R<(String, Span)> {
        let t = self.peek().clone();
        if t.kind == Tok::Word && is_name(&t.text) {
            if KEYWORDS.contains(&t.text.as_str()) {
                return err(t.span, format!("`{}` is a keyword, not {what}", t.text));
            }
            self.k += 1;
            Ok((t.text, t.span))
        } else {
            err(t.span, format!("expected {what}, found {}", t.describe()))
        }
    }

    fn num(&mut self, what: &str) -> R<(u64, Span)> {
        let t = self.peek().clone();
        match (t.kind == Tok::Word).then(|| number(&t.text)).flatten() {
            Some(v) => {
                self.k += 1;
                Ok((v, t.span))
            }
            None => err(
                t.span,
                format!(
                    "expected {what} (decimal or 0x hex), found {}",
                    t.describe()
                ),
            ),
        }
    }

    /// One item at the top level of a file. `include` is returned as a path for the
    /// caller (which reads the file) to splice in.
    pub fn item(&mut self) -> R<Option<Parsed>> {
        self.skip_newlines();
        if self.at_end() {
            return Ok(None);
        }
        let t = self.peek().clone();
        let w = if t.kind == Tok::Word {
            t.text.as_str()
        } else {
            ""
        };
        let items = match w {
            "city" | "script" | "version" => {
                self.k += 1;
                let key = match w {
                    "city" => "city",
                    "script" => "script",
                    _ => "version",
                };
                let (v, _) = self.num("a number")?;
                alloc::vec![Item::Header(key, v, t.span)]
            }
            "input" | "output" => {
                self.k += 1;
                let kind = if w == "input" {
                    DeclKind::Input
                } else {
                    DeclKind::Output
                };
                let mut out = Vec::new();
                loop {
                    out.push(Item::Decl(kind, self.decl()?));
                    if !self.eat(",") {
                        break;
                    }
                }
                out
            }
            "const" => {
                self.k += 1;
                let (name, span) = self.name("a constant name")?;
                self.expect("=", "`=`")?;
                let e = self.expr()?;
                alloc::vec![Item::Const(name, e, span)]
            }
            "fail_codes" => {
                self.k += 1;
                self.expect("{", "`{`")?;
                let mut out = Vec::new();
                loop {
                    self.skip_newlines();
                    if self.eat("}") {
                        break;
                    }
                    if self.at_end() {
                        return err(t.span, "`fail_codes {` has no closing `}`");
                    }
                    let (name, span) = self.name("a failure-code name")?;
                    self.expect("=", "`=`")?;
                    let (v, vspan) = self.num("a code")?;
                    if v > u64::from(u16::MAX) {
                        return err(vspan, "a failure code is at most 0xFFFF");
                    }
                    out.push(Item::FailCode(name, v, span));
                    self.eat(",");
                }
                out
            }
            "include" => {
                self.k += 1;
                let p = self.bump();
                if p.kind != Tok::Str {
                    return err(p.span, "`include` takes a quoted path");
                }
                self.end_of_line()?;
                return Ok(Some(Err((p.text, p.span))));
            }
            "routine" => {
                self.k += 1;
                let (name, span) = self.name("a routine name")?;
                if BUILTINS.contains(&name.as_str()) {
                    return err(span, format!("`{name}` is a builtin function"));
                }
                self.expect("(", "`(`")?;
                let mut params = Vec::new();
                if !self.eat(")") {
                    loop {
                        params.push(self.name("a parameter name")?);
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",", "`,` or `)`")?;
                    }
                }
                let body = self.block()?;
                alloc::vec![Item::Routine(Routine {
                    name,
                    params,
                    body,
                    span,
                })]
            }
            _ => alloc::vec![Item::Stmt(self.stmt()?)],
        };
        self.end_of_line()?;
        Ok(Some(Ok(items)))
    }

    fn decl(&mut self) -> R<Decl> {
        let (name, span) = self.name("a name")?;
        self.expect(":", "`:` and a type")?;
        // The type's tokens, up to a top-level `,` or the line end.
        let mut text = String::new();
        let mut depth = 0i32;
        let start = self.peek().span;
        loop {
            let t = self.peek();
            if t.kind == Tok::Newline || (depth == 0 && t.is(",")) {
                break;
            }
            if t.is("(") || t.is("[") {
                depth += 1;
            } else if t.is(")") || t.is("]") {
                depth -= 1;
            }
            match t.kind {
                Tok::Str => return err(t.span, "unexpected string in a type"),
                _ if t.is(",") => text.push_str(", "),
                _ => text.push_str(&t.text),
            }
            self.k += 1;
        }
        let ty = if text.starts_with("key(") {
            Ty::Key
        } else if matches!(text.as_str(), "u8" | "u16" | "u32" | "u64") {
            Ty::Int
        } else if text == "bytes" || text == "bcd_datetime" || text.starts_with("bytes[") {
            Ty::Bytes
        } else {
            return err(
                start,
                "expected a type: u8, u16, u32, u64, bytes, bytes[N], bcd_datetime or key(ALG, USAGE)",
            );
        };
        Ok(Decl {
            name,
            ty_text: text,
            ty,
            span,
        })
    }

    fn block(&mut self) -> R<Vec<Stmt>> {
        let open = self.expect("{", "`{`")?;
        if self.block_depth >= MAX_BLOCK_DEPTH {
            return err(open, format!("blocks nested deeper than {MAX_BLOCK_DEPTH}"));
        }
        self.block_depth += 1;
        let mut out = Vec::new();
        loop {
            self.skip_newlines();
            if self.eat("}") {
                break;
            }
            if self.at_end() {
                return err(open, "this `{` has no closing `}`");
            }
            out.push(self.stmt()?);
            self.end_of_line()?;
        }
        self.block_depth -= 1;
        Ok(out)
    }

    fn code(&mut self) -> R<Code> {
        let t = self.peek().clone();
        if let Some(v) = (t.kind == Tok::Word).then(|| number(&t.text)).flatten() {
            self.k += 1;
            if v > u64::from(u16::MAX) {
                return err(t.span, "a failure code is at most 0xFFFF");
            }
            return Ok(Code::Num(v));
        }
        let (n, s) = self.name("a failure code (a `fail_codes` name or a number)")?;
        Ok(Code::Name(n, s))
    }

    fn sw_pattern(&mut self) -> R<(String, Span)> {
        let t = self.peek().clone();
        if t.kind == Tok::Word && is_sw(&t.text) {
            self.k += 1;
            Ok((t.text, t.span))
        } else {
            err(
                t.span,
                format!(
                    "expected a status word (4 hex digits, `x` = any nibble), found {}",
                    t.describe()
                ),
            )
        }
    }

    /// `else fail CODE` (after `else` was seen).
    fn else_fail(&mut self, at: Span) -> R<Handler> {
        if !self.eat_word("fail") {
            let t = self.peek();
            return err(
                t.span,
                format!("expected `fail` after `else`, found {}", t.describe()),
            );
        }
        Ok(Handler {
            pattern: None,
            code: self.code()?,
            span: at,
        })
    }

    /// Status-word handlers: on the statement's line (`else fail X`) and on the lines
    /// that follow it (`on 9403 fail X`, `else fail X`).
    fn handlers(&mut self) -> R<Vec<Handler>> {
        let mut out = Vec::new();
        loop {
            let t = self.peek().clone();
            if t.is_word("else") {
                self.k += 1;
                out.push(self.else_fail(t.span)?);
                continue;
            }
            if t.kind == Tok::Newline {
                // Look past line ends for `on …` / `else fail …` continuation lines.
                let mut j = self.k;
                while j < self.toks.len() && self.toks[j].kind == Tok::Newline {
                    j += 1;
                }
                let next = self.toks.get(j);
                let cont = next.is_some_and(|n| {
                    n.is_word("on")
                        || (n.is_word("else")
                            && self.toks.get(j + 1).is_some_and(|f| f.is_word("fail")))
                });
                if !cont {
                    break;
                }
                self.k = j;
                continue;
            }
            if t.is_word("on") {
                self.k += 1;
                let (pattern, _) = self.sw_pattern()?;
                if !self.eat_word("fail") {
                    let f = self.peek();
                    return err(
                        f.span,
                        format!(
                            "expected `fail` after the status word, found {}",
                            f.describe()
                        ),
                    );
                }
                out.push(Handler {
                    pattern: Some(pattern),
                    code: self.code()?,
                    span: t.span,
                });
                continue;
            }
            break;
        }
        if let Some(two) = out.iter().filter(|h| h.pattern.is_none()).nth(1) {
            return err(two.span, "one `else fail` per command");
        }
        Ok(out)
    }

    fn stmt(&mut self) -> R<Stmt> {
        let t = self.peek().clone();
        let w = if t.kind == Tok::Word {
            t.text.as_str()
        } else {
            ""
        };
        // `sam0 apdu …` … `sam3 apdu …`: the command goes to that SAM slot; `host apdu …`
        // to the card company (host-secured mode). Only before `apdu` are `samN` and
        // `host` special; elsewhere they stay ordinary names.
        let before_apdu = {
            let next = self.peek_at(1);
            next.kind == Tok::Word && next.text == "apdu"
        };
        let to = match w.strip_prefix("sam").map(str::parse::<u8>) {
            Some(Ok(n)) if w.len() == 4 && n <= 3 && before_apdu => {
                self.k += 1;
                Slot::Sam(n)
            }
            _ if w == "host" && before_apdu => {
                self.k += 1;
                Slot::Host
            }
            _ => Slot::Card,
        };
        let w = if to != Slot::Card { "apdu" } else { w };
        match w {
            "apdu" => {
                self.k += 1;
                let command = self.command()?;
                let target = if self.eat("->") {
                    Some(self.target()?)
                } else {
                    None
                };
                let handlers = self.handlers()?;
                Ok(Stmt::Apdu {
                    to,
                    command,
                    target,
                    handlers,
                    span: t.span,
                })
            }
            "load_reader_key" => {
                self.k += 1;
                self.expect("(", "`(`")?;
                let key = self.expr()?;
                self.expect(",", "`,`")?;
                let slot = self.expr()?;
                self.expect(")", "`)`")?;
                let handlers = self.handlers()?;
                Ok(Stmt::ReaderKey {
                    key,
                    slot,
                    handlers,
                    span: t.span,
                })
            }
            "check_mac" => {
                self.k += 1;
                self.expect("(", "`(`")?;
                let key = self.expr()?;
                self.expect(",", "`,`")?;
                let data = self.expr()?;
                self.expect(",", "`,`")?;
                let mac = self.expr()?;
                self.expect(")", "`)`")?;
                let e = self.peek().clone();
                if !self.eat_word("else") {
                    return err(e.span, "`check_mac(…)` needs `else fail CODE`");
                }
                let h = self.else_fail(e.span)?;
                Ok(Stmt::CheckMac {
                    key,
                    data,
                    mac,
                    code: h.code,
                    span: t.span,
                })
            }
            "expect" => {
                self.k += 1;
                let (p, _) = self.sw_pattern()?;
                let e = self.peek().clone();
                if !self.eat_word("else") {
                    return err(e.span, "`expect SW` needs `else fail CODE`");
                }
                let h = self.else_fail(e.span)?;
                Ok(Stmt::Expect(p, h.code, t.span))
            }
            "out" => {
                self.k += 1;
                let mut v = Vec::new();
                loop {
                    let (n, s) = self.name("an output name")?;
                    self.expect("=", "`=`")?;
                    v.push((n, s, self.expr()?));
                    if !self.eat(",") {
                        break;
                    }
                }
                Ok(Stmt::Out(v))
            }
            "if" => {
                self.k += 1;
                self.if_rest(t.span)
            }
            "for" | "repeat" => {
                self.k += 1;
                let var = if w == "for" {
                    let v = self.name("a loop variable")?;
                    if !self.eat_word("in") {
                        let x = self.peek();
                        return err(x.span, format!("expected `in`, found {}", x.describe()));
                    }
                    Some(v)
                } else {
                    None
                };
                let (from, to) = if var.is_some() {
                    let (a, _) = self.num("a start")?;
                    self.expect("..", "`..`")?;
                    let (b, _) = self.num("an end")?;
                    (a, b)
                } else {
                    (0, self.num("a count")?.0)
                };
                if to < from || to - from > u64::from(u16::MAX) || to > u64::from(u32::MAX) {
                    return err(
                        t.span,
                        "a loop runs 0..=65535 times with bounds at most 2^32-1",
                    );
                }
                let body = self.block()?;
                Ok(Stmt::Loop {
                    var,
                    from,
                    to,
                    body,
                    span: t.span,
                })
            }
            "fail" => {
                self.k += 1;
                Ok(Stmt::Fail(self.code()?, t.span))
            }
            "done" => {
                self.k += 1;
                Ok(Stmt::Done(t.span))
            }
            "commit_point" => {
                self.k += 1;
                Ok(Stmt::CommitPoint(t.span))
            }
            _ if t.kind == Tok::Word && is_name(w) && self.peek_at(1).is("=") => {
                let (n, s) = self.name("a variable name")?;
                self.k += 1;
                Ok(Stmt::Assign(n, s, self.expr()?))
            }
            _ if t.kind == Tok::Word
                && is_name(w)
                && !BUILTINS.contains(&w)
                && !KEYWORDS.contains(&w)
                && self.peek_at(1).is("(") =>
            {
                let (n, s) = self.name("a routine name")?;
                let args = self.args()?;
                Ok(Stmt::Call(n, args, s))
            }
            _ => {
                let e = self.expr()?;
                let arrow = self.peek().clone();
                if !self.eat("->") {
                    return err(
                        arrow.span,
                        format!(
                            "expected a statement; after an expression, `-> field:LEN …` (found {})",
                            arrow.describe()
                        ),
                    );
                }
                match self.target()? {
                    Target::Fields(f) => Ok(Stmt::Destructure(e, f, t.span)),
                    Target::Var(_, s) => {
                        err(s, "destructuring takes fields with lengths: `-> a:4 b:2`")
                    }
                }
            }
        }
    }

    fn if_rest(&mut self, span: Span) -> R<Stmt> {
        let cond = self.cond()?;
        if self.peek().is_word("fail") {
            let f = self.bump();
            let code = self.code()?;
            return Ok(Stmt::If {
                cond,
                then: alloc::vec![Stmt::Fail(code, f.span)],
                els: None,
                span,
            });
        }
        let then = self.block()?;
        let els = if self.eat_word("else") {
            let t = self.peek().clone();
            if self.eat_word("if") {
                Some(alloc::vec![self.if_rest(t.span)?])
            } else {
                Some(self.block()?)
            }
        } else {
            None
        };
        Ok(Stmt::If {
            cond,
            then,
            els,
            span,
        })
    }

    fn cond(&mut self) -> R<Cond> {
        if self.eat_word("not") {
            return Ok(Cond::Not(Box::new(self.cond_atom()?)));
        }
        self.cond_atom()
    }

    fn cond_atom(&mut self) -> R<Cond> {
        let t = self.peek().clone();
        if t.is_word("sw") && self.peek_at(1).is_word("is") {
            self.k += 2;
            let neg = self.eat_word("not");
            let (p, _) = self.sw_pattern()?;
            return Ok(Cond::Sw(p, neg, t.span));
        }
        let a = self.operand()?;
        let Some(op) = self.cmp_op() else {
            return Ok(Cond::Truthy(a));
        };
        self.k += 1;
        let b = self.operand()?;
        Ok(Cond::Cmp(op, a, b))
    }

    fn target(&mut self) -> R<Target> {
        let (n, s) = if self.peek().is_word("_") {
            let t = self.bump();
            (t.text, t.span)
        } else {
            self.name("a variable name")?
        };
        if !self.peek().is(":") {
            if n == "_" {
                return err(s, "`_` needs a length: `_:4`");
            }
            return Ok(Target::Var(n, s));
        }
        let mut fields = Vec::new();
        let mut first = Some((n, s));
        loop {
            let (name, span) = match first.take() {
                Some(x) => x,
                None => {
                    let t = self.peek();
                    if !(t.kind == Tok::Word && is_name(&t.text)) {
                        break;
                    }
                    if t.is_word("else") || t.is_word("on") {
                        break;
                    }
                    if t.is_word("_") {
                        let t = self.bump();
                        (t.text, t.span)
                    } else {
                        self.name("a field name")?
                    }
                }
            };
            self.expect(":", "`:` and the field's length")?;
            let (len, ls) = self.num("a length")?;
            if len == 0 || len > crate::script::MAX_BYTES_LEN as u64 {
                return err(ls, "a field is 1..=4096 bytes");
            }
            fields.push(Field {
                name: (name != "_").then_some(name),
                len,
                span,
            });
        }
        Ok(Target::Fields(fields))
    }

    fn command(&mut self) -> R<Command> {
        let t = self.peek().clone();
        let built = t.is("{") || (t.kind == Tok::Word && t.text.len() == 2 && is_hex_word(&t.text));
        if !built {
            return Ok(Command::Raw(self.expr()?));
        }
        let mut header = Vec::new();
        loop {
            let t = self.peek().clone();
            if t.is("{") {
                header.push(self.embedded()?);
            } else if t.kind == Tok::Word
                && !t.is_word("le")
                && !t.is_word("else")
                && !t.is_word("on")
            {
                if !is_hex_word(&t.text) {
                    return err(
                        t.span,
                        format!("expected header bytes in hex, found {}", t.describe()),
                    );
                }
                self.k += 1;
                header.push(Piece::Hex(hex_bytes(&t.text)));
            } else {
                break;
            }
        }
        let data = if self.peek().is("[") {
            Some(self.primary()?)
        } else {
            None
        };
        let le = if self.eat_word("le") {
            let (v, s) = self.num("Le")?;
            if v > 65536 {
                return err(s, "Le is at most 65536");
            }
            Some((v, s))
        } else {
            None
        };
        Ok(Command::Built { header, data, le })
    }

    fn embedded(&mut self) -> R<Piece> {
        self.expect("{", "`{`")?;
        let e = self.expr()?;
        self.expect("}", "`}`")?;
        Ok(Piece::Expr(e))
    }

    fn args(&mut self) -> R<Vec<Expr>> {
        self.expect("(", "`(`")?;
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",", "`,` or `)`")?;
        }
    }

    /// An expression, a comparison `a == b` / `a != b` (a value: 1 or 0) included.
    pub fn expr(&mut self) -> R<Expr> {
        self.nested(Self::comparison)
    }

    /// An expression without a comparison at its top: an operand of `if`'s comparison,
    /// which compiles to a branch.
    fn operand(&mut self) -> R<Expr> {
        self.nested(Self::concat)
    }

    fn nested(&mut self, f: fn(&mut Self) -> R<Expr>) -> R<Expr> {
        let at = self.peek().span;
        if self.expr_depth >= MAX_EXPR_DEPTH {
            return err(
                at,
                format!("expression nested deeper than {MAX_EXPR_DEPTH}"),
            );
        }
        self.expr_depth += 1;
        let r = f(self);
        self.expr_depth -= 1;
        r
    }

    /// The comparison operator at the cursor, if any.
    fn cmp_op(&self) -> Option<Cmp> {
        match self.peek() {
            x if x.is("==") => Some(Cmp::Eq),
            x if x.is("!=") => Some(Cmp::Ne),
            x if x.is("<") => Some(Cmp::Lt),
            x if x.is("<=") => Some(Cmp::Le),
            x if x.is(">") => Some(Cmp::Gt),
            x if x.is(">=") => Some(Cmp::Ge),
            _ => None,
        }
    }

    fn comparison(&mut self) -> R<Expr> {
        let a = self.concat()?;
        let Some(op) = self.cmp_op() else {
            return Ok(a);
        };
        let t = self.bump();
        if !matches!(op, Cmp::Eq | Cmp::Ne) {
            return err(
                t.span,
                format!(
                    "`{}` makes no value: `==` and `!=` give 1 or 0; ordered comparisons go in `if`",
                    t.text
                ),
            );
        }
        let b = self.concat()?;
        if self.cmp_op().is_some() {
            let c = self.peek();
            return err(
                c.span,
                "comparisons do not chain: put one in parentheses, `(a == b) == c`",
            );
        }
        Ok(Expr {
            kind: ExprKind::Cmp(op, Box::new(a), Box::new(b)),
            span: t.span,
        })
    }

    fn concat(&mut self) -> R<Expr> {
        let mut a = self.bitand()?;
        while self.peek().is("++") {
            let s = self.bump().span;
            let b = self.bitand()?;
            a = Expr {
                kind: ExprKind::Concat(Box::new(a), Box::new(b)),
                span: s,
            };
        }
        Ok(a)
    }

    fn binary(&mut self, ops: &[(&str, BinOp)], next: fn(&mut Self) -> R<Expr>) -> R<Expr> {
        let mut a = next(self)?;
        'outer: loop {
            for (p, op) in ops {
                if self.peek().is(p) {
                    let s = self.bump().span;
                    let b = next(self)?;
                    a = Expr {
                        kind: ExprKind::Bin(*op, Box::new(a), Box::new(b)),
                        span: s,
                    };
                    continue 'outer;
                }
            }
            return Ok(a);
        }
    }

    fn bitand(&mut self) -> R<Expr> {
        self.binary(&[("&", BinOp::And)], Self::shift)
    }

    fn shift(&mut self) -> R<Expr> {
        self.binary(&[("<<", BinOp::Shl), (">>", BinOp::Shr)], Self::additive)
    }

    fn additive(&mut self) -> R<Expr> {
        self.binary(
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            Self::multiplicative,
        )
    }

    fn multiplicative(&mut self) -> R<Expr> {
        self.binary(
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
            Self::postfix,
        )
    }

    fn postfix(&mut self) -> R<Expr> {
        let mut e = self.primary()?;
        loop {
            let t = self.peek().clone();
            if t.is("[") {
                self.k += 1;
                let a = self.expr()?;
                self.expect("..", "`..`")?;
                let b = self.expr()?;
                self.expect("]", "`]`")?;
                e = Expr {
                    kind: ExprKind::Slice(Box::new(e), Box::new(a), Box::new(b)),
                    span: t.span,
                };
            } else if t.is(":") {
                self.k += 1;
                let c = self.peek().clone();
                let conv = match c.text.as_str() {
                    "u8be" => Conv::Be(1),
                    "u16be" => Conv::Be(2),
                    "u32be" => Conv::Be(4),
                    "u64be" => Conv::Be(8),
                    "int" => Conv::Int,
                    "bcd_int" => Conv::BcdInt,
                    w if w.starts_with("bcd") && w[3..].parse::<u8>().is_ok_and(|n| n > 0) => {
                        Conv::Bcd(w[3..].parse().unwrap_or(1))
                    }
                    _ => {
                        return err(
                            c.span,
                            format!(
                                "expected a conversion (u8be, u16be, u32be, u64be, bcdN, int, bcd_int), found {}",
                                c.describe()
                            ),
                        );
                    }
                };
                self.k += 1;
                e = Expr {
                    kind: ExprKind::Conv(Box::new(e), conv),
                    span: t.span,
                };
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> R<Expr> {
        let t = self.peek().clone();
        if t.is("(") {
            self.k += 1;
            let e = self.expr()?;
            self.expect(")", "`)`")?;
            return Ok(e);
        }
        if t.is("[") {
            self.k += 1;
            let mut pieces = Vec::new();
            loop {
                let p = self.peek().clone();
                if p.is("]") {
                    self.k += 1;
                    break;
                }
                if p.is("{") {
                    pieces.push(self.embedded()?);
                } else if p.kind == Tok::Word && is_hex_word(&p.text) {
                    self.k += 1;
                    pieces.push(Piece::Hex(hex_bytes(&p.text)));
                } else {
                    return err(
                        p.span,
                        format!(
                            "expected hex bytes, `{{expr}}` or `]`, found {}",
                            p.describe()
                        ),
                    );
                }
            }
            return Ok(Expr {
                kind: ExprKind::Bytes(pieces),
                span: t.span,
            });
        }
        if t.kind == Tok::Word {
            if let Some(v) = number(&t.text) {
                self.k += 1;
                return Ok(Expr {
                    kind: ExprKind::Int(v),
                    span: t.span,
                });
            }
            if is_name(&t.text) {
                // A builtin is a call when `(` follows; `sw` may go without.
                if BUILTINS.contains(&t.text.as_str())
                    && (t.text == "sw" || self.peek_at(1).is("("))
                {
                    self.k += 1;
                    let args = if t.text == "sw" && !self.peek().is("(") {
                        Vec::new()
                    } else {
                        self.args()?
                    };
                    return Ok(Expr {
                        kind: ExprKind::Call(t.text, args),
                        span: t.span,
                    });
                }
                let (n, s) = self.name("a name")?;
                if self.peek().is("(") {
                    return err(
                        s,
                        format!(
                            "`{n}` is not a builtin function (routines are statements){}",
                            super::suggest::hint(&n, BUILTINS.iter().copied())
                        ),
                    );
                }
                return Ok(Expr {
                    kind: ExprKind::Name(n),
                    span: s,
                });
            }
        }
        err(
            t.span,
            format!("expected an expression, found {}", t.describe()),
        )
    }
}
