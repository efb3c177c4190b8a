//! The source-level debugger of `cardvm run`: `--trace-vm`, `--step`, `--break`, the
//! prompt (`print`, `next`, `step`, `continue`, `bt`) and the failure report.
//!
//! A `.cvs` script's debug section (version 3) maps registers and key slots to the
//! source's variables over code ranges, and records each inline routine expansion. With
//! it the debugger speaks the source: `line 23  balance = 00 00 01 F4`, stops at source
//! lines, prints variables by name and shows a backtrace through routine calls. Without
//! it (a `.casm` source, or `--trace-vm=instr`) it shows instructions and registers.
//!
//! Key slots show only their algorithm and usage (`<des3 load key>`), never bytes: the
//! VM hands a tracer no key bytes at all ([`cardvm::vm::RegView::key`]).

use super::trace::{StderrTrace, TraceSources, Unavailable, arrows, hex};
use cardvm::isa::Instr;
use cardvm::script::{DebugInfo, DebugVar, VarKind};
use cardvm::transport::sw_meaning;
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{ApduEvent, Failure, KeyHandle, Outcome, RegValue, RegView, RunReport, Tracer};
use std::collections::BTreeSet;
use std::io::{BufRead, Write};

/// How finely `--trace-vm` / `--step` follow the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Granularity {
    /// Source lines and variables (needs a `.cvs` script's variable table).
    Line,
    /// VM instructions and registers.
    Instr,
}

/// What the user asked of the debugger.
#[derive(Debug, Default)]
pub struct Options {
    /// `--trace-vm[=line|instr]`: `Some(None)` picks line where the script has a variable
    /// table, instr otherwise.
    pub trace: Option<Option<Granularity>>,
    /// `--step[=line|instr]`, chosen the same way.
    pub step: Option<Option<Granularity>>,
    /// `--break FILE:LINE` (or `LINE`, in the main file).
    pub breaks: Vec<String>,
    /// `--trace`: the APDU trace, when nothing else prints the exchanges.
    pub apdus: bool,
}

impl Options {
    /// Whether anything beyond the failure report was asked for.
    pub fn interactive_or_traced(&self) -> bool {
        self.trace.is_some() || self.step.is_some() || !self.breaks.is_empty()
    }
}

/// A register's value as last seen (owned: the view lives for one step only).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Unset,
    Int(u64),
    Bytes(Vec<u8>),
}

impl Val {
    fn of(v: RegValue<'_>) -> Self {
        match v {
            RegValue::Unset => Val::Unset,
            RegValue::Int(i) => Val::Int(i),
            RegValue::Bytes(b) => Val::Bytes(b.to_vec()),
        }
    }

    /// The instruction-level form: `10000 (0x2710)`, `[01 02]`, `-`.
    fn register_text(&self) -> String {
        match self {
            Val::Unset => String::from("-"),
            Val::Int(i) => format!("{i} ({i:#x})"),
            Val::Bytes(b) => format!("[{}]", hex(b)),
        }
    }

    /// The source-level form: `10000 (0x2710)`, `00 00 01 F4`, `(empty)`, `<not set>`.
    fn source_text(&self) -> String {
        match self {
            Val::Unset => String::from("<not set>"),
            Val::Int(i) => format!("{i} ({i:#x})"),
            Val::Bytes(b) if b.is_empty() => String::from("(empty)"),
            Val::Bytes(b) => hex(b),
        }
    }
}

/// Where the run goes until it stops again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The next breakpoint.
    Breakpoint,
    /// The next source line whose routine depth is at most this (step over calls).
    NextLine(usize),
    /// The next source line, entering routine calls.
    AnyLine,
    /// The next instruction.
    Instruction,
}

/// A register or key slot the last instruction changed, not yet named.
#[derive(Debug, Clone, Copy)]
enum Changed {
    Reg(usize),
    Key(usize),
}

