//! `cardvm client recharge|purchase|pay|sync`: the reader's side of the online protocol
//! (docs/online.md; paying a merchant's order: docs/clearing.md).
//!
//! The reader is a directory made by `cardvm reader init` + `install`: `reader.key`,
//! `reader.id`, `reader.crt`. Its journal (`reader.journal`) and replay store
//! (`reader.replay`) live beside the key, as for `cardvm run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cardvm::online::client::{Client, Step, recharge, sync};
use cardvm::reader::{Policy, Reader, ReaderConfig, ReceiptJournal, SystemClock};
use cardvm::vm::Limits;
use clap::{Args, Subcommand};

use super::CliResult;

/// Arguments of `cardvm client`.
#[derive(Args, Debug)]
pub struct ClientArgs {
    #[command(subcommand)]
    cmd: ClientCmd,
}

#[derive(Args, Debug)]
struct Conn {
    /// The service, e.g. https://cards.example:8443
    #[arg(long, value_name = "URL")]
    server: String,
    /// Trust only this CA for the server's TLS certificate (PEM) [default: system roots].
    #[arg(long, value_name = "PEM")]
    server_ca: Option<PathBuf>,
    /// The reader directory (cardvm reader init/install).
    #[arg(long, default_value = "reader", value_name = "DIR")]
    reader_dir: PathBuf,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The arguments of a transaction on the card (`recharge`, `purchase`).
#[derive(Args, Debug)]
struct CardTxn {
    #[command(flatten)]
    on: CardOn,
    /// Amount: yuan with a point (100.00) or fen (10000).
    #[arg(long)]
    amount: String,
    /// `recharge` only: the recharge order paid first at a payment provider (a city
    /// that loads only paid recharges requires it; docs/clearing.md).
    #[arg(long, value_name = "ID")]
    order: Option<String>,
}

/// `client pay`: a merchant's order.
#[derive(Args, Debug)]
struct PayTxn {
    #[command(flatten)]
    on: CardOn,
    /// The card company's order id (the merchant shows it); its amount is paid.
    #[arg(long, value_name = "ID")]
    order: String,
}

/// The card, the reader and the service of a transaction.
#[derive(Args, Debug)]
struct CardOn {
    #[command(flatten)]
    conn: Conn,
    /// The card company's script-sealing public key.
    #[arg(long, value_name = "P")]
    issuer_pub: PathBuf,
    /// The city whose cards this reader serves.
    #[arg(long)]
    city: u32,
    /// A simulated card (profile; written back afterwards).
    #[arg(long, value_name = "CARD.toml", conflicts_with = "pcsc")]
    sim: Option<PathBuf>,
    /// A card in a PC/SC reader: without a name, the reader that holds a card; else
    /// an exact name, a substring matching one reader, or an index (`opensc-tool -r N`).
    #[arg(long, value_name = "READER", num_args = 0..=1, default_missing_value = "")]
    pcsc: Option<String>,
    /// Seconds to wait for a card (PC/SC).
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Seconds one PC/SC exchange may take before the card counts as gone.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    apdu_timeout: f64,
    /// Print one JSON object at the end instead of progress lines.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum ClientCmd {
    /// Recharge the card on the reader: query it, ask the service, run, report.
    Recharge(CardTxn),
    /// Pay the card company from the card on the reader (an online purchase, host-secured:
    /// the card company is the terminal's PSAM; docs/host.md).
    Purchase(CardTxn),
    /// Pay a merchant's order from the card on the reader (docs/clearing.md): shows the
    /// merchant, amount and description, then pays exactly that amount.
    Pay(PayTxn),
    /// Fetch the city's offline terminal program, sealed for this reader (a merchant's
    /// PSAM terminal): run it with `cardvm run FILE --terminal-purchase AMOUNT` for each
    /// sale, then `client sync` (docs/psam.md "Offline purchases").
    TerminalScript {
        #[command(flatten)]
        conn: Conn,
        /// The city.
        #[arg(long)]
        city: u32,
        /// Output file.
        #[arg(short = 'o', long = "out", value_name = "OUT")]
        out: PathBuf,
    },
    /// Deliver the journal's pending receipts; apply the acknowledgement and compact.
    Sync {
        #[command(flatten)]
        conn: Conn,
        /// The journal [default: DIR/reader.journal].
        #[arg(long, value_name = "PATH")]
        journal: Option<PathBuf>,
    },
}

/// What a transaction does on the card.
#[derive(Debug, Clone)]
enum What {
    Load(u64, Option<String>),
    Purchase(u64),
    Pay(String),
}

/// `client recharge` / `client purchase` / `client pay`: one transaction on the card,
/// online.
fn card_txn(t: CardOn, what: What) -> CliResult {
    let CardOn {
        conn,
        issuer_pub,
        city,
        sim,
        pcsc,
        wait,
        apdu_timeout,
        json,
    } = t;
    let purchase = !matches!(what, What::Load(..));
    {
        let apdu_timeout = super::pcsc::apdu_timeout(apdu_timeout)?;
        let key_path = conn.reader_dir.join("reader.key");
        let key = super::keys::load_private_key(&key_path)?;
        let store =
            cardvm::envelope::FileReplayStore::open_file(key_path.with_extension("replay"), &key)
                .map_err(|e| format!("{}: {e}", key_path.with_extension("replay").display()))?;
        let journal_path = key_path.with_extension("journal");
        let journal: Box<dyn ReceiptJournal + Send> = Box::new(
            cardvm::journal::Journal::open(&journal_path)
                .map_err(|e| format!("{}: {e}", journal_path.display()))?,
        );
        let mut reader = Reader::new(
            ReaderConfig {
                reader_id: read_id(&conn.reader_dir)?,
                reader_key: Some(key),
                issuers: vec![super::keys::load_public_key(&issuer_pub)?],
                policy: Policy::SealedOnly,
                limits: Limits::default(),
            },
            Some(Box::new(store)),
            Some(journal),
            Box::new(SystemClock),
        )
        .map_err(|e| e.to_string())?;
        let client = client(&conn)?;
        let rt = runtime()?;
        let total = if matches!(what, What::Pay(_)) { 6 } else { 5 };
        let mut n = 0;
        let progress = |s: &Step| {
            if json {
                return;
            }
            n += 1;
            let line = match s {
                Step::QueryScript => "asking the card company for the card query".to_string(),
                Step::CardRead { card_id, balance } => match balance {
                    Some(b) => format!("card {card_id}: balance {}.{:02}", b / 100, b % 100),
                    None => format!("card {card_id}"),
                },
                Step::Bundle { kind, seq } if kind == "recover" => format!(
                    "an earlier load on this card is unfinished: recovering it first (seq {seq})"
                ),
                Step::Bundle { seq, .. } => {
                    format!(
                        "{} approved (seq {seq}); keep the card on the reader",
                        if purchase { "payment" } else { "load" }
                    )
                }
                Step::CardDone { outcome } => format!("card: {outcome}"),
                Step::Settled(s) => format!("card company: {} {}", s.kind, s.state),
                Step::Order(o) => format!(
                    "order {}: {} yuan to {} for {} ({})",
                    o.order_id, o.amount_display, o.merchant_name, o.description, o.state
                ),
            };
            eprintln!("[{}/{total}] {line}", n.min(total));
        };
        let result = match (&sim, &pcsc) {
            (Some(profile), None) => {
                let mut card = super::sim::load_card(profile)?;
                let r = rt.block_on(on_card(
                    &what,
                    &client,
                    &mut reader,
                    &mut card,
                    city,
                    progress,
                ));
                card.save(profile)
                    .map_err(|e| format!("{}: {e}", profile.display()))?;
                r
            }
            (None, Some(name)) => pcsc_recharge(
                &what,
                &rt,
                &client,
                &mut reader,
                name,
                (wait, apdu_timeout),
                city,
                progress,
            )?,
            _ => return Err("give the card: --sim CARD.toml or --pcsc [READER]".into()),
        }
        .map_err(|e| e.to_string())?;
        drop(reader);
        // Deliver what is pending (this receipt if it was not delivered, queries) and
        // compact; a failure here leaves them for `cardvm client sync`.
        let synced = cardvm::journal::Journal::open(&journal_path)
            .map_err(|e| e.to_string())
            .and_then(|mut j| {
                rt.block_on(sync(&client, &mut j))
                    .map_err(|e| e.to_string())
            });
        if json {
            let v = serde_json::json!({
                "outcome": result.outcome,
                "settled": result.settled.as_ref().map(|s| serde_json::json!({
                    "seq": s.seq, "state": s.state, "already": s.already })),
                "delivery_error": result.delivery_error,
                "recovered": result.recovered.iter().map(|s| serde_json::json!({
                    "seq": s.seq, "decided_seq": s.decided_seq, "decided_state": s.decided_state
                })).collect::<Vec<_>>(),
                "receipt": serde_json::from_str::<serde_json::Value>(&result.receipt).ok(),
            });
            println!("{v}");
        }
        if let Err(e) = &synced {
            eprintln!("journal not synced now ({e}); run cardvm client sync later");
        }
        match (&result.settled, result.outcome.as_str()) {
                (Some(s), "committed") if s.state == "committed" => Ok(()),
                (Some(_), o) if o.starts_with("unknown") => Err(
                    "the card was removed while it was being written: tap it again to finish (the next transaction recovers it first)".into(),
                ),
                (Some(s), o) => Err(format!(
                    "{}: card {o}; card company: {}",
                    if purchase { "not paid" } else { "not loaded" },
                    s.state
                )),
                (None, o) => Err(format!(
                    "card {o}; the card company has not confirmed it ({}): the receipt is kept in the journal, run cardvm client sync",
                    result.delivery_error.unwrap_or_default()
                )),
            }
    }
}

fn read_id(dir: &Path) -> Result<String, String> {
    let p = dir.join("reader.id");
    let id = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(id.trim().to_string())
}

fn client(conn: &Conn) -> Result<Client, String> {
    let key = super::keys::load_private_key(&conn.reader_dir.join("reader.key"))?;
    let ca = conn
        .server_ca
        .as_deref()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()?;
    Client::new(
        &conn.server,
        ca.as_deref(),
        &read_id(&conn.reader_dir)?,
        key,
        Duration::from_secs(conn.timeout),
    )
    .map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs `cardvm client …`.
pub fn run(args: ClientArgs) -> CliResult {
    match args.cmd {
        ClientCmd::Recharge(t) => {
            let amount = super::issuer::parse_amount(&t.amount)?;
            card_txn(t.on, What::Load(amount, t.order))
        }
        ClientCmd::Purchase(t) => {
            if t.order.is_some() {
                return Err(
                    "--order on a purchase: pay a merchant's order with cardvm client pay --order ID"
                        .into(),
                );
            }
            let amount = super::issuer::parse_amount(&t.amount)?;
            card_txn(t.on, What::Purchase(amount))
        }
        ClientCmd::Pay(t) => card_txn(t.on, What::Pay(t.order)),
        ClientCmd::TerminalScript { conn, city, out } => {
            let client = client(&conn)?;
            let reply = runtime()?
                .block_on(client.terminal_script(city))
                .map_err(|e| e.to_string())?;
            let bytes = cardvm::issuer::ledger::unhex(&reply.script)
                .ok_or("the service answered a script that is not hex")?;
            super::write_output(Some(&out), &bytes)?;
            println!(
                "terminal program of city {city} (seq {}): {}",
                reply.seq,
                out.display()
            );
            Ok(())
        }
        ClientCmd::Sync { conn, journal } => {
            let path = journal.unwrap_or_else(|| conn.reader_dir.join("reader.journal"));
            let mut j = cardvm::journal::Journal::open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let client = client(&conn)?;
            let r = runtime()?
                .block_on(sync(&client, &mut j))
                .map_err(|e| e.to_string())?;
            println!(
                "sent {} receipt(s): {} settled, {} queries, {} failed sales, {} refused; acknowledged up to {}",
                r.sent,
                r.settled,
                r.queries,
                r.failed,
                r.refused.len(),
                r.acknowledged_up_to
            );
            for line in &r.refused {
                eprintln!("refused: {line}");
            }
            Ok(())
        }
    }
}

#[cfg(feature = "pcsc")]
#[allow(clippy::too_many_arguments)]
fn pcsc_recharge(
    what: &What,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    reader: &mut Reader,
    name: &str,
    (wait, timeout): (u64, Duration),
    city: u32,
    progress: impl FnMut(&Step),
) -> Result<
    Result<cardvm::online::client::RechargeOutcome, cardvm::online::client::RechargeError>,
    String,
> {
    let mut card = super::pcsc::open_card("--pcsc", name, wait, timeout)?;
    Ok(rt.block_on(on_card(what, client, reader, &mut card, city, progress)))
}

/// A recharge, a purchase or an order's payment.
async fn on_card<T: cardvm::transport::CardTransport>(
    what: &What,
    client: &Client,
    reader: &mut Reader,
    card: &mut T,
    city: u32,
    progress: impl FnMut(&Step),
) -> Result<cardvm::online::client::RechargeOutcome, cardvm::online::client::RechargeError> {
    match what {
        What::Load(amount, None) => recharge(client, reader, card, city, *amount, progress).await,
        What::Load(amount, Some(order)) => {
            cardvm::online::client::recharge_paid(
                client, reader, card, city, *amount, order, progress,
            )
            .await
        }
        What::Purchase(amount) => {
            cardvm::online::client::purchase(client, reader, card, city, *amount, progress).await
        }
        What::Pay(order) => {
            cardvm::online::client::pay_order(client, reader, card, city, order, progress).await
        }
    }
}

#[cfg(not(feature = "pcsc"))]
#[allow(clippy::too_many_arguments)]
fn pcsc_recharge(
    _: &What,
    _: &tokio::runtime::Runtime,
    _: &Client,
    _: &mut Reader,
    _: &str,
    _: (u64, Duration),
    _: u32,
    _: impl FnMut(&Step),
) -> Result<
    Result<cardvm::online::client::RechargeOutcome, cardvm::online::client::RechargeError>,
    String,
> {
    Err("--pcsc: this cardvm was built without the `pcsc` feature".into())
}
