//! A virtual smart card for pcscd: the vsmartcard **vpcd** protocol, card side.
//!
//! pcscd's `vpcd` driver listens on a TCP port (35963 for reader `Virtual PCD 00 00`,
//! 35964 for `Virtual PCD 00 01`); a virtual card *connects* to it, and while the
//! connection is open, the reader has a card in it. Every message in both directions is
//! framed by a 2-byte big-endian length. From pcscd:
//!
//! | payload | meaning | answer |
//! |---|---|---|
//! | `00` | power off | none |
//! | `01` | power on | none |
//! | `02` | reset | none |
//! | `04` | get ATR | the ATR |
//! | anything else | a command APDU | response data ‖ SW1 SW2 |
//!
//! [`VpcdServer`] serves any [`CardTransport`] this way, so a simulated card (or a test
//! double) becomes a real card to pcscd and to every PC/SC tool. It reconnects when pcscd
//! restarts, treats [`TransportError::CardRemoved`] from the card as the card leaving the
//! field (it drops the connection, then re-inserts the card after a delay), can remove the
//! card on demand through a [`VpcdHandle`] (for tearing tests), and never panics on bad
//! frames: framing is the pure function [`parse_frame`]. Every loop is bounded by a poll
//! interval, I/O timeouts and an optional attempt limit, and stops on the handle's
//! shutdown flag.

use crate::transport::{CardTransport, TransportError};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default address of the vpcd driver for reader `Virtual PCD 00 00`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:35963";

/// Largest payload a frame can carry (the length field is 16 bits).
pub const MAX_FRAME_PAYLOAD: usize = u16::MAX as usize;

/// Response buffer handed to the card: the largest extended response (65536 + SW).
pub const RESPONSE_BUFFER: usize = 65536 + 2;

/// Control byte: power the card off.
pub const CTRL_POWER_OFF: u8 = 0x00;
/// Control byte: power the card on.
pub const CTRL_POWER_ON: u8 = 0x01;
/// Control byte: warm reset.
pub const CTRL_RESET: u8 = 0x02;
/// Control byte: send the ATR.
pub const CTRL_GET_ATR: u8 = 0x04;

const fn with_tck<const N: usize>(mut atr: [u8; N]) -> [u8; N] {
    // TCK = XOR of every byte from T0 to the byte before TCK.
    let mut tck = 0u8;
    let mut i = 1;
    while i + 1 < N {
        tck ^= atr[i];
        i += 1;
    }
    atr[N - 1] = tck;
    atr
}

/// The ATR served when the card has none: a PC/SC Part 3 style contactless ATR
/// `3B 8C 80 01` + 12 historical bytes (`"cardvm card1"`) + TCK, offering T=1 (the
/// protocol under which PC/SC presents ISO 14443-4 cards).
pub const DEFAULT_ATR: [u8; 17] = with_tck([
    0x3B, 0x8C, 0x80, 0x01, b'c', b'a', b'r', b'd', b'v', b'm', b' ', b'c', b'a', b'r', b'd', b'1',
    0x00,
]);

/// A control message from pcscd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `00`: power off.
    PowerOff,
    /// `01`: power on.
    PowerOn,
    /// `02`: reset.
    Reset,
    /// `04`: send the ATR.
    GetAtr,
}

impl Control {
    /// The control message a 1-byte payload stands for, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            CTRL_POWER_OFF => Some(Self::PowerOff),
            CTRL_POWER_ON => Some(Self::PowerOn),
            CTRL_RESET => Some(Self::Reset),
            CTRL_GET_ATR => Some(Self::GetAtr),
            _ => None,
        }
    }
}

/// One decoded frame from pcscd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A 1-byte control message.
    Control(Control),
    /// A command APDU (any payload that is not a control message; it may be malformed).
    Apdu(&'a [u8]),
    /// A zero-length frame: meaningless, skipped.
    Empty,
}

/// The outcome of [`parse_frame`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole frame, and how many bytes of the input it took.
    Frame(Frame<'a>, usize),
    /// More bytes are needed: the whole frame is `needed` bytes long (header included).
    Incomplete {
        /// Total length of the frame being received, once known (2 before the header).
        needed: usize,
    },
}

