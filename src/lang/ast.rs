//! The syntax tree of a `.cvs` program (includes already spliced in).

use super::Span;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

/// A top-level item.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// `city N`, `script N`, `version N`.
    Header(&'static str, u64, Span),
    /// `input name: TYPE, …` / `output name: TYPE, …`.
    Decl(DeclKind, Decl),
    /// `const NAME = expr`.
    Const(String, Expr, Span),
    /// `fail_codes { name = N … }`.
    FailCode(String, u64, Span),
    /// `routine name(params) { … }`.
    Routine(Routine),
    /// A statement of the main flow.
    Stmt(Stmt),
}

/// Input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclKind {
    Input,
    Output,
}

/// A declared input or output.
#[derive(Debug, Clone)]
pub(crate) struct Decl {
    pub name: String,
    /// The type as `.casm` writes it (`u32`, `bytes[6]`, `key(des3, load)`).
    pub ty_text: String,
    pub ty: Ty,
    pub span: Span,
}

/// A routine, expanded inline where it is called.
#[derive(Debug, Clone)]
pub(crate) struct Routine {
    pub name: String,
    pub params: Vec<(String, Span)>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// The three value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Int,
    Bytes,
    Key,
}

impl Ty {
    /// The type's name in the debug info and an editor's hover.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Int => "int",
            Ty::Bytes => "bytes",
            Ty::Key => "key",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Ty::Int => "an integer",
            Ty::Bytes => "a byte string",
            Ty::Key => "a key",
        }
    }
}

/// A failure code: a `fail_codes` name or a number.
#[derive(Debug, Clone)]
pub(crate) enum Code {
    Name(String, Span),
    Num(u64),
}

/// `on 9403 fail code` (or `else fail code`: pattern `None`, i.e. anything but 9000).
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    pub pattern: Option<String>,
    pub code: Code,
    pub span: Span,
}

/// Where an APDU's response goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Var(String, Span),
    Fields(Vec<Field>),
}

/// One field of a destructuring: `name:LEN` (`_` skips).
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub name: Option<String>,
    pub len: u64,
    pub span: Span,
}

/// The command of an `apdu` statement.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// A whole command APDU as a byte string.
    Raw(Expr),
    /// Header pieces, data, Le.
    Built {
        header: Vec<Piece>,
        data: Option<Expr>,
        le: Option<(u64, Span)>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A condition of `if`.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Cmp(Cmp, Expr, Expr),
    /// `sw is PATTERN` (`negated`: `sw is not`).
    Sw(String, bool, Span),
    /// An integer: true when not zero.
    Truthy(Expr),
    Not(Box<Cond>),
}

/// A statement.
#[derive(Debug, Clone)]
pub(crate) enum Stmt {
    Assign(String, Span, Expr),
    Destructure(Expr, Vec<Field>, Span),
    Apdu {
        /// Where the command goes: the card, `samN apdu …` SAM slot N, `host apdu …` the
        /// card company (host-secured mode).
        to: crate::transport::Slot,
        command: Command,
        target: Option<Target>,
        handlers: Vec<Handler>,
        span: Span,
    },
    ReaderKey {
        key: Expr,
        slot: Expr,
        handlers: Vec<Handler>,
        span: Span,
    },
    CheckMac {
        key: Expr,
        data: Expr,
        mac: Expr,
        code: Code,
        span: Span,
    },
    Expect(String, Code, Span),
    Out(Vec<(String, Span, Expr)>),
    If {
        cond: Cond,
        then: Vec<Stmt>,
        els: Option<Vec<Stmt>>,
        span: Span,
    },
    Loop {
        var: Option<(String, Span)>,
        from: u64,
        to: u64,
        body: Vec<Stmt>,
        span: Span,
    },
    Call(String, Vec<Expr>, Span),
    Fail(Code, Span),
    Done(Span),
    CommitPoint(Span),
}

/// A piece of a byte-string literal: hex bytes or an embedded `{expr}`.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Hex(Vec<u8>),
    Expr(Expr),
}

/// Binary integer operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    And,
    Shl,
    Shr,
}

/// A conversion suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    /// Integer → N big-endian bytes (`:u8be` … `:u64be`).
    Be(u8),
    /// Integer → N bytes packed BCD (`:bcdN`).
    Bcd(u8),
    /// Big-endian bytes → integer (`:int`).
    Int,
    /// Packed BCD → integer (`:bcd_int`).
    BcdInt,
}

/// An expression.
#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum ExprKind {
    Int(u64),
    Bytes(Vec<Piece>),
    Name(String),
    Concat(Box<Expr>, Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `x[from..to]`.
    Slice(Box<Expr>, Box<Expr>, Box<Expr>),
    Conv(Box<Expr>, Conv),
    Call(String, Vec<Expr>),
    /// `a == b` / `a != b` as a value: integer 1 or 0 (constant-time, `cteq`).
    Cmp(Cmp, Box<Expr>, Box<Expr>),
}
