//! `cardvm run --trace-vm` on `.casm`/`.toml` sources: every instruction with its source
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
        err.contains("-- failed at scripts/common/ep_load.casm:113: fail   0x08"),
        "{err}"
    );
    assert!(
        err.contains("last APDU exchange: 80 50 00 02 -> 9303"),
        "{err}"
    );
}
