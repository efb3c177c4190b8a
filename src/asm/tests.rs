//! Assembler and disassembler tests: the syntax, every error path, the examples, and
//! round trips over random scripts generated from the instruction table.

use super::*;
use crate::crypto::{KeyAlg, KeyUsage};
use crate::isa::{ALL_OPCODES, Instr, Operand, OperandKind, SwPattern, decode_all};
use crate::script::{
    CommandScript, Constant, DebugFile, DebugInfo, Decl, Header, LineEntry, UnsupportedDebug,
    ValueType,
};
use crate::verify::VerifiedProgram;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

fn asm_with(src: &str, loader: &mut MapLoader, debug: bool) -> Result<Assembled, AsmError> {
    assemble(src, "main.casm", &AsmOptions { debug }, loader)
}

fn asm(src: &str) -> CommandScript {
    match asm_with(src, &mut MapLoader::new(), false) {
        Ok(a) => a.script,
        Err(e) => panic!("{e}"),
    }
}

fn err(src: &str) -> AsmError {
    err_with(src, &mut MapLoader::new())
}

fn err_with(src: &str, loader: &mut MapLoader) -> AsmError {
    match asm_with(src, loader, false) {
        Ok(a) => panic!("assembled: {:?}", a.script),
        Err(e) => e,
    }
}

fn instrs(s: &CommandScript) -> Vec<Instr> {
    decode_all(&s.code)
        .unwrap()
        .into_iter()
        .map(|(_, i)| i)
        .collect()
}

/// Assembles the disassembly of `s` and checks the bytes are identical.
fn round_trip(s: &CommandScript) -> Result<(), TestCaseError> {
    let bytes = s.encode();
    let parsed = CommandScript::parse(&bytes).unwrap();
    let text = disassemble(&parsed);
    let again = match asm_with(&text, &mut MapLoader::new(), false) {
        Ok(a) => a.script,
        Err(e) => {
            return Err(TestCaseError::fail(alloc::format!(
                "{e}\n--- text ---\n{text}"
            )));
        }
    };
    prop_assert_eq!(again.encode(), bytes, "{}", text);
    Ok(())
}

const DOC_EXAMPLE: &str = r#"
; comment to end of line
.city 731            ; header
.script 1
.version 0x3
.input  amount   u32
.input  dlk      key(des3, load)
.input  term     bytes[6]
.input  now      bcd_datetime
.input  blob     bytes
.output mac2     bytes[4]
.reg    bal, atc, rnd
.key    sk
.const  SELECT = [00 A4 04 00 09 A0 00 00 00 03 86 98 07 01 00]
.const  TEN = 10
.include "common.casm"
.macro  check_ok code
    expect 9000, code
.endm
start:
    ldc   r0, SELECT
    apdu  r1, r0
    check_ok 0x01
    bsw   63Cx, retry
    ldin  bal, amount
    ldkey sk, dlk
    divkey k1, k0, r2
    ldc   r3, [80 5C 00 02 04]
    ldc   r4, [80 5C 00 02 04]
    ldc   r5, 7
    ldc   r5, TEN
    ldc   r5, 10
    out   mac2, r5
    jmp   start
retry: fail 0x63
"#;

fn doc_loader() -> MapLoader {
    let mut m = MapLoader::new();
    m.insert("common.casm", "; shared\n.const COMMON = [CC]\n");
    m
}

#[test]
fn assembles_the_documented_example() {
    let s = asm_with(DOC_EXAMPLE, &mut doc_loader(), false)
        .unwrap()
        .script;
    assert_eq!(
        s.header,
        Header {
            city: 731,
            script_id: 1,
            version: 3,
            registers: 6,
            key_slots: 2,
        }
    );
    // .const entries in declaration order (including the included one), then inline
    // literals in order of first use, deduplicated (10 reuses TEN).
    assert_eq!(
        s.constants,
        vec![
            Constant::Bytes(vec![
                0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x01,
                0x00
            ]),
            Constant::Int(10),
            Constant::Bytes(vec![0xCC]),
            Constant::Bytes(vec![0x80, 0x5C, 0x00, 0x02, 0x04]),
            Constant::Int(7),
        ]
    );
    assert_eq!(
        s.inputs[1].ty,
        ValueType::Key {
            alg: KeyAlg::Des3,
            usage: KeyUsage::Load
        }
    );
    assert_eq!(s.inputs[2].ty, ValueType::BytesN { len: 6 });
    assert_eq!(s.inputs[3].ty, ValueType::BcdDateTime);
    assert_eq!(s.inputs[4].ty, ValueType::Bytes);
    assert_eq!(s.debug, None);
    let code = instrs(&s);
    let retry = s.code.len() as u32 - 3;
    assert_eq!(
        code,
        vec![
            Instr::Ldc { dst: 0, index: 0 },
            Instr::Apdu { resp: 1, cmd: 0 },
            Instr::Expect {
                pattern: SwPattern::exact(0x9000),
                code: 1
            },
            Instr::Bsw {
                pattern: SwPattern {
                    value: 0x63C0,
                    mask: 0xFFF0
                },
                target: retry
            },
            Instr::Ldin { dst: 0, input: 0 },
            Instr::Ldkey { slot: 0, input: 1 },
            Instr::Diversify {
                dst: 1,
                master: 0,
                data: 2
            },
            Instr::Ldc { dst: 3, index: 3 },
            Instr::Ldc { dst: 4, index: 3 },
            Instr::Ldc { dst: 5, index: 4 },
            Instr::Ldc { dst: 5, index: 1 },
            Instr::Ldc { dst: 5, index: 1 },
            Instr::Out { output: 0, src: 5 },
            Instr::Jmp { target: 0 },
            Instr::Fail { code: 0x63 },
        ]
    );
}

