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

/// The clock of these tests: every time is `T` plus a few seconds.
const T: u64 = 1_800_000_000;

/// The command script the data scripts of these tests are bound to.
const CMD: &[u8] = b"bytecode";

fn header(kind: ScriptKind, seq: u64) -> EnvelopeHeader {
    EnvelopeHeader {
        kind,
        city: 731,
        script_id: 7,
        script_version: 2,
        seq,
        issued: T,
        expires: T + 2_000,
        binding: crate::crypto::sm3(CMD),
        reader_id: "reader-0001".into(),
    }
}

/// Opens `blob` expecting what its kind byte says (data scripts bound to [`CMD`]).
fn open<S: ReplayStore>(
    o: &mut Opener<S>,
    blob: &[u8],
    now: u64,
) -> Result<OpenedScript, OpenError> {
    let cmd = crate::crypto::sm3(CMD);
    let expect = if blob.get(5) == Some(&1) {
        Expect::Command
    } else {
        Expect::DataFor(&cmd)
    };
    o.open(blob, now, expect)
}

impl Fixture {
    fn seal(&mut self, h: &EnvelopeHeader, payload: &[u8]) -> Vec<u8> {
        let mut h = h.clone();
        if h.kind == ScriptKind::Command {
            h.binding = crate::crypto::sm3(payload);
        }
        seal(
            &self.issuer,
            self.reader.public_key(),
            &h,
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
    let opened = open(&mut o, &blob, T + 1_000).unwrap();
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
        open(&mut o, &blob[..blob.len() - 1], T + 1_000),
        Err(OpenError::Format(_))
    ));

    // bad signature (flip a bit of the signature itself)
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 10] ^= 0x01;
    assert_eq!(
        open(&mut o, &bad, T + 1_000).unwrap_err(),
        OpenError::BadSignature
    );

    // wrong issuer key (the reader trusts another issuer)
    let other_issuer = Sm2PrivateKey::generate(&mut f.rng);
    let mut o2 = Opener::new(
        Some("reader-0001"),
        f.reader.clone(),
        other_issuer.public_key().clone(),
        MemoryReplayStore::new(),
    );
    assert!(matches!(
        open(&mut o2, &blob, T + 1_000),
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
        open(&mut o3, &blob, T + 1_000),
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
        open(&mut o4, &blob, T + 1_000),
        Err(OpenError::WrongReader { .. })
    ));

    // expired
    assert_eq!(
        open(&mut o, &blob, T + 2_000).unwrap_err(),
        OpenError::Expired {
            expires: T + 2_000,
            now: T + 2_000
        }
    );

    // success, then replayed
    open(&mut o, &blob, T + 1_999).unwrap();
    assert_eq!(
        open(&mut o, &blob, T + 1_000).unwrap_err(),
        OpenError::Replayed { seq: 5, last: 5 }
    );
    let older = f.seal(&header(ScriptKind::Data, 4), b"payload");
    assert_eq!(
        open(&mut o, &older, T + 1_000).unwrap_err(),
        OpenError::Replayed { seq: 4, last: 5 }
    );
    let newer = f.seal(&header(ScriptKind::Data, 6), b"payload");
    assert!(open(&mut o, &newer, T + 1_000).is_ok());
}

/// An issuer-signed envelope whose content key is not for this reader, and one
/// whose tag is wrong: the errors after the signature check.
#[test]
fn key_unwrap_and_tag_errors() {
    let mut f = fixture(12);
    let blob = f.seal(&header(ScriptKind::Data, 1), b"payload");
    let mut env = SealedEnvelope::parse(&blob).unwrap();

    let resign = |env: &SealedEnvelope, f: &mut Fixture| {
        let mut w = crate::codec::Writer::default();
        env.write_tagged_part(&mut w);
        w.put(&env.tag);
        let sig = f.issuer.sign(&mut f.rng, w.as_slice()).unwrap();
        w.put(&sig);
        w.into_vec()
    };

    // Corrupt wrapped key, validly re-signed by the issuer.
    env.wrapped_key[100] ^= 1;
    let b = resign(&env, &mut f);
    let mut o = f.opener();
    assert_eq!(
        open(&mut o, &b, T + 1_000).unwrap_err(),
        OpenError::KeyUnwrap
    );
    env.wrapped_key[100] ^= 1;

    // Corrupt ciphertext, validly re-signed: the tag catches it.
    env.ciphertext[0] ^= 1;
    let b = resign(&env, &mut f);
    assert_eq!(open(&mut o, &b, T + 1_000).unwrap_err(), OpenError::BadTag);
    env.ciphertext[0] ^= 1;
    env.tag[3] ^= 0x80;
    let b = resign(&env, &mut f);
    assert_eq!(open(&mut o, &b, T + 1_000).unwrap_err(), OpenError::BadTag);

    // A failed open records nothing: the original still opens.
    assert!(open(&mut o, &blob, T + 1_000).is_ok());
}

