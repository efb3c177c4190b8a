//! `cardvm sim …`: simulated cards. `sim new` writes a card profile (CARD.toml).

use std::path::PathBuf;

use cardvm::sim::profile::{CardProfile, CpuProfile, KeyHex, M1Profile, PsamProfile, write_atomic};
use clap::{Args, Subcommand, ValueEnum};

use super::CliResult;

/// Simulated-card commands.
#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Write a new card profile (CARD.toml) with sensible defaults.
    New(NewArgs),
    /// Serve a card to pcscd over the vsmartcard vpcd protocol (reader "Virtual PCD 00 00").
    Serve(super::pcsc::ServeArgs),
}

/// Card kind.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// CPU card with an electronic purse.
    Cpu,
    /// M1 (MIFARE Classic 1K) card.
    M1,
    /// PSAM: the terminal's purchase SAM (`run --sam-sim`; docs/psam.md). Needs
    /// --purchase-key (the purchase master it diversifies per card).
    Psam,
}

/// Arguments of `sim new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// Card kind.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Algorithm profile of a CPU card: des3 or sm4.
    #[arg(long, default_value = "des3")]
    profile: String,
    /// City code written to EF 0015 as issuer and city (2 bytes hex) [default: the
    /// project's city of the profile: 0731 for des3, 0755 for sm4].
    #[arg(long, value_name = "HEX")]
    city: Option<String>,
    /// Application serial (8 or 10 bytes hex).
    #[arg(long)]
    card_number: Option<String>,
    /// Initial balance, fen.
    #[arg(long, default_value_t = 0)]
    balance: u32,
    /// Balance limit, fen.
    #[arg(long, default_value_t = 1_000_000)]
    balance_limit: u32,
    /// The keys given are master keys (the card diversifies them with its serial).
    #[arg(long)]
    master: bool,
    /// Load key (DLK, or MLK with --master), 16 bytes hex.
    #[arg(long)]
    load_key: Option<String>,
    /// Purchase key (DPK, or MPK), 16 bytes hex.
    #[arg(long)]
    purchase_key: Option<String>,
    /// TAC key (DTK, or MTK), 16 bytes hex.
    #[arg(long)]
    tac_key: Option<String>,
    /// Fixed 4-byte random, hex.
    #[arg(long, conflicts_with = "seed")]
    random: Option<String>,
    /// Seed of the deterministic random generator.
    #[arg(long)]
    seed: Option<u64>,
    /// M1 UID (4 or 7 bytes hex).
    #[arg(long)]
    uid: Option<String>,
    /// PSAM terminal number (6 bytes hex, EF 16).
    #[arg(long, value_name = "HEX")]
    terminal: Option<String>,
    /// PSAM: the next terminal transaction sequence number.
    #[arg(long)]
    seq: Option<u32>,
    /// Output file.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
}

/// Runs a `sim` command.
/// Loads a simulated card's profile; the error names the file once (an I/O error
/// already names it).
pub fn load_card(path: &std::path::Path) -> Result<cardvm::sim::SimCard, String> {
    cardvm::sim::SimCard::load(path).map_err(|e| match e {
        cardvm::sim::SimError::Io { .. } => e.to_string(),
        other => format!("{}: {other}", path.display()),
    })
}

pub fn run(cmd: SimCommand) -> CliResult {
    match cmd {
        SimCommand::New(a) => new(a),
        SimCommand::Serve(a) => super::pcsc::serve(a),
    }
}

fn new(a: NewArgs) -> CliResult {
    let profile = match a.kind {
        Kind::Cpu => {
            let mut p = CpuProfile {
                profile: a.profile.clone(),
                balance: a.balance,
                balance_limit: a.balance_limit,
                ..CpuProfile::default()
            };
            if let Some(n) = a.card_number {
                p.card_number = n;
            }
            // The card says which city issued it: an SM4 card must not claim 0731.
            let city = a
                .city
                .clone()
                .unwrap_or_else(|| String::from(if a.profile == "sm4" { "0755" } else { "0731" }));
            p.public_info.issuer = city.clone();
            p.public_info.city = city;
            p.keys.master = a.master;
            for (dst, src) in [
                (&mut p.keys.load, a.load_key),
                (&mut p.keys.purchase, a.purchase_key),
                (&mut p.keys.tac, a.tac_key),
            ] {
                if let Some(k) = src {
                    *dst = KeyHex::from_hex(&k);
                }
            }
            if let Some(r) = a.random {
                p.random = Some(r);
                p.seed = None;
            } else if let Some(s) = a.seed {
                p.seed = Some(s);
            }
            CardProfile::Cpu(p)
        }
        Kind::M1 => {
            let mut p = M1Profile::default();
            if let Some(u) = a.uid {
                p.uid = u;
            }
            // Write the full memory image so every block can be edited.
            let card = p.build().map_err(|e| e.to_string())?;
            CardProfile::M1(card.to_profile())
        }
        Kind::Psam => {
            let Some(mpk) = a.purchase_key else {
                return Err(String::from(
                    "sim new --kind psam: give --purchase-key (the purchase master, 16 bytes hex)",
                ));
            };
            let mut p = PsamProfile {
                profile: a.profile.clone(),
                purchase_master: KeyHex::from_hex(&mpk),
                ..PsamProfile::default()
            };
            if let Some(t) = a.terminal {
                p.terminal = t;
            }
            if let Some(n) = a.seq {
                p.seq = n;
            }
            CardProfile::Psam(p)
        }
    };
    // Build once to validate every field before writing.
    profile.build().map_err(|e| e.to_string())?;
    let text = profile.to_toml().map_err(|e| e.to_string())?;
    write_atomic(&a.out, &text).map_err(|e| e.to_string())?;
    Ok(())
}