/// The tracer behind `run --trace-vm`, `--step`, `--break`, and the failure report of
/// every `run` of a script with debug info.
pub struct Debugger<'p> {
    program: &'p VerifiedProgram,
    debug: Option<&'p DebugInfo>,
    /// Per debug-section file: its printable label, and its lines or why there are none.
    files: Vec<(String, Result<&'p [String], Unavailable>)>,
    /// `None`: print nothing while running (the failure report still names the line).
    trace: Option<Granularity>,
    /// Whether the user steps by instruction (the prompt's `next` is one instruction).
    instr_steps: bool,
    until: Until,
    breaks: BTreeSet<(u16, u32)>,
    regs: Vec<Val>,
    keys: Vec<Option<KeyHandle>>,
    /// Changed by the last instruction (at `changed_at`), named at the next step.
    changed: Vec<Changed>,
    changed_at: u32,
    /// The source line of the last instruction stepped, and the offsets run on it so far
    /// (the failure report reads the variables there; at most [`LINE_HISTORY`]).
    last_loc: Option<(u16, u32)>,
    line_offsets: Vec<u32>,
    /// The lines run before it, most recent last (at most [`LINES_KEPT`]), each with its
    /// offsets: a failure on a line that names no variable (`on 9303 fail locked`) is
    /// reported with the statement before it.
    earlier_lines: std::collections::VecDeque<((u16, u32), Vec<u32>)>,
    apdus: Option<StderrTrace>,
    input: Box<dyn BufRead + 'p>,
    out: std::io::Stderr,
}

impl<'p> Debugger<'p> {
    /// A debugger for `program`, showing lines from `sources`, reading prompt commands
    /// from `input`. Breakpoints are checked here: a one-line error names what is wrong.
    pub fn new(
        program: &'p VerifiedProgram,
        sources: &'p TraceSources,
        options: &Options,
        input: Box<dyn BufRead + 'p>,
    ) -> Result<Self, String> {
        let debug = program.debug_info();
        let has_vars = debug.is_some_and(|d| !d.vars.is_empty());
        let pick = |g: Option<Granularity>| {
            g.unwrap_or(if has_vars {
                Granularity::Line
            } else {
                Granularity::Instr
            })
        };
        let step = options.step.map(pick);
        // Stepping shows the lines it steps over, as --trace-vm would.
        let trace = options.trace.map(pick).or(step);
        let files = debug
            .map(|d| d.files.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|f| (f.label(), sources.resolve(f)))
            .collect();
        let mut d = Debugger {
            program,
            debug,
            files,
            trace,
            instr_steps: step == Some(Granularity::Instr),
            until: match step {
                Some(Granularity::Line) => Until::AnyLine,
                Some(Granularity::Instr) => Until::Instruction,
                None => Until::Breakpoint,
            },
            breaks: BTreeSet::new(),
            regs: Vec::new(),
            keys: Vec::new(),
            changed: Vec::new(),
            changed_at: 0,
            last_loc: None,
            line_offsets: Vec::new(),
            earlier_lines: std::collections::VecDeque::new(),
            apdus: (trace.is_none() && options.apdus).then(|| StderrTrace::new(true)),
            input,
            out: std::io::stderr(),
        };
        for spec in &options.breaks {
            let at = d.resolve_break(spec)?;
            d.breaks.insert(at);
        }
        if d.trace.is_some() || !d.breaks.is_empty() {
            for note in sources.notes() {
                d.say(&format!("-- trace: {note}"));
            }
            if let Some(v) = program.unsupported_debug_version() {
                d.say(&format!(
                    "-- trace: unsupported debug info version {v} (this build reads version {}; \
                     re-assemble with `cardvm asm -g`): no source lines",
                    cardvm::script::DEBUG_VERSION
                ));
            }
            let notes: Vec<String> =
                d.files
                    .iter()
                    .filter_map(|(label, lines)| {
                        lines.as_ref().err().map(|why| {
                            format!("-- trace: no source lines for {label}: {}", why.long())
                        })
                    })
                    .collect();
            notes.iter().for_each(|n| d.say(n));
        }
        Ok(d)
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
    }

