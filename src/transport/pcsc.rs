//! PC/SC backend for real readers (feature `pcsc`, on the `pcsc` crate).
//!
//! [`PcscContext`] lists readers, picks one ([`choose_reader`]: by name, substring, index
//! as in `opensc-tool -r N`, or the reader that holds a card), and waits for a card tap;
//! [`PcscCard`] is a connected card (shared or exclusive, T=1 — which is how PC/SC
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
//! # Timeouts
//!
//! `SCardTransmit` has no timeout, and nothing in the API can interrupt it: `SCardCancel`
//! only ends a pending `SCardGetStatusChange` (Microsoft's `SCardCancel` documentation;
//! pcsc-lite documents the same), pcsc-lite lets `SCardConnect` block "for an unlimited
//! amount of time" (LudovicRousseau/PCSC#254), and ISO 7816 / 14443 waiting-time
//! extensions let a card hold a command for very long (OpenSC/OpenSC#1473). The vpcd
//! driver waits on its socket with no timeout at all. So every call on a connected card
//! runs on a **worker thread** that owns the `SCARDHANDLE`; the caller waits at most
//! [`ConnectOptions::apdu_timeout`] ([`DEFAULT_APDU_TIMEOUT`]) for the answer and then
//! reports [`PcscError::CardTimeout`] → [`TransportError::Timeout`]. A timed-out
//! connection is abandoned: the worker is left to finish the stuck call (it then
//! disconnects, resetting the card) and every later call on that [`PcscCard`] fails at
//! once with [`PcscError::Abandoned`]. Buffers travel between the two threads by move over
//! bounded channels, so an exchange still allocates nothing.
//!
//! [`open_reader`] is the one-call path the CLI uses: choose the reader, wait for a card,
//! connect.

use crate::transport::{CardTransport, TransportError};
use std::ffi::CString;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use pcsc::{Context, Disposition, Error as Raw, Protocols, ReaderState, Scope, State};

/// How long one exchange (or any other call on a connected card) may take before
/// [`PcscError::CardTimeout`]. 30 s: far above what a purse command takes (tens to a few
/// hundred milliseconds, even with waiting-time extensions while the card writes its
/// EEPROM), and short enough that a customer at a turnstile or a counter is not left with
/// a frozen reader; a card removed mid-command normally ends the call much sooner with
/// "card removed".
pub const DEFAULT_APDU_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Several readers match the requested substring: name one of them exactly.
    #[error("{wanted:?} matches several readers: {matches} (give the full name or an index)")]
    AmbiguousReader {
        /// The substring asked for.
        wanted: String,
        /// The matching readers, with their indices, comma-separated.
        matches: String,
    },
    /// No reader matches the requested name (or index).
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
    /// The card did not answer `op` within the APDU timeout: the command may or may not
    /// have executed. The connection is abandoned (see the [module docs](self)).
    #[error(
        "the card did not answer ({op}) within {after:?}: the command may or may not have executed"
    )]
    CardTimeout {
        /// The call that timed out (`transmit`, `begin transaction`, …).
        op: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// An earlier call on this connection timed out; the connection is no longer used.
    #[error("the connection to the card was abandoned after an earlier timeout: connect again")]
    Abandoned,
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
    /// The thread that talks to the card could not be started or went away.
    #[error("PC/SC worker thread: {0}")]
    Worker(String),
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
            PcscError::Timeout(_) | PcscError::CardTimeout { .. } | PcscError::Abandoned => {
                TransportError::Timeout
            }
            PcscError::ResponseTooLong { needed, capacity } => {
                TransportError::ResponseTooLong { needed, capacity }
            }
            e @ (PcscError::NoService
            | PcscError::NoReader
            | PcscError::ReaderNotFound { .. }
            | PcscError::AmbiguousReader { .. }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Shared or exclusive.
    pub share: ShareMode,
    /// Accepted protocols.
    pub protocol: ProtocolChoice,
    /// Longest wait for one call on the card (an exchange, a transaction start, a
    /// reconnect) before [`PcscError::CardTimeout`]; see the [module docs](self).
    pub apdu_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            share: ShareMode::default(),
            protocol: ProtocolChoice::default(),
            apdu_timeout: DEFAULT_APDU_TIMEOUT,
        }
    }
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

