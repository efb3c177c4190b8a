//! `cardvm issuer …`: the card company's side on one machine — ledger, readers, cities,
//! bundles and settlement (see `docs/issuer.md`).
//!
//! Every command takes `--db` (default `issuer.db`: an SQLite file created on first use;
//! `postgres://…` for a shared PostgreSQL). `issuer init` records in the ledger which CA
//! certificates to trust, where the sealing key and the master-key store are; the other
//! commands read them from there.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cardvm::issuer::keys::MasterKeyStore;
use cardvm::issuer::ledger::{CityRow, Filter, TxnRow, hex, unhex};
use cardvm::issuer::trust::certs_from_pem;
use cardvm::issuer::{Issuer, Ledger, TrustStore, TxnState};
use cardvm::reader::SystemClock;
use cardvm::receipt::Receipt;
use clap::{Args, Subcommand};

use super::CliResult;
use super::ca::now;
use super::keys::load_private_key;

/// Arguments of `cardvm issuer`.
#[derive(Args, Debug)]
pub struct IssuerArgs {
    /// The ledger: an SQLite file (created when missing), sqlite://PATH or postgres://….
    #[arg(long, global = true, default_value = "issuer.db", value_name = "DB")]
    db: String,
    #[command(subcommand)]
    cmd: IssuerCmd,
}

