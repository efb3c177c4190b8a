//! Declarative scenario tests for city scripts (feature `sim`).
//!
//! A scenario file (TOML, conventionally `scripts/<city>/scenarios/*.toml`) lists
//! `[[scenario]]` entries. Each runs a command script with a data script on a simulated
//! card built from a card profile, optionally with injected faults, and compares what
//! happened with its expectations. A scenario may continue with `[[scenario.then]]`
//! steps (e.g. recovery after tearing) on the same card, powered on again.
//!
//! Paths are relative to the scenario file. The full schema is in `docs/casm.md`
//! ("Scenario tests"); in short:
//!
//! ```toml
//! [defaults]                  # optional: defaults for every scenario of the file
//! card = "../card.toml"
//!
//! [[scenario]]
//! name   = "load 100.00"
//! script = "../load.casm"     # command script (assembled with debug info)
//! data   = "../load.toml"     # data script; omitted = no inputs
//! set    = { amount = 20000 } # data-script field overrides (deep-merged TOML)
//! card   = "../card.toml"     # card profile
//! card_set = { balance = 500 }# card-profile overrides (deep-merged TOML)
//! faults = { tear_before = 3 }# tear_before / tear_after / tear_mid_commit = N,
//!                             # force_sw = { apdu = N, sw = "9403" },
//!                             # corrupt = { apdu = N, byte = I, xor = M }
//! [scenario.expect]
//! outcome = "committed"       # committed | failed | unknown
//! code    = 0x05              # failure code (script code, 0xFF02 tearing, ...)
//! balance = 20500             # read from the simulated card after the run
//! fields  = { tac_ok = 1, card_id = "4100000089999985" }   # receipt outputs
//! apdus   = [">> 00A4040009A00000000386980701*", "<< *9000"]
//!
//! [[scenario.then]]           # follow-up on the same card after power on
//! script = "../recover.casm"
//! data   = "../recover.toml"
//! set    = { txn_type = 2, atc = 5 }
//! expect = { outcome = "committed", fields = { committed = 0 }, balance = 500 }
//! ```
//!
//! [`run_path`] runs a file or every scenario file under a directory; [`Summary`]
//! renders test-runner output (one line per scenario, a diff on failure, a summary).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::asm::{AsmOptions, assemble_file, compile_data_for};
use crate::script::{DataScript, Decl};
use crate::sim::{CardProfile, Fault, SimCard, m1};
use crate::transport::CardTransport;
use crate::verify::VerifiedProgram;
use crate::vm::{ApduEvent, Outcome, OutputRef, RunReport, Tracer};

/// Why a scenario file could not be read (a scenario that cannot run is a failed
/// scenario, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid scenario file.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML or schema error.
        message: String,
    },
}

/// Faults to inject, keyed by APDU number (1 = the first APDU after power on).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The card loses power before processing APDU n.
    pub tear_before: Option<u32>,
    /// The card processes APDU n, then loses power before answering.
    pub tear_after: Option<u32>,
    /// The card loses power inside the commit of APDU n (atomically rolled back).
    pub tear_mid_commit: Option<u32>,
    /// APDU n is answered with this status word only.
    pub force_sw: Option<ForceSw>,
    /// A byte of the raw response to APDU n is XORed with a mask.
    pub corrupt: Option<Corrupt>,
}

/// `force_sw = { apdu = N, sw = "9403" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceSw {
    /// APDU number.
    pub apdu: u32,
    /// Status word, 4 hex digits.
    pub sw: String,
}

/// `corrupt = { apdu = N, byte = I, xor = M }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corrupt {
    /// APDU number.
    pub apdu: u32,
    /// Byte index in the raw response (data ‖ SW).
    pub byte: usize,
    /// XOR mask.
    pub xor: u8,
}

