//! The card transport: how APDUs reach a card.
//!
//! [`CardTransport`] is the small trait a backend implements (a simulated card, a PC/SC
//! reader, a C callback, a test double). It moves one raw command APDU and one raw
//! response (data ‖ SW1 SW2) into a **caller-supplied buffer**, so a backend never
//! allocates per exchange.
//!
//! [`ApduLayer`] sits above it: it sizes the response buffer from the command's Le,
//! optionally follows `61xx` with GET RESPONSE and re-sends on `6Cxx`, and splits the
//! status word off. It never retries a command blindly: a purse command may already have
//! executed on the card, so transport failures are reported, not repeated.
//!
//! A terminal may hold SAMs next to the card (a PSAM in the contact slot computes the
//! purchase MAC1 and checks MAC2, so the terminal holds no purchase key). Each is another
//! [`CardTransport`]; [`SamSlots`] bundles them for one run, and [`Slot`] names the channel
//! an APDU went to. Scripts address a SAM only through the instruction table's `to_sam`
//! instruction (`samapdu`), never implicitly.

mod apdu;
#[cfg(feature = "pcsc")]
pub mod pcsc;
pub mod replay;
#[cfg(feature = "std")]
pub mod vpcd;

pub use apdu::{Apdu, ApduError, Case, Response, StatusWord};

use alloc::string::String;
use alloc::vec::Vec;

/// Why a transport could not complete an exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The card left the field (or was reset) during the exchange: the command may or may
    /// not have executed. This is *tearing*.
    #[error("card removed during the exchange (tearing)")]
    CardRemoved,
    /// No card is present in the reader.
    #[error("no card present")]
    NoCard,
    /// The reader itself is gone or unusable.
    #[error("reader unavailable: {0}")]
    ReaderUnavailable(String),
    /// Another application holds the card exclusively.
    #[error("sharing violation: the card is in use by another application")]
    SharingViolation,
    /// The card did not answer in time.
    #[error("timeout waiting for the card")]
    Timeout,
    /// The response did not fit the buffer supplied (`needed` bytes were required).
    #[error("response of {needed} bytes does not fit a buffer of {capacity}")]
    ResponseTooLong {
        /// Bytes the response needed.
        needed: usize,
        /// Bytes the buffer had.
        capacity: usize,
    },
    /// The response was shorter than a status word.
    #[error("malformed response of {0} bytes (shorter than SW1 SW2)")]
    MalformedResponse(usize),
    /// The command is not a well-formed APDU.
    #[error("malformed command APDU: {0}")]
    MalformedCommand(ApduError),
    /// Any other backend failure, with the backend's words.
    #[error("transport failure: {0}")]
    Other(String),
}

/// Writes a whole response into a transport's caller-supplied buffer, or reports
/// [`TransportError::ResponseTooLong`] (a transport never truncates). Returns its length.
pub fn copy_response(r: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
    let capacity = response.len();
    response
        .get_mut(..r.len())
        .ok_or(TransportError::ResponseTooLong {
            needed: r.len(),
            capacity,
        })?
        .copy_from_slice(r);
    Ok(r.len())
}

/// A channel to one card.
///
/// Implementors transmit exactly what they are given and report exactly what came back;
/// status-word handling (61xx / 6Cxx) belongs to [`ApduLayer`].
pub trait CardTransport {
    /// Sends one command APDU and writes the raw response (data ‖ SW1 SW2) into
    /// `response`, returning the number of bytes written.
    ///
    /// If the response does not fit, return [`TransportError::ResponseTooLong`]; do not
    /// truncate.
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError>;

