//! PSAM purchases: a simulated card and a simulated PSAM in the terminal's SAM slot 0,
//! in-process. The purchase key lives only in the PSAM; the scripts' data carry none.
//!
//! Checked against values computed here, independently of cardvm's crypto module (the
//! `des` and `sm4` block ciphers and the reference formulas of `reference/epurse.md`):
//! the PSAM's per-card key, MAC1, and the card's TAC.

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::{Algorithm, CardProfile, CpuCard, Fault, PsamCard, SimCard};
use cardvm::transport::{ApduLayer, CardTransport, SamSlots, Slot, TransportError};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Failure, NoTrace, Outcome, OutputValue, RunReport, Vm, VmErrorKind};
use des::cipher::{BlockCipherEncrypt, KeyInit};

const MPK: &str = "11223344556677888877665544332211";
const MLK: &str = "0123456789ABCDEFFEDCBA9876543210";
const MTK: &str = "00112233445566778899AABBCCDDEEFF";
const SERIAL: &str = "4100000089999985";
const NOW: &str = "20261123120500";

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---- independent crypto (reference/epurse.md) ----

fn tdes(key: &[u8], block: &mut [u8]) {
    let c = des::TdesEde2::new_from_slice(key).unwrap();
    c.encrypt_block(<&mut [u8; 8]>::try_from(block).unwrap().into());
}

fn single_des(key: &[u8], block: &mut [u8]) {
    let c = des::Des::new_from_slice(key).unwrap();
    c.encrypt_block(<&mut [u8; 8]>::try_from(block).unwrap().into());
}

fn sm4(key: &[u8], block: &mut [u8]) {
    let c = sm4::Sm4::new_from_slice(key).unwrap();
    c.encrypt_block(<&mut [u8; 16]>::try_from(block).unwrap().into());
}

/// DK = 3DES(MK, F) ‖ 3DES(MK, NOT F), or SM4(MK, F ‖ NOT F).
fn diversify(alg: Algorithm, mk: &[u8], f: &[u8]) -> Vec<u8> {
    let not: Vec<u8> = f.iter().map(|b| !b).collect();
    match alg {
        Algorithm::Sm4 => {
            let mut b = [f, &not[..]].concat();
            sm4(mk, &mut b);
            b
        }
        _ => {
            let (mut l, mut r) = (f.to_vec(), not);
            tdes(mk, &mut l);
            tdes(mk, &mut r);
            [l, r].concat()
        }
    }
}

/// SESPK from DPK and random ‖ ATC ‖ seq[2..4].
fn session(alg: Algorithm, dpk: &[u8], input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    match alg {
        Algorithm::Sm4 => {
            b.push(0x80);
            b.resize(16, 0);
            sm4(dpk, &mut b);
        }
        _ => tdes(dpk, &mut b),
    }
    b
}

/// PBOC MAC: method-2 padding, CBC with zero IV, leftmost 4 bytes.
fn mac(alg: Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    let n = if alg == Algorithm::Sm4 { 16 } else { 8 };
    let mut d = data.to_vec();
    d.push(0x80);
    while !d.len().is_multiple_of(n) {
        d.push(0);
    }
    let mut state = vec![0u8; n];
    for chunk in d.chunks(n) {
        for (s, c) in state.iter_mut().zip(chunk) {
            *s ^= c;
        }
        match alg {
            Algorithm::Sm4 => sm4(key, &mut state),
            _ => single_des(key, &mut state),
        }
    }
    state[..4].to_vec()
}

fn tac_key(alg: Algorithm, dtk: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::Sm4 => dtk.to_vec(),
        _ => dtk[..8].iter().zip(&dtk[8..]).map(|(a, b)| a ^ b).collect(),
    }
}

// ---- the terminal ----

struct Flow {
    alg: Algorithm,
    dir: &'static str,
    flow: &'static str,
    /// Transaction type in MAC1/TAC.
    ttype: u8,
    amount: u32,
    /// Card APDUs up to and including DEBIT (the commit command).
    card_apdus: u32,
    /// The data script's `now` (BCD date ‖ time).
    now: &'static str,
}

