//! Builds examples/c/city_load.c with the machine's gcc against the static and the
//! shared library and runs it on the 3DES city's load against a simulated card,
//! journaling the receipt (each run into a fresh journal, which is then read back).
//! With `CARDVM_VALGRIND=1` the static build also runs under
//! `valgrind --leak-check=full --error-exitcode=1` (see .ci/valgrind.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds libcardvm.a and libcardvm.so: `cargo test` links integration tests against
/// an rlib, which this crate does not produce, so it does not build them by itself.
fn build_libraries() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "cardvm-capi", "--lib", "--manifest-path"])
            .arg(repo().join("Cargo.toml"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the C libraries failed");
    });
}

/// target/<profile>/, where cargo put libcardvm.a and libcardvm.so (the test binary
/// itself is in target/<profile>/deps/).
fn lib_dir() -> PathBuf {
    build_libraries();
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn gcc(out: &Path, link: &[&str]) {
    let repo = repo();
    let status = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-I"])
        .arg(repo.join("capi/include"))
        .arg(repo.join("examples/c/city_load.c"))
        .args(link)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed for {}", out.display());
}

/// A fresh journal path for one run of the example.
fn journal(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.journal"));
    for suffix in ["", ".ack", ".new"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    path
}

fn run(cmd: &mut Command, journal: &Path) -> String {
    let out = cmd
        .current_dir(repo())
        .arg("scripts/city0731-des3")
        .arg(journal)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn check_output(stdout: &str, journal: &Path) {
    assert!(stdout.contains("\"outcome\": \"committed\""), "{stdout}");
    assert!(stdout.contains("\"balance_after\": 10500"), "{stdout}");
    assert!(
        stdout.contains("load committed: balance 500 -> 10500 fen"),
        "{stdout}"
    );
    assert!(stdout.contains("\"mode\": \"development\""), "{stdout}");
    assert!(stdout.contains("receipt journaled as entry 1"), "{stdout}");
    // The journal holds exactly the receipt the example printed.
    let j = cardvm_core::journal::Journal::open_read_only(journal).expect("the journal opens");
    let entries: Vec<_> = j
        .entries()
        .map(|e| e.expect("a valid entry").payload)
        .collect();
    assert_eq!(entries.len(), 1, "one receipt in {}", journal.display());
    let receipt = cardvm_core::receipt::Receipt::from_bytes(&entries[0]).expect("a receipt");
    assert!(
        stdout.contains(&receipt.to_json()),
        "journaled receipt differs from the printed one:\n{stdout}"
    );
}

#[test]
fn c_example_static() {
    let lib = lib_dir().join("libcardvm.a");
    assert!(lib.exists(), "{} missing", lib.display());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("city_load_static");
    gcc(&exe, &[lib.to_str().expect("utf-8 path")]);
    let j = journal("static");
    check_output(&run(&mut Command::new(&exe), &j), &j);

    if std::env::var_os("CARDVM_VALGRIND").is_some_and(|v| v == "1") {
        let j = journal("valgrind");
        let stdout = run(
            Command::new("valgrind")
                .args([
                    "--leak-check=full",
                    "--errors-for-leak-kinds=definite,indirect,possible",
                    "--error-exitcode=1",
                    "-q",
                ])
                .arg(&exe),
            &j,
        );
        check_output(&stdout, &j);
    }
}

#[test]
fn c_example_shared() {
    let dir = lib_dir();
    assert!(dir.join("libcardvm.so").exists());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("city_load_shared");
    let dir_s = dir.to_str().expect("utf-8 path");
    gcc(
        &exe,
        &[
            &format!("-L{dir_s}"),
            &format!("-Wl,-rpath,{dir_s}"),
            "-lcardvm",
        ],
    );
    let j = journal("shared");
    check_output(&run(&mut Command::new(&exe), &j), &j);
}
