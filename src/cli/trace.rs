//! The APDU trace printed by `run --trace` (and `sim serve --trace`): a `#` header with
//! the reader, ATR and protocol, then `>> command` / `<< response SW (time)  # meaning`;
//! and the source texts the debugger of `run --trace-vm` / `--step` shows
//! ([`super::debugger`]).
//!
//! The APDU trace format is the one [`cardvm::transport::replay::ReplayCard`] reads back
//! as it is (header, timings and meanings are comments), so a trace captured from a real
//! card can be replayed against a changed script.
//!
//! The VM trace shows source lines only from texts it is handed ([`TraceSources`]: the
//! `.casm` being run and its includes, or `--source` files), matched to the debug
//! section by SM3. The file names in a script's debug section are display labels
//! (printed through [`display_safe`]): a crafted `.cvm` naming the reader's key file, a
//! device or a FIFO makes the trace open nothing.

use cardvm::script::{DebugFile, display_safe};
use cardvm::transport::{StatusWord, sw_meaning};
use cardvm::vm::{ApduEvent, Tracer};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The command and response markers of a slot: `>>`/`<<` for the card, `sam0>`/`sam0<`
/// for SAM slot 0 (the forms [`cardvm::transport::replay`] reads back).
pub(super) fn arrows(slot: cardvm::transport::Slot) -> (String, String) {
    match slot {
        cardvm::transport::Slot::Sam(n) => (format!("sam{n}>"), format!("sam{n}<")),
        cardvm::transport::Slot::Host => (String::from("host>"), String::from("host<")),
        cardvm::transport::Slot::Card => (String::from(">>"), String::from("<<")),
    }
}

/// Writes the trace to stderr as it happens.
pub struct StderrTrace {
    pub apdus: bool,
    started: Option<Instant>,
}