/// A reader as [`choose_reader`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderEntry {
    /// The reader's name.
    pub name: String,
    /// Whether a card is in it.
    pub card_present: bool,
}

/// What [`choose_reader`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderChoice {
    /// This reader (index in the list), and why it was chosen.
    Reader {
        /// The reader's name.
        name: String,
        /// Its index in the reader list (`opensc-tool -r N`).
        index: usize,
        /// Why, for the user: `"named"`, `"index 1"`, `"the only reader"`, …
        why: String,
    },
    /// No reader was named and none holds a card yet: wait for a tap on any of them.
    WaitForTap,
}

/// Chooses the reader `--pcsc [READER]` means, from the readers in PC/SC order:
///
/// * `None`: the reader that holds a card (the first of several, naming the others);
///   with no card anywhere, the only reader, or [`ReaderChoice::WaitForTap`].
/// * an exact reader name: that reader;
/// * all digits: the reader at that index, counted from 0 as `opensc-tool -r N` does;
/// * otherwise a case-insensitive substring that must match exactly one reader:
///   [`PcscError::AmbiguousReader`] lists them when it matches several.
///
/// ```
/// use cardvm::transport::pcsc::{ReaderChoice, ReaderEntry, choose_reader};
/// let readers = [
///     ReaderEntry { name: "Virtual PCD 00 00".into(), card_present: false },
///     ReaderEntry { name: "Virtual PCD 00 01".into(), card_present: true },
/// ];
/// let chosen = |w| match choose_reader(&readers, w) {
///     Ok(ReaderChoice::Reader { name, .. }) => Some(name),
///     _ => None,
/// };
/// assert_eq!(chosen(None).as_deref(), Some("Virtual PCD 00 01")); // holds the card
/// assert_eq!(chosen(Some("0")).as_deref(), Some("Virtual PCD 00 00")); // index
/// assert!(choose_reader(&readers, Some("virtual")).is_err()); // matches both
/// ```
pub fn choose_reader(
    readers: &[ReaderEntry],
    wanted: Option<&str>,
) -> Result<ReaderChoice, PcscError> {
    if readers.is_empty() {
        return Err(PcscError::NoReader);
    }
    let pick = |index: usize, why: String| ReaderChoice::Reader {
        name: readers[index].name.clone(),
        index,
        why,
    };
    let listing = |indices: &mut dyn Iterator<Item = usize>| {
        indices
            .map(|i| format!("{i}: {}", readers[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        let with_card: Vec<usize> = (0..readers.len())
            .filter(|&i| readers[i].card_present)
            .collect();
        return Ok(match with_card.as_slice() {
            [] if readers.len() == 1 => pick(0, String::from("the only reader")),
            [] => ReaderChoice::WaitForTap,
            [one] => pick(*one, String::from("it holds a card")),
            [first, rest @ ..] => pick(
                *first,
                format!(
                    "the first reader that holds a card; also with a card: {}",
                    listing(&mut rest.iter().copied())
                ),
            ),
        });
    };
    if let Some(i) = readers.iter().position(|r| r.name == wanted) {
        return Ok(pick(i, String::from("named")));
    }
    if wanted.bytes().all(|b| b.is_ascii_digit()) {
        return match wanted.parse::<usize>() {
            Ok(i) if i < readers.len() => Ok(pick(i, format!("reader index {i}"))),
            _ => Err(PcscError::ReaderNotFound {
                wanted: wanted.to_owned(),
                available: listing(&mut (0..readers.len())),
            }),
        };
    }
    let needle = wanted.to_lowercase();
    let matches: Vec<usize> = (0..readers.len())
        .filter(|&i| readers[i].name.to_lowercase().contains(&needle))
        .collect();
    match matches.as_slice() {
        [one] => Ok(pick(*one, format!("matches {wanted:?}"))),
        [] => Err(PcscError::ReaderNotFound {
            wanted: wanted.to_owned(),
            available: listing(&mut (0..readers.len())),
        }),
        several => Err(PcscError::AmbiguousReader {
            wanted: wanted.to_owned(),
            matches: listing(&mut several.iter().copied()),
        }),
    }
}

/// Picks a reader from `readers` by name (see [`choose_reader`]; card presence is not
/// known here): with no `wanted`, the first reader.
pub fn pick_reader<'a>(readers: &'a [String], wanted: Option<&str>) -> Result<&'a str, PcscError> {
    let entries: Vec<ReaderEntry> = readers
        .iter()
        .map(|name| ReaderEntry {
            name: name.clone(),
            card_present: false,
        })
        .collect();
    match choose_reader(&entries, wanted)? {
        ReaderChoice::Reader { index, .. } => Ok(&readers[index]),
        ReaderChoice::WaitForTap => Ok(&readers[0]),
    }
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

    /// The reader called `wanted` (see [`pick_reader`]), or the first reader when
    /// `wanted` is `None`.
    pub fn find_reader(&self, wanted: Option<&str>) -> Result<String, PcscError> {
        let readers = self.readers()?;
        pick_reader(&readers, wanted).map(str::to_owned)
    }

    /// Every reader with whether it holds a card, in PC/SC order.
    pub fn reader_entries(&self) -> Result<Vec<ReaderEntry>, PcscError> {
        let names = self.readers()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut states = names
            .iter()
            .map(|n| Ok(ReaderState::new(c_name(n)?, State::UNAWARE)))
            .collect::<Result<Vec<_>, PcscError>>()?;
        self.ctx
            .get_status_change(Duration::ZERO, &mut states)
            .map_err(|e| PcscError::from_pcsc(e, "status", ""))?;
        Ok(names
            .into_iter()
            .zip(&states)
            .map(|(name, s)| ReaderEntry {
                card_present: status_of(&name, s).is_ok_and(|s| s.card_present),
                name,
            })
            .collect())
    }

    /// The one resolver behind every `--pcsc [READER]`: [`choose_reader`] on the readers
    /// present; when none was named and none holds a card, waits up to `wait` for a tap
    /// on any reader. Returns the reader's name and why it was chosen.
    pub fn resolve_reader(
        &self,
        wanted: Option<&str>,
        wait: Duration,
    ) -> Result<(String, String), PcscError> {
        match choose_reader(&self.reader_entries()?, wanted)? {
            ReaderChoice::Reader { name, index, why } => {
                Ok((name, format!("reader {index}, {why}")))
            }
            ReaderChoice::WaitForTap => self.wait_for_tap_anywhere(wait),
        }
    }

    /// Waits up to `timeout` for a card in any reader; returns the first such reader.
    fn wait_for_tap_anywhere(&self, timeout: Duration) -> Result<(String, String), PcscError> {
        let deadline = Instant::now() + timeout;
        let names = self.readers()?;
        let mut states = names
            .iter()
            .map(|n| Ok(ReaderState::new(c_name(n)?, State::UNAWARE)))
            .collect::<Result<Vec<_>, PcscError>>()?;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.ctx.get_status_change(remaining, &mut states) {
                Ok(()) => {}
                Err(Raw::Timeout) => return Err(PcscError::Timeout(timeout)),
                Err(e) => return Err(PcscError::from_pcsc(e, "wait for card", "")),
            }
            for (i, (name, s)) in names.iter().zip(&states).enumerate() {
                if status_of(name, s).is_ok_and(|s| s.card_present) {
                    return Ok((
                        name.clone(),
                        format!("reader {i}, the first reader a card was tapped on"),
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(PcscError::Timeout(timeout));
            }
            states.iter_mut().for_each(ReaderState::sync_current_state);
        }
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

    /// Connects to the card in `reader`. The connection runs on its own worker thread
    /// (see the [module docs](self)); connecting itself is bounded by
    /// `options.apdu_timeout` too.
    pub fn connect(&self, reader: &str, options: ConnectOptions) -> Result<PcscCard, PcscError> {
        let name = c_name(reader)?;
        let (req_tx, req_rx) = sync_channel::<Request>(1);
        let (rep_tx, rep_rx) = sync_channel::<Reply>(1);
        let ctx = self.ctx.clone();
        let owned = reader.to_owned();
        std::thread::Builder::new()
            .name(String::from("cardvm-pcsc"))
            .spawn(move || worker(ctx, name, owned, options, req_rx, rep_tx))
            .map_err(|e| PcscError::Worker(e.to_string()))?;
        let mut card = PcscCard {
            worker: Worker {
                tx: req_tx,
                rx: rep_rx,
                timeout: options.apdu_timeout,
                abandoned: std::cell::Cell::new(false),
            },
            reader: reader.to_owned(),
            options,
            atr: Vec::new(),
            protocol: None,
            command: Vec::with_capacity(pcsc::MAX_BUFFER_SIZE_EXTENDED),
            buf: Some(vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED]),
        };
        match card.worker.call(Request::Connect, "connect")? {
            Reply::Done(r) => r?,
            _ => return Err(PcscError::Worker(String::from("unexpected reply"))),
        }
        card.refresh_status()?;
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

/// Chooses a reader ([`PcscContext::resolve_reader`]: `name` as in [`choose_reader`];
/// `None`: the reader that holds a card), waits up to `wait` for a card in it, and
/// connects with `options`. This is `--pcsc [READER]` of the CLI. Returns the card and
/// why its reader was chosen (the CLI prints it).
pub fn open_reader(
    name: Option<&str>,
    wait: Duration,
    options: ConnectOptions,
) -> Result<(PcscCard, String), PcscError> {
    let ctx = PcscContext::establish()?;
    let (reader, why) = ctx.resolve_reader(name, wait)?;
    ctx.wait_for_card(&reader, wait)?;
    Ok((ctx.connect(&reader, options)?, why))
}

/// A call the worker makes on the card.
enum Request {
    Connect,
    Transmit { command: Vec<u8>, buf: Vec<u8> },
    Status,
    Begin,
    End(Disposition),
    Reconnect(Disposition),
    Disconnect(Disposition),
}

/// The worker's answer to one [`Request`].
enum Reply {
    Done(Result<(), PcscError>),
    Transmit {
        result: Result<usize, PcscError>,
        command: Vec<u8>,
        buf: Vec<u8>,
    },
    Status(Result<(Vec<u8>, Option<ActiveProtocol>), PcscError>),
}

/// The caller's end of the worker: at most `timeout` per call.
struct Worker {
    tx: SyncSender<Request>,
    rx: Receiver<Reply>,
    timeout: Duration,
    /// Set after a timeout: the worker is stuck in (or just finished) an old call, so its
    /// next reply would answer the wrong request.
    abandoned: std::cell::Cell<bool>,
}

impl Worker {
    fn call(&self, request: Request, op: &'static str) -> Result<Reply, PcscError> {
        if self.abandoned.get() {
            return Err(PcscError::Abandoned);
        }
        let gone = || PcscError::Worker(String::from("the card's worker thread has stopped"));
        self.tx.send(request).map_err(|_| gone())?;
        match self.rx.recv_timeout(self.timeout) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                self.abandoned.set(true);
                Err(PcscError::CardTimeout {
                    op,
                    after: self.timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    fn done(&self, request: Request, op: &'static str) -> Result<(), PcscError> {
        match self.call(request, op)? {
            Reply::Done(r) => r,
            _ => Err(PcscError::Worker(String::from("unexpected reply"))),
        }
    }
}

/// The worker thread: owns the card handle and makes every PC/SC call on it, one request
/// at a time. It ends when the [`PcscCard`] is dropped (the card is then disconnected
/// and reset, as `pcsc::Card`'s drop does) or after a disconnect.
fn worker(
    ctx: Context,
    name: CString,
    reader: String,
    options: ConnectOptions,
    requests: Receiver<Request>,
    replies: SyncSender<Reply>,
) {
    let card = match requests.recv() {
        Ok(Request::Connect) => {
            match ctx.connect(&name, options.share_mode(), options.protocol.protocols()) {
                Ok(card) => {
                    let _ = replies.send(Reply::Done(Ok(())));
                    card
                }
                Err(e) => {
                    let _ = replies.send(Reply::Done(Err(PcscError::from_pcsc(
                        e, "connect", &reader,
                    ))));
                    return;
                }
            }
        }
        _ => return,
    };
    let mut card = card;
    while let Ok(request) = requests.recv() {
        let reply = match request {
            Request::Transmit { command, mut buf } => Reply::Transmit {
                result: transmit_via(&card, &mut buf, &reader, &command),
                command,
                buf,
            },
            Request::Status => Reply::Status(status_via(&card, &reader)),
            Request::Begin => match card.transaction() {
                Err(e) => Reply::Done(Err(PcscError::from_pcsc(e, "begin transaction", &reader))),
                Ok(tx) => {
                    if replies.send(Reply::Done(Ok(()))).is_err() {
                        return;
                    }
                    // Serve the transaction until it ends; dropping it (the caller went
                    // away) ends it leaving the card as it is.
                    loop {
                        let Ok(request) = requests.recv() else {
                            return;
                        };
                        let reply = match request {
                            Request::Transmit { command, mut buf } => Reply::Transmit {
                                result: transmit_via(&tx, &mut buf, &reader, &command),
                                command,
                                buf,
                            },
                            Request::Status => Reply::Status(status_via(&tx, &reader)),
                            Request::End(how) => {
                                let r = tx.end(how).map_err(|(_, e)| {
                                    PcscError::from_pcsc(e, "end transaction", &reader)
                                });
                                if replies.send(Reply::Done(r)).is_err() {
                                    return;
                                }
                                break;
                            }
                            _ => Reply::Done(Err(PcscError::Worker(String::from(
                                "not allowed inside a transaction",
                            )))),
                        };
                        if replies.send(reply).is_err() {
                            return;
                        }
                    }
                    continue;
                }
            },
            Request::End(_) => Reply::Done(Ok(())),
            Request::Reconnect(how) => Reply::Done(
                card.reconnect(options.share_mode(), options.protocol.protocols(), how)
                    .map_err(|e| PcscError::from_pcsc(e, "reconnect", &reader)),
            ),
            Request::Disconnect(how) => {
                let r = card
                    .disconnect(how)
                    .map_err(|(_, e)| PcscError::from_pcsc(e, "disconnect", &reader));
                let _ = replies.send(Reply::Done(r));
                return;
            }
            Request::Connect => Reply::Done(Ok(())),
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// Transmits through `card` into `buf`; returns the response length. Exactly one
/// `SCardTransmit`; never retried.
fn transmit_via(
    card: &pcsc::Card,
    buf: &mut [u8],
    reader: &str,
    command: &[u8],
) -> Result<usize, PcscError> {
    let got = card
        .transmit(command, buf)
        .map_err(|e| PcscError::from_transmit(e, reader))?;
    if got.is_empty() {
        // "Success" with no bytes at all: the card never answered (vpcd reports a card
        // that left mid-command this way). The command may have executed: tearing.
        return Err(PcscError::CardRemoved);
    }
    Ok(got.len())
}

fn status_via(
    card: &pcsc::Card,
    reader: &str,
) -> Result<(Vec<u8>, Option<ActiveProtocol>), PcscError> {
    let status = card
        .status2_owned()
        .map_err(|e| PcscError::from_pcsc(e, "status", reader))?;
    let protocol = status.protocol2().map(|p| match p {
        pcsc::Protocol::T0 => ActiveProtocol::T0,
        pcsc::Protocol::T1 => ActiveProtocol::T1,
        pcsc::Protocol::RAW => ActiveProtocol::Raw,
    });
    Ok((status.atr().to_vec(), protocol))
}

/// A connected card. Dropping it disconnects (and resets the card).
pub struct PcscCard {
    worker: Worker,
    reader: String,
    options: ConnectOptions,
    atr: Vec<u8>,
    protocol: Option<ActiveProtocol>,
    /// The command on its way to the worker (reused: no allocation per exchange).
    command: Vec<u8>,
    /// The response buffer; `None` while the worker holds it (after a timeout: for good).
    buf: Option<Vec<u8>>,
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

    /// The protocol in use (as of the last connect or reconnect), if any.
    pub fn protocol(&self) -> Option<ActiveProtocol> {
        self.protocol
    }

    fn refresh_status(&mut self) -> Result<(), PcscError> {
        match self.worker.call(Request::Status, "status")? {
            Reply::Status(r) => {
                let (atr, protocol) = r?;
                self.atr = atr;
                self.protocol = protocol;
                Ok(())
            }
            _ => Err(PcscError::Worker(String::from("unexpected reply"))),
        }
    }

    /// Whether the card is still there (the connection is usable).
    pub fn is_present(&self) -> bool {
        matches!(
            self.worker.call(Request::Status, "status"),
            Ok(Reply::Status(Ok(_)))
        )
    }

    /// Sends one command APDU and writes the raw response into `response`. Never
    /// retried; waits at most the APDU timeout. See the [module docs](self).
    pub fn transmit_raw(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, PcscError> {
        let Some(buf) = self.buf.take() else {
            return Err(PcscError::Abandoned);
        };
        let mut cmd = core::mem::take(&mut self.command);
        cmd.clear();
        cmd.extend_from_slice(command);
        let reply = self
            .worker
            .call(Request::Transmit { command: cmd, buf }, "transmit")?;
        let Reply::Transmit {
            result,
            command: cmd,
            buf,
        } = reply
        else {
            return Err(PcscError::Worker(String::from("unexpected reply")));
        };
        self.command = cmd;
        let n = result;
        let out = n.and_then(|n| {
            let src = buf.get(..n).ok_or(PcscError::ResponseTooLong {
                needed: n,
                capacity: buf.len(),
            })?;
            let capacity = response.len();
            let dst = response.get_mut(..n).ok_or(PcscError::ResponseTooLong {
                needed: n,
                capacity,
            })?;
            dst.copy_from_slice(src);
            Ok(n)
        });
        self.buf = Some(buf);
        out
    }

    /// Begins an exclusive transaction; it ends when the guard is dropped (or with
    /// [`PcscTransaction::end`]).
    pub fn transaction(&mut self) -> Result<PcscTransaction<'_>, PcscError> {
        self.worker.done(Request::Begin, "begin transaction")?;
        Ok(PcscTransaction {
            card: self,
            open: true,
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
        self.worker.done(Request::Reconnect(init), "reconnect")?;
        self.refresh_status()
    }

    /// Disconnects, leaving the card powered (`reset`: reset it).
    pub fn disconnect(self, reset: bool) -> Result<(), PcscError> {
        let how = if reset {
            Disposition::ResetCard
        } else {
            Disposition::LeaveCard
        };
        self.worker.done(Request::Disconnect(how), "disconnect")
    }
}

impl Drop for PcscCard {
    /// Disconnects (resetting the card) and waits for it, up to the APDU timeout: the
    /// next connection (this application's or another's) must not race a disconnect
    /// still pending on the worker.
    fn drop(&mut self) {
        let _ = self
            .worker
            .done(Request::Disconnect(Disposition::ResetCard), "disconnect");
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
        self.worker
            .done(Request::Reconnect(Disposition::UnpowerCard), "power off")
            .map_err(Into::into)
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
    card: &'a mut PcscCard,
    open: bool,
}

impl core::fmt::Debug for PcscTransaction<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PcscTransaction")
            .field("reader", &self.card.reader)
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
        self.card.transmit_raw(command, response)
    }

    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.card.reader
    }

    /// The protocol in use, if any.
    pub fn protocol(&self) -> Option<ActiveProtocol> {
        self.card.protocol
    }

    /// Ends the transaction explicitly, reporting errors (`reset`: reset the card too).
    pub fn end(mut self, reset: bool) -> Result<(), PcscError> {
        let how = if reset {
            Disposition::ResetCard
        } else {
            Disposition::LeaveCard
        };
        self.open = false;
        self.card.worker.done(Request::End(how), "end transaction")
    }
}

impl Drop for PcscTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self
                .card
                .worker
                .done(Request::End(Disposition::LeaveCard), "end transaction");
        }
    }
}

impl CardTransport for PcscTransaction<'_> {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.transmit_raw(command, response).map_err(Into::into)
    }

    fn atr(&self) -> Option<&[u8]> {
        Some(&self.card.atr)
    }

    /// As for [`PcscCard`]: only under a PC/SC Part 3 storage-card ATR.
    fn reader_key_store(&self) -> bool {
        crate::transport::is_part3_storage_card_atr(&self.card.atr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn entries(v: &[(&str, bool)]) -> Vec<ReaderEntry> {
        v.iter()
            .map(|(n, c)| ReaderEntry {
                name: n.to_string(),
                card_present: *c,
            })
            .collect()
    }

    fn chosen(r: &[ReaderEntry], wanted: Option<&str>) -> Result<String, PcscError> {
        match choose_reader(r, wanted)? {
            ReaderChoice::Reader { name, .. } => Ok(name),
            ReaderChoice::WaitForTap => Ok(String::from("<wait>")),
        }
    }

    #[test]
    fn pick_reader_exact_then_unique_substring() {
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
            pick_reader(&r, Some("acr122")).unwrap(),
            "ACS ACR122U 00 00"
        );
        assert!(matches!(
            pick_reader(&r, Some("omnikey")),
            Err(PcscError::ReaderNotFound { .. })
        ));
        assert_eq!(pick_reader(&[], Some("x")), Err(PcscError::NoReader));
    }

    /// A substring matching two readers must not silently pick the first: the command
    /// could go to the wrong card (a SAM slot instead of the customer's card).
    #[test]
    fn a_substring_matching_several_readers_is_an_error_listing_them() {
        let r = entries(&[
            ("ACS ACR122U 00 00", false),
            ("Virtual PCD 00 00", true),
            ("Virtual PCD 00 01", true),
        ]);
        let err = chosen(&r, Some("virtual")).unwrap_err();
        assert!(matches!(err, PcscError::AmbiguousReader { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("1: Virtual PCD 00 00") && text.contains("2: Virtual PCD 00 01"),
            "{text}"
        );
        assert!(!text.contains("ACR122U"), "{text}");
    }

    #[test]
    fn no_name_picks_the_reader_that_holds_a_card() {
        let r = entries(&[
            ("ACS ACR122U 00 00", false),
            ("Virtual PCD 00 00", false),
            ("Virtual PCD 00 01", true),
        ]);
        assert_eq!(chosen(&r, None).unwrap(), "Virtual PCD 00 01");
        assert_eq!(chosen(&r, Some("")).unwrap(), "Virtual PCD 00 01");
        // Two cards: the first, and the other one is named.
        let two = entries(&[("A", true), ("B", true)]);
        match choose_reader(&two, None).unwrap() {
            ReaderChoice::Reader { name, why, .. } => {
                assert_eq!(name, "A");
                assert!(why.contains("1: B"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // No card anywhere: one reader is used as is; several wait for a tap.
        assert_eq!(chosen(&entries(&[("A", false)]), None).unwrap(), "A");
        assert_eq!(
            choose_reader(&entries(&[("A", false), ("B", false)]), None).unwrap(),
            ReaderChoice::WaitForTap
        );
        assert_eq!(choose_reader(&[], None), Err(PcscError::NoReader));
    }

    #[test]
    fn all_digits_is_the_reader_index_as_in_opensc_tool() {
        let r = entries(&[("A 00 00", false), ("B 00 00", true), ("C 1", false)]);
        assert_eq!(chosen(&r, Some("0")).unwrap(), "A 00 00");
        assert_eq!(chosen(&r, Some("2")).unwrap(), "C 1");
        // "1" is an index, not the substring of "C 1".
        assert_eq!(chosen(&r, Some("1")).unwrap(), "B 00 00");
        let err = chosen(&r, Some("3")).unwrap_err();
        assert!(matches!(err, PcscError::ReaderNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("2: C 1"), "{err}");
        assert!(chosen(&r, Some("99999999999999999999999")).is_err());
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
