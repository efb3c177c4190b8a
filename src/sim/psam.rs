//! A simulated PSAM (purchase secure access module): the contact SAM in a terminal that
//! computes the purchase MAC1 and checks the card's MAC2, so the terminal itself holds no
//! purchase key. Command formats and the sources they come from: `docs/psam.md`.
//!
//! | Command | C-APDU | Response |
//! |---|---|---|
//! | SELECT | `00 A4 00 00 02 FID` / `00 A4 04 00 Lc name` | 9000 |
//! | GET TERMINAL NUMBER (READ BINARY EF 16) | `00 B0 96 00 06` | terminal number (6) |
//! | READ BINARY EF 17 | `00 B0 97 00 01` | purchase key index (1) |
//! | INITIALIZE SAM FOR PURCHASE | `80 70 00 00 1C/24` data `[08]` | terminal seq (4) ‖ MAC1 (4) |
//! | GET RESPONSE | `00 C0 00 00 08` | the held response |
//! | CREDIT SAM FOR PURCHASE | `80 72 00 00 04 MAC2` | 9000 / 9302 |
//!
//! INITIALIZE data: card random (4) ‖ card offline ATC (2) ‖ amount (4) ‖ transaction type
//! (1) ‖ date (4) ‖ time (3) ‖ key version (1) ‖ algorithm id (1) ‖ card application serial
//! (8) ‖ optional issuer id (8). Inside the SAM: DPK = the purchase master diversified by
//! the serial (with an issuer id, first by the issuer id, then by the serial: two-level),
//! SESPK = process key of DPK over random ‖ ATC ‖ terminal seq[2..4], MAC1 = MAC(SESPK,
//! amount ‖ type ‖ terminal ‖ date ‖ time); the terminal sequence is incremented atomically
//! with the answer. A T=0 PSAM answers a command without Le with `61 08`; with Le it
//! answers the data directly. CREDIT checks MAC2 = MAC(SESPK, amount) in constant time.
//!
//! Faults and tearing go through the same [`FaultPlan`] as the simulated cards: the
//! sequence increment is the PSAM's commit, so [`Fault::TearMidCommit`] at an INITIALIZE
//! leaves the sequence as it was.
//!
//! [`Fault::TearMidCommit`]: super::Fault::TearMidCommit

use alloc::vec::Vec;
use core::fmt;

use super::AirTimeReport;
use super::cpu::Algorithm;
use super::cpu::algo::{ct_eq, mac};
use super::fault::{AirKind, ExecCtx, FaultPlan, Harness, TornMidCommit};
use crate::crypto::{self, KeyUsage, SecretKey};
use crate::transport::{Apdu, CardTransport, TransportError};

/// INITIALIZE SAM FOR PURCHASE data without / with the issuer id.
const INIT_LEN_ONE_LEVEL: usize = 28;
const INIT_LEN_TWO_LEVEL: usize = 36;
/// Internal failure (a key that cannot be used): never expected with a built PSAM.
const SW_INTERNAL: u16 = 0x6F00;
/// The ATR of a T=0 contact PSAM (TB1 00, TC1 02, 12 historical bytes).
const ATR: [u8; 16] = [
    0x3B, 0x6C, 0x00, 0x02, 0x13, 0x02, 0x86, 0x38, 0x18, 0x43, 0x56, 0x07, 0x1E, 0x10, 0x2B, 0x23,
];

/// The PSAM's persistent state.
#[derive(Clone)]
struct State {
    algo: Algorithm,
    terminal: [u8; 6],
    seq: u32,
    /// The purchase master key (usage `purchase-master`).
    mpk: SecretKey,
    key_version: u8,
    key_index: u8,
}

/// A purchase between INITIALIZE and CREDIT.
struct Session {
    key: SecretKey,
    amount: [u8; 4],
}

/// What power loss forgets.
#[derive(Default)]
struct Volatile {
    session: Option<Session>,
    /// A response held for GET RESPONSE (`61 xx`).
    held: Option<Vec<u8>>,
}

/// The PSAM's logic, apart from power and faults.
struct Core {
    state: State,
    vol: Volatile,
}

/// A simulated PSAM (see the module docs).
pub struct PsamCard {
    core: Core,
    harness: Harness,
}

impl fmt::Debug for PsamCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PsamCard")
            .field("algorithm", &self.core.state.algo)
            .field("terminal", &super::hex(&self.core.state.terminal))
            .field("seq", &self.core.state.seq)
            .field("purchase_master", &"REDACTED")
            .finish_non_exhaustive()
    }
}

