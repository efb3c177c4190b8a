//! Moves, constants, inputs and outputs: `mov`, `ldc`, `ldi`, `ldin`, `out`.

use super::Exec;
use crate::script::{Constant, FieldValue, ValueType};
use crate::transport::CardTransport;
use crate::vm::{Exit, Tag, Tracer, VmErrorKind};
use alloc::string::String;

impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
    #[inline(always)]
    pub(super) fn mov(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let reg = &self.vm.regs[usize::from(src)];
        match reg.tag {
            Tag::Int => {
                let v = reg.int;
                self.vm.set_int(dst, v);
            }
            Tag::Bytes if dst == src => {}
            Tag::Bytes => {
                let n = reg.bytes.len();
                self.vm.set_from_regs(dst, (src, 0..n), (src, 0..0))?;
            }
            Tag::Unset => return Err(Exit::Fault(VmErrorKind::Uninitialized(src))),
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn ldc(&mut self, dst: u8, index: u16) -> Result<(), Exit> {
        let program = self.bound.program;
        match &program.constants[usize::from(index)] {
            Constant::Int(v) => self.vm.set_int(dst, *v),
            Constant::Bytes(b) => self.vm.set_bytes(dst, b)?,
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn ldi(&mut self, dst: u8, value: u32) -> Result<(), Exit> {
        self.vm.set_int(dst, u64::from(value));
        Ok(())
    }

    #[inline(always)]
    pub(super) fn ldin(&mut self, dst: u8, input: u16) -> Result<(), Exit> {
        match self.bound.input(input) {
            FieldValue::Int(v) => self.vm.set_int(dst, *v),
            FieldValue::Bytes(b) => self.vm.set_bytes(dst, b)?,
            FieldValue::BcdDateTime(d) => self.vm.set_bytes(dst, d)?,
            // The verifier refuses ldin of key inputs and binding checks types.
            FieldValue::Key(_) => {
                return Err(Exit::Fault(VmErrorKind::TypeMismatch {
                    reg: dst,
                    expected: "a value",
                    found: "a key",
                }));
            }
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn out(&mut self, output: u16, src: u8) -> Result<(), Exit> {
        let program = self.bound.program;
        let vm = &mut *self.vm;
        let decl = &program.outputs[usize::from(output)];
        let reg = &vm.regs[usize::from(src)];
        let fits = match (reg.tag, decl.ty) {
            (Tag::Unset, _) => {
                return Err(Exit::Fault(VmErrorKind::Uninitialized(src)));
            }
            (Tag::Int, ValueType::Int { bits }) => bits >= 64 || reg.int >> bits == 0,
            (Tag::Bytes, ValueType::Bytes) => true,
            (Tag::Bytes, ValueType::BytesN { len }) => reg.bytes.len() == usize::from(len),
            (Tag::Bytes, ValueType::BcdDateTime) => reg.bytes.len() == 7,
            _ => false,
        };
        if !fits {
            return Err(Exit::Fault(VmErrorKind::OutputType(String::from(
                &*decl.name,
            ))));
        }
        // Output slots count toward the memory limit like registers: a receipt of
        // many large outputs is as much memory as many large registers.
        let old = match vm.outputs[usize::from(output)].tag {
            Tag::Bytes => vm.outputs[usize::from(output)].bytes.len(),
            _ => 0,
        };
        let new = match reg.tag {
            Tag::Bytes => reg.bytes.len(),
            _ => 0,
        };
        let used = vm.mem_used - old + new;
        if used > vm.limits.max_memory {
            return Err(Exit::Fault(VmErrorKind::OutOfMemory {
                used,
                limit: vm.limits.max_memory,
            }));
        }
        vm.mem_used = used;
        vm.peak_memory = vm.peak_memory.max(used);
        // Copied into the slot's own buffer: no allocation once it has grown.
        let slot = &mut vm.outputs[usize::from(output)];
        slot.tag = reg.tag;
        slot.int = reg.int;
        slot.bytes.clear();
        if reg.tag == Tag::Bytes {
            slot.bytes.extend_from_slice(&reg.bytes);
        }
        Ok(())
    }
}
