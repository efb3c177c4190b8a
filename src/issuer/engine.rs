//! [`Issuer`]: the card company's side of one transaction — query in, bundle out,
//! receipt in, ledger settled.
//!
//! ```text
//! reader                                   Issuer
//! signed query receipt  ──────────────▶   verify_query: certificate (chain, validity,
//!                                          revocation), signature, the city's query
//!                                          script, freshness
//!                                          bundle: blocklist, limits, unknown loads first
//!                        ◀──────────────   sealed command + data (per-card keys, fresh seq)
//! signed receipt        ──────────────▶   settle: certificate, signature, binding to the
//!                                          issued bundle, the card's TAC, arithmetic;
//!                                          ledger state moves once
//! ```
//!
//! Every method re-verifies the reader's certificate against the trust store at the
//! issuer's clock, so a revocation or an expiry takes effect on the next request.

use std::sync::Arc;

use crate::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use crate::crypto::{KeyAlg, KeyUsage, SecretKey};
use crate::envelope::{EnvelopeHeader, ScriptKind, SealError};
use crate::issuer::keys::{KeyRole, KeyStoreError, MasterKeyStore};
use crate::issuer::ledger::{
    Applied, CardCheck, CityRow, HostRecorded, Ledger, LedgerError, LoadLimits, NewTxn, ReaderRow,
    Recorded, Settlement, TxnKind, TxnRow, TxnState, hex, unhex,
};
use crate::issuer::query::{CardQuery, QueryError, unix_to_bcd_datetime};
use crate::issuer::{PkiError, ReaderIdentity, TrustStore};
use crate::reader::Clock;
use crate::receipt::{FieldValue as Out, Outcome, Receipt, ReceiptError};
use crate::script::{CommandScript, DataScript, Field, FieldValue, ValueType};
use crate::verify::VerifiedProgram;

/// The issuer's tunables (seconds and fen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// A query older than this (by the reader's signed clock) is stale.
    pub query_window: u64,
    /// How far ahead of the issuer's clock a reader's clock may be.
    pub clock_skew: u64,
    /// How long a bundle stays openable.
    pub bundle_ttl: u64,
    /// How long a sealed query script stays openable (the reader keeps it).
    pub query_script_ttl: u64,
    /// Highest single load on an M1 card (fen). An M1 card cannot be loaded
    /// host-secured: the reader must load the sector key into its chip, so whoever owns
    /// a desktop reader holds that card's keys (docs/security.md); the cap bounds what
    /// one such key is worth per load, below the city's own per-load limit.
    pub m1_max_load: u64,
}

impl Default for IssuerPolicy {
    fn default() -> Self {
        IssuerPolicy {
            query_window: 300,
            clock_skew: 300,
            bundle_ttl: 600,
            query_script_ttl: 30 * 86_400,
            m1_max_load: 20_000,
        }
    }
}

/// Why the issuer refused: one line each, naming the reader, card or seq.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// The reader is not registered with this issuer.
    #[error("reader `{0}` is not registered with this issuer (cardvm issuer reader add)")]
    UnknownReader(String),
    /// Its certificate failed (expired, revoked, foreign CA, wrong id…).
    #[error("reader `{reader}`: {error}")]
    Certificate {
        /// Reader id.
        reader: String,
        /// Why.
        error: PkiError,
    },
    /// The receipt's signature or form.
    #[error("reader `{reader}`: {error}")]
    Receipt {
        /// Reader id.
        reader: String,
        /// Why.
        error: ReceiptError,
    },
    /// The receipt is not a query of this issuer's.
    #[error("not a card query: {0}")]
    NotAQuery(String),
    /// A query field is missing or malformed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The query is older than the window.
    #[error("stale query: the card was read {age} s ago (window {window} s); read it again")]
    StaleQuery {
        /// Seconds since the reader's query.
        age: u64,
        /// The window.
        window: u64,
    },
    /// The reader's clock is ahead of the issuer's.
    #[error("query time is {ahead} s ahead of the issuer's clock: the reader's clock is wrong")]
    QueryFromFuture {
        /// Seconds ahead.
        ahead: u64,
    },
    /// The query already bought a bundle.
    #[error("this query was already used for bundle {reader}/{seq}; read the card again")]
    QueryUsed {
        /// Reader.
        reader: String,
        /// The bundle's seq.
        seq: u64,
    },
    /// The city is not served, or lacks a script.
    #[error("city {city}: {what}")]
    City {
        /// City id.
        city: u32,
        /// What is missing.
        what: String,
    },
    /// The card is on the blocklist.
    #[error("card {card} is blocked: {reason}")]
    Blocked {
        /// Card id (hex).
        card: String,
        /// Why.
        reason: String,
    },
    /// The card's counter or balance moved beyond what the ledger explains (DESIGN
    /// invariant 14): no bundle until an operator clears it (`cardvm issuer card`).
    #[error(
        "card {card} is suspect: {evidence} (an operator checks it: cardvm issuer card show {card})"
    )]
    Suspect {
        /// Card id (hex).
        card: String,
        /// What the ledger saw.
        evidence: String,
    },
    /// The card is outside its validity dates.
    #[error("card {card} is not valid today ({detail})")]
    CardNotValid {
        /// Card id (hex).
        card: String,
        /// Which date.
        detail: String,
    },
    /// An amount or limit check failed.
    #[error("card {card}: {detail}")]
    Limit {
        /// Card id (hex).
        card: String,
        /// Which limit.
        detail: String,
    },
    /// The city's key store failed.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Sealing failed.
    #[error("sealing for reader `{reader}`: {error}")]
    Seal {
        /// Reader.
        reader: String,
        /// Why.
        error: SealError,
    },
    /// A stored script or the data built for it does not parse or verify.
    #[error("city {city} {role} script: {detail}")]
    Script {
        /// City.
        city: u32,
        /// Role.
        role: &'static str,
        /// What failed.
        detail: String,
    },
    /// No such order, or not one the caller may see.
    #[error("order `{0}`: no such order")]
    UnknownOrder(String),
    /// The order cannot be paid (or changed) now: paid, being paid, cancelled, expired,
    /// another amount, or its merchant disabled.
    #[error("order `{order}`: {detail}")]
    Order {
        /// The order.
        order: String,
        /// Why.
        detail: String,
    },
    /// The receipt names no bundle this issuer sealed.
    #[error("no bundle was issued for reader `{reader}` seq {seq}")]
    NoBundle {
        /// Reader.
        reader: String,
        /// Seq.
        seq: u64,
    },
    /// The receipt is not for this issuer, or not a transaction.
    #[error("receipt from reader `{reader}`: {detail}")]
    NotOurs {
        /// Reader.
        reader: String,
        /// What.
        detail: String,
    },
    /// The receipt contradicts the bundle it names.
    #[error("receipt {reader}/{seq} does not match its bundle: {detail}")]
    Mismatch {
        /// Reader.
        reader: String,
        /// Seq.
        seq: u64,
        /// Which value.
        detail: String,
    },
    /// The card's TAC does not verify: the card did not sign these values.
    #[error("receipt {reader}/{seq}: the card's TAC does not verify (not settled)")]
    TacMismatch {
        /// Reader.
        reader: String,
        /// Seq.
        seq: u64,
    },
    /// The city's script needs the card's keys in the bundle, and the reader is not a
    /// secure-element reader: its owner would hold them (docs/security.md).
    #[error(
        "reader `{reader}` is a {kind} reader: city {city}'s {role} script needs the card's keys in the bundle, which go only to secure-element readers (register a host-secured script, e.g. load_host.cvs)"
    )]
    KeysToDesktop {
        /// Reader.
        reader: String,
        /// Its certificate's kind.
        kind: crate::issuer::ReaderKind,
        /// City.
        city: u32,
        /// The script's role.
        role: &'static str,
    },
    /// A purchase of more than the card's balance (refused before anything is sealed).
    #[error("card {card}: balance {balance} is less than the amount {amount}")]
    Insufficient {
        /// Card id (hex).
        card: String,
        /// Its balance, fen.
        balance: u64,
        /// The amount asked, fen.
        amount: u64,
    },
    /// The reader is not a merchant's terminal, or its PSAM is not the one registered.
    #[error("reader `{reader}` cannot sell offline: {detail}")]
    NotATerminal {
        /// Reader id.
        reader: String,
        /// Why.
        detail: String,
    },
    /// An offline purchase's TAC does not verify.
    #[error(
        "offline purchase from reader `{reader}`, terminal {terminal} seq {terminal_seq}: the card's TAC does not verify (not settled)"
    )]
    OfflineTac {
        /// Reader id.
        reader: String,
        /// Terminal number (hex).
        terminal: String,
        /// Terminal sequence.
        terminal_seq: u32,
    },
    /// The transaction was already settled by a different receipt.
    #[error("transaction {reader}/{seq} was already settled as {state} by another receipt")]
    SettledByOther {
        /// Reader.
        reader: String,
        /// Seq.
        seq: u64,
        /// Its state.
        state: TxnState,
    },
}

