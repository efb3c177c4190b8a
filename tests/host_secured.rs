//! Host-secured mode in-process: the reader's script holds no card key; the card company
//! (here [`HostSim`], the same logic `cardvm::issuer` runs) checks MAC1 and answers MAC2.
//! Each test is an attack from DESIGN §4 / issue "card keys never leave the card company"
//! that must keep failing.

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::crypto::SecretKey;
use cardvm::host::{HostSim, LoadFacts};
use cardvm::script::{DataScript, FieldValue};
use cardvm::sim::{CpuCard, SimCard};
use cardvm::transport::{ApduLayer, SamSlots};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Failure, NoTrace, Outcome, OutputValue, RunReport, Vm, VmErrorKind};

const CITIES: [&str; 2] = ["scripts/city0731-des3", "scripts/city0755-sm4"];

fn program(path: &str) -> VerifiedProgram {
    let script = assemble_file(path.as_ref(), &AsmOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .script;
    VerifiedProgram::from_script(script).unwrap()
}

fn data(path: &str) -> DataScript {
    compile_data(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn card(dir: &str) -> CpuCard {
    match SimCard::load(format!("{dir}/card.toml").as_ref()) {
        Ok(SimCard::Cpu(c)) => c,
        other => panic!("{other:?}"),
    }
}

/// The card's keys as the card company holds them (the key-bearing example data has the
/// same diversified keys as the city's simulated card).
fn key(dir: &str, name: &str) -> SecretKey {
    let d = data(&format!("{dir}/load.toml"));
    match d.fields.iter().find(|f| &*f.name == name).map(|f| &f.value) {
        Some(FieldValue::Key(k)) => k.clone(),
        other => panic!("{dir}/load.toml {name}: {other:?}"),
    }
}

fn facts(d: &DataScript) -> LoadFacts {
    let get = |n: &str| {
        d.fields
            .iter()
            .find(|f| &*f.name == n)
            .map(|f| f.value.clone())
    };
    let (
        Some(FieldValue::Int(amount)),
        Some(FieldValue::Bytes(t)),
        Some(FieldValue::BcdDateTime(now)),
    ) = (get("amount"), get("terminal"), get("now"))
    else {
        panic!("load_host.toml fields")
    };
    LoadFacts {
        amount: amount as u32,
        terminal: t.try_into().unwrap(),
        datetime: now,
    }
}

fn run(
    p: &VerifiedProgram,
    d: &DataScript,
    card: &mut CpuCard,
    host: Option<&mut HostSim>,
) -> RunReport {
    let binding = p.bind(d).unwrap();
    let mut layer = ApduLayer::new(card);
    let mut sams = match host {
        Some(h) => SamSlots::none().with_host(h),
        None => SamSlots::none(),
    };
    Vm::default().run_with_sams(
        p.with_data(d, &binding).unwrap(),
        &mut layer,
        &mut sams,
        &mut NoTrace,
    )
}

fn bytes(r: &RunReport, name: &str) -> Vec<u8> {
    match r.output(name).map(|o| o.to_value()) {
        Some(OutputValue::Bytes(b)) => b,
        other => panic!("{name}: {other:?}"),
    }
}

fn int(r: &RunReport, name: &str) -> u64 {
    match r.output(name).map(|o| o.to_value()) {
        Some(OutputValue::Int(v)) => v,
        other => panic!("{name}: {other:?}"),
    }
}

fn script_code(r: &RunReport) -> Option<u16> {
    match &r.outcome {
        Outcome::Failed(f) => Some(f.code()),
        _ => None,
    }
}

#[test]
fn a_host_secured_load_commits_and_its_tac_verifies_at_the_card_company() {
    for dir in CITIES {
        let p = program(&format!("{dir}/load_host.cvs"));
        assert_eq!(p.host_exchanges(), 1, "{dir}: one round trip");
        assert!(
            p.inputs().iter().all(|i| !i.ty.is_key()),
            "{dir}: a host-secured load declares no key input"
        );
        let d = data(&format!("{dir}/load_host.toml"));
        let mut c = card(dir);
        let before = c.balance();
        let mut host = HostSim::new(key(dir, "dlk"), facts(&d));
        let r = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(r.outcome, Outcome::Committed, "{dir}: {r:?}");
        assert_eq!(c.balance(), before + 10_000, "{dir}");
        assert_eq!(host.log.len(), 1, "{dir}: exactly one host exchange");
        // The card company checks the card's TAC with the TAC key the reader never saw:
        // TAC = MAC(DTK left ⊕ right, after ‖ ATC ‖ amount ‖ 02 ‖ terminal ‖ time).
        let tk = cardvm::crypto::tac_key(&key(dir, "dtk")).unwrap();
        let input = [
            &(int(&r, "balance_after") as u32).to_be_bytes()[..],
            &(int(&r, "atc") as u16).to_be_bytes(),
            &10_000u32.to_be_bytes(),
            &[0x02],
            &bytes(&r, "terminal_id"),
            &bytes(&r, "datetime"),
        ]
        .concat();
        assert_eq!(
            cardvm::crypto::pboc_mac(&tk, &input).unwrap().to_vec(),
            bytes(&r, "tac"),
            "{dir}: the card's TAC"
        );
    }
}

#[test]
fn the_same_bundle_run_twice_credits_once() {
    // The reader's owner runs one bundle again (fresh replay store, nothing deleted): the
    // card company answers MAC2 once per bundle, and the card's new counter and random
    // make the first MAC2 useless anyway.
    for dir in CITIES {
        let p = program(&format!("{dir}/load_host.cvs"));
        let d = data(&format!("{dir}/load_host.toml"));
        let mut c = card(dir);
        let before = c.balance();
        let mut host = HostSim::new(key(dir, "dlk"), facts(&d));
        assert_eq!(
            run(&p, &d, &mut c, Some(&mut host)).outcome,
            Outcome::Committed
        );
        let again = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(
            script_code(&again),
            Some(0x12),
            "{dir}: host_refused: {again:?}"
        );
        assert_eq!(c.balance(), before + 10_000, "{dir}: credited once");
        assert_eq!(host.log.last().unwrap().1, vec![0x69, 0x85], "{dir}");
    }
}

#[test]
fn a_mac2_replayed_to_the_card_is_refused_by_the_card() {
    // The reader keeps the MAC2 of a committed load and sends CREDIT FOR LOAD again after
    // a fresh INITIALIZE: the card's session key moved with its counter and random.
    for dir in CITIES {
        let p = program(&format!("{dir}/load_host.cvs"));
        let d = data(&format!("{dir}/load_host.toml"));
        let mut c = card(dir);
        let mut host = HostSim::new(key(dir, "dlk"), facts(&d));
        let r = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(r.outcome, Outcome::Committed);
        let before = c.balance();
        let mac2 = bytes(&r, "mac2");
        let now = bytes(&r, "datetime");
        let mut layer = ApduLayer::new(&mut c);
        let ok = |cmd: Vec<u8>, layer: &mut ApduLayer<&mut CpuCard>| {
            let mut buf = [0u8; 300];
            let n =
                cardvm::transport::CardTransport::transmit(layer.transport_mut(), &cmd, &mut buf)
                    .unwrap();
            buf[..n].to_vec()
        };
        let sel = ok(
            vec![
                0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0, 0, 0, 0x03, 0x86, 0x98, 0x07, 0x01, 0x00,
            ],
            &mut layer,
        );
        assert_eq!(&sel[sel.len() - 2..], [0x90, 0x00]);
        let mut init = vec![0x80, 0x50, 0x00, 0x02, 0x0B, 0x01];
        init.extend_from_slice(&10_000u32.to_be_bytes());
        init.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0x10]);
        let ans = ok(init, &mut layer);
        assert_eq!(&ans[ans.len() - 2..], [0x90, 0x00]);
        let mut credit = vec![0x80, 0x52, 0x00, 0x00, 0x0B];
        credit.extend_from_slice(&now);
        credit.extend_from_slice(&mac2);
        credit.push(0x04);
        let ans = ok(credit, &mut layer);
        assert_ne!(
            &ans[ans.len() - 2..],
            [0x90, 0x00],
            "{dir}: the card took an old MAC2"
        );
        drop(layer);
        assert_eq!(c.balance(), before, "{dir}");
    }
}

#[test]
fn a_card_the_bundle_was_not_issued_for_gets_no_mac2() {
    // The bundle was bought with a query for card A; the reader runs it on card B (or
    // invents the card's answer): B's MAC1 does not verify under A's key.
    for dir in CITIES {
        let p = program(&format!("{dir}/load_host.cvs"));
        let d = data(&format!("{dir}/load_host.toml"));
        let mut c = card(dir);
        let before = c.balance();
        // The card company holds another card's load key for this bundle.
        let other = {
            let k = key(dir, "dlk");
            SecretKey::new(k.alg(), k.usage(), &[0x5A; 16]).unwrap()
        };
        let mut host = HostSim::new(other, facts(&d));
        let r = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(
            script_code(&r),
            Some(0x13),
            "{dir}: host_mac1_refused: {r:?}"
        );
        assert_eq!(c.balance(), before);
        assert_eq!(host.log[0].1, vec![0x93, 0x02]);
    }
}

#[test]
fn an_amount_the_card_company_did_not_issue_gets_no_mac2() {
    // The reader's owner edits the amount (a development-mode data script of 9000.00):
    // the card's MAC1 covers the amount the card was asked for, the card company's MAC2
    // the amount it issued.
    for dir in CITIES {
        let p = program(&format!("{dir}/load_host.cvs"));
        let issued = data(&format!("{dir}/load_host.toml"));
        let mut d = issued.clone();
        for f in &mut d.fields {
            if &*f.name == "amount" {
                f.value = FieldValue::Int(900_000);
            }
        }
        let mut c = card(dir);
        let before = c.balance();
        let mut host = HostSim::new(key(dir, "dlk"), facts(&issued));
        let r = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(script_code(&r), Some(0x13), "{dir}: {r:?}");
        assert_eq!(c.balance(), before, "{dir}");
    }
}

#[test]
fn a_host_secured_script_without_the_card_company_sends_nothing() {
    let dir = CITIES[0];
    let p = program(&format!("{dir}/load_host.cvs"));
    let d = data(&format!("{dir}/load_host.toml"));
    let mut c = card(dir);
    let r = run(&p, &d, &mut c, None);
    assert_eq!(r.apdu_count, 0);
    assert!(
        matches!(&r.outcome, Outcome::Failed(Failure::Fault(e)) if e.kind == VmErrorKind::NoHost),
        "{r:?}"
    );
}

fn compile_err(src: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cardvm-host-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.cvs");
    std::fs::write(&f, src).unwrap();
    let script = match assemble_file(&f, &AsmOptions::default()) {
        Ok(o) => o.script,
        Err(e) => return e.to_string(),
    };
    match VerifiedProgram::from_script(script) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn key_material_never_goes_to_the_card_company() {
    let e = compile_err(
        "city 1\nscript 1\nversion 1\ninput k: key(des3, load)\n\
         sk = session_key(k, [01 02 03 04 05 06 07 08])\nm = mac(sk, [01])\n\
         host apdu 80 7A 00 02 [{m}]\ndone\n",
    );
    assert!(
        e.contains("host") && e.contains("derived from a key"),
        "{e}"
    );
}

#[test]
fn host_exchanges_are_bounded_by_the_code() {
    let looped = compile_err(
        "city 1\nscript 1\nversion 1\nrepeat 3 {\n    host apdu 80 7A 00 02 [01]\n}\ndone\n",
    );
    assert!(looped.contains("reached again from itself"), "{looped}");
    // The language inlines routines: one called twice is two exchanges, both counted.
    let dir = std::env::temp_dir().join(format!("cardvm-host-r-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("twice.cvs");
    std::fs::write(
        &f,
        "city 1\nscript 1\nversion 1\nroutine ask() {\n    host apdu 80 7A 00 02 [01]\n}\nask()\nask()\ndone\n",
    )
    .unwrap();
    let p = VerifiedProgram::from_script(assemble_file(&f, &AsmOptions::default()).unwrap().script)
        .unwrap();
    assert_eq!(p.host_exchanges(), 2);
    // In bytecode, a routine may be called from anywhere: a host exchange inside one is
    // refused.
    let f = dir.join("routine.casm");
    std::fs::write(
        &f,
        ".city 1\n.script 1\n.version 1\n.registers 1\n.key_slots 0\n.const c0 = [80 7A 00 02 01 01]\n    call ask\n    halt\nask:\n    ldc r0, c0\n    hostapdu r0, r0\n    ret\n",
    )
    .unwrap();
    let in_routine = match assemble_file(&f, &AsmOptions::default()) {
        Ok(o) => VerifiedProgram::from_script(o.script)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    assert!(in_routine.contains("inside a routine"), "{in_routine}");
}

#[test]
fn an_online_purchase_with_the_card_company_as_the_psam() {
    // 731's cards put the authentication code in MAC1; 755's do not.
    for dir in CITIES {
        let p = program(&format!("{dir}/purchase_host.cvs"));
        assert_eq!(p.host_exchanges(), 1, "{dir}: one round trip");
        assert!(
            p.inputs().iter().all(|i| !i.ty.is_key()),
            "{dir}: no key input"
        );
        let d = data(&format!("{dir}/purchase_host.toml"));
        let keys = data(&format!("{dir}/purchase.toml"));
        let key = |n: &str| match keys.fields.iter().find(|f| &*f.name == n).map(|f| &f.value) {
            Some(FieldValue::Key(k)) => k.clone(),
            other => panic!("{n}: {other:?}"),
        };
        let get = |n: &str| {
            d.fields
                .iter()
                .find(|f| &*f.name == n)
                .map(|f| f.value.clone())
        };
        let (Some(FieldValue::Int(amount)), Some(FieldValue::BcdDateTime(now))) =
            (get("amount"), get("now"))
        else {
            panic!("purchase_host.toml")
        };
        let facts = cardvm::host::PurchaseFacts {
            amount: amount as u32,
            txn_type: 0x06,
            terminal: [0, 0, 0, 0, 0, 1],
            datetime: now,
            serial: [0x41, 0, 0, 0, 0x89, 0x99, 0x99, 0x85],
            seq: 0x0000_0107,
        };
        let mut c = card(dir);
        let before = c.balance();
        let mut host = HostSim::purchase(key("dpk"), facts);
        let r = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(r.outcome, Outcome::Committed, "{dir}: {r:?}");
        assert_eq!(c.balance(), before - 250, "{dir}");
        assert_eq!(bytes(&r, "terminal_seq"), 0x107u32.to_be_bytes(), "{dir}");
        // TAC = MAC(DTK left ⊕ right, amount ‖ 06 ‖ terminal ‖ seq ‖ date ‖ time).
        let tk = cardvm::crypto::tac_key(&key("dtk")).unwrap();
        let input = [
            &250u32.to_be_bytes()[..],
            &[0x06],
            &[0, 0, 0, 0, 0, 1],
            &0x107u32.to_be_bytes(),
            &now,
        ]
        .concat();
        assert_eq!(
            cardvm::crypto::pboc_mac(&tk, &input).unwrap().to_vec(),
            bytes(&r, "tac"),
            "{dir}: the card's TAC"
        );
        // Run again: the card company issued this bundle's MAC1 once.
        let again = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(script_code(&again), Some(0x12), "{dir}: {again:?}");
        assert_eq!(c.balance(), before - 250, "{dir}: debited once");
        // Another amount than the bundle's: refused before the card is asked to debit.
        let mut more = d.clone();
        for f in &mut more.fields {
            if &*f.name == "amount" {
                f.value = FieldValue::Int(1);
            }
        }
        let mut other = HostSim::purchase(key("dpk"), facts);
        let r = run(&p, &more, &mut c, Some(&mut other));
        assert_eq!(script_code(&r), Some(0x12), "{dir}: {r:?}");
        assert_eq!(c.balance(), before - 250, "{dir}");
    }
}

#[test]
fn a_host_secured_ed_load_verifies_the_pin_and_the_ed_tac() {
    for dir in CITIES {
        let p = program(&format!("{dir}/ed_load_host.cvs"));
        assert_eq!(p.host_exchanges(), 1, "{dir}");
        assert!(
            p.inputs().iter().all(|i| !i.ty.is_key()),
            "{dir}: no key input"
        );
        let d = data(&format!("{dir}/ed_load_host.toml"));
        let mut c = card(dir);
        let (ep, ed) = (c.balance(), c.ed_balance());
        let mut host = HostSim::new(key(dir, "dlk"), facts(&d));
        let r = run(&p, &d, &mut c, Some(&mut host));
        assert_eq!(r.outcome, Outcome::Committed, "{dir}: {r:?}");
        assert_eq!(
            (c.balance(), c.ed_balance()),
            (ep, ed + 10_000),
            "{dir}: the ED, not the EP"
        );
        assert_eq!(host.log[0].0[3], 0x01, "{dir}: LOAD MAC2 names the ED");
        // The ED's TAC: transaction type 01.
        let tk = cardvm::crypto::tac_key(&key(dir, "dtk")).unwrap();
        let input = [
            &(int(&r, "balance_after") as u32).to_be_bytes()[..],
            &(int(&r, "atc") as u16).to_be_bytes(),
            &10_000u32.to_be_bytes(),
            &[0x01],
            &bytes(&r, "terminal_id"),
            &bytes(&r, "datetime"),
        ]
        .concat();
        assert_eq!(
            cardvm::crypto::pboc_mac(&tk, &input).unwrap().to_vec(),
            bytes(&r, "tac"),
            "{dir}: the ED's TAC"
        );
    }
}
