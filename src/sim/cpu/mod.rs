//! The simulated CPU card: an ISO 7816-4 file system with a PBOC / CJ/T 166 electronic
//! purse (`reference/epurse.md`).
//!
//! * `fs`: MF 3F00, purse DF `A00000000386980701` / 1001, EF 0015, EF 0018, CAPP EF
//!   0017; SELECT, READ BINARY, READ RECORD, GET CHALLENGE, VERIFY PIN.
//! * `purse`: GET BALANCE, INITIALIZE/CREDIT FOR LOAD, INITIALIZE/DEBIT FOR PURCHASE,
//!   INITIALIZE FOR CAPP PURCHASE, UPDATE CAPP DATA CACHE, GET TRANSACTION PROVE, for the
//!   electronic purse (EP, P2 = 02) and the PIN-protected electronic deposit (ED, P2 = 01);
//!   GET DATA of the card authentication code (a city variant, [`Variant`]).
//! * [`algo`]: the `des3` and `sm4` algorithm profiles.
//!
//! State is split as on a real card: [`Purse`] is the committed (EEPROM) purse, written
//! only by an atomic commit (a backup copy is written first, then the new values, then the
//! backup is cleared; a power loss in between is rolled back at the next power on); the
//! selected file, the pending INITIALIZE and the PIN state are volatile and cleared at
//! power on.

pub mod algo;
mod fs;
mod purse;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use zeroize::Zeroizing;

use super::SimError;
use super::airtime::{AirTimeModel, AirTimeReport};
use super::fault::{AirKind, ExecCtx, FaultPlan, Harness, TornMidCommit};
use crate::crypto::{KeyUsage, SecretKey};
use crate::transport::{Apdu, CardTransport, TransportError};
pub use algo::Algorithm;

/// The purse DF's AID (epurse.md "Card files").
pub const PURSE_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x01];
/// Records kept by the cyclic transaction log EF 0018.
pub const LOG_RECORDS: usize = 10;
/// Length of one transaction-log record (epurse.md: 23-byte records).
pub const LOG_RECORD_LEN: usize = 23;
/// Records of the CAPP file (SFI 0x17).
pub const CAPP_RECORDS: usize = 4;
/// Length of one CAPP record (epurse.md: "e.g. SFI 17, 48 bytes").
pub const CAPP_RECORD_LEN: usize = 48;

/// Transaction type 01: ED load (epurse.md "Transaction types").
pub const TT_ED_LOAD: u8 = 0x01;
/// Transaction type 02: EP load (epurse.md).
pub const TT_EP_LOAD: u8 = 0x02;
/// Transaction type 05: ED purchase.
pub const TT_ED_PURCHASE: u8 = 0x05;
/// Transaction type 06: EP purchase.
pub const TT_EP_PURCHASE: u8 = 0x06;
/// Transaction type 09: composite (CAPP) purchase.
pub const TT_CAPP_PURCHASE: u8 = 0x09;

/// Which purse of the application a command addresses: P2 of GET BALANCE and
/// INITIALIZE (epurse.md: 01 ED, 02 EP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurseKind {
    /// Electronic deposit (电子存折, P2 = 01): PIN-protected.
    Ed,
    /// Electronic purse (电子钱包, P2 = 02).
    Ep,
}

