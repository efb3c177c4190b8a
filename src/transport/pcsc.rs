//! PC/SC backend for real readers (feature `pcsc`, on the `pcsc` crate).
//!
//! [`PcscContext`] lists readers, picks one by name or substring, and waits for a card
//! tap; [`PcscCard`] is a connected card (shared or exclusive, T=1 — which is how PC/SC
//! presents ISO 14443-4 "T=CL" cards — or T=0) and implements [`CardTransport`];
//! [`PcscTransaction`] is an exclusive transaction whose `Drop` ends it, and implements
//! [`CardTransport`] too, so a script can run inside one.
//!
//! Commands are **never retried**: a purse command may already have executed. A card
//! that leaves the field (or is reset by someone else) during an exchange is reported as
//! [`PcscError::CardRemoved`] → [`TransportError::CardRemoved`] (tearing), and responses
//! always go through an internal buffer of [`pcsc::MAX_BUFFER_SIZE_EXTENDED`] bytes, so
//! PC/SC never reports "insufficient buffer" after the card has executed the command.
//!
//! [`open_reader`] is the one-call path the CLI uses: find the reader, wait for a card,
//! connect.

use crate::transport::{CardTransport, TransportError};
use std::ffi::CString;
use std::time::{Duration, Instant};

use pcsc::{Context, Disposition, Error as Raw, Protocols, ReaderState, Scope, State};

/// A PC/SC failure, typed by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcscError {
    /// The PC/SC service (pcscd) is not running or not reachable.
    #[error("PC/SC service not available (is pcscd running?)")]
    NoService,
    /// No reader is connected at all.
    #[error("no smart-card reader connected")]
    NoReader,
    /// No reader matches the requested name.
    #[error("no reader matches {wanted:?} (readers: {available})")]
    ReaderNotFound {
        /// The name or substring asked for.
        wanted: String,
        /// The readers present, comma-separated.
        available: String,
    },
    /// The reader disappeared or is unusable.
    #[error("reader {0:?} removed or unavailable")]
    ReaderRemoved(String),
    /// No card in the reader.
    #[error("no card in reader {0:?}")]
    NoCard(String),
    /// The card left the field (or was reset) during an exchange: the command may or may
    /// not have executed (tearing).
    #[error("card removed during the exchange (tearing)")]
    CardRemoved,
    /// Another application holds the card (or reader) exclusively.
    #[error("sharing violation: the card is in use by another application")]
    SharingViolation,
    /// No card arrived (or the operation did not finish) in time.
    #[error("timeout after {0:?} waiting for a card")]
    Timeout(Duration),
    /// The card does not speak a protocol that was offered.
    #[error("protocol mismatch: the card does not support the requested protocol")]
    ProtocolMismatch,
    /// The response did not fit the caller's buffer (the command *was* executed).
    #[error("response of {needed} bytes does not fit a buffer of {capacity}")]
    ResponseTooLong {
        /// Bytes of the response.
        needed: usize,
        /// Bytes the caller's buffer had.
        capacity: usize,
    },
    /// A reader name with an interior NUL byte.
    #[error("invalid reader name {0:?}")]
    InvalidReaderName(String),
    /// Any other PC/SC error, with the operation that failed.
    #[error("PC/SC {op}: {error}")]
    Pcsc {
        /// The operation (`connect`, `transmit`, …).
        op: &'static str,
        /// The PC/SC error.
        error: Raw,
    },
}

impl PcscError {
    /// Maps a raw PC/SC error from operation `op` on reader `reader`.
    pub fn from_pcsc(error: Raw, op: &'static str, reader: &str) -> Self {
        match error {
            Raw::NoService | Raw::ServiceStopped => Self::NoService,
            Raw::NoReadersAvailable => Self::NoReader,
            Raw::UnknownReader | Raw::ReaderUnavailable | Raw::ReaderUnsupported => {
                Self::ReaderRemoved(reader.to_owned())
            }
            Raw::NoSmartcard => Self::NoCard(reader.to_owned()),
            Raw::RemovedCard | Raw::ResetCard => Self::CardRemoved,
            Raw::SharingViolation => Self::SharingViolation,
            Raw::ProtoMismatch => Self::ProtocolMismatch,
            Raw::Timeout => Self::Timeout(Duration::ZERO),
            error => Self::Pcsc { op, error },
        }
    }

