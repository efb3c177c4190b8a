//! Orders and clearing decided by the database, on SQLite and PostgreSQL: many purchases
//! racing for one order bind exactly one; a paid order cannot be paid, cancelled or
//! refunded twice; a day of mixed traffic clears to totals that equal the cards' balance
//! changes and the merchants' credits; clearing again (and racing) returns the stored
//! result; a receipt that arrives after its day was cleared is an explicit adjustment
//! of the next day, counted once.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::Arc;

use cardvm::issuer::Ledger;
use cardvm::issuer::clearing::{BusinessDay, Cleared, DEFAULT_ZONE, fee};
use cardvm::issuer::ledger::{CityRow, NewTxn, Recorded, Settlement};
use cardvm::issuer::merchant::{MerchantRow, NewOrder, OrderCreated, OrderState};
use cardvm::issuer::{TxnKind, TxnState};

/// 2026-12-07T10:00:00+08:00.
const T0: u64 = 1_796_608_800;
const DAY: u64 = 86_400;

struct Db {
    url: String,
    _dir: Option<cluster::Temp>,
}

fn sqlite(tag: &str) -> Db {
    let dir = std::env::temp_dir().join(format!("cardvm-clearing-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    Db {
        url: dir.join("ledger.db").display().to_string(),
        _dir: Some(cluster::Temp(dir)),
    }
}

fn postgres(tag: &str) -> Option<Db> {
    let base = cluster::pg_base()?;
    Some(Db {
        url: cluster::pg_database(&base, tag),
        _dir: None,
    })
}

async fn world(db: &Db) -> Ledger {
    let l = Ledger::open(&db.url).await.expect("ledger");
    l.set_city(&CityRow {
        city: 731,
        alg: "des3".into(),
        purse_limit: 100_000_000,
        txn_limit: 1_000_000,
        day_limit: 100_000_000,
    })
    .await
    .expect("city");
    for (i, r) in ["R1", "R2", "R3"].iter().enumerate() {
        l.add_reader(r, "-", "01", &[0, 0, 0, 0, 0, i as u8 + 1], T0 - DAY)
            .await
            .expect("reader");
    }
    for (id, bp) in [("shop", 60u64), ("cafe", 25)] {
        l.set_merchant(&MerchantRow {
            merchant_id: id.into(),
            name: id.into(),
            fee_bp: bp,
            account: format!("bank {id}"),
            public_key: "04".into(),
            notify_url: None,
            enabled: true,
            added_at: T0 - DAY,
        })
        .await
        .expect("merchant");
    }
    l
}

fn txn(reader: &str, seq: u64, kind: TxnKind, card: &str, amount: u64, at: u64) -> NewTxn {
    NewTxn {
        reader_id: reader.into(),
        seq,
        kind,
        city: 731,
        card_id: card.into(),
        amount,
        terminal_id: [0; 6],
        datetime: "20261207100000".into(),
        command_sm3: "00".into(),
        query_sm3: Some(format!("{reader}-{seq}")),
        balance_before: None,
        recovers_seq: None,
        issued_at: at,
        expires_at: at + 300,
        host_secured: true,
        order_id: None,
    }
}

async fn order(l: &Ledger, merchant: &str, n: &str, amount: u64, at: u64) -> String {
    let id = format!("O-{merchant}-{n}");
    match l
        .create_order(&NewOrder {
            order_id: id.clone(),
            merchant_id: merchant.into(),
            merchant_order: n.into(),
            amount,
            description: format!("order {n}"),
            created_at: at,
            expires_at: at + 3_600,
        })
        .await
        .expect("order")
    {
        OrderCreated::Now(o) => assert_eq!(o.order_id, id),
        other => panic!("{other:?}"),
    }
    id
}

async fn settle(
    l: &Ledger,
    reader: &str,
    seq: u64,
    state: TxnState,
    before: u64,
    after: u64,
    at: u64,
) {
    let s = Settlement {
        state,
        receipt_sm3: format!("{reader}/{seq}"),
        at,
        atc: None,
        mac2: None,
        tac: None,
        balance_before: Some(before),
        balance_after: Some(after),
        note: None,
    };
    l.settle(reader, seq, &s).await.expect("settle");
}

/// `n` purchases on `instances` pools race for one order: one is bound.
async fn order_race(db: &Db, n: u64, instances: usize) {
    let l = world(db).await;
    let id = order(&l, "shop", "race", 500, T0).await;
    let mut pools = vec![l.clone()];
    for _ in 1..instances {
        pools.push(Ledger::open(&db.url).await.expect("ledger"));
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let l = pools[i as usize % pools.len()].clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = txn(
                "R1",
                100 + i,
                TxnKind::Purchase,
                &format!("C{i:04}"),
                500,
                T0 + 1,
            );
            t.order_id = Some(id);
            l.insert(&t, None).await.expect("insert")
        }));
    }
    let mut bound = 0;
    for t in tasks {
        match t.await.expect("task") {
            Recorded::Yes => bound += 1,
            Recorded::OrderNotPayable => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bound, 1, "{n} racing purchases on {instances} pools");
    let o = l.order(&id).await.expect("read").expect("order");
    assert_eq!(o.state(T0 + 2), OrderState::Paying);
    // Another amount, or after the bound purchase: refused.
    let mut t = txn("R2", 1, TxnKind::Purchase, "C9999", 499, T0 + 2);
    t.order_id = Some(id.clone());
    assert_eq!(
        l.insert(&t, None).await.expect("insert"),
        Recorded::OrderNotPayable
    );
    // The bound purchase failed: the order is open again, and the next one binds.
    let (reader, seq) = o.txn.clone().expect("bound");
    settle(&l, &reader, seq, TxnState::Failed, 1_000, 1_000, T0 + 3).await;
    assert_eq!(
        l.order(&id)
            .await
            .expect("read")
            .expect("order")
            .state(T0 + 3),
        OrderState::Open
    );
    let mut t = txn("R2", 2, TxnKind::Purchase, "C9999", 500, T0 + 4);
    t.order_id = Some(id.clone());
    assert_eq!(l.insert(&t, None).await.expect("insert"), Recorded::Yes);
    settle(&l, "R2", 2, TxnState::Committed, 1_000, 500, T0 + 5).await;
    let o = l.order(&id).await.expect("read").expect("order");
    assert_eq!(o.state(T0 + 5), OrderState::Paid);
    assert_eq!(o.paid_at, Some(T0 + 5));
    // Paid: not cancelled, refunded once.
    assert!(!l.cancel_order(&id, T0 + 6).await.expect("cancel"));
    assert!(
        l.refund_order(&id, T0 + 6, "returned")
            .await
            .expect("refund")
    );
    assert!(!l.refund_order(&id, T0 + 7, "again").await.expect("refund"));
    assert_eq!(
        l.order(&id)
            .await
            .expect("read")
            .expect("order")
            .state(T0 + 7),
        OrderState::Refunded
    );
    // The same merchant order number again is the same order; another amount is not.
    let again = l
        .create_order(&NewOrder {
            order_id: "O-other".into(),
            merchant_id: "shop".into(),
            merchant_order: "race".into(),
            amount: 501,
            description: "order race".into(),
            created_at: T0,
            expires_at: T0 + 60,
        })
        .await
        .expect("create");
    assert!(matches!(again, OrderCreated::Different(_)), "{again:?}");
    l.close().await;
}