/// How a card in the field deviates from the reference (epurse.md "City variants seen on
/// real cards"). The default is the reference behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Card authentication code: GET DATA `80 CA 00 00 09` answers `85` ‖ these 8 bytes,
    /// and a purchase's MAC1 must cover those 9 bytes (the real city-0731 card).
    pub auth_code: Option<[u8; 8]>,
    /// The only CAPP record (SFI 17) UPDATE CAPP DATA CACHE accepts (others: 6A83).
    pub capp_record: Option<u8>,
    /// Status word for a MAC1/MAC2 that does not verify (reference 9302; some cards 6982).
    pub mac_error_sw: u16,
    /// Status word for a purchase over the balance (reference 9401; some cards 6A80).
    pub over_balance_sw: u16,
    /// Which counter value GET TRANSACTION PROVE names a transaction by (cards in the
    /// field differ; `docs/cards.md` "Recovery").
    pub prove_atc: ProveAtc,
    /// GET TRANSACTION PROVE answers once per transaction; asked again: 6985.
    pub prove_once: bool,
    /// GET TRANSACTION PROVE of a load answers `00000000` in place of its MAC2.
    pub prove_zero_mac: bool,
    /// INITIALIZE FOR LOAD of the EP answers 6982 unless VERIFY PIN succeeded since the
    /// purse DF was selected.
    pub pin_before_load: bool,
    /// UPDATE CAPP DATA CACHE selects the record by its tag (first byte) = P1, not by its
    /// number; a record without that tag: 6A83.
    pub capp_by_tag: bool,
}

/// The counter value GET TRANSACTION PROVE expects for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProveAtc {
    /// The value INITIALIZE returned for it (the reference's reading).
    #[default]
    Initialize,
    /// That value + 1: the counter after the transaction (a vendor's card).
    Next,
}

impl ProveAtc {
    /// The profile name: `initialize` or `next`.
    pub fn name(self) -> &'static str {
        match self {
            ProveAtc::Initialize => "initialize",
            ProveAtc::Next => "next",
        }
    }
}

impl Default for Variant {
    fn default() -> Self {
        Self {
            auth_code: None,
            capp_record: None,
            mac_error_sw: 0x9302,
            over_balance_sw: 0x9401,
            prove_atc: ProveAtc::Initialize,
            prove_once: false,
            prove_zero_mac: false,
            pin_before_load: false,
            capp_by_tag: false,
        }
    }
}

/// The public-information fields of EF 0015 (30 bytes).
///
/// Layout used here (CJ/T 166 family; epurse.md only fixes the serial at bytes 12–19):
/// issuer code (2) ‖ city code (2) ‖ industry code (2) ‖ RFU (2) ‖ card type (1) ‖
/// application version (1) ‖ application serial (10, an 8-byte serial is left-padded with
/// 00 so it sits at bytes 12–19) ‖ valid from (4 BCD) ‖ valid to (4 BCD) ‖ RFU (2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicInfo {
    /// Issuer code.
    pub issuer: [u8; 2],
    /// City code.
    pub city: [u8; 2],
    /// Industry code.
    pub industry: [u8; 2],
    /// Card type.
    pub card_type: u8,
    /// Application version.
    pub app_version: u8,
    /// Validity start, BCD YYYYMMDD.
    pub valid_from: [u8; 4],
    /// Validity end, BCD YYYYMMDD.
    pub valid_to: [u8; 4],
}

impl Default for PublicInfo {
    fn default() -> Self {
        Self {
            issuer: [0x07, 0x31],
            city: [0x07, 0x31],
            industry: [0x00, 0x01],
            card_type: 0x01,
            app_version: 0x02,
            valid_from: [0x20, 0x24, 0x01, 0x01],
            valid_to: [0x20, 0x34, 0x12, 0x31],
        }
    }
}

/// Where the card's keys came from (kept so a saved profile reads like the loaded one).
#[derive(Clone)]
pub(crate) struct KeySource {
    /// The keys in the profile were master keys (diversified by the card).
    pub master: bool,
    /// The load, purchase and TAC key bytes as given in the profile.
    pub given: [Zeroizing<Vec<u8>>; 3],
}

/// The purse keys of the card (already diversified).
#[derive(Clone)]
pub(crate) struct PurseKeys {
    pub index: u8,
    pub version: u8,
    pub dlk: SecretKey,
    pub dpk: SecretKey,
    pub dtk: SecretKey,
    pub source: KeySource,
}

/// Randomness for INITIALIZE and GET CHALLENGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomSource {
    /// Always these 4 bytes (e.g. the reference vector's F9CABA91).
    Fixed([u8; 4]),
    /// A deterministic generator (SplitMix64) from `seed`; `counter` draws were taken.
    Seeded {
        /// The seed.
        seed: u64,
        /// Draws taken so far (persisted, so a saved card continues its sequence).
        counter: u64,
    },
}

