//! Command-line front end: one module per command family.

mod asm;

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
    /// Assemble a `.casm` command script into bytecode (`.cvm`).
    Asm(asm::AsmArgs),
    /// Disassemble a `.cvm` command script into `.casm` text.
    Disasm(asm::DisasmArgs),
    /// Verify a `.cvm` command script, and bind a data script to it.
    Verify(asm::VerifyArgs),
    /// Compile a TOML data script into a `.cvd`.
    Data(asm::DataArgs),
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Asm(a) => asm::asm(a),
        Command::Disasm(a) => asm::disasm(a),
        Command::Verify(a) => asm::verify(a),
        Command::Data(a) => asm::data(a),
    }
}
