//! What a kiosk, a web page or a cash desk shows: every outcome of a card transaction as
//! a stable machine code with its class, its process exit code and a message for the
//! cardholder in Chinese and English, and the JSON Lines events `cardvm client … --json`
//! prints (docs/kiosk.md).
//!
//! The codes are a contract: a kiosk switches on `code`, never on the text. Messages speak
//! to the cardholder; they never name an operator's command or a file. What an operator
//! needs is in `detail`, for the log.

use serde::Serialize;

use super::client::{CardFault, ClientError, RechargeError, RechargeOutcome, Step};

/// The class of an outcome: what the kiosk does next. Each has its process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Done: the card and the card company agree.
    Ok,
    /// The card company declined before the card was touched; nothing changed.
    Declined,
    /// The card declined before its commit point; nothing changed.
    CardDeclined,
    /// The card was written but the write was interrupted: tap the card again to finish.
    Interrupted,
    /// The card could not be read (absent, removed, not answering); nothing changed.
    Card,
    /// The card company could not be reached; nothing changed.
    Unreachable,
    /// The card committed but the card company has not confirmed it yet: the receipt is
    /// kept and delivered later.
    Unconfirmed,
    /// This reader is not set up or not accepted; nothing changed.
    Setup,
    /// Anything else.
    Internal,
}

impl Class {
    /// The process exit code of `cardvm client …` for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            Class::Ok => 0,
            Class::Internal => 1,
            Class::Declined => 10,
            Class::CardDeclined => 11,
            Class::Interrupted => 12,
            Class::Card => 13,
            Class::Unreachable => 14,
            Class::Unconfirmed => 15,
            Class::Setup => 20,
        }
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $v:ident = $s:literal, $class:ident, $en:literal, $zh:literal;)*) => {
        /// A stable outcome code (docs/kiosk.md has the table).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Code { $($(#[$doc])* $v,)* }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$v,)*];

            /// The code as it appears in events.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$v => $s,)* }
            }

            /// Its class.
            pub fn class(self) -> Class {
                match self { $(Code::$v => Class::$class,)* }
            }

            /// The cardholder's message, English.
            pub fn message_en(self) -> &'static str {
                match self { $(Code::$v => $en,)* }
            }

            /// The cardholder's message, Chinese.
            pub fn message_zh(self) -> &'static str {
                match self { $(Code::$v => $zh,)* }
            }
        }
    };
}