const SM4_PURCHASE: Flow = Flow {
    alg: Algorithm::Sm4,
    dir: "scripts/city0755-sm4",
    flow: "psam_purchase",
    ttype: 0x06,
    amount: 250,
    card_apdus: 4,
    now: NOW,
};
const SM4_CAPP: Flow = Flow {
    alg: Algorithm::Sm4,
    dir: "scripts/city0755-sm4",
    flow: "psam_capp_purchase",
    ttype: 0x09,
    amount: 200,
    card_apdus: 5,
    now: "20261123121000",
};
/// The common flow on the generic 3DES card (`scripts/cards/cpu_des3.toml`).
const DES3_PURCHASE: Flow = Flow {
    alg: Algorithm::Des3,
    dir: "scripts/examples",
    flow: "psam_purchase_des3",
    ttype: 0x06,
    amount: 250,
    card_apdus: 4,
    now: NOW,
};

fn psam(alg: Algorithm) -> PsamCard {
    let file = match alg {
        Algorithm::Sm4 => "scripts/cards/psam_sm4.toml",
        _ => "scripts/cards/psam_des3.toml",
    };
    match SimCard::load(file.as_ref()).unwrap() {
        SimCard::Psam(p) => p,
        other => panic!("{file} is not a PSAM: {other:?}"),
    }
}

/// The card: for 3DES the generic `cpu_des3.toml` with its purchase key replaced by the
/// PSAM's master (the issuer personalises DPK = div(MPK, serial)); for SM4 city 755's.
fn card(alg: Algorithm, balance: u32) -> CpuCard {
    match alg {
        Algorithm::Sm4 => match SimCard::load("scripts/city0755-sm4/psam_card.toml".as_ref()) {
            Ok(SimCard::Cpu(mut c)) => {
                assert_eq!(c.balance(), 500);
                if balance != 500 {
                    c = rebalance(c, balance);
                }
                c
            }
            other => panic!("{other:?}"),
        },
        _ => {
            let text = std::fs::read_to_string("scripts/cards/cpu_des3.toml").unwrap();
            let Ok(CardProfile::Cpu(mut p)) = CardProfile::from_toml(&text) else {
                panic!("cpu_des3.toml")
            };
            p.keys.master = true;
            p.keys.load = cardvm::sim::profile::KeyHex::from_hex(MLK);
            p.keys.purchase = cardvm::sim::profile::KeyHex::from_hex(MPK);
            p.keys.tac = cardvm::sim::profile::KeyHex::from_hex(MTK);
            p.balance = balance;
            p.build().unwrap()
        }
    }
}

/// The same card with another balance (through its profile).
fn rebalance(c: CpuCard, balance: u32) -> CpuCard {
    let mut p = c.to_profile();
    p.balance = balance;
    p.build().unwrap()
}

fn data(f: &Flow) -> DataScript {
    compile_data(&std::fs::read_to_string(format!("{}/{}.toml", f.dir, f.flow)).unwrap()).unwrap()
}

fn program(dir: &str, flow: &str) -> VerifiedProgram {
    let script = assemble_file(format!("{dir}/{flow}.cvs").as_ref(), &AsmOptions::default())
        .unwrap_or_else(|e| panic!("{dir}/{flow}: {e}"))
        .script;
    VerifiedProgram::from_script(script).unwrap()
}

fn run(
    dir: &str,
    flow: &str,
    data: &DataScript,
    card: &mut CpuCard,
    sam: Option<&mut PsamCard>,
) -> RunReport {
    let program = program(dir, flow);
    let binding = program.bind(data).unwrap();
    let mut layer = ApduLayer::new(card);
    let slots: Vec<&mut dyn CardTransport> = match sam {
        Some(s) => vec![s],
        None => vec![],
    };
    let mut sams = SamSlots::new(slots).unwrap();
    Vm::default().run_with_sams(
        program.with_data(data, &binding).unwrap(),
        &mut layer,
        &mut sams,
        &mut NoTrace,
    )
}

fn out(r: &RunReport, name: &str) -> OutputValue {
    r.output(name)
        .unwrap_or_else(|| panic!("no output {name} in {r:?}"))
        .to_value()
}