/// Decodes the first frame of `buf`. Pure, total and allocation-free: every input gives
/// either a frame or "incomplete"; it never panics.
pub fn parse_frame(buf: &[u8]) -> Parsed<'_> {
    let [hi, lo, rest @ ..] = buf else {
        return Parsed::Incomplete { needed: 2 };
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let Some(payload) = rest.get(..len) else {
        return Parsed::Incomplete { needed: 2 + len };
    };
    let frame = match payload {
        [] => Frame::Empty,
        [b] => match Control::from_byte(*b) {
            Some(c) => Frame::Control(c),
            None => Frame::Apdu(payload),
        },
        _ => Frame::Apdu(payload),
    };
    Parsed::Frame(frame, 2 + len)
}

/// Appends the frame for `payload` to `out`. Payloads longer than
/// [`MAX_FRAME_PAYLOAD`] cannot be framed.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), VpcdError> {
    let len = u16::try_from(payload.len()).map_err(|_| VpcdError::PayloadTooLong(payload.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VpcdError {
    /// The vpcd driver could not be reached `attempts` times in a row.
    #[error("cannot connect to vpcd at {addr} after {attempts} attempts: {last}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Consecutive failed attempts.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A payload too long for the 16-bit length field.
    #[error("payload of {0} bytes does not fit a vpcd frame")]
    PayloadTooLong(usize),
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct VpcdConfig {
    /// Address of the vpcd driver (`HOST:PORT`), resolved on every attempt.
    pub addr: String,
    /// Wait between a lost connection (pcscd stopped, I/O error) and the next attempt.
    pub reconnect_delay: Duration,
    /// How long the card stays out of the field after it tore (transport reported
    /// [`TransportError::CardRemoved`]) before it is inserted again.
    pub reinsert_delay: Duration,
    /// Timeout of one TCP connect attempt.
    pub connect_timeout: Duration,
    /// How often the server wakes up to look at the handle's flags.
    pub poll_interval: Duration,
    /// Longest stall inside one frame (header received, payload pending) or one write.
    pub io_timeout: Duration,
    /// Give up after this many consecutive failed connection attempts (`None`: never).
    pub max_connect_failures: Option<u32>,
    /// Print connection events on stderr.
    pub verbose: bool,
}

impl Default for VpcdConfig {
    fn default() -> Self {
        Self {
            addr: String::from(DEFAULT_ADDR),
            reconnect_delay: Duration::from_millis(500),
            reinsert_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(50),
            io_timeout: Duration::from_secs(5),
            max_connect_failures: None,
            verbose: false,
        }
    }
}

impl VpcdConfig {
    /// The defaults, for the vpcd driver at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ..Self::default()
        }
    }
}

#[derive(Debug)]
struct Shared {
    shutdown: AtomicBool,
    inserted: AtomicBool,
    /// APDUs still answered before the card is pulled; negative: no removal planned.
    remove_after: AtomicI64,
    connected: AtomicBool,
    connections: AtomicU64,
    apdus: AtomicU64,
    removals: AtomicU64,
}

/// Remote control of a running [`VpcdServer`]; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct VpcdHandle {
    shared: Arc<Shared>,
}

