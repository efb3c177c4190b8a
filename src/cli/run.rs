//! `cardvm run`: a thin adapter over [`cardvm::reader::Reader`] — it loads files and
//! keys, picks the card, and prints; the reader applies the whole security policy.

use super::debugger::{Debugger, Granularity, Options as DebugOptions};
use super::trace::{StderrTrace, TraceSources};
use super::{CliResult, read_file};
use cardvm::reader::{
    Completed, JournalStatus, Policy, Prepared, Reader, ReaderConfig, ReceiptJournal, SystemClock,
};
use cardvm::script::DataScript;
use cardvm::transport::replay::parse_recording;
use cardvm::transport::{CardTransport, SamSlots};
use cardvm::vm::Limits;
use clap::Args;
use std::path::{Path, PathBuf};

/// Exit code when the card was reached but the receipt could not be journaled: the
/// receipt went to stdout (or `--receipt`) and to a fallback file instead.
pub const EXIT_UNJOURNALED: i32 = 3;

/// Run a command script with a data script against a card.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Command script (`.cvm`, or sealed; or a `.casm` or `.cvs` source, assembled with debug info).
    pub command: PathBuf,
    /// Data script (`.cvd`, or sealed; or `.toml` source). Default: no inputs.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run the command script as the city's card query (DESIGN §7): the reader builds
    /// the data script itself (`now` from its clock, UTC; `nonce` from --nonce) and
    /// refuses a script with a key input, another input or a commit point; only
    /// read-only commands reach the card. A sealed query's receipt is a production
    /// receipt with `"data": null`: the request for a bundle, never settled.
    #[arg(long, conflicts_with = "data")]
    pub query: bool,
    /// With --query: the card company's challenge, echoed in the receipt's `nonce`
    /// field (hex, at most 32 bytes) [default: empty].
    #[arg(long, value_name = "HEX", requires = "query")]
    pub nonce: Option<String>,
    /// Run the command script as the city's offline terminal purchase of this amount
    /// (yuan, e.g. 2.50) through the terminal's PSAM (docs/psam.md "Offline purchases"):
    /// the script must be sealed as a terminal program (`cardvm issuer terminal-script`)
    /// unless in development mode; the reader builds the data script itself (`amount`,
    /// and `now` in --zone) and refuses a script with a key input, another input or no
    /// SAM command. The receipt (`"mode": "terminal"`) is journaled for `cardvm client
    /// sync`.
    #[arg(long, value_name = "YUAN", conflicts_with_all = ["data", "query"])]
    pub terminal_purchase: Option<String>,
    /// With --terminal-purchase: the terminal's time zone (IANA name): the date and time
    /// written to the card.
    #[arg(
        long,
        value_name = "ZONE",
        default_value = "Asia/Shanghai",
        requires = "terminal_purchase"
    )]
    pub zone: String,
    /// Run on a simulated card described by this profile (see `cardvm sim new`).
    #[arg(long, value_name = "CARD.toml")]
    pub sim: Option<PathBuf>,
    /// With --sim: write the card's state back to its profile afterwards, so the next
    /// run continues from it (and each --sam-sim PSAM's, e.g. its terminal sequence).
    #[arg(long, requires = "sim")]
    pub save: bool,
    /// With --sim: the card loses power after it executed APDU N (counted from 1 in this
    /// run), so the answer never reaches the reader: a torn transaction, as when the
    /// cardholder pulls the card. Repeat for several.
    #[arg(long, value_name = "N", requires = "sim")]
    pub tear_after: Vec<u32>,
    /// A simulated SAM in the terminal (a PSAM profile, `kind = "psam"`): SAM slot 0, then
    /// 1, … in the order given. Scripts reach it with `sam0 apdu …` (`samapdu`).
    #[arg(long, value_name = "PSAM.toml")]
    pub sam_sim: Vec<PathBuf>,
    /// With --pcsc: the PC/SC reader holding the SAM (e.g. the contact SAM slot): SAM slot
    /// 0, then 1, … in the order given.
    #[arg(long, value_name = "READER", requires = "pcsc")]
    pub sam: Vec<String>,
    /// Run on the card in a PC/SC reader: without a name, the reader that holds a card;
    /// else an exact name, a substring matching one reader, or an index as in
    /// `opensc-tool -r N`.
    #[arg(long, value_name = "READER", num_args = 0..=1, default_missing_value = "")]
    pub pcsc: Option<String>,
    /// Seconds to wait for a card in the PC/SC reader.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Seconds one PC/SC exchange may take before the run ends with a transport timeout
    /// (outcome `unknown` after the commit point). PC/SC itself never gives up on a mute
    /// card.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub apdu_timeout: f64,
    /// Replay a recorded APDU trace (the `--trace` format) instead of a card.
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<PathBuf>,
    /// Print the APDU trace on stderr.
    #[arg(long)]
    pub trace: bool,
    /// Trace the run on stderr (needs debug info: a `.cvs` or `.casm` source, or
    /// `asm -g`). `line` (the default for a `.cvs` script): each source line, the
    /// variables it set (`line 23  balance = 00 00 01 F4`; keys only as
    /// `<des3 load key>`) and the APDUs. `instr` (the default for `.casm`): each
    /// instruction, the registers it changed and the APDUs. On failure: the failing
    /// source line, the variables on it and the last APDU exchange.
    #[arg(long, value_name = "line|instr", num_args = 0..=1, require_equals = true)]
    pub trace_vm: Option<Option<Granularity>>,
    /// Like --trace-vm, and stop at each source line (`--step=instr`: each instruction)
    /// with a prompt: Enter or `next`, `step` (into routine calls), `continue`,
    /// `print NAME`, `locals`, `bt`, `break FILE:LINE`, `help`.
    #[arg(long, value_name = "line|instr", num_args = 0..=1, require_equals = true)]
    pub step: Option<Option<Granularity>>,
    /// Stop at this source line with the prompt of --step (repeat for more). `FILE` may
    /// be the file's name or the end of its path; `LINE` alone means the main file.
    #[arg(long = "break", value_name = "FILE:LINE")]
    pub breaks: Vec<String>,
    /// For --trace-vm / --step on a `.cvm`: a source file (`.casm`, or one it includes;
    /// repeat for each) to show lines from, used only if its SM3 matches the debug info.
    /// Files named inside the script are never opened.
    #[arg(long, value_name = "PATH")]
    pub source: Vec<PathBuf>,
    /// Write the receipt JSON here instead of stdout.
    #[arg(long, value_name = "OUT.json")]
    pub receipt: Option<PathBuf>,
    /// The reader's SM2 private key: opens sealed scripts and signs the receipt.
    #[arg(long, value_name = "K")]
    pub reader_key: Option<PathBuf>,
    /// The issuer's SM2 public key (needed for sealed scripts; repeat to trust several).
    /// With an issuer key the reader runs sealed scripts only, unless --allow-plain.
    #[arg(long, value_name = "P")]
    pub issuer_pub: Vec<PathBuf>,
    /// Development mode: also run plain (unsealed) scripts on a reader that has an issuer
    /// key. Receipts then say `"mode": "development"` (signed) and never settle. A sealed
    /// data script still runs only with the command script it was sealed for.
    #[arg(long)]
    pub allow_plain: bool,
    /// This reader's id (checked against sealed scripts; written into the receipt)
    /// [default: the reader key's id, or "local"].
    #[arg(long, value_name = "ID")]
    pub reader_id: Option<String>,
    /// Append the receipt (committed, failed or unknown) to this offline journal, opened
    /// and locked before the card is touched [default with --issuer-pub: K with extension
    /// .journal].
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// Where a receipt goes if the journal cannot take it after the card was reached
    /// [default: the journal path with `.unjournaled` appended].
    #[arg(long, value_name = "PATH")]
    pub fallback: Option<PathBuf>,
    /// Replay store for sealed scripts, integrity-protected with the reader key
    /// [default: K with extension .replay].
    #[arg(long, value_name = "PATH")]
    pub replay_store: Option<PathBuf>,
    /// A host-secured script (`host apdu`, docs/host.md) reaches the card company at this
    /// service URL (`https://host:port`, `cardvm issuer serve`), signing as the reader
    /// (--reader-key, --reader-id) for the sealed bundle's seq.
    #[arg(long, value_name = "URL", conflicts_with = "host_sim")]
    pub host: Option<String>,
    /// With --host: trust only this CA for the service's TLS certificate (PEM).
    #[arg(long, value_name = "PEM", requires = "host")]
    pub server_ca: Option<PathBuf>,
    /// A host-secured script's card company, in-process, for script authors: a data TOML
    /// holding the card's load key (`[keys.…]` with usage `load`, e.g. the city's
    /// `load.toml`); it answers LOAD MAC2 once for the run's amount, terminal and time.
    #[arg(long, value_name = "KEYS.toml")]
    pub host_sim: Option<PathBuf>,
    /// Instruction budget.
    #[arg(long, default_value_t = Limits::default().fuel)]
    pub fuel: u64,
    /// Most APDUs the script may send.
    #[arg(long, default_value_t = Limits::default().max_apdus)]
    pub max_apdus: u32,
}

