//! VM and verifier tests over hand-built programs (the assembler has its own tests).

use super::*;
use crate::crypto::{KeyAlg, KeyUsage, SecretKey};
use crate::isa::{Instr, Operand, SwPattern};
use crate::script::{
    CommandScript, Constant, DataScript, Decl, Field, FieldValue, Header, ValueType,
};
use crate::verify::{VerifiedProgram, VerifyErrorKind};
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

/// Encodes `instrs`, whose targets are instruction indices, into code with byte targets.
pub(crate) fn code_of(instrs: &[Instr]) -> Vec<u8> {
    let mut offsets = Vec::new();
    let mut at = 0u32;
    for i in instrs {
        offsets.push(at);
        at += i.opcode().size() as u32;
    }
    let mut code = Vec::new();
    for i in instrs {
        let ops: Vec<Operand> = i
            .operands()
            .as_slice()
            .iter()
            .map(|o| match *o {
                Operand::Target(t) => {
                    Operand::Target(offsets.get(t as usize).copied().unwrap_or(at + 1000))
                }
                other => other,
            })
            .collect();
        Instr::from_operands(i.opcode(), &ops)
            .unwrap()
            .encode(&mut code);
    }
    code
}

fn script(
    instrs: &[Instr],
    constants: Vec<Constant>,
    inputs: Vec<Decl>,
    outputs: Vec<Decl>,
) -> CommandScript {
    CommandScript {
        header: Header {
            city: 731,
            script_id: 1,
            version: 1,
            registers: 16,
            key_slots: 4,
        },
        constants,
        inputs,
        outputs,
        code: code_of(instrs),
        debug: None,
        unsupported_debug: None,
    }
}

fn decl(name: &str, ty: ValueType) -> Decl {
    Decl {
        name: name.into(),
        ty,
    }
}

/// A card that answers each command from a closure and records every command.
pub(crate) struct SpyCard<F> {
    pub commands: Vec<Vec<u8>>,
    pub answer: F,
}

impl<F: FnMut(&[u8]) -> Result<Vec<u8>, TransportError>> CardTransport for SpyCard<F> {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.commands.push(command.to_vec());
        let r = (self.answer)(command)?;
        crate::transport::copy_response(&r, response)
    }
}

/// `T` behind a reader that declares a reader key store (a PC/SC Part 3 reader).
pub(crate) struct KeyStoreReader<T>(pub T);

impl<T: CardTransport> CardTransport for KeyStoreReader<T> {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.0.transmit(command, response)
    }
    fn reader_key_store(&self) -> bool {
        true
    }
}

fn ok_card() -> SpyCard<impl FnMut(&[u8]) -> Result<Vec<u8>, TransportError>> {
    SpyCard {
        commands: Vec::new(),
        answer: |_: &[u8]| Ok(vec![0x90, 0x00]),
    }
}

fn run_with<T: CardTransport>(
    s: &CommandScript,
    data: &DataScript,
    card: T,
    limits: Limits,
) -> (RunReport, T) {
    let program = VerifiedProgram::verify(s).expect("verifies");
    let binding = program.bind(data).expect("binds");
    let bound = program.with_data(data, &binding).unwrap();
    let mut layer = ApduLayer::new(card);
    let report = Vm::new(limits).run(bound, &mut layer, &mut NoTrace);
    (report, layer.into_inner())
}

fn run(s: &CommandScript) -> RunReport {
    run_with(s, &DataScript::default(), ok_card(), Limits::default()).0
}

fn fault_kind(r: &RunReport) -> Option<&VmErrorKind> {
    match &r.outcome {
        Outcome::Failed(Failure::Fault(e)) | Outcome::Unknown(Failure::Fault(e)) => Some(&e.kind),
        _ => None,
    }
}

#[test]
fn arithmetic_and_outputs() {
    let s = script(
        &[
            Instr::Ldi { dst: 0, value: 40 },
            Instr::Ldi { dst: 1, value: 2 },
            Instr::Add { dst: 2, a: 0, b: 1 },
            Instr::ToBe {
                dst: 3,
                src: 2,
                width: 4,
            },
            Instr::Out { output: 0, src: 2 },
            Instr::Out { output: 1, src: 3 },
            Instr::Halt {},
        ],
        vec![],
        vec![],
        vec![
            decl("sum", ValueType::Int { bits: 32 }),
            decl("sum_be", ValueType::BytesN { len: 4 }),
        ],
    );
    let r = run(&s);
    assert_eq!(r.outcome, Outcome::Committed);
    assert_eq!(
        r.outputs.to_vec(),
        vec![
            ("sum".into(), OutputValue::Int(42)),
            ("sum_be".into(), OutputValue::Bytes(vec![0, 0, 0, 42]))
        ]
    );
}

