//! A transport that replays a recorded exchange: for tests, for checking a script
//! against a trace captured from a real card, and for embedders without a card.
//!
//! The text form is the APDU trace that `cardvm run --trace` prints:
//! ```text
//! >> 80 5C 00 02 04
//! << 00 00 10 00 90 00        (3.1 ms)
//! ```
//! `>>` lines are expected commands, `<<` lines the card's answer (data ‖ SW). Spaces
//! inside the hex are optional; anything after the hex in parentheses or after `#` is a
//! comment (the trace's timings and status-word meanings), as are lines starting with
//! `#`, `;` or `--` (the trace's header and its air-time line). A command line may use
//! `..` as its last token to match any remaining bytes (for commands carrying fresh
//! MACs). `<< !! reason` records a command the card never answered (the trace of a torn
//! or timed-out exchange): replayed, that command fails with
//! [`TransportError::CardRemoved`].
//!
//! Exchanges with SAM slot `n` are `samN>` / `samN<` lines, in the same file
//! ([`parse_terminal`] returns the card and one [`ReplayCard`] per SAM slot;
//! [`ReplayCard::parse`] refuses them, so a SAM recording never replays as the card).
//! Exchanges with the card company (host-secured mode, `hostapdu`) are `host>` / `host<`
//! lines ([`parse_recording`] returns them as their own [`ReplayCard`]).

use super::{CardTransport, TransportError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// One recorded exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The expected command (a prefix when `prefix_only`).
    pub command: Vec<u8>,
    /// Whether only the first `command.len()` bytes must match.
    pub prefix_only: bool,
    /// The response to give (data ‖ SW); empty: the card never answered (replayed as
    /// [`TransportError::CardRemoved`]).
    pub response: Vec<u8>,
}

/// Why a replay file does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ReplayParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Replays recorded exchanges in order; a command that differs from the recording is
/// refused with [`TransportError::Other`].
#[derive(Debug, Clone, Default)]
pub struct ReplayCard {
    exchanges: Vec<Exchange>,
    next: usize,
    uid: Option<Vec<u8>>,
}

fn parse_hex(text: &str) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut prefix_only = false;
    let mut nibble: Option<u8> = None;
    let body = text.split(['(', '#']).next().unwrap_or("");
    let mut tokens = body.split_whitespace().peekable();
    while let Some(tok) = tokens.next() {
        if tok == ".." && tokens.peek().is_none() {
            prefix_only = true;
            break;
        }
        for c in tok.chars() {
            let d = c.to_digit(16)? as u8;
            match nibble.take() {
                Some(hi) => out.push((hi << 4) | d),
                None => nibble = Some(d),
            }
        }
    }
    if nibble.is_some() {
        return None;
    }
    Some((out, prefix_only))
}

impl ReplayCard {
    /// A card replaying `exchanges`.
    pub fn new(exchanges: Vec<Exchange>) -> Self {
        ReplayCard {
            exchanges,
            next: 0,
            uid: None,
        }
    }

    /// Sets the UID the transport reports.
    pub fn with_uid(mut self, uid: Vec<u8>) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Parses the trace text form (card lines only; see [`parse_terminal`] for SAMs).
    pub fn parse(text: &str) -> Result<Self, ReplayParseError> {
        let (card, sams) = parse_terminal(text)?;
        if !sams.is_empty() {
            return Err(ReplayParseError {
                line: 0,
                message: String::from(
                    "the recording has SAM exchanges (samN> lines): replay it with its SAMs",
                ),
            });
        }
        Ok(card)
    }

    /// Exchanges not yet replayed.
    pub fn remaining(&self) -> usize {
        self.exchanges.len() - self.next
    }
}

/// A `samN>` / `samN<` marker: the slot and the rest of the line.
fn sam_line(line: &str, arrow: char) -> Option<(usize, &str)> {
    let rest = line.strip_prefix("sam")?;
    let digit = rest.chars().next()?.to_digit(10)?;
    let rest = rest.get(1..)?.strip_prefix(arrow)?;
    Some((digit as usize, rest))
}

/// Parses a trace with card (`>>`/`<<`) and SAM (`samN>`/`samN<`) exchanges: the card's
/// recording and one per SAM slot up to the highest slot named (a slot never named gets
/// an empty recording).
pub fn parse_terminal(text: &str) -> Result<(ReplayCard, Vec<ReplayCard>), ReplayParseError> {
    let r = parse_recording(text)?;
    if r.host.is_some() {
        return Err(ReplayParseError {
            line: 0,
            message: String::from(
                "the recording has exchanges with the card company (host> lines): replay it with its host",
            ),
        });
    }
    Ok((r.card, r.sams))
}