    /// Maps an error of `SCardTransmit`. Once a command has been handed to the reader,
    /// a lost card, a reset, or a broken link all mean the same thing to a purse: the
    /// command may or may not have executed — tearing.
    fn from_transmit(error: Raw, reader: &str) -> Self {
        match error {
            Raw::CommError
            | Raw::NotTransacted
            | Raw::UnresponsiveCard
            | Raw::UnpoweredCard
            | Raw::NoSmartcard => Self::CardRemoved,
            e => Self::from_pcsc(e, "transmit", reader),
        }
    }
}

impl From<PcscError> for TransportError {
    fn from(e: PcscError) -> Self {
        match e {
            PcscError::CardRemoved => TransportError::CardRemoved,
            PcscError::NoCard(_) => TransportError::NoCard,
            PcscError::SharingViolation => TransportError::SharingViolation,
            PcscError::Timeout(_) => TransportError::Timeout,
            PcscError::ResponseTooLong { needed, capacity } => {
                TransportError::ResponseTooLong { needed, capacity }
            }
            e @ (PcscError::NoService
            | PcscError::NoReader
            | PcscError::ReaderNotFound { .. }
            | PcscError::ReaderRemoved(_)) => TransportError::ReaderUnavailable(e.to_string()),
            e => TransportError::Other(e.to_string()),
        }
    }
}

/// How the connection shares the card with other applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShareMode {
    /// Others may connect too (use [`PcscCard::transaction`] for exclusive stretches).
    #[default]
    Shared,
    /// No one else may connect while this connection is open.
    Exclusive,
}

/// Which protocols to accept. Contactless (ISO 14443-4, "T=CL") cards appear as T=1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolChoice {
    /// T=0 or T=1, whichever the card offers.
    #[default]
    Any,
    /// T=1 only (contact T=1 and contactless cards).
    T1,
    /// T=0 only.
    T0,
}

impl ProtocolChoice {
    fn protocols(self) -> Protocols {
        match self {
            Self::Any => Protocols::T0 | Protocols::T1,
            Self::T1 => Protocols::T1,
            Self::T0 => Protocols::T0,
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectOptions {
    /// Shared or exclusive.
    pub share: ShareMode,
    /// Accepted protocols.
    pub protocol: ProtocolChoice,
}

impl ConnectOptions {
    fn share_mode(self) -> pcsc::ShareMode {
        match self.share {
            ShareMode::Shared => pcsc::ShareMode::Shared,
            ShareMode::Exclusive => pcsc::ShareMode::Exclusive,
        }
    }
}

/// The protocol a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveProtocol {
    /// T=0.
    T0,
    /// T=1 (contact T=1, or contactless T=CL).
    T1,
    /// Raw.
    Raw,
}

/// What a reader is doing, from [`PcscContext::reader_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderStatus {
    /// A card is present (and not mute).
    pub card_present: bool,
    /// Some application holds the card exclusively.
    pub exclusive: bool,
    /// The card is in use (shared) by some application.
    pub in_use: bool,
    /// The card's ATR, when present.
    pub atr: Vec<u8>,
}

/// A connection to the PC/SC service.
pub struct PcscContext {
    ctx: Context,
}

impl core::fmt::Debug for PcscContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcscContext").finish_non_exhaustive()
    }
}

fn c_name(reader: &str) -> Result<CString, PcscError> {
    CString::new(reader).map_err(|_| PcscError::InvalidReaderName(reader.to_owned()))
}

/// Picks a reader from `readers`: an exact name wins, then the first whose name contains
/// `wanted` (case-insensitive); with no `wanted`, the first reader.
pub fn pick_reader<'a>(readers: &'a [String], wanted: Option<&str>) -> Result<&'a str, PcscError> {
    let Some(first) = readers.first() else {
        return Err(PcscError::NoReader);
    };
    let Some(wanted) = wanted else {
        return Ok(first);
    };
    if let Some(r) = readers.iter().find(|r| r.as_str() == wanted) {
        return Ok(r);
    }
    let needle = wanted.to_lowercase();
    readers
        .iter()
        .find(|r| r.to_lowercase().contains(&needle))
        .map(String::as_str)
        .ok_or_else(|| PcscError::ReaderNotFound {
            wanted: wanted.to_owned(),
            available: readers.join(", "),
        })
}

impl PcscContext {
    /// Connects to the PC/SC service.
    pub fn establish() -> Result<Self, PcscError> {
        Context::establish(Scope::User)
            .map(|ctx| Self { ctx })
            .map_err(|e| PcscError::from_pcsc(e, "establish", ""))
    }

