//! Command-line front end: one module per command family.

mod sim;

use clap::{Parser, Subcommand};

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
    /// Simulated cards.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Sim(c) => sim::run(c),
    }
}
