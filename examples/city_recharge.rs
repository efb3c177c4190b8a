//! One online recharge (load) end to end, as it happens between a card company, a
//! reader and a card:
//!
//! 1. the card company assembles the 3DES city's load script and compiles the data
//!    script (amount, terminal, time, keys) from `scripts/city0731-des3/`;
//! 2. it seals both for one reader (SM2 to the reader's key, SM4 + HMAC-SM3 inside,
//!    signed by the issuer);
//! 3. the reader opens them (signature, reader id, expiry, replay), verifies the
//!    bytecode and runs it against a simulated CPU card, printing the APDU trace;
//! 4. the reader signs the receipt, and the card company verifies it.
//!
//! `cargo run --example city_recharge`

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::{EnvelopeHeader, MemoryReplayStore, Opener, ScriptKind, seal, unix_now};
use cardvm::receipt::Receipt;
use cardvm::script::{CommandScript, DataScript};
use cardvm::sim::{Algorithm, CpuCard, RandomSource};
use cardvm::transport::ApduLayer;
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{ApduEvent, Tracer, Vm};
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
    let command = assemble_file(format!("{CITY}/load.casm").as_ref(), &AsmOptions::default())
        .map_err(|e| e.to_string())?
        .script;
    let data = compile_data(&std::fs::read_to_string(format!("{CITY}/load.toml"))?)?;
    let issuer = Sm2PrivateKey::generate(&mut rng);
    let reader_key = Sm2PrivateKey::generate(&mut rng);
    let now = unix_now();
    let h = command.header;
    let header = |kind, seq| EnvelopeHeader {
        kind,
        city: h.city,
        script_id: h.script_id,
        script_version: h.version,
        seq,
        expires: now + 600,
        reader_id: READER_ID.into(),
    };
    let sealed_command = seal(
        &issuer,
        reader_key.public_key(),
        &header(ScriptKind::Command, 1),
        &command.encode(),
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

    // -- reader: open, verify, run ----------------------------------------------------
    let issuer_pub = issuer.public_key().clone();
    let mut opener = Opener::new(
        Some(READER_ID),
        reader_key.clone(),
        issuer_pub,
        MemoryReplayStore::new(),
    );
    let command = CommandScript::parse(opener.open(&sealed_command, now)?.payload())?;
    let data = DataScript::parse(opener.open(&sealed_data, now)?.payload())?;
    let program = VerifiedProgram::from_script(command)?;
    let binding = program.bind(&data)?;
    println!(
        "reader: opened and verified script {} v{} of city {} ({} instructions)",
        program.header().script_id,
        program.header().version,
        program.header().city,
        program.instructions().len()
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
    let mut layer = ApduLayer::new(card);
    let started = std::time::Instant::now();
    let report = Vm::default().run(
        program.with_data(&data, &binding)?,
        &mut layer,
        &mut PrintTrace,
    );
    let host = started.elapsed();
    let card = layer.into_inner();
    let air = card.air_time().total_us();
    println!(
        "outcome: {} — card balance now {} fen; host time {:?}, modelled air time {} µs at 106 kbit/s",
        report.outcome.name(),
        card.balance(),
        host,
        air
    );

    let mut receipt = Receipt::from_run(
        program.header(),
        READER_ID,
        card.card_number(),
        &report,
        Some(air),
    );
    receipt.sign(&reader_key, &mut rng)?;
    println!("signed receipt:\n{}", receipt.to_json());

    // -- card company: check the receipt ----------------------------------------------
    receipt.verify(reader_key.public_key())?;
    println!("card company: receipt signature verifies");
    Ok(())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}
