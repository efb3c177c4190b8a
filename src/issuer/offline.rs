//! Offline purchases from PSAM terminals (docs/psam.md "Offline purchases").
//!
//! A terminal is a reader registered to a merchant (`issuer reader add … --merchant`)
//! whose PSAM answers with the reader's registered terminal number. It gets the city's
//! **terminal program** once, sealed for it as [`ScriptKind::Terminal`](crate::envelope::ScriptKind::Terminal)
//! ([`Issuer::terminal_script`]), and runs it offline for every sale with the amount
//! keyed in ([`crate::reader::Reader::prepare_terminal`]). The PSAM holds the purchase
//! key; the terminal holds none. Each receipt reaches the card company through the
//! reader's journal (`cardvm client sync`), where [`Issuer::settle_offline`]:
//!
//! 1. verifies the reader's certificate and signature, that the receipt is
//!    [`Mode::Terminal`](crate::receipt::Mode::Terminal) without a data identity, and that its program is one of the
//!    city's terminal programs;
//! 2. takes the terminal number from the receipt and requires it to be the reader's
//!    registered one, and the reader to be an enabled merchant's terminal;
//! 3. recomputes the card's purchase TAC with the card's TAC key, over amount ‖ type ‖
//!    terminal number ‖ terminal sequence ‖ date ‖ time (`reference/epurse.md`): only
//!    the card could have made it, so the amount, terminal and sequence are the card's
//!    word, whatever the terminal's owner wrote around them;
//! 4. records it **once per (city, terminal number, terminal sequence)** — exactly the
//!    fields the TAC covers — as a committed purchase credited to the merchant, in the
//!    ledger's `transactions` (a unique index decides, on SQLite and PostgreSQL). The
//!    same receipt again is `already`; another receipt for the same sequence is refused.
//!
//! The card's offline counter (`atc`) is recorded but is not the key: the TAC does not
//! cover it, so a terminal could write any value there, and using it as the key would let
//! one terminal block another's genuine receipt. Reconciliation reports counter gaps and
//! repeats per card instead.
//!
//! A receipt that failed before the card's commit point moved nothing: it is answered
//! `failed` and recorded nowhere. An `unknown` one (the card was pulled during DEBIT) is
//! not settled: the terminal's own recovery (GET TRANSACTION PROVE on the next tap) gives
//! the TAC, and that receipt settles.
//!
//! Which business day the money counts for is the card's date and time, read in the card
//! company's zone (clamped to the moment of settlement: a terminal cannot put its money in
//! the future); a receipt whose day was cleared already is an adjustment
//! (docs/clearing.md).

use super::engine::{Issuer, IssuerError, SealedScript, Settled};
use super::ledger::{Ledger, LedgerError, TxnKind, TxnRow, TxnState, db, get_opt_str, hex, to_i64};
use crate::envelope::ScriptKind;
use crate::issuer::keys::KeyRole;
use crate::receipt::{FieldValue as Out, Mode, Outcome, Receipt};

/// The `scripts` role of a city's terminal program.
pub const TERMINAL_ROLE: &str = "terminal";

/// The transaction types a PSAM purchase may carry: 06 purchase, 09 composite purchase.
const PURCHASE_TYPES: [u8; 2] = [0x06, 0x09];

/// An offline purchase, verified, to record.
#[derive(Debug, Clone)]
pub struct OfflinePurchase {
    /// City.
    pub city: u32,
    /// The terminal's reader.
    pub reader_id: String,
    /// The merchant credited.
    pub merchant_id: String,
    /// The merchant's fee rate at settlement (basis points).
    pub fee_bp: u64,
    /// Card (upper-case hex).
    pub card_id: String,
    /// Fen.
    pub amount: u64,
    /// The PSAM's terminal number.
    pub terminal_id: [u8; 6],
    /// The PSAM's terminal sequence number.
    pub terminal_seq: u32,
    /// The card's date and time (BCD, upper-case hex).
    pub datetime: String,
    /// When it counts (unix seconds): the card's time in the zone, at most `settled_at`.
    pub at: u64,
    /// Unix seconds.
    pub settled_at: u64,
    /// The card's offline counter, as the receipt says (not covered by the TAC).
    pub atc: Option<u64>,
    /// `committed` (its TAC verified) or `unknown` (torn during DEBIT: no TAC).
    pub state: TxnState,
    /// The card's TAC (hex), when committed.
    pub tac: Option<String>,
    /// Why it is in this state.
    pub note: String,
    /// Balance before and after, as the receipt says.
    pub balance_before: Option<u64>,
    /// Balance after.
    pub balance_after: Option<u64>,
    /// The terminal program's SM3 (hex).
    pub command_sm3: String,
    /// The receipt's SM3 (hex).
    pub receipt_sm3: String,
}

