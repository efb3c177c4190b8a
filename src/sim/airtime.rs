//! A **model** of the contactless air time of APDU exchanges (ISO/IEC 14443 Type A,
//! ISO/IEC 14443-4 block protocol), following `reference/air-time.md`.
//!
//! It is an estimate to report next to host time, not a measurement: every constant is a
//! field of [`AirTimeModel`] and can be changed. The terms, per APDU:
//!
//! * frames: 9 etu per byte (8 data bits + odd parity; start/end bits folded in), where
//!   1 etu = 128/fc at 106 kbit/s (fc = 13.56 MHz, ≈ 9.44 µs) and `etu × 106/r` at rate r;
//! * I-block overhead: PCB (1) [+ CID/NAD] + CRC_A (2) bytes per block;
//! * chaining: a command longer than the card's FSC (or a response longer than the
//!   reader's FSD) is split into several I-blocks, each acknowledged by an R(ACK) block;
//! * frame delay time PCD→PICC and PICC→PCD (≈ 86 µs each) per frame exchange;
//! * card processing time per command ([`AirTimeModel::processing_us`]), with one S(WTX)
//!   round trip per started frame waiting time (FWT) beyond the first;
//! * activation (REQA/ATQA, anticollision, SELECT, RATS/ATS) once per tap (power on).
//!
//! Latency added by a fault plan ([`crate::sim::fault::Fault::Latency`]) is reported as
//! its own term.

use alloc::vec::Vec;

/// fc = 13.56 MHz, in Hz.
const FC_HZ: u64 = 13_560_000;

/// A contactless bit rate after PPS (air-time.md: 106 mandatory; 212/424/848 optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitRate {
    /// 106 kbit/s (fc/128).
    K106,
    /// 212 kbit/s (fc/64).
    K212,
    /// 424 kbit/s (fc/32).
    K424,
    /// 848 kbit/s (fc/16).
    K848,
}

impl BitRate {
    /// Carrier cycles per etu (128/fc at 106, halved per doubling).
    pub fn cycles_per_etu(self) -> u64 {
        match self {
            BitRate::K106 => 128,
            BitRate::K212 => 64,
            BitRate::K424 => 32,
            BitRate::K848 => 16,
        }
    }

    /// The rate in kbit/s (106, 212, 424, 848).
    pub fn kbps(self) -> u32 {
        match self {
            BitRate::K106 => 106,
            BitRate::K212 => 212,
            BitRate::K424 => 424,
            BitRate::K848 => 848,
        }
    }

    /// The rate for a kbit/s figure, if it is one of the four.
    pub fn from_kbps(kbps: u32) -> Option<Self> {
        match kbps {
            106 => Some(BitRate::K106),
            212 => Some(BitRate::K212),
            424 => Some(BitRate::K424),
            848 => Some(BitRate::K848),
            _ => None,
        }
    }
}

/// The constants of the model. All times in microseconds unless named otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct AirTimeModel {
    /// Bit rate of the APDU exchanges (activation always runs at 106 kbit/s).
    pub bit_rate: BitRate,
    /// etu per byte on air (8 data bits + parity ≈ 9).
    pub etu_per_byte: u64,
    /// Block overhead bytes: PCB + CRC_A = 3 (add 1 for CID, 1 for NAD).
    pub block_overhead: usize,
    /// Bytes of an R(ACK) or S(WTX) block without INF: PCB + CRC_A = 3.
    pub ack_block: usize,
    /// Card frame size (FSC) after RATS, whole frame including overhead.
    pub fsc: usize,
    /// Reader frame size (FSD), whole frame including overhead.
    pub fsd: usize,
    /// Frame delay time PCD→PICC, ns (≥ 1172/fc ≈ 86.4 µs).
    pub fdt_pcd_picc_ns: u64,
    /// Frame delay time PICC→PCD, ns.
    pub fdt_picc_pcd_ns: u64,
    /// Frame waiting time, µs (FWI = 7: 256·16·2^7/fc ≈ 38.7 ms).
    pub fwt_us: u64,
    /// Activation once per tap, µs.
    pub activation_us: u64,
    /// Processing time of commands not in `processing_table`, µs.
    pub default_processing_us: u64,
    /// Processing time per (CLA, INS), µs. CLA `None` matches any class.
    pub processing_table: Vec<(Option<u8>, u8, u64)>,
}

impl Default for AirTimeModel {
    fn default() -> Self {
        Self::new(BitRate::K106)
    }
}