impl VpcdHandle {
    fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                shutdown: AtomicBool::new(false),
                inserted: AtomicBool::new(true),
                remove_after: AtomicI64::new(-1),
                connected: AtomicBool::new(false),
                connections: AtomicU64::new(0),
                apdus: AtomicU64::new(0),
                removals: AtomicU64::new(0),
            }),
        }
    }

    /// Asks the server to stop; [`VpcdServer::run`] returns within about one poll
    /// interval (or one I/O timeout if pcscd is mid-frame).
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.shared.shutdown.load(Ordering::SeqCst)
    }

    /// Takes the card out of the reader now (the connection is dropped); it stays out
    /// until [`insert_card`](Self::insert_card).
    pub fn remove_card(&self) {
        self.shared.remove_after.store(-1, Ordering::SeqCst);
        self.shared.inserted.store(false, Ordering::SeqCst);
    }

    /// Puts the card (back) into the reader.
    pub fn insert_card(&self) {
        self.shared.remove_after.store(-1, Ordering::SeqCst);
        self.shared.inserted.store(true, Ordering::SeqCst);
    }

    /// Whether the card is meant to be in the reader.
    pub fn is_inserted(&self) -> bool {
        self.shared.inserted.load(Ordering::SeqCst)
    }

    /// Tearing: answer the next `n` APDUs, then pull the card when APDU `n + 1` arrives,
    /// without giving it to the card and without answering. The card stays out until
    /// [`insert_card`](Self::insert_card).
    pub fn remove_after_apdus(&self, n: u32) {
        self.shared
            .remove_after
            .store(i64::from(n), Ordering::SeqCst);
    }

    /// Whether the server is connected to vpcd (the reader sees a card).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// APDUs answered so far.
    pub fn apdus(&self) -> u64 {
        self.shared.apdus.load(Ordering::SeqCst)
    }

    /// Times the card left the field (on demand, planned, or torn by the card).
    pub fn removals(&self) -> u64 {
        self.shared.removals.load(Ordering::SeqCst)
    }

    /// Polls until the server is connected, at most `timeout`. Returns whether it is.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_connected() {
                return true;
            }
            if Instant::now() >= deadline || self.is_shutdown() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Why one connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Shutdown,
    /// Pulled through the handle (stays out).
    Pulled,
    /// The card tore (transport said so): re-insert after a delay.
    Torn,
    /// pcscd closed the connection or I/O failed: reconnect after a delay.
    Lost(String),
}

/// Serves one card to pcscd's vpcd driver. See the [module docs](self).
#[derive(Debug)]
pub struct VpcdServer<T> {
    card: T,
    config: VpcdConfig,
    handle: VpcdHandle,
    response: Vec<u8>,
    out: Vec<u8>,
}

