//! Security envelope and receipt: tamper detection, typed rejections, replay
//! persistence, through the public API only.

use std::sync::OnceLock;

use cardvm::crypto::rng::os_rng;
use cardvm::crypto::sm2::Sm2PrivateKey;
use cardvm::envelope::{
    EnvelopeHeader, Expect, FileReplayStore, MemoryReplayStore, OpenError, Opener, ScriptKind, seal,
};
use cardvm::receipt::{FieldValue, Outcome, Receipt, ReceiptError, TranscriptHasher};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;
const READER: &str = "reader-0731-0001";

struct World {
    issuer: Sm2PrivateKey,
    reader: Sm2PrivateKey,
    data_blob: Vec<u8>,
    cmd_blob: Vec<u8>,
    receipt_bytes: Vec<u8>,
}

fn header(kind: ScriptKind, seq: u64, expires: u64, reader_id: &str) -> EnvelopeHeader {
    EnvelopeHeader {
        kind,
        city: 731,
        script_id: 12,
        script_version: 3,
        seq,
        issued: NOW - 600,
        expires,
        binding: cardvm::crypto::sm3(COMMAND),
        reader_id: reader_id.into(),
    }
}

/// The command script every test envelope is bound to.
const COMMAND: &[u8] = b"\x01\x02\x03 bytecode";

/// Opens `blob` expecting what its kind byte says: a command script, or a data script
/// bound to [`COMMAND`].
fn open_<S: cardvm::envelope::ReplayStore>(
    o: &mut Opener<S>,
    blob: &[u8],
    now: u64,
) -> Result<cardvm::envelope::OpenedScript, OpenError> {
    static DIGEST: OnceLock<[u8; 32]> = OnceLock::new();
    let digest = DIGEST.get_or_init(|| cardvm::crypto::sm3(COMMAND));
    let expect = if blob.get(5) == Some(&1) {
        Expect::Command
    } else {
        Expect::DataFor(digest)
    };
    o.open(blob, now, expect)
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut rng = os_rng();
        let issuer = Sm2PrivateKey::generate(&mut rng);
        let reader = Sm2PrivateKey::generate(&mut rng);
        let data_blob = seal(
            &issuer,
            reader.public_key(),
            &header(ScriptKind::Data, 10, NOW + 60, READER),
            b"amount=100 terminal=112233445566",
            &mut rng,
        )
        .unwrap();
        let cmd_blob = seal(
            &issuer,
            reader.public_key(),
            &header(ScriptKind::Command, 3, NOW + 86_400, READER),
            COMMAND,
            &mut rng,
        )
        .unwrap();
        let mut t = TranscriptHasher::new();
        t.command(&[0x00, 0xA4, 0x04, 0x00, 0x02, 0x3F, 0x00]);
        t.response(&[], 0x9000);
        let mut r = Receipt::new(731, 12, 3, READER, Outcome::Committed);
        r.card_id = vec![0x12, 0x34, 0x56, 0x78];
        r.fields = vec![
            ("amount".into(), FieldValue::Int(100)),
            ("tac".into(), FieldValue::Bytes(vec![1, 2, 3, 4])),
        ];
        r.apdu_count = 1;
        r.transcript_sm3 = t.finalize();
        r.sign(&reader, &mut rng).unwrap();
        let receipt_bytes = r.to_bytes().unwrap();
        World {
            issuer,
            reader,
            data_blob,
            cmd_blob,
            receipt_bytes,
        }
    })
}

fn opener(w: &World) -> Opener<MemoryReplayStore> {
    Opener::new(
        Some(READER),
        w.reader.clone(),
        w.issuer.public_key().clone(),
        MemoryReplayStore::new(),
    )
}

fn flipped(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[bit / 8] ^= 1 << (bit % 8);
    b
}

