//! `cardvm run`: load (and open) the scripts, verify, bind, run against a card, print
//! the receipt.

use super::trace::StderrTrace;
use super::{CliResult, read_file};
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
    /// Command script (`.cvm`, or sealed).
    pub command: PathBuf,
    /// Data script (`.cvd`, or sealed).
    #[arg(long)]
    pub data: PathBuf,
    /// Replay a recorded APDU trace (the `--trace` format) instead of a card.
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<PathBuf>,
    /// Print the APDU trace on stderr.
    #[arg(long)]
    pub trace: bool,
    /// Write the receipt JSON here instead of stdout.
    #[arg(long, value_name = "OUT.json")]
    pub receipt: Option<PathBuf>,
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
    Ok(Prepared { program, data })
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
    let mut tracer = StderrTrace::new(trace);
    let report = Vm::new(limits).run(bound, &mut layer, &mut tracer);
    Ok((report, layer.into_inner()))
}

pub fn run(args: RunArgs) -> CliResult {
    let command = read_file(&args.command)?;
    let data = read_file(&args.data)?;
    let prepared = prepare(
        &command,
        &data,
        &args.command.display().to_string(),
        &args.data.display().to_string(),
    )?;
    let limits = Limits {
        fuel: args.fuel,
        max_apdus: args.max_apdus,
        ..Limits::default()
    };
    let Some(replay) = &args.replay else {
        return Err(String::from("no card: give --replay TRACE"));
    };
    let text = std::fs::read_to_string(replay).map_err(|e| format!("{}: {e}", replay.display()))?;
    let card = ReplayCard::parse(&text).map_err(|e| format!("{}: {e}", replay.display()))?;
    let (report, _) = execute(&prepared, card, limits, args.trace)?;
    let json = super::report::report_json(&prepared.program, &report);
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

fn describe(o: &cardvm::vm::Outcome) -> String {
    match o {
        cardvm::vm::Outcome::Committed => String::from("ok"),
        cardvm::vm::Outcome::Failed(f) | cardvm::vm::Outcome::Unknown(f) => f.to_string(),
    }
}
