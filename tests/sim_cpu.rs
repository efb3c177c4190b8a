//! Simulated CPU card: published vector, file system, every purse status-word path,
//! tearing at every APDU of a load and a purchase, other faults, air time, save/load.

mod sim_common;

use cardvm::sim::{Algorithm, BitRate, CpuCard, Fault, RandomSource, SimCard};
use cardvm::transport::{CardTransport, TransportError};
use sim_common::*;

fn card(alg: Algorithm, balance: u32) -> (CpuCard, Host) {
    let c = CpuCard::builder()
        .algorithm(alg)
        .diversified_keys(&DLK, &DPK, &DTK)
        .balance(balance, 1_000_000)
        .random(RandomSource::Fixed([0xF9, 0xCA, 0xBA, 0x91]))
        .build()
        .unwrap();
    (c, Host::new(alg, &DLK, &DPK, &DTK))
}

fn selected(alg: Algorithm, balance: u32) -> (CpuCard, Host) {
    let (mut c, host) = card(alg, balance);
    assert_eq!(exs(&mut c, SELECT_PURSE).1, 0x9000);
    (c, host)
}

/// The published load vector (epurse.md "Published worked example"): MAC1 6C394D64.
#[test]
fn published_load_vector_reproduces() {
    let (mut c, host) = selected(Algorithm::Des3, 0);
    let (r, sw) = ex(&mut c, &init_load_apdu(0x1234)).unwrap();
    assert_eq!(sw, 0x9000);
    assert_eq!(r, h("00000000 0000 00 00 F9CABA91 6C394D64"));
    // And the rest of the load completes with the host's MAC2 and the expected TAC.
    let l = host_load(&host, 0x1234, &r);
    let (tac, sw) = ex(&mut c, &l.credit).unwrap();
    assert_eq!(sw, 0x9000);
    assert_eq!(tac, l.tac);
    assert_eq!(c.balance(), 0x1234);
}

fn full_load(c: &mut CpuCard, host: &Host, amount: u32) -> LoadInit {
    let (r, sw) = ex(c, &init_load_apdu(amount)).unwrap();
    assert_eq!(sw, 0x9000);
    let l = host_load(host, amount, &r);
    let (tac, sw) = ex(c, &l.credit).unwrap();
    assert_eq!((tac.as_slice(), sw), (&l.tac[..], 0x9000));
    l
}

fn full_purchase(c: &mut CpuCard, host: &Host, amount: u32, seq: u32) -> PurchaseInit {
    let (r, sw) = ex(c, &init_purchase_apdu(0x01, amount)).unwrap();
    assert_eq!(sw, 0x9000);
    let p = host_purchase(host, 0x06, amount, seq, &r);
    let (resp, sw) = ex(c, &p.debit).unwrap();
    assert_eq!(sw, 0x9000);
    assert_eq!(&resp[..4], &p.tac, "TAC");
    assert_eq!(&resp[4..], &p.mac2, "MAC2");
    p
}

