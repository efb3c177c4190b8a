//! Byte strings: `cat`, `slice`, `slicer`, `xor`, `not`, `pad`, `len`, `tobe`, `frombe`,
//! `tobcd`, `frombcd`, `fill`. Every result goes through the string and memory limits.

use super::Exec;
use crate::crypto;
use crate::transport::CardTransport;
use crate::vm::{Exit, Tracer, VmErrorKind, bytes_of, int_of, slice_range};

impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
    #[inline(always)]
    pub(super) fn cat(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        // Every path checks the string and memory limits in `reserve`.
        let (x, y) = (bytes_of(&vm.regs, a)?, bytes_of(&vm.regs, b)?);
        let (nx, ny) = (x.len(), y.len());
        if dst == a && dst != b {
            // `cat t, t, x`, the usual way a MAC input is built: append in place.
            vm.reserve(dst, nx + ny)?;
            let tail = core::mem::take(&mut vm.regs[usize::from(b)].bytes);
            vm.regs[usize::from(dst)].bytes.extend_from_slice(&tail);
            vm.regs[usize::from(b)].bytes = tail;
        } else if dst != a && dst != b {
            vm.set_from_regs(dst, (a, 0..nx), (b, 0..ny))?;
        } else {
            vm.scratch.clear();
            vm.scratch.extend_from_slice(x);
            vm.scratch.extend_from_slice(y);
            vm.set_from_scratch(dst)?;
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn slice(&mut self, dst: u8, src: u8, offset: u16, len: u16) -> Result<(), Exit> {
        let s = bytes_of(&self.vm.regs, src)?;
        let range = slice_range(s.len(), offset.into(), len.into())?;
        self.vm.set_slice(dst, src, range)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn slicer(&mut self, dst: u8, src: u8, offset: u8, len: u8) -> Result<(), Exit> {
        let (o, n) = (int_of(&self.vm.regs, offset)?, int_of(&self.vm.regs, len)?);
        let s = bytes_of(&self.vm.regs, src)?;
        let range = slice_range(s.len(), o, n)?;
        self.vm.set_slice(dst, src, range)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn xor(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let (x, y) = (bytes_of(&vm.regs, a)?, bytes_of(&vm.regs, b)?);
        if x.len() != y.len() {
            return Err(Exit::Fault(VmErrorKind::LengthMismatch(x.len(), y.len())));
        }
        vm.scratch.clear();
        vm.scratch.extend(x.iter().zip(y).map(|(p, q)| p ^ q));
        vm.set_from_scratch(dst)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn not(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let s = bytes_of(&vm.regs, src)?;
        vm.scratch.clear();
        vm.scratch.extend(s.iter().map(|b| !b));
        vm.set_from_scratch(dst)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn pad(&mut self, dst: u8, src: u8, block: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let s = bytes_of(&vm.regs, src)?;
        // The verifier keeps `block` in 1..=255.
        let block = usize::from(block);
        let len = (s.len() / block + 1) * block;
        if len > vm.limits.max_bytes {
            return Err(Exit::Fault(VmErrorKind::StringTooLong {
                len,
                limit: vm.limits.max_bytes,
            }));
        }
        vm.scratch.clear();
        crypto::pad_iso9797_m2(s, block, &mut vm.scratch);
        vm.set_from_scratch(dst)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn len(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let n = bytes_of(&self.vm.regs, src)?.len() as u64;
        self.vm.set_int(dst, n);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn tobe(&mut self, dst: u8, src: u8, width: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let v = int_of(&vm.regs, src)?;
        // The verifier keeps `width` in 1..=8.
        let w = usize::from(width);
        if w < 8 && v >> (8 * w) != 0 {
            return Err(Exit::Fault(VmErrorKind::DoesNotFit(width)));
        }
        vm.scratch.clear();
        vm.scratch.extend_from_slice(&v.to_be_bytes()[8 - w..]);
        vm.set_from_scratch(dst)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn frombe(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let s = bytes_of(&self.vm.regs, src)?;
        if s.len() > 8 {
            return Err(Exit::Fault(VmErrorKind::IntTooWide(s.len())));
        }
        let v = s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        self.vm.set_int(dst, v);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn tobcd(&mut self, dst: u8, src: u8, width: u8) -> Result<(), Exit> {
        let mut v = int_of(&self.vm.regs, src)?;
        // The verifier keeps `width` in 1..=10.
        let w = usize::from(width);
        let mut buf = [0u8; 10];
        for byte in buf[..w].iter_mut().rev() {
            let lo = (v % 10) as u8;
            v /= 10;
            let hi = (v % 10) as u8;
            v /= 10;
            *byte = (hi << 4) | lo;
        }
        if v != 0 {
            return Err(Exit::Fault(VmErrorKind::DoesNotFit(width)));
        }
        self.vm.set_bytes(dst, &buf[..w])?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn frombcd(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let s = bytes_of(&self.vm.regs, src)?;
        if s.len() > 9 {
            return Err(Exit::Fault(VmErrorKind::BadBcd));
        }
        let mut v = 0u64;
        for b in s {
            let (hi, lo) = (b >> 4, b & 0xF);
            if hi > 9 || lo > 9 {
                return Err(Exit::Fault(VmErrorKind::BadBcd));
            }
            v = v * 100 + u64::from(hi) * 10 + u64::from(lo);
        }
        self.vm.set_int(dst, v);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn fill(&mut self, dst: u8, byte: u8, count: u16) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let n = usize::from(count);
        if n > vm.limits.max_bytes {
            return Err(Exit::Fault(VmErrorKind::StringTooLong {
                len: n,
                limit: vm.limits.max_bytes,
            }));
        }
        vm.scratch.clear();
        vm.scratch.resize(n, byte);
        vm.set_from_scratch(dst)?;
        Ok(())
    }
}
