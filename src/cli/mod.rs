//! Command-line front end: one module per command family.

use clap::{Parser, Subcommand};

mod journal;

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
    /// The offline receipt journal: list, export, ack, verify.
    Journal {
        #[command(subcommand)]
        cmd: journal::JournalCmd,
    },
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Journal { cmd } => journal::run(cmd),
    }
}