impl RandomSource {
    fn next4(&mut self) -> [u8; 4] {
        match self {
            RandomSource::Fixed(r) => *r,
            RandomSource::Seeded { seed, counter } => {
                // SplitMix64.
                *counter = counter.wrapping_add(1);
                let mut z = seed.wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let b = z.to_be_bytes();
                [b[0], b[1], b[2], b[3]]
            }
        }
    }
}

/// The proof kept for the last committed purse transaction (GET TRANSACTION PROVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prove {
    /// The transaction's counter as returned by its INITIALIZE.
    pub atc: u16,
    /// Transaction type (01/02 ED/EP load, 05/06 ED/EP purchase, 09 CAPP purchase).
    pub ttype: u8,
    /// MAC2 (load: the host's MAC2 the card verified; purchase: the card's MAC2).
    pub mac: [u8; 4],
    /// TAC.
    pub tac: [u8; 4],
    /// GET TRANSACTION PROVE has answered for it (a one-shot card answers only once).
    pub answered: bool,
}

/// The committed (non-volatile) purse: everything a purse commit changes.
///
/// The ED and the EP each have their own balance and their own online and offline
/// counters: a public PBOC reader SDK's MAC helper documents the load session-key input
/// as "伪随机数(ICC) ‖ 电子存折联机交易序号或电子钱包联机交易序号 ‖ 8000" (the ED's online
/// ATC *or* the EP's); see `docs/cards.md` "ED" for the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purse {
    /// EP balance in fen.
    pub balance: u32,
    /// EP online (load) transaction counter.
    pub online_atc: u16,
    /// EP offline (purchase) transaction counter.
    pub offline_atc: u16,
    /// ED balance in fen.
    pub ed_balance: u32,
    /// ED online (load) transaction counter.
    pub ed_online_atc: u16,
    /// ED offline (purchase) transaction counter.
    pub ed_offline_atc: u16,
    /// EF 0018 records, newest first, at most [`LOG_RECORDS`].
    pub log: Vec<[u8; LOG_RECORD_LEN]>,
    /// CAPP file (SFI 0x17) records.
    pub capp: Vec<[u8; CAPP_RECORD_LEN]>,
    /// Proof of the last committed transaction.
    pub last_prove: Option<Prove>,
}

impl Purse {
    /// The balance of one purse.
    pub fn balance_of(&self, kind: PurseKind) -> u32 {
        match kind {
            PurseKind::Ed => self.ed_balance,
            PurseKind::Ep => self.balance,
        }
    }

    /// Balance, online and offline counter of one purse.
    pub fn counters(&self, kind: PurseKind) -> (u32, u16, u16) {
        match kind {
            PurseKind::Ed => (self.ed_balance, self.ed_online_atc, self.ed_offline_atc),
            PurseKind::Ep => (self.balance, self.online_atc, self.offline_atc),
        }
    }

    /// Balance, online and offline counter of one purse, for update.
    pub(crate) fn slots(&mut self, kind: PurseKind) -> (&mut u32, &mut u16, &mut u16) {
        match kind {
            PurseKind::Ed => (
                &mut self.ed_balance,
                &mut self.ed_online_atc,
                &mut self.ed_offline_atc,
            ),
            PurseKind::Ep => (
                &mut self.balance,
                &mut self.online_atc,
                &mut self.offline_atc,
            ),
        }
    }
}

/// One decoded transaction-log record (epurse.md: ATC(2) ‖ overdraft(3) ‖ amount(4) ‖
/// type(1) ‖ terminalId(6) ‖ date(4) ‖ time(3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord {
    /// Counter of the transaction (as returned by its INITIALIZE).
    pub atc: u16,
    /// Overdraft amount.
    pub overdraft: u32,
    /// Amount.
    pub amount: u32,
    /// Transaction type.
    pub ttype: u8,
    /// Terminal id.
    pub terminal: [u8; 6],
    /// Date, BCD.
    pub date: [u8; 4],
    /// Time, BCD.
    pub time: [u8; 3],
}

