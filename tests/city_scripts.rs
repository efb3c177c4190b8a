//! The city scripts in scripts/ run against the simulated CPU card: every flow, each
//! purse error path the scripts handle, and recovery after tearing at every APDU of a
//! load and a purchase.

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::{Algorithm, CpuCard, Fault, RandomSource};
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Failure, NoTrace, Outcome, OutputValue, RunReport, Vm};

struct City {
    dir: &'static str,
    alg: Algorithm,
    dlk: &'static str,
    dpk: &'static str,
}

const DES3: City = City {
    dir: "scripts/city0731-des3",
    alg: Algorithm::Des3,
    dlk: "3F013F013F013F013F013F013F013F01",
    dpk: "112233445566778899AABBCCDDEEFF00",
};
const SM4: City = City {
    dir: "scripts/city0755-sm4",
    alg: Algorithm::Sm4,
    dlk: "0123456789ABCDEFFEDCBA9876543210",
    dpk: "FFEEDDCCBBAA99887766554433221100",
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
    let path = format!("{}/{flow}.casm", city.dir);
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
    r.outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name} in {r:?}"))
        .1
        .clone()
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
            c.faults_mut().push(Fault::ForceSw(2, sw));
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
            ("load", 3u32, 2u64, 5u64, 500u32, 10_000i64),
            ("purchase", 3, 6, 9, 1000, -250),
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
