//! A sealed transaction on cardvm's `no_std` + `alloc` core, the way reader firmware
//! runs one: in-memory replay store and journal (firmware: flash pages), a fixed clock
//! (firmware: its RTC), a deterministic generator (firmware: its TRNG), and a card that
//! is a small function of the APDU it gets (firmware: the contactless front end).
//!
//! Nothing here may use `std`: the crate is `#![no_std]`, and cardvm is built without
//! its `std` feature (see `Cargo.toml`). `cargo test -p cardvm-nostd` runs it.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

use cardvm::transport::{CardTransport, TransportError};

/// A deterministic generator (SplitMix64). Firmware passes its TRNG instead.
pub struct SplitMix(pub u64);

impl rand_core::TryRng for SplitMix {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SplitMix {}

/// A purse that answers SELECT, READ BINARY of EF 0015 and GET BALANCE.
pub struct TinyPurse {
    /// The balance it reports.
    pub balance: u32,
    /// APDUs it received.
    pub received: Vec<Vec<u8>>,
}

impl CardTransport for TinyPurse {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.received.push(command.to_vec());
        let mut out: Vec<u8> = match command.get(..2) {
            Some([0x00, 0xA4]) => Vec::new(),
            Some([0x00, 0xB0]) => {
                let mut ef15 = alloc::vec![0u8; 30];
                ef15[12..20].copy_from_slice(&[0x41, 0, 0, 0, 0x89, 0x99, 0x99, 0x85]);
                ef15
            }
            Some([0x80, 0x5C]) => self.balance.to_be_bytes().to_vec(),
            _ => return Ok(write(response, &[0x6D, 0x00])),
        };
        out.extend_from_slice(&[0x90, 0x00]);
        Ok(write(response, &out))
    }
}

fn write(response: &mut [u8], bytes: &[u8]) -> usize {
    let n = bytes.len().min(response.len());
    response[..n].copy_from_slice(&bytes[..n]);
    n
}

/// The command script the test seals: select, card id, balance.
pub const BALANCE_CASM: &str = "\
.city    731
.script  9
.version 1
.input   amount   u32
.output  card_id  bytes
.output  balance  u32
.reg     cmd, resp, bal
    ldc    cmd, [00 A4 04 00 09 A0 00 00 00 03 86 98 07 01 00]
    apdu   resp, cmd
    expect 9000, 1
    ldc    cmd, [00 B0 95 00 1E]
    apdu   resp, cmd
    expect 9000, 2
    slice  resp, resp, 12, 8
    out    card_id, resp
    ldc    cmd, [80 5C 00 02 04]
    apdu   resp, cmd
    expect 9000, 3
    frombe bal, resp
    out    balance, bal
    halt
";

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::string::String;
    use cardvm::asm::{AsmOptions, MapLoader, assemble};
    use cardvm::crypto::sm2::Sm2PrivateKey;
    use cardvm::envelope::{EnvelopeHeader, MemoryReplayStore, ScriptKind, seal};
    use cardvm::journal::{Journal, MemoryStorage};
    use cardvm::reader::{FixedClock, JournalStatus, Policy, Reader, ReaderConfig, ReaderError};
    use cardvm::receipt::{Mode, Receipt};
    use cardvm::script::{DataScript, Field, FieldValue};
    use cardvm::vm::{Limits, NoTrace, Outcome};

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn sealed_transaction_to_a_journaled_receipt_without_std() {
        let mut rng = SplitMix(7);
        let issuer = Sm2PrivateKey::generate(&mut rng);
        let reader_key = Sm2PrivateKey::generate(&mut rng);
        let command = assemble(
            BALANCE_CASM,
            "balance.casm",
            &AsmOptions::default(),
            &mut MapLoader::new(),
        )
        .unwrap()
        .script
        .encode();
        let data = DataScript {
            fields: alloc::vec![Field {
                name: String::from("amount"),
                value: FieldValue::Int(100),
            }],
        }
        .encode();
        let header = |kind, seq| EnvelopeHeader {
            kind,
            city: 731,
            script_id: 9,
            script_version: 1,
            seq,
            issued: NOW - 10,
            expires: NOW + 600,
            binding: cardvm::crypto::sm3(&command),
            reader_id: String::from("R1"),
        };
        let sealed_cmd = seal(
            &issuer,
            reader_key.public_key(),
            &header(ScriptKind::Command, 1),
            &command,
            &mut rng,
        )
        .unwrap();
        let sealed_data = seal(
            &issuer,
            reader_key.public_key(),
            &header(ScriptKind::Data, 2),
            &data,
            &mut rng,
        )
        .unwrap();

        let mut reader = Reader::new(
            ReaderConfig {
                reader_id: String::from("R1"),
                reader_key: Some(reader_key.clone()),
                issuers: alloc::vec![issuer.public_key().clone()],
                policy: Policy::SealedOnly,
                limits: Limits::default(),
            },
            Some(Box::new(MemoryReplayStore::new())),
            // The journal proper (hash chain, crash rules) on in-memory "flash".
            Some(Box::new(
                Journal::create_in(MemoryStorage::new("flash")).unwrap(),
            )),
            Box::new(FixedClock(NOW)),
        )
        .unwrap();
        let mut card = TinyPurse {
            balance: 4660,
            received: Vec::new(),
        };
        let done = reader
            .transact(&sealed_cmd, &sealed_data, &mut card, &mut NoTrace, &mut rng)
            .unwrap();
        assert_eq!(done.report.outcome, Outcome::Committed);
        assert_eq!(done.journal, JournalStatus::Appended(1));
        assert_eq!(card.received.len(), 3);
        let r: &Receipt = &done.receipt;
        assert_eq!(r.mode, Mode::Production);
        assert_eq!(r.card_id, [0x41, 0, 0, 0, 0x89, 0x99, 0x99, 0x85]);
        r.verify_production(reader_key.public_key()).unwrap();
        // The same sealed data again is a replay, refused before the card.
        let e = reader
            .transact(&sealed_cmd, &sealed_data, &mut card, &mut NoTrace, &mut rng)
            .unwrap_err();
        assert!(matches!(e, ReaderError::Open { .. }));
        assert_eq!(card.received.len(), 3);
    }
}
