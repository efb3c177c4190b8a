//! City variants of real cards (reference/epurse.md "City variants"): city 0731's
//! purchase and composite purchase on its variant card (authentication code in MAC1,
//! CAPP record 02); the old-style flow refused by that card; a card answering 6982 to a
//! bad MAC and 6A80 to an over-balance purchase; a card whose ATCs start at 1 (load,
//! purchase, recovery; the issuer's settlement is in tests/issuer.rs).

#[path = "support/recorded_run.rs"]
mod recorded_run;
use cardvm::asm::compile_data;
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::{CpuCard, Fault, SimCard, Variant};
use cardvm::transport::CardTransport;
use cardvm::vm::{Failure, Outcome, OutputValue, RunReport};
use recorded_run::*;

const C0731: &str = "scripts/city0731-des3";
const C0755: &str = "scripts/city0755-sm4";

fn h(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Runs `path` on `card`: the report and each exchange's command and status word.
fn run_path(path: &str, d: &DataScript, card: &mut CpuCard) -> (RunReport, Vec<(Vec<u8>, u16)>) {
    let (report, log) = run_recorded(path, d, card);
    (report, log.into_iter().map(|(c, _, sw)| (c, sw)).collect())
}

fn run(
    dir: &str,
    flow: &str,
    d: &DataScript,
    card: &mut CpuCard,
) -> (RunReport, Vec<(Vec<u8>, u16)>) {
    run_path(&format!("{dir}/{flow}.cvs"), d, card)
}

fn data(dir: &str, flow: &str) -> DataScript {
    compile_data(&std::fs::read_to_string(format!("{dir}/{flow}.toml")).unwrap()).unwrap()
}

/// The city's card as its card.toml describes it, with `edit` applied to the profile.
fn city_card(dir: &str, edit: impl FnOnce(&mut cardvm::sim::profile::CpuProfile)) -> CpuCard {
    let text = std::fs::read_to_string(format!("{dir}/card.toml")).unwrap();
    let cardvm::sim::CardProfile::Cpu(mut p) = cardvm::sim::CardProfile::from_toml(&text).unwrap()
    else {
        panic!("a CPU card")
    };
    edit(&mut p);
    p.build().unwrap()
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

fn commands(log: &[(Vec<u8>, u16)]) -> Vec<Vec<u8>> {
    log.iter().map(|(c, _)| c[..4].to_vec()).collect()
}

/// City 0731's card is the variant (card.toml `[variant]`): its purchase reads the
/// authentication code and puts it in MAC1; its composite purchase updates record 02
/// with `80 DC 02 B8 30`.
#[test]
fn city_0731_purchase_and_capp_on_the_variant_card() {
    let mut c = city_card(C0731, |_| {});
    assert_eq!(c.variant().auth_code.map(|a| a.len()), Some(8));
    assert_eq!(c.variant().capp_record, Some(2));
    let (r, log) = run(C0731, "purchase", &data(C0731, "purchase"), &mut c);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    assert_eq!(int(&r, "tac_ok"), 1);
    assert_eq!(
        commands(&log),
        [
            h("00A40400"),
            h("00B09500"),
            h("80CA0000"),
            h("80500102"),
            h("80540100")
        ]
    );
    assert_eq!(log[2].0, h("80CA000009"));
    assert_eq!(c.balance(), 250);
    let (r, log) = run(
        C0731,
        "capp_purchase",
        &data(C0731, "capp_purchase"),
        &mut c,
    );
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    let update = log
        .iter()
        .find(|(cmd, _)| cmd.starts_with(&[0x80, 0xDC]))
        .unwrap();
    assert_eq!(&update.0[..5], &h("80DC02B830")[..]);
    assert_eq!((c.balance(), int(&r, "txn_type")), (50, 9));
    assert_eq!(
        c.purse().capp[1][..2],
        [0x02, 0x2E],
        "record 02 updated, tag kept"
    );
    assert_eq!(c.purse().capp[0][0], 0x01, "record 01 untouched");
    assert_eq!(c.purse().capp[0][1..], [0u8; 47], "record 01 untouched");
    // The card finds the record by its tag: every later composite purchase finds it again.
    let mut c = city_card(C0731, |p| p.balance = 10_000);
    for n in 1..=3 {
        let (r, _) = run(
            C0731,
            "capp_purchase",
            &data(C0731, "capp_purchase"),
            &mut c,
        );
        assert_eq!(r.outcome, Outcome::Committed, "update {n}: {r:?}");
    }
}

/// A CAPP record whose tag is not the record the city's flow addresses: the shared
/// flow fails `capp_record_mismatch` (0x11) before UPDATE CAPP DATA CACHE, so a card that
/// finds records by tag never loses its record 02 (which then answers 6A83 to every
/// later update). The card's side of it: by tag, a record rewritten with another tag is
/// no longer found.
#[test]
fn capp_record_with_another_tag_is_refused_before_the_card_sees_it() {
    let mut c = city_card(C0731, |_| {});
    let mut d = data(C0731, "capp_purchase");
    for f in &mut d.fields {
        if let ("capp_record", FieldValue::Bytes(b)) = (f.name.as_str(), &mut f.value) {
            b[0] = 0x01;
        }
    }
    let (r, log) = run(C0731, "capp_purchase", &d, &mut c);
    assert_eq!(failure(&r), 0x11, "{r:?}");
    assert!(!log.iter().any(|(cmd, _)| cmd.starts_with(&h("80DC"))));
    assert_eq!(c.balance(), 500);
    assert_eq!(c.purse().capp[1][0], 0x02);

    // What the check prevents, on the card itself: inside one composite purchase,
    // record 02 rewritten with tag 01 is not found by tag 02 again.
    let mut c = city_card(C0731, |p| p.variant.capp_record = None);
    let mut send = |apdu: &str| {
        let mut buf = [0u8; 258];
        let n = c.transmit(&h(apdu), &mut buf).unwrap();
        u16::from_be_bytes([buf[n - 2], buf[n - 1]])
    };
    assert_eq!(send("00A4040009A0000000038698070100"), 0x9000);
    assert_eq!(send("805003020B0100000064000000000001"), 0x9000);
    let record = |tag: &str| format!("80DC02B830{tag}{}", "00".repeat(47));
    assert_eq!(send(&record("01")), 0x9000, "tag 02 found, rewritten as 01");
    assert_eq!(send(&record("01")), 0x6A83, "no record has tag 02 any more");
}

/// The old-style flow on the variant card: MAC1 without the authentication code is
/// refused (9302, `bad_card_mac`), and a composite purchase updating record 01 is
/// refused (6A83, `capp_refused`). Nothing is debited.
#[test]
fn old_style_flow_is_refused_by_the_variant_card() {
    // City 0731's scripts with CARD_AUTH [00] and CAPP_RECORD [01]: the flows before the
    // variant, in a copy of the scripts tree.
    let tmp = std::env::temp_dir().join(format!("cardvm-variant-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("common")).unwrap();
    std::fs::create_dir_all(tmp.join("city")).unwrap();
    for e in std::fs::read_dir("scripts/common").unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.join("common").join(p.file_name().unwrap())).unwrap();
    }
    for flow in ["purchase", "capp_purchase"] {
        let text = std::fs::read_to_string(format!("{C0731}/{flow}.cvs")).unwrap();
        let old = text
            .replace("const CARD_AUTH = [01]", "const CARD_AUTH = [00]")
            .replace("const CARD_AUTH   = [01]", "const CARD_AUTH   = [00]")
            .replace("const CAPP_RECORD = [02]", "const CAPP_RECORD = [01]");
        assert_ne!(old, text);
        std::fs::write(tmp.join(format!("city/{flow}.cvs")), old).unwrap();
    }
    let path = |f: &str| {
        tmp.join(format!("city/{f}.cvs"))
            .to_string_lossy()
            .into_owned()
    };
    let mut c = city_card(C0731, |_| {});
    let (r, log) = run_path(&path("purchase"), &data(C0731, "purchase"), &mut c);
    assert_eq!(failure(&r), 0x03, "MAC1 without the code: {r:?}");
    assert_eq!(
        log.last().unwrap(),
        &(log.last().unwrap().0.clone(), 0x9302)
    );
    assert!(!log.iter().any(|(cmd, _)| cmd.starts_with(&h("80CA"))));
    // (with a record tagged 01, as that flow would write it)
    let mut d = data(C0731, "capp_purchase");
    for f in &mut d.fields {
        if let ("capp_record", FieldValue::Bytes(b)) = (f.name.as_str(), &mut f.value) {
            b[0] = 0x01;
        }
    }
    let (r, log) = run_path(&path("capp_purchase"), &d, &mut c);
    assert_eq!(failure(&r), 0x0C, "record 01: {r:?}");
    assert_eq!(log.last().unwrap().1, 0x6A83);
    assert_eq!(c.balance(), 500);
    // And the variant flow on a card without an authentication code: GET DATA answers
    // 6A88 and the script stops before INITIALIZE (`auth_code_refused`).
    let mut plain = city_card(C0731, |p| p.variant = Default::default());
    let (r, log) = run(C0731, "purchase", &data(C0731, "purchase"), &mut plain);
    assert_eq!((failure(&r), log.last().unwrap().1), (0x10, 0x6A88));
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Cards that answer a bad MAC with 6982 (not 9302) and an over-balance purchase with
/// 6A80 (not 9401): the scripts report the same failures as for the reference words.
#[test]
fn field_status_word_deviations_mean_the_same_failures() {
    for dir in [C0731, C0755] {
        let deviant = |p: &mut cardvm::sim::profile::CpuProfile| {
            p.variant.mac_error_sw = Some("6982".into());
            p.variant.over_balance_sw = Some("6A80".into());
        };
        // A wrong purchase key: the card refuses MAC1 with 6982 → bad_card_mac (0x03).
        let mut d = data(dir, "purchase");
        for f in &mut d.fields {
            if f.name == "dpk" {
                let FieldValue::Key(k) = &f.value else {
                    unreachable!()
                };
                let wrong =
                    cardvm::crypto::SecretKey::new(k.alg(), k.usage(), &[0x55; 16]).unwrap();
                f.value = FieldValue::Key(wrong);
            }
        }
        let mut c = city_card(dir, deviant);
        let (r, log) = run(dir, "purchase", &d, &mut c);
        assert_eq!(log.last().unwrap().1, 0x6982, "{dir}");
        assert_eq!(failure(&r), 0x03, "{dir}: 6982 is a MAC refusal");
        assert_eq!(c.balance(), 500);
        // Over the balance: INITIALIZE answers 6A80 → insufficient (0x07).
        let mut c = city_card(dir, |p| {
            deviant(p);
            p.balance = 100;
        });
        let (r, log) = run(dir, "purchase", &data(dir, "purchase"), &mut c);
        assert_eq!(log.last().unwrap().1, 0x6A80, "{dir}");
        assert_eq!(failure(&r), 0x07, "{dir}");
    }
}

/// The load's MAC2 refused with 6982: the variant card answers so itself, and the
/// load script reports it as `bad_card_mac` (0x03), like 9302.
#[test]
fn load_mac2_refused_with_6982_is_a_mac_refusal() {
    let mut c = city_card(C0731, |p| p.variant.mac_error_sw = Some("6982".into()));
    let ex = |c: &mut CpuCard, s: &str| cardvm::sim::exchange(c, &h(s)).unwrap();
    assert_eq!(ex(&mut c, "00A4040009A00000000386980701 00").1, 0x9000);
    assert_eq!(
        ex(&mut c, "805000020B 01 00000064 000000000001 10").1,
        0x9000
    );
    let credit = ex(&mut c, "805200000B 20261123 120000 00000000 04");
    assert_eq!(credit.1, 0x6982, "a bad MAC2 on this card");
    for dir in [C0731, C0755] {
        let mut c = city_card(dir, |p| p.variant.mac_error_sw = Some("6982".into()));
        // APDU 4 is CREDIT FOR LOAD: the card answers 6982 without processing it.
        c.faults_mut().push(Fault::ForceSw(4, 0x6982));
        let (r, _) = run(dir, "load", &data(dir, "load"), &mut c);
        assert_eq!(failure(&r), 0x03, "{dir}: {r:?}");
        assert_eq!(c.balance(), 500);
    }
}

/// A card whose online and offline ATCs start at 1: load, purchase and recovery work
/// and report the card's own counters.
#[test]
fn atcs_starting_at_1_load_purchase_recover() {
    for dir in [C0731, C0755] {
        let mut c = city_card(dir, |p| {
            p.online_atc = 1;
            p.offline_atc = 1;
        });
        let (r, _) = run(dir, "load", &data(dir, "load"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{dir}: {r:?}");
        assert_eq!((int(&r, "atc"), int(&r, "tac_ok")), (1, 1));
        let (r, _) = run(dir, "purchase", &data(dir, "purchase"), &mut c);
        assert_eq!(r.outcome, Outcome::Committed, "{dir}: {r:?}");
        assert_eq!((int(&r, "atc"), int(&r, "tac_ok")), (1, 1));
        // A torn purchase (ATC 2), recovered with the ATC of its receipt.
        let before = c.balance();
        let n = if dir == C0731 { 5 } else { 4 };
        let at = c.apdu_index() + n;
        c.faults_mut().push(Fault::TearAfter(at));
        let (r, _) = run(dir, "purchase", &data(dir, "purchase"), &mut c);
        assert!(matches!(r.outcome, Outcome::Unknown(_)), "{dir}: {r:?}");
        let atc = int(&r, "atc");
        assert_eq!(atc, 2);
        c.power_on().unwrap();
        let mut d = data(dir, "recover");
        for f in &mut d.fields {
            match f.name.as_str() {
                "txn_type" => f.value = FieldValue::Int(6),
                "atc" => f.value = FieldValue::Int(atc),
                _ => {}
            }
        }
        let (rec, _) = run(dir, "recover", &d, &mut c);
        assert_eq!(rec.outcome, Outcome::Committed, "{rec:?}");
        assert_eq!(int(&rec, "committed"), 1);
        assert_eq!(u32::try_from(int(&rec, "balance")).unwrap(), before - 250);
    }
}

/// The variant options round-trip through CARD.toml, and bad values are errors.
#[test]
fn variant_profile_round_trips_and_checks_its_fields() {
    let SimCard::Cpu(c) = SimCard::load(format!("{C0731}/card.toml").as_ref()).unwrap() else {
        panic!("cpu")
    };
    let text = c.to_profile();
    let again = text.build().unwrap();
    assert_eq!(again.variant(), c.variant());
    assert_eq!(
        *c.variant(),
        Variant {
            auth_code: Some([0x3A, 0x5C, 0x7E, 0x91, 0x02, 0xB4, 0xD6, 0xF8]),
            capp_record: Some(2),
            capp_by_tag: true,
            ..Variant::default()
        }
    );
    for bad in [
        "[variant]\nauth_code = \"0102\"",
        "[variant]\ncapp_record = 9",
        "[variant]\nmac_error_sw = \"69\"",
        "[variant]\nwhat = 1",
    ] {
        let r = cardvm::sim::CardProfile::from_toml(&format!("kind = \"cpu\"\n{bad}"))
            .and_then(|p| p.build());
        assert!(r.is_err(), "{bad}");
    }
}
