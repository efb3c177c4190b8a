use crate::asm::{AsmOptions, Assembled, MapLoader, assemble, disassemble};
use crate::script::VarKind;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

const PURSE: &str = "\
fail_codes {
    bad = 3
    refused = 4
}
const GET_BALANCE = [80 5C 00 02 04]
";

fn loader() -> MapLoader {
    let mut m = MapLoader::new();
    m.insert("lib/purse.cvs", PURSE);
    m
}

fn build(src: &str) -> Result<Assembled, String> {
    assemble(
        src,
        "lib/main.cvs",
        &AsmOptions { debug: true },
        &mut loader(),
    )
    .map_err(|e| e.to_string())
}

fn error(src: &str) -> String {
    match build(src) {
        Ok(a) => panic!(
            "compiled, but should not:\n{src}\n{}",
            disassemble(&a.script)
        ),
        Err(e) => e,
    }
}

#[test]
fn errors_have_position_line_and_caret() {
    let e = error("input n: u32\nx = n ++ [00]\ndone\n");
    assert_eq!(
        e,
        "lib/main.cvs:2:5: error: a part of a byte string must be a byte string, but `n` is an integer\n\
         x = n ++ [00]\n    ^"
    );
    let e = error("include \"purse.cvs\"\napdu GET_BALANCE else fail nope\ndone\n");
    assert!(
        e.starts_with("lib/main.cvs:2:28: error: unknown failure code `nope`"),
        "{e}"
    );
    // An error inside an included file names that file and its line.
    let mut m = loader();
    m.insert("lib/bad.cvs", "\n\nconst X = [0]\n");
    let e = assemble(
        "include \"bad.cvs\"\ndone\n",
        "lib/main.cvs",
        &AsmOptions::default(),
        &mut m,
    )
    .unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.line, e.col),
        ("lib/bad.cvs", 3, 12),
        "{e}"
    );
    let e = error("include \"nope.cvs\"\ndone\n");
    assert!(e.contains("cannot include \"nope.cvs\": not found"), "{e}");
}

/// Every way to turn key bytes into a byte string or an integer is a compile error
/// that says so (the VM has no such instruction either; this is the first wall).
#[test]
fn keys_never_become_bytes() {
    let head = "input k: key(des3, load), d: bytes[8]\noutput o: bytes, n: u32\n";
    for (line, col) in [
        ("x = k ++ d", 5),
        ("x = d ++ k", 10),
        ("x = [00 {k}]", 10),
        ("out o = k", 9),
        ("x = k[0..4]", 5),
        ("x = k:int", 5),
        ("x = len(k)", 9),
        ("x = sm3(k)", 9),
        ("x = mac(session_key(k, d), k)", 28),
        ("x = ct_eq(k, d)", 11),
        ("apdu 80 50 00 02 [{k}] le 4", 20),
        ("apdu 80 50 {k} [00]", 13),
        ("apdu k", 6),
        ("x = xor(tac_key(k), d)", 9),
        ("k -> a:4 b:4", 1),
    ] {
        let e = error(&alloc::format!("{head}{line}\ndone\n"));
        assert!(
            e.contains("is a key") && e.contains("key bytes never leave"),
            "{line}: {e}"
        );
        assert!(
            e.starts_with(&alloc::format!("lib/main.cvs:3:{col}: ")),
            "{line}: {e}"
        );
    }
    // A key output is refused at its declaration.
    let e = error("output o: key(des3, load)\ndone\n");
    assert!(e.contains("an output cannot be a key"), "{e}");
    // Keys used as keys compile.
    build(&alloc::format!(
        "{head}out o = mac(session_key(k, d), d)\ndone\n"
    ))
    .unwrap();
}