impl<T: CardTransport> VpcdServer<T> {
    /// A server for `card`, not yet running.
    pub fn new(card: T, config: VpcdConfig) -> Self {
        Self {
            card,
            config,
            handle: VpcdHandle::new(),
            response: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The remote control of this server.
    pub fn handle(&self) -> VpcdHandle {
        self.handle.clone()
    }

    /// The served card.
    pub fn card(&self) -> &T {
        &self.card
    }

    /// Gives the card back (e.g. to save a simulated card's state).
    pub fn into_card(self) -> T {
        self.card
    }

    fn log(&self, msg: core::fmt::Arguments<'_>) {
        if self.config.verbose {
            eprintln!("vpcd: {msg}");
        }
    }

    /// Serves until [`VpcdHandle::shutdown`], reconnecting whenever the connection is
    /// lost. Fails only when `max_connect_failures` consecutive connection attempts
    /// failed.
    pub fn run(&mut self) -> Result<(), VpcdError> {
        let mut failures: u32 = 0;
        let mut next_attempt = Instant::now();
        loop {
            if self.handle.is_shutdown() {
                return Ok(());
            }
            let now = Instant::now();
            if !self.handle.is_inserted() || now < next_attempt {
                let wait = next_attempt
                    .saturating_duration_since(now)
                    .min(self.config.poll_interval)
                    .max(Duration::from_millis(1));
                std::thread::sleep(wait);
                continue;
            }
            match self.connect() {
                Ok(mut stream) => {
                    failures = 0;
                    self.handle
                        .shared
                        .connections
                        .fetch_add(1, Ordering::SeqCst);
                    self.handle.shared.connected.store(true, Ordering::SeqCst);
                    self.log(format_args!(
                        "card inserted (connected to {})",
                        self.config.addr
                    ));
                    let end = self.serve(&mut stream);
                    // A card out of the field has no power: it loses its volatile state.
                    if let Err(e) = self.card.power_off() {
                        self.log(format_args!("card power-off error: {e}"));
                    }
                    if matches!(end, End::Pulled | End::Torn) {
                        self.handle.shared.removals.fetch_add(1, Ordering::SeqCst);
                    }
                    self.handle.shared.connected.store(false, Ordering::SeqCst);
                    // Counters are up to date before the reader sees the card go.
                    drop(stream);
                    let delay = match &end {
                        End::Shutdown => {
                            self.log(format_args!("shutting down"));
                            return Ok(());
                        }
                        End::Pulled => {
                            self.log(format_args!("card removed"));
                            Duration::ZERO
                        }
                        End::Torn => {
                            self.log(format_args!("card torn; re-inserting"));
                            self.config.reinsert_delay
                        }
                        End::Lost(why) => {
                            self.log(format_args!("connection lost ({why}); reconnecting"));
                            self.config.reconnect_delay
                        }
                    };
                    next_attempt = Instant::now() + delay;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if self
                        .config
                        .max_connect_failures
                        .is_some_and(|max| failures >= max)
                    {
                        return Err(VpcdError::Connect {
                            addr: self.config.addr.clone(),
                            attempts: failures,
                            last: e.to_string(),
                        });
                    }
                    next_attempt = Instant::now() + self.config.reconnect_delay;
                }
            }
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = self.config.addr.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.config.connect_timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(
                        self.config.poll_interval.max(Duration::from_millis(1)),
                    ))?;
                    s.set_write_timeout(Some(
                        self.config.io_timeout.max(Duration::from_millis(1)),
                    ))?;
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One connection: frames in, answers out, until something ends it.
    fn serve(&mut self, stream: &mut TcpStream) -> End {
        let mut rx: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let mut partial_since: Option<Instant> = None;
        loop {
            if self.handle.is_shutdown() {
                return End::Shutdown;
            }
            if !self.handle.is_inserted() {
                return End::Pulled;
            }
            match parse_frame(&rx) {
                Parsed::Frame(frame, used) => {
                    partial_since = None;
                    let step = self.answer(frame, stream);
                    rx.drain(..used.min(rx.len()));
                    if let Some(end) = step {
                        return end;
                    }
                }
                Parsed::Incomplete { .. } => {
                    if !rx.is_empty() {
                        let since = *partial_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > self.config.io_timeout {
                            return End::Lost(String::from("frame stalled (short read)"));
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) => return End::Lost(String::from("closed by pcscd")),
                        Ok(n) => rx.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => return End::Lost(e.to_string()),
                    }
                }
            }
        }
    }

    /// Handles one frame; `Some` ends the connection.
    fn answer(&mut self, frame: Frame<'_>, stream: &mut TcpStream) -> Option<End> {
        match frame {
            Frame::Empty => None,
            Frame::Control(Control::PowerOff) => self.control(|c| c.power_off()),
            Frame::Control(Control::PowerOn) => self.control(|c| c.power_on()),
            Frame::Control(Control::Reset) => self.control(|c| c.reset()),
            Frame::Control(Control::GetAtr) => {
                self.out.clear();
                let atr = self.card.atr().unwrap_or(&DEFAULT_ATR);
                if encode_frame(atr, &mut self.out).is_err() {
                    self.out.clear();
                    // An ATR is at most 33 bytes; a card claiming more gets the default.
                    let _ = encode_frame(&DEFAULT_ATR, &mut self.out);
                }
                self.send(stream)
            }
            Frame::Apdu(command) => {
                let planned = self.handle.shared.remove_after.load(Ordering::SeqCst);
                if planned == 0 {
                    self.handle.shared.remove_after.store(-1, Ordering::SeqCst);
                    self.handle.shared.inserted.store(false, Ordering::SeqCst);
                    return Some(End::Pulled);
                }
                if planned > 0 {
                    self.handle
                        .shared
                        .remove_after
                        .store(planned - 1, Ordering::SeqCst);
                }
                if self.response.len() < RESPONSE_BUFFER {
                    self.response.resize(RESPONSE_BUFFER, 0);
                }
                let result = self.card.transmit(command, &mut self.response);
                self.out.clear();
                let framed = match result {
                    Ok(n) => match self.response.get(..n) {
                        Some(resp) if n >= 2 => encode_frame(resp, &mut self.out),
                        _ => encode_frame(&[0x6F, 0x00], &mut self.out),
                    },
                    Err(TransportError::CardRemoved) => return Some(End::Torn),
                    Err(TransportError::MalformedCommand(_)) => {
                        encode_frame(&[0x67, 0x00], &mut self.out)
                    }
                    Err(e) => {
                        self.log(format_args!("card error: {e}"));
                        encode_frame(&[0x6F, 0x00], &mut self.out)
                    }
                };
                if framed.is_err() {
                    // 65536 data bytes + SW do not fit a 16-bit frame length.
                    self.out.clear();
                    let _ = encode_frame(&[0x6F, 0x00], &mut self.out);
                }
                self.handle.shared.apdus.fetch_add(1, Ordering::SeqCst);
                self.send(stream)
            }
        }
    }

    fn control(&mut self, op: impl FnOnce(&mut T) -> Result<(), TransportError>) -> Option<End> {
        match op(&mut self.card) {
            Ok(()) => None,
            Err(TransportError::CardRemoved) => Some(End::Torn),
            Err(e) => {
                self.log(format_args!("card control error: {e}"));
                None
            }
        }
    }

    fn send(&mut self, stream: &mut TcpStream) -> Option<End> {
        match stream.write_all(&self.out).and_then(|()| stream.flush()) {
            Ok(()) => None,
            Err(e) => Some(End::Lost(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_atr_tck_checks() {
        let x = DEFAULT_ATR[1..].iter().fold(0u8, |a, b| a ^ b);
        assert_eq!(x, 0, "TCK must make T0..TCK XOR to zero");
        assert_eq!(&DEFAULT_ATR[..4], &[0x3B, 0x8C, 0x80, 0x01]);
        // T0 low nibble = number of historical bytes.
        assert_eq!(DEFAULT_ATR.len(), 4 + 12 + 1);
    }

    #[test]
    fn parse_control_and_apdu() {
        assert_eq!(
            parse_frame(&[0, 1, 4]),
            Parsed::Frame(Frame::Control(Control::GetAtr), 3)
        );
        assert_eq!(
            parse_frame(&[0, 1, 3, 9]),
            Parsed::Frame(Frame::Apdu(&[3]), 3)
        );
        assert_eq!(
            parse_frame(&[0, 2, 0x80, 0x5C]),
            Parsed::Frame(Frame::Apdu(&[0x80, 0x5C]), 4)
        );
        assert_eq!(parse_frame(&[0, 0, 7]), Parsed::Frame(Frame::Empty, 2));
        assert_eq!(parse_frame(&[0]), Parsed::Incomplete { needed: 2 });
        assert_eq!(
            parse_frame(&[0xFF, 0xFF, 1]),
            Parsed::Incomplete { needed: 65537 }
        );
    }

    #[test]
    fn encode_rejects_oversized() {
        let mut out = Vec::new();
        let big = vec![0u8; MAX_FRAME_PAYLOAD + 1];
        assert!(matches!(
            encode_frame(&big, &mut out),
            Err(VpcdError::PayloadTooLong(n)) if n == MAX_FRAME_PAYLOAD + 1
        ));
        assert!(out.is_empty());
        encode_frame(&big[..MAX_FRAME_PAYLOAD], &mut out).unwrap();
        assert_eq!(&out[..2], &[0xFF, 0xFF]);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_is_bounded(buf in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            match parse_frame(&buf) {
                Parsed::Frame(_, used) => proptest::prop_assert!(used >= 2 && used <= buf.len()),
                Parsed::Incomplete { needed } => proptest::prop_assert!(needed > buf.len()),
            }
        }

        #[test]
        fn encode_parse_round_trip(payload in proptest::collection::vec(proptest::num::u8::ANY, 2..300), tail in proptest::collection::vec(proptest::num::u8::ANY, 0..8)) {
            let mut buf = Vec::new();
            encode_frame(&payload, &mut buf).unwrap();
            let framed = buf.len();
            buf.extend_from_slice(&tail);
            proptest::prop_assert_eq!(parse_frame(&buf), Parsed::Frame(Frame::Apdu(&payload), framed));
        }
    }
}