/// The values a load's or a purchase's data script takes from the card company: the
/// amount (fen), the reader's terminal and the bundle's date/time.
fn txn_values(
    amount: u64,
    terminal: [u8; 6],
    when: [u8; 7],
) -> impl Fn(&str, &ValueType) -> Result<Option<FieldValue>, IssuerError> {
    move |name, ty| {
        Ok(match (name, ty) {
            ("amount", ValueType::Int { .. }) => Some(FieldValue::Int(amount)),
            ("terminal", ValueType::BytesN { len: 6 } | ValueType::Bytes) => {
                Some(FieldValue::Bytes(terminal.to_vec()))
            }
            ("now", ValueType::BcdDateTime) => Some(FieldValue::BcdDateTime(when)),
            _ => None,
        })
    }
}

/// The transaction type of an online purchase (EP purchase; `reference/epurse.md`).
const PURCHASE_TYPE: u8 = 0x06;

/// The card company's answer to one host command: the response APDU (data ‖ SW), and
/// why it refused when it did (for the log; the script sees only the status word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAnswer {
    /// Data ‖ SW.
    pub response: Vec<u8>,
    /// The reason of a refusal.
    pub refused: Option<String>,
}

/// A sealed bundle: the city's command script and a data script for one card, both
/// sealed for one reader with the same fresh seq.
#[derive(Clone)]
pub struct Bundle {
    /// Load, or recovery of an `unknown` load.
    pub kind: TxnKind,
    /// Reader.
    pub reader_id: String,
    /// Sequence number (of both envelopes).
    pub seq: u64,
    /// City.
    pub city: u32,
    /// Card id.
    pub card_id: Vec<u8>,
    /// Amount (fen; 0 for a recovery).
    pub amount: u64,
    /// For a recovery: the seq of the load it asks about.
    pub recovers_seq: Option<u64>,
    /// Unix seconds.
    pub expires: u64,
    /// The sealed command script.
    pub command: Vec<u8>,
    /// The sealed data script (holds the diversified keys, encrypted for the reader).
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("kind", &self.kind)
            .field("reader_id", &self.reader_id)
            .field("seq", &self.seq)
            .field("city", &self.city)
            .field("card_id", &hex(&self.card_id))
            .field("amount", &self.amount)
            .field("recovers_seq", &self.recovers_seq)
            .field("expires", &self.expires)
            .field(
                "command",
                &format_args!("{} sealed bytes", self.command.len()),
            )
            .field("data", &format_args!("{} sealed bytes", self.data.len()))
            .finish()
    }
}

/// A sealed script on its own (the city's query script for one reader).
#[derive(Debug, Clone)]
pub struct SealedScript {
    /// Reader.
    pub reader_id: String,
    /// Its seq.
    pub seq: u64,
    /// Unix seconds.
    pub expires: u64,
    /// The envelope.
    pub bytes: Vec<u8>,
}

/// A verified query: the reader, the card, the receipt's digest.
#[derive(Debug, Clone)]
pub struct VerifiedQuery {
    /// The card.
    pub card: CardQuery,
    /// The reader's row.
    pub reader: ReaderRow,
    /// The reader's identity from its certificate.
    pub identity: ReaderIdentity,
    /// SM3 of the canonical receipt (hex): a query buys one bundle.
    pub receipt_sm3: String,
}

/// What [`Issuer::settle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Reader.
    pub reader_id: String,
    /// Seq.
    pub seq: u64,
    /// Load or recovery.
    pub kind: TxnKind,
    /// The transaction's state now.
    pub state: TxnState,
    /// True when this receipt had already settled it (nothing changed).
    pub already: bool,
    /// For a recovery: the load it decided and how.
    pub decided: Option<(u64, TxnState)>,
}

/// The card company's side (see the module docs).
pub struct Issuer {
    ledger: Ledger,
    trust: std::sync::RwLock<Arc<TrustStore>>,
    /// Bumped by every [`Issuer::set_trust`]: what was verified under an older store
    /// (a cached reader identity) is verified again.
    trust_generation: std::sync::atomic::AtomicU64,
    key: Sm2PrivateKey,
    keys: Arc<dyn MasterKeyStore>,
    clock: Arc<dyn Clock + Send + Sync>,
    policy: IssuerPolicy,
    /// The card company's time zone: the date and time written to cards (and so into
    /// their TACs and receipts), the card's validity dates and the daily limit's day.
    zone: jiff::tz::TimeZone,
}

impl Issuer {
    /// An issuer over `ledger`, trusting reader certificates that chain to `trust`,
    /// sealing with `key`, diversifying card keys from `keys`.
    pub fn new(
        ledger: Ledger,
        trust: TrustStore,
        key: Sm2PrivateKey,
        keys: Arc<dyn MasterKeyStore>,
        clock: Arc<dyn Clock + Send + Sync>,
    ) -> Self {
        Issuer {
            ledger,
            trust: std::sync::RwLock::new(Arc::new(trust)),
            trust_generation: std::sync::atomic::AtomicU64::new(0),
            key,
            keys,
            clock,
            policy: IssuerPolicy::default(),
            zone: jiff::tz::TimeZone::get(crate::issuer::clearing::DEFAULT_ZONE)
                .unwrap_or(jiff::tz::TimeZone::UTC),
        }
    }

    /// Uses the IANA time zone `zone` for the dates written to cards, card validity and
    /// the daily limit (default `Asia/Shanghai`; the ledger keeps UTC).
    pub fn with_zone(mut self, zone: &str) -> Result<Self, String> {
        self.zone =
            jiff::tz::TimeZone::get(zone).map_err(|e| format!("time zone `{zone}`: {e}"))?;
        Ok(self)
    }

    /// `t` (unix seconds) as the BCD date-time `YYYYMMDDhhmmss` in the card company's zone.
    pub fn local_bcd(&self, t: u64) -> [u8; 7] {
        let offset = jiff::Timestamp::from_second(i64::try_from(t).unwrap_or(i64::MAX))
            .map(|ts| i64::from(self.zone.to_offset(ts).seconds()))
            .unwrap_or(0);
        unix_to_bcd_datetime(t.saturating_add_signed(offset))
    }

    /// The card company's time zone.
    pub(super) fn zone(&self) -> &jiff::tz::TimeZone {
        &self.zone
    }

    /// The card master keys.
    pub(super) fn master_keys(&self) -> &dyn MasterKeyStore {
        &*self.keys
    }

    /// The policy.
    pub(super) fn policy(&self) -> &IssuerPolicy {
        &self.policy
    }

    /// The start (unix seconds) of the local day that holds `t`.
    fn local_day_start(&self, t: u64) -> u64 {
        jiff::Timestamp::from_second(i64::try_from(t).unwrap_or(i64::MAX))
            .ok()
            .and_then(|ts| ts.to_zoned_datetime(self.zone.clone()).start_of_day().ok())
            .and_then(|z| u64::try_from(z.timestamp().as_second()).ok())
            .unwrap_or(t - t % 86_400)
    }