fn int(r: &RunReport, name: &str) -> u64 {
    match out(r, name) {
        OutputValue::Int(v) => v,
        other => panic!("{name} is {other:?}"),
    }
}

fn bytes(r: &RunReport, name: &str) -> Vec<u8> {
    match out(r, name) {
        OutputValue::Bytes(v) => v,
        other => panic!("{name} is {other:?}"),
    }
}

/// The values of one committed purchase, computed here: MAC1 and the card's TAC.
fn expected(f: &Flow, random: &[u8], atc: u16, seq: u32) -> (Vec<u8>, Vec<u8>) {
    let serial = h(SERIAL);
    let dpk = diversify(f.alg, &h(MPK), &serial);
    let dtk = diversify(f.alg, &h(MTK), &serial);
    let seq = seq.to_be_bytes();
    let sk = session(
        f.alg,
        &dpk,
        &[random, &atc.to_be_bytes(), &seq[2..]].concat(),
    );
    let head = [&f.amount.to_be_bytes()[..], &[f.ttype], &h("000000000001")].concat();
    let mac1 = mac(f.alg, &sk, &[&head[..], &h(f.now)].concat());
    let tac = mac(
        f.alg,
        &tac_key(f.alg, &dtk),
        &[&head[..], &seq, &h(f.now)].concat(),
    );
    (mac1, tac)
}

/// The card's random of its next INITIALIZE, learnt from a dry run on a clone of its
/// profile (the card's generator is deterministic).
fn next_random(card: &CpuCard) -> Vec<u8> {
    let mut c = card.to_profile().build().unwrap();
    let mut buf = [0u8; 64];
    let n = c.transmit(&h("0084000004"), &mut buf).unwrap();
    buf[..n - 2].to_vec()
}

fn check_committed(f: &Flow) {
    let start = 1000;
    let mut c = card(f.alg, start);
    let mut s = psam(f.alg);
    let seq = s.seq();
    let random = next_random(&c);
    let r = run(f.dir, f.flow, &data(f), &mut c, Some(&mut s));
    assert_eq!(r.outcome, Outcome::Committed, "{}: {r:?}", f.flow);
    assert_eq!(c.balance(), start - f.amount, "{}", f.flow);
    assert_eq!(int(&r, "balance_after"), u64::from(start - f.amount));
    assert_eq!(int(&r, "mac2_ok"), 1, "{}: the PSAM accepted MAC2", f.flow);
    assert_eq!(bytes(&r, "terminal_id"), h("000000000001"));
    assert_eq!(bytes(&r, "terminal_seq"), seq.to_be_bytes());
    assert_eq!(
        s.seq(),
        seq + 1,
        "{}: the PSAM used up its sequence",
        f.flow
    );
    let (mac1, tac) = expected(f, &random, 0, seq);
    assert_eq!(bytes(&r, "mac1"), mac1, "{}: MAC1", f.flow);
    assert_eq!(bytes(&r, "tac"), tac, "{}: the card's TAC", f.flow);
}

#[test]
fn psam_purchase_and_capp_purchase_on_sm4_and_3des() {
    // The 3DES diversification inside the PSAM follows the reference's cross-check.
    assert_eq!(
        diversify(Algorithm::Des3, &h(MPK), &h(SERIAL)),
        h("A0068F366D0535ADF42057760F84B2F5")
    );
    assert_eq!(
        diversify(Algorithm::Sm4, &h(MPK), &h(SERIAL)),
        h("18DC6B934AF686E3CA806AC3D4095DB7")
    );
    for f in [&SM4_PURCHASE, &SM4_CAPP, &DES3_PURCHASE] {
        check_committed(f);
    }
}

/// The data scripts carry no key, and the compiled programs declare no key input.
#[test]
fn no_purchase_key_in_the_psam_flows() {
    for f in [&SM4_PURCHASE, &SM4_CAPP, &DES3_PURCHASE] {
        let p = program(f.dir, f.flow);
        assert!(
            p.inputs().iter().all(|d| !d.ty.is_key()),
            "{}: {:?}",
            f.flow,
            p.inputs()
        );
        assert!(
            data(f)
                .fields
                .iter()
                .all(|x| !matches!(x.value, FieldValue::Key(_))),
            "{}",
            f.flow
        );
        assert_eq!(p.sam_slots_needed(), 1);
    }
}