/// The trace's last line: the modelled air time of the APDU exchanges (what the
/// receipt's `air_time_us` holds) and, apart, the card's activation (REQA … RATS, once
/// per tap, before the script runs: not in the receipt), and their sum.
fn air_time_footer(r: &cardvm::sim::airtime::AirTimeReport) -> String {
    let activation = r.activation_ns / 1_000;
    let exchanges = r.total_us().saturating_sub(activation);
    format!(
        "# modelled air time {exchanges} µs over {} APDUs (the receipt's air_time_us) \
         + {activation} µs activation (once per tap) = {} µs on the air \
         (a model, see cardvm::sim::airtime)",
        r.apdus,
        r.total_us()
    )
}

/// Reads the command script: `.casm` or `.cvs` (assembled, with debug info), `.cvm`, or
/// sealed. For a source, also the texts the assembler read (what `--trace-vm` shows).
fn load_command(path: &Path) -> Result<(Vec<u8>, Option<TraceSources>), String> {
    if path
        .extension()
        .is_some_and(|x| x == "casm" || x == cardvm::lang::EXTENSION)
    {
        let assembled = cardvm::asm::assemble_file(path, &cardvm::asm::AsmOptions { debug: true })
            .map_err(|e| e.to_string())?;
        let sources = TraceSources::from_assembled(&assembled);
        Ok((assembled.script.encode(), Some(sources)))
    } else {
        Ok((read_file(path)?, None))
    }
}

