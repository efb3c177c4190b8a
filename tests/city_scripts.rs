//! The city scripts in scripts/ (the high-level `.cvs` versions) run against the simulated CPU card: every flow, each
//! purse error path the scripts handle, and recovery after tearing at every APDU of a
//! load and a purchase.

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::{Algorithm, CpuCard, Fault, M1Card, ProveAtc, RandomSource, SimCard, Variant};
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Failure, NoTrace, Outcome, OutputValue, RunReport, Vm};

struct City {
    dir: &'static str,
    alg: Algorithm,
    dlk: &'static str,
    dpk: &'static str,
    /// The city card's deviations (card.toml `[variant]`): 0731 follows the real card.
    variant: Variant,
    /// APDUs of a purchase: SELECT, READ EF 0015, (GET DATA,) INITIALIZE, DEBIT.
    purchase_apdus: u32,
}

const DES3: City = City {
    dir: "scripts/city0731-des3",
    alg: Algorithm::Des3,
    dlk: "3F013F013F013F013F013F013F013F01",
    dpk: "112233445566778899AABBCCDDEEFF00",
    variant: Variant {
        auth_code: Some([0x3A, 0x5C, 0x7E, 0x91, 0x02, 0xB4, 0xD6, 0xF8]),
        capp_record: Some(2),
        mac_error_sw: 0x9302,
        over_balance_sw: 0x9401,
        prove_atc: ProveAtc::Initialize,
        prove_once: false,
        prove_zero_mac: false,
        pin_before_load: false,
        capp_by_tag: true,
    },
    purchase_apdus: 5,
};
const SM4: City = City {
    dir: "scripts/city0755-sm4",
    alg: Algorithm::Sm4,
    dlk: "0123456789ABCDEFFEDCBA9876543210",
    dpk: "FFEEDDCCBBAA99887766554433221100",
    variant: Variant {
        auth_code: None,
        capp_record: None,
        mac_error_sw: 0x9302,
        over_balance_sw: 0x9401,
        prove_atc: ProveAtc::Initialize,
        prove_once: false,
        prove_zero_mac: false,
        pin_before_load: false,
        capp_by_tag: false,
    },
    purchase_apdus: 4,
};
const DTK: &str = "00112233445566778899AABBCCDDEEFF";