#[test]
fn load_and_purchase_both_profiles_with_log_and_prove() {
    for alg in [Algorithm::Des3, Algorithm::Sm4] {
        let (mut c, host) = selected(alg, 0);
        let (r, _) = ex(&mut c, &init_load_apdu(500)).unwrap();
        assert_eq!(
            r[7],
            if alg == Algorithm::Des3 { 0x00 } else { 0x04 },
            "algId"
        );
        let _ = exs(&mut c, SELECT_PURSE); // cancels that INITIALIZE
        let l = full_load(&mut c, &host, 500);
        assert_eq!(l.atc, 0);
        let p = full_purchase(&mut c, &host, 120, 0x0000_0007);
        assert_eq!(c.balance(), 380);
        assert_eq!(exs(&mut c, "805C000204"), (h("0000017C"), 0x9000));
        // GET TRANSACTION PROVE for the last transaction (purchase, offline ATC 0).
        let (r, sw) = ex(&mut c, &prove_apdu(0x06, p.atc)).unwrap();
        assert_eq!(sw, 0x9000);
        assert_eq!(r, [p.mac2, p.tac].concat());
        assert_eq!(
            ex(&mut c, &prove_apdu(0x02, 0)).unwrap().1,
            0x9406,
            "only the last"
        );
        // Log: newest first, 23-byte records.
        let (rec1, sw) = exs(&mut c, "00B201C417");
        assert_eq!(sw, 0x9000);
        assert_eq!(rec1.len(), 23);
        assert_eq!(&rec1[5..10], &h("00000078 06")[..]);
        let (rec2, _) = exs(&mut c, "00B202C400");
        assert_eq!(&rec2[0..2], &[0, 0]);
        assert_eq!(&rec2[5..10], &h("000001F4 02")[..]);
        assert_eq!(&rec2[10..23], &[&TERMINAL[..], &DATE, &TIME].concat()[..]);
        assert_eq!(exs(&mut c, "00B203C417").1, 0x6A83);
        let log = c.log();
        assert_eq!((log[0].amount, log[1].amount, log.len()), (120, 500, 2));
        assert_eq!(c.purse().online_atc, 1);
        assert_eq!(c.purse().offline_atc, 1);
    }
}

#[test]
fn master_keys_are_diversified_per_reference_vectors() {
    // epurse.md: MK 1122..2211, F 4100000089999985 → 3DES DK A0068F36…, SM4 DK 18DC6B93….
    let mk = h("11223344556677888877665544332211");
    for (alg, dk) in [
        (Algorithm::Des3, "A0068F366D0535ADF42057760F84B2F5"),
        (Algorithm::Sm4, "18DC6B934AF686E3CA806AC3D4095DB7"),
    ] {
        let mut c = CpuCard::builder()
            .algorithm(alg)
            .card_number(&h("0000 4100000089999985"))
            .master_keys(&mk, &mk, &mk)
            .build()
            .unwrap();
        let dk = h(dk);
        let host = Host::new(alg, &dk, &dk, &dk);
        exs(&mut c, SELECT_PURSE);
        full_load(&mut c, &host, 1000);
        full_purchase(&mut c, &host, 1, 1);
        assert_eq!(c.balance(), 999);
    }
}

#[test]
fn file_system() {
    let (mut c, _) = card(Algorithm::Des3, 0);
    let (fci, sw) = exs(&mut c, "00A40000023F00");
    assert_eq!(sw, 0x9000);
    assert_eq!(&fci[..4], &[0x6F, 0x15, 0x84, 0x0E]);
    assert_eq!(&fci[4..18], b"1PAY.SYS.DDF01");
    // In the MF the purse EFs are not reachable.
    assert_eq!(exs(&mut c, "00B0950000").1, 0x6A82);
    assert_eq!(exs(&mut c, "00A40000020015").1, 0x6A82);
    let (fci, sw) = exs(&mut c, "00A40000021001");
    assert_eq!(sw, 0x9000);
    assert_eq!(&fci[2..13], &h("8409A00000000386980701")[..]);
    let (fci2, _) = exs(&mut c, SELECT_PURSE);
    assert_eq!(fci, fci2);
    assert_eq!(exs(&mut c, "00A4040009A00000000386980799 00").1, 0x6A82);
    assert_eq!(exs(&mut c, "00A40000021234").1, 0x6A82);
    assert_eq!(exs(&mut c, "00A4080002 1001").1, 0x6A86);
    assert_eq!(exs(&mut c, "00A40000033F0000").1, 0x6700);
    // EF 0015: 30 bytes, card number at 12..20.
    let (pi, sw) = exs(&mut c, "00B0950000");
    assert_eq!(sw, 0x9000);
    assert_eq!(pi.len(), 30);
    assert_eq!(&pi[12..20], &h("4100000089999985")[..]);
    assert_eq!(exs(&mut c, "00B0950C08"), (h("4100000089999985"), 0x9000));
    assert_eq!(exs(&mut c, "00B0951420").1, 0x6C0A);
    assert_eq!(exs(&mut c, "00B0951E01").1, 0x6B00);
    // Select EF by FID, then READ BINARY on the current EF.
    assert_eq!(exs(&mut c, "00A40000020015"), (vec![], 0x9000));
    assert_eq!(exs(&mut c, "00B0000C08"), (h("4100000089999985"), 0x9000));
    // READ RECORD on an empty log; on a binary file.
    assert_eq!(exs(&mut c, "00B201C417").1, 0x6A83);
    assert_eq!(exs(&mut c, "00B201AC00").1, 0x6981);
    assert_eq!(exs(&mut c, "00B201C500").1, 0x6A86);
    assert_eq!(exs(&mut c, "00B201BC30").0.len(), 48); // CAPP record 1
    // GET CHALLENGE.
    assert_eq!(exs(&mut c, "0084000004"), (h("F9CABA91"), 0x9000));
    assert_eq!(exs(&mut c, "0084000008").0.len(), 8);
    assert_eq!(exs(&mut c, "0084000005").1, 0x6700);
}

