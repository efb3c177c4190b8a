//! `cardvm client recharge|purchase|pay|sync`: the reader's side of the online protocol
//! (docs/online.md; paying a merchant's order: docs/clearing.md).
//!
//! The reader is a directory made by `cardvm reader init` + `install`: `reader.key`,
//! `reader.id`, `reader.crt`. Its journal (`reader.journal`) and replay store
//! (`reader.replay`) live beside the key, as for `cardvm run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cardvm::online::client::{Client, Step, recharge, sync};
use cardvm::online::kiosk::{Class, Code, Event, Final, Progress, progress_line};
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
    /// Print JSON Lines events on stdout instead of progress lines: each step, then one
    /// `result` with its stable code, in every case (docs/kiosk.md).
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
    /// Read the card on the reader (number, balance, counters, validity) with the city's
    /// sealed query, before an amount is chosen: the card is not changed.
    Card(CardOn),
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

/// Arguments of `cardvm agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    on: CardOn,
    /// An origin allowed to drive the reader, exactly as the browser sends it
    /// (`https://pay.citycard.example`); repeat for more. Every other page is refused.
    #[arg(long = "origin", value_name = "ORIGIN", required = true)]
    origins: Vec<String>,
    /// The loopback port (0: any free port, printed).
    #[arg(long, default_value_t = 47_731)]
    port: u16,
}

/// What a transaction does on the card.
#[derive(Debug, Clone)]
enum What {
    Load(u64, Option<String>),
    Purchase(u64),
    Pay(String),
}

/// `client recharge` / `client purchase` / `client pay`: one transaction on the card,
/// online. Progress lines on stderr, or with --json JSON Lines events on stdout
/// (docs/kiosk.md); in either case one final outcome with its code and an exit code per
/// outcome class.
fn card_txn(t: CardOn, what: What) -> CliResult {
    let json = t.json;
    let purchase = !matches!(what, What::Load(..));
    let amount = std::cell::Cell::new(match &what {
        What::Load(a, _) | What::Purchase(a) => *a,
        What::Pay(_) => 0,
    });
    let mut steps = Progress::new(purchase, matches!(what, What::Pay(_)));
    let emit = |e: &Event| {
        if json {
            if let Ok(line) = serde_json::to_string(e) {
                println!("{line}");
            }
        } else if let Some(line) = progress_line(e) {
            eprintln!("{line}");
        }
    };
    let progress = |s: &Step| {
        if let Step::Order(o) = s {
            amount.set(o.amount);
        }
        emit(&steps.event(s));
    };
    let last = match txn_on_card(t, &what, progress) {
        Ok((result, synced)) => {
            let mut f = Final::of(&result, amount.get(), purchase);
            if let Err(e) = synced {
                f.detail.push_str(&format!(
                    "; journal not synced now ({e}): cardvm client sync delivers it"
                ));
            }
            f
        }
        Err(f) => *f,
    };
    let (code, class, message, detail) = (
        last.code,
        last.class,
        last.message.clone(),
        last.detail.clone(),
    );
    if json {
        emit(&Event::Result(Box::new(last)));
    }
    match class {
        Class::Ok => {
            if !json {
                eprintln!("{message}");
            }
            Ok(())
        }
        _ => super::fail_with(
            class.exit_code(),
            format!("{message} [{}] ({detail})", code.as_str()),
        ),
    }
}

/// The reader of `--reader-dir`, as a sealed-only reader with its replay store and
/// journal; the journal's path.
fn open_reader(conn: &Conn, issuer_pub: &Path) -> Result<(Reader, PathBuf), String> {
    let key_path = conn.reader_dir.join("reader.key");
    let key = super::keys::load_private_key(&key_path)?;
    let store_path = key_path.with_extension("replay");
    let store = cardvm::envelope::FileReplayStore::open_file(&store_path, &key)
        .map_err(|e| format!("{}: {e}", store_path.display()))?;
    let journal_path = key_path.with_extension("journal");
    let journal: Box<dyn ReceiptJournal + Send> = Box::new(
        cardvm::journal::Journal::open(&journal_path)
            .map_err(|e| format!("{}: {e}", journal_path.display()))?,
    );
    let reader = Reader::new(
        ReaderConfig {
            reader_id: read_id(&conn.reader_dir)?,
            reader_key: Some(key),
            issuers: vec![super::keys::load_public_key(issuer_pub)?],
            policy: Policy::SealedOnly,
            limits: Limits::default(),
        },
        Some(Box::new(store)),
        Some(journal),
        Box::new(SystemClock),
    )
    .map_err(|e| e.to_string())?;
    Ok((reader, journal_path))
}

