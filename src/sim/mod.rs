//! Simulated CPU and M1 cards (feature `sim`).
//!
//! * [`CpuCard`] — an ISO 7816-4 CPU card with a PBOC / CJ/T 166 electronic purse
//!   (`reference/epurse.md`), algorithm profiles `des3` and `sm4`.
//! * [`M1Card`] — a MIFARE Classic 1K ("M1") logic-encryption card behind an ACR122U-style
//!   PC/SC Part 3 reader front (pseudo-APDUs `FF ..`).
//! * [`fault`] — tearing, forced status words, corrupted responses, latency.
//! * [`airtime`] — a *model* of the air time per APDU and per transaction.
//! * [`profile`] — the `CARD.toml` card profile: load, save (atomic), defaults.
//! * [`PsamCard`] — a PSAM for the terminal's SAM slot: MAC1 and MAC2 of purchases with
//!   the purchase master key inside it (`docs/psam.md`).
//!
//! Every card implements [`CardTransport`]: `transmit` writes the raw response
//! data ‖ SW1 SW2. A card is powered on when created; after tearing it is powered off and
//! answers [`TransportError::NoCard`] until [`CardTransport::power_on`], which clears its
//! volatile state (selected file, pending INITIALIZE, M1 authentication) and keeps the
//! committed state.
//!
//! # CARD.toml
//!
//! Common: `kind = "cpu" | "m1"`. Annotated examples: `scripts/cards/cpu_des3.toml`,
//! `scripts/cards/cpu_sm4.toml`, `scripts/cards/m1.toml`.
//!
//! Kind `cpu`:
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `profile` | `des3` or `sm4` | `des3` |
//! | `card_number` | application serial, 8 or 10 bytes hex (EF 0015 bytes 12–19 hold its rightmost 8) | `4100000089999985` |
//! | `balance`, `balance_limit` | fen | 0, 1000000 |
//! | `online_atc`, `offline_atc` | transaction counters | 0, 0 |
//! | `ed_balance`, `ed_online_atc`, `ed_offline_atc` | the electronic deposit (ED, P2 01): its own balance and counters; ED commands need VERIFY PIN in the current selection (`docs/cards.md`) | 0, 0, 0 |
//! | `random` | fixed 4-byte hex random (INITIALIZE, GET CHALLENGE) | — |
//! | `seed`, `seed_counter` | deterministic generator instead of `random` | 1, 0 |
//! | `locked` | application locked (purse answers 9303) | false |
//! | `[keys] master` | `true`: `load`/`purchase`/`tac` are master keys, diversified by the card with F = rightmost 8 bytes of `card_number`; `false`: already diversified DLK/DPK/DTK | false |
//! | `[keys] load`, `purchase`, `tac` | 16-byte keys, hex | test keys |
//! | `[keys] index`, `version` | key index INITIALIZE accepts, key version it returns | 1, 0 |
//! | `[pin] value`, `tries`, `tries_left` | PIN (hex, e.g. `"123456"`), tries allowed, tries left | `123456`, 3, 3 |
//! | `[public_info]` | `issuer`, `city`, `industry` (2 bytes hex), `card_type`, `app_version`, `valid_from`, `valid_to` (BCD hex YYYYMMDD) | see [`PublicInfo`] |
//! | `log` | EF 0018 records, 23 bytes hex each, newest first | empty |
//! | `capp` | CAPP records, 48 bytes hex each | zeros |
//! | `[last_prove]` | `atc`, `type`, `mac`, `tac` of the last transaction, `answered` (a one-shot card has answered PROVE for it) | none |
//! | `[variant] auth_code` | card authentication code, 8 bytes hex: GET DATA `80 CA 00 00 09` answers `85` ‖ code, and every purchase MAC1 covers those 9 bytes (reference "City variants") | none |
//! | `[variant] capp_record` | the only CAPP record a composite purchase may update (others 6A83) | any |
//! | `[variant] mac_error_sw`, `over_balance_sw` | status words for a bad MAC and an over-balance purchase, hex | `9302`, `9401` |
//! | `[variant] prove_atc` | the counter GET TRANSACTION PROVE names a transaction by: `initialize` (the value its INITIALIZE returned) or `next` (that value + 1) | `initialize` |
//! | `[variant] prove_once` | PROVE answers once per transaction, then 6985 | false |
//! | `[variant] prove_zero_mac` | PROVE of a load answers `00000000` in place of its MAC2 | false |
//! | `[variant] pin_before_load` | INITIALIZE FOR LOAD of the EP answers 6982 without VERIFY PIN | false |
//! | `[variant] capp_by_tag` | UPDATE CAPP DATA CACHE finds the record whose tag (first byte) is P1; blank records carry their number | false |
//!
//! Kind `m1`:
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `uid` | 4 or 7 bytes hex | `A1B2C3D4` |
//! | `blocks` | 64 blocks of 16 bytes hex (block 0 manufacturer, trailers hold keys and access bits) | manufacturer block, zeros, transport trailers |
//!
//! Kind `psam` (`scripts/cards/psam_des3.toml`, `psam_sm4.toml`):
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `profile` | `des3` or `sm4` | `des3` |
//! | `terminal` | terminal number (EF 16), 6 bytes hex | `000000000001` |
//! | `seq` | next terminal transaction sequence number | 1 |
//! | `purchase_master` | purchase master key, 16 bytes hex | — (required) |
//! | `key_index`, `key_version` | EF 17 key index; key version INITIALIZE SAM accepts | 1, 0 |
//!
//! Key bytes are the card's own secrets: they are stored in the profile (it *is* the
//! card), but `Debug` of every card type prints `REDACTED` instead.

