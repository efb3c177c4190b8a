//! Fuzz-target bodies.
//!
//! Each function takes arbitrary bytes and must return without panicking, hanging or
//! using unbounded memory (security invariant 4). The cargo-fuzz targets in `fuzz/` are
//! one-line wrappers around these, and `tests/fuzz_corpus.rs` replays every committed
//! corpus and crash file through them on stable Rust, so a fixed crash stays fixed.
//!
//! The functions also assert round-trip properties where a format has them; a failed
//! assertion is a finding.

use crate::crypto::{KeyAlg, SecretKey};
use crate::script::{
    CommandScript, Constant, DataScript, Decl, Field, FieldValue, Header, ValueType,
};
use crate::transport::{ApduLayer, CardTransport, TransportError};
use crate::verify::VerifiedProgram;
use crate::vm::{Limits, NoTrace, Vm};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Command-script parser: parse, and if it parses, re-encoding gives the same bytes.
pub fn command_script(data: &[u8]) {
    if let Ok(script) = CommandScript::parse(data) {
        let again = script.encode();
        assert_eq!(
            again, data,
            "canonical command script did not re-encode to itself"
        );
        let _ = VerifiedProgram::verify(&script);
    }
}

/// Data-script parser: parse, and if it parses, re-encoding gives the same bytes.
pub fn data_script(data: &[u8]) {
    if let Ok(d) = DataScript::parse(data) {
        let again = d.encode();
        assert_eq!(
            again, data,
            "canonical data script did not re-encode to itself"
        );
    }
}

/// A value of type `ty` for synthesised data scripts.
pub fn sample_value(ty: &ValueType) -> Option<FieldValue> {
    Some(match *ty {
        ValueType::Int { .. } => FieldValue::Int(0x1234 & 0xFF),
        ValueType::Bytes => FieldValue::Bytes(vec![0x11; 6]),
        ValueType::BytesN { len } => FieldValue::Bytes(vec![0x22; usize::from(len).min(4096)]),
        ValueType::BcdDateTime => {
            FieldValue::BcdDateTime([0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00])
        }
        ValueType::Key { alg, usage } => {
            let bytes = [0x5Au8; 16];
            FieldValue::Key(SecretKey::new(alg, usage, &bytes[..alg.key_len()]).ok()?)
        }
    })
}