    /// The names of the connected readers (empty when there are none).
    pub fn readers(&self) -> Result<Vec<String>, PcscError> {
        match self.ctx.list_readers_owned() {
            Ok(names) => Ok(names
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect()),
            Err(Raw::NoReadersAvailable) => Ok(Vec::new()),
            Err(e) => Err(PcscError::from_pcsc(e, "list readers", "")),
        }
    }

    /// The reader called `wanted` (exact, else case-insensitive substring; see
    /// [`pick_reader`]), or the first reader when `wanted` is `None`.
    pub fn find_reader(&self, wanted: Option<&str>) -> Result<String, PcscError> {
        let readers = self.readers()?;
        pick_reader(&readers, wanted).map(str::to_owned)
    }

    /// The current state of `reader`, without waiting.
    pub fn reader_state(&self, reader: &str) -> Result<ReaderStatus, PcscError> {
        let mut states = [ReaderState::new(c_name(reader)?, State::UNAWARE)];
        self.ctx
            .get_status_change(Duration::ZERO, &mut states)
            .map_err(|e| PcscError::from_pcsc(e, "status", reader))?;
        status_of(reader, &states[0])
    }

    fn wait_for(
        &self,
        reader: &str,
        timeout: Duration,
        done: impl Fn(&ReaderStatus) -> bool,
    ) -> Result<ReaderStatus, PcscError> {
        let deadline = Instant::now() + timeout;
        let mut states = [ReaderState::new(c_name(reader)?, State::UNAWARE)];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.ctx.get_status_change(remaining, &mut states) {
                Ok(()) => {}
                Err(Raw::Timeout) => return Err(PcscError::Timeout(timeout)),
                Err(e) => return Err(PcscError::from_pcsc(e, "wait for card", reader)),
            }
            let status = status_of(reader, &states[0])?;
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(PcscError::Timeout(timeout));
            }
            states[0].sync_current_state();
        }
    }

    /// Waits up to `timeout` for a card in `reader` (a tap) and returns its ATR.
    /// Returns at once if a card is already there.
    pub fn wait_for_card(&self, reader: &str, timeout: Duration) -> Result<Vec<u8>, PcscError> {
        self.wait_for(reader, timeout, |s| s.card_present)
            .map(|s| s.atr)
    }

    /// Waits up to `timeout` until `reader` has no card.
    pub fn wait_for_removal(&self, reader: &str, timeout: Duration) -> Result<(), PcscError> {
        self.wait_for(reader, timeout, |s| !s.card_present)
            .map(|_| ())
    }

    /// Connects to the card in `reader`.
    pub fn connect(&self, reader: &str, options: ConnectOptions) -> Result<PcscCard, PcscError> {
        let name = c_name(reader)?;
        let card = self
            .ctx
            .connect(&name, options.share_mode(), options.protocol.protocols())
            .map_err(|e| PcscError::from_pcsc(e, "connect", reader))?;
        let mut card = PcscCard {
            card,
            reader: reader.to_owned(),
            options,
            atr: Vec::new(),
            buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
        };
        card.refresh_atr()?;
        Ok(card)
    }
}

fn status_of(reader: &str, state: &ReaderState) -> Result<ReaderStatus, PcscError> {
    let s = state.event_state();
    if s.intersects(State::UNKNOWN | State::UNAVAILABLE | State::IGNORE) {
        return Err(PcscError::ReaderRemoved(reader.to_owned()));
    }
    let card_present = s.contains(State::PRESENT) && !s.contains(State::MUTE);
    Ok(ReaderStatus {
        card_present,
        exclusive: s.contains(State::EXCLUSIVE),
        in_use: s.contains(State::INUSE),
        atr: if card_present {
            state.atr().to_vec()
        } else {
            Vec::new()
        },
    })
}

/// Finds a reader (`name`: exact or substring; `None`: the first), waits up to `timeout`
/// for a card in it, and connects (shared, T=0 or T=1). This is `cardvm run --pcsc`.
pub fn open_reader(name: Option<&str>, timeout: Duration) -> Result<PcscCard, PcscError> {
    let ctx = PcscContext::establish()?;
    let reader = ctx.find_reader(name)?;
    ctx.wait_for_card(&reader, timeout)?;
    ctx.connect(&reader, ConnectOptions::default())
}

/// A connected card. Dropping it disconnects (and resets the card).
pub struct PcscCard {
    card: pcsc::Card,
    reader: String,
    options: ConnectOptions,
    atr: Vec<u8>,
    buf: Vec<u8>,
}

impl core::fmt::Debug for PcscCard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcscCard")
            .field("reader", &self.reader)
            .field("options", &self.options)
            .field("atr", &self.atr)
            .finish_non_exhaustive()
    }
}

