//! Clearing a business day (`docs/clearing.md`): what each city, merchant and reader
//! moved, the card company's fees and each merchant's net, once per day, signed.
//!
//! **The day.** A business day is a local date in a configured time zone (default
//! `Asia/Shanghai`) with a cut-off time: a transaction at or after the cut-off counts
//! for the next date (with the cut-off 00:00, a day is its calendar date). A
//! transaction's time is when its bundle was issued (the card ran it within the bundle's
//! life, minutes); an offline PSAM purchase's is the card's date and time (at most its
//! settlement: docs/psam.md); a refund's is when it was made. An online purchase is
//! credited to its order's merchant, an offline one to its terminal's.
//!
//! **Once.** Clearing a day stamps every transaction and refund it counts with the day
//! (`cleared_day`, only where it is still empty, in one database transaction) and
//! stores the result; clearing the day again returns the stored result. Two runs racing
//! on two instances store one result (the day is the primary key).
//!
//! **Late money.** A transaction settled after its own day was cleared (a late receipt,
//! an `unknown` load that recovery later found committed) is counted by the next day
//! cleared, as an **adjustment**: listed apart, with the day it belongs to. Nothing is
//! counted twice or lost: a committed transaction is in exactly one cleared day once
//! its own day and a later one have been cleared.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ledger::{Ledger, LedgerError, db, get_opt_str, get_str, get_u64, to_i64};

/// The default zone of the business day (Chinese terminals, cards and clearing run on
/// Beijing time).
pub const DEFAULT_ZONE: &str = "Asia/Shanghai";

/// A clearing failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClearingError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A zone, cut-off or date that cannot be used.
    #[error("{0}")]
    Config(String),
    /// Another run changed the rows meanwhile; nothing was stored (run it again).
    #[error(
        "clearing {day}: another clearing run took some of its transactions meanwhile; run it again"
    )]
    Raced {
        /// The day.
        day: String,
    },
}

/// The fee on `amount` fen at `fee_bp` basis points, rounded half up to a fen.
pub fn fee(amount: u64, fee_bp: u64) -> u64 {
    let f = u128::from(amount) * u128::from(fee_bp);
    u64::try_from((f + 5_000) / 10_000).unwrap_or(u64::MAX)
}

/// A business day's definition: zone and cut-off.
#[derive(Debug, Clone)]
pub struct BusinessDay {
    zone: jiff::tz::TimeZone,
    zone_name: String,
    cutoff: jiff::civil::Time,
}

impl BusinessDay {
    /// `zone`: an IANA name (`Asia/Shanghai`); `cutoff`: `HH:MM`.
    pub fn new(zone: &str, cutoff: &str) -> Result<Self, ClearingError> {
        let tz = jiff::tz::TimeZone::get(zone)
            .map_err(|e| ClearingError::Config(format!("time zone `{zone}`: {e}")))?;
        let cut: jiff::civil::Time = cutoff
            .parse()
            .ok()
            .filter(|_| cutoff.len() == 5)
            .ok_or_else(|| ClearingError::Config(format!("cut-off `{cutoff}`: use HH:MM")))?;
        Ok(BusinessDay {
            zone: tz,
            zone_name: zone.into(),
            cutoff: cut,
        })
    }

    /// The zone's name.
    pub fn zone(&self) -> &str {
        &self.zone_name
    }

    /// The cut-off, `HH:MM`.
    pub fn cutoff(&self) -> String {
        self.cutoff.strftime("%H:%M").to_string()
    }

    /// A date `YYYY-MM-DD`.
    pub fn parse_date(text: &str) -> Result<jiff::civil::Date, ClearingError> {
        text.parse()
            .ok()
            .filter(|_| text.len() == 10)
            .ok_or_else(|| ClearingError::Config(format!("date `{text}`: use YYYY-MM-DD")))
    }

