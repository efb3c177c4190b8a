//! Command-line front end: one module per command family.

mod envelope;
mod keys;
mod receipt;

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
    /// Generate an SM2 key pair: PREFIX.key (private) and PREFIX.pub.
    Keygen(keys::KeygenArgs),
    /// Seal a script for one reader (issuer side).
    Seal(envelope::SealArgs),
    /// Open a sealed script (reader side): verify, check reader/expiry/replay, decrypt.
    Open(envelope::OpenArgs),
    /// Work with signed receipts.
    Receipt(receipt::ReceiptArgs),
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Keygen(a) => keys::keygen(a),
        Command::Seal(a) => envelope::seal_cmd(a),
        Command::Open(a) => envelope::open_cmd(a),
        Command::Receipt(a) => receipt::receipt_cmd(a),
    }
}
