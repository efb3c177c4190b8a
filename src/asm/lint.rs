//! Assembler lints: non-fatal warnings for likely mistakes.
//!
//! * an unused label;
//! * a declared input no instruction reads (`ldin`/`ldkey`);
//! * unreachable code (not reachable from offset 0 through jumps, branches, calls and
//!   fall-through);
//! * an `apdu` (or `ldrkey`) after which some path reaches another APDU, `halt` or the
//!   end without looking at the status word (`expect`, `bsw`, `bnsw`, `sw`);
//! * `beq`/`bne` on a register written by `mac`: not constant-time (use `cteq` or
//!   `chkmac`).
//!
//! A finding whose `.casm` words (mnemonics, the fix in instructions) mean nothing to a
//! `.cvs` author also carries its `.cvs` phrasing ([`Warning::cvs_message`]): the
//! statement as written (`samN apdu`, `load_reader_key`, `==`) and the fix in the
//! language (`else fail CODE`, `check_mac`).
//!
//! Lints run on the assembled code, so instructions from `.include`d files and macros
//! are covered; positions come from the assembler's line table. Which instructions send
//! an APDU, read the status word, read an input or end a path comes from the instruction
//! table ([`crate::isa::Flags`], [`crate::isa::Role`]), so a new instruction is linted
//! without a change here.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::error::{Lint, Warning};
use crate::isa::{Instr, Operand, decode_all};
use crate::script::{CommandScript, LineEntry};

/// What the assembler knows beyond the script.
pub(crate) struct LintInput<'a> {
    /// (name, text) of every source file, by file index.
    pub files: Vec<(&'a str, &'a str)>,
    /// Every label: name, code offset, file index, line, column.
    pub labels: Vec<(String, u32, u16, u32, u32)>,
    /// The offset → line table of every instruction.
    pub lines: &'a [LineEntry],
}

impl LintInput<'_> {
    fn warn(&self, lint: Lint, file: u16, line: u32, col: u32, message: String) -> Warning {
        Warning {
            lint,
            cvs_message: None,
            file: self
                .files
                .get(usize::from(file))
                .map_or(String::new(), |f| String::from(f.0)),
            line,
            col,
            message,
        }
    }

    fn at(&self, lint: Lint, offset: u32, message: String) -> Warning {
        match self.lines.iter().find(|l| l.offset == offset) {
            Some(l) => self.warn(lint, l.file, l.line, 1, message),
            None => self.warn(lint, 0, 0, 0, format!("code offset {offset}: {message}")),
        }
    }
}

fn reads_sw(i: &Instr) -> bool {
    i.opcode().flags().reads_sw
}

fn sends_apdu(i: &Instr) -> bool {
    i.opcode().flags().sends_apdu
}

/// Whether `i` reads declared input `n`.
fn reads_input(i: &Instr, n: usize) -> bool {
    i.try_for_each_operand(|o| match o {
        Operand::Input(k) if usize::from(k) == n => Err(()),
        _ => Ok(()),
    })
    .is_err()
}

/// Successor instruction indices of instruction `k`.
fn successors(code: &[(u32, Instr)], k: usize, out: &mut Vec<usize>) {
    let index_of = |off: u32| code.binary_search_by_key(&off, |c| c.0).ok();
    let i = &code[k].1;
    if let Some(t) = i.target().and_then(index_of) {
        out.push(t);
    }
    if !i.is_terminator() && k + 1 < code.len() {
        out.push(k + 1);
    }
}