/// Without a PSAM the flow is refused before any byte reaches the card.
#[test]
fn a_terminal_without_a_psam_sends_nothing() {
    let mut c = card(Algorithm::Sm4, 1000);
    let r = run(
        SM4_PURCHASE.dir,
        SM4_PURCHASE.flow,
        &data(&SM4_PURCHASE),
        &mut c,
        None,
    );
    assert!(
        matches!(&r.outcome, Outcome::Failed(Failure::Fault(e)) if matches!(e.kind, VmErrorKind::NoSam { slot: 0, available: 0 })),
        "{:?}",
        r.outcome
    );
    assert_eq!((r.apdu_count, c.apdu_index()), (0, 0));
}

/// MAC2 refused by the PSAM (the card's answer corrupted on the way): the card has
/// committed, so the outcome stays `committed` and the receipt says `mac2_ok = 0`.
#[test]
fn mac2_refused_by_the_psam_is_reported() {
    for f in [&SM4_PURCHASE, &DES3_PURCHASE] {
        let mut c = card(f.alg, 1000);
        // DEBIT's response: TAC(4) ‖ MAC2(4) ‖ SW; flip MAC2's first byte.
        c.faults_mut().push(Fault::Corrupt(f.card_apdus, 4, 0x01));
        let mut s = psam(f.alg);
        let r = run(f.dir, f.flow, &data(f), &mut c, Some(&mut s));
        assert_eq!(r.outcome, Outcome::Committed, "{}", f.flow);
        assert_eq!(int(&r, "mac2_ok"), 0, "{}", f.flow);
        assert_eq!(r.last_exchange.and_then(|l| l.sw), Some(0x9302));
    }
    // And directly: CREDIT SAM FOR PURCHASE without a session, with a wrong MAC2.
    let mut s = psam(Algorithm::Des3);
    let mut buf = [0u8; 64];
    let n = s.transmit(&h("8072000004 00000000"), &mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x69, 0x85]);
}

fn recover(dir: &str, card: &mut CpuCard, txn_type: u8, atc: u64) -> RunReport {
    card.power_on().unwrap();
    let mut d = compile_data("txn_type = 6\natc = 0\n").unwrap();
    for x in &mut d.fields {
        match x.name.as_str() {
            "txn_type" => x.value = FieldValue::Int(u64::from(txn_type)),
            "atc" => x.value = FieldValue::Int(atc),
            _ => {}
        }
    }
    let (rdir, rflow) = if dir.ends_with("city0755-sm4") {
        (dir, "recover")
    } else {
        ("scripts/examples", "psam_recover_des3")
    };
    let program = program(rdir, rflow);
    let binding = program.bind(&d).unwrap();
    let mut layer = ApduLayer::new(card);
    let r = Vm::default().run(
        program.with_data(&d, &binding).unwrap(),
        &mut layer,
        &mut NoTrace,
    );
    assert_eq!(r.outcome, Outcome::Committed, "recovery runs: {r:?}");
    r
}

fn torn(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Failed(Failure::Transport {
            error: TransportError::CardRemoved,
            ..
        }) | Outcome::Unknown(Failure::Transport {
            error: TransportError::CardRemoved,
            ..
        })
    )
}