    /// Powers the card on (or connects to it). The default does nothing.
    fn power_on(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Powers the card off (or disconnects). The default does nothing.
    fn power_off(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Resets the card (warm reset). The default does nothing.
    fn reset(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// The card's answer to reset, when known.
    fn atr(&self) -> Option<&[u8]> {
        None
    }

    /// The card's contactless UID, when known.
    fn uid(&self) -> Option<&[u8]> {
        None
    }

    /// Modelled air time of every exchange so far, in microseconds (simulated cards;
    /// `None` for real ones). Receipts carry the difference over one run.
    fn air_time_us(&self) -> Option<u64> {
        None
    }

    /// Whether the reader itself answers LOAD KEY (`FF 82 00 keyNo 06 key`) into a volatile
    /// reader key store, as a PC/SC Part 3 reader does for a storage card: only then does an
    /// M1 key sent by `ldrkey` stay in the reader. The default is `false`: a CPU card, a
    /// replay or an unknown backend would hand the key to whatever answers, so the VM
    /// refuses `ldrkey` before sending anything. See [`is_part3_storage_card_atr`].
    fn reader_key_store(&self) -> bool {
        false
    }
}

/// Whether `atr` is the ATR a PC/SC Part 3 reader builds for a contactless **storage card**
/// (MIFARE Classic and the like), which is when the reader offers the LOAD KEY (`FF 82`)
/// key store:
///
/// ```text
/// 3B 8n 80 01 | 80 4F 0C A0 00 00 03 06 SS NN NN 00 00 00 00 | TCK
/// TS T0 TD1 TD2  category, AID tag, length, RID (PC/SC), standard, card name, RFU   checksum
/// ```
///
/// with `n` = 15 historical bytes and TCK the XOR of T0..TCK equal to zero (Microsoft,
/// "PC/SC interface for smart cards", *ATR format for storage cards*, and the PC/SC Part 3
/// Supplemental Document for SS/NN; readers such as the ACR122U and Identiv's build it the
/// same way). An ISO 14443-4 (CPU) card's ATR carries its ATS historical bytes instead.
///
/// ```
/// use cardvm::transport::is_part3_storage_card_atr;
/// let m1k = [0x3B, 0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06,
///            0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x6A];
/// assert!(is_part3_storage_card_atr(&m1k));
/// let cpu = [0x3B, 0x8A, 0x80, 0x01, 0x00, 0x31, 0xC1, 0x73, 0xC8, 0x40, 0x00, 0x00,
///            0x90, 0x00, 0x90];
/// assert!(!is_part3_storage_card_atr(&cpu));
/// ```
pub fn is_part3_storage_card_atr(atr: &[u8]) -> bool {
    const PREFIX: [u8; 12] = [
        0x3B, 0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06,
    ];
    atr.len() == 20
        && atr[..12] == PREFIX
        && atr[15..19] == [0, 0, 0, 0]
        && atr[1..].iter().fold(0u8, |x, b| x ^ b) == 0
}

/// What a status word means, in a few words: ISO/IEC 7816-4 and the PBOC / CJ/T 166
/// purse words (`reference/epurse.md`, "Status words"), one table for the trace, the
/// `apdu` command and error messages. Words the table does not know read
/// `"unknown status"`; the purse words come first where the two differ (`9302`, `9401`…).
///
/// ```
/// use cardvm::transport::{StatusWord, sw_meaning};
/// assert_eq!(sw_meaning(StatusWord(0x9000)), "success");
/// assert_eq!(sw_meaning(StatusWord(0x9401)), "insufficient balance");
/// assert_eq!(sw_meaning(StatusWord(0x63C2)), "verification failed, tries left in SW2 (x)");
/// ```
pub fn sw_meaning(sw: StatusWord) -> &'static str {
    match (sw.sw1(), sw.sw2()) {
        (0x90, 0x00) => "success",
        // PBOC / CJ/T 166 electronic purse.
        (0x93, 0x02) => "MAC invalid",
        (0x93, 0x03) => "application locked",
        (0x94, 0x01) => "insufficient balance",
        (0x94, 0x02) => "transaction counter at maximum",
        (0x94, 0x03) => "key index not supported",
        (0x94, 0x06) => "required MAC unavailable",
        // ISO/IEC 7816-4.
        (0x61, _) => "more data available (GET RESPONSE, SW2 bytes)",
        (0x62, 0x81) => "part of the returned data may be corrupted",
        (0x62, 0x82) => "end of file or record reached before Le bytes",
        (0x62, 0x83) => "selected file deactivated",
        (0x62, _) => "warning, non-volatile memory unchanged",
        (0x63, 0x00) => "verification failed",
        (0x63, x) if x & 0xF0 == 0xC0 => "verification failed, tries left in SW2 (x)",
        (0x63, _) => "warning, non-volatile memory changed",
        (0x64, _) => "execution error, non-volatile memory unchanged",
        (0x65, 0x81) => "memory failure",
        (0x65, _) => "execution error, non-volatile memory changed",
        (0x67, 0x00) => "wrong length",
        (0x68, 0x81) => "logical channel not supported",
        (0x68, 0x82) => "secure messaging not supported",
        (0x68, _) => "function in CLA not supported",
        (0x69, 0x81) => "command incompatible with file structure",
        (0x69, 0x82) => "security status not satisfied",
        (0x69, 0x83) => "authentication method (key or PIN) blocked",
        (0x69, 0x84) => "referenced data invalidated",
        (0x69, 0x85) => "conditions of use not satisfied",
        (0x69, 0x86) => "command not allowed (no current EF)",
        (0x69, 0x87) => "expected secure messaging data objects missing",
        (0x69, 0x88) => "incorrect secure messaging data objects",
        (0x69, _) => "command not allowed",
        (0x6A, 0x80) => "incorrect parameters in the data field",
        (0x6A, 0x81) => "function not supported",
        (0x6A, 0x82) => "file or application not found",
        (0x6A, 0x83) => "record not found",
        (0x6A, 0x84) => "not enough memory space in the file",
        (0x6A, 0x86) => "incorrect parameters P1-P2",
        (0x6A, 0x88) => "referenced data (key) not found",
        (0x6A, _) => "wrong parameters P1-P2",
        (0x6B, 0x00) => "wrong parameters P1-P2 (offset outside the file)",
        (0x6C, _) => "wrong Le (re-send with Le = SW2)",
        (0x6D, 0x00) => "instruction code not supported",
        (0x6E, 0x00) => "class not supported",
        (0x6F, 0x00) => "no precise diagnosis",
        _ => "unknown status",
    }
}

impl<T: CardTransport + ?Sized> CardTransport for &mut T {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        (**self).transmit(command, response)
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        (**self).power_on()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        (**self).power_off()
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        (**self).reset()
    }
    fn atr(&self) -> Option<&[u8]> {
        (**self).atr()
    }
    fn uid(&self) -> Option<&[u8]> {
        (**self).uid()
    }
    fn air_time_us(&self) -> Option<u64> {
        (**self).air_time_us()
    }

    fn reader_key_store(&self) -> bool {
        (**self).reader_key_store()
    }
}

/// The channel of a terminal an APDU goes to: the card in the field, or SAM slot `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Slot {
    /// The card (contactless field or the card's contact slot).
    #[default]
    Card,
    /// SAM slot `n` (`0..`[`MAX_SAMS`]).
    Sam(u8),
    /// The card company, answering like a remote SAM over the online protocol
    /// (host-secured mode, `hostapdu`).
    Host,
}