/// A data script that binds to `program`'s declared inputs.
pub fn synthesise_data(inputs: &[Decl]) -> Option<DataScript> {
    let fields = inputs
        .iter()
        .map(|d| {
            Some(Field {
                name: String::from(&*d.name),
                value: sample_value(&d.ty)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(DataScript { fields })
}

/// A deterministic card for fuzzing: answers every command with a few bytes derived from
/// it and a status word chosen by its INS, and tears on the 17th command.
#[derive(Debug, Default)]
pub struct EchoCard {
    count: u32,
}

impl CardTransport for EchoCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.count += 1;
        if self.count == 17 {
            return Err(TransportError::CardRemoved);
        }
        let ins = command.get(1).copied().unwrap_or(0);
        let n = usize::from(ins % 19).min(response.len().saturating_sub(2));
        for (i, b) in response[..n].iter_mut().enumerate() {
            *b = command.get(i).copied().unwrap_or(i as u8) ^ 0xA5;
        }
        let sw: [u8; 2] = match ins % 5 {
            0 => [0x61, 0x04],
            1 => [0x6C, 0x08],
            2 => [0x63, 0xC2],
            _ => [0x90, 0x00],
        };
        response[n..n + 2].copy_from_slice(&sw);
        Ok(n + 2)
    }
}

/// The fixed frame around fuzzed code in [`verify_and_run`].
fn template(code: &[u8]) -> CommandScript {
    CommandScript {
        header: Header {
            city: 1,
            script_id: 1,
            version: 1,
            registers: 16,
            key_slots: 4,
        },
        constants: vec![
            Constant::Bytes(vec![0x80, 0x5C, 0x00, 0x02, 0x04]),
            Constant::Int(0x1234),
            Constant::Bytes(vec![0x80, 0x50, 0x00, 0x02]),
        ],
        inputs: vec![
            Decl {
                name: "amount".into(),
                ty: ValueType::Int { bits: 32 },
            },
            Decl {
                name: "terminal".into(),
                ty: ValueType::BytesN { len: 6 },
            },
            Decl {
                name: "dlk".into(),
                ty: ValueType::Key {
                    alg: KeyAlg::Des3,
                    usage: crate::crypto::KeyUsage::Load,
                },
            },
            Decl {
                name: "m1a".into(),
                ty: ValueType::Key {
                    alg: KeyAlg::M1,
                    usage: crate::crypto::KeyUsage::M1A,
                },
            },
        ],
        outputs: vec![
            Decl {
                name: "out_int".into(),
                ty: ValueType::Int { bits: 32 },
            },
            Decl {
                name: "out_bytes".into(),
                ty: ValueType::Bytes,
            },
        ],
        code: code.to_vec(),
        debug: None,
        unsupported_debug: None,
    }
}

/// Verify-then-run: a whole command script (input starting with `CVMS`) or bare code in
/// a fixed frame; whatever verifies runs, fuel-bounded, against [`EchoCard`].
pub fn verify_and_run(data: &[u8]) {
    let script = if data.starts_with(b"CVMS") {
        match CommandScript::parse(data) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        template(data)
    };
    run_script(&script, EchoCard::default());
}

/// Verifies `script`, synthesises a data script for it, and runs it on `card` with
/// small limits. Returns whether it verified.
pub fn run_script<T: CardTransport>(script: &CommandScript, card: T) -> bool {
    let Ok(program) = VerifiedProgram::verify(script) else {
        return false;
    };
    let Some(data) = synthesise_data(program.inputs()) else {
        return true;
    };
    let Ok(binding) = program.bind(&data) else {
        return true;
    };
    let Ok(bound) = program.with_data(&data, &binding) else {
        return true;
    };
    run_bound(bound, card);
    true
}

/// Shared flows the assembler target can `.include` (as `../common/NAME.casm` from
/// `city/input.casm`, like the city scripts do).
#[cfg(feature = "std")]
const COMMON_FLOWS: [(&str, &str); 7] = [
    (
        "common/ep_balance.casm",
        include_str!("../scripts/common/ep_balance.casm"),
    ),
    (
        "common/ep_load.casm",
        include_str!("../scripts/common/ep_load.casm"),
    ),
    (
        "common/ep_purchase.casm",
        include_str!("../scripts/common/ep_purchase.casm"),
    ),
    (
        "common/ep_recover.casm",
        include_str!("../scripts/common/ep_recover.casm"),
    ),
    ("common/m1.casm", include_str!("../scripts/common/m1.casm")),
    (
        "common/m1_value.casm",
        include_str!("../scripts/common/m1_value.casm"),
    ),
    (
        "common/purse.casm",
        include_str!("../scripts/common/purse.casm"),
    ),
];

/// Assembler: arbitrary text (lossy UTF-8) assembled with an in-memory loader holding
/// the shared city flows. Whatever assembles must disassemble and re-assemble to the same
/// command script (without its debug section), and its encoding must parse back.
#[cfg(feature = "std")]
pub fn assemble(data: &[u8]) {
    use crate::asm::{AsmOptions, MapLoader, disassemble};
    let text = alloc::string::String::from_utf8_lossy(data);
    let mut loader = MapLoader::new();
    for (name, src) in COMMON_FLOWS {
        loader.insert(name, src);
    }
    let opts = AsmOptions { debug: true };
    let Ok(asm) = crate::asm::assemble(&text, "city/input.casm", &opts, &mut loader) else {
        return;
    };
    let bytes = asm.script.encode();
    let parsed = CommandScript::parse(&bytes);
    assert!(
        parsed.as_ref().is_ok_and(|p| *p == asm.script),
        "assembled script does not parse back: {parsed:?}"
    );
    let mut plain = asm.script;
    plain.debug = None;
    let listing = disassemble(&plain);
    let again = crate::asm::assemble(
        &listing,
        "listing.casm",
        &AsmOptions::default(),
        &mut MapLoader::new(),
    );
    match again {
        Ok(again) => assert_eq!(
            again.script, plain,
            "asm(disasm(x)) != x; listing:\n{listing}"
        ),
        Err(e) => panic!("disassembly does not assemble: {e}\n{listing}"),
    }
}

/// The shared high-level flows, for `compile`'s `include`s.
const COMMON_CVS: [(&str, &str); 13] = [
    (
        "common/purse.cvs",
        include_str!("../scripts/common/purse.cvs"),
    ),
    (
        "common/ep_balance.cvs",
        include_str!("../scripts/common/ep_balance.cvs"),
    ),
    (
        "common/ep_load.cvs",
        include_str!("../scripts/common/ep_load.cvs"),
    ),
    (
        "common/ep_purchase.cvs",
        include_str!("../scripts/common/ep_purchase.cvs"),
    ),
    (
        "common/purse_load.cvs",
        include_str!("../scripts/common/purse_load.cvs"),
    ),
    (
        "common/purse_purchase.cvs",
        include_str!("../scripts/common/purse_purchase.cvs"),
    ),
    (
        "common/ep_capp_purchase.cvs",
        include_str!("../scripts/common/ep_capp_purchase.cvs"),
    ),
    (
        "common/ep_load_pin.cvs",
        include_str!("../scripts/common/ep_load_pin.cvs"),
    ),
    (
        "common/ed_load.cvs",
        include_str!("../scripts/common/ed_load.cvs"),
    ),
    (
        "common/ed_purchase.cvs",
        include_str!("../scripts/common/ed_purchase.cvs"),
    ),
    (
        "common/ep_recover.cvs",
        include_str!("../scripts/common/ep_recover.cvs"),
    ),
    ("common/m1.cvs", include_str!("../scripts/common/m1.cvs")),
    (
        "common/m1_value.cvs",
        include_str!("../scripts/common/m1_value.cvs"),
    ),
];

/// High-level compiler: arbitrary text (lossy UTF-8) compiled as a `.cvs` program with an
/// in-memory loader holding the shared flows. No input panics; whatever compiles must
/// verify (the compiler emits only verifiable code), encode and parse back, and its
/// disassembly must re-assemble to the same script.
#[cfg(feature = "std")]
pub fn compile(data: &[u8]) {
    use crate::asm::{AsmOptions, MapLoader, disassemble};
    let text = alloc::string::String::from_utf8_lossy(data);
    let mut loader = MapLoader::new();
    for (name, src) in COMMON_CVS {
        loader.insert(name, src);
    }
    let opts = AsmOptions { debug: true };
    let Ok(asm) = crate::lang::assemble(&text, "city/input.cvs", &opts, &mut loader) else {
        return;
    };
    let bytes = asm.script.encode();
    let parsed = CommandScript::parse(&bytes);
    assert!(
        parsed.as_ref().is_ok_and(|p| *p == asm.script),
        "compiled script does not parse back: {parsed:?}"
    );
    if let Err(e) = crate::verify::VerifiedProgram::verify(&asm.script) {
        panic!(
            "compiled script does not verify: {e}\n{}",
            disassemble(&asm.script)
        );
    }
    let mut plain = asm.script;
    plain.debug = None;
    let listing = disassemble(&plain);
    match crate::asm::assemble_casm(
        &listing,
        "listing.casm",
        &AsmOptions::default(),
        &mut MapLoader::new(),
    ) {
        Ok(again) => assert_eq!(
            again.script, plain,
            "asm(disasm(x)) != x; listing:\n{listing}"
        ),
        Err(e) => panic!("disassembly does not assemble: {e}\n{listing}"),
    }
}

/// Data-script compiler: arbitrary text (lossy UTF-8) → `compile_data`; whatever compiles
/// must encode and parse back to itself.
#[cfg(feature = "std")]
pub fn data_toml(data: &[u8]) {
    let text = alloc::string::String::from_utf8_lossy(data);
    if let Ok(d) = crate::asm::compile_data(&text) {
        let bytes = d.encode();
        let back = DataScript::parse(&bytes);
        assert!(
            back.as_ref().is_ok_and(|b| b.encode() == bytes),
            "compiled data script does not round-trip: {back:?}"
        );
    }
}

/// The simulated cards of the city scripts (`scripts/city*/card.toml`), parsed once.
#[cfg(feature = "sim")]
fn sim_profiles() -> &'static [crate::sim::CardProfile] {
    use std::sync::OnceLock;
    static PROFILES: OnceLock<Vec<crate::sim::CardProfile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        [
            include_str!("../scripts/city0731-des3/card.toml"),
            include_str!("../scripts/city0755-sm4/card.toml"),
            include_str!("../scripts/city0571-m1/card.toml"),
        ]
        .iter()
        .filter_map(|t| crate::sim::CardProfile::from_toml(t).ok())
        .collect()
    })
}

