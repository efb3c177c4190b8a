//! Assembler diagnostics: positioned errors and warnings.

use alloc::string::String;
use core::fmt;

/// An assembler error at a source position.
///
/// Its `Display` is the compiler-style diagnostic:
/// ```text
/// load.casm:12:5: error: unknown mnemonic `apud`
///     apud  r1, r0
///     ^
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsmError {
    /// Source file name (as given to the assembler or resolved by the loader).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub col: u32,
    /// What is wrong.
    pub message: String,
    /// The text of the offending line (empty when there is none).
    pub source_line: String,
}

impl AsmError {
    /// The first line of the diagnostic: `file:line:col: error: message`.
    pub fn headline(&self) -> String {
        alloc::format!(
            "{}:{}:{}: error: {}",
            self.file,
            self.line,
            self.col,
            self.message
        )
    }
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.headline())?;
        if !self.source_line.is_empty() {
            write!(f, "\n{}\n", self.source_line)?;
            // Keep tabs so the caret lines up under tab-indented source.
            for c in self
                .source_line
                .chars()
                .take(self.col.saturating_sub(1) as usize)
            {
                f.write_str(if c == '\t' { "\t" } else { " " })?;
            }
            f.write_str("^")?;
        }
        Ok(())
    }
}

impl core::error::Error for AsmError {}

/// Which lint found something (its name is what `cardvm lint` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Lint {
    /// A label no instruction jumps to.
    UnusedLabel,
    /// A declared input no instruction reads.
    UnusedInput,
    /// Code no path reaches.
    Unreachable,
    /// An APDU whose status word some path never looks at.
    UncheckedSw,
    /// A MAC compared with a branch that is not constant-time.
    MacCompare,
    /// A diagnostic without a lint of its own.
    #[default]
    Other,
}

impl Lint {
    /// The lint's name: `unused-label`, `unused-input`, `unreachable-code`,
    /// `unchecked-sw`, `mac-compare`, `warning`.
    pub const fn name(self) -> &'static str {
        match self {
            Lint::UnusedLabel => "unused-label",
            Lint::UnusedInput => "unused-input",
            Lint::Unreachable => "unreachable-code",
            Lint::UncheckedSw => "unchecked-sw",
            Lint::MacCompare => "mac-compare",
            Lint::Other => "warning",
        }
    }
}

/// A non-fatal diagnostic from the assembler's lints (unused labels or inputs,
/// unreachable code, an unchecked status word, a MAC compared in variable time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Which lint.
    pub lint: Lint,
    /// Source file name.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
    /// What is suspicious, in `.casm` terms (mnemonics).
    pub message: String,
    /// The same finding in the terms of the high-level language (`.cvs` statements and
    /// operators), when they differ from [`Warning::message`]: [`crate::lang::assemble`]
    /// reports this one for a program compiled from `.cvs`.
    pub cvs_message: Option<String>,
}

impl Warning {
    /// The one-line form editors and CI annotate: `file:line:col: lint-name: message`
    /// (what `cardvm lint` prints).
    pub fn annotation(&self) -> String {
        alloc::format!(
            "{}:{}:{}: {}: {}",
            self.file,
            self.line,
            self.col,
            self.lint.name(),
            self.message
        )
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_caret_under_column() {
        let e = AsmError {
            file: "a.casm".into(),
            line: 3,
            col: 7,
            message: "unknown mnemonic `apud`".into(),
            source_line: "\t  x  apud r1".into(),
        };
        assert_eq!(
            alloc::format!("{e}"),
            "a.casm:3:7: error: unknown mnemonic `apud`\n\t  x  apud r1\n\t     ^"
        );
        let w = Warning {
            lint: Lint::UnusedLabel,
            file: "a.casm".into(),
            line: 1,
            col: 2,
            message: "m".into(),
            cvs_message: None,
        };
        assert_eq!(alloc::format!("{w}"), "a.casm:1:2: warning: m");
        assert_eq!(w.annotation(), "a.casm:1:2: unused-label: m");
    }
}
