//! Recovery that no card can fool (invariant 17): every torn load and purchase is
//! recovered with the cities' recovery flow on cards that behave like the ones in the
//! field — GET TRANSACTION PROVE by the INITIALIZE counter or by the next one, answering
//! once, answering zeros for a load's MAC2, wanting a PIN before a load — after an earlier
//! committed transaction of the same type (whose proof a card may hand back instead).
//! The reader's verdict must never be wrong: 0 only when the card did not commit, 1 only
//! when it did and the proof's TAC verifies; 2 (unknown) where the card gives no proof
//! or no counter. Each case also pins the exact verdict, so a weaker flow fails here.
//! The card company's side of the same decision is in tests/issuer.rs.

#[path = "support/recorded_run.rs"]
mod recorded_run;
use cardvm::asm::compile_data;
use cardvm::crypto::{KeyAlg, KeyUsage, SecretKey, pboc_mac, tac_key};
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::profile::CpuProfile;
use cardvm::sim::{CpuCard, Fault};
use cardvm::transport::CardTransport;
use cardvm::vm::{Outcome, OutputValue, RunReport};
use recorded_run::run_recorded;

struct City {
    dir: &'static str,
    alg: KeyAlg,
    /// The purchase's commit command (DEBIT FOR PURCHASE) is this APDU of the flow.
    debit_at: u32,
}

const C0731: City = City {
    dir: "scripts/city0731-des3",
    alg: KeyAlg::Des3,
    debit_at: 5,
};
const C0755: City = City {
    dir: "scripts/city0755-sm4",
    alg: KeyAlg::Sm4,
    debit_at: 4,
};

/// A card behaviour seen in the field (`[variant]` options of CARD.toml).
struct Card {
    name: &'static str,
    edit: fn(&mut CpuProfile),
}

const CARDS: [Card; 5] = [
    Card {
        name: "reference",
        edit: |_| {},
    },
    Card {
        name: "PROVE by the next counter (a vendor's card)",
        edit: |p| p.variant.prove_atc = Some("next".into()),
    },
    Card {
        name: "PROVE once, zero MAC2",
        edit: |p| {
            p.variant.prove_once = true;
            p.variant.prove_zero_mac = true;
        },
    },
    Card {
        name: "PROVE by the next counter, once",
        edit: |p| {
            p.variant.prove_atc = Some("next".into());
            p.variant.prove_once = true;
        },
    },
    Card {
        name: "PIN before a load",
        edit: |p| p.variant.pin_before_load = true,
    },
];