impl LogRecord {
    /// Encodes the 23-byte record.
    pub fn encode(&self) -> [u8; LOG_RECORD_LEN] {
        let mut r = [0u8; LOG_RECORD_LEN];
        r[0..2].copy_from_slice(&self.atc.to_be_bytes());
        r[2..5].copy_from_slice(&self.overdraft.to_be_bytes()[1..]);
        r[5..9].copy_from_slice(&self.amount.to_be_bytes());
        r[9] = self.ttype;
        r[10..16].copy_from_slice(&self.terminal);
        r[16..20].copy_from_slice(&self.date);
        r[20..23].copy_from_slice(&self.time);
        r
    }

    /// Decodes a 23-byte record.
    pub fn decode(r: &[u8; LOG_RECORD_LEN]) -> Self {
        let mut terminal = [0u8; 6];
        terminal.copy_from_slice(&r[10..16]);
        LogRecord {
            atc: u16::from_be_bytes([r[0], r[1]]),
            overdraft: u32::from_be_bytes([0, r[2], r[3], r[4]]),
            amount: u32::from_be_bytes([r[5], r[6], r[7], r[8]]),
            ttype: r[9],
            terminal,
            date: [r[16], r[17], r[18], r[19]],
            time: [r[20], r[21], r[22]],
        }
    }
}

/// The card's non-volatile state besides the purse.
#[derive(Clone)]
pub(crate) struct CpuState {
    pub algo: Algorithm,
    pub card_number: Vec<u8>,
    pub public_info: PublicInfo,
    pub keys: PurseKeys,
    pub balance_limit: u32,
    pub overdraft_limit: u32,
    pub pin: Zeroizing<Vec<u8>>,
    pub pin_tries_max: u8,
    pub pin_tries_left: u8,
    pub random: RandomSource,
    pub locked: bool,
    pub variant: Variant,
    pub purse: Purse,
    /// The commit backup: present only while a commit is being written.
    pub backup: Option<Box<Purse>>,
}

/// The selected file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Df {
    Mf,
    Purse,
}

/// A transaction begun by INITIALIZE and waiting for its completion.
pub(crate) enum Pending {
    Load {
        kind: PurseKind,
        ttype: u8,
        amount: u32,
        terminal: [u8; 6],
        atc: u16,
        session: SecretKey,
    },
    Purchase {
        kind: PurseKind,
        ttype: u8,
        amount: u32,
        terminal: [u8; 6],
        atc: u16,
        random: [u8; 4],
        capp_cache: Vec<(usize, [u8; CAPP_RECORD_LEN])>,
    },
}

/// Volatile (RAM) state: cleared at power on.
pub(crate) struct Volatile {
    pub df: Df,
    pub ef: Option<u16>,
    pub pending: Option<Pending>,
    pub pin_ok: bool,
}

impl Default for Volatile {
    fn default() -> Self {
        Self {
            df: Df::Mf,
            ef: None,
            pending: None,
            pin_ok: false,
        }
    }
}

/// A simulated CPU card (kind `cpu`). Implements [`CardTransport`].
///
/// Build one with [`CpuCard::builder`] or from a CARD.toml ([`crate::sim::SimCard`]).
pub struct CpuCard {
    pub(crate) core: Core,
    pub(crate) harness: Harness,
}

/// The card's logic and memory, apart from power, faults and air time.
pub(crate) struct Core {
    pub state: CpuState,
    pub vol: Volatile,
}

impl fmt::Debug for CpuCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.purse();
        f.debug_struct("CpuCard")
            .field("profile", &self.core.state.algo)
            .field(
                "card_number",
                &crate::sim::hex(&self.core.state.card_number),
            )
            .field("keys", &"REDACTED")
            .field("pin", &"REDACTED")
            .field("balance", &p.balance)
            .field("ed_balance", &p.ed_balance)
            .field("online_atc", &p.online_atc)
            .field("offline_atc", &p.offline_atc)
            .field("powered", &self.harness.powered)
            .finish_non_exhaustive()
    }
}

