//! The reader-side tools as a PC/SC user would try them, without a PC/SC stack: the
//! `--trace` output (header, status-word meanings, air time) replays as it is, an
//! `unknown` outcome names the recovery command, `cardvm apdu --sim` sends raw APDUs, and
//! the SM4 city's cards carry their own city code. The same tools over pcscd + vpcd are in
//! `tests/pcsc_tools.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SELECT_PURSE: &str = "00A4040009A0000000038698070100";

fn cardvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .current_dir(ROOT)
        .args(args)
        .output()
        .expect("cardvm runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(args: &[&str]) -> Output {
    let out = cardvm(args);
    assert!(
        out.status.success(),
        "cardvm {args:?} failed:\n{}",
        text(&out)
    );
    out
}

fn tmp(test: &str, name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("cardvm-reader-tools-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of a city's card, so the test can change it.
fn card(test: &str, city: &str) -> PathBuf {
    let p = tmp(test, "card.toml");
    std::fs::copy(format!("{ROOT}/scripts/{city}/card.toml"), &p).unwrap();
    p
}

#[test]
fn the_trace_of_a_run_replays_as_it_is() {
    let card = card("trace", "city0731-des3");
    let dir = "scripts/city0731-des3";
    let load = format!("{dir}/load.casm");
    let data = format!("{dir}/load.toml");
    let first = ok(&["run", &load, "--data", &data, "--sim", s(&card), "--trace"]);
    let trace = String::from_utf8_lossy(&first.stderr).into_owned();
    let lines: Vec<&str> = trace.lines().collect();
    assert!(
        lines[0].starts_with("# reader: simulated card ")
            && lines[1].starts_with("# atr: 3B")
            && lines[2] == "# protocol: simulated",
        "{trace}"
    );
    assert!(trace.contains("90 00   ("), "{trace}");
    assert!(
        trace.contains("  # success"),
        "status-word meaning: {trace}"
    );
    assert!(trace.contains("# modelled air time"), "{trace}");
    let receipt: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(receipt["outcome"], "committed");

    // Saved as is, the whole output replays: the same receipt fields again.
    let saved = tmp("trace", "load.trace");
    std::fs::write(&saved, &trace).unwrap();
    let again = ok(&["run", &load, "--data", &data, "--replay", s(&saved)]);
    let replayed: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(replayed["outcome"], "committed", "{replayed}");
    assert_eq!(replayed["fields"], receipt["fields"]);
}

#[test]
fn an_unknown_outcome_names_the_recovery_command() {
    let card = card("unknown", "city0731-des3");
    let dir = "scripts/city0731-des3";
    let load = format!("{dir}/load.casm");
    let data = format!("{dir}/load.toml");
    let first = ok(&["run", &load, "--data", &data, "--sim", s(&card), "--trace"]);
    // The same exchange, torn at CREDIT FOR LOAD (the commit point): `<< !!` replays as
    // a card that left during the command.
    let trace = String::from_utf8_lossy(&first.stderr).into_owned();
    let mut torn = String::new();
    for l in trace.lines() {
        torn.push_str(l);
        torn.push('\n');
        if l.starts_with(">> 80 52") {
            torn.push_str("<< !! card removed during the exchange (tearing)\n");
            break;
        }
    }
    let saved = tmp("unknown", "torn.trace");
    std::fs::write(&saved, &torn).unwrap();
    let out = cardvm(&["run", &load, "--data", &data, "--replay", s(&saved)]);
    assert!(!out.status.success());
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["outcome"], "unknown", "{receipt}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("transaction unknown")
            && err.contains(&format!(
                "cardvm run {dir}/recover.casm --data {dir}/recover.toml"
            )),
        "{err}"
    );
}

#[test]
fn apdu_sends_raw_commands_and_names_status_words() {
    let card = card("apdu", "city0731-des3");
    let out = ok(&[
        "apdu",
        "--sim",
        s(&card),
        "-s",
        SELECT_PURSE,
        "-s",
        "80 5C 00 02 04",
        "-s",
        "00B0990000",
    ]);
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(o.starts_with("# reader: simulated card "), "{o}");
    assert!(
        o.contains("> 80 5C 00 02 04\n< 00 00 01 F4 90 00 (success)"),
        "{o}"
    );
    // A wrong SFI: the card's status word and its meaning, exit 0 (as opensc-tool).
    assert!(o.contains("6A 82 (file or application not found)"), "{o}");
    // Not an APDU: refused before anything is sent.
    let bad = cardvm(&["apdu", "--sim", s(&card), "-s", "80"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("-s 80"), "{}", text(&bad));
}

#[test]
fn the_sm4_citys_cards_say_their_own_city() {
    // EF 0015 bytes 0..4: issuer code and city code.
    for profile in [
        "scripts/city0755-sm4/card.toml",
        "scripts/cards/cpu_sm4.toml",
    ] {
        let out = ok(&[
            "apdu",
            "--sim",
            profile,
            "-s",
            SELECT_PURSE,
            "-s",
            "00B095001E",
        ]);
        let o = String::from_utf8_lossy(&out.stdout);
        assert!(
            o.contains("> 00 B0 95 00 1E\n< 07 55 07 55 "),
            "{profile}: {o}"
        );
    }
    let new = tmp("sm4", "new.toml");
    ok(&[
        "sim",
        "new",
        "--kind",
        "cpu",
        "--profile",
        "sm4",
        "-o",
        s(&new),
    ]);
    let out = ok(&[
        "apdu",
        "--sim",
        s(&new),
        "-s",
        SELECT_PURSE,
        "-s",
        "00B095001E",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("< 07 55 07 55 "),
        "{}",
        text(&out)
    );
    let des3 = tmp("sm4", "des3.toml");
    ok(&["sim", "new", "--kind", "cpu", "-o", s(&des3)]);
    let out = ok(&[
        "apdu",
        "--sim",
        s(&des3),
        "-s",
        SELECT_PURSE,
        "-s",
        "00B095001E",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("< 07 31 07 31 "));
}

/// `sim new --kind psam` writes a PSAM profile that `run --sam-sim` uses: the purchase
/// carries the new PSAM's terminal number and sequence; without the purchase master the
/// command refuses with one line and writes nothing.
#[test]
fn sim_new_writes_a_psam_that_runs_a_purchase() {
    let psam = tmp("psam", "psam.toml");
    let refused = cardvm(&["sim", "new", "--kind", "psam", "-o", s(&psam)]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("--purchase-key"),
        "{}",
        text(&refused)
    );
    assert!(!psam.exists());
    ok(&[
        "sim",
        "new",
        "--kind",
        "psam",
        "--profile",
        "sm4",
        "--purchase-key",
        "11223344556677888877665544332211",
        "--terminal",
        "000000000007",
        "--seq",
        "41",
        "-o",
        s(&psam),
    ]);
    let card = tmp("psam", "card.toml");
    std::fs::copy(format!("{ROOT}/scripts/city0755-sm4/psam_card.toml"), &card).unwrap();
    let out = ok(&[
        "run",
        "scripts/city0755-sm4/psam_purchase.cvs",
        "--data",
        "scripts/city0755-sm4/psam_purchase.toml",
        "--sim",
        s(&card),
        "--sam-sim",
        s(&psam),
        "--save",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "committed", "{}", text(&out));
    assert_eq!(r["fields"]["terminal_id"], "000000000007");
    assert_eq!(r["fields"]["terminal_seq"], "00000029");
    assert_eq!(r["fields"]["mac2_ok"], 1);
    let saved = std::fs::read_to_string(&psam).unwrap();
    assert!(saved.contains("seq = 42"), "{saved}");
}
