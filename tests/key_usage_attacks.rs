//! Key usages as an attacker tries them (DESIGN §4 invariants 2, 4, 8).
//!
//! - The `divkey` oracle: diversification and process keys *are* ECB encryptions, so a
//!   master, purse or TAC key (or anything derived from one) that `enc`/`dec` accepted
//!   would hand card keys to the script. Every chain of key instructions is tried, and the
//!   known key bytes (and the keys derived from them, computed here) must never show up in a
//!   register, an output, a receipt, the trace or an APDU.
//! - Derived usages follow their source: a load master gives a load key that `pkey` and the
//!   load flow accept, and so on.
//! - `ldrkey` only where the reader keeps the key (PC/SC Part 3 key store): on a CPU card
//!   or a replay it is a fault and no FF 82 APDU leaves.

use cardvm::asm::{AsmOptions, MapLoader, assemble, assemble_file, compile_data};
use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, ecb_encrypt};
use cardvm::receipt::Receipt;
use cardvm::script::DataScript;
use cardvm::sim::{Algorithm, CpuCard, RandomSource, SimCard};
use cardvm::transport::replay::ReplayCard;
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{
    ApduEvent, Failure, Limits, Outcome, OutputRef, RegValue, RegView, RunReport, Tracer, Vm,
    VmErrorKind,
};
use proptest::prelude::*;

