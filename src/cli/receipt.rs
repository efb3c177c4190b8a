//! `cardvm receipt verify`.

use std::fs;
use std::path::PathBuf;

use cardvm::receipt::{Mode, Outcome, Receipt};
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
    /// Check a receipt: its canonical JSON text and the reader's signature over its
    /// canonical bytes. Says whether it is a production (settleable) receipt.
    Verify {
        /// The receipt, as JSON (exactly as `run` wrote it: any other spelling of the
        /// same values is refused).
        #[arg(value_name = "RECEIPT.json")]
        receipt: PathBuf,
        /// The reader's public key file.
        #[arg(long, value_name = "P")]
        reader_pub: PathBuf,
        /// Fail unless it is a production receipt (sealed scripts). A sealed card query
        /// passes too (it says so): settlement also needs the data script's identity.
        #[arg(long)]
        production: bool,
    },
}

/// Runs `cardvm receipt ...`.
pub fn receipt_cmd(args: ReceiptArgs) -> CliResult {
    match args.cmd {
        ReceiptCmd::Verify {
            receipt,
            reader_pub,
            production,
        } => {
            let key = load_public_key(&reader_pub)?;
            let text = fs::read_to_string(&receipt)
                .map_err(|e| format!("cannot read {}: {e}", receipt.display()))?;
            let r = Receipt::from_json(&text).map_err(|e| format!("{}: {e}", receipt.display()))?;
            if production {
                r.verify_production(&key)
            } else {
                r.verify(&key)
            }
            .map_err(|e| format!("{}: {e}", receipt.display()))?;
            let outcome = match &r.outcome {
                Outcome::Committed => "committed".to_string(),
                Outcome::Failed { code, reason } => format!("failed {code:#06X} ({reason})"),
                Outcome::Unknown { reason } => format!("unknown ({reason})"),
                _ => "other".to_string(),
            };
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
            let what = match (&r.mode, &r.data) {
                (Mode::Production, Some(d)) => format!(
                    "production receipt for data seq {} of issuer key {}",
                    d.seq,
                    hex(&d.issuer_key_id)
                ),
                (Mode::Production, None) => String::from(
                    "production CARD QUERY receipt (the request for a bundle): not for settlement",
                ),
                (Mode::Terminal, None) => String::from(
                    "offline TERMINAL purchase receipt (settled on the card's TAC, once per terminal sequence)",
                ),
                _ => String::from("DEVELOPMENT receipt (plain scripts): not for settlement"),
            };
            println!(
                "receipt OK: {what}; reader {:?}, card {}, city {}, script {} v{} (SM3 {}), {outcome}, {} APDUs",
                r.reader_id,
                if r.card_id.is_empty() {
                    String::from("(not read)")
                } else {
                    hex(&r.card_id)
                },
                r.city,
                r.script_id,
                r.script_version,
                hex(&r.command_sm3[..8]),
                r.apdu_count
            );
            Ok(())
        }
    }
}
