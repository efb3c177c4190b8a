//! Type check and code generation: [`Item`]s → `.casm` text and its line map.
//!
//! Expressions compile to instructions over virtual registers and key slots; routines
//! are expanded inline; constant expressions are folded. [`super::regalloc`] then maps
//! virtual registers to `r0..` (reusing those whose value is dead) and the result is
//! printed as `.casm`, one instruction per line, each line remembering the source
//! position it came from.

use super::ast::*;
use super::parser::KEYWORDS;
use super::regalloc::{self, A, Ins, Line};
use super::{Diag, Span};
use crate::transport::Slot;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;

/// Deepest nesting of routine expansions.
pub const MAX_ROUTINE_DEPTH: usize = 16;
/// Most instructions a program expands to.
pub const MAX_INSTRUCTIONS: usize = 20_000;
/// Most loops a program expands to (keeps register allocation's loop pass small).
pub const MAX_LOOPS: usize = 256;
/// Most compile steps a program may take; the total work of code generation.
///
/// Routines are expanded inline, so a few lines of routines calling routines can stand
/// for an exponential number of statements; this budget stops them, whatever they
/// emit. A step is: each statement generated (each statement of each routine
/// expansion again, so the call of an empty routine costs its call statement), each
/// expression or condition node evaluated, each [`BYTES_PER_STEP`] bytes of a byte
/// string made at compile time, and each variable in scope at an `if` or a loop (the
/// compiler notes which are assigned). The shipped flows take a few hundred steps.
pub const MAX_COMPILE_STEPS: usize = 250_000;
/// Bytes of compile-time byte string that cost one compile step
/// (see [`MAX_COMPILE_STEPS`]): what constant folding may hold is bounded too.
pub const BYTES_PER_STEP: usize = 16;
/// Most inputs, and most outputs, a program declares (as in the bytecode).
pub const MAX_DECLS: usize = crate::script::MAX_ENTRIES;

type R<T> = Result<T, Diag>;

fn err<T>(span: Span, msg: impl Into<String>) -> R<T> {
    Err(Diag::new(span, msg))
}

/// A value during code generation.
#[derive(Debug, Clone)]
enum V {
    /// A register holding an integer or a byte string.
    Reg(u32, Ty),
    /// A key slot.
    Key(u32),
    /// A compile-time byte string.
    Bytes(Vec<u8>),
    /// A compile-time integer.
    Int(u64),
}

impl V {
    fn ty(&self) -> Ty {
        match self {
            V::Reg(_, t) => *t,
            V::Key(_) => Ty::Key,
            V::Bytes(_) => Ty::Bytes,
            V::Int(_) => Ty::Int,
        }
    }
}

#[derive(Debug, Clone)]
struct Var {
    val: V,
    assigned: bool,
    readonly: bool,
}

#[derive(Default)]
struct Env {
    vars: BTreeMap<String, Var>,
}

impl Env {
    fn snapshot(&self) -> BTreeSet<String> {
        self.vars
            .iter()
            .filter(|(_, v)| v.assigned)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn restore(&mut self, set: &BTreeSet<String>) {
        for (n, v) in self.vars.iter_mut() {
            v.assigned = set.contains(n);
        }
    }
}

/// The generated `.casm` and, per line (index 0 = line 1), where it came from.
pub(crate) struct Generated {
    pub casm: String,
    pub line_map: Vec<Option<Span>>,
    /// Every source variable (and loaded input) with its register or key slot and the
    /// generated lines it lives on.
    pub vars: Vec<GenVar>,
    /// Every inline routine expansion with the generated lines of its body.
    pub scopes: Vec<GenScope>,
}

/// What a name is bound to during generation: a virtual register or key slot.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Reg(u32),
    Key(u32),
}

/// A name bound to a register or key slot (the debug variable table's source).
#[derive(Debug, Clone)]
struct Binding {
    name: String,
    ty: Ty,
    to: Bound,
    span: Span,
    /// 0: the flow itself; `n`: [`Gen::frames`]`[n - 1]`.
    scope: u32,
    /// A parameter: it holds its value from the expansion's first instruction on, not
    /// only after the instruction that first mentions its register.
    param: bool,
}

/// A variable after allocation: its physical register or slot and its generated lines
/// (1-based, inclusive), from the first line that runs with its value in place (the one
/// after the line that writes it) to the last that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenVar {
    pub name: String,
    pub ty: Ty,
    pub slot: u32,
    pub lines: (u32, u32),
    pub span: Span,
    pub scope: u32,
}

/// An inline routine expansion: its generated lines (1-based, inclusive; `None` when its
/// body emitted no code), the call, and the expansion it was called from (0: the flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenScope {
    pub routine: String,
    pub call: Span,
    pub lines: Option<(u32, u32)>,
    pub parent: u32,
}

struct Gen {
    header: BTreeMap<&'static str, (u64, Span)>,
    consts: BTreeMap<String, V>,
    codes: BTreeMap<String, u16>,
    inputs: Vec<Decl>,
    outputs: Vec<Decl>,
    routines: BTreeMap<String, Rc<Routine>>,
    prologue: Vec<Line>,
    code: Vec<Line>,
    nreg: u32,
    nkey: u32,
    nlabel: u32,
    /// Inputs loaded so far, and the register or slot they are in.
    loaded: BTreeMap<String, V>,
    /// Registers bound to a name (a variable or an input): never reused as a temporary.
    named: BTreeSet<u32>,
    /// Registers of variables and parameters whose value comes from a `mac` (see
    /// [`Gen::mac_derived`]): compared only in constant time.
    macs: BTreeSet<u32>,
    /// Control nesting: 0 while every instruction emitted runs on every path.
    depth: usize,
    stubs: Vec<(u16, u32, Span)>,
    /// Failure code → the label of its stub in [`Gen::stubs`].
    stub_of: BTreeMap<u16, u32>,
    /// The routine expansions in progress: name and where it was called.
    expanding: Vec<(String, Span)>,
    /// Instructions in `code` (its labels and scope marks are not).
    emitted: usize,
    /// Names bound to registers and key slots, in binding order.
    bindings: Vec<Binding>,
    /// Every routine expansion: name, call, parent (0: the flow).
    frames: Vec<(String, Span, u32)>,
    /// The expansions in progress, innermost last (1-based indices into `frames`).
    frame_stack: Vec<u32>,
    loops: usize,
    /// Compile steps taken (see [`MAX_COMPILE_STEPS`]).
    steps: usize,
}

