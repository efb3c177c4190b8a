//! The electronic purse commands (epurse.md "APDUs" rows GET BALANCE … GET TRANSACTION
//! PROVE, "Status words", and "Cryptography" for MAC1/MAC2/TAC).
//!
//! A purse transaction is INITIALIZE followed *immediately* by its completion (CREDIT or
//! DEBIT; for a CAPP purchase, UPDATE CAPP DATA CACHE commands may come in between). Any
//! other command, and any failed completion, cancels the pending transaction; a
//! completion without one answers 6985.
//!
//! Choices where the reference is silent (used consistently):
//! * a load that would take the balance over the balance limit: **6985** at INITIALIZE;
//! * purse commands while the purse DF is not selected: **6985**;
//! * the electronic deposit (ED, P2 = 01) has its own balance and counters
//!   ([`super::Purse`]) and the same DLK/DPK/DTK as the EP; GET BALANCE and INITIALIZE of
//!   the ED answer **6982** unless VERIFY PIN succeeded since the purse DF was selected
//!   (a composite purchase is EP only); GET TRANSACTION PROVE needs no PIN (it reveals
//!   only the MAC and TAC the terminal already had);
//! * GET TRANSACTION PROVE proves only the last committed transaction (as real cards do);
//!   which counter value names it (the INITIALIZE value or the next one), whether it
//!   answers more than once and whether a load's MAC2 comes back as zeros are
//!   [`super::Variant`] options, because cards in the field differ (`docs/cards.md`
//!   "Recovery");
//! * the city variants of [`super::Variant`]: with an authentication code, every purchase
//!   MAC1 covers `85 ‖ code` after the time; GET DATA of a card without one answers 6A88.

use alloc::vec::Vec;

use super::algo::{ct_eq, mac};
use super::{
    CAPP_RECORD_LEN, CAPP_RECORDS, Core, Df, LOG_RECORDS, LogRecord, Pending, Prove, ProveAtc,
    Purse, PurseKind, TT_CAPP_PURCHASE, TT_ED_LOAD, TT_ED_PURCHASE, TT_EP_LOAD, TT_EP_PURCHASE,
};
use crate::sim::fault::{ExecCtx, TornMidCommit};
use crate::transport::Apdu;

/// Internal error of a crypto computation inside the card.
const SW_INTERNAL: u16 = 0x6F00;

impl Core {
    /// 6985 if the purse DF is not selected, 9303 if the application is locked.
    fn purse_ready(&self) -> Option<u16> {
        if self.vol.df != Df::Purse {
            Some(0x6985)
        } else if self.state.locked {
            Some(0x9303)
        } else {
            None
        }
    }

    /// The purse P2 addresses (01 ED, 02 EP); `Err(6982)` for the ED without a verified
    /// PIN in the current selection.
    fn purse_kind(&self, p2: u8) -> Result<PurseKind, u16> {
        match p2 {
            0x02 => Ok(PurseKind::Ep),
            0x01 if self.vol.pin_ok => Ok(PurseKind::Ed),
            0x01 => Err(0x6982),
            _ => Err(0x6A86),
        }
    }

    /// GET BALANCE: `80 5C 00 P2 04` (P2 01 ED, 02 EP) → balance(4).
    pub(crate) fn get_balance(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if let Some(sw) = self.purse_ready() {
            return sw;
        }
        if apdu.p1 != 0 {
            return 0x6A86;
        }
        let kind = match self.purse_kind(apdu.p2) {
            Ok(k) => k,
            Err(sw) => return sw,
        };
        if !apdu.data.is_empty() {
            return 0x6700;
        }
        out.extend_from_slice(&self.state.purse.balance_of(kind).to_be_bytes());
        0x9000
    }

