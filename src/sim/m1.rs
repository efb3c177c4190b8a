//! A simulated MIFARE Classic 1K ("M1") logic-encryption card behind an ACR122U-style
//! PC/SC Part 3 reader front (epurse.md §"Logic-encryption card (M1)").
//!
//! The reader front answers the pseudo-APDUs of the reference table:
//!
//! | APDU | here |
//! |---|---|
//! | `FF CA 00 00 00` | UID |
//! | `FF 82 00 keyNo 06 key` | volatile reader key store, key numbers 0 and 1 |
//! | `FF 86 00 00 05 01 00 block 60/61 keyNo` | authenticate with key A / B to the block's sector |
//! | `FF B0 00 block 10` | read block |
//! | `FF D6 00 block 10 data` | write block |
//! | `FF D7 00 block 05 op value` | 00 store, 01 increment, 02 decrement (+ transfer) |
//! | `FF B1 00 block 04` | read value |
//! | `FF D7 00 src 02 03 dst` | restore + transfer |
//!
//! Failures: 6300 (authentication failed, not authenticated, access denied, bad value
//! block), 6A81 (not supported), 6700 (wrong length). The card itself is modelled at the
//! level of its memory and access conditions, not of Crypto-1: authentication succeeds
//! when the loaded key equals the sector trailer's key.
//!
//! Access conditions follow the MIFARE Classic 1K datasheet (NXP MF1S50yyX, §8.7 "Access
//! conditions", tables "Access conditions for the sector trailer" and "Access conditions for
//! data blocks"); the bit layout is the reference's: byte6 = (NOT C2)<<4 | (NOT C1),
//! byte7 = C1<<4 | (NOT C3), byte8 = C3<<4 | C2, bit *i* of each nibble for block *i*.
//! Deviation: a trailer write with inconsistent access bits (which bricks a real sector) is
//! refused with 6300.

use alloc::vec::Vec;
use core::fmt;

use super::SimError;
use super::airtime::{AirTimeModel, AirTimeReport};
use super::fault::{AirKind, ExecCtx, FaultPlan, Harness, TornMidCommit};
use crate::transport::{Apdu, CardTransport, TransportError};

/// Blocks of a 1K card (16 sectors × 4).
pub const BLOCKS: usize = 64;
/// The transport-configuration sector trailer (epurse.md: `FFFFFFFFFFFF FF0780 69 FFFFFFFFFFFF`).
pub const TRANSPORT_TRAILER: [u8; 16] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x80, 0x69, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
];
/// Reader key-store slots (FF 82 key numbers 0..KEY_SLOTS).
pub const KEY_SLOTS: usize = 2;

/// Key A or key B of a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// Key A (`60`).
    A,
    /// Key B (`61`).
    B,
}

/// The decoded access conditions of one sector: `(C1 C2 C3)` per block, block 3 the trailer,
/// each as the number `C1<<2 | C2<<1 | C3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessBits(pub [u8; 4]);

impl AccessBits {
    /// Decodes trailer bytes 6..9; `None` if the inverted copies disagree.
    pub fn decode(b: [u8; 3]) -> Option<Self> {
        let (b6, b7, b8) = (b[0], b[1], b[2]);
        let c1 = b7 >> 4;
        let c2 = b8 & 0x0F;
        let c3 = b8 >> 4;
        if (!b6 & 0x0F) != c1 || (!b6 >> 4) != c2 || (!b7 & 0x0F) != c3 {
            return None;
        }
        let mut c = [0u8; 4];
        for (i, ci) in c.iter_mut().enumerate() {
            let bit = |n: u8| (n >> i) & 1;
            *ci = bit(c1) << 2 | bit(c2) << 1 | bit(c3);
        }
        Some(AccessBits(c))
    }

    /// Encodes to trailer bytes 6..9.
    pub fn encode(&self) -> [u8; 3] {
        let (mut c1, mut c2, mut c3) = (0u8, 0u8, 0u8);
        for (i, ci) in self.0.iter().enumerate() {
            c1 |= ((ci >> 2) & 1) << i;
            c2 |= ((ci >> 1) & 1) << i;
            c3 |= (ci & 1) << i;
        }
        [
            (!c2 << 4) | (!c1 & 0x0F),
            (c1 << 4) | (!c3 & 0x0F),
            (c3 << 4) | c2,
        ]
    }
}