impl PsamCard {
    /// A PSAM of profile `algo` holding the purchase master key `mpk` (16 bytes), with
    /// terminal number `terminal` and next terminal transaction sequence `seq`.
    pub fn new(
        algo: Algorithm,
        mpk: &[u8],
        terminal: [u8; 6],
        seq: u32,
    ) -> Result<Self, super::SimError> {
        Ok(PsamCard {
            core: Core {
                state: State {
                    algo,
                    terminal,
                    seq,
                    mpk: algo.key(KeyUsage::PurchaseMaster, mpk)?,
                    key_version: 0,
                    key_index: 1,
                },
                vol: Volatile::default(),
            },
            harness: Harness::default(),
        })
    }

    /// Sets the purchase key index (EF 17) and the key version INITIALIZE accepts.
    pub fn with_key(mut self, index: u8, version: u8) -> Self {
        self.core.state.key_index = index;
        self.core.state.key_version = version;
        self
    }

    /// The algorithm profile.
    pub fn algorithm(&self) -> Algorithm {
        self.core.state.algo
    }

    /// The terminal number (EF 16).
    pub fn terminal(&self) -> [u8; 6] {
        self.core.state.terminal
    }

    /// The terminal number (EF 16), borrowed.
    pub fn terminal_ref(&self) -> &[u8] {
        &self.core.state.terminal
    }

    /// The next terminal transaction sequence number.
    pub fn seq(&self) -> u32 {
        self.core.state.seq
    }

    /// The purchase key index (EF 17).
    pub fn key_index(&self) -> u8 {
        self.core.state.key_index
    }

    /// The key version INITIALIZE accepts.
    pub fn key_version(&self) -> u8 {
        self.core.state.key_version
    }

    /// The purchase master key bytes, for writing the profile back.
    pub(crate) fn master_bytes(&self) -> &[u8] {
        self.core.state.mpk.expose()
    }

    /// Pending faults (tearing, forced status words, …), keyed by this PSAM's APDU index.
    pub fn faults_mut(&mut self) -> &mut FaultPlan {
        &mut self.harness.faults
    }

    /// APDUs since power on.
    pub fn apdu_index(&self) -> u32 {
        self.harness.index
    }

    /// Whether the PSAM is powered.
    pub fn is_powered(&self) -> bool {
        self.harness.powered
    }

    /// The (reader-local) time model of the exchanges so far.
    pub fn air_time(&self) -> &AirTimeReport {
        &self.harness.report
    }
}