/// What a step must produce.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `committed`, `failed` or `unknown`.
    pub outcome: Option<String>,
    /// The failure code ([`crate::vm::Failure::code`]).
    pub code: Option<u16>,
    /// The card's balance after the step (CPU purse, or the M1 value block).
    pub balance: Option<i64>,
    /// The M1 value block `balance` reads (default 4).
    pub value_block: Option<usize>,
    /// Receipt outputs: integers, or hex strings for byte strings.
    #[serde(default)]
    pub fields: BTreeMap<String, toml::Value>,
    /// The APDU exchange: `">> command hex"`, `"<< response hex with SW"`; spaces are
    /// ignored, `*` matches any run of hex digits; `"<< !"` matches a failed exchange (tearing).
    pub apdus: Option<Vec<String>>,
    /// The number of APDUs sent.
    pub apdu_count: Option<u32>,
}

/// One run of a script on the scenario's card.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Command script (`.cvs` or `.casm`), relative to the scenario file.
    pub script: Option<String>,
    /// Data script (`.toml`), relative; none = no inputs.
    pub data: Option<String>,
    /// Data-script overrides, deep-merged into the data TOML.
    #[serde(default)]
    pub set: toml::Table,
    /// Faults for this run.
    #[serde(default)]
    pub faults: Faults,
    /// Expectations.
    #[serde(default)]
    pub expect: Expect,
}

/// One scenario.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown by the runner.
    pub name: String,
    /// Card profile (`card.toml`), relative to the scenario file.
    pub card: Option<String>,
    /// Card-profile overrides, deep-merged into the profile TOML.
    #[serde(default)]
    pub card_set: toml::Table,
    /// Command script.
    pub script: Option<String>,
    /// Data script.
    pub data: Option<String>,
    /// Data overrides.
    #[serde(default)]
    pub set: toml::Table,
    /// Faults for the first run.
    #[serde(default)]
    pub faults: Faults,
    /// Expectations of the first run.
    #[serde(default)]
    pub expect: Expect,
    /// Follow-up runs on the same card (powered on again first).
    #[serde(default)]
    pub then: Vec<Step>,
}

/// `[defaults]` of a scenario file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Default card profile.
    pub card: Option<String>,
    /// Default command script.
    pub script: Option<String>,
    /// Default data script.
    pub data: Option<String>,
}

/// A parsed scenario file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Defaults for every scenario.
    #[serde(default)]
    pub defaults: Defaults,
    /// The scenarios.
    #[serde(default)]
    pub scenario: Vec<Scenario>,
}

impl ScenarioFile {
    /// Parses scenario-file text (`path` only names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// One expectation that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What was compared (`outcome`, `balance`, `fields.tac_ok`, `apdus[3]`, …),
    /// prefixed by `then[i].` for follow-up steps.
    pub what: String,
    /// The expected value.
    pub expected: String,
    /// The actual value.
    pub actual: String,
}

/// The result of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario file.
    pub file: PathBuf,
    /// The scenario's name.
    pub name: String,
    /// Expectations that did not hold (empty and `error` none = passed).
    pub mismatches: Vec<Mismatch>,
    /// The scenario could not run (bad path, script does not assemble, …).
    pub error: Option<String>,
    /// For a failed run: where it failed (source line) and the last APDU exchange.
    pub report: Vec<String>,
    /// Wall-clock time the scenario took (loading its scripts and card included).
    pub duration: std::time::Duration,
}

impl ScenarioResult {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.error.is_none()
    }
}

/// The results of a whole run, and test-runner rendering.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Every scenario's result, in file then declaration order.
    pub results: Vec<ScenarioResult>,
    /// Files that could not be read or parsed.
    pub file_errors: Vec<String>,
}