impl core::fmt::Display for Slot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Slot::Card => f.write_str("card"),
            Slot::Sam(n) => write!(f, "sam{n}"),
            Slot::Host => f.write_str("host"),
        }
    }
}

/// Most SAM slots a script can address (`samapdu`'s slot operand is `0..=3`).
pub const MAX_SAMS: usize = 4;

/// The SAM slots of a terminal for one run: SAM `n` is the `n`-th transport given.
///
/// Each slot has its own [`ApduLayer`] (61xx / 6Cxx handling: a T=0 PSAM answers `61 08`
/// and expects GET RESPONSE). [`SamSlots::none`] allocates nothing.
pub struct SamSlots<'a> {
    layers: Vec<ApduLayer<&'a mut dyn CardTransport>>,
    /// The card company's channel (`hostapdu`), when the run has one.
    host: Option<ApduLayer<&'a mut dyn CardTransport>>,
}

impl core::fmt::Debug for SamSlots<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SamSlots")
            .field("sams", &self.layers.len())
            .field("host", &self.host.is_some())
            .finish()
    }
}

impl<'a> SamSlots<'a> {
    /// A terminal without SAMs.
    pub fn none() -> Self {
        SamSlots {
            layers: Vec::new(),
            host: None,
        }
    }

    /// Adds the card company's channel: `hostapdu` reaches `host` (host-secured mode; the
    /// online client's host link, or an in-process card company in tests).
    pub fn with_host(mut self, host: &'a mut dyn CardTransport) -> Self {
        self.host = Some(ApduLayer::new(host));
        self
    }

    /// Whether the run has the card company's channel.
    pub fn has_host(&self) -> bool {
        self.host.is_some()
    }

    /// The card company's APDU layer, if the run has one.
    pub fn host_mut(&mut self) -> Option<&mut ApduLayer<&'a mut dyn CardTransport>> {
        self.host.as_mut()
    }

    /// SAM `n` is `sams[n]`. More than [`MAX_SAMS`] is refused (a script could not reach
    /// them, and a typo in a slot list should not pass silently).
    pub fn new(sams: Vec<&'a mut dyn CardTransport>) -> Result<Self, TransportError> {
        if sams.len() > MAX_SAMS {
            return Err(TransportError::Other(alloc::format!(
                "{} SAM slots given, at most {MAX_SAMS}",
                sams.len()
            )));
        }
        Ok(SamSlots {
            layers: sams.into_iter().map(ApduLayer::new).collect(),
            host: None,
        })
    }

    /// How many SAM slots the terminal has.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the terminal has no SAM.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// SAM `n`'s APDU layer, if the terminal has that slot.
    pub fn layer_mut(&mut self, n: u8) -> Option<&mut ApduLayer<&'a mut dyn CardTransport>> {
        self.layers.get_mut(usize::from(n))
    }
}

