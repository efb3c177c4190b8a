//! Every scenario file under scripts/ (scripts/<city>/scenarios/*.toml) runs and passes,
//! every city ships scenarios, and a wrong expectation is reported as a failure with a
//! diff.

use std::path::Path;

use cardvm::sim::scenario::{ScenarioFile, discover, run_file, run_path};

#[test]
fn every_city_scenario_passes() {
    let summary = run_path(Path::new("scripts"));
    let text = summary.render();
    assert!(summary.ok(), "{text}");
    assert!(summary.results.len() >= 60, "{text}");
}

#[test]
fn every_city_ships_scenarios() {
    for entry in std::fs::read_dir("scripts").unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("city") {
            continue;
        }
        let files = discover(&dir);
        assert!(!files.is_empty(), "{name} has no scenarios");
        let all: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        for needle in [
            "outcome = \"committed\"",
            "force_sw",
            "tear_",
            "[[scenario.then]]",
        ] {
            assert!(all.contains(needle), "{name}: no scenario with {needle}");
        }
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_the_failure_line() {
    let text = r#"
[[scenario]]
name   = "wrong"
card   = "../card.toml"
script = "../load.casm"
data   = "../load.toml"
faults = { force_sw = { apdu = 3, sw = "9403" } }
expect = { outcome = "committed", balance = 1, fields = { tac_ok = 1 }, apdus = [">> 00A4*"] }
"#;
    let file = ScenarioFile::parse(text, "x.toml").unwrap();
    let results = run_file(&file, Path::new("scripts/city0731-des3/scenarios/x.toml"));
    let r = &results[0];
    assert!(!r.passed());
    let whats: Vec<_> = r.mismatches.iter().map(|m| m.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "outcome",
            "balance",
            "fields.tac_ok",
            "apdus[1]",
            "apdus[2]",
            "apdus[3]",
            "apdus[4]",
            "apdus[5]"
        ]
    );
    assert_eq!(r.mismatches[1].actual, "500");
    let report = r.report.join("\n");
    assert!(report.contains("ep_load.casm:"), "{report}");
    assert!(report.contains("last APDU exchange: >> 8050"), "{report}");
    assert!(report.contains("<< 9403"), "{report}");
}

/// A failing scenario on a high-level script names the `.cvs` line that failed.
#[test]
fn a_failing_high_level_scenario_names_the_cvs_line() {
    let text = r#"
[[scenario]]
name   = "refused"
card   = "../card.toml"
script = "../load.cvs"
data   = "../load.toml"
faults = { force_sw = { apdu = 3, sw = "9403" } }
expect = { outcome = "committed" }
"#;
    let file = ScenarioFile::parse(text, "x.toml").unwrap();
    let results = run_file(&file, Path::new("scripts/city0731-des3/scenarios/x.toml"));
    let report = results[0].report.join("\n");
    assert!(
        report.contains("common/purse_load.cvs:20"), // `on 9403 fail no_key_index`
        "{report}"
    );
}

#[test]
fn a_broken_script_path_is_an_error_not_a_panic() {
    let file = ScenarioFile::parse(
        "[[scenario]]\nname='x'\ncard='../card.toml'\nscript='../nope.casm'",
        "x.toml",
    )
    .unwrap();
    let r = &run_file(&file, Path::new("scripts/city0731-des3/scenarios/x.toml"))[0];
    assert!(!r.passed());
    assert!(r.error.as_deref().unwrap().contains("nope.casm"));
}