/// A whole terminal's recording: the card, the SAM slots and the card company.
#[derive(Debug)]
pub struct Recording {
    /// The card's exchanges (`>>` / `<<`).
    pub card: ReplayCard,
    /// One per SAM slot up to the highest named (`samN>` / `samN<`).
    pub sams: Vec<ReplayCard>,
    /// The card company's exchanges (`host>` / `host<`), when the trace has any.
    pub host: Option<ReplayCard>,
}

/// Parses a trace with card, SAM and card-company (`host>`/`host<`) exchanges.
pub fn parse_recording(text: &str) -> Result<Recording, ReplayParseError> {
    let mut card = Recorder::default();
    let mut sams: Vec<Recorder> = Vec::new();
    let mut host: Option<Recorder> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |message: String| ReplayParseError {
            line: n + 1,
            message,
        };
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with("--")
        {
            continue;
        }
        if let Some((is_command, rest)) = line
            .strip_prefix("host>")
            .map(|r| (true, r))
            .or_else(|| line.strip_prefix("host<").map(|r| (false, r)))
        {
            host.get_or_insert_with(Recorder::default)
                .line(is_command, rest)
                .map_err(err)?;
            continue;
        }
        let (slot, is_command, rest) = if let Some(rest) = line.strip_prefix(">>") {
            (None, true, rest)
        } else if let Some(rest) = line.strip_prefix("<<") {
            (None, false, rest)
        } else if let Some((s, rest)) = sam_line(line, '>') {
            (Some(s), true, rest)
        } else if let Some((s, rest)) = sam_line(line, '<') {
            (Some(s), false, rest)
        } else {
            return Err(err(format!(
                "expected `>>`, `<<`, `samN>`, `samN<`, `host>` or `host<`, found `{}`",
                line.chars().take(20).collect::<String>()
            )));
        };
        let rec = match slot {
            None => &mut card,
            Some(s) if s < super::MAX_SAMS => {
                if sams.len() <= s {
                    sams.resize_with(s + 1, Recorder::default);
                }
                &mut sams[s]
            }
            Some(s) => {
                return Err(err(format!(
                    "SAM slot {s} (at most {})",
                    super::MAX_SAMS - 1
                )));
            }
        };
        rec.line(is_command, rest).map_err(err)?;
    }
    let last = text.lines().count();
    let finish = |r: Recorder| {
        r.finish().map_err(|message| ReplayParseError {
            line: last,
            message,
        })
    };
    let card = finish(card)?;
    let sams = sams
        .into_iter()
        .map(finish)
        .collect::<Result<Vec<_>, _>>()?;
    let host = host.map(finish).transpose()?;
    Ok(Recording { card, sams, host })
}

/// The exchanges of one slot while parsing.
#[derive(Default)]
struct Recorder {
    exchanges: Vec<Exchange>,
    pending: Option<(Vec<u8>, bool)>,
}