    /// GET DATA of the card authentication code: `80 CA 00 00 09` → `85` ‖ code(8)
    /// (epurse.md "City variants"); 6A88 when the card has none.
    pub(crate) fn get_data(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if let Some(sw) = self.purse_ready() {
            return sw;
        }
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return 0x6A88;
        }
        if !apdu.data.is_empty() {
            return 0x6700;
        }
        let Some(code) = self.state.variant.auth_code else {
            return 0x6A88;
        };
        match apdu.le {
            None | Some(9) | Some(256) => {}
            Some(_) => return 0x6C09,
        }
        out.push(0x85);
        out.extend_from_slice(&code);
        0x9000
    }

    /// INITIALIZE FOR LOAD (`80 50 00 P2 0B`), FOR PURCHASE (`80 50 01 P2 0B`), P2 01 ED
    /// or 02 EP, and FOR CAPP PURCHASE (`80 50 03 02 0B`); data keyIdx(1) ‖ amount(4) ‖
    /// terminalId(6).
    pub(crate) fn initialize(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if let Some(sw) = self.purse_ready() {
            return sw;
        }
        let ttype = match (apdu.p1, apdu.p2) {
            (0x00, 0x01) => TT_ED_LOAD,
            (0x00, 0x02) => TT_EP_LOAD,
            (0x01, 0x01) => TT_ED_PURCHASE,
            (0x01, 0x02) => TT_EP_PURCHASE,
            (0x03, 0x02) => TT_CAPP_PURCHASE,
            _ => return 0x6A86,
        };
        let kind = match self.purse_kind(apdu.p2) {
            Ok(k) => k,
            Err(sw) => return sw,
        };
        let [key_idx, a0, a1, a2, a3, t @ ..] = apdu.data else {
            return 0x6700;
        };
        let Ok(terminal) = <[u8; 6]>::try_from(t) else {
            return 0x6700;
        };
        let amount = u32::from_be_bytes([*a0, *a1, *a2, *a3]);
        if *key_idx != self.state.keys.index {
            return 0x9403;
        }
        let (balance, online_atc, offline_atc) = self.state.purse.counters(kind);
        let version = self.state.keys.version;
        let alg_id = self.state.algo.alg_id();
        if matches!(ttype, TT_EP_LOAD | TT_ED_LOAD) {
            // A variant card wants the cardholder's PIN before any load.
            if self.state.variant.pin_before_load && !self.vol.pin_ok {
                return 0x6982;
            }
            let atc = online_atc;
            if atc == u16::MAX {
                return 0x9402;
            }
            match balance.checked_add(amount) {
                Some(b) if b <= self.state.balance_limit => {}
                // Reference silent on the balance limit: 6985 (module docs).
                _ => return 0x6985,
            }
            let random = self.random4();
            // SESLK = 3DES/SM4(DLK, random ‖ onlineATC ‖ 8000)
            let mut input = [0u8; 8];
            input[..4].copy_from_slice(&random);
            input[4..6].copy_from_slice(&atc.to_be_bytes());
            input[6..].copy_from_slice(&[0x80, 0x00]);
            let Some(session) = self.state.algo.process_key(&self.state.keys.dlk, &input) else {
                return SW_INTERNAL;
            };
            // MAC1 = MAC(SESLK, balanceBefore ‖ amount ‖ type ‖ terminalId)
            let mut m = [0u8; 15];
            m[..4].copy_from_slice(&balance.to_be_bytes());
            m[4..8].copy_from_slice(&amount.to_be_bytes());
            m[8] = ttype;
            m[9..].copy_from_slice(&terminal);
            let Some(mac1) = mac(&session, &m) else {
                return SW_INTERNAL;
            };
            // balance(4) ‖ onlineATC(2) ‖ keyVer(1) ‖ algId(1) ‖ random(4) ‖ MAC1(4)
            out.extend_from_slice(&balance.to_be_bytes());
            out.extend_from_slice(&atc.to_be_bytes());
            out.extend_from_slice(&[version, alg_id]);
            out.extend_from_slice(&random);
            out.extend_from_slice(&mac1);
            self.vol.pending = Some(Pending::Load {
                kind,
                ttype,
                amount,
                terminal,
                atc,
                session,
            });
        } else {
            let atc = offline_atc;
            if atc == u16::MAX {
                return 0x9402;
            }
            if balance < amount {
                return self.state.variant.over_balance_sw;
            }
            let random = self.random4();
            // balance(4) ‖ offlineATC(2) ‖ overdraftLimit(3) ‖ keyVer(1) ‖ algId(1) ‖ random(4)
            out.extend_from_slice(&balance.to_be_bytes());
            out.extend_from_slice(&atc.to_be_bytes());
            out.extend_from_slice(&self.state.overdraft_limit.to_be_bytes()[1..]);
            out.extend_from_slice(&[version, alg_id]);
            out.extend_from_slice(&random);
            self.vol.pending = Some(Pending::Purchase {
                kind,
                ttype,
                amount,
                terminal,
                atc,
                random,
                capp_cache: Vec::new(),
            });
        }
        0x9000
    }

    /// CREDIT FOR LOAD: `80 52 00 00 0B` date(4) ‖ time(3) ‖ MAC2(4) → TAC(4).
    pub(crate) fn credit_for_load(
        &mut self,
        apdu: &Apdu<'_>,
        pending: Option<Pending>,
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<u16, TornMidCommit> {
        if let Some(sw) = self.purse_ready() {
            return Ok(sw);
        }
        let Some(Pending::Load {
            kind,
            ttype,
            amount,
            terminal,
            atc,
            session,
        }) = pending
        else {
            return Ok(0x6985);
        };
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return Ok(0x6A86);
        }
        let [d @ .., m0, m1, m2, m3] = apdu.data else {
            return Ok(0x6700);
        };
        let (Ok(date), Ok(time)) = (
            <[u8; 4]>::try_from(d.get(..4).unwrap_or(&[])),
            <[u8; 3]>::try_from(d.get(4..).unwrap_or(&[])),
        ) else {
            return Ok(0x6700);
        };
        // MAC2 = MAC(SESLK, amount ‖ type ‖ terminalId ‖ date ‖ time)
        let mut m = Vec::with_capacity(18);
        m.extend_from_slice(&amount.to_be_bytes());
        m.push(ttype);
        m.extend_from_slice(&terminal);
        m.extend_from_slice(&date);
        m.extend_from_slice(&time);
        let Some(expected) = mac(&session, &m) else {
            return Ok(SW_INTERNAL);
        };
        let mac2 = [*m0, *m1, *m2, *m3];
        if !ct_eq(&expected, &mac2) {
            return Ok(self.state.variant.mac_error_sw);
        }
        let purse = &self.state.purse;
        let Some(after) = purse.balance_of(kind).checked_add(amount) else {
            return Ok(0x6985);
        };
        // TAC = MAC(TAC key, balanceAfter ‖ onlineATC ‖ amount ‖ type ‖ terminalId ‖ date ‖ time)
        let mut t = Vec::with_capacity(24);
        t.extend_from_slice(&after.to_be_bytes());
        t.extend_from_slice(&atc.to_be_bytes());
        t.extend_from_slice(&m);
        let Some(tac) = self
            .state
            .algo
            .tac_key(&self.state.keys.dtk)
            .and_then(|k| mac(&k, &t))
        else {
            return Ok(SW_INTERNAL);
        };
        let mut new = purse.clone();
        let (balance, online_atc, _) = new.slots(kind);
        *balance = after;
        *online_atc = atc.saturating_add(1);
        record_commit(
            &mut new,
            LogRecord {
                atc,
                overdraft: 0,
                amount,
                ttype,
                terminal,
                date,
                time,
            },
            mac2,
            tac,
        );
        self.commit(ctx, new)?;
        out.extend_from_slice(&tac);
        Ok(0x9000)
    }

    /// DEBIT FOR PURCHASE: `80 54 01 00 0F` terminalSeq(4) ‖ date(4) ‖ time(3) ‖ MAC1(4)
    /// → TAC(4) ‖ MAC2(4).
    pub(crate) fn debit_for_purchase(
        &mut self,
        apdu: &Apdu<'_>,
        pending: Option<Pending>,
        out: &mut Vec<u8>,
        ctx: ExecCtx,
    ) -> Result<u16, TornMidCommit> {
        if let Some(sw) = self.purse_ready() {
            return Ok(sw);
        }
        let Some(Pending::Purchase {
            kind,
            ttype,
            amount,
            terminal,
            atc,
            random,
            capp_cache,
        }) = pending
        else {
            return Ok(0x6985);
        };
        if apdu.p1 != 0x01 || apdu.p2 != 0 {
            return Ok(0x6A86);
        }
        if apdu.data.len() != 15 {
            return Ok(0x6700);
        }
        let d = apdu.data;
        let seq = [d[0], d[1], d[2], d[3]];
        let date = [d[4], d[5], d[6], d[7]];
        let time = [d[8], d[9], d[10]];
        let mac1 = [d[11], d[12], d[13], d[14]];
        // SESPK = 3DES/SM4(DPK, random ‖ offlineATC ‖ terminalSeq[2..4])
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&random);
        input[4..6].copy_from_slice(&atc.to_be_bytes());
        input[6..].copy_from_slice(&seq[2..]);
        let Some(session) = self.state.algo.process_key(&self.state.keys.dpk, &input) else {
            return Ok(SW_INTERNAL);
        };
        // MAC1 (terminal) = MAC(SESPK, amount ‖ type ‖ terminalId ‖ date ‖ time), on a
        // card with an authentication code ‖ 85 ‖ code (epurse.md "City variants").
        let mut m = Vec::with_capacity(27);
        m.extend_from_slice(&amount.to_be_bytes());
        m.push(ttype);
        m.extend_from_slice(&terminal);
        m.extend_from_slice(&date);
        m.extend_from_slice(&time);
        let mut m1_input = m.clone();
        if let Some(code) = self.state.variant.auth_code {
            m1_input.push(0x85);
            m1_input.extend_from_slice(&code);
        }
        let Some(expected) = mac(&session, &m1_input) else {
            return Ok(SW_INTERNAL);
        };
        if !ct_eq(&expected, &mac1) {
            return Ok(self.state.variant.mac_error_sw);
        }
        let purse = &self.state.purse;
        let Some(after) = purse.balance_of(kind).checked_sub(amount) else {
            return Ok(self.state.variant.over_balance_sw);
        };
        // MAC2 (card) = MAC(SESPK, amount)
        let Some(mac2) = mac(&session, &amount.to_be_bytes()) else {
            return Ok(SW_INTERNAL);
        };
        // TAC = MAC(TAC key, amount ‖ type ‖ terminalId ‖ terminalSeq ‖ date ‖ time)
        let mut t = Vec::with_capacity(22);
        t.extend_from_slice(&m[..11]);
        t.extend_from_slice(&seq);
        t.extend_from_slice(&date);
        t.extend_from_slice(&time);
        let Some(tac) = self
            .state
            .algo
            .tac_key(&self.state.keys.dtk)
            .and_then(|k| mac(&k, &t))
        else {
            return Ok(SW_INTERNAL);
        };
        let mut new = purse.clone();
        let (balance, _, offline_atc) = new.slots(kind);
        *balance = after;
        *offline_atc = atc.saturating_add(1);
        for (i, rec) in capp_cache {
            if let Some(slot) = new.capp.get_mut(i) {
                *slot = rec;
            }
        }
        record_commit(
            &mut new,
            LogRecord {
                atc,
                overdraft: 0,
                amount,
                ttype,
                terminal,
                date,
                time,
            },
            mac2,
            tac,
        );
        self.commit(ctx, new)?;
        out.extend_from_slice(&tac);
        out.extend_from_slice(&mac2);
        Ok(0x9000)
    }

    /// UPDATE CAPP DATA CACHE: `80 DC rec ((SFI<<3)+0) Lc record`, between INITIALIZE FOR
    /// CAPP PURCHASE and DEBIT; the record is written by the DEBIT's commit.
    pub(crate) fn update_capp_data_cache(
        &mut self,
        apdu: &Apdu<'_>,
        pending: Option<Pending>,
    ) -> u16 {
        if let Some(sw) = self.purse_ready() {
            return sw;
        }
        let Some(Pending::Purchase {
            kind,
            ttype: TT_CAPP_PURCHASE,
            amount,
            terminal,
            atc,
            random,
            mut capp_cache,
        }) = pending
        else {
            return 0x6985;
        };
        if apdu.p2 & 0x07 != 0 || apdu.p2 >> 3 != 0x17 {
            return 0x6A86;
        }
        let rec = if self.state.variant.capp_by_tag {
            // P1 names the record's tag: the record whose first byte it is (pending
            // writes count: the cache is what the card will hold after the DEBIT).
            let current = |i: usize| {
                capp_cache
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, r)| r[0])
                    .or_else(|| self.state.purse.capp.get(i).map(|r| r[0]))
            };
            match (0..CAPP_RECORDS).find(|&i| current(i) == Some(apdu.p1)) {
                Some(i) => i + 1,
                None => return 0x6A83,
            }
        } else {
            usize::from(apdu.p1)
        };
        if rec == 0 || rec > CAPP_RECORDS {
            return 0x6A83;
        }
        // A variant card lets a composite purchase update one record only.
        if self
            .state
            .variant
            .capp_record
            .is_some_and(|r| usize::from(r) != rec)
        {
            return 0x6A83;
        }
        let Ok(record) = <[u8; CAPP_RECORD_LEN]>::try_from(apdu.data) else {
            return 0x6700;
        };
        capp_cache.retain(|(i, _)| *i != rec - 1);
        capp_cache.push((rec - 1, record));
        self.vol.pending = Some(Pending::Purchase {
            kind,
            ttype: TT_CAPP_PURCHASE,
            amount,
            terminal,
            atc,
            random,
            capp_cache,
        });
        0x9000
    }

    /// GET TRANSACTION PROVE: `80 5A 00 P2 02 ATC(2) 08` → MAC(4) ‖ TAC(4); 9406 when the
    /// card has no such transaction; 6985 when a one-shot card has answered already.
    pub(crate) fn get_transaction_prove(&mut self, apdu: &Apdu<'_>, out: &mut Vec<u8>) -> u16 {
        if let Some(sw) = self.purse_ready() {
            return sw;
        }
        if apdu.p1 != 0 {
            return 0x6A86;
        }
        let [hi, lo] = apdu.data else {
            return 0x6700;
        };
        let asked = u16::from_be_bytes([*hi, *lo]);
        let v = self.state.variant;
        let Some(p) = self.state.purse.last_prove.as_mut() else {
            return 0x9406;
        };
        let names = match v.prove_atc {
            ProveAtc::Initialize => Some(p.atc),
            ProveAtc::Next => p.atc.checked_add(1),
        };
        if names != Some(asked) || p.ttype != apdu.p2 {
            return 0x9406;
        }
        if v.prove_once && p.answered {
            return 0x6985;
        }
        p.answered = true;
        let load = matches!(p.ttype, TT_EP_LOAD | TT_ED_LOAD);
        if v.prove_zero_mac && load {
            out.extend_from_slice(&[0; 4]);
        } else {
            out.extend_from_slice(&p.mac);
        }
        out.extend_from_slice(&p.tac);
        0x9000
    }
}

/// Adds a record to the cyclic log (newest first), dropping the oldest when full.
fn push_log(log: &mut Vec<[u8; 23]>, rec: LogRecord) {
    log.insert(0, rec.encode());
    log.truncate(LOG_RECORDS);
}

/// What every purse commit records: the log entry (newest first) and the proof that
/// GET TRANSACTION PROVE answers with.
fn record_commit(purse: &mut Purse, record: LogRecord, mac: [u8; 4], tac: [u8; 4]) {
    let (atc, ttype) = (record.atc, record.ttype);
    push_log(&mut purse.log, record);
    purse.last_prove = Some(Prove {
        atc,
        ttype,
        mac,
        tac,
        answered: false,
    });
}
