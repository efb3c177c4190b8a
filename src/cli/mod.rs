//! Command-line front end: one module per command family.

mod pcsc;
mod report;
mod run;
mod trace;

use clap::{Parser, Subcommand};
use std::path::Path;

/// A failure, reported as one line.
pub type CliResult = Result<(), String>;

/// cardvm: run city smart-card transaction scripts against cards.
#[derive(Parser, Debug)]
#[command(name = "cardvm", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command script with a data script against a card; print the receipt.
    Run(run::RunArgs),
    /// Simulated cards: serve one to pcscd (`sim serve`).
    Sim(pcsc::SimArgs),
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Sim(args) => match args.command {
            pcsc::SimCommand::Serve(serve) => pcsc::serve(serve),
        },
    }
}

/// Reads a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path`, or to stdout when `path` is `None`.
pub fn write_output(path: Option<&Path>, bytes: &[u8]) -> CliResult {
    use std::io::Write;
    match path {
        Some(p) => std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display())),
        None => std::io::stdout()
            .write_all(bytes)
            .map_err(|e| format!("stdout: {e}")),
    }
}