/// The example data of the city scripts (`scripts/city*/*.toml`, compiled once): a
/// fuzzed program whose inputs one of these binds runs with real keys, so it can get
/// past the card's MAC checks.
#[cfg(feature = "sim")]
fn city_data() -> &'static [DataScript] {
    use std::sync::OnceLock;
    static DATA: OnceLock<Vec<DataScript>> = OnceLock::new();
    DATA.get_or_init(|| {
        [
            include_str!("../scripts/city0731-des3/load.toml"),
            include_str!("../scripts/city0731-des3/purchase.toml"),
            include_str!("../scripts/city0731-des3/capp_purchase.toml"),
            include_str!("../scripts/city0755-sm4/load.toml"),
            include_str!("../scripts/city0755-sm4/purchase.toml"),
            include_str!("../scripts/city0755-sm4/capp_purchase.toml"),
            include_str!("../scripts/city0571-m1/balance.toml"),
            include_str!("../scripts/city0571-m1/load.toml"),
            include_str!("../scripts/city0571-m1/purchase.toml"),
            include_str!("../scripts/city0571-m1/recover.toml"),
        ]
        .iter()
        .filter_map(|t| crate::asm::compile_data(t).ok())
        .collect()
    })
}

/// Verify-then-run against the simulated cards: the first byte picks the card (the
/// 3DES CPU card, the SM4 CPU card or the M1 card of the city scripts, built fresh from
/// its `card.toml`) and whether the run is torn at an APDU; the rest is a whole command
/// script (`CVMS…`) or bare code in a fixed frame. Whatever verifies runs fuel-bounded;
/// the data is a city example data script if one binds, else synthesised.
#[cfg(feature = "sim")]
pub fn verify_and_run_sim(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let profiles = sim_profiles();
    let Some(profile) = profiles.get(usize::from(sel & 3) % profiles.len().max(1)) else {
        return;
    };
    let Ok(mut card) = profile.build() else {
        return;
    };
    if sel & 0x80 != 0 {
        let at = u32::from((sel >> 2) & 0x0F);
        let faults = match &mut card {
            crate::sim::SimCard::Cpu(c) => c.faults_mut(),
            crate::sim::SimCard::M1(c) => c.faults_mut(),
            crate::sim::SimCard::Psam(c) => c.faults_mut(),
        };
        let fault = match sel & 0x40 {
            0 => crate::sim::Fault::TearAfter(at),
            _ => crate::sim::Fault::TearMidCommit(at),
        };
        faults.push(fault);
    }
    let script = if rest.starts_with(b"CVMS") {
        match CommandScript::parse(rest) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        template(rest)
    };
    let Ok(program) = VerifiedProgram::verify(&script) else {
        return;
    };
    let synthesised = synthesise_data(program.inputs());
    let candidates = city_data().iter().chain(synthesised.as_ref());
    for d in candidates {
        if let Ok(binding) = program.bind(d)
            && let Ok(bound) = program.with_data(d, &binding)
        {
            run_bound(bound, &mut card);
            return;
        }
    }
}

