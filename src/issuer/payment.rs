//! Recharges paid first (`docs/clearing.md` "Recharges paid first"): payment providers,
//! their signed notifications, and the recharge orders a load must present.
//!
//! In a city that requires it, a load gets a bundle only for a **paid** recharge order of
//! exactly that card and amount, not expired, not used. An order is marked paid only by
//! its provider's notification, signed with the provider's own key — SM2 or RSA-SHA256,
//! the provider's choice. The order names the load that uses it, bound in the database
//! transaction that records the bundle (as a merchant order is), and is used exactly
//! when that load committed: a load that failed frees it for the next tap.

use sqlx::any::AnyRow;

use super::ledger::{
    Ledger, LedgerError, NewTxn, TxnState, db, get_opt_str, get_opt_u64, get_str, get_u64, to_i64,
};

/// How a provider signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderAlg {
    /// SM2 with the default distinguishing id (public key: SEC1, hex).
    Sm2,
    /// RSA PKCS#1 v1.5 with SHA-256 (public key: SPKI PEM, 2048 bits or more).
    RsaSha256,
}

impl ProviderAlg {
    /// `sm2` or `rsa-sha256`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderAlg::Sm2 => "sm2",
            ProviderAlg::RsaSha256 => "rsa-sha256",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sm2" => Some(ProviderAlg::Sm2),
            "rsa-sha256" => Some(ProviderAlg::RsaSha256),
            _ => None,
        }
    }

    /// Checks a public key's form (and an RSA key's size) before it is registered.
    pub fn check_key(self, public_key: &str) -> Result<(), String> {
        match self {
            ProviderAlg::Sm2 => super::ledger::unhex(public_key)
                .and_then(|b| crate::crypto::sm2::Sm2PublicKey::from_sec1_bytes(&b).ok())
                .map(|_| ())
                .ok_or_else(|| "not an SM2 public key (SEC1 hex)".to_string()),
            ProviderAlg::RsaSha256 => {
                use rsa::pkcs8::DecodePublicKey;
                use rsa::traits::PublicKeyParts;
                let k = rsa::PublicKey::from_public_key_pem(public_key)
                    .map_err(|e| format!("not an RSA public key (SPKI PEM): {e}"))?;
                let bits = k.n().bit_width();
                if bits < 2048 {
                    return Err(format!("an RSA key of {bits} bits: at least 2048"));
                }
                Ok(())
            }
        }
    }

    /// Verifies `signature` over `msg` under `public_key` (as registered).
    pub fn verify(self, public_key: &str, msg: &[u8], signature: &[u8]) -> Result<(), String> {
        match self {
            ProviderAlg::Sm2 => {
                let key = super::ledger::unhex(public_key)
                    .and_then(|b| crate::crypto::sm2::Sm2PublicKey::from_sec1_bytes(&b).ok())
                    .ok_or_else(|| "the provider's SM2 key is unreadable".to_string())?;
                let sig = <[u8; 64]>::try_from(signature)
                    .map_err(|_| "an SM2 signature is 64 bytes".to_string())?;
                key.verify(msg, &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
            ProviderAlg::RsaSha256 => {
                use rsa::pkcs8::DecodePublicKey;
                use rsa::signature::Verifier;
                let key = rsa::PublicKey::from_public_key_pem(public_key)
                    .map_err(|e| format!("the provider's RSA key is unreadable: {e}"))?;
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key);
                let sig = rsa::pkcs1v15::Signature::try_from(signature)
                    .map_err(|_| "not an RSA signature".to_string())?;
                vk.verify(msg, &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
        }
    }
}

/// A registered payment provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRow {
    /// Its id (as [`super::merchant::valid_id`]).
    pub provider_id: String,
    /// Its name.
    pub name: String,
    /// How it signs.
    pub alg: ProviderAlg,
    /// Its public key (SEC1 hex for SM2, SPKI PEM for RSA).
    pub public_key: String,
    /// A disabled provider's notifications are refused.
    pub enabled: bool,
    /// Unix seconds.
    pub added_at: u64,
}

/// Where a recharge order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RechargeState {
    /// Not paid (yet).
    Unpaid,
    /// The provider reported another amount: no load; the card company settles the
    /// difference with the provider and the cardholder.
    Mispaid,
    /// Paid: a load of its amount onto its card may start.
    Paid,
    /// A load for it is on the card, or `unknown` and being recovered.
    Loading,
    /// Its load committed: used.
    Loaded,
    /// Not loaded before its expiry.
    Expired,
}

