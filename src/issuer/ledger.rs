//! The issuer's ledger: readers, cities, sealed bundles and their settlement, in SQL.
//!
//! One code path for both backends through `sqlx`'s `Any` driver: an embedded SQLite file
//! by default (`issuer.db`, `sqlite://issuer.db`), PostgreSQL (`postgres://…`) when
//! several service instances share one database. The schema is in `migrations/` and is
//! applied on [`Ledger::open`].
//!
//! # Exactly once, by the database
//!
//! Nothing here relies on process memory for correctness, so two issuer processes on
//! one PostgreSQL keep the guarantees:
//!
//! * a reader's sequence numbers come from one `UPDATE … SET next_seq = next_seq + 1
//!   … RETURNING`, so two bundles never share a seq;
//! * a query receipt buys at most one bundle (`query_sm3` is `UNIQUE`);
//! * a transaction leaves `issued` (or `unknown`) only through an `UPDATE … WHERE
//!   state = 'issued'` (`'unknown'`) whose row count is checked: the second settlement
//!   of a transaction changes nothing and is reported as already settled.

use std::fmt;
use std::str::FromStr;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// The migrations, in order (the same SQL text on SQLite and PostgreSQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../migrations/0001_ledger.sql"),
    ),
    (
        2,
        "requests",
        include_str!("../../migrations/0002_requests.sql"),
    ),
    (
        3,
        "card limits",
        include_str!("../../migrations/0003_card_limits.sql"),
    ),
    (
        4,
        "card state",
        include_str!("../../migrations/0004_card_state.sql"),
    ),
    (
        5,
        "host secured",
        include_str!("../../migrations/0005_host_secured.sql"),
    ),
    (
        6,
        "merchants",
        include_str!("../../migrations/0006_merchants.sql"),
    ),
    (
        7,
        "offline purchases",
        include_str!("../../migrations/0007_offline_purchases.sql"),
    ),
];

/// A ledger failure: one line, with the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed an operation (connection, pool timeout, I/O, a restart):
    /// nothing was decided, and the same request may be retried.
    #[error("ledger {op}: {detail}")]
    Db {
        /// What the ledger was doing.
        op: &'static str,
        /// The driver's message.
        detail: String,
    },
    /// A uniqueness constraint refused the write: the row exists (another request or
    /// instance got there first). Not retryable as it is.
    #[error("ledger {op}: already recorded ({detail})")]
    Conflict {
        /// What the ledger was doing.
        op: &'static str,
        /// The driver's message (the constraint, where the database names it).
        detail: String,
    },
    /// A row holds a value this build cannot read (edited by hand, or a newer build).
    #[error("ledger row {what}: {detail}")]
    Corrupt {
        /// Which row/column.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The database URL is not one this build serves.
    #[error("ledger URL `{0}`: use a file path, sqlite://PATH or postgres://…")]
    BadUrl(String),
}

/// Maps a driver error by what it means: a unique violation is a conflict (decided by
/// the database: the row is there), anything else a failure that is safe to retry.
pub(super) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => LedgerError::Conflict {
            op,
            detail: d
                .constraint()
                .map_or_else(|| d.message().to_string(), String::from),
        },
        _ => LedgerError::Db {
            op,
            detail: e.to_string(),
        },
    }
}

impl LedgerError {
    /// True for failures that decided nothing: the same request may be retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LedgerError::Db { .. })
    }
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// Sealed and handed to the reader; no receipt yet.
    Issued,
    /// The card committed it; its TAC verified.
    Committed,
    /// The script failed before the card's commit point: nothing moved.
    Failed,
    /// The card was torn away after the commit point: recovery must decide.
    Unknown,
    /// Was unknown; the card's GET TRANSACTION PROVE showed it committed.
    RecoveredCommitted,
    /// Was unknown; the card showed it never happened.
    RecoveredFailed,
}

impl TxnState {
    /// Every state, in lifecycle order.
    pub const ALL: [TxnState; 6] = [
        TxnState::Issued,
        TxnState::Committed,
        TxnState::Failed,
        TxnState::Unknown,
        TxnState::RecoveredCommitted,
        TxnState::RecoveredFailed,
    ];

    /// The name stored in the database and printed by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Issued => "issued",
            TxnState::Committed => "committed",
            TxnState::Failed => "failed",
            TxnState::Unknown => "unknown",
            TxnState::RecoveredCommitted => "recovered-committed",
            TxnState::RecoveredFailed => "recovered-failed",
        }
    }

    /// Whether the money moved (or may still move: issued and unknown count against
    /// limits until they are decided).
    pub fn counts_against_limits(self) -> bool {
        !matches!(self, TxnState::Failed | TxnState::RecoveredFailed)
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TxnState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TxnState::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = TxnState::ALL.iter().map(|t| t.name()).collect();
                format!("unknown state `{s}` (one of {})", names.join(", "))
            })
    }
}

/// What a bundle does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    /// A purse load (圈存).
    Load,
    /// A recovery: asks the card about an earlier transaction left `unknown`.
    Recover,
    /// An online purchase (消费): the card company is the terminal's PSAM (host-secured).
    Purchase,
}

impl TxnKind {
    /// `load` / `recover` / `purchase`.
    pub fn name(self) -> &'static str {
        match self {
            TxnKind::Load => "load",
            TxnKind::Recover => "recover",
            TxnKind::Purchase => "purchase",
        }
    }

    fn parse(s: &str) -> Result<Self, LedgerError> {
        match s {
            "load" => Ok(TxnKind::Load),
            "recover" => Ok(TxnKind::Recover),
            "purchase" => Ok(TxnKind::Purchase),
            _ => Err(LedgerError::Corrupt {
                what: "transactions.kind".into(),
                detail: format!("`{s}`"),
            }),
        }
    }
}

/// A city the issuer serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityRow {
    /// City / issuer id (the scripts' `.city`).
    pub city: u32,
    /// Purse algorithm: `des3`, `sm4` or `m1`.
    pub alg: String,
    /// Highest balance a purse may reach (fen).
    pub purse_limit: u64,
    /// Highest single load (fen).
    pub txn_limit: u64,
    /// Highest total of loads per card per local day (the card company's zone) (fen).
    pub day_limit: u64,
}

/// A reader the issuer serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderRow {
    /// Reader id (its certificate's CN).
    pub reader_id: String,
    /// Its certificate chain, PEM (leaf first); re-verified on every use.
    pub cert_pem: String,
    /// Certificate serial (hex).
    pub serial: String,
    /// Terminal id (6 bytes) the issuer puts in its data scripts.
    pub terminal_id: [u8; 6],
    /// The next sequence number to seal for it.
    pub next_seq: u64,
}