/// Builds a [`CpuCard`] in code (tests, benches). Every field has a default.
#[derive(Clone)]
pub struct CpuCardBuilder {
    algo: Algorithm,
    card_number: Vec<u8>,
    public_info: PublicInfo,
    master: bool,
    keys: [Zeroizing<Vec<u8>>; 3],
    key_index: u8,
    key_version: u8,
    balance: u32,
    balance_limit: u32,
    online_atc: u16,
    offline_atc: u16,
    pin: Zeroizing<Vec<u8>>,
    pin_tries: u8,
    random: RandomSource,
    log: Vec<[u8; LOG_RECORD_LEN]>,
    capp: Vec<[u8; CAPP_RECORD_LEN]>,
    last_prove: Option<Prove>,
    locked: bool,
    pin_tries_left: Option<u8>,
    ed: (u32, u16, u16),
    variant: Variant,
}

impl fmt::Debug for CpuCardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuCardBuilder")
            .field("profile", &self.algo)
            .field("keys", &"REDACTED")
            .finish_non_exhaustive()
    }
}

/// Default diversified keys of a new card (test keys, not secrets of anyone).
pub const DEFAULT_DLK: [u8; 16] = [
    0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01,
];
/// Default purchase key of a new card.
pub const DEFAULT_DPK: [u8; 16] = [0x11; 16];
/// Default TAC key of a new card.
pub const DEFAULT_DTK: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF,
];