#[test]
fn type_and_flow_errors() {
    for (src, want) in [
        ("x = 1\nx = [00]\ndone\n", "must be an integer"),
        (
            "if sw is 9000 {\n    x = 1\n}\ny = x + 1\ndone\n",
            "may be used before it is assigned",
        ),
        ("routine r() {\n    r()\n}\nr()\ndone\n", "calls itself"),
        (
            "routine r(a) {\n    a = 1\n}\nr(2)\ndone\n",
            "cannot be assigned",
        ),
        ("x = 1\n", "can run past its last statement"),
        ("out nope = 1\ndone\n", "not a declared output"),
        ("output o: u8\nx = o\ndone\n", "is an output"),
        (
            "fail_codes { a = 1 }\nconst a = 2\ndone\n",
            "already declared",
        ),
        (
            "x = [00 01] [5..6]\ndone\n",
            "slice [5..6] of a 2-byte constant",
        ),
        ("x = 300:u8be\ndone\n", "does not fit in 1 byte"),
        ("apdu 80 50 00 [00]\ndone\n", "header is 4 bytes"),
        (
            "input k: key(m1, m1-a)\nload_reader_key(k, 300)\ndone\n",
            "constant 0..=255",
        ),
        ("x = 1 +\ndone\n", "expected an expression"),
        ("apdu [00] -> a:0\ndone\n", "1..=4096 bytes"),
        (
            "for i in 0..3 {\n    i = 2\n}\ndone\n",
            "cannot be assigned",
        ),
        ("x = y\ndone\n", "unknown name `y`"),
    ] {
        let e = error(src);
        assert!(e.contains(want), "{src}: {e}");
    }
}

#[test]
fn nesting_and_size_are_bounded() {
    let deep = alloc::format!("x = {}1{}\ndone\n", "(".repeat(200), ")".repeat(200));
    assert!(error(&deep).contains("nested deeper than"));
    let blocks = alloc::format!(
        "{}done\n{}",
        "if sw is 9000 {\n".repeat(40),
        "}\n".repeat(40)
    );
    assert!(error(&blocks).contains("blocks nested deeper than"));
    // Routines calling each other twice, 16 deep: 2^16 expansions are refused, not run.
    let mut src = String::from("routine r0() {\n    x = 1\n}\n");
    for i in 1..16 {
        src.push_str(&alloc::format!(
            "routine r{i}() {{\n    r{}()\n    r{}()\n}}\n",
            i - 1,
            i - 1
        ));
    }
    src.push_str("r15()\ndone\n");
    assert!(error(&src).contains("more than"), "{}", error(&src));
    let loops = alloc::format!(
        "x = 0\n{}done\n",
        "repeat 2 {\n    x = x + 1\n}\n".repeat(300)
    );
    assert!(error(&loops).contains("more than 256 loops"));
    // An include cycle is an error; including a file twice reads it once.
    let mut m = MapLoader::new();
    m.insert("a.cvs", "include \"b.cvs\"\n");
    m.insert("b.cvs", "include \"a.cvs\"\n");
    let e = assemble(
        "include \"a.cvs\"\ndone\n",
        "a.cvs",
        &AsmOptions::default(),
        &mut m,
    )
    .unwrap_err();
    assert!(e.message.contains("include cycle"), "{e}");
    build("include \"purse.cvs\"\ninclude \"purse.cvs\"\nfail bad\n").unwrap();
}

/// Routines `a1..=a{depth}`, each calling the one below `fan_out` times; `a0` is empty.
fn fan_out_routines(depth: usize, fan_out: usize) -> String {
    let mut src = String::from("routine a0() {}\n");
    for i in 1..=depth {
        src.push_str(&alloc::format!("routine a{i}() {{\n"));
        for _ in 0..fan_out {
            src.push_str(&alloc::format!("    a{}()\n", i - 1));
        }
        src.push_str("}\n");
    }
    src
}

#[test]
fn routine_fan_out_is_refused_by_the_work_budget() {
    // The attack: 171 lines of empty routines calling each other 10 times, 14 deep —
    // 10^14 expansions that emit nothing. It must stop at the budget (this test
    // finishing is the proof), at the call in the flow, naming the routine.
    let mut src = fan_out_routines(14, 10);
    src.push_str("a14()\ndone\n");
    assert_eq!(src.lines().count(), 171);
    let e = error(&src);
    let want = alloc::format!(
        "lib/main.cvs:170:1: error: this call of routine `a14` expands to more than {} compile steps",
        super::MAX_COMPILE_STEPS
    );
    assert!(e.starts_with(&want), "{e}");
    assert!(e.contains("stopped in a14 -> a13 -> "), "{e}");
    assert!(e.contains("\na14()\n^"), "{e}");
}