#[test]
fn disassembly_is_readable_and_round_trips() {
    let s = asm_with(DOC_EXAMPLE, &mut doc_loader(), false)
        .unwrap()
        .script;
    let text = disassemble(&s);
    for want in [
        ".city      731",
        ".registers 6",
        ".key_slots 2",
        ".input  dlk            key(des3, load)",
        ".output mac2           bytes[4]",
        ".const c0 = [00 A4 04 00 09 A0 00 00 00 03 86 98 07 01 00]",
        ".const c1 = 10",
        "L0000:",
        "    ldc     r0, c0",
        "    expect  9000, 0x01",
        "    bsw     63Cx, L",
        "    ldin    r0, amount",
        "    divkey  k1, k0, r2\n",
        "    jmp     L0000",
        "    fail    0x63",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    round_trip(&s).unwrap();
}

#[test]
fn registers_and_key_slot_counts() {
    let s = asm("mov r7, r02\nhalt");
    assert_eq!((s.header.registers, s.header.key_slots), (8, 0));
    let s = asm(".registers 3\n.key_slots 9\nmov r7, r2\npkey k4, k1, r0\nhalt");
    assert_eq!((s.header.registers, s.header.key_slots), (3, 9));
    let s = asm("pkey k4, k1, r0\nhalt");
    assert_eq!((s.header.registers, s.header.key_slots), (1, 5));
    let s = asm(".registers 255\nmov r255, r0");
    assert_eq!(instrs(&s), vec![Instr::Mov { dst: 255, src: 0 }]);
    let s = asm("halt");
    assert_eq!((s.header.registers, s.header.key_slots), (0, 0));
}

#[test]
fn sw_forms_numbers_and_raw_operands() {
    let s = asm(
        ".input a u8\n.output b u8\nbsw 9000/F0F0, x\nx: ldi r0, 0xFFFFFFFF\nldin r0, #3\nout #2, r0\nldc r1, #9\njmp @77\n",
    );
    assert_eq!(
        instrs(&s),
        vec![
            Instr::Bsw {
                pattern: SwPattern {
                    value: 0x9000,
                    mask: 0xF0F0
                },
                target: 9
            },
            Instr::Ldi {
                dst: 0,
                value: u32::MAX
            },
            Instr::Ldin { dst: 0, input: 3 },
            Instr::Out { output: 2, src: 0 },
            Instr::Ldc { dst: 1, index: 9 },
            Instr::Jmp { target: 77 },
        ]
    );
    let s = asm("divkey k0, k0, r0\n.code [AB cd]\n.code []");
    assert_eq!(s.code[s.code.len() - 2..], [0xAB, 0xCD]);
}

#[test]
fn macros_expand_with_arguments_labels_and_nesting() {
    let s = asm(
        ".macro pair a, b\n  mov a, b\n  mov b, a\n.endm\n.macro twice x\n  pair x, r9\n  pair r8, x\n.endm\nhere: twice r1\n  jmp here",
    );
    assert_eq!(
        instrs(&s),
        vec![
            Instr::Mov { dst: 1, src: 9 },
            Instr::Mov { dst: 9, src: 1 },
            Instr::Mov { dst: 8, src: 1 },
            Instr::Mov { dst: 1, src: 8 },
            Instr::Jmp { target: 0 },
        ]
    );
    // A macro argument may be a bracketed literal with commas inside... of no kind here,
    // but brackets group: `[01 02]` is one argument.
    let s = asm(".macro load r, c\n ldc r, c\n.endm\nload r0, [01 02]\nhalt");
    assert_eq!(s.constants, vec![Constant::Bytes(vec![1, 2])]);
}

#[test]
fn includes_resolve_relative_to_the_includer() {
    let mut m = MapLoader::new();
    m.insert("lib/a.casm", ".include \"b.casm\"\n.const A = 1");
    m.insert("lib/b.casm", ".const B = 2\n.macro m\n nop\n.endm");
    m.insert("lib/../top.casm", "x");
    let s = assemble(
        ".include \"lib/a.casm\"\n.include \"lib/b.casm\"\nm\nldc r0, A\nhalt",
        "main.casm",
        &AsmOptions::default(),
        &mut m,
    );
    // b.casm is included twice (not a cycle) — its macro is then defined twice.
    let e = s.unwrap_err();
    assert_eq!((e.file.as_str(), e.line, e.col), ("lib/b.casm", 2, 8));
    assert!(e.message.contains("already defined"), "{e}");
    let s = assemble(
        ".include \"lib/a.casm\"\nm\nldc r0, A\nhalt",
        "main.casm",
        &AsmOptions::default(),
        &mut m,
    )
    .unwrap()
    .script;
    assert_eq!(s.constants, vec![Constant::Int(2), Constant::Int(1)]);
}

#[test]
fn debug_info_maps_offsets_to_lines() {
    let mut m = MapLoader::new();
    m.insert("inc.casm", ".macro two\n nop\n nop\n.endm");
    let main = ".include \"inc.casm\"\nnop\n\n  two\nhalt";
    let a = asm_with(main, &mut m, true).unwrap();
    let d = a.script.debug.clone().unwrap();
    let inc = m.get("inc.casm").unwrap();
    // Each file with the SM3 of its bytes; the assembler hands the texts over.
    assert_eq!(
        d.files,
        vec![
            DebugFile {
                name: "main.casm".into(),
                sm3: crate::crypto::sm3(main.as_bytes())
            },
            DebugFile {
                name: "inc.casm".into(),
                sm3: crate::crypto::sm3(inc.as_bytes())
            }
        ]
    );
    assert_eq!(
        a.sources,
        vec![
            SourceText {
                name: "main.casm".into(),
                text: main.into()
            },
            SourceText {
                name: "inc.casm".into(),
                text: inc.into()
            }
        ]
    );
    assert_eq!(
        d.lines,
        vec![
            LineEntry {
                offset: 0,
                file: 0,
                line: 2
            },
            LineEntry {
                offset: 1,
                file: 1,
                line: 2
            },
            LineEntry {
                offset: 2,
                file: 1,
                line: 3
            },
            LineEntry {
                offset: 3,
                file: 0,
                line: 5
            },
        ]
    );
    assert_eq!(d.location(3), Some(("main.casm", 5)));
    // Without -g there is none; the disassembly of either re-assembles exactly.
    let plain = asm_with(".include \"inc.casm\"\nnop\n\n  two\nhalt", &mut m, false).unwrap();
    assert_eq!(plain.script.debug, None);
    let text = disassemble(&a.script);
    assert!(
        text.contains(".debug\n.file \"main.casm\" [") && text.contains("\n.file \"inc.casm\" ["),
        "{text}"
    );
    assert!(text.contains(".loc 1 3"), "{text}");
    round_trip(&a.script).unwrap();
    round_trip(&plain.script).unwrap();
    // Explicit .loc: same offset twice keeps the last; trailing ones are dropped.
    let s = asm(".file \"x\"\n.loc 0 5\n.loc 0 6\nnop\n.loc 0 9");
    assert_eq!(
        s.debug,
        Some(DebugInfo {
            files: vec![DebugFile::unhashed("x")],
            lines: vec![LineEntry {
                offset: 0,
                file: 0,
                line: 6
            }],
            ..DebugInfo::default()
        })
    );
    assert_eq!(asm(".debug\nhalt").debug, Some(DebugInfo::default()));
}

#[test]
fn debug_file_hashes_and_kept_sections_round_trip() {
    let h = "[".to_string() + &"AB ".repeat(31) + "AB]";
    let s = asm(&format!(".file \"x.casm\" {h}\n.loc 0 2\nnop"));
    let d = s.debug.clone().unwrap();
    assert_eq!(d.files[0].sm3, [0xAB; 32]);
    round_trip(&s).unwrap();
    // A version-1 section (no hashes) and a later one are kept byte for byte.
    for version in [1u8, crate::script::DEBUG_VERSION + 1] {
        let s = asm(&format!(".debug_raw {version} [00 01 02]\nhalt"));
        assert_eq!(
            s.unsupported_debug,
            Some(UnsupportedDebug {
                version,
                body: vec![0, 1, 2]
            })
        );
        assert_eq!(s.debug, None);
        let text = disassemble(&s);
        assert!(
            text.contains(&format!(".debug_raw {version} [00 01 02]")),
            "{text}"
        );
        round_trip(&s).unwrap();
    }
    // `asm -g` does not add a second section next to a kept one.
    let mut m = MapLoader::new();
    let g = asm_with(".debug_raw 1 []\nhalt", &mut m, true).unwrap();
    assert_eq!(g.script.debug, None);
    let e = err(".file \"x\" [01 02]");
    assert!(e.message.contains("32 bytes (SM3), found 2"), "{e}");
    for read in [2, crate::script::DEBUG_VERSION] {
        let e = err(&format!(".debug_raw {read} [00]"));
        assert!(
            e.message.contains("a version this build does not read"),
            "{e}"
        );
    }
    let e = err(".debug\n.debug_raw 1 [00]");
    assert!(e.message.contains("one debug section"), "{e}");
    let e = err(".debug_raw 1 [00]\n.file \"x\"");
    assert!(e.message.contains("one debug section"), "{e}");
}

#[test]
fn warnings_start_empty() {
    let a = asm_with("halt", &mut MapLoader::new(), false).unwrap();
    assert!(a.warnings.is_empty());
}

// ---------------------------------------------------------------------------------
// Every error path: message, line and column.

#[track_caller]
fn check(src: &str, line: u32, col: u32, msg: &str) {
    let e = err(src);
    assert!(e.message.contains(msg), "{src:?}: wanted {msg:?}, got\n{e}");
    assert_eq!((e.line, e.col), (line, col), "{src:?}:\n{e}");
    assert_eq!(e.file, "main.casm");
    assert_eq!(
        e.source_line,
        src.lines().nth(line as usize - 1).unwrap_or("")
    );
}

#[test]
fn lexical_and_structural_errors() {
    check("nop\n  ldc r0, $", 2, 11, "unexpected character");
    check(".include \"x", 1, 10, "unterminated string");
    check("  apud r1, r0", 1, 3, "unknown mnemonic `apud`");
    check(".frob 1", 1, 1, "unknown directive `.frob`");
    check(
        "x: nop\nx: nop",
        2,
        1,
        "duplicate label `x` (first defined at main.casm:1)",
    );
    check("9x: nop", 1, 1, "bad label name");
    check("( nop", 1, 1, "unexpected `(`");
    check("halt halt", 1, 6, "takes no operands; found 1");
}

#[test]
fn operand_errors() {
    check("apdu r1", 1, 1, "takes 2 operand(s): resp, cmd; found 1");
    check("apdu r1, r2, r3", 1, 14, "found 3");
    check("apdu r1,, r2", 1, 9, "missing operand before `,`");
    check("apdu r1,", 1, 8, "missing operand after `,`");
    check("mov r1, bal", 1, 9, "unknown register `bal`");
    check("mov r1, 5", 1, 9, "must be a register");
    check("mov r1, [00]", 1, 9, "must be a register");
    check("mov r256, r1", 1, 5, "register `r256` out of range");
    check("pkey k0, k300, r0", 1, 10, "key slot `k300` out of range");
    check("pkey k0, sk, r0", 1, 10, "unknown key slot `sk`");
    check("pkey k0, 1, r0", 1, 10, "must be a key slot");
    check("jmp nowhere", 1, 5, "unknown label `nowhere`");
    check("jmp @x", 1, 6, "expected a number");
    check("jmp 5", 1, 5, "unknown label `5`");
    check("ldin r0, amount", 1, 10, "unknown input `amount`");
    check("out total, r0", 1, 5, "unknown output `total`");
    check("ldc r0, NOPE", 1, 9, "unknown constant `NOPE`");
    check("ldc r0, \"s\"", 1, 9, "must be a constant");
    check("ldc r0, 1 2", 1, 11, "unexpected `2`");
    check(
        "fail 70000",
        1,
        6,
        "value 70000 out of range (at most 65535)",
    );
    check("shri r0, r0, 256", 1, 14, "out of range (at most 255)");
    check("ldi r0, 0x100000000", 1, 9, "out of range");
    check("ldi r0, 99999999999999999999999", 1, 9, "out of range");
    check("ldi r0, 0x", 1, 9, "expected a number");
    check("ldi r0, twelve", 1, 9, "expected a number, found `twelve`");
    check("bsw 900, x\nx: halt", 1, 5, "must be a status word");
    check("bsw 9000/0F00, x\nx: halt", 1, 5, "must be a status word");
    check("bsw 9G00, x\nx: halt", 1, 5, "must be a status word");
    // divkey takes no usage: the derived key's usage follows the master's.
    check(
        "divkey k0, k0, r0, enc",
        1,
        20,
        "takes 3 operand(s): dst, master, data",
    );
    check("divkey k0, k0, r0, 6", 1, 20, "takes 3 operand(s)");
    check(
        ".input k key(des3, load-session)",
        1,
        20,
        "unknown key usage `load-session`",
    );
    check(".input k key(des3, any)", 1, 20, "unknown key usage `any`");
    check("out #x, r0", 1, 6, "expected a number");
    check("mov r255, r0", 1, 5, "too many registers");
    check("pkey k255, k0, r0", 1, 6, "too many key slots");
}

#[test]
fn declaration_errors() {
    check(".city", 1, 6, "`.city` needs a number");
    check(
        ".city 1\n.city 2",
        2,
        1,
        "`.city` given twice (first at line 1)",
    );
    check(".version 65536", 1, 10, "out of range");
    check(".registers 256", 1, 12, "out of range");
    check(".script 1 2", 1, 11, "unexpected `2`");
    check(".input", 1, 7, "needs a name and a type");
    check(".input 9a u8", 1, 8, "bad name");
    check(".input a", 1, 9, "missing type");
    check(".input a u7", 1, 10, "unknown type `u7`");
    check(".input a (", 1, 10, "unknown type `(`");
    check(".input a u8 u8", 1, 13, "unexpected `u8`");
    check(".input a bytes[", 1, 16, "expected a length");
    check(".input a bytes[4", 1, 17, "expected `]`");
    check(".input a bytes[4)", 1, 17, "expected `]`");
    check(".input a bytes[70000]", 1, 16, "out of range");
    check(".input a key(des3)", 1, 18, "expected `key(ALG, USAGE)`");
    check(".input a key", 1, 13, "expected `key(ALG, USAGE)`");
    check(
        ".input a key(rsa, load)",
        1,
        14,
        "unknown key algorithm `rsa`",
    );
    check(
        ".input a key(des3, loud)",
        1,
        20,
        "unknown key usage `loud`",
    );
    check(".input a u8\n.input a u16", 2, 8, "`a` is declared twice");
    check(".output a u8\n.output a u16", 2, 9, "declared twice");
    check(".reg", 1, 5, "needs at least one name");
    check(".reg a, a", 1, 9, "declared twice");
    check(".reg r3", 1, 6, "already names a register");
    check(".key k3", 1, 6, "already names a key slot");
    check(".reg 3a", 1, 6, "bad name");
    check(".reg a b", 1, 8, "unexpected `b`");
    check(".const", 1, 7, "expected `.const NAME");
    check(".const X", 1, 9, "expected `.const NAME");
    check(".const X 1", 1, 10, "expected `=`");
    check(".const 1X = 1", 1, 8, "bad constant name");
    check(".const X = 1\n.const X = 2", 2, 8, "defined twice");
    check(".const X =", 1, 11, "expected `[hex bytes]` or a number");
    check(".const X = [0G]", 1, 14, "bad hex digit 'G'");
    check(".const X = [012]", 1, 13, "odd number of digits");
    check(".const X = [01", 1, 15, "missing `]`");
    check(".const X = [01 ,]", 1, 16, "expected hex bytes or `]`");
    check(".const X = [01] 2", 1, 17, "unexpected `2`");
    check(".code 01", 1, 7, "expected `[hex bytes]`");
    check(".code", 1, 6, "expected `[hex bytes]`");
    check(".debug 1", 1, 8, "unexpected `1`");
    check(".file x", 1, 7, "quoted file name");
    check(".file", 1, 6, "quoted file name");
    check(".loc 0 1", 1, 6, "no `.file` number 0");
    check(".loc", 1, 5, "`.loc` takes a file index and a line");
    check(".file \"a\"\n.loc 0 x", 2, 8, "expected a number");
    check(".file \"a\"\n.loc 0 1 2", 2, 10, "unexpected `2`");
    let big = alloc::format!(".const X = [{}]", "00".repeat(4097));
    check(&big, 1, 12, "exceeds 4096");
    let many: String = (0..1025)
        .map(|i| alloc::format!(".const C{i} = {i}\n"))
        .collect();
    check(&many, 1025, 8, "more than 1024 constants");
    let many: String = (0..1025)
        .map(|i| alloc::format!(".input i{i} u8\n"))
        .collect();
    check(&many, 1025, 8, "more than 1024 declarations");
    let names: Vec<String> = (0..257).map(|i| alloc::format!("n{i}")).collect();
    let src = alloc::format!(".reg {}", names.join(", "));
    let e = err(&src);
    assert!(e.message.contains("too many registers"), "{e}");
    let long = "nop\n".repeat(super::super::script::MAX_CODE_LEN + 1);
    let e = err(&long);
    assert!(e.message.contains("exceeds 65536"), "{e}");
}

#[test]
fn macro_errors() {
    check(".macro", 1, 7, "needs a name");
    check(".macro 9m\n.endm", 1, 8, "a macro name");
    check(
        ".macro mov\n.endm",
        1,
        8,
        "would hide the instruction `mov`",
    );
    check(".macro m a, a\n.endm", 1, 13, "duplicate macro parameter");
    check(".macro m [\n.endm", 1, 10, "bad macro parameter");
    check(".macro m\n.endm\n.macro m\n.endm", 3, 8, "already defined");
    check(".macro m\n nop", 1, 1, "macro `m` has no `.endm`");
    check(
        ".macro m\n.macro n\n.endm",
        2,
        1,
        "inside a macro definition",
    );
    check(".endm", 1, 1, "`.endm` without `.macro`");
    check(".macro m\n.endm x", 2, 7, "unexpected text after `.endm`");
    check(
        ".macro m a\n mov a, a\n.endm\nm",
        4,
        1,
        "takes 1 argument(s) (a), found 0",
    );
    check(".macro m\n nop\n.endm\nm r1", 4, 1, "takes 0 argument(s)");
    check(
        ".macro m\n m\n.endm\nm",
        2,
        2,
        "nested deeper than 16 (recursive macro `m`?)",
    );
    // An error inside an expansion points at the body line; an argument's at the call.
    check(
        ".macro m a\n mov r0, a\n.endm\n m bad",
        4,
        4,
        "unknown register `bad`",
    );
    check(
        ".macro m a\n mvo r0, a\n.endm\n m r1",
        2,
        2,
        "unknown mnemonic `mvo`",
    );
    // Exponential expansion is bounded.
    let mut src = String::from(".macro m0\n nop\n.endm\n");
    for i in 1..12 {
        src.push_str(&alloc::format!(
            ".macro m{i}\n{}\n.endm\n",
            alloc::format!(" m{}\n", i - 1).repeat(10)
        ));
    }
    src.push_str("m11\n");
    let e = err(&src);
    assert!(e.message.contains("more than 200000 lines"), "{e}");
    // ...also when the lines emit nothing (empty includes, empty macros).
    let mut m = MapLoader::new();
    m.insert("empty.casm", "");
    let mut src = String::from(".macro m0\n .include \"empty.casm\"\n.endm\n");
    for i in 1..16 {
        src.push_str(&alloc::format!(
            ".macro m{i}\n{}\n.endm\n",
            alloc::format!(" m{}\n", i - 1).repeat(10)
        ));
    }
    src.push_str("m15\n");
    let e = err_with(&src, &mut m);
    assert!(e.message.contains("more than 200000 lines"), "{e}");
}

#[test]
fn include_errors() {
    let mut m = MapLoader::new();
    m.insert("a.casm", ".include \"b.casm\"");
    m.insert("b.casm", "\n.include \"a.casm\"");
    m.insert("self.casm", ".include \"self.casm\"");
    m.insert("bad.casm", "nop\n  ldc r0, X");
    let e = err_with(".include \"missing.casm\"", &mut m);
    assert_eq!((e.line, e.col), (1, 10));
    assert!(
        e.message
            .contains("cannot include \"missing.casm\": not found"),
        "{e}"
    );
    let e = err_with("\n.include \"a.casm\"", &mut m);
    assert_eq!((e.file.as_str(), e.line, e.col), ("b.casm", 2, 10));
    assert!(
        e.message
            .contains("include cycle: main.casm -> a.casm -> b.casm -> a.casm"),
        "{e}"
    );
    m.insert("main.casm", "");
    let e = err_with(".include \"main.casm\"", &mut m);
    assert!(e.message.contains("include cycle"), "{e}");
    let e = err_with(".include \"bad.casm\"", &mut m);
    assert_eq!((e.file.as_str(), e.line, e.col), ("bad.casm", 2, 11));
    assert_eq!(e.source_line, "  ldc r0, X");
    check(".include x", 1, 10, "takes a quoted path");
    check(".include", 1, 9, "takes a quoted path");
    check(".include \"a\" x", 1, 14, "unexpected `x` after the path");
    // A chain deeper than the limit.
    let mut m = MapLoader::new();
    for i in 0..40 {
        m.insert(
            alloc::format!("f{i}.casm"),
            alloc::format!(".include \"f{}.casm\"", i + 1),
        );
    }
    let e = err_with(".include \"f0.casm\"", &mut m);
    assert!(e.message.contains("nested deeper than 16"), "{e}");
}

// ---------------------------------------------------------------------------------
// The examples in scripts/examples.

fn examples() -> MapLoader {
    let mut m = MapLoader::new();
    m.insert(
        "scripts/examples/purse.casm",
        include_str!("../../scripts/examples/purse.casm"),
    );
    m
}

fn example(name: &str, text: &str) -> CommandScript {
    match assemble(text, name, &AsmOptions::default(), &mut examples()) {
        Ok(a) => a.script,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn balance_example_assembles_and_verifies() {
    let s = example(
        "scripts/examples/balance.casm",
        include_str!("../../scripts/examples/balance.casm"),
    );
    let p = VerifiedProgram::verify(&s).unwrap();
    assert_eq!(&*p.outputs()[0].name, "balance");
    assert_eq!(
        s.constants[1],
        Constant::Bytes(vec![0x80, 0x5C, 0x00, 0x02, 0x04])
    );
    round_trip(&s).unwrap();
}

#[cfg(feature = "std")]
mod load_example {
    use super::*;
    use crate::script::DataScript;
    use crate::transport::{ApduLayer, CardTransport, TransportError};
    use crate::vm::{Limits, NoTrace, Outcome, OutputRef, OutputValue, Vm};

    /// Answers like the card of the published PBOC load trace (reference/epurse.md).
    struct PublishedCard {
        commands: Vec<Vec<u8>>,
    }

    impl CardTransport for PublishedCard {
        fn transmit(
            &mut self,
            command: &[u8],
            response: &mut [u8],
        ) -> Result<usize, TransportError> {
            self.commands.push(command.to_vec());
            let r: &[u8] = match command[1] {
                // balance 0, ATC 0000, key version 00, algorithm 01, random F9CABA91, MAC1 6C394D64
                0x50 => &[
                    0, 0, 0, 0, 0, 0, 0x00, 0x01, 0xF9, 0xCA, 0xBA, 0x91, 0x6C, 0x39, 0x4D, 0x64,
                    0x90, 0x00,
                ],
                0x52 => &[0xAA, 0xBB, 0xCC, 0xDD, 0x90, 0x00],
                _ => &[0x90, 0x00],
            };
            response[..r.len()].copy_from_slice(r);
            Ok(r.len())
        }
    }

    #[test]
    fn load_example_verifies_binds_and_runs_the_published_vector() {
        let s = example(
            "scripts/examples/load.casm",
            include_str!("../../scripts/examples/load.casm"),
        );
        let data: DataScript =
            compile_data(include_str!("../../scripts/examples/load.toml")).unwrap();
        let p = VerifiedProgram::verify(&s).unwrap();
        let binding = p.bind(&data).unwrap();
        let bound = p.with_data(&data, &binding).unwrap();
        let mut layer = ApduLayer::new(PublishedCard { commands: vec![] });
        let report = Vm::new(Limits::default()).run(bound, &mut layer, &mut NoTrace);
        // Committed means the script derived SESLK and MAC1 6C394D64 checked.
        assert_eq!(report.outcome, Outcome::Committed, "{report:?}");
        let card = layer.into_inner();
        assert_eq!(
            card.commands[1],
            vec![
                0x80, 0x50, 0x00, 0x02, 0x0B, 0x01, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 1, 0x10
            ]
        );
        assert_eq!(
            card.commands[2][..12],
            [
                0x80, 0x52, 0x00, 0x00, 0x0B, 0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00
            ]
        );
        let out = |n: &str| report.output(n).map(OutputRef::to_value);
        assert_eq!(out("balance_before"), Some(OutputValue::Int(0)));
        assert_eq!(out("balance_after"), Some(OutputValue::Int(0x1234)));
        assert_eq!(out("atc"), Some(OutputValue::Int(0)));
        assert_eq!(
            out("tac"),
            Some(OutputValue::Bytes(vec![0xAA, 0xBB, 0xCC, 0xDD]))
        );
        assert_eq!(
            out("mac2"),
            Some(OutputValue::Bytes(card.commands[2][12..16].to_vec()))
        );
        round_trip(&s).unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Property tests.

fn any_operand(kind: OperandKind) -> BoxedStrategy<Operand> {
    match kind {
        OperandKind::Reg => any::<u8>().prop_map(Operand::Reg).boxed(),
        OperandKind::Key => any::<u8>().prop_map(Operand::Key).boxed(),
        OperandKind::Const => (0u16..8).prop_map(Operand::Const).boxed(),
        OperandKind::Input => (0u16..8).prop_map(Operand::Input).boxed(),
        OperandKind::Output => (0u16..8).prop_map(Operand::Output).boxed(),
        OperandKind::Target => any::<u32>().prop_map(Operand::Target).boxed(),
        OperandKind::U8 => any::<u8>().prop_map(Operand::U8).boxed(),
        OperandKind::U16 => any::<u16>().prop_map(Operand::U16).boxed(),
        OperandKind::U32 => any::<u32>().prop_map(Operand::U32).boxed(),
        OperandKind::Sw => prop_oneof![
            (any::<u16>(), any::<u16>()).prop_map(|(v, m)| SwPattern {
                value: v & m,
                mask: m
            }),
            (any::<u16>(), 0u16..16).prop_map(|(v, n)| {
                let mask = (0..4).fold(0u16, |m, i| {
                    if n >> i & 1 == 1 {
                        m | 0xF << (4 * i)
                    } else {
                        m
                    }
                });
                SwPattern {
                    value: v & mask,
                    mask,
                }
            }),
        ]
        .prop_map(Operand::Sw)
        .boxed(),
    }
}

/// Any instruction the table can express (targets are resolved later).
fn any_instr() -> impl Strategy<Value = Instr> {
    proptest::sample::select(ALL_OPCODES).prop_flat_map(|op| {
        let s: Vec<_> = op.operand_kinds().iter().map(|&k| any_operand(k)).collect();
        s.prop_map(move |ops| Instr::from_operands(op, &ops).unwrap())
    })
}

/// Turns targets into instruction offsets (most of the time) or odd offsets.
fn code_of(instrs: &[Instr]) -> Vec<u8> {
    let mut offsets = Vec::new();
    let mut at = 0u32;
    for i in instrs {
        offsets.push(at);
        at += i.opcode().size() as u32;
    }
    let mut code = Vec::new();
    for i in instrs {
        let ops: Vec<Operand> = i
            .operands()
            .as_slice()
            .iter()
            .map(|o| match *o {
                Operand::Target(t) if t % 4 != 0 && !offsets.is_empty() => {
                    Operand::Target(offsets[t as usize % offsets.len()])
                }
                Operand::Target(t) if t % 8 == 0 => Operand::Target(t % (at + 2)),
                other => other,
            })
            .collect();
        Instr::from_operands(i.opcode(), &ops)
            .unwrap()
            .encode(&mut code);
    }
    code
}

fn any_type() -> impl Strategy<Value = ValueType> {
    prop_oneof![
        proptest::sample::select(&[8u8, 16, 32, 64][..]).prop_map(|bits| ValueType::Int { bits }),
        Just(ValueType::Bytes),
        any::<u16>().prop_map(|len| ValueType::BytesN { len }),
        Just(ValueType::BcdDateTime),
        (
            proptest::sample::select(&KeyAlg::ALL[..]),
            proptest::sample::select(
                KeyUsage::ALL
                    .into_iter()
                    .filter(|u| u.is_declarable())
                    .collect::<Vec<_>>()
            )
        )
            .prop_map(|(alg, usage)| ValueType::Key { alg, usage }),
    ]
}

fn any_decls() -> impl Strategy<Value = Vec<Decl>> {
    proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,31}", any_type(), 0..5).prop_map(|m| {
        m.into_iter()
            .map(|(name, ty)| Decl {
                name: name.into(),
                ty,
            })
            .collect()
    })
}

fn any_script() -> impl Strategy<Value = CommandScript> {
    (
        (
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
        ),
        proptest::collection::vec(
            prop_oneof![
                any::<u64>().prop_map(Constant::Int),
                proptest::collection::vec(any::<u8>(), 0..12).prop_map(Constant::Bytes)
            ],
            0..5,
        ),
        (any_decls(), any_decls()),
        proptest::collection::vec(any_instr(), 0..24),
        proptest::collection::vec(any::<u8>(), 0..6),
        proptest::option::of((
            proptest::collection::vec("\\PC{0,12}|[\"\\\\\\n\\t\\x00-\\x1f]{0,4}", 1..3),
            proptest::collection::vec((any::<u32>(), any::<u16>(), any::<u32>()), 0..12),
        )),
    )
        .prop_map(
            |(
                (city, script_id, version, registers, key_slots),
                constants,
                (inputs, outputs),
                instrs,
                tail,
                dbg,
            )| {
                let mut code = code_of(&instrs);
                code.extend_from_slice(&tail);
                let debug = dbg.map(|(files, rows)| {
                    let mut lines: Vec<LineEntry> = Vec::new();
                    if !code.is_empty() {
                        let mut rows: Vec<_> = rows
                            .into_iter()
                            .map(|(o, f, l)| LineEntry {
                                offset: o % code.len() as u32,
                                file: f % files.len() as u16,
                                line: l,
                            })
                            .collect();
                        rows.sort_by_key(|e| e.offset);
                        rows.dedup_by_key(|e| e.offset);
                        lines = rows;
                    }
                    let files = files
                        .into_iter()
                        .enumerate()
                        .map(|(i, name)| DebugFile {
                            name,
                            // Hashed and unhashed entries both round-trip.
                            sm3: [i as u8; 32],
                        })
                        .collect();
                    DebugInfo {
                        files,
                        lines,
                        ..DebugInfo::default()
                    }
                });
                CommandScript {
                    header: Header {
                        city,
                        script_id,
                        version,
                        registers,
                        key_slots,
                    },
                    constants,
                    inputs,
                    outputs,
                    code,
                    debug,
                    unsupported_debug: None,
                }
            },
        )
}

/// Words that make random text reach deep into the assembler.
fn any_word() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(ALL_OPCODES).prop_map(|o| o.mnemonic().to_string()),
        proptest::sample::select(
            &[
                ".city",
                ".script",
                ".version",
                ".input",
                ".output",
                ".reg",
                ".key",
                ".const",
                ".include",
                ".macro",
                ".endm",
                ".code",
                ".debug",
                ".file",
                ".loc",
                ".debug_raw",
                ".registers",
                ".key_slots",
                "u8",
                "u32",
                "bytes",
                "key",
                "des3",
                "load",
                "9000",
                "63Cx",
                "9000/FF00",
                "@3",
                "#1",
                "r0",
                "r255",
                "k1",
                "x",
                "m",
                "0x10",
                "70000",
                ",",
                ",",
                ":",
                "=",
                "[",
                "]",
                "(",
                ")",
                "\"a.casm\"",
                "\"main.casm\"",
                "\n",
                "\n",
                "\n",
                "; c",
                "\t",
            ][..],
        )
        .prop_map(String::from),
        "[a-z0-9]{1,3}",
    ]
}

