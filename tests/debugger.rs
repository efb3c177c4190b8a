//! The source-level debugger of `cardvm run` on `.cvs` scripts: `--trace-vm` by source
//! line with variable names, `--step` by line (over and into routine calls),
//! `--break FILE:LINE`, the prompt's `print`, `locals` and `bt`, and the failure report
//! that names the line and its variables without any flag. Keys are never shown.
#![cfg(feature = "cli")]

use std::io::Write;
use std::process::{Command, Stdio};

const PURCHASE: &str = "scripts/city0731-des3/purchase.cvs";
const PURCHASE_DATA: &str = "scripts/city0731-des3/purchase.toml";
const LOAD: &str = "scripts/city0731-des3/load.cvs";
const LOAD_DATA: &str = "scripts/city0731-des3/load.toml";
const CARD: &str = "scripts/city0731-des3/card.toml";

/// Key bytes of the example data scripts (DLK, DPK, DTK): never in any output.
const KEY_BYTES: [&str; 4] = ["3F 01 3F 01", "3F013F01", "00 11 22 33", "0011223344"];

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `cardvm ARGS` with `input` on stdin (then end of input).
fn cardvm(args: &[&str], input: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The debugger may finish before reading everything: a broken pipe is fine.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for key in KEY_BYTES {
        assert!(
            !run.stderr.contains(key) && !run.stdout.contains(key),
            "key bytes {key} shown:\n{}",
            run.stderr
        );
    }
    run
}

fn purchase(extra: &[&str], input: &str) -> Run {
    let mut args = vec!["run", PURCHASE, "--data", PURCHASE_DATA, "--sim", CARD];
    args.extend_from_slice(extra);
    cardvm(&args, input)
}

