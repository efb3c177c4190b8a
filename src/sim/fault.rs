//! Fault injection: tearing (the card leaves the field), forced status words, corrupted
//! responses and added latency, keyed by APDU index.
//!
//! APDUs are counted from power on: the first APDU after [`power_on`] is number **1**.
//! Each fault fires once and is then consumed, so a recovery flow after a re-power does
//! not tear again at the same index.
//!
//! [`power_on`]: crate::transport::CardTransport::power_on

use alloc::vec::Vec;

use super::airtime::{AirTimeModel, AirTimeReport};
use crate::transport::TransportError;

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Power is lost before the card processes APDU `n`: nothing happens on the card,
    /// the exchange fails with [`TransportError::CardRemoved`], the card is powered off.
    TearBefore(u32),
    /// The card processes (and commits) APDU `n`, then power is lost before the response
    /// reaches the reader: [`TransportError::CardRemoved`], the card is powered off.
    TearAfter(u32),
    /// Power is lost inside the commit of APDU `n` (after the card started writing its
    /// EEPROM). The card's commit is atomic: when powered on again it is back **before**
    /// the transaction. If APDU `n` commits nothing, this acts like `TearAfter(n)`.
    TearMidCommit(u32),
    /// APDU `n` is not processed; the card answers with this status word alone.
    ForceSw(u32, u16),
    /// APDU `n` is processed normally, then byte `index` of the raw response
    /// (data ‖ SW) is XORed with the mask (ignored if the response is shorter).
    Corrupt(u32, usize, u8),
    /// APDU `n` takes this many extra microseconds. Recorded in the air-time report;
    /// the simulator sleeps only if [`FaultPlan::sleep`] is set.
    Latency(u32, u64),
}

impl Fault {
    /// The APDU index the fault is keyed by.
    pub fn index(&self) -> u32 {
        match *self {
            Fault::TearBefore(n)
            | Fault::TearAfter(n)
            | Fault::TearMidCommit(n)
            | Fault::ForceSw(n, _)
            | Fault::Corrupt(n, _, _)
            | Fault::Latency(n, _) => n,
        }
    }
}

/// The pending faults of a simulated card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    faults: Vec<Fault>,
    /// Really sleep for [`Fault::Latency`] (off by default: tests never sleep).
    pub sleep: bool,
}

impl FaultPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fault.
    pub fn push(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Adds a fault (builder style).
    pub fn with(mut self, fault: Fault) -> Self {
        self.push(fault);
        self
    }

    /// Faults not yet fired.
    pub fn pending(&self) -> &[Fault] {
        &self.faults
    }

    /// Removes every pending fault.
    pub fn clear(&mut self) {
        self.faults.clear();
    }

    /// Removes and returns the faults keyed by APDU `n`.
    fn take(&mut self, n: u32) -> Vec<Fault> {
        let mut fired = Vec::new();
        self.faults.retain(|f| {
            if f.index() == n {
                fired.push(*f);
                false
            } else {
                true
            }
        });
        fired
    }
}

/// What a card model is asked to do with one APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecCtx {
    /// Lose power inside the commit, if this APDU commits.
    pub tear_mid_commit: bool,
}

/// The card model was torn inside its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TornMidCommit;

/// Power, APDU counting, faults and air time shared by every simulated card.
#[derive(Debug, Clone)]
pub(crate) struct Harness {
    pub faults: FaultPlan,
    pub model: AirTimeModel,
    pub report: AirTimeReport,
    pub index: u32,
    pub powered: bool,
    pub out: Vec<u8>,
}

impl Default for Harness {
    fn default() -> Self {
        let model = AirTimeModel::default();
        let mut report = AirTimeReport::default();
        report.add_activation(&model);
        Self {
            faults: FaultPlan::new(),
            model,
            report,
            index: 0,
            powered: true,
            out: Vec::with_capacity(300),
        }
    }
}

/// How a card model prices one exchange on air.
pub(crate) enum AirKind {
    /// An ISO 14443-4 APDU exchange.
    Apdu,
    /// A native exchange: (PCD bytes, PICC bytes, round trips); `None` = reader-local.
    Native(Option<(usize, usize, u64)>),
}

impl Harness {
    pub fn power_on(&mut self) {
        if !self.powered {
            self.powered = true;
            self.index = 0;
            self.report.reset();
            self.report.add_activation(&self.model);
        }
    }

    /// Runs one exchange through the fault plan. `process` writes data ‖ SW into the
    /// buffer it is given; `power_loss` is called when the card loses power.
    pub fn run<P, L, K>(
        &mut self,
        command: &[u8],
        response: &mut [u8],
        mut process: P,
        mut power_loss: L,
        air_kind: K,
    ) -> Result<usize, TransportError>
    where
        P: FnMut(&[u8], &mut Vec<u8>, ExecCtx) -> Result<(), TornMidCommit>,
        L: FnMut(),
        K: Fn(&[u8]) -> AirKind,
    {
        if !self.powered {
            return Err(TransportError::NoCard);
        }
        self.index = self.index.saturating_add(1);
        let fired = self.faults.take(self.index);
        let has = |p: &dyn Fn(&Fault) -> bool| fired.iter().any(p);
        let latency_us: u64 = fired
            .iter()
            .map(|f| {
                if let Fault::Latency(_, us) = f {
                    *us
                } else {
                    0
                }
            })
            .sum();
        if self.faults.sleep && latency_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(latency_us));
        }
        if has(&|f| matches!(f, Fault::TearBefore(_))) {
            self.tear(&mut power_loss);
            return Err(TransportError::CardRemoved);
        }
        self.out.clear();
        let forced = fired.iter().find_map(|f| match f {
            Fault::ForceSw(_, sw) => Some(*sw),
            _ => None,
        });
        if let Some(sw) = forced {
            self.out.extend_from_slice(&sw.to_be_bytes());
        } else {
            let ctx = ExecCtx {
                tear_mid_commit: has(&|f| matches!(f, Fault::TearMidCommit(_))),
            };
            let mut out = core::mem::take(&mut self.out);
            let r = process(command, &mut out, ctx);
            self.out = out;
            if r.is_err() || ctx.tear_mid_commit {
                self.tear(&mut power_loss);
                return Err(TransportError::CardRemoved);
            }
        }
        for f in &fired {
            if let Fault::Corrupt(_, i, x) = *f
                && let Some(b) = self.out.get_mut(i)
            {
                *b ^= x;
            }
        }
        let air = match air_kind(command) {
            AirKind::Apdu => self.model.apdu(command, self.out.len(), latency_us),
            AirKind::Native(frames) => {
                let (pcd, picc, n) = frames.unwrap_or((0, 0, 0));
                let cla = command.first().copied().unwrap_or(0);
                let ins = command.get(1).copied().unwrap_or(0);
                let mut a = self
                    .model
                    .native(pcd, picc, n, self.model.processing_us(cla, ins));
                a.latency_ns = latency_us * 1_000;
                a.total_ns += a.latency_ns;
                a
            }
        };
        self.report.add(air);
        if has(&|f| matches!(f, Fault::TearAfter(_))) {
            self.tear(&mut power_loss);
            return Err(TransportError::CardRemoved);
        }
        crate::transport::copy_response(&self.out, response)
    }

    fn tear(&mut self, power_loss: &mut dyn FnMut()) {
        self.powered = false;
        power_loss();
    }
}
