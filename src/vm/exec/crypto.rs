//! Key slots and cryptography: `ldkey`, `pkey`, `mac`, `chkmac`, `tackey`, `divkey`,
//! `enc`, `dec`, `sm3`, `ldrkey`, `cteq`.
//!
//! Every handler that reads a key slot goes through [`slot_key`] with its own opcode, so
//! the usages it accepts are those of the table's `Ks` operand
//! ([`Opcode::allowed_key_usages`]); a derived key's usage follows its source's
//! ([`crate::crypto::KeyUsage::derive`]), never the script.

use super::Exec;
use crate::crypto::{self, KeyAlg};
use crate::isa::Opcode;
use crate::script::FieldValue;
use crate::transport::{CardTransport, Slot};
use crate::vm::{Exit, Shown, Stop, Tracer, VmErrorKind, bytes_of, slot_key};

impl<T: CardTransport, R: Tracer + ?Sized> Exec<'_, '_, T, R> {
    #[inline(always)]
    pub(super) fn ldkey(&mut self, slot: u8, input: u16) -> Result<(), Exit> {
        match self.bound.input(input) {
            FieldValue::Key(k) => self.vm.keys[usize::from(slot)] = Some(k.clone()),
            _ => return Err(Exit::Fault(VmErrorKind::EmptyKeySlot(slot))),
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn process_key(&mut self, dst: u8, master: u8, data: u8) -> Result<(), Exit> {
        let input = self.vm.input8(data, "pkey")?;
        let k = slot_key(&self.vm.keys, master, Opcode::ProcessKey)?;
        // `load` gives `load-session`, `purchase` gives `purchase-session`.
        let session = crypto::process_key(k, &input).map_err(VmErrorKind::Crypto)?;
        self.vm.keys[usize::from(dst)] = Some(session);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn mac(&mut self, dst: u8, key: u8, data: u8) -> Result<(), Exit> {
        let k = slot_key(&self.vm.keys, key, Opcode::Mac)?;
        let mac =
            crypto::pboc_mac(k, bytes_of(&self.vm.regs, data)?).map_err(VmErrorKind::Crypto)?;
        self.vm.set_bytes(dst, &mac)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn check_mac(&mut self, key: u8, data: u8, mac: u8, code: u16) -> Result<(), Exit> {
        let k = slot_key(&self.vm.keys, key, Opcode::CheckMac)?;
        let expected =
            crypto::pboc_mac(k, bytes_of(&self.vm.regs, data)?).map_err(VmErrorKind::Crypto)?;
        if !crypto::ct_eq(&expected, bytes_of(&self.vm.regs, mac)?) {
            return Err(Exit::Stop(Stop::Fail(code)));
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn tac_key(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let k = slot_key(&self.vm.keys, src, Opcode::TacKey)?;
        let t = crypto::tac_key(k).map_err(VmErrorKind::Crypto)?;
        self.vm.keys[usize::from(dst)] = Some(t);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn diversify(&mut self, dst: u8, master: u8, data: u8) -> Result<(), Exit> {
        let f = self.vm.input8(data, "divkey")?;
        let k = slot_key(&self.vm.keys, master, Opcode::Diversify)?;
        // The card key's usage follows the master's; the script names none.
        let d = crypto::diversify(k, &f).map_err(VmErrorKind::Crypto)?;
        self.vm.keys[usize::from(dst)] = Some(d);
        Ok(())
    }

    #[inline(always)]
    pub(super) fn encrypt(&mut self, dst: u8, key: u8, data: u8) -> Result<(), Exit> {
        self.ecb(dst, key, data, Opcode::Encrypt)
    }

    #[inline(always)]
    pub(super) fn decrypt(&mut self, dst: u8, key: u8, data: u8) -> Result<(), Exit> {
        self.ecb(dst, key, data, Opcode::Decrypt)
    }

    #[inline(always)]
    pub(super) fn sm3(&mut self, dst: u8, src: u8) -> Result<(), Exit> {
        let h = crypto::sm3(bytes_of(&self.vm.regs, src)?);
        self.vm.set_bytes(dst, &h)?;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn load_reader_key(&mut self, key: u8, number: u8) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let k = slot_key(&vm.keys, key, Opcode::LoadReaderKey)?;
        if k.alg() != KeyAlg::M1 {
            return Err(Exit::Fault(VmErrorKind::KeyUsage {
                slot: key,
                usage: k.usage().name(),
                op: "ldrkey (M1 keys only)",
            }));
        }
        // FF 82 is answered by a PC/SC Part 3 reader itself; anything else (a CPU
        // card, a replayed or forged answer) would receive the key in clear.
        if !self.card.transport().reader_key_store() {
            return Err(Exit::Fault(VmErrorKind::NoReaderKeyStore));
        }
        // FF 82 00 keyNo 06 key(6): the only APDU that carries key bytes. The
        // transcript hashes it with the key replaced by zeros; the trace sees only
        // the header and Lc.
        let mut command = zeroize::Zeroizing::new([0u8; 11]);
        command[..5].copy_from_slice(&[0xFF, 0x82, 0x00, number, 0x06]);
        command[5..].copy_from_slice(k.expose());
        let redacted = [0xFF, 0x82, 0x00, number, 0x06, 0, 0, 0, 0, 0, 0];
        let shown = Shown {
            hashed: &redacted,
            traced: &redacted[..5],
            redacted: true,
        };
        // Always the card's channel: `ldrkey` has no slot operand and no `to_sam` flag.
        if let Err(e) = vm.ex.send(
            Slot::Card,
            self.card,
            self.tracer,
            self.transcript,
            &mut vm.scratch,
            &command[..],
            shown,
            vm.limits,
        )? {
            return Err(Exit::Stop(Stop::Transport(Slot::Card, e)));
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn ct_eq(&mut self, dst: u8, a: u8, b: u8) -> Result<(), Exit> {
        let eq = crypto::ct_eq(bytes_of(&self.vm.regs, a)?, bytes_of(&self.vm.regs, b)?);
        self.vm.set_int(dst, u64::from(eq));
        Ok(())
    }

    /// `enc`/`dec`: ECB under an `enc` key, result in a register.
    #[inline(always)]
    fn ecb(&mut self, dst: u8, key: u8, data: u8, op: Opcode) -> Result<(), Exit> {
        let vm = &mut *self.vm;
        let k = slot_key(&vm.keys, key, op)?;
        let d = bytes_of(&vm.regs, data)?;
        vm.scratch.clear();
        let r = if op == Opcode::Encrypt {
            crypto::ecb_encrypt(k, d, &mut vm.scratch)
        } else {
            crypto::ecb_decrypt(k, d, &mut vm.scratch)
        };
        r.map_err(VmErrorKind::Crypto)?;
        vm.set_from_scratch(dst)?;
        Ok(())
    }
}
