//! The electronic deposit (ED, P2 = 01) next to the electronic purse (EP): the cities'
//! ED load and ED purchase scripts run on the simulated card, and every MAC1, MAC2 and
//! TAC on the wire is recomputed here from reference/epurse.md's formulas with the
//! `des` and `sm4` crates directly (not the project's purse or crypto code). The PIN:
//! a wrong one answers 63Cx and then blocks (6983); ED commands without it are refused.

#[path = "support/recorded_run.rs"]
mod recorded_run;
use cardvm::asm::compile_data;
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::{Algorithm, CpuCard, Fault, RandomSource, Variant, exchange};
use cardvm::transport::CardTransport;
use cardvm::vm::{Failure, Outcome, OutputValue, RunReport};
use des::cipher::{BlockCipherEncrypt, KeyInit};
use des::{Des, TdesEde2};
use recorded_run::*;
use sm4::Sm4;

fn h(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const RANDOM: [u8; 4] = [0xF9, 0xCA, 0xBA, 0x91];
const TERMINAL: [u8; 6] = [0, 0, 0, 0, 0, 1];
const DTK: &str = "00112233445566778899AABBCCDDEEFF";
const AUTH_0731: [u8; 8] = [0x3A, 0x5C, 0x7E, 0x91, 0x02, 0xB4, 0xD6, 0xF8];

struct City {
    dir: &'static str,
    alg: Algorithm,
    dlk: &'static str,
    dpk: &'static str,
    /// The card authentication code the city's cards put in MAC1 (0731: the real card).
    auth: Option<[u8; 8]>,
}

const DES3: City = City {
    dir: "scripts/city0731-des3",
    alg: Algorithm::Des3,
    dlk: "3F013F013F013F013F013F013F013F01",
    dpk: "112233445566778899AABBCCDDEEFF00",
    auth: Some(AUTH_0731),
};
const SM4: City = City {
    dir: "scripts/city0755-sm4",
    alg: Algorithm::Sm4,
    dlk: "0123456789ABCDEFFEDCBA9876543210",
    dpk: "FFEEDDCCBBAA99887766554433221100",
    auth: None,
};

// ---- the reference formulas, computed independently ----------------------------

/// ISO 9797-1 method 2: 80, then 00 to a multiple of `bs` (always pad).
fn pad(data: &[u8], bs: usize) -> Vec<u8> {
    let mut v = data.to_vec();
    v.push(0x80);
    while !v.len().is_multiple_of(bs) {
        v.push(0);
    }
    v
}

/// CBC-MAC with zero IV, leftmost 4 bytes: single DES under an 8-byte key, SM4 under 16.
fn ref_mac(key: &[u8], data: &[u8]) -> [u8; 4] {
    let bs = if key.len() == 8 { 8 } else { 16 };
    let mut x = vec![0u8; bs];
    for block in pad(data, bs).chunks(bs) {
        for (a, b) in x.iter_mut().zip(block) {
            *a ^= b;
        }
        if bs == 8 {
            let c = Des::new_from_slice(key).unwrap();
            let mut b: [u8; 8] = x.clone().try_into().unwrap();
            c.encrypt_block((&mut b).into());
            x = b.to_vec();
        } else {
            let c = Sm4::new_from_slice(key).unwrap();
            let mut b: [u8; 16] = x.clone().try_into().unwrap();
            c.encrypt_block((&mut b).into());
            x = b.to_vec();
        }
    }
    [x[0], x[1], x[2], x[3]]
}

/// Process key: 3DES-ECB of the 8 input bytes (8-byte key), or SM4-ECB of them padded
/// with method 2 (the 16-byte result).
fn ref_process_key(alg: Algorithm, key: &[u8], input: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::Des3 => {
            let c = TdesEde2::new_from_slice(key).unwrap();
            let mut b: [u8; 8] = input.try_into().unwrap();
            c.encrypt_block((&mut b).into());
            b.to_vec()
        }
        _ => {
            let c = Sm4::new_from_slice(key).unwrap();
            let mut b: [u8; 16] = pad(input, 16).try_into().unwrap();
            c.encrypt_block((&mut b).into());
            b.to_vec()
        }
    }
}