impl RechargeState {
    /// The name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            RechargeState::Unpaid => "unpaid",
            RechargeState::Mispaid => "mispaid",
            RechargeState::Paid => "paid",
            RechargeState::Loading => "loading",
            RechargeState::Loaded => "loaded",
            RechargeState::Expired => "expired",
        }
    }
}

/// A recharge order with the state of the load bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RechargeOrderRow {
    /// The card company's id for it.
    pub order_id: String,
    /// City.
    pub city: u32,
    /// The card it loads (upper-case hex).
    pub card_id: String,
    /// Fen.
    pub amount: u64,
    /// The provider that collects the money.
    pub provider_id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds: no load for it starts from then on.
    pub expires_at: u64,
    /// What the provider reported paid.
    pub paid_amount: Option<u64>,
    /// The provider's own reference of the payment.
    pub provider_ref: Option<String>,
    /// Unix seconds.
    pub paid_at: Option<u64>,
    /// The load bound to it.
    pub txn: Option<(String, u64)>,
    /// That load's state.
    pub txn_state: Option<TxnState>,
    /// That load's bundle expiry.
    pub txn_expires_at: Option<u64>,
    /// The card company answered that load's host command (the card may have it).
    pub txn_host_answered: bool,
}

impl RechargeOrderRow {
    /// Where it stands at `now`.
    pub fn state(&self, now: u64) -> RechargeState {
        match self.txn_state {
            Some(TxnState::Committed | TxnState::RecoveredCommitted) => {
                return RechargeState::Loaded;
            }
            Some(TxnState::Unknown) => return RechargeState::Loading,
            Some(TxnState::Issued)
                if self.txn_host_answered || self.txn_expires_at.is_some_and(|e| e > now) =>
            {
                return RechargeState::Loading;
            }
            _ => {}
        }
        match self.paid_amount {
            Some(p) if p != self.amount => RechargeState::Mispaid,
            _ if now >= self.expires_at => RechargeState::Expired,
            Some(_) => RechargeState::Paid,
            None => RechargeState::Unpaid,
        }
    }
}

const RECHARGE_SELECT: &str = "SELECT o.order_id, o.city, o.card_id, o.amount, o.provider_id, \
     o.created_at, o.expires_at, o.paid_amount, o.provider_ref, o.paid_at, o.reader_id, o.seq, \
     t.state AS txn_state, t.expires_at AS txn_expires_at, \
     (SELECT COUNT(*) FROM host_answers h WHERE h.reader_id = o.reader_id AND h.seq = o.seq) \
     AS host_n FROM recharge_orders o \
     LEFT JOIN transactions t ON t.reader_id = o.reader_id AND t.seq = o.seq";

fn recharge_from_row(row: &AnyRow) -> Result<RechargeOrderRow, LedgerError> {
    let city = get_u64(row, "city")?;
    let reader: Option<String> = get_opt_str(row, "reader_id")?;
    Ok(RechargeOrderRow {
        order_id: get_str(row, "order_id")?,
        city: u32::try_from(city).map_err(|_| LedgerError::Corrupt {
            what: "recharge_orders.city".into(),
            detail: city.to_string(),
        })?,
        card_id: get_str(row, "card_id")?,
        amount: get_u64(row, "amount")?,
        provider_id: get_str(row, "provider_id")?,
        created_at: get_u64(row, "created_at")?,
        expires_at: get_u64(row, "expires_at")?,
        paid_amount: get_opt_u64(row, "paid_amount")?,
        provider_ref: get_opt_str(row, "provider_ref")?,
        paid_at: get_opt_u64(row, "paid_at")?,
        txn: reader.zip(get_opt_u64(row, "seq")?),
        txn_state: get_opt_str(row, "txn_state")?
            .map(|s| {
                s.parse::<TxnState>()
                    .map_err(|detail| LedgerError::Corrupt {
                        what: "transactions.state".into(),
                        detail,
                    })
            })
            .transpose()?,
        txn_expires_at: get_opt_u64(row, "txn_expires_at")?,
        txn_host_answered: get_u64(row, "host_n")? > 0,
    })
}