/// What [`Ledger::record_offline`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineRecorded {
    /// Recorded now as the reader's transaction `seq`.
    Now(u64),
    /// The terminal sequence was recorded before: that row.
    Already(Box<TxnRow>),
}

/// Checks a command script can serve as a terminal program, as the reader will
/// ([`crate::reader::Reader::prepare_terminal`]): it verifies, declares no key and no
/// input but `amount` and `now`, and talks to a SAM. One line on refusal.
pub fn check_program(bytes: &[u8]) -> Result<(), String> {
    let script = crate::script::CommandScript::parse(bytes).map_err(|e| e.to_string())?;
    let program =
        crate::verify::VerifiedProgram::from_script(script).map_err(|e| format!("verify: {e}"))?;
    for d in program.inputs() {
        if d.ty.is_key() {
            return Err(format!(
                "declares the key input `{}`: a terminal program holds no key (the PSAM does)",
                d.name
            ));
        }
        if !crate::reader::TERMINAL_INPUTS.contains(&&*d.name) {
            return Err(format!(
                "declares the input `{}`: a terminal program gets only `amount` and `now`",
                d.name
            ));
        }
    }
    if program.sam_slots_needed() == 0 {
        return Err("sends nothing to a SAM: an offline purchase needs the terminal's PSAM".into());
    }
    Ok(())
}

impl Ledger {
    /// Sets a city's terminal program and remembers it among the city's terminal
    /// programs (receipts of every one of them settle).
    pub async fn set_terminal_program(
        &self,
        city: u32,
        body: &[u8],
        now: u64,
    ) -> Result<(), LedgerError> {
        self.set_script(city, TERMINAL_ROLE, body).await?;
        sqlx::query(
            "INSERT INTO terminal_programs (city, sm3, added_at) VALUES ($1, $2, $3) \
             ON CONFLICT (city, sm3) DO NOTHING",
        )
        .bind(i64::from(city))
        .bind(hex(&crate::crypto::sm3(body)))
        .bind(to_i64(now, "added_at")?)
        .execute(&self.pool)
        .await
        .map_err(db("write terminal program"))?;
        Ok(())
    }

    /// Whether `sm3` (hex) is one of the city's terminal programs.
    pub async fn is_terminal_program(&self, city: u32, sm3: &str) -> Result<bool, LedgerError> {
        let row =
            sqlx::query("SELECT 1 AS one FROM terminal_programs WHERE city = $1 AND sm3 = $2")
                .bind(i64::from(city))
                .bind(sm3.to_ascii_uppercase())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read terminal programs"))?;
        Ok(row.is_some())
    }

    /// Makes a reader a merchant's terminal (`None`: no longer one). False when no such
    /// reader is registered.
    pub async fn set_reader_merchant(
        &self,
        reader_id: &str,
        merchant_id: Option<&str>,
    ) -> Result<bool, LedgerError> {
        let r = sqlx::query("UPDATE readers SET merchant_id = $1 WHERE reader_id = $2")
            .bind(merchant_id)
            .bind(reader_id)
            .execute(&self.pool)
            .await
            .map_err(db("set reader merchant"))?;
        Ok(r.rows_affected() == 1)
    }