    /// Replaces the trust anchors and CRLs (a service reloads them from the ledger, so a
    /// new CRL takes effect without a restart).
    pub fn set_trust(&self, trust: TrustStore) {
        if let Ok(mut t) = self.trust.write() {
            *t = Arc::new(trust);
        }
        self.trust_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The CRLs in force: issuer, `crlNumber`, `thisUpdate`, `nextUpdate`.
    pub fn crl_summary(&self) -> Vec<(String, Option<u64>, u64, Option<u64>)> {
        self.trust().crl_summary()
    }

    /// Changes with every [`Issuer::set_trust`] (CRL or anchor reload).
    pub fn trust_generation(&self) -> u64 {
        self.trust_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The public key of a registered reader's certificate, read from the ledger WITHOUT
    /// verifying the chain or the CRLs: for checking a request's signature before any
    /// certificate work (a bad signature costs one SM2 verification, whoever sends it).
    /// `None` for a reader the ledger does not know or whose certificate does not parse.
    pub async fn reader_key_unverified(
        &self,
        reader_id: &str,
    ) -> Result<Option<Sm2PublicKey>, IssuerError> {
        let Some(row) = self.ledger.reader(reader_id).await? else {
            return Ok(None);
        };
        Ok(crate::issuer::trust::certs_from_pem(&row.cert_pem)
            .ok()
            .and_then(|chain| chain.first().map(crate::issuer::cert::cert_public_key))
            .and_then(Result::ok))
    }

    fn trust(&self) -> Arc<TrustStore> {
        match self.trust.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the policy.
    pub fn with_policy(mut self, policy: IssuerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The issuer's clock, unix seconds.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Signs `msg` with the card company's key (SM2 with the default distinguishing
    /// id): merchants' notifications, clearing summaries.
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; 64], crate::crypto::sm2::Sm2Error> {
        self.key.sign(&mut crate::crypto::rng::os_rng(), msg)
    }

    /// The public half of the sealing key (readers are configured with it).
    pub fn public_key(&self) -> &Sm2PublicKey {
        self.key.public_key()
    }

    /// The reader's row and its certificate, verified now.
    pub async fn verify_reader(
        &self,
        reader_id: &str,
    ) -> Result<(ReaderRow, ReaderIdentity), IssuerError> {
        let row = self
            .ledger
            .reader(reader_id)
            .await?
            .ok_or_else(|| IssuerError::UnknownReader(reader_id.into()))?;
        let cert_err = |error| IssuerError::Certificate {
            reader: reader_id.into(),
            error,
        };
        let chain = crate::issuer::trust::certs_from_pem(&row.cert_pem).map_err(cert_err)?;
        let identity = self
            .trust()
            .verify_reader_id(&chain, reader_id, self.clock.now())
            .map_err(cert_err)?;
        Ok((row, identity))
    }

    pub(super) async fn verify_receipt(
        &self,
        receipt: &Receipt,
    ) -> Result<(ReaderRow, ReaderIdentity, String), IssuerError> {
        let (row, identity) = self.verify_reader(&receipt.reader_id).await?;
        let receipt_err = |error| IssuerError::Receipt {
            reader: receipt.reader_id.clone(),
            error,
        };
        receipt
            .verify_production(&identity.public_key)
            .map_err(receipt_err)?;
        let bytes = receipt.to_bytes().map_err(receipt_err)?;
        Ok((row, identity, hex(&crate::crypto::sm3(&bytes))))
    }

    /// Verifies a query receipt: the reader's certificate and signature, that it ran
    /// this issuer's query script for its city to the end, and that it is fresh.
    pub async fn verify_query(&self, receipt: &Receipt) -> Result<VerifiedQuery, IssuerError> {
        let (reader, identity, receipt_sm3) = self.verify_receipt(receipt).await?;
        if !receipt.is_query() {
            return Err(IssuerError::NotAQuery(
                "the receipt names a data script: it is a transaction, not a query".into(),
            ));
        }
        if receipt.outcome != Outcome::Committed {
            return Err(IssuerError::NotAQuery(format!(
                "the query did not complete ({})",
                receipt.outcome
            )));
        }
        let (query_sm3, _) = self
            .ledger
            .script(receipt.city, "query")
            .await?
            .ok_or_else(|| IssuerError::City {
                city: receipt.city,
                what: "no query script (cardvm issuer city add … --query)".into(),
            })?;
        if !query_sm3.eq_ignore_ascii_case(&hex(&receipt.command_sm3)) {
            return Err(IssuerError::NotAQuery(format!(
                "command SM3 {} is not city {}'s query script",
                hex(&receipt.command_sm3),
                receipt.city
            )));
        }
        let card = CardQuery::from_receipt(receipt)?;
        let now = self.clock.now();
        if card.queried_at > now.saturating_add(self.policy.clock_skew) {
            return Err(IssuerError::QueryFromFuture {
                ahead: card.queried_at - now,
            });
        }
        let age = now.saturating_sub(card.queried_at);
        if age > self.policy.query_window {
            return Err(IssuerError::StaleQuery {
                age,
                window: self.policy.query_window,
            });
        }
        Ok(VerifiedQuery {
            card,
            reader,
            identity,
            receipt_sm3,
        })
    }

    async fn city(&self, city: u32) -> Result<CityRow, IssuerError> {
        self.ledger
            .city(city)
            .await?
            .ok_or_else(|| IssuerError::City {
                city,
                what: "not served by this issuer (cardvm issuer city add)".into(),
            })
    }

    pub(super) async fn program(
        &self,
        city: u32,
        role: &'static str,
    ) -> Result<(Vec<u8>, VerifiedProgram), IssuerError> {
        let (_, bytes) =
            self.ledger
                .script(city, role)
                .await?
                .ok_or_else(|| IssuerError::City {
                    city,
                    what: format!("no {role} script (cardvm issuer city add … --{role})"),
                })?;
        let script_err = |detail: String| IssuerError::Script { city, role, detail };
        let script = CommandScript::parse(&bytes).map_err(|e| script_err(e.to_string()))?;
        let program =
            VerifiedProgram::from_script(script).map_err(|e| script_err(e.to_string()))?;
        Ok((bytes, program))
    }

    /// Seals the city's query script for a reader (fresh seq). Readers run it on each
    /// tapped card; its signed receipt is what [`Issuer::bundle`] takes.
    pub async fn query_script(
        &self,
        reader_id: &str,
        city: u32,
    ) -> Result<SealedScript, IssuerError> {
        let (_, identity) = self.verify_reader(reader_id).await?;
        self.city(city).await?;
        let (bytes, program) = self.program(city, "query").await?;
        let seq = self.allocate(reader_id).await?;
        let expires = self
            .clock
            .now()
            .saturating_add(self.policy.query_script_ttl);
        let sealed = self.seal(
            &identity,
            ScriptKind::Query,
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

    async fn allocate(&self, reader_id: &str) -> Result<u64, IssuerError> {
        self.ledger
            .allocate_seq(reader_id)
            .await?
            .ok_or_else(|| IssuerError::UnknownReader(reader_id.into()))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn seal(
        &self,
        reader: &ReaderIdentity,
        kind: ScriptKind,
        program: &VerifiedProgram,
        seq: u64,
        expires: u64,
        command: &[u8],
        payload: &[u8],
    ) -> Result<Vec<u8>, IssuerError> {
        let h = program.header();
        let header = EnvelopeHeader {
            kind,
            city: h.city,
            script_id: h.script_id,
            script_version: h.version,
            seq,
            issued: self.clock.now(),
            expires,
            binding: crate::crypto::sm3(command),
            reader_id: reader.reader_id.clone(),
        };
        crate::envelope::seal(
            &self.key,
            &reader.public_key,
            &header,
            payload,
            &mut crate::crypto::rng::os_rng(),
        )
        .map_err(|error| IssuerError::Seal {
            reader: reader.reader_id.clone(),
            error,
        })
    }

    /// Builds the bundle a verified query asks for: a load of `amount` fen, or — when the
    /// card has a load left `unknown` — the city's recovery bundle for it first.
    pub async fn bundle(&self, receipt: &Receipt, amount: u64) -> Result<Bundle, IssuerError> {
        self.bundle_for(receipt, amount, None).await
    }

    /// [`Issuer::bundle`] using a paid recharge order (`docs/clearing.md` "Recharges
    /// paid first"): required in a city that takes only paid recharges. The order must be
    /// for this card and amount, paid exactly that by its provider, unexpired and not held
    /// by another load; it is bound to the bundle in the transaction that records it.
    pub async fn bundle_for(
        &self,
        receipt: &Receipt,
        amount: u64,
        order_id: Option<&str>,
    ) -> Result<Bundle, IssuerError> {
        let (q, card_hex) = self.admit(receipt).await?;
        let city = self.city(q.card.city).await?;
        if let Some(unknown) = self.ledger.oldest_unknown(&card_hex).await? {
            return self.recovery_bundle(&q, &unknown).await;
        }
        self.check_load(&q, &city, amount).await?;
        match order_id {
            Some(id) => {
                self.check_recharge_order(id, &city, &card_hex, amount)
                    .await?
            }
            None if self.paid_first(city.city).await? => {
                return Err(IssuerError::Order {
                    order: String::new(),
                    detail: format!(
                        "city {} loads only recharges paid first: give the paid order's id",
                        city.city
                    ),
                });
            }
            None => {}
        }
        self.load_bundle(&q, &city, amount, order_id).await
    }

    /// Whether a city loads only recharges paid first (`issuer city add --paid-first`).
    pub async fn paid_first(&self, city: u32) -> Result<bool, IssuerError> {
        Ok(self
            .ledger
            .config(&format!("paid_first.{city}"))
            .await?
            .is_some_and(|v| v == "1"))
    }

    async fn check_recharge_order(
        &self,
        order_id: &str,
        city: &CityRow,
        card_hex: &str,
        amount: u64,
    ) -> Result<(), IssuerError> {
        use crate::issuer::payment::RechargeState;
        let refuse = |detail: String| IssuerError::Order {
            order: order_id.into(),
            detail,
        };
        let o = self
            .ledger
            .recharge_order(order_id)
            .await?
            .ok_or_else(|| IssuerError::UnknownOrder(order_id.into()))?;
        if o.city != city.city || !o.card_id.eq_ignore_ascii_case(card_hex) {
            return Err(refuse(format!(
                "it is for card {} of city {}, not this card",
                o.card_id, o.city
            )));
        }
        if o.amount != amount {
            return Err(refuse(format!(
                "amount {amount} is not the order's {}",
                o.amount
            )));
        }
        match o.state(self.clock.now()) {
            RechargeState::Paid => Ok(()),
            RechargeState::Unpaid => Err(refuse(
                "not paid: the payment provider has not confirmed it".into(),
            )),
            RechargeState::Mispaid => Err(refuse(format!(
                "the provider reported {} paid, not {}: no load (the card company settles it)",
                o.paid_amount.unwrap_or_default(),
                o.amount
            ))),
            other => Err(refuse(format!("it is {}", other.name()))),
        }
    }

    /// A verified query that may buy a bundle: not used before, its card not blocked and
    /// not suspect (invariant 14: where the query read the online counter and the
    /// balance; an M1 query reads neither). Returns it with the card id in hex.
    async fn admit(&self, receipt: &Receipt) -> Result<(VerifiedQuery, String), IssuerError> {
        let q = self.verify_query(receipt).await?;
        let card_hex = hex(&q.card.card_id);
        if let Some(used) = self.ledger.txn_by_query(&q.receipt_sm3).await? {
            return Err(IssuerError::QueryUsed {
                reader: used.reader_id,
                seq: used.seq,
            });
        }
        if let Some(reason) = self.ledger.blocked(&card_hex).await? {
            return Err(IssuerError::Blocked {
                card: card_hex,
                reason,
            });
        }
        if let (Some(atc), Some(balance)) = (q.card.online_atc, q.card.balance)
            && let CardCheck::Suspect(evidence) = self
                .ledger
                .check_card(q.card.city, &card_hex, atc, balance, self.clock.now())
                .await?
        {
            return Err(IssuerError::Suspect {
                card: card_hex,
                evidence,
            });
        }
        Ok((q, card_hex))
    }

    /// Builds an online purchase bundle of `amount` fen for a verified query: host-secured
    /// (the card company is the terminal's PSAM: `docs/host.md`), so the reader holds no
    /// purchase key. A card with a load left `unknown` gets its recovery bundle first.
    pub async fn purchase(&self, receipt: &Receipt, amount: u64) -> Result<Bundle, IssuerError> {
        self.purchase_for(receipt, amount, None).await
    }

    /// An online purchase paying a merchant's order (`docs/clearing.md`): as
    /// [`Issuer::purchase`], for exactly the order's amount; the order is bound to the
    /// bundle's transaction in the same database transaction (a raced order gets one
    /// bundle). A card with a load left `unknown` gets its recovery bundle first, and the
    /// order stays open.
    pub async fn purchase_order(
        &self,
        receipt: &Receipt,
        amount: u64,
        order_id: &str,
    ) -> Result<Bundle, IssuerError> {
        self.purchase_for(receipt, amount, Some(order_id)).await
    }

    /// The order a cardholder is about to pay, if it can be paid now.
    pub async fn payable_order(
        &self,
        order_id: &str,
    ) -> Result<
        (
            crate::issuer::merchant::OrderRow,
            crate::issuer::merchant::MerchantRow,
        ),
        IssuerError,
    > {
        use crate::issuer::merchant::OrderState;
        let order = self
            .ledger
            .order(order_id)
            .await?
            .ok_or_else(|| IssuerError::UnknownOrder(order_id.into()))?;
        let merchant = self
            .ledger
            .merchant(&order.merchant_id)
            .await?
            .ok_or_else(|| IssuerError::UnknownOrder(order_id.into()))?;
        let state = order.state(self.clock.now());
        if state != OrderState::Open {
            return Err(IssuerError::Order {
                order: order_id.into(),
                detail: format!("it is {}, not open for payment", state.name()),
            });
        }
        if !merchant.enabled {
            return Err(IssuerError::Order {
                order: order_id.into(),
                detail: "its merchant takes no payments now".into(),
            });
        }
        Ok((order, merchant))
    }

    async fn purchase_for(
        &self,
        receipt: &Receipt,
        amount: u64,
        order_id: Option<&str>,
    ) -> Result<Bundle, IssuerError> {
        if let Some(id) = order_id {
            let (order, _) = self.payable_order(id).await?;
            if order.amount != amount {
                return Err(IssuerError::Order {
                    order: id.into(),
                    detail: format!("amount {amount} is not the order's {}", order.amount),
                });
            }
        }
        let (q, card_hex) = self.admit(receipt).await?;
        let city = self.city(q.card.city).await?;
        if let Some(unknown) = self.ledger.oldest_unknown(&card_hex).await? {
            return self.recovery_bundle(&q, &unknown).await;
        }
        let limit = |detail: String| IssuerError::Limit {
            card: card_hex.clone(),
            detail,
        };
        if amount == 0 {
            return Err(limit("amount 0: nothing to pay".into()));
        }
        if amount > city.txn_limit {
            return Err(limit(format!(
                "amount {amount} over the per-transaction limit {}",
                city.txn_limit
            )));
        }
        match q.card.balance {
            Some(b) if b >= amount => {}
            Some(b) => {
                return Err(IssuerError::Insufficient {
                    card: card_hex.clone(),
                    balance: b,
                    amount,
                });
            }
            None => return Err(limit("the query did not read the balance".into())),
        }
        let (command, program) = self.program(city.city, "purchase").await?;
        if program.host_exchanges() == 0 {
            return Err(IssuerError::Script {
                city: city.city,
                role: "purchase",
                detail: "an online purchase script is host-secured (purchase_host.cvs)".into(),
            });
        }
        let when = self.local_bcd(self.clock.now());
        let terminal = q.reader.terminal_id;
        let data = self.data_for(
            &q.identity,
            &program,
            &city,
            "purchase",
            &q.card.card_id,
            txn_values(amount, terminal, when),
        )?;
        self.finish_order(
            &q,
            TxnKind::Purchase,
            &command,
            &program,
            &data,
            amount,
            hex(&when),
            None,
            None,
            order_id,
        )
        .await
    }

    async fn check_load(
        &self,
        q: &VerifiedQuery,
        city: &CityRow,
        amount: u64,
    ) -> Result<(), IssuerError> {
        let card = hex(&q.card.card_id);
        let limit = |detail: String| IssuerError::Limit {
            card: card.clone(),
            detail,
        };
        let now = self.clock.now();
        let today = &self.local_bcd(now)[..4];
        if let Some(until) = q.card.valid_until
            && until.as_slice() < today
        {
            return Err(IssuerError::CardNotValid {
                card,
                detail: format!("expired on {}", hex(&until)),
            });
        }
        if let Some(from) = q.card.valid_from
            && from.as_slice() > today
        {
            return Err(IssuerError::CardNotValid {
                card,
                detail: format!("valid from {}", hex(&from)),
            });
        }
        if amount == 0 {
            return Err(limit("amount 0: nothing to load".into()));
        }
        if amount > city.txn_limit {
            return Err(limit(format!(
                "amount {amount} over the per-load limit {}",
                city.txn_limit
            )));
        }
        if city.alg == "m1" && amount > self.policy.m1_max_load {
            return Err(limit(format!(
                "amount {amount} over the M1 per-load cap {} (an M1 load puts the sector key in the reader)",
                self.policy.m1_max_load
            )));
        }
        // An M1 query reads only the UID (the value block needs the sector key, which a
        // query never holds): its purse limit is left to the card's own sector layout.
        let balance = match q.card.balance {
            Some(b) => b,
            None if city.alg == "m1" => 0,
            None => return Err(limit("the query did not read the balance".into())),
        };
        if balance.saturating_add(amount) > city.purse_limit {
            return Err(limit(format!(
                "balance {balance} + amount {amount} over the purse limit {}",
                city.purse_limit
            )));
        }
        let day_start = self.local_day_start(now);
        let total = self.ledger.load_total(&card, day_start, now).await?;
        if total.saturating_add(amount) > city.day_limit {
            return Err(limit(format!(
                "today's loads {total} + amount {amount} over the daily limit {}",
                city.day_limit
            )));
        }
        Ok(())
    }

    async fn load_bundle(
        &self,
        q: &VerifiedQuery,
        city: &CityRow,
        amount: u64,
        order_id: Option<&str>,
    ) -> Result<Bundle, IssuerError> {
        let (command, program) = self.program(city.city, "load").await?;
        let now = self.clock.now();
        let when = self.local_bcd(now);
        let terminal = q.reader.terminal_id;
        let data = self.data_for(
            &q.identity,
            &program,
            city,
            "load",
            &q.card.card_id,
            txn_values(amount, terminal, when),
        )?;
        self.finish_order(
            q,
            TxnKind::Load,
            &command,
            &program,
            &data,
            amount,
            hex(&when),
            None,
            Some(LoadLimits {
                balance: q.card.balance.unwrap_or(0),
                purse_limit: city.purse_limit,
                day_limit: city.day_limit,
                day_start: self.local_day_start(now),
                now,
            }),
            order_id,
        )
        .await
    }

    async fn recovery_bundle(
        &self,
        q: &VerifiedQuery,
        unknown: &TxnRow,
    ) -> Result<Bundle, IssuerError> {
        let city = self.city(q.card.city).await?;
        let (command, program) = self.program(city.city, "recover").await?;
        let atc = unknown.atc.ok_or_else(|| IssuerError::Mismatch {
            reader: unknown.reader_id.clone(),
            seq: unknown.seq,
            detail: "the unknown receipt carries no ATC to ask the card about".into(),
        })?;
        let data = self.data_for(
            &q.identity,
            &program,
            &city,
            "recover",
            &q.card.card_id,
            |name, ty| {
                Ok(match (name, ty) {
                    ("txn_type", ValueType::Int { .. }) => {
                        Some(FieldValue::Int(if unknown.kind == TxnKind::Purchase {
                            u64::from(PURCHASE_TYPE)
                        } else {
                            2
                        }))
                    }
                    ("atc", ValueType::Int { .. }) => Some(FieldValue::Int(atc)),
                    _ => None,
                })
            },
        )?;
        let when = hex(&self.local_bcd(self.clock.now()));
        self.finish(
            q,
            TxnKind::Recover,
            &command,
            &program,
            &data,
            0,
            when,
            Some(unknown.seq),
            None,
        )
        .await
    }

    /// The data script for `program`'s declared inputs: values from `value`, keys
    /// diversified for this card by their declared usage.
    fn data_for(
        &self,
        reader: &ReaderIdentity,
        program: &VerifiedProgram,
        city: &CityRow,
        role: &'static str,
        card_id: &[u8],
        value: impl Fn(&str, &ValueType) -> Result<Option<FieldValue>, IssuerError>,
    ) -> Result<DataScript, IssuerError> {
        let mut fields = Vec::new();
        for decl in program.inputs() {
            let name: &str = &decl.name;
            let v = match decl.ty {
                // A CPU card's keys go only to a reader whose VM and key live in a secure
                // element; an M1 card has no other way (its cap: IssuerPolicy::m1_max_load).
                ValueType::Key { usage, .. }
                    if !matches!(usage, KeyUsage::M1A | KeyUsage::M1B)
                        && reader.kind != crate::issuer::ReaderKind::SecureElement =>
                {
                    return Err(IssuerError::KeysToDesktop {
                        reader: reader.reader_id.clone(),
                        kind: reader.kind,
                        city: city.city,
                        role,
                    });
                }
                ValueType::Key { alg, usage } => {
                    FieldValue::Key(self.card_key(city, role, card_id, alg, usage)?)
                }
                ref ty => value(name, ty)?.ok_or_else(|| IssuerError::Script {
                    city: city.city,
                    role,
                    detail: format!("input `{name}` has no source in the issuer"),
                })?,
            };
            fields.push(Field {
                name: name.into(),
                value: v,
            });
        }
        Ok(DataScript { fields })
    }

    fn card_key(
        &self,
        city: &CityRow,
        role: &'static str,
        card_id: &[u8],
        alg: KeyAlg,
        usage: KeyUsage,
    ) -> Result<SecretKey, IssuerError> {
        let key_role = match usage {
            KeyUsage::Load => KeyRole::Load,
            KeyUsage::Purchase => KeyRole::Purchase,
            KeyUsage::Tac => KeyRole::Tac,
            KeyUsage::M1A | KeyUsage::M1B => return self.m1_key(city, role, card_id, usage),
            other => {
                return Err(IssuerError::Script {
                    city: city.city,
                    role,
                    detail: format!(
                        "asks for a {} key: the issuer sends only diversified card keys",
                        other.name()
                    ),
                });
            }
        };
        let key = self.keys.card_key(city.city, key_role, card_id)?;
        if key.alg() != alg || key.usage() != usage {
            return Err(IssuerError::Script {
                city: city.city,
                role,
                detail: format!(
                    "wants a key({}, {}); the key store holds {} keys for this city",
                    alg.name(),
                    usage.name(),
                    key.alg().name()
                ),
            });
        }
        Ok(key)
    }

    /// An M1 sector key for one card (cardvm's M1 profile, `docs/issuer.md`): the leftmost
    /// 6 bytes of the card key diversified from the city's 3DES/SM4 master with F = the UID
    /// padded right with 00 to 8 bytes — key B (write, increment) from the load master,
    /// key A (read, decrement) from the purchase master.
    fn m1_key(
        &self,
        city: &CityRow,
        role: &'static str,
        uid: &[u8],
        usage: KeyUsage,
    ) -> Result<SecretKey, IssuerError> {
        if uid.is_empty() || uid.len() > 8 {
            return Err(IssuerError::Script {
                city: city.city,
                role,
                detail: format!("M1 UID of {} bytes (expected 4 or 7)", uid.len()),
            });
        }
        let mut f = [0u8; 8];
        f[..uid.len()].copy_from_slice(uid);
        let master_role = if usage == KeyUsage::M1B {
            KeyRole::Load
        } else {
            KeyRole::Purchase
        };
        let k = self.keys.card_key(city.city, master_role, &f)?;
        SecretKey::new(KeyAlg::M1, usage, &k.expose()[..6]).map_err(|e| IssuerError::Script {
            city: city.city,
            role,
            detail: format!("M1 key: {e}"),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        q: &VerifiedQuery,
        kind: TxnKind,
        command: &[u8],
        program: &VerifiedProgram,
        data: &DataScript,
        amount: u64,
        datetime: String,
        recovers_seq: Option<u64>,
        limits: Option<LoadLimits>,
    ) -> Result<Bundle, IssuerError> {
        self.finish_order(
            q,
            kind,
            command,
            program,
            data,
            amount,
            datetime,
            recovers_seq,
            limits,
            None,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_order(
        &self,
        q: &VerifiedQuery,
        kind: TxnKind,
        command: &[u8],
        program: &VerifiedProgram,
        data: &DataScript,
        amount: u64,
        datetime: String,
        recovers_seq: Option<u64>,
        limits: Option<LoadLimits>,
        order_id: Option<&str>,
    ) -> Result<Bundle, IssuerError> {
        let reader_id = q.reader.reader_id.clone();
        let city = program.header().city;
        let data_bytes = zeroize::Zeroizing::new(data.encode());
        // The data must bind to the program now, not first on the reader.
        program.bind(data).map_err(|e| IssuerError::Script {
            city,
            role: kind.name(),
            detail: e.to_string(),
        })?;
        let seq = self.allocate(&reader_id).await?;
        let expires = self.clock.now().saturating_add(self.policy.bundle_ttl);
        let sealed_command = self.seal(
            &q.identity,
            ScriptKind::Command,
            program,
            seq,
            expires,
            command,
            command,
        )?;
        let sealed_data = self.seal(
            &q.identity,
            ScriptKind::Data,
            program,
            seq,
            expires,
            command,
            &data_bytes,
        )?;
        let card_hex = hex(&q.card.card_id);
        let recorded = self
            .ledger
            .insert(
                &NewTxn {
                    reader_id: reader_id.clone(),
                    seq,
                    kind,
                    city,
                    card_id: card_hex,
                    amount,
                    terminal_id: q.reader.terminal_id,
                    datetime,
                    command_sm3: hex(&crate::crypto::sm3(command)),
                    query_sm3: Some(q.receipt_sm3.clone()),
                    balance_before: q.card.balance,
                    recovers_seq,
                    issued_at: self.clock.now(),
                    expires_at: expires,
                    host_secured: program.host_exchanges() > 0,
                    order_id: order_id.map(String::from),
                },
                limits.as_ref(),
            )
            .await
            .map_err(|e| match e {
                // Lost a race for the same query (on this instance or another).
                LedgerError::Conflict { .. } => IssuerError::QueryUsed {
                    reader: reader_id.clone(),
                    seq,
                },
                other => other.into(),
            })?;
        let limit = |detail: String| IssuerError::Limit {
            card: hex(&q.card.card_id),
            detail,
        };
        match recorded {
            Recorded::Yes => {}
            Recorded::OverDailyLimit { today, limit: l } => {
                return Err(limit(format!(
                    "today's loads {today} + amount {amount} over the daily limit {l}"
                )));
            }
            Recorded::OverPurseLimit {
                balance,
                unsettled,
                limit: l,
            } => {
                return Err(limit(format!(
                    "balance {balance} + unsettled loads {unsettled} + amount {amount} over the purse limit {l}"
                )));
            }
            Recorded::CardUnknown { seq } => {
                return Err(limit(format!(
                    "the card's load {seq} is unknown: it is recovered first"
                )));
            }
            Recorded::OrderNotPayable => {
                return Err(IssuerError::Order {
                    order: order_id.unwrap_or_default().into(),
                    detail: "another payment holds it, or it was cancelled or expired meanwhile"
                        .into(),
                });
            }
        }
        Ok(Bundle {
            kind,
            reader_id,
            seq,
            city,
            card_id: q.card.card_id.clone(),
            amount,
            recovers_seq,
            expires,
            command: sealed_command,
            data: sealed_data,
        })
    }

    /// Settles a receipt: verifies it (see the module docs) and moves its transaction
    /// out of `issued` once. The same receipt again is idempotent (`already: true`); a
    /// different receipt for a settled transaction is refused.
    pub async fn settle(&self, receipt: &Receipt) -> Result<Settled, IssuerError> {
        let (_, _, receipt_sm3) = self.verify_receipt(receipt).await?;
        let reader = receipt.reader_id.clone();
        if receipt.mode != crate::receipt::Mode::Production {
            return Err(IssuerError::NotOurs {
                reader,
                detail: format!(
                    "a {} receipt names no bundle (an offline sale settles through the journal)",
                    receipt.mode.name()
                ),
            });
        }
        let data = receipt.data.ok_or_else(|| IssuerError::NotOurs {
            reader: reader.clone(),
            detail: "a query receipt names no bundle; nothing to settle".into(),
        })?;
        if data.issuer_key_id != self.key.public_key().key_id() {
            return Err(IssuerError::NotOurs {
                reader,
                detail: format!(
                    "its data script was sealed by issuer key {}, not this issuer's",
                    hex(&data.issuer_key_id)
                ),
            });
        }
        let seq = data.seq;
        let row = self
            .ledger
            .txn(&reader, seq)
            .await?
            .ok_or_else(|| IssuerError::NoBundle {
                reader: reader.clone(),
                seq,
            })?;
        let mismatch = |detail: String| IssuerError::Mismatch {
            reader: reader.clone(),
            seq,
            detail,
        };
        if !row
            .command_sm3
            .eq_ignore_ascii_case(&hex(&receipt.command_sm3))
        {
            return Err(mismatch(format!(
                "command SM3 {} is not the bundle's {}",
                hex(&receipt.command_sm3),
                row.command_sm3
            )));
        }
        if row.state != TxnState::Issued {
            return self.already(&row, &receipt_sm3);
        }
        if !receipt.card_id.is_empty() && hex(&receipt.card_id) != row.card_id {
            return Err(mismatch(format!(
                "card {} is not the bundle's card {}",
                hex(&receipt.card_id),
                row.card_id
            )));
        }
        let now = self.clock.now();
        let city = self.city(row.city).await?;
        match row.kind {
            TxnKind::Load | TxnKind::Purchase => {
                let s = if row.kind == TxnKind::Load {
                    self.load_settlement(receipt, &row, &city, receipt_sm3.clone(), now)?
                } else {
                    self.purchase_settlement(receipt, &row, receipt_sm3.clone(), now)
                        .await?
                };
                let state = s.state;
                match self.ledger.settle(&reader, seq, &s).await? {
                    Applied::Now => Ok(Settled {
                        reader_id: reader,
                        seq,
                        kind: row.kind,
                        state,
                        already: false,
                        decided: None,
                    }),
                    Applied::Already(current) => self.already(&current, &receipt_sm3),
                }
            }
            TxnKind::Recover => self.settle_recovery(receipt, &row, receipt_sm3, now).await,
        }
    }

    /// Answers one host command of a host-secured bundle (`hostapdu`, docs/host.md): the
    /// card company as the reader's remote SAM. The reader is the caller already
    /// authenticated for `reader_id`; `seq` names its bundle. A refusal is a status word
    /// in the answer (the script's handlers name it), with the reason for the log.
    pub async fn host_exchange(
        &self,
        reader_id: &str,
        seq: u64,
        apdu: &[u8],
    ) -> Result<HostAnswer, IssuerError> {
        use crate::host::{
            HostCommand, HostRefusal, LoadFacts, PurchaseFacts, load_mac2, purchase_mac1,
        };
        let refused = |r: HostRefusal| {
            Ok(HostAnswer {
                response: r.response(),
                refused: Some(r.reason),
            })
        };
        let row = self
            .ledger
            .txn(reader_id, seq)
            .await?
            .ok_or_else(|| IssuerError::NoBundle {
                reader: reader_id.into(),
                seq,
            })?;
        if !row.host_secured || !matches!(row.kind, TxnKind::Load | TxnKind::Purchase) {
            return refused(HostRefusal::conditions(
                "the bundle is not a host-secured load or purchase",
            ));
        }
        let command = match HostCommand::parse(apdu) {
            Ok(c) => c,
            Err(r) => return refused(r),
        };
        let ins = command.ins();
        let request = hex(apdu);
        // Issued once: the same request again (a lost reply) gets the same answer.
        let repeat = |req: &str, resp: &str| match unhex(resp) {
            Some(r) if req.eq_ignore_ascii_case(&request) => Ok(HostAnswer {
                response: r,
                refused: None,
            }),
            _ => refused(HostRefusal::conditions(
                "this bundle's MAC was already issued for another card state",
            )),
        };
        if let Some((req, resp)) = self.ledger.host_answer(reader_id, seq, ins).await? {
            return repeat(&req, &resp);
        }
        let now = self.clock.now();
        if row.state != TxnState::Issued {
            return refused(HostRefusal::conditions(format!(
                "the bundle is {}",
                row.state
            )));
        }
        if now > row.expires_at {
            return refused(HostRefusal::conditions("the bundle expired"));
        }
        let (Ok(amount), Some(datetime), Some(card)) = (
            u32::try_from(row.amount),
            unhex(&row.datetime).and_then(|d| <[u8; 7]>::try_from(d).ok()),
            unhex(&row.card_id),
        ) else {
            return refused(HostRefusal::new(
                0x6F00,
                "the bundle's amount, date/time or card does not fit the card",
            ));
        };
        let (response, atc, mac) = match (command, row.kind) {
            (HostCommand::LoadMac2(init), TxnKind::Load) => {
                if Some(u64::from(init.balance)) != row.balance_before {
                    return refused(HostRefusal::conditions(format!(
                        "the card's balance {} is not the {} its query read",
                        init.balance,
                        row.balance_before.unwrap_or(0)
                    )));
                }
                let facts = LoadFacts {
                    amount,
                    terminal: row.terminal_id,
                    datetime,
                };
                let dlk = self.keys.card_key(row.city, KeyRole::Load, &card)?;
                let mac2 = match load_mac2(&dlk, &facts, &init) {
                    Ok(m) => m,
                    Err(r) => return refused(r),
                };
                (mac2.to_vec(), init.atc, mac2)
            }
            (HostCommand::PurchaseMac1(init), TxnKind::Purchase) => {
                let Ok(serial) = <[u8; 8]>::try_from(card.as_slice()) else {
                    return refused(HostRefusal::conditions(
                        "the bundle's card has no 8-byte serial",
                    ));
                };
                let facts = PurchaseFacts {
                    amount,
                    txn_type: PURCHASE_TYPE,
                    terminal: row.terminal_id,
                    datetime,
                    serial,
                    seq: row.seq as u32,
                };
                let dpk = self.keys.card_key(row.city, KeyRole::Purchase, &card)?;
                let mac1 = match purchase_mac1(&dpk, &facts, &init) {
                    Ok(m) => m,
                    Err(r) => return refused(r),
                };
                let mut r = facts.seq.to_be_bytes().to_vec();
                r.extend_from_slice(&mac1);
                (r, init.atc, mac1)
            }
            _ => {
                return refused(HostRefusal::conditions(format!(
                    "a {} bundle does not take this command",
                    row.kind.name()
                )));
            }
        };
        let mut response = response;
        response.extend_from_slice(&[0x90, 0x00]);
        match self
            .ledger
            .record_host_answer(
                reader_id,
                seq,
                ins,
                &request,
                &hex(&response),
                now,
                Some(u64::from(atc)),
                Some(&hex(&mac)),
            )
            .await?
        {
            HostRecorded::Now => Ok(HostAnswer {
                response,
                refused: None,
            }),
            HostRecorded::Already { request, response } => repeat(&request, &response),
            HostRecorded::NotIssued => refused(HostRefusal::conditions(
                "the bundle was settled or expired meanwhile",
            )),
        }
    }

    pub(super) fn already(&self, row: &TxnRow, receipt_sm3: &str) -> Result<Settled, IssuerError> {
        if row
            .receipt_sm3
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(receipt_sm3))
        {
            Ok(Settled {
                reader_id: row.reader_id.clone(),
                seq: row.seq,
                kind: row.kind,
                state: row.state,
                already: true,
                decided: None,
            })
        } else {
            Err(IssuerError::SettledByOther {
                reader: row.reader_id.clone(),
                seq: row.seq,
                state: row.state,
            })
        }
    }

    fn load_settlement(
        &self,
        receipt: &Receipt,
        row: &TxnRow,
        city: &CityRow,
        receipt_sm3: String,
        now: u64,
    ) -> Result<Settlement, IssuerError> {
        let mismatch = |detail: String| IssuerError::Mismatch {
            reader: row.reader_id.clone(),
            seq: row.seq,
            detail,
        };
        let atc = out_int(receipt, "atc");
        let mac2 = out_bytes(receipt, "mac2").map(hex);
        let balance_before = out_int(receipt, "balance_before");
        let mut s = Settlement {
            state: TxnState::Failed,
            receipt_sm3,
            at: now,
            atc,
            mac2,
            tac: None,
            balance_before,
            balance_after: None,
            note: None,
        };
        match &receipt.outcome {
            // Host-secured: once the card company issued this load's MAC2, only the card
            // can say whether it was used; the reader's "failed" is not evidence.
            Outcome::Failed { code, reason } if row.host_secured && row.mac2.is_some() => {
                s.state = TxnState::Unknown;
                s.note = Some(format!(
                    "the reader reported failed 0x{code:02X} ({reason}) after the card company issued MAC2: recovery decides"
                ));
                Ok(s)
            }
            Outcome::Failed { code, reason } => {
                s.note = Some(format!("failed 0x{code:02X}: {reason}"));
                Ok(s)
            }
            Outcome::Unknown { reason } => {
                s.state = TxnState::Unknown;
                s.note = Some(reason.clone());
                Ok(s)
            }
            Outcome::Committed => {
                let amount = out_int(receipt, "amount")
                    .ok_or_else(|| mismatch("no `amount` output".into()))?;
                if amount != row.amount {
                    return Err(mismatch(format!(
                        "amount {amount} is not the bundle's {}",
                        row.amount
                    )));
                }
                let before =
                    balance_before.ok_or_else(|| mismatch("no `balance_before` output".into()))?;
                let after = out_int(receipt, "balance_after")
                    .ok_or_else(|| mismatch("no `balance_after` output".into()))?;
                if before.checked_add(amount) != Some(after) {
                    return Err(mismatch(format!(
                        "balance {before} + {amount} is not {after}"
                    )));
                }
                s.balance_after = Some(after);
                if row.host_secured {
                    // The card cannot commit without the MAC2 the card company issued for
                    // this counter and balance (docs/host.md).
                    let issued = row.mac2.as_deref().ok_or_else(|| {
                        mismatch(
                            "a host-secured load the card company never issued a MAC2 for cannot have committed"
                                .into(),
                        )
                    })?;
                    if !s
                        .mac2
                        .as_deref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(issued))
                    {
                        return Err(mismatch(format!(
                            "MAC2 {} is not the one the card company issued ({issued})",
                            s.mac2.as_deref().unwrap_or("none")
                        )));
                    }
                    if atc != row.atc || Some(before) != row.balance_before {
                        return Err(mismatch(format!(
                            "counter {atc:?} and balance {before} are not the ones the card's MAC1 proved ({:?}, {:?})",
                            row.atc, row.balance_before
                        )));
                    }
                }
                if receipt.card_id.is_empty() {
                    return Err(mismatch("a committed receipt without the card's id".into()));
                }
                if city.alg == "m1" {
                    // An M1 card signs nothing: the reader's signature and the
                    // read-back of the value block are all there is (docs/issuer.md).
                    if out_int(receipt, "readback_ok") != Some(1) {
                        return Err(mismatch("the value block did not read back".into()));
                    }
                } else {
                    let tac = self.check_load_tac(receipt, row, after, atc, amount)?;
                    s.tac = Some(hex(&tac));
                }
                s.state = TxnState::Committed;
                Ok(s)
            }
        }
    }

    /// An online purchase's receipt (`docs/host.md`): committed only with the MAC1 the card
    /// company issued, the card's MAC2 under that session and its TAC under the TAC key.
    async fn purchase_settlement(
        &self,
        receipt: &Receipt,
        row: &TxnRow,
        receipt_sm3: String,
        now: u64,
    ) -> Result<Settlement, IssuerError> {
        use crate::host::{HostCommand, INS_PURCHASE_MAC1, purchase_session};
        let mismatch = |detail: String| IssuerError::Mismatch {
            reader: row.reader_id.clone(),
            seq: row.seq,
            detail,
        };
        let atc = out_int(receipt, "atc");
        let balance_before = out_int(receipt, "balance_before");
        let mut s = Settlement {
            state: TxnState::Failed,
            receipt_sm3,
            at: now,
            atc,
            mac2: None,
            tac: None,
            balance_before,
            balance_after: None,
            note: None,
        };
        match &receipt.outcome {
            Outcome::Failed { code, reason } if row.mac2.is_some() => {
                s.state = TxnState::Unknown;
                s.note = Some(format!(
                    "the reader reported failed 0x{code:02X} ({reason}) after the card company issued MAC1: recovery decides"
                ));
                return Ok(s);
            }
            Outcome::Failed { code, reason } => {
                s.note = Some(format!("failed 0x{code:02X}: {reason}"));
                return Ok(s);
            }
            Outcome::Unknown { reason } => {
                s.state = TxnState::Unknown;
                s.note = Some(reason.clone());
                return Ok(s);
            }
            Outcome::Committed => {}
        }
        let issued = row.mac2.as_deref().ok_or_else(|| {
            mismatch(
                "a purchase the card company never issued a MAC1 for cannot have committed".into(),
            )
        })?;
        if !out_bytes(receipt, "mac1").is_some_and(|m| hex(m).eq_ignore_ascii_case(issued)) {
            return Err(mismatch(format!(
                "MAC1 is not the one the card company issued ({issued})"
            )));
        }
        let amount =
            out_int(receipt, "amount").ok_or_else(|| mismatch("no `amount` output".into()))?;
        let before = balance_before.ok_or_else(|| mismatch("no `balance_before` output".into()))?;
        let after = out_int(receipt, "balance_after")
            .ok_or_else(|| mismatch("no `balance_after` output".into()))?;
        if amount != row.amount || before.checked_sub(amount) != Some(after) || atc != row.atc {
            return Err(mismatch(format!(
                "amount {amount}, balance {before} -> {after}, counter {atc:?} do not match the bundle's {} and the card's counter {:?}",
                row.amount, row.atc
            )));
        }
        let seq = (row.seq as u32).to_be_bytes();
        let terminal = out_bytes(receipt, "terminal_id").unwrap_or(&[]);
        let when = out_bytes(receipt, "datetime").unwrap_or(&[]);
        if terminal != row.terminal_id
            || !hex(when).eq_ignore_ascii_case(&row.datetime)
            || out_bytes(receipt, "terminal_seq") != Some(&seq[..])
        {
            return Err(mismatch(
                "terminal, terminal sequence or date/time is not the bundle's".into(),
            ));
        }
        // The card's MAC2 under the session its INITIALIZE gave (the recorded request).
        let init = match self
            .ledger
            .host_answer(&row.reader_id, row.seq, INS_PURCHASE_MAC1)
            .await?
            .and_then(|(req, _)| unhex(&req))
            .map(|req| HostCommand::parse(&req))
        {
            Some(Ok(HostCommand::PurchaseMac1(init))) => init,
            _ => {
                return Err(mismatch(
                    "the card company's MAC1 request is not on record".into(),
                ));
            }
        };
        let card = unhex(&row.card_id).unwrap_or_default();
        let dpk = self.keys.card_key(row.city, KeyRole::Purchase, &card)?;
        let session = purchase_session(&dpk, &init, row.seq as u32)
            .map_err(|r| mismatch(format!("session key: {}", r.reason)))?;
        let amount32 = u32::try_from(amount).map_err(|_| mismatch(format!("amount {amount}")))?;
        let expected_mac2 = crate::crypto::pboc_mac(&session, &amount32.to_be_bytes())
            .map_err(|e| mismatch(format!("MAC2: {e}")))?;
        let tac: [u8; 4] = out_bytes(receipt, "tac")
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| mismatch("no 4-byte `tac` output".into()))?;
        // Terminal, seq and time were checked equal to the bundle's above.
        let expected_tac = self
            .purchase_tac(row)?
            .ok_or_else(|| mismatch("the bundle's TAC input does not fit the card".into()))?;
        let mac2_ok =
            out_bytes(receipt, "mac2").is_some_and(|m| crate::crypto::ct_eq(m, &expected_mac2));
        if !mac2_ok || !crate::crypto::ct_eq(&expected_tac, &tac) {
            return Err(IssuerError::TacMismatch {
                reader: row.reader_id.clone(),
                seq: row.seq,
            });
        }
        s.tac = Some(hex(&tac));
        s.balance_after = Some(after);
        s.state = TxnState::Committed;
        Ok(s)
    }

    /// Recomputes the load TAC with the card's TAC key; returns the card's TAC.
    fn check_load_tac(
        &self,
        receipt: &Receipt,
        row: &TxnRow,
        after: u64,
        atc: Option<u64>,
        amount: u64,
    ) -> Result<[u8; 4], IssuerError> {
        let mismatch = |detail: String| IssuerError::Mismatch {
            reader: row.reader_id.clone(),
            seq: row.seq,
            detail,
        };
        let tac: [u8; 4] = out_bytes(receipt, "tac")
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| mismatch("no 4-byte `tac` output".into()))?;
        let atc = atc.ok_or_else(|| mismatch("no `atc` output".into()))?;
        let terminal = out_bytes(receipt, "terminal_id").unwrap_or(&[]);
        if terminal != row.terminal_id {
            return Err(mismatch(format!(
                "terminal {} is not the bundle's {}",
                hex(terminal),
                hex(&row.terminal_id)
            )));
        }
        let when = out_bytes(receipt, "datetime").unwrap_or(&[]);
        if !hex(when).eq_ignore_ascii_case(&row.datetime) {
            return Err(mismatch(format!(
                "date/time {} is not the bundle's {}",
                hex(when),
                row.datetime
            )));
        }
        let card = unhex(&row.card_id).unwrap_or_default();
        let expected = self.load_tac(row, &card, after, atc, amount, terminal, when)?;
        if !crate::crypto::ct_eq(&expected, &tac) {
            return Err(IssuerError::TacMismatch {
                reader: row.reader_id.clone(),
                seq: row.seq,
            });
        }
        Ok(tac)
    }

    /// TAC = MAC(TAC key, balance after ‖ ATC ‖ amount ‖ 02 ‖ terminal ‖ date ‖ time)
    /// (reference: epurse.md, "Load TAC").
    #[allow(clippy::too_many_arguments)]
    fn load_tac(
        &self,
        row: &TxnRow,
        card: &[u8],
        after: u64,
        atc: u64,
        amount: u64,
        terminal: &[u8],
        when: &[u8],
    ) -> Result<[u8; 4], IssuerError> {
        let mismatch = |detail: String| IssuerError::Mismatch {
            reader: row.reader_id.clone(),
            seq: row.seq,
            detail,
        };
        let after = u32::try_from(after).map_err(|_| mismatch(format!("balance {after}")))?;
        let atc = u16::try_from(atc).map_err(|_| mismatch(format!("ATC {atc}")))?;
        let amount = u32::try_from(amount).map_err(|_| mismatch(format!("amount {amount}")))?;
        let dtk = self.keys.card_key(row.city, KeyRole::Tac, card)?;
        let key = crate::crypto::tac_key(&dtk).map_err(|e| mismatch(format!("TAC key: {e}")))?;
        let mut input = Vec::with_capacity(24);
        input.extend_from_slice(&after.to_be_bytes());
        input.extend_from_slice(&atc.to_be_bytes());
        input.extend_from_slice(&amount.to_be_bytes());
        input.push(0x02);
        input.extend_from_slice(terminal);
        input.extend_from_slice(when);
        crate::crypto::pboc_mac(&key, &input).map_err(|e| mismatch(format!("TAC: {e}")))
    }

    async fn settle_recovery(
        &self,
        receipt: &Receipt,
        row: &TxnRow,
        receipt_sm3: String,
        now: u64,
    ) -> Result<Settled, IssuerError> {
        let original_seq = row.recovers_seq.ok_or_else(|| IssuerError::Mismatch {
            reader: row.reader_id.clone(),
            seq: row.seq,
            detail: "a recovery that names no transaction".into(),
        })?;
        let original = self
            .ledger
            .txn(&row.reader_id, original_seq)
            .await?
            .ok_or_else(|| IssuerError::NoBundle {
                reader: row.reader_id.clone(),
                seq: original_seq,
            })?;
        let mut s = Settlement {
            state: TxnState::Committed,
            receipt_sm3: receipt_sm3.clone(),
            at: now,
            atc: None,
            mac2: None,
            tac: None,
            balance_before: None,
            balance_after: None,
            note: None,
        };
        let (decided, note) = match &receipt.outcome {
            Outcome::Committed => self.decide(receipt, &original, &mut s)?,
            Outcome::Failed { code, reason } => {
                s.state = TxnState::Failed;
                s.note = Some(format!("failed 0x{code:02X}: {reason}"));
                (TxnState::Unknown, String::new())
            }
            _ => {
                s.state = TxnState::Unknown;
                s.note = Some(receipt.outcome.to_string());
                (TxnState::Unknown, String::new())
            }
        };
        match self
            .ledger
            .settle_recovery(&row.reader_id, row.seq, &s, original_seq, decided, &note)
            .await?
        {
            Applied::Now => Ok(Settled {
                reader_id: row.reader_id.clone(),
                seq: row.seq,
                kind: TxnKind::Recover,
                state: s.state,
                already: false,
                decided: (decided != TxnState::Unknown).then_some((original_seq, decided)),
            }),
            Applied::Already(current) => self.already(&current, &receipt_sm3),
        }
    }

    /// What the card's recovery answers prove about the unknown load (invariant 17; the
    /// decision table is docs/cards.md "Recovery"). Committed only on a proof whose TAC
    /// verifies (and whose MAC2 is this load's, where the card returns a real one);
    /// failed only when the card's own counter, with a MAC1 under the card's load key,
    /// is still the load's; otherwise unknown. The reader's `committed` output is its
    /// view and decides nothing here; the evidence goes into the recovery's note.
    fn decide(
        &self,
        receipt: &Receipt,
        original: &TxnRow,
        s: &mut Settlement,
    ) -> Result<(TxnState, String), IssuerError> {
        let atc = original.atc.ok_or_else(|| IssuerError::Mismatch {
            reader: original.reader_id.clone(),
            seq: original.seq,
            detail: "the unknown load has no ATC".into(),
        })?;
        if original.kind == TxnKind::Purchase {
            return self.decide_purchase(receipt, original, atc, s);
        }
        let mut evidence = Vec::new();
        match (out_bytes(receipt, "mac"), out_bytes(receipt, "tac")) {
            (Some(mac), Some(tac)) => {
                let asked = out_int(receipt, "prove_atc").unwrap_or(atc);
                if self.load_proof_verifies(original, mac, tac)? {
                    s.tac = Some(hex(tac));
                    return Ok((
                        TxnState::RecoveredCommitted,
                        format!(
                            "recovery: the card proved it (TAC verified; PROVE answered to counter {asked})"
                        ),
                    ));
                }
                evidence.push(format!(
                    "a proof that is not this load's (PROVE counter {asked}, MAC {}, TAC {})",
                    hex(mac),
                    hex(tac)
                ));
            }
            _ => evidence.push("no proof".to_string()),
        }
        match self.load_counter(receipt, original)? {
            Some(c) if c == atc => {
                return Ok((
                    TxnState::RecoveredFailed,
                    format!(
                        "recovery: the card's online counter is still {atc} (MAC1 verified): never counted; {}",
                        evidence.join(", ")
                    ),
                ));
            }
            Some(c) => evidence.push(format!("online counter {c} (MAC1 verified)")),
            None => evidence.push("no verified counter".to_string()),
        }
        let note = format!("recovery undecided: {}", evidence.join(", "));
        s.note = Some(note.clone());
        Ok((TxnState::Unknown, note))
    }

    /// The TAC a purchase's card computes: MAC(TAC key, amount ‖ type 06 ‖ terminal ‖ seq ‖
    /// date ‖ time), all the bundle's (`None` when its values do not fit the card's fields).
    fn purchase_tac(&self, row: &TxnRow) -> Result<Option<[u8; 4]>, IssuerError> {
        let (Ok(amount), Some(when)) = (u32::try_from(row.amount), unhex(&row.datetime)) else {
            return Ok(None);
        };
        let card = unhex(&row.card_id).unwrap_or_default();
        let dtk = self.keys.card_key(row.city, KeyRole::Tac, &card)?;
        let mut input = Vec::with_capacity(26);
        input.extend_from_slice(&amount.to_be_bytes());
        input.push(PURCHASE_TYPE);
        input.extend_from_slice(&row.terminal_id);
        input.extend_from_slice(&(row.seq as u32).to_be_bytes());
        input.extend_from_slice(&when);
        Ok(crate::crypto::tac_key(&dtk)
            .and_then(|tk| crate::crypto::pboc_mac(&tk, &input))
            .ok())
    }

    /// An unknown online purchase: committed on a PROVE whose TAC verifies for it (amount,
    /// type, terminal, the bundle's seq, date/time). Nothing proves a purchase was
    /// never counted (its offline counter carries no MAC), so otherwise it stays unknown
    /// for the operator (`cardvm issuer decide`).
    fn decide_purchase(
        &self,
        receipt: &Receipt,
        original: &TxnRow,
        atc: u64,
        s: &mut Settlement,
    ) -> Result<(TxnState, String), IssuerError> {
        let asked = out_int(receipt, "prove_atc").unwrap_or(atc);
        if let Some(tac) = out_bytes(receipt, "tac") {
            let expected = self.purchase_tac(original)?;
            if expected.is_some_and(|e| crate::crypto::ct_eq(&e, tac)) {
                s.tac = Some(hex(tac));
                return Ok((
                    TxnState::RecoveredCommitted,
                    format!(
                        "recovery: the card proved the purchase (TAC verified; PROVE answered to counter {asked})"
                    ),
                ));
            }
        }
        let note = format!(
            "recovery undecided: no proof of this purchase (PROVE counter {asked}); a purchase's counter carries no MAC: the operator decides (cardvm issuer decide)"
        );
        s.note = Some(note.clone());
        Ok((TxnState::Unknown, note))
    }

    /// A GET TRANSACTION PROVE answer is this load's: its TAC verifies over the load's
    /// balance after, counter, amount, terminal and time, and its MAC is the load's MAC2
    /// (or zeros: some cards do not return it).
    fn load_proof_verifies(
        &self,
        original: &TxnRow,
        mac: &[u8],
        tac: &[u8],
    ) -> Result<bool, IssuerError> {
        let (Ok(mac), Ok(tac)) = (<[u8; 4]>::try_from(mac), <[u8; 4]>::try_from(tac)) else {
            return Ok(false);
        };
        let expected_mac = original.mac2.as_deref().and_then(unhex).unwrap_or_default();
        if mac != [0; 4] && !crate::crypto::ct_eq(&mac, &expected_mac) {
            return Ok(false);
        }
        let (Some(before), Some(atc)) = (original.balance_before, original.atc) else {
            return Ok(false);
        };
        let when = unhex(&original.datetime).unwrap_or_default();
        let card = unhex(&original.card_id).unwrap_or_default();
        let expected = self.load_tac(
            original,
            &card,
            before.saturating_add(original.amount),
            atc,
            original.amount,
            &original.terminal_id,
            &when,
        )?;
        Ok(crate::crypto::ct_eq(&expected, &tac))
    }

    /// The card's online counter from the recovery's INITIALIZE FOR LOAD (amount 0,
    /// terminal 0), when its MAC1 verifies under this card's load key: the counter and
    /// balance are then the card's own word, not the reader's.
    fn load_counter(
        &self,
        receipt: &Receipt,
        original: &TxnRow,
    ) -> Result<Option<u64>, IssuerError> {
        let (Some(counter), Some(balance), Some(rnd), Some(mac1)) = (
            out_int(receipt, "counter"),
            out_int(receipt, "balance"),
            out_bytes(receipt, "counter_rnd"),
            out_bytes(receipt, "counter_mac1"),
        ) else {
            return Ok(None);
        };
        let (Ok(counter16), Ok(balance), Ok(rnd)) = (
            u16::try_from(counter),
            u32::try_from(balance),
            <[u8; 4]>::try_from(rnd),
        ) else {
            return Ok(None);
        };
        let mismatch = |detail: String| IssuerError::Mismatch {
            reader: original.reader_id.clone(),
            seq: original.seq,
            detail,
        };
        let card = unhex(&original.card_id).unwrap_or_default();
        let dlk = self.keys.card_key(original.city, KeyRole::Load, &card)?;
        // SESLK = process key of DLK over random ‖ online ATC ‖ 8000; MAC1 over
        // balance ‖ amount 0 ‖ type 02 ‖ terminal 0 (reference/epurse.md "Cryptography").
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&rnd);
        input[4..6].copy_from_slice(&counter16.to_be_bytes());
        input[6..].copy_from_slice(&[0x80, 0x00]);
        let session = crate::crypto::process_key(&dlk, &input)
            .map_err(|e| mismatch(format!("session key: {e}")))?;
        let mut m = [0u8; 15];
        m[..4].copy_from_slice(&balance.to_be_bytes());
        m[8] = 0x02;
        let expected =
            crate::crypto::pboc_mac(&session, &m).map_err(|e| mismatch(format!("MAC1: {e}")))?;
        Ok(crate::crypto::ct_eq(&expected, mac1).then_some(counter))
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
