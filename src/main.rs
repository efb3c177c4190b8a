//! The `cardvm` command-line tool: assemble, verify, seal and run card scripts.
//!
//! Every command exits 0 on success and non-zero with a one-line reason on failure
//! (`cardvm client` transactions: an exit code per outcome class, docs/kiosk.md).

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cardvm: {e}");
            ExitCode::from(cli::exit_code())
        }
    }
}