fn h(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

// ---- the keys the attacker's data script holds (the test knows every byte) ----

/// (slot name, input name, usage, des3/m1 key hex)
const KEYS: [(&str, &str, &str, &str); 9] = [
    (
        "k_lm",
        "lm",
        "load-master",
        "11223344556677888877665544332211",
    ),
    (
        "k_pm",
        "pm",
        "purchase-master",
        "2132435465768798A9BACBDCEDFE0F10",
    ),
    (
        "k_tm",
        "tm",
        "tac-master",
        "0F1E2D3C4B5A69788796A5B4C3D2E1F0",
    ),
    ("k_dlk", "dlk", "load", "3F013F013F013F013F013F013F013F01"),
    (
        "k_dpk",
        "dpk",
        "purchase",
        "112233445566778899AABBCCDDEEFF00",
    ),
    ("k_dtk", "dtk", "tac", "00112233445566778899AABBCCDDEEFF"),
    ("k_mk", "mk", "mac", "0123456789ABCDEFFEDCBA9876543210"),
    ("k_ek", "ek", "enc", "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"),
    ("k_m1", "m1", "m1-a", "A0A1A2A3A4A5"),
];
/// Diversification input (F) and process-key input.
const F: &str = "4100000089999985";
const PIN: &str = "F9CABA9100008000";
/// Scratch key slots the attacks derive into.
const SCRATCH: [&str; 3] = ["d1", "d2", "d3"];

fn data_toml(keys: &[(&str, &str, &str, &str)]) -> String {
    let mut t = format!("f_in = {{ hex = \"{F}\" }}\npin_in = {{ hex = \"{PIN}\" }}\n");
    for (_, input, usage, hex) in keys {
        let alg = if hex.len() == 12 { "m1" } else { "des3" };
        t.push_str(&format!(
            "[keys.{input}]\nalg = \"{alg}\"\nusage = \"{usage}\"\nhex = \"{hex}\"\n"
        ));
    }
    t
}

/// The attack script: every key loaded into its slot, then `body`, then `x` to the receipt.
fn evil_script(body: &str) -> String {
    let mut s = String::from(".city 999\n.script 66\n.version 1\n");
    s.push_str(".input f_in bytes[8]\n.input pin_in bytes[8]\n");
    for (_, input, usage, hex) in KEYS {
        let alg = if hex.len() == 12 { "m1" } else { "des3" };
        s.push_str(&format!(".input {input} key({alg}, {usage})\n"));
    }
    s.push_str(".output o bytes\n.reg f, pin, x\n.key ");
    let slots: Vec<&str> = KEYS.iter().map(|k| k.0).chain(SCRATCH).collect();
    s.push_str(&slots.join(", "));
    s.push_str("\n    ldin f, f_in\n    ldin pin, pin_in\n    mov x, f\n");
    for (slot, input, _, _) in KEYS {
        s.push_str(&format!("    ldkey {slot}, {input}\n"));
    }
    s.push_str(body);
    s.push_str("\n    out o, x\n    halt\n");
    s
}

// ---- what a leak would look like: the keys and every key derivable from them ----

fn ecb(key: &[u8], block: &[u8]) -> Vec<u8> {
    let alg = if key.len() == 16 {
        KeyAlg::Des3
    } else {
        KeyAlg::Des
    };
    let k = SecretKey::new(alg, KeyUsage::Encrypt, key).unwrap();
    let mut out = Vec::new();
    ecb_encrypt(&k, block, &mut out).unwrap();
    out
}

/// Every byte string that would be key material if a script could read it: the keys, and
/// (whatever their usage, except `enc`, whose ECB results are the script's to read) their
/// diversified, process and TAC keys over F and PIN, two levels deep.
fn needles() -> Vec<Vec<u8>> {
    let inputs = [h(F), h(PIN)];
    let derive = |k: &[u8]| -> Vec<Vec<u8>> {
        if k.len() != 16 {
            return vec![];
        }
        let mut v = Vec::new();
        for x in &inputs {
            let not: Vec<u8> = x.iter().map(|b| !b).collect();
            v.push([ecb(k, x), ecb(k, &not)].concat()); // divkey
            v.push(ecb(k, x)); // pkey
        }
        v.push(k[..8].iter().zip(&k[8..]).map(|(a, b)| a ^ b).collect()); // tackey
        v
    };
    let mut all: Vec<Vec<u8>> = KEYS.iter().map(|k| h(k.3)).collect();
    let mut level: Vec<Vec<u8>> = KEYS
        .iter()
        .filter(|k| k.2 != "enc")
        .map(|k| h(k.3))
        .collect();
    for _ in 0..2 {
        let next: Vec<Vec<u8>> = level.iter().flat_map(|k| derive(k)).collect();
        all.extend(next.iter().cloned());
        level = next;
    }
    // Look for 6-byte (M1) and 8-byte (DES, halves of 3DES) pieces. An all-zero piece (the
    // TAC key of a key whose halves are equal) is left out: zero runs fill every format
    // (padding, unset digests), so finding one says nothing about a leak.
    let mut pieces = Vec::new();
    for k in all {
        for chunk in k.chunks(8) {
            if chunk.iter().all(|&b| b == 0) {
                continue;
            }
            if !pieces.contains(&chunk.to_vec()) {
                pieces.push(chunk.to_vec());
            }
        }
    }
    pieces
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Everything a run lets the outside see.
#[derive(Default)]
struct Seen {
    bytes: Vec<Vec<u8>>,
    text: Vec<String>,
}

impl Seen {
    /// The first needle found anywhere, if any.
    fn leak(&self, needles: &[Vec<u8>]) -> Option<String> {
        for n in needles {
            for b in &self.bytes {
                if b.windows(n.len()).any(|w| w == &n[..]) {
                    return Some(format!("{} in {}", hex_upper(n), hex_upper(b)));
                }
            }
            let (upper, lower) = (hex_upper(n), hex_upper(n).to_lowercase());
            let decimal = format!("{n:?}");
            let decimal = &decimal[1..decimal.len() - 1];
            for t in &self.text {
                if t.contains(&upper) || t.contains(&lower) || t.contains(decimal) {
                    return Some(format!("{upper} in {t}"));
                }
            }
        }
        None
    }
}

/// A tracer that keeps every register value after every step and every APDU event.
#[derive(Default)]
struct Spy {
    seen: Seen,
    key_usages: Vec<Vec<Option<String>>>,
}

impl Tracer for Spy {
    fn apdu(&mut self, e: &ApduEvent<'_>) {
        self.seen.bytes.push(e.command.to_vec());
        self.seen.bytes.push(e.response.to_vec());
        self.seen.text.push(format!("{e:?}"));
    }
    fn wants_registers(&self) -> bool {
        true
    }
    fn after_step(&mut self, _offset: u32, regs: &RegView<'_>) {
        for r in 0..regs.registers() {
            if let RegValue::Bytes(b) = regs.get(r) {
                self.seen.bytes.push(b.to_vec());
            }
        }
        self.key_usages.push(
            (0..regs.key_slots())
                .map(|s| regs.key(s).map(|k| k.usage.to_string()))
                .collect(),
        );
    }
}

/// Records every command APDU; forwards everything else, the reader key store included
/// (so it is the transport underneath, not this recorder, that decides).
struct Recorder<T>(T, Vec<Vec<u8>>);

impl<T: CardTransport> CardTransport for Recorder<T> {
    fn transmit(&mut self, c: &[u8], r: &mut [u8]) -> Result<usize, TransportError> {
        self.1.push(c.to_vec());
        self.0.transmit(c, r)
    }
    fn atr(&self) -> Option<&[u8]> {
        self.0.atr()
    }
    fn uid(&self) -> Option<&[u8]> {
        self.0.uid()
    }
    fn reader_key_store(&self) -> bool {
        self.0.reader_key_store()
    }
}

fn cpu_card() -> SimCard {
    SimCard::load("scripts/cards/cpu_des3.toml".as_ref()).unwrap()
}

fn assemble_text(source: &str) -> VerifiedProgram {
    let mut loader = MapLoader::new();
    loader.insert(
        "purse.casm",
        std::fs::read_to_string("scripts/common/purse.casm").unwrap(),
    );
    let script = assemble(source, "attack.casm", &AsmOptions::default(), &mut loader)
        .unwrap_or_else(|e| panic!("{e}\n{source}"))
        .script;
    VerifiedProgram::from_script(script).unwrap()
}

/// Runs `source` on `card` with `data`; returns the report, the spy and what it saw.
fn run_on<T: CardTransport>(
    source: &str,
    data: &DataScript,
    card: T,
) -> (RunReport, Spy, Recorder<T>) {
    let program = assemble_text(source);
    let binding = program.bind(data).unwrap();
    let mut layer = ApduLayer::new(Recorder(card, Vec::new()));
    let mut spy = Spy::default();
    let report = Vm::new(Limits::default()).run(
        program.with_data(data, &binding).unwrap(),
        &mut layer,
        &mut spy,
    );
    let recorder = layer.into_inner();
    spy.seen.bytes.extend(recorder.1.iter().cloned());
    for (_, v) in report.outputs.iter() {
        if let OutputRef::Bytes(b) = v {
            spy.seen.bytes.push(b.to_vec());
        }
    }
    let receipt = Receipt::from_run(program.header(), "reader-1", &[], &report, None);
    spy.seen.bytes.push(receipt.to_bytes().unwrap_or_default());
    spy.seen.text.push(format!("{receipt:?}"));
    spy.seen.text.push(format!("{report:?}"));
    if let Outcome::Failed(f) | Outcome::Unknown(f) = &report.outcome {
        spy.seen.text.push(f.to_string());
    }
    (report, spy, recorder)
}

fn evil_data() -> DataScript {
    compile_data(&data_toml(&KEYS)).unwrap()
}

fn is_typed_fault(r: &RunReport) -> bool {
    matches!(
        &r.outcome,
        Outcome::Failed(Failure::Fault(e))
            if matches!(e.kind, VmErrorKind::KeyUsage { .. } | VmErrorKind::Crypto(_))
    )
}

/// Every chain of up to three derivations (`divkey` over F, `pkey` over PIN, `tackey`) from
/// every key, ended by `enc` or `dec`: none runs, and nothing leaks.
#[test]
fn the_divkey_oracle_is_closed_for_every_derivation_chain() {
    let data = evil_data();
    let needles = needles();
    let steps = [
        "divkey {d}, {s}, f",
        "pkey {d}, {s}, pin",
        "tackey {d}, {s}",
    ];
    let mut chains: Vec<Vec<usize>> = vec![vec![]];
    for len in 1..=3 {
        let prev: Vec<Vec<usize>> = chains
            .iter()
            .filter(|c| c.len() == len - 1)
            .cloned()
            .collect();
        for c in prev {
            for s in 0..steps.len() {
                chains.push([c.clone(), vec![s]].concat());
            }
        }
    }
    let mut runs = 0;
    for (slot, ..) in KEYS {
        for chain in &chains {
            for last in ["enc", "dec"] {
                let mut body = String::new();
                let mut src = slot;
                for (i, &s) in chain.iter().enumerate() {
                    let d = SCRATCH[i];
                    body.push_str(&format!(
                        "    {}\n",
                        steps[s].replace("{d}", d).replace("{s}", src)
                    ));
                    src = d;
                }
                body.push_str(&format!("    {last} x, {src}, f\n"));
                let (report, spy, _) = run_on(&evil_script(&body), &data, cpu_card());
                runs += 1;
                if slot == "k_ek" && chain.is_empty() {
                    // The one legitimate use: an `enc` key encrypts.
                    assert_eq!(report.outcome, Outcome::Committed, "{report:?}");
                } else {
                    assert!(
                        is_typed_fault(&report),
                        "{slot} {chain:?} {last}: {report:?}\n{body}"
                    );
                }
                if let Some(leak) = spy.seen.leak(&needles) {
                    panic!("key material leaked by\n{body}: {leak}");
                }
            }
        }
    }
    assert_eq!(runs, KEYS.len() * 40 * 2);
}

/// The detector above can fail: an `enc` key with a master's bytes is exactly the oracle,
/// and its output is caught as the card key it computes.
#[test]
fn the_leak_detector_sees_an_oracle() {
    let mut keys = KEYS;
    keys[7].3 = KEYS[0].3; // ek := lm's bytes
    let data = compile_data(&data_toml(&keys)).unwrap();
    let (report, spy, _) = run_on(&evil_script("    enc x, k_ek, f"), &data, cpu_card());
    assert_eq!(report.outcome, Outcome::Committed, "{report:?}");
    // 3DES(lm, F) is the left half of the load key diversified from lm.
    let leak = spy
        .seen
        .leak(&needles())
        .expect("the oracle must be detected");
    assert!(
        leak.contains(&hex_upper(&ecb(&h(KEYS[0].3), &h(F)))),
        "{leak}"
    );
}

/// Relabelling attempts that are not enc/dec: masters, purse and session keys only do what
/// their usage says.
#[test]
fn no_key_serves_outside_its_usage() {
    let data = evil_data();
    let needles = needles();
    let refused = [
        // A master is only diversified: no process key, TAC key, MAC or reader key.
        "pkey d1, k_lm, pin",
        "tackey d1, k_tm",
        "mac x, k_pm, f",
        "chkmac k_lm, f, f, 0x01",
        "ldrkey k_lm, 0",
        // A card key is not a master, a session key derives nothing.
        "divkey d1, k_dlk, f",
        "divkey d1, k_lm, f\n    divkey d2, d1, f",
        "pkey d1, k_dlk, pin\n    pkey d2, d1, pin",
        "pkey d1, k_dlk, pin\n    divkey d2, d1, f",
        "divkey d1, k_lm, f\n    tackey d2, d1",
        "divkey d1, k_tm, f\n    pkey d2, d1, pin",
        // An enc key is no derivation source.
        "divkey d1, k_ek, f",
        "pkey d1, k_ek, pin",
        "tackey d1, k_ek",
        // A purse or TAC key is no MAC key of its own.
        "mac x, k_dlk, f",
        "mac x, k_m1, f",
    ];
    for body in refused {
        let (report, spy, _) = run_on(&evil_script(&format!("    {body}")), &data, cpu_card());
        assert!(
            matches!(
                &report.outcome,
                Outcome::Failed(Failure::Fault(e)) if matches!(e.kind, VmErrorKind::KeyUsage { .. })
            ),
            "{body}: {report:?}"
        );
        assert_eq!(spy.seen.leak(&needles), None, "{body}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Div(usize, usize, bool),
    Pkey(usize, usize, bool),
    Tac(usize, usize),
    Enc(usize, bool),
    Dec(usize, bool),
    Mac(usize),
    Ldr(usize),
    Out,
}

fn slot_name(i: usize) -> &'static str {
    KEYS.iter()
        .map(|k| k.0)
        .chain(SCRATCH)
        .nth(i % (KEYS.len() + SCRATCH.len()))
        .unwrap_or("d1")
}

fn op_text(op: &Op) -> String {
    let reg = |f: bool| if f { "f" } else { "pin" };
    let d = |i: usize| SCRATCH[i % SCRATCH.len()];
    match *op {
        Op::Div(dst, src, f) => format!("divkey {}, {}, {}", d(dst), slot_name(src), reg(f)),
        Op::Pkey(dst, src, f) => format!("pkey {}, {}, {}", d(dst), slot_name(src), reg(f)),
        Op::Tac(dst, src) => format!("tackey {}, {}", d(dst), slot_name(src)),
        Op::Enc(k, f) => format!("enc x, {}, {}", slot_name(k), reg(f)),
        Op::Dec(k, f) => format!("dec x, {}, {}", slot_name(k), reg(f)),
        Op::Mac(k) => format!("mac x, {}, f", slot_name(k)),
        Op::Ldr(k) => format!("ldrkey {}, 0", slot_name(k)),
        Op::Out => String::from("out o, x"),
    }
}

fn any_op() -> impl Strategy<Value = Op> {
    let k = 0usize..12;
    prop_oneof![
        (0usize..3, k.clone(), any::<bool>()).prop_map(|(d, s, f)| Op::Div(d, s, f)),
        (0usize..3, k.clone(), any::<bool>()).prop_map(|(d, s, f)| Op::Pkey(d, s, f)),
        (0usize..3, k.clone()).prop_map(|(d, s)| Op::Tac(d, s)),
        (k.clone(), any::<bool>()).prop_map(|(s, f)| Op::Enc(s, f)),
        (k.clone(), any::<bool>()).prop_map(|(s, f)| Op::Dec(s, f)),
        k.clone().prop_map(Op::Mac),
        k.prop_map(Op::Ldr),
        Just(Op::Out),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Random short sequences of key instructions over every slot: whatever runs, no key
    /// material reaches a register, an output, the receipt, the trace or an APDU.
    #[test]
    fn random_key_instruction_sequences_never_leak_key_material(ops in proptest::collection::vec(any_op(), 1..10)) {
        let body: String = ops.iter().map(|o| format!("    {}\n", op_text(o))).collect();
        let (report, spy, recorder) = run_on(&evil_script(&body), &evil_data(), cpu_card());
        // Whatever happens is a commit or a typed fault (a usage, an empty slot, no key
        // store, an algorithm a derivation does not support)…
        prop_assert!(
            matches!(&report.outcome, Outcome::Committed | Outcome::Failed(Failure::Fault(_))),
            "{:?}", report.outcome
        );
        prop_assert!(!recorder.1.iter().any(|c| c.starts_with(&[0xFF, 0x82])));
        if let Some(leak) = spy.seen.leak(&needles()) {
            prop_assert!(false, "leak by\n{}: {}", body, leak);
        }
    }
}

// ---- derived usages follow their source ----

/// `divkey` of each master gives its card key, `pkey` of a load/purchase key a load/purchase
/// session key, `tackey` a TAC key: read from the key handles the tracer sees.
#[test]
fn derived_usages_follow_their_source() {
    let body = "    divkey d1, k_lm, f
    pkey d2, d1, pin
    divkey d1, k_pm, f
    pkey d2, d1, pin
    divkey d1, k_tm, f
    tackey d2, d1
    pkey d3, k_dlk, pin
    tackey d3, k_dtk";
    let (report, spy, _) = run_on(&evil_script(body), &evil_data(), cpu_card());
    assert_eq!(report.outcome, Outcome::Committed, "{report:?}");
    let slot = |name: &str| KEYS.len() + SCRATCH.iter().position(|s| *s == name).unwrap();
    let usage_after = |step: usize, name: &str| spy.key_usages[step][slot(name)].clone();
    // Steps: 2 ldin + mov + 9 ldkey come first.
    let first = 12;
    let want = [
        ("d1", "load"),
        ("d2", "load-session"),
        ("d1", "purchase"),
        ("d2", "purchase-session"),
        ("d1", "tac"),
        ("d2", "tac"),
        ("d3", "load-session"),
        ("d3", "tac"),
    ];
    for (i, (name, usage)) in want.into_iter().enumerate() {
        assert_eq!(
            usage_after(first + i, name).as_deref(),
            Some(usage),
            "step {i}"
        );
    }
}

/// A reader holding the city's master keys diversifies the card's load and TAC keys itself
/// (`divkey`, F from EF 0015) and runs the whole load: `pkey` accepts the derived load key,
/// MAC1 verifies, the card credits, and the TAC from the derived TAC key verifies.
#[test]
fn a_load_with_keys_diversified_from_masters_commits() {
    let script = "
.city 755
.script 90
.version 1
.input amount u32
.input terminal bytes[6]
.input now bcd_datetime
.input lm key(ALG, load-master)
.input tm key(ALG, tac-master)
.output balance_after u32
.output tac_ok u8
.reg cmd, resp, hdr, data, tmp, f
.reg amt, amt4, term, when, type, bal4, atc2, rnd, mac1, mac, bal, bal_after, ok
.key master, dlk, session, dtk, tac_key
.include \"purse.casm\"
    send SELECT_PURSE, 0x01
    send READ_EF15, 0x0A
    slice f, resp, 12, 8
    ldkey master, lm
    divkey dlk, master, f
    ldkey master, tm
    divkey dtk, master, f
    ldin amt, amount
    tobe amt4, amt, 4
    ldin term, terminal
    ldc data, [01]
    cat data, data, amt4
    cat data, data, term
    ldc hdr, [80 50 00 02]
    mkapdu cmd, hdr, data, 0x10
    apdu resp, cmd
    expect 9000, 0x02
    slice bal4, resp, 0, 4
    slice atc2, resp, 4, 2
    slice rnd, resp, 8, 4
    slice mac1, resp, 12, 4
    cat tmp, rnd, atc2
    ldc data, [80 00]
    cat tmp, tmp, data
    pkey session, dlk, tmp
    ldc type, [02]
    cat tmp, bal4, amt4
    cat tmp, tmp, type
    cat tmp, tmp, term
    chkmac session, tmp, mac1, 0x03
    ldin when, now
    cat tmp, amt4, type
    cat tmp, tmp, term
    cat tmp, tmp, when
    mac mac, session, tmp
    cat data, when, mac
    ldc hdr, [80 52 00 00]
    mkapdu cmd, hdr, data, 4
    frombe bal, bal4
    commit_point
    apdu resp, cmd
    expect 9000, 0x04
    add bal_after, bal, amt
    tobe tmp, bal_after, 4
    cat tmp, tmp, atc2
    cat tmp, tmp, amt4
    cat tmp, tmp, type
    cat tmp, tmp, term
    cat tmp, tmp, when
    tackey tac_key, dtk
    mac mac, tac_key, tmp
    cteq ok, mac, resp
    out balance_after, bal_after
    out tac_ok, ok
    halt
";
    let mlk = "11223344556677888877665544332211";
    let mtk = "0F1E2D3C4B5A69788796A5B4C3D2E1F0";
    for (alg, name) in [(Algorithm::Des3, "des3"), (Algorithm::Sm4, "sm4")] {
        let card = CpuCard::builder()
            .algorithm(alg)
            .card_number(&h("4100000089999985"))
            .master_keys(&h(mlk), &h("2132435465768798A9BACBDCEDFE0F10"), &h(mtk))
            .balance(500, 1_000_000)
            .random(RandomSource::Seeded {
                seed: 7,
                counter: 0,
            })
            .build()
            .unwrap();
        let data = compile_data(&format!(
            "amount = 1000\nterminal = {{ hex = \"000000000001\" }}\nnow = 2026-11-23T12:00:00\n\
             [keys.lm]\nalg = \"{name}\"\nusage = \"load-master\"\nhex = \"{mlk}\"\n\
             [keys.tm]\nalg = \"{name}\"\nusage = \"tac-master\"\nhex = \"{mtk}\"\n"
        ))
        .unwrap();
        let (report, _, recorder) = run_on(&script.replace("ALG", name), &data, card);
        assert_eq!(report.outcome, Outcome::Committed, "{name}: {report:?}");
        assert_eq!(report.output("balance_after"), Some(OutputRef::Int(1500)));
        assert_eq!(report.output("tac_ok"), Some(OutputRef::Int(1)), "{name}");
        assert_eq!(recorder.0.balance(), 1500);
    }
}

// ---- ldrkey only where a reader key store exists ----

/// The M1 city's balance enquiry (`ldrkey ka, 0` then authenticate and read) on `card`.
fn run_m1<T: CardTransport>(card: T) -> (RunReport, Recorder<T>) {
    let dir = "scripts/city0571-m1";
    let script = assemble_file(
        format!("{dir}/balance.casm").as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script;
    let data =
        compile_data(&std::fs::read_to_string(format!("{dir}/balance.toml")).unwrap()).unwrap();
    let program = VerifiedProgram::from_script(script).unwrap();
    let binding = program.bind(&data).unwrap();
    let mut layer = ApduLayer::new(Recorder(card, Vec::new()));
    let report = Vm::default().run(
        program.with_data(&data, &binding).unwrap(),
        &mut layer,
        &mut cardvm::vm::NoTrace,
    );
    (report, layer.into_inner())
}

fn sends_ff82(commands: &[Vec<u8>]) -> bool {
    commands.iter().any(|c| c.starts_with(&[0xFF, 0x82]))
}

fn no_key_store(r: &RunReport) -> bool {
    matches!(
        &r.outcome,
        Outcome::Failed(Failure::Fault(e)) if e.kind == VmErrorKind::NoReaderKeyStore
    )
}

#[test]
fn ldrkey_on_a_cpu_card_is_refused_before_any_key_byte_leaves() {
    let key = h(KEYS[8].3);
    // The M1 key straight to the card, and after a SELECT the card answered.
    for body in [
        "    ldrkey k_m1, 0",
        "    ldc x, [00 A4 04 00 09 A0 00 00 00 03 86 98 07 01 00]\n    apdu x, x\n    ldrkey k_m1, 1",
    ] {
        let (report, spy, recorder) = run_on(&evil_script(body), &evil_data(), cpu_card());
        assert!(no_key_store(&report), "{report:?}");
        assert!(!sends_ff82(&recorder.1), "{:02X?}", recorder.1);
        assert!(!recorder.1.iter().any(|c| c.windows(6).any(|w| w == key)));
        assert_eq!(spy.seen.leak(&needles()), None);
    }
    // The M1 city's own balance script on a CPU card stops at GET UID (6E00), long before.
    let (report, recorder) = run_m1(cpu_card());
    assert!(
        matches!(
            report.outcome,
            Outcome::Failed(Failure::Script { code: 0x21, .. })
        ),
        "{report:?}"
    );
    assert!(!sends_ff82(&recorder.1));
}

#[test]
fn ldrkey_on_a_replay_is_refused_before_any_key_byte_leaves() {
    // A recording crafted to accept any FF 82 (`..`) and answer 9000: replaying answers
    // is how the key was recovered.
    let replay = ReplayCard::parse(
        ">> FF CA 00 00 00\n<< A1 B2 C3 D4 90 00\n>> FF 82 00 00 06 ..\n<< 90 00\n",
    )
    .unwrap();
    let (report, recorder) = run_m1(replay);
    assert!(no_key_store(&report), "{report:?}");
    assert!(!sends_ff82(&recorder.1), "{:02X?}", recorder.1);
    assert_eq!(
        recorder.0.remaining(),
        1,
        "the FF 82 exchange was never replayed"
    );
}

#[test]
fn ldrkey_on_the_m1_reader_front_still_loads_the_key() {
    let card = match SimCard::load("scripts/city0571-m1/card.toml".as_ref()).unwrap() {
        SimCard::M1(c) => c,
        _ => panic!("the M1 city's card is an M1 card"),
    };
    assert!(card.reader_key_store());
    let (report, recorder) = run_m1(card);
    assert_eq!(report.outcome, Outcome::Committed, "{report:?}");
    assert_eq!(report.output("balance"), Some(OutputRef::Int(1000)));
    assert!(sends_ff82(&recorder.1));
}

#[test]
fn only_a_part3_storage_card_atr_declares_a_key_store() {
    use cardvm::transport::is_part3_storage_card_atr as part3;
    let m1k = h("3B8F8001804F0CA000000306030001000000006A");
    assert!(part3(&m1k));
    // MIFARE Classic 4K (card name 0002): its own TCK.
    let mut m4k = m1k.clone();
    m4k[14] = 0x02;
    m4k[19] = m4k[1..19].iter().fold(0, |x, b| x ^ b);
    assert!(part3(&m4k));
    // A wrong checksum, a cut ATR, non-zero RFU bytes, another RID, a CPU card's ATR.
    let mut bad = m1k.clone();
    bad[19] ^= 1;
    assert!(!part3(&bad));
    assert!(!part3(&m1k[..19]));
    let mut rfu = m1k.clone();
    rfu[16] = 1;
    rfu[19] ^= 1;
    assert!(!part3(&rfu));
    let mut rid = m1k.clone();
    rid[11] = 0x07;
    rid[19] ^= 0x06 ^ 0x07;
    assert!(!part3(&rid));
    assert!(!part3(&h("3B8A800100318065B0840100009000C6")));
    assert!(!part3(&[]));
    // The simulated cards say the same.
    assert!(!cpu_card().reader_key_store());
    let m1 = SimCard::load("scripts/city0571-m1/card.toml".as_ref()).unwrap();
    assert!(m1.reader_key_store());
    assert!(part3(m1.atr().unwrap()));
}
