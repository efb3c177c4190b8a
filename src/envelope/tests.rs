//! Unit tests: one per failure mode, plus the cache and replay behaviour.

use super::*;
use crate::crypto::sm2::test_rng::TestRng;

struct Fixture {
    rng: TestRng,
    issuer: Sm2PrivateKey,
    reader: Sm2PrivateKey,
}

fn fixture(seed: u64) -> Fixture {
    let mut rng = TestRng(seed);
    let issuer = Sm2PrivateKey::generate(&mut rng);
    let reader = Sm2PrivateKey::generate(&mut rng);
    Fixture {
        rng,
        issuer,
        reader,
    }
}

fn header(kind: ScriptKind, seq: u64) -> EnvelopeHeader {
    EnvelopeHeader {
        kind,
        city: 731,
        script_id: 7,
        script_version: 2,
        seq,
        expires: 2_000,
        reader_id: "reader-0001".into(),
    }
}

impl Fixture {
    fn seal(&mut self, h: &EnvelopeHeader, payload: &[u8]) -> Vec<u8> {
        seal(
            &self.issuer,
            self.reader.public_key(),
            h,
            payload,
            &mut self.rng,
        )
        .unwrap()
    }
    fn opener(&self) -> Opener<MemoryReplayStore> {
        Opener::new(
            Some("reader-0001"),
            self.reader.clone(),
            self.issuer.public_key().clone(),
            MemoryReplayStore::new(),
        )
    }
}

#[test]
fn seal_open_round_trip() {
    let mut f = fixture(10);
    let blob = f.seal(&header(ScriptKind::Data, 1), b"data script bytes");
    let mut o = f.opener();
    let opened = o.open(&blob, 1_000).unwrap();
    assert_eq!(opened.payload(), b"data script bytes");
    assert_eq!(opened.header, header(ScriptKind::Data, 1));
    assert!(!opened.from_cache);
    // The payload does not appear in clear in the blob, nor in Debug.
    assert!(!blob.windows(11).any(|w| w == b"data script"));
    assert!(!alloc::format!("{opened:?}").contains("data script"));
}

