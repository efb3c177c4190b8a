//! APDUs and status words: `apdu`, `samapdu`, `hostapdu`, `mkapdu`, `sw`, `bsw`, `bnsw`, `expect`,
//! `uid`.

use super::Exec;
use crate::isa::SwPattern;
use crate::transport::{Apdu, CardTransport, Slot};
use crate::vm::{Exit, Shown, Stop, Tracer, VmErrorKind, bytes_of};

impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
    #[inline(always)]
    pub(super) fn apdu(&mut self, resp: u8, cmd: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let command = bytes_of(&vm.regs, cmd)?;
        let shown = Shown {
            hashed: command,
            traced: command,
            redacted: false,
        };
        match vm.ex.send(
            Slot::Card,
            self.card,
            self.tracer,
            self.transcript,
            &mut vm.scratch,
            command,
            shown,
            vm.limits,
        )? {
            Ok(()) => vm.set_from_scratch(resp)?,
            Err(e) => return Err(Exit::Stop(Stop::Transport(Slot::Card, e))),
        }
        Ok(())
    }

    /// `samapdu`: like `apdu`, to SAM slot `sam`. The verifier refused any command built
    /// from a key-derived value, and the run start checked the slot exists; the lookup
    /// here is the backstop.
    #[inline(always)]
    pub(super) fn sam_apdu(&mut self, resp: u8, cmd: u8, sam: u8) -> Result<(), Exit> {
        self.exchange_beside_card(Slot::Sam(sam), resp, cmd)
    }

    /// `hostapdu`: like `samapdu`, to the card company (host-secured mode). The verifier
    /// refused key-derived commands and bounded how often this runs; the run start checked
    /// the channel exists.
    #[inline(always)]
    pub(super) fn host_apdu(&mut self, resp: u8, cmd: u8) -> Result<(), Exit> {
        self.exchange_beside_card(Slot::Host, resp, cmd)
    }

    /// One exchange with a SAM slot or the card company (never the card).
    #[inline(always)]
    fn exchange_beside_card(&mut self, slot: Slot, resp: u8, cmd: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let available = self.sams.len();
        let layer = match slot {
            Slot::Sam(n) => self
                .sams
                .layer_mut(n)
                .ok_or(Exit::Fault(VmErrorKind::NoSam { slot: n, available }))?,
            Slot::Host => self
                .sams
                .host_mut()
                .ok_or(Exit::Fault(VmErrorKind::NoHost))?,
            // Callers pass a SAM slot or the card company; the card has its own `apdu`.
            Slot::Card => return Err(Exit::Fault(VmErrorKind::NoHost)),
        };
        let command = bytes_of(&vm.regs, cmd)?;
        let shown = Shown {
            hashed: command,
            traced: command,
            redacted: false,
        };
        match vm.ex.send(
            slot,
            layer,
            self.tracer,
            self.transcript,
            &mut vm.scratch,
            command,
            shown,
            vm.limits,
        )? {
            Ok(()) => vm.set_from_scratch(resp)?,
            Err(e) => return Err(Exit::Stop(Stop::Transport(slot, e))),
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn mk_apdu(&mut self, dst: u8, header: u8, data: u8, le: u32) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let (h, d) = (bytes_of(&vm.regs, header)?, bytes_of(&vm.regs, data)?);
        if h.len() != 4 {
            return Err(Exit::Fault(VmErrorKind::InputLength {
                op: "mkapdu header",
                expected: 4,
                found: h.len(),
            }));
        }
        let le = (le != 0).then_some(le);
        let apdu = Apdu::new(h[0], h[1], h[2], h[3], d, le);
        vm.scratch.clear();
        apdu.encode_into(&mut vm.scratch)
            .map_err(VmErrorKind::BadApdu)?;
        vm.set_from_scratch(dst)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn sw(&mut self, dst: u8) -> Result<(), Exit> {
        let sw = self.vm.ex.sw.ok_or(VmErrorKind::NoStatusWord)?;
        self.vm.set_int(dst, u64::from(sw.0));
        Ok(())
    }

    #[inline(always)]
    pub(super) fn bsw(&mut self, pattern: SwPattern, target: u32) -> Result<(), Exit> {
        if self.sw_matches(pattern)? {
            self.pc = target as usize;
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn bnsw(&mut self, pattern: SwPattern, target: u32) -> Result<(), Exit> {
        if !self.sw_matches(pattern)? {
            self.pc = target as usize;
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn expect(&mut self, pattern: SwPattern, code: u16) -> Result<(), Exit> {
        if !self.sw_matches(pattern)? {
            return Err(Exit::Stop(Stop::Fail(code)));
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn uid(&mut self, dst: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        vm.scratch.clear();
        if let Some(uid) = self.card.transport().uid() {
            vm.scratch.extend_from_slice(uid);
        }
        vm.set_from_scratch(dst)?;
        Ok(())
    }

    /// Whether the last status word matches `pattern`; a fault before any APDU.
    #[inline(always)]
    fn sw_matches(&self, pattern: SwPattern) -> Result<bool, VmErrorKind> {
        Ok(pattern.matches(self.vm.ex.sw.ok_or(VmErrorKind::NoStatusWord)?.0))
    }
}