/// Transmits through `card` into the internal `buf`, then copies into `response`.
/// Exactly one `SCardTransmit`; never retried.
fn transmit_via(
    card: &pcsc::Card,
    buf: &mut [u8],
    reader: &str,
    command: &[u8],
    response: &mut [u8],
) -> Result<usize, PcscError> {
    let got = card
        .transmit(command, buf)
        .map_err(|e| PcscError::from_transmit(e, reader))?;
    let n = got.len();
    if n == 0 {
        // "Success" with no bytes at all: the card never answered (vpcd reports a card
        // that left mid-command this way). The command may have executed: tearing.
        return Err(PcscError::CardRemoved);
    }
    let Some(dst) = response.get_mut(..n) else {
        return Err(PcscError::ResponseTooLong {
            needed: n,
            capacity: response.len(),
        });
    };
    dst.copy_from_slice(got);
    Ok(n)
}

impl PcscCard {
    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// The card's ATR (as of the last connect or reconnect).
    pub fn atr_bytes(&self) -> &[u8] {
        &self.atr
    }

    /// The connection settings.
    pub fn options(&self) -> ConnectOptions {
        self.options
    }

    /// The protocol in use, if any.
    pub fn protocol(&self) -> Option<ActiveProtocol> {
        self.card.status2_owned().ok().and_then(|s| {
            s.protocol2().map(|p| match p {
                pcsc::Protocol::T0 => ActiveProtocol::T0,
                pcsc::Protocol::T1 => ActiveProtocol::T1,
                pcsc::Protocol::RAW => ActiveProtocol::Raw,
            })
        })
    }

    fn refresh_atr(&mut self) -> Result<(), PcscError> {
        let status = self
            .card
            .status2_owned()
            .map_err(|e| PcscError::from_pcsc(e, "status", &self.reader))?;
        self.atr = status.atr().to_vec();
        Ok(())
    }

    /// Whether the card is still there (the connection is usable).
    pub fn is_present(&self) -> bool {
        self.card.status2_owned().is_ok()
    }

    /// Sends one command APDU and writes the raw response into `response`. Never
    /// retried; see the [module docs](self).
    pub fn transmit_raw(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, PcscError> {
        transmit_via(&self.card, &mut self.buf, &self.reader, command, response)
    }

    /// Begins an exclusive transaction; it ends when the guard is dropped (or with
    /// [`PcscTransaction::end`]).
    pub fn transaction(&mut self) -> Result<PcscTransaction<'_>, PcscError> {
        let Self {
            card,
            reader,
            atr,
            buf,
            ..
        } = self;
        let tx = card
            .transaction()
            .map_err(|e| PcscError::from_pcsc(e, "begin transaction", reader))?;
        Ok(PcscTransaction {
            tx,
            reader,
            atr,
            buf,
        })
    }

    /// Reconnects to the card (e.g. after [`PcscError::CardRemoved`] when the card came
    /// back, or after another application reset it). `reset`: warm-reset the card;
    /// otherwise leave it as it is. Refreshes the ATR.
    pub fn reconnect(&mut self, reset: bool) -> Result<(), PcscError> {
        let init = if reset {
            Disposition::ResetCard
        } else {
            Disposition::LeaveCard
        };
        self.card
            .reconnect(
                self.options.share_mode(),
                self.options.protocol.protocols(),
                init,
            )
            .map_err(|e| PcscError::from_pcsc(e, "reconnect", &self.reader))?;
        self.refresh_atr()
    }

    /// Disconnects, leaving the card powered (`reset`: reset it).
    pub fn disconnect(self, reset: bool) -> Result<(), PcscError> {
        let how = if reset {
            Disposition::ResetCard
        } else {
            Disposition::LeaveCard
        };
        let reader = self.reader;
        self.card
            .disconnect(how)
            .map_err(|(_, e)| PcscError::from_pcsc(e, "disconnect", &reader))
    }
}

impl CardTransport for PcscCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.transmit_raw(command, response).map_err(Into::into)
    }

    fn power_on(&mut self) -> Result<(), TransportError> {
        self.reconnect(false).map_err(Into::into)
    }

    fn power_off(&mut self) -> Result<(), TransportError> {
        self.card
            .reconnect(
                self.options.share_mode(),
                self.options.protocol.protocols(),
                Disposition::UnpowerCard,
            )
            .map_err(|e| PcscError::from_pcsc(e, "power off", &self.reader).into())
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.reconnect(true).map_err(Into::into)
    }

    fn atr(&self) -> Option<&[u8]> {
        Some(&self.atr)
    }

    /// When the card's ATR is a PC/SC Part 3 storage-card ATR (the reader built it and
    /// answers FF 82 itself); never for a CPU card.
    fn reader_key_store(&self) -> bool {
        crate::transport::is_part3_storage_card_atr(&self.atr)
    }
}