impl AirTimeModel {
    /// The default model at `bit_rate`: FSC 64, FSD 256, FDT 1172/fc both ways, FWI 7,
    /// 5 ms activation, 1 ms for SELECT/READ-type commands and 5–20 ms for purse
    /// commands with MAC/TAC and EEPROM writes (air-time.md).
    pub fn new(bit_rate: BitRate) -> Self {
        let fdt_ns = 1172 * 1_000_000_000 / FC_HZ;
        Self {
            bit_rate,
            etu_per_byte: 9,
            block_overhead: 3,
            ack_block: 3,
            fsc: 64,
            fsd: 256,
            fdt_pcd_picc_ns: fdt_ns,
            fdt_picc_pcd_ns: fdt_ns,
            fwt_us: 256 * 16 * (1 << 7) * 1_000_000 / FC_HZ,
            activation_us: 5_000,
            default_processing_us: 1_000,
            processing_table: alloc::vec![
                (None, 0xA4, 1_000),        // SELECT
                (None, 0xB0, 1_000),        // READ BINARY
                (None, 0xB2, 1_000),        // READ RECORD
                (None, 0x84, 1_000),        // GET CHALLENGE
                (None, 0x20, 3_000),        // VERIFY PIN (EEPROM write of the counter)
                (Some(0x80), 0x5C, 1_000),  // GET BALANCE
                (Some(0x80), 0x50, 5_000),  // INITIALIZE (session key + MAC1)
                (Some(0x80), 0x52, 20_000), // CREDIT FOR LOAD (MAC2, TAC, EEPROM)
                (Some(0x80), 0x54, 20_000), // DEBIT FOR PURCHASE
                (Some(0x80), 0xDC, 10_000), // UPDATE CAPP DATA CACHE
                (Some(0x80), 0x5A, 3_000),  // GET TRANSACTION PROVE
                // M1 reader pseudo-APDUs (PC/SC Part 3): reader-local or a native frame.
                (Some(0xFF), 0xCA, 100),
                (Some(0xFF), 0x82, 100),
                (Some(0xFF), 0x86, 2_000),
                (Some(0xFF), 0xB0, 1_000),
                (Some(0xFF), 0xB1, 1_000),
                (Some(0xFF), 0xD6, 5_000),
                (Some(0xFF), 0xD7, 5_000),
            ],
        }
    }

    /// Card processing time for a command, µs.
    pub fn processing_us(&self, cla: u8, ins: u8) -> u64 {
        self.processing_table
            .iter()
            .find(|(c, i, _)| *i == ins && c.is_none_or(|c| c == cla))
            .map_or(self.default_processing_us, |(_, _, us)| *us)
    }

    fn bytes_ns(&self, bytes: usize, rate: BitRate) -> u64 {
        let cycles = bytes as u64 * self.etu_per_byte * rate.cycles_per_etu();
        cycles * 1_000_000_000 / FC_HZ
    }

    /// Air time of sending `payload` bytes as I-blocks of at most `frame` bytes each
    /// (overhead included), with an R(ACK) the other way after each non-last block.
    /// Returns (ns, blocks).
    fn chained_ns(&self, payload: usize, frame: usize) -> (u64, u32) {
        let per_block = frame.saturating_sub(self.block_overhead).max(1);
        let blocks = payload.div_ceil(per_block).max(1);
        let on_air = payload + blocks * self.block_overhead;
        let acks = blocks - 1;
        let ack_ns = acks as u64
            * (self.bytes_ns(self.ack_block, self.bit_rate)
                + self.fdt_pcd_picc_ns
                + self.fdt_picc_pcd_ns);
        (self.bytes_ns(on_air, self.bit_rate) + ack_ns, blocks as u32)
    }

    /// The modelled air time of one APDU exchange.
    pub fn apdu(&self, command: &[u8], response_len: usize, extra_latency_us: u64) -> ApduAirTime {
        let (cla, ins) = match command {
            [cla, ins, ..] => (*cla, *ins),
            _ => (0, 0),
        };
        let (command_ns, command_blocks) = self.chained_ns(command.len(), self.fsc);
        let (response_ns, response_blocks) = self.chained_ns(response_len, self.fsd);
        let processing_us = self.processing_us(cla, ins);
        // One S(WTX) request/response pair per started FWT beyond the first.
        let wtx = processing_us
            .saturating_sub(1)
            .checked_div(self.fwt_us)
            .unwrap_or(0);
        let wtx_ns = wtx
            * (2 * self.bytes_ns(self.ack_block + 1, self.bit_rate)
                + self.fdt_pcd_picc_ns
                + self.fdt_picc_pcd_ns);
        let fdt_ns = self.fdt_pcd_picc_ns + self.fdt_picc_pcd_ns;
        let total_ns = command_ns
            + response_ns
            + fdt_ns
            + wtx_ns
            + processing_us * 1_000
            + extra_latency_us * 1_000;
        ApduAirTime {
            command_ns,
            response_ns,
            fdt_ns,
            wtx_ns,
            processing_ns: processing_us * 1_000,
            latency_ns: extra_latency_us * 1_000,
            blocks: command_blocks + response_blocks,
            total_ns,
        }
    }