fn provider_from_row(row: &AnyRow) -> Result<ProviderRow, LedgerError> {
    let alg = get_str(row, "alg")?;
    Ok(ProviderRow {
        provider_id: get_str(row, "provider_id")?,
        name: get_str(row, "name")?,
        alg: ProviderAlg::parse(&alg).ok_or_else(|| LedgerError::Corrupt {
            what: "providers.alg".into(),
            detail: alg.clone(),
        })?,
        public_key: get_str(row, "public_key")?,
        enabled: get_u64(row, "enabled")? != 0,
        added_at: get_u64(row, "added_at")?,
    })
}

/// Binds a paid recharge order to the load `t` inside the transaction that records it:
/// only an order of `t`'s card and amount, paid that amount, unexpired, that no other
/// load holds. `Ok(false)`: not bound, roll back.
pub(super) async fn bind_recharge_order(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    order: &str,
    t: &NewTxn,
) -> Result<bool, LedgerError> {
    let now = to_i64(t.issued_at, "issued_at")?;
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE recharge_orders SET reader_id = $1, seq = $2 \
         WHERE order_id = $3 AND expires_at > $4 AND amount = $5 AND paid_amount = amount \
         AND card_id = $6 AND city = $7 AND {}",
        super::merchant::not_held("recharge_orders", "$4")
    )))
    .bind(t.reader_id.as_str())
    .bind(to_i64(t.seq, "seq")?)
    .bind(order)
    .bind(now)
    .bind(to_i64(t.amount, "amount")?)
    .bind(t.card_id.to_ascii_uppercase())
    .bind(i64::from(t.city))
    .execute(&mut **tx)
    .await
    .map_err(db("bind recharge order"))?;
    Ok(r.rows_affected() == 1)
}

/// What [`Ledger::record_payment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentRecorded {
    /// Recorded now.
    Now,
    /// This payment (same provider reference) was recorded before: nothing changed.
    Already,
    /// The order was paid under another reference: nothing changed.
    OtherPayment,
    /// No such order for this provider.
    NoOrder,
}

