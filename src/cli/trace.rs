//! The APDU trace printed by `run --trace`: `>> command` / `<< response SW (time)`.
//!
//! The format is the one [`cardvm::transport::replay::ReplayCard`] reads back, so a
//! trace captured from a real card can be replayed against a changed script.

use cardvm::isa::Instr;
use cardvm::vm::{ApduEvent, Tracer};
use std::io::Write;
use std::time::Instant;

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

impl Tracer for StderrTrace {
    fn step(&mut self, _offset: u32, _instr: &Instr) {}

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
        let mut err = std::io::stderr().lock();
        let redacted = if e.redacted {
            " ** key bytes redacted **"
        } else {
            ""
        };
        let _ = writeln!(err, ">> {}{redacted}", hex(e.command));
        match (e.sw, e.error) {
            (Some(sw), _) => {
                let data = hex(e.response);
                let sep = if data.is_empty() { "" } else { " " };
                let _ = writeln!(
                    err,
                    "<< {data}{sep}{:02X} {:02X}   ({elapsed:.3} ms)",
                    sw.sw1(),
                    sw.sw2()
                );
            }
            (None, Some(error)) => {
                let _ = writeln!(err, "<< !! {error}   ({elapsed:.3} ms)");
            }
            (None, None) => {}
        }
    }
}
