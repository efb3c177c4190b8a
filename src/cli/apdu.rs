//! `cardvm apdu`: raw APDUs to a card, like `opensc-tool -s` or GlobalPlatformPro's `-a`.
//!
//! Each command prints `> command` and `< data SW1 SW2 (meaning)`; 61xx and 6Cxx are
//! followed as the [`ApduLayer`] does for scripts (GET RESPONSE, re-send with Le), unless
//! `--raw`. A header (`# reader`, `# atr`, `# protocol`) comes first.

use super::CliResult;
use super::trace::{header_lines, hex};
use cardvm::transport::{ApduLayer, ApduLayerConfig, CardTransport, StatusWord, sw_meaning};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Send raw APDUs to a card and print the answers.
#[derive(Args, Debug)]
pub struct ApduArgs {
    /// The card in a PC/SC reader: without a name, the reader that holds a card; else an
    /// exact name, a substring matching one reader, or an index (`opensc-tool -r N`).
    #[arg(long, value_name = "READER", num_args = 0..=1, default_missing_value = "", conflicts_with = "sim")]
    pub pcsc: Option<String>,
    /// A simulated card (profile).
    #[arg(long, value_name = "CARD.toml")]
    pub sim: Option<PathBuf>,
    /// With --sim: write the card's state back to its profile afterwards.
    #[arg(long, requires = "sim")]
    pub save: bool,
    /// A command APDU in hex (spaces or colons allowed); repeat to send several in order.
    #[arg(short = 's', long = "send", value_name = "HEX", required = true)]
    pub send: Vec<String>,
    /// Send exactly what is given: no GET RESPONSE on 61xx, no re-send on 6Cxx.
    #[arg(long)]
    pub raw: bool,
    /// Seconds to wait for a card (PC/SC).
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Seconds one exchange may take (PC/SC).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub apdu_timeout: f64,
}

/// Runs `cardvm apdu`.
pub fn apdu(args: ApduArgs) -> CliResult {
    let commands = args
        .send
        .iter()
        .map(|h| {
            let bytes = super::pcsc::parse_hex(h).map_err(|e| format!("-s: {e}"))?;
            cardvm::transport::Apdu::parse(&bytes).map_err(|e| format!("-s {h}: {e}"))?;
            Ok(bytes)
        })
        .collect::<Result<Vec<_>, String>>()?;
    match (&args.sim, &args.pcsc) {
        (Some(profile), None) => {
            let mut card = super::sim::load_card(profile)?;
            let header = header_lines(
                &format!("simulated card {}", profile.display()),
                card.atr(),
                "simulated",
            );
            let r = send_all(&mut card, &header, &commands, args.raw);
            if args.save {
                card.save(profile)
                    .map_err(|e| format!("{}: {e}", profile.display()))?;
            }
            r
        }
        (None, Some(name)) => pcsc(name, &args, &commands),
        _ => Err(String::from(
            "give the card: --pcsc [READER] or --sim CARD.toml",
        )),
    }
}

#[cfg(feature = "pcsc")]
fn pcsc(name: &str, args: &ApduArgs, commands: &[Vec<u8>]) -> CliResult {
    let timeout = super::pcsc::apdu_timeout(args.apdu_timeout)?;
    let mut card = super::pcsc::open_card("--pcsc", name, args.wait, timeout)?;
    let header = header_lines(
        card.reader(),
        Some(card.atr_bytes()),
        super::pcsc::protocol_name(card.protocol()),
    );
    // One transaction for the batch: nothing else talks to the card in between.
    let mut tx = card.transaction().map_err(|e| format!("--pcsc: {e}"))?;
    send_all(&mut tx, &header, commands, args.raw)
}

#[cfg(not(feature = "pcsc"))]
fn pcsc(_: &str, _: &ApduArgs, _: &[Vec<u8>]) -> CliResult {
    Err(String::from(
        "--pcsc: this cardvm was built without the `pcsc` feature",
    ))
}

/// Sends every command, printing as it goes; stops at the first transport failure.
fn send_all<T: CardTransport>(card: T, header: &str, commands: &[Vec<u8>], raw: bool) -> CliResult {
    let config = if raw {
        ApduLayerConfig {
            get_response: false,
            resend_on_6c: false,
            ..ApduLayerConfig::default()
        }
    } else {
        ApduLayerConfig::default()
    };
    let mut layer = ApduLayer::with_config(card, config);
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| format!("stdout: {e}");
    out.write_all(header.as_bytes()).map_err(io)?;
    let mut data = Vec::new();
    for command in commands {
        writeln!(out, "> {}", hex(command)).map_err(io)?;
        out.flush().map_err(io)?;
        match layer.exchange(command, &mut data) {
            Ok(sw) => writeln!(out, "< {}", response_line(&data, sw)).map_err(io)?,
            Err(e) => {
                writeln!(out, "< !! {e}").map_err(io)?;
                return Err(format!(
                    "APDU {}: {e}",
                    hex(&command[..4.min(command.len())])
                ));
            }
        }
    }
    Ok(())
}

/// `data SW1 SW2 (meaning)`.
fn response_line(data: &[u8], sw: StatusWord) -> String {
    let data = hex(data);
    let sep = if data.is_empty() { "" } else { " " };
    format!(
        "{data}{sep}{:02X} {:02X} ({})",
        sw.sw1(),
        sw.sw2(),
        sw_meaning(sw)
    )
}
