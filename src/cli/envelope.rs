//! `cardvm seal` and `cardvm open`.

use std::fs;
use std::path::{Path, PathBuf};

use cardvm::crypto::rng::os_rng;
use cardvm::envelope::time::{format_rfc3339, parse_rfc3339};
use cardvm::envelope::{
    EnvelopeHeader, Expect, FileReplayStore, Opener, ScriptKind, seal, unix_now,
};
use clap::{Args, ValueEnum};

use super::CliResult;
use super::keys::{load_private_key, load_public_key};

/// Script kind on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    /// A command script (.cvm).
    Command,
    /// A data script (.cvd).
    Data,
    /// A card query script (.cvm), run only by the reader's query (`run --query`).
    Query,
    /// An offline terminal program (.cvm), run only as a PSAM purchase with the amount
    /// keyed in at the terminal (`run --terminal-purchase`; docs/psam.md).
    Terminal,
}

/// Arguments of `cardvm seal`.
#[derive(Args, Debug)]
pub struct SealArgs {
    /// The issuer's private key file (from `keygen`).
    #[arg(long, value_name = "K")]
    issuer_key: PathBuf,
    /// The reader's public key file.
    #[arg(long, value_name = "P")]
    reader_pub: PathBuf,
    /// The reader id the script is sealed for (1..=64 bytes).
    #[arg(long, value_name = "ID")]
    reader_id: String,
    /// Sequence number; must increase per (city, kind, reader).
    #[arg(long, value_name = "N")]
    seq: u64,
    /// Expiry, RFC 3339 UTC (e.g. 2030-01-01T00:00:00Z).
    #[arg(long, value_name = "T")]
    expires: String,
    /// Script kind [default: from the file's magic bytes (CVMS command, CVMD data); a card
    /// query script is sealed with --kind query].
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// City / issuer id [default: a command script's own header, else 0].
    #[arg(long)]
    city: Option<u32>,
    /// Script id [default: a command script's own header, else 0].
    #[arg(long)]
    script_id: Option<u32>,
    /// Script version [default: a command script's own header, else 0].
    #[arg(long)]
    script_version: Option<u16>,
    /// For a data script: the command script (`.cvm`) it may run with. Its SM3 is sealed
    /// into the data script; a reader refuses to run the data script with any other.
    #[arg(long, value_name = "CMD.cvm")]
    command: Option<PathBuf>,
    /// Issue time, RFC 3339 UTC [default: now]. A reader whose clock reads earlier than
    /// an accepted script's issue time refuses sealed scripts.
    #[arg(long, value_name = "T")]
    issued: Option<String>,
    /// The script to seal (.cvm or .cvd).
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Where to write the sealed script.
    #[arg(short = 'o', value_name = "OUT")]
    out: PathBuf,
}