impl Summary {
    /// Number of scenarios that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    /// Number that failed (including file errors).
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed() + self.file_errors.len()
    }

    /// Whether everything passed (and at least one scenario ran).
    pub fn ok(&self) -> bool {
        self.failed() == 0 && !self.results.is_empty()
    }

    /// Test-runner output: `ok`/`FAILED` per scenario, details of failures, a summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            let _ = writeln!(
                s,
                "scenario {} :: {} ... {}",
                r.file.display(),
                r.name,
                if r.passed() { "ok" } else { "FAILED" }
            );
        }
        for e in &self.file_errors {
            let _ = writeln!(s, "error: {e}");
        }
        let failed: Vec<_> = self.results.iter().filter(|r| !r.passed()).collect();
        if !failed.is_empty() {
            s.push_str("\nfailures:\n");
            for r in failed {
                let _ = writeln!(s, "\n---- {} :: {} ----", r.file.display(), r.name);
                if let Some(e) = &r.error {
                    let _ = writeln!(s, "error: {e}");
                }
                for m in &r.mismatches {
                    let _ = writeln!(s, "{}:", m.what);
                    let _ = writeln!(s, "-   expected: {}", m.expected);
                    let _ = writeln!(s, "+   actual:   {}", m.actual);
                }
                for line in &r.report {
                    let _ = writeln!(s, "{line}");
                }
            }
        }
        let _ = writeln!(
            s,
            "\nscenario result: {}. {} passed; {} failed",
            if self.ok() { "ok" } else { "FAILED" },
            self.passed(),
            self.failed()
        );
        s
    }
}

/// Every scenario file under `path`: `path` itself if it is a file, else every `*.toml`
/// in a `scenarios` directory below it (and `scenarios.toml` files), sorted.
pub fn discover(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    walk(
        path,
        path.file_name().is_some_and(|n| n == "scenarios"),
        &mut out,
        0,
    );
    out.sort();
    out
}

fn walk(dir: &Path, in_scenarios: bool, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            let is_sc = p.file_name().is_some_and(|n| n == "scenarios");
            walk(&p, is_sc, out, depth + 1);
        } else if p.extension().is_some_and(|x| x == "toml")
            && (in_scenarios || p.file_name().is_some_and(|n| n == "scenarios.toml"))
        {
            out.push(p);
        }
    }
}

/// Runs every scenario file under `path` (see [`discover`]).
pub fn run_path(path: &Path) -> Summary {
    let mut summary = Summary::default();
    let files = discover(path);
    if files.is_empty() {
        summary
            .file_errors
            .push(format!("{}: no scenario files found", path.display()));
    }
    for f in files {
        match ScenarioFile::load(&f) {
            Ok(file) => summary.results.extend(run_file(&file, &f)),
            Err(e) => summary.file_errors.push(e.to_string()),
        }
    }
    summary
}

/// Runs the scenarios of a parsed file located at `path` (the base of relative paths).
pub fn run_file(file: &ScenarioFile, path: &Path) -> Vec<ScenarioResult> {
    let base = path.parent().unwrap_or(Path::new("."));
    file.scenario
        .iter()
        .map(|sc| {
            let mut r = ScenarioResult {
                file: path.to_path_buf(),
                name: sc.name.clone(),
                mismatches: Vec::new(),
                error: None,
                report: Vec::new(),
                duration: std::time::Duration::ZERO,
            };
            let started = std::time::Instant::now();
            if let Err(e) = run_scenario(sc, &file.defaults, base, &mut r) {
                r.error = Some(e);
            }
            r.duration = started.elapsed();
            r
        })
        .collect()
}