#[derive(Subcommand, Debug)]
enum IssuerCmd {
    /// Create (or update) the ledger: the CA to trust, the sealing key, the key store.
    Init {
        /// CA certificate(s) whose readers this issuer serves (PEM; each is a trust anchor).
        #[arg(long = "ca", value_name = "CA.crt")]
        ca: PathBuf,
        /// The issuer's SM2 sealing key (`cardvm keygen` format).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The master-key store: a file (`cardvm issuer keys init --store PATH`), or
        /// `pkcs11:MODULE#TOKEN` [default: issuer.keys next to the key].
        #[arg(long, value_name = "STORE")]
        keys: Option<String>,
        /// The CA's revocation list (PEM); required before readers are served.
        #[arg(long, value_name = "CRL")]
        crl: Option<PathBuf>,
    },
    /// City master keys: init, import, list (the store `issuer init` names).
    Keys(super::issuer_keys::KeysArgs),
    /// Serve a city: its algorithm, limits, and the query/load/recover command scripts.
    City {
        #[command(subcommand)]
        cmd: CityCmd,
    },
    /// Register a reader by its certificate (verified against the trusted CA now).
    Reader {
        #[command(subcommand)]
        cmd: ReaderCmd,
    },
    /// Install a CA's revocation list (replaces that CA's previous one).
    Crl {
        /// The CRL (PEM).
        #[arg(value_name = "CRL")]
        crl: PathBuf,
    },
    /// A card as the ledger knows it (counters, balance, whether it is suspect), or an
    /// operator clearing a suspect card.
    Card {
        #[command(subcommand)]
        cmd: CardCmd,
    },
    /// Refuse every request for a card (lost, stolen, disputed).
    Block {
        /// Card id (application serial or UID, hex).
        #[arg(value_name = "CARD")]
        card: String,
        /// Why (shown in every refusal).
        #[arg(long)]
        reason: String,
    },
    /// Take a card off the blocklist.
    Unblock {
        /// Card id (hex).
        #[arg(value_name = "CARD")]
        card: String,
    },
    /// Seal a city's query script for a reader (it runs it on each tapped card).
    QueryScript {
        /// The reader.
        #[arg(long, value_name = "ID")]
        reader: String,
        /// The city.
        #[arg(long)]
        city: u32,
        /// Output file.
        #[arg(short = 'o', long = "out", value_name = "OUT")]
        out: PathBuf,
    },
    /// Seal a city's offline terminal program for a merchant's terminal (it runs it with
    /// `cardvm run … --terminal-purchase AMOUNT` for every sale; docs/psam.md).
    TerminalScript {
        /// The reader (registered with --merchant).
        #[arg(long, value_name = "ID")]
        reader: String,
        /// The city.
        #[arg(long)]
        city: u32,
        /// Output file.
        #[arg(short = 'o', long = "out", value_name = "OUT")]
        out: PathBuf,
    },
    /// From a reader's signed query receipt and an amount: seal a load (or the card's
    /// pending recovery) for that reader.
    Bundle {
        /// The query receipt (JSON, from `cardvm run --query`).
        #[arg(long, value_name = "RECEIPT.json")]
        query: PathBuf,
        /// Amount: fen (`10000`) or yuan with a point (`100.00`).
        #[arg(long)]
        amount: String,
        /// Output directory: command.sealed, data.sealed, bundle.json.
        #[arg(short = 'o', long = "out", value_name = "DIR")]
        out: PathBuf,
    },
    /// Settle signed receipts (JSON): verify and move each transaction once.
    Settle {
        /// Receipts.
        #[arg(value_name = "RECEIPT.json", required = true)]
        receipts: Vec<PathBuf>,
    },
    /// Serve the online protocol over HTTPS (see docs/online.md).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// The server's TLS certificate chain (PEM).
        #[arg(long, value_name = "PEM")]
        tls_cert: PathBuf,
        /// The server's TLS private key (PEM).
        #[arg(long, value_name = "PEM")]
        tls_key: PathBuf,
        /// Requests per second per reader (sustained).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Requests per reader in a burst.
        #[arg(long, default_value_t = 40.0)]
        burst: f64,
        /// Requests per second per client address, counted before authentication.
        #[arg(long, default_value_t = 50.0)]
        addr_rate: f64,
        /// Requests per client address in a burst, before authentication.
        #[arg(long, default_value_t = 200.0)]
        addr_burst: f64,
        /// Seconds a client has to send a request's headers.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        header_timeout: f64,
        /// Seconds a client has to send a request's body.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        body_timeout: f64,
        /// Connections open at once; more are closed as they arrive.
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
        /// No per-request log lines.
        #[arg(long)]
        quiet: bool,
        /// Trust this CA (PEM) for merchants' HTTPS notification URLs, beside the
        /// system's roots.
        #[arg(long, value_name = "PEM")]
        notify_ca: Option<PathBuf>,
    },
    /// The transactions: a table, or JSON lines with --json.
    Ledger {
        /// Only this card (hex).
        #[arg(long, value_name = "CARD")]
        card: Option<String>,
        /// Only this state (issued, committed, failed, unknown, recovered-committed,
        /// recovered-failed).
        #[arg(long)]
        state: Option<TxnState>,
        /// Only this reader.
        #[arg(long, value_name = "ID")]
        reader: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The trust anchors and installed CRLs, with what expires within --warn-days (exit
    /// 0; the warnings on stderr too).
    Status {
        /// Warn about a CRL or CA certificate that runs out within this many days.
        #[arg(long, default_value_t = 7)]
        warn_days: u64,
    },
    /// Merchants: add, list, show (with their orders), disable, enable
    /// (docs/clearing.md).
    Merchant {
        #[command(subcommand)]
        cmd: super::money::MerchantCmd,
    },
    /// Payment providers whose signed notifications mark recharge orders paid.
    Provider {
        #[command(subcommand)]
        cmd: super::money::ProviderCmd,
    },
    /// Clear a business day (counts, sums, fees, merchants' net; signed files), set
    /// the day's zone and cut-off, or verify a day's files.
    Clearing {
        #[command(subcommand)]
        cmd: super::money::ClearingCmd,
    },
    /// Readers' journals against the ledger (receipts not settled, unknown, settled
    /// otherwise, duplicated) and the cards' counters (gaps): docs/clearing.md.
    Reconcile {
        /// Journals (reader.journal files, read only).
        #[arg(value_name = "JOURNAL", required = true)]
        journals: Vec<PathBuf>,
        /// Also write reconcile-DATE.json, .csv and a signed summary into this directory.
        #[arg(short = 'o', long = "out", value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The cleared days between two dates, with their totals.
    Report {
        /// First day, YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last day, YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        to: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Decide an `unknown` load that recovery could not prove either way (see the
    /// recovery's note in `issuer ledger`; docs/cards.md "Recovery").
    Decide {
        /// The reader that ran the load.
        #[arg(value_name = "READER")]
        reader: String,
        /// The load's seq.
        #[arg(value_name = "SEQ")]
        seq: u64,
        /// The card has the load (the cardholder is credited).
        #[arg(long, conflicts_with = "failed", required_unless_present = "failed")]
        committed: bool,
        /// The card does not have it.
        #[arg(long)]
        failed: bool,
        /// Why (kept in the ledger's note with the decision).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum CardCmd {
    /// The card's base and last counter and balance, suspicion, history and loads.
    Show {
        /// Card id (hex).
        #[arg(value_name = "CARD")]
        card: String,
    },
    /// Clear a suspect card after checking it: its last query becomes the new base.
    Clear {
        /// Card id (hex).
        #[arg(value_name = "CARD")]
        card: String,
        /// The city whose card it is.
        #[arg(long)]
        city: u32,
        /// Why it is cleared (kept in its history).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum CityCmd {
    /// Add or replace a city.
    Add {
        /// City id (the scripts' `.city`).
        #[arg(value_name = "CITY")]
        city: u32,
        /// Purse algorithm: des3, sm4 or m1.
        #[arg(long)]
        alg: String,
        /// The query script (.cvm, or .casm / .cvs to compile).
        #[arg(long, value_name = "FILE")]
        query: PathBuf,
        /// The load script: host-secured (`load_host.cvs`, no card key in any bundle) for a
        /// CPU-card city; a key-bearing one is sent only to secure-element readers.
        #[arg(long, value_name = "FILE")]
        load: PathBuf,
        /// The recovery script (GET TRANSACTION PROVE); CPU cities.
        #[arg(long, value_name = "FILE")]
        recover: Option<PathBuf>,
        /// The online purchase script, host-secured (`purchase_host.cvs`: the card company
        /// is the terminal's PSAM); CPU cities. Without it the city takes no online payment.
        #[arg(long, value_name = "FILE")]
        purchase: Option<PathBuf>,
        /// The offline terminal program of merchants' PSAM terminals (`psam_purchase.cvs`:
        /// inputs `amount` and `now` only, no key, MAC1 from the PSAM); sealed for each
        /// terminal with `issuer terminal-script`. Every program a city has had keeps
        /// settling (docs/psam.md "Offline purchases").
        #[arg(long, value_name = "FILE")]
        terminal_purchase: Option<PathBuf>,
        /// Highest purse balance (fen).
        #[arg(long, default_value_t = 100_000)]
        purse_limit: u64,
        /// Highest single load (fen).
        #[arg(long, default_value_t = 100_000)]
        txn_limit: u64,
        /// Highest total of loads per card per day (fen).
        #[arg(long, default_value_t = 200_000)]
        day_limit: u64,
        /// Load only recharges paid first at a payment provider (a load presents the
        /// paid order: docs/clearing.md).
        #[arg(long)]
        paid_first: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ReaderCmd {
    /// Register (or renew) a reader from its certificate (PEM; intermediates may follow).
    Add {
        /// The certificate.
        #[arg(value_name = "CERT")]
        cert: PathBuf,
        /// Terminal id for its data scripts (6 bytes hex) [default: its registration
        /// number].
        #[arg(long, value_name = "HEX")]
        terminal: Option<String>,
        /// Make it this merchant's terminal: it may sell offline with a PSAM whose
        /// terminal number is --terminal (docs/psam.md "Offline purchases").
        #[arg(long, value_name = "ID")]
        merchant: Option<String>,
    },
}

fn runtime(threads: bool) -> Result<tokio::runtime::Runtime, String> {
    if threads {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs `cardvm issuer …`.
pub fn run(args: IssuerArgs) -> CliResult {
    if let IssuerCmd::Keys(k) = args.cmd {
        return super::issuer_keys::keys_cmd(k);
    }
    let serve = matches!(args.cmd, IssuerCmd::Serve { .. });
    runtime(serve)?.block_on(run_async(args))
}

async fn run_async(args: IssuerArgs) -> CliResult {
    let ledger = Ledger::open(&args.db).await.map_err(|e| e.to_string())?;
    let r = match args.cmd {
        IssuerCmd::Init { ca, key, keys, crl } => {
            init(&ledger, &ca, &key, keys).await?;
            match crl {
                Some(c) => crl_add(&ledger, &c).await,
                None => Ok(()),
            }
        }
        IssuerCmd::Keys(_) => Ok(()),
        IssuerCmd::City { cmd } => match cmd {
            CityCmd::Add {
                city,
                alg,
                query,
                load,
                recover,
                purchase,
                terminal_purchase,
                purse_limit,
                txn_limit,
                day_limit,
                paid_first,
            } => {
                ledger
                    .set_config(
                        &format!("paid_first.{city}"),
                        if paid_first { "1" } else { "0" },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                city_add(
                    &ledger,
                    CityRow {
                        city,
                        alg,
                        purse_limit,
                        txn_limit,
                        day_limit,
                    },
                    &query,
                    &load,
                    recover.as_deref(),
                    purchase.as_deref(),
                    terminal_purchase.as_deref(),
                )
                .await
            }
        },
        IssuerCmd::Reader { cmd } => match cmd {
            ReaderCmd::Add {
                cert,
                terminal,
                merchant,
            } => reader_add(&ledger, &cert, terminal, merchant).await,
        },
        IssuerCmd::Crl { crl } => crl_add(&ledger, &crl).await,
        IssuerCmd::Card { cmd } => card_cmd(&ledger, cmd).await,
        IssuerCmd::Block { card, reason } => {
            check_card(&card)?;
            ledger
                .block_card(&card, &reason, now())
                .await
                .map_err(|e| e.to_string())?;
            println!("card {} blocked: {reason}", card.to_ascii_uppercase());
            Ok(())
        }
        IssuerCmd::Unblock { card } => {
            check_card(&card)?;
            let was = ledger
                .unblock_card(&card)
                .await
                .map_err(|e| e.to_string())?;
            if was {
                println!("card {} unblocked", card.to_ascii_uppercase());
                Ok(())
            } else {
                Err(format!(
                    "card {} was not blocked",
                    card.to_ascii_uppercase()
                ))
            }
        }
        IssuerCmd::QueryScript { reader, city, out } => {
            let issuer = open_issuer(&ledger).await?;
            let s = issuer
                .query_script(&reader, city)
                .await
                .map_err(|e| e.to_string())?;
            write(&out, &s.bytes)?;
            println!(
                "query script of city {city} sealed for {reader} (seq {}): {}",
                s.seq,
                out.display()
            );
            Ok(())
        }
        IssuerCmd::TerminalScript { reader, city, out } => {
            let issuer = open_issuer(&ledger).await?;
            let s = issuer
                .terminal_script(&reader, city)
                .await
                .map_err(|e| e.to_string())?;
            write(&out, &s.bytes)?;
            println!(
                "terminal program of city {city} sealed for {reader} (seq {}, until {}): {}",
                s.seq,
                cardvm::issuer::pki::rfc3339(s.expires),
                out.display()
            );
            Ok(())
        }
        IssuerCmd::Bundle { query, amount, out } => bundle(&ledger, &query, &amount, &out).await,
        IssuerCmd::Settle { receipts } => settle(&ledger, &receipts).await,
        IssuerCmd::Serve {
            listen,
            tls_cert,
            tls_key,
            rate,
            burst,
            addr_rate,
            addr_burst,
            header_timeout,
            body_timeout,
            max_connections,
            quiet,
            notify_ca,
        } => {
            let issuer = open_issuer(&ledger).await?;
            for w in expiry_warnings(&trust_store(&ledger).await?, now(), 7) {
                eprintln!("cardvm issuer: {w}");
            }
            let svc = cardvm::online::service::Service::new(
                issuer,
                cardvm::online::service::ServiceConfig {
                    rate_per_sec: rate,
                    burst,
                    log: !quiet,
                    addr_rate_per_sec: addr_rate,
                    addr_burst,
                    header_timeout: std::time::Duration::from_secs_f64(header_timeout),
                    body_timeout: std::time::Duration::from_secs_f64(body_timeout),
                    max_connections,
                    ..Default::default()
                },
            );
            if let Some(p) = &notify_ca {
                svc.set_notify_ca(&read(p)?)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
            }
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            let url = ledger.url();
            tokio::spawn(async move {
                if let Some(addr) = h.listening().await {
                    eprintln!("cardvm issuer: serving https://{addr}/v1 (ledger {url})");
                }
            });
            // Trust anchors and CRLs are re-read from the ledger while it serves
            // (ServiceConfig::trust_reload): `cardvm issuer crl` takes effect on a running
            // service, and on every instance.
            let shutdown = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            cardvm::online::service::serve_tls(svc, listen, &tls_cert, &tls_key, handle).await
        }
        IssuerCmd::Ledger {
            card,
            state,
            reader,
            limit,
            json,
        } => {
            let rows = ledger
                .list(&Filter {
                    card_id: card,
                    state,
                    reader_id: reader,
                    limit,
                })
                .await
                .map_err(|e| e.to_string())?;
            print_ledger(&rows, json);
            Ok(())
        }
        IssuerCmd::Decide {
            reader,
            seq,
            committed,
            failed: _,
            reason,
        } => decide(&ledger, &reader, seq, committed, &reason).await,
        IssuerCmd::Status { warn_days } => status(&ledger, warn_days).await,
        IssuerCmd::Merchant { cmd } => super::money::merchant(&ledger, cmd).await,
        IssuerCmd::Provider { cmd } => super::money::provider(&ledger, cmd).await,
        IssuerCmd::Clearing { cmd } => super::money::clearing_cmd(&ledger, cmd).await,
        IssuerCmd::Reconcile { journals, out } => {
            super::money::reconcile(&ledger, &journals, out.as_deref()).await
        }
        IssuerCmd::Report { from, to, json } => {
            super::money::report(&ledger, &from, &to, json).await
        }
    };
    ledger.close().await;
    r
}

/// A duration in seconds: finite, above 0, at most a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("`{text}`: seconds, above 0 and at most 86400")),
    }
}

/// `issuer card show|clear`.
async fn card_cmd(ledger: &Ledger, cmd: CardCmd) -> CliResult {
    match cmd {
        CardCmd::Show { card } => {
            check_card(&card)?;
            let states = ledger.card_states(&card).await.map_err(|e| e.to_string())?;
            if states.is_empty() {
                return Err(format!("card {}: never queried", card.to_ascii_uppercase()));
            }
            let at = cardvm::issuer::pki::rfc3339;
            for state in &states {
                println!("card {} of city {}", state.card_id, state.city);
                println!(
                    "  base: online counter {}, balance {} at {} ({} settled, {} open loads then)",
                    state.base_online_atc,
                    state.base_balance,
                    at(state.base_at),
                    state.base_settled_n,
                    state.base_open_n
                );
                println!(
                    "  last query: online counter {}, balance {} at {}",
                    state.last_online_atc,
                    state.last_balance,
                    at(state.last_at)
                );
                match (&state.suspect, state.suspect_at) {
                    (Some(why), Some(t)) => println!("  SUSPECT since {}: {why}", at(t)),
                    (Some(why), None) => println!("  SUSPECT: {why}"),
                    _ => println!("  not suspect"),
                }
                for line in state.history.lines() {
                    println!("  history: {line}");
                }
            }
            let rows = ledger
                .list(&Filter {
                    card_id: Some(card.to_ascii_uppercase()),
                    ..Filter::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            print_ledger(&rows, false);
            Ok(())
        }
        CardCmd::Clear { card, city, reason } => {
            check_card(&card)?;
            if reason.trim().is_empty() {
                return Err("--reason: say why (it is kept in the card's history)".into());
            }
            if ledger
                .clear_card(city, &card, reason.trim(), now())
                .await
                .map_err(|e| e.to_string())?
            {
                println!("card {} of city {city} cleared", card.to_ascii_uppercase());
                Ok(())
            } else {
                Err(format!(
                    "card {} of city {city} is not suspect: nothing changed",
                    card.to_ascii_uppercase()
                ))
            }
        }
    }
}

/// `issuer status`: the CRLs in force and what runs out soon.
async fn status(ledger: &Ledger, warn_days: u64) -> CliResult {
    let trust = trust_store(ledger).await?;
    let now = now();
    println!("ledger: {}", ledger.url());
    for (issuer, number, this, next) in trust.crl_summary() {
        println!(
            "CRL of {issuer}: number {}, this update {}, next update {}",
            number.map_or_else(|| "-".to_string(), |n| n.to_string()),
            cardvm::issuer::pki::rfc3339(this),
            next.map_or_else(|| "-".to_string(), cardvm::issuer::pki::rfc3339),
        );
    }
    let soon = expiry_warnings(&trust, now, warn_days);
    for w in &soon {
        println!("{w}");
        eprintln!("cardvm issuer: {w}");
    }
    if soon.is_empty() {
        println!("nothing expires within {warn_days} day(s)");
    }
    Ok(())
}

/// One line per CRL or CA certificate that runs out within `days` (or has).
fn expiry_warnings(trust: &TrustStore, now: u64, days: u64) -> Vec<String> {
    trust
        .expiring(now, days.saturating_mul(86_400))
        .into_iter()
        .map(|(at, what)| {
            if at <= now {
                format!(
                    "warning: {what} expired at {}",
                    cardvm::issuer::pki::rfc3339(at)
                )
            } else {
                format!(
                    "warning: {what} expires at {} (in {} h)",
                    cardvm::issuer::pki::rfc3339(at),
                    (at - now) / 3600
                )
            }
        })
        .collect()
}

/// `issuer decide`: an operator's verdict on an `unknown` load, kept with its reason.
async fn decide(
    ledger: &Ledger,
    reader: &str,
    seq: u64,
    committed: bool,
    reason: &str,
) -> CliResult {
    if reason.trim().is_empty() {
        return Err("--reason: say why (it is kept with the decision)".into());
    }
    let state = if committed {
        TxnState::RecoveredCommitted
    } else {
        TxnState::RecoveredFailed
    };
    let note = format!("decided by an operator: {}", reason.trim());
    if ledger
        .decide_unknown(reader, seq, state, &note)
        .await
        .map_err(|e| e.to_string())?
    {
        println!("{reader}/{seq}: {}", state.name());
        return Ok(());
    }
    Err(
        match ledger.txn(reader, seq).await.map_err(|e| e.to_string())? {
            None => format!("no transaction {reader}/{seq}"),
            Some(row) => format!(
                "transaction {reader}/{seq} is {}, not unknown: nothing changed",
                row.state.name()
            ),
        },
    )
}

fn check_card(card: &str) -> CliResult {
    match unhex(card) {
        Some(b) if !b.is_empty() && b.len() <= 32 => Ok(()),
        _ => Err(format!("card id `{card}`: expected 1-32 bytes of hex")),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> CliResult {
    fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn absolute(path: &Path) -> Result<String, String> {
    let p = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    p.to_str()
        .map(String::from)
        .ok_or_else(|| format!("{}: not UTF-8", path.display()))
}

async fn init(ledger: &Ledger, ca: &Path, key: &Path, keys: Option<String>) -> CliResult {
    let pem = fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let certs = certs_from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut trust = TrustStore::new();
    for c in &certs {
        trust
            .add_root(c.clone())
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let sealing = load_private_key(key)?;
    let keys = match keys {
        Some(k) if k.starts_with("pkcs11:") => k,
        Some(k) => absolute(Path::new(&k))?,
        None => absolute(&key.with_file_name("issuer.keys"))?,
    };
    let set = |n: &'static str, v: String| async move {
        ledger.set_config(n, &v).await.map_err(|e| e.to_string())
    };
    set("ca_pem", pem).await?;
    set("issuer_key", absolute(key)?).await?;
    set("keystore", keys.clone()).await?;
    println!(
        "issuer ledger {}: trusts {} CA certificate(s) from {}; seals with key {} ({}); master keys in {}",
        ledger.url(),
        certs.len(),
        ca.display(),
        hex(&sealing.public_key().key_id()),
        key.display(),
        keys
    );
    Ok(())
}

async fn config(ledger: &Ledger, name: &str) -> Result<String, String> {
    ledger
        .config(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "ledger {}: no `{name}` (run cardvm issuer init first)",
                ledger.url()
            )
        })
}

/// The trust store from the ledger: the CA anchors and the installed CRLs.
async fn trust_store(ledger: &Ledger) -> Result<TrustStore, String> {
    cardvm::issuer::bootstrap::trust_store(ledger)
        .await
        .map_err(|e| e.to_string())
}

async fn key_store(ledger: &Ledger) -> Result<Arc<dyn MasterKeyStore>, String> {
    let spec = config(ledger, "keystore").await?;
    super::issuer_keys::open_store(&spec)
}

/// The card company's signing key, as `issuer init` recorded it.
pub async fn open_signing(ledger: &Ledger) -> Result<cardvm::crypto::sm2::Sm2PrivateKey, String> {
    load_private_key(Path::new(&config(ledger, "issuer_key").await?))
}

async fn open_issuer(ledger: &Ledger) -> Result<Issuer, String> {
    let trust = trust_store(ledger).await?;
    let key = load_private_key(Path::new(&config(ledger, "issuer_key").await?))?;
    let keys = key_store(ledger).await?;
    // One zone for the card company: cards' dates, the daily limit and clearing
    // (`issuer clearing config`).
    let zone = ledger
        .config("clearing_zone")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| cardvm::issuer::clearing::DEFAULT_ZONE.into());
    Issuer::new(ledger.clone(), trust, key, keys, Arc::new(SystemClock)).with_zone(&zone)
}

/// A command script from a `.cvm`, or compiled from a `.casm` or `.cvs`.
fn script_bytes(path: &Path) -> Result<Vec<u8>, String> {
    if path.extension().is_some_and(|e| e == "casm" || e == "cvs") {
        let out = cardvm::asm::assemble_file(path, &cardvm::asm::AsmOptions::default())
            .map_err(|e| e.to_string())?;
        Ok(out.script.encode())
    } else {
        let bytes = read(path)?;
        let script = cardvm::script::CommandScript::parse(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        cardvm::verify::VerifiedProgram::verify(&script)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(bytes)
    }
}

async fn city_add(
    ledger: &Ledger,
    row: CityRow,
    query: &Path,
    load: &Path,
    recover: Option<&Path>,
    purchase: Option<&Path>,
    terminal_purchase: Option<&Path>,
) -> CliResult {
    if !["des3", "sm4", "m1"].contains(&row.alg.as_str()) {
        return Err(format!("--alg {}: one of des3, sm4, m1", row.alg));
    }
    let mut scripts = vec![
        ("query", script_bytes(query)?),
        ("load", script_bytes(load)?),
    ];
    if let Some(r) = recover {
        scripts.push(("recover", script_bytes(r)?));
    }
    if let Some(p) = purchase {
        scripts.push(("purchase", script_bytes(p)?));
    }
    if let Some(p) = terminal_purchase {
        let bytes = script_bytes(p)?;
        cardvm::issuer::offline::check_program(&bytes)
            .map_err(|e| format!("--terminal-purchase {}: {e}", p.display()))?;
        scripts.push((cardvm::issuer::offline::TERMINAL_ROLE, bytes));
    }
    for (role, bytes) in &scripts {
        let script = cardvm::script::CommandScript::parse(bytes).map_err(|e| e.to_string())?;
        if script.header.city != row.city {
            return Err(format!(
                "the {role} script is for city {}, not {}",
                script.header.city, row.city
            ));
        }
    }
    ledger.set_city(&row).await.map_err(|e| e.to_string())?;
    for (role, bytes) in &scripts {
        if *role == cardvm::issuer::offline::TERMINAL_ROLE {
            ledger.set_terminal_program(row.city, bytes, now()).await
        } else {
            ledger.set_script(row.city, role, bytes).await
        }
        .map_err(|e| e.to_string())?;
    }
    println!(
        "city {} ({}): {} script(s); limits: purse {}, load {}, day {} fen",
        row.city,
        row.alg,
        scripts.len(),
        row.purse_limit,
        row.txn_limit,
        row.day_limit
    );
    Ok(())
}

async fn reader_add(
    ledger: &Ledger,
    cert: &Path,
    terminal: Option<String>,
    merchant: Option<String>,
) -> CliResult {
    if let Some(m) = &merchant
        && ledger
            .merchant(m)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
    {
        return Err(format!(
            "--merchant {m}: no such merchant (cardvm issuer merchant add)"
        ));
    }
    let pem = fs::read_to_string(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let chain = certs_from_pem(&pem).map_err(|e| format!("{}: {e}", cert.display()))?;
    let trust = trust_store(ledger).await?;
    let id = trust
        .verify_reader(&chain, now())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let terminal: [u8; 6] = match terminal {
        Some(t) => unhex(&t)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("--terminal {t}: expected 6 bytes of hex"))?,
        None => {
            let n = match ledger
                .reader(&id.reader_id)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(existing) => {
                    let mut b = [0u8; 8];
                    b[2..].copy_from_slice(&existing.terminal_id);
                    u64::from_be_bytes(b)
                }
                None => ledger.reader_count().await.map_err(|e| e.to_string())? + 1,
            };
            let b = n.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        }
    };
    ledger
        .add_reader(&id.reader_id, &pem, &id.serial, &terminal, now())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(m) = &merchant {
        ledger
            .set_reader_merchant(&id.reader_id, Some(m))
            .await
            .map_err(|e| e.to_string())?;
    }
    println!(
        "reader {} registered: certificate {} ({} reader, until {}), terminal {}{}",
        id.reader_id,
        id.serial,
        id.kind,
        cardvm::issuer::pki::rfc3339(id.not_after),
        hex(&terminal),
        merchant
            .as_deref()
            .map(|m| format!(", merchant {m}'s terminal"))
            .unwrap_or_default()
    );
    Ok(())
}

async fn crl_add(ledger: &Ledger, path: &Path) -> CliResult {
    let pem = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = cardvm::issuer::bootstrap::install_crls(ledger, &pem, now())
        .await
        .map_err(|e| match e {
            cardvm::issuer::bootstrap::BootstrapError::Pki {
                what: "CRL refused",
                error,
            } => format!("{}: refused: {error}", path.display()),
            other => format!("{}: {other}", path.display()),
        })?;
    println!("{}: installed; {n} CRL(s) in the ledger", path.display());
    Ok(())
}

/// `10000` fen, or `100.00` / `100.5` yuan.
pub fn parse_amount(text: &str) -> Result<u64, String> {
    let bad = || format!("--amount {text}: fen (10000) or yuan with a point (100.00)");
    match text.split_once('.') {
        None => text.parse().map_err(|_| bad()),
        Some((y, f)) => {
            if f.is_empty() || f.len() > 2 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let yuan: u64 = y.parse().map_err(|_| bad())?;
            let fen: u64 = format!("{f:0<2}").parse().map_err(|_| bad())?;
            yuan.checked_mul(100)
                .and_then(|v| v.checked_add(fen))
                .ok_or_else(bad)
        }
    }
}

fn load_receipt(path: &Path) -> Result<Receipt, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Receipt::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn bundle(ledger: &Ledger, query: &Path, amount: &str, out: &Path) -> CliResult {
    let amount = parse_amount(amount)?;
    let receipt = load_receipt(query)?;
    let issuer = open_issuer(ledger).await?;
    let b = issuer
        .bundle(&receipt, amount)
        .await
        .map_err(|e| format!("{}: {e}", query.display()))?;
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write(&out.join("command.sealed"), &b.command)?;
    write(&out.join("data.sealed"), &b.data)?;
    let info = serde_json::json!({
        "kind": b.kind.name(),
        "reader_id": b.reader_id,
        "seq": b.seq,
        "city": b.city,
        "card_id": hex(&b.card_id),
        "amount": b.amount,
        "recovers_seq": b.recovers_seq,
        "expires": cardvm::issuer::pki::rfc3339(b.expires),
    });
    write(
        &out.join("bundle.json"),
        format!(
            "{}\n",
            serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?
        )
        .as_bytes(),
    )?;
    match b.recovers_seq {
        Some(orig) => println!(
            "card {} has load {}/{orig} in state unknown: sealed its RECOVERY as {}/{} in {} (run it on the card, then settle its receipt)",
            hex(&b.card_id),
            b.reader_id,
            b.reader_id,
            b.seq,
            out.display()
        ),
        None => println!(
            "bundle {}/{}: load {} fen onto card {}, expires {}: {}",
            b.reader_id,
            b.seq,
            b.amount,
            hex(&b.card_id),
            cardvm::issuer::pki::rfc3339(b.expires),
            out.display()
        ),
    }
    Ok(())
}

async fn settle(ledger: &Ledger, receipts: &[PathBuf]) -> CliResult {
    let issuer = open_issuer(ledger).await?;
    let mut failed = 0usize;
    for path in receipts {
        let r = match load_receipt(path) {
            Ok(r) => issuer
                .settle(&r)
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(e),
        };
        match r {
            Ok(s) => {
                let mut line = format!(
                    "{}: {} {}/{} {}{}",
                    path.display(),
                    s.kind.name(),
                    s.reader_id,
                    s.seq,
                    s.state,
                    if s.already {
                        " (already settled by this receipt)"
                    } else {
                        ""
                    }
                );
                if let Some((seq, st)) = s.decided {
                    line.push_str(&format!("; load {}/{seq} is now {st}", s.reader_id));
                }
                println!("{line}");
            }
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} receipt(s) not settled", receipts.len())),
    }
}

fn row_json(r: &TxnRow) -> serde_json::Value {
    serde_json::json!({
        "reader_id": r.reader_id,
        "seq": r.seq,
        "kind": r.kind.name(),
        "city": r.city,
        "card_id": r.card_id,
        "amount": r.amount,
        "state": r.state.name(),
        "terminal_id": hex(&r.terminal_id),
        "datetime": r.datetime,
        "balance_before": r.balance_before,
        "balance_after": r.balance_after,
        "atc": r.atc,
        "tac": r.tac,
        "recovers_seq": r.recovers_seq,
        "issued_at": r.issued_at,
        "settled_at": r.settled_at,
        "note": r.note,
    })
}

fn print_ledger(rows: &[TxnRow], json: bool) {
    if json {
        for r in rows {
            println!("{}", row_json(r));
        }
        return;
    }
    println!(
        "{:<12} {:>6} {:<8} {:>5} {:<20} {:>9} {:<19} {:>9} {:>9}  note",
        "reader", "seq", "kind", "city", "card", "amount", "state", "before", "after"
    );
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for r in rows {
        println!(
            "{:<12} {:>6} {:<8} {:>5} {:<20} {:>9} {:<19} {:>9} {:>9}  {}",
            r.reader_id,
            r.seq,
            r.kind.name(),
            r.city,
            r.card_id,
            r.amount,
            r.state.name(),
            opt(r.balance_before),
            opt(r.balance_after),
            r.note.as_deref().unwrap_or("")
        );
    }
    println!("{} transaction(s)", rows.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_fen_and_yuan() {
        assert_eq!(parse_amount("10000"), Ok(10_000));
        assert_eq!(parse_amount("100.00"), Ok(10_000));
        assert_eq!(parse_amount("100.5"), Ok(10_050));
        assert_eq!(parse_amount("0.01"), Ok(1));
        for bad in [
            "",
            "1.",
            "1.234",
            "-1",
            "1e4",
            "1.x",
            "99999999999999999999",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
    }
}
