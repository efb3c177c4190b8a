//! One online recharge (load) end to end, as it happens between a card company, a
//! reader and a card:
//!
//! 1. the card company assembles the 3DES city's load script and compiles the data
//!    script (amount, terminal, time, keys) from `scripts/city0731-des3/`;
//! 2. it seals both for one reader (SM2 to the reader's key, SM4 + HMAC-SM3 inside,
//!    signed by the issuer);
//! 3. the reader — one [`cardvm::reader::Reader`] call — opens them (signature, reader
//!    id, expiry, replay, command ↔ data binding), verifies the bytecode, runs it
//!    against a simulated CPU card printing the APDU trace, signs the receipt and
//!    journals it;
//! 4. the card company verifies the receipt as a production receipt.
//!
//! `cargo run --example city_recharge`

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::{EnvelopeHeader, MemoryReplayStore, ScriptKind, seal, unix_now};
use cardvm::reader::{JournalStatus, MemoryJournal, Policy, Reader, ReaderConfig, SystemClock};
use cardvm::sim::{Algorithm, CpuCard, RandomSource};
use cardvm::vm::{ApduEvent, Limits, Tracer};
use std::error::Error;

const CITY: &str = "scripts/city0731-des3";
const READER_ID: &str = "kiosk-0731-0001";

/// Prints each exchange in the `>> command` / `<< response SW` form.
struct PrintTrace;

impl Tracer for PrintTrace {
    fn apdu(&mut self, e: &ApduEvent<'_>) {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            ">> {}{}",
            hex(e.command),
            if e.redacted {
                "  (key bytes redacted)"
            } else {
                ""
            }
        );
        match (e.sw, e.error) {
            (Some(sw), _) => println!("<< {} {sw}", hex(e.response)),
            (None, Some(err)) => println!("<< !! {err}"),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut rng = os_rng();

    // -- card company: scripts and keys --------------------------------------------
    let command = assemble_file(format!("{CITY}/load.cvs").as_ref(), &AsmOptions::default())
        .map_err(|e| e.to_string())?
        .script;
    let data = compile_data(&std::fs::read_to_string(format!("{CITY}/load.toml"))?)?;
    let issuer = Sm2PrivateKey::generate(&mut rng);
    let reader_key = Sm2PrivateKey::generate(&mut rng);
    let now = unix_now();
    let h = command.header;
    let command_bytes = command.encode();
    // Both envelopes name the command script: the data script (amount and keys) may
    // run with this program and no other.
    let command_sm3 = cardvm::crypto::sm3(&command_bytes);
    let header = |kind, seq| EnvelopeHeader {
        kind,
        city: h.city,
        script_id: h.script_id,
        script_version: h.version,
        seq,
        issued: now,
        expires: now + 600,
        binding: command_sm3,
        reader_id: READER_ID.into(),
    };
    let sealed_command = seal(
        &issuer,
        reader_key.public_key(),
        &header(ScriptKind::Command, 1),
        &command_bytes,
        &mut rng,
    )?;
    let data_bytes = zeroize::Zeroizing::new(data.encode());
    let sealed_data = seal(
        &issuer,
        reader_key.public_key(),
        &header(ScriptKind::Data, 1),
        &data_bytes,
        &mut rng,
    )?;
    println!(
        "card company: sealed command script ({} bytes) and data script ({} bytes) for {READER_ID}",
        sealed_command.len(),
        sealed_data.len()
    );

    // -- reader: one pipeline from sealed scripts to a journaled receipt ------------
    let mut reader = Reader::new(
        ReaderConfig {
            reader_id: READER_ID.into(),
            reader_key: Some(reader_key.clone()),
            issuers: vec![issuer.public_key().clone()],
            policy: Policy::SealedOnly,
            limits: Limits::default(),
        },
        Some(Box::new(MemoryReplayStore::new())),
        Some(Box::new(MemoryJournal::default())),
        Box::new(SystemClock),
    )?;
    let prepared = reader.prepare(&sealed_command, &sealed_data)?;
    println!(
        "reader: opened and verified script {} v{} of city {} ({} instructions), {} mode",
        prepared.program().header().script_id,
        prepared.program().header().version,
        prepared.program().header().city,
        prepared.program().instructions().len(),
        prepared.mode().name()
    );

    // The customer's card: a simulated 3DES purse with 5.00 CNY on it.
    let card = CpuCard::builder()
        .algorithm(Algorithm::Des3)
        .card_number(&[0x41, 0x00, 0x00, 0x00, 0x89, 0x99, 0x99, 0x85])
        .diversified_keys(
            &hex("3F013F013F013F013F013F013F013F01"),
            &hex("112233445566778899AABBCCDDEEFF00"),
            &hex("00112233445566778899AABBCCDDEEFF"),
        )
        .balance(500, 1_000_000)
        .random(RandomSource::Fixed([0xF9, 0xCA, 0xBA, 0x91]))
        .build()?;
    let mut card = card;
    let started = std::time::Instant::now();
    let done = reader.run(&prepared, &mut card, &mut PrintTrace, &mut rng)?;
    let host = started.elapsed();
    let air = card.air_time().total_us();
    println!(
        "outcome: {} — card balance now {} fen; host time {:?}, modelled air time {} µs at 106 kbit/s",
        done.report.outcome.name(),
        card.balance(),
        host,
        air
    );
    if let JournalStatus::Appended(seq) = done.journal {
        println!("reader: receipt journaled as entry {seq}");
    }
    println!("signed receipt:\n{}", done.receipt.to_json());

    // -- card company: check the receipt ----------------------------------------------
    done.receipt.verify_production(reader_key.public_key())?;
    let seq = done.receipt.data.map_or(0, |d| d.seq);
    println!("card company: receipt signature verifies; production receipt for data seq {seq}");
    Ok(())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}
