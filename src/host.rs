//! Host-secured mode: the card company as a remote SAM.
//!
//! A desktop reader is its owner's machine, so it must never hold a card key. In
//! host-secured mode the script sends the card company — through `hostapdu`, the
//! instruction table's `to_host` channel, which the verifier treats as a SAM (no
//! key-derived byte may reach it; each exchange runs at most once) — the card's own
//! answer, and the card company answers with what only its keys can compute. This module
//! is that command set, as pure functions over the one card's keys: the card company
//! (`cardvm::issuer`) calls them with keys from its key store and its ledger's facts about
//! the bundle; [`HostSim`] calls them in-process for tests and `cardvm run --host-sim`.
//!
//! | Command | C-APDU | Response |
//! |---|---|---|
//! | LOAD MAC2 | `80 7A 00 PP 10` ‖ the card's INITIALIZE FOR LOAD answer (16) | MAC2 (4) ‖ `90 00` |
//! | PURCHASE MAC1 (INITIALIZE SAM FOR PURCHASE) | `80 70 00 00 1C` ‖ data (28) [‖ authentication code (9)] | terminal seq (4) ‖ MAC1 (4) ‖ `90 00` |
//!
//! `PP` is the purse: `02` electronic purse, `01` electronic deposit (the load's
//! transaction type). The INITIALIZE FOR LOAD answer is balance (4) ‖ online ATC (2) ‖ key
//! version (1) ‖ algorithm (1) ‖ random (4) ‖ MAC1 (4) (`reference/epurse.md`, "Load").
//! The card company derives SESLK = process key of the card's DLK over random ‖ online ATC
//! ‖ `80 00`, checks MAC1 = MAC(SESLK, balance ‖ amount ‖ type ‖ terminal) — the card is
//! genuine, is the bundle's card, and agrees on the amount and terminal — and answers
//! MAC2 = MAC(SESLK, amount ‖ type ‖ terminal ‖ date ‖ time) with the amount, terminal
//! and date/time of the bundle it issued, never the reader's. A MAC2 works only on that
//! card at that counter value; the card company issues it once per bundle.
//!
//! PURCHASE MAC1 makes the card company the terminal's PSAM for an online purchase (a
//! home reader has none), in the PSAM's own format (`docs/psam.md`): card random (4) ‖
//! offline ATC (2) ‖ amount (4) ‖ transaction type (1) ‖ date (4) ‖ time (3) ‖ key
//! version (1) ‖ algorithm (1) ‖ card serial (8), then — for a city whose cards want it
//! (`reference/epurse.md` "City variants") — the card's authentication code `85` ‖ 8
//! bytes. The amount, type, date/time and serial must be the bundle's; the terminal is the
//! reader's and the terminal sequence the bundle's seq. SESPK = process key of the card's
//! DPK over random ‖ offline ATC ‖ seq[2..4]; MAC1 = MAC(SESPK, amount ‖ type ‖ terminal ‖
//! date ‖ time [‖ code]). The card's MAC2 = MAC(SESPK, amount) and TAC come back in the
//! receipt and are checked at settlement (no second round trip).
//!
//! Refusals are status words, so the script's `on … fail …` handlers name them:
//!
//! | SW | Meaning |
//! |---|---|
//! | `93 02` | MAC1 does not verify: not this card, or it disagrees on amount or terminal |
//! | `69 85` | conditions not satisfied: no live bundle, already answered with another card state, or the card's balance moved since the query |
//! | `67 00` | wrong length |
//! | `6A 86` | wrong P1/P2 |
//! | `6D 00` | instruction not supported |
//! | `6E 00` | class not supported |

use alloc::string::String;
use alloc::vec::Vec;

use crate::crypto::{SecretKey, ct_eq, pboc_mac, process_key};

/// The class byte of every host command.
pub const CLA: u8 = 0x80;
/// LOAD MAC2.
pub const INS_LOAD_MAC2: u8 = 0x7A;
/// Length of the INITIALIZE FOR LOAD answer a LOAD MAC2 carries.
pub const LOAD_INIT_LEN: usize = 16;
/// PURCHASE MAC1 (the PSAM's INITIALIZE SAM FOR PURCHASE).
pub const INS_PURCHASE_MAC1: u8 = 0x70;
/// PURCHASE MAC1's data without / with the card authentication code.
pub const PURCHASE_INIT_LEN: usize = 28;
const AUTH_CODE_LEN: usize = 9;

/// Why the card company refused a host command: a status word and the reason (the reason
/// goes to the card company's log and ledger, the status word to the script).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (SW {sw:04X})")]
pub struct HostRefusal {
    /// The status word the script sees.
    pub sw: u16,
    /// Why, in a few words.
    pub reason: String,
}