/// Who may: bit 0 key A, bit 1 key B.
const NEVER: u8 = 0;
const A: u8 = 1;
const B: u8 = 2;
const AB: u8 = 3;

/// Data blocks, by C1C2C3: (read, write, increment, decrement/transfer/restore).
/// Datasheet table "Access conditions for data blocks".
const DATA_TABLE: [[u8; 4]; 8] = [
    [AB, AB, AB, AB],             // 000 transport configuration
    [AB, NEVER, NEVER, AB],       // 001 value block
    [AB, NEVER, NEVER, NEVER],    // 010 read/write block
    [B, B, NEVER, NEVER],         // 011
    [AB, B, NEVER, NEVER],        // 100
    [B, NEVER, NEVER, NEVER],     // 101
    [AB, B, B, AB],               // 110 value block
    [NEVER, NEVER, NEVER, NEVER], // 111
];

/// Sector trailer, by C1C2C3: (key A read, key A write, access read, access write,
/// key B read, key B write). Datasheet table "Access conditions for the sector trailer".
const TRAILER_TABLE: [[u8; 6]; 8] = [
    [NEVER, A, A, NEVER, A, A],              // 000 (key B readable)
    [NEVER, A, A, A, A, A],                  // 001 transport configuration (key B readable)
    [NEVER, NEVER, A, NEVER, A, NEVER],      // 010 (key B readable)
    [NEVER, B, AB, B, NEVER, B],             // 011
    [NEVER, B, AB, NEVER, NEVER, B],         // 100
    [NEVER, NEVER, AB, B, NEVER, NEVER],     // 101
    [NEVER, NEVER, AB, NEVER, NEVER, NEVER], // 110
    [NEVER, NEVER, AB, NEVER, NEVER, NEVER], // 111
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataOp {
    Read = 0,
    Write = 1,
    Increment = 2,
    Decrement = 3,
}

fn allowed(who: u8, key: KeyType) -> bool {
    who & if key == KeyType::A { A } else { B } != 0
}

/// Encodes a value block: V(4, LE) ‖ NOT V ‖ V ‖ adr ‖ NOT adr ‖ adr ‖ NOT adr.
pub fn value_block(value: i32, adr: u8) -> [u8; 16] {
    let v = value.to_le_bytes();
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&v);
    b[4..8].copy_from_slice(&v.map(|x| !x));
    b[8..12].copy_from_slice(&v);
    b[12..16].copy_from_slice(&[adr, !adr, adr, !adr]);
    b
}

/// Decodes a value block; `None` if the format check fails.
pub fn parse_value_block(b: &[u8; 16]) -> Option<(i32, u8)> {
    let v = [b[0], b[1], b[2], b[3]];
    let ok = b[4..8].iter().zip(v).all(|(n, x)| *n == !x)
        && b[8..12] == v
        && b[13] == !b[12]
        && b[14] == b[12]
        && b[15] == !b[12];
    ok.then(|| (i32::from_le_bytes(v), b[12]))
}

fn sector_of(block: u8) -> u8 {
    block / 4
}

fn is_trailer(block: u8) -> bool {
    block % 4 == 3
}

/// Volatile state: reader key store and authentication.
#[derive(Default)]
struct M1Volatile {
    keys: [Option<[u8; 6]>; KEY_SLOTS],
    auth: Option<(u8, KeyType)>,
}

/// The card memory and its logic.
pub(crate) struct M1Core {
    uid: Vec<u8>,
    blocks: [[u8; 16]; BLOCKS],
    vol: M1Volatile,
}

/// A simulated M1 card with its reader front. Implements [`CardTransport`].
pub struct M1Card {
    core: M1Core,
    harness: Harness,
}

impl fmt::Debug for M1Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("M1Card")
            .field("uid", &super::hex(&self.core.uid))
            .field("blocks", &"REDACTED")
            .field("reader_keys", &"REDACTED")
            .field("auth", &self.core.vol.auth)
            .finish_non_exhaustive()
    }
}

/// PC/SC Part 3 ATR of a MIFARE Classic 1K (card name 0001).
const ATR_1K: [u8; 20] = [
    0x3B, 0x8F, 0x80, 0x01, 0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06, 0x03, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x6A,
];

