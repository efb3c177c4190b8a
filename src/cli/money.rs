//! `cardvm issuer merchant|clearing|report`: the card company's merchants and its daily
//! clearing (docs/clearing.md).

use std::path::{Path, PathBuf};

use cardvm::issuer::Ledger;
use cardvm::issuer::clearing::{self, BusinessDay, Clearing, Summary, Tally};
use cardvm::issuer::ledger::hex;
use cardvm::issuer::merchant::{MerchantRow, valid_id};
use clap::Subcommand;

use super::CliResult;
use super::ca::now;

/// `issuer merchant …`.
#[derive(Subcommand, Debug)]
pub enum MerchantCmd {
    /// Register (or update) a merchant.
    Add {
        /// Its id (1-32 of A-Z a-z 0-9 - _ .).
        #[arg(value_name = "ID")]
        id: String,
        /// Its name, shown to the cardholder before paying.
        #[arg(long)]
        name: String,
        /// The card company's fee, in basis points of each payment (60 = 0.60 %).
        #[arg(long, value_name = "BP")]
        fee_bp: u64,
        /// Where it is paid (bank account, as text for the settlement file).
        #[arg(long)]
        account: String,
        /// Its SM2 public key (`cardvm keygen` format): it signs every merchant request.
        #[arg(long, value_name = "PUB")]
        key: PathBuf,
        /// Where paid notifications are posted (https://…, or http:// to this machine).
        #[arg(long, value_name = "URL")]
        notify_url: Option<String>,
    },
    /// The merchants.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One merchant and its latest orders.
    Show {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
        /// At most this many orders.
        #[arg(long, default_value_t = 20)]
        orders: u32,
    },
    /// Refuse its requests and payments of its orders.
    Disable {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Take its requests and payments again.
    Enable {
        /// Its id.
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// `issuer provider …`.
#[derive(Subcommand, Debug)]
pub enum ProviderCmd {
    /// Register (or update) a payment provider and the key it signs notifications with.
    Add {
        /// Its id (1-32 of A-Z a-z 0-9 - _ .).
        #[arg(value_name = "ID")]
        id: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// How it signs: sm2 (key: `cardvm keygen` public key) or rsa-sha256 (key: an
        /// RSA public key, SPKI PEM, 2048 bits or more).
        #[arg(long)]
        alg: String,
        /// Its public key file.
        #[arg(long, value_name = "PUB")]
        key: PathBuf,
    },
    /// The providers.
    List,
}

/// Runs `issuer provider …`.
pub async fn provider(ledger: &Ledger, cmd: ProviderCmd) -> CliResult {
    use cardvm::issuer::payment::{ProviderAlg, ProviderRow};
    match cmd {
        ProviderCmd::Add { id, name, alg, key } => {
            if !valid_id(&id) {
                return Err(format!("provider id `{id}`: 1-32 of A-Z a-z 0-9 - _ ."));
            }
            let a = ProviderAlg::parse(&alg)
                .ok_or_else(|| format!("--alg {alg}: sm2 or rsa-sha256"))?;
            let public_key = match a {
                ProviderAlg::Sm2 => hex(&super::keys::load_public_key(&key)?.to_sec1_bytes()),
                ProviderAlg::RsaSha256 => {
                    std::fs::read_to_string(&key).map_err(|x| format!("{}: {x}", key.display()))?
                }
            };
            a.check_key(&public_key)
                .map_err(|x| format!("{}: {x}", key.display()))?;
            ledger
                .set_provider(&ProviderRow {
                    provider_id: id.clone(),
                    name: name.clone(),
                    alg: a,
                    public_key,
                    enabled: true,
                    added_at: now(),
                })
                .await
                .map_err(e)?;
            println!("payment provider {id} ({name}): signs with {}", a.name());
            Ok(())
        }
        ProviderCmd::List => {
            for p in ledger.providers().await.map_err(e)? {
                println!(
                    "{:<16} {:<24} {:<10} {}",
                    p.provider_id,
                    p.name,
                    p.alg.name(),
                    if p.enabled { "enabled" } else { "DISABLED" }
                );
            }
            Ok(())
        }
    }
}

/// `issuer clearing …`.
#[derive(Subcommand, Debug)]
pub enum ClearingCmd {
    /// Clear a business day (once; again, the stored result) and write its files.
    Run {
        /// The day, YYYY-MM-DD, in the clearing zone.
        #[arg(long, value_name = "DATE")]
        date: String,
        /// Directory for clearing-DATE.json, .csv, -items.csv and .summary.json.
        #[arg(short = 'o', long = "out", value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Set the card company's time zone (business days, the dates written to cards, the
    /// daily limit's day) and the clearing cut-off; a running service takes the zone at
    /// its next start.
    Config {
        /// IANA time zone.
        #[arg(long, default_value = clearing::DEFAULT_ZONE)]
        zone: String,
        /// Transactions at or after this local time count for the next day.
        #[arg(long, value_name = "HH:MM", default_value = "00:00")]
        cutoff: String,
    },
    /// Check a day's files against its signed summary.
    Verify {
        /// The summary (clearing-DATE.summary.json); the files are beside it.
        #[arg(value_name = "SUMMARY")]
        summary: PathBuf,
        /// The card company's public key [default: the ledger's sealing key].
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
    },
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Runs `issuer merchant …`.
pub async fn merchant(ledger: &Ledger, cmd: MerchantCmd) -> CliResult {
    match cmd {
        MerchantCmd::Add {
            id,
            name,
            fee_bp,
            account,
            key,
            notify_url,
        } => {
            if !valid_id(&id) {
                return Err(format!("merchant id `{id}`: 1-32 of A-Z a-z 0-9 - _ ."));
            }
            if fee_bp > 10_000 {
                return Err(format!("--fee-bp {fee_bp}: at most 10000 (100 %)"));
            }
            if let Some(u) = &notify_url {
                cardvm::online::service::notify_url_ok(u)?;
            }
            let public = super::keys::load_public_key(&key)?;
            let added_at = ledger
                .merchant(&id)
                .await
                .map_err(e)?
                .map_or_else(now, |m| m.added_at);
            ledger
                .set_merchant(&MerchantRow {
                    merchant_id: id.clone(),
                    name: name.clone(),
                    fee_bp,
                    account,
                    public_key: hex(&public.to_sec1_bytes()),
                    notify_url,
                    enabled: true,
                    added_at,
                })
                .await
                .map_err(e)?;
            println!(
                "merchant {id} ({name}): fee {}.{:02} %, key {}",
                fee_bp / 100,
                fee_bp % 100,
                hex(&public.key_id())
            );
            Ok(())
        }
        MerchantCmd::List { json } => {
            for m in ledger.merchants().await.map_err(e)? {
                if json {
                    println!("{}", merchant_json(&m));
                } else {
                    println!(
                        "{:<16} {:<24} fee {:>3}.{:02} %  {}  notify {}",
                        m.merchant_id,
                        m.name,
                        m.fee_bp / 100,
                        m.fee_bp % 100,
                        if m.enabled { "enabled " } else { "DISABLED" },
                        m.notify_url.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        MerchantCmd::Show { id, orders } => {
            let m = ledger
                .merchant(&id)
                .await
                .map_err(e)?
                .ok_or_else(|| format!("no merchant `{id}` (cardvm issuer merchant list)"))?;
            println!("{}", merchant_json(&m));
            let t = now();
            for o in ledger.orders(&id, orders).await.map_err(e)? {
                println!(
                    "order {} ({}) {} fen {:<9} {}{}",
                    o.order_id,
                    o.merchant_order,
                    o.amount,
                    o.state(t).name(),
                    o.description,
                    match (&o.notify_acked_at, &o.notify_error) {
                        (Some(_), _) => " [notified]".to_string(),
                        (None, Some(err)) =>
                            format!(" [notify attempt {}: {err}]", o.notify_attempts),
                        _ => String::new(),
                    }
                );
            }
            Ok(())
        }
        MerchantCmd::Disable { id } | MerchantCmd::Enable { id } if id.is_empty() => {
            Err("merchant id: empty".into())
        }
        MerchantCmd::Disable { id } => enable(ledger, &id, false).await,
        MerchantCmd::Enable { id } => enable(ledger, &id, true).await,
    }
}

async fn enable(ledger: &Ledger, id: &str, on: bool) -> CliResult {
    if ledger.set_merchant_enabled(id, on).await.map_err(e)? {
        println!("merchant {id} {}", if on { "enabled" } else { "disabled" });
        Ok(())
    } else {
        Err(format!("no merchant `{id}` (cardvm issuer merchant list)"))
    }
}

fn merchant_json(m: &MerchantRow) -> serde_json::Value {
    serde_json::json!({
        "merchant_id": m.merchant_id,
        "name": m.name,
        "fee_bp": m.fee_bp,
        "account": m.account,
        "public_key": m.public_key,
        "notify_url": m.notify_url,
        "enabled": m.enabled,
        "added_at": m.added_at,
    })
}

/// The business day the ledger is configured with.
async fn business_day(ledger: &Ledger) -> Result<BusinessDay, String> {
    let zone = ledger
        .config("clearing_zone")
        .await
        .map_err(e)?
        .unwrap_or_else(|| clearing::DEFAULT_ZONE.into());
    let cutoff = ledger
        .config("clearing_cutoff")
        .await
        .map_err(e)?
        .unwrap_or_else(|| "00:00".into());
    BusinessDay::new(&zone, &cutoff).map_err(e)
}

/// Runs `issuer clearing …`.
pub async fn clearing_cmd(ledger: &Ledger, cmd: ClearingCmd) -> CliResult {
    match cmd {
        ClearingCmd::Config { zone, cutoff } => {
            let bd = BusinessDay::new(&zone, &cutoff).map_err(e)?;
            ledger
                .set_config("clearing_zone", bd.zone())
                .await
                .map_err(e)?;
            ledger
                .set_config("clearing_cutoff", &bd.cutoff())
                .await
                .map_err(e)?;
            println!(
                "business day: {} from {} (a day already cleared keeps its result)",
                bd.zone(),
                bd.cutoff()
            );
            Ok(())
        }
        ClearingCmd::Run { date, out } => {
            let bd = business_day(ledger).await?;
            let d = BusinessDay::parse_date(&date).map_err(e)?;
            let issuer = super::issuer::open_signing(ledger).await?;
            let cleared = ledger.clear_day(&bd, d, now()).await.map_err(e)?;
            let c = cleared.clearing();
            let summary = write_files(c, &out, &issuer)?;
            let t = &c.totals;
            let adjustments = c.items.iter().filter(|i| i.section == "adjustment").count();
            println!(
                "{} {} ({} {} .. {}): loads {} / {} fen, purchases {} / {} fen, refunds {} / {} fen, fees {} fen, merchants' net {} fen{}",
                if matches!(cleared, clearing::Cleared::Now(_)) {
                    "cleared"
                } else {
                    "already cleared"
                },
                c.day,
                c.zone,
                c.from,
                c.to,
                t.loads.count,
                t.loads.sum,
                t.purchases.count,
                t.purchases.sum,
                t.refunds.count,
                t.refunds.sum,
                t.fees,
                t.net,
                if adjustments > 0 {
                    format!("; {adjustments} adjustment(s) for earlier days")
                } else {
                    String::new()
                }
            );
            println!("{}", summary.display());
            Ok(())
        }
        ClearingCmd::Verify { summary, key } => {
            let public = match key {
                Some(p) => super::keys::load_public_key(&p)?,
                None => super::issuer::open_signing(ledger)
                    .await?
                    .public_key()
                    .clone(),
            };
            let s = verify(&summary, &public)?;
            println!(
                "{} {} verified: signed by key {}, {} file(s) match",
                s.format
                    .trim_start_matches("cardvm-")
                    .trim_end_matches("-v1"),
                s.day,
                s.issuer_key_id,
                s.files.len()
            );
            Ok(())
        }
    }
}

/// Writes the day's files and the signed summary; returns the summary's path.
fn write_files(
    c: &Clearing,
    out: &Path,
    issuer: &cardvm::crypto::sm2::Sm2PrivateKey,
) -> Result<PathBuf, String> {
    let json = serde_json::to_string_pretty(c).map_err(e)?;
    let files = [
        (format!("clearing-{}.json", c.day), json),
        (format!("clearing-{}.csv", c.day), clearing::lines_csv(c)),
        (
            format!("clearing-{}-items.csv", c.day),
            clearing::items_csv(c),
        ),
    ];
    let summary = Summary {
        format: "cardvm-clearing-v1".into(),
        day: c.day.clone(),
        zone: c.zone.clone(),
        cutoff: c.cutoff.clone(),
        totals: serde_json::to_value(&c.totals).map_err(e)?,
        files: Vec::new(),
        issuer_key_id: String::new(),
        signature: String::new(),
    };
    write_signed(out, &format!("clearing-{}", c.day), &files, summary, issuer)
}

/// Writes `files` into `out`, then `STEM.summary.json`: their SM3s in `summary`, signed.
fn write_signed(
    out: &Path,
    stem: &str,
    files: &[(String, String)],
    mut summary: Summary,
    issuer: &cardvm::crypto::sm2::Sm2PrivateKey,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|x| format!("{}: {x}", out.display()))?;
    for (name, text) in files {
        super::keys::write_file(&out.join(name), text, false, true)?;
        summary
            .files
            .push((name.clone(), hex(&cardvm::crypto::sm3(text.as_bytes()))));
    }
    summary.issuer_key_id = hex(&issuer.public_key().key_id());
    let sig = issuer
        .sign(&mut cardvm::crypto::rng::os_rng(), &summary.signing_input())
        .map_err(|x| format!("signing the summary: {x}"))?;
    summary.signature = hex(&sig);
    let path = out.join(format!("{stem}.summary.json"));
    let text = serde_json::to_string_pretty(&summary).map_err(e)?;
    super::keys::write_file(&path, &text, false, true)?;
    Ok(path)
}

/// `issuer reconcile JOURNAL…`: the journals against the ledger, and the cards'
/// counters; the findings on stdout and, with `-o`, as signed files.
pub async fn reconcile(ledger: &Ledger, journals: &[PathBuf], out: Option<&Path>) -> CliResult {
    use cardvm::issuer::reconcile::{findings_csv, journal_receipts, reconcile};
    let mut receipts = Vec::new();
    for j in journals {
        receipts.extend(journal_receipts(j)?);
    }
    let r = reconcile(ledger, &receipts).await.map_err(e)?;
    for f in &r.findings {
        println!(
            "{:<13} {} {}",
            f.kind,
            if f.reader_id.is_empty() {
                format!("card {}", f.card_id)
            } else {
                format!("{}/{} card {}", f.reader_id, f.seq, f.card_id)
            },
            f.detail
        );
    }
    println!(
        "{} receipt(s) from {} journal(s): {} settled as journaled; {} settled transaction(s) counted; {} finding(s)",
        r.receipts,
        journals.len(),
        r.matched,
        r.counted,
        r.findings.len()
    );
    if let Some(out) = out {
        let bd = business_day(ledger).await?;
        let today = bd.day_of(now()).map_err(e)?.to_string();
        let stem = format!("reconcile-{today}");
        let files = [
            (
                format!("{stem}.json"),
                serde_json::to_string_pretty(&r).map_err(e)?,
            ),
            (format!("{stem}.csv"), findings_csv(&r)),
        ];
        let summary = Summary {
            format: "cardvm-reconcile-v1".into(),
            day: today,
            zone: bd.zone().into(),
            cutoff: bd.cutoff(),
            totals: serde_json::json!({
                "receipts": r.receipts, "matched": r.matched, "counted": r.counted,
                "findings": r.findings.len(),
            }),
            files: Vec::new(),
            issuer_key_id: String::new(),
            signature: String::new(),
        };
        let issuer = super::issuer::open_signing(ledger).await?;
        let path = write_signed(out, &stem, &files, summary, &issuer)?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Checks a summary's signature and the SM3 of each file beside it.
fn verify(path: &Path, public: &cardvm::crypto::sm2::Sm2PublicKey) -> Result<Summary, String> {
    let text = std::fs::read_to_string(path).map_err(|x| format!("{}: {x}", path.display()))?;
    let s: Summary = serde_json::from_str(&text).map_err(|x| format!("{}: {x}", path.display()))?;
    let sig = cardvm::issuer::ledger::unhex(&s.signature)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| format!("{}: signature is not 64 bytes of hex", path.display()))?;
    public.verify(&s.signing_input(), &sig).map_err(|_| {
        format!(
            "{}: the signature does not verify under key {}",
            path.display(),
            hex(&public.key_id())
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for (name, sm3) in &s.files {
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(format!(
                "{}: file name `{name}` is not a plain name",
                path.display()
            ));
        }
        let p = dir.join(name);
        let bytes = std::fs::read(&p).map_err(|x| format!("{}: {x}", p.display()))?;
        if !hex(&cardvm::crypto::sm3(&bytes)).eq_ignore_ascii_case(sm3) {
            return Err(format!(
                "{}: changed since it was signed (SM3 differs)",
                p.display()
            ));
        }
    }
    Ok(s)
}

/// `issuer report --from D --to D`: the cleared days in a range, summed.
pub async fn report(ledger: &Ledger, from: &str, to: &str, json: bool) -> CliResult {
    let (a, b) = (
        BusinessDay::parse_date(from).map_err(e)?,
        BusinessDay::parse_date(to).map_err(e)?,
    );
    if b < a {
        return Err(format!("--to {to} is before --from {from}"));
    }
    let mut days = Vec::new();
    let mut missing = Vec::new();
    let mut d = a;
    while d <= b {
        match ledger.cleared(&d.to_string()).await.map_err(e)? {
            Some(c) => days.push(c),
            None => missing.push(d.to_string()),
        }
        d = match d.tomorrow() {
            Ok(n) => n,
            Err(_) => break,
        };
        if days.len() + missing.len() > 3_700 {
            return Err("a report covers at most ten years".into());
        }
    }
    let sum = |f: fn(&clearing::Line) -> Tally| {
        days.iter().fold(Tally::default(), |acc, c| {
            let t = f(&c.totals);
            Tally {
                count: acc.count + t.count,
                sum: acc.sum + t.sum,
            }
        })
    };
    let (loads, purchases, refunds) = (sum(|l| l.loads), sum(|l| l.purchases), sum(|l| l.refunds));
    let fees: i64 = days.iter().map(|c| c.totals.fees).sum();
    let net: i64 = days.iter().map(|c| c.totals.net).sum();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "from": from, "to": to,
                "days": days.iter().map(|c| serde_json::json!({"day": c.day, "totals": c.totals})).collect::<Vec<_>>(),
                "not_cleared": missing,
                "totals": {"loads": loads, "purchases": purchases, "refunds": refunds, "fees": fees, "net": net},
            })
        );
    } else {
        for c in &days {
            let t = &c.totals;
            println!(
                "{}  loads {:>5} {:>12}  purchases {:>5} {:>12}  refunds {:>4} {:>10}  fees {:>9}  net {:>12}",
                c.day,
                t.loads.count,
                t.loads.sum,
                t.purchases.count,
                t.purchases.sum,
                t.refunds.count,
                t.refunds.sum,
                t.fees,
                t.net
            );
        }
        println!(
            "total       loads {:>5} {:>12}  purchases {:>5} {:>12}  refunds {:>4} {:>10}  fees {:>9}  net {:>12}",
            loads.count,
            loads.sum,
            purchases.count,
            purchases.sum,
            refunds.count,
            refunds.sum,
            fees,
            net
        );
        if !missing.is_empty() {
            eprintln!("not cleared ({}): {}", missing.len(), missing.join(" "));
        }
    }
    Ok(())
}