    /// `FILE:LINE` or `LINE` (the main file) → the first line with code at or after it.
    fn resolve_break(&mut self, spec: &str) -> Result<(u16, u32), String> {
        let debug = self.debug.ok_or_else(|| {
            format!(
                "--break {spec}: the script has no debug info (run the `.cvs` or `.casm` \
                 source, or a `.cvm` built with `asm -g`)"
            )
        })?;
        let (file, line) = match spec.rsplit_once(':') {
            Some((f, l)) => (Some(f), l),
            None => (None, spec),
        };
        let line: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("--break {spec}: expected FILE:LINE or LINE"))?;
        let file = match file {
            None => 0u16,
            Some(f) => {
                let wanted = std::path::Path::new(f);
                let matches: Vec<u16> = debug
                    .files
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        let have = std::path::Path::new(&d.name);
                        have == wanted
                            || have.ends_with(wanted)
                            || (wanted.components().count() == 1
                                && have.file_name() == wanted.file_name())
                    })
                    .filter_map(|(i, _)| u16::try_from(i).ok())
                    .collect();
                match matches.as_slice() {
                    [one] => *one,
                    [] => {
                        let names: Vec<String> = debug.files.iter().map(|f| f.label()).collect();
                        return Err(format!(
                            "--break {spec}: no source file `{f}` in the script (its files: {})",
                            names.join(", ")
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "--break {spec}: `{f}` names several source files; give more of its path"
                        ));
                    }
                }
            }
        };
        let at = debug
            .lines
            .iter()
            .filter(|e| e.file == file && e.line >= line)
            .map(|e| e.line)
            .min()
            .ok_or_else(|| format!("--break {spec}: no code at or after that line"))?;
        if at != line {
            let label = self.label(file);
            self.say(&format!(
                "-- breakpoint {label}:{line} has no code: set at line {at}"
            ));
        }
        Ok((file, at))
    }

    fn label(&self, file: u16) -> String {
        self.files
            .get(usize::from(file))
            .map_or_else(|| format!("file {file}"), |(l, _)| l.clone())
    }

    /// `file:line: text` of the source line behind code offset `offset`; `code offset
    /// N (source not available: why)` in place of the text when it cannot be shown;
    /// `None` without debug info for `offset`.
    pub fn source_line(&self, offset: u32) -> Option<String> {
        let unavailable = |why: &str| format!("code offset {offset} (source not available: {why})");
        if let Some(v) = self.program.unsupported_debug_version() {
            return Some(unavailable(&format!("unsupported debug info version {v}")));
        }
        let e = self.debug?.entry(offset)?;
        let (label, _) = self.files.get(usize::from(e.file))?;
        let text = match self.text_of(e.file, e.line) {
            Ok(text) => text.to_string(),
            Err(why) => unavailable(&why),
        };
        Some(format!("{label}:{}: {text}", e.line))
    }

    /// The text of `file:line`, or why it cannot be shown.
    fn text_of(&self, file: u16, line: u32) -> Result<&str, String> {
        match self.files.get(usize::from(file)).map(|(_, l)| l) {
            Some(Ok(lines)) => line
                .checked_sub(1)
                .and_then(|i| lines.get(i as usize))
                .map(String::as_str)
                .ok_or_else(|| format!("the source has no line {line}")),
            Some(Err(why)) => Err(why.short().to_string()),
            None => Err(String::from("no such file")),
        }
    }

    fn loc(&self, offset: u32) -> Option<(u16, u32)> {
        let e = self.debug?.entry(offset)?;
        Some((e.file, e.line))
    }

    /// How many routine expansions `offset` is inside.
    fn depth(&self, offset: u32) -> usize {
        self.debug.map_or(0, |d| d.scopes_at(offset).len())
    }

    /// The variable `pick` selects at `offset` ([`DebugInfo::var_at`]).
    fn var_at(&self, offset: u32, pick: impl Fn(&DebugVar) -> bool) -> Option<&'p DebugVar> {
        self.debug?.var_at(offset, pick)
    }

    fn value_text(&self, v: &DebugVar) -> String {
        match v.kind {
            VarKind::Key => self
                .keys
                .get(usize::from(v.slot))
                .copied()
                .flatten()
                .map_or(String::from("<not set>"), |h| h.to_string()),
            VarKind::Int | VarKind::Bytes => self
                .regs
                .get(usize::from(v.slot))
                .map_or(String::from("<not set>"), Val::source_text),
        }
    }

    /// Every variable live at `offset`, one per name ([`DebugInfo::live_vars`]).
    fn live_vars(&self, offset: u32) -> Vec<&'p DebugVar> {
        self.debug.map(|d| d.live_vars(offset)).unwrap_or_default()
    }

    /// `print NAME`: its value where the run stands, or why there is none.
    fn print(&self, offset: u32, name: &str) -> String {
        if let Some(v) = self.var_at(offset, |v| v.name == name) {
            return format!("{name} = {}   ({})", self.value_text(v), v.kind.name());
        }
        let Some(debug) = self.debug else {
            return String::from("no variable table (a `.casm` script: use --step=instr)");
        };
        let lines = |o: u32| debug.entry(o).map(|e| e.line);
        let elsewhere: Vec<String> = debug
            .vars
            .iter()
            .filter(|v| v.name == name)
            .filter_map(|v| Some(format!("{}-{}", lines(v.start)?, lines(v.end)?)))
            .collect();
        if !elsewhere.is_empty() {
            return format!(
                "`{name}` holds no value here (it is live at lines {})",
                elsewhere.join(", ")
            );
        }
        let here: Vec<&str> = self
            .live_vars(offset)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        if let Some(near) = cardvm::lang::closest(name, debug.vars.iter().map(|v| v.name.as_str()))
        {
            return format!("no variable `{name}`; did you mean `{near}`?");
        }
        format!(
            "no variable `{name}` (live here: {})",
            if here.is_empty() {
                String::from("none")
            } else {
                here.join(", ")
            }
        )
    }

    /// `bt`: the routine expansions around `offset`, innermost first, then the flow.
    fn backtrace(&self, offset: u32) -> Vec<String> {
        let here = self
            .loc(offset)
            .map_or(format!("code offset {offset}"), |(f, l)| {
                format!("{}:{l}", self.label(f))
            });
        let Some(debug) = self.debug else {
            return vec![format!("#0  flow at {here}")];
        };
        let mut out = Vec::new();
        let mut at = here;
        for (k, (_, s)) in debug.scopes_at(offset).into_iter().enumerate() {
            out.push(format!("#{k}  {} at {at}", s.routine));
            at = format!("{}:{}", self.label(s.call_file), s.call_line);
        }
        out.push(format!("#{}  flow at {at}", out.len()));
        out
    }

    /// The prompt: reads commands until one resumes the run.
    fn prompt(&mut self, offset: u32) {
        loop {
            let _ = write!(self.out, "(cardvm) ");
            let _ = self.out.flush();
            let mut line = String::new();
            match self.input.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    // No more commands: run on to the end, stopping nowhere.
                    self.say("");
                    self.breaks.clear();
                    self.until = Until::Breakpoint;
                    return;
                }
                Ok(_) => {}
            }
            let mut words = line.split_whitespace();
            let cmd = words.next().unwrap_or("");
            let arg = words.next();
            match (cmd, arg) {
                ("" | "n" | "next", _) => {
                    self.until = if self.instr_steps {
                        Until::Instruction
                    } else {
                        Until::NextLine(self.depth(offset))
                    };
                    return;
                }
                ("s" | "step", _) => {
                    self.until = if self.instr_steps {
                        Until::Instruction
                    } else {
                        Until::AnyLine
                    };
                    return;
                }
                ("c" | "continue", _) => {
                    self.until = Until::Breakpoint;
                    return;
                }
                ("q" | "quit", _) => {
                    self.say("-- running on to the end without stopping (a card transaction is never cut short)");
                    self.breaks.clear();
                    self.until = Until::Breakpoint;
                    return;
                }
                ("p" | "print", Some(name)) => {
                    let text = self.print(offset, name);
                    self.say(&text);
                }
                ("p" | "print" | "locals", None) | ("info", Some("locals")) => {
                    let vars = self.live_vars(offset);
                    if vars.is_empty() {
                        self.say("no variables live here");
                    }
                    for v in vars {
                        let text = format!("{} = {}", v.name, self.value_text(v));
                        self.say(&text);
                    }
                }
                ("bt" | "backtrace" | "where", _) => {
                    for l in self.backtrace(offset) {
                        self.say(&l);
                    }
                }
                ("b" | "break", Some(spec)) => match self.resolve_break(spec) {
                    Ok(at) => {
                        let label = self.label(at.0);
                        self.breaks.insert(at);
                        self.say(&format!("-- breakpoint at {label}:{}", at.1));
                    }
                    Err(e) => self.say(&e.replace("--break ", "break ")),
                },
                ("h" | "help" | "?", _) => self.say(HELP),
                _ => {
                    let shown = cardvm::script::display_safe(line.trim());
                    self.say(&format!("unknown command `{shown}` (`help` lists them)"));
                }
            }
        }
    }

    /// Names what the last instruction changed, now that the run stands at `offset`:
    /// `line 23  balance = 00 00 01 F4` for each variable (temporaries are not shown).
    fn name_changes(&mut self, offset: u32) {
        if self.changed.is_empty() {
            return;
        }
        let line = self
            .loc(self.changed_at)
            .map_or(String::from("?"), |(_, l)| l.to_string());
        for c in std::mem::take(&mut self.changed) {
            let var = match c {
                Changed::Reg(r) => self.var_at(offset, |v| {
                    v.kind != VarKind::Key && usize::from(v.slot) == r
                }),
                Changed::Key(k) => self.var_at(offset, |v| {
                    v.kind == VarKind::Key && usize::from(v.slot) == k
                }),
            };
            if let Some(v) = var {
                let text = format!("line {line}  {} = {}", v.name, self.value_text(v));
                self.say(&text);
            }
        }
    }

    /// After the run: the variables written by its last instruction, then, if it did
    /// not commit, where it stopped (source line, the variables on it) and the last APDU.
    pub fn finish(&mut self, report: &RunReport) {
        if self.trace == Some(Granularity::Line) {
            // The variables the last instruction wrote hold from the one after it on
            // (past the end of the code: none).
            let count = self.program.instructions().len();
            let next = (0..count)
                .map(|i| self.program.offset_of(i))
                .find(|o| o.is_some_and(|o| o > self.changed_at))
                .flatten()
                .unwrap_or(u32::MAX);
            self.name_changes(next);
        }
        let (Outcome::Failed(f) | Outcome::Unknown(f)) = &report.outcome else {
            return;
        };
        let offset = match f {
            Failure::Script { offset, .. } | Failure::Transport { offset, .. } => *offset,
            Failure::Fault(e) => e.offset,
            _ => return,
        };
        let at = self
            .source_line(offset)
            .unwrap_or_else(|| format!("code offset {offset} (no debug info)"));
        self.say(&format!("-- {} at {at}", report.outcome.name()));
        self.say(&format!("--   {f}"));
        let here = self.loc(offset);
        let on_line = self.vars_on_line(here, offset, &self.line_offsets);
        if !on_line.is_empty() {
            self.say(&format!("--   on this line: {}", on_line.join(", ")));
        } else if let Some((at, vars)) = self
            .earlier_lines
            .iter()
            .rev()
            .filter(|(at, _)| Some(*at) != here)
            .find_map(|(at, offsets)| {
                let last = offsets.last().copied()?;
                let vars = self.vars_on_line(Some(*at), last, offsets);
                (!vars.is_empty()).then_some((*at, vars))
            })
        {
            // A status-word handler names no variable: show the statement it checks.
            self.say(&format!(
                "--   after {}:{}: {}",
                self.label(at.0),
                at.1,
                vars.join(", ")
            ));
        }
        if let Some(last) = &report.last_exchange {
            let sw = last
                .sw
                .map_or(String::from("no response"), |sw| format!("{sw:04X}"));
            self.say(&format!(
                "--   last APDU exchange: {} -> {sw}",
                hex(&last.header)
            ));
        }
    }

    /// `name = value` for the variables source line `at` mentions (all live ones when
    /// its text is not available), as they stood when it ran: live at `offset` or at any
    /// of the line's `offsets` (a variable it read before the instruction that failed,
    /// building an APDU, say, counts too).
    fn vars_on_line(&self, at: Option<(u16, u32)>, offset: u32, offsets: &[u32]) -> Vec<String> {
        let text = at
            .and_then(|(f, l)| self.text_of(f, l).ok())
            .map(String::from);
        let mentioned = |name: &str| {
            text.as_deref().is_none_or(|t| {
                t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|w| w == name)
            })
        };
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for at in std::iter::once(offset).chain(offsets.iter().rev().copied()) {
            for v in self.live_vars(at) {
                if mentioned(&v.name) && names.insert(v.name.as_str()) {
                    out.push(format!("{} = {}", v.name, self.value_text(v)));
                }
            }
        }
        out
    }

    fn render(&self, instr: &Instr) -> String {
        use cardvm::isa::Operand;
        let ops: Vec<String> = instr
            .operands()
            .as_slice()
            .iter()
            .map(|o| match *o {
                Operand::Reg(r) => format!("r{r}"),
                Operand::Key(k) => format!("k{k}"),
                Operand::Const(c) => format!("#{c}"),
                Operand::Input(i) => self
                    .program
                    .inputs()
                    .get(usize::from(i))
                    .map_or(format!("#{i}"), |d| d.name.to_string()),
                Operand::Output(i) => self
                    .program
                    .outputs()
                    .get(usize::from(i))
                    .map_or(format!("#{i}"), |d| d.name.to_string()),
                Operand::Target(t) => self
                    .program
                    .offset_of(t as usize)
                    .map_or(format!("#{t}"), |o| format!("@{o}")),
                Operand::U8(v) => v.to_string(),
                Operand::U16(v) => format!("{v:#x}"),
                Operand::U32(v) => v.to_string(),
                Operand::Sw(p) => p.to_string(),
            })
            .collect();
        format!("{:<7}{}", instr.opcode().mnemonic(), ops.join(", "))
    }
}