    fn instant(
        &self,
        date: jiff::civil::Date,
        time: jiff::civil::Time,
    ) -> Result<u64, ClearingError> {
        let z = date
            .to_datetime(time)
            .to_zoned_datetime(self.zone.clone())
            .map_err(|e| {
                ClearingError::Config(format!("{date} {time} in {}: {e}", self.zone_name))
            })?;
        u64::try_from(z.timestamp().as_second())
            .map_err(|_| ClearingError::Config(format!("{date}: before 1970")))
    }

    /// The day's span in unix seconds, `[from, to)`.
    pub fn bounds(&self, date: jiff::civil::Date) -> Result<(u64, u64), ClearingError> {
        let midnight = jiff::civil::Time::midnight();
        let err = |e: jiff::Error| ClearingError::Config(format!("{date}: {e}"));
        if self.cutoff == midnight {
            let next = date.tomorrow().map_err(err)?;
            Ok((self.instant(date, midnight)?, self.instant(next, midnight)?))
        } else {
            let prev = date.yesterday().map_err(err)?;
            Ok((
                self.instant(prev, self.cutoff)?,
                self.instant(date, self.cutoff)?,
            ))
        }
    }

    /// The business day of an instant.
    pub fn day_of(&self, unix: u64) -> Result<jiff::civil::Date, ClearingError> {
        let ts = jiff::Timestamp::from_second(i64::try_from(unix).unwrap_or(i64::MAX))
            .map_err(|e| ClearingError::Config(format!("time {unix}: {e}")))?;
        let local = ts.to_zoned_datetime(self.zone.clone());
        let date = local.date();
        if self.cutoff != jiff::civil::Time::midnight() && local.time() >= self.cutoff {
            date.tomorrow()
                .map_err(|e| ClearingError::Config(format!("{date}: {e}")))
        } else {
            Ok(date)
        }
    }

    /// An instant as local time with its offset (`2026-12-07T09:30:00+08:00`).
    pub fn local(&self, unix: u64) -> String {
        match jiff::Timestamp::from_second(i64::try_from(unix).unwrap_or(i64::MAX)) {
            Ok(ts) => ts
                .to_zoned_datetime(self.zone.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            Err(_) => unix.to_string(),
        }
    }
}

/// A count and a sum (fen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// Fen.
    pub sum: u64,
}

impl Tally {
    fn add(&mut self, amount: u64) {
        self.count += 1;
        self.sum = self.sum.saturating_add(amount);
    }
}

/// One line of the clearing: a city, a merchant or a reader, for the day itself or for
/// its adjustments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// `day` or `adjustment`.
    pub section: String,
    /// `city`, `merchant` or `reader`.
    pub scope: String,
    /// The city number, merchant id (`-` for payments to the card company itself) or
    /// reader id.
    pub id: String,
    /// Loads onto cards.
    pub loads: Tally,
    /// Purchases from cards (online and PSAM).
    pub purchases: Tally,
    /// Refunds owed to cardholders.
    pub refunds: Tally,
    /// The card company's fees: on purchases, less those returned with refunds.
    pub fees: i64,
    /// What the merchant is paid: purchases − refunds − fees (merchant lines; 0
    /// elsewhere).
    pub net: i64,
}

/// One counted transaction or refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// `day` or `adjustment`.
    pub section: String,
    /// `load`, `purchase` or `refund`.
    pub kind: String,
    /// The business day it belongs to.
    pub day: String,
    /// Reader and seq of the transaction.
    pub reader_id: String,
    /// Seq.
    pub seq: u64,
    /// City.
    pub city: u32,
    /// Card (hex).
    pub card_id: String,
    /// Merchant (`-`: none).
    pub merchant_id: String,
    /// Order (empty: none).
    pub order_id: String,
    /// Fen.
    pub amount: u64,
    /// Fee (fen; negative for a refund's returned fee).
    pub fee: i64,
    /// Local time of the transaction (or refund).
    pub at: String,
}

