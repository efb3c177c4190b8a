//! `cardvm merchant order create|show|cancel|refund`: a merchant's side of the merchant
//! API (docs/clearing.md), every request signed with the merchant's own key.

use std::path::PathBuf;
use std::time::Duration;

use cardvm::online::client::MerchantClient;
use cardvm::online::protocol::OrderReply;
use clap::{Args, Subcommand};

use super::CliResult;

/// Arguments of `cardvm merchant`.
#[derive(Args, Debug)]
pub struct MerchantArgs {
    #[command(subcommand)]
    cmd: MerchantCmd,
}

#[derive(Subcommand, Debug)]
enum MerchantCmd {
    /// Payment orders: create, show, cancel, refund.
    Order {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: OrderCmd,
    },
}

#[derive(Args, Debug)]
struct Conn {
    /// The card company's service, e.g. https://cards.example
    #[arg(long, value_name = "URL", global = true)]
    server: Option<String>,
    /// Trust only this CA for the server's TLS certificate (PEM) [default: system roots].
    #[arg(long, value_name = "PEM", global = true)]
    server_ca: Option<PathBuf>,
    /// The merchant id the card company registered.
    #[arg(long = "id", value_name = "ID", global = true)]
    merchant_id: Option<String>,
    /// The merchant's SM2 private key (`cardvm keygen` format).
    #[arg(long, value_name = "KEY", global = true)]
    key: Option<PathBuf>,
    /// One JSON object (the order) instead of a line.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum OrderCmd {
    /// Create an order (the same merchant order number again returns the same order).
    Create {
        /// The merchant's own order number (1-32 of A-Z a-z 0-9 - _ .).
        #[arg(long, value_name = "NUMBER")]
        merchant_order: String,
        /// Amount: yuan with a point (25.00) or fen (2500).
        #[arg(long)]
        amount: String,
        /// What is bought (shown to the cardholder).
        #[arg(long)]
        description: String,
        /// Seconds until no payment for it starts (60..=604800) [default: 900].
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
    },
    /// Show an order.
    Show {
        /// The card company's order id.
        #[arg(value_name = "ORDER")]
        order: String,
    },
    /// Cancel an open order.
    Cancel {
        /// The card company's order id.
        #[arg(value_name = "ORDER")]
        order: String,
    },
    /// Refund a paid order in full (a record the card company owes the cardholder).
    Refund {
        /// The card company's order id.
        #[arg(value_name = "ORDER")]
        order: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

fn client(c: &Conn) -> Result<MerchantClient, String> {
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| format!("{flag} is required (cardvm merchant order --help)"))
    };
    let server = need(&c.server, "--server")?;
    let id = need(&c.merchant_id, "--id")?;
    let key_path = c
        .key
        .as_deref()
        .ok_or("--key is required (cardvm merchant order --help)")?;
    let key = super::keys::load_private_key(key_path)?;
    let ca = c.server_ca.as_deref().map(super::read_file).transpose()?;
    MerchantClient::new(&server, ca.as_deref(), &id, key, Duration::from_secs(30))
        .map_err(|e| e.to_string())
}

fn print(o: &OrderReply, json: bool) -> CliResult {
    if json {
        println!("{}", serde_json::to_string(o).map_err(|e| e.to_string())?);
    } else {
        println!(
            "order {} ({}): {} yuan, {}, {}{}",
            o.order_id,
            o.merchant_order,
            o.amount_display,
            o.state,
            o.description,
            o.card
                .as_deref()
                .map(|c| format!(", paid by card {c}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs `cardvm merchant …`.
pub fn run(args: MerchantArgs) -> CliResult {
    let MerchantCmd::Order { conn, cmd } = args.cmd;
    let c = client(&conn)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let o = rt
        .block_on(async {
            match cmd {
                OrderCmd::Create {
                    merchant_order,
                    amount,
                    description,
                    expires_in,
                } => {
                    let fen = super::issuer::parse_amount(&amount).map_err(ClientFail::Arg)?;
                    c.create_order(&merchant_order, fen, &description, expires_in)
                        .await
                        .map_err(ClientFail::Service)
                }
                OrderCmd::Show { order } => c.order(&order).await.map_err(ClientFail::Service),
                OrderCmd::Cancel { order } => c.cancel(&order).await.map_err(ClientFail::Service),
                OrderCmd::Refund { order, reason } => {
                    c.refund(&order, &reason).await.map_err(ClientFail::Service)
                }
            }
        })
        .map_err(|e| match e {
            ClientFail::Arg(s) => s,
            ClientFail::Service(e) => e.to_string(),
        })?;
    print(&o, conn.json)
}

enum ClientFail {
    Arg(String),
    Service(cardvm::online::client::ClientError),
}
