//! Runs a city script on a simulated CPU card and records every exchange: for tests
//! that compare what went over the wire (command, response data, SW) with the reference.

use cardvm::asm::{AsmOptions, assemble_file};
use cardvm::script::DataScript;
use cardvm::sim::CpuCard;
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{NoTrace, RunReport, Vm};

/// Every exchange of a run: command, response data, status word.
pub type Log = Vec<(Vec<u8>, Vec<u8>, u16)>;

/// Passes every exchange to the card and records it.
struct Recorder<'c> {
    card: &'c mut CpuCard,
    log: Log,
}

impl CardTransport for Recorder<'_> {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.card.transmit(command, response)?;
        let (data, sw) = response[..n].split_at(n - 2);
        self.log.push((
            command.to_vec(),
            data.to_vec(),
            u16::from_be_bytes([sw[0], sw[1]]),
        ));
        Ok(n)
    }
    fn power_on(&mut self) -> Result<(), TransportError> {
        self.card.power_on()
    }
    fn power_off(&mut self) -> Result<(), TransportError> {
        self.card.power_off()
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        self.card.reset()
    }
    fn atr(&self) -> Option<&[u8]> {
        self.card.atr()
    }
}

/// Assembles `path` (no warnings allowed), binds `d` and runs it on `card`.
pub fn run_recorded(path: &str, d: &DataScript, card: &mut CpuCard) -> (RunReport, Log) {
    let a = assemble_file(path.as_ref(), &AsmOptions::default()).unwrap();
    assert!(a.warnings.is_empty(), "{path}: {:?}", a.warnings);
    let program = VerifiedProgram::from_script(a.script).unwrap();
    let binding = program.bind(d).unwrap();
    let mut rec = Recorder {
        card,
        log: Vec::new(),
    };
    let report = {
        let mut layer = ApduLayer::new(&mut rec);
        Vm::default().run(
            program.with_data(d, &binding).unwrap(),
            &mut layer,
            &mut NoTrace,
        )
    };
    (report, rec.log)
}
