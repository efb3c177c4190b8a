//! `cardvm sim serve`: a card served to pcscd over the vsmartcard vpcd protocol, with
//! fault flags (tearing, a card that stops answering), a trace and saving; and the
//! helpers every `--pcsc [READER]` flag shares ([`open_card`], [`apdu_timeout`]).

use super::CliResult;
use cardvm::transport::replay::ReplayCard;
use cardvm::transport::vpcd::{DEFAULT_ADDR, VpcdConfig, VpcdServer};
use cardvm::transport::{CardTransport, TransportError};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Seconds of `--apdu-timeout` as a duration (positive and finite).
pub fn apdu_timeout(secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "--apdu-timeout: {secs} is not a number of seconds between 0 and 86400"
        ))
    }
}

/// `--pcsc [READER]` everywhere (and `--sam READER`): resolves the reader (name, unique
/// substring, index as in `opensc-tool -r N`, or the one that holds a card), says which on
/// stderr, waits up to `wait` seconds for a card and connects with the APDU timeout.
/// Errors start with `flag`, the option that named the reader.
#[cfg(feature = "pcsc")]
pub fn open_card(
    flag: &str,
    name: &str,
    wait: u64,
    timeout: Duration,
) -> Result<cardvm::transport::pcsc::PcscCard, String> {
    use cardvm::transport::pcsc::{ConnectOptions, open_reader};
    let options = ConnectOptions {
        apdu_timeout: timeout,
        ..ConnectOptions::default()
    };
    let name = (!name.is_empty()).then_some(name);
    let (card, why) = open_reader(name, Duration::from_secs(wait), options)
        .map_err(|e| format!("{flag}: {e}"))?;
    eprintln!("cardvm: using reader {:?} ({why})", card.reader());
    Ok(card)
}

/// How the trace names a PC/SC connection's protocol.
#[cfg(feature = "pcsc")]
pub fn protocol_name(p: Option<cardvm::transport::pcsc::ActiveProtocol>) -> &'static str {
    use cardvm::transport::pcsc::ActiveProtocol;
    match p {
        Some(ActiveProtocol::T0) => "T=0",
        Some(ActiveProtocol::T1) => "T=1",
        Some(ActiveProtocol::Raw) => "raw",
        None => "unknown",
    }
}

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
    /// Print every exchange on stderr in the `run --trace` format (it replays as is).
    #[arg(long)]
    pub trace: bool,
    /// With --card: write the card's state back after every command (to the profile, or
    /// to PATH), so a run can be continued after the server is stopped.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "", requires = "card")]
    pub save: Option<String>,
    /// Tearing: the card leaves the field before APDU N (counted from power-on) reaches
    /// it; it is re-inserted after --reconnect-ms. Fires once. Repeat for several.
    #[arg(long, value_name = "N")]
    pub tear_at: Vec<u32>,
    /// Tearing after the card executed APDU N: the answer never reaches the reader.
    #[arg(long, value_name = "N")]
    pub tear_after: Vec<u32>,
    /// A card that stops answering: APDU N is held for MS milliseconds before the card
    /// sees it (N:MS).
    #[arg(long, value_name = "N:MS")]
    pub stall_at: Vec<String>,
    /// The card executes APDU N, then holds the answer for MS milliseconds (N:MS).
    #[arg(long, value_name = "N:MS")]
    pub stall_after: Vec<String>,
}

/// A fault `sim serve` injects, keyed by the APDU number since power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServeFault {
    TearBefore(u32),
    TearAfter(u32),
    StallBefore(u32, Duration),
    StallAfter(u32, Duration),
}

impl ServeFault {
    fn index(self) -> u32 {
        match self {
            Self::TearBefore(n)
            | Self::TearAfter(n)
            | Self::StallBefore(n, _)
            | Self::StallAfter(n, _) => n,
        }
    }
}

fn parse_stall(text: &str, flag: &str) -> Result<(u32, Duration), String> {
    let (n, ms) = text
        .split_once(':')
        .ok_or_else(|| format!("{flag}: expected N:MS, found {text:?}"))?;
    let n = n
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{flag}: bad APDU number in {text:?}"))?;
    let ms = ms
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{flag}: bad milliseconds in {text:?}"))?;
    Ok((n, Duration::from_millis(ms)))
}

/// The card `sim serve` serves: the card itself, plus ATR override, faults, trace and
/// saving.
struct Served {
    card: Box<dyn CardTransport>,
    /// The simulated card when serving one (to save it).
    sim: Option<cardvm::sim::SimCard>,
    atr: Option<Vec<u8>>,
    faults: Vec<ServeFault>,
    /// APDUs since power-on.
    index: u32,
    trace: bool,
    save: Option<PathBuf>,
}

