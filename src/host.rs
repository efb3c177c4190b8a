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
            _ => Err(HostRefusal::new(0x6D00, "instruction not supported")),
        }
    }
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

/// An in-process card company for one load: answers LOAD MAC2 once, from the card's load
/// key it holds, for exactly the facts it was given — the same logic the card company
/// runs. For tests, the simulator and `cardvm run --host-sim`.
pub struct HostSim {
    dlk: SecretKey,
    facts: LoadFacts,
    /// The first LOAD MAC2 request answered, and its answer (issued once: the same request
    /// again gets the same answer, any other is refused).
    answered: Option<(Vec<u8>, Vec<u8>)>,
    /// Every exchange, for tests: (command, response).
    pub log: Vec<(Vec<u8>, Vec<u8>)>,
}

impl core::fmt::Debug for HostSim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostSim")
            .field("facts", &self.facts)
            .field("answered", &self.answered.is_some())
            .finish_non_exhaustive()
    }
}

impl HostSim {
    /// A card company that will answer one LOAD MAC2 for `facts`, with `dlk`.
    pub fn new(dlk: SecretKey, facts: LoadFacts) -> Self {
        HostSim {
            dlk,
            facts,
            answered: None,
            log: Vec::new(),
        }
    }

    /// The answer to one command APDU (data ‖ SW).
    pub fn answer(&mut self, apdu: &[u8]) -> Vec<u8> {
        let response = match &self.answered {
            Some((req, resp)) if req.as_slice() == apdu => resp.clone(),
            Some(_) => HostRefusal::conditions("this bundle's MAC2 was already issued").response(),
            None => match HostCommand::parse(apdu)
                .and_then(|HostCommand::LoadMac2(init)| load_mac2(&self.dlk, &self.facts, &init))
            {
                Ok(mac2) => {
                    let mut r = mac2.to_vec();
                    r.extend_from_slice(&[0x90, 0x00]);
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
        let r = self.answer(command);
        let capacity = response.len();
        let out = response.get_mut(..r.len()).ok_or(
            crate::transport::TransportError::ResponseTooLong {
                needed: r.len(),
                capacity,
            },
        )?;
        out.copy_from_slice(&r);
        Ok(r.len())
    }
}
