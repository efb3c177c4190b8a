//! `cardvm sim serve`: a card served to pcscd over the vsmartcard vpcd protocol.

use super::CliResult;
use cardvm::transport::replay::ReplayCard;
use cardvm::transport::vpcd::{DEFAULT_ADDR, VpcdConfig, VpcdServer};
use cardvm::transport::{CardTransport, TransportError};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Serve a card to pcscd's vpcd driver, so every PC/SC tool sees it in a reader.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Card profile (CPU or M1 simulated card).
    #[arg(long, value_name = "CARD.toml", required_unless_present = "replay")]
    pub card: Option<PathBuf>,
    /// Serve a recorded APDU trace (the `--trace` format) instead of a simulated card.
    #[arg(long, value_name = "TRACE", conflicts_with = "card")]
    pub replay: Option<PathBuf>,
    /// Address of pcscd's vpcd driver (35963: "Virtual PCD 00 00", 35964: "… 00 01").
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    pub vpcd: String,
    /// ATR to present, in hex (default: a contactless T=1 ATR, or the card's own).
    #[arg(long, value_name = "HEX")]
    pub atr: Option<String>,
    /// Wait before reconnecting after pcscd went away, and before a torn card is
    /// re-inserted (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub reconnect_ms: u64,
    /// Give up after this many failed connection attempts in a row (default: never).
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Do not print connection events.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A card with its ATR overridden.
struct WithAtr {
    card: Box<dyn CardTransport>,
    atr: Option<Vec<u8>>,
}

impl CardTransport for WithAtr {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.card.transmit(command, response)
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        self.card.power_on()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        self.card.power_off()
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        self.card.reset()
    }
    fn atr(&self) -> Option<&[u8]> {
        self.atr.as_deref().or_else(|| self.card.atr())
    }
    fn uid(&self) -> Option<&[u8]> {
        self.card.uid()
    }
}

/// Parses hex with optional spaces or colons.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'\t'))
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {text:?}"));
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("not hex: {text:?}"))
        })
        .collect()
}

/// Loads the card to serve.
fn load_card(args: &ServeArgs) -> Result<Box<dyn CardTransport>, String> {
    if let Some(path) = &args.replay {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let card = ReplayCard::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(Box::new(card));
    }
    match &args.card {
        Some(path) => {
            let card =
                cardvm::sim::SimCard::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Box::new(card))
        }
        None => Err(String::from("give --card CARD.toml or --replay TRACE")),
    }
}

/// `cardvm sim serve`: runs until killed (or until `--max-retries` failed attempts).
pub fn serve(args: ServeArgs) -> CliResult {
    let atr = args.atr.as_deref().map(parse_hex).transpose()?;
    if let Some(a) = &atr
        && (a.len() < 2 || a.len() > 33)
    {
        return Err(format!("--atr: an ATR has 2 to 33 bytes, not {}", a.len()));
    }
    let mut card = WithAtr {
        card: load_card(&args)?,
        atr,
    };
    let config = VpcdConfig {
        reconnect_delay: Duration::from_millis(args.reconnect_ms),
        reinsert_delay: Duration::from_millis(args.reconnect_ms),
        max_connect_failures: args.max_retries,
        verbose: !args.quiet,
        ..VpcdConfig::new(args.vpcd.clone())
    };
    if !args.quiet {
        eprintln!("cardvm: serving the card to vpcd at {}", args.vpcd);
    }
    let mut server = VpcdServer::new(&mut card, config);
    server.run().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex("3B 8C:80").unwrap(), vec![0x3B, 0x8C, 0x80]);
        assert!(parse_hex("3B8").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("é1").is_err());
    }
}