/// Generates `.casm` from the items of a program (includes already spliced).
pub(crate) fn generate(items: Vec<Item>) -> R<Generated> {
    let mut g = Gen {
        header: BTreeMap::new(),
        consts: BTreeMap::new(),
        codes: BTreeMap::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        routines: BTreeMap::new(),
        prologue: Vec::new(),
        code: Vec::new(),
        nreg: 0,
        nkey: 0,
        nlabel: 0,
        loaded: BTreeMap::new(),
        named: BTreeSet::new(),
        macs: BTreeSet::new(),
        depth: 0,
        stubs: Vec::new(),
        stub_of: BTreeMap::new(),
        expanding: Vec::new(),
        emitted: 0,
        bindings: Vec::new(),
        frames: Vec::new(),
        frame_stack: Vec::new(),
        loops: 0,
        steps: 0,
    };
    // Declarations first, so the flow may use what a later line (or an including
    // file) declares; constants in order, each from the ones before it.
    let mut stmts = Vec::new();
    let mut taken: BTreeMap<String, Span> = BTreeMap::new();
    let mut claim = |name: &str, span: Span, what: &str| -> R<()> {
        if let Some(first) = taken.get(name) {
            return err(
                span,
                format!(
                    "`{name}` is already declared (line {}); {what} needs its own name",
                    first.line
                ),
            );
        }
        taken.insert(String::from(name), span);
        Ok(())
    };
    for item in items {
        match item {
            Item::Header(k, v, span) => {
                if let Some((_, first)) = g.header.get(k) {
                    return err(
                        span,
                        format!("`{k}` given twice (first at line {})", first.line),
                    );
                }
                let max = if k == "version" {
                    u64::from(u16::MAX)
                } else {
                    u64::from(u32::MAX)
                };
                if v > max {
                    return err(span, format!("`{k}` is at most {max}"));
                }
                g.header.insert(k, (v, span));
            }
            Item::Decl(DeclKind::Input, d) => {
                claim(&d.name, d.span, "an input")?;
                if g.inputs.len() >= MAX_DECLS {
                    return err(d.span, format!("more than {MAX_DECLS} inputs"));
                }
                g.inputs.push(d);
            }
            Item::Decl(DeclKind::Output, d) => {
                if d.ty == Ty::Key {
                    return err(
                        d.span,
                        "an output cannot be a key: key bytes never reach the receipt",
                    );
                }
                if g.outputs.iter().any(|o| o.name == d.name) {
                    return err(d.span, format!("output `{}` is declared twice", d.name));
                }
                if g.outputs.len() >= MAX_DECLS {
                    return err(d.span, format!("more than {MAX_DECLS} outputs"));
                }
                g.outputs.push(d);
            }
            Item::Const(name, e, span) => {
                claim(&name, span, "a constant")?;
                let v = g.const_eval(&e)?;
                g.consts.insert(name, v);
            }
            Item::FailCode(name, v, span) => {
                claim(&name, span, "a failure code")?;
                g.codes.insert(name, v as u16);
            }
            Item::Routine(r) => {
                claim(&r.name, r.span, "a routine")?;
                g.routines.insert(r.name.clone(), Rc::new(r));
            }
            Item::Stmt(s) => stmts.push(s),
        }
    }
    let mut env = Env::default();
    let mut ends = false;
    for s in &stmts {
        ends = g.stmt(&mut env, s)?;
    }
    if !ends {
        let at = stmts.last().map(stmt_span).unwrap_or_default();
        return err(
            at,
            "the flow can run past its last statement: end it with `done` (committed) or `fail CODE`",
        );
    }
    for (code, label, span) in core::mem::take(&mut g.stubs) {
        g.code.push(Line::Label(label));
        g.emit("fail", alloc::vec![A::Imm(code.into())], span)?;
    }
    g.finish()
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Assign(_, s, _)
        | Stmt::Destructure(_, _, s)
        | Stmt::Apdu { span: s, .. }
        | Stmt::ReaderKey { span: s, .. }
        | Stmt::CheckMac { span: s, .. }
        | Stmt::Expect(_, _, s)
        | Stmt::If { span: s, .. }
        | Stmt::Loop { span: s, .. }
        | Stmt::Call(_, _, s)
        | Stmt::Fail(_, s)
        | Stmt::Done(s)
        | Stmt::CommitPoint(s) => *s,
        Stmt::Out(v) => v.first().map(|x| x.1).unwrap_or_default(),
    }
}

/// Whether `e` mentions the name `n`.
fn mentions(e: &Expr, n: &str) -> bool {
    match &e.kind {
        ExprKind::Int(_) => false,
        ExprKind::Name(x) => x == n,
        ExprKind::Bytes(p) => p
            .iter()
            .any(|p| matches!(p, Piece::Expr(e) if mentions(e, n))),
        ExprKind::Concat(a, b) | ExprKind::Bin(_, a, b) | ExprKind::Cmp(_, a, b) => {
            mentions(a, n) || mentions(b, n)
        }
        ExprKind::Slice(a, b, c) => mentions(a, n) || mentions(b, n) || mentions(c, n),
        ExprKind::Conv(a, _) => mentions(a, n),
        ExprKind::Call(_, args) => args.iter().any(|a| mentions(a, n)),
    }
}

fn describe(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Name(n) => format!("`{n}`"),
        ExprKind::Call(f, _) => format!("`{f}(…)`"),
        _ => String::from("this expression"),
    }
}

const KEY_USES: &str = "keys go only into mac, check_mac, session_key, tac_key, div_key, encrypt, decrypt and load_reader_key";

/// Fails unless `v` has type `want`; a key where bytes or an integer is wanted gets
/// the message that keys never become bytes.
fn need(v: &V, want: Ty, e: &Expr, role: &str) -> R<()> {
    let got = v.ty();
    if got == want {
        return Ok(());
    }
    if got == Ty::Key {
        return err(
            e.span,
            format!(
                "{} is a key, but {role} must be {}: key bytes never leave the key slot ({KEY_USES})",
                describe(e),
                want.noun()
            ),
        );
    }
    err(
        e.span,
        format!(
            "{role} must be {}, but {} is {}",
            want.noun(),
            describe(e),
            got.noun()
        ),
    )
}

fn be_bytes(v: u64, n: u8, span: Span) -> R<Vec<u8>> {
    let n = usize::from(n);
    if n < 8 && v >> (8 * n) != 0 {
        return err(span, format!("{v} does not fit in {n} byte(s)"));
    }
    let all = v.to_be_bytes();
    let mut out = alloc::vec![0u8; n.saturating_sub(8)];
    out.extend_from_slice(&all[8usize.saturating_sub(n)..]);
    Ok(out)
}

fn bcd_bytes(v: u64, n: u8, span: Span) -> R<Vec<u8>> {
    let mut out = alloc::vec![0u8; usize::from(n)];
    let mut x = v;
    for b in out.iter_mut().rev() {
        *b = (((x / 10 % 10) << 4) | (x % 10)) as u8;
        x /= 100;
    }
    if x != 0 {
        return err(span, format!("{v} does not fit in {n} byte(s) of BCD"));
    }
    Ok(out)
}

/// A short APDU from a header, data and Le, when it fits the short form.
fn short_apdu(header: &[u8], data: &[u8], le: u64) -> Option<Vec<u8>> {
    if header.len() != 4 || data.len() > 255 || le > 256 {
        return None;
    }
    let mut out = header.to_vec();
    if !data.is_empty() {
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    }
    if le > 0 {
        out.push(if le == 256 { 0 } else { le as u8 });
    }
    Some(out)
}

impl Gen {
    fn reg(&mut self) -> u32 {
        self.nreg += 1;
        self.nreg - 1
    }

    fn key(&mut self) -> u32 {
        self.nkey += 1;
        self.nkey - 1
    }

    fn label(&mut self) -> u32 {
        self.nlabel += 1;
        self.nlabel - 1
    }

    /// Records that `name` now lives in `v`'s register or key slot (in `scope`, or the
    /// current routine expansion), for the debugger. Constants have no storage.
    fn bind(&mut self, name: &str, v: &V, span: Span, scope: Option<u32>) {
        let to = match *v {
            V::Reg(r, _) => Bound::Reg(r),
            V::Key(k) => Bound::Key(k),
            V::Bytes(_) | V::Int(_) => return,
        };
        let param = scope.is_some_and(|s| s > 0);
        let scope = scope.unwrap_or_else(|| self.frame_stack.last().copied().unwrap_or(0));
        self.bindings.push(Binding {
            name: String::from(name),
            ty: v.ty(),
            to,
            span,
            scope,
            param,
        });
    }

    fn emit(&mut self, op: &'static str, args: Vec<A>, span: Span) -> R<()> {
        if self.emitted + self.prologue.len() >= MAX_INSTRUCTIONS {
            return err(
                span,
                format!("the program expands to more than {MAX_INSTRUCTIONS} instructions"),
            );
        }
        self.code.push(Line::I(Ins { op, args, span }));
        self.emitted += 1;
        Ok(())
    }

    fn stub(&mut self, code: u16, span: Span) -> u32 {
        if let Some(l) = self.stub_of.get(&code) {
            return *l;
        }
        let l = self.label();
        self.stubs.push((code, l, span));
        self.stub_of.insert(code, l);
        l
    }

    /// Takes `n` compile steps for work at `span`; past [`MAX_COMPILE_STEPS`], an error
    /// at the outermost routine call being expanded (or at `span` outside routines).
    fn charge(&mut self, n: usize, span: Span) -> R<()> {
        self.steps = self.steps.saturating_add(n);
        if self.steps <= MAX_COMPILE_STEPS {
            return Ok(());
        }
        let limit = format!(
            "more than {MAX_COMPILE_STEPS} compile steps (routines are expanded inline: \
             every statement of every expansion counts, calls of empty routines too)"
        );
        match self.expanding.first() {
            Some((name, call)) => {
                let chain: Vec<&str> = self.expanding.iter().map(|(n, _)| n.as_str()).collect();
                err(
                    *call,
                    format!(
                        "this call of routine `{name}` expands to {limit}; stopped in {}",
                        chain.join(" -> ")
                    ),
                )
            }
            None => err(span, format!("the program takes {limit}")),
        }
    }

    /// One compile step, plus one per [`BYTES_PER_STEP`] bytes if `v` is a
    /// compile-time byte string.
    fn charge_value(&mut self, v: &V, span: Span) -> R<()> {
        let bytes = match v {
            V::Bytes(b) => b.len() / BYTES_PER_STEP,
            _ => 0,
        };
        self.charge(1 + bytes, span)
    }