/// The lint warnings for an assembled script.
pub(crate) fn lint(script: &CommandScript, input: &LintInput<'_>) -> Vec<Warning> {
    let mut out = Vec::new();
    let Ok(code) = decode_all(&script.code) else {
        return out;
    };
    if code.is_empty() {
        return out;
    }
    let targets: BTreeSet<u32> = code.iter().filter_map(|(_, i)| i.target()).collect();

    for (name, offset, file, line, col) in &input.labels {
        if !targets.contains(offset) && *offset != 0 {
            out.push(input.warn(
                Lint::UnusedLabel,
                *file,
                *line,
                *col,
                format!("label `{name}` is never used"),
            ));
        }
    }

    for (n, decl) in script.inputs.iter().enumerate() {
        let used = code.iter().any(|(_, i)| reads_input(i, n));
        if !used {
            let (file, line, col) = find_input(input, &decl.name).unwrap_or((0, 0, 0));
            out.push(input.warn(
                Lint::UnusedInput,
                file,
                line,
                col,
                format!("input `{}` is never read", decl.name),
            ));
        }
    }

    // Reachability.
    let mut reached = alloc::vec![false; code.len()];
    let mut stack = alloc::vec![0usize];
    let mut next = Vec::new();
    while let Some(k) = stack.pop() {
        if core::mem::replace(&mut reached[k], true) {
            continue;
        }
        next.clear();
        successors(&code, k, &mut next);
        stack.extend(next.iter().copied().filter(|&s| !reached[s]));
    }
    let mut k = 0;
    while k < code.len() {
        if reached[k] {
            k += 1;
            continue;
        }
        out.push(input.at(
            Lint::Unreachable,
            code[k].0,
            String::from("unreachable code"),
        ));
        while k < code.len() && !reached[k] {
            k += 1;
        }
    }

    // Status words never checked.
    for (k, (offset, instr)) in code.iter().enumerate() {
        if !reached[k] || !sends_apdu(instr) {
            continue;
        }
        if let Some(why) = unchecked_path(&code, k) {
            let mut w = input.at(
                Lint::UncheckedSw,
                *offset,
                format!(
                    "the status word of this `{}` is never checked ({why})",
                    instr.opcode().mnemonic()
                ),
            );
            let statement = match instr {
                Instr::SamApdu { sam, .. } => format!("sam{sam} apdu"),
                Instr::HostApdu { .. } => String::from("host apdu"),
                Instr::LoadReaderKey { .. } => String::from("load_reader_key"),
                other => String::from(other.opcode().mnemonic()),
            };
            let why = match why {
                "the script halts" => "`done` follows",
                "the script ends" => "the flow ends",
                other => other,
            };
            w.cvs_message = Some(format!(
                "the status word of this `{statement}` is never checked ({why}): \
                 add `else fail CODE` (or `on SW fail CODE` lines) after it"
            ));
            out.push(w);
        }
    }

    // MACs compared with a non-constant-time branch.
    let macs: BTreeSet<u8> = code
        .iter()
        .filter_map(|(_, i)| match *i {
            Instr::Mac { dst, .. } => Some(dst),
            _ => None,
        })
        .collect();
    for (offset, i) in &code {
        if let Instr::Beq { a, b, .. } | Instr::Bne { a, b, .. } = *i
            && (macs.contains(&a) || macs.contains(&b))
        {
            let mut w = input.at(
                Lint::MacCompare,
                *offset,
                format!(
                    "`{}` compares a MAC (not constant-time): use `cteq` or `chkmac`",
                    i.opcode().mnemonic()
                ),
            );
            let op = if matches!(i, Instr::Beq { .. }) {
                "=="
            } else {
                "!="
            };
            w.cvs_message = Some(format!(
                "`{op}` on a MAC compares in variable time: use \
                 `check_mac(k, d, m) else fail CODE` or a comparison value (`ok = m {op} mac2`)"
            ));
            out.push(w);
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    out
}

/// A path from the APDU at `k` that reaches another APDU, `halt` or the end of the code
/// without reading the status word.
fn unchecked_path(code: &[(u32, Instr)], k: usize) -> Option<&'static str> {
    let mut seen = alloc::vec![false; code.len()];
    let mut stack = Vec::new();
    let mut next = Vec::new();
    successors(code, k, &mut next);
    if next.is_empty() {
        return Some("the script ends");
    }
    stack.extend(next.iter().copied());
    while let Some(j) = stack.pop() {
        if core::mem::replace(&mut seen[j], true) {
            continue;
        }
        let i = &code[j].1;
        if reads_sw(i) || matches!(i, Instr::Fail { .. } | Instr::Ret {}) {
            continue;
        }
        if sends_apdu(i) {
            return Some("another APDU follows");
        }
        if matches!(i, Instr::Halt {}) {
            return Some("the script halts");
        }
        next.clear();
        successors(code, j, &mut next);
        if next.is_empty() {
            return Some("the script ends");
        }
        stack.extend(next.iter().copied().filter(|&s| !seen[s]));
    }
    None
}

/// Where `.input NAME` is declared.
fn find_input(input: &LintInput<'_>, name: &str) -> Option<(u16, u32, u32)> {
    for (f, (_, text)) in input.files.iter().enumerate() {
        for (n, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            if words.next() == Some(".input") && words.next() == Some(name) {
                let col = line.find(".input").unwrap_or(0) + 1;
                return Some((f as u16, n as u32 + 1, col as u32));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::asm::{AsmOptions, MapLoader, assemble};
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn warnings(src: &str) -> Vec<alloc::string::String> {
        assemble(src, "t.casm", &AsmOptions::default(), &mut MapLoader::new())
            .unwrap()
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    #[test]
    fn a_clean_script_has_no_warnings() {
        let w = warnings(
            ".input a u32\n.output o u32\n  ldin r0, a\n  ldc r1, [00 A4 04 00]\n  apdu r2, r1\n  bsw 6A82, nf\n  expect 9000, 1\n  out o, r0\n  halt\nnf: fail 2\n",
        );
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn unused_label_and_input() {
        let w = warnings(".input a u32\n.input b u32\n  ldin r0, a\nspare:\n  halt\n");
        assert_eq!(
            w,
            [
                "t.casm:2:1: warning: input `b` is never read",
                "t.casm:4:1: warning: label `spare` is never used",
            ]
        );
    }

    #[test]
    fn unreachable_code() {
        let w = warnings("  jmp end\n  nop\n  nop\nend: halt\n");
        assert_eq!(w, ["t.casm:2:1: warning: unreachable code"]);
    }

    #[test]
    fn unchecked_status_words() {
        let w = warnings(
            "  ldc r0, [00 A4 04 00]\n  apdu r1, r0\n  apdu r1, r0\n  bz r1, x\n  expect 9000, 1\nx: halt\n",
        );
        assert_eq!(
            w,
            [
                "t.casm:2:1: warning: the status word of this `apdu` is never checked (another APDU follows)",
                "t.casm:3:1: warning: the status word of this `apdu` is never checked (the script halts)",
            ]
        );
    }

    #[test]
    fn mac_compared_with_beq() {
        let w = warnings(
            ".input k key(des3, mac)\n.key sk\n  ldkey sk, k\n  ldc r0, [00 00 00 00 00 00 00 00]\n  mac r1, sk, r0\n  beq r1, r0, ok\n  fail 3\nok: halt\n",
        );
        assert_eq!(
            w,
            [
                "t.casm:6:1: warning: `beq` compares a MAC (not constant-time): use `cteq` or `chkmac`"
            ]
        );
    }

    /// A finding in `.casm` words also carries its phrasing for a `.cvs` author.
    #[test]
    fn findings_carry_their_cvs_phrasing() {
        let out = assemble(
            ".input k key(des3, mac)\n.key sk\n  ldkey sk, k\n  ldc r0, [00 00 00 00 00 00 00 00]\n  mac r1, sk, r0\n  bne r1, r0, bad\n  ldrkey sk, 0\n  halt\nbad: fail 3\n",
            "t.casm",
            &AsmOptions::default(),
            &mut MapLoader::new(),
        )
        .unwrap();
        let got: Vec<_> = out
            .warnings
            .iter()
            .map(|w| (w.message.as_str(), w.cvs_message.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "`bne` compares a MAC (not constant-time): use `cteq` or `chkmac`",
                    Some(
                        "`!=` on a MAC compares in variable time: use `check_mac(k, d, m) else fail CODE` or a comparison value (`ok = m != mac2`)"
                    )
                ),
                (
                    "the status word of this `ldrkey` is never checked (the script halts)",
                    Some(
                        "the status word of this `load_reader_key` is never checked (`done` follows): add `else fail CODE` (or `on SW fail CODE` lines) after it"
                    )
                ),
            ]
        );
    }

    #[test]
    fn each_finding_names_its_lint() {
        let out = assemble(
            ".input a u32\n.input k key(des3, mac)\n.key sk\n  ldkey sk, k\n  ldc r0, [00 A4 04 00]\n  apdu r2, r0\nspare:\n  mac r1, sk, r0\n  beq r1, r0, ok\n  jmp ok\n  nop\nok: halt\n",
            "t.casm",
            &AsmOptions::default(),
            &mut MapLoader::new(),
        )
        .unwrap();
        let got: Vec<_> = out.warnings.iter().map(|w| w.annotation()).collect();
        assert_eq!(
            got,
            [
                "t.casm:1:1: unused-input: input `a` is never read",
                "t.casm:6:1: unchecked-sw: the status word of this `apdu` is never checked (the script halts)",
                "t.casm:7:1: unused-label: label `spare` is never used",
                "t.casm:9:1: mac-compare: `beq` compares a MAC (not constant-time): use `cteq` or `chkmac`",
                "t.casm:11:1: unreachable-code: unreachable code",
            ]
        );
    }
}
