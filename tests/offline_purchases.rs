//! Offline purchases from PSAM terminals, settled from the journal (docs/psam.md
//! "Offline purchases"), on SQLite and PostgreSQL, against the HTTPS service.
//!
//! A merchant's terminal (a reader registered with `--merchant`, its PSAM numbered as the
//! reader's terminal) fetches the city's sealed terminal program, sells offline to
//! simulated SM4 cards through a simulated PSAM (the purchase key only in the PSAM), and
//! uploads its journal. Written as the terminal's owner would attack: a receipt whose
//! amount was raised and re-signed with the reader's key (which the owner holds), the
//! same sale uploaded twice, from two service instances at once, and with an edited
//! counter; a sale claimed by another merchant's terminal; a terminal program run as a
//! transaction and a bundle's program run as a terminal program; a development receipt.
//! Then the day clears: the merchant is credited exactly the cards' balance changes, a
//! late upload is an adjustment, and reconciliation matches the journal.

#[path = "support/cluster.rs"]
mod cluster;

use cardvm::crypto::rng::os_rng;
use cardvm::issuer::clearing::{BusinessDay, DEFAULT_ZONE, fee};
use cardvm::issuer::ledger::{CityRow, hex};
use cardvm::issuer::merchant::MerchantRow;
use cardvm::online::protocol::JournalItem;
use cardvm::reader::{Policy, Reader, ReaderConfig, ReaderError, SystemClock};
use cardvm::receipt::{FieldValue, Mode, Receipt};
use cardvm::sim::{Algorithm, CpuCard, Fault, PsamCard, RandomSource};
use cardvm::transport::{CardTransport, SamSlots};
use cardvm::vm::{Limits, NoTrace};

const CITY: u32 = 755;
const SHANGHAI: i32 = 8 * 3600;

fn script(path: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cardvm::asm::assemble_file(&root.join(path), &cardvm::asm::AsmOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .script
        .encode()
}

fn sm4_card(i: u32, balance: u32) -> CpuCard {
    let mut serial = [0x41, 0x55, 0, 0, 0, 0, 0, 0];
    serial[4..].copy_from_slice(&i.to_be_bytes());
    let m = |k: usize| cardvm::issuer::ledger::unhex(cluster::MASTERS[k]).expect("hex");
    CpuCard::builder()
        .algorithm(Algorithm::Sm4)
        .card_number(&serial)
        .master_keys(&m(0), &m(1), &m(2))
        .balance(balance, 100_000_000)
        .random(RandomSource::Seeded {
            seed: u64::from(i) + 11,
            counter: 0,
        })
        .build()
        .expect("card")
}

fn psam(terminal: [u8; 6], seq: u32) -> PsamCard {
    let mpk = cardvm::issuer::ledger::unhex(cluster::MASTERS[1]).expect("hex");
    PsamCard::new(Algorithm::Sm4, &mpk, terminal, seq).expect("psam")
}

/// Reader `i` of the cluster with a journal file and the issuer's key.
fn terminal_reader(c: &cluster::Cluster, i: usize, journal: &std::path::Path) -> Reader {
    let (id, key) = &c.readers[i];
    Reader::new(
        ReaderConfig {
            reader_id: id.clone(),
            reader_key: Some(key.clone()),
            issuers: vec![c.issuer_key.public_key().clone()],
            policy: Policy::SealedOnly,
            limits: Limits::default(),
        },
        Some(Box::new(cardvm::envelope::MemoryReplayStore::new())),
        Some(Box::new(
            cardvm::journal::Journal::open(journal).expect("journal"),
        )),
        Box::new(SystemClock),
    )
    .expect("reader")
}

/// One sale: `amount` fen on `card` through `sam`; the journaled receipt.
fn sell(
    reader: &mut Reader,
    program: &[u8],
    amount: u64,
    card: &mut CpuCard,
    sam: &mut PsamCard,
) -> Receipt {
    let prepared = reader
        .prepare_terminal(program, amount, SHANGHAI)
        .expect("prepare");
    let mut sams = SamSlots::new(vec![sam as &mut dyn CardTransport]).expect("slots");
    let done = reader
        .run_with_sams(&prepared, card, &mut sams, &mut NoTrace, &mut os_rng())
        .expect("run");
    assert_eq!(done.receipt.mode, Mode::Terminal);
    assert!(done.receipt.data.is_none());
    done.receipt
}

fn balance(card: &CpuCard) -> u64 {
    u64::from(card.balance())
}

fn item(seq: u64, r: &Receipt) -> JournalItem {
    JournalItem {
        journal_seq: seq,
        receipt: r.to_json(),
    }
}

fn set_field(r: &mut Receipt, name: &str, v: FieldValue) {
    let f = r
        .fields
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name}"));
    f.1 = v;
}

