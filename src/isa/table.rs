//! The instruction table: every opcode's byte, mnemonic, typed operands, flags, doc line
//! and VM handler, in one place.
//!
//! `for_each_op!` hands the whole table to a macro (wasmi's `for_each_op` is the
//! model). [`super`] expands it into [`Opcode`](super::Opcode) and [`Instr`](super::Instr)
//! with their encoders, decoders and operand specs; `vm::exec` expands it into the
//! interpreter's dispatch, one arm per line calling the line's handler. So adding an
//! instruction is one line here, one handler in `src/vm/exec/`, and a test; a line whose
//! handler does not exist does not compile, nor does a line without a doc comment.
//!
//! A line reads
//!
//! ```text
//! /// One-line doc (the reference's "effect" column).
//! 0x47 ToBe "tobe" (dst: Rd, src: Rs, width: U8(1..=8)) [] => tobe;
//! ```
//!
//! opcode byte, variant, mnemonic, operands, flags, handler. Operand roles (see
//! [`Role`](super::Role)): `Rd`/`Rs` register written/read, `Kd(derivation)` key slot
//! filled, `Ks(usages…)` key slot read with the usages it accepts, `C` constant, `Iv`/`Ik`
//! value/key input, `O` output, `L` jump target, `U8`/`U16`/`U32(lo..=hi)` immediate with
//! its range, `Code` failure code, `SW` status-word pattern. Flags (see
//! [`Flags`](super::Flags)): `terminator`, `sends_apdu`, `reads_sw`, `commit_point`,
//! `to_sam` (the APDU goes to a SAM slot, see [`crate::transport::Slot`]), `to_host` (the
//! SAM is the card company, reached over the online protocol).