impl Recorder {
    fn line(&mut self, is_command: bool, rest: &str) -> Result<(), String> {
        let pending = &mut self.pending;
        let exchanges = &mut self.exchanges;
        let err = |m: &str| Err(String::from(m));
        {
            if is_command {
                if pending.is_some() {
                    return err("two commands without a response between them");
                }
                let Some((cmd, prefix)) = parse_hex(rest) else {
                    return err("bad hex in command");
                };
                if cmd.is_empty() {
                    return err("empty command");
                }
                *pending = Some((cmd, prefix));
            } else {
                let Some((command, prefix_only)) = pending.take() else {
                    return err("response without a command");
                };
                if rest.trim_start().starts_with("!!") {
                    exchanges.push(Exchange {
                        command,
                        prefix_only,
                        response: Vec::new(),
                    });
                    return Ok(());
                }
                let Some((response, _)) = parse_hex(rest) else {
                    return err("bad hex in response");
                };
                if response.len() < 2 {
                    return err("response shorter than SW1 SW2");
                }
                exchanges.push(Exchange {
                    command,
                    prefix_only,
                    response,
                });
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<ReplayCard, String> {
        if self.pending.is_some() {
            return Err(String::from("last command has no response"));
        }
        Ok(ReplayCard::new(self.exchanges))
    }
}

impl CardTransport for ReplayCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let Some(ex) = self.exchanges.get(self.next) else {
            return Err(TransportError::Other(format!(
                "replay exhausted at command {}",
                self.next + 1
            )));
        };
        let matches = if ex.prefix_only {
            command.starts_with(&ex.command)
        } else {
            command == ex.command.as_slice()
        };
        if !matches {
            // Print only the header: the data may carry MACs.
            let head: Vec<String> = command.iter().take(4).map(|b| format!("{b:02X}")).collect();
            return Err(TransportError::Other(format!(
                "command {} ({} …) differs from the recording",
                self.next + 1,
                head.join(" ")
            )));
        }
        let n = ex.response.len();
        if n == 0 {
            // Recorded as never answered: the card left during this command.
            self.next += 1;
            return Err(TransportError::CardRemoved);
        }
        if n > response.len() {
            return Err(TransportError::ResponseTooLong {
                needed: n,
                capacity: response.len(),
            });
        }
        response[..n].copy_from_slice(&ex.response);
        self.next += 1;
        Ok(n)
    }

    fn uid(&self) -> Option<&[u8]> {
        self.uid.as_deref()
    }

    /// Never: a recording answers FF 82 like anything else (a `..` line matches any key),
    /// so an M1 key sent here would go to whoever wrote the recording.
    fn reader_key_store(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `run --trace` prints (header, timings, meanings, a torn exchange, the
    /// air-time line) replays as it is.
    #[test]
    fn the_whole_trace_output_replays() {
        let trace = "# reader: Virtual PCD 00 01\n# atr: 3B 8C 80 01\n# protocol: T=1\n\
                     >> 80 5C 00 02 04\n<< 00 00 10 00 90 00   (3.100 ms)  # success\n\
                     >> 80 52 00 00 0B 01 02\n<< !! card removed during the exchange (tearing)   (1.000 ms)\n\
                     -- modelled air time 1234 µs over 2 APDUs\n\
                     # modelled air time 1234 µs over 2 APDUs\n";
        let mut card = ReplayCard::parse(trace).unwrap();
        assert_eq!(card.remaining(), 2);
        let mut buf = [0u8; 258];
        assert_eq!(
            card.transmit(&[0x80, 0x5C, 0x00, 0x02, 0x04], &mut buf),
            Ok(6)
        );
        assert_eq!(
            card.transmit(&[0x80, 0x52, 0x00, 0x00, 0x0B, 1, 2], &mut buf),
            Err(TransportError::CardRemoved)
        );
        assert_eq!(card.remaining(), 0);
        // A `<< !!` line still needs its command.
        assert_eq!(ReplayCard::parse("<< !! gone").unwrap_err().line, 1);
    }

    #[test]
    fn parses_the_trace_format() {
        let card = ReplayCard::parse(
            "# balance\n>> 80 5C 00 02 04\n<< 00 00 10 00 90 00   (3.1 ms)\n>> 805200000B ..\n<< 11223344 9000\n",
        )
        .unwrap();
        assert_eq!(card.remaining(), 2);
        let mut card = card;
        let mut buf = [0u8; 258];
        assert_eq!(
            card.transmit(&[0x80, 0x5C, 0x00, 0x02, 0x04], &mut buf),
            Ok(6)
        );
        assert_eq!(&buf[..6], &[0, 0, 0x10, 0, 0x90, 0]);
        assert_eq!(
            card.transmit(&[0x80, 0x52, 0, 0, 0x0B, 9, 9], &mut buf),
            Ok(6)
        );
        assert!(matches!(
            card.transmit(&[0], &mut buf),
            Err(TransportError::Other(_))
        ));
    }

    #[test]
    fn refuses_a_different_command() {
        let mut card = ReplayCard::parse(">> 00A4\n<< 9000\n").unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(
            card.transmit(&[0x00, 0xA5], &mut buf),
            Err(TransportError::Other(_))
        ));
    }

    #[test]
    fn sam_lines_parse_into_their_own_recording() {
        let text = ">> 00A4\n<< 9000\nsam0> 00B0960006\nsam0< 000000000001 9000   (0.1 ms)\n>> 805C000204\n<< 00001000 9000\n";
        let (mut card, mut sams) = parse_terminal(text).unwrap();
        assert_eq!((card.remaining(), sams.len()), (2, 1));
        let mut buf = [0u8; 16];
        assert_eq!(
            sams[0].transmit(&[0x00, 0xB0, 0x96, 0x00, 0x06], &mut buf),
            Ok(8)
        );
        assert_eq!(card.transmit(&[0x00, 0xA4], &mut buf), Ok(2));
        // A card-only replay refuses a recording with SAM exchanges.
        assert!(ReplayCard::parse(text).is_err());
        assert_eq!(parse_terminal("sam0> 00\n").unwrap_err().line, 1);
        assert!(parse_terminal("sam9> 00\nsam9< 9000\n").is_err());
    }

    #[test]
    fn reports_bad_lines() {
        assert_eq!(ReplayCard::parse("<< 9000").unwrap_err().line, 1);
        assert_eq!(ReplayCard::parse(">> 0G").unwrap_err().line, 1);
        assert_eq!(ReplayCard::parse(">> 00\n<< 90").unwrap_err().line, 2);
        assert_eq!(ReplayCard::parse(">> 00\nhello").unwrap_err().line, 2);
        assert!(ReplayCard::parse(">> 00").is_err());
    }
}
