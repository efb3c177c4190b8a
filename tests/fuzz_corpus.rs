//! Replays every committed fuzz corpus and crash file through the fuzz-target bodies
//! on stable Rust, so a fixed crash stays fixed.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable corpus file");
            body(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn command_script_corpus() {
    assert!(
        replay("command_script", cardvm::fuzzing::command_script) > 0,
        "no corpus committed"
    );
}

#[test]
fn data_script_corpus() {
    assert!(
        replay("data_script", cardvm::fuzzing::data_script) > 0,
        "no corpus committed"
    );
}

#[test]
fn verify_and_run_corpus() {
    assert!(
        replay("verify_and_run", cardvm::fuzzing::verify_and_run) > 0,
        "no corpus committed"
    );
}
