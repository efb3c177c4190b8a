//! Builds examples/c/city_load.c with the machine's gcc against the static and the
//! shared library and runs it on the 3DES city's load against a simulated card.
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

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(repo())
        .arg("scripts/city0731-des3")
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

fn check_output(stdout: &str) {
    assert!(stdout.contains("\"outcome\": \"committed\""), "{stdout}");
    assert!(stdout.contains("\"balance_after\": 10500"), "{stdout}");
    assert!(
        stdout.contains("load committed: balance 500 -> 10500 fen"),
        "{stdout}"
    );
}

#[test]
fn c_example_static() {
    let lib = lib_dir().join("libcardvm.a");
    assert!(lib.exists(), "{} missing", lib.display());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("city_load_static");
    gcc(&exe, &[lib.to_str().expect("utf-8 path")]);
    check_output(&run(&mut Command::new(&exe)));

    if std::env::var_os("CARDVM_VALGRIND").is_some_and(|v| v == "1") {
        let stdout = run(Command::new("valgrind")
            .args([
                "--leak-check=full",
                "--errors-for-leak-kinds=definite,indirect,possible",
                "--error-exitcode=1",
                "-q",
            ])
            .arg(&exe));
        check_output(&stdout);
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
    check_output(&run(&mut Command::new(&exe)));
}