impl HostRefusal {
    /// A refusal with status word `sw`.
    pub fn new(sw: u16, reason: impl Into<String>) -> Self {
        HostRefusal {
            sw,
            reason: reason.into(),
        }
    }

    /// `69 85`: conditions of use not satisfied.
    pub fn conditions(reason: impl Into<String>) -> Self {
        Self::new(0x6985, reason)
    }

    /// The response APDU: the status word alone.
    pub fn response(&self) -> Vec<u8> {
        self.sw.to_be_bytes().to_vec()
    }
}

/// A host command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// LOAD MAC2: the card's INITIALIZE FOR LOAD answer.
    LoadMac2(LoadInit),
    /// PURCHASE MAC1: the card's INITIALIZE FOR PURCHASE values.
    PurchaseMac1(PurchaseInit),
}

impl HostCommand {
    /// The instruction byte (one answer per bundle and instruction).
    pub fn ins(&self) -> u8 {
        match self {
            HostCommand::LoadMac2(_) => INS_LOAD_MAC2,
            HostCommand::PurchaseMac1(_) => INS_PURCHASE_MAC1,
        }
    }
}

/// The data field of a short case-3/4 APDU: `Lc` bytes, an optional Le after them.
fn data_of(rest: &[u8]) -> Option<&[u8]> {
    let (lc, data) = rest.split_first()?;
    let n = usize::from(*lc);
    match data.len() {
        l if l == n || l == n + 1 => data.get(..n),
        _ => None,
    }
}

impl HostCommand {
    /// Parses a command APDU (case 3 or 4, short).
    pub fn parse(apdu: &[u8]) -> Result<Self, HostRefusal> {
        let [cla, ins, p1, p2, rest @ ..] = apdu else {
            return Err(HostRefusal::new(0x6700, "shorter than a header"));
        };
        if *cla != CLA {
            return Err(HostRefusal::new(0x6E00, "class not supported"));
        }
        match *ins {
            INS_LOAD_MAC2 => {
                if *p1 != 0 || !matches!(*p2, 0x01 | 0x02) {
                    return Err(HostRefusal::new(
                        0x6A86,
                        "LOAD MAC2 takes P1 00 and P2 01 (ED) or 02 (EP)",
                    ));
                }
                let data = match rest {
                    [lc, data @ ..] if usize::from(*lc) == LOAD_INIT_LEN => {
                        // An Le byte may follow.
                        match data.len() {
                            LOAD_INIT_LEN => data,
                            n if n == LOAD_INIT_LEN + 1 => &data[..LOAD_INIT_LEN],
                            _ => return Err(HostRefusal::new(0x6700, "wrong length")),
                        }
                    }
                    _ => return Err(HostRefusal::new(0x6700, "LOAD MAC2 carries 16 bytes")),
                };
                let mut init = LoadInit {
                    purse: *p2,
                    balance: u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                    atc: u16::from_be_bytes([data[4], data[5]]),
                    key_version: data[6],
                    alg: data[7],
                    random: [0; 4],
                    mac1: [0; 4],
                };
                init.random.copy_from_slice(&data[8..12]);
                init.mac1.copy_from_slice(&data[12..16]);
                Ok(HostCommand::LoadMac2(init))
            }
            INS_PURCHASE_MAC1 => {
                if *p1 != 0 || *p2 != 0 {
                    return Err(HostRefusal::new(0x6A86, "PURCHASE MAC1 takes P1 P2 00 00"));
                }
                let d = data_of(rest)
                    .filter(|d| {
                        d.len() == PURCHASE_INIT_LEN || d.len() == PURCHASE_INIT_LEN + AUTH_CODE_LEN
                    })
                    .ok_or_else(|| {
                        HostRefusal::new(0x6700, "PURCHASE MAC1 carries 28 or 37 bytes")
                    })?;
                let mut init = PurchaseInit {
                    random: [0; 4],
                    atc: u16::from_be_bytes([d[4], d[5]]),
                    amount: u32::from_be_bytes([d[6], d[7], d[8], d[9]]),
                    txn_type: d[10],
                    datetime: [0; 7],
                    key_version: d[18],
                    alg: d[19],
                    serial: [0; 8],
                    auth_code: None,
                };
                init.random.copy_from_slice(&d[..4]);
                init.datetime.copy_from_slice(&d[11..18]);
                init.serial.copy_from_slice(&d[20..28]);
                if let Some(code) = d.get(PURCHASE_INIT_LEN..)
                    && !code.is_empty()
                {
                    if code[0] != 0x85 {
                        return Err(HostRefusal::new(
                            0x6A80,
                            "the authentication code starts with 85",
                        ));
                    }
                    let mut c = [0u8; AUTH_CODE_LEN];
                    c.copy_from_slice(code);
                    init.auth_code = Some(c);
                }
                Ok(HostCommand::PurchaseMac1(init))
            }
            _ => Err(HostRefusal::new(0x6D00, "instruction not supported")),
        }
    }
}