pub mod airtime;
pub mod cpu;
pub mod fault;
mod junit;
pub mod m1;
pub mod profile;
pub mod psam;
pub mod scenario;

use alloc::string::String;
use alloc::vec::Vec;

pub use airtime::{AirTimeModel, AirTimeReport, ApduAirTime, BitRate};
pub use cpu::{
    Algorithm, CpuCard, CpuCardBuilder, LogRecord, Prove, ProveAtc, PublicInfo, Purse, PurseKind,
    RandomSource, Variant,
};
pub use fault::{Fault, FaultPlan};
pub use m1::{AccessBits, M1Card};
pub use profile::{CardProfile, PsamProfile, SimCard};
pub use psam::PsamCard;

use crate::transport::{CardTransport, TransportError};

/// Why a card profile could not be loaded, built or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is not a card profile.
    #[error("card profile: {0}")]
    Toml(String),
    /// A field has a bad value.
    #[error("card profile field `{0}`: {1}")]
    Field(&'static str, &'static str),
    /// A cryptographic operation failed while building the card.
    #[error("card crypto failed: {0}")]
    Crypto(&'static str),
}

/// Lower-case hex of bytes (for profiles and Debug of non-secret fields).
pub(crate) fn hex(b: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02X}");
    }
    s
}

/// Parses hex (spaces allowed).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let h = (p[0] as char).to_digit(16)?;
            let l = (p[1] as char).to_digit(16)?;
            Some((h * 16 + l) as u8)
        })
        .collect()
}

/// Sends one APDU to a card and returns (data, SW) — a convenience for tests and tools.
pub fn exchange<T: CardTransport + ?Sized>(
    card: &mut T,
    command: &[u8],
) -> Result<(Vec<u8>, u16), TransportError> {
    let mut buf = [0u8; 258];
    let n = card.transmit(command, &mut buf)?;
    let raw = buf.get(..n).ok_or(TransportError::MalformedResponse(n))?;
    let split = n
        .checked_sub(2)
        .ok_or(TransportError::MalformedResponse(n))?;
    Ok((
        raw[..split].to_vec(),
        u16::from_be_bytes([raw[split], raw[split + 1]]),
    ))
}