/// Calls `$mac!` with the whole instruction table (see the module docs for the format).
macro_rules! for_each_op {
    ($mac:ident) => {
        $mac! {
            // ---- control flow ----
            /// Do nothing.
            0x00 Nop "nop" () [] => nop;
            /// Stop: the transaction completed (outcome `committed`).
            0x01 Halt "halt" () [terminator] => halt;
            /// Stop: the transaction failed with `code` (outcome `failed`: the script knows the card did not commit).
            0x02 Fail "fail" (code: Code) [terminator] => fail;
            /// Jump to `target`.
            0x03 Jmp "jmp" (target: L) [terminator] => jmp;
            /// Call the routine at `target`; `ret` comes back.
            0x04 Call "call" (target: L) [] => call;
            /// Return from a routine.
            0x05 Ret "ret" () [terminator] => ret;
            /// From here on the card may commit: a later transport failure (tearing) or VM fault is reported as `unknown`.
            0x06 CommitPoint "commit_point" () [commit_point] => commit_point;
            // ---- branches ----
            /// Branch if `a == b` (integers, or byte strings — not constant-time: use `cteq` for MACs).
            0x10 Beq "beq" (a: Rs, b: Rs, target: L) [] => beq;
            /// Branch if `a != b`.
            0x11 Bne "bne" (a: Rs, b: Rs, target: L) [] => bne;
            /// Branch if integer `a < b`.
            0x12 Blt "blt" (a: Rs, b: Rs, target: L) [] => blt;
            /// Branch if integer `a <= b`.
            0x13 Ble "ble" (a: Rs, b: Rs, target: L) [] => ble;
            /// Branch if integer `a > b`.
            0x14 Bgt "bgt" (a: Rs, b: Rs, target: L) [] => bgt;
            /// Branch if integer `a >= b`.
            0x15 Bge "bge" (a: Rs, b: Rs, target: L) [] => bge;
            /// Branch if integer `a` is zero.
            0x16 Bz "bz" (a: Rs, target: L) [] => bz;
            /// Branch if integer `a` is not zero.
            0x17 Bnz "bnz" (a: Rs, target: L) [] => bnz;
            // ---- moves, constants, inputs, outputs ----
            /// `dst = src`.
            0x20 Mov "mov" (dst: Rd, src: Rs) [] => mov;
            /// `dst = constant`.
            0x21 Ldc "ldc" (dst: Rd, index: C) [] => ldc;
            /// `dst = value` (integer immediate).
            0x22 Ldi "ldi" (dst: Rd, value: U32) [] => ldi;
            /// `dst = input` (a non-key data-script field).
            0x23 Ldin "ldin" (dst: Rd, input: Iv) [] => ldin;
            /// Key slot `slot = input` (a key field of the data script; its bytes stay in the slot).
            0x24 Ldkey "ldkey" (slot: Kd, input: Ik) [] => ldkey;
            /// Receipt field `output = src`.
            0x25 Out "out" (output: O, src: Rs) [] => out;
            // ---- integers (u64; overflow is an error) ----
            /// `dst = a + b`.
            0x30 Add "add" (dst: Rd, a: Rs, b: Rs) [] => add;
            /// `dst = a - b`.
            0x31 Sub "sub" (dst: Rd, a: Rs, b: Rs) [] => sub;
            /// `dst = a * b`.
            0x32 Mul "mul" (dst: Rd, a: Rs, b: Rs) [] => mul;
            /// `dst = a / b` (division by zero is an error).
            0x33 Div "div" (dst: Rd, a: Rs, b: Rs) [] => div;
            /// `dst = a % b`.
            0x34 Rem "rem" (dst: Rd, a: Rs, b: Rs) [] => rem;
            /// `dst = a + value`.
            0x35 Addi "addi" (dst: Rd, a: Rs, value: U32) [] => addi;
            /// `dst = a - value`.
            0x36 Subi "subi" (dst: Rd, a: Rs, value: U32) [] => subi;
            /// `dst = a & value`.
            0x37 Andi "andi" (dst: Rd, a: Rs, value: U32) [] => andi;
            /// `dst = a >> bits`.
            0x38 Shri "shri" (dst: Rd, a: Rs, bits: U8(0..=63)) [] => shri;
            /// `dst = a << bits` (bits shifted out are an overflow).
            0x39 Shli "shli" (dst: Rd, a: Rs, bits: U8(0..=63)) [] => shli;
            // ---- byte strings ----
            /// `dst = a ‖ b`.
            0x40 Cat "cat" (dst: Rd, a: Rs, b: Rs) [] => cat;
            /// `dst = src[offset .. offset + len]`.
            0x41 Slice "slice" (dst: Rd, src: Rs, offset: U16, len: U16) [] => slice;
            /// `dst = src[offset .. offset + len]` with offset and length in registers.
            0x42 Slicer "slicer" (dst: Rd, src: Rs, offset: Rs, len: Rs) [] => slicer;
            /// `dst = a XOR b` (equal lengths).
            0x43 Xor "xor" (dst: Rd, a: Rs, b: Rs) [] => xor;
            /// `dst = NOT src` (every byte inverted).
            0x44 Not "not" (dst: Rd, src: Rs) [] => not;
            /// `dst = src` padded with ISO 9797-1 method 2 to a multiple of `block`.
            0x45 Pad "pad" (dst: Rd, src: Rs, block: U8(1..=255)) [] => pad;
            /// `dst = length of src` (integer).
            0x46 Len "len" (dst: Rd, src: Rs) [] => len;
            /// `dst = src` (integer) as `width` big-endian bytes.
            0x47 ToBe "tobe" (dst: Rd, src: Rs, width: U8(1..=8)) [] => tobe;
            /// `dst = src` (at most 8 bytes, big-endian) as an integer.
            0x48 FromBe "frombe" (dst: Rd, src: Rs) [] => frombe;
            /// `dst = src` (integer) as `width` bytes of packed BCD.
            0x49 ToBcd "tobcd" (dst: Rd, src: Rs, width: U8(1..=10)) [] => tobcd;
            /// `dst = src` (packed BCD) as an integer.
            0x4A FromBcd "frombcd" (dst: Rd, src: Rs) [] => frombcd;
            /// `dst = count` copies of `byte`.
            0x4B Fill "fill" (dst: Rd, byte: U8, count: U16) [] => fill;
            // ---- APDUs ----
            /// Send the command APDU in `cmd`; `resp` = response data; the status word is kept for `sw`/`bsw`/`expect`.
            0x50 Apdu "apdu" (resp: Rd, cmd: Rs) [sends_apdu] => apdu;
            /// `dst` = APDU from a 4-byte header, data and Le (0 = no Le); short or extended as needed.
            0x51 MkApdu "mkapdu" (dst: Rd, header: Rs, data: Rs, le: U32(0..=65536)) [] => mk_apdu;
            /// `dst` = the last status word (integer).
            0x52 Sw "sw" (dst: Rd) [reads_sw] => sw;
            /// Branch if the last status word matches `pattern`.
            0x53 Bsw "bsw" (pattern: SW, target: L) [reads_sw] => bsw;
            /// Branch if the last status word does not match `pattern`.
            0x54 Bnsw "bnsw" (pattern: SW, target: L) [reads_sw] => bnsw;
            /// Fail with `code` unless the last status word matches `pattern`.
            0x55 Expect "expect" (pattern: SW, code: Code) [reads_sw] => expect;
            /// `dst` = the card's UID (empty when the transport does not know it).
            0x56 Uid "uid" (dst: Rd) [] => uid;
            /// Send the command APDU in `cmd` to SAM slot `sam` (a PSAM in the terminal), not to the card; `resp` = response data; the status word is kept like `apdu`'s.
            0x57 SamApdu "samapdu" (resp: Rd, cmd: Rs, sam: U8(0..=3)) [sends_apdu, to_sam] => sam_apdu;
            /// Send the command APDU in `cmd` to the card company (host-secured mode: the card company's security module, reached over the online protocol, answers like a remote SAM); `resp` = response data; the status word is kept like `apdu`'s. The SAM rules apply; the verifier bounds how many times it can run.
            0x58 HostApdu "hostapdu" (resp: Rd, cmd: Rs) [sends_apdu, to_sam, to_host] => host_apdu;
            // ---- cryptography over key slots ----
            /// Key slot `dst` = process (session) key of key slot `master` (`load` or `purchase`) over the 8 bytes in `data`; a `load-session` or `purchase-session` key.
            0x60 ProcessKey "pkey" (dst: Kd(Process), master: Ks(Load, Purchase), data: Rs) [] => process_key;
            /// `dst` = 4-byte PBOC MAC of `data` under key slot `key`.
            0x61 Mac "mac" (dst: Rd, key: Ks(LoadSession, PurchaseSession, Tac, Mac), data: Rs) [] => mac;
            /// Fail with `code` unless `mac` is the MAC of `data` under `key` (constant-time).
            0x62 CheckMac "chkmac" (key: Ks(LoadSession, PurchaseSession, Tac, Mac), data: Rs, mac: Rs, code: Code) [] => check_mac;
            /// Key slot `dst` = TAC key derived from key slot `src` (`tac`); a `tac` key.
            0x63 TacKey "tackey" (dst: Kd(Tac), src: Ks(Tac)) [] => tac_key;
            /// Key slot `dst` = `master` diversified by the 8 bytes in `data`; its usage follows the master's: `load-master` gives `load`, `purchase-master` `purchase`, `tac-master` `tac`.
            0x64 Diversify "divkey" (dst: Kd(Diversify), master: Ks(LoadMaster, PurchaseMaster, TacMaster), data: Rs) [] => diversify;
            /// `dst` = ECB encryption of `data` under key slot `key` (usage `enc`).
            0x65 Encrypt "enc" (dst: Rd, key: Ks(Encrypt), data: Rs) [] => encrypt;
            /// `dst` = ECB decryption of `data` under key slot `key` (usage `enc`).
            0x66 Decrypt "dec" (dst: Rd, key: Ks(Encrypt), data: Rs) [] => decrypt;
            /// `dst` = SM3 digest of `src`.
            0x67 Sm3 "sm3" (dst: Rd, src: Rs) [] => sm3;
            /// Send M1 key slot `key` (`m1-a`/`m1-b`) to the reader's volatile key store `number` (FF 82), only on a transport with a reader key store; the only way key bytes leave a slot.
            0x68 LoadReaderKey "ldrkey" (key: Ks(M1A, M1B), number: U8) [sends_apdu] => load_reader_key;
            /// `dst` = 1 if `a` and `b` are equal byte strings (constant-time), else 0.
            0x69 CtEq "cteq" (dst: Rd, a: Rs, b: Rs) [] => ct_eq;
        }
    };
}
pub(crate) use for_each_op;
