//! The APDU trace printed by `run --trace`: `>> command` / `<< response SW (time)`.
//!
//! The format is the one [`cardvm::transport::replay::ReplayCard`] reads back, so a
//! trace captured from a real card can be replayed against a changed script.

use cardvm::isa::Instr;
use cardvm::vm::{ApduEvent, Tracer};
use std::io::Write;
use std::time::Instant;

/// Writes the trace to stderr as it happens.
pub struct StderrTrace {
    pub apdus: bool,
    started: Option<Instant>,
}

impl StderrTrace {
    pub fn new(apdus: bool) -> Self {
        StderrTrace {
            apdus,
            started: None,
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

impl Tracer for StderrTrace {
    fn step(&mut self, _offset: u32, _instr: &Instr) {}

    fn before_apdu(&mut self) {
        self.started = Some(Instant::now());
    }

    fn apdu(&mut self, e: &ApduEvent<'_>) {
        if !self.apdus {
            return;
        }
        let elapsed = self
            .started
            .take()
            .map(|t| t.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let mut err = std::io::stderr().lock();
        let redacted = if e.redacted {
            " ** key bytes redacted **"
        } else {
            ""
        };
        let _ = writeln!(err, ">> {}{redacted}", hex(e.command));
        match (e.sw, e.error) {
            (Some(sw), _) => {
                let data = hex(e.response);
                let sep = if data.is_empty() { "" } else { " " };
                let _ = writeln!(
                    err,
                    "<< {data}{sep}{:02X} {:02X}   ({elapsed:.3} ms)",
                    sw.sw1(),
                    sw.sw2()
                );
            }
            (None, Some(error)) => {
                let _ = writeln!(err, "<< !! {error}   ({elapsed:.3} ms)");
            }
            (None, None) => {}
        }
    }
}

/// `run --trace-vm` / `--step`: every executed instruction with its source line, the
/// registers it changed (key slots as redacted handles, e.g. `k0=<des3 load key>`) and
/// the APDUs. `--step` also waits for Enter after each instruction (`c` + Enter runs on).
pub struct VmTrace<'p> {
    program: &'p cardvm::verify::VerifiedProgram,
    sources: std::collections::HashMap<String, Option<Vec<String>>>,
    regs: Vec<String>,
    keys: Vec<String>,
    step: bool,
    out: std::io::Stderr,
}

impl<'p> VmTrace<'p> {
    /// A tracer for `program` writing to stderr.
    pub fn new(program: &'p cardvm::verify::VerifiedProgram, step: bool) -> Self {
        VmTrace {
            program,
            sources: std::collections::HashMap::new(),
            regs: Vec::new(),
            keys: Vec::new(),
            step,
            out: std::io::stderr(),
        }
    }

    /// `file:line: text` of the source line behind code offset `offset`, if known.
    pub fn source_line(&mut self, offset: u32) -> Option<String> {
        let (file, line) = self.program.source_location(offset)?;
        let text = self
            .sources
            .entry(file.to_string())
            .or_insert_with(|| {
                std::fs::read_to_string(file)
                    .ok()
                    .map(|t| t.lines().map(str::to_string).collect())
            })
            .as_ref()
            .and_then(|lines| lines.get(line.checked_sub(1)? as usize))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        Some(format!("{file}:{line}: {text}"))
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

fn show(v: cardvm::vm::RegValue<'_>) -> String {
    match v {
        cardvm::vm::RegValue::Unset => String::from("-"),
        cardvm::vm::RegValue::Int(i) => format!("{i} ({i:#x})"),
        cardvm::vm::RegValue::Bytes(b) => format!("[{}]", hex(b)),
    }
}

impl Tracer for VmTrace<'_> {
    fn step(&mut self, offset: u32, instr: &Instr) {
        let src = self.source_line(offset).unwrap_or_default();
        let text = self.render(instr);
        let _ = writeln!(self.out, "@{offset:<5} {text:<28} ; {src}");
    }

    fn apdu(&mut self, e: &ApduEvent<'_>) {
        let redacted = if e.redacted {
            " ** key bytes redacted **"
        } else {
            ""
        };
        let _ = writeln!(self.out, "       >> {}{redacted}", hex(e.command));
        match (e.sw, e.error) {
            (Some(sw), _) => {
                let _ = writeln!(self.out, "       << {} {:04X}", hex(e.response), sw.0);
            }
            (None, Some(err)) => {
                let _ = writeln!(self.out, "       << !! {err}");
            }
            (None, None) => {}
        }
    }

    fn wants_registers(&self) -> bool {
        true
    }

    fn after_step(&mut self, _offset: u32, view: &cardvm::vm::RegView<'_>) {
        let mut changes = Vec::new();
        self.regs.resize(view.registers(), String::from("-"));
        for r in 0..view.registers() {
            let now = show(view.get(r));
            if now != self.regs[r] {
                changes.push(format!("r{r}={now}"));
                self.regs[r] = now;
            }
        }
        self.keys.resize(view.key_slots(), String::from("-"));
        for k in 0..view.key_slots() {
            let now = view.key(k).map_or(String::from("-"), |h| h.to_string());
            if now != self.keys[k] {
                changes.push(format!("k{k}={now}"));
                self.keys[k] = now;
            }
        }
        if !changes.is_empty() {
            let _ = writeln!(self.out, "       {}", changes.join("  "));
        }
        if self.step {
            let _ = self.out.flush();
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => self.step = false,
                Ok(_) if line.trim() == "c" => self.step = false,
                Ok(_) => {}
            }
        }
    }
}