/// A cleared day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clearing {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Time zone.
    pub zone: String,
    /// Cut-off `HH:MM`.
    pub cutoff: String,
    /// Start, local time.
    pub from: String,
    /// End (exclusive), local time.
    pub to: String,
    /// When it was cleared (unix seconds).
    pub run_at: u64,
    /// Per city, merchant and reader, the day's and then the adjustments' lines.
    pub lines: Vec<Line>,
    /// Every counted transaction and refund.
    pub items: Vec<Item>,
    /// The day's and adjustments' totals together.
    pub totals: Line,
}

/// What [`Ledger::clear_day`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleared {
    /// Cleared now.
    Now(Box<Clearing>),
    /// Cleared before: the stored result.
    Already(Box<Clearing>),
}

impl Cleared {
    /// The result either way.
    pub fn clearing(&self) -> &Clearing {
        match self {
            Cleared::Now(c) | Cleared::Already(c) => c,
        }
    }
}

struct Candidate {
    item: Item,
    refund: bool,
    unix: u64,
}

impl Ledger {
    /// The stored result of a cleared day.
    pub async fn cleared(&self, day: &str) -> Result<Option<Clearing>, LedgerError> {
        let row = sqlx::query("SELECT result FROM clearing_days WHERE day = $1")
            .bind(day)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read clearing"))?;
        row.map(|r| {
            let text = get_str(&r, "result")?;
            serde_json::from_str(&text).map_err(|e| LedgerError::Corrupt {
                what: format!("clearing_days {day}"),
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// The days cleared, in order.
    pub async fn cleared_days(&self) -> Result<Vec<String>, LedgerError> {
        sqlx::query("SELECT day FROM clearing_days ORDER BY day")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list clearing"))?
            .iter()
            .map(|r| get_str(r, "day"))
            .collect()
    }

    /// Clears `date` (module docs), once.
    pub async fn clear_day(
        &self,
        bd: &BusinessDay,
        date: jiff::civil::Date,
        now: u64,
    ) -> Result<Cleared, ClearingError> {
        let day = date.to_string();
        if let Some(c) = self.cleared(&day).await? {
            return Ok(Cleared::Already(Box::new(c)));
        }
        let (from, to) = bd.bounds(date)?;
        if now < to {
            return Err(ClearingError::Config(format!(
                "{day} ends at {} ({}): it is cleared after its end",
                bd.local(to),
                bd.zone()
            )));
        }
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        // Clearing runs are serialised by one lock row (PostgreSQL locks it, SQLite takes
        // its write lock here, before any read): a second run waits, then finds the
        // day stored.
        sqlx::query(
            "INSERT INTO card_locks (card_id, version) VALUES ('~clearing', 1) \
             ON CONFLICT (card_id) DO UPDATE SET version = card_locks.version + 1",
        )
        .execute(&mut *tx)
        .await
        .map_err(db("lock clearing"))?;
        let mut cleared_days = std::collections::HashSet::new();
        for r in sqlx::query("SELECT day, result FROM clearing_days")
            .fetch_all(&mut *tx)
            .await
            .map_err(db("read clearing"))?
        {
            let d = get_str(&r, "day")?;
            if d == day {
                let c = serde_json::from_str(&get_str(&r, "result")?).map_err(|e| {
                    LedgerError::Corrupt {
                        what: format!("clearing_days {day}"),
                        detail: e.to_string(),
                    }
                })?;
                tx.rollback().await.map_err(db("rollback"))?;
                return Ok(Cleared::Already(Box::new(c)));
            }
            cleared_days.insert(d);
        }
        let rows = sqlx::query(
            "SELECT t.reader_id, t.seq, t.kind, t.city, t.card_id, t.amount, t.issued_at, \
             t.order_id, COALESCE(o.merchant_id, t.merchant_id) AS merchant_id, \
             COALESCE(o.fee_bp, t.fee_bp) AS fee_bp FROM transactions t \
             LEFT JOIN orders o ON o.order_id = t.order_id \
             WHERE t.cleared_day IS NULL AND t.kind IN ('load', 'purchase') \
             AND t.state IN ('committed', 'recovered-committed') AND t.issued_at < $1",
        )
        .bind(to_i64(to, "to")?)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read transactions to clear"))?;
        let mut candidates = Vec::new();
        for r in &rows {
            let amount = get_u64(r, "amount")?;
            let kind = get_str(r, "kind")?;
            let merchant = get_opt_str(r, "merchant_id")?;
            let fee_bp: Option<i64> = r.try_get("fee_bp").map_err(|e| LedgerError::Corrupt {
                what: "orders.fee_bp".into(),
                detail: e.to_string(),
            })?;
            let at = get_u64(r, "issued_at")?;
            let f = match (kind.as_str(), fee_bp) {
                ("purchase", Some(bp)) => fee(amount, u64::try_from(bp).unwrap_or(0)),
                _ => 0,
            };
            candidates.push(Candidate {
                item: Item {
                    section: String::new(),
                    kind,
                    day: String::new(),
                    reader_id: get_str(r, "reader_id")?,
                    seq: get_u64(r, "seq")?,
                    city: u32::try_from(get_u64(r, "city")?).unwrap_or(0),
                    card_id: get_str(r, "card_id")?,
                    merchant_id: merchant.unwrap_or_else(|| "-".into()),
                    order_id: get_opt_str(r, "order_id")?.unwrap_or_default(),
                    amount,
                    fee: i64::try_from(f).unwrap_or(i64::MAX),
                    at: bd.local(at),
                },
                refund: false,
                unix: at,
            });
        }
        let refunds = sqlx::query(
            "SELECT o.order_id, o.merchant_id, o.amount, o.fee_bp, o.refunded_at, t.reader_id, \
             t.seq, t.city, t.card_id FROM orders o \
             JOIN transactions t ON t.reader_id = o.reader_id AND t.seq = o.seq \
             WHERE o.state = 'refunded' AND o.refund_cleared_day IS NULL AND o.refunded_at < $1",
        )
        .bind(to_i64(to, "to")?)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read refunds to clear"))?;
        for r in &refunds {
            let amount = get_u64(r, "amount")?;
            let at = get_u64(r, "refunded_at")?;
            let f = fee(amount, get_u64(r, "fee_bp")?);
            candidates.push(Candidate {
                item: Item {
                    section: String::new(),
                    kind: "refund".into(),
                    day: String::new(),
                    reader_id: get_str(r, "reader_id")?,
                    seq: get_u64(r, "seq")?,
                    city: u32::try_from(get_u64(r, "city")?).unwrap_or(0),
                    card_id: get_str(r, "card_id")?,
                    merchant_id: get_str(r, "merchant_id")?,
                    order_id: get_str(r, "order_id")?,
                    amount,
                    fee: -i64::try_from(f).unwrap_or(i64::MAX),
                    at: bd.local(at),
                },
                refund: true,
                unix: at,
            });
        }
        // The day's own, and the late ones of days already cleared; a transaction of
        // an earlier day not cleared yet waits for its day.
        let mut items = Vec::new();
        for mut c in candidates {
            let own = bd.day_of(c.unix)?.to_string();
            c.item.section = if c.unix >= from && own == day {
                "day".into()
            } else if cleared_days.contains(&own) {
                "adjustment".into()
            } else {
                continue;
            };
            c.item.day = own;
            let r = if c.refund {
                sqlx::query(
                    "UPDATE orders SET refund_cleared_day = $1 WHERE order_id = $2 \
                     AND refund_cleared_day IS NULL",
                )
                .bind(day.as_str())
                .bind(c.item.order_id.as_str())
                .execute(&mut *tx)
                .await
            } else {
                sqlx::query(
                    "UPDATE transactions SET cleared_day = $1 WHERE reader_id = $2 AND seq = $3 \
                     AND cleared_day IS NULL",
                )
                .bind(day.as_str())
                .bind(c.item.reader_id.as_str())
                .bind(to_i64(c.item.seq, "seq")?)
                .execute(&mut *tx)
                .await
            }
            .map_err(db("mark cleared"))?;
            if r.rows_affected() != 1 {
                tx.rollback().await.map_err(db("rollback"))?;
                return Err(ClearingError::Raced { day });
            }
            items.push(c.item);
        }
        items.sort_by(|a, b| {
            (a.section != "day", &a.at, &a.reader_id, a.seq, &a.kind).cmp(&(
                b.section != "day",
                &b.at,
                &b.reader_id,
                b.seq,
                &b.kind,
            ))
        });
        let clearing = Clearing {
            lines: lines(&items),
            totals: total(&items),
            day: day.clone(),
            zone: bd.zone().into(),
            cutoff: bd.cutoff(),
            from: bd.local(from),
            to: bd.local(to),
            run_at: now,
            items,
        };
        let text = serde_json::to_string(&clearing).map_err(|e| LedgerError::Corrupt {
            what: format!("clearing {day}"),
            detail: e.to_string(),
        })?;
        let stored = sqlx::query(
            "INSERT INTO clearing_days (day, zone, cutoff, run_at, result) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(day.as_str())
        .bind(bd.zone())
        .bind(bd.cutoff())
        .bind(to_i64(now, "run_at")?)
        .bind(text)
        .execute(&mut *tx)
        .await;
        match stored {
            Ok(_) => {
                tx.commit().await.map_err(db("commit clearing"))?;
                Ok(Cleared::Now(Box::new(clearing)))
            }
            Err(e) => {
                let _ = tx.rollback().await;
                match db("store clearing")(e) {
                    // Cleared by another run meanwhile: its result.
                    LedgerError::Conflict { .. } => match self.cleared(&day).await? {
                        Some(c) => Ok(Cleared::Already(Box::new(c))),
                        None => Err(ClearingError::Raced { day }),
                    },
                    other => Err(other.into()),
                }
            }
        }
    }
}

fn apply(line: &mut Line, it: &Item) {
    match it.kind.as_str() {
        "load" => line.loads.add(it.amount),
        "purchase" => line.purchases.add(it.amount),
        _ => line.refunds.add(it.amount),
    }
    line.fees = line.fees.saturating_add(it.fee);
}

fn net(line: &mut Line) {
    let purchases = i64::try_from(line.purchases.sum).unwrap_or(i64::MAX);
    let refunds = i64::try_from(line.refunds.sum).unwrap_or(i64::MAX);
    line.net = purchases - refunds - line.fees;
}

/// The day's lines, then the adjustments' lines: per city, merchant and reader.
fn lines(items: &[Item]) -> Vec<Line> {
    let mut out = Vec::new();
    for section in ["day", "adjustment"] {
        let mut groups: BTreeMap<(u8, String), Line> = BTreeMap::new();
        for it in items.iter().filter(|i| i.section == section) {
            let mut keys = vec![(0u8, "city", format!("{:04}", it.city))];
            if it.kind != "load" {
                keys.push((1, "merchant", it.merchant_id.clone()));
            }
            keys.push((2, "reader", it.reader_id.clone()));
            for (order, scope, id) in keys {
                let line = groups.entry((order, id.clone())).or_insert_with(|| Line {
                    section: section.into(),
                    scope: scope.into(),
                    id: if scope == "city" {
                        it.city.to_string()
                    } else {
                        id.clone()
                    },
                    ..Line::default()
                });
                apply(line, it);
            }
        }
        for (_, mut line) in groups {
            if line.scope == "merchant" {
                net(&mut line);
            }
            out.push(line);
        }
    }
    out
}

fn total(items: &[Item]) -> Line {
    let mut t = Line {
        section: "total".into(),
        scope: "all".into(),
        id: "-".into(),
        ..Line::default()
    };
    for it in items {
        apply(&mut t, it);
    }
    net(&mut t);
    t
}

/// The lines as CSV (header first).
pub fn lines_csv(c: &Clearing) -> String {
    let mut s = String::from(
        "day,section,scope,id,loads_count,loads_sum,purchases_count,purchases_sum,refunds_count,refunds_sum,fees,net\n",
    );
    for l in c.lines.iter().chain(std::iter::once(&c.totals)) {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.day,
            l.section,
            l.scope,
            csv_field(&l.id),
            l.loads.count,
            l.loads.sum,
            l.purchases.count,
            l.purchases.sum,
            l.refunds.count,
            l.refunds.sum,
            l.fees,
            l.net
        ));
    }
    s
}

/// The counted transactions as CSV (header first).
pub fn items_csv(c: &Clearing) -> String {
    let mut s = String::from(
        "day,section,own_day,kind,reader_id,seq,city,card_id,merchant_id,order_id,amount,fee,at\n",
    );
    for i in &c.items {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.day,
            i.section,
            i.day,
            i.kind,
            csv_field(&i.reader_id),
            i.seq,
            i.city,
            i.card_id,
            csv_field(&i.merchant_id),
            i.order_id,
            i.amount,
            i.fee,
            i.at
        ));
    }
    s
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The signed summary of a cleared day's (or a reconciliation's) files (`docs/clearing.md` "Verifying").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `cardvm-clearing-v1` or `cardvm-reconcile-v1`.
    pub format: String,
    /// The day (clearing) or the date it was made (reconciliation).
    pub day: String,
    /// Zone and cut-off.
    pub zone: String,
    /// `HH:MM`.
    pub cutoff: String,
    /// The totals (a clearing's [`Line`], a reconciliation's counts).
    pub totals: serde_json::Value,
    /// Each file beside the summary and its SM3 (hex).
    pub files: Vec<(String, String)>,
    /// The key id (hex) of the card company key that signed it.
    pub issuer_key_id: String,
    /// SM2 signature (hex `r ‖ s`, default distinguishing id) over
    /// [`Summary::signing_input`].
    pub signature: String,
}

impl Summary {
    /// What is signed: the format, a line feed, and the summary's JSON with an empty
    /// `signature`.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = String::new();
        let mut out = format!("{}\n", self.format).into_bytes();
        out.extend_from_slice(
            serde_json::to_string(&unsigned)
                .unwrap_or_default()
                .as_bytes(),
        );
        out
    }
}

