//! [`CommandScript`] → `.casm` text that re-assembles to identical bytes.
//!
//! Mnemonics, operand kinds and roles come from the instruction table (a failure code,
//! role `Code`, is written in hex). Every jump target that starts an instruction gets a
//! label `L0012:` (the code offset in hex); other targets are written `@N`. Bytes that do not decode (or instructions with a debug line entry
//! inside them) are written as `.code [..]` so that nothing is lost.

use super::lexer::quote;
use crate::isa::{Instr, Operand, OperandSpec, Role, SwPattern};
use crate::script::{CommandScript, Constant, display_safe};
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

enum Chunk {
    Instr(u32, Instr),
    Raw(u32, u32),
}

impl Chunk {
    fn offset(&self) -> u32 {
        match self {
            Chunk::Instr(o, _) | Chunk::Raw(o, _) => *o,
        }
    }
}

/// Splits the code into instructions and raw runs; raw runs break at `cuts`.
fn chunks(code: &[u8], cuts: &BTreeSet<u32>) -> Vec<Chunk> {
    let mut out = Vec::new();
    let raw = |out: &mut Vec<Chunk>, from: u32, to: u32| {
        let mut start = from;
        for &c in cuts.range(from + 1..to) {
            out.push(Chunk::Raw(start, c));
            start = c;
        }
        out.push(Chunk::Raw(start, to));
    };
    let end = code.len() as u32;
    let mut at = 0u32;
    while at < end {
        match Instr::decode(&code[at as usize..]) {
            Ok((instr, size)) => {
                let next = at + size as u32;
                if cuts.range(at + 1..next).next().is_some() {
                    raw(&mut out, at, next);
                } else {
                    out.push(Chunk::Instr(at, instr));
                }
                at = next;
            }
            Err(_) => {
                raw(&mut out, at, end);
                at = end;
            }
        }
    }
    out
}

fn hex_bytes(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3 + 2);
    s.push('[');
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{x:02X}");
    }
    s.push(']');
    s
}

fn constant_text(c: &Constant) -> String {
    match c {
        Constant::Int(v) => format!("{v}"),
        Constant::Bytes(b) => hex_bytes(b),
    }
}

/// The `.casm` spelling of a status-word pattern.
fn sw_text(p: SwPattern) -> String {
    let nibbles_only = (0..4).all(|i| matches!((p.mask >> (i * 4)) & 0xF, 0 | 0xF));
    if nibbles_only {
        format!("{p}")
    } else {
        format!("{:04X}/{:04X}", p.value, p.mask)
    }
}

