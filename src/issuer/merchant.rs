//! Merchants and their payment orders, in the ledger (`docs/clearing.md`).
//!
//! A merchant is registered by the card company with its SM2 public key (it signs every
//! merchant request), a fee rate and a notification URL. It creates **orders**; a
//! cardholder pays one with the card's purse through a host-secured purchase.
//!
//! An order never records "paid" itself: it names the purchase transaction that pays
//! it, bound in the same database transaction that records the bundle
//! (`bind_order`), and it is paid exactly when that transaction is committed. So the
//! order, the ledger and the clearing cannot disagree, and two cardholders racing for
//! one order get one bundle: the binding is an `UPDATE … WHERE` whose row count the
//! database decides.

use sqlx::any::AnyRow;

use super::ledger::{
    Ledger, LedgerError, NewTxn, TxnState, db, get_opt_str, get_opt_u64, get_str, get_u64, to_i64,
};

/// A registered merchant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantRow {
    /// Its id (letters, digits, `-`, `_`, `.`; 1–32 characters).
    pub merchant_id: String,
    /// Display name (shown to the cardholder before paying).
    pub name: String,
    /// Service fee, basis points of each payment (60 = 0.60 %).
    pub fee_bp: u64,
    /// Where the card company pays it (free text for the bank file).
    pub account: String,
    /// Its SM2 public key (SEC1, upper-case hex).
    pub public_key: String,
    /// Where paid notifications are posted.
    pub notify_url: Option<String>,
    /// A disabled merchant's requests are refused and its orders cannot be paid.
    pub enabled: bool,
    /// Unix seconds.
    pub added_at: u64,
}

/// Whether `id` may name a merchant or an order: 1–32 of `A-Z a-z 0-9 - _ .`.
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Where an order stands, as the merchant and the cardholder see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderState {
    /// Waiting for the cardholder.
    Open,
    /// A purchase for it is on a card now, or its outcome is being recovered.
    Paying,
    /// Its purchase committed on the card.
    Paid,
    /// The merchant cancelled it before it was paid.
    Cancelled,
    /// Not paid before its expiry.
    Expired,
    /// Paid, then refunded by the merchant.
    Refunded,
}

impl OrderState {
    /// The name used in the API and the ledger.
    pub fn name(self) -> &'static str {
        match self {
            OrderState::Open => "open",
            OrderState::Paying => "paying",
            OrderState::Paid => "paid",
            OrderState::Cancelled => "cancelled",
            OrderState::Expired => "expired",
            OrderState::Refunded => "refunded",
        }
    }
}

/// An order with the state of the transaction that pays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// The card company's id for it.
    pub order_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The merchant's own order number (unique per merchant: creating it again returns
    /// this order).
    pub merchant_order: String,
    /// Fen.
    pub amount: u64,
    /// What is bought (shown to the cardholder).
    pub description: String,
    /// The merchant's fee rate when the order was made (basis points).
    pub fee_bp: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds: no purchase for it is issued from then on.
    pub expires_at: u64,
    /// `open`, `cancelled` or `refunded` as stored; see [`OrderRow::state`].
    pub stored_state: String,
    /// The purchase transaction bound to it (reader, seq).
    pub txn: Option<(String, u64)>,
    /// That transaction's state, expiry and whether the card company answered its host
    /// command (then the card may have committed even after the bundle expired).
    pub txn_state: Option<TxnState>,
    /// Unix seconds.
    pub txn_expires_at: Option<u64>,
    /// The card company issued the purchase's MAC1.
    pub txn_host_answered: bool,
    /// The card that paid (hex), once a purchase is bound.
    pub card_id: Option<String>,
    /// When the purchase settled (Unix seconds).
    pub paid_at: Option<u64>,
    /// Unix seconds.
    pub refunded_at: Option<u64>,
    /// Why it was refunded.
    pub refund_note: Option<String>,
    /// Notification attempts so far.
    pub notify_attempts: u64,
    /// When the merchant acknowledged the paid notification.
    pub notify_acked_at: Option<u64>,
    /// The last notification failure.
    pub notify_error: Option<String>,
}

impl OrderRow {
    /// Where the order stands at `now` (module docs: read from its transaction).
    pub fn state(&self, now: u64) -> OrderState {
        match self.stored_state.as_str() {
            "cancelled" => return OrderState::Cancelled,
            "refunded" => return OrderState::Refunded,
            _ => {}
        }
        match self.txn_state {
            Some(TxnState::Committed | TxnState::RecoveredCommitted) => return OrderState::Paid,
            Some(TxnState::Unknown) => return OrderState::Paying,
            Some(TxnState::Issued)
                if self.txn_host_answered || self.txn_expires_at.is_some_and(|e| e > now) =>
            {
                return OrderState::Paying;
            }
            _ => {}
        }
        if now >= self.expires_at {
            OrderState::Expired
        } else {
            OrderState::Open
        }
    }
}

