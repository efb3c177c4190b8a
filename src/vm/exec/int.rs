//! Integer arithmetic (u64; overflow, underflow and division by zero are faults):
//! `add`, `sub`, `mul`, `div`, `rem`, `addi`, `subi`, `andi`, `shri`, `shli`.

use super::Exec;
use crate::transport::CardTransport;
use crate::vm::{Exit, Tracer, VmErrorKind, int_of};

impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
    #[inline(always)]
    pub(super) fn add(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        self.int_op(dst, a, b, |x, y| {
            x.checked_add(y).ok_or(VmErrorKind::Overflow)
        })
    }

    #[inline(always)]
    pub(super) fn sub(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        self.int_op(dst, a, b, |x, y| {
            x.checked_sub(y).ok_or(VmErrorKind::Overflow)
        })
    }

    #[inline(always)]
    pub(super) fn mul(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        self.int_op(dst, a, b, |x, y| {
            x.checked_mul(y).ok_or(VmErrorKind::Overflow)
        })
    }

    #[inline(always)]
    pub(super) fn div(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        self.int_op(dst, a, b, |x, y| {
            x.checked_div(y).ok_or(VmErrorKind::DivideByZero)
        })
    }

    #[inline(always)]
    pub(super) fn rem(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        self.int_op(dst, a, b, |x, y| {
            x.checked_rem(y).ok_or(VmErrorKind::DivideByZero)
        })
    }

    #[inline(always)]
    pub(super) fn addi(&mut self, dst: u8, a: u8, value: u32) -> Result<(), Exit> {
        let v = int_of(&self.vm.regs, a)?
            .checked_add(u64::from(value))
            .ok_or(VmErrorKind::Overflow)?;
        self.vm.set_int(dst, v);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn subi(&mut self, dst: u8, a: u8, value: u32) -> Result<(), Exit> {
        let v = int_of(&self.vm.regs, a)?
            .checked_sub(u64::from(value))
            .ok_or(VmErrorKind::Overflow)?;
        self.vm.set_int(dst, v);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn andi(&mut self, dst: u8, a: u8, value: u32) -> Result<(), Exit> {
        let v = int_of(&self.vm.regs, a)? & u64::from(value);
        self.vm.set_int(dst, v);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn shri(&mut self, dst: u8, a: u8, bits: u8) -> Result<(), Exit> {
        // The verifier keeps `bits` in 0..=63.
        let v = int_of(&self.vm.regs, a)? >> bits;
        self.vm.set_int(dst, v);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn shli(&mut self, dst: u8, a: u8, bits: u8) -> Result<(), Exit> {
        let x = int_of(&self.vm.regs, a)?;
        let v = x << bits;
        if v >> bits != x {
            return Err(Exit::Fault(VmErrorKind::Overflow));
        }
        self.vm.set_int(dst, v);
        Ok(())
    }

    /// `dst = f(a, b)` over integer registers.
    #[inline(always)]
    fn int_op(
        &mut self,
        dst: u8,
        a: u8,
        b: u8,
        f: impl FnOnce(u64, u64) -> Result<u64, VmErrorKind>,
    ) -> Result<(), Exit> {
        let (x, y) = (int_of(&self.vm.regs, a)?, int_of(&self.vm.regs, b)?);
        let v = f(x, y)?;
        self.vm.set_int(dst, v);
        Ok(())
    }
}
