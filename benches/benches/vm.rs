//! Core speed: parse + verify throughput, VM dispatch cost per instruction, and a whole
//! 3DES load (VM + crypto) against a card double that answers instantly.
//!
//! `cargo bench -p cardvm-bench --bench vm`

use cardvm::asm::{AsmOptions, MapLoader, assemble, assemble_file, compile_data};
use cardvm::script::{CommandScript, DataScript};
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::VerifiedProgram;
use cardvm::vm::{Limits, NoTrace, Vm};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// Answers the published PBOC load exchange (reference/epurse.md) instantly.
struct PublishedCard;

impl CardTransport for PublishedCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let answer: &[u8] = match command.get(1) {
            Some(0x50) => &[
                0, 0, 0, 0, 0, 0, 0, 1, 0xF9, 0xCA, 0xBA, 0x91, 0x6C, 0x39, 0x4D, 0x64, 0x90, 0x00,
            ],
            Some(0x52) => &[0x11, 0x22, 0x33, 0x44, 0x90, 0x00],
            _ => &[0x90, 0x00],
        };
        response[..answer.len()].copy_from_slice(answer);
        Ok(answer.len())
    }
}

fn load() -> (CommandScript, DataScript) {
    // The repository root: this crate is benches/ in it.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let script = assemble_file(
        format!("{root}/scripts/examples/load.casm").as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script;
    let data = compile_data(
        &std::fs::read_to_string(format!("{root}/scripts/examples/load.toml")).unwrap(),
    )
    .unwrap();
    (script, data)
}

fn parse_verify(c: &mut Criterion) {
    let (script, _) = load();
    let bytes = script.encode();
    let mut g = c.benchmark_group("parse_verify");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("load.cvm", |b| {
        b.iter(|| {
            let s = CommandScript::parse(black_box(&bytes)).unwrap();
            VerifiedProgram::from_script(s).unwrap()
        })
    });
    g.finish();
}

const LOOP: &str = "
.reg i, n
    ldi  i, 0
    ldi  n, 100000
top:
    addi i, i, 1
    blt  i, n, top
    halt
";

fn dispatch(c: &mut Criterion) {
    let mut loader = MapLoader::default();
    let script = assemble(LOOP, "loop.casm", &AsmOptions::default(), &mut loader)
        .unwrap()
        .script;
    let program = VerifiedProgram::verify(&script).unwrap();
    let data = DataScript::default();
    let binding = program.bind(&data).unwrap();
    let mut vm = Vm::new(Limits {
        fuel: 1_000_000,
        ..Limits::default()
    });
    let mut card = ApduLayer::new(PublishedCard);
    let fuel = vm
        .run(
            program.with_data(&data, &binding).unwrap(),
            &mut card,
            &mut NoTrace,
        )
        .fuel_used;
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(fuel));
    g.bench_function("addi_blt_loop", |b| {
        b.iter(|| {
            vm.run(
                program.with_data(&data, &binding).unwrap(),
                &mut card,
                &mut NoTrace,
            )
        })
    });
    g.finish();
}

fn load_transaction(c: &mut Criterion) {
    let (script, data) = load();
    let program = VerifiedProgram::verify(&script).unwrap();
    let binding = program.bind(&data).unwrap();
    let mut vm = Vm::default();
    let mut card = ApduLayer::new(PublishedCard);
    c.bench_function("load_3des_instant_card", |b| {
        b.iter(|| {
            vm.run(
                program.with_data(&data, &binding).unwrap(),
                &mut card,
                &mut NoTrace,
            )
        })
    });
}

criterion_group!(benches, parse_verify, dispatch, load_transaction);
criterion_main!(benches);
