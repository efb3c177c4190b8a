//! End to end through the CLI: assemble, compile data, seal for a reader, run against a
//! recorded card exchange, and verify the signed receipt.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cardvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args(args)
        .output()
        .expect("cardvm runs")
}

fn ok(args: &[&str]) -> Output {
    let out = cardvm(args);
    assert!(
        out.status.success(),
        "cardvm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A file in a directory of this test's own (tests run in parallel).
fn tmp(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardvm-cli-run-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The published PBOC load exchange (reference/epurse.md): the card answers INITIALIZE
/// FOR LOAD with MAC1 6C394D64, which the script checks before it sends MAC2.
const TRACE: &str = "\
>> 00 A4 04 00 09 A0 00 00 00 03 86 98 07 01 00
<< 6F 00 90 00
>> 80 50 00 02 0B 01 00 00 12 34 00 00 00 00 00 01 10
<< 00 00 00 00 00 00 00 01 F9 CA BA 91 6C 39 4D 64 90 00
>> 80 52 00 00 0B 20 26 11 23 12 00 00 ..
<< 11 22 33 44 90 00
";

fn build(test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let cvm = tmp(test, "load.cvm");
    let cvd = tmp(test, "load.cvd");
    let trace = tmp(test, "load.trace");
    ok(&["asm", "scripts/examples/load.casm", "-o", s(&cvm)]);
    ok(&["data", "scripts/examples/load.toml", "-o", s(&cvd)]);
    std::fs::write(&trace, TRACE).unwrap();
    (cvm, cvd, trace)
}

#[test]
fn plain_scripts_run_against_a_recorded_exchange() {
    let (cvm, cvd, trace) = build("plain");
    let out = ok(&[
        "run",
        s(&cvm),
        "--data",
        s(&cvd),
        "--replay",
        s(&trace),
        "--trace",
    ]);
    let receipt: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("receipt JSON on stdout");
    assert_eq!(receipt["outcome"], "committed", "{receipt}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(">> 80 50 00 02 0B 01 00 00 12 34"),
        "{stderr}"
    );
    assert!(stderr.contains("<< 11 22 33 44 90 00"), "{stderr}");
    let text = receipt.to_string();
    assert!(
        text.contains("4660"),
        "amount/balance_after in the receipt: {text}"
    );
    assert!(!text.contains("3F013F01"), "key bytes in the receipt");
    assert!(!stderr.contains("3F 01 3F 01"), "key bytes in the trace");
}

#[test]
fn a_card_with_a_wrong_mac1_fails_with_the_script_code() {
    let (cvm, cvd, trace) = build("badmac");
    std::fs::write(&trace, TRACE.replace("6C 39 4D 64", "6C 39 4D 65")).unwrap();
    let journal = tmp("badmac", "receipts.journal");
    let _ = std::fs::remove_file(&journal);
    let out = cardvm(&[
        "run",
        s(&cvm),
        "--data",
        s(&cvd),
        "--replay",
        s(&trace),
        "--journal",
        s(&journal),
    ]);
    assert!(!out.status.success());
    // The failed transaction's receipt is in the journal.
    let list = ok(&["journal", "list", s(&journal)]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("pending"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
    let receipt: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("receipt even on failure");
    assert_eq!(receipt["outcome"], "failed", "{receipt}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("cardvm:")).count(),
        1,
        "one-line reason: {err}"
    );
    assert!(err.contains("0x0003"), "{err}");
}

#[test]
fn sealed_scripts_run_and_the_receipt_verifies() {
    let (cvm, cvd, trace) = build("sealed");
    let issuer = tmp("sealed", "issuer");
    let reader = tmp("sealed", "reader");
    ok(&["keygen", "--out", s(&issuer), "--force"]);
    ok(&["keygen", "--out", s(&reader), "--force"]);
    let (ikey, ipub) = (issuer.with_extension("key"), issuer.with_extension("pub"));
    let (rkey, rpub) = (reader.with_extension("key"), reader.with_extension("pub"));
    let (scvm, scvd) = (
        tmp("sealed", "load.cvm.sealed"),
        tmp("sealed", "load.cvd.sealed"),
    );
    for (input, out, seq) in [(&cvm, &scvm, "1"), (&cvd, &scvd, "2")] {
        ok(&[
            "seal",
            // The data script is bound to this command script (ignored for the command
            // script itself, which binds to its own bytes).
            "--command",
            s(&cvm),
            "--issuer-key",
            s(&ikey),
            "--reader-pub",
            s(&rpub),
            "--reader-id",
            "R-0001",
            "--seq",
            seq,
            "--expires",
            "2099-01-01T00:00:00Z",
            s(input),
            "-o",
            s(out),
        ]);
    }
    // A command script is sealed under its own city, id and version.
    let opened = tmp("sealed", "opened.cvm");
    let probe_store = tmp("sealed", "probe.store");
    let _ = std::fs::remove_file(&probe_store);
    let out = ok(&[
        "open",
        "--reader-key",
        s(&rkey),
        "--issuer-pub",
        s(&ipub),
        "--reader-id",
        "R-0001",
        "--replay-store",
        s(&probe_store),
        s(&scvm),
        "-o",
        s(&opened),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("command script 2 v1 (city 731)"), "{said}");
    assert_eq!(
        std::fs::read(&opened).unwrap(),
        std::fs::read(&cvm).unwrap()
    );
    let receipt = tmp("sealed", "receipt.json");
    let store = tmp("sealed", "replay.store");
    let _ = std::fs::remove_file(&store);
    ok(&[
        "run",
        s(&scvm),
        "--data",
        s(&scvd),
        "--replay",
        s(&trace),
        "--reader-key",
        s(&rkey),
        "--issuer-pub",
        s(&ipub),
        "--reader-id",
        "R-0001",
        "--replay-store",
        s(&store),
        "--receipt",
        s(&receipt),
    ]);
    ok(&["receipt", "verify", s(&receipt), "--reader-pub", s(&rpub)]);
    // The same data script again is a replay.
    let again = cardvm(&[
        "run",
        s(&scvm),
        "--data",
        s(&scvd),
        "--replay",
        s(&trace),
        "--reader-key",
        s(&rkey),
        "--issuer-pub",
        s(&ipub),
        "--reader-id",
        "R-0001",
        "--replay-store",
        s(&store),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("replay"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // A tampered receipt does not verify.
    let text = std::fs::read_to_string(&receipt)
        .unwrap()
        .replace("\"committed\"", "\"failed\"");
    std::fs::write(&receipt, text).unwrap();
    assert!(
        !cardvm(&["receipt", "verify", s(&receipt), "--reader-pub", s(&rpub)])
            .status
            .success()
    );
}

#[test]
fn simulated_card_keeps_its_state_with_save() {
    let dir = "scripts/city0731-des3";
    let card = tmp("sim", "card.toml");
    std::fs::copy(format!("{dir}/card.toml"), &card).unwrap();
    let mut built = Vec::new();
    for flow in ["load", "balance"] {
        let (cvm, cvd) = (
            tmp("sim", &format!("{flow}.cvm")),
            tmp("sim", &format!("{flow}.cvd")),
        );
        ok(&["asm", &format!("{dir}/{flow}.casm"), "-o", s(&cvm)]);
        ok(&["data", &format!("{dir}/{flow}.toml"), "-o", s(&cvd)]);
        built.push((cvm, cvd));
    }
    let out = ok(&[
        "run",
        s(&built[0].0),
        "--data",
        s(&built[0].1),
        "--sim",
        s(&card),
        "--save",
        "--trace",
    ]);
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["fields"]["balance_after"], 10_500, "{receipt}");
    assert!(
        receipt["air_time_us"].as_u64().unwrap() > 1000,
        "air time is modelled: {receipt}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("modelled air time"), "{stderr}");
    // The trace footer's APDU air time is the receipt's; the activation is shown apart.
    let footer = stderr
        .lines()
        .find(|l| l.starts_with("# modelled air time "))
        .unwrap();
    let number = |after: &str| -> u64 {
        let rest = &footer[footer.find(after).unwrap() + after.len()..];
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let exchanges = number("# modelled air time ");
    let activation = number(" + ");
    let total = number(" = ");
    assert_eq!(
        Some(exchanges),
        receipt["air_time_us"].as_u64(),
        "{footer}\n{receipt}"
    );
    assert!(footer.contains("(the receipt's air_time_us)"), "{footer}");
    assert!(
        activation > 0 && exchanges + activation == total,
        "{footer}"
    );
    // The saved card continues: its balance is the loaded one.
    let out = ok(&[
        "run",
        s(&built[1].0),
        "--data",
        s(&built[1].1),
        "--sim",
        s(&card),
    ]);
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["fields"]["balance"], 10_500, "{receipt}");
    // Without --save the card file is unchanged.
    ok(&[
        "run",
        s(&built[0].0),
        "--data",
        s(&built[0].1),
        "--sim",
        s(&card),
    ]);
    let out = ok(&[
        "run",
        s(&built[1].0),
        "--data",
        s(&built[1].1),
        "--sim",
        s(&card),
    ]);
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["fields"]["balance"], 10_500, "{receipt}");
}

/// The review's attack through `cardvm run`: the sealed data script of a 100.00 CNY load
/// run under an unsealed copy of the city's load script that credits 9000.00 CNY. Refused
/// without and with `--allow-plain`; the card file is untouched. Then the development
/// receipt of a plain run is refused as a production receipt, and a receipt whose JSON
/// carries a duplicate key is refused.
#[test]
fn cli_refuses_the_reviews_attacks() {
    let t = "attacks";
    let city = "scripts/city0731-des3";
    let card = tmp(t, "card.toml");
    std::fs::copy(format!("{city}/card.toml"), &card).unwrap();
    let card_before = std::fs::read_to_string(&card).unwrap();
    let (cvm, cvd) = (tmp(t, "load.cvm"), tmp(t, "load.cvd"));
    ok(&["asm", &format!("{city}/load.casm"), "-o", s(&cvm)]);
    ok(&["data", &format!("{city}/load.toml"), "-o", s(&cvd)]);
    // The attacker's copy: the shared flow with one line added.
    let evil_dir = tmp(t, "evil");
    std::fs::create_dir_all(evil_dir.join("city")).unwrap();
    std::fs::create_dir_all(evil_dir.join("common")).unwrap();
    std::fs::copy(format!("{city}/load.casm"), evil_dir.join("city/load.casm")).unwrap();
    std::fs::copy(
        "scripts/common/purse.casm",
        evil_dir.join("common/purse.casm"),
    )
    .unwrap();
    let flow = std::fs::read_to_string("scripts/common/ep_load.casm").unwrap();
    let evil_flow = flow.replacen(
        "    ldin   amt, amount\n",
        "    ldin   amt, amount\n    ldi    amt, 900000\n",
        1,
    );
    assert_ne!(evil_flow, flow);
    std::fs::write(evil_dir.join("common/ep_load.casm"), evil_flow).unwrap();
    let evil = tmp(t, "evil.cvm");
    ok(&["asm", s(&evil_dir.join("city/load.casm")), "-o", s(&evil)]);

    let (issuer, reader) = (tmp(t, "issuer"), tmp(t, "reader"));
    ok(&["keygen", "--out", s(&issuer), "--force"]);
    ok(&["keygen", "--out", s(&reader), "--force"]);
    let (ikey, ipub) = (issuer.with_extension("key"), issuer.with_extension("pub"));
    let (rkey, rpub) = (reader.with_extension("key"), reader.with_extension("pub"));
    let sealed = tmp(t, "load.cvd.sealed");
    let seal = |out: &Path, seq: &str| {
        ok(&[
            "seal",
            "--issuer-key",
            s(&ikey),
            "--reader-pub",
            s(&rpub),
            "--reader-id",
            "R1",
            "--seq",
            seq,
            "--expires",
            "2099-01-01T00:00:00Z",
            "--command",
            s(&cvm),
            s(&cvd),
            "-o",
            s(out),
        ]);
    };
    seal(&sealed, "5");
    // Sealing a data script without naming its command script is refused.
    let unbound = cardvm(&[
        "seal",
        "--issuer-key",
        s(&ikey),
        "--reader-pub",
        s(&rpub),
        "--reader-id",
        "R1",
        "--seq",
        "6",
        "--expires",
        "2099-01-01T00:00:00Z",
        s(&cvd),
        "-o",
        s(&tmp(t, "x")),
    ]);
    assert!(!unbound.status.success());
    assert!(String::from_utf8_lossy(&unbound.stderr).contains("--command"));

    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            s(&evil),
            "--data",
            s(&sealed),
            "--sim",
            s(&card),
            "--save",
            "--reader-key",
            s(&rkey),
            "--issuer-pub",
            s(&ipub),
            "--reader-id",
            "R1",
        ];
        args.extend_from_slice(extra);
        cardvm(&args)
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain command script refused"), "{err}");
    let out = run(&["--allow-plain"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may only run with command script"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&card).unwrap(),
        card_before,
        "the card was touched"
    );

    // A plain run in development mode: a signed development receipt, never production.
    let receipt = tmp(t, "dev.json");
    ok(&[
        "run",
        s(&cvm),
        "--data",
        s(&cvd),
        "--sim",
        s(&card),
        "--reader-key",
        s(&rkey),
        "--issuer-pub",
        s(&ipub),
        "--reader-id",
        "R1",
        "--allow-plain",
        "--receipt",
        s(&receipt),
    ]);
    let text = std::fs::read_to_string(&receipt).unwrap();
    assert!(text.contains("\"mode\": \"development\""), "{text}");
    assert!(text.contains("\"card_id\": \"4100000089999985\""), "{text}");
    let said = ok(&["receipt", "verify", s(&receipt), "--reader-pub", s(&rpub)]);
    assert!(String::from_utf8_lossy(&said.stdout).contains("DEVELOPMENT"));
    let prod = cardvm(&[
        "receipt",
        "verify",
        s(&receipt),
        "--reader-pub",
        s(&rpub),
        "--production",
    ]);
    assert!(!prod.status.success());
    // A duplicate key placed first: a first-key-wins reader would see "failed".
    let dup = text.replacen(
        "\"outcome\": \"committed\"",
        "\"outcome\": \"failed\",\n  \"outcome\": \"committed\"",
        1,
    );
    assert_ne!(dup, text);
    std::fs::write(&receipt, dup).unwrap();
    let out = cardvm(&["receipt", "verify", s(&receipt), "--reader-pub", s(&rpub)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("canonical"));
}

/// Deleting the replay store (or pointing `--replay-store` at a new path) does not let
/// the same sealed data script commit again: the reader finds the journal's receipts and
/// refuses; `cardvm reader replay-rebuild` restores the store and the replay stays refused.
#[test]
fn deleted_replay_store_is_refused_until_rebuilt() {
    let t = "replaystore";
    let city = "scripts/city0731-des3";
    let card = tmp(t, "card.toml");
    std::fs::copy(format!("{city}/card.toml"), &card).unwrap();
    let (cvm, cvd) = (tmp(t, "load.cvm"), tmp(t, "load.cvd"));
    ok(&["asm", &format!("{city}/load.casm"), "-o", s(&cvm)]);
    ok(&["data", &format!("{city}/load.toml"), "-o", s(&cvd)]);
    let (issuer, reader) = (tmp(t, "issuer"), tmp(t, "reader"));
    ok(&["keygen", "--out", s(&issuer), "--force"]);
    ok(&["keygen", "--out", s(&reader), "--force"]);
    let (ikey, ipub) = (issuer.with_extension("key"), issuer.with_extension("pub"));
    let (rkey, rpub) = (reader.with_extension("key"), reader.with_extension("pub"));
    for ext in ["replay", "journal", "journal.lock", "replay.old"] {
        let _ = std::fs::remove_file(reader.with_extension(ext));
    }
    let (scvm, scvd) = (tmp(t, "load.cvm.sealed"), tmp(t, "load.cvd.sealed"));
    for (input, out, seq) in [(&cvm, &scvm, "1"), (&cvd, &scvd, "2")] {
        ok(&[
            "seal",
            "--issuer-key",
            s(&ikey),
            "--reader-pub",
            s(&rpub),
            "--reader-id",
            "R1",
            "--seq",
            seq,
            "--expires",
            "2099-01-01T00:00:00Z",
            "--command",
            s(&cvm),
            s(input),
            "-o",
            s(out),
        ]);
    }
    let run = || {
        cardvm(&[
            "run",
            s(&scvm),
            "--data",
            s(&scvd),
            "--sim",
            s(&card),
            "--save",
            "--reader-key",
            s(&rkey),
            "--issuer-pub",
            s(&ipub),
            "--reader-id",
            "R1",
        ])
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The attacker deletes the store and runs the same sealed data again.
    std::fs::remove_file(reader.with_extension("replay")).unwrap();
    let again = run();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("replay store") && err.contains("missing"),
        "{err}"
    );
    // The documented recovery.
    ok(&[
        "reader",
        "replay-rebuild",
        "--reader-key",
        s(&rkey),
        "--reader-id",
        "R1",
    ]);
    let after = run();
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("replayed"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    // The card was loaded exactly once.
    let text = std::fs::read_to_string(&card).unwrap();
    assert!(text.contains("balance = 10500"), "{text}");
}

/// `run --query`: the sealed city query on a simulated card prints a production query
/// receipt with `"data": null` and the nonce echoed; `receipt verify --production` says
/// it is a query, not a transaction; a plain query on a reader with an issuer key, a
/// query with a data script and a too-long nonce are refused, none touching the card.
#[test]
fn card_query_through_the_cli() {
    let t = "query";
    let (issuer, reader) = (tmp(t, "issuer"), tmp(t, "reader"));
    ok(&["keygen", "--out", s(&issuer), "--force"]);
    ok(&["keygen", "--out", s(&reader), "--force"]);
    let (ikey, ipub) = (issuer.with_extension("key"), issuer.with_extension("pub"));
    let (rkey, rpub) = (reader.with_extension("key"), reader.with_extension("pub"));
    let (cvm, sealed, card) = (tmp(t, "q.cvm"), tmp(t, "q.sealed"), tmp(t, "card.toml"));
    std::fs::copy("scripts/city0731-des3/card.toml", &card).unwrap();
    ok(&["asm", "scripts/city0731-des3/query.casm", "-o", s(&cvm)]);
    ok(&[
        "seal",
        "--kind",
        "query",
        "--issuer-key",
        s(&ikey),
        "--reader-pub",
        s(&rpub),
        "--reader-id",
        "R-Q",
        "--seq",
        "1",
        "--expires",
        "2099-01-01T00:00:00Z",
        s(&cvm),
        "-o",
        s(&sealed),
    ]);
    let reader_args = |script: &Path| -> Vec<String> {
        [
            "run",
            s(script),
            "--query",
            "--sim",
            s(&card),
            "--reader-key",
            s(&rkey),
            "--issuer-pub",
            s(&ipub),
            "--reader-id",
            "R-Q",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = |script: &Path, extra: &[&str]| {
        let mut a = reader_args(script);
        a.extend(extra.iter().map(|x| x.to_string()));
        cardvm(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let receipt = tmp(t, "q.json");
    let out = run(&sealed, &["--nonce", "C0FFEE00", "--receipt", s(&receipt)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    assert_eq!(json["mode"], "production", "{json}");
    assert_eq!(json["data"], serde_json::Value::Null);
    assert_eq!(json["fields"]["nonce"], "C0FFEE00");
    assert_eq!(json["fields"]["card_id"], "4100000089999985");
    assert_eq!(json["fields"]["balance"], 500);
    let out = ok(&[
        "receipt",
        "verify",
        s(&receipt),
        "--reader-pub",
        s(&rpub),
        "--production",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CARD QUERY"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (script, extra, says) in [
        (&cvm, &[][..], "plain command script refused"),
        (&sealed, &["--nonce", &"00".repeat(33)][..], "at most 32"),
        (
            &sealed,
            &["--data", "scripts/city0731-des3/load.toml"][..],
            "cannot be used with",
        ),
    ] {
        let out = run(script, extra);
        assert!(!out.status.success(), "{extra:?} ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(
            !err.contains("receipt journaled"),
            "{extra:?} reached the card: {err}"
        );
    }
}

/// A `.toml` data script that does not fit the command script is reported at the
/// field's `file:line:col`, with the declared type and, for a misspelling, the input it
/// probably means; nothing reaches the card. `cardvm data` positions its own errors.
#[test]
fn data_script_errors_name_file_line_col_and_the_expected_type() {
    let dir = "scripts/city0731-des3";
    let load = std::fs::read_to_string(format!("{dir}/load.toml")).unwrap();
    let line_of =
        |text: &str, start: &str| text.lines().position(|l| l.starts_with(start)).unwrap() + 1;
    let cases = [
        (
            "amonut",
            load.replacen("amount", "amonut", 1),
            "amonut",
            "1: error: field `amonut`: the script has no input `amonut`; did you mean `amount` (declared u32)?",
        ),
        (
            "usage",
            load.replacen("usage = \"load\"", "usage = \"purchase\"", 1),
            "[keys.dlk]",
            "7: error: field `keys.dlk`: is key(des3, purchase), but the script declares `dlk: key(des3, load)`",
        ),
    ];
    for (name, text, at, want) in cases {
        let toml = tmp("data-errors", &format!("{name}.toml"));
        std::fs::write(&toml, &text).unwrap();
        let card = tmp("data-errors", &format!("{name}-card.toml"));
        std::fs::copy(format!("{dir}/card.toml"), &card).unwrap();
        let out = cardvm(&[
            "run",
            &format!("{dir}/load.cvs"),
            "--data",
            s(&toml),
            "--sim",
            s(&card),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let head = format!("cardvm: {}:{}:", toml.display(), line_of(&text, at));
        assert!(err.starts_with(&head), "{head}\n{err}");
        assert!(err.trim_end().ends_with(want), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let toml = tmp("data-errors", "bad-hex.toml");
    std::fs::write(&toml, "amount = 5\nterminal = { hex = \"0G\" }\n").unwrap();
    let out = cardvm(&["data", s(&toml), "-o", s(&tmp("data-errors", "x.cvd"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "cardvm: {}:2:1: error: field `terminal`: not hex: character 2 is not a hex digit",
            toml.display()
        )
    );
}

/// A card profile that cannot be read is named once in the error, not twice.
#[test]
fn a_missing_card_profile_is_named_once() {
    let missing = tmp("missing-card", "nowhere.toml");
    let out = cardvm(&[
        "run",
        "scripts/city0731-des3/load.cvs",
        "--data",
        "scripts/city0731-des3/load.toml",
        "--sim",
        s(&missing),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(s(&missing)).count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
