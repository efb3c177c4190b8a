//! A tiny purse card for transport tests: answers SELECT of the purse DF
//! (AID A00000000386980701) and GET BALANCE (80 5C 00 02 04), per
//! /work/shared/reference/epurse.md. Not a card model — just enough to exchange APDUs.

use cardvm::transport::{Apdu, CardTransport, TransportError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The purse application's AID.
pub const PURSE_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x01];
/// SELECT the purse by AID, Le = 00.
pub const SELECT_PURSE: [u8; 15] = [
    0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x01, 0x00,
];
/// GET BALANCE of the electronic purse (P2 = 02).
pub const GET_BALANCE: [u8; 5] = [0x80, 0x5C, 0x00, 0x02, 0x04];

/// The FCI the card returns for SELECT: 6F 0D 84 09 AID A5 00.
pub fn fci() -> Vec<u8> {
    let mut v = vec![0x6F, 0x0D, 0x84, 0x09];
    v.extend_from_slice(&PURSE_AID);
    v.extend_from_slice(&[0xA5, 0x00]);
    v
}

/// A test purse card.
#[derive(Debug, Clone)]
pub struct PurseCard {
    /// Balance in fen.
    pub balance: u32,
    selected: bool,
    /// APDUs received (shared so tests can watch a card that moved into a server).
    pub seen: Arc<AtomicU32>,
    /// Report `CardRemoved` (tearing) instead of answering APDU number `n` (1-based).
    pub tear_at: Option<u32>,
}

impl PurseCard {
    /// A card holding `balance` fen.
    pub fn new(balance: u32) -> Self {
        Self {
            balance,
            selected: false,
            seen: Arc::new(AtomicU32::new(0)),
            tear_at: None,
        }
    }

    fn answer(&mut self, command: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        let apdu = Apdu::parse(command).map_err(TransportError::MalformedCommand)?;
        match [apdu.cla, apdu.ins, apdu.p1, apdu.p2] {
            [0x00, 0xA4, 0x04, 0x00] if apdu.data == PURSE_AID => {
                self.selected = true;
                out.extend_from_slice(&fci());
                out.extend_from_slice(&[0x90, 0x00]);
            }
            [0x00, 0xA4, ..] => {
                self.selected = false;
                out.extend_from_slice(&[0x6A, 0x82]);
            }
            [0x80, 0x5C, 0x00, 0x02] if self.selected => {
                out.extend_from_slice(&self.balance.to_be_bytes());
                out.extend_from_slice(&[0x90, 0x00]);
            }
            [0x80, 0x5C, ..] => out.extend_from_slice(&[0x69, 0x85]),
            [0x00 | 0x80, ..] => out.extend_from_slice(&[0x6D, 0x00]),
            _ => out.extend_from_slice(&[0x6E, 0x00]),
        }
        Ok(())
    }
}

impl CardTransport for PurseCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.tear_at == Some(n) {
            self.selected = false;
            return Err(TransportError::CardRemoved);
        }
        let mut out = Vec::new();
        self.answer(command, &mut out)?;
        let capacity = response.len();
        let dst = response
            .get_mut(..out.len())
            .ok_or(TransportError::ResponseTooLong {
                needed: out.len(),
                capacity,
            })?;
        dst.copy_from_slice(&out);
        Ok(out.len())
    }

    fn power_on(&mut self) -> Result<(), TransportError> {
        self.selected = false;
        Ok(())
    }

    fn power_off(&mut self) -> Result<(), TransportError> {
        self.selected = false;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.selected = false;
        Ok(())
    }
}