#[test]
fn overflow_is_a_typed_fault_with_offset() {
    let s = script(
        &[
            Instr::Ldi { dst: 0, value: 1 },
            Instr::Ldi { dst: 1, value: 2 },
            Instr::Sub { dst: 2, a: 0, b: 1 },
            Instr::Halt {},
        ],
        vec![],
        vec![],
        vec![],
    );
    match run(&s).outcome {
        Outcome::Failed(Failure::Fault(VmError {
            offset,
            kind: VmErrorKind::Overflow,
        })) => assert_eq!(offset, 12),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fuel_runs_out_on_an_endless_loop() {
    let s = script(
        &[Instr::Nop {}, Instr::Jmp { target: 0 }],
        vec![],
        vec![],
        vec![],
    );
    let limits = Limits {
        fuel: 1000,
        ..Limits::default()
    };
    let (r, _) = run_with(&s, &DataScript::default(), ok_card(), limits);
    assert_eq!(fault_kind(&r), Some(&VmErrorKind::OutOfFuel(1000)));
    assert_eq!(r.fuel_used, 1000);
}

#[test]
fn memory_limits_stop_a_doubling_string() {
    let s = script(
        &[
            Instr::Fill {
                dst: 0,
                byte: 0xAA,
                count: 16,
            },
            Instr::Cat { dst: 0, a: 0, b: 0 },
            Instr::Jmp { target: 1 },
        ],
        vec![],
        vec![],
        vec![],
    );
    let kind = fault_kind(&run(&s)).cloned();
    assert!(
        matches!(
            kind,
            Some(VmErrorKind::StringTooLong {
                len: 8192,
                limit: 4096
            })
        ),
        "{kind:?}"
    );
    let limits = Limits {
        max_memory: 1000,
        ..Limits::default()
    };
    let (r, _) = run_with(&s, &DataScript::default(), ok_card(), limits);
    assert!(matches!(
        fault_kind(&r),
        Some(VmErrorKind::OutOfMemory {
            used: 1024,
            limit: 1000
        })
    ));
}

#[test]
fn type_errors_name_the_register() {
    let s = script(
        &[
            Instr::Fill {
                dst: 3,
                byte: 0,
                count: 1,
            },
            Instr::Addi {
                dst: 0,
                a: 3,
                value: 1,
            },
            Instr::Halt {},
        ],
        vec![],
        vec![],
        vec![],
    );
    assert!(matches!(
        fault_kind(&run(&s)),
        Some(VmErrorKind::TypeMismatch { reg: 3, .. })
    ));
    let s = script(
        &[
            Instr::Addi {
                dst: 0,
                a: 5,
                value: 1,
            },
            Instr::Halt {},
        ],
        vec![],
        vec![],
        vec![],
    );
    assert_eq!(fault_kind(&run(&s)), Some(&VmErrorKind::Uninitialized(5)));
}

#[test]
fn apdu_status_words_and_patterns() {
    // GET BALANCE; branch on 63Cx; fail with the code for anything but 9000.
    let s = script(
        &[
            Instr::Ldc { dst: 0, index: 0 },
            Instr::Apdu { resp: 1, cmd: 0 },
            Instr::Bsw {
                pattern: SwPattern::parse("63Cx").unwrap(),
                target: 5,
            },
            Instr::Expect {
                pattern: SwPattern::exact(0x9000),
                code: 7,
            },
            Instr::Halt {},
            Instr::Fail { code: 0x63 },
        ],
        vec![Constant::Bytes(vec![0x80, 0x5C, 0x00, 0x02, 0x04])],
        vec![],
        vec![],
    );
    let card = |sw: [u8; 2]| SpyCard {
        commands: vec![],
        answer: move |_: &[u8]| Ok(vec![0, 0, 1, 0, sw[0], sw[1]]),
    };
    let (r, c) = run_with(
        &s,
        &DataScript::default(),
        card([0x90, 0x00]),
        Limits::default(),
    );
    assert_eq!(r.outcome, Outcome::Committed);
    assert_eq!(c.commands, vec![vec![0x80, 0x5C, 0x00, 0x02, 0x04]]);
    let (r, _) = run_with(
        &s,
        &DataScript::default(),
        card([0x63, 0xC2]),
        Limits::default(),
    );
    assert!(matches!(
        r.outcome,
        Outcome::Failed(Failure::Script { code: 0x63, .. })
    ));
    let (r, _) = run_with(
        &s,
        &DataScript::default(),
        card([0x6A, 0x82]),
        Limits::default(),
    );
    assert!(matches!(
        r.outcome,
        Outcome::Failed(Failure::Script { code: 7, .. })
    ));
    assert_eq!(
        r.last_exchange,
        Some(LastExchange {
            slot: Slot::Card,
            header: [0x80, 0x5C, 0x00, 0x02],
            sw: Some(0x6A82)
        })
    );
}

#[test]
fn get_response_is_followed() {
    let s = script(
        &[
            Instr::Ldc { dst: 0, index: 0 },
            Instr::Apdu { resp: 1, cmd: 0 },
            Instr::Out { output: 0, src: 1 },
            Instr::Halt {},
        ],
        vec![Constant::Bytes(vec![0x00, 0xB0, 0x95, 0x00, 0x00])],
        vec![],
        vec![decl("data", ValueType::Bytes)],
    );
    let card = SpyCard {
        commands: vec![],
        answer: |c: &[u8]| {
            Ok(if c[1] == 0xC0 {
                vec![1, 2, 3, 0x90, 0x00]
            } else {
                vec![0x61, 0x03]
            })
        },
    };
    let (r, c) = run_with(&s, &DataScript::default(), card, Limits::default());
    assert_eq!(
        r.outputs.to_vec(),
        vec![("data".into(), OutputValue::Bytes(vec![1, 2, 3]))]
    );
    assert_eq!(c.commands[1], vec![0x00, 0xC0, 0x00, 0x00, 0x03]);
}

#[test]
fn tearing_before_the_commit_point_fails_and_after_it_is_unknown() {
    let prog = |commit_first: bool| {
        let mut v = vec![Instr::Ldc { dst: 0, index: 0 }];
        if commit_first {
            v.push(Instr::CommitPoint {});
        }
        v.extend([Instr::Apdu { resp: 1, cmd: 0 }, Instr::Halt {}]);
        script(
            &v,
            vec![Constant::Bytes(vec![
                0x80, 0x52, 0x00, 0x00, 0x0B, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x04,
            ])],
            vec![],
            vec![],
        )
    };
    let torn = || SpyCard {
        commands: vec![],
        answer: |_: &[u8]| Err(TransportError::CardRemoved),
    };
    let (r, _) = run_with(
        &prog(false),
        &DataScript::default(),
        torn(),
        Limits::default(),
    );
    assert!(matches!(
        r.outcome,
        Outcome::Failed(Failure::Transport {
            error: TransportError::CardRemoved,
            ..
        })
    ));
    let (r, _) = run_with(
        &prog(true),
        &DataScript::default(),
        torn(),
        Limits::default(),
    );
    assert!(matches!(
        r.outcome,
        Outcome::Unknown(Failure::Transport {
            error: TransportError::CardRemoved,
            offset: 5,
            slot: crate::transport::Slot::Card,
        })
    ));
    assert_eq!(
        r.last_exchange,
        Some(LastExchange {
            slot: Slot::Card,
            header: [0x80, 0x52, 0x00, 0x00],
            sw: None
        })
    );
}

const DLK: [u8; 16] = [
    0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01, 0x3F, 0x01,
];

/// The published PBOC load example (reference/epurse.md): MAC1 6C394D64 is checked by
/// the script against the card's answer, and MAC2 goes out in CREDIT FOR LOAD.
fn load_program() -> CommandScript {
    script(
        &[
            Instr::Ldkey { slot: 0, input: 0 },
            Instr::Ldin { dst: 0, input: 1 }, // amount
            Instr::ToBe {
                dst: 1,
                src: 0,
                width: 4,
            },
            Instr::Ldc { dst: 2, index: 0 }, // 01 (key index)
            Instr::Cat { dst: 3, a: 2, b: 1 },
            Instr::Ldin { dst: 4, input: 2 },  // terminal
            Instr::Cat { dst: 3, a: 3, b: 4 }, // data of INITIALIZE FOR LOAD
            Instr::Ldc { dst: 5, index: 1 },   // 80 50 00 02
            Instr::MkApdu {
                dst: 6,
                header: 5,
                data: 3,
                le: 0x10,
            },
            Instr::Apdu { resp: 7, cmd: 6 },
            Instr::Expect {
                pattern: SwPattern::exact(0x9000),
                code: 1,
            },
            Instr::Slice {
                dst: 8,
                src: 7,
                offset: 0,
                len: 4,
            }, // balance
            Instr::Slice {
                dst: 9,
                src: 7,
                offset: 4,
                len: 2,
            }, // ATC
            Instr::Slice {
                dst: 10,
                src: 7,
                offset: 8,
                len: 4,
            }, // random
            Instr::Slice {
                dst: 11,
                src: 7,
                offset: 12,
                len: 4,
            }, // MAC1
            Instr::Cat {
                dst: 12,
                a: 10,
                b: 9,
            },
            Instr::Ldc { dst: 13, index: 2 }, // 8000
            Instr::Cat {
                dst: 12,
                a: 12,
                b: 13,
            },
            Instr::ProcessKey {
                dst: 1,
                master: 0,
                data: 12,
            },
            Instr::Ldc { dst: 13, index: 3 }, // 02 (type)
            Instr::Cat {
                dst: 12,
                a: 8,
                b: 1,
            },
            Instr::Cat {
                dst: 12,
                a: 12,
                b: 13,
            },
            Instr::Cat {
                dst: 12,
                a: 12,
                b: 4,
            },
            Instr::CheckMac {
                key: 1,
                data: 12,
                mac: 11,
                code: 2,
            },
            Instr::Cat {
                dst: 12,
                a: 1,
                b: 13,
            },
            Instr::Cat {
                dst: 12,
                a: 12,
                b: 4,
            },
            Instr::Ldin { dst: 14, input: 3 }, // now
            Instr::Cat {
                dst: 12,
                a: 12,
                b: 14,
            },
            Instr::Mac {
                dst: 15,
                key: 1,
                data: 12,
            },
            Instr::Cat {
                dst: 14,
                a: 14,
                b: 15,
            },
            Instr::Ldc { dst: 5, index: 4 }, // 80 52 00 00
            Instr::MkApdu {
                dst: 6,
                header: 5,
                data: 14,
                le: 4,
            },
            Instr::CommitPoint {},
            Instr::Apdu { resp: 7, cmd: 6 },
            Instr::Expect {
                pattern: SwPattern::exact(0x9000),
                code: 3,
            },
            Instr::Out { output: 0, src: 15 },
            Instr::Halt {},
        ],
        vec![
            Constant::Bytes(vec![0x01]),
            Constant::Bytes(vec![0x80, 0x50, 0x00, 0x02]),
            Constant::Bytes(vec![0x80, 0x00]),
            Constant::Bytes(vec![0x02]),
            Constant::Bytes(vec![0x80, 0x52, 0x00, 0x00]),
        ],
        vec![
            decl(
                "dlk",
                ValueType::Key {
                    alg: KeyAlg::Des3,
                    usage: KeyUsage::Load,
                },
            ),
            decl("amount", ValueType::Int { bits: 32 }),
            decl("terminal", ValueType::BytesN { len: 6 }),
            decl("now", ValueType::BcdDateTime),
        ],
        vec![decl("mac2", ValueType::BytesN { len: 4 })],
    )
}

fn load_data() -> DataScript {
    DataScript {
        fields: vec![
            Field {
                name: "dlk".into(),
                value: FieldValue::Key(SecretKey::new(KeyAlg::Des3, KeyUsage::Load, &DLK).unwrap()),
            },
            Field {
                name: "amount".into(),
                value: FieldValue::Int(0x1234),
            },
            Field {
                name: "terminal".into(),
                value: FieldValue::Bytes(vec![0, 0, 0, 0, 0, 1]),
            },
            Field {
                name: "now".into(),
                value: FieldValue::BcdDateTime([0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00]),
            },
        ],
    }
}

/// Answers INITIALIZE FOR LOAD with the published trace and CREDIT with a TAC.
fn published_card() -> SpyCard<impl FnMut(&[u8]) -> Result<Vec<u8>, TransportError>> {
    SpyCard {
        commands: vec![],
        answer: |c: &[u8]| {
            Ok(match c[1] {
                0x50 => vec![
                    0, 0, 0, 0, 0, 0, 0x00, 0x01, 0xF9, 0xCA, 0xBA, 0x91, 0x6C, 0x39, 0x4D, 0x64,
                    0x90, 0x00,
                ],
                _ => vec![0xAA, 0xBB, 0xCC, 0xDD, 0x90, 0x00],
            })
        },
    }
}

#[test]
fn published_load_vector_runs_and_checks_mac1() {
    let (r, card) = run_with(
        &load_program(),
        &load_data(),
        published_card(),
        Limits::default(),
    );
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    assert_eq!(
        card.commands[0],
        vec![
            0x80, 0x50, 0x00, 0x02, 0x0B, 0x01, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 1, 0x10
        ]
    );
    assert_eq!(card.commands[1].len(), 5 + 11 + 1);
    assert_eq!(r.apdu_count, 2);
    // A wrong MAC1 from the card fails with the script's code before anything commits.
    let bad = SpyCard {
        commands: vec![],
        answer: |_: &[u8]| {
            Ok(vec![
                0, 0, 0, 0, 0, 0, 0x00, 0x01, 0xF9, 0xCA, 0xBA, 0x91, 0x6C, 0x39, 0x4D, 0x65, 0x90,
                0x00,
            ])
        },
    };
    let (r, card) = run_with(&load_program(), &load_data(), bad, Limits::default());
    assert!(
        matches!(r.outcome, Outcome::Failed(Failure::Script { code: 2, .. })),
        "{r:?}"
    );
    assert_eq!(card.commands.len(), 1);
}

#[test]
fn key_bytes_never_reach_an_apdu_a_register_or_the_report() {
    let (r, card) = run_with(
        &load_program(),
        &load_data(),
        published_card(),
        Limits::default(),
    );
    let session = [0x03, 0x01, 0x5B, 0xEA, 0x34, 0x7E, 0xA2, 0x31];
    for needle in [&DLK[..], &DLK[..8], &DLK[8..], &session[..]] {
        for c in &card.commands {
            assert!(
                !c.windows(needle.len()).any(|w| w == needle),
                "key material in APDU {c:02X?}"
            );
        }
        let text = alloc::format!("{r:?}");
        assert!(
            !text.contains(&alloc::format!("{needle:?}")[1..20]),
            "key material in report"
        );
    }
}

#[test]
fn ldrkey_is_redacted_in_the_trace() {
    #[derive(Default)]
    struct Rec(Vec<(Vec<u8>, bool)>);
    impl Tracer for Rec {
        fn apdu(&mut self, e: &ApduEvent<'_>) {
            self.0.push((e.command.to_vec(), e.redacted));
        }
    }
    let key = [0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5];
    let s = script(
        &[
            Instr::Ldkey { slot: 0, input: 0 },
            Instr::LoadReaderKey { key: 0, number: 1 },
            Instr::Halt {},
        ],
        vec![],
        vec![decl(
            "ka",
            ValueType::Key {
                alg: KeyAlg::M1,
                usage: KeyUsage::M1A,
            },
        )],
        vec![],
    );
    let data = DataScript {
        fields: vec![Field {
            name: "ka".into(),
            value: FieldValue::Key(SecretKey::new(KeyAlg::M1, KeyUsage::M1A, &key).unwrap()),
        }],
    };
    let program = VerifiedProgram::verify(&s).unwrap();
    let binding = program.bind(&data).unwrap();
    let mut layer = ApduLayer::new(KeyStoreReader(ok_card()));
    let mut rec = Rec::default();
    let r = Vm::default().run(
        program.with_data(&data, &binding).unwrap(),
        &mut layer,
        &mut rec,
    );
    assert_eq!(r.outcome, Outcome::Committed);
    // The reader got the key (that is the point of ldrkey)…
    assert_eq!(
        layer.transport().0.commands[0],
        [&[0xFF, 0x82, 0x00, 0x01, 0x06][..], &key[..]].concat()
    );
    // …the trace did not.
    assert_eq!(rec.0, vec![(vec![0xFF, 0x82, 0x00, 0x01, 0x06], true)]);

    // Without a reader key store (a CPU card, a replay, a fake answering 9000 to
    // everything) the key would go to whatever answers: a fault, and nothing is sent.
    let mut layer = ApduLayer::new(ok_card());
    let mut rec = Rec::default();
    let r = Vm::default().run(
        program.with_data(&data, &binding).unwrap(),
        &mut layer,
        &mut rec,
    );
    assert!(
        matches!(fault_kind(&r), Some(VmErrorKind::NoReaderKeyStore)),
        "{r:?}"
    );
    assert!(layer.transport().commands.is_empty());
    assert!(rec.0.is_empty());
    assert_eq!(r.apdu_count, 0);
    let msg = alloc::format!("{}", VmErrorKind::NoReaderKeyStore);
    assert!(msg.contains("ldrkey") && msg.contains("key store"), "{msg}");
}

#[test]
fn ldrkey_refuses_keys_that_are_not_m1_sector_keys() {
    // A DES key labelled m1-a and an M1 key labelled mac: neither goes to the reader.
    for (alg, usage, bytes) in [
        (KeyAlg::Des, KeyUsage::M1A, &[0x11u8; 8][..]),
        (KeyAlg::M1, KeyUsage::Mac, &[0x22u8; 6][..]),
    ] {
        let s = script(
            &[
                Instr::Ldkey { slot: 0, input: 0 },
                Instr::LoadReaderKey { key: 0, number: 0 },
                Instr::Halt {},
            ],
            vec![],
            vec![decl("k", ValueType::Key { alg, usage })],
            vec![],
        );
        let data = DataScript {
            fields: vec![Field {
                name: "k".into(),
                value: FieldValue::Key(SecretKey::new(alg, usage, bytes).unwrap()),
            }],
        };
        let (r, card) = run_with(&s, &data, KeyStoreReader(ok_card()), Limits::default());
        assert!(
            matches!(fault_kind(&r), Some(VmErrorKind::KeyUsage { slot: 0, .. })),
            "{r:?}"
        );
        assert!(card.0.commands.is_empty());
    }
}

#[test]
fn output_slots_count_toward_the_memory_limit() {
    // 1024 outputs of 4 KiB under a 64 KiB limit: 4 MiB of receipt if outputs were free.
    let n = 1024u16;
    let mut instrs = vec![Instr::Fill {
        dst: 0,
        byte: 0x5A,
        count: 4096,
    }];
    instrs.extend((0..n).map(|o| Instr::Out { output: o, src: 0 }));
    instrs.push(Instr::Halt {});
    let outputs = (0..n)
        .map(|i| decl(&alloc::format!("o{i}"), ValueType::Bytes))
        .collect();
    let s = script(&instrs, vec![], vec![], outputs);
    let limits = Limits::default();
    assert_eq!((limits.max_bytes, limits.max_memory), (4096, 64 * 1024));
    let (r, _) = run_with(&s, &DataScript::default(), ok_card(), limits);
    match fault_kind(&r) {
        Some(VmErrorKind::OutOfMemory { used, limit }) => {
            assert_eq!(*limit, 64 * 1024);
            assert!(*used > *limit);
        }
        other => panic!(
            "expected an out-of-memory fault, got {other:?}: {:?}",
            r.outcome
        ),
    }
    // The register (4 KiB) and 15 outputs fit; the 16th is refused.
    assert_eq!(r.outputs.len(), 15);
    let held: usize = r
        .outputs
        .iter()
        .map(|(_, v)| match v {
            OutputRef::Bytes(b) => b.len(),
            OutputRef::Int(_) => 0,
        })
        .sum();
    assert!(held + 4096 <= 64 * 1024);
    assert!(r.peak_memory <= 64 * 1024);

    // Rewriting one output replaces its bytes in the account instead of adding them.
    let mut instrs = vec![Instr::Fill {
        dst: 0,
        byte: 0x5A,
        count: 4096,
    }];
    instrs.extend((0..100).map(|_| Instr::Out { output: 0, src: 0 }));
    instrs.push(Instr::Ldi { dst: 0, value: 1 });
    instrs.push(Instr::Out { output: 1, src: 0 });
    instrs.push(Instr::Halt {});
    let s = script(
        &instrs,
        vec![],
        vec![],
        vec![
            decl("a", ValueType::Bytes),
            decl("b", ValueType::Int { bits: 8 }),
        ],
    );
    let (r, _) = run_with(&s, &DataScript::default(), ok_card(), limits);
    assert_eq!(r.outcome, Outcome::Committed, "{r:?}");
    assert_eq!(r.peak_memory, 2 * 4096);
}

#[test]
fn key_usage_is_enforced() {
    // A load key used directly as a MAC key (would let a script MAC with the master key).
    let s = script(
        &[
            Instr::Ldkey { slot: 0, input: 0 },
            Instr::Fill {
                dst: 0,
                byte: 0,
                count: 8,
            },
            Instr::Mac {
                dst: 1,
                key: 0,
                data: 0,
            },
            Instr::Halt {},
        ],
        vec![],
        vec![decl(
            "dlk",
            ValueType::Key {
                alg: KeyAlg::Des3,
                usage: KeyUsage::Load,
            },
        )],
        vec![],
    );
    let data = DataScript {
        fields: vec![load_data().fields[0].clone()],
    };
    let (r, _) = run_with(&s, &data, ok_card(), Limits::default());
    assert!(
        matches!(
            fault_kind(&r),
            Some(VmErrorKind::KeyUsage {
                slot: 0,
                op: "mac",
                ..
            })
        ),
        "{r:?}"
    );
}

fn verify_err(instrs: &[Instr], inputs: Vec<Decl>) -> VerifyErrorKind {
    VerifiedProgram::verify(&script(instrs, vec![], inputs, vec![]))
        .unwrap_err()
        .kind
}

#[test]
fn verifier_rejections() {
    assert_eq!(verify_err(&[], vec![]), VerifyErrorKind::EmptyCode);
    assert_eq!(
        verify_err(&[Instr::Nop {}], vec![]),
        VerifyErrorKind::FallsOffEnd
    );
    assert!(matches!(
        verify_err(&[Instr::Jmp { target: 9 }], vec![]),
        VerifyErrorKind::BadTarget(_)
    ));
    assert_eq!(
        verify_err(&[Instr::Ldi { dst: 16, value: 0 }, Instr::Halt {}], vec![]),
        VerifyErrorKind::RegisterOutOfRange { reg: 16, count: 16 }
    );
    assert_eq!(
        verify_err(&[Instr::Ldc { dst: 0, index: 0 }, Instr::Halt {}], vec![]),
        VerifyErrorKind::ConstantOutOfRange { index: 0, count: 0 }
    );
    let key = vec![decl(
        "dlk",
        ValueType::Key {
            alg: KeyAlg::Des3,
            usage: KeyUsage::Load,
        },
    )];
    assert_eq!(
        verify_err(&[Instr::Ldin { dst: 0, input: 0 }, Instr::Halt {}], key),
        VerifyErrorKind::KeyIntoRegister("dlk".into())
    );
    assert_eq!(
        verify_err(&[Instr::Ret {}], vec![]),
        VerifyErrorKind::ReturnOutsideRoutine
    );
    assert_eq!(
        verify_err(
            &[
                Instr::Call { target: 2 },
                Instr::Halt {},
                Instr::Call { target: 2 },
                Instr::Ret {}
            ],
            vec![]
        ),
        VerifyErrorKind::RecursiveCall
    );
    assert_eq!(
        verify_err(
            &[
                Instr::ToBe {
                    dst: 0,
                    src: 0,
                    width: 9
                },
                Instr::Halt {}
            ],
            vec![]
        ),
        VerifyErrorKind::BadImmediate {
            what: "tobe width (1..=8)",
            value: 9
        }
    );
    // A jump into the middle of an instruction.
    let mut s = script(
        &[Instr::Ldi { dst: 0, value: 0 }, Instr::Jmp { target: 0 }],
        vec![],
        vec![],
        vec![],
    );
    s.code[7..11].copy_from_slice(&1u32.to_be_bytes());
    let e = VerifiedProgram::verify(&s).unwrap_err();
    assert_eq!((e.offset, e.kind), (6, VerifyErrorKind::BadTarget(1)));
}

#[test]
fn call_depth_is_measured() {
    // main -> a -> b
    let s = script(
        &[
            Instr::Call { target: 2 },
            Instr::Halt {},
            Instr::Call { target: 4 },
            Instr::Ret {},
            Instr::Ret {},
        ],
        vec![],
        vec![],
        vec![],
    );
    assert_eq!(VerifiedProgram::verify(&s).unwrap().max_call_depth(), 2);
    assert_eq!(run(&s).outcome, Outcome::Committed);
}

#[test]
fn binding_checks_names_and_types() {
    let p = VerifiedProgram::verify(&load_program()).unwrap();
    let mut d = load_data();
    d.fields.retain(|f| f.name != "terminal");
    assert_eq!(
        p.bind(&d),
        Err(crate::verify::BindError::MissingInput("terminal".into()))
    );
    let mut d = load_data();
    d.fields[1].value = FieldValue::Int(1 << 40);
    assert!(matches!(
        p.bind(&d),
        Err(crate::verify::BindError::TypeMismatch { .. })
    ));
}

fn small_operand(kind: crate::isa::OperandKind, n: u32) -> BoxedStrategy<Operand> {
    use crate::isa::OperandKind as K;
    match kind {
        K::Reg => (0u8..6).prop_map(Operand::Reg).boxed(),
        K::Key => (0u8..4).prop_map(Operand::Key).boxed(),
        K::Const => (0u16..2).prop_map(Operand::Const).boxed(),
        K::Input => (0u16..4).prop_map(Operand::Input).boxed(),
        K::Output => Just(Operand::Output(0)).boxed(),
        K::Target => (0..n).prop_map(Operand::Target).boxed(),
        K::U8 => (1u8..10).prop_map(Operand::U8).boxed(),
        K::U16 => (0u16..20).prop_map(Operand::U16).boxed(),
        K::U32 => (0u32..300).prop_map(Operand::U32).boxed(),
        K::Sw => (any::<u16>(), any::<u16>())
            .prop_map(|(v, m)| {
                Operand::Sw(SwPattern {
                    value: v & m,
                    mask: m,
                })
            })
            .boxed(),
    }
}

fn any_program() -> impl Strategy<Value = Vec<Instr>> {
    (1u32..24).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::sample::select(crate::isa::ALL_OPCODES).prop_flat_map(move |op| {
                let s: Vec<_> = op
                    .operand_kinds()
                    .iter()
                    .map(|&k| small_operand(k, n + 1))
                    .collect();
                s.prop_map(move |ops| Instr::from_operands(op, &ops).unwrap())
            }),
            n as usize,
        )
        .prop_map(|mut v| {
            v.push(Instr::Halt {});
            v
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    /// Soundness: whatever verifies runs without panicking and stops within its fuel.
    #[test]
    fn verified_programs_run_safely(instrs in any_program(), sw in any::<u16>(), resp in proptest::collection::vec(any::<u8>(), 0..20)) {
        let s = script(&instrs, vec![Constant::Bytes(vec![0x80, 0x5C, 0x00, 0x02, 0x04]), Constant::Int(7)], load_program().inputs, vec![decl("o", ValueType::Bytes)]);
        if let Ok(program) = VerifiedProgram::verify(&s) {
            let data = load_data();
            let binding = program.bind(&data).unwrap();
            let mut answer = resp.clone();
            answer.extend_from_slice(&sw.to_be_bytes());
            let card = SpyCard { commands: vec![], answer: move |_: &[u8]| Ok(answer.clone()) };
            let mut layer = ApduLayer::new(card);
            let limits = Limits { fuel: 500, ..Limits::default() };
            let r = Vm::new(limits).run(program.with_data(&data, &binding).unwrap(), &mut layer, &mut NoTrace);
            prop_assert!(r.fuel_used <= 500);
        }
    }
}

/// One byte-string operation of [`byte_ops_match_a_model`]: registers 0..4.
#[derive(Debug, Clone)]
enum ByteOp {
    Cat(u8, u8, u8),
    Slice(u8, u8, u16, u16),
    Mov(u8, u8),
    Ldc(u8, u16),
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    let r = || 0u8..4;
    prop_oneof![
        (r(), r(), r()).prop_map(|(d, a, b)| ByteOp::Cat(d, a, b)),
        (r(), r(), 0u16..6, 0u16..6).prop_map(|(d, s, o, n)| ByteOp::Slice(d, s, o, n)),
        (r(), r()).prop_map(|(d, s)| ByteOp::Mov(d, s)),
        (r(), 0u16..3).prop_map(|(d, c)| ByteOp::Ldc(d, c)),
    ]
}

proptest! {
    /// Byte-string instructions give the same registers as a plain model, whichever
    /// registers alias (in-place append, in-place slice, self-moves), and the memory
    /// account (peak register and output bytes) matches the model's.
    #[test]
    fn byte_ops_match_a_model(ops in proptest::collection::vec(byte_op(), 0..24)) {
        let constants: Vec<Vec<u8>> = vec![vec![1, 2], vec![3], vec![4, 5, 6, 7]];
        let mut instrs: Vec<Instr> = (0..4u8).map(|r| Instr::Ldc { dst: r, index: u16::from(r % 3) }).collect();
        let mut model: Vec<Vec<u8>> = (0..4).map(|r| constants[r % 3].clone()).collect();
        let mut peak = model.iter().map(Vec::len).sum::<usize>();
        let mut faulted = false;
        for op in &ops {
            instrs.push(match *op {
                ByteOp::Cat(dst, a, b) => Instr::Cat { dst, a, b },
                ByteOp::Slice(dst, src, offset, len) => Instr::Slice { dst, src, offset, len },
                ByteOp::Mov(dst, src) => Instr::Mov { dst, src },
                ByteOp::Ldc(dst, index) => Instr::Ldc { dst, index },
            });
            if faulted {
                continue;
            }
            let value = match *op {
                ByteOp::Cat(_, a, b) => [model[usize::from(a)].clone(), model[usize::from(b)].clone()].concat(),
                ByteOp::Slice(_, src, o, n) => {
                    let s = &model[usize::from(src)];
                    let (o, n) = (usize::from(o), usize::from(n));
                    if o + n > s.len() {
                        faulted = true;
                        continue;
                    }
                    s[o..o + n].to_vec()
                }
                ByteOp::Mov(_, src) => model[usize::from(src)].clone(),
                ByteOp::Ldc(_, c) => constants[usize::from(c)].clone(),
            };
            let dst = match *op {
                ByteOp::Cat(d, ..) | ByteOp::Slice(d, ..) | ByteOp::Mov(d, _) | ByteOp::Ldc(d, _) => d,
            };
            model[usize::from(dst)] = value;
            peak = peak.max(model.iter().map(Vec::len).sum());
        }
        for r in 0..4u8 {
            instrs.push(Instr::Out { output: u16::from(r), src: r });
        }
        // The four outputs copy the registers and count toward memory too.
        let regs_total: usize = model.iter().map(Vec::len).sum();
        peak = peak.max(2 * regs_total);
        instrs.push(Instr::Halt {});
        let s = script(
            &instrs,
            constants.into_iter().map(Constant::Bytes).collect(),
            vec![],
            (0..4).map(|r| decl(&alloc::format!("r{r}"), ValueType::Bytes)).collect(),
        );
        let report = run(&s);
        if faulted {
            prop_assert!(matches!(fault_kind(&report), Some(VmErrorKind::SliceOutOfRange { .. })), "{report:?}");
        } else {
            prop_assert_eq!(&report.outcome, &Outcome::Committed);
            let got: Vec<Vec<u8>> = report.outputs.iter().map(|(_, v)| match v {
                OutputRef::Bytes(b) => b.to_vec(),
                OutputRef::Int(_) => Vec::new(),
            }).collect();
            prop_assert_eq!(got, model);
            prop_assert_eq!(report.peak_memory, peak);
        }
    }
}

#[test]
fn a_malformed_command_is_a_fault_and_never_reaches_the_card() {
    let s = script(
        &[
            Instr::Ldc { dst: 0, index: 0 },
            Instr::Apdu { resp: 1, cmd: 0 },
            Instr::Halt {},
        ],
        // Lc says 5 data bytes, 1 follows.
        vec![Constant::Bytes(vec![0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0])],
        vec![],
        vec![],
    );
    let (report, card) = run_with(&s, &DataScript::default(), ok_card(), Limits::default());
    assert!(
        matches!(fault_kind(&report), Some(VmErrorKind::BadApdu(_))),
        "{report:?}"
    );
    assert_eq!(report.apdu_count, 0);
    assert!(card.commands.is_empty());
}

#[test]
fn a_reused_binding_follows_each_data_scripts_field_order() {
    let p = VerifiedProgram::verify(&load_program()).unwrap();
    let data = load_data();
    let mut reversed = load_data();
    reversed.fields.reverse();
    let mut missing = load_data();
    missing.fields.retain(|f| f.name != "terminal");
    let mut binding = crate::verify::Binding::default();
    for d in [&data, &reversed, &data, &reversed] {
        let bound = p.bind_into(d, &mut binding).unwrap();
        for (i, decl) in p.inputs().iter().enumerate() {
            let want = &d
                .fields
                .iter()
                .find(|f| *f.name == *decl.name)
                .unwrap()
                .value;
            let got = bound.input(i as u16);
            assert!(
                core::ptr::eq(want, got),
                "input {} bound to the wrong field",
                decl.name
            );
        }
        // The reused binding is what a fresh one would be.
        assert_eq!(binding, p.bind(d).unwrap());
    }
    assert_eq!(
        p.bind_into(&missing, &mut binding).err(),
        Some(crate::verify::BindError::MissingInput("terminal".into()))
    );
    // A failed bind leaves nothing stale behind: the next one is still right.
    p.bind_into(&reversed, &mut binding).unwrap();
    assert_eq!(binding, p.bind(&reversed).unwrap());
}

/// Records the opcode of every executed step.
#[derive(Default)]
struct StepLog(Vec<(u32, crate::isa::Opcode)>);

impl Tracer for StepLog {
    fn step(&mut self, offset: u32, instr: &Instr) {
        self.0.push((offset, instr.opcode()));
    }
}

/// Every opcode of the table goes through the VM's dispatch, and behaves as its table
/// line says: it reads the status word iff flagged `reads_sw` (before any APDU that is a
/// `NoStatusWord` fault), reaches the card only if flagged `sends_apdu`, and never falls
/// through if flagged `terminator`. A table line whose flags lie fails here.
#[test]
fn every_opcode_is_dispatched_and_behaves_as_its_table_line_says() {
    use crate::isa::{ALL_OPCODES, Opcode, OperandKind, Role};
    for &op in ALL_OPCODES {
        // [0] ldc r0, [00 A4 04 00]; [1] X; [2] halt; [3] fail 0x77 (every target);
        // `ret` needs a routine: [1] call 4 … [4] ret.
        const TARGET: u32 = 3;
        let mut inputs = Vec::new();
        let mut fields = Vec::new();
        let ops: Vec<Operand> = op
            .operand_specs()
            .iter()
            .map(|spec| match (spec.kind, spec.role) {
                (OperandKind::Reg, _) => Operand::Reg(0),
                (OperandKind::Key, _) => Operand::Key(0),
                (OperandKind::Const, _) => Operand::Const(0),
                (OperandKind::Input, role) => {
                    let (ty, value) = if role == Role::KeyInput {
                        let (alg, usage) = (KeyAlg::Des3, KeyUsage::Mac);
                        let key = SecretKey::new(alg, usage, &[0x11; 16]).unwrap();
                        (ValueType::Key { alg, usage }, FieldValue::Key(key))
                    } else {
                        (ValueType::Int { bits: 32 }, FieldValue::Int(7))
                    };
                    inputs.push(decl("x", ty));
                    fields.push(Field {
                        name: "x".into(),
                        value,
                    });
                    Operand::Input(0)
                }
                (OperandKind::Output, _) => Operand::Output(0),
                (OperandKind::Target, _) => Operand::Target(TARGET),
                (OperandKind::Sw, _) => Operand::Sw(SwPattern::exact(0x9000)),
                // Immediates: the smallest the verifier accepts (codes: 1).
                (kind, _) => {
                    let v = spec.range().map_or(1, |(min, _)| min.max(1));
                    match kind {
                        OperandKind::U8 => Operand::U8(v as u8),
                        OperandKind::U16 => Operand::U16(v as u16),
                        _ => Operand::U32(v),
                    }
                }
            })
            .collect();
        let x = Instr::from_operands(op, &ops).unwrap();
        let mut code = vec![
            Instr::Ldc { dst: 0, index: 0 },
            x,
            Instr::Halt {},
            Instr::Fail { code: 0x77 },
        ];
        if op == Opcode::Ret {
            code[1] = Instr::Call { target: 4 };
            code.push(x);
        }
        let s = script(
            &code,
            vec![Constant::Bytes(vec![0x00, 0xA4, 0x04, 0x00])],
            inputs,
            vec![decl("o", ValueType::Bytes)],
        );
        let program = VerifiedProgram::verify(&s).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let data = DataScript { fields };
        let binding = program.bind(&data).unwrap();
        let mut layer = ApduLayer::new(ok_card());
        // A terminal with SAMs (the immediate picked below is slot 1), so `samapdu`
        // reaches the dispatch too.
        let (mut sam0, mut sam1, mut host) = (ok_card(), ok_card(), ok_card());
        let mut sams = SamSlots::new(vec![
            &mut sam0 as &mut dyn CardTransport,
            &mut sam1 as &mut dyn CardTransport,
        ])
        .unwrap()
        .with_host(&mut host);
        let mut log = StepLog::default();
        let report = Vm::default().run_with_sams(
            program.with_data(&data, &binding).unwrap(),
            &mut layer,
            &mut sams,
            &mut log,
        );
        let at = log.0.iter().position(|&(_, o)| o == op);
        let at = at.unwrap_or_else(|| panic!("{op:?} never reached the dispatch"));
        let flags = op.flags();
        assert_eq!(
            fault_kind(&report) == Some(&VmErrorKind::NoStatusWord),
            flags.reads_sw,
            "{op:?}: reads_sw flag vs behaviour: {:?}",
            report.outcome
        );
        if report.apdu_count > 0 {
            assert!(flags.sends_apdu, "{op:?} sent an APDU but is not flagged");
        }
        // What ran right after X, if anything.
        let next = log.0.get(at + 1).map(|&(off, _)| off);
        let x_offset = log.0[at].0;
        let fall_through = x_offset + op.size() as u32;
        if flags.terminator {
            assert_ne!(next, Some(fall_through), "{op:?} fell through");
        }
        // No opcode is flagged as sending an APDU without a register or key to send.
        if flags.sends_apdu {
            assert!(
                op.operand_specs()
                    .iter()
                    .any(|s| matches!(s.role, Role::RegSrc | Role::KeySrc { .. })),
                "{op:?}"
            );
        }
    }
}

/// `apdu` and `ldrkey` reach the card (so their `sends_apdu` flag is exercised above
/// only when they run): here they do, and both are flagged.
#[test]
fn the_instructions_that_reach_the_card_are_flagged() {
    use crate::isa::{ALL_OPCODES, Opcode};
    let flagged: Vec<Opcode> = ALL_OPCODES
        .iter()
        .copied()
        .filter(|o| o.flags().sends_apdu)
        .collect();
    assert_eq!(
        flagged,
        [
            Opcode::Apdu,
            Opcode::SamApdu,
            Opcode::HostApdu,
            Opcode::LoadReaderKey
        ]
    );
    // Only `samapdu` and `hostapdu` go to a SAM; nothing that reads a key slot does.
    let to_sam: Vec<Opcode> = ALL_OPCODES
        .iter()
        .copied()
        .filter(|o| o.flags().to_sam)
        .collect();
    assert_eq!(to_sam, [Opcode::SamApdu, Opcode::HostApdu]);
    // Every host instruction is a SAM instruction (the SAM rules apply to it).
    for op in ALL_OPCODES.iter().filter(|o| o.flags().to_host) {
        assert!(
            op.flags().to_sam,
            "{op:?} reaches the card company outside the SAM rules"
        );
    }
    for op in ALL_OPCODES.iter().filter(|o| o.flags().to_sam) {
        assert!(
            op.operand_specs()
                .iter()
                .all(|s| !matches!(s.role, crate::isa::Role::KeySrc { .. })),
            "{op:?} reads a key slot and goes to a SAM"
        );
    }
    let s = script(
        &[
            Instr::Ldc { dst: 0, index: 0 },
            Instr::Apdu { resp: 1, cmd: 0 },
            Instr::Expect {
                pattern: SwPattern::exact(0x9000),
                code: 1,
            },
            Instr::Halt {},
        ],
        vec![Constant::Bytes(vec![0x00, 0xA4, 0x04, 0x00])],
        vec![],
        vec![],
    );
    assert_eq!(run(&s).apdu_count, 1);
}

/// Every immediate the table gives a range is checked by the verifier at both ends:
/// the bounds pass, one past them is a `BadImmediate` naming the operand. (A table
/// range the verifier ignored would let e.g. `tobe` with width 0 or 9 reach the VM.)
#[test]
fn the_verifier_enforces_every_immediate_range_of_the_table() {
    use crate::isa::{ALL_OPCODES, OperandKind, Role};
    let mut checked = 0;
    for &op in ALL_OPCODES {
        for (i, spec) in op.operand_specs().iter().enumerate() {
            let Role::Imm { min, max, what } = spec.role else {
                continue;
            };
            let full = (1u64 << (8 * spec.kind.size())) - 1;
            let with = |v: u32| -> Instr {
                let ops: Vec<Operand> = op
                    .operand_specs()
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        let v = if j == i {
                            v
                        } else {
                            s.range().map_or(0, |r| r.0)
                        };
                        match s.kind {
                            OperandKind::Reg => Operand::Reg(0),
                            OperandKind::Key => Operand::Key(0),
                            OperandKind::U8 => Operand::U8(v as u8),
                            OperandKind::U16 => Operand::U16(v as u16),
                            OperandKind::U32 => Operand::U32(v),
                            other => panic!("{op:?}: no test value for {other:?}"),
                        }
                    })
                    .collect();
                Instr::from_operands(op, &ops).unwrap()
            };
            for v in [min, max] {
                let s = script(&[with(v), Instr::Halt {}], vec![], vec![], vec![]);
                assert!(VerifiedProgram::verify(&s).is_ok(), "{op:?} {v}");
            }
            let mut outside = Vec::new();
            if min > 0 {
                outside.push(min - 1);
            }
            if u64::from(max) < full {
                outside.push(max + 1);
            }
            for v in outside {
                assert_eq!(
                    verify_err(&[with(v), Instr::Halt {}], vec![]),
                    VerifyErrorKind::BadImmediate { what, value: v },
                    "{op:?}"
                );
                checked += 1;
            }
        }
    }
    // tobe 0/9, tobcd 0/11, pad 0, shri 64, shli 64, mkapdu 65537, samapdu slot 4.
    assert_eq!(checked, 9);
}

/// The commands a transport received.
type Sent = Vec<Vec<u8>>;

/// The terminal with one SAM (or none) for the SAM tests: the card and the SAM each
/// record what they received.
fn run_terminal(s: &CommandScript, sams: usize) -> (RunReport, Sent, Sent) {
    let program = VerifiedProgram::verify(s).expect("verifies");
    let data = DataScript::default();
    let binding = program.bind(&data).unwrap();
    let mut layer = ApduLayer::new(ok_card());
    let mut sam = SpyCard {
        commands: Vec::new(),
        answer: |_: &[u8]| Ok(vec![0x12u8, 0x34, 0x90, 0x00]),
    };
    let mut slots = Vec::new();
    if sams > 0 {
        slots.push(&mut sam as &mut dyn CardTransport);
    }
    let mut sam_slots = SamSlots::new(slots).unwrap();
    let report = Vm::default().run_with_sams(
        program.with_data(&data, &binding).unwrap(),
        &mut layer,
        &mut sam_slots,
        &mut NoTrace,
    );
    drop(sam_slots);
    let card_cmds = layer.into_inner().commands;
    (report, card_cmds, sam.commands)
}

fn sam_script() -> CommandScript {
    script(
        &[
            Instr::Ldc { dst: 0, index: 0 },
            Instr::Apdu { resp: 1, cmd: 0 },
            Instr::SamApdu {
                resp: 2,
                cmd: 0,
                sam: 0,
            },
            Instr::Expect {
                pattern: SwPattern::exact(0x9000),
                code: 1,
            },
            Instr::Halt {},
        ],
        vec![Constant::Bytes(vec![0x00, 0xB0, 0x96, 0x00, 0x06])],
        vec![],
        vec![],
    )
}

/// `samapdu` goes to the SAM and `apdu` to the card, and the SAM's status word is the one
/// `expect` reads.
#[test]
fn sam_apdus_go_to_the_sam_and_card_apdus_to_the_card() {
    let (r, card, sam) = run_terminal(&sam_script(), 1);
    assert_eq!(r.outcome, Outcome::Committed);
    assert_eq!(card, [vec![0x00, 0xB0, 0x96, 0x00, 0x06]]);
    assert_eq!(sam, [vec![0x00, 0xB0, 0x96, 0x00, 0x06]]);
    assert_eq!(r.apdu_count, 2);
    assert_eq!(r.last_exchange.map(|l| l.slot), Some(Slot::Sam(0)));
}

/// A script that needs a SAM on a terminal without one: a typed fault before any byte
/// reaches the card (the card APDU comes first in the script).
#[test]
fn a_sam_script_on_a_terminal_without_a_sam_sends_nothing() {
    let (r, card, sam) = run_terminal(&sam_script(), 0);
    assert!(
        matches!(
            fault_kind(&r),
            Some(VmErrorKind::NoSam {
                slot: 0,
                available: 0
            })
        ),
        "{:?}",
        r.outcome
    );
    assert!(card.is_empty() && sam.is_empty());
    assert_eq!(r.apdu_count, 0);
}

/// The transcript tags SAM exchanges: the same bytes sent to the card instead of the SAM
/// hash differently, and a card-only transcript keeps its pre-SAM encoding.
#[test]
fn the_transcript_names_the_slot_and_card_only_hashes_are_unchanged() {
    let mut a = TranscriptHasher::new();
    a.command_on(Slot::Sam(0), &[0x00, 0xA4]);
    a.response_on(Slot::Sam(0), &[], 0x9000);
    let mut b = TranscriptHasher::new();
    b.command_on(Slot::Card, &[0x00, 0xA4]);
    b.response_on(Slot::Card, &[], 0x9000);
    let mut old = TranscriptHasher::new();
    old.command(&[0x00, 0xA4]);
    old.response(&[], 0x9000);
    let (a, b, old) = (a.finalize(), b.finalize(), old.finalize());
    assert_ne!(a, b);
    assert_eq!(b, old);
}

/// The verifier's SAM rules, at the bytecode level: a MAC (or anything computed from it)
/// never goes to a SAM, and `ldrkey` never sits in a script that addresses a SAM.
#[test]
fn the_verifier_keeps_key_material_and_ldrkey_away_from_sams() {
    let key = || {
        decl(
            "k",
            ValueType::Key {
                alg: KeyAlg::Des3,
                usage: KeyUsage::Mac,
            },
        )
    };
    // mac r1 <- k; cat r2 = r0 ‖ r1; samapdu r3, r2: the MAC reaches the SAM through a copy.
    assert_eq!(
        verify_err(
            &[
                Instr::Ldkey { slot: 0, input: 0 },
                Instr::Mac {
                    dst: 1,
                    key: 0,
                    data: 0
                },
                Instr::Cat { dst: 2, a: 0, b: 1 },
                Instr::SamApdu {
                    resp: 3,
                    cmd: 2,
                    sam: 0
                },
                Instr::Halt {},
            ],
            vec![key()],
        ),
        VerifyErrorKind::KeyMaterialToSam {
            reg: 2,
            slot: Slot::Sam(0)
        }
    );
    // The same flow to the card is allowed (a terminal MAC goes to the card).
    let to_card = [
        Instr::Ldkey { slot: 0, input: 0 },
        Instr::Mac {
            dst: 1,
            key: 0,
            data: 0,
        },
        Instr::Cat { dst: 2, a: 0, b: 1 },
        Instr::Apdu { resp: 3, cmd: 2 },
        Instr::Halt {},
    ];
    assert!(VerifiedProgram::verify(&script(&to_card, vec![], vec![key()], vec![])).is_ok());
    // An `enc` result (the only key operation whose bytes a script can read) either.
    let enc = decl(
        "e",
        ValueType::Key {
            alg: KeyAlg::Des3,
            usage: KeyUsage::Encrypt,
        },
    );
    assert_eq!(
        verify_err(
            &[
                Instr::Ldkey { slot: 0, input: 0 },
                Instr::Encrypt {
                    dst: 1,
                    key: 0,
                    data: 0
                },
                Instr::SamApdu {
                    resp: 1,
                    cmd: 1,
                    sam: 2
                },
                Instr::Halt {},
            ],
            vec![enc],
        ),
        VerifyErrorKind::KeyMaterialToSam {
            reg: 1,
            slot: Slot::Sam(2)
        }
    );
    // ldrkey anywhere in a script that addresses a SAM.
    let m1 = decl(
        "m",
        ValueType::Key {
            alg: KeyAlg::M1,
            usage: KeyUsage::M1A,
        },
    );
    assert_eq!(
        verify_err(
            &[
                Instr::Ldkey { slot: 0, input: 0 },
                Instr::LoadReaderKey { key: 0, number: 0 },
                Instr::SamApdu {
                    resp: 1,
                    cmd: 0,
                    sam: 0
                },
                Instr::Halt {},
            ],
            vec![m1],
        ),
        VerifyErrorKind::ReaderKeyWithSam
    );
}

/// The SAM rule's implicit flows: a `samapdu` that can run after a decision on
/// key-derived bytes is refused, even when the bytes it sends are not key-derived.
#[test]
fn the_verifier_refuses_sam_commands_after_decisions_on_key_bytes() {
    let mac_key = || {
        decl(
            "k",
            ValueType::Key {
                alg: KeyAlg::Des3,
                usage: KeyUsage::Mac,
            },
        )
    };
    let check = |instrs: &[Instr]| {
        // Targets are instruction indices here (`script` makes them offsets).
        VerifiedProgram::verify(&script(
            instrs,
            vec![],
            vec![mac_key()],
            vec![decl("o", ValueType::Int { bits: 8 })],
        ))
        .map(|_| ())
        .map_err(|e| e.kind)
    };
    let mac = [
        Instr::Ldkey { slot: 0, input: 0 },
        Instr::Mac {
            dst: 1,
            key: 0,
            data: 0,
        },
        Instr::Slice {
            dst: 2,
            src: 1,
            offset: 0,
            len: 1,
        },
        Instr::FromBe { dst: 2, src: 2 },
    ];
    let sam = |cmd| Instr::SamApdu {
        resp: 5,
        cmd,
        sam: 1,
    };
    let refused = |r: Result<(), VerifyErrorKind>| {
        assert!(
            matches!(
                r,
                Err(VerifyErrorKind::KeyDependentSam {
                    slot: Slot::Sam(1),
                    ..
                })
            ),
            "{r:?}"
        );
    };
    // The attack: count up to the MAC's first byte, then send the counter to the SAM.
    // The counter is never computed from the MAC, only chosen by branches over it.
    let mut attack = mac.to_vec();
    attack.extend([
        Instr::Ldi { dst: 3, value: 0 },
        Instr::Beq {
            a: 3,
            b: 2,
            target: 8,
        }, // 5
        Instr::Addi {
            dst: 3,
            a: 3,
            value: 1,
        },
        Instr::Jmp { target: 5 },
        Instr::ToBe {
            dst: 4,
            src: 3,
            width: 1,
        }, // 8
        sam(4),
        Instr::Halt {},
    ]);
    refused(check(&attack));
    // Where the branch re-joins does not matter: one side may end the run.
    let mut join = mac.to_vec();
    join.extend([
        Instr::Ldi { dst: 3, value: 7 },
        Instr::Bne {
            a: 3,
            b: 2,
            target: 7,
        },
        Instr::Fail { code: 1 },
        sam(3), // 7
        Instr::Halt {},
    ]);
    refused(check(&join));
    // `chkmac` decides (fail or go on) on a MAC made from a key.
    refused(check(&[
        Instr::Ldkey { slot: 0, input: 0 },
        Instr::CheckMac {
            key: 0,
            data: 0,
            mac: 1,
            code: 1,
        },
        sam(0),
        Instr::Halt {},
    ]));
    // An instruction that fails on a key-derived value decides too (BCD digits).
    let mut fault = mac.to_vec();
    fault.extend([Instr::FromBcd { dst: 3, src: 1 }, sam(0), Instr::Halt {}]);
    refused(check(&fault));
    // A decision inside a routine reaches the SAM command after the call.
    let mut routine = mac.to_vec();
    routine.extend([
        Instr::Call { target: 8 }, // 4
        Instr::Ldi { dst: 3, value: 1 },
        sam(3),
        Instr::Halt {},
        Instr::Bz { a: 2, target: 9 }, // 8
        Instr::Ret {},                 // 9
    ]);
    refused(check(&routine));
    // A SAM command before the decision, in the loop around it: the next round's is after.
    let mut looped = mac.to_vec();
    looped.extend([
        Instr::Ldi { dst: 3, value: 0 },
        sam(3), // 5
        Instr::Addi {
            dst: 3,
            a: 3,
            value: 1,
        },
        Instr::Bne {
            a: 3,
            b: 2,
            target: 5,
        },
        Instr::Halt {},
    ]);
    refused(check(&looped));

    // Benign: the SAM is addressed before any decision on the MAC, a comparison that
    // is not branched on goes to the receipt, and branches on the status word or on
    // data that is not key-derived are fine.
    let mut benign = vec![
        Instr::Ldi { dst: 3, value: 2 },
        sam(3),
        Instr::Bsw {
            pattern: SwPattern::exact(0x9000),
            target: 4,
        },
        Instr::Fail { code: 2 },
        Instr::Ldkey { slot: 0, input: 0 }, // 4
        Instr::Mac {
            dst: 1,
            key: 0,
            data: 0,
        },
        Instr::CtEq { dst: 2, a: 1, b: 0 },
        Instr::Out { output: 0, src: 2 },
        Instr::Bnz { a: 3, target: 9 },
        sam(0), // 9
    ];
    benign.extend([
        Instr::Bz { a: 2, target: 12 }, // 10: a decision, with no SAM after it
        Instr::Halt {},
        Instr::Fail { code: 3 }, // 12
    ]);
    assert_eq!(check(&benign), Ok(()));
}

/// The slots a script needs are known before it runs.
#[test]
fn the_program_knows_its_sam_slots() {
    let p = VerifiedProgram::verify(&sam_script()).unwrap();
    assert_eq!(p.sam_slots_needed(), 1);
    assert_eq!(p.missing_sam(1), None);
    assert_eq!(p.missing_sam(0).map(|(_, s)| s), Some(0));
    let card_only = script(&[Instr::Halt {}], vec![], vec![], vec![]);
    assert_eq!(
        VerifiedProgram::verify(&card_only)
            .unwrap()
            .sam_slots_needed(),
        0
    );
}