#[test]
fn seeded_random_is_deterministic_and_varies() {
    let mk = || {
        CpuCard::builder()
            .random(RandomSource::Seeded {
                seed: 7,
                counter: 0,
            })
            .build()
            .unwrap()
    };
    let (mut a, mut b) = (mk(), mk());
    let a1 = exs(&mut a, "0084000004").0;
    let a2 = exs(&mut a, "0084000004").0;
    assert_eq!(a1, exs(&mut b, "0084000004").0);
    assert_ne!(a1, a2);
}

#[test]
fn pin_tries_counter() {
    let (mut c, _) = card(Algorithm::Des3, 0);
    assert_eq!(exs(&mut c, "0020000003123456").1, 0x9000);
    assert_eq!(exs(&mut c, "0020000003123457").1, 0x63C2);
    assert_eq!(exs(&mut c, "00200000").1, 0x63C2);
    assert_eq!(
        exs(&mut c, "0020000003123456").1,
        0x9000,
        "a right PIN resets the counter"
    );
    assert_eq!(c.pin_tries_left(), 3);
    assert_eq!(exs(&mut c, "0020000002 1234").1, 0x63C2);
    assert_eq!(exs(&mut c, "0020000003000000").1, 0x63C1);
    assert_eq!(exs(&mut c, "0020000003000000").1, 0x6983);
    assert_eq!(exs(&mut c, "0020000003123456").1, 0x6983, "blocked");
    assert_eq!(exs(&mut c, "0020000103123456").1, 0x6A86);
}