/// `n` loads race for one paid recharge order: one is bound; an unpaid or underpaid
/// order binds none.
async fn recharge_order_race(db: &Db, n: u64) {
    use cardvm::issuer::payment::{PaymentRecorded, ProviderAlg, ProviderRow};
    let l = world(db).await;
    let k = cardvm::crypto::sm2::Sm2PrivateKey::generate(&mut cardvm::crypto::rng::os_rng());
    l.set_provider(&ProviderRow {
        provider_id: "bank".into(),
        name: "Bank".into(),
        alg: ProviderAlg::Sm2,
        public_key: cardvm::issuer::ledger::hex(&k.public_key().to_sec1_bytes()),
        enabled: true,
        added_at: T0,
    })
    .await
    .expect("provider");
    for (id, paid) in [("P-paid", 800), ("P-unpaid", 0), ("P-under", 799)] {
        l.create_recharge_order(id, 731, "CAFE", 800, "bank", T0, T0 + DAY)
            .await
            .expect("order");
        if paid > 0 {
            assert_eq!(
                l.record_payment(id, "bank", paid, &format!("ref-{id}"), T0)
                    .await
                    .expect("pay"),
                PaymentRecorded::Now
            );
        }
    }
    // The same provider reference for another order is another payment.
    assert_eq!(
        l.record_payment("P-unpaid", "bank", 800, "ref-P-paid", T0)
            .await
            .expect("pay"),
        PaymentRecorded::OtherPayment
    );
    let mut tasks = Vec::new();
    for i in 0..n {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = txn("R1", 500 + i, TxnKind::Load, "CAFE", 800, T0 + 1);
            t.order_id = Some("P-paid".into());
            l.insert(&t, None).await.expect("insert")
        }));
    }
    let mut bound = 0;
    for t in tasks {
        if t.await.expect("task") == Recorded::Yes {
            bound += 1;
        }
    }
    assert_eq!(bound, 1, "{n} racing loads");
    for id in ["P-unpaid", "P-under"] {
        let mut t = txn("R2", 900, TxnKind::Load, "CAFE", 800, T0 + 1);
        t.order_id = Some(id.into());
        assert_eq!(
            l.insert(&t, None).await.expect("insert"),
            Recorded::OrderNotPayable
        );
    }
    l.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_loads_use_a_paid_recharge_order_once_on_sqlite() {
    recharge_order_race(&sqlite("rorder"), 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_loads_use_a_paid_recharge_order_once_on_postgresql() {
    let Some(db) = postgres("rorder") else {
        return;
    };
    recharge_order_race(&db, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_purchases_bind_an_order_once_on_sqlite() {
    order_race(&sqlite("race"), 16, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_purchases_bind_an_order_once_on_postgresql() {
    let Some(db) = postgres("orderrace") else {
        return;
    };
    order_race(&db, 32, 3).await;
}

/// A day of mixed traffic, cleared; a late receipt; clearing raced and repeated.
async fn mixed_day(db: &Db) {
    let l = world(db).await;
    let bd = BusinessDay::new(DEFAULT_ZONE, "00:00").expect("day");
    let d7 = BusinessDay::parse_date("2026-12-07").expect("date");
    let d8 = BusinessDay::parse_date("2026-12-08").expect("date");
    let (_, end7) = bd.bounds(d7).expect("bounds");
    let (_, end8) = bd.bounds(d8).expect("bounds");
    // Two cards: A starts at 100.00, B at 50.00.
    let mut balance = std::collections::HashMap::from([("A", 10_000u64), ("B", 5_000)]);
    let mut seq = 0;
    let mut run = |reader: &'static str, kind: TxnKind, card: &'static str, amount: u64| {
        seq += 1;
        (reader, seq, kind, card, amount)
    };
    let plan = [
        run("R1", TxnKind::Load, "A", 20_000),
        run("R2", TxnKind::Load, "B", 10_000),
        run("R1", TxnKind::Purchase, "A", 2_345), // shop
        run("R2", TxnKind::Purchase, "B", 1_250), // cafe
        run("R1", TxnKind::Purchase, "A", 999),   // shop, refunded later
        run("R3", TxnKind::Purchase, "B", 700),   // the card company itself
        run("R3", TxnKind::Load, "A", 3_000),     // fails on the card
        run("R3", TxnKind::Load, "B", 4_000),     // unknown, then recovered committed
    ];
    let orders = [
        (3, order(&l, "shop", "s1", 2_345, T0).await),
        (4, order(&l, "cafe", "c1", 1_250, T0).await),
        (5, order(&l, "shop", "s2", 999, T0).await),
    ];
    let mut at = T0;
    for (reader, seq, kind, card, amount) in plan {
        at += 60;
        let mut t = txn(reader, seq, kind, card, amount, at);
        t.order_id = orders
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, o)| o.clone());
        assert_eq!(l.insert(&t, None).await.expect("insert"), Recorded::Yes);
        let b = balance[card];
        let (state, after) = match seq {
            7 => (TxnState::Failed, b),
            8 => (TxnState::Unknown, b),
            _ if kind == TxnKind::Load => (TxnState::Committed, b + amount),
            _ => (TxnState::Committed, b - amount),
        };
        settle(&l, reader, seq, state, b, after, at + 5).await;
        balance.insert(card, after);
    }
    assert!(
        l.refund_order(&orders[2].1, at + 10, "not delivered")
            .await
            .expect("refund")
    );
    // Clearing before the day's end is refused.
    let early = l.clear_day(&bd, d7, end7 - 1).await;
    assert!(early.is_err(), "{early:?}");
    // Three runs race on three pools: one result, stored.
    let mut runs = Vec::new();
    for _ in 0..3 {
        let pool = Ledger::open(&db.url).await.expect("ledger");
        let bd = bd.clone();
        runs.push(tokio::spawn(async move {
            pool.clear_day(&bd, d7, end7 + 60).await
        }));
    }
    let mut results = Vec::new();
    for r in runs {
        match r.await.expect("task") {
            Ok(c) => results.push(c),
            // A run that lost every row to another reports a race; the day is stored.
            Err(cardvm::issuer::clearing::ClearingError::Raced { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let stored = l
        .cleared("2026-12-07")
        .await
        .expect("read")
        .expect("cleared");
    assert!(
        results
            .iter()
            .filter(|r| matches!(r, Cleared::Now(_)))
            .count()
            <= 1
    );
    for r in &results {
        assert_eq!(r.clearing(), &stored);
    }
    let again = l.clear_day(&bd, d7, end7 + 999).await.expect("again");
    assert!(matches!(again, Cleared::Already(_)));
    assert_eq!(again.clearing(), &stored);
    let t = &stored.totals;
    // Loads: A 200.00, B 100.00 (the failed and the unknown load are not counted).
    assert_eq!((t.loads.count, t.loads.sum), (2, 30_000));
    assert_eq!(
        (t.purchases.count, t.purchases.sum),
        (4, 2_345 + 1_250 + 999 + 700)
    );
    assert_eq!((t.refunds.count, t.refunds.sum), (1, 999));
    // The cards' balances changed by exactly loads − purchases.
    let changed: i64 = balance["A"] as i64 - 10_000 + balance["B"] as i64 - 5_000;
    assert_eq!(changed, t.loads.sum as i64 - t.purchases.sum as i64);
    // Each merchant is credited its purchases − refunds − fees.
    let line = |id: &str| {
        stored
            .lines
            .iter()
            .find(|l| l.section == "day" && l.scope == "merchant" && l.id == id)
            .unwrap_or_else(|| panic!("merchant {id}: {:?}", stored.lines))
            .clone()
    };
    let shop = line("shop");
    assert_eq!(shop.fees, fee(2_345, 60) as i64);
    assert_eq!(shop.net, 2_345 - fee(2_345, 60) as i64);
    let cafe = line("cafe");
    assert_eq!(cafe.net, 1_250 - fee(1_250, 25) as i64);
    let company = line("-");
    assert_eq!(
        (company.purchases.sum, company.fees, company.net),
        (700, 0, 700)
    );
    assert_eq!(t.net, shop.net + cafe.net + company.net);
    // The unknown load is recovered committed after day 7 was cleared: an adjustment
    // of day 8, counted once.
    assert!(
        l.decide_unknown("R3", 8, TxnState::RecoveredCommitted, "card proved it")
            .await
            .expect("decide")
    );
    let day8 = l.clear_day(&bd, d8, end8 + 1).await.expect("day 8");
    let c8 = day8.clearing();
    let adj: Vec<_> = c8
        .items
        .iter()
        .filter(|i| i.section == "adjustment")
        .collect();
    assert_eq!(adj.len(), 1, "{:?}", c8.items);
    assert_eq!(
        (adj[0].seq, adj[0].day.as_str(), adj[0].amount),
        (8, "2026-12-07", 4_000)
    );
    assert!(
        c8.lines
            .iter()
            .any(|l| l.section == "adjustment" && l.scope == "city" && l.loads.sum == 4_000),
        "{:?}",
        c8.lines
    );
    assert_eq!(c8.totals.loads.sum, 4_000);
    // Day 7's stored result did not change.
    assert_eq!(
        l.cleared("2026-12-07").await.expect("read").as_ref(),
        Some(&stored)
    );
    l.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_day_clears_once_and_reconciles_on_sqlite() {
    mixed_day(&sqlite("day")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_day_clears_once_and_reconciles_on_postgresql() {
    let Some(db) = postgres("clearday") else {
        return;
    };
    mixed_day(&db).await;
}

/// Journals against the ledger, and card counters, on synthetic receipts.
async fn reconciliation(db: &Db) {
    use cardvm::issuer::reconcile::{JournalReceipt, reconcile};
    let l = world(db).await;
    let mut at = T0;
    // Card D: loads at online counters 1, 2, 4 (3 is missing); card E: purchases at
    // offline counters 7 and 7 again.
    for (seq, kind, card, atc) in [
        (1, TxnKind::Load, "D", 1),
        (2, TxnKind::Load, "D", 2),
        (3, TxnKind::Load, "D", 4),
        (4, TxnKind::Purchase, "E", 7),
        (5, TxnKind::Purchase, "E", 7),
    ] {
        at += 10;
        l.insert(&txn("R1", seq, kind, card, 100, at), None)
            .await
            .expect("insert");
        let s = Settlement {
            state: TxnState::Committed,
            receipt_sm3: format!("SM3-{seq}"),
            at,
            atc: Some(atc),
            mac2: None,
            tac: None,
            balance_before: None,
            balance_after: None,
            note: None,
        };
        l.settle("R1", seq, &s).await.expect("settle");
    }
    // Seq 6 issued, never settled.
    l.insert(&txn("R1", 6, TxnKind::Load, "D", 100, at + 10), None)
        .await
        .expect("insert");
    let r = |seq: u64, sm3: &str, journal_seq: u64| JournalReceipt {
        journal: "r1.journal".into(),
        journal_seq,
        reader_id: "R1".into(),
        seq,
        receipt_sm3: sm3.into(),
        card_id: "D".into(),
        outcome: "committed".into(),
        offline: None,
    };
    let receipts = [
        r(1, "SM3-1", 1),  // matches
        r(2, "SM3-X", 2),  // settled with another receipt
        r(6, "SM3-6", 3),  // never delivered
        r(9, "SM3-9", 4),  // no such bundle
        r(1, "SM3-1b", 5), // a second, different receipt for seq 1
    ];
    let rec = reconcile(&l, &receipts).await.expect("reconcile");
    let kinds: Vec<(&str, u64)> = rec
        .findings
        .iter()
        .map(|f| (f.kind.as_str(), f.seq))
        .collect();
    assert_eq!(
        kinds,
        [
            ("other_receipt", 2),
            ("not_settled", 6),
            ("not_in_ledger", 9),
            ("duplicated", 1),
            ("counter_gap", 3),
            ("counter_gap", 5),
        ],
        "{:#?}",
        rec.findings
    );
    assert_eq!((rec.receipts, rec.matched, rec.counted), (5, 1, 5));
    assert!(
        rec.findings[4].detail.contains("jumps from 2"),
        "{:?}",
        rec.findings[4]
    );
    assert!(
        rec.findings[5].detail.contains("settled twice"),
        "{:?}",
        rec.findings[5]
    );
    l.close().await;
}

#[tokio::test]
async fn reconciliation_finds_every_mismatch_on_sqlite() {
    reconciliation(&sqlite("reconcile")).await;
}

#[tokio::test]
async fn reconciliation_finds_every_mismatch_on_postgresql() {
    let Some(db) = postgres("reconcile") else {
        return;
    };
    reconciliation(&db).await;
}

#[test]
fn the_default_zone_is_beijing_time() {
    let bd = BusinessDay::new(DEFAULT_ZONE, "00:00").expect("zone");
    assert_eq!(bd.local(T0), "2026-12-07T10:00:00+08:00");
    let _ = Arc::new(());
}