#[test]
fn a_program_within_the_work_budget_compiles() {
    // a_k() costs 1 + 10 × a_(k-1)() steps (its call statement and the expansion), a0()
    // one: a4() 11 111, a3() 1 111. 22 × a4, 5 × a3, 2 × a0 and `done` are exactly the
    // budget.
    assert_eq!(super::MAX_COMPILE_STEPS, 250_000);
    let mut src = fan_out_routines(4, 10);
    src.push_str(&"a4()\n".repeat(22));
    src.push_str(&"a3()\n".repeat(5));
    src.push_str(&"a0()\n".repeat(2));
    let at_budget = alloc::format!("{src}done\n");
    build(&at_budget).unwrap();
    // One expansion more is refused, at the call that went over.
    let over = alloc::format!("{src}a1()\ndone\n");
    let e = error(&over);
    assert!(
        e.starts_with("lib/main.cvs:79:1: error: this call of routine `a1` expands to more than"),
        "{e}"
    );
}

#[test]
fn folded_constants_and_declarations_are_bounded() {
    // A 4096-byte constant used over and over: folding it is work, and bounded.
    let big = alloc::format!("const C = [{}]\n", "00".repeat(4096));
    let src = alloc::format!(
        "{big}routine r() {{\n{}}}\n{}done\n",
        "    x = C\n".repeat(10),
        "r()\n".repeat(1000)
    );
    let e = error(&src);
    assert!(e.contains("compile steps"), "{e}");
    // Declarations are bounded as in the bytecode.
    let outs: String = (0..=super::MAX_DECLS)
        .map(|i| alloc::format!("output o{i}: u8\n"))
        .collect();
    let e = error(&alloc::format!("{outs}done\n"));
    assert!(e.contains("more than 1024 outputs"), "{e}");
    let ins: String = (0..=super::MAX_DECLS)
        .map(|i| alloc::format!("input i{i}: u8\n"))
        .collect();
    let e = error(&alloc::format!("{ins}done\n"));
    assert!(e.contains("more than 1024 inputs"), "{e}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic sweep (the fuzz target `compile` goes further).
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let alphabet: Vec<char> = "apdu on else fail if for in { } [ ] ( ) : , -> ++ ‖ .. = == < x k 00 9000 0x10 \n\"; done out"
        .chars()
        .collect();
    for _ in 0..3000 {
        let mut s = String::new();
        for _ in 0..(seed % 64) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        let _ = build(&s);
    }
}

#[test]
fn warnings_and_debug_info_name_the_high_level_lines() {
    let src = "include \"purse.cvs\"\ninput unused: u8\nr = 1\napdu GET_BALANCE -> b\ndone\n";
    let a = build(src).unwrap();
    let w: Vec<String> = a.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.starts_with("lib/main.cvs:2:7: warning: input `unused` is never read")),
        "{w:?}"
    );
    // In `.cvs` terms: what to write, not which instruction to add.
    assert!(
        w.contains(&String::from(
            "lib/main.cvs:4:1: warning: the status word of this `apdu` is never checked \
             (`done` follows): add `else fail CODE` (or `on SW fail CODE` lines) after it"
        )),
        "{w:?}"
    );
    assert!(a.warnings.iter().all(|w| w.cvs_message.is_none()));
    let dbg = a.script.debug.as_ref().unwrap();
    let names: Vec<&str> = dbg.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["lib/main.cvs", "lib/purse.cvs"]);
    assert_eq!(dbg.files[0].sm3, crate::crypto::sm3(src.as_bytes()));
    assert_eq!(a.sources[1].text, PURSE);
    // ldi (line 3), ldc + apdu (line 4), halt (line 5).
    let lines: Vec<(u16, u32)> = dbg.lines.iter().map(|e| (e.file, e.line)).collect();
    assert_eq!(lines, [(0, 3), (0, 4), (0, 4), (0, 5)]);
}

#[test]
fn dead_registers_are_reused_and_disasm_reassembles() {
    let src = "input a: bytes[4], b: bytes[4]\noutput o: bytes\n\
        x = a ++ b\ny = x ++ x\nz = y ++ b\nout o = z\n\
        p = b ++ a\nq = p ++ p\nout o = q ++ a\ndone\n";
    let a = build(src).unwrap();
    assert!(a.script.header.registers <= 3, "{}", disassemble(&a.script));
    let listing = disassemble(&a.script);
    let again = crate::asm::assemble_casm(
        &listing,
        "d.casm",
        &AsmOptions::default(),
        &mut MapLoader::new(),
    )
    .unwrap();
    // The listing carries the line table and the variable table (`.var`, `.scope`).
    assert!(listing.contains(".var x bytes "), "{listing}");
    assert_eq!(again.script.encode(), a.script.encode());
}

