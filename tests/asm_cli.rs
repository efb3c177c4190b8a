//! The `asm`, `disasm`, `verify` and `data` commands, run as the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cardvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args(args)
        .output()
        .expect("runs")
}

fn ok(args: &[&str]) -> String {
    let out = cardvm(args);
    assert!(
        out.status.success(),
        "cardvm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-asm-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/examples")
}

#[test]
fn asm_verify_disasm_asm_gives_identical_bytes() {
    let dir = tmp_dir("roundtrip");
    for debug in [false, true] {
        let cvm = dir.join(format!("load-{debug}.cvm"));
        let cvd = dir.join("load.cvd");
        let casm = dir.join(format!("again-{debug}.casm"));
        let cvm2 = dir.join(format!("again-{debug}.cvm"));
        let src = examples().join("load.casm");
        let mut args = vec!["asm", s(&src), "-o", s(&cvm)];
        if debug {
            args.push("-g");
        }
        ok(&args);
        ok(&["data", s(&examples().join("load.toml")), "-o", s(&cvd)]);
        let summary = ok(&["verify", s(&cvm), "--data", s(&cvd)]);
        assert!(summary.contains("ok: "), "{summary}");
        assert!(summary.contains("instructions"), "{summary}");
        assert!(
            summary.contains("registers, 2 key slots, max call depth 0"),
            "{summary}"
        );
        assert!(summary.contains("binds its 4 inputs"), "{summary}");
        // disasm to stdout and to a file agree.
        let text = ok(&["disasm", s(&cvm)]);
        ok(&["disasm", s(&cvm), "-o", s(&casm)]);
        assert_eq!(std::fs::read_to_string(&casm).unwrap(), text);
        assert!(text.contains("pkey"), "{text}");
        assert_eq!(text.contains(".loc "), debug, "{text}");
        ok(&["asm", s(&casm), "-o", s(&cvm2)]);
        assert_eq!(std::fs::read(&cvm).unwrap(), std::fs::read(&cvm2).unwrap());
    }
    // The data script holds keys: owner-only on unix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("load.cvd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    // Balance too, with the default output name.
    let bal = dir.join("balance.casm");
    std::fs::copy(examples().join("balance.casm"), &bal).unwrap();
    std::fs::copy(examples().join("purse.casm"), dir.join("purse.casm")).unwrap();
    ok(&["asm", s(&bal)]);
    let summary = ok(&["verify", s(&dir.join("balance.cvm"))]);
    assert!(summary.contains("3 registers, 0 key slots"), "{summary}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_source_fails_with_file_line_col_and_a_caret() {
    let dir = tmp_dir("bad");
    let bad = dir.join("bad.casm");
    std::fs::write(&bad, ".reg a\n    ldc a, [01]\n    apud a, a\n    halt\n").unwrap();
    let out = cardvm(&["asm", s(&bad), "-o", s(&dir.join("bad.cvm"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let head = format!("{}:3:5: error: unknown mnemonic `apud`", bad.display());
    assert!(
        err.contains(&format!("{head}\n    apud a, a\n    ^")),
        "{err}"
    );
    // The error is printed once, not again in the one-line reason.
    assert_eq!(err.matches("unknown mnemonic").count(), 1, "{err}");
    // The last line is the one-line reason.
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("cardvm: "),
        "{err}"
    );
    assert!(!dir.join("bad.cvm").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn verify_reports_failures_in_one_line() {
    let dir = tmp_dir("verify");
    // Assembles, but falls off the end of the code: the verifier refuses it.
    let src = dir.join("fall.casm");
    std::fs::write(&src, "nop\nnop\n").unwrap();
    let cvm = dir.join("fall.cvm");
    ok(&["asm", s(&src), "-o", s(&cvm), "-g"]);
    let out = cardvm(&["verify", s(&cvm)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("fall.casm:2: at code offset 1: control falls off the end"),
        "{err}"
    );
    // A data script that lacks an input does not bind.
    let toml = dir.join("d.toml");
    std::fs::write(&toml, "amount = 1\n").unwrap();
    let cvd = dir.join("d.cvd");
    ok(&["data", s(&toml), "-o", s(&cvd)]);
    let cvm = dir.join("load.cvm");
    ok(&["asm", s(&examples().join("load.casm")), "-o", s(&cvm)]);
    let out = cardvm(&["verify", s(&cvm), "--data", s(&cvd)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("does not bind: the data script has no field")
    );
    // Garbage is a format error, not a crash.
    std::fs::write(&cvm, b"not a script").unwrap();
    let out = cardvm(&["disasm", s(&cvm)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad magic"));
    // A bad data file names the field.
    std::fs::write(&toml, "amount = -1\n").unwrap();
    let out = cardvm(&["data", s(&toml), "-o", s(&cvd)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("field `amount`"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `cardvm lint` and `asm --lint`: a finding is printed as `file:line:col: lint-name:
/// message` and the exit code is 1; a clean file passes.
#[test]
fn lint_findings_give_exit_code_1_and_annotations() {
    let dir = tmp_dir("lint");
    let bad = dir.join("bad.casm");
    std::fs::write(
        &bad,
        "  ldc r0, [00 A4 04 00]\n  apdu r1, r0\n  jmp end\n  nop\nend: halt\n",
    )
    .unwrap();
    let clean = dir.join("clean.casm");
    std::fs::write(
        &clean,
        "  ldc r0, [00 A4 04 00]\n  apdu r1, r0\n  expect 9000, 1\n  halt\n",
    )
    .unwrap();
    let out = cardvm(&["lint", s(&clean), s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!(
            "{b}:2:1: unchecked-sw: the status word of this `apdu` is never checked (the script halts)\n\
             {b}:4:1: unreachable-code: unreachable code\n",
            b = s(&bad)
        )
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr, "cardvm: 2 lint finding(s)\n");
    assert_eq!(ok(&["lint", s(&clean)]), "");

    // asm --lint: the same annotations on stderr, exit 1, nothing written.
    let cvm = dir.join("bad.cvm");
    let out = cardvm(&["asm", "--lint", s(&bad), "-o", s(&cvm)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{}:2:1: unchecked-sw: ", s(&bad))),
        "{stderr}"
    );
    assert!(!cvm.exists());
    // Without --lint the findings stay warnings.
    let out = cardvm(&["asm", s(&bad), "-o", s(&cvm)]);
    assert!(out.status.success());
    assert!(cvm.exists());
    // A file that does not assemble fails too, with its position.
    let broken = dir.join("broken.casm");
    std::fs::write(&broken, "  apud r1\n").unwrap();
    let out = cardvm(&["lint", s(&broken)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{}:1:3: error: ", s(&broken))),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `asm` takes the high-level language by its extension: the bytecode verifies, `disasm`
/// writes `.casm` that re-assembles to the same bytes (debug section included), and a
/// compile error is one positioned line with the source and a caret, exit non-zero.
#[test]
fn asm_compiles_high_level_scripts() {
    let dir = tmp_dir("cvs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for debug in [false, true] {
        let cvm = dir.join(format!("load-{debug}.cvm"));
        let src = root.join("scripts/city0755-sm4/load.cvs");
        let mut args = vec!["asm", s(&src), "-o", s(&cvm)];
        if debug {
            args.push("-g");
        }
        ok(&args);
        let summary = ok(&["verify", s(&cvm)]);
        assert!(summary.contains("ok: "), "{summary}");
        let casm = dir.join(format!("load-{debug}.casm"));
        ok(&["disasm", s(&cvm), "-o", s(&casm)]);
        let text = std::fs::read_to_string(&casm).unwrap();
        assert_eq!(text.contains(".file \""), debug, "{text}");
        let again = dir.join(format!("again-{debug}.cvm"));
        ok(&["asm", s(&casm), "-o", s(&again)]);
        assert_eq!(std::fs::read(&cvm).unwrap(), std::fs::read(&again).unwrap());
    }
    let bad = dir.join("bad.cvs");
    std::fs::write(&bad, "input k: key(sm4, load)\nx = k ++ [00]\ndone\n").unwrap();
    let out = cardvm(&["asm", s(&bad)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cvs:2:5: error: `k` is a key"), "{err}");
    assert!(err.contains("x = k ++ [00]\n    ^"), "{err}");
    assert_eq!(err.matches("is a key").count(), 1, "{err}");
    assert_eq!(
        err.trim_end().lines().last(),
        Some(format!("cardvm: {}: assembly failed", bad.display()).as_str()),
        "{err}"
    );
    // `run` and `lint` print it once too.
    for args in [vec!["run", s(&bad)], vec!["lint", s(&bad)]] {
        let out = cardvm(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("is a key").count(), 1, "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `include` stays in the include root: absolute paths and `..` out of it are refused,
/// and the error quotes only the including line — nothing of the target file.
#[test]
fn includes_outside_the_root_are_refused_without_quoting_the_target() {
    let dir = tmp_dir("include-root");
    // Lines of the targets that must not appear in any error.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let secret = dir.with_extension("secret.cvs");
    std::fs::write(&secret, "secret-line-91c2 = 1\n").unwrap();
    let secret_name = secret.file_name().unwrap().to_str().unwrap();
    for (ext, kw) in [("cvs", "include"), ("casm", ".include")] {
        for target in [
            "/etc/passwd".to_string(),
            "../../../../etc/passwd".to_string(),
            format!("../{secret_name}"),
        ] {
            let main = dir.join(format!("main.{ext}"));
            let line = format!("{kw} \"{target}\"");
            std::fs::write(&main, format!("{line}\ndone\n")).unwrap();
            for cmd in ["asm", "lint"] {
                let out = cardvm(&[cmd, s(&main)]);
                assert!(!out.status.success(), "{cmd} {target}");
                let err = String::from_utf8_lossy(&out.stderr);
                let head = format!("{}:1:", main.display());
                assert!(err.contains(&head), "{err}");
                assert!(
                    err.contains("an absolute path") || err.contains("outside the include root"),
                    "{err}"
                );
                // The including line is quoted; the target's lines are not.
                assert!(err.contains(&line), "{err}");
                assert!(!err.contains("secret-line-91c2"), "{err}");
                for l in passwd.lines().filter(|l| l.len() > 3) {
                    assert!(!err.contains(l), "{err}");
                }
            }
        }
    }
    std::fs::remove_file(&secret).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The attack: 171 lines of empty routines calling each other ten times. `asm` and
/// `lint` stop at the compile-step budget with a positioned error.
#[test]
fn routine_fan_out_fails_fast_in_asm_and_lint() {
    let dir = tmp_dir("fan-out");
    let mut src = String::from("routine a0() {}\n");
    for i in 1..=14 {
        src.push_str(&format!("routine a{i}() {{\n"));
        src.push_str(&format!("    a{}()\n", i - 1).repeat(10));
        src.push_str("}\n");
    }
    src.push_str("a14()\ndone\n");
    assert_eq!(src.lines().count(), 171);
    let main = dir.join("fan.cvs");
    std::fs::write(&main, src).unwrap();
    for cmd in ["asm", "lint"] {
        let out = cardvm(&[cmd, s(&main)]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let head = format!(
            "{}:170:1: error: this call of routine `a14` expands to more than 250000 compile steps",
            main.display()
        );
        assert!(err.contains(&head), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The help says what works: `lint` and `run --trace-vm` take `.cvs` sources too.
#[test]
fn help_says_lint_and_trace_vm_take_cvs() {
    let lint = String::from_utf8_lossy(&cardvm(&["lint", "--help"]).stdout).into_owned();
    assert!(lint.lines().next().unwrap().contains("`.cvs`"), "{lint}");
    let top = String::from_utf8_lossy(&cardvm(&["--help"]).stdout).into_owned();
    let line = top
        .lines()
        .find(|l| l.trim_start().starts_with("lint "))
        .unwrap();
    assert!(line.contains("`.cvs`"), "{line}");
    let run = String::from_utf8_lossy(&cardvm(&["run", "--help"]).stdout).into_owned();
    // The option's help runs from its line to the next option.
    let at = run.find("--trace-vm[").unwrap();
    let rest = &run[at..];
    let trace_vm = &rest[..rest[1..].find("\n  -").map_or(rest.len(), |e| e + 1)];
    assert!(trace_vm.contains("`.cvs`"), "{trace_vm}");
}