impl CpuCardBuilder {
    /// Sets the algorithm profile.
    pub fn algorithm(mut self, algo: Algorithm) -> Self {
        self.algo = algo;
        self
    }
    /// Sets the application serial (8 or 10 bytes).
    pub fn card_number(mut self, serial: &[u8]) -> Self {
        self.card_number = serial.to_vec();
        self
    }
    /// Sets the EF 0015 public information.
    pub fn public_info(mut self, info: PublicInfo) -> Self {
        self.public_info = info;
        self
    }
    /// Already diversified load, purchase and TAC keys (16 bytes each).
    pub fn diversified_keys(mut self, dlk: &[u8], dpk: &[u8], dtk: &[u8]) -> Self {
        self.master = false;
        self.keys = [dlk, dpk, dtk].map(|k| Zeroizing::new(k.to_vec()));
        self
    }
    /// Master load, purchase and TAC keys; the card diversifies them with its serial.
    pub fn master_keys(mut self, mlk: &[u8], mpk: &[u8], mtk: &[u8]) -> Self {
        self.master = true;
        self.keys = [mlk, mpk, mtk].map(|k| Zeroizing::new(k.to_vec()));
        self
    }
    /// Key index (accepted by INITIALIZE) and key version (returned by it).
    pub fn key_index(mut self, index: u8, version: u8) -> Self {
        self.key_index = index;
        self.key_version = version;
        self
    }
    /// Balance and balance limit, in fen.
    pub fn balance(mut self, balance: u32, limit: u32) -> Self {
        self.balance = balance;
        self.balance_limit = limit;
        self
    }
    /// Online and offline transaction counters.
    pub fn counters(mut self, online: u16, offline: u16) -> Self {
        self.online_atc = online;
        self.offline_atc = offline;
        self
    }
    /// PIN bytes (e.g. BCD 12 34 56) and tries allowed.
    pub fn pin(mut self, pin: &[u8], tries: u8) -> Self {
        self.pin = Zeroizing::new(pin.to_vec());
        self.pin_tries = tries;
        self
    }
    /// PIN tries left (default: all).
    pub fn pin_tries_left(mut self, left: u8) -> Self {
        self.pin_tries_left = Some(left);
        self
    }
    /// The random source.
    pub fn random(mut self, random: RandomSource) -> Self {
        self.random = random;
        self
    }
    /// The transaction log, newest first.
    pub fn log(mut self, log: Vec<[u8; LOG_RECORD_LEN]>) -> Self {
        self.log = log;
        self
    }
    /// The CAPP records.
    pub fn capp(mut self, capp: Vec<[u8; CAPP_RECORD_LEN]>) -> Self {
        self.capp = capp;
        self
    }
    /// The proof of the last transaction.
    pub fn last_prove(mut self, prove: Option<Prove>) -> Self {
        self.last_prove = prove;
        self
    }
    /// ED balance (fen) and its online and offline counters.
    pub fn ed(mut self, balance: u32, online: u16, offline: u16) -> Self {
        self.ed = (balance, online, offline);
        self
    }
    /// The card's deviations from the reference (city variants).
    pub fn variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }
    /// Locks the application (purse commands answer 9303).
    pub fn locked(mut self, locked: bool) -> Self {
        self.locked = locked;
        self
    }

    /// Builds the card (powered on). Fails on bad key lengths or serial.
    pub fn build(self) -> Result<CpuCard, SimError> {
        if algo::rightmost8(&self.card_number).is_none() {
            return Err(SimError::Field("card_number", "must be 8 or 10 bytes"));
        }
        if self.balance > self.balance_limit {
            return Err(SimError::Field("balance", "exceeds balance_limit"));
        }
        if self.ed.0 > self.balance_limit {
            return Err(SimError::Field("ed_balance", "exceeds balance_limit"));
        }
        if self
            .variant
            .capp_record
            .is_some_and(|r| r == 0 || usize::from(r) > CAPP_RECORDS)
        {
            return Err(SimError::Field("variant.capp_record", "must be 1 to 4"));
        }
        if self.pin.is_empty() || self.pin.len() > 8 {
            return Err(SimError::Field("pin", "must be 1 to 8 bytes"));
        }
        let a = self.algo;
        let usages = [
            (KeyUsage::LoadMaster, KeyUsage::Load),
            (KeyUsage::PurchaseMaster, KeyUsage::Purchase),
            (KeyUsage::TacMaster, KeyUsage::Tac),
        ];
        let mut ks = Vec::with_capacity(3);
        for (bytes, (master, usage)) in self.keys.iter().zip(usages) {
            let k = if self.master {
                a.diversify(&a.key(master, bytes)?, &self.card_number)?
            } else {
                a.key(usage, bytes)?
            };
            ks.push(k);
        }
        let mut it = ks.into_iter();
        let (Some(dlk), Some(dpk), Some(dtk)) = (it.next(), it.next(), it.next()) else {
            return Err(SimError::Field("keys", "three keys required"));
        };
        let mut log = self.log;
        log.truncate(LOG_RECORDS);
        let mut capp = self.capp;
        capp.resize(CAPP_RECORDS, [0u8; CAPP_RECORD_LEN]);
        if self.variant.capp_by_tag {
            // A card that finds records by tag is personalised with one per record: a
            // blank record gets its number as its tag.
            for (i, r) in capp.iter_mut().enumerate() {
                if r[0] == 0 {
                    r[0] = i as u8 + 1;
                }
            }
        }
        Ok(CpuCard {
            core: Core {
                state: CpuState {
                    algo: a,
                    card_number: self.card_number,
                    public_info: self.public_info,
                    keys: PurseKeys {
                        index: self.key_index,
                        version: self.key_version,
                        dlk,
                        dpk,
                        dtk,
                        source: KeySource {
                            master: self.master,
                            given: self.keys,
                        },
                    },
                    balance_limit: self.balance_limit,
                    overdraft_limit: 0,
                    pin: self.pin,
                    pin_tries_max: self.pin_tries,
                    pin_tries_left: self
                        .pin_tries_left
                        .unwrap_or(self.pin_tries)
                        .min(self.pin_tries),
                    random: self.random,
                    locked: self.locked,
                    variant: self.variant,
                    purse: Purse {
                        balance: self.balance,
                        online_atc: self.online_atc,
                        offline_atc: self.offline_atc,
                        ed_balance: self.ed.0,
                        ed_online_atc: self.ed.1,
                        ed_offline_atc: self.ed.2,
                        log,
                        capp,
                        last_prove: self.last_prove,
                    },
                    backup: None,
                },
                vol: Volatile::default(),
            },
            harness: Harness::default(),
        })
    }
}