#[cfg(feature = "sim")]
mod run {
    use super::*;
    use crate::script::{DataScript, Field as DataField, FieldValue};
    use crate::sim::CpuCard;
    use crate::transport::ApduLayer;
    use crate::verify::VerifiedProgram;
    use crate::vm::{NoTrace, Outcome, OutputValue, RunReport, Vm};

    fn run(src: &str, fields: Vec<(&str, FieldValue)>) -> RunReport {
        let a = build(src).unwrap();
        let program = VerifiedProgram::from_script(a.script).unwrap();
        let data = DataScript {
            fields: fields
                .into_iter()
                .map(|(n, value)| DataField {
                    name: n.into(),
                    value,
                })
                .collect(),
        };
        let binding = program.bind(&data).unwrap();
        let mut card = CpuCard::builder().build().unwrap();
        let mut layer = ApduLayer::new(&mut card);
        Vm::default().run(
            program.with_data(&data, &binding).unwrap(),
            &mut layer,
            &mut NoTrace,
        )
    }

    fn int(r: &RunReport, n: &str) -> u64 {
        match r.output(n).map(|o| o.to_value()) {
            Some(OutputValue::Int(v)) => v,
            other => panic!("{n}: {other:?} in {r:?}"),
        }
    }

    /// Values live across a loop's back edge keep their registers; a temporary inside
    /// the body never clobbers them.
    #[test]
    fn loops_routines_and_branches_compute() {
        let src = "input n: u32\noutput sum: u64, prod: u64, tri: u64, bytes: bytes\n\
            routine twice(v) {\n    out prod = v * 2\n}\n\
            s = 0\nacc = [AA]\n\
            for i in 1..11 {\n    t = i * 3\n    s = s + t\n    if i > 8 {\n        acc = acc ++ [BB]\n    } else {\n        acc = acc ++ i:u8be\n    }\n}\n\
            c = 0\nrepeat 4 {\n    c = c + n\n}\n\
            twice(c)\nout sum = s, tri = (n + 1) * n / 2, bytes = acc\ndone\n";
        let r = run(src, alloc::vec![("n", FieldValue::Int(7))]);
        assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
        assert_eq!(int(&r, "sum"), 165);
        assert_eq!(int(&r, "prod"), 56);
        assert_eq!(int(&r, "tri"), 28);
        assert_eq!(
            r.output("bytes").map(|o| o.to_value()),
            Some(OutputValue::Bytes(alloc::vec![
                0xAA, 1, 2, 3, 4, 5, 6, 7, 8, 0xBB, 0xBB
            ]))
        );
    }