#[test]
fn each_failure_has_its_own_error() {
    let mut f = fixture(11);
    let blob = f.seal(&header(ScriptKind::Data, 5), b"payload");

    // bad format
    let mut o = f.opener();
    assert!(matches!(
        o.open(&blob[..blob.len() - 1], 1_000),
        Err(OpenError::Format(_))
    ));

    // bad signature (flip a bit of the signature itself)
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 10] ^= 0x01;
    assert_eq!(o.open(&bad, 1_000).unwrap_err(), OpenError::BadSignature);

    // wrong issuer key (the reader trusts another issuer)
    let other_issuer = Sm2PrivateKey::generate(&mut f.rng);
    let mut o2 = Opener::new(
        Some("reader-0001"),
        f.reader.clone(),
        other_issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    assert!(matches!(
        o2.open(&blob, 1_000),
        Err(OpenError::WrongIssuerKey { .. })
    ));

    // wrong reader id (same key, other configured id)
    let mut o3 = Opener::new(
        Some("reader-0002"),
        f.reader.clone(),
        f.issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    assert!(matches!(
        o3.open(&blob, 1_000),
        Err(OpenError::WrongReader { .. })
    ));
    // wrong reader key (another reader's key, id not configured)
    let other_reader = Sm2PrivateKey::generate(&mut f.rng);
    let mut o4 = Opener::new(
        None,
        other_reader,
        f.issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    assert!(matches!(
        o4.open(&blob, 1_000),
        Err(OpenError::WrongReader { .. })
    ));

    // expired
    assert_eq!(
        o.open(&blob, 2_000).unwrap_err(),
        OpenError::Expired {
            expires: 2_000,
            now: 2_000
        }
    );

    // success, then replayed
    o.open(&blob, 1_999).unwrap();
    assert_eq!(
        o.open(&blob, 1_000).unwrap_err(),
        OpenError::Replayed { seq: 5, last: 5 }
    );
    let older = f.seal(&header(ScriptKind::Data, 4), b"payload");
    assert_eq!(
        o.open(&older, 1_000).unwrap_err(),
        OpenError::Replayed { seq: 4, last: 5 }
    );
    let newer = f.seal(&header(ScriptKind::Data, 6), b"payload");
    assert!(o.open(&newer, 1_000).is_ok());
}

/// An issuer-signed envelope whose content key is not for this reader, and one
/// whose tag is wrong: the errors after the signature check.
#[test]
fn key_unwrap_and_tag_errors() {
    let mut f = fixture(12);
    let blob = f.seal(&header(ScriptKind::Data, 1), b"payload");
    let mut env = SealedEnvelope::parse(&blob).unwrap();

    let resign = |env: &SealedEnvelope, f: &mut Fixture| {
        let mut bytes = Vec::new();
        env.encode_tagged_part(&mut bytes);
        bytes.extend_from_slice(&env.tag);
        let sig = f.issuer.sign(&mut f.rng, &bytes).unwrap();
        bytes.extend_from_slice(&sig);
        bytes
    };

    // Corrupt wrapped key, validly re-signed by the issuer.
    env.wrapped_key[100] ^= 1;
    let b = resign(&env, &mut f);
    let mut o = f.opener();
    assert_eq!(o.open(&b, 1_000).unwrap_err(), OpenError::KeyUnwrap);
    env.wrapped_key[100] ^= 1;

    // Corrupt ciphertext, validly re-signed: the tag catches it.
    env.ciphertext[0] ^= 1;
    let b = resign(&env, &mut f);
    assert_eq!(o.open(&b, 1_000).unwrap_err(), OpenError::BadTag);
    env.ciphertext[0] ^= 1;
    env.tag[3] ^= 0x80;
    let b = resign(&env, &mut f);
    assert_eq!(o.open(&b, 1_000).unwrap_err(), OpenError::BadTag);

    // A failed open records nothing: the original still opens.
    assert!(o.open(&blob, 1_000).is_ok());
}

#[test]
fn command_scripts_are_cached_data_scripts_are_not() {
    let mut f = fixture(13);
    let cmd = f.seal(&header(ScriptKind::Command, 3), b"bytecode");
    let data = f.seal(&header(ScriptKind::Data, 1), b"data");
    let mut o = f.opener();
    assert!(!o.open(&cmd, 1_000).unwrap().from_cache);
    let again = o.open(&cmd, 1_001).unwrap();
    assert!(again.from_cache);
    assert_eq!(again.payload(), b"bytecode");
    assert_eq!(
        o.stats(),
        OpenStats {
            full_opens: 1,
            cache_hits: 1
        }
    );
    // Cache hit still enforces expiry.
    assert!(matches!(
        o.open(&cmd, 5_000),
        Err(OpenError::Expired { .. })
    ));
    // A tampered copy misses the cache and fails verification.
    let mut bad = cmd.clone();
    bad[60] ^= 4;
    assert!(o.open(&bad, 1_000).is_err());
    // Data scripts: never cached, single use.
    o.open(&data, 1_000).unwrap();
    assert!(matches!(
        o.open(&data, 1_000),
        Err(OpenError::Replayed { .. })
    ));
    assert_eq!(o.cache().len(), 1);

    // After a restart (fresh cache, same store) the same command blob reopens,
    // but an older one with the same sequence and other bytes does not.
    let store = o.into_store();
    let mut o = Opener::new(
        Some("reader-0001"),
        f.reader.clone(),
        f.issuer.public_key().clone(),
        store,
    );
    assert!(!o.open(&cmd, 1_000).unwrap().from_cache);
    let same_seq_other = f.seal(&header(ScriptKind::Command, 3), b"other bytecode");
    assert_eq!(
        o.open(&same_seq_other, 1_000).unwrap_err(),
        OpenError::Replayed { seq: 3, last: 3 }
    );
}

#[test]
fn seal_rejects_bad_inputs() {
    let mut f = fixture(14);
    let mut h = header(ScriptKind::Data, 1);
    assert_eq!(
        seal(&f.issuer, f.reader.public_key(), &h, b"", &mut f.rng),
        Err(SealError::EmptyPayload)
    );
    h.reader_id = "x".repeat(65);
    assert!(matches!(
        seal(&f.issuer, f.reader.public_key(), &h, b"p", &mut f.rng),
        Err(SealError::Format(FormatError::ReaderIdLength(65)))
    ));
}
