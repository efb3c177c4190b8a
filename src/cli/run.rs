//! `cardvm run`: load (and open) the scripts, verify, bind, run against a card, print
//! the receipt.

use super::trace::StderrTrace;
use super::{CliResult, read_file};
use cardvm::receipt::Receipt;
use cardvm::script::{CommandScript, DataScript};
use cardvm::transport::replay::ReplayCard;
use cardvm::transport::{ApduLayer, CardTransport};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Limits, RunReport, Vm};
use clap::Args;
use std::path::PathBuf;

/// Run a command script with a data script against a card.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Command script (`.cvm`, or sealed; or `.casm` source, assembled with debug info).
    pub command: PathBuf,
    /// Data script (`.cvd`, or sealed; or `.toml` source). Default: no inputs.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run on a simulated card described by this profile (see `cardvm sim new`).
    #[arg(long, value_name = "CARD.toml")]
    pub sim: Option<PathBuf>,
    /// With --sim: write the card's state back to its profile afterwards, so the next
    /// run continues from it.
    #[arg(long, requires = "sim")]
    pub save: bool,
    /// Run on the card in a PC/SC reader (first reader, or by name or substring).
    #[arg(long, value_name = "READER", num_args = 0..=1, default_missing_value = "")]
    pub pcsc: Option<String>,
    /// Seconds to wait for a card in the PC/SC reader.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Replay a recorded APDU trace (the `--trace` format) instead of a card.
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<PathBuf>,
    /// Print the APDU trace on stderr.
    #[arg(long)]
    pub trace: bool,
    /// Print every executed instruction with its source line (needs debug info: a
    /// `.casm` input, or `asm -g`), the registers it changed and the APDUs, on stderr;
    /// on failure, the failing source line and the last APDU exchange.
    #[arg(long)]
    pub trace_vm: bool,
    /// Like --trace-vm, and wait for Enter after each instruction (`c` + Enter: run on).
    #[arg(long)]
    pub step: bool,
    /// For --trace-vm / --step on a `.cvm`: a source file (`.casm`, or one it includes;
    /// repeat for each) to show lines from, used only if its SM3 matches the debug info.
    /// Files named inside the script are never opened.
    #[arg(long, value_name = "PATH")]
    pub source: Vec<PathBuf>,
    /// Write the receipt JSON here instead of stdout.
    #[arg(long, value_name = "OUT.json")]
    pub receipt: Option<PathBuf>,
    /// The reader's SM2 private key: opens sealed scripts and signs the receipt.
    #[arg(long, value_name = "K")]
    pub reader_key: Option<PathBuf>,
    /// The issuer's SM2 public key (needed for sealed scripts).
    #[arg(long, value_name = "P")]
    pub issuer_pub: Option<PathBuf>,
    /// This reader's id (checked against sealed scripts; written into the receipt)
    /// [default: the reader key's id, or "local"].
    #[arg(long, value_name = "ID")]
    pub reader_id: Option<String>,
    /// Append the receipt (committed, failed or unknown) to this offline journal.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// Replay store for sealed scripts [default: K with extension .replay].
    #[arg(long, value_name = "PATH")]
    pub replay_store: Option<PathBuf>,
    /// Instruction budget.
    #[arg(long, default_value_t = Limits::default().fuel)]
    pub fuel: u64,
    /// Most APDUs the script may send.
    #[arg(long, default_value_t = Limits::default().max_apdus)]
    pub max_apdus: u32,
}

/// Loaded, verified and bound inputs of one run.
pub struct Prepared {
    pub program: VerifiedProgram,
    pub data: DataScript,
    /// `Some(..)`: trace the VM (`--trace-vm`, `--step`, `--source`).
    pub vm_trace: Option<super::trace::VmTraceOptions>,
}

/// Parses and verifies the command script and binds the data script.
pub fn prepare(
    command: &[u8],
    data: &[u8],
    command_name: &str,
    data_name: &str,
) -> Result<Prepared, String> {
    let script = CommandScript::parse(command).map_err(|e| format!("{command_name}: {e}"))?;
    let program =
        VerifiedProgram::verify(&script).map_err(|e| format!("{command_name}: verify: {e}"))?;
    let data = DataScript::parse(data).map_err(|e| format!("{data_name}: {e}"))?;
    program
        .bind(&data)
        .map_err(|e| format!("{data_name}: {e}"))?;
    Ok(Prepared {
        program,
        data,
        vm_trace: None,
    })
}