    /// Comparison values are 1 or 0 at run time, for integers and byte strings, MACs
    /// included, and usable as conditions.
    #[test]
    fn comparison_values_run() {
        use crate::crypto::{KeyAlg, KeyUsage, SecretKey};
        let src = "input n: u32, b: bytes[2], k: key(des3, mac)\n\
            output e1: u32, e2: u32, n1: u32, n2: u32, m1: u32, m2: u32\n\
            out e1 = n == 7, e2 = b == [12 34], n1 = n != 7, n2 = b != [12 34]\n\
            m = mac(k, b)\nok = m == mac(k, [12 34])\nout m1 = ok, m2 = m != mac(k, [00 00])\n\
            if ok == 1 {\n    if not ok fail 5\n    done\n}\nfail 6\n";
        let key =
            || FieldValue::Key(SecretKey::new(KeyAlg::Des3, KeyUsage::Mac, &[0x11; 16]).unwrap());
        let r = run(
            src,
            alloc::vec![
                ("b", FieldValue::Bytes(alloc::vec![0x12, 0x34])),
                ("k", key()),
                ("n", FieldValue::Int(7)),
            ],
        );
        assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
        let got: Vec<u64> = ["e1", "e2", "n1", "n2", "m1", "m2"]
            .iter()
            .map(|n| int(&r, n))
            .collect();
        assert_eq!(got, [1, 1, 0, 0, 1, 1]);
        let r = run(
            src,
            alloc::vec![
                ("b", FieldValue::Bytes(alloc::vec![0x12, 0x35])),
                ("k", key()),
                ("n", FieldValue::Int(8)),
            ],
        );
        let got: Vec<u64> = ["e1", "e2", "n1", "n2", "m1"]
            .iter()
            .map(|n| int(&r, n))
            .collect();
        assert_eq!(got, [0, 0, 1, 1, 0]);
        assert!(
            matches!(
                r.outcome,
                Outcome::Failed(crate::vm::Failure::Script { code: 6, .. })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn fail_codes_conversions_and_conditions() {
        let src = "input n: u32\noutput a: bytes, b: u32\nfail_codes { small = 7 }\n\
            if n < 5 fail small\nw = [00 11 22 33 44 55]\nk = n % 4\nout a = n:bcd3 ++ n:u16be ++ w[k..k + 2], b = [12 34]:bcd_int + [01 00]:int\n\
            if not ct_eq(n:u32be, [00 00 00 63]) {\n    fail 9\n}\ndone\n";
        let r = run(src, alloc::vec![("n", FieldValue::Int(99))]);
        assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
        assert_eq!(
            r.output("a").map(|o| o.to_value()),
            Some(OutputValue::Bytes(alloc::vec![
                0, 0, 0x99, 0, 99, 0x33, 0x44
            ]))
        );
        assert_eq!(int(&r, "b"), 1234 + 256);
        let r = run(src, alloc::vec![("n", FieldValue::Int(3))]);
        assert!(
            matches!(
                r.outcome,
                Outcome::Failed(crate::vm::Failure::Script { code: 7, .. })
            ),
            "{r:?}"
        );
        let r = run(src, alloc::vec![("n", FieldValue::Int(98))]);
        assert!(
            matches!(
                r.outcome,
                Outcome::Failed(crate::vm::Failure::Script { code: 9, .. })
            ),
            "{r:?}"
        );
    }
}

#[test]
fn the_debug_section_names_variables_and_routine_expansions() {
    let src = "\
include \"purse.cvs\"
input amount: u32, dlk: key(des3, load)
routine read(cmd) {
    apdu cmd -> bal:4 on 9403 fail refused else fail bad
    out balance = bal
}
c = GET_BALANCE
read(c)
m = mac(dlk, amount:u32be)
out mac = m
done
";
    let src = src.replace(
        "input amount",
        "output balance: bytes[4], mac: bytes\ninput amount",
    );
    let a = build(&src).unwrap();
    let dbg = a.script.debug.clone().unwrap();
    let var = |name: &str| {
        dbg.vars
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no `{name}` in {:?}", dbg.vars))
    };
    // The routine's expansion is a scope called from line 9 of the main file.
    assert_eq!(dbg.scopes.len(), 1, "{:?}", dbg.scopes);
    let read = &dbg.scopes[0];
    assert_eq!(
        (read.routine.as_str(), read.call_file, read.call_line),
        ("read", 0, 9)
    );
    // Its parameter and its field variable live in it; `m` and the key in the flow.
    assert_eq!(var("cmd").scope, 1);
    assert_eq!(var("bal").scope, 1);
    assert_eq!(var("bal").kind, VarKind::Bytes);
    assert!(read.start <= var("cmd").start && var("bal").end <= read.end);
    assert_eq!((var("m").scope, var("m").kind), (0, VarKind::Bytes));
    assert_eq!((var("dlk").scope, var("dlk").kind), (0, VarKind::Key));
    assert_eq!(var("amount").kind, VarKind::Int);
    // A variable's range starts after the instruction that writes it: the line table
    // puts that instruction on the variable's line, the range's first one after it.
    let line_of = |o: u32| dbg.entry(o).map(|e| e.line);
    assert_eq!(line_of(var("m").start), Some(11), "{:?}", var("m"));
    // The compiler's bindings say the same, with types, for an editor.
    let compiled = super::compile(&src, "lib/main.cvs", &mut loader()).unwrap();
    let bal = compiled.bindings.iter().find(|b| b.name == "bal").unwrap();
    assert_eq!(
        (bal.ty, bal.routine.as_deref(), bal.span.line),
        ("bytes", Some("read"), 5)
    );
    // The table round-trips through the script's bytes.
    let again = crate::script::CommandScript::parse(&a.script.encode()).unwrap();
    assert_eq!(again.debug, Some(dbg.clone()));
}

/// `==` and `!=` make values (1 or 0) of integers with integers and byte strings with
/// byte strings, in constant time (`cteq`); keys stay incomparable; ordered
/// comparisons and chains are errors that say why.
#[test]
fn comparisons_are_values() {
    let head =
        "input sk: key(des3, mac), amt: bytes[4], card_mac2: bytes[4], n: u32\noutput ok: u32\n";
    let a = build(&format!(
        "{head}ok = mac(sk, amt) == card_mac2\nout ok = ok\nif ok fail 3\ndone\n"
    ))
    .unwrap();
    let listing = disassemble(&a.script);
    assert!(listing.contains("cteq"), "{listing}");
    assert!(
        a.warnings
            .iter()
            .all(|w| w.lint != crate::asm::Lint::MacCompare),
        "{:?}",
        a.warnings
    );
    for (line, what) in [
        ("x = sk == sk", "`sk` is a key"),
        ("x = amt == sk", "`sk` is a key"),
        (
            "x = n == amt",
            "the right side of the comparison must be an integer",
        ),
        (
            "x = amt != n",
            "the right side of the comparison must be a byte string",
        ),
        ("x = n < 4", "`<` makes no value"),
        ("x = n == 4 == 1", "comparisons do not chain"),
    ] {
        let e = error(&format!("{head}{line}\ndone\n"));
        assert!(e.contains(what), "{line}: {e}");
        assert!(e.starts_with("lib/main.cvs:3:"), "{line}: {e}");
    }
}

/// A comparison where either side comes from a MAC — directly, through a variable, a
/// routine parameter, a slice or a concatenation — never compiles to `beq`/`bne`
/// (variable time), in a value or in an `if`; the mac-compare lint stays silent.
#[test]
fn mac_comparisons_are_constant_time() {
    let head = "input sk: key(des3, mac), amt: bytes[4], card_mac2: bytes[4], alg: bytes[1]\n\
        output ok: u32\nfail_codes { bad_mac = 3 }\n";
    for flow in [
        "ok = mac(sk, amt) == card_mac2\nout ok = ok",
        "ok = card_mac2 != mac(sk, amt)\nout ok = ok",
        "m = mac(sk, amt)\nif m == card_mac2 {\n    out ok = 1\n}",
        "m = mac(sk, amt)\nif m[0..2] != card_mac2[0..2] fail bad_mac",
        "m = mac(sk, amt) ++ [00]\nif card_mac2 ++ [00] == m fail bad_mac",
        "routine check(x) {\n    if x != card_mac2 fail bad_mac\n}\ncheck(mac(sk, amt))",
        "mac(sk, amt) -> a:2 b:2\nif a == card_mac2[0..2] fail bad_mac",
    ] {
        let a = build(&format!("{head}{flow}\nif alg == [01] fail 9\ndone\n")).unwrap();
        let listing = disassemble(&a.script);
        assert!(listing.contains("cteq"), "{flow}\n{listing}");
        // The one `beq`/`bne` left is the comparison of `alg` (no MAC in it).
        let branches = listing
            .lines()
            .filter(|l| l.trim_start().starts_with("beq") || l.trim_start().starts_with("bne"))
            .count();
        assert_eq!(branches, 1, "{flow}\n{listing}");
        assert!(a.warnings.is_empty(), "{flow}: {:?}", a.warnings);
    }
}

/// An unknown name of any kind suggests the closest one declared.
#[test]
fn unknown_names_suggest_the_closest() {
    let head = "input serial: bytes[8], amount: u32\noutput card_id: bytes\n\
        const GET_BALANCE = [80 5C 00 02 04]\nfail_codes { refused = 4 }\n\
        routine select_app() {\n    done\n}\n";
    for (line, want) in [
        (
            "x = serail",
            "unknown name `serail`; did you mean `serial`?",
        ),
        (
            "x = amonut + 1",
            "unknown name `amonut`; did you mean `amount`?",
        ),
        ("x = GET_BALANSE", "did you mean `GET_BALANCE`?"),
        (
            "fail refsued",
            "unknown failure code `refsued` (declare it in `fail_codes { … }`); did you mean `refused`?",
        ),
        (
            "select_ap()",
            "unknown routine `select_ap`; did you mean `select_app`?",
        ),
        ("out card_di = serial", "did you mean `card_id`?"),
        (
            "x = mca(serial, serial)",
            "`mca` is not a builtin function (routines are statements); did you mean `mac`?",
        ),
        ("x = terminal", "unknown name `terminal`"),
    ] {
        let e = error(&format!("{head}{line}\ndone\n"));
        assert!(e.contains(want), "{line}: {e}");
    }
    let e = error(&format!("{head}x = terminal\ndone\n"));
    assert!(!e.contains("did you mean"), "{e}");
    let e = error("const A = [01]\nconst B = AA\ndone\n");
    assert!(e.contains("did you mean `A`?"), "{e}");
}