impl CpuCard {
    /// A builder with defaults: `des3`, serial 4100000089999985, diversified keys
    /// ([`DEFAULT_DLK`], [`DEFAULT_DPK`], [`DEFAULT_DTK`]), key index 01 version 00,
    /// balance 0, limit 1 000 000 fen, counters 0, PIN 123456 with 3 tries, random seed 1.
    pub fn builder() -> CpuCardBuilder {
        CpuCardBuilder {
            algo: Algorithm::Des3,
            card_number: alloc::vec![0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85],
            public_info: PublicInfo::default(),
            master: false,
            keys: [DEFAULT_DLK, DEFAULT_DPK, DEFAULT_DTK].map(|k| Zeroizing::new(k.to_vec())),
            key_index: 1,
            key_version: 0,
            balance: 0,
            balance_limit: 1_000_000,
            online_atc: 0,
            offline_atc: 0,
            pin: Zeroizing::new(alloc::vec![0x12, 0x34, 0x56]),
            pin_tries: 3,
            random: RandomSource::Seeded {
                seed: 1,
                counter: 0,
            },
            log: Vec::new(),
            capp: Vec::new(),
            last_prove: None,
            locked: false,
            pin_tries_left: None,
            ed: (0, 0, 0),
            variant: Variant::default(),
        }
    }

    /// The committed purse (after a torn commit: the state the card will come back in).
    pub fn purse(&self) -> &Purse {
        self.core
            .state
            .backup
            .as_deref()
            .unwrap_or(&self.core.state.purse)
    }

    /// EP balance in fen (committed).
    pub fn balance(&self) -> u32 {
        self.purse().balance
    }

    /// ED balance in fen (committed).
    pub fn ed_balance(&self) -> u32 {
        self.purse().ed_balance
    }

    /// The card's deviations from the reference.
    pub fn variant(&self) -> &Variant {
        &self.core.state.variant
    }

    /// The decoded transaction log, newest first (committed).
    pub fn log(&self) -> Vec<LogRecord> {
        self.purse().log.iter().map(LogRecord::decode).collect()
    }

    /// The algorithm profile.
    pub fn algorithm(&self) -> Algorithm {
        self.core.state.algo
    }

    /// The application serial.
    pub fn card_number(&self) -> &[u8] {
        &self.core.state.card_number
    }

    /// Balance limit in fen.
    pub fn balance_limit(&self) -> u32 {
        self.core.state.balance_limit
    }

    /// PIN tries left.
    pub fn pin_tries_left(&self) -> u8 {
        self.core.state.pin_tries_left
    }

    /// Whether the card is powered (false after tearing until [`CardTransport::power_on`]).
    pub fn is_powered(&self) -> bool {
        self.harness.powered
    }

    /// The fault plan (add faults here).
    pub fn faults_mut(&mut self) -> &mut FaultPlan {
        &mut self.harness.faults
    }

    /// APDUs exchanged since power on.
    pub fn apdu_index(&self) -> u32 {
        self.harness.index
    }

    /// The air-time model (change constants or bit rate here).
    pub fn air_time_model_mut(&mut self) -> &mut AirTimeModel {
        &mut self.harness.model
    }

    /// The air time accumulated since power on (or the last reset).
    pub fn air_time(&self) -> &AirTimeReport {
        &self.harness.report
    }

    /// Starts a new air-time total (e.g. per transaction).
    pub fn reset_air_time(&mut self) {
        self.harness.report.reset();
    }

    /// Power lost: volatile state is gone. A half-written commit stays in EEPROM until
    /// the next power on rolls it back.
    fn power_loss(vol: &mut Volatile) {
        *vol = Volatile::default();
    }
}

impl Core {
    /// Rolls back a commit that power loss interrupted.
    fn recover(&mut self) {
        if let Some(b) = self.state.backup.take() {
            self.state.purse = *b;
        }
    }