/// One transaction row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRow {
    /// The reader it was sealed for.
    pub reader_id: String,
    /// Its sequence number (the data script's seq).
    pub seq: u64,
    /// Load or recovery.
    pub kind: TxnKind,
    /// City.
    pub city: u32,
    /// Card id (application serial or UID), upper-case hex.
    pub card_id: String,
    /// Amount (fen); 0 for recoveries.
    pub amount: u64,
    /// Terminal id in the data script.
    pub terminal_id: [u8; 6],
    /// Date/time in the data script (BCD, upper-case hex).
    pub datetime: String,
    /// SM3 of the command script it is bound to (hex).
    pub command_sm3: String,
    /// Balance the card reported (query, then receipt).
    pub balance_before: Option<u64>,
    /// For a recovery: the seq of the transaction it asks about.
    pub recovers_seq: Option<u64>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Where it stands.
    pub state: TxnState,
    /// SM3 of the canonical receipt that settled it (hex).
    pub receipt_sm3: Option<String>,
    /// Unix seconds.
    pub settled_at: Option<u64>,
    /// The card's transaction counter for it.
    pub atc: Option<u64>,
    /// The MAC that lets the card commit (hex): a load's MAC2 (the card company issued it in
    /// host-secured mode; recovery compares the card's proof with it), a purchase's MAC1.
    pub mac2: Option<String>,
    /// The card's TAC (hex).
    pub tac: Option<String>,
    /// Balance after (fen).
    pub balance_after: Option<u64>,
    /// Why it failed, or how it was recovered.
    pub note: Option<String>,
    /// Whether its script is host-secured (the card company answers its MAC2).
    pub host_secured: bool,
}

/// A transaction to record when its bundle is sealed.
#[derive(Debug, Clone)]
pub struct NewTxn {
    /// Reader.
    pub reader_id: String,
    /// Allocated by [`Ledger::allocate_seq`].
    pub seq: u64,
    /// Load or recovery.
    pub kind: TxnKind,
    /// City.
    pub city: u32,
    /// Card id, upper-case hex.
    pub card_id: String,
    /// Amount (fen).
    pub amount: u64,
    /// Terminal id.
    pub terminal_id: [u8; 6],
    /// Date/time (BCD hex).
    pub datetime: String,
    /// Command script SM3 (hex).
    pub command_sm3: String,
    /// SM3 of the query receipt that bought it (hex), for loads.
    pub query_sm3: Option<String>,
    /// Balance from the query.
    pub balance_before: Option<u64>,
    /// For recoveries.
    pub recovers_seq: Option<u64>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Whether its script is host-secured (docs/host.md).
    pub host_secured: bool,
    /// The merchant order a purchase pays, or the paid recharge order a load uses: bound
    /// to this transaction in the same database transaction, or nothing is recorded
    /// ([`Recorded::OrderNotPayable`]).
    pub order_id: Option<String>,
}

/// What [`Ledger::record_host_answer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRecorded {
    /// The answer is recorded now.
    Now,
    /// The bundle already has an answer to this command: the request and response then.
    Already {
        /// The request answered (hex).
        request: String,
        /// The answer given (hex).
        response: String,
    },
    /// The transaction is no longer `issued` (settled, expired into `unknown`…).
    NotIssued,
}

/// The limits a load must fit, checked by [`Ledger::insert`] under the card's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// The card's balance as its query read it (fen).
    pub balance: u64,
    /// Highest balance: balance + unsettled loads + this one.
    pub purse_limit: u64,
    /// Highest total of the day's loads, this one included.
    pub day_limit: u64,
    /// Start of the day the daily limit counts (Unix seconds).
    pub day_start: u64,
    /// Now: `issued` bundles expired by then no longer count.
    pub now: u64,
}

/// What [`Ledger::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded as `issued`.
    Yes,
    /// Not recorded: today's loads (settled, issued or unknown) would exceed the limit.
    OverDailyLimit {
        /// Today's counted total before this load.
        today: u64,
        /// The city's daily limit.
        limit: u64,
    },
    /// Not recorded: balance + unsettled loads + this one would exceed the purse limit.
    OverPurseLimit {
        /// The card's balance (query).
        balance: u64,
        /// Loads issued or unknown, not yet settled.
        unsettled: u64,
        /// The city's purse limit.
        limit: u64,
    },
    /// Not recorded: the card has an `unknown` load to recover first.
    CardUnknown {
        /// That load's seq.
        seq: u64,
    },
    /// Not recorded: the order is not open for this amount (paid or being paid by
    /// another transaction, cancelled, expired, another amount, or its merchant disabled).
    OrderNotPayable,
}

/// A card's loads that count against its limits (`$1` the card, `$2` now): all but the
/// failed ones, an `issued` one only until its bundle expires.
const LIVE_LOADS: &str = "card_id = $1 AND kind = 'load' \
    AND state NOT IN ('failed', 'recovered-failed') \
    AND NOT (state = 'issued' AND expires_at <= $2)";

/// The day's total of a card's loads that count against the daily limit: one query for
/// the early check and for the decision under the card's lock.
async fn day_total<'e, E>(e: E, card: &str, day_start: u64, now: u64) -> Result<u64, LedgerError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total FROM transactions \
         WHERE {LIVE_LOADS} AND issued_at >= $3 AND issued_at < $4"
    )))
    .bind(card)
    .bind(to_i64(now, "now")?)
    .bind(to_i64(day_start, "day_start")?)
    .bind(to_i64(day_start.saturating_add(86_400), "day_end")?)
    .fetch_one(e)
    .await
    .map_err(db("sum today's loads"))?;
    get_u64(&row, "total")
}

/// What [`Ledger::check_card`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardCheck {
    /// First sight, or the counter and balance are what the ledger explains.
    Fine,
    /// Suspect (now or before): the evidence.
    Suspect(String),
}

/// A card as the ledger knows it (`cardvm issuer card show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardStateRow {
    /// City.
    pub city: u32,
    /// Card id, upper-case hex.
    pub card_id: String,
    /// Online counter at first sight or at the last clearing.
    pub base_online_atc: u64,
    /// Balance then.
    pub base_balance: u64,
    /// When (Unix seconds).
    pub base_at: u64,
    /// The card's settled loads in the ledger then (count).
    pub base_settled_n: u64,
    /// Their sum (fen).
    pub base_settled_sum: u64,
    /// Its open loads then (`issued` or `unknown`), which its counter may include.
    pub base_open_n: u64,
    /// The last query's online counter.
    pub last_online_atc: u64,
    /// The last query's balance.
    pub last_balance: u64,
    /// When (Unix seconds).
    pub last_at: u64,
    /// Why it is suspect, if it is.
    pub suspect: Option<String>,
    /// Since when.
    pub suspect_at: Option<u64>,
    /// Every suspicion and clearing, one per line.
    pub history: String,
}

/// A card's loads in the ledger now.
struct CardLoads {
    settled_n: u64,
    settled_sum: u64,
    open_n: u64,
    open_sum: u64,
}

/// How long after its expiry an `issued` load still explains a counter step (its bundle
/// may have run just before it expired, its receipt still on the way).
pub const ISSUED_GRACE: u64 = 86_400;

/// What a request id holds ([`Ledger::reserve_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved for this caller: do the work, then answer or release it.
    Reserved,
    /// Another caller holds it and is working on it.
    Pending {
        /// The endpoint it was reserved for.
        endpoint: String,
        /// SM3 of that request's body (hex).
        body_sm3: Option<String>,
    },
    /// Answered: the stored response is the answer to the same request again.
    Answered {
        /// The endpoint it answered.
        endpoint: String,
        /// SM3 of the body it answered (hex; absent for answers stored before migration 0003).
        body_sm3: Option<String>,
        /// The stored response.
        response: String,
    },
}