/// Tearing at every APDU, the card's and the PSAM's: before the card's DEBIT nothing
/// happened (`failed`); at the DEBIT, or at the PSAM's MAC2 check after it, the outcome
/// is `unknown` and the city's recover flow says exactly whether the card committed.
#[test]
fn tearing_at_every_card_and_psam_apdu_is_recoverable() {
    for f in [&SM4_PURCHASE, &SM4_CAPP, &DES3_PURCHASE] {
        // SAM: SELECT, EF 16, EF 17, 80 70 (61 08), GET RESPONSE, 80 72.
        let sam_apdus = 6u32;
        for (on_sam, last) in [(false, f.card_apdus), (true, sam_apdus)] {
            for n in 1..=last {
                for fault in [
                    Fault::TearBefore(n),
                    Fault::TearAfter(n),
                    Fault::TearMidCommit(n),
                ] {
                    let start = 1000;
                    let mut c = card(f.alg, start);
                    let mut s = psam(f.alg);
                    let seq = s.seq();
                    if on_sam {
                        s.faults_mut().push(fault);
                    } else {
                        c.faults_mut().push(fault);
                    }
                    let r = run(f.dir, f.flow, &data(f), &mut c, Some(&mut s));
                    let what = format!(
                        "{} {} {fault:?}",
                        f.flow,
                        if on_sam { "sam" } else { "card" }
                    );
                    assert!(torn(&r.outcome), "{what}: {:?}", r.outcome);
                    // The receipt code says which device left: the card (tearing, 0xFF02)
                    // or the PSAM (0xFF04), and the message names the SAM slot.
                    let (Outcome::Failed(failure) | Outcome::Unknown(failure)) = &r.outcome else {
                        unreachable!()
                    };
                    let (code, slot) = if on_sam {
                        (0xFF04, Slot::Sam(0))
                    } else {
                        (0xFF02, Slot::Card)
                    };
                    assert_eq!(failure.code(), code, "{what}");
                    assert!(
                        matches!(failure, Failure::Transport { slot: s, .. } if *s == slot),
                        "{what}"
                    );
                    assert_eq!(failure.to_string().contains("SAM slot 0"), on_sam, "{what}");
                    let committed_on_card = c.balance() != start;
                    // The PSAM's sequence is used up only by a completed 80 70.
                    if on_sam && n == 4 {
                        let used = !matches!(fault, Fault::TearBefore(_) | Fault::TearMidCommit(_));
                        assert_eq!(s.seq(), seq + u32::from(used), "{what}");
                    }
                    if n < last {
                        assert!(matches!(r.outcome, Outcome::Failed(_)), "{what}");
                        assert!(!committed_on_card, "{what}");
                        continue;
                    }
                    assert!(matches!(r.outcome, Outcome::Unknown(_)), "{what}");
                    // The card commits unless its own DEBIT was torn before or inside
                    // the commit; a PSAM torn at MAC2 finds it committed.
                    let expect = on_sam || matches!(fault, Fault::TearAfter(_));
                    assert_eq!(committed_on_card, expect, "{what}");
                    let rec = recover(f.dir, &mut c, f.ttype, 0);
                    assert_eq!(int(&rec, "committed"), u64::from(expect), "{what}");
                    let balance = if expect { start - f.amount } else { start };
                    assert_eq!(int(&rec, "balance"), u64::from(balance), "{what}");
                }
            }
        }
    }
}