/// The limits every fuzzed run gets.
const FUZZ_LIMITS: Limits = Limits {
    fuel: 10_000,
    max_apdus: 32,
    max_bytes: 2048,
    max_memory: 16 * 1024,
};

/// Runs a bound program under [`FUZZ_LIMITS`] and checks the limits held.
fn run_bound<T: CardTransport>(bound: crate::verify::Bound<'_>, card: T) {
    let limits = FUZZ_LIMITS;
    let mut layer = ApduLayer::new(card);
    let report = Vm::new(limits).run(bound, &mut layer, &mut NoTrace);
    assert!(report.fuel_used <= limits.fuel, "fuel limit overrun");
    assert!(report.apdu_count <= limits.max_apdus, "APDU limit overrun");
    assert!(
        report.peak_memory <= limits.max_memory,
        "memory limit overrun"
    );
}

/// The fixed SM2 keys of the [`envelope_open`] target: (issuer, reader) private keys.
pub fn envelope_test_keys() -> Option<(
    crate::crypto::sm2::Sm2PrivateKey,
    crate::crypto::sm2::Sm2PrivateKey,
)> {
    use crate::crypto::sm2::Sm2PrivateKey;
    let issuer = Sm2PrivateKey::from_bytes(&[0x11; 32]).ok()?;
    let reader = Sm2PrivateKey::from_bytes(&[0x22; 32]).ok()?;
    Some((issuer, reader))
}