#[cfg(feature = "cli")]
#[test]
fn cardvm_test_prints_a_runner_report_and_fails_on_a_failing_scenario() {
    let bin = env!("CARGO_BIN_EXE_cardvm");
    let ok = std::process::Command::new(bin)
        .args(["test", "scripts/city0731-des3"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}");
    assert!(out.contains(":: load credits the card and verifies the TAC ... ok"));
    assert!(out.contains("scenario result: ok."));

    let dir = std::env::temp_dir().join(format!("cardvm-scen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let card = std::fs::canonicalize("scripts/city0731-des3/card.toml").unwrap();
    let script = std::fs::canonicalize("scripts/city0731-des3/balance.casm").unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "[[scenario]]\nname = 'wrong balance'\ncard = '{}'\nscript = '{}'\nexpect = {{ balance = 7 }}\n",
            card.display(),
            script.display()
        ),
    )
    .unwrap();
    let bad = std::process::Command::new(bin)
        .args(["test"])
        .arg(&file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success());
    assert!(out.contains("wrong balance ... FAILED"), "{out}");
    assert!(out.contains("-   expected: 7\n+   actual:   500"), "{out}");
    assert!(out.contains("1 failed"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cardvm test --junit OUT.xml`: one testcase per scenario; a failing scenario is a
/// `<failure>` whose message says what differed; the exit code still says it failed.
#[cfg(feature = "cli")]
#[test]
fn cardvm_test_writes_junit_xml_with_a_failure_per_failing_scenario() {
    let bin = env!("CARGO_BIN_EXE_cardvm");
    let dir = std::env::temp_dir().join(format!("cardvm-junit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let card = std::fs::canonicalize("scripts/city0731-des3/card.toml").unwrap();
    let script = std::fs::canonicalize("scripts/city0731-des3/balance.casm").unwrap();
    let file = dir.join("mixed.toml");
    std::fs::write(
        &file,
        format!(
            "[defaults]\ncard = '{}'\nscript = '{}'\n\n[[scenario]]\nname = 'balance <ok> & fine'\nexpect = {{ balance = 500 }}\n\n[[scenario]]\nname = 'wrong balance'\nexpect = {{ balance = 7 }}\n",
            card.display(),
            script.display()
        ),
    )
    .unwrap();
    let xml_path = dir.join("out.xml");
    let out = std::process::Command::new(bin)
        .args(["test", "--junit"])
        .arg(&xml_path)
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let xml = std::fs::read_to_string(&xml_path).unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains("<testsuites name=\"cardvm scenarios\" tests=\"2\" failures=\"1\" time=\""),
        "{xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
    assert!(
        xml.contains("name=\"balance &lt;ok&gt; &amp; fine\" time=\""),
        "{xml}"
    );
    // Every testcase and suite says how long it took, in seconds.
    let times: Vec<&str> = xml
        .split(" time=\"")
        .skip(1)
        .map(|t| t.split('"').next().unwrap())
        .collect();
    assert_eq!(times.len(), 4, "{xml}");
    for t in times {
        let (whole, millis) = t.split_once('.').expect("seconds.millis");
        assert!(whole.parse::<u64>().is_ok() && millis.len() == 3, "{t}");
    }
    assert!(xml.contains("name=\"wrong balance\" time=\""), "{xml}");
    assert!(
        xml.contains(
            "\">\n      <failure type=\"mismatch\" message=\"balance: expected 7, got 500\">"
        ),
        "{xml}"
    );
    // A passing run writes a suite without failures and exits 0.
    let ok = std::process::Command::new(bin)
        .args(["test", "--filter", "credits the card", "--junit"])
        .arg(&xml_path)
        .arg("scripts/city0731-des3")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let xml = std::fs::read_to_string(&xml_path).unwrap();
    assert!(!xml.contains("<failure"), "{xml}");
    assert!(xml.contains("credits the card"), "{xml}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cardvm test` on a folder without scenario files: one clear line, exit code 1, not
/// a run of zero scenarios counted as one failure.
#[cfg(feature = "cli")]
#[test]
fn cardvm_test_on_a_folder_without_scenarios_says_so() {
    let dir = std::env::temp_dir().join(format!("cardvm-noscen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .arg("test")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("cardvm: no scenarios in {}", dir.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn city_scripts_are_lint_clean() {
    for entry in std::fs::read_dir("scripts").unwrap() {
        let dir = entry.unwrap().path();
        if !dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("city")
        {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "casm" || e == "cvs") {
                let a = cardvm::asm::assemble_file(&f, &Default::default()).unwrap();
                assert!(a.warnings.is_empty(), "{}: {:?}", f.display(), a.warnings);
            }
        }
    }
}