/// The receipt's field `name` (a hex string) from stdout.
fn receipt_hex(stdout: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let hex = v["fields"][name].as_str().unwrap().to_string();
    // The debugger prints bytes spaced: C1 6B D5 BD.
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn trace_vm_on_cvs_names_variables_by_line_and_redacts_keys() {
    let r = cardvm(
        &[
            "run",
            LOAD,
            "--data",
            LOAD_DATA,
            "--sim",
            CARD,
            "--trace-vm",
        ],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    // Each source line once, then what it set, by name.
    assert!(
        r.stderr.contains("purse_load.cvs:16: amt = amount:u32be\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("line 16  amt = 00 00 27 10\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("line 19  bal = 00 00 01 F4\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("line 27  before = 500 (0x1f4)\n"),
        "{}",
        r.stderr
    );
    // Keys: algorithm and usage only.
    assert!(
        r.stderr.contains("line 24  dlk = <des3 load key>\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("line 24  sk = <des load-session key>\n"),
        "{}",
        r.stderr
    );
    // No registers or instructions in the source view; they stay under =instr.
    assert!(
        !r.stderr.contains("r5=") && !r.stderr.contains("@0 "),
        "{}",
        r.stderr
    );
    let r = cardvm(
        &[
            "run",
            LOAD,
            "--data",
            LOAD_DATA,
            "--sim",
            CARD,
            "--trace-vm=instr",
        ],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("k0=<des3 load key>"), "{}", r.stderr);
    assert!(r.stderr.contains("@0 "), "{}", r.stderr);
}

/// The "done when": a torn purchase debugged at the `.cvs` level with a
/// breakpoint and `print`.
#[test]
fn a_torn_purchase_is_debugged_with_a_breakpoint_and_print() {
    let r = purchase(
        &["--tear-after", "5", "--break", "purse_purchase.cvs:46"],
        "print m1\nprint before\nprint dpk\nprint card_tac\nprint serail\nprint nothing_like_it\nbt\ncontinue\n",
    );
    assert!(!r.ok, "a torn purchase is not a success");
    assert!(
        r.stdout.contains("\"outcome\": \"unknown\""),
        "{}",
        r.stdout
    );
    let e = &r.stderr;
    assert!(
        e.contains(
            "-- breakpoint scripts/common/purse_purchase.cvs:46: apdu 80 54 01 00 [{terminal_seq} {now} {m1}]"
        ),
        "{e}"
    );
    // MAC1 as the receipt reports it, by name, before the DEBIT goes out.
    let m1 = receipt_hex(&r.stdout, "mac1");
    assert!(e.contains(&format!("m1 = {m1}   (bytes)")), "{e}");
    assert!(e.contains("before = 500 (0x1f4)   (int)"), "{e}");
    // The purchase key was used at line 39 and is dead here; the card's TAC is not set yet.
    assert!(
        e.contains("`dpk` holds no value here (it is live at lines 39-39)"),
        "{e}"
    );
    assert!(e.contains("`card_tac` holds no value here"), "{e}");
    assert!(
        e.contains("no variable `serail`; did you mean `serial`?"),
        "{e}"
    );
    assert!(
        e.contains("no variable `nothing_like_it` (live here: "),
        "{e}"
    );
    assert!(
        e.contains("#0  flow at scripts/common/purse_purchase.cvs:46"),
        "{e}"
    );
    // The run goes on, the card is torn, and the report names the line and its values.
    assert!(
        e.contains("-- unknown at scripts/common/purse_purchase.cvs:46"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "--   on this line: terminal_seq = 00 00 00 01, now = 20 26 11 23 12 05 00, m1 = {m1}"
        )),
        "{e}"
    );
}

#[test]
fn a_failure_names_its_cvs_line_and_variables_without_any_flag() {
    let r = purchase(&["--tear-after", "5"], "");
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("-- unknown at scripts/common/purse_purchase.cvs:46: apdu 80 54 01 00"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("--   on this line: terminal_seq = 00 00 00 01"),
        "{}",
        r.stderr
    );
    // Only the report: no trace, no prompt.
    assert!(!r.stderr.contains("(cardvm)"), "{}", r.stderr);
    assert!(!r.stderr.contains("line 28  amt"), "{}", r.stderr);
}

/// A status-word handler names no variable; the report shows the statement it checked.
#[test]
fn a_failed_status_word_check_shows_the_statement_before_it() {
    let dir = std::env::temp_dir().join(format!("cardvm-debugger-sw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let card = dir.join("locked.toml");
    let text = std::fs::read_to_string(CARD)
        .unwrap()
        .replace("locked = false", "locked = true");
    std::fs::write(&card, text).unwrap();
    let r = cardvm(
        &[
            "run",
            LOAD,
            "--data",
            LOAD_DATA,
            "--sim",
            card.to_str().unwrap(),
        ],
        "",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("-- failed at scripts/common/purse_load.cvs:21: on 9303 fail locked\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "--   after scripts/common/purse_load.cvs:19: amt = 00 00 27 10, terminal = 00 00 00 00 00 01\n"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("on this line"), "{}", r.stderr);
}

#[test]
fn step_goes_over_routine_calls_and_step_into_enters_them_with_a_backtrace() {
    // Enter at line 17 (`apdu SELECT_PURSE`) goes over `read_card_id()` (line 18, whose
    // code is the routine's body) and `before_init()` (empty here) to line 21: the
    // routine runs, its lines are traced, and nothing stops in it.
    let r = purchase(&["--step"], "\n\nq\n");
    assert!(r.ok, "{}", r.stderr);
    // What was printed before each prompt, and the source line it stopped at.
    let segments: Vec<&str> = r.stderr.split("(cardvm) ").collect();
    let stop = |k: usize| {
        segments[k]
            .lines()
            .rfind(|l| l.starts_with("scripts/"))
            .unwrap_or_default()
    };
    assert!(segments.len() >= 4, "{}", r.stderr);
    assert_eq!(
        stop(0),
        "scripts/common/purse_purchase.cvs:17: apdu SELECT_PURSE else fail not_selectable"
    );
    assert_eq!(
        stop(1),
        "scripts/common/purse_purchase.cvs:21: if CARD_AUTH == [01] {"
    );
    assert!(
        segments[1].contains("scripts/common/purse.cvs:22: apdu READ_EF15"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("-- running on to the end"),
        "{}",
        r.stderr
    );
    // `step` enters the routine: the backtrace shows it and its call.
    let r = purchase(&["--step"], "s\nbt\np serial\nn\np serial\nc\n");
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "#0  read_card_id at scripts/common/purse.cvs:22\n#1  flow at scripts/common/purse_purchase.cvs:18"
        ),
        "{}",
        r.stderr
    );
    // Before the READ the routine's field holds nothing; after it, the card number.
    let serial = receipt_hex(&r.stdout, "card_id");
    assert!(
        r.stderr.contains("`serial` holds no value here"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("serial = {serial}   (bytes)")),
        "{}",
        r.stderr
    );
}

#[test]
fn breakpoints_are_checked_before_the_run() {
    // No such file: the files the script has are listed; nothing runs.
    let r = purchase(&["--break", "nosuch.cvs:3"], "");
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("--break nosuch.cvs:3: no source file `nosuch.cvs` in the script"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("outcome"), "{}", r.stdout);
    let r = purchase(&["--break", "purse.cvs:x"], "");
    assert!(
        r.stderr.contains("expected FILE:LINE or LINE"),
        "{}",
        r.stderr
    );
    let r = purchase(&["--break", "purse_purchase.cvs:9999"], "");
    assert!(
        r.stderr.contains("no code at or after that line"),
        "{}",
        r.stderr
    );
    // A comment line: the breakpoint moves to the next line with code, and stops there.
    let r = purchase(&["--break", "purse_purchase.cvs:29"], "locals\nc\n");
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "-- breakpoint scripts/common/purse_purchase.cvs:29 has no code: set at line 30"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("-- breakpoint scripts/common/purse_purchase.cvs:30: apdu {INIT_HDR}"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("amt = 00 00 00 FA"), "{}", r.stderr);
    // A line alone is in the main file; a script without debug info has no lines.
    let tmp = std::env::temp_dir().join(format!("cardvm-debugger-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cvm = tmp.join("purchase.cvm");
    let out = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args(["asm", PURCHASE, "-o", cvm.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = cardvm(
        &[
            "run",
            cvm.to_str().unwrap(),
            "--data",
            PURCHASE_DATA,
            "--sim",
            CARD,
            "--break",
            "12",
        ],
        "",
    );
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("--break 12: the script has no debug info"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_prompt_prints_keys_only_as_handles_and_survives_any_input() {
    let r = purchase(
        &["--break", "purse_purchase.cvs:41"],
        "print dpk\nprint sk\nprint\nbreak nosuch:1\nbreak 999\nbreak purse_purchase.cvs:54\nhelp\n\u{1b}[31mbogus\nc\nprint t\nc\n",
    );
    assert!(r.ok, "{}", r.stderr);
    let e = &r.stderr;
    assert!(e.contains("sk = <des purchase-session key>   (key)"), "{e}");
    assert!(e.contains("break nosuch:1: no source file `nosuch`"), "{e}");
    // A line alone is in the main file, which has no code that far down.
    assert!(
        e.contains("break 999: no code at or after that line"),
        "{e}"
    );
    assert!(
        e.contains("-- breakpoint at scripts/common/purse_purchase.cvs:54"),
        "{e}"
    );
    assert!(e.contains("run to the next breakpoint"), "{e}");
    // At line 54 the TAC the reader computed is the card's (the receipt's `tac`).
    let tac = receipt_hex(&r.stdout, "tac");
    assert!(e.contains(&format!("t = {tac}   (bytes)")), "{e}");
    // A control sequence typed at the prompt is echoed escaped, never acted on.
    assert!(e.contains("unknown command `\\u{1b}[31mbogus`"), "{e}");
    assert!(!e.contains('\u{1b}'), "{e}");
}