#[test]
fn purse_status_words() {
    let alg = Algorithm::Des3;
    // Purse commands outside the purse DF, and CLA / INS errors.
    let (mut c, host) = card(alg, 100);
    assert_eq!(exs(&mut c, "805C000204").1, 0x6985);
    assert_eq!(exs(&mut c, "005C000204").1, 0x6E00);
    assert_eq!(exs(&mut c, "84A40000023F00").1, 0x6E00);
    assert_eq!(exs(&mut c, "80EE000000").1, 0x6D00);
    exs(&mut c, SELECT_PURSE);
    // The ED (P2 01) without a verified PIN: 6982; an unknown purse: 6A86.
    assert_eq!(exs(&mut c, "805C000104").1, 0x6982);
    assert_eq!(exs(&mut c, "805C000304").1, 0x6A86);
    assert_eq!(exs(&mut c, "805C000204"), (h("00000064"), 0x9000));
    // INITIALIZE: wrong Lc, wrong P1/P2, unknown key index.
    assert_eq!(exs(&mut c, "805000020A01000000010000000000 10").1, 0x6700);
    assert_eq!(exs(&mut c, "805000010B01000000010000000000 0110").1, 0x6982);
    assert_eq!(exs(&mut c, "805000030B01000000010000000000 0110").1, 0x6A86);
    assert_eq!(exs(&mut c, "805002020B01000000010000000000 0110").1, 0x6A86);
    assert_eq!(exs(&mut c, "805000020B02000000010000000000 0110").1, 0x9403);
    assert_eq!(exs(&mut c, "805001020B09000000010000000000 010F").1, 0x9403);
    // 9401: purchase above the balance.
    assert_eq!(ex(&mut c, &init_purchase_apdu(1, 101)).unwrap().1, 0x9401);
    // Balance limit on load (reference silent: 6985).
    assert_eq!(
        ex(&mut c, &init_load_apdu(1_000_000 - 99)).unwrap().1,
        0x6985
    );
    assert_eq!(ex(&mut c, &init_load_apdu(u32::MAX)).unwrap().1, 0x6985);
    // Completions without INITIALIZE: 6985.
    let (r, _) = ex(&mut c, &init_load_apdu(10)).unwrap();
    let l = host_load(&host, 10, &r);
    assert_eq!(exs(&mut c, "805C000204").1, 0x9000); // any other command cancels
    assert_eq!(ex(&mut c, &l.credit).unwrap().1, 0x6985);
    assert_eq!(
        exs(&mut c, "805401000F000000012025060112345600000000 08").1,
        0x6985
    );
    // 9302: wrong MAC2; the pending load is then cancelled.
    let (r, _) = ex(&mut c, &init_load_apdu(10)).unwrap();
    let l = host_load(&host, 10, &r);
    let mut bad = l.credit.clone();
    bad[12] ^= 1;
    assert_eq!(ex(&mut c, &bad).unwrap().1, 0x9302);
    assert_eq!(ex(&mut c, &l.credit).unwrap().1, 0x6985);
    // CREDIT: wrong Lc, wrong P1/P2 (each cancels).
    let (r, _) = ex(&mut c, &init_load_apdu(10)).unwrap();
    let l = host_load(&host, 10, &r);
    let mut short = l.credit[..l.credit.len() - 2].to_vec();
    short[4] = 0x0A;
    assert_eq!(ex(&mut c, &short).unwrap().1, 0x6700);
    let (r, _) = ex(&mut c, &init_load_apdu(10)).unwrap();
    let l = host_load(&host, 10, &r);
    let mut p = l.credit.clone();
    p[3] = 1;
    assert_eq!(ex(&mut c, &p).unwrap().1, 0x6A86);
    // Debit: 9302 on a wrong MAC1, 6700 on a wrong Lc, 6A86 on wrong P1.
    for (idx, val, sw) in [(18usize, 1u8, 0x9302u16), (3, 1, 0x6A86)] {
        let (r, _) = ex(&mut c, &init_purchase_apdu(1, 5)).unwrap();
        let p = host_purchase(&host, 0x06, 5, 1, &r);
        let mut d = p.debit.clone();
        d[idx] ^= val;
        assert_eq!(ex(&mut c, &d).unwrap().1, sw);
        assert_eq!(ex(&mut c, &p.debit).unwrap().1, 0x6985, "cancelled");
    }
    let (r, _) = ex(&mut c, &init_purchase_apdu(1, 5)).unwrap();
    let p = host_purchase(&host, 0x06, 5, 1, &r);
    let mut d = p.debit[..p.debit.len() - 2].to_vec();
    d[4] = 0x0E;
    assert_eq!(ex(&mut c, &d).unwrap().1, 0x6700);
    assert_eq!(c.balance(), 100, "nothing committed");
    // GET TRANSACTION PROVE: nothing yet 9406, wrong Lc 6700, P1 6A86.
    assert_eq!(ex(&mut c, &prove_apdu(0x02, 0)).unwrap().1, 0x9406);
    assert_eq!(exs(&mut c, "805A000203000000 08").1, 0x6700);
    assert_eq!(exs(&mut c, "805A0102020000 08").1, 0x6A86);
    // UPDATE CAPP DATA CACHE outside a CAPP purchase.
    let rec = format!("80DC01B830{}", "AB".repeat(48));
    assert_eq!(exs(&mut c, &rec).1, 0x6985);
    let (_, sw) = ex(&mut c, &init_purchase_apdu(1, 5)).unwrap();
    assert_eq!(sw, 0x9000);
    assert_eq!(
        exs(&mut c, &rec).1,
        0x6985,
        "an ordinary purchase has no CAPP cache"
    );
    // A garbled APDU.
    assert_eq!(ex(&mut c, &h("805C00")).unwrap().1, 0x6700);
}