async fn offline_day(db: &str, tag: &str) {
    let c = cluster::Cluster::start(db, 2, 3, false).await;
    let now = cardvm::reader::Clock::now(&SystemClock);
    let l = &c.ledger;
    l.set_city(&CityRow {
        city: CITY,
        alg: "sm4".into(),
        purse_limit: 100_000_000,
        txn_limit: 1_000_000,
        day_limit: 100_000_000,
    })
    .await
    .expect("city");
    l.set_terminal_program(CITY, &script("scripts/city0755-sm4/psam_purchase.cvs"), now)
        .await
        .expect("terminal program");
    for (id, bp) in [("shop", 60u64), ("cafe", 25)] {
        l.set_merchant(&MerchantRow {
            merchant_id: id.into(),
            name: id.into(),
            fee_bp: bp,
            account: format!("bank {id}"),
            public_key: "04".into(),
            notify_url: None,
            enabled: true,
            added_at: now,
        })
        .await
        .expect("merchant");
    }
    // R000 is the shop's terminal, R001 the cafe's, R002 nobody's.
    assert!(
        l.set_reader_merchant("R000", Some("shop"))
            .await
            .expect("set")
    );
    assert!(
        l.set_reader_merchant("R001", Some("cafe"))
            .await
            .expect("set")
    );
    let shop_terminal = l.reader("R000").await.expect("r").expect("r").terminal_id;
    let cafe_terminal = l.reader("R001").await.expect("r").expect("r").terminal_id;

    let dir = std::env::temp_dir().join(format!("cardvm-offline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let _tmp = cluster::Temp(dir.clone());
    let shop_client = c.client_for(0, &c.services[0].url());
    let cafe_client = c.client_for(1, &c.services[0].url());
    let nobody = c.client_for(2, &c.services[0].url());

    // Only a merchant's terminal gets the program.
    let refused = nobody
        .terminal_script(CITY)
        .await
        .expect_err("not a terminal");
    assert!(refused.to_string().contains("not_a_terminal"), "{refused}");
    let program = cardvm::issuer::ledger::unhex(
        &shop_client
            .terminal_script(CITY)
            .await
            .expect("program")
            .script,
    )
    .expect("hex");
    let cafe_program = cardvm::issuer::ledger::unhex(
        &cafe_client
            .terminal_script(CITY)
            .await
            .expect("program")
            .script,
    )
    .expect("hex");

    // The shop sells offline: three sales on two cards; the third is uploaded late.
    let journal = dir.join("shop.journal");
    let mut shop = terminal_reader(&c, 0, &journal);
    let mut sam = psam(shop_terminal, 40);
    let mut a = sm4_card(1, 50_000);
    let mut b = sm4_card(2, 20_000);
    let (a0, b0) = (balance(&a), balance(&b));
    let s1 = sell(&mut shop, &program, 1_250, &mut a, &mut sam);
    let s2 = sell(&mut shop, &program, 800, &mut b, &mut sam);
    let s3 = sell(&mut shop, &program, 3_000, &mut a, &mut sam);
    for s in [&s1, &s2, &s3] {
        assert_eq!(s.outcome.to_string(), "committed", "{s:?}");
    }
    assert_eq!(balance(&a), a0 - 4_250);
    assert_eq!(balance(&b), b0 - 800);

    // A terminal program never runs as a transaction's command script.
    let e = shop
        .prepare(&program, b"")
        .expect_err("terminal program as a command");
    assert!(matches!(e, ReaderError::Open { .. }), "{e}");
    // Nor does another sealed program (the city 731 query) run as a terminal program.
    let query = cardvm::issuer::ledger::unhex(
        &shop_client
            .query_script(cluster::CITY)
            .await
            .expect("query")
            .script,
    )
    .expect("hex");
    let e = shop
        .prepare_terminal(&query, 100, SHANGHAI)
        .expect_err("query as a terminal program");
    assert!(e.to_string().contains("terminal"), "{e}");
    drop(shop);

    // The cafe sells once, with its own PSAM.
    let cafe_journal = dir.join("cafe.journal");
    let mut cafe = terminal_reader(&c, 1, &cafe_journal);
    let mut cafe_sam = psam(cafe_terminal, 7);
    let mut d = sm4_card(4, 10_000);
    let d0 = balance(&d);
    let s4 = sell(&mut cafe, &cafe_program, 450, &mut d, &mut cafe_sam);
    assert_eq!(s4.outcome.to_string(), "committed", "{s4:?}");
    // A card pulled during DEBIT: the card committed, the terminal cannot tell.
    let mut e = sm4_card(5, 5_000);
    let e0 = balance(&e);
    e.faults_mut().push(Fault::TearAfter(4));
    let s5 = sell(&mut cafe, &cafe_program, 620, &mut e, &mut cafe_sam);
    assert!(s5.outcome.to_string().starts_with("unknown"), "{s5:?}");
    assert_eq!(balance(&e), e0 - 620, "the card has it");
    drop(cafe);

    // The owner's attacks, each signed with the reader's own key.
    let shop_key = &c.readers[0].1;
    let resign = |r: &mut Receipt| r.sign(shop_key, &mut os_rng()).expect("sign");
    let mut raised = s2.clone();
    set_field(&mut raised, "amount", FieldValue::Int(900_000));
    set_field(&mut raised, "balance_after", FieldValue::Int(0));
    resign(&mut raised);
    let mut other_counter = s2.clone();
    let atc = match other_counter.field("atc") {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("atc {other:?}"),
    };
    set_field(&mut other_counter, "atc", FieldValue::Int(atc + 5));
    resign(&mut other_counter);
    let mut development = s1.clone();
    development.mode = Mode::Development;
    resign(&mut development);
    // The cafe claims the shop's sale as its own (its key, the shop's PSAM numbers).
    let mut claimed = s1.clone();
    claimed.reader_id = "R001".into();
    claimed.sign(&c.readers[1].1, &mut os_rng()).expect("sign");

    let reply = shop_client
        .journal(
            "offline-1",
            vec![
                item(1, &s1),
                item(2, &raised),
                item(3, &s2),
                item(4, &development),
                item(5, &s1),
            ],
        )
        .await
        .expect("journal");
    let status: Vec<&str> = reply.results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        status,
        ["settled", "refused", "settled", "refused", "settled"]
    );
    assert!(
        reply.results[1]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("TAC"),
        "{reply:?}"
    );
    assert!(reply.results[4].settled.as_ref().is_some_and(|s| s.already));
    assert_eq!(reply.acknowledged_up_to, 5);

    // The same sale from both instances at once, with the edited counter too: one row.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let client = c.client_for(0, &c.services[i % 2].url());
            let r = if i % 4 == 3 {
                other_counter.clone()
            } else {
                s2.clone()
            };
            tokio::spawn(async move {
                client
                    .journal(&format!("race-{i}"), vec![item(1, &r)])
                    .await
                    .expect("journal")
                    .results
                    .remove(0)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("task");
        if i % 4 == 3 {
            assert_eq!(r.status, "refused", "edited counter {i}: {r:?}");
        } else {
            assert!(r.settled.is_some_and(|s| s.already), "{i}");
        }
    }
    let claimed_reply = cafe_client
        .journal("claim", vec![item(1, &claimed)])
        .await
        .expect("journal");
    assert_eq!(claimed_reply.results[0].status, "refused");
    assert!(
        claimed_reply.results[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("terminal number"),
        "{claimed_reply:?}"
    );
    // The cafe's own sale, through the journal as `cardvm client sync` sends it.
    let mut cj = cardvm::journal::Journal::open(&cafe_journal).expect("journal");
    let rep = cardvm::online::client::sync(&cafe_client, &mut cj)
        .await
        .expect("sync");
    assert_eq!((rep.sent, rep.settled), (2, 2), "{rep:?}");
    drop(cj);
    // The torn sale is recorded `unknown`: neither lost nor credited, nor in the card's
    // online recovery queue.
    let torn = l
        .offline_txn(CITY, &cafe_terminal, 8)
        .await
        .expect("ledger")
        .expect("the torn sale is recorded");
    assert_eq!(torn.state, cardvm::issuer::TxnState::Unknown);
    assert_eq!(torn.amount, 620);
    assert!(
        l.oldest_unknown(&hex(e.card_number()))
            .await
            .expect("ledger")
            .is_none()
    );

    // Exactly one row per sale, credited to the right merchant.
    let rows = l
        .list(&cardvm::issuer::ledger::Filter::default())
        .await
        .expect("list");
    let offline: Vec<_> = rows.iter().filter(|r| r.city == CITY).collect();
    assert_eq!(offline.len(), 4, "{offline:#?}");
    let settled_a: u64 = offline
        .iter()
        .filter(|r| r.card_id == hex(a.card_number()))
        .map(|r| r.amount)
        .sum();
    assert_eq!(settled_a, 1_250, "s3 not uploaded yet");

    // The day clears: the shop's credit equals the cards' balance change so far.
    let bd = BusinessDay::new(DEFAULT_ZONE, "00:00").expect("day");
    let today = bd.day_of(now).expect("day");
    let cleared = l
        .clear_day(&bd, today, now + 3 * 86_400)
        .await
        .expect("clear");
    let day = cleared.clearing();
    let line = |scope: &str, id: &str| {
        day.lines
            .iter()
            .find(|x| x.section == "day" && x.scope == scope && x.id == id)
            .unwrap_or_else(|| panic!("no {scope} {id} in {day:#?}"))
            .clone()
    };
    let shop_line = line("merchant", "shop");
    assert_eq!(shop_line.purchases.sum, 1_250 + 800);
    assert_eq!(shop_line.purchases.count, 2);
    let fees = (fee(1_250, 60) + fee(800, 60)) as i64;
    assert_eq!(shop_line.fees, fees);
    assert_eq!(shop_line.net, 2_050 - fees);
    let cafe_line = line("merchant", "cafe");
    assert_eq!(cafe_line.purchases.sum, d0 - balance(&d));
    assert_eq!(line("city", "755").purchases.sum, 2_050 + 450);

    // Reconciliation before the late upload: the shop's journal says three sales, the
    // ledger has two; the third is reported, not lost.
    let receipts = cardvm::issuer::reconcile::journal_receipts(&journal).expect("journal");
    assert_eq!(receipts.len(), 3);
    let rec = cardvm::issuer::reconcile::reconcile(l, &receipts)
        .await
        .expect("reconcile");
    assert_eq!(rec.matched, 2, "{rec:#?}");
    assert_eq!(rec.findings.len(), 1, "{rec:#?}");
    assert_eq!(rec.findings[0].kind, "not_settled");
    assert!(rec.findings[0].detail.contains("offline sale"), "{rec:#?}");

    // The late sale: uploaded after its day was cleared, an adjustment of the next day.
    let mut sj = cardvm::journal::Journal::open(&journal).expect("journal");
    let rep = cardvm::online::client::sync(&shop_client, &mut sj)
        .await
        .expect("sync");
    // Entries 1 and 2 were settled above (through the API); sync sends all three.
    assert_eq!(rep.settled, 3, "{rep:?}");
    drop(sj);
    // The operator decides the torn sale from the card's PROVE: it counts from now on.
    assert!(
        l.decide_unknown(
            "R001",
            torn.seq,
            cardvm::issuer::TxnState::RecoveredCommitted,
            "PROVE: the card has it"
        )
        .await
        .expect("decide")
    );
    let next = today.tomorrow().expect("date");
    let adj = l
        .clear_day(&bd, next, now + 3 * 86_400)
        .await
        .expect("clear");
    let late: Vec<_> = adj
        .clearing()
        .items
        .iter()
        .filter(|i| i.section == "adjustment")
        .collect();
    let mut late: Vec<(u64, &str, &str)> = late
        .iter()
        .map(|i| (i.amount, i.merchant_id.as_str(), i.day.as_str()))
        .collect();
    late.sort();
    let day_s = today.to_string();
    assert_eq!(
        late,
        [
            (620, "cafe", day_s.as_str()),
            (3_000, "shop", day_s.as_str())
        ]
    );
    // Everything the cards lost is in exactly one cleared day.
    let cleared_total: u64 = [day, adj.clearing()]
        .iter()
        .map(|c| c.totals.purchases.sum)
        .sum();
    assert_eq!(
        cleared_total,
        (a0 - balance(&a)) + (b0 - balance(&b)) + (d0 - balance(&d)) + (e0 - balance(&e))
    );

    // Reconciliation (read before the sync compacted the journal): now all three match.
    let rec = cardvm::issuer::reconcile::reconcile(l, &receipts)
        .await
        .expect("reconcile");
    assert_eq!(rec.matched, 3, "{rec:#?}");
    assert!(rec.findings.is_empty(), "{rec:#?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_purchases_settle_once_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("cardvm-offline-db-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let _tmp = cluster::Temp(dir.clone());
    offline_day(&dir.join("ledger.db").display().to_string(), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_purchases_settle_once_on_postgres() {
    let Some(base) = cluster::pg_base() else {
        return;
    };
    offline_day(&cluster::pg_database(&base, "offline"), "pg").await;
}

#[test]
fn a_terminal_program_holds_no_key_and_gets_only_amount_and_time() {
    // The city's program passes; the key-bearing purchase and a SAM-less flow do not.
    let ok = script("scripts/city0755-sm4/psam_purchase.cvs");
    cardvm::issuer::offline::check_program(&ok).expect("psam purchase");
    let keyed = script("scripts/city0755-sm4/purchase.casm");
    let e = cardvm::issuer::offline::check_program(&keyed).expect_err("keys");
    assert!(e.contains("key input") || e.contains("input"), "{e}");
    // The reader refuses the same in development mode, before any card is touched.
    let mut reader = Reader::new(
        ReaderConfig {
            reader_id: "dev".into(),
            reader_key: None,
            issuers: vec![],
            policy: Policy::AllowPlain,
            limits: Limits::default(),
        },
        None,
        None,
        Box::new(SystemClock),
    )
    .expect("reader");
    let e = reader
        .prepare_terminal(&keyed, 100, SHANGHAI)
        .expect_err("keys");
    assert!(matches!(e, ReaderError::Terminal(_)), "{e}");
    let p = reader.prepare_terminal(&ok, 100, SHANGHAI).expect("plain");
    assert_eq!(p.mode(), Mode::Development, "a plain program never settles");
    let e = reader
        .prepare_terminal(&ok, u64::from(u32::MAX) + 1, SHANGHAI)
        .expect_err("amount");
    assert!(e.to_string().contains("amount"), "{e}");
}