/// Scripts that try to send key material or an M1 key towards the SAM are refused by the
/// verifier, in the high-level language as in bytecode.
#[test]
fn key_material_never_goes_to_the_sam() {
    let dir = std::env::temp_dir().join(format!("cardvm-psam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = "city 1\nscript 1\nversion 1\nfail_codes {\n    refused = 0x01\n}\n";
    let cases = [
        (
            "purchase_key.cvs",
            // A MAC under the purchase session key, sent to the SAM.
            "input dpk: key(des3, purchase), rnd: bytes[8]\n\
             sk = session_key(dpk, rnd)\n\
             m = mac(sk, rnd)\n\
             sam0 apdu 80 70 00 00 [{m}] else fail refused\n\
             done\n",
            "derived from a key",
        ),
        (
            "ldrkey.cvs",
            // An M1 key to the reader's key store in a script that talks to a SAM.
            "input ka: key(m1, m1-a)\n\
             load_reader_key(ka, 0) else fail refused\n\
             sam0 apdu 00 A4 00 00 [3F 00] else fail refused\n\
             done\n",
            "ldrkey",
        ),
    ];
    for (name, body, why) in cases {
        let path = dir.join(name);
        std::fs::write(&path, format!("{header}{body}")).unwrap();
        let refused = match assemble_file(&path, &AsmOptions::default()) {
            Err(e) => e.to_string(),
            Ok(a) => VerifiedProgram::from_script(a.script)
                .map(|_| String::from("verified"))
                .unwrap_or_else(|e| e.to_string()),
        };
        assert!(refused.contains(why), "{name}: {refused}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The implicit flow: nothing of the MAC goes to the SAM, but a loop compares a counter
/// with the MAC's first byte and sends the counter — refused, as is a SAM command after
/// `check_mac`. The same key work with the SAM addressed first, or with a comparison
/// that is reported and not branched on, still verifies.
#[test]
fn sam_commands_never_depend_on_decisions_over_key_bytes() {
    let dir = std::env::temp_dir().join(format!("cardvm-psam-implicit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = "city 1\nscript 1\nversion 1\nfail_codes {\n    refused = 0x01\n}\n\
                  input dpk: key(des3, purchase), rnd: bytes[8], tac: bytes[4]\n\
                  output ok: u8, tag: bytes[4], head: bytes[1], first: u8, sent: bytes[13], nonce: bytes[8]\n";
    let cases = [
        (
            "counter.cvs",
            // The MAC's registers stay live to the end (reported after the SAM
            // command), so no register holds both MAC bytes and the SAM command: the
            // flow rule alone sees nothing wrong.
            "sk = session_key(dpk, rnd)\n\
             m = mac(sk, rnd)\n\
             h = m[0..1]\n\
             b = h:int\n\
             c = 0\n\
             for i in 0..256 {\n\
             \x20   if i == b {\n\
             \x20       c = i\n\
             \x20   }\n\
             }\n\
             sam0 apdu 80 70 00 00 [{c:u8be}] else fail refused\n\
             out tag = m, head = h, first = b\n\
             done\n",
            Some("decision on key-derived bytes"),
        ),
        (
            "check_mac.cvs",
            "sk = session_key(dpk, rnd)\n\
             check_mac(sk, rnd, tac) else fail refused\n\
             sam0 apdu 80 70 00 00 [01] else fail refused\n\
             done\n",
            Some("decision on key-derived bytes"),
        ),
        // The benign flows keep the SAM command and its parts live to the end, so
        // that no register holds them and, at another time, MAC bytes (the flow rule
        // follows registers, not times: the compiler reuses dead registers).
        (
            "sam_first.cvs",
            "cmd = [80 70 00 00 08] ++ rnd\n\
             sam0 apdu cmd -> seq:4 else fail refused\n\
             sk = session_key(dpk, seq ++ rnd[0..4])\n\
             if not ct_eq(mac(sk, rnd), tac) fail refused\n\
             out sent = cmd, nonce = rnd\n\
             done\n",
            None,
        ),
        (
            "reported.cvs",
            "cmd = [80 70 00 00 08] ++ rnd\n\
             sk = session_key(dpk, rnd)\n\
             out ok = ct_eq(mac(sk, rnd), tac)\n\
             sam0 apdu cmd else fail refused\n\
             out sent = cmd, nonce = rnd\n\
             done\n",
            None,
        ),
    ];
    for (name, body, why) in cases {
        let path = dir.join(name);
        std::fs::write(&path, format!("{header}{body}")).unwrap();
        let a =
            assemble_file(&path, &AsmOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let verdict = VerifiedProgram::from_script(a.script).map(|_| ());
        match why {
            Some(why) => {
                let e = verdict.expect_err(name).to_string();
                assert!(e.contains(why), "{name}: {e}");
            }
            None => verdict.unwrap_or_else(|e| panic!("{name}: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PSAM's own answers: terminal number, key index, the T=0 `61 08` and GET RESPONSE,
/// a wrong key version, and the two-level diversification with an issuer id.
#[test]
fn psam_commands() {
    let mut s = psam(Algorithm::Sm4);
    let mut buf = [0u8; 64];
    let mut tx = |s: &mut PsamCard, c: &str| {
        let n = s.transmit(&h(c), &mut buf).unwrap();
        buf[..n].to_vec()
    };
    assert_eq!(tx(&mut s, "00B0960006"), h("000000000001 9000"));
    assert_eq!(tx(&mut s, "00B0970001"), h("01 9000"));
    let init = |kver: &str, alg: &str, issuer: &str| {
        let lc = if issuer.is_empty() { "1C" } else { "24" };
        format!(
            "80700000{lc} 11223344 0000 000000FA 06 20261123 120500 {kver} {alg} {SERIAL} {issuer}"
        )
    };
    assert_eq!(tx(&mut s, &init("00", "04", "")), h("6108"));
    let r = tx(&mut s, "00C0000008");
    assert_eq!(r.len(), 10);
    assert_eq!(&r[..4], &1u32.to_be_bytes());
    let dpk = diversify(Algorithm::Sm4, &h(MPK), &h(SERIAL));
    let sk = session(Algorithm::Sm4, &dpk, &h("11223344 0000 0001"));
    let m = [&250u32.to_be_bytes()[..], &[6], &h("000000000001"), &h(NOW)].concat();
    assert_eq!(&r[4..8], mac(Algorithm::Sm4, &sk, &m));
    // Two-level: first the issuer id, then the serial (Lc 24).
    assert_eq!(tx(&mut s, &init("00", "04", "0755000000000000")), h("6108"));
    let r = tx(&mut s, "00C0000008");
    let level1 = diversify(Algorithm::Sm4, &h(MPK), &h("0755000000000000"));
    let dpk2 = diversify(Algorithm::Sm4, &level1, &h(SERIAL));
    let sk2 = session(Algorithm::Sm4, &dpk2, &h("11223344 0000 0002"));
    assert_eq!(&r[4..8], mac(Algorithm::Sm4, &sk2, &m));
    // A key version the PSAM does not hold, or the other algorithm: 6A88, nothing used.
    assert_eq!(tx(&mut s, &init("01", "04", "")), h("6A88"));
    assert_eq!(tx(&mut s, &init("00", "00", "")), h("6A88"));
    // With Le, the answer comes at once.
    let with_le = format!("{}08", init("00", "04", ""));
    assert_eq!(tx(&mut s, &with_le).len(), 10);
    assert_eq!(s.seq(), 4);
    // Debug never shows the master key.
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("1122334455") && shown.contains("REDACTED"),
        "{shown}"
    );
}

/// `cardvm run --sim CARD --sam-sim PSAM --trace`: the trace shows the SAM's exchanges as
/// `sam0>` / `sam0<`, replays as-is with `--replay`, `--save` keeps the PSAM's sequence;
/// without `--sam-sim` the run is refused before anything is sent.
#[test]
fn cli_runs_a_psam_purchase_and_replays_its_trace() {
    let exe = env!("CARGO_BIN_EXE_cardvm");
    let dir = std::env::temp_dir().join(format!("cardvm-psam-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let card = dir.join("card.toml");
    let sam = dir.join("psam.toml");
    std::fs::copy("scripts/city0755-sm4/psam_card.toml", &card).unwrap();
    std::fs::copy("scripts/cards/psam_sm4.toml", &sam).unwrap();
    let cmd = "scripts/city0755-sm4/psam_purchase.cvs";
    let data = "scripts/city0755-sm4/psam_purchase.toml";
    let out = std::process::Command::new(exe)
        .args(["run", cmd, "--data", data, "--trace", "--save", "--sim"])
        .arg(&card)
        .arg("--sam-sim")
        .arg(&sam)
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{trace}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"mac2_ok\": 1"));
    assert!(
        trace.contains("sam0> 80 70 00 00 1C") && trace.contains("sam0> 80 72 00 00 04"),
        "{trace}"
    );
    let saved = std::fs::read_to_string(&sam).unwrap();
    assert!(saved.contains("seq = 2"), "{saved}");
    // The trace replays (without the air-time summary line).
    let replay = dir.join("trace.txt");
    let lines: Vec<&str> = trace.lines().filter(|l| !l.starts_with("--")).collect();
    std::fs::write(&replay, lines.join("\n")).unwrap();
    let out = std::process::Command::new(exe)
        .args(["run", cmd, "--data", data, "--replay"])
        .arg(&replay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No SAM: refused, the card untouched (its profile unchanged by --save).
    let before = std::fs::read_to_string(&card).unwrap();
    let out = std::process::Command::new(exe)
        .args(["run", cmd, "--data", data, "--save", "--sim"])
        .arg(&card)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SAM slot"));
    assert_eq!(std::fs::read_to_string(&card).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