use sqlx::Row;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_round_half_up_to_a_fen() {
        assert_eq!(fee(10_000, 60), 60); // 100.00 at 0.60 %
        assert_eq!(fee(1_234, 60), 7); // 7.404
        assert_eq!(fee(1_250, 60), 8); // 7.5 → 8
        assert_eq!(fee(1_249, 60), 7); // 7.494
        assert_eq!(fee(0, 60), 0);
        assert_eq!(fee(u64::MAX, 10_000), u64::MAX);
    }

    #[test]
    fn a_shanghai_day_is_utc_16_to_16() {
        let bd = BusinessDay::new(DEFAULT_ZONE, "00:00").expect("zone");
        let d = BusinessDay::parse_date("2026-12-07").expect("date");
        let (from, to) = bd.bounds(d).expect("bounds");
        // 2026-12-06T16:00:00Z .. 2026-12-07T16:00:00Z
        assert_eq!(from, 1_796_572_800);
        assert_eq!(to - from, 86_400);
        assert_eq!(bd.day_of(from).expect("day").to_string(), "2026-12-07");
        assert_eq!(bd.day_of(from - 1).expect("day").to_string(), "2026-12-06");
        assert_eq!(bd.day_of(to).expect("day").to_string(), "2026-12-08");
        assert_eq!(bd.local(from), "2026-12-07T00:00:00+08:00");
    }

    #[test]
    fn a_cutoff_moves_the_evening_to_the_next_day() {
        let bd = BusinessDay::new(DEFAULT_ZONE, "23:00").expect("zone");
        let d = BusinessDay::parse_date("2026-12-07").expect("date");
        let (from, to) = bd.bounds(d).expect("bounds");
        assert_eq!(bd.local(from), "2026-12-06T23:00:00+08:00");
        assert_eq!(bd.local(to), "2026-12-07T23:00:00+08:00");
        assert_eq!(bd.day_of(from).expect("day").to_string(), "2026-12-07");
        assert_eq!(bd.day_of(to - 1).expect("day").to_string(), "2026-12-07");
        assert_eq!(bd.day_of(to).expect("day").to_string(), "2026-12-08");
    }

    #[test]
    fn a_zone_with_daylight_saving_has_a_23_hour_day() {
        let bd = BusinessDay::new("Europe/Berlin", "00:00").expect("zone");
        let d = BusinessDay::parse_date("2026-03-29").expect("date");
        let (from, to) = bd.bounds(d).expect("bounds");
        assert_eq!(to - from, 23 * 3600);
    }

    #[test]
    fn bad_config_is_one_line() {
        for (z, c) in [
            ("Mars/Olympus", "00:00"),
            (DEFAULT_ZONE, "25:00"),
            (DEFAULT_ZONE, "7"),
        ] {
            let e = BusinessDay::new(z, c).expect_err("refused").to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(BusinessDay::parse_date("2026-13-01").is_err());
        assert!(BusinessDay::parse_date("20261201").is_err());
    }

    fn item(section: &str, kind: &str, merchant: &str, amount: u64, fee: i64) -> Item {
        Item {
            section: section.into(),
            kind: kind.into(),
            day: "2026-12-07".into(),
            reader_id: "R1".into(),
            seq: 1,
            city: 731,
            card_id: "C".into(),
            merchant_id: merchant.into(),
            order_id: String::new(),
            amount,
            fee,
            at: String::new(),
        }
    }

    #[test]
    fn merchant_net_is_purchases_less_refunds_and_fees() {
        let items = [
            item("day", "load", "-", 10_000, 0),
            item("day", "purchase", "shop", 5_000, 30),
            item("day", "purchase", "shop", 2_000, 12),
            item("day", "refund", "shop", 2_000, -12),
            item("adjustment", "purchase", "cafe", 1_000, 6),
        ];
        let ls = lines(&items);
        let shop = ls
            .iter()
            .find(|l| l.scope == "merchant" && l.id == "shop")
            .expect("shop");
        assert_eq!(
            shop.purchases,
            Tally {
                count: 2,
                sum: 7_000
            }
        );
        assert_eq!(
            shop.refunds,
            Tally {
                count: 1,
                sum: 2_000
            }
        );
        assert_eq!(shop.fees, 30);
        assert_eq!(shop.net, 7_000 - 2_000 - 30);
        let cafe = ls
            .iter()
            .find(|l| l.scope == "merchant" && l.id == "cafe")
            .expect("cafe");
        assert_eq!(cafe.section, "adjustment");
        let city = ls
            .iter()
            .find(|l| l.scope == "city" && l.section == "day")
            .expect("city");
        assert_eq!(
            city.loads,
            Tally {
                count: 1,
                sum: 10_000
            }
        );
        let t = total(&items);
        assert_eq!(t.purchases.sum, 8_000);
        assert_eq!(t.net, 8_000 - 2_000 - 36);
        let csv = lines_csv(&Clearing {
            day: "2026-12-07".into(),
            zone: DEFAULT_ZONE.into(),
            cutoff: "00:00".into(),
            from: String::new(),
            to: String::new(),
            run_at: 0,
            lines: ls,
            items: items.to_vec(),
            totals: t,
        });
        assert!(
            csv.contains("2026-12-07,day,merchant,shop,0,0,2,7000,1,2000,30,4970\n"),
            "{csv}"
        );
    }

    #[test]
    fn csv_fields_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