impl M1Card {
    /// A fresh card: block 0 with `uid` (4 or 7 bytes) and manufacturer data, data blocks
    /// zero, every trailer in transport configuration.
    pub fn new(uid: &[u8]) -> Result<Self, SimError> {
        let mut blocks = [[0u8; 16]; BLOCKS];
        blocks[0] = Self::manufacturer_block(uid)?;
        for s in 0..16 {
            blocks[s * 4 + 3] = TRANSPORT_TRAILER;
        }
        Self::from_blocks(uid, blocks)
    }

    /// Block 0 for a UID: 4-byte UID ‖ BCC ‖ SAK 08 ‖ ATQA 0400 ‖ manufacturer data, or
    /// 7-byte UID ‖ SAK ‖ ATQA 4400 ‖ manufacturer data.
    pub fn manufacturer_block(uid: &[u8]) -> Result<[u8; 16], SimError> {
        let mut b = [0u8; 16];
        match uid.len() {
            4 => {
                b[..4].copy_from_slice(uid);
                b[4] = uid.iter().fold(0, |a, x| a ^ x);
                b[5..8].copy_from_slice(&[0x08, 0x04, 0x00]);
            }
            7 => {
                b[..7].copy_from_slice(uid);
                b[7..10].copy_from_slice(&[0x08, 0x44, 0x00]);
            }
            _ => return Err(SimError::Field("uid", "must be 4 or 7 bytes")),
        }
        for (i, x) in b.iter_mut().enumerate().skip(10) {
            *x = 0x60 + i as u8; // manufacturer data (arbitrary, fixed)
        }
        Ok(b)
    }

    /// A card from its memory image. Fails on a bad UID or inconsistent access bits.
    pub fn from_blocks(uid: &[u8], blocks: [[u8; 16]; BLOCKS]) -> Result<Self, SimError> {
        if uid.len() != 4 && uid.len() != 7 {
            return Err(SimError::Field("uid", "must be 4 or 7 bytes"));
        }
        for s in 0..16 {
            let t = blocks[s * 4 + 3];
            if AccessBits::decode([t[6], t[7], t[8]]).is_none() {
                return Err(SimError::Field(
                    "blocks",
                    "a sector trailer has inconsistent access bits",
                ));
            }
        }
        Ok(M1Card {
            core: M1Core {
                uid: uid.to_vec(),
                blocks,
                vol: M1Volatile::default(),
            },
            harness: Harness::default(),
        })
    }

    /// The UID.
    pub fn uid_bytes(&self) -> &[u8] {
        &self.core.uid
    }

    /// The memory image (committed).
    pub fn blocks(&self) -> &[[u8; 16]; BLOCKS] {
        &self.core.blocks
    }

    /// Sets one block directly (personalisation, tests). Trailers must keep consistent
    /// access bits.
    pub fn set_block(&mut self, block: usize, data: [u8; 16]) -> Result<(), SimError> {
        if block >= BLOCKS {
            return Err(SimError::Field("blocks", "block number out of range"));
        }
        if block % 4 == 3 && AccessBits::decode([data[6], data[7], data[8]]).is_none() {
            return Err(SimError::Field("blocks", "inconsistent access bits"));
        }
        self.core.blocks[block] = data;
        Ok(())
    }

    /// Whether the card is powered.
    pub fn is_powered(&self) -> bool {
        self.harness.powered
    }

    /// The fault plan.
    pub fn faults_mut(&mut self) -> &mut FaultPlan {
        &mut self.harness.faults
    }

    /// The air-time model.
    pub fn air_time_model_mut(&mut self) -> &mut AirTimeModel {
        &mut self.harness.model
    }

    /// The air time accumulated since power on (or the last reset).
    pub fn air_time(&self) -> &AirTimeReport {
        &self.harness.report
    }

    /// Starts a new air-time total.
    pub fn reset_air_time(&mut self) {
        self.harness.report.reset();
    }