/// What a receipt settles a transaction as.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The new state (committed, failed or unknown).
    pub state: TxnState,
    /// SM3 of the canonical receipt (hex).
    pub receipt_sm3: String,
    /// Unix seconds.
    pub at: u64,
    /// Card counter.
    pub atc: Option<u64>,
    /// MAC2 (hex).
    pub mac2: Option<String>,
    /// TAC (hex).
    pub tac: Option<String>,
    /// Balance before, as the card reported it.
    pub balance_before: Option<u64>,
    /// Balance after.
    pub balance_after: Option<u64>,
    /// Reason.
    pub note: Option<String>,
}

/// The result of a conditional state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// This call moved the transaction.
    Now,
    /// It had already left the expected state; the row as it is.
    Already(Box<TxnRow>),
}

/// Which transactions [`Ledger::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this card (hex, any case).
    pub card_id: Option<String>,
    /// Only this state.
    pub state: Option<TxnState>,
    /// Only this reader.
    pub reader_id: Option<String>,
    /// At most this many, newest first (0: all).
    pub limit: u32,
}

/// The ledger (a connection pool; cheap to clone).
#[derive(Clone)]
pub struct Ledger {
    pub(super) pool: AnyPool,
    url: String,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

/// The URL without a password (for logs and errors).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:REDACTED{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Turns a CLI `--db` value into a driver URL: a bare path is an SQLite file (created
/// when missing).
pub fn database_url(db: &str) -> Result<String, LedgerError> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(db.to_string())
    } else if let Some(path) = db.strip_prefix("sqlite://") {
        Ok(sqlite_url(path))
    } else if db.contains("://") {
        Err(LedgerError::BadUrl(db.to_string()))
    } else {
        Ok(sqlite_url(db))
    }
}

fn sqlite_url(path: &str) -> String {
    if path.contains('?') || path == ":memory:" {
        format!("sqlite://{path}")
    } else {
        format!("sqlite://{path}?mode=rwc")
    }
}

/// Upper-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Parses hex (any case, no separators).
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn to_i64(v: u64, what: &'static str) -> Result<i64, LedgerError> {
    i64::try_from(v).map_err(|_| LedgerError::Corrupt {
        what: what.into(),
        detail: format!("{v} does not fit a BIGINT"),
    })
}

pub(super) fn get_u64(row: &AnyRow, col: &str) -> Result<u64, LedgerError> {
    let v: i64 = row.try_get(col).map_err(|e| LedgerError::Corrupt {
        what: col.into(),
        detail: e.to_string(),
    })?;
    u64::try_from(v).map_err(|_| LedgerError::Corrupt {
        what: col.into(),
        detail: format!("negative {v}"),
    })
}

pub(super) fn get_opt_u64(row: &AnyRow, col: &str) -> Result<Option<u64>, LedgerError> {
    let v: Option<i64> = row.try_get(col).map_err(|e| LedgerError::Corrupt {
        what: col.into(),
        detail: e.to_string(),
    })?;
    v.map(|v| {
        u64::try_from(v).map_err(|_| LedgerError::Corrupt {
            what: col.into(),
            detail: format!("negative {v}"),
        })
    })
    .transpose()
}

pub(super) fn get_str(row: &AnyRow, col: &str) -> Result<String, LedgerError> {
    row.try_get(col).map_err(|e| LedgerError::Corrupt {
        what: col.into(),
        detail: e.to_string(),
    })
}

pub(super) fn get_opt_str(row: &AnyRow, col: &str) -> Result<Option<String>, LedgerError> {
    row.try_get(col).map_err(|e| LedgerError::Corrupt {
        what: col.into(),
        detail: e.to_string(),
    })
}

fn terminal_from_hex(text: &str, what: &str) -> Result<[u8; 6], LedgerError> {
    unhex(text)
        .and_then(|b| <[u8; 6]>::try_from(b).ok())
        .ok_or_else(|| LedgerError::Corrupt {
            what: what.into(),
            detail: format!("terminal id `{text}` is not 6 bytes of hex"),
        })
}

const TXN_COLUMNS: &str = "reader_id, seq, kind, city, card_id, amount, terminal_id, txn_datetime, \
     command_sm3, balance_before, recovers_seq, issued_at, expires_at, state, receipt_sm3, \
     settled_at, atc, mac2, tac, balance_after, note, host_secured";

fn txn_from_row(row: &AnyRow) -> Result<TxnRow, LedgerError> {
    let city = get_u64(row, "city")?;
    Ok(TxnRow {
        reader_id: get_str(row, "reader_id")?,
        seq: get_u64(row, "seq")?,
        kind: TxnKind::parse(&get_str(row, "kind")?)?,
        city: u32::try_from(city).map_err(|_| LedgerError::Corrupt {
            what: "transactions.city".into(),
            detail: format!("{city}"),
        })?,
        card_id: get_str(row, "card_id")?,
        amount: get_u64(row, "amount")?,
        terminal_id: terminal_from_hex(&get_str(row, "terminal_id")?, "transactions.terminal_id")?,
        datetime: get_str(row, "txn_datetime")?,
        command_sm3: get_str(row, "command_sm3")?,
        balance_before: get_opt_u64(row, "balance_before")?,
        recovers_seq: get_opt_u64(row, "recovers_seq")?,
        issued_at: get_u64(row, "issued_at")?,
        expires_at: get_u64(row, "expires_at")?,
        state: get_str(row, "state")?
            .parse()
            .map_err(|detail| LedgerError::Corrupt {
                what: "transactions.state".into(),
                detail,
            })?,
        receipt_sm3: get_opt_str(row, "receipt_sm3")?,
        settled_at: get_opt_u64(row, "settled_at")?,
        atc: get_opt_u64(row, "atc")?,
        mac2: get_opt_str(row, "mac2")?,
        tac: get_opt_str(row, "tac")?,
        balance_after: get_opt_u64(row, "balance_after")?,
        note: get_opt_str(row, "note")?,
        host_secured: get_u64(row, "host_secured")? != 0,
    })
}

