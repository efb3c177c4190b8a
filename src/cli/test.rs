//! `cardvm test PATH [--junit OUT.xml]`: run scenario files (see `cardvm::sim::scenario`
//! and docs/casm.md); the results can also go to a JUnit XML file for CI.

use super::CliResult;
use clap::Args;
use std::path::PathBuf;

/// Run declarative scenario tests.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// A scenario file, or a directory searched for `scenarios/*.toml` (e.g. `scripts`
    /// or `scripts/city0731-des3`).
    pub path: PathBuf,
    /// Only scenarios whose name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write the results as JUnit XML (one testcase per scenario) for CI.
    #[arg(long, value_name = "OUT.xml")]
    pub junit: Option<PathBuf>,
}

/// Runs the scenarios, prints test-runner output; fails (exit code 1) when any scenario
/// fails, and with the one line `no scenarios in PATH` when PATH holds no scenario file.
pub fn test(args: TestArgs) -> CliResult {
    if cardvm::sim::scenario::discover(&args.path).is_empty() {
        return Err(format!(
            "no scenarios in {} (a scenario file, or a directory with `scenarios/*.toml`)",
            args.path.display()
        ));
    }
    let mut summary = cardvm::sim::scenario::run_path(&args.path);
    if let Some(f) = &args.filter {
        summary.results.retain(|r| r.name.contains(f.as_str()));
    }
    print!("{}", summary.render());
    if let Some(path) = &args.junit {
        std::fs::write(path, summary.junit_xml())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if summary.ok() {
        Ok(())
    } else if summary.results.is_empty() && summary.file_errors.is_empty() {
        Err("no scenario matched".into())
    } else {
        Err(format!("{} scenario(s) failed", summary.failed()))
    }
}