codes! {
    /// The card was loaded.
    Loaded = "loaded", Ok, "Recharged.", "充值成功。";
    /// The purchase (or order) was paid.
    Paid = "paid", Ok, "Paid.", "支付成功。";
    /// The card was read.
    CardRead = "card_read", Ok, "Card read.", "读卡成功。";
    /// A purse, single-load or daily limit.
    OverLimit = "over_limit", Declined,
        "This amount is over the card's limit. Choose a smaller amount.",
        "金额超出卡片限额，请选择较小的金额。";
    /// The card is on the blocklist.
    CardBlocked = "card_blocked", Declined,
        "This card is blocked. Please contact customer service.",
        "此卡已被挂失或冻结，请联系客服。";
    /// The card's history needs checking by the card company.
    CardSuspect = "card_suspect", Declined,
        "This card needs to be checked by the card company. Please contact customer service.",
        "此卡需由发卡机构核查，请联系客服。";
    /// The card is outside its validity dates.
    CardNotValid = "card_not_valid", Declined,
        "This card is not valid today.",
        "此卡不在有效期内。";
    /// The card's earlier interrupted load could not be proved either way.
    Undecided = "undecided", Declined,
        "An earlier transaction on this card is being checked. Please contact customer service.",
        "此卡有一笔未完成的交易正在核查，请联系客服。";
    /// The order is paid, cancelled or expired, or another payment holds it.
    OrderNotPayable = "order_not_payable", Declined,
        "This order cannot be paid any more.",
        "此订单已无法支付。";
    /// No such order.
    UnknownOrder = "unknown_order", Declined,
        "This order was not found.",
        "未找到此订单。";
    /// A recharge paid first is unpaid, expired, used, or for another card or amount.
    NotPaid = "not_paid", Declined,
        "This recharge order is not paid, or not for this card and amount.",
        "此充值订单未支付，或与此卡、金额不符。";
    /// The card company does not serve this card's city here.
    NotServed = "not_served", Declined,
        "This card cannot be used here.",
        "此卡不能在此使用。";
    /// Another refusal by the card company.
    Declined = "declined", Declined,
        "The card company declined this transaction.",
        "发卡机构拒绝了此交易。";
    /// The card's balance is too low.
    InsufficientBalance = "insufficient_balance", CardDeclined,
        "The card's balance is too low.",
        "卡内余额不足。";
    /// The card is locked.
    CardLocked = "card_locked", CardDeclined,
        "This card is locked.",
        "此卡已锁定。";
    /// The card refused the transaction for another reason.
    CardRefused = "card_refused", CardDeclined,
        "The card refused this transaction. Nothing was charged.",
        "卡片拒绝了此交易，未扣款。";
    /// The card was removed while it was written.
    Interrupted = "interrupted", Interrupted,
        "The card was removed too early. Put it back on the reader to finish.",
        "卡片移开过早，请重新放卡以完成交易。";
    /// The card stopped answering while it was written.
    InterruptedNotAnswering = "interrupted_not_answering", Interrupted,
        "The card stopped answering. Put it back on the reader to finish.",
        "卡片无响应，请重新放卡以完成交易。";
    /// No card on the reader.
    NoCard = "no_card", Card,
        "Put the card on the reader.",
        "请将卡片放在读卡器上。";
    /// The card was removed before anything was written.
    CardRemoved = "card_removed", Card,
        "The card was removed. Nothing was charged. Put it back on the reader.",
        "卡片已移开，未扣款，请重新放卡。";
    /// The card did not answer.
    CardNotAnswering = "card_not_answering", Card,
        "The card does not answer. Nothing was charged. Try again or use another card.",
        "卡片无响应，未扣款，请重试或更换卡片。";
    /// The card is not one this service can read.
    CardUnreadable = "card_unreadable", Card,
        "This card cannot be read here.",
        "无法读取此卡。";
    /// The reader failed.
    ReaderFault = "reader_fault", Card,
        "The card reader is not working. Check that it is plugged in.",
        "读卡器工作异常，请检查连接。";
    /// The card company could not be reached.
    ServiceUnreachable = "service_unreachable", Unreachable,
        "The card company cannot be reached. Nothing was charged. Try again later.",
        "无法连接发卡机构，未扣款，请稍后再试。";
    /// The card company's certificate is not trusted.
    ServiceUntrusted = "service_untrusted", Unreachable,
        "The connection to the card company is not secure. Nothing was sent.",
        "与发卡机构的连接不安全，未发送任何数据。";
    /// The card company is busy or failed; nothing was decided.
    ServiceBusy = "service_busy", Unreachable,
        "The card company is busy. Nothing was charged. Try again later.",
        "发卡机构繁忙，未扣款，请稍后再试。";
    /// The card committed; the card company has not confirmed yet.
    Unconfirmed = "unconfirmed", Unconfirmed,
        "The card was updated. The confirmation will follow; keep your receipt.",
        "卡片已更新，确认信息稍后送达，请保留凭证。";
    /// This reader is not registered, not accepted, or its files are missing.
    ReaderNotAccepted = "reader_not_accepted", Setup,
        "This terminal is out of service.",
        "此终端暂停服务。";
    /// Anything else.
    Internal = "internal", Internal,
        "Something went wrong. Nothing was charged. Please contact customer service.",
        "系统异常，未扣款，请联系客服。";
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Fen as the cardholder reads it: `100.00`.
pub fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// The code of a service refusal, before the card was touched.
fn refusal(code: &str) -> Code {
    match code {
        "limit" => Code::OverLimit,
        "insufficient_balance" => Code::InsufficientBalance,
        "card_blocked" => Code::CardBlocked,
        "card_suspect" => Code::CardSuspect,
        "card_not_valid" => Code::CardNotValid,
        "order_not_payable" | "order_exists" | "other_payment" => Code::OrderNotPayable,
        "unknown_order" => Code::UnknownOrder,
        "unknown_city" => Code::NotServed,
        "unauthenticated" | "certificate" | "unknown_reader" | "keys_refused" => {
            Code::ReaderNotAccepted
        }
        "rate_limited" | "ledger" | "request_pending" | "issuer" | "internal" | "timeout" => {
            Code::ServiceBusy
        }
        _ => Code::Declined,
    }
}

fn client_error(e: &ClientError) -> Code {
    match e {
        ClientError::Unreachable { .. } => Code::ServiceUnreachable,
        ClientError::Untrusted { .. } => Code::ServiceUntrusted,
        ClientError::Refused { code, .. } => refusal(code),
        ClientError::BadReply { .. } => Code::ServiceBusy,
        ClientError::Setup(_) => Code::ReaderNotAccepted,
    }
}

fn card_fault(f: Option<CardFault>) -> Code {
    match f {
        Some(CardFault::Removed) => Code::CardRemoved,
        Some(CardFault::NotAnswering) => Code::CardNotAnswering,
        Some(CardFault::Absent) => Code::NoCard,
        Some(CardFault::Reader) => Code::ReaderFault,
        None => Code::CardUnreadable,
    }
}

/// The code of a finished (or stopped) online transaction. `purchase`: a payment rather
/// than a load.
pub fn classify(result: &Result<RechargeOutcome, RechargeError>, purchase: bool) -> Code {
    let o = match result {
        Ok(o) => o,
        Err(RechargeError::Service(e)) => {
            return match client_error(e) {
                Code::OrderNotPayable if !purchase => Code::NotPaid,
                c => c,
            };
        }
        Err(RechargeError::Card { fault, .. }) => return card_fault(*fault),
        Err(RechargeError::Undecided { .. }) => return Code::Undecided,
        Err(RechargeError::OrderState { .. }) => return Code::OrderNotPayable,
        Err(RechargeError::Reader(_)) => return Code::ReaderNotAccepted,
    };
    if o.outcome.starts_with("unknown") {
        return match o.card_fault {
            Some(CardFault::NotAnswering) => Code::InterruptedNotAnswering,
            _ => Code::Interrupted,
        };
    }
    if let Some(rest) = o.outcome.strip_prefix("failed ") {
        if o.card_fault.is_some() {
            return card_fault(o.card_fault);
        }
        // `failed 0xCODE: name`, the name from the script's fail_codes.
        let name = rest.split_once(": ").map_or("", |(_, n)| n);
        return match name {
            "insufficient" => Code::InsufficientBalance,
            "locked" => Code::CardLocked,
            _ => Code::CardRefused,
        };
    }
    match &o.settled {
        Some(s) if s.state == "committed" => {
            if purchase {
                Code::Paid
            } else {
                Code::Loaded
            }
        }
        _ => Code::Unconfirmed,
    }
}

/// One JSON Lines event (docs/kiosk.md).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step of the transaction, numbered `step` of `of` (the count grows when the
    /// card's interrupted transaction is recovered first).
    Progress {
        /// This step, from 1.
        step: u32,
        /// Steps in all, as known now.
        of: u32,
        /// `order`, `query_script`, `card_read`, `approved`, `recovering`, `card_done`,
        /// `confirmed`.
        stage: &'static str,
        /// One line for the cardholder (English).
        message: String,
        /// The card, once read.
        #[serde(skip_serializing_if = "Option::is_none")]
        card_id: Option<String>,
        /// Its balance, fen, once read.
        #[serde(skip_serializing_if = "Option::is_none")]
        balance_fen: Option<u64>,
        /// The same as the cardholder reads it.
        #[serde(skip_serializing_if = "Option::is_none")]
        balance: Option<String>,
    },
    /// The card as its query read it (`cardvm client card`).
    Card {
        /// Card id (hex).
        card_id: String,
        /// Balance, fen.
        balance_fen: Option<u64>,
        /// The same as the cardholder reads it.
        balance: Option<String>,
        /// Every field the query reported: integers, and byte strings in hex.
        fields: serde_json::Map<String, serde_json::Value>,
    },
    /// The one final event.
    Result(Box<Final>),
}