    /// Native MIFARE frames behind each pseudo-APDU, for the air-time model:
    /// (PCD bytes, PICC bytes, round trips); `None` when the reader answers alone.
    fn frames(command: &[u8]) -> AirKind {
        let f = match command.get(1) {
            // AUTH(4) → nT(4); nR‖aR(8) → aT(4)
            Some(0x86) => Some((12, 8, 2)),
            // READ(4) → data+CRC(18)
            Some(0xB0 | 0xB1) => Some((4, 18, 1)),
            // WRITE(4) → ACK; data+CRC(18) → ACK
            Some(0xD6) => Some((22, 2, 2)),
            // INC/DEC/RESTORE(4) → ACK; operand(6); TRANSFER(4) → ACK
            Some(0xD7) => Some((14, 2, 3)),
            _ => None,
        };
        AirKind::Native(f)
    }
}

impl M1Core {
    fn access(&self, sector: u8) -> Option<AccessBits> {
        let t = self.blocks.get(usize::from(sector) * 4 + 3)?;
        AccessBits::decode([t[6], t[7], t[8]])
    }

    /// The key the reader is authenticated with for `block`'s sector, if usable for
    /// access. Addressing another sector drops the authentication.
    fn auth_for(&mut self, block: u8) -> Option<KeyType> {
        let (sector, key) = self.vol.auth?;
        if sector != sector_of(block) {
            self.vol.auth = None;
            return None;
        }
        // Datasheet: if key B is readable in the trailer it cannot serve for
        // authentication; every access after authenticating with it is refused.
        let ac = self.access(sector)?;
        if key == KeyType::B && TRAILER_TABLE[usize::from(ac.0[3])][4] != NEVER {
            return None;
        }
        Some(key)
    }

    fn data_allowed(&mut self, block: u8, op: DataOp) -> bool {
        if is_trailer(block) {
            return false;
        }
        let Some(key) = self.auth_for(block) else {
            return false;
        };
        let Some(ac) = self.access(sector_of(block)) else {
            return false;
        };
        allowed(
            DATA_TABLE[usize::from(ac.0[usize::from(block % 4)])][op as usize],
            key,
        )
    }