/// A new order.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// The card company's id for it.
    pub order_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The merchant's order number.
    pub merchant_order: String,
    /// Fen (> 0).
    pub amount: u64,
    /// Shown to the cardholder.
    pub description: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A paid notification due for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueNotification {
    /// The order.
    pub order: OrderRow,
    /// Where to post it.
    pub url: String,
    /// The value of `notify_next_at` the claim is made against.
    pub next_at: u64,
}

const ORDER_SELECT: &str = "SELECT o.order_id, o.merchant_id, o.merchant_order, o.amount, \
     o.description, o.fee_bp, o.created_at, o.expires_at, o.state, o.reader_id, o.seq, \
     o.refunded_at, o.refund_note, o.notify_attempts, o.notify_next_at, o.notify_acked_at, \
     o.notify_error, t.state AS txn_state, t.expires_at AS txn_expires_at, t.card_id, \
     t.settled_at, \
     (SELECT COUNT(*) FROM host_answers h WHERE h.reader_id = o.reader_id AND h.seq = o.seq) \
     AS host_n FROM orders o \
     LEFT JOIN transactions t ON t.reader_id = o.reader_id AND t.seq = o.seq";

fn order_from_row(row: &AnyRow) -> Result<OrderRow, LedgerError> {
    let txn_state = get_opt_str(row, "txn_state")?
        .map(|s| {
            s.parse::<TxnState>()
                .map_err(|detail| LedgerError::Corrupt {
                    what: "transactions.state".into(),
                    detail,
                })
        })
        .transpose()?;
    let paid = matches!(
        txn_state,
        Some(TxnState::Committed | TxnState::RecoveredCommitted)
    );
    let reader: Option<String> = get_opt_str(row, "reader_id")?;
    let seq = get_opt_u64(row, "seq")?;
    Ok(OrderRow {
        order_id: get_str(row, "order_id")?,
        merchant_id: get_str(row, "merchant_id")?,
        merchant_order: get_str(row, "merchant_order")?,
        amount: get_u64(row, "amount")?,
        description: get_str(row, "description")?,
        fee_bp: get_u64(row, "fee_bp")?,
        created_at: get_u64(row, "created_at")?,
        expires_at: get_u64(row, "expires_at")?,
        stored_state: get_str(row, "state")?,
        txn: reader.zip(seq),
        txn_state,
        txn_expires_at: get_opt_u64(row, "txn_expires_at")?,
        txn_host_answered: get_u64(row, "host_n")? > 0,
        card_id: get_opt_str(row, "card_id")?,
        paid_at: if paid {
            get_opt_u64(row, "settled_at")?
        } else {
            None
        },
        refunded_at: get_opt_u64(row, "refunded_at")?,
        refund_note: get_opt_str(row, "refund_note")?,
        notify_attempts: get_u64(row, "notify_attempts")?,
        notify_acked_at: get_opt_u64(row, "notify_acked_at")?,
        notify_error: get_opt_str(row, "notify_error")?,
    })
}

fn merchant_from_row(row: &AnyRow) -> Result<MerchantRow, LedgerError> {
    Ok(MerchantRow {
        merchant_id: get_str(row, "merchant_id")?,
        name: get_str(row, "name")?,
        fee_bp: get_u64(row, "fee_bp")?,
        account: get_str(row, "account")?,
        public_key: get_str(row, "public_key")?,
        notify_url: get_opt_str(row, "notify_url")?,
        enabled: get_u64(row, "enabled")? != 0,
        added_at: get_u64(row, "added_at")?,
    })
}

/// The SQL condition that no transaction holds the order row of `table` at time `now`
/// (a bind parameter): none is bound, or the one bound failed, or its bundle expired
/// before the card company answered its host command (then the card cannot have it).
pub(super) fn not_held(table: &str, now: &str) -> String {
    format!(
        "({table}.reader_id IS NULL OR EXISTS ( \
             SELECT 1 FROM transactions b WHERE b.reader_id = {table}.reader_id \
             AND b.seq = {table}.seq AND (b.state IN ('failed', 'recovered-failed') \
             OR (b.state = 'issued' AND b.expires_at <= {now} AND NOT EXISTS ( \
                 SELECT 1 FROM host_answers h WHERE h.reader_id = b.reader_id \
                 AND h.seq = b.seq)))))"
    )
}