/// The card's INITIALIZE FOR PURCHASE values, as a PURCHASE MAC1 carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseInit {
    /// The card's random.
    pub random: [u8; 4],
    /// The card's offline transaction counter.
    pub atc: u16,
    /// Amount in fen.
    pub amount: u32,
    /// Transaction type (`06` EP purchase, `09` composite).
    pub txn_type: u8,
    /// Date and time (BCD `YYYYMMDDhhmmss`).
    pub datetime: [u8; 7],
    /// Key version.
    pub key_version: u8,
    /// Algorithm identifier.
    pub alg: u8,
    /// The card's application serial.
    pub serial: [u8; 8],
    /// The card authentication code (`85` ‖ 8 bytes), for a city whose MAC1 covers it.
    pub auth_code: Option<[u8; 9]>,
}

/// What the card company issued a purchase bundle for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseFacts {
    /// Amount in fen.
    pub amount: u32,
    /// Transaction type (`06` or `09`).
    pub txn_type: u8,
    /// The reader's terminal id.
    pub terminal: [u8; 6],
    /// The bundle's date and time.
    pub datetime: [u8; 7],
    /// The card's serial.
    pub serial: [u8; 8],
    /// The terminal transaction sequence (the bundle's seq).
    pub seq: u32,
}

/// The purchase session key SESPK of the card's DPK for `init` at terminal sequence `seq`.
pub fn purchase_session(
    dpk: &SecretKey,
    init: &PurchaseInit,
    seq: u32,
) -> Result<SecretKey, HostRefusal> {
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&init.random);
    input[4..6].copy_from_slice(&init.atc.to_be_bytes());
    input[6..].copy_from_slice(&seq.to_be_bytes()[2..]);
    process_key(dpk, &input)
        .map_err(|e| HostRefusal::new(0x6F00, alloc::format!("session key: {e}")))
}

/// Checks the card's values against `facts` and computes MAC1 under `dpk` (the card's
/// diversified purchase key; module docs).
pub fn purchase_mac1(
    dpk: &SecretKey,
    facts: &PurchaseFacts,
    init: &PurchaseInit,
) -> Result<[u8; 4], HostRefusal> {
    if init.amount != facts.amount
        || init.txn_type != facts.txn_type
        || init.datetime != facts.datetime
        || init.serial != facts.serial
    {
        return Err(HostRefusal::conditions(
            "not the bundle's purchase (card, amount, type or date/time)",
        ));
    }
    let session = purchase_session(dpk, init, facts.seq)?;
    let mut m = Vec::with_capacity(18 + AUTH_CODE_LEN);
    m.extend_from_slice(&facts.amount.to_be_bytes());
    m.push(facts.txn_type);
    m.extend_from_slice(&facts.terminal);
    m.extend_from_slice(&facts.datetime);
    if let Some(code) = &init.auth_code {
        m.extend_from_slice(code);
    }
    pboc_mac(&session, &m).map_err(|e| HostRefusal::new(0x6F00, alloc::format!("MAC1: {e}")))
}

/// The card's INITIALIZE FOR LOAD answer, as a LOAD MAC2 carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadInit {
    /// `02` electronic purse, `01` electronic deposit (the transaction type).
    pub purse: u8,
    /// The balance before the load.
    pub balance: u32,
    /// The online transaction counter.
    pub atc: u16,
    /// Key version.
    pub key_version: u8,
    /// Algorithm identifier.
    pub alg: u8,
    /// The card's random.
    pub random: [u8; 4],
    /// The card's MAC1.
    pub mac1: [u8; 4],
}

/// What the card company issued the bundle for: the only amount, terminal and time a
/// MAC2 is ever computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadFacts {
    /// Amount in fen.
    pub amount: u32,
    /// The reader's terminal id.
    pub terminal: [u8; 6],
    /// The bundle's date and time (BCD `YYYYMMDDhhmmss`).
    pub datetime: [u8; 7],
}