    /// The merchant whose terminal the reader is.
    pub async fn reader_merchant(&self, reader_id: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT merchant_id FROM readers WHERE reader_id = $1")
            .bind(reader_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read reader merchant"))?;
        match row {
            Some(r) => get_opt_str(&r, "merchant_id"),
            None => Ok(None),
        }
    }

    /// The offline purchase recorded for a terminal sequence.
    pub async fn offline_txn(
        &self,
        city: u32,
        terminal_id: &[u8; 6],
        terminal_seq: u32,
    ) -> Result<Option<TxnRow>, LedgerError> {
        let found = sqlx::query(
            "SELECT reader_id, seq FROM transactions WHERE city = $1 AND terminal_id = $2 \
             AND terminal_seq = $3",
        )
        .bind(i64::from(city))
        .bind(hex(terminal_id))
        .bind(i64::from(terminal_seq))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read offline purchase"))?;
        match found {
            Some(r) => {
                let reader = super::ledger::get_str(&r, "reader_id")?;
                let seq = super::ledger::get_u64(&r, "seq")?;
                self.txn(&reader, seq).await
            }
            None => Ok(None),
        }
    }

    /// Records a verified offline purchase once: the reader's next seq and the row, in
    /// one database transaction; the unique index on (city, terminal number, terminal
    /// sequence) decides between racing uploads.
    pub async fn record_offline(
        &self,
        p: &OfflinePurchase,
    ) -> Result<OfflineRecorded, LedgerError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let seq = sqlx::query(
            "UPDATE readers SET next_seq = next_seq + 1 WHERE reader_id = $1 \
             RETURNING next_seq - 1 AS seq",
        )
        .bind(p.reader_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("allocate seq"))?
        .map(|r| super::ledger::get_u64(&r, "seq"))
        .transpose()?
        .ok_or_else(|| LedgerError::Corrupt {
            what: format!("readers {}", p.reader_id),
            detail: "the terminal's reader is gone".into(),
        })?;
        let inserted = sqlx::query(
            "INSERT INTO transactions (reader_id, seq, kind, city, card_id, amount, terminal_id, \
             txn_datetime, command_sm3, balance_before, issued_at, expires_at, state, receipt_sm3, \
             settled_at, atc, tac, balance_after, note, host_secured, terminal_seq, merchant_id, \
             fee_bp) VALUES ($1, $2, 'purchase', $3, $4, $5, $6, $7, $8, $9, $10, $10, \
             $11, $12, $13, $14, $15, $16, $17, 0, $18, $19, $20)",
        )
        .bind(p.reader_id.as_str())
        .bind(to_i64(seq, "seq")?)
        .bind(i64::from(p.city))
        .bind(p.card_id.as_str())
        .bind(to_i64(p.amount, "amount")?)
        .bind(hex(&p.terminal_id))
        .bind(p.datetime.as_str())
        .bind(p.command_sm3.as_str())
        .bind(
            p.balance_before
                .map(|v| to_i64(v, "balance_before"))
                .transpose()?,
        )
        .bind(to_i64(p.at, "issued_at")?)
        .bind(p.state.name())
        .bind(p.receipt_sm3.as_str())
        .bind(to_i64(p.settled_at, "settled_at")?)
        .bind(p.atc.map(|v| to_i64(v, "atc")).transpose()?)
        .bind(p.tac.clone())
        .bind(
            p.balance_after
                .map(|v| to_i64(v, "balance_after"))
                .transpose()?,
        )
        .bind(p.note.as_str())
        .bind(i64::from(p.terminal_seq))
        .bind(p.merchant_id.as_str())
        .bind(to_i64(p.fee_bp, "fee_bp")?)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                tx.commit().await.map_err(db("commit offline purchase"))?;
                Ok(OfflineRecorded::Now(seq))
            }
            Err(e) => {
                let _ = tx.rollback().await;
                match db("record offline purchase")(e) {
                    LedgerError::Conflict { .. } => {
                        match self
                            .offline_txn(p.city, &p.terminal_id, p.terminal_seq)
                            .await?
                        {
                            Some(row) => Ok(OfflineRecorded::Already(Box::new(row))),
                            None => Err(LedgerError::Db {
                                op: "record offline purchase",
                                detail: "a conflicting row vanished; upload again".into(),
                            }),
                        }
                    }
                    other => Err(other),
                }
            }
        }
    }
}

fn out_int(r: &Receipt, name: &str) -> Option<u64> {
    match r.field(name) {
        Some(Out::Int(v)) => Some(*v),
        _ => None,
    }
}