impl Ledger {
    /// Connects (creating an SQLite file when missing) and applies the migrations.
    /// `db` is a path, `sqlite://PATH` or `postgres://…`.
    pub async fn open(db: &str) -> Result<Self, LedgerError> {
        sqlx::any::install_default_drivers();
        let url = database_url(db)?;
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            // SQLite serialises writers anyway; one connection avoids SQLITE_BUSY
            // between the pool's own connections.
            .max_connections(if sqlite { 1 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        use sqlx::Executor;
                        // WAL: readers (`issuer ledger` beside a running service) do not
                        // block the writer; synchronous stays FULL, a bundle recorded is
                        // on disk before the reader gets it.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect(&url)
            .await
            .map_err(|e| LedgerError::Db {
                op: "connect",
                detail: format!("{}: {e}", redact_url(&url)),
            })?;
        let ledger = Ledger { pool, url };
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// The database URL, password redacted.
    pub fn url(&self) -> String {
        redact_url(&self.url)
    }

    async fn migrate(&self) -> Result<(), LedgerError> {
        use sqlx::SqlSafeStr;
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let migrations = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    std::borrow::Cow::Borrowed(*d),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        migrator.run(&self.pool).await.map_err(|e| LedgerError::Db {
            op: "migrate",
            detail: e.to_string(),
        })
    }

    /// A setting, if set.
    pub async fn config(&self, name: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT value FROM issuer_config WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read config"))?;
        row.map(|r| get_str(&r, "value")).transpose()
    }

    /// Sets (or replaces) a setting.
    pub async fn set_config(&self, name: &str, value: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO issuer_config (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(db("write config"))?;
        Ok(())
    }

    /// Adds or replaces a city.
    pub async fn set_city(&self, c: &CityRow) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO cities (city, alg, purse_limit, txn_limit, day_limit) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (city) DO UPDATE SET \
             alg = excluded.alg, purse_limit = excluded.purse_limit, \
             txn_limit = excluded.txn_limit, day_limit = excluded.day_limit",
        )
        .bind(i64::from(c.city))
        .bind(c.alg.as_str())
        .bind(to_i64(c.purse_limit, "purse_limit")?)
        .bind(to_i64(c.txn_limit, "txn_limit")?)
        .bind(to_i64(c.day_limit, "day_limit")?)
        .execute(&self.pool)
        .await
        .map_err(db("write city"))?;
        Ok(())
    }

    /// A city, if served.
    pub async fn city(&self, city: u32) -> Result<Option<CityRow>, LedgerError> {
        let row = sqlx::query(
            "SELECT city, alg, purse_limit, txn_limit, day_limit FROM cities WHERE city = $1",
        )
        .bind(i64::from(city))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read city"))?;
        row.map(|r| {
            Ok(CityRow {
                city,
                alg: get_str(&r, "alg")?,
                purse_limit: get_u64(&r, "purse_limit")?,
                txn_limit: get_u64(&r, "txn_limit")?,
                day_limit: get_u64(&r, "day_limit")?,
            })
        })
        .transpose()
    }

    /// Stores a city's command script for `role` (`query`, `load`, `recover`).
    pub async fn set_script(&self, city: u32, role: &str, body: &[u8]) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO scripts (city, role, sm3, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (city, role) DO UPDATE SET sm3 = excluded.sm3, body = excluded.body",
        )
        .bind(i64::from(city))
        .bind(role)
        .bind(hex(&crate::crypto::sm3(body)))
        .bind(hex(body))
        .execute(&self.pool)
        .await
        .map_err(db("write script"))?;
        Ok(())
    }

    /// A city's command script for `role`: `(sm3 hex, bytes)`.
    pub async fn script(
        &self,
        city: u32,
        role: &str,
    ) -> Result<Option<(String, Vec<u8>)>, LedgerError> {
        let row = sqlx::query("SELECT sm3, body FROM scripts WHERE city = $1 AND role = $2")
            .bind(i64::from(city))
            .bind(role)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read script"))?;
        row.map(|r| {
            let body = get_str(&r, "body")?;
            let bytes = unhex(&body).ok_or_else(|| LedgerError::Corrupt {
                what: format!("scripts({city}, {role}).body"),
                detail: "not hex".into(),
            })?;
            Ok((get_str(&r, "sm3")?, bytes))
        })
        .transpose()
    }

    /// Adds a reader (its seq starts at 1), or replaces its certificate and terminal
    /// id keeping its seq (a renewed certificate must not reset the counter).
    pub async fn add_reader(
        &self,
        reader_id: &str,
        cert_pem: &str,
        serial: &str,
        terminal_id: &[u8; 6],
        now: u64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO readers (reader_id, cert_pem, serial, terminal_id, next_seq, added_at) \
             VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (reader_id) DO UPDATE SET \
             cert_pem = excluded.cert_pem, serial = excluded.serial, \
             terminal_id = excluded.terminal_id",
        )
        .bind(reader_id)
        .bind(cert_pem)
        .bind(serial)
        .bind(hex(terminal_id))
        .bind(to_i64(now, "added_at")?)
        .execute(&self.pool)
        .await
        .map_err(db("write reader"))?;
        Ok(())
    }

    /// A reader, if known.
    pub async fn reader(&self, reader_id: &str) -> Result<Option<ReaderRow>, LedgerError> {
        let row = sqlx::query(
            "SELECT reader_id, cert_pem, serial, terminal_id, next_seq FROM readers \
             WHERE reader_id = $1",
        )
        .bind(reader_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read reader"))?;
        row.map(|r| {
            Ok(ReaderRow {
                reader_id: get_str(&r, "reader_id")?,
                cert_pem: get_str(&r, "cert_pem")?,
                serial: get_str(&r, "serial")?,
                terminal_id: terminal_from_hex(
                    &get_str(&r, "terminal_id")?,
                    "readers.terminal_id",
                )?,
                next_seq: get_u64(&r, "next_seq")?,
            })
        })
        .transpose()
    }

    /// How many readers are registered (a default terminal id for the next one).
    pub async fn reader_count(&self) -> Result<u64, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM readers")
            .fetch_one(&self.pool)
            .await
            .map_err(db("count readers"))?;
        get_u64(&row, "n")
    }

    /// Allocates the reader's next sequence number: one atomic UPDATE, so concurrent
    /// issuers never hand out the same one.
    pub async fn allocate_seq(&self, reader_id: &str) -> Result<Option<u64>, LedgerError> {
        let row = sqlx::query(
            "UPDATE readers SET next_seq = next_seq + 1 WHERE reader_id = $1 \
             RETURNING next_seq - 1 AS seq",
        )
        .bind(reader_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("allocate seq"))?;
        row.map(|r| get_u64(&r, "seq")).transpose()
    }