/// The reader id and the clock of the [`envelope_open`] target.
pub const ENVELOPE_READER_ID: &str = "reader-0001";
/// Unix time at which [`envelope_open`] opens (seeds expire after it).
pub const ENVELOPE_NOW: u64 = 1_800_000_000;

/// Envelope open: arbitrary bytes → `Opener::open` with the fixed test keys, twice (the
/// second open of the same envelope must be refused as a replay, or served from the
/// cache for a command script); an opened payload is handed to the script parsers.
pub fn envelope_open(data: &[u8]) {
    use crate::envelope::{MemoryReplayStore, Opener};
    let Some((issuer, reader)) = envelope_test_keys() else {
        return;
    };
    let mut opener = Opener::new(
        Some(ENVELOPE_READER_ID),
        reader,
        issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    use crate::envelope::Expect;
    if let Ok(opened) = opener.open(data, ENVELOPE_NOW, Expect::Inspect) {
        let payload = opened.payload();
        let _ = CommandScript::parse(payload).map(|s| VerifiedProgram::verify(&s).is_ok());
        let _ = DataScript::parse(payload);
        let binding = opened.header.binding;
        let _ = opener.open(data, ENVELOPE_NOW, Expect::Command);
        let _ = opener.open(data, ENVELOPE_NOW, Expect::DataFor(&binding));
    }
}

/// vpcd framing: the bytes are a stream from pcscd. Every frame [`crate::transport::vpcd::parse_frame`]
/// decodes is answered the way the server does (controls, or the APDU sent to the
/// simulated 3DES card), the answer is framed with `encode_frame`, and that frame must
/// parse back to the same payload.
#[cfg(feature = "sim")]
pub fn vpcd_frame(data: &[u8]) {
    use crate::transport::vpcd::{Frame, Parsed, encode_frame, parse_frame};
    let mut card = sim_profiles().first().and_then(|p| p.build().ok());
    let mut rest = data;
    let mut response = vec![0u8; 258];
    let mut out = Vec::new();
    let mut frames = 0usize;
    while let Parsed::Frame(frame, used) = parse_frame(rest) {
        assert!(used >= 2 && used <= rest.len(), "frame length out of range");
        frames += 1;
        assert!(frames <= data.len(), "more frames than bytes");
        let answer: &[u8] = match frame {
            Frame::Apdu(apdu) => match card.as_mut().map(|c| c.transmit(apdu, &mut response)) {
                Some(Ok(n)) => response.get(..n).unwrap_or(&[]),
                Some(Err(_)) => {
                    if let Some(c) = card.as_mut() {
                        let _ = c.power_on();
                    }
                    &[0x6F, 0x00]
                }
                None => &[0x6F, 0x00],
            },
            Frame::Control(crate::transport::vpcd::Control::GetAtr) => {
                &crate::transport::vpcd::DEFAULT_ATR
            }
            Frame::Control(_) | Frame::Empty => &[],
        };
        out.clear();
        if encode_frame(answer, &mut out).is_ok() {
            match parse_frame(&out) {
                Parsed::Frame(Frame::Apdu(p), n) => {
                    assert_eq!((p, n), (answer, out.len()), "answer frame mismatch")
                }
                Parsed::Frame(Frame::Control(c), n) => {
                    assert_eq!(answer.len(), 1, "control frame from {answer:?}");
                    assert_eq!(n, 3);
                    assert_eq!(
                        crate::transport::vpcd::Control::from_byte(answer[0]),
                        Some(c)
                    );
                }
                Parsed::Frame(Frame::Empty, n) => assert!(answer.is_empty() && n == 2),
                Parsed::Incomplete { .. } => panic!("encoded frame is incomplete"),
            }
        }
        rest = &rest[used..];
    }
}

/// The service's signed-request path up to the signature check, and the `/v1` bodies:
/// the input is three lines — reader id, [`crate::online::protocol::HDR_TIME`],
/// [`crate::online::protocol::HDR_SIGNATURE`] — then the body. The headers are parsed as
/// the service parses them, the signature checked against a fixed key, and the body
/// handed to [`v1_bodies`].
pub fn signed_request(data: &[u8]) {
    use crate::online::protocol::{parse_auth_headers, signing_input, valid_request_id};
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let mut line = || String::from_utf8_lossy(parts.next().unwrap_or(&[])).into_owned();
    let (reader, time, sig) = (line(), line(), line());
    let body = data
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(2)
        .map_or(&[][..], |(i, _)| &data[i + 1..]);
    let _ = valid_request_id(&reader);
    if let (Ok((t, sig)), Some((key, _))) = (parse_auth_headers(&time, &sig), envelope_test_keys())
    {
        let msg = signing_input("POST", "/v1/recharge/start", &reader, t, body);
        let _ = key.public_key().verify(&msg, &sig);
    }
    v1_bodies(body);
}

/// Every `/v1` request body type, and the receipts they carry, parsed from the same bytes
/// (canonical receipts must re-encode to the text they came from).
pub fn v1_bodies(data: &[u8]) {
    use crate::online::protocol::{
        CompleteRequest, JournalRequest, QueryScriptRequest, StartRequest, StatusRequest,
    };
    use crate::receipt::Receipt;
    let receipt = |text: &str| {
        if let Ok(r) = Receipt::from_json(text) {
            let again = r.to_json();
            assert!(
                Receipt::from_json(&again).is_ok_and(|r2| r2 == r),
                "a parsed receipt must round-trip"
            );
        }
    };
    let _ = serde_json::from_slice::<QueryScriptRequest>(data);
    let _ = serde_json::from_slice::<StatusRequest>(data);
    if let Ok(r) = serde_json::from_slice::<StartRequest>(data) {
        receipt(&r.query);
    }
    if let Ok(r) = serde_json::from_slice::<CompleteRequest>(data) {
        receipt(&r.receipt);
    }
    if let Ok(r) = serde_json::from_slice::<JournalRequest>(data) {
        for item in &r.items {
            receipt(&item.receipt);
        }
    }
    // `POST /v1/host`: the APDU a reader sends the card company, and the same bytes raw.
    if let Ok(r) = serde_json::from_slice::<crate::online::protocol::HostRequest>(data)
        && let Some(apdu) = crate::online::protocol::from_hex(&r.apdu)
    {
        let _ = crate::host::HostCommand::parse(&apdu);
    }
    let _ = crate::host::HostCommand::parse(data);
    receipt(&String::from_utf8_lossy(data));
}

/// Certificates, CRLs and certificate requests from hostile bytes (PEM or DER): parsed,
/// and whatever parses is verified against a fixed CA — a chain as a reader's, a CRL as
/// installable, a request's proof of possession. Nothing may panic.
#[cfg(feature = "pki")]
pub fn pki_parse(data: &[u8]) {
    use crate::issuer::pki::from_pem;
    use crate::issuer::{CertReq, Certificate, CertificateList, TrustStore};
    use der::Decode;
    let Some(ca) = fuzz_ca() else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let mut trust = TrustStore::new();
    if trust.add_root(ca.clone()).is_err() {
        return;
    }
    let mut chains = Vec::new();
    if let Ok(c) = crate::issuer::trust::certs_from_pem(&text) {
        chains.push(c);
    }
    if let Ok(c) = Certificate::from_der(data) {
        chains.push(alloc::vec![c]);
    }
    for chain in &chains {
        let _ = trust.verify_reader(chain, ENVELOPE_NOW);
        let _ = crate::issuer::cert::cert_public_key(&chain[0]);
    }
    let mut crls = Vec::new();
    if let Ok(c) = from_pem::<CertificateList>(&text, "CRL") {
        crls.push(c);
    }
    if let Ok(c) = CertificateList::from_der(data) {
        crls.push(c);
    }
    for crl in crls {
        let _ = crate::issuer::crl::verify_crl(&crl, &ca, ENVELOPE_NOW);
        let _ = trust.install_crl(crl, ENVELOPE_NOW);
        let _ = trust.expiring(ENVELOPE_NOW, 86_400);
    }
    let mut reqs = Vec::new();
    if let Ok(r) = from_pem::<CertReq>(&text, "CERTIFICATE REQUEST") {
        reqs.push(r);
    }
    if let Ok(r) = CertReq::from_der(data) {
        reqs.push(r);
    }
    for r in &reqs {
        let _ = crate::issuer::csr::verify_request(r);
    }
}

/// The fixed root CA of [`pki_parse`], made once (SM2 key from fixed bytes).
#[cfg(feature = "pki")]
pub fn fuzz_ca() -> Option<crate::issuer::Certificate> {
    use std::sync::OnceLock;
    static CA: OnceLock<Option<crate::issuer::Certificate>> = OnceLock::new();
    CA.get_or_init(|| {
        let key = crate::crypto::sm2::Sm2PrivateKey::from_bytes(&[0x33; 32]).ok()?;
        let name = crate::issuer::pki::parse_name("CN=Fuzz CA,O=Transit").ok()?;
        crate::issuer::Ca::new_root(
            name,
            key,
            ENVELOPE_NOW - 86_400,
            ENVELOPE_NOW + 86_400,
            None,
            crate::crypto::rng::os_rng(),
        )
        .ok()
        .map(|ca| ca.cert)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_runs_simple_code() {
        // ldc r0, #0 ; apdu r1, r0 ; halt
        let code = [0x21, 0x00, 0x00, 0x00, 0x50, 0x01, 0x00, 0x01];
        assert!(run_script(&template(&code), EchoCard::default()));
        assert!(!run_script(&template(&[0x21]), EchoCard::default()));
    }

    #[test]
    fn round_trip_assertions_hold_on_valid_input() {
        let s = template(&[0x01]);
        command_script(&s.encode());
        let d = synthesise_data(&s.inputs).unwrap();
        data_script(&d.encode());
    }
}