/// TAC key: DTK_L XOR DTK_R (3DES), DTK itself (SM4).
fn ref_tac_key(alg: Algorithm, dtk: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::Des3 => dtk[..8].iter().zip(&dtk[8..]).map(|(a, b)| a ^ b).collect(),
        _ => dtk.to_vec(),
    }
}

// ---- running the city scripts ----------------------------------------------------

fn data(city: &City, flow: &str) -> DataScript {
    compile_data(&std::fs::read_to_string(format!("{}/{flow}.toml", city.dir)).unwrap()).unwrap()
}

fn with_pin(mut d: DataScript, pin: &[u8]) -> DataScript {
    for f in &mut d.fields {
        if f.name == "pin" {
            f.value = FieldValue::Bytes(pin.to_vec());
        }
    }
    d
}

fn run(city: &City, flow: &str, d: &DataScript, card: &mut CpuCard) -> (RunReport, Log) {
    run_recorded(&format!("{}/{flow}.cvs", city.dir), d, card)
}

/// The city's card: EP balance 500 with ATCs 5/9, ED balance 1000 with ATCs 3/7.
fn card(city: &City) -> CpuCard {
    CpuCard::builder()
        .algorithm(city.alg)
        .card_number(&h("4100000089999985"))
        .diversified_keys(&h(city.dlk), &h(city.dpk), &h(DTK))
        .balance(500, 1_000_000)
        .counters(5, 9)
        .ed(1000, 3, 7)
        .variant(Variant {
            auth_code: city.auth,
            ..Variant::default()
        })
        .random(RandomSource::Fixed(RANDOM))
        .build()
        .unwrap()
}

fn int(r: &RunReport, name: &str) -> u64 {
    match r.output(name).map(|v| v.to_value()) {
        Some(OutputValue::Int(v)) => v,
        other => panic!("{name}: {other:?}"),
    }
}

fn failure(r: &RunReport) -> u16 {
    match &r.outcome {
        Outcome::Failed(Failure::Script { code, .. }) => *code,
        o => panic!("expected a script failure, got {o:?}"),
    }
}

/// The exchange whose command starts with `prefix`.
fn find<'l>(log: &'l Log, prefix: &str) -> &'l (Vec<u8>, Vec<u8>, u16) {
    let p = h(prefix);
    log.iter()
        .find(|(c, _, _)| c.starts_with(&p))
        .unwrap_or_else(|| panic!("no {prefix} in {log:02X?}"))
}

fn for_both(f: impl Fn(&City)) {
    f(&DES3);
    f(&SM4);
}

// Values of the cities' ed_load.toml / ed_purchase.toml.
const LOAD: u32 = 10_000;
const LOAD_WHEN: &str = "20261123 120000";
const BUY: u32 = 250;
const BUY_SEQ: [u8; 4] = [0, 0, 0, 1];
const BUY_WHEN: &str = "20261123 120500";