fn stress_loader() -> MapLoader {
    let mut m = MapLoader::new();
    m.insert(
        "a.casm",
        ".macro x a\n nop\n .include \"a.casm\"\n.endm\nx 1",
    );
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn disassembly_reassembles_to_identical_bytes(s in any_script()) {
        round_trip(&s)?;
    }

    #[test]
    fn random_words_give_a_script_or_a_positioned_error(words in proptest::collection::vec(any_word(), 0..60)) {
        let text = words.join(" ");
        match asm_with(&text, &mut stress_loader(), true) {
            Ok(a) => {
                let bytes = a.script.encode();
                prop_assert_eq!(CommandScript::parse(&bytes), Ok(a.script));
            }
            Err(e) => prop_assert!(e.line >= 1 && e.col >= 1 && !e.file.is_empty(), "{:?}", e),
        }
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        if let Err(e) = asm_with(&text, &mut stress_loader(), false) {
            prop_assert!(e.line >= 1 && e.col >= 1, "{:?}", e);
        }
    }

    #[test]
    fn mutated_example_gives_a_script_or_a_positioned_error(
        edits in proptest::collection::vec((any::<usize>(), 0usize..4, any_word()), 1..4)
    ) {
        let mut text: Vec<char> = DOC_EXAMPLE.chars().collect();
        for (at, how, word) in edits {
            let at = at % (text.len() + 1);
            match how {
                0 => { text.drain(at..(at + 5).min(text.len())); }
                1 => { text.splice(at..at, word.chars()); }
                2 => { text.splice(at..at, ['\n']); }
                _ => { let end = (at + 3).min(text.len()); text[at..end].iter_mut().for_each(|c| *c = 'x'); }
            }
        }
        let text: String = text.into_iter().collect();
        match asm_with(&text, &mut doc_loader(), false) {
            Ok(a) => {
                let bytes = a.script.encode();
                prop_assert_eq!(CommandScript::parse(&bytes), Ok(a.script));
            }
            Err(e) => prop_assert!(e.line >= 1 && e.col >= 1 && !e.file.is_empty(), "{:?}", e),
        }
    }
}