    fn process(
        &mut self,
        command: &[u8],
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<(), TornMidCommit> {
        let sw = match Apdu::parse(command) {
            Err(_) => 0x6700,
            Ok(a) if a.cla != 0xFF => 0x6A81,
            Ok(a) => self.dispatch(&a, out, ctx)?,
        };
        if sw != 0x9000 {
            out.clear();
        }
        out.extend_from_slice(&sw.to_be_bytes());
        Ok(())
    }

    fn dispatch(
        &mut self,
        a: &Apdu<'_>,
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<u16, TornMidCommit> {
        Ok(match a.ins {
            0xCA => {
                if a.p1 != 0 || a.p2 != 0 {
                    return Ok(0x6A81);
                }
                out.extend_from_slice(&self.uid);
                0x9000
            }
            0x82 => self.load_key(a),
            0x86 => self.authenticate(a),
            0xB0 => self.read(a, out),
            0xB1 => self.read_value(a, out),
            0xD6 => return self.write(a, ctx),
            0xD7 => return self.value_op(a, ctx),
            _ => 0x6A81,
        })
    }

    /// FF 82 00 keyNo 06 key(6): volatile key store.
    fn load_key(&mut self, a: &Apdu<'_>) -> u16 {
        let Ok(key) = <[u8; 6]>::try_from(a.data) else {
            return 0x6700;
        };
        match self.vol.keys.get_mut(usize::from(a.p2)) {
            Some(slot) if a.p1 == 0x00 => {
                *slot = Some(key);
                0x9000
            }
            _ => 0x6300,
        }
    }

    /// FF 86 00 00 05 01 00 block keyType keyNo.
    fn authenticate(&mut self, a: &Apdu<'_>) -> u16 {
        let [0x01, 0x00, block, kt, kn] = a.data else {
            return if a.data.len() == 5 { 0x6300 } else { 0x6700 };
        };
        self.vol.auth = None;
        if usize::from(*block) >= BLOCKS {
            return 0x6300;
        }
        let key_type = match kt {
            0x60 => KeyType::A,
            0x61 => KeyType::B,
            _ => return 0x6300,
        };
        let Some(Some(key)) = self.vol.keys.get(usize::from(*kn)) else {
            return 0x6300;
        };
        let sector = sector_of(*block);
        let t = self.blocks[usize::from(sector) * 4 + 3];
        let card_key = if key_type == KeyType::A {
            &t[0..6]
        } else {
            &t[10..16]
        };
        if crate::crypto::ct_eq(card_key, key) {
            self.vol.auth = Some((sector, key_type));
            0x9000
        } else {
            0x6300
        }
    }

    /// FF B0 00 block 10.
    fn read(&mut self, a: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if !a.data.is_empty() || !matches!(a.le, Some(16) | Some(256)) {
            return 0x6700;
        }
        let block = a.p2;
        if a.p1 != 0 || usize::from(block) >= BLOCKS {
            return 0x6300;
        }
        if is_trailer(block) {
            let Some(key) = self.auth_for(block) else {
                return 0x6300;
            };
            let Some(ac) = self.access(sector_of(block)) else {
                return 0x6300;
            };
            let perm = TRAILER_TABLE[usize::from(ac.0[3])];
            let t = self.blocks[usize::from(block)];
            let mut r = [0u8; 16]; // key A always reads back as zeros
            if allowed(perm[2], key) {
                r[6..10].copy_from_slice(&t[6..10]);
            }
            if allowed(perm[4], key) {
                r[10..16].copy_from_slice(&t[10..16]);
            }
            out.extend_from_slice(&r);
            return 0x9000;
        }
        if !self.data_allowed(block, DataOp::Read) {
            return 0x6300;
        }
        out.extend_from_slice(&self.blocks[usize::from(block)]);
        0x9000
    }

    /// FF B1 00 block 04.
    fn read_value(&mut self, a: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if !a.data.is_empty() || a.le != Some(4) {
            return 0x6700;
        }
        let block = a.p2;
        if a.p1 != 0 || usize::from(block) >= BLOCKS || !self.data_allowed(block, DataOp::Read) {
            return 0x6300;
        }
        match parse_value_block(&self.blocks[usize::from(block)]) {
            Some((v, _)) => {
                out.extend_from_slice(&v.to_be_bytes());
                0x9000
            }
            None => 0x6300,
        }
    }

    /// FF D6 00 block 10 data(16).
    fn write(&mut self, a: &Apdu<'_>, ctx: ExecCtx) -> Result<u16, TornMidCommit> {
        let Ok(data) = <[u8; 16]>::try_from(a.data) else {
            return Ok(0x6700);
        };
        let block = a.p2;
        if a.p1 != 0 || block == 0 || usize::from(block) >= BLOCKS {
            return Ok(0x6300); // block 0 is read-only
        }
        let new = if is_trailer(block) {
            let Some(key) = self.auth_for(block) else {
                return Ok(0x6300);
            };
            let Some(ac) = self.access(sector_of(block)) else {
                return Ok(0x6300);
            };
            let perm = TRAILER_TABLE[usize::from(ac.0[3])];
            let mut t = self.blocks[usize::from(block)];
            let mut any = false;
            if allowed(perm[1], key) {
                t[0..6].copy_from_slice(&data[0..6]);
                any = true;
            }
            if allowed(perm[3], key) {
                if AccessBits::decode([data[6], data[7], data[8]]).is_none() {
                    return Ok(0x6300);
                }
                t[6..10].copy_from_slice(&data[6..10]);
                any = true;
            }
            if allowed(perm[5], key) {
                t[10..16].copy_from_slice(&data[10..16]);
                any = true;
            }
            if !any {
                return Ok(0x6300);
            }
            t
        } else {
            if !self.data_allowed(block, DataOp::Write) {
                return Ok(0x6300);
            }
            data
        };
        self.commit(ctx, block, new)?;
        Ok(0x9000)
    }

    /// FF D7 00 block 05 op value(4) (store / increment / decrement), or
    /// FF D7 00 src 02 03 dst (restore + transfer).
    fn value_op(&mut self, a: &Apdu<'_>, ctx: ExecCtx) -> Result<u16, TornMidCommit> {
        let block = a.p2;
        if a.p1 != 0 || usize::from(block) >= BLOCKS || block == 0 {
            return Ok(0x6300);
        }
        match a.data {
            [op, v0, v1, v2, v3] => {
                let operand = i32::from_be_bytes([*v0, *v1, *v2, *v3]);
                let new = match op {
                    0x00 => {
                        if !self.data_allowed(block, DataOp::Write) {
                            return Ok(0x6300);
                        }
                        operand
                    }
                    0x01 | 0x02 => {
                        let need = if *op == 1 {
                            DataOp::Increment
                        } else {
                            DataOp::Decrement
                        };
                        if !self.data_allowed(block, need) {
                            return Ok(0x6300);
                        }
                        let Some((v, _)) = parse_value_block(&self.blocks[usize::from(block)])
                        else {
                            return Ok(0x6300);
                        };
                        let r = if *op == 1 {
                            v.checked_add(operand)
                        } else {
                            v.checked_sub(operand)
                        };
                        match r {
                            Some(r) => r,
                            None => return Ok(0x6300),
                        }
                    }
                    _ => return Ok(0x6A81),
                };
                let adr = match parse_value_block(&self.blocks[usize::from(block)]) {
                    Some((_, adr)) if *op != 0 => adr,
                    _ => block,
                };
                self.commit(ctx, block, value_block(new, adr))?;
                Ok(0x9000)
            }
            [0x03, dst] => {
                let dst = *dst;
                if usize::from(dst) >= BLOCKS || dst == 0 || sector_of(dst) != sector_of(block) {
                    return Ok(0x6300);
                }
                if !self.data_allowed(block, DataOp::Decrement)
                    || !self.data_allowed(dst, DataOp::Decrement)
                {
                    return Ok(0x6300);
                }
                let Some((v, adr)) = parse_value_block(&self.blocks[usize::from(block)]) else {
                    return Ok(0x6300);
                };
                self.commit(ctx, dst, value_block(v, adr))?;
                Ok(0x9000)
            }
            _ => Ok(0x6700),
        }
    }

    /// Writes one block atomically (a torn write leaves the old contents).
    fn commit(&mut self, ctx: ExecCtx, block: u8, data: [u8; 16]) -> Result<(), TornMidCommit> {
        if ctx.tear_mid_commit {
            return Err(TornMidCommit);
        }
        if let Some(b) = self.blocks.get_mut(usize::from(block)) {
            *b = data;
        }
        Ok(())
    }
}

impl CardTransport for M1Card {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let core = &mut self.core;
        let mut torn = false;
        let r = self.harness.run(
            command,
            response,
            |c, out, ctx| core.process(c, out, ctx),
            || torn = true,
            M1Card::frames,
        );
        if torn {
            self.core.vol.auth = None;
        }
        r
    }

    fn power_on(&mut self) -> Result<(), TransportError> {
        if !self.harness.powered {
            // The card's authentication is gone; the reader's volatile key store survives
            // a card tap.
            self.core.vol.auth = None;
        }
        self.harness.power_on();
        Ok(())
    }

    fn power_off(&mut self) -> Result<(), TransportError> {
        self.harness.powered = false;
        self.core.vol.auth = None;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.power_off()?;
        self.power_on()
    }

    fn atr(&self) -> Option<&[u8]> {
        Some(&ATR_1K)
    }

    fn uid(&self) -> Option<&[u8]> {
        Some(&self.core.uid)
    }

    fn air_time_us(&self) -> Option<u64> {
        Some(self.air_time().total_us())
    }
    /// The simulated reader front keeps FF 82 keys in its own volatile store.
    fn reader_key_store(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_access_bits_decode() {
        let ac = AccessBits::decode([0xFF, 0x07, 0x80]).unwrap();
        assert_eq!(ac.0, [0, 0, 0, 0b001]);
        assert_eq!(ac.encode(), [0xFF, 0x07, 0x80]);
        assert!(AccessBits::decode([0xFF, 0x07, 0x81]).is_none());
    }

    #[test]
    fn access_bits_round_trip_all() {
        for x in 0u16..4096 {
            let c = [0, 1, 2, 3].map(|i| ((x >> (3 * i)) & 7) as u8);
            let ac = AccessBits(c);
            assert_eq!(AccessBits::decode(ac.encode()), Some(ac));
        }
    }

    #[test]
    fn value_block_format() {
        let b = value_block(-5, 4);
        assert_eq!(parse_value_block(&b), Some((-5, 4)));
        let mut bad = b;
        bad[5] ^= 1;
        assert_eq!(parse_value_block(&bad), None);
    }
}