/// Arguments of `cardvm open`.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// The reader's private key file.
    #[arg(long, value_name = "K")]
    reader_key: PathBuf,
    /// The trusted issuer's public key file.
    #[arg(long, value_name = "P")]
    issuer_pub: PathBuf,
    /// This reader's id; when given, envelopes for other ids are rejected (the
    /// reader key is always checked).
    #[arg(long, value_name = "ID")]
    reader_id: Option<String>,
    /// Replay store file [default: K with extension .replay].
    #[arg(long, value_name = "PATH")]
    replay_store: Option<PathBuf>,
    /// Time to check expiry against, RFC 3339 [default: the system clock].
    #[arg(long, value_name = "T")]
    now: Option<String>,
    /// For a data script: the command script (`.cvm`) it must be bound to (checked;
    /// without it the binding is only shown).
    #[arg(long, value_name = "CMD.cvm")]
    command: Option<PathBuf>,
    /// The sealed script.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Where to write the opened script.
    #[arg(short = 'o', value_name = "OUT")]
    out: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> CliResult {
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `cardvm seal`.
pub fn seal_cmd(args: SealArgs) -> CliResult {
    let issuer = load_private_key(&args.issuer_key)?;
    let reader = load_public_key(&args.reader_pub)?;
    let expires =
        parse_rfc3339(&args.expires).map_err(|e| format!("--expires {}: {e}", args.expires))?;
    let payload = read(&args.input)?;
    let kind = match args.kind {
        Some(KindArg::Command) => ScriptKind::Command,
        Some(KindArg::Data) => ScriptKind::Data,
        Some(KindArg::Query) => ScriptKind::Query,
        Some(KindArg::Terminal) => ScriptKind::Terminal,
        None if payload.starts_with(b"CVMD") => ScriptKind::Data,
        None if payload.starts_with(b"CVMS") => ScriptKind::Command,
        None if args.input.extension().is_some_and(|e| e == "cvd") => ScriptKind::Data,
        None => ScriptKind::Command,
    };
    // A command script names itself: seal it under its own city, id and version.
    let own = match kind {
        k if k.is_program() => cardvm::script::CommandScript::parse(&payload)
            .map(|s| s.header)
            .map_err(|e| format!("{}: not a command script: {e}", args.input.display()))?,
        _ => cardvm::script::Header::default(),
    };
    let (binding, command_header) = match (kind, &args.command) {
        (k, _) if k.is_program() => (cardvm::crypto::sm3(&payload), own),
        (_, Some(cmd)) => {
            let bytes = read(cmd)?;
            let header = cardvm::script::CommandScript::parse(&bytes)
                .map(|s| s.header)
                .map_err(|e| format!("--command {}: not a command script: {e}", cmd.display()))?;
            (cardvm::crypto::sm3(&bytes), header)
        }
        (_, None) => {
            return Err(String::from(
                "sealing a data script needs --command CMD.cvm: the command script it may run with",
            ));
        }
    };
    let issued = match &args.issued {
        Some(t) => parse_rfc3339(t).map_err(|e| format!("--issued {t}: {e}"))?,
        None => unix_now(),
    };
    let header = EnvelopeHeader {
        kind,
        city: args.city.unwrap_or(command_header.city),
        script_id: args.script_id.unwrap_or(command_header.script_id),
        script_version: args.script_version.unwrap_or(command_header.version),
        seq: args.seq,
        issued,
        expires,
        binding,
        reader_id: args.reader_id,
    };
    let blob = seal(&issuer, &reader, &header, &payload, &mut os_rng())
        .map_err(|e| format!("seal {}: {e}", args.input.display()))?;
    write(&args.out, &blob)?;
    println!(
        "sealed {} {} for reader {:?}, seq {}, expires {} -> {} ({} bytes)",
        kind.name(),
        args.input.display(),
        header.reader_id,
        header.seq,
        format_rfc3339(expires),
        args.out.display(),
        blob.len()
    );
    Ok(())
}

/// Runs `cardvm open`.
pub fn open_cmd(args: OpenArgs) -> CliResult {
    let reader_key = load_private_key(&args.reader_key)?;
    let issuer = load_public_key(&args.issuer_pub)?;
    let now = match &args.now {
        Some(t) => parse_rfc3339(t).map_err(|e| format!("--now {t}: {e}"))?,
        None => unix_now(),
    };
    let store_path = args
        .replay_store
        .clone()
        .unwrap_or_else(|| args.reader_key.with_extension("replay"));
    let store = FileReplayStore::open_file(&store_path, &reader_key)
        .map_err(|e| format!("{}: {e}", store_path.display()))?;
    let blob = read(&args.input)?;
    let command_sm3 = match &args.command {
        Some(cmd) => Some(cardvm::crypto::sm3(&read(cmd)?)),
        None => None,
    };
    let expect = match &command_sm3 {
        Some(d) => Expect::DataFor(d),
        None => Expect::Inspect,
    };
    let mut opener = Opener::new(args.reader_id.as_deref(), reader_key, issuer, store);
    let opened = opener
        .open(&blob, now, expect)
        .map_err(|e| format!("open {}: {e}", args.input.display()))?;
    write(&args.out, opened.payload())?;
    let h = &opened.header;
    println!(
        "opened {} script {} v{} (city {}) for reader {:?}, seq {} -> {} ({} bytes)",
        h.kind.name(),
        h.script_id,
        h.script_version,
        h.city,
        h.reader_id,
        h.seq,
        args.out.display(),
        opened.payload().len()
    );
    if h.kind == ScriptKind::Data && command_sm3.is_none() {
        let hex: String = h.binding.iter().map(|b| format!("{b:02X}")).collect();
        println!("bound to command script SM3 {hex} (not checked: give --command)");
    }
    Ok(())
}