    fn code_of(&self, c: &Code) -> R<u16> {
        match c {
            Code::Num(v) => Ok(*v as u16),
            Code::Name(n, s) => match self.codes.get(n) {
                Some(v) => Ok(*v),
                None => err(
                    *s,
                    format!(
                        "unknown failure code `{n}` (declare it in `fail_codes {{ … }}`){}",
                        super::suggest::hint(n, self.codes.keys().map(String::as_str))
                    ),
                ),
            },
        }
    }

    // ---- constants ----

    fn const_eval(&mut self, e: &Expr) -> R<V> {
        let v = self.const_eval_node(e)?;
        self.charge_value(&v, e.span)?;
        Ok(v)
    }

    fn const_eval_node(&mut self, e: &Expr) -> R<V> {
        match &e.kind {
            ExprKind::Int(v) => Ok(V::Int(*v)),
            ExprKind::Name(n) => match self.consts.get(n) {
                Some(v) => Ok(v.clone()),
                None => err(
                    e.span,
                    format!(
                        "`{n}` is not a constant defined above{}",
                        super::suggest::hint(n, self.consts.keys().map(String::as_str))
                    ),
                ),
            },
            ExprKind::Bytes(pieces) => {
                let mut out = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Hex(b) => out.extend_from_slice(b),
                        Piece::Expr(x) => match self.const_eval(x)? {
                            V::Bytes(b) => out.extend_from_slice(&b),
                            _ => return err(x.span, "only byte strings go inside `[…]`"),
                        },
                    }
                    if out.len() > crate::script::MAX_BYTES_LEN {
                        break;
                    }
                }
                self.check_len(out, e.span)
            }
            ExprKind::Concat(a, b) => match (self.const_eval(a)?, self.const_eval(b)?) {
                (V::Bytes(mut x), V::Bytes(y)) => {
                    x.extend_from_slice(&y);
                    self.check_len(x, e.span)
                }
                _ => err(e.span, "`++` joins byte strings"),
            },
            ExprKind::Conv(a, c) => {
                let v = self.const_eval(a)?;
                self.fold_conv(v, *c, e.span)
            }
            _ => err(
                e.span,
                "a constant is a literal: a number, `[hex]` or a `++` of them",
            ),
        }
    }

    fn check_len(&self, b: Vec<u8>, span: Span) -> R<V> {
        if b.len() > crate::script::MAX_BYTES_LEN {
            return err(
                span,
                format!(
                    "a byte string of {} bytes exceeds {}",
                    b.len(),
                    crate::script::MAX_BYTES_LEN
                ),
            );
        }
        Ok(V::Bytes(b))
    }

    fn fold_conv(&self, v: V, c: Conv, span: Span) -> R<V> {
        match (c, v) {
            (Conv::Be(n), V::Int(x)) => Ok(V::Bytes(be_bytes(x, n, span)?)),
            (Conv::Bcd(n), V::Int(x)) => Ok(V::Bytes(bcd_bytes(x, n, span)?)),
            (Conv::Int, V::Bytes(b)) if b.len() <= 8 => {
                Ok(V::Int(b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x))))
            }
            (Conv::BcdInt, V::Bytes(b)) if b.len() <= 9 => {
                let mut x = 0u64;
                for &byte in &b {
                    let (h, l) = (byte >> 4, byte & 15);
                    if h > 9 || l > 9 {
                        return err(span, "not packed BCD");
                    }
                    x = x * 100 + u64::from(h * 10 + l);
                }
                Ok(V::Int(x))
            }
            (Conv::Be(_) | Conv::Bcd(_), _) => err(span, "this conversion takes an integer"),
            _ => err(
                span,
                "this conversion takes a byte string (at most 8 bytes)",
            ),
        }
    }

    // ---- names ----

    fn lookup(&mut self, env: &Env, name: &str, span: Span) -> R<V> {
        if let Some(v) = env.vars.get(name) {
            if !v.assigned {
                return err(
                    span,
                    format!("`{name}` may be used before it is assigned here"),
                );
            }
            return Ok(v.val.clone());
        }
        if let Some(v) = self.consts.get(name) {
            return Ok(v.clone());
        }
        if let Some(v) = self.loaded.get(name) {
            return Ok(v.clone());
        }
        if let Some(d) = self.inputs.iter().find(|d| d.name == name).cloned() {
            // Load an input once: where it is first used if every path passes there,
            // else at the start of the program.
            let (v, line) = if d.ty == Ty::Key {
                let k = self.key();
                (
                    V::Key(k),
                    Ins {
                        op: "ldkey",
                        args: alloc::vec![A::K(k), A::In(d.name.clone())],
                        span,
                    },
                )
            } else {
                let r = self.reg();
                self.named.insert(r);
                (
                    V::Reg(r, d.ty),
                    Ins {
                        op: "ldin",
                        args: alloc::vec![A::R(r), A::In(d.name.clone())],
                        span,
                    },
                )
            };
            if self.depth == 0 {
                self.emit(line.op, line.args, span)?;
            } else {
                self.prologue.push(Line::I(line));
            }
            // Inputs are the flow's, wherever they are first read.
            self.bind(&d.name, &v, d.span, Some(0));
            self.loaded.insert(d.name, v.clone());
            return Ok(v);
        }
        if self.outputs.iter().any(|d| d.name == name) {
            return err(
                span,
                format!(
                    "`{name}` is an output: write it with `out {name} = …`; outputs are not read"
                ),
            );
        }
        if self.routines.contains_key(name) {
            return err(
                span,
                format!("`{name}` is a routine: call it as a statement, `{name}(…)`"),
            );
        }
        if self.codes.contains_key(name) {
            return err(
                span,
                format!("`{name}` is a failure code: use it in `fail {name}`"),
            );
        }
        let known = env
            .vars
            .keys()
            .chain(self.consts.keys())
            .chain(self.inputs.iter().map(|d| &d.name))
            .chain(self.routines.keys())
            .chain(self.codes.keys())
            .map(String::as_str);
        err(
            span,
            format!("unknown name `{name}`{}", super::suggest::hint(name, known)),
        )
    }

    /// Puts a value in a register (`dst`, or a new one); returns the register.
    fn place(&mut self, v: &V, dst: Option<u32>, span: Span) -> R<u32> {
        match v {
            V::Reg(r, _) => match dst {
                Some(d) if d != *r => {
                    self.emit("mov", alloc::vec![A::R(d), A::R(*r)], span)?;
                    Ok(d)
                }
                _ => Ok(*r),
            },
            V::Bytes(b) => {
                let d = dst.unwrap_or_else(|| self.reg());
                self.emit("ldc", alloc::vec![A::R(d), A::Bytes(b.clone())], span)?;
                Ok(d)
            }
            V::Int(x) => {
                let d = dst.unwrap_or_else(|| self.reg());
                if *x <= u64::from(u32::MAX) {
                    self.emit("ldi", alloc::vec![A::R(d), A::Imm(*x)], span)?;
                } else {
                    self.emit("ldc", alloc::vec![A::R(d), A::IntC(*x)], span)?;
                }
                Ok(d)
            }
            V::Key(_) => err(span, "a key cannot be held in a register"),
        }
    }

    fn key_of(v: &V, e: &Expr, role: &str) -> R<u32> {
        match v {
            V::Key(k) => Ok(*k),
            other => err(
                e.span,
                format!(
                    "{role} must be a key (an input declared `key(ALG, USAGE)` or a derived key), but {} is {}",
                    describe(e),
                    other.ty().noun()
                ),
            ),
        }
    }

    /// Evaluates `e`, checks its type, and puts it in a register.
    fn operand(&mut self, env: &Env, e: &Expr, ty: Ty, role: &str) -> R<u32> {
        let v = self.eval(env, e, None)?;
        need(&v, ty, e, role)?;
        self.place(&v, None, e.span)
    }

    fn key_operand(&mut self, env: &Env, e: &Expr, role: &str) -> R<u32> {
        let v = self.eval(env, e, None)?;
        Self::key_of(&v, e, role)
    }

    // ---- expressions ----

    /// Evaluates `e`. A computed result goes to `want` (when given) or a new register;
    /// names and constants come back as they are (see [`Gen::place`]).
    fn eval(&mut self, env: &Env, e: &Expr, want: Option<u32>) -> R<V> {
        let v = self.eval_node(env, e, want)?;
        self.charge_value(&v, e.span)?;
        Ok(v)
    }

    fn eval_node(&mut self, env: &Env, e: &Expr, want: Option<u32>) -> R<V> {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(v) => Ok(V::Int(*v)),
            ExprKind::Name(n) => self.lookup(env, n, span),
            ExprKind::Bytes(_) | ExprKind::Concat(..) => {
                let mut parts: Vec<(V, &Expr)> = Vec::new();
                self.flatten(env, e, &mut parts)?;
                // Fold neighbouring constants.
                let mut merged: Vec<(V, Span)> = Vec::new();
                for (v, x) in parts {
                    if let (V::Bytes(b), Some((V::Bytes(prev), _))) = (&v, merged.last_mut()) {
                        prev.extend_from_slice(b);
                        continue;
                    }
                    merged.push((v, x.span));
                }
                match merged.len() {
                    0 => Ok(V::Bytes(Vec::new())),
                    1 => {
                        let (v, s) = merged.remove(0);
                        if let V::Bytes(b) = v {
                            return self.check_len(b, s);
                        }
                        Ok(v)
                    }
                    _ => {
                        for (v, s) in &merged {
                            if let V::Bytes(b) = v {
                                self.check_len(b.clone(), *s)?;
                            }
                        }
                        let d = want.unwrap_or_else(|| self.reg());
                        let mut it = merged.into_iter();
                        let mut acc = match it.next() {
                            Some((V::Reg(r, _), _)) => r,
                            Some((v, s)) => self.place(&v, Some(d), s)?,
                            None => d,
                        };
                        for (v, s) in it {
                            let r = self.place(&v, None, s)?;
                            self.emit("cat", alloc::vec![A::R(d), A::R(acc), A::R(r)], span)?;
                            acc = d;
                        }
                        Ok(V::Reg(d, Ty::Bytes))
                    }
                }
            }
            ExprKind::Bin(op, a, b) => {
                let va = self.eval(env, a, None)?;
                need(&va, Ty::Int, a, "an operand of arithmetic")?;
                let vb = self.eval(env, b, None)?;
                need(&vb, Ty::Int, b, "an operand of arithmetic")?;
                if let (V::Int(x), V::Int(y)) = (&va, &vb) {
                    let r = match op {
                        BinOp::Add => x.checked_add(*y),
                        BinOp::Sub => x.checked_sub(*y),
                        BinOp::Mul => x.checked_mul(*y),
                        BinOp::Div => x.checked_div(*y),
                        BinOp::Rem => x.checked_rem(*y),
                        BinOp::And => Some(x & y),
                        BinOp::Shl => (*y < 64).then(|| x << y).filter(|v| v >> y == *x),
                        BinOp::Shr => (*y < 64).then(|| x >> y),
                    };
                    return match r {
                        Some(v) => Ok(V::Int(v)),
                        None => err(
                            span,
                            "this constant arithmetic overflows or divides by zero",
                        ),
                    };
                }
                let ra = self.place(&va, None, a.span)?;
                let d = want.unwrap_or_else(|| self.reg());
                let imm = match &vb {
                    V::Int(y) => Some(*y),
                    _ => None,
                };
                let (mn, small) = match op {
                    BinOp::Add => ("addi", u64::from(u32::MAX)),
                    BinOp::Sub => ("subi", u64::from(u32::MAX)),
                    BinOp::And => ("andi", u64::from(u32::MAX)),
                    BinOp::Shl => ("shli", 63),
                    BinOp::Shr => ("shri", 63),
                    _ => ("", 0),
                };
                if let Some(y) = imm.filter(|y| !mn.is_empty() && *y <= small) {
                    self.emit(mn, alloc::vec![A::R(d), A::R(ra), A::Imm(y)], span)?;
                    return Ok(V::Reg(d, Ty::Int));
                }
                let rr = match op {
                    BinOp::And | BinOp::Shl | BinOp::Shr => {
                        return err(
                            b.span,
                            "`&`, `<<` and `>>` take a constant on the right (`&` up to 2^32-1, shifts up to 63)",
                        );
                    }
                    BinOp::Add => "add",
                    BinOp::Sub => "sub",
                    BinOp::Mul => "mul",
                    BinOp::Div => "div",
                    BinOp::Rem => "rem",
                };
                let rb = self.place(&vb, None, b.span)?;
                self.emit(rr, alloc::vec![A::R(d), A::R(ra), A::R(rb)], span)?;
                Ok(V::Reg(d, Ty::Int))
            }
            ExprKind::Slice(a, from, to) => {
                let v = self.eval(env, a, None)?;
                need(&v, Ty::Bytes, a, "a sliced value")?;
                let vf = self.eval(env, from, None)?;
                need(&vf, Ty::Int, from, "a slice bound")?;
                let vt = self.eval(env, to, None)?;
                need(&vt, Ty::Int, to, "a slice bound")?;
                if let (V::Int(f), V::Int(t)) = (&vf, &vt) {
                    let (f, t) = (*f, *t);
                    if t < f || t > crate::script::MAX_BYTES_LEN as u64 {
                        return err(span, "a slice `[a..b]` needs a <= b <= 4096");
                    }
                    if let V::Bytes(b) = &v {
                        return match b.get(f as usize..t as usize) {
                            Some(s) => Ok(V::Bytes(s.to_vec())),
                            None => err(
                                span,
                                format!("slice [{f}..{t}] of a {}-byte constant", b.len()),
                            ),
                        };
                    }
                    let r = self.place(&v, None, a.span)?;
                    let d = want.unwrap_or_else(|| self.reg());
                    self.emit(
                        "slice",
                        alloc::vec![A::R(d), A::R(r), A::Imm(f), A::Imm(t - f)],
                        span,
                    )?;
                    return Ok(V::Reg(d, Ty::Bytes));
                }
                // Bounds known only at run time: `slicer` (out of range is a VM fault).
                let r = self.place(&v, None, a.span)?;
                let off = self.place(&vf, None, from.span)?;
                let len = self.reg();
                match &vf {
                    V::Int(f) if *f <= u64::from(u32::MAX) => {
                        let rt = self.place(&vt, None, to.span)?;
                        self.emit("subi", alloc::vec![A::R(len), A::R(rt), A::Imm(*f)], span)?;
                    }
                    _ => {
                        let rt = self.place(&vt, None, to.span)?;
                        self.emit("sub", alloc::vec![A::R(len), A::R(rt), A::R(off)], span)?;
                    }
                }
                let d = want.unwrap_or_else(|| self.reg());
                self.emit(
                    "slicer",
                    alloc::vec![A::R(d), A::R(r), A::R(off), A::R(len)],
                    span,
                )?;
                Ok(V::Reg(d, Ty::Bytes))
            }
            ExprKind::Conv(a, c) => {
                let v = self.eval(env, a, None)?;
                let (from, to, op, width) = match c {
                    Conv::Be(n) => (Ty::Int, Ty::Bytes, "tobe", Some(*n)),
                    Conv::Bcd(n) => (Ty::Int, Ty::Bytes, "tobcd", Some(*n)),
                    Conv::Int => (Ty::Bytes, Ty::Int, "frombe", None),
                    Conv::BcdInt => (Ty::Bytes, Ty::Int, "frombcd", None),
                };
                need(&v, from, a, "the value converted")?;
                if matches!(v, V::Int(_) | V::Bytes(_)) {
                    return self.fold_conv(v, *c, span);
                }
                let r = self.place(&v, None, a.span)?;
                let d = want.unwrap_or_else(|| self.reg());
                let mut args = alloc::vec![A::R(d), A::R(r)];
                if let Some(n) = width {
                    args.push(A::Imm(n.into()));
                }
                self.emit(op, args, span)?;
                Ok(V::Reg(d, to))
            }
            ExprKind::Call(f, args) => self.call(env, f, args, want, span),
            ExprKind::Cmp(op, a, b) => self.compare(env, *op, a, b, want, span),
        }
    }

    /// Whether `e`'s value comes from a MAC: a `mac(…)`, a variable or parameter
    /// holding one, or anything made from them (a slice, a concatenation, a
    /// conversion). A comparison of such a value runs in constant time (`cteq`).
    fn mac_derived(&self, env: &Env, e: &Expr) -> bool {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Cmp(..) => false,
            ExprKind::Name(n) => {
                matches!(env.vars.get(n), Some(Var { val: V::Reg(r, _), .. }) if self.macs.contains(r))
            }
            ExprKind::Call(f, _) if f == "mac" => true,
            ExprKind::Call(_, args) => args.iter().any(|a| self.mac_derived(env, a)),
            ExprKind::Bytes(p) => p
                .iter()
                .any(|p| matches!(p, Piece::Expr(x) if self.mac_derived(env, x))),
            ExprKind::Concat(a, b) | ExprKind::Bin(_, a, b) => {
                self.mac_derived(env, a) || self.mac_derived(env, b)
            }
            ExprKind::Slice(a, _, _) | ExprKind::Conv(a, _) => self.mac_derived(env, a),
        }
    }

    /// Notes that `v` (the value of a variable or parameter) comes from a MAC.
    fn mark_mac(&mut self, v: &V) {
        if let V::Reg(r, _) = v {
            self.macs.insert(*r);
        }
    }

    /// `a == b` / `a != b` as a value: 1 or 0, computed in constant time (`cteq`; an
    /// integer is compared as its 8 big-endian bytes). Integers compare with integers,
    /// byte strings with byte strings; keys never.
    fn compare(
        &mut self,
        env: &Env,
        op: Cmp,
        a: &Expr,
        b: &Expr,
        want: Option<u32>,
        span: Span,
    ) -> R<V> {
        if !matches!(op, Cmp::Eq | Cmp::Ne) {
            return err(span, "only `==` and `!=` give a value (1 or 0)");
        }
        let va = self.eval(env, a, None)?;
        if va.ty() == Ty::Key {
            need(&va, Ty::Bytes, a, "a compared value")?;
        }
        let vb = self.eval(env, b, None)?;
        need(&vb, va.ty(), b, "the right side of the comparison")?;
        let equal = match (&va, &vb) {
            (V::Int(x), V::Int(y)) => Some(x == y),
            (V::Bytes(x), V::Bytes(y)) => Some(x == y),
            _ => None,
        };
        if let Some(e) = equal {
            return Ok(V::Int(u64::from(e == (op == Cmp::Eq))));
        }
        let ra = self.compared_bytes(&va, a.span)?;
        let rb = self.compared_bytes(&vb, b.span)?;
        let d = want.unwrap_or_else(|| self.reg());
        if op == Cmp::Eq {
            self.emit("cteq", alloc::vec![A::R(d), A::R(ra), A::R(rb)], span)?;
        } else {
            let eq = self.reg();
            self.emit("cteq", alloc::vec![A::R(eq), A::R(ra), A::R(rb)], span)?;
            let one = self.reg();
            self.emit("ldi", alloc::vec![A::R(one), A::Imm(1)], span)?;
            self.emit("sub", alloc::vec![A::R(d), A::R(one), A::R(eq)], span)?;
        }
        Ok(V::Reg(d, Ty::Int))
    }

    /// A register holding `v` as bytes for `cteq`: an integer as 8 big-endian bytes.
    fn compared_bytes(&mut self, v: &V, span: Span) -> R<u32> {
        match v {
            V::Int(x) => self.place(&V::Bytes(x.to_be_bytes().to_vec()), None, span),
            V::Reg(r, Ty::Int) => {
                let t = self.reg();
                self.emit("tobe", alloc::vec![A::R(t), A::R(*r), A::Imm(8)], span)?;
                Ok(t)
            }
            other => self.place(other, None, span),
        }
    }

    fn flatten<'e>(&mut self, env: &Env, e: &'e Expr, out: &mut Vec<(V, &'e Expr)>) -> R<()> {
        // Each part costs at least an instruction (`cat`) unless it is folded.
        if out.len() > MAX_INSTRUCTIONS {
            return err(
                e.span,
                format!("a byte string of more than {MAX_INSTRUCTIONS} parts"),
            );
        }
        match &e.kind {
            ExprKind::Concat(a, b) => {
                self.charge(1, e.span)?;
                self.flatten(env, a, out)?;
                self.flatten(env, b, out)
            }
            ExprKind::Bytes(pieces) => {
                self.charge(1, e.span)?;
                for p in pieces {
                    match p {
                        Piece::Hex(b) => {
                            let v = V::Bytes(b.clone());
                            self.charge_value(&v, e.span)?;
                            out.push((v, e));
                        }
                        Piece::Expr(x) => self.flatten(env, x, out)?,
                    }
                }
                Ok(())
            }
            _ => {
                let v = self.eval(env, e, None)?;
                need(&v, Ty::Bytes, e, "a part of a byte string")?;
                out.push((v, e));
                Ok(())
            }
        }
    }

    fn arity(f: &str, args: &[Expr], n: usize, span: Span) -> R<()> {
        if args.len() != n {
            return err(
                span,
                format!("`{f}` takes {n} argument(s), found {}", args.len()),
            );
        }
        Ok(())
    }

    fn const_arg(&self, e: &Expr, max: u64, what: &str) -> R<u64> {
        match &e.kind {
            ExprKind::Int(v) if *v <= max => Ok(*v),
            _ => err(e.span, format!("{what} is a number 0..={max}")),
        }
    }

    fn call(&mut self, env: &Env, f: &str, args: &[Expr], want: Option<u32>, span: Span) -> R<V> {
        let n = match f {
            "mac" | "session_key" | "div_key" | "encrypt" | "decrypt" | "ct_eq" | "pad" | "xor"
            | "fill" => 2,
            "tac_key" | "sm3" | "invert" | "len" => 1,
            "uid" | "sw" => 0,
            _ => {
                return err(
                    span,
                    format!(
                        "unknown function `{f}`{}",
                        super::suggest::hint(f, super::parser::BUILTINS.iter().copied())
                    ),
                );
            }
        };
        Self::arity(f, args, n, span)?;
        let d = || want;
        match f {
            "mac" | "encrypt" | "decrypt" => {
                let k = self.key_operand(env, &args[0], &format!("the first argument of `{f}`"))?;
                let x = self.operand(env, &args[1], Ty::Bytes, &format!("the data of `{f}`"))?;
                let dst = d().unwrap_or_else(|| self.reg());
                let op = match f {
                    "mac" => "mac",
                    "encrypt" => "enc",
                    _ => "dec",
                };
                self.emit(op, alloc::vec![A::R(dst), A::K(k), A::R(x)], span)?;
                if f == "mac" {
                    self.macs.insert(dst);
                }
                Ok(V::Reg(dst, Ty::Bytes))
            }
            "session_key" | "div_key" => {
                let k = self.key_operand(env, &args[0], &format!("the first argument of `{f}`"))?;
                let x = self.operand(env, &args[1], Ty::Bytes, &format!("the data of `{f}`"))?;
                let dst = self.key();
                let op = if f == "session_key" { "pkey" } else { "divkey" };
                self.emit(op, alloc::vec![A::K(dst), A::K(k), A::R(x)], span)?;
                Ok(V::Key(dst))
            }
            "tac_key" => {
                let k = self.key_operand(env, &args[0], "the argument of `tac_key`")?;
                let dst = self.key();
                self.emit("tackey", alloc::vec![A::K(dst), A::K(k)], span)?;
                Ok(V::Key(dst))
            }
            "sm3" | "invert" | "len" => {
                let x =
                    self.operand(env, &args[0], Ty::Bytes, &format!("the argument of `{f}`"))?;
                let dst = d().unwrap_or_else(|| self.reg());
                let (op, ty) = match f {
                    "sm3" => ("sm3", Ty::Bytes),
                    "invert" => ("not", Ty::Bytes),
                    _ => ("len", Ty::Int),
                };
                self.emit(op, alloc::vec![A::R(dst), A::R(x)], span)?;
                Ok(V::Reg(dst, ty))
            }
            "ct_eq" | "xor" => {
                let a = self.operand(env, &args[0], Ty::Bytes, &format!("an argument of `{f}`"))?;
                let b = self.operand(env, &args[1], Ty::Bytes, &format!("an argument of `{f}`"))?;
                let dst = d().unwrap_or_else(|| self.reg());
                let (op, ty) = if f == "ct_eq" {
                    ("cteq", Ty::Int)
                } else {
                    ("xor", Ty::Bytes)
                };
                self.emit(op, alloc::vec![A::R(dst), A::R(a), A::R(b)], span)?;
                Ok(V::Reg(dst, ty))
            }
            "pad" => {
                let x = self.operand(env, &args[0], Ty::Bytes, "the data of `pad`")?;
                let n = self.const_arg(&args[1], 255, "the block size of `pad`")?;
                let dst = d().unwrap_or_else(|| self.reg());
                self.emit("pad", alloc::vec![A::R(dst), A::R(x), A::Imm(n)], span)?;
                Ok(V::Reg(dst, Ty::Bytes))
            }
            "fill" => {
                let b = self.const_arg(&args[0], 255, "the byte of `fill`")?;
                let n = self.const_arg(
                    &args[1],
                    crate::script::MAX_BYTES_LEN as u64,
                    "the count of `fill`",
                )?;
                Ok(V::Bytes(alloc::vec![b as u8; n as usize]))
            }
            _ => {
                let dst = d().unwrap_or_else(|| self.reg());
                let (op, ty) = if f == "sw" {
                    ("sw", Ty::Int)
                } else {
                    ("uid", Ty::Bytes)
                };
                self.emit(op, alloc::vec![A::R(dst)], span)?;
                Ok(V::Reg(dst, ty))
            }
        }
    }

    // ---- statements ----

    fn check_new_name(&self, env: &Env, name: &str, span: Span) -> R<()> {
        if KEYWORDS.contains(&name) {
            return err(span, format!("`{name}` is reserved"));
        }
        if env.vars.contains_key(name) {
            return Ok(());
        }
        let what = if self.consts.contains_key(name) {
            "a constant"
        } else if self.inputs.iter().any(|d| d.name == name) {
            "an input"
        } else if self.codes.contains_key(name) {
            "a failure code"
        } else if self.routines.contains_key(name) {
            "a routine"
        } else {
            return Ok(());
        };
        err(
            span,
            format!("`{name}` is {what}; a variable needs another name"),
        )
    }

    /// Assigns an evaluated-later value to `name`: returns the register to compute
    /// into (an existing variable's), if any.
    fn assign(&mut self, env: &mut Env, name: &str, span: Span, e: &Expr) -> R<()> {
        self.check_new_name(env, name, span)?;
        if self.mac_derived(env, e) {
            // Whatever register the variable ends up in holds a MAC.
            self.assign_value(env, name, span, e)?;
            if let Some(v) = env.vars.get(name).map(|v| v.val.clone()) {
                self.mark_mac(&v);
            }
            return Ok(());
        }
        self.assign_value(env, name, span, e)
    }

    fn assign_value(&mut self, env: &mut Env, name: &str, span: Span, e: &Expr) -> R<()> {
        if let Some(var) = env.vars.get(name).cloned() {
            if var.readonly {
                return err(
                    span,
                    format!("`{name}` cannot be assigned (a parameter or a loop variable)"),
                );
            }
            let v = match var.val {
                V::Key(_) => {
                    return err(
                        span,
                        format!("`{name}` is a key variable: a key is assigned once"),
                    );
                }
                V::Reg(r, ty) => {
                    let v = if mentions(e, name) {
                        self.eval(env, e, None)?
                    } else {
                        self.eval(env, e, Some(r))?
                    };
                    need(&v, ty, e, &format!("the value assigned to `{name}`"))?;
                    self.place(&v, Some(r), e.span)?;
                    V::Reg(r, ty)
                }
                other => other,
            };
            if let Some(x) = env.vars.get_mut(name) {
                x.val = v;
                x.assigned = true;
            }
            return Ok(());
        }
        let v = self.eval(env, e, None)?;
        let val = match v {
            V::Key(k) => V::Key(k),
            V::Reg(r, ty) if !self.named.contains(&r) => V::Reg(r, ty),
            other => {
                let ty = other.ty();
                let r = self.reg();
                self.place(&other, Some(r), e.span)?;
                V::Reg(r, ty)
            }
        };
        if let V::Reg(r, _) = val {
            self.named.insert(r);
        }
        self.bind(name, &val, span, None);
        env.vars.insert(
            String::from(name),
            Var {
                val,
                assigned: true,
                readonly: false,
            },
        );
        Ok(())
    }

    /// A register for the byte-string variable `name` (new or existing).
    fn bytes_var(&mut self, env: &mut Env, name: &str, span: Span) -> R<u32> {
        self.check_new_name(env, name, span)?;
        match env.vars.get_mut(name) {
            Some(v) if v.readonly => err(span, format!("`{name}` cannot be assigned")),
            Some(v) => match v.val {
                V::Reg(r, Ty::Bytes) => {
                    v.assigned = true;
                    Ok(r)
                }
                ref other => err(
                    span,
                    format!("`{name}` is {}, not a byte string", other.ty().noun()),
                ),
            },
            None => {
                let r = self.reg();
                self.named.insert(r);
                self.bind(name, &V::Reg(r, Ty::Bytes), span, None);
                env.vars.insert(
                    String::from(name),
                    Var {
                        val: V::Reg(r, Ty::Bytes),
                        assigned: true,
                        readonly: false,
                    },
                );
                Ok(r)
            }
        }
    }

    fn fields(&mut self, env: &mut Env, src: u32, fields: &[Field], span: Span) -> R<()> {
        let mut off = 0u64;
        for f in fields {
            if let Some(n) = &f.name {
                let d = self.bytes_var(env, n, f.span)?;
                self.emit(
                    "slice",
                    alloc::vec![A::R(d), A::R(src), A::Imm(off), A::Imm(f.len)],
                    f.span,
                )?;
            }
            off += f.len;
            if off > crate::script::MAX_BYTES_LEN as u64 {
                return err(span, "the fields are longer than any response (4096 bytes)");
            }
        }
        Ok(())
    }

    fn handlers(&mut self, hs: &[Handler]) -> R<()> {
        for h in hs.iter().filter(|h| h.pattern.is_some()) {
            let code = self.code_of(&h.code)?;
            let l = self.stub(code, h.span);
            let p = h.pattern.clone().unwrap_or_default();
            self.emit("bsw", alloc::vec![A::Sw(p), A::L(l)], h.span)?;
        }
        for h in hs.iter().filter(|h| h.pattern.is_none()) {
            let code = self.code_of(&h.code)?;
            self.emit(
                "expect",
                alloc::vec![A::Sw(String::from("9000")), A::Imm(code.into())],
                h.span,
            )?;
        }
        Ok(())
    }

    fn block(&mut self, env: &mut Env, body: &[Stmt]) -> R<bool> {
        let mut ends = false;
        for s in body {
            ends = self.stmt(env, s)?;
        }
        Ok(ends)
    }

    /// Generates one statement; returns whether it ends the flow on every path.
    fn stmt(&mut self, env: &mut Env, s: &Stmt) -> R<bool> {
        self.charge(1, stmt_span(s))?;
        match s {
            Stmt::Assign(n, span, e) => self.assign(env, n, *span, e).map(|_| false),
            Stmt::Destructure(e, fields, span) => {
                let v = self.eval(env, e, None)?;
                need(&v, Ty::Bytes, e, "a destructured value")?;
                let r = self.place(&v, None, e.span)?;
                self.fields(env, r, fields, *span)?;
                if self.mac_derived(env, e) || self.macs.contains(&r) {
                    for n in fields.iter().filter_map(|f| f.name.as_ref()) {
                        if let Some(v) = env.vars.get(n).map(|v| v.val.clone()) {
                            self.mark_mac(&v);
                        }
                    }
                }
                Ok(false)
            }
            Stmt::Apdu {
                to,
                command,
                target,
                handlers,
                span,
            } => {
                let cmd = match command {
                    Command::Raw(e) => self.operand(env, e, Ty::Bytes, "a command APDU")?,
                    Command::Built { header, data, le } => {
                        let hdr = Expr {
                            kind: ExprKind::Bytes(header.clone()),
                            span: *span,
                        };
                        let hv = self.eval(env, &hdr, None)?;
                        let dv = match data {
                            Some(d) => {
                                let v = self.eval(env, d, None)?;
                                need(&v, Ty::Bytes, d, "the command data")?;
                                v
                            }
                            None => V::Bytes(Vec::new()),
                        };
                        let le_v = le.map(|l| l.0).unwrap_or(0);
                        if let V::Bytes(h) = &hv
                            && h.len() != 4
                        {
                            return err(
                                *span,
                                format!(
                                    "an APDU header is 4 bytes (CLA INS P1 P2), found {}",
                                    h.len()
                                ),
                            );
                        }
                        match (&hv, &dv) {
                            (V::Bytes(h), V::Bytes(d)) if short_apdu(h, d, le_v).is_some() => {
                                let b = short_apdu(h, d, le_v).unwrap_or_default();
                                self.place(&V::Bytes(b), None, *span)?
                            }
                            _ => {
                                let hr = self.place(&hv, None, *span)?;
                                let dr = self.place(&dv, None, *span)?;
                                let c = self.reg();
                                self.emit(
                                    "mkapdu",
                                    alloc::vec![A::R(c), A::R(hr), A::R(dr), A::Imm(le_v)],
                                    *span,
                                )?;
                                c
                            }
                        }
                    }
                };
                let resp = match target {
                    Some(Target::Var(n, s)) => self.bytes_var(env, n, *s)?,
                    _ => self.reg(),
                };
                match to {
                    Slot::Card => self.emit("apdu", alloc::vec![A::R(resp), A::R(cmd)], *span)?,
                    Slot::Sam(n) => self.emit(
                        "samapdu",
                        alloc::vec![A::R(resp), A::R(cmd), A::Imm(u64::from(*n))],
                        *span,
                    )?,
                    Slot::Host => {
                        self.emit("hostapdu", alloc::vec![A::R(resp), A::R(cmd)], *span)?
                    }
                }
                self.handlers(handlers)?;
                if let Some(Target::Fields(f)) = target {
                    self.fields(env, resp, f, *span)?;
                }
                Ok(false)
            }
            Stmt::ReaderKey {
                key,
                slot,
                handlers,
                span,
            } => {
                let k = self.key_operand(env, key, "the key of `load_reader_key`")?;
                let n = match self.eval(env, slot, None)? {
                    V::Int(n) if n <= 255 => n,
                    _ => return err(slot.span, "the reader key number is a constant 0..=255"),
                };
                self.emit("ldrkey", alloc::vec![A::K(k), A::Imm(n)], *span)?;
                self.handlers(handlers)?;
                Ok(false)
            }
            Stmt::CheckMac {
                key,
                data,
                mac,
                code,
                span,
            } => {
                let k = self.key_operand(env, key, "the key of `check_mac`")?;
                let d = self.operand(env, data, Ty::Bytes, "the data of `check_mac`")?;
                let m = self.operand(env, mac, Ty::Bytes, "the MAC of `check_mac`")?;
                let c = self.code_of(code)?;
                self.emit(
                    "chkmac",
                    alloc::vec![A::K(k), A::R(d), A::R(m), A::Imm(c.into())],
                    *span,
                )?;
                Ok(false)
            }
            Stmt::Expect(p, code, span) => {
                let c = self.code_of(code)?;
                self.emit(
                    "expect",
                    alloc::vec![A::Sw(p.clone()), A::Imm(c.into())],
                    *span,
                )?;
                Ok(false)
            }
            Stmt::Out(list) => {
                for (name, span, e) in list {
                    let Some(d) = self.outputs.iter().find(|d| d.name == *name).cloned() else {
                        return err(
                            *span,
                            format!(
                                "`{name}` is not a declared output (declare it with `output {name}: TYPE`){}",
                                super::suggest::hint(
                                    name,
                                    self.outputs.iter().map(|d| d.name.as_str())
                                )
                            ),
                        );
                    };
                    let r = self.operand(env, e, d.ty, &format!("output `{name}`"))?;
                    self.emit("out", alloc::vec![A::Out(name.clone()), A::R(r)], *span)?;
                }
                Ok(false)
            }
            Stmt::If {
                cond,
                then,
                els,
                span,
            } => self.if_stmt(env, cond, then, els.as_deref(), *span),
            Stmt::Loop {
                var,
                from,
                to,
                body,
                span,
            } => {
                if from == to {
                    return Ok(false);
                }
                self.loops += 1;
                if self.loops > MAX_LOOPS {
                    return err(
                        *span,
                        format!("the program expands to more than {MAX_LOOPS} loops"),
                    );
                }
                self.charge(env.vars.len(), *span)?;
                let before = env.snapshot();
                let top = self.label();
                self.depth += 1;
                let counter = self.reg();
                let end = self.reg();
                if let Some((n, s)) = var {
                    self.check_new_name(env, n, *s)?;
                    if env.vars.contains_key(n) {
                        return err(*s, format!("`{n}` is already a variable"));
                    }
                    self.emit("ldi", alloc::vec![A::R(counter), A::Imm(*from)], *span)?;
                    self.emit("ldi", alloc::vec![A::R(end), A::Imm(*to)], *span)?;
                    self.bind(n, &V::Reg(counter, Ty::Int), *s, None);
                    env.vars.insert(
                        n.clone(),
                        Var {
                            val: V::Reg(counter, Ty::Int),
                            assigned: true,
                            readonly: true,
                        },
                    );
                } else {
                    self.emit("ldi", alloc::vec![A::R(counter), A::Imm(to - from)], *span)?;
                }
                self.code.push(Line::Label(top));
                self.block(env, body)?;
                if var.is_some() {
                    self.emit(
                        "addi",
                        alloc::vec![A::R(counter), A::R(counter), A::Imm(1)],
                        *span,
                    )?;
                    self.emit(
                        "blt",
                        alloc::vec![A::R(counter), A::R(end), A::L(top)],
                        *span,
                    )?;
                } else {
                    self.emit(
                        "subi",
                        alloc::vec![A::R(counter), A::R(counter), A::Imm(1)],
                        *span,
                    )?;
                    self.emit("bnz", alloc::vec![A::R(counter), A::L(top)], *span)?;
                }
                if let Some((n, _)) = var {
                    env.vars.remove(n);
                }
                self.depth -= 1;
                env.restore(&before);
                Ok(false)
            }
            Stmt::Call(name, args, span) => self.expand(env, name, args, *span),
            Stmt::Fail(code, span) => {
                let c = self.code_of(code)?;
                self.emit("fail", alloc::vec![A::Imm(c.into())], *span)?;
                Ok(true)
            }
            Stmt::Done(span) => {
                self.emit("halt", Vec::new(), *span)?;
                Ok(true)
            }
            Stmt::CommitPoint(span) => {
                self.emit("commit_point", Vec::new(), *span)?;
                Ok(false)
            }
        }
    }

    fn if_stmt(
        &mut self,
        env: &mut Env,
        cond: &Cond,
        then: &[Stmt],
        els: Option<&[Stmt]>,
        span: Span,
    ) -> R<bool> {
        // `if c fail X`: one branch to the shared `fail X`.
        if let ([Stmt::Fail(code, fspan)], None) = (then, els) {
            let c = self.code_of(code)?;
            let l = self.stub(c, *fspan);
            self.branch(env, cond, false, l)?;
            return Ok(false);
        }
        self.charge(env.vars.len(), span)?;
        let before = env.snapshot();
        let else_l = self.label();
        self.branch(env, cond, true, else_l)?;
        self.depth += 1;
        let then_ends = self.block(env, then)?;
        let after_then = env.snapshot();
        env.restore(&before);
        let ends = match els {
            None => {
                self.code.push(Line::Label(else_l));
                env.restore(&before);
                false
            }
            Some(e) => {
                let end_l = self.label();
                if !then_ends {
                    self.emit("jmp", alloc::vec![A::L(end_l)], stmt_span_or(e))?;
                }
                self.code.push(Line::Label(else_l));
                let else_ends = self.block(env, e)?;
                let after_else = env.snapshot();
                self.code.push(Line::Label(end_l));
                let merged: BTreeSet<String> = match (then_ends, else_ends) {
                    (true, _) => after_else,
                    (false, true) => after_then,
                    (false, false) => after_then.intersection(&after_else).cloned().collect(),
                };
                env.restore(&merged);
                then_ends && else_ends
            }
        };
        self.depth -= 1;
        Ok(ends)
    }

    /// Emits a branch to `target` taken when `cond` holds (`negate`: when it does not).
    fn branch(&mut self, env: &Env, cond: &Cond, negate: bool, target: u32) -> R<()> {
        // `not` is bounded by the parser's nesting; the rest is a compile step.
        let at = match cond {
            Cond::Not(_) => None,
            Cond::Sw(_, _, s) => Some(*s),
            Cond::Truthy(e) | Cond::Cmp(_, e, _) => Some(e.span),
        };
        if let Some(at) = at {
            self.charge(1, at)?;
        }
        match cond {
            Cond::Not(c) => self.branch(env, c, !negate, target),
            Cond::Sw(p, neg, span) => {
                let op = if *neg != negate { "bnsw" } else { "bsw" };
                self.emit(op, alloc::vec![A::Sw(p.clone()), A::L(target)], *span)
            }
            Cond::Truthy(e) => {
                let r = self.operand(env, e, Ty::Int, "a condition")?;
                let op = if negate { "bz" } else { "bnz" };
                self.emit(op, alloc::vec![A::R(r), A::L(target)], e.span)
            }
            Cond::Cmp(op @ (Cmp::Eq | Cmp::Ne), a, b)
                if self.mac_derived(env, a) || self.mac_derived(env, b) =>
            {
                // A MAC is never compared with `beq`/`bne` (variable time).
                let eq = self.compare(env, Cmp::Eq, a, b, None, a.span)?;
                let r = self.place(&eq, None, a.span)?;
                let op = if (*op == Cmp::Eq) != negate {
                    "bnz"
                } else {
                    "bz"
                };
                self.emit(op, alloc::vec![A::R(r), A::L(target)], a.span)
            }
            Cond::Cmp(op, a, b) => {
                let va = self.eval(env, a, None)?;
                let vb = self.eval(env, b, None)?;
                let ordered = !matches!(op, Cmp::Eq | Cmp::Ne);
                if ordered || va.ty() == Ty::Key {
                    need(&va, Ty::Int, a, "a compared value")?;
                }
                need(&vb, va.ty(), b, "the right side of the comparison")?;
                let ra = self.place(&va, None, a.span)?;
                let rb = self.place(&vb, None, b.span)?;
                let op = if negate {
                    match op {
                        Cmp::Eq => Cmp::Ne,
                        Cmp::Ne => Cmp::Eq,
                        Cmp::Lt => Cmp::Ge,
                        Cmp::Le => Cmp::Gt,
                        Cmp::Gt => Cmp::Le,
                        Cmp::Ge => Cmp::Lt,
                    }
                } else {
                    *op
                };
                let mn = match op {
                    Cmp::Eq => "beq",
                    Cmp::Ne => "bne",
                    Cmp::Lt => "blt",
                    Cmp::Le => "ble",
                    Cmp::Gt => "bgt",
                    Cmp::Ge => "bge",
                };
                self.emit(mn, alloc::vec![A::R(ra), A::R(rb), A::L(target)], a.span)
            }
        }
    }

    fn expand(&mut self, env: &mut Env, name: &str, args: &[Expr], span: Span) -> R<bool> {
        let Some(r) = self.routines.get(name).cloned() else {
            return err(
                span,
                format!(
                    "unknown routine `{name}`{}",
                    super::suggest::hint(name, self.routines.keys().map(String::as_str))
                ),
            );
        };
        if self.expanding.iter().any(|(n, _)| n == name) {
            return err(
                span,
                format!("routine `{name}` calls itself (routines are expanded inline)"),
            );
        }
        if self.expanding.len() >= MAX_ROUTINE_DEPTH {
            return err(
                span,
                format!("routine calls nested deeper than {MAX_ROUTINE_DEPTH}"),
            );
        }
        if args.len() != r.params.len() {
            return err(
                span,
                format!(
                    "`{name}` takes {} argument(s), found {}",
                    r.params.len(),
                    args.len()
                ),
            );
        }
        let mut inner = Env::default();
        // The expansion's frame: its parameters are bound in it, its body runs in it.
        self.frames.push((
            String::from(name),
            span,
            self.frame_stack.last().copied().unwrap_or(0),
        ));
        let frame = self.frames.len() as u32;
        for ((p, pspan), a) in r.params.iter().zip(args) {
            self.check_new_name(&inner, p, *pspan)?;
            let v = self.eval(env, a, None)?;
            if let V::Reg(r, _) = v {
                // A parameter may alias a temporary: keep it from becoming a variable.
                self.named.insert(r);
            }
            self.bind(p, &v, *pspan, Some(frame));
            if self.mac_derived(env, a) {
                self.mark_mac(&v);
            }
            inner.vars.insert(
                p.clone(),
                Var {
                    val: v,
                    assigned: true,
                    readonly: true,
                },
            );
        }
        self.expanding.push((String::from(name), span));
        self.frame_stack.push(frame);
        self.code.push(Line::Scope(frame, true));
        let ends = self.block(&mut inner, &r.body)?;
        self.code.push(Line::Scope(frame, false));
        self.frame_stack.pop();
        self.expanding.pop();
        Ok(ends)
    }

    fn finish(self) -> R<Generated> {
        let mut lines = self.prologue;
        lines.extend(self.code);
        // Labels nothing jumps to would only draw the unused-label lint.
        let used: BTreeSet<u32> = lines
            .iter()
            .filter_map(|l| match l {
                Line::I(i) => i.args.iter().find_map(|a| match a {
                    A::L(n) => Some(*n),
                    _ => None,
                }),
                Line::Label(_) | Line::Scope(..) => None,
            })
            .collect();
        lines.retain(|l| !matches!(l, Line::Label(n) if !used.contains(n)));
        let alloc = regalloc::allocate(&lines, self.nreg, self.nkey)?;
        let (regs, keys) = (&alloc.regs, &alloc.keys);
        // The generated line of each position's instruction (0 for labels and scopes),
        // and the bounds of each expansion's body, filled in as the lines are printed.
        let mut line_at: Vec<u32> = Vec::with_capacity(lines.len());
        let mut scope_lines: Vec<(Option<u32>, u32)> = alloc::vec![(None, 0); self.frames.len()];
        let mut casm = String::new();
        let mut map: Vec<Option<Span>> = Vec::new();
        // Returns the generated line number just printed (1-based).
        let mut push = |text: String, span: Option<Span>| {
            casm.push_str(&text);
            casm.push('\n');
            map.push(span);
            map.len() as u32
        };
        let mut printed = push(String::from("; generated from a .cvs source"), None);
        for key in ["city", "script", "version"] {
            if let Some((v, s)) = self.header.get(key) {
                printed = push(format!(".{key} {v}"), Some(*s));
            }
        }
        for d in &self.inputs {
            printed = push(format!(".input {} {}", d.name, d.ty_text), Some(d.span));
        }
        for d in &self.outputs {
            printed = push(format!(".output {} {}", d.name, d.ty_text), Some(d.span));
        }
        for l in &lines {
            match l {
                Line::Label(n) => {
                    printed = push(format!("L{n}:"), None);
                    line_at.push(0);
                }
                Line::Scope(n, open) => {
                    if let Some(b) = scope_lines.get_mut((*n as usize).wrapping_sub(1)) {
                        // Opening: the next line printed; closing: the last one printed.
                        if *open {
                            b.0 = Some(printed + 1);
                        } else {
                            b.1 = printed;
                        }
                    }
                    line_at.push(0);
                }
                Line::I(i) => {
                    let mut t = format!("    {}", i.op);
                    for (k, a) in i.args.iter().enumerate() {
                        t.push_str(if k == 0 { " " } else { ", " });
                        match a {
                            A::R(v) => t.push_str(&format!("r{}", regs[*v as usize])),
                            A::K(v) => t.push_str(&format!("k{}", keys[*v as usize])),
                            A::Imm(x) | A::IntC(x) => t.push_str(&format!("{x}")),
                            A::Bytes(b) => {
                                t.push('[');
                                for (j, x) in b.iter().enumerate() {
                                    if j > 0 {
                                        t.push(' ');
                                    }
                                    t.push_str(&format!("{x:02X}"));
                                }
                                t.push(']');
                            }
                            A::L(n) => t.push_str(&format!("L{n}")),
                            A::Sw(s) | A::In(s) | A::Out(s) => t.push_str(s),
                        }
                    }
                    printed = push(t, Some(i.span));
                    line_at.push(printed);
                }
            }
        }
        let scopes: Vec<GenScope> = self
            .frames
            .into_iter()
            .zip(&scope_lines)
            .map(|((routine, call, parent), &(first, last))| GenScope {
                routine,
                call,
                lines: first.filter(|&f| f <= last).map(|f| (f, last)),
                parent,
            })
            .collect();
        let vars = self
            .bindings
            .into_iter()
            .filter_map(|b| {
                let (slot, live) = match b.to {
                    Bound::Reg(v) => (regs[v as usize], alloc.reg_live[v as usize]),
                    Bound::Key(v) => (keys[v as usize], alloc.key_live[v as usize]),
                };
                let (s, e) = live?;
                // Lines of the live interval's instructions after the one that writes
                // it (a parameter's value is in place when its expansion starts); a
                // parameter lives only inside its expansion.
                let from = if b.param { s } else { s + 1 };
                let first = line_at.get(from..=e)?.iter().copied().find(|&l| l > 0)?;
                let last = line_at[s..=e].iter().rev().copied().find(|&l| l > 0)?;
                let (first, last) = match b.scope {
                    0 => (first, last),
                    n => {
                        let (f, l) = scopes.get(n as usize - 1)?.lines?;
                        (first.max(f), last.min(l))
                    }
                };
                (first <= last).then_some(GenVar {
                    name: b.name,
                    ty: b.ty,
                    slot,
                    lines: (first, last),
                    span: b.span,
                    scope: b.scope,
                })
            })
            .collect();
        Ok(Generated {
            casm,
            line_map: map,
            vars,
            scopes,
        })
    }
}

fn stmt_span_or(s: &[Stmt]) -> Span {
    s.first().map(stmt_span).unwrap_or_default()
}