#[test]
fn counters_at_maximum_and_locked_application() {
    let mut c = CpuCard::builder()
        .counters(u16::MAX, u16::MAX)
        .balance(10, 100)
        .build()
        .unwrap();
    exs(&mut c, SELECT_PURSE);
    assert_eq!(ex(&mut c, &init_load_apdu(1)).unwrap().1, 0x9402);
    assert_eq!(ex(&mut c, &init_purchase_apdu(1, 1)).unwrap().1, 0x9402);
    let mut c = CpuCard::builder().locked(true).build().unwrap();
    exs(&mut c, SELECT_PURSE);
    assert_eq!(exs(&mut c, "805C000204").1, 0x9303);
    assert_eq!(ex(&mut c, &init_load_apdu(1)).unwrap().1, 0x9303);
}

#[test]
fn capp_purchase_updates_the_record_on_commit_only() {
    let (mut c, host) = selected(Algorithm::Sm4, 1000);
    let rec = format!("80DC02B830{}", "AB".repeat(48));
    for torn in [true, false] {
        if torn {
            // The DEBIT below is the 8th APDU from here.
            let n = c.apdu_index() + 8;
            c.faults_mut().push(Fault::TearMidCommit(n));
        }
        let (r, sw) = ex(&mut c, &init_purchase_apdu(0x03, 50)).unwrap();
        assert_eq!(sw, 0x9000);
        assert_eq!(exs(&mut c, &rec).1, 0x9000);
        assert_eq!(
            exs(&mut c, &format!("80DC05B830{}", "AB".repeat(48))).1,
            0x6A83
        );
        // (that error cancelled the purchase; start again)
        let (r2, _) = ex(&mut c, &init_purchase_apdu(0x03, 50)).unwrap();
        assert_eq!(r[..6], r2[..6]);
        assert_eq!(
            exs(&mut c, &format!("80DC02B82F{}", "AB".repeat(47))).1,
            0x6700
        );
        let (r2, _) = ex(&mut c, &init_purchase_apdu(0x03, 50)).unwrap();
        assert_eq!(exs(&mut c, &rec).1, 0x9000);
        let p = host_purchase(&host, 0x09, 50, 9, &r2);
        let res = ex(&mut c, &p.debit);
        let (rec2, _) = if torn {
            assert_eq!(res, Err(TransportError::CardRemoved));
            c.power_on().unwrap();
            exs(&mut c, SELECT_PURSE);
            assert_eq!(c.balance(), 1000);
            exs(&mut c, "00B202BC30")
        } else {
            let (resp, sw) = res.unwrap();
            assert_eq!((sw, &resp[..4]), (0x9000, &p.tac[..]));
            assert_eq!(c.log()[0].ttype, 0x09);
            assert_eq!(
                ex(&mut c, &prove_apdu(0x09, p.atc)).unwrap().0,
                [p.mac2, p.tac].concat()
            );
            exs(&mut c, "00B202BC30")
        };
        assert_eq!(rec2 == vec![0xAB; 48], !torn);
    }
    assert_eq!(c.balance(), 950);
}

