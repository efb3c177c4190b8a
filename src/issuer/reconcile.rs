//! Reconciliation (`docs/clearing.md` "Reconciliation"): readers' journals against the
//! ledger, and the ledger against the cards' own counters.
//!
//! A reader journals every receipt before it sends it, so its journal is its own account
//! of what its cards did. Compared with the ledger, each transaction receipt is either
//! settled with exactly that receipt, or one of:
//!
//! * **not in the ledger** — a receipt for a bundle this card company never issued;
//! * **not settled** — the ledger still has it `issued` or `unknown`: the receipt never
//!   arrived (`cardvm client sync` delivers it);
//! * **another receipt** — the ledger settled it with a different receipt;
//! * **duplicated** — two different receipts in the journals for one transaction.
//!
//! An offline terminal sale (docs/psam.md) is named by its city, terminal number and
//! terminal sequence instead of a bundle; one that failed before the card's commit point
//! moved nothing and is not compared.
//!
//! And each card's counters, as the settled transactions report them (the online
//! counter for loads, the offline counter for purchases), should follow one another:
//! a **counter gap** is a transaction on the card the ledger does not know, such as an
//! offline purchase never uploaded or a load done elsewhere.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::ledger::{Filter, Ledger, LedgerError, TxnKind, TxnState, hex};

/// One transaction receipt read from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalReceipt {
    /// Which journal (its path, for the report).
    pub journal: String,
    /// The entry's sequence number in that journal.
    pub journal_seq: u64,
    /// The reader that signed it.
    pub reader_id: String,
    /// The transaction's seq (its data script's).
    pub seq: u64,
    /// SM3 of its canonical bytes (hex), as the ledger records a settled receipt.
    pub receipt_sm3: String,
    /// The card (hex).
    pub card_id: String,
    /// What the reader saw (`committed`, `failed …`, `unknown …`).
    pub outcome: String,
    /// For an offline terminal sale (`seq` is then 0): city, the PSAM's terminal number
    /// and its terminal sequence, which name the sale in the ledger.
    pub offline: Option<(u32, [u8; 6], u32)>,
}

/// What reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `not_in_ledger`, `not_settled`, `other_receipt`, `duplicated` or `counter_gap`.
    pub kind: String,
    /// Reader (empty for a counter gap).
    pub reader_id: String,
    /// Transaction seq (0 for a counter gap).
    pub seq: u64,
    /// Card (hex).
    pub card_id: String,
    /// The journal and entry, where a receipt is concerned.
    pub journal: String,
    /// Its entry.
    pub journal_seq: u64,
    /// One line for a person.
    pub detail: String,
}

/// A reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// Transaction receipts read from the journals.
    pub receipts: u64,
    /// Of which settled in the ledger with exactly that receipt.
    pub matched: u64,
    /// Settled transactions whose counters were followed.
    pub counted: u64,
    /// What does not match, journals first, then counter gaps.
    pub findings: Vec<Finding>,
}

/// A settled transaction's counter value, reader and seq.
type Counted = (u64, String, u64);