/// Reads the data script: `.toml` (compiled), `.cvd`, sealed, or none (no inputs). A
/// `.toml` is checked against a plain `command` script's inputs here, so a misfit is
/// reported at its `file:line:col` (a sealed command is checked by the reader).
fn load_data(path: Option<&Path>, command: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    match path {
        None => Ok(zeroize::Zeroizing::new(DataScript::default().encode())),
        Some(d) if d.extension().is_some_and(|x| x == "toml") => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(d).map_err(|e| format!("{}: {e}", d.display()))?,
            );
            let data = match cardvm::script::CommandScript::parse(command) {
                Ok(script) => cardvm::asm::compile_data_for(&text, &script.inputs),
                Err(_) => cardvm::asm::compile_data(&text),
            }
            .map_err(|e| e.located(&d.display().to_string()))?;
            Ok(zeroize::Zeroizing::new(data.encode()))
        }
        Some(d) => Ok(zeroize::Zeroizing::new(read_file(d)?)),
    }
}

/// The reader as the arguments configure it (keys, trust, policy, store, journal).
fn build_reader(args: &RunArgs) -> Result<(Reader, Option<PathBuf>), String> {
    let key = args
        .reader_key
        .as_deref()
        .map(super::keys::load_private_key)
        .transpose()?;
    let issuers = args
        .issuer_pub
        .iter()
        .map(|p| super::keys::load_public_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let reader_id = args
        .reader_id
        .clone()
        .unwrap_or_else(|| cardvm::reader::default_reader_id(key.as_ref().map(|k| k.public_key())));
    let sealed_reader = key.is_some() && !issuers.is_empty();
    let store: Option<cardvm::reader::BoxedStore> = match (&key, sealed_reader) {
        (Some(k), true) => {
            let path = args.replay_store.clone().unwrap_or_else(|| {
                args.reader_key.as_deref().map_or_else(
                    || PathBuf::from("cardvm.replay"),
                    |p| p.with_extension("replay"),
                )
            });
            let store = cardvm::envelope::FileReplayStore::open_file(&path, k)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Some(Box::new(store))
        }
        _ => None,
    };
    let journal_path = args.journal.clone().or_else(|| {
        sealed_reader
            .then(|| {
                args.reader_key
                    .as_deref()
                    .map(|p| p.with_extension("journal"))
            })
            .flatten()
    });
    // The journal is opened (and locked) here, before any card is touched.
    let journal: Option<Box<dyn ReceiptJournal + Send>> = match &journal_path {
        Some(p) => Some(Box::new(
            cardvm::journal::Journal::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    let config = ReaderConfig {
        reader_id,
        reader_key: key,
        issuers,
        policy: if args.allow_plain {
            Policy::AllowPlain
        } else {
            Policy::SealedOnly
        },
        limits: Limits {
            fuel: args.fuel,
            max_apdus: args.max_apdus,
            ..Limits::default()
        },
    };
    let reader =
        Reader::new(config, store, journal, Box::new(SystemClock)).map_err(|e| e.to_string())?;
    Ok((reader, journal_path))
}

/// The zone's offset from UTC now, in seconds.
fn utc_offset(zone: &str) -> Result<i32, String> {
    let tz = jiff::tz::TimeZone::get(zone).map_err(|e| format!("--zone {zone}: {e}"))?;
    Ok(tz.to_offset(jiff::Timestamp::now()).seconds())
}

pub fn run(args: RunArgs) -> CliResult {
    let (mut reader, journal_path) = build_reader(&args)?;
    let (command, casm_sources) = load_command(&args.command)?;
    // Source lines for --trace-vm come only from the `.casm` being run and --source files,
    // matched by hash; never from files the bytecode names.
    let mut sources = casm_sources.unwrap_or_default();
    args.source.iter().for_each(|p| sources.add_file(p));
    let prepared = if args.query {
        let nonce = match &args.nonce {
            Some(h) => super::pcsc::parse_hex(h).map_err(|e| format!("--nonce: {e}"))?,
            None => Vec::new(),
        };
        reader.prepare_query(&command, &nonce)
    } else if let Some(yuan) = &args.terminal_purchase {
        let amount = super::issuer::parse_amount(yuan)
            .map_err(|e| e.replacen("--amount", "--terminal-purchase", 1))?;
        let offset = utc_offset(&args.zone)?;
        reader.prepare_terminal(&command, amount, offset)
    } else {
        let data = load_data(args.data.as_deref(), &command)?;
        reader.prepare(&command, &data)
    }
    .map_err(|e| format!("{}: {e}", args.command.display()))?;
    let (completed, card_option) = on_card(&args, &mut reader, &prepared, &sources)?;
    if let Some(e) = &completed.sign_error {
        eprintln!("cardvm: warning: the receipt is NOT signed ({e}); it is journaled and printed");
    }
    let mut json = completed.receipt.to_json();
    json.push('\n');
    match &completed.journal {
        JournalStatus::Appended(seq) => {
            if let Some(p) = &journal_path {
                eprintln!("receipt journaled as entry {seq} in {}", p.display());
            }
        }
        JournalStatus::NotConfigured => {}
        JournalStatus::Failed(e) => {
            // The card was reached: the receipt must not be lost. Deliver it twice.
            let fallback = args.fallback.clone().unwrap_or_else(|| {
                let mut p = journal_path.clone().unwrap_or_default().into_os_string();
                p.push(".unjournaled");
                PathBuf::from(p)
            });
            let saved = append_fallback(&fallback, json.as_bytes());
            let _ = super::write_output(args.receipt.as_deref(), json.as_bytes());
            eprintln!(
                "cardvm: the receipt could not be journaled ({e}); it was printed and {}",
                match saved {
                    Ok(()) => format!("appended to {}", fallback.display()),
                    Err(e) => format!(
                        "NOT saved to {} either ({e}): keep the printed copy",
                        fallback.display()
                    ),
                }
            );
            std::process::exit(EXIT_UNJOURNALED);
        }
    }
    super::write_output(args.receipt.as_deref(), json.as_bytes())?;
    outcome_result(
        &completed,
        args.query,
        &recover_command(&args, &card_option),
    )
}

/// Appends `bytes` to the fallback file and syncs it.
fn append_fallback(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn outcome_result(c: &Completed, query: bool, recover: &str) -> CliResult {
    use cardvm::vm::Outcome;
    match &c.report.outcome {
        Outcome::Committed => Ok(()),
        // A query has no commit point: it never ends `unknown`, and tearing changed nothing.
        Outcome::Failed(f) if query => Err(format!("card query failed: {f}")),
        Outcome::Failed(f) => Err(format!("transaction failed: {f}")),
        Outcome::Unknown(f) => Err(format!(
            "transaction unknown: {f}. Next: put the SAME card back and run the city's recover script (GET TRANSACTION PROVE) to learn whether it committed: {recover}"
        )),
    }
}

/// The command line that recovers an `unknown` transaction: the `recover` script next to
/// the command script (the city's directory), on the same card.
fn recover_command(args: &RunArgs, card: &str) -> String {
    let dir = args
        .command
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let find = |exts: &[&str]| {
        exts.iter()
            .map(|x| dir.join(format!("recover.{x}")))
            .find(|p| p.is_file())
    };
    let script = find(&["casm", cardvm::lang::EXTENSION, "cvm", "sealed"])
        .unwrap_or_else(|| dir.join("recover.casm"));
    let data = find(&["toml", "cvd"]).map_or(String::new(), |d| {
        format!(" --data {}", shell_word(&d.display().to_string()))
    });
    format!(
        "cardvm run {}{data} {card}",
        shell_word(&script.display().to_string())
    )
}

/// `word`, quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Runs `prepared` on `card` (and the terminal's `sams`) through the reader, with the
/// tracer the arguments ask for.
fn execute<T: CardTransport>(
    args: &RunArgs,
    reader: &mut Reader,
    prepared: &Prepared,
    sources: &TraceSources,
    card: &mut T,
    sams: &mut SamSlots<'_>,
) -> Result<Completed, String> {
    let mut rng = cardvm::crypto::rng::os_rng();
    let options = DebugOptions {
        trace: args.trace_vm,
        step: args.step,
        breaks: args.breaks.clone(),
        apdus: args.trace,
    };
    // A script with debug info always runs under the debugger, quietly unless asked:
    // a failure then names its source line and the variables on it.
    let completed = if options.interactive_or_traced() || prepared.program().debug_info().is_some()
    {
        let stdin = std::io::stdin();
        let mut tracer = Debugger::new(
            prepared.program(),
            sources,
            &options,
            Box::new(stdin.lock()),
        )?;
        let c = reader
            .run_with_sams(prepared, card, sams, &mut tracer, &mut rng)
            .map_err(|e| e.to_string())?;
        tracer.finish(&c.report);
        c
    } else {
        reader
            .run_with_sams(
                prepared,
                card,
                sams,
                &mut StderrTrace::new(args.trace),
                &mut rng,
            )
            .map_err(|e| e.to_string())?
    };
    Ok(completed)
}

/// The card company's channel for a host-secured script: the service (--host) or the
/// in-process one (--host-sim); none for a script that runs offline.
fn host_channel(
    args: &RunArgs,
    prepared: &Prepared,
) -> Result<Option<Box<dyn CardTransport>>, String> {
    let needed = prepared.program().host_exchanges() > 0;
    match (&args.host, &args.host_sim) {
        _ if !needed => Ok(None),
        (Some(url), _) => {
            let seq = prepared
                .data_identity()
                .map(|d| d.seq)
                .ok_or("--host: the card company answers sealed bundles only")?;
            let key = super::keys::load_private_key(
                args.reader_key
                    .as_deref()
                    .ok_or("--host needs --reader-key (requests are signed)")?,
            )?;
            let reader_id = args
                .reader_id
                .clone()
                .unwrap_or_else(|| cardvm::reader::default_reader_id(Some(key.public_key())));
            let ca = args
                .server_ca
                .as_deref()
                .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
                .transpose()?;
            let client = cardvm::online::client::Client::new(
                url,
                ca.as_deref(),
                &reader_id,
                key,
                std::time::Duration::from_secs(15),
            )
            .map_err(|e| format!("--host: {e}"))?;
            let link = cardvm::online::client::HostLink::open(&client, seq)
                .map_err(|e| format!("--host: {e}"))?;
            Ok(Some(Box::new(link)))
        }
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let keys = cardvm::asm::compile_data(&text)
                .map_err(|e| e.located(&path.display().to_string()))?;
            let dlk = keys
                .fields
                .into_iter()
                .find_map(|f| match f.value {
                    cardvm::script::FieldValue::Key(k)
                        if k.usage() == cardvm::crypto::KeyUsage::Load =>
                    {
                        Some(k)
                    }
                    _ => None,
                })
                .ok_or_else(|| format!("{}: no key with usage `load`", path.display()))?;
            use cardvm::script::FieldValue as V;
            let facts = match (
                prepared.value_input("amount"),
                prepared.value_input("terminal"),
                prepared.value_input("now"),
            ) {
                (Some(V::Int(a)), Some(V::Bytes(t)), Some(V::BcdDateTime(now))) => {
                    cardvm::host::LoadFacts {
                        amount: u32::try_from(*a).map_err(|_| "--host-sim: amount over 2^32")?,
                        terminal: t
                            .as_slice()
                            .try_into()
                            .map_err(|_| "--host-sim: terminal is not 6 bytes")?,
                        datetime: *now,
                    }
                }
                _ => {
                    return Err(String::from(
                        "--host-sim: the data script needs amount, terminal (6 bytes) and now",
                    ));
                }
            };
            Ok(Some(Box::new(cardvm::host::HostSim::new(dlk, facts))))
        }
        // A replay brings its own `host>` lines.
        (None, None) if args.replay.is_none() => Err(format!(
            "{}: the script is host-secured (it asks the card company for MAC2): give --host URL (the card company's service) or --host-sim KEYS.toml",
            args.command.display()
        )),
        (None, None) => Ok(None),
    }
}

/// `sams` with the card company's channel, when there is one.
fn with_host<'a>(sams: SamSlots<'a>, host: &'a mut Option<Box<dyn CardTransport>>) -> SamSlots<'a> {
    match host.as_deref_mut() {
        Some(h) => sams.with_host(h),
        None => sams,
    }
}

/// Runs on the card the arguments name. Also returns the card option that reaches the
/// same card again (for the recovery hint).
fn on_card(
    args: &RunArgs,
    reader: &mut Reader,
    prepared: &Prepared,
    sources: &TraceSources,
) -> Result<(Completed, String), String> {
    if !args.sam_sim.is_empty() && args.sim.is_none() {
        return Err(String::from("--sam-sim needs a simulated card (--sim)"));
    }
    let mut host = host_channel(args, prepared)?;
    match (&args.sim, &args.replay, &args.pcsc) {
        (Some(profile), None, None) => {
            let mut card = super::sim::load_card(profile)?;
            for &n in &args.tear_after {
                card.faults_mut().push(cardvm::sim::Fault::TearAfter(n));
            }
            if args.trace {
                eprint!(
                    "{}",
                    super::trace::header_lines(
                        &format!("simulated card {}", profile.display()),
                        card.atr(),
                        "simulated",
                    )
                );
            }
            let mut psams = args
                .sam_sim
                .iter()
                .map(|p| super::sim::load_card(p))
                .collect::<Result<Vec<_>, _>>()?;
            let slots = psams
                .iter_mut()
                .map(|c| c as &mut dyn CardTransport)
                .collect();
            let sams = SamSlots::new(slots).map_err(|e| format!("--sam-sim: {e}"))?;
            let mut sams = with_host(sams, &mut host);
            let completed = execute(args, reader, prepared, sources, &mut card, &mut sams)?;
            drop(sams);
            if args.trace {
                eprintln!("{}", air_time_footer(card.air_time()));
            }
            if args.save {
                card.save(profile)
                    .map_err(|e| format!("{}: {e}", profile.display()))?;
                for (sam, path) in psams.iter().zip(&args.sam_sim) {
                    sam.save(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            let save = if args.save { " --save" } else { "" };
            Ok((
                completed,
                format!("--sim {}{save}", shell_word(&profile.display().to_string())),
            ))
        }
        (None, Some(replay), None) => {
            let text = std::fs::read_to_string(replay)
                .map_err(|e| format!("{}: {e}", replay.display()))?;
            // `samN>` / `samN<` lines replay the terminal's SAMs.
            let cardvm::transport::replay::Recording {
                mut card,
                sams: mut recorded,
                host: mut recorded_host,
            } = parse_recording(&text).map_err(|e| format!("{}: {e}", replay.display()))?;
            let slots = recorded
                .iter_mut()
                .map(|c| c as &mut dyn CardTransport)
                .collect();
            let sams = SamSlots::new(slots).map_err(|e| format!("--replay: {e}"))?;
            // `host>` / `host<` lines replay the card company.
            let mut sams = match recorded_host.as_mut() {
                Some(h) => sams.with_host(h),
                None => with_host(sams, &mut host),
            };
            if args.trace {
                eprint!(
                    "{}",
                    super::trace::header_lines(
                        &format!("replay of {}", replay.display()),
                        None,
                        "replay",
                    )
                );
            }
            let completed = execute(args, reader, prepared, sources, &mut card, &mut sams)?;
            Ok((completed, String::from("<the same card: --sim or --pcsc>")))
        }
        (None, None, Some(name)) => run_pcsc(name, args, reader, prepared, sources, &mut host),
        (None, None, None) => Err(String::from(
            "no card: give --sim CARD.toml, --pcsc [READER] or --replay TRACE",
        )),
        _ => Err(String::from("give one card: --sim, --pcsc or --replay")),
    }
}

#[cfg(feature = "pcsc")]
fn run_pcsc(
    name: &str,
    args: &RunArgs,
    reader: &mut Reader,
    prepared: &Prepared,
    sources: &TraceSources,
    host: &mut Option<Box<dyn CardTransport>>,
) -> Result<(Completed, String), String> {
    let timeout = super::pcsc::apdu_timeout(args.apdu_timeout)?;
    let mut card = super::pcsc::open_card("--pcsc", name, args.wait, timeout)?;
    if args.trace {
        eprint!(
            "{}",
            super::trace::header_lines(
                card.reader(),
                Some(card.atr_bytes()),
                super::pcsc::protocol_name(card.protocol()),
            )
        );
    }
    let again = format!("--pcsc {}", shell_word(card.reader()));
    // The whole script runs inside one PC/SC transaction: no other application can
    // interleave commands with a purse transaction.
    let mut tx = card.transaction().map_err(|e| format!("--pcsc: {e}"))?;
    // The SAM readers (--sam), each in its own transaction for the whole script too.
    let mut sam_cards = args
        .sam
        .iter()
        .map(|n| super::pcsc::open_card("--sam", n, args.wait, timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sam_txs = sam_cards
        .iter_mut()
        .map(|c| c.transaction().map_err(|e| format!("--sam: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let slots = sam_txs
        .iter_mut()
        .map(|t| t as &mut dyn CardTransport)
        .collect();
    let sams = SamSlots::new(slots).map_err(|e| format!("--sam: {e}"))?;
    let mut sams = with_host(sams, host);
    let completed = execute(args, reader, prepared, sources, &mut tx, &mut sams)?;
    Ok((completed, again))
}

#[cfg(not(feature = "pcsc"))]
fn run_pcsc(
    _: &str,
    _: &RunArgs,
    _: &mut Reader,
    _: &Prepared,
    _: &TraceSources,
    _: &mut Option<Box<dyn CardTransport>>,
) -> Result<(Completed, String), String> {
    Err(String::from(
        "--pcsc: this cardvm was built without the `pcsc` feature",
    ))
}