/// Binds `order` to the purchase `t` inside the transaction that records it: only an
/// open, unexpired order of exactly `t.amount` whose merchant is enabled, and only when
/// no other purchase holds it (none bound, or the bound one failed, or expired before
/// the card company answered its host command). `Ok(false)`: not bound, roll back.
pub(super) async fn bind_order(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    order: &str,
    t: &NewTxn,
) -> Result<bool, LedgerError> {
    let now = to_i64(t.issued_at, "issued_at")?;
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE orders SET reader_id = $1, seq = $2 \
         WHERE order_id = $3 AND state = 'open' AND expires_at > $4 AND amount = $5 \
         AND EXISTS (SELECT 1 FROM merchants m WHERE m.merchant_id = orders.merchant_id \
                     AND m.enabled = 1) AND {}",
        not_held("orders", "$4")
    )))
    .bind(t.reader_id.as_str())
    .bind(to_i64(t.seq, "seq")?)
    .bind(order)
    .bind(now)
    .bind(to_i64(t.amount, "amount")?)
    .execute(&mut **tx)
    .await
    .map_err(db("bind order"))?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query("UPDATE transactions SET order_id = $1 WHERE reader_id = $2 AND seq = $3")
        .bind(order)
        .bind(t.reader_id.as_str())
        .bind(to_i64(t.seq, "seq")?)
        .execute(&mut **tx)
        .await
        .map_err(db("mark purchase"))?;
    Ok(true)
}

/// What [`Ledger::create_order`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCreated {
    /// A new order.
    Now(Box<OrderRow>),
    /// The merchant made this order number before, with the same amount and
    /// description: that order (a retried request).
    Already(Box<OrderRow>),
    /// The merchant made this order number before with another amount or description.
    Different(Box<OrderRow>),
    /// The merchant is not registered, or disabled: no order.
    NoMerchant,
}