/// Tearing at every APDU of a load (select, init, credit) and of a purchase, with each
/// kind of tear: the card comes back before or after, never between, and after a
/// committed one GET TRANSACTION PROVE answers.
#[test]
fn tearing_at_every_point_of_a_load_and_a_purchase() {
    for alg in [Algorithm::Des3, Algorithm::Sm4] {
        for purchase in [false, true] {
            for n in 1..=3u32 {
                for kind in 0..3 {
                    let (mut c, host) = card(alg, 300);
                    let fault = match kind {
                        0 => Fault::TearBefore(n),
                        1 => Fault::TearAfter(n),
                        _ => Fault::TearMidCommit(n),
                    };
                    c.faults_mut().push(fault);
                    let amount = 200;
                    let mut expect: Option<(u8, u16, [u8; 4], [u8; 4])> = None;
                    let run = (|| -> Result<(), TransportError> {
                        assert_eq!(ex(&mut c, &h(SELECT_PURSE))?.1, 0x9000);
                        if purchase {
                            let (r, _) = ex(&mut c, &init_purchase_apdu(1, amount))?;
                            let p = host_purchase(&host, 0x06, amount, 3, &r);
                            expect = Some((0x06, p.atc, p.mac2, p.tac));
                            ex(&mut c, &p.debit)?;
                        } else {
                            let (r, _) = ex(&mut c, &init_load_apdu(amount))?;
                            let l = host_load(&host, amount, &r);
                            expect = Some((0x02, l.atc, l.mac2, l.tac));
                            ex(&mut c, &l.credit)?;
                        }
                        Ok(())
                    })();
                    assert_eq!(run, Err(TransportError::CardRemoved), "{fault:?}");
                    assert!(!c.is_powered());
                    assert_eq!(ex(&mut c, &h(SELECT_PURSE)), Err(TransportError::NoCard));
                    c.power_on().unwrap();
                    let committed = n == 3 && kind == 1;
                    let after = if purchase { 100 } else { 500 };
                    assert_eq!(
                        c.balance(),
                        if committed { after } else { 300 },
                        "{fault:?}"
                    );
                    assert_eq!(c.log().len(), usize::from(committed));
                    // Recovery, as a script does it: select, prove.
                    assert_eq!(exs(&mut c, SELECT_PURSE).1, 0x9000);
                    let bal = exs(&mut c, "805C000204").0;
                    assert_eq!(u32::from_be_bytes(bal.try_into().unwrap()), c.balance());
                    if let Some((tt, atc, mac, tac)) = expect {
                        let (r, sw) = ex(&mut c, &prove_apdu(tt, atc)).unwrap();
                        if committed {
                            assert_eq!((r, sw), ([mac, tac].concat(), 0x9000));
                        } else {
                            assert_eq!(sw, 0x9406, "{fault:?}");
                        }
                    }
                    // The fault fired once: the transaction now goes through.
                    if purchase {
                        full_purchase(&mut c, &host, 10, 4);
                    } else {
                        full_load(&mut c, &host, 10);
                    }
                }
            }
        }
    }
}

#[test]
fn forced_sw_corruption_latency_and_air_time() {
    let (mut c, host) = card(Algorithm::Des3, 0);
    c.faults_mut().push(Fault::ForceSw(1, 0x6A82));
    c.faults_mut().push(Fault::Corrupt(2, 0, 0xFF));
    c.faults_mut().push(Fault::Latency(3, 7_000));
    assert_eq!(exs(&mut c, SELECT_PURSE), (vec![], 0x6A82));
    let (fci, sw) = exs(&mut c, SELECT_PURSE);
    assert_eq!((fci[0], sw), (0x6F ^ 0xFF, 0x9000));
    let before = c.air_time().total_ns;
    full_load(&mut c, &host, 1);
    let air = c.air_time().clone();
    assert_eq!(air.latency_ns, 7_000_000);
    assert_eq!(air.apdus, 4);
    assert!(
        air.total_ns > before + 25_000_000,
        "INIT 5 ms + CREDIT 20 ms processing + latency"
    );
    assert_eq!(air.bit_rate_kbps, 106);
    // At 848 kbit/s the frames are shorter; processing is the same.
    let (mut fast, host) = card(Algorithm::Des3, 0);
    *fast.air_time_model_mut() = cardvm::sim::AirTimeModel::new(BitRate::K848);
    fast.reset_air_time();
    let (mut slow, _) = card(Algorithm::Des3, 0);
    slow.reset_air_time();
    for c in [&mut fast, &mut slow] {
        exs(c, SELECT_PURSE);
        full_load(c, &host, 1);
    }
    assert!(fast.air_time().total_ns < slow.air_time().total_ns);
    assert!(slow.air_time().total_ns - fast.air_time().total_ns > 2_000_000);
    // Response buffer too small: an error, not a truncation.
    let mut small = [0u8; 4];
    assert!(matches!(
        slow.transmit(&h("805C000204"), &mut small),
        Err(TransportError::ResponseTooLong {
            needed: 6,
            capacity: 4
        })
    ));
}

