//! The interpreter's instructions: one handler per opcode, grouped by family
//! (`control`, `moves`, `int`, `bytes`, `apdu`, `crypto`).
//!
//! The dispatch ([`Exec::step`]) is generated from the instruction table
//! ([`crate::isa::table`]): one arm per table line, calling the handler the line names
//! with the instruction's fields. A line whose handler is missing, or a handler whose
//! parameters differ from the line's operands, does not compile. Handlers are inlined
//! into the dispatch, so it is one `match` as if written by hand, and none of them
//! allocates once the VM's buffers have grown.

mod apdu;
mod bytes;
mod control;
mod crypto;
mod int;
mod moves;

use super::{Tracer, TranscriptHasher, Vm};
use crate::isa::{Instr, for_each_op};
use crate::transport::{ApduLayer, CardTransport, SamSlots};
use crate::verify::Bound;

/// One run in progress: the VM's state and everything an instruction may touch.
pub(super) struct Exec<'a, 's, T: CardTransport, R: Tracer + ?Sized> {
    /// Registers, key slots, outputs, limits, the APDU side.
    pub(super) vm: &'a mut Vm,
    /// The program and the data script bound to it.
    pub(super) bound: Bound<'a>,
    /// The card.
    pub(super) card: &'a mut ApduLayer<T>,
    /// The terminal's SAM slots (`samapdu`).
    pub(super) sams: &'a mut SamSlots<'s>,
    /// Sees every APDU (and, in the loop, every step).
    pub(super) tracer: &'a mut R,
    /// Hashes the APDU transcript for the receipt.
    pub(super) transcript: &'a mut TranscriptHasher,
    /// The next instruction: while one runs, already the one after it; jumps set it.
    pub(super) pc: usize,
}

macro_rules! define_dispatch {
    ($(
        $(#[doc = $doc:literal])+
        $code:literal $variant:ident $mnemonic:literal
            ( $( $field:ident : $role:ident $( ( $($arg:tt)* ) )? ),* )
            [ $( $flag:ident ),* ]
            => $handler:ident;
    )*) => {
        impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
            /// Executes one instruction: the handler its table line names.
            #[inline(always)]
            pub(super) fn step(&mut self, instr: &Instr) -> Result<(), super::Exit> {
                match *instr {
                    $( Instr::$variant { $($field),* } => self.$handler($($field),*), )*
                }
            }
        }
    };
}

for_each_op!(define_dispatch);