impl Ledger {
    /// Registers or replaces a merchant (its orders stay).
    pub async fn set_merchant(&self, m: &MerchantRow) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO merchants (merchant_id, name, fee_bp, account, public_key, notify_url, \
             enabled, added_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (merchant_id) DO UPDATE SET name = $2, fee_bp = $3, account = $4, \
             public_key = $5, notify_url = $6, enabled = $7",
        )
        .bind(m.merchant_id.as_str())
        .bind(m.name.as_str())
        .bind(to_i64(m.fee_bp, "fee_bp")?)
        .bind(m.account.as_str())
        .bind(m.public_key.as_str())
        .bind(m.notify_url.clone())
        .bind(i64::from(m.enabled))
        .bind(to_i64(m.added_at, "added_at")?)
        .execute(&self.pool)
        .await
        .map_err(db("record merchant"))?;
        Ok(())
    }

    /// One merchant.
    pub async fn merchant(&self, merchant_id: &str) -> Result<Option<MerchantRow>, LedgerError> {
        sqlx::query("SELECT * FROM merchants WHERE merchant_id = $1")
            .bind(merchant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read merchant"))?
            .as_ref()
            .map(merchant_from_row)
            .transpose()
    }

    /// Every merchant, by id.
    pub async fn merchants(&self) -> Result<Vec<MerchantRow>, LedgerError> {
        sqlx::query("SELECT * FROM merchants ORDER BY merchant_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list merchants"))?
            .iter()
            .map(merchant_from_row)
            .collect()
    }

    /// Enables or disables a merchant. `Ok(false)`: no such merchant.
    pub async fn set_merchant_enabled(
        &self,
        merchant_id: &str,
        enabled: bool,
    ) -> Result<bool, LedgerError> {
        let r = sqlx::query("UPDATE merchants SET enabled = $1 WHERE merchant_id = $2")
            .bind(i64::from(enabled))
            .bind(merchant_id)
            .execute(&self.pool)
            .await
            .map_err(db("enable merchant"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Creates an order at the merchant's current fee rate; a merchant order number
    /// made before returns that order (the database's unique key decides a race).
    pub async fn create_order(&self, o: &NewOrder) -> Result<OrderCreated, LedgerError> {
        let existing = |row: OrderRow| {
            if row.amount == o.amount && row.description == o.description {
                OrderCreated::Already(Box::new(row))
            } else {
                OrderCreated::Different(Box::new(row))
            }
        };
        if let Some(row) = self
            .order_by_merchant(&o.merchant_id, &o.merchant_order)
            .await?
        {
            return Ok(existing(row));
        }
        let r = sqlx::query(
            "INSERT INTO orders (order_id, merchant_id, merchant_order, amount, description, \
             fee_bp, created_at, expires_at, state) \
             SELECT $1, m.merchant_id, $3, $4, $5, m.fee_bp, $6, $7, 'open' FROM merchants m \
             WHERE m.merchant_id = $2 AND m.enabled = 1",
        )
        .bind(o.order_id.as_str())
        .bind(o.merchant_id.as_str())
        .bind(o.merchant_order.as_str())
        .bind(to_i64(o.amount, "amount")?)
        .bind(o.description.as_str())
        .bind(to_i64(o.created_at, "created_at")?)
        .bind(to_i64(o.expires_at, "expires_at")?)
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => {}
            Ok(_) => return Ok(OrderCreated::NoMerchant),
            Err(e) => match db("create order")(e) {
                // The same merchant order number raced in: that order.
                LedgerError::Conflict { .. } => {
                    if let Some(row) = self
                        .order_by_merchant(&o.merchant_id, &o.merchant_order)
                        .await?
                    {
                        return Ok(existing(row));
                    }
                    return Err(LedgerError::Conflict {
                        op: "create order",
                        detail: "order id taken".into(),
                    });
                }
                other => return Err(other),
            },
        }
        match self.order(&o.order_id).await? {
            Some(row) => Ok(OrderCreated::Now(Box::new(row))),
            None => Err(LedgerError::Corrupt {
                what: format!("order {}", o.order_id),
                detail: "vanished after it was created".into(),
            }),
        }
    }

    /// One order with its transaction's state.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>, LedgerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ORDER_SELECT} WHERE o.order_id = $1"
        )))
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read order"))?
        .as_ref()
        .map(order_from_row)
        .transpose()
    }

    /// A merchant's order by its own order number.
    pub async fn order_by_merchant(
        &self,
        merchant_id: &str,
        merchant_order: &str,
    ) -> Result<Option<OrderRow>, LedgerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ORDER_SELECT} WHERE o.merchant_id = $1 AND o.merchant_order = $2"
        )))
        .bind(merchant_id)
        .bind(merchant_order)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read order"))?
        .as_ref()
        .map(order_from_row)
        .transpose()
    }

    /// A merchant's orders, newest first (at most `limit`, 0 for all).
    pub async fn orders(
        &self,
        merchant_id: &str,
        limit: u32,
    ) -> Result<Vec<OrderRow>, LedgerError> {
        let mut sql = format!(
            "{ORDER_SELECT} WHERE o.merchant_id = $1 ORDER BY o.created_at DESC, o.order_id"
        );
        if limit > 0 {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(merchant_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db("list orders"))?
            .iter()
            .map(order_from_row)
            .collect()
    }

    /// Cancels an order that no purchase holds (as the binding of a purchase decides holding).
    /// `Ok(false)`: it is paid, being paid, cancelled or refunded — nothing changed.
    pub async fn cancel_order(&self, order_id: &str, now: u64) -> Result<bool, LedgerError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE orders SET state = 'cancelled' WHERE order_id = $1 AND state = 'open' \
             AND {}",
            not_held("orders", "$2")
        )))
        .bind(order_id)
        .bind(to_i64(now, "now")?)
        .execute(&self.pool)
        .await
        .map_err(db("cancel order"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Refunds a paid order (its purchase committed): a record of what the card company
    /// owes the cardholder (docs/clearing.md "Refunds"). `Ok(false)`: not paid, or
    /// refunded already — nothing changed.
    pub async fn refund_order(
        &self,
        order_id: &str,
        now: u64,
        note: &str,
    ) -> Result<bool, LedgerError> {
        let r = sqlx::query(
            "UPDATE orders SET state = 'refunded', refunded_at = $2, refund_note = $3 \
             WHERE order_id = $1 AND state = 'open' AND EXISTS ( \
                 SELECT 1 FROM transactions b WHERE b.reader_id = orders.reader_id \
                 AND b.seq = orders.seq \
                 AND b.state IN ('committed', 'recovered-committed'))",
        )
        .bind(order_id)
        .bind(to_i64(now, "now")?)
        .bind(note)
        .execute(&self.pool)
        .await
        .map_err(db("refund order"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Paid orders whose notification is due at `now` and not acknowledged (oldest
    /// first, at most `limit`). Nothing records a notification as owed: it is owed
    /// exactly while the purchase is committed and the merchant has not acknowledged.
    pub async fn due_notifications(
        &self,
        now: u64,
        limit: u32,
    ) -> Result<Vec<DueNotification>, LedgerError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ORDER_SELECT} JOIN merchants m ON m.merchant_id = o.merchant_id \
             WHERE t.state IN ('committed', 'recovered-committed') \
             AND o.notify_acked_at IS NULL AND m.notify_url IS NOT NULL \
             AND o.notify_next_at <= $1 ORDER BY o.notify_next_at, o.order_id LIMIT {limit}"
        )))
        .bind(to_i64(now, "now")?)
        .fetch_all(&self.pool)
        .await
        .map_err(db("due notifications"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let order = order_from_row(row)?;
            let merchant = self.merchant(&order.merchant_id).await?;
            if let Some(url) = merchant.and_then(|m| m.notify_url) {
                out.push(DueNotification {
                    next_at: get_u64(row, "notify_next_at")?,
                    order,
                    url,
                });
            }
        }
        Ok(out)
    }

    /// Claims a due notification until `until` (one instance delivers it at a time; a
    /// claim left by a dead instance runs out). `Ok(false)`: another instance has it.
    pub async fn claim_notification(
        &self,
        order_id: &str,
        next_at: u64,
        until: u64,
    ) -> Result<bool, LedgerError> {
        let r = sqlx::query(
            "UPDATE orders SET notify_next_at = $3, notify_attempts = notify_attempts + 1 \
             WHERE order_id = $1 AND notify_next_at = $2 AND notify_acked_at IS NULL",
        )
        .bind(order_id)
        .bind(to_i64(next_at, "next_at")?)
        .bind(to_i64(until, "until")?)
        .execute(&self.pool)
        .await
        .map_err(db("claim notification"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a delivery: acknowledged (`error` None), or failed and tried again at
    /// `retry_at`.
    pub async fn notification_result(
        &self,
        order_id: &str,
        now: u64,
        error: Option<&str>,
        retry_at: u64,
    ) -> Result<(), LedgerError> {
        let q = match error {
            None => sqlx::query(
                "UPDATE orders SET notify_acked_at = $2, notify_error = NULL WHERE order_id = $1",
            )
            .bind(order_id)
            .bind(to_i64(now, "now")?),
            Some(e) => sqlx::query(
                "UPDATE orders SET notify_next_at = $2, notify_error = $3 \
                 WHERE order_id = $1 AND notify_acked_at IS NULL",
            )
            .bind(order_id)
            .bind(to_i64(retry_at, "retry_at")?)
            .bind(e.chars().take(300).collect::<String>()),
        };
        q.execute(&self.pool)
            .await
            .map_err(db("record notification"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("shop-1.a_b"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(33)));
        assert!(!valid_id("商户"));
    }

    fn order(stored: &str, txn: Option<TxnState>, txn_expires: u64, host: bool) -> OrderRow {
        OrderRow {
            order_id: "o".into(),
            merchant_id: "m".into(),
            merchant_order: "1".into(),
            amount: 100,
            description: String::new(),
            fee_bp: 0,
            created_at: 0,
            expires_at: 1000,
            stored_state: stored.into(),
            txn: txn.map(|_| ("R".into(), 1)),
            txn_state: txn,
            txn_expires_at: txn.map(|_| txn_expires),
            txn_host_answered: host,
            card_id: None,
            paid_at: None,
            refunded_at: None,
            refund_note: None,
            notify_attempts: 0,
            notify_acked_at: None,
            notify_error: None,
        }
    }

    #[test]
    fn an_order_is_paid_exactly_when_its_purchase_committed() {
        use OrderState as O;
        use TxnState as T;
        let cases = [
            (order("open", None, 0, false), 10, O::Open),
            (order("open", None, 0, false), 1000, O::Expired),
            (order("open", Some(T::Issued), 500, false), 10, O::Paying),
            // Expired before the card company answered: the card cannot have paid.
            (order("open", Some(T::Issued), 500, false), 600, O::Open),
            // Answered: the card may have paid after the bundle's expiry.
            (order("open", Some(T::Issued), 500, true), 2000, O::Paying),
            (order("open", Some(T::Unknown), 500, true), 2000, O::Paying),
            (order("open", Some(T::Failed), 500, true), 10, O::Open),
            (
                order("open", Some(T::RecoveredFailed), 500, true),
                2000,
                O::Expired,
            ),
            (order("open", Some(T::Committed), 500, true), 2000, O::Paid),
            (
                order("open", Some(T::RecoveredCommitted), 500, true),
                10,
                O::Paid,
            ),
            (order("cancelled", None, 0, false), 10, O::Cancelled),
            (
                order("refunded", Some(T::Committed), 0, true),
                10,
                O::Refunded,
            ),
        ];
        for (o, now, want) in cases {
            assert_eq!(o.state(now), want, "{o:?} at {now}");
        }
    }
}