/// The final event's body.
#[derive(Debug, Clone, Serialize)]
pub struct Final {
    /// The stable code.
    pub code: Code,
    /// Its class.
    pub class: Class,
    /// The process exit code.
    pub exit_code: i32,
    /// For the cardholder, English.
    pub message: String,
    /// For the cardholder, Chinese.
    pub message_zh: String,
    /// The amount, fen (0 for a card read).
    pub amount_fen: u64,
    /// The amount as the cardholder reads it.
    pub amount: String,
    /// The card, when read.
    pub card_id: Option<String>,
    /// Its balance before, fen, when read.
    pub balance_before_fen: Option<u64>,
    /// Its balance after, fen, when the card company confirmed it.
    pub balance_after_fen: Option<u64>,
    /// The transaction's seq at the card company, when it answered.
    pub seq: Option<u64>,
    /// Earlier interrupted transactions of this card recovered on the way.
    pub recovered: u32,
    /// For the operator's log (never shown to the cardholder).
    pub detail: String,
    /// The signed receipt, when the card was run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<serde_json::Value>,
}

impl Final {
    /// The final event of `code` with nothing else known yet.
    pub fn new(code: Code, amount_fen: u64, detail: String) -> Self {
        Final {
            code,
            class: code.class(),
            exit_code: code.class().exit_code(),
            message: code.message_en().into(),
            message_zh: code.message_zh().into(),
            amount_fen,
            amount: yuan(amount_fen),
            card_id: None,
            balance_before_fen: None,
            balance_after_fen: None,
            seq: None,
            recovered: 0,
            detail,
            receipt: None,
        }
    }