    /// A native (non-ISO 14443-4) frame exchange at 106 kbit/s, as an M1 card has:
    /// `pcd` bytes out, `picc` bytes back, `exchanges` round trips, plus processing.
    pub fn native(
        &self,
        pcd: usize,
        picc: usize,
        exchanges: u64,
        processing_us: u64,
    ) -> ApduAirTime {
        let command_ns = self.bytes_ns(pcd, BitRate::K106);
        let response_ns = self.bytes_ns(picc, BitRate::K106);
        let fdt_ns = exchanges * (self.fdt_pcd_picc_ns + self.fdt_picc_pcd_ns);
        let total_ns = command_ns + response_ns + fdt_ns + processing_us * 1_000;
        ApduAirTime {
            command_ns,
            response_ns,
            fdt_ns,
            wtx_ns: 0,
            processing_ns: processing_us * 1_000,
            latency_ns: 0,
            blocks: exchanges as u32,
            total_ns,
        }
    }
}

/// The modelled air time of one exchange, in nanoseconds per term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApduAirTime {
    /// Command frames (with overhead and chaining acknowledgements).
    pub command_ns: u64,
    /// Response frames.
    pub response_ns: u64,
    /// Frame delay times.
    pub fdt_ns: u64,
    /// S(WTX) exchanges.
    pub wtx_ns: u64,
    /// Card processing.
    pub processing_ns: u64,
    /// Latency added by a fault plan.
    pub latency_ns: u64,
    /// Frames (I-blocks, or native exchanges) used.
    pub blocks: u32,
    /// Sum of the terms.
    pub total_ns: u64,
}

impl ApduAirTime {
    /// The total in whole microseconds (rounded down).
    pub fn total_us(&self) -> u64 {
        self.total_ns / 1_000
    }
}

/// Air time accumulated over a transaction (since power on or the last
/// [`AirTimeReport::reset`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AirTimeReport {
    /// Bit rate used, kbit/s.
    pub bit_rate_kbps: u32,
    /// Activation time included, ns.
    pub activation_ns: u64,
    /// APDUs exchanged.
    pub apdus: u32,
    /// Sum over APDUs plus activation, ns.
    pub total_ns: u64,
    /// Latency injected by faults (part of `total_ns`), ns.
    pub latency_ns: u64,
    /// The last exchange.
    pub last: ApduAirTime,
}

impl AirTimeReport {
    /// Clears the totals (start of a new transaction), keeping the bit rate.
    pub fn reset(&mut self) {
        *self = AirTimeReport {
            bit_rate_kbps: self.bit_rate_kbps,
            ..AirTimeReport::default()
        };
    }

    /// Adds one activation.
    pub fn add_activation(&mut self, model: &AirTimeModel) {
        self.bit_rate_kbps = model.bit_rate.kbps();
        self.activation_ns += model.activation_us * 1_000;
        self.total_ns += model.activation_us * 1_000;
    }

    /// Adds one exchange.
    pub fn add(&mut self, a: ApduAirTime) {
        self.apdus = self.apdus.saturating_add(1);
        self.total_ns = self.total_ns.saturating_add(a.total_ns);
        self.latency_ns = self.latency_ns.saturating_add(a.latency_ns);
        self.last = a;
    }

    /// The total in whole microseconds.
    pub fn total_us(&self) -> u64 {
        self.total_ns / 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example_at_106() {
        // air-time.md: a 16-byte command with an 18-byte response ≈ 360 etu ≈ 3.4 ms on air.
        let m = AirTimeModel::new(BitRate::K106);
        let a = m.apdu(
            &[0x80, 0x50, 0, 2, 11, 1, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 1],
            18,
            0,
        );
        let on_air = a.command_ns + a.response_ns;
        assert!(on_air.abs_diff(360 * 128 * 1_000_000_000 / FC_HZ) < 5);
        assert!((3_300_000..3_500_000).contains(&on_air));
        assert_eq!(a.processing_ns, 5_000_000);
        assert_eq!(a.blocks, 2);
    }

    #[test]
    fn faster_rates_shrink_frames_not_processing() {
        let cmd = [0u8; 20];
        let slow = AirTimeModel::new(BitRate::K106).apdu(&cmd, 10, 0);
        let fast = AirTimeModel::new(BitRate::K848).apdu(&cmd, 10, 0);
        assert!(slow.command_ns.abs_diff(fast.command_ns * 8) < 10);
        assert_eq!(slow.processing_ns, fast.processing_ns);
    }

    #[test]
    fn long_commands_chain() {
        let m = AirTimeModel::new(BitRate::K106);
        let a = m.apdu(&[0u8; 130], 2, 0);
        // 130 bytes in blocks of 61 → 3 command blocks + 1 response block.
        assert_eq!(a.blocks, 4);
    }

    #[test]
    fn slow_commands_add_wtx() {
        let mut m = AirTimeModel::new(BitRate::K106);
        m.default_processing_us = 100_000;
        assert!(m.apdu(&[0x00, 0x01, 0, 0], 2, 0).wtx_ns > 0);
        m.default_processing_us = 1_000;
        assert_eq!(m.apdu(&[0x00, 0x01, 0, 0], 2, 0).wtx_ns, 0);
    }
}