impl Ledger {
    /// Registers or replaces a payment provider.
    pub async fn set_provider(&self, p: &ProviderRow) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO providers (provider_id, name, alg, public_key, enabled, added_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider_id) DO UPDATE SET \
             name = $2, alg = $3, public_key = $4, enabled = $5",
        )
        .bind(p.provider_id.as_str())
        .bind(p.name.as_str())
        .bind(p.alg.name())
        .bind(p.public_key.as_str())
        .bind(i64::from(p.enabled))
        .bind(to_i64(p.added_at, "added_at")?)
        .execute(&self.pool)
        .await
        .map_err(db("record provider"))?;
        Ok(())
    }

    /// One provider.
    pub async fn provider(&self, provider_id: &str) -> Result<Option<ProviderRow>, LedgerError> {
        sqlx::query("SELECT * FROM providers WHERE provider_id = $1")
            .bind(provider_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read provider"))?
            .as_ref()
            .map(provider_from_row)
            .transpose()
    }

    /// Every provider, by id.
    pub async fn providers(&self) -> Result<Vec<ProviderRow>, LedgerError> {
        sqlx::query("SELECT * FROM providers ORDER BY provider_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list providers"))?
            .iter()
            .map(provider_from_row)
            .collect()
    }

    /// Records a new recharge order (unpaid).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_recharge_order(
        &self,
        order_id: &str,
        city: u32,
        card_id: &str,
        amount: u64,
        provider_id: &str,
        created_at: u64,
        expires_at: u64,
    ) -> Result<RechargeOrderRow, LedgerError> {
        sqlx::query(
            "INSERT INTO recharge_orders (order_id, city, card_id, amount, provider_id, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order_id)
        .bind(i64::from(city))
        .bind(card_id.to_ascii_uppercase())
        .bind(to_i64(amount, "amount")?)
        .bind(provider_id)
        .bind(to_i64(created_at, "created_at")?)
        .bind(to_i64(expires_at, "expires_at")?)
        .execute(&self.pool)
        .await
        .map_err(db("create recharge order"))?;
        self.recharge_order(order_id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt {
                what: format!("recharge order {order_id}"),
                detail: "vanished after it was created".into(),
            })
    }

    /// One recharge order with its load's state.
    pub async fn recharge_order(
        &self,
        order_id: &str,
    ) -> Result<Option<RechargeOrderRow>, LedgerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{RECHARGE_SELECT} WHERE o.order_id = $1"
        )))
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read recharge order"))?
        .as_ref()
        .map(recharge_from_row)
        .transpose()
    }

    /// Records a provider's payment of an order, once: the amount it reports (even when
    /// it is not the order's: the order is then [`RechargeState::Mispaid`]), its
    /// reference and the time.
    pub async fn record_payment(
        &self,
        order_id: &str,
        provider_id: &str,
        paid_amount: u64,
        provider_ref: &str,
        at: u64,
    ) -> Result<PaymentRecorded, LedgerError> {
        let r = sqlx::query(
            "UPDATE recharge_orders SET paid_amount = $3, provider_ref = $4, paid_at = $5 \
             WHERE order_id = $1 AND provider_id = $2 AND paid_at IS NULL",
        )
        .bind(order_id)
        .bind(provider_id)
        .bind(to_i64(paid_amount, "amount")?)
        .bind(provider_ref)
        .bind(to_i64(at, "paid_at")?)
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => return Ok(PaymentRecorded::Now),
            Ok(_) => {}
            // The same provider reference on another order: not this payment.
            Err(e) => match db("record payment")(e) {
                LedgerError::Conflict { .. } => return Ok(PaymentRecorded::OtherPayment),
                other => return Err(other),
            },
        }
        Ok(match self.recharge_order(order_id).await? {
            Some(o) if o.provider_id != provider_id => PaymentRecorded::NoOrder,
            Some(o) if o.provider_ref.as_deref() == Some(provider_ref) => PaymentRecorded::Already,
            Some(_) => PaymentRecorded::OtherPayment,
            None => PaymentRecorded::NoOrder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(paid: Option<u64>, txn: Option<TxnState>, host: bool) -> RechargeOrderRow {
        RechargeOrderRow {
            order_id: "P1".into(),
            city: 731,
            card_id: "C".into(),
            amount: 10_000,
            provider_id: "bank".into(),
            created_at: 0,
            expires_at: 1_000,
            paid_amount: paid,
            provider_ref: paid.map(|_| "ref".into()),
            paid_at: paid.map(|_| 5),
            txn: txn.map(|_| ("R".into(), 1)),
            txn_state: txn,
            txn_expires_at: txn.map(|_| 500),
            txn_host_answered: host,
        }
    }

    #[test]
    fn only_a_paid_order_of_its_amount_loads_once() {
        use RechargeState as R;
        use TxnState as T;
        let cases = [
            (order(None, None, false), 10, R::Unpaid),
            (order(Some(9_999), None, false), 10, R::Mispaid),
            (order(Some(10_001), None, false), 10, R::Mispaid),
            (order(Some(10_000), None, false), 10, R::Paid),
            (order(Some(10_000), None, false), 1_000, R::Expired),
            (order(Some(10_000), Some(T::Issued), false), 10, R::Loading),
            (order(Some(10_000), Some(T::Issued), false), 600, R::Paid),
            (order(Some(10_000), Some(T::Issued), true), 600, R::Loading),
            (order(Some(10_000), Some(T::Failed), true), 600, R::Paid),
            (
                order(Some(10_000), Some(T::Unknown), true),
                2_000,
                R::Loading,
            ),
            (
                order(Some(10_000), Some(T::Committed), true),
                2_000,
                R::Loaded,
            ),
        ];
        for (o, now, want) in cases {
            assert_eq!(o.state(now), want, "{o:?} at {now}");
        }
    }

    #[test]
    fn provider_algorithms() {
        assert_eq!(ProviderAlg::parse("sm2"), Some(ProviderAlg::Sm2));
        assert_eq!(
            ProviderAlg::parse("rsa-sha256"),
            Some(ProviderAlg::RsaSha256)
        );
        assert_eq!(ProviderAlg::parse("rsa"), None);
        assert!(ProviderAlg::Sm2.check_key("04").is_err());
        assert!(
            ProviderAlg::RsaSha256
                .check_key("-----BEGIN PUBLIC KEY-----")
                .is_err()
        );
        let k = crate::crypto::sm2::Sm2PrivateKey::generate(&mut crate::crypto::rng::os_rng());
        let public = super::super::ledger::hex(&k.public_key().to_sec1_bytes());
        assert!(ProviderAlg::Sm2.check_key(&public).is_ok());
        let sig = k
            .sign(&mut crate::crypto::rng::os_rng(), b"paid")
            .expect("sign");
        assert!(ProviderAlg::Sm2.verify(&public, b"paid", &sig).is_ok());
        assert!(ProviderAlg::Sm2.verify(&public, b"paid!", &sig).is_err());
        assert!(
            ProviderAlg::Sm2
                .verify(&public, b"paid", &sig[..63])
                .is_err()
        );
    }
}