    /// The final event of an online transaction of `amount_fen`.
    pub fn of(
        result: &Result<RechargeOutcome, RechargeError>,
        amount_fen: u64,
        purchase: bool,
    ) -> Self {
        let code = classify(result, purchase);
        match result {
            Err(e) => Final::new(code, amount_fen, e.to_string()),
            Ok(o) => {
                let detail = match (&o.settled, &o.delivery_error) {
                    (_, Some(e)) => format!("card {}; not confirmed: {e}", o.outcome),
                    (Some(s), None) => format!("card {}; card company: {}", o.outcome, s.state),
                    (None, None) => format!("card {}", o.outcome),
                };
                let mut f = Final::new(code, amount_fen, detail);
                f.card_id = (!o.card_id.is_empty()).then(|| o.card_id.clone());
                f.balance_before_fen = o.balance_before;
                f.balance_after_fen = match code.class() {
                    Class::Ok => o.balance_before.map(|b| {
                        if purchase {
                            b.saturating_sub(amount_fen)
                        } else {
                            b.saturating_add(amount_fen)
                        }
                    }),
                    _ => None,
                };
                f.seq = o.settled.as_ref().map(|s| s.seq);
                f.recovered = u32::try_from(o.recovered.len()).unwrap_or(u32::MAX);
                f.receipt = serde_json::from_str(&o.receipt).ok();
                f
            }
        }
    }
}

/// Numbers the steps of one transaction as they come, including a recovery of the card's
/// interrupted transaction first (which adds its steps to the count).
#[derive(Debug, Clone)]
pub struct Progress {
    n: u32,
    of: u32,
    purchase: bool,
}

impl Progress {
    /// For a load (`purchase` false) or a payment; `order`: the order is shown first.
    pub fn new(purchase: bool, order: bool) -> Self {
        Progress {
            n: 0,
            of: if order { 6 } else { 5 },
            purchase,
        }
    }