/// `client card`: the card as the city's query reads it.
fn read_card_cmd(t: CardOn) -> CliResult {
    let json = t.json;
    let emit = |e: &Event| {
        if json && let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
        }
    };
    let last = match read_card_on(&t) {
        Ok(info) => {
            let event = cardvm::online::kiosk::card_event(&info);
            emit(&event);
            if !json && let Event::Card { fields, .. } = &event {
                println!("card {}", info.card_id);
                if let Some(b) = info.balance {
                    println!("balance {}", cardvm::online::kiosk::yuan(b));
                }
                for (name, v) in fields {
                    println!("{name} {v}");
                }
            }
            let mut f = Final::new(Code::CardRead, 0, format!("card {}", info.card_id));
            f.card_id = Some(info.card_id);
            f.balance_before_fen = info.balance;
            f
        }
        Err(f) => *f,
    };
    let (code, class, message, detail) = (
        last.code,
        last.class,
        last.message.clone(),
        last.detail.clone(),
    );
    emit(&Event::Result(Box::new(last)));
    match class {
        Class::Ok => Ok(()),
        _ => super::fail_with(
            class.exit_code(),
            format!("{message} [{}] ({detail})", code.as_str()),
        ),
    }
}

fn read_card_on(t: &CardOn) -> Result<cardvm::online::client::CardInfo, Box<Final>> {
    let setup = |e: String| Box::new(Final::new(Code::ReaderNotAccepted, 0, e));
    let apdu_timeout = super::pcsc::apdu_timeout(t.apdu_timeout).map_err(setup)?;
    let (mut reader, journal_path) = open_reader(&t.conn, &t.issuer_pub).map_err(setup)?;
    let client = client(&t.conn).map_err(setup)?;
    let rt = runtime().map_err(setup)?;
    let fail = |e: cardvm::online::client::RechargeError| {
        let r = Err(e);
        Box::new(Final::of(&r, 0, false))
    };
    let info = match (&t.sim, &t.pcsc) {
        (Some(profile), None) => {
            let mut card = super::sim::load_card(profile).map_err(setup)?;
            let r = rt.block_on(cardvm::online::client::read_card(
                &client,
                &mut reader,
                &mut card,
                t.city,
            ));
            card.save(profile)
                .map_err(|e| setup(format!("{}: {e}", profile.display())))?;
            r.map_err(fail)?
        }
        (None, Some(name)) => {
            let r = pcsc_read(
                &rt,
                &client,
                &mut reader,
                name,
                (t.wait, apdu_timeout),
                t.city,
            )
            .map_err(|e| Box::new(Final::new(Code::NoCard, 0, e)))?;
            r.map_err(fail)?
        }
        _ => {
            return Err(setup(
                "give the card: --sim CARD.toml or --pcsc [READER]".into(),
            ));
        }
    };
    drop(reader);
    // The query receipt is delivered with the journal (nothing to settle).
    if let Ok(mut j) = cardvm::journal::Journal::open(&journal_path) {
        let _ = rt.block_on(sync(&client, &mut j));
    }
    Ok(info)
}

#[cfg(feature = "pcsc")]
fn pcsc_read(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    reader: &mut Reader,
    name: &str,
    (wait, timeout): (u64, Duration),
    city: u32,
) -> Result<Result<cardvm::online::client::CardInfo, cardvm::online::client::RechargeError>, String>
{
    let mut card = super::pcsc::open_card("--pcsc", name, wait, timeout)?;
    Ok(rt.block_on(cardvm::online::client::read_card(
        client, reader, &mut card, city,
    )))
}

#[cfg(not(feature = "pcsc"))]
fn pcsc_read(
    _: &tokio::runtime::Runtime,
    _: &Client,
    _: &mut Reader,
    _: &str,
    _: (u64, Duration),
    _: u32,
) -> Result<Result<cardvm::online::client::CardInfo, cardvm::online::client::RechargeError>, String>
{
    Err("--pcsc: this cardvm was built without the `pcsc` feature".into())
}

type TxnResult = Result<
    (
        Result<cardvm::online::client::RechargeOutcome, cardvm::online::client::RechargeError>,
        Result<(), String>,
    ),
    Box<Final>,
>;