impl StderrTrace {
    pub fn new(apdus: bool) -> Self {
        StderrTrace {
            apdus,
            started: None,
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// The trace's header: which reader, which card, which protocol. Every line starts with
/// `#`, so a saved trace replays as is (`run --replay` skips `#` lines).
pub fn header_lines(reader: &str, atr: Option<&[u8]>, protocol: &str) -> String {
    let atr = atr.map_or(String::from("unknown"), hex);
    format!("# reader: {reader}\n# atr: {atr}\n# protocol: {protocol}\n")
}

/// One exchange in the trace format: `>> command` and `<< data SW1 SW2   (t ms)  # meaning`
/// (or `<< !! error` when the card did not answer). Everything after the hex is a comment
/// to [`cardvm::transport::replay::ReplayCard`], so the lines replay as they are.
pub fn exchange_lines(
    command: &[u8],
    redacted: bool,
    answer: Result<(&[u8], StatusWord), &dyn std::fmt::Display>,
    elapsed_ms: Option<f64>,
) -> String {
    slot_exchange_lines(
        cardvm::transport::Slot::Card,
        command,
        redacted,
        answer,
        elapsed_ms,
    )
}

/// [`exchange_lines`] for an exchange on `slot`: SAM lines start `samN>` / `samN<`.
pub fn slot_exchange_lines(
    slot: cardvm::transport::Slot,
    command: &[u8],
    redacted: bool,
    answer: Result<(&[u8], StatusWord), &dyn std::fmt::Display>,
    elapsed_ms: Option<f64>,
) -> String {
    let (to, from) = arrows(slot);
    let redacted = if redacted {
        " ** key bytes redacted **"
    } else {
        ""
    };
    let time = elapsed_ms.map_or(String::new(), |ms| format!("   ({ms:.3} ms)"));
    match answer {
        Ok((data, sw)) => {
            let data = hex(data);
            let sep = if data.is_empty() { "" } else { " " };
            format!(
                "{to} {}{redacted}\n{from} {data}{sep}{:02X} {:02X}{time}  # {}\n",
                hex(command),
                sw.sw1(),
                sw.sw2(),
                sw_meaning(sw)
            )
        }
        Err(error) => format!("{to} {}{redacted}\n{from} !! {error}{time}\n", hex(command)),
    }
}

impl Tracer for StderrTrace {
    fn before_apdu(&mut self) {
        self.started = Some(Instant::now());
    }

    fn apdu(&mut self, e: &ApduEvent<'_>) {
        if !self.apdus {
            return;
        }
        let elapsed = self
            .started
            .take()
            .map(|t| t.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let answer = match (e.sw, e.error) {
            (Some(sw), _) => Ok((e.response, sw)),
            (None, Some(error)) => Err(error as &dyn std::fmt::Display),
            (None, None) => return,
        };
        let text = slot_exchange_lines(e.slot, e.command, e.redacted, answer, Some(elapsed));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// Largest file `--source` reads for the VM trace.
pub const MAX_TRACE_SOURCE: u64 = 1 << 20;

/// The source texts `run --trace-vm` / `--step` may show, keyed by SM3.
///
/// Texts come only from the `.casm` being run (the assembler's own input, includes
/// too) or from paths the user passes with `--source`; never from a file the script's
/// debug section names. A debug-section file shows lines only when the SM3 recorded for
/// it equals the SM3 of one of these texts.
#[derive(Debug, Default)]
pub struct TraceSources {
    /// SM3 of the text -> its lines, already safe to print.
    texts: HashMap<[u8; 32], Vec<String>>,
    /// File name (last path component) and display name of every text given, to say
    /// which `--source` differs from the assembled file.
    given: Vec<(Option<OsString>, String)>,
    /// Why a source was not used, printed once when tracing starts.
    notes: Vec<String>,
}

impl TraceSources {
    /// No sources: every debug-section file shows "source not available".
    pub fn new() -> Self {
        Self::default()
    }

    /// The texts the assembler read for `assembled` (the main file and its includes).
    pub fn from_assembled(assembled: &cardvm::asm::Assembled) -> Self {
        let mut s = Self::new();
        for src in &assembled.sources {
            s.add_text(&src.name, &src.text);
        }
        s
    }

    /// Adds the regular file at `path` (at most [`MAX_TRACE_SOURCE`] bytes; a FIFO, a
    /// device or a larger file is refused without reading it).
    pub fn add_file(&mut self, path: &Path) {
        let shown = display_safe(&path.display().to_string());
        if self.given.len() >= cardvm::asm::MAX_FILES {
            let max = cardvm::asm::MAX_FILES;
            self.notes.push(format!(
                "--source {shown}: not used: more than {max} sources"
            ));
            return;
        }
        match cardvm::asm::read_source_file(path, MAX_TRACE_SOURCE) {
            Ok(text) => self.add_text(&path.display().to_string(), &text),
            Err(e) => self.notes.push(format!("--source {shown}: not used: {e}")),
        }
    }

    /// Why a source given was not used, said once when tracing starts.
    pub(super) fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Adds `text`, called `name` in messages.
    pub fn add_text(&mut self, name: &str, text: &str) {
        let file_name = Path::new(name).file_name().map(OsString::from);
        self.given.push((file_name, display_safe(name)));
        self.texts
            .entry(cardvm::crypto::sm3(text.as_bytes()))
            .or_insert_with(|| text.lines().map(|l| display_safe(l.trim())).collect());
    }

    /// The lines of the text `file` was assembled from, or why there are none.
    pub(super) fn resolve(&self, file: &DebugFile) -> Result<&[String], Unavailable> {
        if !file.has_hash() {
            return Err(Unavailable::NoHash);
        }
        if let Some(lines) = self.texts.get(&file.sm3) {
            return Ok(lines);
        }
        let wanted = Path::new(&file.name).file_name();
        match self
            .given
            .iter()
            .find(|(n, _)| wanted.is_some() && n.as_deref() == wanted)
        {
            Some((_, shown)) => Err(Unavailable::Differs(shown.clone())),
            None => Err(Unavailable::NotGiven),
        }
    }
}

/// Why a debug-section file has no lines to show.
#[derive(Debug)]
pub(super) enum Unavailable {
    /// The debug info has no source hash for it.
    NoHash,
    /// A source of the same file name was given, with other contents (its display name).
    Differs(String),
    /// No source with its SM3 was given.
    NotGiven,
}

impl Unavailable {
    /// The reason on every trace line.
    pub(super) fn short(&self) -> &'static str {
        match self {
            Unavailable::NoHash => "no source hash",
            Unavailable::Differs(_) => "SM3 mismatch",
            Unavailable::NotGiven => "not given",
        }
    }

    /// The reason printed once when tracing starts.
    pub(super) fn long(&self) -> String {
        match self {
            Unavailable::NoHash => String::from("the debug info records no source hash"),
            Unavailable::Differs(shown) => {
                format!("{shown} differs from the assembled source (SM3 mismatch)")
            }
            Unavailable::NotGiven => {
                String::from("no source given matches its SM3 (pass it with --source PATH)")
            }
        }
    }
}