/// Source lines run before the current one that the failure report may fall back on.
const LINES_KEPT: usize = 8;

/// Offsets of one source line kept for the failure report (a line is a few dozen
/// instructions; a loop on one line stops adding).
const LINE_HISTORY: usize = 256;

const HELP: &str = "\
commands:
  next, n, Enter   run to the next source line (over routine calls)
  step, s          run to the next source line (into routine calls)
  continue, c      run to the next breakpoint
  print NAME, p    a variable's value (keys show only algorithm and usage)
  locals, p        every variable live here
  bt               routine calls around this line
  break FILE:LINE  stop at that line too
  quit, q          run on to the end without stopping";

impl Tracer for Debugger<'_> {
    fn step(&mut self, offset: u32, instr: &Instr) {
        let loc = self.loc(offset);
        if self.trace == Some(Granularity::Line) {
            self.name_changes(offset);
        }
        let new_line = loc.is_some() && loc != self.last_loc;
        match self.trace {
            Some(Granularity::Line) if new_line => {
                if let Some(src) = self.source_line(offset) {
                    self.say(&src);
                }
            }
            Some(Granularity::Instr) => {
                let src = self.source_line(offset).unwrap_or_default();
                let text = self.render(instr);
                self.say(&format!("@{offset:<5} {text:<28} ; {src}"));
            }
            _ => {}
        }
        let at_break = new_line && loc.is_some_and(|l| self.breaks.contains(&l));
        let stop = at_break
            || match self.until {
                Until::Instruction => true,
                Until::AnyLine => new_line,
                Until::NextLine(depth) => new_line && self.depth(offset) <= depth,
                Until::Breakpoint => false,
            };
        if stop {
            if at_break || self.trace != Some(Granularity::Line) && new_line {
                let what = if at_break { "breakpoint" } else { "at" };
                let src = self
                    .source_line(offset)
                    .unwrap_or_else(|| format!("code offset {offset}"));
                self.say(&format!("-- {what} {src}"));
            }
            self.prompt(offset);
        }
        if new_line {
            let offsets = std::mem::take(&mut self.line_offsets);
            if let Some(at) = self.last_loc {
                if self.earlier_lines.len() == LINES_KEPT {
                    self.earlier_lines.pop_front();
                }
                self.earlier_lines.push_back((at, offsets));
            }
        }
        if loc.is_some() {
            self.last_loc = loc;
        }
        if self.line_offsets.len() < LINE_HISTORY {
            self.line_offsets.push(offset);
        }
    }

    fn before_apdu(&mut self) {
        if let Some(t) = self.apdus.as_mut() {
            t.before_apdu();
        }
    }

    fn apdu(&mut self, e: &ApduEvent<'_>) {
        if let Some(t) = self.apdus.as_mut() {
            t.apdu(e);
            return;
        }
        if self.trace.is_none() {
            return;
        }
        let redacted = if e.redacted {
            " ** key bytes redacted **"
        } else {
            ""
        };
        let (to, from) = arrows(e.slot);
        self.say(&format!("       {to} {}{redacted}", hex(e.command)));
        match (e.sw, e.error) {
            (Some(sw), _) => {
                let text = format!(
                    "       {from} {} {:04X} ({})",
                    hex(e.response),
                    sw.0,
                    sw_meaning(sw)
                );
                self.say(&text);
            }
            (None, Some(err)) => self.say(&format!("       {from} !! {err}")),
            (None, None) => {}
        }
    }

    fn wants_registers(&self) -> bool {
        true
    }

    fn after_step(&mut self, offset: u32, view: &RegView<'_>) {
        let mut shown = Vec::new();
        self.regs.resize(view.registers(), Val::Unset);
        for r in 0..view.registers() {
            let now = view.get(r);
            let same = match (&self.regs[r], now) {
                (Val::Unset, RegValue::Unset) => true,
                (Val::Int(a), RegValue::Int(b)) => *a == b,
                (Val::Bytes(a), RegValue::Bytes(b)) => a.as_slice() == b,
                _ => false,
            };
            if !same {
                self.regs[r] = Val::of(now);
                self.changed.push(Changed::Reg(r));
                shown.push(format!("r{r}={}", self.regs[r].register_text()));
            }
        }
        self.keys.resize(view.key_slots(), None);
        for k in 0..view.key_slots() {
            let now = view.key(k);
            if now != self.keys[k] {
                self.keys[k] = now;
                self.changed.push(Changed::Key(k));
                shown.push(format!(
                    "k{k}={}",
                    now.map_or(String::from("-"), |h| h.to_string())
                ));
            }
        }
        self.changed_at = offset;
        if self.trace != Some(Granularity::Line) {
            self.changed.clear();
        }
        if self.trace == Some(Granularity::Instr) && !shown.is_empty() {
            self.say(&format!("       {}", shown.join("  ")));
        }
    }
}
