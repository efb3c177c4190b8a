//! Control flow and branches: `nop`, `halt`, `fail`, `jmp`, `call`, `ret`,
//! `commit_point`, `beq`…`bnz`.

use super::Exec;
use crate::transport::CardTransport;
use crate::vm::{Exit, Stop, Tag, Tracer, VmErrorKind, int_of};

impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
    #[inline(always)]
    pub(super) fn nop(&mut self) -> Result<(), Exit> {
        Ok(())
    }

    #[inline(always)]
    pub(super) fn halt(&mut self) -> Result<(), Exit> {
        Err(Exit::Stop(Stop::Halt))
    }

    #[inline(always)]
    pub(super) fn fail(&mut self, code: u16) -> Result<(), Exit> {
        Err(Exit::Stop(Stop::Fail(code)))
    }

    #[inline(always)]
    pub(super) fn jmp(&mut self, target: u32) -> Result<(), Exit> {
        self.pc = target as usize;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn call(&mut self, target: u32) -> Result<(), Exit> {
        if self.vm.stack.len() >= crate::verify::MAX_CALL_DEPTH as usize {
            return Err(Exit::Fault(VmErrorKind::CallStack));
        }
        self.vm.stack.push(self.pc as u32);
        self.pc = target as usize;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn ret(&mut self) -> Result<(), Exit> {
        self.pc = self.vm.stack.pop().ok_or(VmErrorKind::CallStack)? as usize;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn commit_point(&mut self) -> Result<(), Exit> {
        self.vm.in_commit = true;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn beq(&mut self, a: u8, b: u8, target: u32) -> Result<(), Exit> {
        self.branch_eq(a, b, target, true)
    }

    #[inline(always)]
    pub(super) fn bne(&mut self, a: u8, b: u8, target: u32) -> Result<(), Exit> {
        self.branch_eq(a, b, target, false)
    }

    #[inline(always)]
    pub(super) fn blt(&mut self, a: u8, b: u8, target: u32) -> Result<(), Exit> {
        self.branch_int(a, b, target, u64::lt)
    }

    #[inline(always)]
    pub(super) fn ble(&mut self, a: u8, b: u8, target: u32) -> Result<(), Exit> {
        self.branch_int(a, b, target, u64::le)
    }

    #[inline(always)]
    pub(super) fn bgt(&mut self, a: u8, b: u8, target: u32) -> Result<(), Exit> {
        self.branch_int(a, b, target, u64::gt)
    }

    #[inline(always)]
    pub(super) fn bge(&mut self, a: u8, b: u8, target: u32) -> Result<(), Exit> {
        self.branch_int(a, b, target, u64::ge)
    }

    #[inline(always)]
    pub(super) fn bz(&mut self, a: u8, target: u32) -> Result<(), Exit> {
        if int_of(&self.vm.regs, a)? == 0 {
            self.pc = target as usize;
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn bnz(&mut self, a: u8, target: u32) -> Result<(), Exit> {
        if int_of(&self.vm.regs, a)? != 0 {
            self.pc = target as usize;
        }
        Ok(())
    }

    /// `beq`/`bne`: integers or byte strings, both of the same kind.
    #[inline(always)]
    fn branch_eq(&mut self, a: u8, b: u8, target: u32, on_equal: bool) -> Result<(), Exit> {
        let (ra, rb) = (&self.vm.regs[usize::from(a)], &self.vm.regs[usize::from(b)]);
        let equal = match (ra.tag, rb.tag) {
            (Tag::Int, Tag::Int) => ra.int == rb.int,
            (Tag::Bytes, Tag::Bytes) => ra.bytes == rb.bytes,
            (Tag::Unset, _) => return Err(Exit::Fault(VmErrorKind::Uninitialized(a))),
            (_, Tag::Unset) => return Err(Exit::Fault(VmErrorKind::Uninitialized(b))),
            _ => {
                return Err(Exit::Fault(VmErrorKind::TypeMismatch {
                    reg: b,
                    expected: ra.kind_name(),
                    found: rb.kind_name(),
                }));
            }
        };
        if equal == on_equal {
            self.pc = target as usize;
        }
        Ok(())
    }

    /// `blt`…`bge`: integer comparisons.
    #[inline(always)]
    fn branch_int(
        &mut self,
        a: u8,
        b: u8,
        target: u32,
        cmp: impl FnOnce(&u64, &u64) -> bool,
    ) -> Result<(), Exit> {
        let (x, y) = (int_of(&self.vm.regs, a)?, int_of(&self.vm.regs, b)?);
        if cmp(&x, &y) {
            self.pc = target as usize;
        }
        Ok(())
    }
}
