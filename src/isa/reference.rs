//! The instruction reference of `docs/casm.md`, generated from the table (a test keeps
//! the page equal to it).

use super::{ALL_OPCODES, OperandSpec, Role};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// How one operand reads in the reference: its role notation, with the range of an
/// immediate, the usages a read key slot accepts, the derivation that fills a key slot.
fn operand_cell(spec: &OperandSpec) -> String {
    let mut s = String::from(spec.role.notation(spec.kind));
    match spec.role {
        Role::Imm { min, max, .. } => {
            let full = match spec.kind.size() {
                1 => u32::from(u8::MAX),
                2 => u32::from(u16::MAX),
                _ => u32::MAX,
            };
            if (min, max) != (0, full) {
                let _ = write!(s, " {min}..={max}");
            }
        }
        Role::KeySrc { usages } => {
            let names: Vec<&str> = usages.iter().map(|u| u.name()).collect();
            let _ = write!(s, " ({})", names.join("/"));
        }
        Role::KeyDst {
            derivation: Some(d),
        } => {
            let _ = write!(s, " ← {}", d.name());
        }
        _ => {}
    }
    s
}

/// The instruction reference as a Markdown table: one row per opcode in table order,
/// with its syntax, operand roles, size, flags and one-line doc.
pub fn reference_markdown() -> String {
    let mut s = String::from(
        "| opcode | syntax | operands | size | flags | effect |\n|---|---|---|---|---|---|\n",
    );
    for &op in ALL_OPCODES {
        let specs = op.operand_specs();
        let names: Vec<&str> = specs.iter().map(|o| o.name).collect();
        let cells: Vec<String> = specs.iter().map(operand_cell).collect();
        let flags: Vec<&str> = op.flags().names().collect();
        let _ = writeln!(
            s,
            "| `0x{:02X}` | `{}{}{}` | {} | {} | {} | {} |",
            op as u8,
            op.mnemonic(),
            if names.is_empty() { "" } else { " " },
            names.join(", "),
            if cells.is_empty() {
                String::from("—")
            } else {
                cells.join(", ")
            },
            op.size(),
            flags.join(", "),
            op.summary().trim().replace('|', "\\|"),
        );
    }
    s
}