    /// The event for `step`.
    pub fn event(&mut self, step: &Step) -> Event {
        self.n += 1;
        let (stage, message, card) = match step {
            Step::QueryScript => (
                "query_script",
                "asking the card company for the card query".to_string(),
                None,
            ),
            Step::CardRead { card_id, balance } => (
                "card_read",
                match balance {
                    Some(b) => format!("card {card_id}: balance {}", yuan(*b)),
                    None => format!("card {card_id}"),
                },
                Some((card_id.clone(), *balance)),
            ),
            Step::Bundle { kind, seq } if kind == "recover" => {
                // The recovery's card run and confirmation, then the card is read again
                // and the transaction itself approved, run and confirmed.
                self.of += 4;
                (
                    "recovering",
                    format!(
                        "an earlier transaction on this card is unfinished: finishing it first (seq {seq})"
                    ),
                    None,
                )
            }
            Step::Bundle { seq, .. } => (
                "approved",
                format!(
                    "{} approved (seq {seq}); keep the card on the reader",
                    if self.purchase { "payment" } else { "load" }
                ),
                None,
            ),
            Step::CardDone { outcome } => ("card_done", format!("card: {outcome}"), None),
            Step::Settled(s) => (
                "confirmed",
                format!("card company: {} {}", s.kind, s.state),
                None,
            ),
            Step::Order(o) => (
                "order",
                format!(
                    "order {}: {} yuan to {} for {} ({})",
                    o.order_id, o.amount_display, o.merchant_name, o.description, o.state
                ),
                None,
            ),
        };
        let (card_id, balance_fen) = match card {
            Some((id, b)) => (Some(id), b),
            None => (None, None),
        };
        Event::Progress {
            step: self.n,
            of: self.of.max(self.n),
            stage,
            message,
            card_id,
            balance_fen,
            balance: balance_fen.map(yuan),
        }
    }
}

/// The `card` event of a card read ([`super::client::read_card`]).
pub fn card_event(info: &super::client::CardInfo) -> Event {
    Event::Card {
        card_id: info.card_id.clone(),
        balance_fen: info.balance,
        balance: info.balance.map(yuan),
        fields: info
            .fields
            .iter()
            .map(|(name, v)| {
                let v = match v {
                    crate::receipt::FieldValue::Int(i) => serde_json::json!(i),
                    crate::receipt::FieldValue::Bytes(b) => {
                        serde_json::json!(super::protocol::to_hex(b))
                    }
                };
                (name.clone(), v)
            })
            .collect(),
    }
}

/// The text line of a progress event for a person (`[2/5] card …`).
pub fn progress_line(e: &Event) -> Option<String> {
    match e {
        Event::Progress {
            step, of, message, ..
        } => Some(format!("[{step}/{of}] {message}")),
        Event::Card { .. } | Event::Result(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_messages_never_name_a_command() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            for m in [c.message_en(), c.message_zh()] {
                assert!(!m.is_empty());
                assert!(!m.contains("cardvm") && !m.contains("--"), "{m}");
            }
        }
        assert_eq!(seen.len(), Code::ALL.len());
    }

    #[test]
    fn a_recovery_first_renumbers_the_steps() {
        let mut p = Progress::new(false, false);
        let settled = super::super::protocol::SettleReply {
            reader_id: "R".into(),
            seq: 1,
            kind: "recover".into(),
            state: "committed".into(),
            already: false,
            decided_seq: Some(1),
            decided_state: Some("recovered-committed".into()),
        };
        let steps = [
            Step::QueryScript,
            Step::CardRead {
                card_id: "41".into(),
                balance: Some(500),
            },
            Step::Bundle {
                kind: "recover".into(),
                seq: 2,
            },
            Step::CardDone {
                outcome: "committed".into(),
            },
            Step::Settled(settled.clone()),
            Step::CardRead {
                card_id: "41".into(),
                balance: Some(10_500),
            },
            Step::Bundle {
                kind: "load".into(),
                seq: 3,
            },
            Step::CardDone {
                outcome: "committed".into(),
            },
            Step::Settled(settled),
        ];
        let lines: Vec<String> = steps
            .iter()
            .filter_map(|s| progress_line(&p.event(s)))
            .collect();
        let numbers: Vec<&str> = lines
            .iter()
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            numbers,
            [
                "[1/5]", "[2/5]", "[3/9]", "[4/9]", "[5/9]", "[6/9]", "[7/9]", "[8/9]", "[9/9]"
            ]
        );
    }
}