/// Disassembles `script` into `.casm` text.
pub fn disassemble(script: &CommandScript) -> String {
    let mut out = String::new();
    let h = &script.header;
    let _ = writeln!(out, "; cardvm command script, disassembled");
    let _ = writeln!(out, ".city      {}", h.city);
    let _ = writeln!(out, ".script    {}", h.script_id);
    let _ = writeln!(out, ".version   {}", h.version);
    let _ = writeln!(out, ".registers {}", h.registers);
    let _ = writeln!(out, ".key_slots {}", h.key_slots);
    if let Some(dbg) = &script.debug {
        let _ = writeln!(out, ".debug");
        for f in &dbg.files {
            if f.has_hash() {
                let _ = writeln!(out, ".file {} {}", quote(&f.name), hex_bytes(&f.sm3));
            } else {
                let _ = writeln!(out, ".file {}", quote(&f.name));
            }
        }
        // The variable table of a `.cvs` script (debug info version 3), in code offsets.
        for sc in &dbg.scopes {
            let _ = writeln!(
                out,
                ".scope {} {} {} {} {} {}",
                sc.routine, sc.call_file, sc.call_line, sc.start, sc.end, sc.parent
            );
        }
        for v in &dbg.vars {
            let _ = writeln!(
                out,
                ".var {} {} {} {} {} {}",
                v.name,
                v.kind.name(),
                v.slot,
                v.start,
                v.end,
                v.scope
            );
        }
    } else if let Some(u) = &script.unsupported_debug {
        let _ = writeln!(
            out,
            "; debug info version {} is not read by this build; kept as it is",
            u.version
        );
        let _ = writeln!(out, ".debug_raw {} {}", u.version, hex_bytes(&u.body));
    }
    if !script.inputs.is_empty() || !script.outputs.is_empty() {
        out.push('\n');
    }
    for d in &script.inputs {
        let _ = writeln!(out, ".input  {:<14} {}", d.name, d.ty);
    }
    for d in &script.outputs {
        let _ = writeln!(out, ".output {:<14} {}", d.name, d.ty);
    }
    if !script.constants.is_empty() {
        out.push('\n');
    }
    for (i, c) in script.constants.iter().enumerate() {
        let _ = writeln!(out, ".const c{i} = {}", constant_text(c));
    }
    out.push('\n');

    let lines = script
        .debug
        .as_ref()
        .map(|d| d.lines.as_slice())
        .unwrap_or(&[]);
    let cuts: BTreeSet<u32> = lines.iter().map(|e| e.offset).collect();
    let chunks = chunks(&script.code, &cuts);
    let starts: BTreeSet<u32> = chunks.iter().map(Chunk::offset).collect();
    let targets: BTreeSet<u32> = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Instr(_, i) => i.target(),
            Chunk::Raw(..) => None,
        })
        .filter(|t| starts.contains(t))
        .collect();
    let files = script
        .debug
        .as_ref()
        .map(|d| d.files.as_slice())
        .unwrap_or(&[]);
    let mut next_line = lines.iter().peekable();
    for chunk in &chunks {
        let at = chunk.offset();
        if targets.contains(&at) {
            let _ = writeln!(out, "L{at:04X}:");
        }
        if let Some(e) = next_line.next_if(|e| e.offset == at) {
            let shown = files
                .get(usize::from(e.file))
                .map_or(String::from("?"), |f| display_safe(&f.name));
            let _ = writeln!(
                out,
                "    .loc {} {}    ; {shown}:{}",
                e.file, e.line, e.line
            );
        }
        match chunk {
            Chunk::Raw(from, to) => {
                let _ = writeln!(
                    out,
                    "    .code {}",
                    hex_bytes(&script.code[*from as usize..*to as usize])
                );
            }
            Chunk::Instr(_, instr) => {
                let op = instr.opcode();
                let mut text = format!("    {:<7}", op.mnemonic());
                let mut comment = String::new();
                let ops = instr.operands();
                for (i, (o, spec)) in ops.as_slice().iter().zip(op.operand_specs()).enumerate() {
                    text.push_str(if i == 0 { " " } else { ", " });
                    text.push_str(&operand_text(script, *o, spec, &targets));
                    if let Operand::Const(c) = o
                        && let Some(c) = script.constants.get(usize::from(*c))
                    {
                        comment = constant_text(c);
                    }
                }
                if !comment.is_empty() {
                    let pad = 32usize.saturating_sub(text.chars().count()).max(1);
                    let _ = write!(text, "{:pad$}; {comment}", "");
                }
                out.push_str(text.trim_end());
                out.push('\n');
            }
        }
    }
    out
}

/// How operand `o` is written; its role in the table decides where the value alone
/// does not (a failure code is written in hex).
fn operand_text(
    script: &CommandScript,
    o: Operand,
    spec: &OperandSpec,
    labels: &BTreeSet<u32>,
) -> String {
    match o {
        Operand::Reg(r) => format!("r{r}"),
        Operand::Key(k) => format!("k{k}"),
        Operand::Const(c) if usize::from(c) < script.constants.len() => format!("c{c}"),
        Operand::Const(c) => format!("#{c}"),
        Operand::Input(i) => match script.inputs.get(usize::from(i)) {
            Some(d) => String::from(&*d.name),
            None => format!("#{i}"),
        },
        Operand::Output(i) => match script.outputs.get(usize::from(i)) {
            Some(d) => String::from(&*d.name),
            None => format!("#{i}"),
        },
        Operand::Target(t) if labels.contains(&t) => format!("L{t:04X}"),
        Operand::Target(t) => format!("@{t}"),
        Operand::U16(v) if spec.role == Role::FailCode => format!("0x{v:02X}"),
        Operand::U8(v) => format!("{v}"),
        Operand::U16(v) => format!("{v}"),
        Operand::U32(v) => format!("{v}"),
        Operand::Sw(p) => sw_text(p),
    }
}