fn out_bytes<'a>(r: &'a Receipt, name: &str) -> Option<&'a [u8]> {
    match r.field(name) {
        Some(Out::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// `YYYYMMDDhhmmss` (BCD) as a civil date-time.
fn civil(bcd: &[u8; 7]) -> Option<jiff::civil::DateTime> {
    let d = |b: u8| -> Option<i64> {
        let (hi, lo) = (b >> 4, b & 0x0F);
        (hi < 10 && lo < 10).then(|| i64::from(hi * 10 + lo))
    };
    let year = d(bcd[0])? * 100 + d(bcd[1])?;
    jiff::civil::DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(d(bcd[2])?).ok()?,
        i8::try_from(d(bcd[3])?).ok()?,
        i8::try_from(d(bcd[4])?).ok()?,
        i8::try_from(d(bcd[5])?).ok()?,
        i8::try_from(d(bcd[6])?).ok()?,
        0,
    )
    .ok()
}

impl Issuer {
    /// Seals the city's terminal program for a merchant terminal (module docs): a fresh
    /// seq in the reader's terminal stream, openable for the query-script lifetime.
    pub async fn terminal_script(
        &self,
        reader_id: &str,
        city: u32,
    ) -> Result<SealedScript, IssuerError> {
        let (_, identity) = self.verify_reader(reader_id).await?;
        self.terminal_merchant(reader_id).await?;
        let (bytes, program) = self.program(city, TERMINAL_ROLE).await?;
        let seq = self
            .ledger()
            .allocate_seq(reader_id)
            .await?
            .ok_or_else(|| IssuerError::UnknownReader(reader_id.into()))?;
        let expires = self.now().saturating_add(self.policy().query_script_ttl);
        let sealed = self.seal(
            &identity,
            ScriptKind::Terminal,
            &program,
            seq,
            expires,
            &bytes,
            &bytes,
        )?;
        Ok(SealedScript {
            reader_id: reader_id.into(),
            seq,
            expires,
            bytes: sealed,
        })
    }

    /// The enabled merchant whose terminal the reader is, with its fee rate.
    async fn terminal_merchant(&self, reader_id: &str) -> Result<(String, u64), IssuerError> {
        let not = |detail: String| IssuerError::NotATerminal {
            reader: reader_id.into(),
            detail,
        };
        let id = self
            .ledger()
            .reader_merchant(reader_id)
            .await?
            .ok_or_else(|| {
                not("it is no merchant's terminal (cardvm issuer reader add … --merchant)".into())
            })?;
        let m = self
            .ledger()
            .merchant(&id)
            .await?
            .ok_or_else(|| not(format!("its merchant `{id}` is not registered")))?;
        if !m.enabled {
            return Err(not(format!("its merchant `{id}` is disabled")));
        }
        Ok((id, m.fee_bp))
    }

    /// Settles an offline terminal purchase receipt (module docs).
    pub async fn settle_offline(&self, receipt: &Receipt) -> Result<Settled, IssuerError> {
        let (reader_row, _, receipt_sm3) = self.verify_receipt(receipt).await?;
        let reader = receipt.reader_id.clone();
        let refuse = |detail: String| IssuerError::NotOurs {
            reader: reader.clone(),
            detail,
        };
        if receipt.mode != Mode::Terminal || receipt.data.is_some() {
            return Err(refuse(
                "not an offline terminal receipt (mode terminal, no data script)".into(),
            ));
        }
        let sm3 = hex(&receipt.command_sm3);
        if !self
            .ledger()
            .is_terminal_program(receipt.city, &sm3)
            .await?
        {
            return Err(refuse(format!(
                "its program {sm3} is not a terminal program of city {}",
                receipt.city
            )));
        }
        let (merchant_id, fee_bp) = self.terminal_merchant(&reader).await?;
        let terminal: [u8; 6] = out_bytes(receipt, "terminal_id")
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("no 6-byte `terminal_id` output".into()))?;
        if terminal != reader_row.terminal_id {
            return Err(IssuerError::NotATerminal {
                reader: reader.clone(),
                detail: format!(
                    "the PSAM's terminal number {} is not the reader's registered {}",
                    hex(&terminal),
                    hex(&reader_row.terminal_id)
                ),
            });
        }
        if let Outcome::Failed { .. } = &receipt.outcome {
            // Nothing moved: nothing to record (the journal result says failed).
            return Ok(Settled {
                reader_id: reader,
                seq: 0,
                kind: TxnKind::Purchase,
                state: TxnState::Failed,
                already: false,
                decided: None,
            });
        }
        let tseq_bytes: [u8; 4] = out_bytes(receipt, "terminal_seq")
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("no 4-byte `terminal_seq` output".into()))?;
        let terminal_seq = u32::from_be_bytes(tseq_bytes);
        let card = receipt.card_id.clone();
        if card.is_empty() {
            return Err(refuse("the receipt names no card".into()));
        }
        if out_bytes(receipt, "card_id").is_some_and(|c| c != card.as_slice()) {
            return Err(refuse(
                "the `card_id` output is not the receipt's card".into(),
            ));
        }
        let amount =
            out_int(receipt, "amount").ok_or_else(|| refuse("no `amount` output".into()))?;
        let amount32 = u32::try_from(amount).map_err(|_| refuse(format!("amount {amount} fen")))?;
        let txn_type = out_int(receipt, "txn_type")
            .and_then(|t| u8::try_from(t).ok())
            .filter(|t| PURCHASE_TYPES.contains(t))
            .ok_or_else(|| refuse("`txn_type` is not a purchase (06 or 09)".into()))?;
        let when: [u8; 7] = out_bytes(receipt, "datetime")
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("no 7-byte `datetime` output".into()))?;
        let civil = civil(&when).ok_or_else(|| refuse("`datetime` is not a BCD date".into()))?;
        let balance_before = out_int(receipt, "balance_before");
        let balance_after = out_int(receipt, "balance_after");
        let now = self.now();
        let at = civil
            .to_zoned_datetime(self.zone().clone())
            .ok()
            .and_then(|z| u64::try_from(z.timestamp().as_second()).ok())
            .map_or(now, |t| t.min(now));
        let mut p = OfflinePurchase {
            city: receipt.city,
            reader_id: reader.clone(),
            merchant_id,
            fee_bp,
            card_id: hex(&card),
            amount,
            terminal_id: terminal,
            terminal_seq,
            datetime: hex(&when),
            at,
            settled_at: now,
            atc: out_int(receipt, "atc"),
            state: TxnState::Committed,
            tac: None,
            note: "offline purchase (PSAM terminal)".into(),
            balance_before,
            balance_after,
            command_sm3: sm3,
            receipt_sm3: receipt_sm3.clone(),
        };
        if let Outcome::Unknown { reason } = &receipt.outcome {
            // Torn during DEBIT: nothing proves it either way. Recorded `unknown` (not
            // counted), so it is neither lost nor credited; an operator decides it
            // (`cardvm issuer decide`) once the card's PROVE is known.
            p.state = TxnState::Unknown;
            p.note = format!("offline purchase torn during DEBIT ({reason}): decide it");
            return self.record(p, &receipt_sm3).await;
        }
        let tac: [u8; 4] = out_bytes(receipt, "tac")
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("no 4-byte `tac` output".into()))?;
        // The card's TAC: only a card holding its TAC key could have made it.
        let dtk = self
            .master_keys()
            .card_key(receipt.city, KeyRole::Tac, &card)?;
        let mut input = Vec::with_capacity(26);
        input.extend_from_slice(&amount32.to_be_bytes());
        input.push(txn_type);
        input.extend_from_slice(&terminal);
        input.extend_from_slice(&tseq_bytes);
        input.extend_from_slice(&when);
        let expected = crate::crypto::tac_key(&dtk)
            .and_then(|k| crate::crypto::pboc_mac(&k, &input))
            .map_err(|e| refuse(format!("TAC: {e}")))?;
        if !crate::crypto::ct_eq(&expected, &tac) {
            return Err(IssuerError::OfflineTac {
                reader,
                terminal: hex(&terminal),
                terminal_seq,
            });
        }
        p.tac = Some(hex(&tac));
        self.record(p, &receipt_sm3).await
    }

    async fn record(&self, p: OfflinePurchase, receipt_sm3: &str) -> Result<Settled, IssuerError> {
        let reader = p.reader_id.clone();
        let state = p.state;
        match self.ledger().record_offline(&p).await? {
            OfflineRecorded::Now(seq) => Ok(Settled {
                reader_id: reader,
                seq,
                kind: TxnKind::Purchase,
                state,
                already: false,
                decided: None,
            }),
            OfflineRecorded::Already(row) => self.already(&row, receipt_sm3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil;

    #[test]
    fn bcd_dates_read_back_and_garbage_is_refused() {
        let d = civil(&[0x20, 0x26, 0x12, 0x07, 0x23, 0x59, 0x58]).unwrap();
        assert_eq!(d.to_string(), "2026-12-07T23:59:58");
        assert!(
            civil(&[0x20, 0x26, 0x13, 0x07, 0, 0, 0]).is_none(),
            "month 13"
        );
        assert!(
            civil(&[0x20, 0x2A, 0x12, 0x07, 0, 0, 0]).is_none(),
            "not BCD"
        );
    }
}
