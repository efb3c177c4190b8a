//! `cardvm run --trace-vm` on `.casm`/`.cvs`/`.toml` sources: every instruction with its source
//! line, register changes, key slots as redacted handles, the APDUs, and a failure report
//! naming the source line and the last APDU exchange.
#![cfg(feature = "cli")]

use std::process::Command;

fn run(card: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args([
            "run",
            "scripts/city0731-des3/load.casm",
            "--data",
            "scripts/city0731-des3/load.toml",
            "--sim",
            card,
            "--trace-vm",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn trace_vm_shows_instructions_source_lines_registers_and_apdus() {
    let (ok, err) = run("scripts/city0731-des3/card.toml");
    assert!(ok, "{err}");
    assert!(
        err.contains("ldkey  k0, dlk") && err.contains("ep_load.casm:26: ldkey  load_key, dlk"),
        "{err}"
    );
    assert!(err.contains("k0=<des3 load key>"), "{err}");
    assert!(err.contains("r5=10000 (0x2710)"), "{err}");
    assert!(err.contains(">> 80 50 00 02 0B 01 00 00 27 10"), "{err}");
    assert!(err.contains("halt"), "{err}");
    // Key bytes never appear (the DLK and DTK of the data script).
    for key in [
        "3F 01 3F 01",
        "3F013F01",
        "00 11 22 33 44 55 66 77",
        "0011223344556677",
    ] {
        assert!(!err.contains(key), "key bytes in the trace: {key}");
    }
}

#[test]
fn trace_vm_failure_report_names_the_source_line_and_last_apdu() {
    let dir = std::env::temp_dir().join(format!("cardvm-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let card = dir.join("card.toml");
    let text = std::fs::read_to_string("scripts/city0731-des3/card.toml")
        .unwrap()
        .replace("locked = false", "locked = true");
    std::fs::write(&card, text).unwrap();
    let (ok, err) = run(card.to_str().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(
        err.contains("-- failed at scripts/common/ep_load.casm:114: fail   0x08"),
        "{err}"
    );
    assert!(
        err.contains("last APDU exchange: 80 50 00 02 -> 9303"),
        "{err}"
    );
}

/// A high-level script traces with its own lines: the `.cvs` file, line and text of each
/// instruction, never the generated assembly; a failure names the `.cvs` line.
#[test]
fn trace_vm_on_a_high_level_script_shows_its_lines() {
    let out = Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args([
            "run",
            "scripts/city0731-des3/load.cvs",
            "--data",
            "scripts/city0731-des3/load.toml",
            "--sim",
            "scripts/city0731-des3/card.toml",
            "--trace-vm",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("purse_load.cvs:24: sk = session_key(dlk, rnd ++ atc2 ++ [80 00])"),
        "{err}"
    );
    assert!(err.contains("purse.cvs:22: apdu READ_EF15"), "{err}");
    assert!(!err.contains(".cvs.casm"), "{err}");
    assert!(!err.contains("source not available"), "{err}");
    for key in ["3F 01 3F 01", "3F013F01", "00 11 22 33 44 55 66 77"] {
        assert!(!err.contains(key), "key bytes in the trace: {key}");
    }
}

// ---------------------------------------------------------------------------------
// Debug info never opens files that the bytecode names (security review: a crafted
// `.cvm` disclosed the reader's key file through `--trace-vm`, named `/dev/zero` to use
// gigabytes, and a FIFO to hang the run). Each test below is that attack.

use cardvm::asm::{AsmOptions, assemble_file};
use cardvm::script::{CommandScript, DebugFile};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const LOAD: &str = "scripts/city0731-des3/load.casm";
const DATA: &str = "scripts/city0731-des3/load.toml";
const CARD: &str = "scripts/city0731-des3/card.toml";
/// In the stand-in for the reader's key file; must never reach the output.
const MARKER: &str = "CARDVM-SECRET-7d41e09b";
/// Far above an honest run in a debug build on a loaded machine; an endless read of a
/// FIFO or a device ends here, and the test fails.
const DEADLINE: Duration = Duration::from_secs(90);
/// Address-space limit for the child (KiB): reading `/dev/zero` to the end dies here.
const MEMORY_KIB: u64 = 1 << 20;

struct Tmp(PathBuf);

impl Tmp {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cardvm-trace-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cardvm ARGS` with memory limited to [`MEMORY_KIB`], stdin closed, killed (and
/// the test failed) if it outlives [`DEADLINE`].
fn cardvm_bounded(tmp: &Tmp, args: &[&str]) -> Run {
    let (out, err) = (tmp.path("stdout"), tmp.path("stderr"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cardvm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cardvm {args:?} still running after {DEADLINE:?} (killed); stderr so far:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err).unwrap()).into_owned(),
    }
}

/// `run CMD --data load.toml --sim card.toml --trace-vm EXTRA...`.
fn trace_run(tmp: &Tmp, command: &str, extra: &[&str]) -> Run {
    let mut args = vec!["run", command, "--data", DATA, "--sim", CARD, "--trace-vm"];
    args.extend_from_slice(extra);
    cardvm_bounded(tmp, &args)
}

/// The load script as `asm -g` builds it.
fn honest_script() -> CommandScript {
    let a = assemble_file(Path::new(LOAD), &AsmOptions { debug: true }).unwrap();
    assert_eq!(a.script.debug.as_ref().unwrap().files.len(), 3);
    a.script
}

/// The load script whose debug section names `names` (one per file, repeating the
/// last) with the given source hash: the crafted `.cvm`.
fn crafted(tmp: &Tmp, file: &str, names: &[&str], sm3: [u8; 32]) -> String {
    let mut s = honest_script();
    let dbg = s.debug.as_mut().unwrap();
    for (i, f) in dbg.files.iter_mut().enumerate() {
        *f = DebugFile {
            name: names[i.min(names.len() - 1)].to_string(),
            sm3,
        };
    }
    std::fs::write(tmp.path(file), s.encode()).unwrap();
    tmp.s(file)
}

/// A stand-in for the reader's SM2 key file: every line carries [`MARKER`], so any
/// line a trace showed from it would.
fn secret_file(tmp: &Tmp) -> (String, Vec<u8>) {
    let text: String = (0..400)
        .map(|i| format!("reader key line {i}: {MARKER}\n"))
        .collect();
    std::fs::write(tmp.path("reader.key"), &text).unwrap();
    (tmp.s("reader.key"), text.into_bytes())
}

fn assert_committed_without_marker(r: &Run, marker: &str) {
    assert!(
        r.ok,
        "the run must not fail because of debug info:\n{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("\"outcome\": \"committed\""),
        "{}",
        r.stdout
    );
    assert!(
        !r.all().contains(marker),
        "file contents disclosed:\n{}",
        r.all()
    );
}

#[test]
fn crafted_cvm_naming_the_reader_key_file_never_shows_it() {
    let tmp = Tmp::new("secret");
    let (secret, bytes) = secret_file(&tmp);
    // The attacker's best case: even the hash of the secret file is right.
    let cvm = crafted(&tmp, "evil.cvm", &[&secret], cardvm::crypto::sm3(&bytes));
    let r = trace_run(&tmp, &cvm, &[]);
    assert_committed_without_marker(&r, MARKER);
    assert!(r.stderr.contains("(source not available: "), "{}", r.stderr);
    assert!(r.stderr.contains("ldkey  k0, dlk"), "{}", r.stderr);
    // --step takes the same path.
    let r = cardvm_bounded(
        &tmp,
        &["run", &cvm, "--data", DATA, "--sim", CARD, "--step"],
    );
    assert_committed_without_marker(&r, MARKER);
}

#[test]
fn crafted_version_1_debug_section_naming_the_key_file_runs_without_lines() {
    let tmp = Tmp::new("v1");
    let (secret, _) = secret_file(&tmp);
    // Encoded by hand as the old `asm -g` wrote it: section 05, names and rows, no hashes.
    let mut s = honest_script();
    let rows = s.debug.take().unwrap().lines;
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&(secret.len() as u16).to_be_bytes());
    body.extend_from_slice(secret.as_bytes());
    body.extend_from_slice(&(rows.len() as u32).to_be_bytes());
    for e in &rows {
        body.extend_from_slice(&e.offset.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&e.line.to_be_bytes());
    }
    let mut bytes = s.encode();
    bytes.push(0x05);
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    std::fs::write(tmp.path("old.cvm"), &bytes).unwrap();
    let r = trace_run(&tmp, &tmp.s("old.cvm"), &[]);
    assert_committed_without_marker(&r, MARKER);
    assert!(
        r.stderr.contains("unsupported debug info version 1"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("code offset 0 (source not available: unsupported debug info version 1)"),
        "{}",
        r.stderr
    );
}

#[cfg(unix)]
fn fifo(tmp: &Tmp) -> String {
    let path = tmp.s("pipe.casm");
    let st = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(st.success(), "mkfifo failed");
    path
}

#[cfg(unix)]
#[test]
fn crafted_cvm_naming_dev_zero_and_a_fifo_finishes_in_bounded_memory() {
    let tmp = Tmp::new("devzero");
    let pipe = fifo(&tmp);
    let cvm = crafted(
        &tmp,
        "evil.cvm",
        &["/dev/zero", &pipe, "/dev/stdin"],
        [7; 32],
    );
    let r = trace_run(&tmp, &cvm, &[]);
    assert_committed_without_marker(&r, MARKER);
    assert!(r.stderr.contains("(source not available: "), "{}", r.stderr);
    // The same files passed as --source (also through a symlink) are refused unread.
    std::os::unix::fs::symlink(&pipe, tmp.path("link.casm")).unwrap();
    let link = tmp.s("link.casm");
    let r = trace_run(
        &tmp,
        &cvm,
        &[
            "--source",
            "/dev/zero",
            "--source",
            &pipe,
            "--source",
            &link,
        ],
    );
    assert_committed_without_marker(&r, MARKER);
    assert!(
        r.stderr
            .contains("--source /dev/zero: not used: not a regular file (a device)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "--source {link}: not used: not a regular file (a FIFO)"
        )),
        "{}",
        r.stderr
    );
}

#[cfg(unix)]
#[test]
fn casm_including_a_fifo_or_a_device_fails_promptly() {
    let tmp = Tmp::new("include");
    fifo(&tmp);
    std::os::unix::fs::symlink("/dev/zero", tmp.path("zero.casm")).unwrap();
    // A FIFO in the include root is not opened; a device is outside it (named
    // directly, or through a symlink in the root).
    for (target, why) in [
        ("pipe.casm", "not a regular file (a FIFO)"),
        ("/dev/zero", "an absolute path"),
        ("zero.casm", "outside the include root"),
    ] {
        std::fs::write(
            tmp.path("main.casm"),
            format!(".include \"{target}\"\nhalt\n"),
        )
        .unwrap();
        let main = tmp.s("main.casm");
        let r = cardvm_bounded(&tmp, &["run", &main, "--sim", CARD, "--trace-vm"]);
        assert!(!r.ok);
        assert!(r.stderr.contains(why), "{}", r.stderr);
    }
}

#[test]
fn source_whose_hash_differs_shows_no_lines_and_the_right_one_does() {
    let tmp = Tmp::new("source");
    let cvm = tmp.s("load.cvm");
    let asm = cardvm_bounded(&tmp, &["asm", LOAD, "-g", "-o", &cvm]);
    assert!(asm.ok, "{}", asm.stderr);
    // Without sources: every line says why it has no text, and the run goes on.
    let r = trace_run(&tmp, &cvm, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "scripts/common/ep_load.casm:26: code offset 0 (source not available: not given)"
        ) && r.stderr.contains(
            "no source lines for scripts/common/ep_load.casm: no source given matches its SM3"
        ),
        "{}",
        r.stderr
    );
    // A changed copy of the included flow: not the text that was assembled.
    let flow = std::fs::read_to_string("scripts/common/ep_load.casm").unwrap();
    let changed = flow.replace(
        "ldkey  load_key, dlk",
        "ldkey  load_key, dlk   ; TAMPERED-c0ffee",
    );
    assert_ne!(flow, changed);
    std::fs::write(tmp.path("ep_load.casm"), changed).unwrap();
    let r = trace_run(&tmp, &cvm, &["--source", &tmp.s("ep_load.casm")]);
    assert_committed_without_marker(&r, "TAMPERED-c0ffee");
    assert!(
        r.stderr
            .contains("ep_load.casm differs from the assembled source (SM3 mismatch)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("ep_load.casm:26: ldkey"), "{}", r.stderr);
    // Larger than the limit: refused with a typed reason, the run completes.
    std::fs::write(tmp.path("huge.casm"), vec![b';'; (1 << 20) + 1]).unwrap();
    let r = trace_run(&tmp, &cvm, &["--source", &tmp.s("huge.casm")]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("not used: larger than 1048576 bytes"),
        "{}",
        r.stderr
    );
    // The right files: lines shown, including the included ones.
    let r = trace_run(
        &tmp,
        &cvm,
        &[
            "--source",
            LOAD,
            "--source",
            "scripts/common/ep_load.casm",
            "--source",
            "scripts/common/purse.casm",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("scripts/common/ep_load.casm:26: ldkey  load_key, dlk"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("source not available"), "{}", r.stderr);
}

#[test]
fn casm_run_shows_lines_of_included_files_and_ignores_names_it_declares() {
    let tmp = Tmp::new("casm");
    let (secret, bytes) = secret_file(&tmp);
    // Included lines map when a .casm runs directly (the assembler hands its texts over).
    let r = trace_run(&tmp, LOAD, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("scripts/common/purse.casm:") && !r.stderr.contains("not available"),
        "{}",
        r.stderr
    );
    // A .casm whose explicit debug directives name the key file (with its hash) gets no
    // lines from it: only texts the assembler read are shown.
    let h: Vec<String> = cardvm::crypto::sm3(&bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let text = format!(
        ".debug\n.file \"{secret}\" [{}]\n.loc 0 1\n    halt\n",
        h.join(" ")
    );
    std::fs::write(tmp.path("evil.casm"), text).unwrap();
    let r = cardvm_bounded(
        &tmp,
        &["run", &tmp.s("evil.casm"), "--sim", CARD, "--trace-vm"],
    );
    assert_committed_without_marker(&r, MARKER);
    assert!(r.stderr.contains("(source not available: "), "{}", r.stderr);
}

#[test]
fn debug_file_names_cannot_drive_the_terminal() {
    let tmp = Tmp::new("ansi");
    let evil = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[31mscripts/x.casm\u{202e}\u{9b}";
    let cvm = crafted(&tmp, "ansi.cvm", &[evil], [3; 32]);
    let r = trace_run(&tmp, &cvm, &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("\\u{1b}]0;owned\\u{7}"), "{}", r.stderr);
    for c in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(!r.all().contains(c), "{c:?} printed raw:\n{}", r.all());
    }
    // `verify` prints debug locations too.
    let mut s = honest_script();
    for f in &mut s.debug.as_mut().unwrap().files {
        f.name = evil.to_string();
    }
    s.header.key_slots = 0; // the first instruction (a `ldkey`) no longer verifies
    std::fs::write(tmp.path("bad.cvm"), s.encode()).unwrap();
    let r = cardvm_bounded(&tmp, &["verify", &tmp.s("bad.cvm")]);
    assert!(!r.ok);
    assert!(r.stderr.contains("\\u{1b}]0;owned"), "{}", r.stderr);
    assert!(!r.all().contains('\u{1b}'), "{}", r.all());
}