/// Compares `receipts` (from readers' journals) with the ledger, and each card's
/// counters in the ledger.
pub async fn reconcile(
    ledger: &Ledger,
    receipts: &[JournalReceipt],
) -> Result<Reconciliation, LedgerError> {
    let mut findings = Vec::new();
    let mut matched = 0;
    let mut seen: HashMap<(String, u64), &JournalReceipt> = HashMap::new();
    for r in receipts {
        let key = match r.offline {
            Some((city, terminal, tseq)) => (format!("{city}/{}", hex(&terminal)), u64::from(tseq)),
            None => (r.reader_id.clone(), r.seq),
        };
        let finding = |kind: &str, detail: String| Finding {
            kind: kind.into(),
            reader_id: r.reader_id.clone(),
            seq: r.seq,
            card_id: r.card_id.clone(),
            journal: r.journal.clone(),
            journal_seq: r.journal_seq,
            detail,
        };
        if let Some(first) = seen.get(&key) {
            if !first.receipt_sm3.eq_ignore_ascii_case(&r.receipt_sm3) {
                findings.push(finding(
                    "duplicated",
                    format!(
                        "another receipt for {}/{} is {} entry {} ({})",
                        r.reader_id, r.seq, first.journal, first.journal_seq, first.outcome
                    ),
                ));
            }
            continue;
        }
        seen.insert(key, r);
        let row = match r.offline {
            Some((city, terminal, tseq)) => {
                match ledger.offline_txn(city, &terminal, tseq).await? {
                    Some(row) => Some(row),
                    None => {
                        findings.push(finding(
                        "not_settled",
                        format!(
                            "offline sale of terminal {} seq {tseq} is not in the ledger; the card {}: deliver it (cardvm client sync)",
                            hex(&terminal),
                            r.outcome
                        ),
                    ));
                        continue;
                    }
                }
            }
            None => ledger.txn(&r.reader_id, r.seq).await?,
        };
        match row {
            None => findings.push(finding(
                "not_in_ledger",
                format!(
                    "no bundle {}/{} was issued here; card {}",
                    r.reader_id, r.seq, r.outcome
                ),
            )),
            Some(row) if matches!(row.state, TxnState::Issued | TxnState::Unknown) => findings
                .push(finding(
                    "not_settled",
                    format!(
                        "the ledger has it {}; the card {}: deliver it (cardvm client sync)",
                        row.state.name(),
                        r.outcome
                    ),
                )),
            Some(row) => match &row.receipt_sm3 {
                Some(s) if s.eq_ignore_ascii_case(&r.receipt_sm3) => matched += 1,
                Some(s) => findings.push(finding(
                    "other_receipt",
                    format!(
                        "settled {} with receipt {}…, not this one {}…",
                        row.state.name(),
                        &s[..s.len().min(16)],
                        &r.receipt_sm3[..r.receipt_sm3.len().min(16)]
                    ),
                )),
                // Decided by recovery or an operator: the receipt itself never arrived.
                None => findings.push(finding(
                    "not_settled",
                    format!("decided {} without this receipt", row.state.name()),
                )),
            },
        }
    }
    // Counters: per card and counter, the settled transactions in counter order.
    let mut counters: BTreeMap<(String, &'static str), Vec<Counted>> = BTreeMap::new();
    let mut counted = 0;
    for state in [TxnState::Committed, TxnState::RecoveredCommitted] {
        let rows = ledger
            .list(&Filter {
                state: Some(state),
                ..Filter::default()
            })
            .await?;
        for row in rows {
            let counter = match row.kind {
                TxnKind::Load => "online",
                TxnKind::Purchase => "offline",
                _ => continue,
            };
            if let Some(atc) = row.atc {
                counted += 1;
                counters
                    .entry((row.card_id.clone(), counter))
                    .or_default()
                    .push((atc, row.reader_id.clone(), row.seq));
            }
        }
    }
    for ((card, counter), mut list) in counters {
        list.sort();
        for w in list.windows(2) {
            let ((a, ra, sa), (b, rb, sb)) = (&w[0], &w[1]);
            if *b == *a {
                findings.push(Finding {
                    kind: "counter_gap".into(),
                    reader_id: rb.clone(),
                    seq: *sb,
                    card_id: card.clone(),
                    journal: String::new(),
                    journal_seq: 0,
                    detail: format!("{counter} counter {a} settled twice: {ra}/{sa} and {rb}/{sb}"),
                });
            } else if *b > a + 1 {
                findings.push(Finding {
                    kind: "counter_gap".into(),
                    reader_id: rb.clone(),
                    seq: *sb,
                    card_id: card.clone(),
                    journal: String::new(),
                    journal_seq: 0,
                    detail: format!(
                        "{counter} counter jumps from {a} ({ra}/{sa}) to {b} ({rb}/{sb}): {} transaction(s) on the card the ledger does not know",
                        b - a - 1
                    ),
                });
            }
        }
    }
    Ok(Reconciliation {
        receipts: receipts.len() as u64,
        matched,
        counted,
        findings,
    })
}

/// The findings as CSV (header first).
pub fn findings_csv(r: &Reconciliation) -> String {
    let mut s = String::from("kind,reader_id,seq,card_id,journal,journal_seq,detail\n");
    for f in &r.findings {
        s.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            f.kind,
            super::clearing::csv_field(&f.reader_id),
            f.seq,
            f.card_id,
            super::clearing::csv_field(&f.journal),
            f.journal_seq,
            super::clearing::csv_field(&f.detail)
        ));
    }
    s
}

/// Reads a journal's transaction receipts (queries and lost-entry records are skipped).
pub fn journal_receipts(path: &std::path::Path) -> Result<Vec<JournalReceipt>, String> {
    let j = crate::journal::Journal::open_read_only(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for e in j.entries() {
        let e = e.map_err(|e| format!("{}: {e}", path.display()))?;
        let Ok(r) = crate::receipt::Receipt::from_bytes(&e.payload) else {
            continue;
        };
        let offline = if r.mode == crate::receipt::Mode::Terminal {
            // A sale that failed before the card's commit point moved nothing.
            if matches!(r.outcome, crate::receipt::Outcome::Failed { .. }) {
                continue;
            }
            let field = |name: &str| match r.field(name) {
                Some(crate::receipt::FieldValue::Bytes(b)) => Some(b.clone()),
                _ => None,
            };
            let terminal = field("terminal_id").and_then(|b| <[u8; 6]>::try_from(b).ok());
            let tseq = field("terminal_seq")
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes);
            match (terminal, tseq) {
                (Some(t), Some(q)) => Some((r.city, t, q)),
                // Torn before the PSAM numbered it: nothing reached the card.
                _ => continue,
            }
        } else {
            None
        };
        let seq = match (&r.data, offline) {
            (Some(d), _) => d.seq,
            (None, Some(_)) => 0,
            (None, None) => continue,
        };
        out.push(JournalReceipt {
            offline,
            journal: path.display().to_string(),
            journal_seq: e.seq,
            reader_id: r.reader_id.clone(),
            seq,
            receipt_sm3: r
                .to_bytes()
                .map(|b| hex(&crate::crypto::sm3(&b)))
                .map_err(|x| format!("{} entry {}: {x}", path.display(), e.seq))?,
            card_id: hex(&r.card_id),
            outcome: r.outcome.to_string(),
        });
    }
    Ok(out)
}