/// The transaction on the card; an error before the card company or the card was asked
/// anything is its final event already.
fn txn_on_card(t: CardOn, what: &What, progress: impl FnMut(&Step)) -> TxnResult {
    let CardOn {
        conn,
        issuer_pub,
        city,
        sim,
        pcsc,
        wait,
        apdu_timeout,
        json: _,
    } = t;
    let amount = match what {
        What::Load(a, _) | What::Purchase(a) => *a,
        What::Pay(_) => 0,
    };
    let setup = |e: String| Box::new(Final::new(Code::ReaderNotAccepted, amount, e));
    let apdu_timeout = super::pcsc::apdu_timeout(apdu_timeout).map_err(setup)?;
    let (mut reader, journal_path) = open_reader(&conn, &issuer_pub).map_err(setup)?;
    let client = client(&conn).map_err(setup)?;
    let rt = runtime().map_err(setup)?;
    let result = match (&sim, &pcsc) {
        (Some(profile), None) => {
            let mut card = super::sim::load_card(profile).map_err(setup)?;
            let r = rt.block_on(on_card(
                what,
                &client,
                &mut reader,
                &mut card,
                city,
                progress,
            ));
            card.save(profile)
                .map_err(|e| setup(format!("{}: {e}", profile.display())))?;
            r
        }
        (None, Some(name)) => pcsc_recharge(
            what,
            &rt,
            &client,
            &mut reader,
            name,
            (wait, apdu_timeout),
            city,
            progress,
        )
        .map_err(|e| Box::new(Final::new(Code::NoCard, amount, e)))?,
        _ => {
            return Err(setup(
                "give the card: --sim CARD.toml or --pcsc [READER]".into(),
            ));
        }
    };
    drop(reader);
    // Deliver what is pending (this receipt if it was not delivered, queries) and
    // compact; a failure here leaves them for `cardvm client sync`.
    let synced = cardvm::journal::Journal::open(&journal_path)
        .map_err(|e| e.to_string())
        .and_then(|mut j| {
            rt.block_on(sync(&client, &mut j))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    Ok((result, synced))
}

/// A simulated card profile: loaded for each transaction and saved after it.
struct SimSlot(PathBuf);

impl cardvm::online::agent::CardSlot for SimSlot {
    fn with_card(
        &mut self,
        f: &mut dyn FnMut(&mut dyn cardvm::transport::CardTransport) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut card = super::sim::load_card(&self.0)?;
        let r = f(&mut card);
        card.save(&self.0)
            .map_err(|e| format!("{}: {e}", self.0.display()))?;
        r
    }

    fn present(&mut self) -> Option<bool> {
        Some(self.0.exists())
    }
}

/// A PC/SC reader: the card is connected for each transaction.
#[cfg(feature = "pcsc")]
struct PcscSlot {
    name: String,
    wait: u64,
    timeout: Duration,
}

#[cfg(feature = "pcsc")]
impl cardvm::online::agent::CardSlot for PcscSlot {
    fn with_card(
        &mut self,
        f: &mut dyn FnMut(&mut dyn cardvm::transport::CardTransport) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut card = super::pcsc::open_card("--pcsc", &self.name, self.wait, self.timeout)?;
        f(&mut card)
    }

    fn present(&mut self) -> Option<bool> {
        let ctx = cardvm::transport::pcsc::PcscContext::establish().ok()?;
        let name = ctx
            .find_reader((!self.name.is_empty()).then_some(self.name.as_str()))
            .ok()?;
        ctx.reader_state(&name).ok().map(|s| s.card_present)
    }
}

/// `cardvm agent`: the local reader agent (docs/agent.md).
pub fn agent(args: AgentArgs) -> CliResult {
    let AgentArgs { on, origins, port } = args;
    for o in &origins {
        if !(o.starts_with("https://")
            || o.starts_with("http://127.0.0.1")
            || o.starts_with("http://localhost"))
            || o.ends_with('/')
        {
            return Err(format!(
                "--origin {o}: an origin is https://host[:port] (http only for 127.0.0.1 or localhost), without a path"
            ));
        }
    }
    let (reader, _) = open_reader(&on.conn, &on.issuer_pub)?;
    let key = super::keys::load_private_key(&on.conn.reader_dir.join("reader.key"))?;
    let ca_pem = on
        .conn
        .server_ca
        .as_deref()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()?;
    let slot: Box<dyn cardvm::online::agent::CardSlot> = match (&on.sim, &on.pcsc) {
        (Some(profile), None) => Box::new(SimSlot(profile.clone())),
        #[cfg(feature = "pcsc")]
        (None, Some(name)) => Box::new(PcscSlot {
            name: name.clone(),
            wait: on.wait,
            timeout: super::pcsc::apdu_timeout(on.apdu_timeout)?,
        }),
        #[cfg(not(feature = "pcsc"))]
        (None, Some(_)) => {
            return Err("--pcsc: this cardvm was built without the `pcsc` feature".into());
        }
        _ => return Err("give the card: --sim CARD.toml or --pcsc [READER]".into()),
    };
    let config = cardvm::online::agent::AgentConfig {
        origins: origins.clone(),
        city: on.city,
        service: cardvm::online::agent::ServiceLink {
            url: on.conn.server.clone(),
            ca_pem,
            reader_id: read_id(&on.conn.reader_dir)?,
            key,
            timeout: Duration::from_secs(on.conn.timeout),
        },
        poll: Duration::from_millis(500),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let running = cardvm::online::agent::spawn(config, reader, slot, port).await?;
        eprintln!(
            "cardvm agent: listening on {} for {}",
            running.url,
            origins.join(", ")
        );
        let _ = tokio::signal::ctrl_c().await;
        running.shutdown().await;
        Ok(())
    })
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
        ClientCmd::Card(t) => read_card_cmd(t),
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