fn h(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn card(city: &City, balance: u32) -> CpuCard {
    CpuCard::builder()
        .algorithm(city.alg)
        .card_number(&h("4100000089999985"))
        .diversified_keys(&h(city.dlk), &h(city.dpk), &h(DTK))
        .balance(balance, 1_000_000)
        .counters(5, 9)
        .variant(city.variant)
        .random(RandomSource::Seeded {
            seed: 7,
            counter: 0,
        })
        .build()
        .unwrap()
}

fn data(city: &City, flow: &str) -> DataScript {
    compile_data(&std::fs::read_to_string(format!("{}/{flow}.toml", city.dir)).unwrap()).unwrap()
}

fn run_flow(city: &City, flow: &str, data: &DataScript, card: &mut CpuCard) -> RunReport {
    run_in(city.dir, flow, data, card)
}

fn run_in<C: CardTransport>(dir: &str, flow: &str, data: &DataScript, card: &mut C) -> RunReport {
    // The high-level scripts are primary; tests/lang_side_by_side.rs holds them to
    // the casm byte for byte.
    let path = format!("{dir}/{flow}.cvs");
    let script = assemble_file(path.as_ref(), &AsmOptions::default())
        .unwrap()
        .script;
    let program = VerifiedProgram::from_script(script).unwrap();
    let binding = program.bind(data).unwrap();
    let mut layer = ApduLayer::new(card);
    Vm::default().run(
        program.with_data(data, &binding).unwrap(),
        &mut layer,
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

fn script_failure(r: &RunReport) -> u16 {
    match &r.outcome {
        Outcome::Failed(Failure::Script { code, .. }) => *code,
        other => panic!("expected a script failure, got {other:?}"),
    }
}

fn for_both(f: impl Fn(&City)) {
    f(&DES3);
    f(&SM4);
}

#[test]
fn balance_reads_card_number_and_balance() {
    for_both(|city| {
        let mut c = card(city, 1234);
        let r = run_flow(city, "balance", &DataScript::default(), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{}", city.dir);
        assert_eq!(int(&r, "balance"), 1234);
        assert_eq!(
            out(&r, "card_id"),
            OutputValue::Bytes(h("4100000089999985"))
        );
    });
}

#[test]
fn load_credits_the_card_and_verifies_its_tac() {
    for_both(|city| {
        let mut c = card(city, 500);
        let r = run_flow(city, "load", &data(city, "load"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{}: {r:?}", city.dir);
        assert_eq!(c.balance(), 10_500);
        assert_eq!(
            (int(&r, "balance_before"), int(&r, "balance_after")),
            (500, 10_500)
        );
        assert_eq!(int(&r, "atc"), 5);
        assert_eq!(
            int(&r, "tac_ok"),
            1,
            "{}: the card's TAC verifies",
            city.dir
        );
        assert_eq!(c.log()[0].amount, 10_000);
    });
}

#[test]
fn purchase_and_composite_purchase_debit_the_card() {
    for_both(|city| {
        let mut c = card(city, 1000);
        let r = run_flow(city, "purchase", &data(city, "purchase"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{}: {r:?}", city.dir);
        assert_eq!(c.balance(), 750);
        assert_eq!(int(&r, "tac_ok"), 1, "{}: MAC2 and TAC verify", city.dir);
        let r = run_flow(city, "capp_purchase", &data(city, "capp_purchase"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{}: {r:?}", city.dir);
        assert_eq!(c.balance(), 550);
        assert_eq!(int(&r, "txn_type"), 9);
        assert_eq!(int(&r, "tac_ok"), 1);
    });
}

#[test]
fn purse_errors_fail_with_the_scripts_codes() {
    for_both(|city| {
        // Insufficient balance: the card's 9401 (or the script's own check) → 0x07.
        let mut c = card(city, 100);
        let r = run_flow(city, "purchase", &data(city, "purchase"), &mut c);
        assert_eq!(script_failure(&r), 0x07);
        assert_eq!(c.balance(), 100);
        // A wrong load key: the card's MAC1 does not verify → 0x03, nothing loaded.
        let mut d = data(city, "load");
        for f in &mut d.fields {
            if f.name == "dlk" {
                let FieldValue::Key(k) = &f.value else {
                    unreachable!()
                };
                let wrong =
                    cardvm::crypto::SecretKey::new(k.alg(), k.usage(), &[0x55; 16]).unwrap();
                f.value = FieldValue::Key(wrong);
            }
        }
        let mut c = card(city, 100);
        let r = run_flow(city, "load", &d, &mut c);
        assert_eq!(script_failure(&r), 0x03);
        assert_eq!(c.balance(), 100);
        // The card refuses INITIALIZE with a forced status word.
        for (sw, code) in [(0x9403u16, 0x05u16), (0x9303, 0x08), (0x6A82, 0x02)] {
            let mut c = card(city, 100);
            // APDU 1 selects the purse, 2 reads EF 0015 (card id), 3 is INITIALIZE.
            c.faults_mut().push(Fault::ForceSw(3, sw));
            let r = run_flow(city, "load", &data(city, "load"), &mut c);
            assert_eq!(script_failure(&r), code, "{}: SW {sw:04X}", city.dir);
        }
        // The purse cannot be selected.
        let mut c = card(city, 100);
        c.faults_mut().push(Fault::ForceSw(1, 0x6A82));
        assert_eq!(
            script_failure(&run_flow(city, "balance", &DataScript::default(), &mut c)),
            0x01
        );
    });
}

fn recover(city: &City, card: &mut CpuCard, txn_type: u64, atc: u64) -> RunReport {
    card.power_on().unwrap();
    let mut d = data(city, "recover");
    for f in &mut d.fields {
        match f.name.as_str() {
            "txn_type" => f.value = FieldValue::Int(txn_type),
            "atc" => f.value = FieldValue::Int(atc),
            _ => {}
        }
    }
    let r = run_flow(city, "recover", &d, card);
    assert_eq!(r.outcome, Outcome::Committed, "recovery runs: {r:?}");
    r
}

/// Tearing at every APDU of a load and of a purchase: before the commit command the
/// outcome is `failed` and nothing happened; at the commit command it is `unknown`, and
/// the recovery script tells exactly whether the card committed.
#[test]
fn tearing_at_every_apdu_is_recoverable() {
    for_both(|city| {
        for (flow, apdus, txn_type, atc, start, delta) in [
            // SELECT, READ EF 0015 (card id), INITIALIZE, then the commit command.
            ("load", 4u32, 2u64, 5u64, 500u32, 10_000i64),
            ("purchase", city.purchase_apdus, 6, 9, 1000, -250),
        ] {
            for n in 1..=apdus {
                for fault in [
                    Fault::TearBefore(n),
                    Fault::TearAfter(n),
                    Fault::TearMidCommit(n),
                ] {
                    let mut c = card(city, start);
                    c.faults_mut().push(fault);
                    let r = run_flow(city, flow, &data(city, flow), &mut c);
                    let torn = |o: &Outcome| {
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
                    };
                    assert!(
                        torn(&r.outcome),
                        "{} {flow} {fault:?}: {:?}",
                        city.dir,
                        r.outcome
                    );
                    let committed_on_card = c.balance() != start;
                    if n < apdus {
                        assert!(
                            matches!(r.outcome, Outcome::Failed(_)),
                            "{} {flow} {fault:?}",
                            city.dir
                        );
                        assert!(!committed_on_card);
                        continue;
                    }
                    assert!(
                        matches!(r.outcome, Outcome::Unknown(_)),
                        "{} {flow} {fault:?}",
                        city.dir
                    );
                    let expect_committed = matches!(fault, Fault::TearAfter(_));
                    assert_eq!(
                        committed_on_card, expect_committed,
                        "{} {flow} {fault:?}",
                        city.dir
                    );
                    let rec = recover(city, &mut c, txn_type, atc);
                    assert_eq!(
                        int(&rec, "committed"),
                        u64::from(expect_committed),
                        "{} {flow} {fault:?}",
                        city.dir
                    );
                    let expected_balance = if expect_committed {
                        i64::from(start) + delta
                    } else {
                        i64::from(start)
                    };
                    assert_eq!(int(&rec, "balance") as i64, expected_balance);
                }
            }
        }
    });
}

/// The published load vector (reference/epurse.md) reproduces through the 3DES city's
/// load script: the card's MAC1 is 6C394D64 and the script accepts it.
#[test]
fn published_load_vector_through_the_city_script() {
    struct Capture(Vec<Vec<u8>>);
    impl cardvm::vm::Tracer for Capture {
        fn apdu(&mut self, e: &cardvm::vm::ApduEvent<'_>) {
            self.0.push(e.response.to_vec());
        }
    }
    let mut c = CpuCard::builder()
        .algorithm(Algorithm::Des3)
        .diversified_keys(&h(DES3.dlk), &h(DES3.dpk), &h(DTK))
        .balance(0, 1_000_000)
        .counters(0, 0)
        .random(RandomSource::Fixed([0xF9, 0xCA, 0xBA, 0x91]))
        .build()
        .unwrap();
    let mut d = data(&DES3, "load");
    for f in &mut d.fields {
        if f.name == "amount" {
            f.value = FieldValue::Int(0x1234);
        }
    }
    let script = assemble_file(
        format!("{}/load.cvs", DES3.dir).as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script;
    let program = VerifiedProgram::from_script(script).unwrap();
    let binding = program.bind(&d).unwrap();
    let mut capture = Capture(Vec::new());
    let mut layer = ApduLayer::new(&mut c);
    let r = Vm::default().run(
        program.with_data(&d, &binding).unwrap(),
        &mut layer,
        &mut capture,
    );
    assert_eq!(r.outcome, Outcome::Committed);
    assert_eq!(
        &capture.0[2][12..16],
        &h("6C394D64")[..],
        "MAC1 of the published trace"
    );
    assert_eq!(&capture.0[2][8..12], &h("F9CABA91")[..]);
    assert_eq!(c.balance(), 0x1234);
}

const M1_DIR: &str = "scripts/city0571-m1";

fn m1_card() -> M1Card {
    match SimCard::load(format!("{M1_DIR}/card.toml").as_ref()).unwrap() {
        SimCard::M1(c) => c,
        _ => panic!("the M1 city's card is an M1 card"),
    }
}

fn m1_data(flow: &str) -> DataScript {
    compile_data(&std::fs::read_to_string(format!("{M1_DIR}/{flow}.toml")).unwrap()).unwrap()
}

fn m1_balance(card: &mut M1Card) -> u64 {
    let r = run_in(M1_DIR, "balance", &m1_data("balance"), card);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    int(&r, "balance")
}

#[test]
fn m1_city_balance_load_purchase() {
    let mut c = m1_card();
    assert_eq!(m1_balance(&mut c), 1000);
    let r = run_in(M1_DIR, "load", &m1_data("load"), &mut c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    assert_eq!(
        (int(&r, "balance_before"), int(&r, "balance_after")),
        (1000, 6000)
    );
    assert_eq!(out(&r, "card_id"), OutputValue::Bytes(h("A1B2C3D4")));
    let r = run_in(M1_DIR, "purchase", &m1_data("purchase"), &mut c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    assert_eq!(m1_balance(&mut c), 5800);
}

#[test]
fn m1_city_errors() {
    // More than the balance: refused by the script before any change.
    let mut c = m1_card();
    let mut d = m1_data("purchase");
    d.fields
        .iter_mut()
        .filter(|f| f.name == "amount")
        .for_each(|f| f.value = FieldValue::Int(1001));
    assert_eq!(
        script_failure(&run_in(M1_DIR, "purchase", &d, &mut c)),
        0x07
    );
    assert_eq!(m1_balance(&mut c), 1000);
    // A wrong key B: authentication fails.
    let mut d = m1_data("load");
    for f in &mut d.fields {
        if f.name == "key_b" {
            f.value = FieldValue::Key(
                cardvm::crypto::SecretKey::new(
                    cardvm::crypto::KeyAlg::M1,
                    cardvm::crypto::KeyUsage::M1B,
                    &[1; 6],
                )
                .unwrap(),
            );
        }
    }
    assert_eq!(script_failure(&run_in(M1_DIR, "load", &d, &mut c)), 0x22);
    assert_eq!(m1_balance(&mut c), 1000);
}

/// Tearing at every APDU of an M1 load and purchase: before the value change nothing
/// happened (failed); at or after it the outcome is unknown and recovery decides.
#[test]
fn m1_tearing_at_every_apdu_is_recoverable() {
    for (flow, after) in [("load", 6000u64), ("purchase", 800)] {
        for n in 1..=7u32 {
            for fault in [
                Fault::TearBefore(n),
                Fault::TearAfter(n),
                Fault::TearMidCommit(n),
            ] {
                let mut c = m1_card();
                c.faults_mut().push(fault);
                let r = run_in(M1_DIR, flow, &m1_data(flow), &mut c);
                c.power_on().unwrap();
                let committed = match n {
                    1..=5 => {
                        assert!(
                            matches!(r.outcome, Outcome::Failed(_)),
                            "{flow} {fault:?}: {:?}",
                            r.outcome
                        );
                        assert_eq!(m1_balance(&mut c), 1000, "{flow} {fault:?}");
                        continue;
                    }
                    6 => matches!(fault, Fault::TearAfter(_)),
                    _ => true,
                };
                assert!(
                    matches!(r.outcome, Outcome::Unknown(_)),
                    "{flow} {fault:?}: {:?}",
                    r.outcome
                );
                let rec = run_in(M1_DIR, "recover", &m1_data("recover"), &mut c);
                assert_eq!(rec.outcome, Outcome::Committed, "{rec:?}");
                assert_eq!(
                    int(&rec, "committed"),
                    u64::from(committed),
                    "{flow} {fault:?}"
                );
                assert_eq!(
                    int(&rec, "balance"),
                    if committed { after } else { 1000 },
                    "{flow} {fault:?}"
                );
            }
        }
    }
}