impl Default for SamSlots<'_> {
    fn default() -> Self {
        Self::none()
    }
}

/// Status-word handling above a raw transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApduLayerConfig {
    /// On `61xx`, send GET RESPONSE (`00 C0 00 00 xx`) and append the data.
    pub get_response: bool,
    /// On `6Cxx`, re-send the same command with Le = xx. Safe: the card has not executed
    /// a command it rejected for its Le.
    pub resend_on_6c: bool,
    /// How many GET RESPONSE rounds one command may take.
    pub max_get_response: u8,
}

impl Default for ApduLayerConfig {
    fn default() -> Self {
        Self {
            get_response: true,
            resend_on_6c: true,
            max_get_response: 16,
        }
    }
}

/// Largest response a short APDU can produce: 256 data bytes + SW.
const SHORT_RESPONSE: usize = 256 + 2;
/// Largest response an extended APDU can produce: 65536 data bytes + SW.
const EXTENDED_RESPONSE: usize = 65536 + 2;

/// The APDU layer: one command in, response data and status word out.
///
/// It owns its response buffers: an inline one for short APDUs (so creating a layer per
/// transaction does not allocate) and one grown on demand from an extended command's Le.
pub struct ApduLayer<T> {
    transport: T,
    config: ApduLayerConfig,
    /// Response buffer for short APDUs: inline, so a layer per transaction costs no
    /// allocation.
    short: [u8; SHORT_RESPONSE],
    /// Response buffer for extended APDUs, grown on first use.
    long: Vec<u8>,
    /// Whether the last response is in `long`.
    last_long: bool,
    last_len: usize,
    follow_up: Vec<u8>,
}

