//! Envelope and receipt costs: seal, open (cold), open (cached command script),
//! receipt sign, receipt verify.

use std::hint::black_box;

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::{EnvelopeHeader, Expect, MemoryReplayStore, Opener, ScriptKind, seal};
use cardvm::receipt::{FieldValue, Outcome, Receipt};
use criterion::{Criterion, criterion_group, criterion_main};

const NOW: u64 = 1_800_000_000;

fn header(kind: ScriptKind, seq: u64) -> EnvelopeHeader {
    EnvelopeHeader {
        kind,
        city: 731,
        script_id: 1,
        script_version: 1,
        seq,
        issued: NOW - 60,
        expires: NOW + 3600,
        // The bench's command script is 1 KiB of 0x5A (see `bench`).
        binding: cardvm::crypto::sm3(&[0x5Au8; 1024]),
        reader_id: "reader-0001".into(),
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = os_rng();
    let issuer = Sm2PrivateKey::generate(&mut rng);
    let reader = Sm2PrivateKey::generate(&mut rng);
    let script = vec![0x5Au8; 1024];
    let binding = cardvm::crypto::sm3(&script);
    let new_opener = || {
        Opener::new(
            Some("reader-0001"),
            reader.clone(),
            issuer.public_key().clone(),
            MemoryReplayStore::new(),
        )
    };

    c.bench_function("envelope/seal 1 KiB", |b| {
        b.iter(|| {
            seal(
                &issuer,
                reader.public_key(),
                &header(ScriptKind::Data, 1),
                black_box(&script),
                &mut rng,
            )
            .unwrap()
        })
    });

    let data_blob = seal(
        &issuer,
        reader.public_key(),
        &header(ScriptKind::Data, 1),
        &script,
        &mut rng,
    )
    .unwrap();
    c.bench_function("envelope/open cold 1 KiB", |b| {
        b.iter_batched(
            new_opener,
            |mut o| {
                o.open(black_box(&data_blob), NOW, Expect::DataFor(&binding))
                    .unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let cmd_blob = seal(
        &issuer,
        reader.public_key(),
        &header(ScriptKind::Command, 1),
        &script,
        &mut rng,
    )
    .unwrap();
    let mut warm = new_opener();
    warm.open(&cmd_blob, NOW, Expect::Command).unwrap();
    c.bench_function("envelope/open cached command 1 KiB", |b| {
        b.iter(|| {
            warm.open(black_box(&cmd_blob), NOW, Expect::Command)
                .unwrap()
        })
    });

    let mut receipt = Receipt::new(731, 1, 1, "reader-0001", Outcome::Committed);
    receipt.fields = vec![
        ("amount".into(), FieldValue::Int(1000)),
        ("balance_before".into(), FieldValue::Int(5000)),
        ("balance_after".into(), FieldValue::Int(6000)),
        ("tac".into(), FieldValue::Bytes(vec![1, 2, 3, 4])),
    ];
    c.bench_function("receipt/sign", |b| {
        b.iter(|| receipt.sign(&reader, &mut rng).unwrap())
    });
    receipt.sign(&reader, &mut rng).unwrap();
    c.bench_function("receipt/verify", |b| {
        b.iter(|| black_box(&receipt).verify(reader.public_key()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