#[test]
fn command_scripts_are_cached_data_scripts_are_not() {
    let mut f = fixture(13);
    let cmd = f.seal(&header(ScriptKind::Command, 3), b"bytecode");
    let data = f.seal(&header(ScriptKind::Data, 1), b"data");
    let mut o = f.opener();
    assert!(!open(&mut o, &cmd, T + 1_000).unwrap().from_cache);
    let again = open(&mut o, &cmd, T + 1_001).unwrap();
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
        open(&mut o, &cmd, T + 5_000),
        Err(OpenError::Expired { .. })
    ));
    // A tampered copy misses the cache and fails verification.
    let mut bad = cmd.clone();
    bad[60] ^= 4;
    assert!(open(&mut o, &bad, T + 1_000).is_err());
    // Data scripts: never cached, single use.
    open(&mut o, &data, T + 1_000).unwrap();
    assert!(matches!(
        open(&mut o, &data, T + 1_000),
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
    assert!(!open(&mut o, &cmd, T + 1_000).unwrap().from_cache);
    let same_seq_other = f.seal(&header(ScriptKind::Command, 3), b"other bytecode");
    assert_eq!(
        open(&mut o, &same_seq_other, T + 1_000).unwrap_err(),
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

/// DESIGN §4 invariant 6, as the attack: a sealed data script (the issuer's keys, the
/// issuer's amount) opened for an attacker's command script is refused, and the refusal
/// does not spend its sequence number.
#[test]
fn data_script_opens_only_for_its_command_script() {
    let mut f = fixture(15);
    let data = f.seal(&header(ScriptKind::Data, 7), b"amount and keys");
    let evil = crate::crypto::sm3(b"the city's load script, one line changed");
    let mut o = f.opener();
    assert!(matches!(
        o.open(&data, T + 1, Expect::DataFor(&evil)),
        Err(OpenError::WrongCommand { .. })
    ));
    // Not burned: the genuine pairing still opens.
    assert!(open(&mut o, &data, T + 1).is_ok());
    // Kinds cannot be swapped either.
    let cmd = f.seal(&header(ScriptKind::Command, 1), CMD);
    assert!(matches!(
        o.open(&cmd, T + 1, Expect::DataFor(&crate::crypto::sm3(CMD))),
        Err(OpenError::WrongKind { .. })
    ));
    let data2 = f.seal(&header(ScriptKind::Data, 8), b"amount and keys");
    assert!(matches!(
        o.open(&data2, T + 1, Expect::Command),
        Err(OpenError::WrongKind { .. })
    ));
}

/// A command script must hash to its own binding: the issuer cannot seal a mismatch, and
/// a reader refuses one that was sealed anyway.
#[test]
fn command_script_binding_is_its_own_digest() {
    let mut f = fixture(16);
    let h = header(ScriptKind::Command, 1);
    assert_eq!(
        seal(&f.issuer, f.reader.public_key(), &h, b"not CMD", &mut f.rng),
        Err(SealError::BindingMismatch)
    );
}

/// Expiry fails closed: a clock at 0, before 1970 (the OS reports 0), before 2020, or
/// behind an accepted script's issue time refuses every sealed script.
#[test]
fn expiry_fails_closed_on_a_bad_clock() {
    let mut f = fixture(17);
    let data = f.seal(&header(ScriptKind::Data, 1), b"x");
    let mut o = f.opener();
    for now in [0, 1, MIN_PLAUSIBLE_TIME - 1] {
        assert_eq!(
            open(&mut o, &data, now).unwrap_err(),
            OpenError::ClockUnset { now }
        );
    }
    // Accept one issued at T + 5000 …
    let mut h = header(ScriptKind::Data, 2);
    h.issued = T + 5_000;
    h.expires = T + 9_000;
    let late = f.seal(&h, b"x");
    assert!(open(&mut o, &late, T + 5_000).is_ok());
    // … then a clock set back an hour is refused, even for an unexpired script.
    let mut h = header(ScriptKind::Data, 3);
    h.expires = T + 9_000;
    let next = f.seal(&h, b"x");
    assert_eq!(
        open(&mut o, &next, T + 5_000 - 3_600).unwrap_err(),
        OpenError::ClockBehind {
            now: T + 5_000 - 3_600,
            issued: T + 5_000
        }
    );
    // A clock a few minutes slow is a slow clock, not an attack.
    assert!(open(&mut o, &next, T + 5_000 - 60).is_ok());
}

/// A reader may trust several issuer keys (key rotation).
#[test]
fn several_issuer_keys() {
    let mut f = fixture(18);
    let old = f.issuer.clone();
    let blob_old = f.seal(&header(ScriptKind::Data, 1), b"x");
    f.issuer = Sm2PrivateKey::generate(&mut f.rng);
    let blob_new = f.seal(&header(ScriptKind::Data, 2), b"x");
    let mut o = Opener::new(
        Some("reader-0001"),
        f.reader.clone(),
        old.public_key().clone(),
        MemoryReplayStore::new(),
    );
    assert!(matches!(
        open(&mut o, &blob_new, T + 1),
        Err(OpenError::WrongIssuerKey { .. })
    ));
    let mut o = o.with_issuer(f.issuer.public_key().clone());
    assert!(open(&mut o, &blob_old, T + 1).is_ok());
    assert!(open(&mut o, &blob_new, T + 1).is_ok());
}