fn run_scenario(
    sc: &Scenario,
    defaults: &Defaults,
    base: &Path,
    r: &mut ScenarioResult,
) -> Result<(), String> {
    let card_path = sc
        .card
        .as_ref()
        .or(defaults.card.as_ref())
        .ok_or("no card profile (`card`)")?;
    let mut card = build_card(&base.join(card_path), &sc.card_set)?;
    let first = Step {
        script: sc.script.clone().or_else(|| defaults.script.clone()),
        data: sc.data.clone().or_else(|| defaults.data.clone()),
        set: sc.set.clone(),
        faults: sc.faults.clone(),
        expect: sc.expect.clone(),
    };
    run_step(&first, base, &mut card, "", r)?;
    for (i, step) in sc.then.iter().enumerate() {
        card.power_on()
            .map_err(|e| format!("then[{i}]: power on: {e}"))?;
        run_step(step, base, &mut card, &format!("then[{i}]."), r)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Deep-merges `over` into `into` (tables merge, other values replace).
fn merge(into: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merged_text(path: &Path, set: &toml::Table) -> Result<String, String> {
    let text = read(path)?;
    if set.is_empty() {
        return Ok(text);
    }
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    merge(&mut table, set);
    toml::to_string(&table).map_err(|e| format!("{}: {e}", path.display()))
}

fn build_card(path: &Path, set: &toml::Table) -> Result<SimCard, String> {
    let text = merged_text(path, set)?;
    CardProfile::from_toml(&text)
        .and_then(|p| p.build())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The step's data script, checked against the command script's `inputs` (positions
/// in the error are the file's when no `set` overrides rewrote it).
fn load_data(base: &Path, step: &Step, inputs: &[Decl]) -> Result<DataScript, String> {
    match &step.data {
        None if step.set.is_empty() => Ok(DataScript::default()),
        None => {
            let text = toml::to_string(&step.set).map_err(|e| e.to_string())?;
            compile_data_for(&text, inputs).map_err(|e| format!("data overrides: {e}"))
        }
        Some(d) => {
            let path = base.join(d);
            let text = merged_text(&path, &step.set)?;
            compile_data_for(&text, inputs).map_err(|e| {
                if step.set.is_empty() {
                    e.located(&path.display().to_string())
                } else {
                    format!("{} (with `set`): {e}", path.display())
                }
            })
        }
    }
}

fn faults_of(f: &Faults) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    if let Some(n) = f.tear_before {
        out.push(Fault::TearBefore(n));
    }
    if let Some(n) = f.tear_after {
        out.push(Fault::TearAfter(n));
    }
    if let Some(n) = f.tear_mid_commit {
        out.push(Fault::TearMidCommit(n));
    }
    if let Some(fs) = &f.force_sw {
        let sw = u16::from_str_radix(&fs.sw, 16)
            .ok()
            .filter(|_| fs.sw.len() == 4)
            .ok_or_else(|| format!("force_sw: `{}` is not 4 hex digits", fs.sw))?;
        out.push(Fault::ForceSw(fs.apdu, sw));
    }
    if let Some(c) = &f.corrupt {
        out.push(Fault::Corrupt(c.apdu, c.byte, c.xor));
    }
    Ok(out)
}

/// Records the APDU exchange as `>>` / `<<` lines.
#[derive(Debug, Default)]
pub struct ExchangeLog {
    /// `">> CMD"`, `"<< RESP SW"` or `"<< ! error"` lines, uppercase hex (`sam0>` /
    /// `sam0<` for SAM slot 0).
    pub lines: Vec<String>,
}

impl Tracer for ExchangeLog {
    fn apdu(&mut self, e: &ApduEvent<'_>) {
        let mut cmd = hex(e.command);
        if e.redacted {
            cmd.push_str(" [key bytes redacted]");
        }
        let (to, from) = match e.slot {
            crate::transport::Slot::Sam(n) => (format!("sam{n}>"), format!("sam{n}<")),
            crate::transport::Slot::Host => ("host>".to_string(), "host<".to_string()),
            crate::transport::Slot::Card => (">>".to_string(), "<<".to_string()),
        };
        self.lines.push(format!("{to} {cmd}"));
        match (e.sw, e.error) {
            (Some(sw), _) => self
                .lines
                .push(format!("{from} {}{:04X}", hex(e.response), sw.0)),
            (None, Some(err)) => self.lines.push(format!("{from} ! {err}")),
            (None, None) => self.lines.push(format!("{from} !")),
        }
    }
}

/// Uppercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Whether an expected APDU line (`*` wildcards at the start or end) matches.
fn apdu_line_matches(expected: &str, actual: &str) -> bool {
    let (e, a) = (norm(expected), norm(actual));
    if e == "<<!" {
        return a.starts_with("<<!");
    }
    let (Some(ed), Some(ad)) = (e.get(..2), a.get(..2)) else {
        return e == a;
    };
    if ed != ad {
        return false;
    }
    glob(&e[2..], &a[2..])
}

/// `*` in `pattern` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn run_step(
    step: &Step,
    base: &Path,
    card: &mut SimCard,
    prefix: &str,
    r: &mut ScenarioResult,
) -> Result<(), String> {
    let script_rel = step.script.as_ref().ok_or("no command script (`script`)")?;
    let script_path = base.join(script_rel);
    let asm =
        assemble_file(&script_path, &AsmOptions { debug: true }).map_err(|e| e.to_string())?;
    let data = load_data(base, step, &asm.script.inputs)?;
    // Scenarios run through the reader pipeline, as an authoring reader (plain scripts,
    // unsigned development receipts): the same open/verify/bind/run as production.
    let mut reader = crate::reader::Reader::new(
        crate::reader::ReaderConfig {
            reader_id: String::from("scenario"),
            reader_key: None,
            issuers: Vec::new(),
            policy: crate::reader::Policy::AllowPlain,
            limits: crate::vm::Limits::default(),
        },
        None,
        None,
        Box::new(crate::reader::SystemClock),
    )
    .map_err(|e| e.to_string())?;
    let prepared = crate::script::with_encoded(&data, |d| reader.prepare(&asm.script.encode(), d))
        .map_err(|e| format!("{}: {e}", script_path.display()))?;
    match card {
        SimCard::Cpu(c) => faults_of(&step.faults)?
            .into_iter()
            .for_each(|f| c.faults_mut().push(f)),
        SimCard::M1(c) => faults_of(&step.faults)?
            .into_iter()
            .for_each(|f| c.faults_mut().push(f)),
        SimCard::Psam(c) => faults_of(&step.faults)?
            .into_iter()
            .for_each(|f| c.faults_mut().push(f)),
    }
    let mut log = ExchangeLog::default();
    let report = reader
        .run(&prepared, card, &mut log, &mut crate::crypto::rng::os_rng())
        .map_err(|e| format!("{}: {e}", script_path.display()))?
        .report;
    let before = r.mismatches.len();
    check(&step.expect, &report, &log, card, prefix, &mut r.mismatches);
    if r.mismatches.len() > before {
        r.report
            .extend(failure_report(prepared.program(), &report, &log, prefix));
    }
    Ok(())
}

/// Where a run failed (source line when the script has debug info) and its last
/// APDU exchange, as lines for a failure report.
pub fn failure_report(
    program: &VerifiedProgram,
    report: &RunReport,
    log: &ExchangeLog,
    prefix: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let failure = match &report.outcome {
        Outcome::Committed => None,
        Outcome::Failed(f) | Outcome::Unknown(f) => Some(f),
    };
    if let Some(f) = failure {
        let offset = match f {
            crate::vm::Failure::Script { offset, .. }
            | crate::vm::Failure::Transport { offset, .. } => *offset,
            crate::vm::Failure::Fault(e) => e.offset,
        };
        let at = program
            .source_location(offset)
            .map(|(file, line)| format!(" at {file}:{line}"))
            .unwrap_or_default();
        out.push(format!("{prefix}run: {} ({f}){at}", report.outcome.name()));
    } else {
        out.push(format!("{prefix}run: committed"));
    }
    let n = log.lines.len();
    if n >= 2 {
        out.push(format!(
            "{prefix}last APDU exchange: {}  {}",
            log.lines[n - 2],
            log.lines[n - 1]
        ));
    }
    out
}

fn card_balance(card: &SimCard, block: usize) -> Option<i64> {
    match card {
        SimCard::Cpu(c) => Some(i64::from(c.balance())),
        SimCard::M1(c) => {
            let b = c.blocks().get(block)?;
            m1::parse_value_block(b).map(|(v, _)| i64::from(v))
        }
        SimCard::Psam(_) => None,
    }
}

fn show_output(v: OutputRef<'_>) -> String {
    match v {
        OutputRef::Int(i) => i.to_string(),
        OutputRef::Bytes(b) => format!("\"{}\"", hex(b)),
    }
}

fn check(
    e: &Expect,
    report: &RunReport,
    log: &ExchangeLog,
    card: &SimCard,
    prefix: &str,
    out: &mut Vec<Mismatch>,
) {
    let mut miss = |what: &str, expected: String, actual: String| {
        out.push(Mismatch {
            what: format!("{prefix}{what}"),
            expected,
            actual,
        })
    };
    let failure = match &report.outcome {
        Outcome::Committed => None,
        Outcome::Failed(f) | Outcome::Unknown(f) => Some(f),
    };
    if let Some(o) = &e.outcome
        && o != report.outcome.name()
    {
        let detail = failure.map(|f| format!(" ({f})")).unwrap_or_default();
        miss(
            "outcome",
            o.clone(),
            format!("{}{detail}", report.outcome.name()),
        );
    }
    if let Some(code) = e.code {
        let actual = failure.map(|f| f.code());
        if actual != Some(code) {
            miss(
                "code",
                format!("{code:#06x}"),
                actual.map_or("none (committed)".into(), |c| format!("{c:#06x}")),
            );
        }
    }
    if let Some(b) = e.balance {
        let actual = card_balance(card, e.value_block.unwrap_or(4));
        if actual != Some(b) {
            miss(
                "balance",
                b.to_string(),
                actual.map_or("unreadable".into(), |v| v.to_string()),
            );
        }
    }
    for (name, want) in &e.fields {
        let got = report.output(name);
        let ok = match (want, got) {
            (toml::Value::Integer(w), Some(OutputRef::Int(g))) => u64::try_from(*w) == Ok(g),
            (toml::Value::String(w), Some(OutputRef::Bytes(g))) => norm(w) == hex(g),
            _ => false,
        };
        if !ok {
            miss(
                &format!("fields.{name}"),
                want.to_string(),
                got.map_or("not written".into(), show_output),
            );
        }
    }
    if let Some(n) = e.apdu_count
        && n != report.apdu_count
    {
        miss("apdu_count", n.to_string(), report.apdu_count.to_string());
    }
    if let Some(want) = &e.apdus {
        for i in 0..want.len().max(log.lines.len()) {
            let (w, a) = (want.get(i), log.lines.get(i));
            let ok = matches!((w, a), (Some(w), Some(a)) if apdu_line_matches(w, a));
            if !ok {
                miss(
                    &format!("apdus[{i}]"),
                    w.cloned().unwrap_or_else(|| "(nothing)".into()),
                    a.cloned().unwrap_or_else(|| "(nothing)".into()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apdu_lines_match_with_wildcards() {
        assert!(apdu_line_matches(">> 00 a4 04 00", ">> 00A40400"));
        assert!(apdu_line_matches(">> 00A4*", ">> 00A40400"));
        assert!(apdu_line_matches("<< *9000", "<< 01029000"));
        assert!(apdu_line_matches("<< *0102*", "<< AA01029000"));
        assert!(apdu_line_matches("<< !", "<< ! card removed"));
        assert!(!apdu_line_matches("<< *9000", "<< 6A82"));
        assert!(!apdu_line_matches(">> 00A4*", "<< 00A40400"));
        assert!(!apdu_line_matches(">> 00A4", ">> 00A40400"));
        assert!(apdu_line_matches("<< 01*03*9000", "<< 0102039000"));
        assert!(!apdu_line_matches("<< 01*03*9000", "<< 0102036A82"));
        assert!(!apdu_line_matches("<< 0102*0102", "<< 0102"));
    }

    #[test]
    fn merge_is_deep() {
        let mut a: toml::Table = toml::from_str("x = 1\n[k]\na = 1\nb = 2").unwrap();
        let b: toml::Table = toml::from_str("y = 2\n[k]\nb = 3").unwrap();
        merge(&mut a, &b);
        assert_eq!(a["k"]["a"].as_integer(), Some(1));
        assert_eq!(a["k"]["b"].as_integer(), Some(3));
        assert_eq!(a["y"].as_integer(), Some(2));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(ScenarioFile::parse("[[scenario]]\nname='a'\nbogus=1", "f").is_err());
        assert!(ScenarioFile::parse("[[scenario]]\nname='a'\nexpect={outcom='x'}", "f").is_err());
        let f = ScenarioFile::parse(
            "[[scenario]]\nname='a'\nfaults={force_sw={apdu=2,sw='9403'}}\n[[scenario.then]]\nscript='r.casm'",
            "f",
        )
        .unwrap();
        assert_eq!(f.scenario[0].then.len(), 1);
        assert_eq!(
            faults_of(&f.scenario[0].faults).unwrap(),
            vec![Fault::ForceSw(2, 0x9403)]
        );
    }
}