impl<T: core::fmt::Debug> core::fmt::Debug for ApduLayer<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Not the buffers: they hold the last response.
        f.debug_struct("ApduLayer")
            .field("transport", &self.transport)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: CardTransport> ApduLayer<T> {
    /// Wraps a transport with the default configuration (61xx and 6Cxx handled).
    pub fn new(transport: T) -> Self {
        Self::with_config(transport, ApduLayerConfig::default())
    }

    /// Wraps a transport with an explicit configuration.
    pub fn with_config(transport: T, config: ApduLayerConfig) -> Self {
        Self {
            transport,
            config,
            short: [0; SHORT_RESPONSE],
            long: Vec::new(),
            last_long: false,
            last_len: 0,
            follow_up: Vec::new(),
        }
    }

    /// The wrapped transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The wrapped transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.transport
    }

    /// Sends `command` and appends the response data (without SW) to `data`, which is
    /// cleared first. Returns the final status word.
    ///
    /// `command` must be a well-formed short or extended APDU.
    pub fn exchange(
        &mut self,
        command: &[u8],
        data: &mut Vec<u8>,
    ) -> Result<StatusWord, TransportError> {
        let apdu = Apdu::parse(command).map_err(TransportError::MalformedCommand)?;
        self.exchange_parsed(command, &apdu, data)
    }

    /// [`ApduLayer::exchange`] for a caller that has already parsed `command` into
    /// `apdu` (the VM checks every command before it counts as sent).
    pub(crate) fn exchange_parsed(
        &mut self,
        command: &[u8],
        apdu: &Apdu<'_>,
        data: &mut Vec<u8>,
    ) -> Result<StatusWord, TransportError> {
        data.clear();
        let mut sw = self.transmit_raw(command, apdu.max_response())?;
        self.take_data(data);

        if self.config.resend_on_6c
            && sw.sw1() == 0x6C
            && apdu.case().has_le()
            && !apdu.is_extended()
        {
            // Same command, Le corrected by the card.
            self.follow_up.clear();
            self.follow_up.extend_from_slice(command);
            if let Some(last) = self.follow_up.last_mut() {
                *last = sw.sw2();
            }
            let cmd = core::mem::take(&mut self.follow_up);
            let result = self.transmit_raw(&cmd, SHORT_RESPONSE);
            self.follow_up = cmd;
            sw = result?;
            data.clear();
            self.take_data(data);
        }

        let mut rounds = 0u8;
        while self.config.get_response && sw.sw1() == 0x61 && rounds < self.config.max_get_response
        {
            rounds += 1;
            let get_response = [0x00, 0xC0, 0x00, 0x00, sw.sw2()];
            sw = self.transmit_raw(&get_response, SHORT_RESPONSE)?;
            self.take_data(data);
        }
        Ok(sw)
    }

    /// Transmits and leaves the raw response in the short or long buffer; returns its
    /// status word.
    fn transmit_raw(
        &mut self,
        command: &[u8],
        max_response: usize,
    ) -> Result<StatusWord, TransportError> {
        let cap = max_response.clamp(SHORT_RESPONSE, EXTENDED_RESPONSE);
        let buf = if cap <= SHORT_RESPONSE {
            &mut self.short[..]
        } else {
            if self.long.len() < cap {
                self.long.resize(cap, 0);
            }
            &mut self.long[..cap]
        };
        let n = self.transport.transmit(command, buf)?;
        if n > cap {
            return Err(TransportError::ResponseTooLong {
                needed: n,
                capacity: cap,
            });
        }
        if n < 2 {
            return Err(TransportError::MalformedResponse(n));
        }
        let sw = StatusWord::new(buf[n - 2], buf[n - 1]);
        self.last_len = n;
        self.last_long = cap > SHORT_RESPONSE;
        Ok(sw)
    }

    fn take_data(&mut self, data: &mut Vec<u8>) {
        // transmit_raw guarantees 2 <= last_len <= the buffer's length.
        let buf = if self.last_long {
            &self.long[..]
        } else {
            &self.short[..]
        };
        data.extend_from_slice(&buf[..self.last_len - 2]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Answers each command with `len(Le)` bytes of a pattern and 9000; an extended
    /// command gets a response longer than any short buffer.
    #[derive(Debug)]
    struct Echo;

    impl CardTransport for Echo {
        fn transmit(
            &mut self,
            command: &[u8],
            response: &mut [u8],
        ) -> Result<usize, TransportError> {
            let apdu = Apdu::parse(command).map_err(TransportError::MalformedCommand)?;
            let n = apdu.max_response() - 2;
            let total = n + 2;
            if total > response.len() {
                return Err(TransportError::ResponseTooLong {
                    needed: total,
                    capacity: response.len(),
                });
            }
            for (i, b) in response[..n].iter_mut().enumerate() {
                *b = (i % 251) as u8 ^ command[1];
            }
            response[n..total].copy_from_slice(&[0x90, 0x00]);
            Ok(total)
        }
    }

    #[test]
    fn short_and_extended_responses_use_their_own_buffers() {
        let mut layer = ApduLayer::new(Echo);
        let mut data = Vec::new();
        // Short: Le 0x10.
        let sw = layer
            .exchange(&[0x80, 0x11, 0, 0, 0x10], &mut data)
            .unwrap();
        assert_eq!(sw, StatusWord(0x9000));
        assert_eq!(data.len(), 0x10);
        assert_eq!(data[3], 3 ^ 0x11);
        // Extended: Le 0x0400 (00 Lc-less case 2E: 00 04 00).
        let sw = layer
            .exchange(&[0x80, 0x22, 0, 0, 0x00, 0x04, 0x00], &mut data)
            .unwrap();
        assert_eq!(sw, StatusWord(0x9000));
        assert_eq!(data.len(), 0x400);
        assert_eq!(data[300], (300 % 251) as u8 ^ 0x22);
        // Short again: the data comes from the short buffer, not the long one.
        layer
            .exchange(&[0x80, 0x33, 0, 0, 0x04], &mut data)
            .unwrap();
        assert_eq!(data, vec![0x33, 1 ^ 0x33, 2 ^ 0x33, 3 ^ 0x33]);
    }

    #[test]
    fn status_words_have_one_meaning_each() {
        for (sw, text) in [
            (0x9000, "success"),
            (0x9302, "MAC invalid"),
            (0x9303, "application locked"),
            (0x9401, "insufficient balance"),
            (0x9403, "key index not supported"),
            (0x6985, "conditions of use not satisfied"),
            (0x6982, "security status not satisfied"),
            (0x6A82, "file or application not found"),
            (0x6A86, "incorrect parameters P1-P2"),
            (0x6D00, "instruction code not supported"),
            (0x6110, "more data available (GET RESPONSE, SW2 bytes)"),
            (0x6C08, "wrong Le (re-send with Le = SW2)"),
            (0x1234, "unknown status"),
        ] {
            assert_eq!(sw_meaning(StatusWord(sw)), text, "{sw:04X}");
        }
    }

    #[test]
    fn debug_output_leaves_out_the_response_buffers() {
        let mut layer = ApduLayer::new(Echo);
        let mut data = Vec::new();
        layer
            .exchange(&[0x80, 0x44, 0, 0, 0x08], &mut data)
            .unwrap();
        let shown = alloc::format!("{layer:?}");
        assert!(shown.starts_with("ApduLayer"), "{shown}");
        assert!(!shown.contains("68"), "response bytes printed: {shown}");
    }
}