#[test]
fn the_rustdoc_syntax_example_assembles_and_verifies() {
    let doc = include_str!("mod.rs");
    let start = doc.find("```text").unwrap();
    let body: String = doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.contains("```"))
        .map(|l| {
            alloc::format!(
                "{}\n",
                l.trim_start_matches("//!").strip_prefix(' ').unwrap_or("")
            )
        })
        .collect();
    let mut m = MapLoader::new();
    m.insert("common.casm", ".const SHARED = [01]");
    let s = asm_with(&body, &mut m, false).unwrap().script;
    VerifiedProgram::verify(&s).unwrap();
    assert_eq!(s.header.city, 731);
    round_trip(&s).unwrap();
}

#[test]
fn variable_table_directives_round_trip_and_refuse_what_does_not_fit() {
    let src = ".file \"f.cvs\"\n.scope read 0 7 1 2 0\n.var bal bytes 3 1 2 1\n.var k key 0 0 1 0\n\
               .loc 0 1\nnop\nnop\nhalt";
    let s = asm(src);
    let d = s.debug.clone().unwrap();
    assert_eq!((d.vars.len(), d.scopes.len()), (2, 1));
    assert_eq!(d.vars[0].kind, crate::script::VarKind::Bytes);
    let text = disassemble(&s);
    assert!(text.contains(".scope read 0 7 1 2 0"), "{text}");
    assert!(text.contains(".var bal bytes 3 1 2 1"), "{text}");
    round_trip(&s).unwrap();
    // A scope before its file, a variable before its scope, a bad kind or name.
    for (bad, why) in [
        (".scope read 0 7 0 0 0", "declared `.file`"),
        (".file \"f\"\n.var x int 0 0 0 1", "no `.scope` number 1"),
        (".file \"f\"\n.var x float 0 0 0 0", "int, bytes or key"),
        (".file \"f\"\n.var 9x int 0 0 0 0", "starts with a name"),
        (".file \"f\"\n.var x int 0 0", "takes 6 fields"),
    ] {
        let e = err(bad);
        assert!(e.message.contains(why), "{bad}: {e}");
    }
    // An edited listing whose ranges pass the code keeps its lines, not its variables.
    let s = asm(".file \"f.cvs\"\n.var x int 0 0 9 0\n.loc 0 1\nnop\nhalt");
    let d = s.debug.unwrap();
    assert!(d.vars.is_empty() && d.lines.len() == 1, "{d:?}");
}