/// Checks the card's MAC1 under `dlk` (the card's diversified load key) and computes the
/// MAC2 for exactly `facts` (module docs). `dlk` never leaves the caller.
pub fn load_mac2(
    dlk: &SecretKey,
    facts: &LoadFacts,
    init: &LoadInit,
) -> Result<[u8; 4], HostRefusal> {
    let internal = |what: &str, e: crate::crypto::CryptoError| {
        HostRefusal::new(0x6F00, alloc::format!("{what}: {e}"))
    };
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(&init.random);
    input[4..6].copy_from_slice(&init.atc.to_be_bytes());
    input[6..].copy_from_slice(&[0x80, 0x00]);
    let session = process_key(dlk, &input).map_err(|e| internal("session key", e))?;
    let mut m1 = [0u8; 15];
    m1[..4].copy_from_slice(&init.balance.to_be_bytes());
    m1[4..8].copy_from_slice(&facts.amount.to_be_bytes());
    m1[8] = init.purse;
    m1[9..].copy_from_slice(&facts.terminal);
    let expected = pboc_mac(&session, &m1).map_err(|e| internal("MAC1", e))?;
    if !ct_eq(&expected, &init.mac1) {
        return Err(HostRefusal::new(
            0x9302,
            "MAC1 does not verify: not this bundle's card, or it disagrees on amount or terminal",
        ));
    }
    let mut m2 = [0u8; 18];
    m2[..4].copy_from_slice(&facts.amount.to_be_bytes());
    m2[4] = init.purse;
    m2[5..11].copy_from_slice(&facts.terminal);
    m2[11..].copy_from_slice(&facts.datetime);
    pboc_mac(&session, &m2).map_err(|e| internal("MAC2", e))
}

/// What an in-process card company was set up to answer.
enum Job {
    Load {
        dlk: SecretKey,
        facts: LoadFacts,
    },
    Purchase {
        dpk: SecretKey,
        facts: PurchaseFacts,
    },
}

/// An in-process card company for one bundle: answers its host command once, from the
/// card's key it holds, for exactly the facts it was given — the same logic the card
/// company runs. For tests, the simulator and `cardvm run --host-sim`.
pub struct HostSim {
    job: Job,
    /// The first request answered, and its answer (issued once: the same request again
    /// gets the same answer, any other is refused).
    answered: Option<(Vec<u8>, Vec<u8>)>,
    /// Every exchange, for tests: (command, response).
    pub log: Vec<(Vec<u8>, Vec<u8>)>,
}

impl core::fmt::Debug for HostSim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostSim")
            .field(
                "job",
                &match self.job {
                    Job::Load { .. } => "load",
                    Job::Purchase { .. } => "purchase",
                },
            )
            .field("answered", &self.answered.is_some())
            .finish_non_exhaustive()
    }
}

impl HostSim {
    /// A card company that will answer one LOAD MAC2 for `facts`, with `dlk`.
    pub fn new(dlk: SecretKey, facts: LoadFacts) -> Self {
        HostSim {
            job: Job::Load { dlk, facts },
            answered: None,
            log: Vec::new(),
        }
    }

    /// A card company that will answer one PURCHASE MAC1 for `facts`, with `dpk`.
    pub fn purchase(dpk: SecretKey, facts: PurchaseFacts) -> Self {
        HostSim {
            job: Job::Purchase { dpk, facts },
            answered: None,
            log: Vec::new(),
        }
    }

    fn compute(&self, apdu: &[u8]) -> Result<Vec<u8>, HostRefusal> {
        let mut r = match (HostCommand::parse(apdu)?, &self.job) {
            (HostCommand::LoadMac2(init), Job::Load { dlk, facts }) => {
                load_mac2(dlk, facts, &init)?.to_vec()
            }
            (HostCommand::PurchaseMac1(init), Job::Purchase { dpk, facts }) => {
                let mac1 = purchase_mac1(dpk, facts, &init)?;
                let mut r = facts.seq.to_be_bytes().to_vec();
                r.extend_from_slice(&mac1);
                r
            }
            _ => return Err(HostRefusal::conditions("not this bundle's kind of command")),
        };
        r.extend_from_slice(&[0x90, 0x00]);
        Ok(r)
    }

    /// The answer to one command APDU (data ‖ SW).
    pub fn answer(&mut self, apdu: &[u8]) -> Vec<u8> {
        let response = match &self.answered {
            Some((req, resp)) if req.as_slice() == apdu => resp.clone(),
            Some(_) => HostRefusal::conditions("this bundle's MAC was already issued").response(),
            None => match self.compute(apdu) {
                Ok(r) => {
                    self.answered = Some((apdu.to_vec(), r.clone()));
                    r
                }
                Err(refusal) => refusal.response(),
            },
        };
        self.log.push((apdu.to_vec(), response.clone()));
        response
    }
}

impl crate::transport::CardTransport for HostSim {
    fn transmit(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, crate::transport::TransportError> {
        crate::transport::copy_response(&self.answer(command), response)
    }
}