/// An exclusive transaction on a [`PcscCard`]: no other application can talk to the card
/// until it ends. Dropping the guard ends it (leaving the card as it is).
pub struct PcscTransaction<'a> {
    tx: pcsc::Transaction<'a>,
    reader: &'a str,
    atr: &'a [u8],
    buf: &'a mut Vec<u8>,
}

impl core::fmt::Debug for PcscTransaction<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcscTransaction")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl PcscTransaction<'_> {
    /// Sends one command APDU inside the transaction. Never retried.
    pub fn transmit_raw(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, PcscError> {
        transmit_via(&self.tx, self.buf, self.reader, command, response)
    }

    /// Ends the transaction explicitly, reporting errors (`reset`: reset the card too).
    pub fn end(self, reset: bool) -> Result<(), PcscError> {
        let how = if reset {
            Disposition::ResetCard
        } else {
            Disposition::LeaveCard
        };
        let reader = self.reader;
        self.tx
            .end(how)
            .map_err(|(_, e)| PcscError::from_pcsc(e, "end transaction", reader))
    }
}

impl CardTransport for PcscTransaction<'_> {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.transmit_raw(command, response).map_err(Into::into)
    }

    fn atr(&self) -> Option<&[u8]> {
        Some(self.atr)
    }

    /// As for [`PcscCard`]: only under a PC/SC Part 3 storage-card ATR.
    fn reader_key_store(&self) -> bool {
        crate::transport::is_part3_storage_card_atr(self.atr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pick_reader_exact_then_substring() {
        let r = names(&[
            "ACS ACR122U 00 00",
            "Virtual PCD 00 00",
            "Virtual PCD 00 01",
        ]);
        assert_eq!(pick_reader(&r, None).unwrap(), "ACS ACR122U 00 00");
        assert_eq!(
            pick_reader(&r, Some("Virtual PCD 00 01")).unwrap(),
            "Virtual PCD 00 01"
        );
        assert_eq!(
            pick_reader(&r, Some("virtual")).unwrap(),
            "Virtual PCD 00 00"
        );
        assert_eq!(
            pick_reader(&r, Some("acr122")).unwrap(),
            "ACS ACR122U 00 00"
        );
        assert!(matches!(
            pick_reader(&r, Some("omnikey")),
            Err(PcscError::ReaderNotFound { .. })
        ));
        assert_eq!(pick_reader(&[], Some("x")), Err(PcscError::NoReader));
    }

    #[test]
    fn error_mapping() {
        assert_eq!(
            PcscError::from_pcsc(Raw::RemovedCard, "x", "r"),
            PcscError::CardRemoved
        );
        assert_eq!(
            PcscError::from_pcsc(Raw::ResetCard, "x", "r"),
            PcscError::CardRemoved
        );
        assert_eq!(
            PcscError::from_pcsc(Raw::NoReadersAvailable, "x", "r"),
            PcscError::NoReader
        );
        assert_eq!(
            PcscError::from_pcsc(Raw::ReaderUnavailable, "x", "r"),
            PcscError::ReaderRemoved("r".into())
        );
        assert_eq!(
            PcscError::from_pcsc(Raw::UnknownReader, "x", "r"),
            PcscError::ReaderRemoved("r".into())
        );
        assert_eq!(
            PcscError::from_pcsc(Raw::SharingViolation, "x", "r"),
            PcscError::SharingViolation
        );
        assert_eq!(
            PcscError::from_pcsc(Raw::NoService, "x", "r"),
            PcscError::NoService
        );
        assert_eq!(
            PcscError::from_transmit(Raw::CommError, "r"),
            PcscError::CardRemoved
        );
        assert_eq!(
            TransportError::from(PcscError::CardRemoved),
            TransportError::CardRemoved
        );
        assert_eq!(
            TransportError::from(PcscError::SharingViolation),
            TransportError::SharingViolation
        );
        assert!(matches!(
            TransportError::from(PcscError::ReaderRemoved("r".into())),
            TransportError::ReaderUnavailable(_)
        ));
        assert_eq!(
            TransportError::from(PcscError::NoCard("r".into())),
            TransportError::NoCard
        );
    }
}