#[test]
fn untampered_blobs_open() {
    let w = world();
    let mut o = opener(w);
    assert_eq!(
        open_(&mut o, &w.data_blob, NOW).unwrap().payload(),
        b"amount=100 terminal=112233445566"
    );
    assert_eq!(
        open_(&mut o, &w.cmd_blob, NOW).unwrap().payload(),
        b"\x01\x02\x03 bytecode"
    );
    let r = Receipt::from_bytes(&w.receipt_bytes).unwrap();
    r.verify(w.reader.public_key()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Invariant 3: any single flipped bit of a sealed script is rejected.
    #[test]
    fn any_bit_flip_of_a_sealed_script_is_rejected(pos in any::<prop::sample::Index>(), cmd in any::<bool>()) {
        let w = world();
        let blob = if cmd { &w.cmd_blob } else { &w.data_blob };
        let bad = flipped(blob, pos.index(blob.len() * 8));
        prop_assert!(open_(&mut opener(w), &bad, NOW).is_err());
    }

    /// Invariant 3: any single flipped bit of a receipt's canonical bytes is rejected
    /// (by the parser or by the signature check).
    #[test]
    fn any_bit_flip_of_a_receipt_is_rejected(pos in any::<prop::sample::Index>()) {
        let w = world();
        let bad = flipped(&w.receipt_bytes, pos.index(w.receipt_bytes.len() * 8));
        let verdict = Receipt::from_bytes(&bad).and_then(|r| r.verify(w.reader.public_key()));
        prop_assert!(verdict.is_err());
    }
}

/// Exhaustive version for the data script: every bit position, not a sample.
#[test]
fn every_bit_flip_of_a_sealed_data_script_is_rejected() {
    let w = world();
    for bit in 0..w.data_blob.len() * 8 {
        let bad = flipped(&w.data_blob, bit);
        assert!(
            open_(&mut opener(w), &bad, NOW).is_err(),
            "bit {bit} accepted"
        );
    }
}

#[test]
fn every_bit_flip_of_a_receipt_is_rejected() {
    let w = world();
    for bit in 0..w.receipt_bytes.len() * 8 {
        let bad = flipped(&w.receipt_bytes, bit);
        let verdict = Receipt::from_bytes(&bad).and_then(|r| r.verify(w.reader.public_key()));
        assert!(verdict.is_err(), "bit {bit} accepted");
    }
}

#[test]
fn rejections_are_typed() {
    let w = world();
    let mut rng = os_rng();

    // Sealed for another reader id.
    let other = seal(
        &w.issuer,
        w.reader.public_key(),
        &header(ScriptKind::Data, 1, NOW + 60, "reader-9999"),
        b"x",
        &mut rng,
    )
    .unwrap();
    assert!(matches!(
        open_(&mut opener(w), &other, NOW),
        Err(OpenError::WrongReader { .. })
    ));

    // Sealed for another reader's key.
    let stranger = Sm2PrivateKey::generate(&mut rng);
    let other_key = seal(
        &w.issuer,
        stranger.public_key(),
        &header(ScriptKind::Data, 1, NOW + 60, READER),
        b"x",
        &mut rng,
    )
    .unwrap();
    assert!(matches!(
        open_(&mut opener(w), &other_key, NOW),
        Err(OpenError::WrongReader { .. })
    ));

    // Expired.
    assert_eq!(
        open_(&mut opener(w), &w.data_blob, NOW + 60).unwrap_err(),
        OpenError::Expired {
            expires: NOW + 60,
            now: NOW + 60
        }
    );

    // Wrong issuer key: a forger with its own key, or a reader trusting another issuer.
    let forger = Sm2PrivateKey::generate(&mut rng);
    let forged = seal(
        &forger,
        w.reader.public_key(),
        &header(ScriptKind::Data, 99, NOW + 60, READER),
        b"x",
        &mut rng,
    )
    .unwrap();
    assert!(matches!(
        open_(&mut opener(w), &forged, NOW),
        Err(OpenError::WrongIssuerKey { .. })
    ));

    // Bad signature: the forger also copies the real issuer's key id.
    let mut forged2 = forged.clone();
    let real_id = w.issuer.public_key().key_id();
    forged2[72..80].copy_from_slice(&real_id);
    assert_eq!(
        open_(&mut opener(w), &forged2, NOW).unwrap_err(),
        OpenError::BadSignature
    );

    // Bad format.
    assert!(matches!(
        open_(&mut opener(w), b"CVSE\x01", NOW),
        Err(OpenError::Format(_))
    ));

    // Replayed.
    let mut o = opener(w);
    open_(&mut o, &w.data_blob, NOW).unwrap();
    assert_eq!(
        open_(&mut o, &w.data_blob, NOW).unwrap_err(),
        OpenError::Replayed { seq: 10, last: 10 }
    );

    // Receipts: unsigned, wrong reader key.
    let mut r = Receipt::from_bytes(&w.receipt_bytes).unwrap();
    assert_eq!(
        r.verify(stranger.public_key()),
        Err(ReceiptError::BadSignature)
    );
    r.signature = None;
    assert_eq!(r.verify(w.reader.public_key()), Err(ReceiptError::Unsigned));
}

#[test]
fn replay_store_survives_restart() {
    let w = world();
    let dir = std::env::temp_dir().join(format!("cardvm-envelope-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reader.replay");
    let _ = std::fs::remove_file(&path);
    let new = |store| {
        Opener::new(
            Some(READER),
            w.reader.clone(),
            w.issuer.public_key().clone(),
            store,
        )
    };
    {
        let mut o = new(FileReplayStore::open_file(&path, &w.reader).unwrap());
        open_(&mut o, &w.data_blob, NOW).unwrap();
        open_(&mut o, &w.cmd_blob, NOW).unwrap();
    }
    // "Restart": a new opener over the same file.
    let mut o = new(FileReplayStore::open_file(&path, &w.reader).unwrap());
    assert_eq!(
        open_(&mut o, &w.data_blob, NOW).unwrap_err(),
        OpenError::Replayed { seq: 10, last: 10 }
    );
    // The command script the reader already accepted still opens after restart.
    assert!(open_(&mut o, &w.cmd_blob, NOW).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cached_command_script_skips_asymmetric_crypto() {
    let w = world();
    let mut o = opener(w);
    for _ in 0..5 {
        open_(&mut o, &w.cmd_blob, NOW).unwrap();
    }
    let s = o.stats();
    assert_eq!((s.full_opens, s.cache_hits), (1, 4));
}

#[test]
fn receipt_json_round_trip_verifies() {
    let w = world();
    let r = Receipt::from_bytes(&w.receipt_bytes).unwrap();
    let json = r.to_json();
    let back = Receipt::from_json(&json).unwrap();
    assert_eq!(back.to_bytes().unwrap(), w.receipt_bytes);
    back.verify(w.reader.public_key()).unwrap();
}
