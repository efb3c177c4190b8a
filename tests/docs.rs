//! docs/casm.md stays true: its instruction reference is generated from the instruction
//! table (`CARDVM_BLESS=1 cargo test --test docs` rewrites it), and its walkthrough's
//! script, card and scenarios are extracted, assembled, run on a simulated card and
//! tested.

use std::path::Path;

use cardvm::asm::{AsmOptions, assemble_file};
use cardvm::isa::ALL_OPCODES;
use cardvm::script::DataScript;
use cardvm::sim::SimCard;
use cardvm::transport::ApduLayer;
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{NoTrace, Outcome, OutputValue, Vm};

const DOC: &str = "docs/casm.md";
const BEGIN: &str = "<!-- BEGIN GENERATED ISA -->\n";
const END: &str = "<!-- END GENERATED ISA -->";

#[test]
fn instruction_reference_is_generated_from_the_table() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let start = doc.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = doc.find(END).expect("end marker");
    let want = cardvm::isa::reference_markdown();
    if std::env::var_os("CARDVM_BLESS").is_some() || std::env::var_os("CARDVM_REGEN_DOCS").is_some()
    {
        let new = format!("{}{}{}", &doc[..start], want, &doc[end..]);
        std::fs::write(DOC, new).unwrap();
        return;
    }
    assert_eq!(
        &doc[start..end],
        want,
        "docs/casm.md is stale: run CARDVM_BLESS=1 cargo test --test docs"
    );
    // One row per opcode, each with its doc line.
    for &op in ALL_OPCODES {
        assert!(!op.summary().trim().is_empty(), "{op:?} has no doc line");
        let row = format!("| `0x{:02X}` | `{}", op as u8, op.mnemonic());
        assert_eq!(doc[start..end].matches(&row).count(), 1, "{row}");
        assert!(
            doc[start..end].contains(op.summary().trim()),
            "{op:?}: its doc line is not in the reference"
        );
    }
}

/// The code block following `<!-- walkthrough: NAME -->`.
fn walkthrough_file(doc: &str, name: &str) -> String {
    let marker = format!("<!-- walkthrough: {name} -->");
    let at = doc.find(&marker).unwrap_or_else(|| panic!("no {marker}"));
    let rest = &doc[at..];
    let open = rest.find("```").unwrap();
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn walkthrough_script_runs_on_a_simulated_card_and_its_scenarios_pass() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let dir = std::env::temp_dir().join(format!("cardvm-docs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("scenarios")).unwrap();
    for name in ["balance.cvs", "card.toml", "scenarios/balance.toml"] {
        std::fs::write(dir.join(name), walkthrough_file(&doc, name)).unwrap();
    }
    let asm = assemble_file(&dir.join("balance.cvs"), &AsmOptions::default()).unwrap();
    assert!(
        asm.warnings.is_empty(),
        "the walkthrough script is lint-clean: {:?}",
        asm.warnings
    );
    let program = VerifiedProgram::from_script(asm.script).unwrap();
    let data = DataScript::default();
    let binding = program.bind(&data).unwrap();
    let mut card = SimCard::load(&dir.join("card.toml")).unwrap();
    let mut layer = ApduLayer::new(&mut card);
    let r = Vm::default().run(
        program.with_data(&data, &binding).unwrap(),
        &mut layer,
        &mut NoTrace,
    );
    assert_eq!(r.outcome, Outcome::Committed);
    assert_eq!(
        r.outputs.to_vec(),
        vec![
            (
                "card_id".into(),
                OutputValue::Bytes(vec![0x41, 0, 0, 0, 0x12, 0x34, 0x56, 0x78])
            ),
            ("balance".into(), OutputValue::Int(2500)),
        ]
    );
    let summary = cardvm::sim::scenario::run_path(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let text = summary.render();
    assert!(summary.ok(), "{text}");
    assert_eq!(summary.results.len(), 5, "{text}");
    assert!(
        text.contains("scenario result: ok. 5 passed; 0 failed"),
        "{text}"
    );
}

#[test]
fn docs_name_every_city_failure_code_file() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    for f in ["scripts/common/purse.casm", "scripts/common/m1.casm"] {
        assert!(doc.contains(f));
        assert!(Path::new(f).exists());
    }
}

/// The key-usage table of §4 says what `Opcode::allowed_key_usages` and `KeyUsage::derive`
/// say, for every instruction that reads a key slot.
#[test]
fn key_usage_table_matches_the_instruction_table() {
    use cardvm::crypto::KeyUsage;
    let doc = std::fs::read_to_string(DOC).unwrap();
    let at = doc
        .find("| instruction | accepts | the new key is |")
        .expect("key usage table");
    let rows: Vec<&str> = doc[at..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let names = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    };
    let mut covered = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (instrs, accepts, gives) = (cells[1], cells[2], cells[3]);
        for instr in names(instrs) {
            let mnemonic = instr.split_whitespace().next().unwrap().to_string();
            let op = *ALL_OPCODES
                .iter()
                .find(|o| o.mnemonic() == mnemonic)
                .unwrap_or_else(|| panic!("unknown instruction {mnemonic}"));
            let want: Vec<String> = op
                .allowed_key_usages()
                .iter()
                .map(|u| u.name().to_string())
                .collect();
            assert_eq!(names(accepts), want, "{mnemonic}");
            let derived: Vec<String> = match op.derivation() {
                Some(d) => op
                    .allowed_key_usages()
                    .iter()
                    .filter_map(|u| u.derive(d))
                    .map(|u: KeyUsage| u.name().to_string())
                    .collect(),
                None => vec![],
            };
            assert_eq!(names(gives), derived, "{mnemonic}");
            covered.push(op);
        }
    }
    for &op in ALL_OPCODES {
        if !op.allowed_key_usages().is_empty() {
            assert!(
                covered.contains(&op),
                "{} missing from the table",
                op.mnemonic()
            );
        }
    }
}