/// Runs `prepared` on `card`.
pub fn execute<T: CardTransport>(
    prepared: &Prepared,
    card: T,
    limits: Limits,
    trace: bool,
) -> Result<(RunReport, T), String> {
    let binding = prepared
        .program
        .bind(&prepared.data)
        .map_err(|e| e.to_string())?;
    let bound = prepared
        .program
        .with_data(&prepared.data, &binding)
        .map_err(|e| e.to_string())?;
    let mut layer = ApduLayer::new(card);
    let report = match &prepared.vm_trace {
        Some(t) => {
            let mut tracer = super::trace::VmTrace::new(&prepared.program, t.step, &t.sources);
            let report = Vm::new(limits).run(bound, &mut layer, &mut tracer);
            failure_report(&mut tracer, &report);
            report
        }
        None => Vm::new(limits).run(bound, &mut layer, &mut StderrTrace::new(trace)),
    };
    Ok((report, layer.into_inner()))
}

/// After a traced run that did not commit: the failing source line and the last APDU.
fn failure_report(tracer: &mut super::trace::VmTrace<'_>, report: &RunReport) {
    use cardvm::vm::{Failure, Outcome};
    let (Outcome::Failed(f) | Outcome::Unknown(f)) = &report.outcome else {
        return;
    };
    let offset = match f {
        Failure::Script { offset, .. } | Failure::Transport { offset, .. } => *offset,
        Failure::Fault(e) => e.offset,
        _ => return,
    };
    let at = tracer
        .source_line(offset)
        .unwrap_or_else(|| format!("code offset {offset} (no debug info)"));
    eprintln!("-- {} at {at}", report.outcome.name());
    eprintln!("--   {f}");
    if let Some(last) = &report.last_exchange {
        let sw = last
            .sw
            .map_or(String::from("no response"), |sw| format!("{sw:04X}"));
        eprintln!(
            "--   last APDU exchange: {} -> {sw}",
            super::trace::hex(&last.header)
        );
    }
}

/// The reader's identity and keys for one run.
struct ReaderKeys {
    key: Option<cardvm::crypto::sm2::Sm2PrivateKey>,
    id: String,
}

fn reader_keys(args: &RunArgs) -> Result<ReaderKeys, String> {
    let key = args
        .reader_key
        .as_deref()
        .map(super::keys::load_private_key)
        .transpose()?;
    let id = match (&args.reader_id, &key) {
        (Some(id), _) => id.clone(),
        (None, Some(k)) => k
            .public_key()
            .key_id()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect(),
        (None, None) => String::from("local"),
    };
    Ok(ReaderKeys { key, id })
}

/// Reads both scripts, opening sealed ones (at most one SM2 verify + decrypt each).
fn load_scripts(
    args: &RunArgs,
    reader: &ReaderKeys,
) -> Result<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>), String> {
    let ext = |p: &std::path::Path, e: &str| p.extension().is_some_and(|x| x == e);
    let command = if ext(&args.command, "casm") {
        cardvm::asm::assemble_file(&args.command, &cardvm::asm::AsmOptions { debug: true })
            .map_err(|e| e.to_string())?
            .script
            .encode()
    } else {
        read_file(&args.command)?
    };
    let data = match &args.data {
        None => zeroize::Zeroizing::new(DataScript::default().encode()),
        Some(d) if ext(d, "toml") => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(d).map_err(|e| format!("{}: {e}", d.display()))?,
            );
            let data =
                cardvm::asm::compile_data(&text).map_err(|e| format!("{}: {e}", d.display()))?;
            zeroize::Zeroizing::new(data.encode())
        }
        Some(d) => zeroize::Zeroizing::new(read_file(d)?),
    };
    let sealed = |b: &[u8]| b.starts_with(&cardvm::envelope::format::MAGIC);
    if !sealed(&command) && !sealed(&data) {
        return Ok((command, data));
    }
    let (Some(key), Some(issuer)) = (&reader.key, &args.issuer_pub) else {
        return Err(String::from(
            "sealed scripts need --reader-key K and --issuer-pub P",
        ));
    };
    let issuer = super::keys::load_public_key(issuer)?;
    let store_path = args.replay_store.clone().unwrap_or_else(|| {
        args.reader_key
            .as_deref()
            .map(|k| k.with_extension("replay"))
            .unwrap_or_else(|| PathBuf::from("cardvm.replay"))
    });
    let store = cardvm::envelope::replay::FileReplayStore::open(&store_path)
        .map_err(|e| format!("{}: {e}", store_path.display()))?;
    let reader_id = args.reader_id.as_deref();
    let mut opener = cardvm::envelope::Opener::new(reader_id, key.clone(), issuer, store);
    let now = cardvm::envelope::unix_now();
    let mut open =
        |bytes: Vec<u8>, path: &std::path::Path| -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
            if !sealed(&bytes) {
                return Ok(zeroize::Zeroizing::new(bytes));
            }
            let opened = opener
                .open(&bytes, now)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            Ok(opened.into_payload())
        };
    let command = open(command, &args.command)?;
    let data_path = args.data.clone().unwrap_or_default();
    let data = open(data.to_vec(), &data_path)?;
    Ok((command.to_vec(), data))
}