#[test]
fn power_on_clears_volatile_state() {
    let (mut c, host) = selected(Algorithm::Des3, 0);
    let (r, _) = ex(&mut c, &init_load_apdu(5)).unwrap();
    let l = host_load(&host, 5, &r);
    c.power_off().unwrap();
    c.power_on().unwrap();
    assert_eq!(c.apdu_index(), 0);
    assert_eq!(
        ex(&mut c, &l.credit).unwrap().1,
        0x6985,
        "DF selection lost"
    );
    exs(&mut c, SELECT_PURSE);
    assert_eq!(
        ex(&mut c, &l.credit).unwrap().1,
        0x6985,
        "pending INITIALIZE lost"
    );
}

#[test]
fn state_saves_and_loads() {
    let dir = std::env::temp_dir().join(format!("cardvm_sim_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("card.toml");
    let (mut c, host) = selected(Algorithm::Sm4, 0);
    full_load(&mut c, &host, 700);
    full_purchase(&mut c, &host, 200, 1);
    let _ = exs(&mut c, "0020000003000000");
    let sim = SimCard::Cpu(c);
    sim.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("profile = \"sm4\""));
    let SimCard::Cpu(mut c2) = SimCard::load(&path).unwrap() else {
        panic!("kind")
    };
    assert_eq!(c2.balance(), 500);
    assert_eq!(c2.log().len(), 2);
    assert_eq!(c2.pin_tries_left(), 2);
    assert_eq!((c2.purse().online_atc, c2.purse().offline_atc), (1, 1));
    exs(&mut c2, SELECT_PURSE);
    full_load(&mut c2, &host, 1);
    assert!(!format!("{c2:?}").contains("5A5A5A"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_card_files_load() {
    let root = env!("CARGO_MANIFEST_DIR");
    let load = |f: &str| {
        SimCard::load(
            std::path::Path::new(root)
                .join("scripts/cards")
                .join(f)
                .as_path(),
        )
        .unwrap()
    };
    let SimCard::Cpu(mut c) = load("cpu_des3.toml") else {
        panic!("kind")
    };
    exs(&mut c, SELECT_PURSE);
    let (r, _) = ex(&mut c, &init_load_apdu(0x1234)).unwrap();
    assert_eq!(
        &r[12..16],
        &h("6C394D64")[..],
        "the reference vector's card"
    );
    let SimCard::Cpu(mut c) = load("cpu_sm4.toml") else {
        panic!("kind")
    };
    assert_eq!(c.algorithm(), Algorithm::Sm4);
    let dk = h("18DC6B934AF686E3CA806AC3D4095DB7");
    exs(&mut c, SELECT_PURSE);
    full_load(&mut c, &Host::new(Algorithm::Sm4, &dk, &dk, &dk), 10);
    let SimCard::M1(mut m) = load("m1.toml") else {
        panic!("kind")
    };
    let x = |m: &mut cardvm::sim::M1Card, a: &str| cardvm::sim::exchange(m, &h(a)).unwrap();
    x(&mut m, "FF82000006A0A1A2A3A4A5");
    assert_eq!(x(&mut m, "FF860000050100046000").1, 0x9000);
    assert_eq!(x(&mut m, "FFB1000404"), (h("000003E8"), 0x9000));
}
