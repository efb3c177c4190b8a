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

    /// Parses the trace text form.
    pub fn parse(text: &str) -> Result<Self, ReplayParseError> {
        let mut exchanges = Vec::new();
        let mut pending: Option<(Vec<u8>, bool)> = None;
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
            if let Some(rest) = line.strip_prefix(">>") {
                if pending.is_some() {
                    return Err(err(String::from(
                        "two commands without a response between them",
                    )));
                }
                let (cmd, prefix) =
                    parse_hex(rest).ok_or_else(|| err(String::from("bad hex in command")))?;
                if cmd.is_empty() {
                    return Err(err(String::from("empty command")));
                }
                pending = Some((cmd, prefix));
            } else if let Some(rest) = line.strip_prefix("<<") {
                let (command, prefix_only) = pending
                    .take()
                    .ok_or_else(|| err(String::from("response without a command")))?;
                if rest.trim_start().starts_with("!!") {
                    exchanges.push(Exchange {
                        command,
                        prefix_only,
                        response: Vec::new(),
                    });
                    continue;
                }
                let (response, _) =
                    parse_hex(rest).ok_or_else(|| err(String::from("bad hex in response")))?;
                if response.len() < 2 {
                    return Err(err(String::from("response shorter than SW1 SW2")));
                }
                exchanges.push(Exchange {
                    command,
                    prefix_only,
                    response,
                });
            } else {
                return Err(err(format!(
                    "expected `>>` or `<<`, found `{}`",
                    line.chars().take(20).collect::<String>()
                )));
            }
        }
        if pending.is_some() {
            return Err(ReplayParseError {
                line: text.lines().count(),
                message: String::from("last command has no response"),
            });
        }
        Ok(ReplayCard::new(exchanges))
    }

    /// Exchanges not yet replayed.
    pub fn remaining(&self) -> usize {
        self.exchanges.len() - self.next
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
    fn refuses_a_different_command() {
        let mut card = ReplayCard::parse(">> 00A4\n<< 9000\n").unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(
            card.transmit(&[0x00, 0xA5], &mut buf),
            Err(TransportError::Other(_))
        ));
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
