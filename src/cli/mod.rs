//! Command-line front end: one module per command family.

mod apdu;
mod asm;
mod ca;
mod client;
mod debugger;
mod envelope;
mod issuer;
mod issuer_keys;
mod journal;
mod keys;
mod lsp;
mod merchant;
mod money;
mod pcsc;
mod reader;
mod receipt;
mod run;
mod sim;
mod test;
mod trace;

use clap::{Parser, Subcommand};
use std::path::Path;

/// A failure, reported as one line.
pub type CliResult = Result<(), String>;

/// The process exit code of a failure (1 unless a command says otherwise).
static EXIT_CODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

/// A failure whose exit code tells its class (`cardvm client`: docs/kiosk.md).
pub fn fail_with(code: i32, message: String) -> CliResult {
    EXIT_CODE.store(
        u8::try_from(code).unwrap_or(1).max(1),
        std::sync::atomic::Ordering::Relaxed,
    );
    Err(message)
}

/// The exit code of the failure being reported.
pub fn exit_code() -> u8 {
    EXIT_CODE.load(std::sync::atomic::Ordering::Relaxed)
}

/// cardvm: run city smart-card transaction scripts against cards.
#[derive(Parser, Debug)]
#[command(name = "cardvm", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Assemble a `.casm` or `.cvs` command script into bytecode (`.cvm`).
    Asm(asm::AsmArgs),
    /// Check `.casm` or `.cvs` sources with the assembler's lints; non-zero exit on any finding.
    Lint(asm::LintArgs),
    /// Disassemble a `.cvm` command script into `.casm` text.
    Disasm(asm::DisasmArgs),
    /// Verify a `.cvm` command script, and bind a data script to it.
    Verify(asm::VerifyArgs),
    /// Compile a TOML data script into a `.cvd`.
    Data(asm::DataArgs),
    /// Generate an SM2 key pair: PREFIX.key (private) and PREFIX.pub.
    Keygen(keys::KeygenArgs),
    /// Seal a script for one reader (issuer side).
    Seal(envelope::SealArgs),
    /// Open a sealed script (reader side): verify, check reader/expiry/replay, decrypt.
    Open(envelope::OpenArgs),
    /// Run a command script with a data script against a card; print the receipt.
    Run(Box<run::RunArgs>),
    /// Send raw APDUs to a card and print the answers (like `opensc-tool -s`).
    Apdu(apdu::ApduArgs),
    /// Work with signed receipts.
    Receipt(receipt::ReceiptArgs),
    /// The offline receipt journal: list, export, ack, verify, repair.
    Journal {
        #[command(subcommand)]
        cmd: journal::JournalCmd,
    },
    /// Simulated cards: write a card profile (`sim new`), serve one to pcscd (`sim serve`).
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// The card company's CA: init (root or intermediate), issue, revoke, crl, verify.
    Ca(ca::CaArgs),
    /// Provision a reader's certificate: init (key pair + PKCS#10 request), install.
    Reader(reader::ReaderArgs),
    /// Run scenario tests: a scenario file, or every `scenarios/*.toml` under a directory.
    ///
    /// Exits 0 when every scenario passed, 1 when one failed, when none matched --filter
    /// or when the path holds no scenario file (`no scenarios in PATH`).
    Test(test::TestArgs),
    /// The reader's side of the online protocol: recharge a card, sync the journal.
    Client(client::ClientArgs),
    /// The local reader agent: the card company's web page drives this reader through it
    /// (loopback only, the given origins only; docs/agent.md).
    Agent(client::AgentArgs),
    /// The card company's side: ledger, master keys, cities, readers, bundles, settlement,
    /// merchants, providers, clearing.
    Issuer(issuer::IssuerArgs),
    /// A merchant's side: create, show, cancel and refund payment orders (docs/clearing.md).
    Merchant(merchant::MerchantArgs),
    /// A language server for `.cvs` and `.casm` on stdin/stdout (diagnostics, hover, go to
    /// definition), for editors.
    Lsp(lsp::LspArgs),
}

/// Runs one parsed command line.
pub fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Asm(a) => asm::asm(a),
        Command::Lint(a) => asm::lint(a),
        Command::Disasm(a) => asm::disasm(a),
        Command::Verify(a) => asm::verify(a),
        Command::Data(a) => asm::data(a),
        Command::Keygen(a) => keys::keygen(a),
        Command::Seal(a) => envelope::seal_cmd(a),
        Command::Open(a) => envelope::open_cmd(a),
        Command::Run(a) => run::run(*a),
        Command::Apdu(a) => apdu::apdu(a),
        Command::Receipt(a) => receipt::receipt_cmd(a),
        Command::Journal { cmd } => journal::run(cmd),
        Command::Sim(c) => sim::run(c),
        Command::Test(a) => test::test(a),
        Command::Ca(a) => ca::run(a),
        Command::Reader(a) => reader::run(a),
        Command::Issuer(a) => issuer::run(a),
        Command::Client(a) => client::run(a),
        Command::Agent(a) => client::agent(a),
        Command::Merchant(a) => merchant::run(a),
        Command::Lsp(a) => lsp::run(a),
    }
}

/// Reads a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path`, or to stdout when `path` is `None`.
pub fn write_output(path: Option<&Path>, bytes: &[u8]) -> CliResult {
    use std::io::Write;
    match path {
        Some(p) => std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display())),
        None => std::io::stdout()
            .write_all(bytes)
            .map_err(|e| format!("stdout: {e}")),
    }
}