    /// Puts a card on the blocklist (or updates the reason).
    pub async fn block_card(
        &self,
        card_id: &str,
        reason: &str,
        now: u64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO blocklist (card_id, reason, added_at) VALUES ($1, $2, $3) \
             ON CONFLICT (card_id) DO UPDATE SET reason = excluded.reason",
        )
        .bind(card_id.to_ascii_uppercase())
        .bind(reason)
        .bind(to_i64(now, "added_at")?)
        .execute(&self.pool)
        .await
        .map_err(db("block card"))?;
        Ok(())
    }

    /// Takes a card off the blocklist; whether it was on it.
    pub async fn unblock_card(&self, card_id: &str) -> Result<bool, LedgerError> {
        let r = sqlx::query("DELETE FROM blocklist WHERE card_id = $1")
            .bind(card_id.to_ascii_uppercase())
            .execute(&self.pool)
            .await
            .map_err(db("unblock card"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Why a card is blocked, if it is.
    pub async fn blocked(&self, card_id: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT reason FROM blocklist WHERE card_id = $1")
            .bind(card_id.to_ascii_uppercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read blocklist"))?;
        row.map(|r| get_str(&r, "reason")).transpose()
    }

    /// Records a sealed bundle (state `issued`), decided by the database for its card:
    /// one transaction that first writes the card's `card_locks` row (PostgreSQL locks
    /// it, SQLite takes its write lock), so issuances for one card on any number of
    /// instances are decided one after the other. For a load, `limits` are checked inside
    /// that transaction, counting the loads issued and not yet settled (until they
    /// expire) and those `unknown`; a card with an `unknown` load gets no new load.
    /// [`LedgerError::Conflict`] when the query already bought a bundle (`query_sm3` is
    /// unique): [`Ledger::txn_by_query`] finds it.
    pub async fn insert(
        &self,
        t: &NewTxn,
        limits: Option<&LoadLimits>,
    ) -> Result<Recorded, LedgerError> {
        let card = t.card_id.to_ascii_uppercase();
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO card_locks (card_id, version) VALUES ($1, 1) \
             ON CONFLICT (card_id) DO UPDATE SET version = card_locks.version + 1",
        )
        .bind(card.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db("lock card"))?;
        if let Some(l) = limits {
            let refused = Self::check_limits(&mut tx, &card, t.amount, l).await?;
            if refused != Recorded::Yes {
                tx.rollback().await.map_err(db("rollback"))?;
                return Ok(refused);
            }
        }
        sqlx::query(
            "INSERT INTO transactions (reader_id, seq, kind, city, card_id, amount, terminal_id, \
             txn_datetime, command_sm3, query_sm3, balance_before, recovers_seq, issued_at, \
             expires_at, state, host_secured) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, 'issued', $15)",
        )
        .bind(t.reader_id.as_str())
        .bind(to_i64(t.seq, "seq")?)
        .bind(t.kind.name())
        .bind(i64::from(t.city))
        .bind(t.card_id.as_str())
        .bind(to_i64(t.amount, "amount")?)
        .bind(hex(&t.terminal_id))
        .bind(t.datetime.as_str())
        .bind(t.command_sm3.as_str())
        .bind(t.query_sm3.clone())
        .bind(
            t.balance_before
                .map(|b| to_i64(b, "balance_before"))
                .transpose()?,
        )
        .bind(
            t.recovers_seq
                .map(|b| to_i64(b, "recovers_seq"))
                .transpose()?,
        )
        .bind(to_i64(t.issued_at, "issued_at")?)
        .bind(to_i64(t.expires_at, "expires_at")?)
        .bind(i64::from(t.host_secured))
        .execute(&mut *tx)
        .await
        .map_err(db("record bundle"))?;
        let bound = match (&t.order_id, t.kind) {
            (None, _) => true,
            (Some(order), TxnKind::Load) => {
                super::payment::bind_recharge_order(&mut tx, order, t).await?
            }
            (Some(order), _) => super::merchant::bind_order(&mut tx, order, t).await?,
        };
        if !bound {
            tx.rollback().await.map_err(db("rollback"))?;
            return Ok(Recorded::OrderNotPayable);
        }
        tx.commit().await.map_err(db("commit bundle"))?;
        Ok(Recorded::Yes)
    }

    /// The limits of a load, read under the card's lock.
    async fn check_limits(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        card: &str,
        amount: u64,
        l: &LoadLimits,
    ) -> Result<Recorded, LedgerError> {
        let now = to_i64(l.now, "now")?;
        if let Some(r) = sqlx::query(
            "SELECT seq FROM transactions WHERE card_id = $1 AND kind = 'load' \
             AND state = 'unknown' LIMIT 1",
        )
        .bind(card)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("find unknown"))?
        {
            return Ok(Recorded::CardUnknown {
                seq: get_u64(&r, "seq")?,
            });
        }
        // Counted: loads not failed; an `issued` one only until its bundle expires.
        let today = day_total(&mut **tx, card, l.day_start, l.now).await?;
        if today.saturating_add(amount) > l.day_limit {
            return Ok(Recorded::OverDailyLimit {
                today,
                limit: l.day_limit,
            });
        }
        // Not yet on the card as far as the query's balance knows: issued or unknown.
        let open = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total FROM transactions \
             WHERE {LIVE_LOADS} AND state IN ('issued', 'unknown')"
        )))
        .bind(card)
        .bind(now)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("sum unsettled loads"))?;
        let unsettled = get_u64(&open, "total")?;
        if l.balance.saturating_add(unsettled).saturating_add(amount) > l.purse_limit {
            return Ok(Recorded::OverPurseLimit {
                balance: l.balance,
                unsettled,
                limit: l.purse_limit,
            });
        }
        Ok(Recorded::Yes)
    }

    /// Records the card company's answer to a host command of an `issued` transaction,
    /// once (docs/host.md): with the card's counter and the MAC2 it was given, in one
    /// database transaction. A second answer to the same command is not recorded; the
    /// first is returned, so the caller answers a repeated request the same and refuses
    /// any other.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_host_answer(
        &self,
        reader_id: &str,
        seq: u64,
        ins: u8,
        request: &str,
        response: &str,
        at: u64,
        atc: Option<u64>,
        mac2: Option<&str>,
    ) -> Result<HostRecorded, LedgerError> {
        let seq_i = to_i64(seq, "seq")?;
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let inserted = sqlx::query(
            "INSERT INTO host_answers (reader_id, seq, ins, request, response, at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (reader_id, seq, ins) DO NOTHING",
        )
        .bind(reader_id)
        .bind(seq_i)
        .bind(i64::from(ins))
        .bind(request)
        .bind(response)
        .bind(to_i64(at, "at")?)
        .execute(&mut *tx)
        .await
        .map_err(db("record host answer"))?;
        if inserted.rows_affected() == 0 {
            let r = sqlx::query(
                "SELECT request, response FROM host_answers WHERE reader_id = $1 AND seq = $2 \
                 AND ins = $3",
            )
            .bind(reader_id)
            .bind(seq_i)
            .bind(i64::from(ins))
            .fetch_one(&mut *tx)
            .await
            .map_err(db("read host answer"))?;
            tx.rollback().await.map_err(db("rollback"))?;
            return Ok(HostRecorded::Already {
                request: get_str(&r, "request")?,
                response: get_str(&r, "response")?,
            });
        }
        let updated = sqlx::query(
            "UPDATE transactions SET atc = COALESCE($1, atc), mac2 = COALESCE($2, mac2) \
             WHERE reader_id = $3 AND seq = $4 AND state = 'issued'",
        )
        .bind(atc.map(|v| to_i64(v, "atc")).transpose()?)
        .bind(mac2)
        .bind(reader_id)
        .bind(seq_i)
        .execute(&mut *tx)
        .await
        .map_err(db("record host answer"))?;
        if updated.rows_affected() == 0 {
            tx.rollback().await.map_err(db("rollback"))?;
            return Ok(HostRecorded::NotIssued);
        }
        tx.commit().await.map_err(db("commit host answer"))?;
        Ok(HostRecorded::Now)
    }

    /// The card company's answer to a host command of a transaction, if it gave one:
    /// (request, response), hex.
    pub async fn host_answer(
        &self,
        reader_id: &str,
        seq: u64,
        ins: u8,
    ) -> Result<Option<(String, String)>, LedgerError> {
        let r = sqlx::query(
            "SELECT request, response FROM host_answers WHERE reader_id = $1 AND seq = $2 \
             AND ins = $3",
        )
        .bind(reader_id)
        .bind(to_i64(seq, "seq")?)
        .bind(i64::from(ins))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read host answer"))?;
        r.map(|r| Ok((get_str(&r, "request")?, get_str(&r, "response")?)))
            .transpose()
    }

    /// One transaction.
    pub async fn txn(&self, reader_id: &str, seq: u64) -> Result<Option<TxnRow>, LedgerError> {
        let sql =
            format!("SELECT {TXN_COLUMNS} FROM transactions WHERE reader_id = $1 AND seq = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(reader_id)
            .bind(to_i64(seq, "seq")?)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read transaction"))?;
        row.map(|r| txn_from_row(&r)).transpose()
    }

    /// The transaction a query receipt bought, if any.
    pub async fn txn_by_query(&self, query_sm3: &str) -> Result<Option<TxnRow>, LedgerError> {
        let sql = format!("SELECT {TXN_COLUMNS} FROM transactions WHERE query_sm3 = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query_sm3)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read transaction"))?;
        row.map(|r| txn_from_row(&r)).transpose()
    }

    /// Transactions matching `filter`, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<TxnRow>, LedgerError> {
        let mut sql = format!("SELECT {TXN_COLUMNS} FROM transactions WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.card_id.is_some() {
            sql.push_str(&format!(" AND card_id = ${}", next()));
        }
        if filter.state.is_some() {
            sql.push_str(&format!(" AND state = ${}", next()));
        }
        if filter.reader_id.is_some() {
            sql.push_str(&format!(" AND reader_id = ${}", next()));
        }
        sql.push_str(" ORDER BY issued_at DESC, reader_id, seq DESC");
        if filter.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", filter.limit));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(c) = &filter.card_id {
            q = q.bind(c.to_ascii_uppercase());
        }
        if let Some(s) = filter.state {
            q = q.bind(s.name());
        }
        if let Some(r) = &filter.reader_id {
            q = q.bind(r.clone());
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db("list"))?;
        rows.iter().map(txn_from_row).collect()
    }

    /// The oldest load or online purchase of this card left `unknown`, if any (an
    /// offline terminal sale left `unknown` is an operator's to decide: its recovery is
    /// not a bundle of the reader the card is on next).
    pub async fn oldest_unknown(&self, card_id: &str) -> Result<Option<TxnRow>, LedgerError> {
        let sql = format!(
            "SELECT {TXN_COLUMNS} FROM transactions WHERE card_id = $1 AND state = 'unknown' \
             AND kind IN ('load', 'purchase') AND terminal_seq IS NULL \
             ORDER BY issued_at, seq LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(card_id.to_ascii_uppercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read transaction"))?;
        row.map(|r| txn_from_row(&r)).transpose()
    }

    /// Total of this card's loads issued on the day starting at `day_start` that count
    /// against the daily limit at `now` (the rule [`Ledger::insert`] decides with).
    pub async fn load_total(
        &self,
        card_id: &str,
        day_start: u64,
        now: u64,
    ) -> Result<u64, LedgerError> {
        day_total(&self.pool, &card_id.to_ascii_uppercase(), day_start, now).await
    }

    /// Settles an `issued` transaction. [`Applied::Already`] when it had been settled
    /// (by this receipt or another): nothing changed.
    pub async fn settle(
        &self,
        reader_id: &str,
        seq: u64,
        s: &Settlement,
    ) -> Result<Applied, LedgerError> {
        let r = sqlx::query(
            "UPDATE transactions SET state = $1, receipt_sm3 = $2, settled_at = $3, \
             atc = COALESCE($4, atc), mac2 = COALESCE($5, mac2), tac = $6, balance_before = COALESCE($7, balance_before), \
             balance_after = $8, note = $9 WHERE reader_id = $10 AND seq = $11 AND state = 'issued'",
        )
        .bind(s.state.name())
        .bind(s.receipt_sm3.as_str())
        .bind(to_i64(s.at, "settled_at")?)
        .bind(s.atc.map(|v| to_i64(v, "atc")).transpose()?)
        .bind(s.mac2.clone())
        .bind(s.tac.clone())
        .bind(s.balance_before.map(|v| to_i64(v, "balance_before")).transpose()?)
        .bind(s.balance_after.map(|v| to_i64(v, "balance_after")).transpose()?)
        .bind(s.note.clone())
        .bind(reader_id)
        .bind(to_i64(seq, "seq")?)
        .execute(&self.pool)
        .await
        .map_err(db("settle"))?;
        self.applied(r.rows_affected(), reader_id, seq).await
    }

    /// Settles a recovery and decides the transaction it asked about, in one database
    /// transaction: either both rows move or neither does.
    pub async fn settle_recovery(
        &self,
        reader_id: &str,
        seq: u64,
        s: &Settlement,
        original_seq: u64,
        decided: TxnState,
        note: &str,
    ) -> Result<Applied, LedgerError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        let r = sqlx::query(
            "UPDATE transactions SET state = $1, receipt_sm3 = $2, settled_at = $3, note = $4 \
             WHERE reader_id = $5 AND seq = $6 AND state = 'issued'",
        )
        .bind(s.state.name())
        .bind(s.receipt_sm3.as_str())
        .bind(to_i64(s.at, "settled_at")?)
        .bind(s.note.clone())
        .bind(reader_id)
        .bind(to_i64(seq, "seq")?)
        .execute(&mut *tx)
        .await
        .map_err(db("settle recovery"))?;
        if r.rows_affected() == 0 {
            drop(tx);
            return self.applied(0, reader_id, seq).await;
        }
        if decided != TxnState::Unknown {
            let o = sqlx::query(
                "UPDATE transactions SET state = $1, note = $2, tac = COALESCE($3, tac) \
                 WHERE reader_id = $4 AND seq = $5 AND state = 'unknown'",
            )
            .bind(decided.name())
            .bind(note)
            .bind(s.tac.clone())
            .bind(reader_id)
            .bind(to_i64(original_seq, "seq")?)
            .execute(&mut *tx)
            .await
            .map_err(db("decide unknown"))?;
            if o.rows_affected() == 0 {
                // Decided meanwhile by another recovery: keep that decision, and this
                // recovery stays issued (it can be settled again, idempotently).
                tx.rollback().await.map_err(db("rollback"))?;
                return match self.txn(reader_id, original_seq).await? {
                    Some(row) => Ok(Applied::Already(Box::new(row))),
                    None => Err(LedgerError::Corrupt {
                        what: format!("transaction {reader_id}/{original_seq}"),
                        detail: "recovered transaction missing".into(),
                    }),
                };
            }
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(Applied::Now)
    }

    /// An operator decides an `unknown` load the card could not prove either way (the
    /// recovery's evidence is in its note): `recovered-committed` or `recovered-failed`,
    /// with the reason kept in the note. `Ok(false)` when the transaction is not
    /// `unknown` (decided meanwhile, or never unknown): nothing changes.
    pub async fn decide_unknown(
        &self,
        reader_id: &str,
        seq: u64,
        decided: TxnState,
        note: &str,
    ) -> Result<bool, LedgerError> {
        if !matches!(
            decided,
            TxnState::RecoveredCommitted | TxnState::RecoveredFailed
        ) {
            return Err(LedgerError::Corrupt {
                what: format!("transaction {reader_id}/{seq}"),
                detail: format!(
                    "an unknown load is decided recovered-committed or recovered-failed, not {}",
                    decided.name()
                ),
            });
        }
        let r = sqlx::query(
            "UPDATE transactions SET state = $1, note = $2 \
             WHERE reader_id = $3 AND seq = $4 AND state = 'unknown'",
        )
        .bind(decided.name())
        .bind(note)
        .bind(reader_id)
        .bind(to_i64(seq, "seq")?)
        .execute(&self.pool)
        .await
        .map_err(db("decide unknown"))?;
        Ok(r.rows_affected() == 1)
    }

    async fn applied(&self, rows: u64, reader_id: &str, seq: u64) -> Result<Applied, LedgerError> {
        if rows > 0 {
            return Ok(Applied::Now);
        }
        match self.txn(reader_id, seq).await? {
            Some(row) => Ok(Applied::Already(Box::new(row))),
            None => Err(LedgerError::Corrupt {
                what: format!("transaction {reader_id}/{seq}"),
                detail: "vanished while settling".into(),
            }),
        }
    }

    /// Reserves a reader's request id for `endpoint` and a body whose SM3 is `body_sm3`
    /// before any work is done, so that a raced id has exactly one effect (the database's
    /// primary key decides). A reservation left pending longer than `stale_after`
    /// seconds (its instance died mid-request) is taken over.
    pub async fn reserve_request(
        &self,
        reader_id: &str,
        request_id: &str,
        endpoint: &str,
        body_sm3: &str,
        now: u64,
        stale_after: u64,
    ) -> Result<Reservation, LedgerError> {
        let r = sqlx::query(
            "INSERT INTO requests (reader_id, request_id, endpoint, response, created_at, body_sm3) \
             VALUES ($1, $2, $3, '', $4, $5) ON CONFLICT (reader_id, request_id) DO NOTHING",
        )
        .bind(reader_id)
        .bind(request_id)
        .bind(endpoint)
        .bind(to_i64(now, "created_at")?)
        .bind(body_sm3)
        .execute(&self.pool)
        .await
        .map_err(db("reserve request"))?;
        if r.rows_affected() == 1 {
            return Ok(Reservation::Reserved);
        }
        let row = sqlx::query(
            "SELECT endpoint, response, created_at, body_sm3 FROM requests \
             WHERE reader_id = $1 AND request_id = $2",
        )
        .bind(reader_id)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read request"))?;
        let Some(row) = row else {
            // Released between the two statements: try once more on the next call.
            return Ok(Reservation::Pending {
                endpoint: endpoint.to_string(),
                body_sm3: Some(body_sm3.to_string()),
            });
        };
        let stored_endpoint = get_str(&row, "endpoint")?;
        let response = get_str(&row, "response")?;
        let stored_body = get_opt_str(&row, "body_sm3")?;
        if !response.is_empty() {
            return Ok(Reservation::Answered {
                endpoint: stored_endpoint,
                body_sm3: stored_body,
                response,
            });
        }
        let created = get_u64(&row, "created_at")?;
        let same = stored_endpoint == endpoint && stored_body.as_deref() == Some(body_sm3);
        if same && created.saturating_add(stale_after) < now {
            let t = sqlx::query(
                "UPDATE requests SET created_at = $1 WHERE reader_id = $2 AND request_id = $3 \
                 AND response = '' AND created_at = $4",
            )
            .bind(to_i64(now, "created_at")?)
            .bind(reader_id)
            .bind(request_id)
            .bind(to_i64(created, "created_at")?)
            .execute(&self.pool)
            .await
            .map_err(db("take over request"))?;
            if t.rows_affected() == 1 {
                return Ok(Reservation::Reserved);
            }
        }
        Ok(Reservation::Pending {
            endpoint: stored_endpoint,
            body_sm3: stored_body,
        })
    }

    /// Stores the answer to a request this instance reserved.
    pub async fn answer_request(
        &self,
        reader_id: &str,
        request_id: &str,
        response: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE requests SET response = $1 WHERE reader_id = $2 AND request_id = $3 \
             AND response = ''",
        )
        .bind(response)
        .bind(reader_id)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(db("store request"))?;
        Ok(())
    }

    /// Releases a reservation whose request was refused (nothing done): the reader may
    /// send the same id again.
    pub async fn release_request(
        &self,
        reader_id: &str,
        request_id: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "DELETE FROM requests WHERE reader_id = $1 AND request_id = $2 AND response = ''",
        )
        .bind(reader_id)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(db("release request"))?;
        Ok(())
    }

    /// Compares a query's online counter and balance with what the ledger explains for
    /// the card (DESIGN invariant 14): the base (first sight, or the last clearing) plus
    /// one counter step and the amount for each load settled since, and for each still
    /// open — `unknown`, or `issued` within [`ISSUED_GRACE`] of its expiry. A counter
    /// above that (a load the ledger never settled), below what it settled (another card
    /// under this number), or a balance above what loads explain (purchases only lower
    /// it) marks the card suspect, with the evidence; a suspect card stays suspect until
    /// [`Ledger::clear_card`].
    pub async fn check_card(
        &self,
        city: u32,
        card_id: &str,
        online_atc: u64,
        balance: u64,
        now: u64,
    ) -> Result<CardCheck, LedgerError> {
        let card = card_id.to_ascii_uppercase();
        let (atc, bal, at) = (
            to_i64(online_atc, "online_atc")?,
            to_i64(balance, "balance")?,
            to_i64(now, "now")?,
        );
        let loads = self.card_loads(city, &card, now).await?;
        let first = sqlx::query(
            "INSERT INTO card_state (card_id, base_online_atc, base_balance, base_at, \
             base_settled_n, base_settled_sum, base_open_n, last_online_atc, last_balance, \
             last_at, history, city) VALUES ($1, $2, $3, $4, $5, $6, $7, $2, $3, $4, '', $8) \
             ON CONFLICT (city, card_id) DO NOTHING",
        )
        .bind(card.as_str())
        .bind(atc)
        .bind(bal)
        .bind(at)
        .bind(to_i64(loads.settled_n, "settled_n")?)
        .bind(to_i64(loads.settled_sum, "settled_sum")?)
        .bind(to_i64(loads.open_n, "open_n")?)
        .bind(i64::from(city))
        .execute(&self.pool)
        .await
        .map_err(db("first sight of a card"))?;
        if first.rows_affected() == 1 {
            return Ok(CardCheck::Fine);
        }
        let Some(state) = self.card_state(city, &card).await? else {
            return Err(LedgerError::Corrupt {
                what: format!("card_state {city}/{card}"),
                detail: "vanished after insert".into(),
            });
        };
        let verdict = match &state.suspect {
            Some(reason) => CardCheck::Suspect(reason.clone()),
            None => {
                let settled_n = loads.settled_n.saturating_sub(state.base_settled_n);
                let settled_sum = loads.settled_sum.saturating_sub(state.base_settled_sum);
                // Loads open at the base may already be in its counter: not required.
                let low = state
                    .base_online_atc
                    .saturating_add(settled_n)
                    .saturating_sub(state.base_open_n);
                let high = state
                    .base_online_atc
                    .saturating_add(settled_n)
                    .saturating_add(loads.open_n);
                let most = state
                    .base_balance
                    .saturating_add(settled_sum)
                    .saturating_add(loads.open_sum);
                let mut evidence = Vec::new();
                if online_atc > high {
                    evidence.push(format!(
                        "online counter {online_atc} is above the {high} the ledger explains ({} at the base + {settled_n} settled + {} open loads)",
                        state.base_online_atc, loads.open_n
                    ));
                }
                if online_atc < low {
                    evidence.push(format!(
                        "online counter {online_atc} is below the {low} the ledger settled (another card under this number?)"
                    ));
                }
                if balance > most {
                    evidence.push(format!(
                        "balance {balance} is above the {most} the ledger explains ({} at the base + {settled_sum} settled + {} open loads)",
                        state.base_balance, loads.open_sum
                    ));
                }
                if evidence.is_empty() {
                    CardCheck::Fine
                } else {
                    CardCheck::Suspect(evidence.join("; "))
                }
            }
        };
        match &verdict {
            CardCheck::Suspect(reason) if state.suspect.is_none() => {
                sqlx::query(
                    "UPDATE card_state SET last_online_atc = $1, last_balance = $2, last_at = $3, \
                     suspect = $4, suspect_at = $3, history = history || $5 \
                     WHERE card_id = $6 AND city = $7",
                )
                .bind(atc)
                .bind(bal)
                .bind(at)
                .bind(reason.as_str())
                .bind(format!("{now} suspect: {reason}\n"))
                .bind(card.as_str())
                .bind(i64::from(city))
                .execute(&self.pool)
                .await
                .map_err(db("mark a card suspect"))?;
            }
            _ => {
                sqlx::query(
                    "UPDATE card_state SET last_online_atc = $1, last_balance = $2, last_at = $3 \
                     WHERE card_id = $4 AND city = $5",
                )
                .bind(atc)
                .bind(bal)
                .bind(at)
                .bind(card.as_str())
                .bind(i64::from(city))
                .execute(&self.pool)
                .await
                .map_err(db("record a card's query"))?;
            }
        }
        Ok(verdict)
    }

    /// A card's loads in the ledger: settled (count, sum) and open — `unknown`, or
    /// `issued` within [`ISSUED_GRACE`] of its expiry (count, sum).
    async fn card_loads(&self, city: u32, card: &str, now: u64) -> Result<CardLoads, LedgerError> {
        let row = sqlx::query(
            "SELECT \
             CAST(COALESCE(SUM(CASE WHEN state IN ('committed', 'recovered-committed') THEN 1 ELSE 0 END), 0) AS BIGINT) AS settled_n, \
             CAST(COALESCE(SUM(CASE WHEN state IN ('committed', 'recovered-committed') THEN amount ELSE 0 END), 0) AS BIGINT) AS settled_sum, \
             CAST(COALESCE(SUM(CASE WHEN state = 'unknown' OR (state = 'issued' AND expires_at + $2 > $3) THEN 1 ELSE 0 END), 0) AS BIGINT) AS open_n, \
             CAST(COALESCE(SUM(CASE WHEN state = 'unknown' OR (state = 'issued' AND expires_at + $2 > $3) THEN amount ELSE 0 END), 0) AS BIGINT) AS open_sum \
             FROM transactions WHERE card_id = $1 AND kind = 'load' AND city = $4",
        )
        .bind(card)
        .bind(to_i64(ISSUED_GRACE, "grace")?)
        .bind(to_i64(now, "now")?)
        .bind(i64::from(city))
        .fetch_one(&self.pool)
        .await
        .map_err(db("explain a card"))?;
        Ok(CardLoads {
            settled_n: get_u64(&row, "settled_n")?,
            settled_sum: get_u64(&row, "settled_sum")?,
            open_n: get_u64(&row, "open_n")?,
            open_sum: get_u64(&row, "open_sum")?,
        })
    }

    /// A card of a city as the ledger knows it.
    pub async fn card_state(
        &self,
        city: u32,
        card_id: &str,
    ) -> Result<Option<CardStateRow>, LedgerError> {
        Ok(self
            .card_states(card_id)
            .await?
            .into_iter()
            .find(|c| c.city == city))
    }

    /// A card as the ledger knows it, in every city that has seen that number.
    pub async fn card_states(&self, card_id: &str) -> Result<Vec<CardStateRow>, LedgerError> {
        let rows = sqlx::query(
            "SELECT city, card_id, base_online_atc, base_balance, base_at, base_settled_n, \
             base_settled_sum, base_open_n, last_online_atc, last_balance, last_at, suspect, \
             suspect_at, history FROM card_state WHERE card_id = $1 ORDER BY city",
        )
        .bind(card_id.to_ascii_uppercase())
        .fetch_all(&self.pool)
        .await
        .map_err(db("read a card"))?;
        rows.iter()
            .map(|r| {
                Ok(CardStateRow {
                    city: u32::try_from(get_u64(r, "city")?).map_err(|_| LedgerError::Corrupt {
                        what: "card_state.city".into(),
                        detail: "out of range".into(),
                    })?,
                    card_id: get_str(r, "card_id")?,
                    base_online_atc: get_u64(r, "base_online_atc")?,
                    base_balance: get_u64(r, "base_balance")?,
                    base_at: get_u64(r, "base_at")?,
                    base_settled_n: get_u64(r, "base_settled_n")?,
                    base_settled_sum: get_u64(r, "base_settled_sum")?,
                    base_open_n: get_u64(r, "base_open_n")?,
                    last_online_atc: get_u64(r, "last_online_atc")?,
                    last_balance: get_u64(r, "last_balance")?,
                    last_at: get_u64(r, "last_at")?,
                    suspect: get_opt_str(r, "suspect")?,
                    suspect_at: get_opt_u64(r, "suspect_at")?,
                    history: get_str(r, "history")?,
                })
            })
            .collect()
    }

    /// An operator clears a suspect card: its last query becomes the new base (loads
    /// issued since that query still count), the
    /// suspicion and `reason` stay in its history. `Ok(false)` when the card is not
    /// suspect (nothing changes).
    pub async fn clear_card(
        &self,
        city: u32,
        card_id: &str,
        reason: &str,
        now: u64,
    ) -> Result<bool, LedgerError> {
        let card = card_id.to_ascii_uppercase();
        let loads = self.card_loads(city, &card, now).await?;
        let r = sqlx::query(
            "UPDATE card_state SET base_online_atc = last_online_atc, base_balance = last_balance, \
             base_at = last_at, base_settled_n = $1, base_settled_sum = $2, base_open_n = $3, \
             suspect = NULL, suspect_at = NULL, history = history || $4 \
             WHERE card_id = $5 AND city = $6 AND suspect IS NOT NULL",
        )
        .bind(to_i64(loads.settled_n, "settled_n")?)
        .bind(to_i64(loads.settled_sum, "settled_sum")?)
        .bind(to_i64(loads.open_n, "open_n")?)
        .bind(format!("{now} cleared by an operator: {reason}\n"))
        .bind(card.as_str())
        .bind(i64::from(city))
        .execute(&self.pool)
        .await
        .map_err(db("clear a card"))?;
        Ok(r.rows_affected() == 1)
    }

    /// How many transactions are in each state (the service's metrics).
    pub async fn state_counts(&self) -> Result<Vec<(String, u64)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT state, CAST(COUNT(*) AS BIGINT) AS n FROM transactions GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("count states"))?;
        rows.iter()
            .map(|r| Ok((get_str(r, "state")?, get_u64(r, "n")?)))
            .collect()
    }

    /// Whether the database answers (the service's health check).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    /// Closes the pool (waits for connections to return).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