    /// Processes one APDU (the card's main loop).
    fn process(
        &mut self,
        command: &[u8],
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<(), TornMidCommit> {
        let pending = self.vol.pending.take();
        let sw = match Apdu::parse(command) {
            Err(_) => 0x6700,
            Ok(apdu) => self.dispatch(&apdu, pending, out, ctx)?,
        };
        if sw != 0x9000 {
            out.clear();
        }
        out.extend_from_slice(&sw.to_be_bytes());
        Ok(())
    }

    fn dispatch(
        &mut self,
        apdu: &Apdu<'_>,
        pending: Option<Pending>,
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<u16, TornMidCommit> {
        const ISO: &[u8] = &[0xA4, 0xB0, 0xB2, 0x84, 0x20];
        const PROP: &[u8] = &[0x5C, 0x50, 0x52, 0x54, 0x5A, 0xDC, 0xCA];
        let sw = match (apdu.cla, apdu.ins) {
            (0x00, 0xA4) => self.select(apdu, out),
            (0x00, 0xB0) => self.read_binary(apdu, out),
            (0x00, 0xB2) => self.read_record(apdu, out),
            (0x00, 0x84) => self.get_challenge(apdu, out),
            (0x00, 0x20) => self.verify_pin(apdu),
            (0x80, 0x5C) => self.get_balance(apdu, out),
            (0x80, 0x50) => self.initialize(apdu, out),
            (0x80, 0x52) => return self.credit_for_load(apdu, pending, out, ctx),
            (0x80, 0x54) => return self.debit_for_purchase(apdu, pending, out, ctx),
            (0x80, 0xDC) => self.update_capp_data_cache(apdu, pending),
            (0x80, 0x5A) => self.get_transaction_prove(apdu, out),
            (0x80, 0xCA) => self.get_data(apdu, out),
            (0x00 | 0x80, ins) if ISO.contains(&ins) || PROP.contains(&ins) => 0x6E00,
            (0x00 | 0x80, _) => 0x6D00,
            _ => 0x6E00,
        };
        Ok(sw)
    }

    /// Applies a purse commit atomically: backup, then the new values, then the backup
    /// is cleared. `ctx.tear_mid_commit` cuts power after the balance was written.
    fn commit(&mut self, ctx: ExecCtx, new: Purse) -> Result<(), TornMidCommit> {
        self.state.backup = Some(Box::new(self.state.purse.clone()));
        self.state.purse.balance = new.balance;
        self.state.purse.ed_balance = new.ed_balance;
        if ctx.tear_mid_commit {
            return Err(TornMidCommit);
        }
        self.state.purse = new;
        self.state.backup = None;
        Ok(())
    }

    /// Takes 4 bytes from the random source.
    fn random4(&mut self) -> [u8; 4] {
        self.state.random.next4()
    }
}

impl CardTransport for CpuCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let core = &mut self.core;
        let mut torn = false;
        let r = self.harness.run(
            command,
            response,
            |c, out, ctx| core.process(c, out, ctx),
            || torn = true,
            |_| AirKind::Apdu,
        );
        if torn {
            Self::power_loss(&mut self.core.vol);
        }
        r
    }

    fn power_on(&mut self) -> Result<(), TransportError> {
        if !self.harness.powered {
            self.core.recover();
            self.core.vol = Volatile::default();
        }
        self.harness.power_on();
        Ok(())
    }

    fn power_off(&mut self) -> Result<(), TransportError> {
        self.harness.powered = false;
        Self::power_loss(&mut self.core.vol);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.power_off()?;
        self.power_on()
    }

    fn atr(&self) -> Option<&[u8]> {
        // An ISO 14443-4 card seen through PC/SC: the PC/SC Part 3 pseudo-ATR with empty
        // historical bytes.
        Some(&[0x3B, 0x80, 0x80, 0x01, 0x01])
    }

    fn air_time_us(&self) -> Option<u64> {
        Some(self.air_time().total_us())
    }
}