fn h(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn card(city: &City, kind: &Card) -> CpuCard {
    let text = std::fs::read_to_string(format!("{}/card.toml", city.dir)).unwrap();
    let cardvm::sim::CardProfile::Cpu(mut p) = cardvm::sim::CardProfile::from_toml(&text).unwrap()
    else {
        panic!("a CPU card")
    };
    (kind.edit)(&mut p);
    p.build().unwrap()
}

fn data(path: &str) -> DataScript {
    compile_data(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn int(r: &RunReport, name: &str) -> Option<u64> {
    match r.output(name).map(|v| v.to_value()) {
        Some(OutputValue::Int(v)) => Some(v),
        None => None,
        other => panic!("{name}: {other:?}"),
    }
}

fn bytes(r: &RunReport, name: &str) -> Vec<u8> {
    match r.output(name).map(|v| v.to_value()) {
        Some(OutputValue::Bytes(v)) => v,
        other => panic!("{name}: {other:?}"),
    }
}

/// The data-script field `name` of `d` as bytes.
fn field(d: &DataScript, name: &str) -> Vec<u8> {
    d.fields
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| match &f.value {
            FieldValue::Bytes(b) => Some(b.clone()),
            FieldValue::Key(_) => None,
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name}"))
}

/// The TAC key of the cities' cards (their card.toml `[keys] tac`, diversified).
const DTK: &str = "00112233445566778899AABBCCDDEEFF";

fn dtk(city: &City) -> SecretKey {
    tac_key(&SecretKey::new(city.alg, KeyUsage::Tac, &h(DTK)).unwrap()).unwrap()
}

/// What a torn transaction was, from its `unknown` receipt: the TAC its proof must carry.
struct Torn {
    ttype: u64,
    atc: u64,
    expected_tac: [u8; 4],
    committed: bool,
}

fn bcd(r: &RunReport) -> Vec<u8> {
    match r.output("datetime").map(|v| v.to_value()) {
        Some(OutputValue::Bytes(v)) => v,
        other => panic!("datetime: {other:?}"),
    }
}

/// Runs `flow` torn at its commit command (`tear(n)`), and returns what recovery must find.
fn torn(city: &City, c: &mut CpuCard, load: bool, pin: bool, after: bool) -> Torn {
    let (cvs, toml) = if load && pin {
        (
            "scripts/examples/ep_load_pin_des3.cvs".to_string(),
            "scripts/examples/ep_load_pin_des3.toml".to_string(),
        )
    } else if load {
        (
            format!("{}/load.cvs", city.dir),
            format!("{}/load.toml", city.dir),
        )
    } else {
        (
            format!("{}/purchase.cvs", city.dir),
            format!("{}/purchase.toml", city.dir),
        )
    };
    let d = data(&toml);
    // An earlier committed transaction of the same type first: its proof is the one a
    // card holds when the torn one never committed.
    let (r, _) = run_recorded(&cvs, &d, c);
    assert_eq!(r.outcome, Outcome::Committed, "{cvs}: {r:?}");
    let balance = c.balance();
    let commit_at = match (load, pin) {
        (true, true) => 5,
        (true, false) => 4,
        (false, _) => city.debit_at,
    };
    let at = c.apdu_index() + commit_at;
    c.faults_mut().push(if after {
        Fault::TearAfter(at)
    } else {
        Fault::TearBefore(at)
    });
    let (r, _) = run_recorded(&cvs, &d, c);
    assert!(matches!(r.outcome, Outcome::Unknown(_)), "{cvs}: {r:?}");
    c.power_on().unwrap();
    let committed = c.balance() != balance;
    assert_eq!(committed, after, "{cvs}: the fault decides");
    let atc = int(&r, "atc").unwrap();
    let amount = u32::try_from(int(&r, "amount").unwrap()).unwrap();
    let terminal = bytes(&r, "terminal_id");
    let mut t = Vec::new();
    let ttype = int(&r, "txn_type").unwrap();
    if load {
        let after = u32::try_from(int(&r, "balance_before").unwrap()).unwrap() + amount;
        t.extend_from_slice(&after.to_be_bytes());
        t.extend_from_slice(&u16::try_from(atc).unwrap().to_be_bytes());
        t.extend_from_slice(&amount.to_be_bytes());
        t.push(0x02);
        t.extend_from_slice(&terminal);
        t.extend_from_slice(&bcd(&r));
    } else {
        t.extend_from_slice(&amount.to_be_bytes());
        t.push(0x06);
        t.extend_from_slice(&terminal);
        t.extend_from_slice(&field(&d, "terminal_seq"));
        t.extend_from_slice(&bcd(&r));
    }
    Torn {
        ttype,
        atc,
        expected_tac: pboc_mac(&dtk(city), &t).unwrap(),
        committed,
    }
}

/// Runs the city's recovery flow for `t`: the verdict and the report.
fn recover(city: &City, c: &mut CpuCard, t: &Torn) -> (u64, RunReport) {
    let mut d = data(&format!("{}/recover.toml", city.dir));
    for f in &mut d.fields {
        match f.name.as_str() {
            "txn_type" => f.value = FieldValue::Int(t.ttype),
            "atc" => f.value = FieldValue::Int(t.atc),
            _ => {}
        }
    }
    let (r, log) = run_recorded(&format!("{}/recover.cvs", city.dir), &d, c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    // Bounded: two PROVE attempts at most, each in the log.
    let proves = log
        .iter()
        .filter(|(cmd, _, _)| cmd[..2] == [0x80, 0x5A])
        .count();
    assert!((1..=2).contains(&proves), "{proves} PROVE commands");
    let verdict = int(&r, "committed").unwrap();
    // Never wrong: 0 only if the card did not commit; 1 only if it did and the proof is
    // this transaction's (its TAC verifies).
    match verdict {
        0 => assert!(!t.committed, "said never counted, but the card committed"),
        1 => {
            assert!(t.committed, "said committed, but the card did not commit");
            assert_eq!(
                bytes(&r, "tac"),
                t.expected_tac,
                "the proof is not this one's"
            );
        }
        2 => {}
        v => panic!("verdict {v}"),
    }
    (verdict, r)
}

/// Every card, every city, torn loads and purchases both ways: the verdict is right,
/// and exactly the one the decision table (docs/cards.md "Recovery") gives.
#[test]
fn every_recovery_case_on_every_card_behaviour() {
    for city in [&C0731, &C0755] {
        for kind in &CARDS {
            let pin = kind.name.starts_with("PIN");
            for load in [true, false] {
                if pin && load && city.alg != KeyAlg::Des3 {
                    continue; // the PIN load example is a DES/3DES flow
                }
                for after in [false, true] {
                    let what = format!(
                        "{} / {} / {} torn {} commit",
                        city.dir,
                        kind.name,
                        if load { "load" } else { "purchase" },
                        if after { "after" } else { "before" }
                    );
                    let mut c = card(city, kind);
                    let t = torn(city, &mut c, load, pin, after);
                    let (verdict, r) = recover(city, &mut c, &t);
                    // A card that wants a PIN before a load shows no load counter: a
                    // proof alone leaves the reader at "unknown" (the card company
                    // checks the TAC); every other case is decided here.
                    let expected = match (pin && load, after) {
                        (true, _) => 2,
                        (false, false) => 0,
                        (false, true) => 1,
                    };
                    assert_eq!(verdict, expected, "{what}: {r:?}");
                    if after {
                        let next = kind.name.contains("next");
                        assert_eq!(
                            int(&r, "prove_atc"),
                            Some(t.atc + u64::from(next)),
                            "{what}"
                        );
                        if load && kind.name.contains("zero MAC2") {
                            assert_eq!(bytes(&r, "mac"), [0; 4], "{what}");
                        }
                    }
                    if !(pin && load) {
                        let moved = u64::from(after);
                        assert_eq!(int(&r, "counter"), Some(t.atc + moved), "{what}");
                    }
                    // A one-shot card answers once: asked again it proves nothing, and
                    // the verdict falls back to unknown — never to "failed".
                    if kind.name.contains("once") && after {
                        let (again, r2) = recover(city, &mut c, &t);
                        assert_eq!(again, 2, "{what}, asked again: {r2:?}");
                        assert!(r2.output("tac").is_none(), "{what}");
                    }
                }
            }
        }
    }
}

/// 9406 alone is no proof: a card that refuses both PROVE commands for a load it did
/// commit (the vendor's card, asked with a counter it does not expect) gets "unknown"
/// from the reader — its counter has moved, so never "failed".
#[test]
fn a_refused_prove_is_not_a_verdict() {
    let mut c = card(&C0731, &CARDS[0]);
    let t = torn(&C0731, &mut c, true, false, true);
    // The recovery's APDUs: SELECT, READ EF 0015, PROVE, PROVE (next), INITIALIZE.
    let first = c.apdu_index();
    c.faults_mut().push(Fault::ForceSw(first + 3, 0x9406));
    c.faults_mut().push(Fault::ForceSw(first + 4, 0x9406));
    let (verdict, r) = recover(&C0731, &mut c, &t);
    assert_eq!(verdict, 2, "{r:?}");
    assert_eq!(int(&r, "counter"), Some(t.atc + 1), "the counter moved");
    assert!(r.output("tac").is_none());
}

/// A card wanting a PIN before a load: the city parameter (the flow
/// `ep_load_pin.cvs`) verifies it; the plain flow is refused at INITIALIZE (6982).
#[test]
fn pin_before_load_is_a_city_parameter() {
    let kind = &CARDS[4];
    let mut c = card(&C0731, kind);
    let (r, log) = run_recorded(
        "scripts/city0731-des3/load.cvs",
        &data("scripts/city0731-des3/load.toml"),
        &mut c,
    );
    assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
    assert_eq!(log.last().map(|(_, _, sw)| *sw), Some(0x6982));
    assert_eq!(c.balance(), 500);
    let (r, log) = run_recorded(
        "scripts/examples/ep_load_pin_des3.cvs",
        &data("scripts/examples/ep_load_pin_des3.toml"),
        &mut c,
    );
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    assert_eq!(
        log[2].0[..4],
        h("00200000")[..],
        "VERIFY PIN before INITIALIZE"
    );
    assert_eq!(c.balance(), 10_500);
}