pub fn run(args: RunArgs) -> CliResult {
    let reader = reader_keys(&args)?;
    let (command, data) = load_scripts(&args, &reader)?;
    let mut prepared = prepare(
        &command,
        &data,
        &args.command.display().to_string(),
        &args
            .data
            .as_ref()
            .map_or(String::from("(no data)"), |d| d.display().to_string()),
    )?;
    if args.trace_vm || args.step {
        let t = super::trace::VmTraceOptions::for_run(&args.command, &args.source, args.step);
        prepared.vm_trace = Some(t);
    }
    let limits = Limits {
        fuel: args.fuel,
        max_apdus: args.max_apdus,
        ..Limits::default()
    };
    let (report, card_id, air_time) = on_card(&args, &prepared, limits)?;
    let mut receipt = Receipt::from_run(
        prepared.program.header(),
        &reader.id,
        &card_id,
        &report,
        air_time,
    );
    if let Some(key) = &reader.key {
        receipt
            .sign(key, &mut cardvm::crypto::rng::os_rng())
            .map_err(|e| format!("signing the receipt: {e}"))?;
    }
    // Journal first: a receipt must survive even if printing it fails.
    if let Some(path) = &args.journal {
        let bytes = receipt.to_bytes().map_err(|e| format!("receipt: {e}"))?;
        let mut journal =
            cardvm::journal::Journal::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let seq = journal
            .append(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("receipt journalled as entry {seq} in {}", path.display());
    }
    let mut json = receipt.to_json();
    json.push('\n');
    super::write_output(args.receipt.as_deref(), json.as_bytes())?;
    match report.outcome {
        cardvm::vm::Outcome::Committed => Ok(()),
        other => Err(format!(
            "transaction {}: {}",
            other.name(),
            describe(&other)
        )),
    }
}

/// Runs on the card the arguments name; returns the report, the card id and the
/// modelled air time (simulated cards only).
fn on_card(
    args: &RunArgs,
    prepared: &Prepared,
    limits: Limits,
) -> Result<(RunReport, Vec<u8>, Option<u64>), String> {
    match (&args.sim, &args.replay, &args.pcsc) {
        (Some(profile), None, None) => {
            let card = cardvm::sim::SimCard::load(profile)
                .map_err(|e| format!("{}: {e}", profile.display()))?;
            let card_id = card.card_id().to_vec();
            let (report, card) = execute(prepared, card, limits, args.trace)?;
            let air = card.air_time().total_us();
            if args.trace {
                eprintln!(
                    "-- modelled air time {air} µs over {} APDUs (a model, see cardvm::sim::airtime)",
                    card.air_time().apdus
                );
            }
            if args.save {
                card.save(profile)
                    .map_err(|e| format!("{}: {e}", profile.display()))?;
            }
            Ok((report, card_id, Some(air)))
        }
        (None, Some(replay), None) => {
            let text = std::fs::read_to_string(replay)
                .map_err(|e| format!("{}: {e}", replay.display()))?;
            let card =
                ReplayCard::parse(&text).map_err(|e| format!("{}: {e}", replay.display()))?;
            let card_id = card.uid().map(<[u8]>::to_vec).unwrap_or_default();
            let (report, _) = execute(prepared, card, limits, args.trace)?;
            Ok((report, card_id, None))
        }
        (None, None, Some(reader)) => run_pcsc(reader, args, prepared, limits),
        (None, None, None) => Err(String::from(
            "no card: give --sim CARD.toml, --pcsc [READER] or --replay TRACE",
        )),
        _ => Err(String::from("give one card: --sim, --pcsc or --replay")),
    }
}

#[cfg(feature = "pcsc")]
fn run_pcsc(
    reader: &str,
    args: &RunArgs,
    prepared: &Prepared,
    limits: Limits,
) -> Result<(RunReport, Vec<u8>, Option<u64>), String> {
    let name = (!reader.is_empty()).then_some(reader);
    let mut card = cardvm::transport::pcsc::open_reader(name, std::time::Duration::from_secs(args.wait))
        .map_err(|e| format!("--pcsc: {e}"))?;
    // The whole script runs inside one PC/SC transaction: no other application can
    // interleave commands with a purse transaction.
    let tx = card.transaction().map_err(|e| format!("--pcsc: {e}"))?;
    let (report, _) = execute(prepared, tx, limits, args.trace)?;
    Ok((report, Vec::new(), None))
}

#[cfg(not(feature = "pcsc"))]
fn run_pcsc(
    _: &str,
    _: &RunArgs,
    _: &Prepared,
    _: Limits,
) -> Result<(RunReport, Vec<u8>, Option<u64>), String> {
    Err(String::from(
        "--pcsc: this cardvm was built without the `pcsc` feature",
    ))
}

fn describe(o: &cardvm::vm::Outcome) -> String {
    match o {
        cardvm::vm::Outcome::Committed => String::from("ok"),
        cardvm::vm::Outcome::Failed(f) | cardvm::vm::Outcome::Unknown(f) => f.to_string(),
    }
}
