//! `cardvm receipt verify`.

use std::fs;
use std::path::PathBuf;

use cardvm::receipt::{Outcome, Receipt};
use clap::{Args, Subcommand};

use super::CliResult;
use super::keys::load_public_key;

/// Arguments of `cardvm receipt`.
#[derive(Args, Debug)]
pub struct ReceiptArgs {
    #[command(subcommand)]
    cmd: ReceiptCmd,
}

#[derive(Subcommand, Debug)]
enum ReceiptCmd {
    /// Check a receipt's reader signature (over its canonical bytes).
    Verify {
        /// The receipt, as JSON.
        #[arg(value_name = "RECEIPT.json")]
        receipt: PathBuf,
        /// The reader's public key file.
        #[arg(long, value_name = "P")]
        reader_pub: PathBuf,
    },
}

/// Runs `cardvm receipt ...`.
pub fn receipt_cmd(args: ReceiptArgs) -> CliResult {
    match args.cmd {
        ReceiptCmd::Verify {
            receipt,
            reader_pub,
        } => {
            let key = load_public_key(&reader_pub)?;
            let text = fs::read_to_string(&receipt)
                .map_err(|e| format!("cannot read {}: {e}", receipt.display()))?;
            let r = Receipt::from_json(&text).map_err(|e| format!("{}: {e}", receipt.display()))?;
            r.verify(&key)
                .map_err(|e| format!("{}: {e}", receipt.display()))?;
            let outcome = match &r.outcome {
                Outcome::Committed => "committed".to_string(),
                Outcome::Failed { code, reason } => format!("failed {code:#06X} ({reason})"),
                Outcome::Unknown { reason } => format!("unknown ({reason})"),
                _ => "other".to_string(),
            };
            println!(
                "receipt OK: reader {:?}, city {}, script {} v{}, {outcome}, {} APDUs",
                r.reader_id, r.city, r.script_id, r.script_version, r.apdu_count
            );
            Ok(())
        }
    }
}
