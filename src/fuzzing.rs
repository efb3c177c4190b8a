//! Fuzz-target bodies.
//!
//! Each function takes arbitrary bytes and must return without panicking, hanging or
//! using unbounded memory (security invariant 4). The cargo-fuzz targets in `fuzz/` are
//! one-line wrappers around these, and `tests/fuzz_corpus.rs` replays every committed
//! corpus and crash file through them on stable Rust, so a fixed crash stays fixed.
//!
//! The functions also assert round-trip properties where a format has them; a failed
//! assertion is a finding.

use crate::crypto::{KeyAlg, SecretKey};
use crate::script::{
    CommandScript, Constant, DataScript, Decl, Field, FieldValue, Header, ValueType,
};
use crate::transport::{ApduLayer, CardTransport, TransportError};
use crate::verify::VerifiedProgram;
use crate::vm::{Limits, NoTrace, Vm};
use alloc::vec;
use alloc::vec::Vec;

/// Command-script parser: parse, and if it parses, re-encoding gives the same bytes.
pub fn command_script(data: &[u8]) {
    if let Ok(script) = CommandScript::parse(data) {
        let again = script.encode();
        assert_eq!(
            again, data,
            "canonical command script did not re-encode to itself"
        );
        let _ = VerifiedProgram::verify(&script);
    }
}

/// Data-script parser: parse, and if it parses, re-encoding gives the same bytes.
pub fn data_script(data: &[u8]) {
    if let Ok(d) = DataScript::parse(data) {
        let again = d.encode();
        assert_eq!(
            again, data,
            "canonical data script did not re-encode to itself"
        );
    }
}

/// A value of type `ty` for synthesised data scripts.
pub fn sample_value(ty: &ValueType) -> Option<FieldValue> {
    Some(match *ty {
        ValueType::Int { .. } => FieldValue::Int(0x1234 & 0xFF),
        ValueType::Bytes => FieldValue::Bytes(vec![0x11; 6]),
        ValueType::BytesN { len } => FieldValue::Bytes(vec![0x22; usize::from(len).min(4096)]),
        ValueType::BcdDateTime => {
            FieldValue::BcdDateTime([0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00])
        }
        ValueType::Key { alg, usage } => {
            let bytes = [0x5Au8; 16];
            FieldValue::Key(SecretKey::new(alg, usage, &bytes[..alg.key_len()]).ok()?)
        }
    })
}

/// A data script that binds to `program`'s declared inputs.
pub fn synthesise_data(inputs: &[Decl]) -> Option<DataScript> {
    let fields = inputs
        .iter()
        .map(|d| {
            Some(Field {
                name: d.name.clone(),
                value: sample_value(&d.ty)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(DataScript { fields })
}

/// A deterministic card for fuzzing: answers every command with a few bytes derived from
/// it and a status word chosen by its INS, and tears on the 17th command.
#[derive(Debug, Default)]
pub struct EchoCard {
    count: u32,
}

impl CardTransport for EchoCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.count += 1;
        if self.count == 17 {
            return Err(TransportError::CardRemoved);
        }
        let ins = command.get(1).copied().unwrap_or(0);
        let n = usize::from(ins % 19).min(response.len().saturating_sub(2));
        for (i, b) in response[..n].iter_mut().enumerate() {
            *b = command.get(i).copied().unwrap_or(i as u8) ^ 0xA5;
        }
        let sw: [u8; 2] = match ins % 5 {
            0 => [0x61, 0x04],
            1 => [0x6C, 0x08],
            2 => [0x63, 0xC2],
            _ => [0x90, 0x00],
        };
        response[n..n + 2].copy_from_slice(&sw);
        Ok(n + 2)
    }
}

/// The fixed frame around fuzzed code in [`verify_and_run`].
fn template(code: &[u8]) -> CommandScript {
    CommandScript {
        header: Header {
            city: 1,
            script_id: 1,
            version: 1,
            registers: 16,
            key_slots: 4,
        },
        constants: vec![
            Constant::Bytes(vec![0x80, 0x5C, 0x00, 0x02, 0x04]),
            Constant::Int(0x1234),
            Constant::Bytes(vec![0x80, 0x50, 0x00, 0x02]),
        ],
        inputs: vec![
            Decl {
                name: "amount".into(),
                ty: ValueType::Int { bits: 32 },
            },
            Decl {
                name: "terminal".into(),
                ty: ValueType::BytesN { len: 6 },
            },
            Decl {
                name: "dlk".into(),
                ty: ValueType::Key {
                    alg: KeyAlg::Des3,
                    usage: crate::crypto::KeyUsage::Load,
                },
            },
            Decl {
                name: "m1a".into(),
                ty: ValueType::Key {
                    alg: KeyAlg::M1,
                    usage: crate::crypto::KeyUsage::M1A,
                },
            },
        ],
        outputs: vec![
            Decl {
                name: "out_int".into(),
                ty: ValueType::Int { bits: 32 },
            },
            Decl {
                name: "out_bytes".into(),
                ty: ValueType::Bytes,
            },
        ],
        code: code.to_vec(),
        debug: None,
    }
}

/// Verify-then-run: a whole command script (input starting with `CVMS`) or bare code in
/// a fixed frame; whatever verifies runs, fuel-bounded, against [`EchoCard`].
pub fn verify_and_run(data: &[u8]) {
    let script = if data.starts_with(b"CVMS") {
        match CommandScript::parse(data) {
            Ok(s) => s,
            Err(_) => return,
        }
    } else {
        template(data)
    };
    run_script(&script, EchoCard::default());
}

/// Verifies `script`, synthesises a data script for it, and runs it on `card` with
/// small limits. Returns whether it verified.
pub fn run_script<T: CardTransport>(script: &CommandScript, card: T) -> bool {
    let Ok(program) = VerifiedProgram::verify(script) else {
        return false;
    };
    let Some(data) = synthesise_data(program.inputs()) else {
        return true;
    };
    let Ok(binding) = program.bind(&data) else {
        return true;
    };
    let Ok(bound) = program.with_data(&data, &binding) else {
        return true;
    };
    let limits = Limits {
        fuel: 10_000,
        max_apdus: 32,
        max_bytes: 2048,
        max_memory: 16 * 1024,
    };
    let mut layer = ApduLayer::new(card);
    let report = Vm::new(limits).run(bound, &mut layer, &mut NoTrace);
    assert!(report.fuel_used <= limits.fuel, "fuel limit overrun");
    assert!(report.apdu_count <= limits.max_apdus, "APDU limit overrun");
    assert!(
        report.peak_memory <= limits.max_memory,
        "memory limit overrun"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_runs_simple_code() {
        // ldc r0, #0 ; apdu r1, r0 ; halt
        let code = [0x21, 0x00, 0x00, 0x00, 0x50, 0x01, 0x00, 0x01];
        assert!(run_script(&template(&code), EchoCard::default()));
        assert!(!run_script(&template(&[0x21]), EchoCard::default()));
    }

    #[test]
    fn round_trip_assertions_hold_on_valid_input() {
        let s = template(&[0x01]);
        command_script(&s.encode());
        let d = synthesise_data(&s.inputs).unwrap();
        data_script(&d.encode());
    }
}
