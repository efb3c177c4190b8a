//! Property: random sequences of loads and purchases with random tearing keep
//! balance = initial + committed loads − committed purchases, the counters count the
//! committed transactions, and the transaction log lists exactly them (newest first).

mod sim_common;

use cardvm::sim::{Algorithm, CpuCard, Fault, RandomSource};
use cardvm::transport::{CardTransport, TransportError};
use proptest::prelude::*;
use sim_common::*;

#[derive(Debug, Clone)]
struct Op {
    load: bool,
    amount: u32,
    /// (APDU of the transaction 1 = INITIALIZE, 2 = completion; kind 0 before, 1 after, 2 mid-commit)
    tear: Option<(u32, u8)>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        any::<bool>(),
        0u32..3000,
        proptest::option::weighted(0.4, (1u32..=2, 0u8..3)),
    )
        .prop_map(|(load, amount, tear)| Op { load, amount, tear })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn committed_transactions_account_for_the_balance(
        sm4: bool,
        seed: u64,
        initial in 0u32..5000,
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let alg = if sm4 { Algorithm::Sm4 } else { Algorithm::Des3 };
        let mut c = CpuCard::builder()
            .algorithm(alg)
            .diversified_keys(&DLK, &DPK, &DTK)
            .balance(initial, 10_000_000)
            .random(RandomSource::Seeded { seed, counter: 0 })
            .build()
            .unwrap();
        let host = Host::new(alg, &DLK, &DPK, &DTK);
        let mut model_balance = initial as i64;
        let mut committed: Vec<(bool, u32, u16)> = Vec::new(); // (load, amount, atc), oldest first
        let (mut online, mut offline) = (0u16, 0u16);
        for (seq, op) in ops.iter().enumerate() {
            c.power_on().unwrap();
            prop_assert_eq!(ex(&mut c, &h(SELECT_PURSE)).unwrap().1, 0x9000);
            if let Some((at, kind)) = op.tear {
                let n = c.apdu_index() + at;
                c.faults_mut().push(match kind { 0 => Fault::TearBefore(n), 1 => Fault::TearAfter(n), _ => Fault::TearMidCommit(n) });
            }
            let result = (|| -> Result<Option<(u8, u16)>, TransportError> {
                if op.load {
                    let (r, sw) = ex(&mut c, &init_load_apdu(op.amount))?;
                    assert_eq!(sw, 0x9000);
                    let l = host_load(&host, op.amount, &r);
                    let (tac, sw) = ex(&mut c, &l.credit)?;
                    assert_eq!((tac, sw), (l.tac.to_vec(), 0x9000));
                    Ok(Some((0x02, l.atc)))
                } else {
                    let (r, sw) = ex(&mut c, &init_purchase_apdu(1, op.amount))?;
                    if (op.amount as i64) > model_balance {
                        assert_eq!(sw, 0x9401);
                        return Ok(None);
                    }
                    assert_eq!(sw, 0x9000);
                    let p = host_purchase(&host, 0x06, op.amount, seq as u32, &r);
                    let (resp, sw) = ex(&mut c, &p.debit)?;
                    assert_eq!((sw, &resp[..4]), (0x9000, &p.tac[..]));
                    Ok(Some((0x06, p.atc)))
                }
            })();
            let done = match result {
                Ok(Some((_, atc))) => Some(atc),
                Ok(None) => None,
                Err(e) => {
                    prop_assert_eq!(e, TransportError::CardRemoved);
                    // Recovery as a script does it: re-power, select, prove.
                    c.power_on().unwrap();
                    ex(&mut c, &h(SELECT_PURSE)).unwrap();
                    let (tt, atc) = if op.load { (0x02, online) } else { (0x06, offline) };
                    let (_, sw) = ex(&mut c, &prove_apdu(tt, atc)).unwrap();
                    let expect_committed = matches!(op.tear, Some((2, 1)));
                    prop_assert_eq!(sw == 0x9000, expect_committed, "{:?}", op);
                    expect_committed.then_some(atc)
                }
            };
            // A tear planned for an APDU that never came (9401) must not fire later.
            c.faults_mut().clear();
            if let Some(atc) = done {
                if op.load {
                    prop_assert_eq!(atc, online);
                    online += 1;
                    model_balance += op.amount as i64;
                } else {
                    prop_assert_eq!(atc, offline);
                    offline += 1;
                    model_balance -= op.amount as i64;
                }
                committed.push((op.load, op.amount, atc));
            }
            prop_assert_eq!(c.balance() as i64, model_balance);
        }
        prop_assert_eq!((c.purse().online_atc, c.purse().offline_atc), (online, offline));
        let log = c.log();
        let expected: Vec<_> = committed.iter().rev().take(10).collect();
        prop_assert_eq!(log.len(), expected.len());
        for (rec, (load, amount, atc)) in log.iter().zip(expected) {
            prop_assert_eq!((rec.ttype, rec.amount, rec.atc), (if *load { 0x02 } else { 0x06 }, *amount, *atc));
        }
        // The log read over the card interface agrees with the decoded one.
        c.power_on().unwrap();
        ex(&mut c, &h(SELECT_PURSE)).unwrap();
        for (i, rec) in log.iter().enumerate() {
            let (r, sw) = ex(&mut c, &[0x00, 0xB2, i as u8 + 1, 0xC4, 0x17]).unwrap();
            prop_assert_eq!(sw, 0x9000);
            prop_assert_eq!(&r[5..9], &rec.amount.to_be_bytes()[..]);
        }
    }
}
