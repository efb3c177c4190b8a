//! `asm`, `disasm`, `verify` and `data`: text ↔ bytecode, checking, data scripts.

use super::CliResult;
use cardvm::asm::{AsmOptions, assemble_file, compile_data, disassemble};
use cardvm::script::{CommandScript, DataScript, with_encoded};
use cardvm::verify::VerifiedProgram;
use clap::Args;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Arguments of `cardvm asm`.
#[derive(Args, Debug)]
pub struct AsmArgs {
    /// The source: `.casm`, or `.cvs` (the high-level language).
    input: PathBuf,
    /// Where to write the bytecode (default: the input with extension `.cvm`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Include debug info (source file and line of every instruction).
    #[arg(short = 'g', long)]
    debug: bool,
    /// Treat lint findings as errors: print each as `file:line:col: lint-name: message`
    /// and exit non-zero without writing the output.
    #[arg(long)]
    lint: bool,
}

/// Arguments of `cardvm lint`.
#[derive(Args, Debug)]
pub struct LintArgs {
    /// The sources to check: `.casm`, or `.cvs` (findings name the `.cvs` lines).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// Arguments of `cardvm disasm`.
#[derive(Args, Debug)]
pub struct DisasmArgs {
    /// The `.cvm` command script.
    input: PathBuf,
    /// Where to write the text (default: stdout).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Arguments of `cardvm verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The `.cvm` command script.
    input: PathBuf,
    /// A `.cvd` data script to bind to the script's declared inputs.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// Arguments of `cardvm data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// The TOML source.
    input: PathBuf,
    /// Where to write the data script (default: the input with extension `.cvd`).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> CliResult {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_script(path: &Path) -> Result<CommandScript, String> {
    CommandScript::parse(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// `cardvm asm IN.casm|IN.cvs [-o OUT.cvm] [-g] [--lint]`.
pub fn asm(a: AsmArgs) -> CliResult {
    let opts = AsmOptions { debug: a.debug };
    let out = match assemble_file(&a.input, &opts) {
        Ok(out) => out,
        Err(e) => {
            // The diagnostic (with its source line and caret) once; the one-line
            // reason names the input only.
            eprintln!("{e}");
            return Err(format!("{}: assembly failed", a.input.display()));
        }
    };
    if a.lint && !out.warnings.is_empty() {
        for w in &out.warnings {
            eprintln!("{}", w.annotation());
        }
        return Err(format!(
            "{}: {} lint finding(s); nothing written",
            a.input.display(),
            out.warnings.len()
        ));
    }
    for w in &out.warnings {
        eprintln!("{w}");
    }
    let path = a.output.unwrap_or_else(|| a.input.with_extension("cvm"));
    write(&path, &out.script.encode())
}

/// `cardvm lint FILE.casm|FILE.cvs...`: assembles each file and prints every lint finding on
/// stdout as `file:line:col: lint-name: message` (the form editors and CI annotate);
/// fails when any file has a finding or does not assemble.
pub fn lint(a: LintArgs) -> CliResult {
    let (mut findings, mut broken) = (0usize, 0usize);
    for input in &a.inputs {
        match assemble_file(input, &AsmOptions::default()) {
            Ok(out) => {
                for w in &out.warnings {
                    println!("{}", w.annotation());
                }
                findings += out.warnings.len();
            }
            Err(e) => {
                // The error's first line already has the file:line:col form.
                eprintln!("{e}");
                broken += 1;
            }
        }
    }
    match (findings, broken) {
        (0, 0) => Ok(()),
        (f, 0) => Err(format!("{f} lint finding(s)")),
        (f, b) => Err(format!("{f} lint finding(s), {b} file(s) do not assemble")),
    }
}

/// `cardvm disasm IN.cvm [-o OUT.casm]`.
pub fn disasm(a: DisasmArgs) -> CliResult {
    let text = disassemble(&parse_script(&a.input)?);
    match a.output {
        Some(p) => write(&p, text.as_bytes()),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| format!("stdout: {e}"))
        }
    }
}

/// `cardvm verify IN.cvm [--data IN.cvd]`: prints a one-line summary.
pub fn verify(a: VerifyArgs) -> CliResult {
    let script = parse_script(&a.input)?;
    let program = VerifiedProgram::verify(&script).map_err(|e| {
        match script.debug.as_ref().and_then(|d| d.location(e.offset)) {
            Some((file, line)) => format!(
                "{}: {}:{line}: {e}",
                a.input.display(),
                cardvm::script::display_safe(file)
            ),
            None => format!("{}: {e}", a.input.display()),
        }
    })?;
    let h = program.header();
    let mut summary = format!(
        "{}: ok: {} instructions, {} registers, {} key slots, max call depth {}",
        a.input.display(),
        program.instructions().len(),
        h.registers,
        h.key_slots,
        program.max_call_depth()
    );
    if let Some(path) = a.data {
        let mut bytes = read(&path)?;
        let data = DataScript::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()));
        bytes.zeroize();
        let data = data?;
        program
            .bind(&data)
            .map_err(|e| format!("{}: does not bind: {e}", path.display()))?;
        summary.push_str(&format!(
            "; {} binds its {} inputs",
            path.display(),
            program.inputs().len()
        ));
    }
    println!("{summary}");
    Ok(())
}

/// `cardvm data IN.toml [-o OUT.cvd]`. The output holds keys: it is created owner-only.
pub fn data(a: DataArgs) -> CliResult {
    let mut text =
        std::fs::read_to_string(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let compiled = compile_data(&text);
    text.zeroize();
    let data = compiled.map_err(|e| e.located(&a.input.display().to_string()))?;
    let path = a.output.unwrap_or_else(|| a.input.with_extension("cvd"));
    with_encoded(&data, |bytes| write_private(&path, bytes))
}

fn write_private(path: &Path, bytes: &[u8]) -> CliResult {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}