#[test]
fn ed_load_cross_checks_against_the_reference_formulas() {
    for_both(|city| {
        let mut c = card(city);
        let (r, log) = run(city, "ed_load", &data(city, "ed_load"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{}: {r:?}", city.dir);
        assert_eq!(find(&log, "0020000003").0, h("0020000003 123456"));
        // INITIALIZE FOR LOAD of the ED: P2 01, the ED's balance and online ATC (3).
        let (cmd, init, sw) = find(&log, "80500001");
        assert_eq!(*sw, 0x9000);
        assert_eq!(cmd, &h("805000010B 01 00002710 000000000001 10"));
        let alg_id = if city.alg == Algorithm::Des3 { 0 } else { 4 };
        let mut sk_in = RANDOM.to_vec();
        sk_in.extend_from_slice(&[0x00, 0x03, 0x80, 0x00]);
        let seslk = ref_process_key(city.alg, &h(city.dlk), &sk_in);
        // MAC1 = MAC(SESLK, balanceBefore ‖ amount ‖ 01 ‖ terminal)
        let mut m1 = 1000u32.to_be_bytes().to_vec();
        m1.extend_from_slice(&LOAD.to_be_bytes());
        m1.push(0x01);
        m1.extend_from_slice(&TERMINAL);
        let mut expected = h("000003E8 0003 00");
        expected.push(alg_id);
        expected.extend_from_slice(&RANDOM);
        expected.extend_from_slice(&ref_mac(&seslk, &m1));
        assert_eq!(init, &expected, "{}: INITIALIZE answer and MAC1", city.dir);
        // CREDIT FOR LOAD carries MAC2 = MAC(SESLK, amount ‖ 01 ‖ terminal ‖ date ‖ time).
        let mut m2 = LOAD.to_be_bytes().to_vec();
        m2.push(0x01);
        m2.extend_from_slice(&TERMINAL);
        m2.extend_from_slice(&h(LOAD_WHEN));
        let (cmd, tac, sw) = find(&log, "80520000");
        let mut credit = h("805200000B");
        credit.extend_from_slice(&h(LOAD_WHEN));
        credit.extend_from_slice(&ref_mac(&seslk, &m2));
        credit.push(0x04);
        assert_eq!((cmd, *sw), (&credit, 0x9000), "{}: MAC2", city.dir);
        // TAC = MAC(TAC key, balanceAfter ‖ onlineATC ‖ amount ‖ 01 ‖ terminal ‖ date ‖ time)
        let mut t = 11_000u32.to_be_bytes().to_vec();
        t.extend_from_slice(&[0x00, 0x03]);
        t.extend_from_slice(&m2);
        let tk = ref_tac_key(city.alg, &h(DTK));
        assert_eq!(tac, &ref_mac(&tk, &t).to_vec(), "{}: TAC", city.dir);
        assert_eq!(int(&r, "tac_ok"), 1);
        assert_eq!((int(&r, "txn_type"), int(&r, "atc")), (1, 3));
        // The ED moved; the EP did not (separate balances and counters).
        let p = c.purse();
        assert_eq!(
            (p.ed_balance, p.ed_online_atc, p.ed_offline_atc),
            (11_000, 4, 7)
        );
        assert_eq!((p.balance, p.online_atc, p.offline_atc), (500, 5, 9));
        assert_eq!(c.log()[0].ttype, 0x01);
    });
}

#[test]
fn ed_purchase_cross_checks_against_the_reference_formulas() {
    for_both(|city| {
        let mut c = card(city);
        let (r, log) = run(city, "ed_purchase", &data(city, "ed_purchase"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{}: {r:?}", city.dir);
        let (cmd, init, sw) = find(&log, "80500101");
        assert_eq!(*sw, 0x9000);
        assert_eq!(cmd, &h("805001010B 01 000000FA 000000000001 0F"));
        // balance(4) ‖ offline ATC(2) ‖ overdraft(3) ‖ keyVer ‖ algId ‖ random
        assert_eq!(&init[..9], &h("000003E8 0007 000000")[..]);
        // SESPK = ENC(DPK, random ‖ offlineATC ‖ terminalSeq[2..4])
        let mut sk_in = RANDOM.to_vec();
        sk_in.extend_from_slice(&[0x00, 0x07]);
        sk_in.extend_from_slice(&BUY_SEQ[2..]);
        let sespk = ref_process_key(city.alg, &h(city.dpk), &sk_in);
        // MAC1 = MAC(SESPK, amount ‖ 05 ‖ terminal ‖ date ‖ time [‖ 85 ‖ auth code])
        let mut m = BUY.to_be_bytes().to_vec();
        m.push(0x05);
        m.extend_from_slice(&TERMINAL);
        m.extend_from_slice(&h(BUY_WHEN));
        let mut m1 = m.clone();
        if let Some(code) = city.auth {
            m1.push(0x85);
            m1.extend_from_slice(&code);
        }
        let (cmd, resp, sw) = find(&log, "80540100");
        let mut debit = h("805401000F");
        debit.extend_from_slice(&BUY_SEQ);
        debit.extend_from_slice(&h(BUY_WHEN));
        debit.extend_from_slice(&ref_mac(&sespk, &m1));
        debit.push(0x08);
        assert_eq!((cmd, *sw), (&debit, 0x9000), "{}: MAC1", city.dir);
        // TAC = MAC(TAC key, amount ‖ 05 ‖ terminal ‖ terminalSeq ‖ date ‖ time); MAC2 =
        // MAC(SESPK, amount).
        let mut t = m[..11].to_vec();
        t.extend_from_slice(&BUY_SEQ);
        t.extend_from_slice(&h(BUY_WHEN));
        let tk = ref_tac_key(city.alg, &h(DTK));
        assert_eq!(&resp[..4], &ref_mac(&tk, &t), "{}: TAC", city.dir);
        assert_eq!(
            &resp[4..],
            &ref_mac(&sespk, &BUY.to_be_bytes()),
            "{}: MAC2",
            city.dir
        );
        assert_eq!(int(&r, "tac_ok"), 1);
        assert_eq!((int(&r, "txn_type"), int(&r, "atc")), (5, 7));
        let p = c.purse();
        assert_eq!(
            (p.ed_balance, p.ed_online_atc, p.ed_offline_atc),
            (750, 3, 8)
        );
        assert_eq!((p.balance, p.online_atc, p.offline_atc), (500, 5, 9));
    });
}

/// A wrong PIN answers 63Cx (the script fails `pin_refused`, 0x0E, before INITIALIZE);
/// the third blocks the PIN (6983, `pin_blocked`, 0x0F), and then the right PIN is
/// refused too. Nothing moves.
#[test]
fn wrong_pin_counts_down_then_blocks() {
    for_both(|city| {
        let mut c = card(city);
        for (left, sw) in [(2u8, 0x63C2u16), (1, 0x63C1)] {
            let (r, log) = run(
                city,
                "ed_load",
                &with_pin(data(city, "ed_load"), &[0x99]),
                &mut c,
            );
            assert_eq!(failure(&r), 0x0E, "{}", city.dir);
            assert_eq!(log.last().unwrap().2, sw);
            assert_eq!(c.pin_tries_left(), left);
            assert!(!log.iter().any(|(cmd, _, _)| cmd.starts_with(&h("8050"))));
        }
        let (r, log) = run(
            city,
            "ed_purchase",
            &with_pin(data(city, "ed_purchase"), &[0x99]),
            &mut c,
        );
        assert_eq!((failure(&r), log.last().unwrap().2), (0x0F, 0x6983));
        let (r, _) = run(city, "ed_load", &data(city, "ed_load"), &mut c);
        assert_eq!(
            failure(&r),
            0x0F,
            "{}: blocked, even with the right PIN",
            city.dir
        );
        assert_eq!((c.ed_balance(), c.balance()), (1000, 500));
    });
}

/// Without VERIFY PIN in the current selection the ED refuses GET BALANCE and INITIALIZE
/// (6982); a verified PIN ends with the selection. The EP needs no PIN.
#[test]
fn ed_commands_without_the_pin_are_refused() {
    let mut c = card(&DES3);
    let ex = |c: &mut CpuCard, s: &str| exchange(c, &h(s)).unwrap();
    const SELECT: &str = "00A4040009A00000000386980701 00";
    const ED_LOAD: &str = "805000010B 01 00002710 000000000001 10";
    const ED_BUY: &str = "805001010B 01 000000FA 000000000001 0F";
    assert_eq!(ex(&mut c, SELECT).1, 0x9000);
    for cmd in ["805C000104", ED_LOAD, ED_BUY] {
        assert_eq!(ex(&mut c, cmd).1, 0x6982, "{cmd} without the PIN");
    }
    assert_eq!(
        ex(&mut c, "805C000204"),
        (h("000001F4"), 0x9000),
        "EP: no PIN"
    );
    assert_eq!(ex(&mut c, "0020000003 654321").1, 0x63C2);
    assert_eq!(ex(&mut c, "805C000104").1, 0x6982, "after a wrong PIN");
    assert_eq!(ex(&mut c, "0020000003 123456").1, 0x9000);
    assert_eq!(ex(&mut c, "805C000104"), (h("000003E8"), 0x9000));
    assert_eq!(ex(&mut c, ED_LOAD).1, 0x9000);
    // Selecting again ends the verified state.
    assert_eq!(ex(&mut c, SELECT).1, 0x9000);
    assert_eq!(
        ex(&mut c, ED_BUY).1,
        0x6982,
        "the PIN lasts for one selection"
    );
    // A composite purchase is EP only.
    assert_eq!(ex(&mut c, "0020000003 123456").1, 0x9000);
    assert_eq!(
        ex(&mut c, "805003010B 01 000000FA 000000000001 0F").1,
        0x6A86
    );
    // A script that skips VERIFY PIN (the EP flow with the ED's P2) is refused the same
    // way: the card, not the script, enforces the PIN.
    let mut c = card(&SM4);
    let (r, log) = run(&SM4, "ed_load", &data(&SM4, "ed_load"), &mut c);
    assert_eq!(r.outcome, Outcome::Committed);
    assert_eq!(
        log[2].0[..2],
        [0x00, 0x20],
        "VERIFY PIN comes before INITIALIZE"
    );
    let mut c = card(&SM4);
    c.faults_mut().push(Fault::ForceSw(3, 0x9000)); // VERIFY "succeeds" on the wire only
    let d = with_pin(data(&SM4, "ed_load"), &[0x00]);
    let (r, log) = run(&SM4, "ed_load", &d, &mut c);
    assert_eq!(failure(&r), 0x02, "INITIALIZE refused: {r:?}");
    assert_eq!(log[3].2, 0x6982);
    assert_eq!(c.ed_balance(), 1000);
}

/// A torn ED load is recovered with GET TRANSACTION PROVE of type 01 and the ED's ATC.
/// The ED's counter needs the PIN (INITIALIZE answers 6982), so the reader cannot rule
/// the load out: it reports "unknown" (2) with the card's proof where there is one, and
/// the card company decides on the proof's TAC (invariant 17).
#[test]
fn torn_ed_load_is_recovered() {
    for_both(|city| {
        for (fault, committed) in [(Fault::TearAfter(5), 1), (Fault::TearBefore(5), 0)] {
            let mut c = card(city);
            c.faults_mut().push(fault);
            let (r, _) = run(city, "ed_load", &data(city, "ed_load"), &mut c);
            assert!(matches!(r.outcome, Outcome::Unknown(_)), "{r:?}");
            assert_eq!(int(&r, "atc"), 3);
            c.power_on().unwrap();
            let mut d = data(city, "recover");
            for f in &mut d.fields {
                match f.name.as_str() {
                    "txn_type" => f.value = FieldValue::Int(1),
                    "atc" => f.value = FieldValue::Int(3),
                    _ => {}
                }
            }
            let (rec, log) = run(city, "recover", &d, &mut c);
            assert_eq!(rec.outcome, Outcome::Committed, "{rec:?}");
            assert_eq!(find(&log, "805A").0, h("805A0001020003 08"));
            assert_eq!(int(&rec, "committed"), 2, "{} {fault:?}", city.dir);
            assert_eq!(
                rec.output("tac").is_some(),
                committed == 1,
                "{} {fault:?}: the proof is there exactly when the card committed",
                city.dir
            );
            assert_eq!(c.ed_balance(), if committed == 1 { 11_000 } else { 1000 });
        }
    });
}