impl Core {
    fn process(
        &mut self,
        command: &[u8],
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<(), TornMidCommit> {
        let sw = match Apdu::parse(command) {
            Err(_) => 0x6700,
            Ok(apdu) => self.dispatch(&apdu, out, ctx)?,
        };
        if sw != 0x9000 && sw >> 8 != 0x61 {
            out.clear();
        }
        out.extend_from_slice(&sw.to_be_bytes());
        Ok(())
    }

    fn dispatch(
        &mut self,
        apdu: &Apdu<'_>,
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<u16, TornMidCommit> {
        // GET RESPONSE is the only command that keeps a held response.
        let held = self.vol.held.take();
        Ok(match (apdu.cla, apdu.ins) {
            (0x00, 0xA4) => match (apdu.p1, apdu.data.len()) {
                (0x00, 2) | (0x04, 1..=16) => 0x9000,
                _ => 0x6A86,
            },
            (0x00, 0xB0) => self.read_binary(apdu, out),
            (0x00, 0xC0) => match held {
                Some(h) if apdu.le.is_none_or(|le| le == 0 || le as usize == h.len()) => {
                    out.extend_from_slice(&h);
                    0x9000
                }
                Some(h) => 0x6C00 | h.len() as u16,
                None => 0x6985,
            },
            (0x80, 0x70) => return self.init_for_purchase(apdu, out, ctx),
            (0x80, 0x72) => self.credit_for_purchase(apdu),
            (0x00 | 0x80, _) => 0x6D00,
            _ => 0x6E00,
        })
    }

    /// READ BINARY by SFI: EF 16 (terminal number), EF 17 (purchase key index).
    fn read_binary(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        let key_index = [self.state.key_index];
        let file: &[u8] = match apdu.p1 {
            0x96 => &self.state.terminal,
            0x97 => &key_index,
            p1 if p1 & 0x80 != 0 => return 0x6A82,
            _ => return 0x6A86,
        };
        let offset = usize::from(apdu.p2);
        let Some(rest) = file.get(offset..) else {
            return 0x6B00;
        };
        let n = match apdu.le {
            None | Some(0) => rest.len(),
            Some(le) if le as usize <= rest.len() => le as usize,
            Some(_) => return 0x6C00 | rest.len() as u16,
        };
        out.extend_from_slice(&rest[..n]);
        0x9000
    }

    /// INITIALIZE SAM FOR PURCHASE (module docs).
    fn init_for_purchase(
        &mut self,
        apdu: &Apdu<'_>,
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<u16, TornMidCommit> {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return Ok(0x6A86);
        }
        let d = apdu.data;
        if d.len() != INIT_LEN_ONE_LEVEL && d.len() != INIT_LEN_TWO_LEVEL {
            return Ok(0x6700);
        }
        let (random, atc, amount, ttype) = (&d[0..4], &d[4..6], &d[6..10], d[10]);
        let (date_time, key_version, alg_id) = (&d[11..18], d[18], d[19]);
        // 05 ED purchase, 06 EP purchase, 09 composite purchase.
        if !matches!(ttype, 0x05 | 0x06 | 0x09) {
            return Ok(0x6A80);
        }
        if key_version != self.state.key_version || alg_id != self.state.algo.alg_id() {
            return Ok(0x6A88);
        }
        let Some(seq) = self.state.seq.checked_add(1).map(|_| self.state.seq) else {
            return Ok(0x9402);
        };
        let Some(dpk) = self.card_key(&d[20..28], d.get(28..36)) else {
            return Ok(SW_INTERNAL);
        };
        let seq_bytes = seq.to_be_bytes();
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(random);
        input[4..6].copy_from_slice(atc);
        input[6..].copy_from_slice(&seq_bytes[2..]);
        let Ok(session) = crypto::process_key(&dpk, &input) else {
            return Ok(SW_INTERNAL);
        };
        let mut m = Vec::with_capacity(18);
        m.extend_from_slice(amount);
        m.push(ttype);
        m.extend_from_slice(&self.state.terminal);
        m.extend_from_slice(date_time);
        let Some(mac1) = mac(&session, &m) else {
            return Ok(SW_INTERNAL);
        };
        // The commit: the sequence number is used up with the answer, atomically.
        if ctx.tear_mid_commit {
            return Err(TornMidCommit);
        }
        self.state.seq = seq + 1;
        let mut amt = [0u8; 4];
        amt.copy_from_slice(amount);
        self.vol.session = Some(Session {
            key: session,
            amount: amt,
        });
        let mut resp = Vec::with_capacity(8);
        resp.extend_from_slice(&seq_bytes);
        resp.extend_from_slice(&mac1);
        Ok(if apdu.le.is_some() {
            out.extend_from_slice(&resp);
            0x9000
        } else {
            // T=0: no Le in the command, so the data waits for GET RESPONSE.
            self.vol.held = Some(resp);
            0x6108
        })
    }

    /// The card's purchase key: the master diversified by the serial, or by the issuer id
    /// and then the serial.
    fn card_key(&self, serial: &[u8], issuer: Option<&[u8]>) -> Option<SecretKey> {
        let f = |b: &[u8]| <[u8; 8]>::try_from(b).ok();
        let master = match issuer {
            None => self.state.mpk.clone(),
            Some(i) => {
                let level1 = crypto::diversify(&self.state.mpk, &f(i)?).ok()?;
                // The intermediate key is again a master (of the issuer's cards).
                SecretKey::new(level1.alg(), KeyUsage::PurchaseMaster, level1.expose()).ok()?
            }
        };
        crypto::diversify(&master, &f(serial)?).ok()
    }

    /// CREDIT SAM FOR PURCHASE: `80 72 00 00 04 MAC2`.
    fn credit_for_purchase(&mut self, apdu: &Apdu<'_>) -> u16 {
        let Some(session) = self.vol.session.take() else {
            return 0x6985;
        };
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return 0x6A86;
        }
        if apdu.data.len() != 4 {
            return 0x6700;
        }
        let Some(expected) = mac(&session.key, &session.amount) else {
            return SW_INTERNAL;
        };
        if ct_eq(&expected, apdu.data) {
            0x9000
        } else {
            0x9302
        }
    }
}

impl CardTransport for PsamCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let core = &mut self.core;
        let mut torn = false;
        let r = self.harness.run(
            command,
            response,
            |c, out, ctx| core.process(c, out, ctx),
            || torn = true,
            // A contact SAM is not on air: reader-local time only.
            |_| AirKind::Native(None),
        );
        if torn {
            self.core.vol = Volatile::default();
        }
        r
    }

    fn power_on(&mut self) -> Result<(), TransportError> {
        if !self.harness.powered {
            self.core.vol = Volatile::default();
        }
        self.harness.power_on();
        Ok(())
    }

    fn power_off(&mut self) -> Result<(), TransportError> {
        self.harness.powered = false;
        self.core.vol = Volatile::default();
        Ok(())
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.power_off()?;
        self.power_on()
    }

    fn atr(&self) -> Option<&[u8]> {
        Some(&ATR)
    }
}