impl Served {
    fn card(&mut self) -> &mut dyn CardTransport {
        match &mut self.sim {
            Some(c) => c,
            None => self.card.as_mut(),
        }
    }

    fn card_ref(&self) -> &dyn CardTransport {
        match &self.sim {
            Some(c) => c,
            None => self.card.as_ref(),
        }
    }

    fn take_faults(&mut self, n: u32) -> Vec<ServeFault> {
        let (fired, kept) = self.faults.iter().partition(|f| f.index() == n);
        self.faults = kept;
        fired
    }

    fn save(&self) {
        if let (Some(sim), Some(path)) = (&self.sim, &self.save)
            && let Err(e) = sim.save(path)
        {
            eprintln!("cardvm: could not save the card to {}: {e}", path.display());
        }
    }

    fn trace(&self, command: &[u8], result: &Result<usize, TransportError>, response: &[u8]) {
        if !self.trace {
            return;
        }
        let text = match result {
            Ok(n) if *n >= 2 && *n <= response.len() => super::trace::exchange_lines(
                command,
                false,
                Ok((
                    &response[..n - 2],
                    cardvm::transport::StatusWord::new(response[n - 2], response[n - 1]),
                )),
                None,
            ),
            Ok(n) => super::trace::exchange_lines(
                command,
                false,
                Err(&format!("malformed response of {n} bytes")),
                None,
            ),
            Err(e) => super::trace::exchange_lines(command, false, Err(e), None),
        };
        eprint!("{text}");
    }
}

impl CardTransport for Served {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.index = self.index.saturating_add(1);
        let fired = self.take_faults(self.index);
        for f in &fired {
            if let ServeFault::StallBefore(_, d) = f {
                std::thread::sleep(*d);
            }
        }
        let result = if fired.iter().any(|f| matches!(f, ServeFault::TearBefore(_))) {
            Err(TransportError::CardRemoved)
        } else {
            let r = self.card().transmit(command, response);
            self.save();
            for f in &fired {
                if let ServeFault::StallAfter(_, d) = f {
                    std::thread::sleep(*d);
                }
            }
            if fired.iter().any(|f| matches!(f, ServeFault::TearAfter(_))) {
                Err(TransportError::CardRemoved)
            } else {
                r
            }
        };
        self.trace(command, &result, response);
        result
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        self.index = 0;
        self.card().power_on()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        self.index = 0;
        let r = self.card().power_off();
        self.save();
        r
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        self.index = 0;
        self.card().reset()
    }
    fn atr(&self) -> Option<&[u8]> {
        self.atr.as_deref().or_else(|| self.card_ref().atr())
    }
    fn uid(&self) -> Option<&[u8]> {
        self.card_ref().uid()
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

/// `cardvm sim serve`: runs until killed (or until `--max-retries` failed attempts).
pub fn serve(args: ServeArgs) -> CliResult {
    let atr = args.atr.as_deref().map(parse_hex).transpose()?;
    if let Some(a) = &atr
        && (a.len() < 2 || a.len() > 33)
    {
        return Err(format!("--atr: an ATR has 2 to 33 bytes, not {}", a.len()));
    }
    let mut faults: Vec<ServeFault> = Vec::new();
    faults.extend(args.tear_at.iter().map(|&n| ServeFault::TearBefore(n)));
    faults.extend(args.tear_after.iter().map(|&n| ServeFault::TearAfter(n)));
    for s in &args.stall_at {
        let (n, d) = parse_stall(s, "--stall-at")?;
        faults.push(ServeFault::StallBefore(n, d));
    }
    for s in &args.stall_after {
        let (n, d) = parse_stall(s, "--stall-after")?;
        faults.push(ServeFault::StallAfter(n, d));
    }
    let (card, sim, what): (Box<dyn CardTransport>, _, String) = match (&args.replay, &args.card) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let card = ReplayCard::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            (
                Box::new(card),
                None,
                format!("replay of {}", path.display()),
            )
        }
        (None, Some(path)) => {
            let card = super::sim::load_card(path)?;
            (
                Box::new(ReplayCard::default()),
                Some(card),
                format!("simulated card {}", path.display()),
            )
        }
        (None, None) => return Err(String::from("give --card CARD.toml or --replay TRACE")),
    };
    let save = args.save.as_ref().map(|p| {
        if p.is_empty() {
            args.card.clone().unwrap_or_default()
        } else {
            PathBuf::from(p)
        }
    });
    let mut card = Served {
        card,
        sim,
        atr,
        faults,
        index: 0,
        trace: args.trace,
        save,
    };
    if args.trace {
        eprint!(
            "{}",
            super::trace::header_lines(
                &format!("vpcd {} ({what})", args.vpcd),
                Some(card.atr().unwrap_or(&cardvm::transport::vpcd::DEFAULT_ATR)),
                "simulated (vpcd, presented as T=1)",
            )
        );
    }
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
