//! Trusted-tag frame: round trips, every S5 failure, and the documented weakness (the tag is
//! recoverable from one plaintext/frame pair).

use cardvm::crypto::sm3;
use cardvm::frame::{self, FrameError, Tag, UserId};
use proptest::prelude::*;

fn uid(s: &str) -> UserId {
    UserId::new(s.as_bytes()).unwrap()
}

/// A gateway store with two bound users.
fn store(u: &UserId) -> Option<Tag> {
    match u.as_bytes() {
        b"reader-0731-0001" => Some(Tag::new(b"0123456789abcdef".to_vec())),
        b"reader-0731-0002" => Some(Tag::new(b"another tag!".to_vec())),
        b"reader-empty" => Some(Tag::new(Vec::new())),
        _ => None,
    }
}

fn good_frame(msg: &[u8]) -> Vec<u8> {
    let u = uid("reader-0731-0001");
    frame::encode(&u, &store(&u).unwrap(), msg).unwrap()
}

/// Offset of the body in a frame for `reader-0731-0001` (16-byte id).
const BODY: usize = 4 + 1 + 1 + 16 + 4;

#[test]
fn round_trip_simple() {
    let f = good_frame(b"receipt batch");
    assert_eq!(frame::verify(&f, store).unwrap(), b"receipt batch");
    assert_eq!(frame::verify(&good_frame(b""), store).unwrap(), b"");
}

#[test]
fn outer_hash_mismatch_s5_1() {
    let f = good_frame(b"receipt batch");
    // Any flipped body byte (SecpakData or the trailing hash) fails S5.1.
    for i in BODY..f.len() {
        let mut g = f.clone();
        g[i] ^= 0x01;
        assert_eq!(
            frame::verify(&g, store),
            Err(FrameError::OuterHashMismatch),
            "byte {i}"
        );
    }
}

#[test]
fn inner_hash_mismatch_s5_3() {
    // A frame whose outer hash is consistent but whose P was XORed with another tag: S5.1
    // passes, S5.3 fails. This is what a device without the tag produces.
    let u1 = uid("reader-0731-0001");
    let wrong = Tag::new(b"not the right tag".to_vec());
    let f = frame::encode(&u1, &wrong, b"receipt batch").unwrap();
    assert_eq!(frame::verify(&f, store), Err(FrameError::InnerHashMismatch));

    // Tampered SecpakData with the outer hash recomputed: also S5.3.
    let mut g = good_frame(b"receipt batch");
    g[BODY] ^= 0x80;
    let n = g.len();
    let outer = sm3(&g[BODY..n - 32]);
    g[n - 32..].copy_from_slice(&outer);
    assert_eq!(frame::verify(&g, store), Err(FrameError::InnerHashMismatch));

    // Swapping the header's user id to another bound user: S5.3 (the id is not hashed, but the
    // other user's tag differs).
    let u2 = uid("reader-0731-0002");
    let f2 = frame::encode(&u2, &store(&u2).unwrap(), b"x").unwrap();
    let mut h = good_frame(b"receipt batch");
    h[6..22].copy_from_slice(b"reader-0731-0002");
    assert_eq!(frame::verify(&h, store), Err(FrameError::InnerHashMismatch));
    assert_eq!(frame::verify(&f2, store).unwrap(), b"x");
}

#[test]
fn unknown_user_id() {
    let u = uid("reader-9999-0001");
    let f = frame::encode(&u, &Tag::new(b"k".to_vec()), b"m").unwrap();
    assert_eq!(frame::verify(&f, store), Err(FrameError::UnknownUser(u)));
}

#[test]
fn empty_tag() {
    let u = uid("reader-empty");
    assert_eq!(
        frame::encode(&u, &Tag::new(Vec::new()), b"m"),
        Err(FrameError::EmptyTag)
    );
    // A frame for that id made with some tag: the gateway's empty tag is rejected.
    let f = frame::encode(&u, &Tag::new(b"t".to_vec()), b"m").unwrap();
    assert_eq!(frame::verify(&f, store), Err(FrameError::EmptyTag));
}

#[test]
fn malformed_headers() {
    let f = good_frame(b"abc");
    assert!(matches!(
        frame::verify(&f[..3], store),
        Err(FrameError::Truncated { .. })
    ));
    let mut g = f.clone();
    g[0] ^= 1;
    assert_eq!(frame::verify(&g, store), Err(FrameError::BadMagic));
    let mut g = f.clone();
    g[4] = 2;
    assert_eq!(
        frame::verify(&g, store),
        Err(FrameError::UnsupportedVersion(2))
    );
    let mut g = f.clone();
    g[5] = 0;
    assert_eq!(
        frame::verify(&g, store),
        Err(FrameError::BadUserIdLength(0))
    );
    let mut g = f.clone();
    g[5] = 200; // longer than the frame
    assert!(matches!(
        frame::verify(&g, store),
        Err(FrameError::Truncated { .. })
    ));
    // Body length field off by one, and a truncated body.
    let mut g = f.clone();
    g[BODY - 1] ^= 1;
    assert!(matches!(
        frame::verify(&g, store),
        Err(FrameError::LengthMismatch { .. })
    ));
    assert!(matches!(
        frame::verify(&f[..f.len() - 1], store),
        Err(FrameError::LengthMismatch { .. })
    ));
    // A consistent length that cannot hold the two hashes.
    let mut g = f[..BODY].to_vec();
    g[BODY - 4..BODY].copy_from_slice(&10u32.to_be_bytes());
    g.extend_from_slice(&[0u8; 10]);
    assert_eq!(frame::verify(&g, store), Err(FrameError::BodyTooShort(10)));
    // User id limits.
    assert_eq!(UserId::new(Vec::new()), Err(FrameError::BadUserIdLength(0)));
    assert_eq!(
        UserId::new(vec![b'a'; 256]),
        Err(FrameError::BadUserIdLength(256))
    );
    assert!(UserId::new(vec![b'a'; 255]).is_ok());
}

/// The weakness the module documents: one known plaintext and its frame reveal the tag, and
/// with it anyone can forge frames that pass the gateway. This test must keep passing; if it
/// ever fails, the docs about what the frame protects need revisiting.
#[test]
fn tag_is_recoverable_from_one_plaintext_frame_pair() {
    let u = uid("reader-0731-0001");
    let secret = store(&u).unwrap();
    let msg = b"a receipt batch the attacker saw in clear on the shop's LAN".to_vec();
    let f = frame::encode(&u, &secret, &msg).unwrap();

    // Attacker: P = msg ‖ SM3(msg); noise = SecpakData XOR P.
    let mut p = msg.clone();
    p.extend_from_slice(&sm3(&msg));
    let secpak = &f[BODY..f.len() - 32];
    let noise: Vec<u8> = secpak.iter().zip(&p).map(|(a, b)| a ^ b).collect();
    // The noise is periodic; its shortest period is the tag.
    let period = (1..=noise.len())
        .find(|&k| (k..noise.len()).all(|i| noise[i] == noise[i - k]))
        .unwrap();
    let recovered = Tag::new(noise[..period].to_vec());
    assert_eq!(recovered, secret);

    // Forgery with the recovered tag passes every gateway check.
    let forged = frame::encode(&u, &recovered, b"forged: pay me").unwrap();
    assert_eq!(frame::verify(&forged, store).unwrap(), b"forged: pay me");
}

proptest! {
    #[test]
    fn round_trip(
        id in proptest::collection::vec(any::<u8>(), 1..=255),
        tag in proptest::collection::vec(any::<u8>(), 1..64),
        msg in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let u = UserId::new(id).unwrap();
        let t = Tag::new(tag);
        let f = frame::encode(&u, &t, &msg).unwrap();
        prop_assert_eq!(frame::parse_header(&f).unwrap().user_id, u.as_bytes());
        let lookup = |x: &UserId| (x == &u).then(|| t.clone());
        prop_assert_eq!(frame::verify(&f, lookup).unwrap(), msg);
    }

    #[test]
    fn no_panic_and_no_false_accept_on_mutation(
        msg in proptest::collection::vec(any::<u8>(), 0..100),
        pos in any::<usize>(),
        bit in 0u8..8,
    ) {
        let f = good_frame(&msg);
        let mut g = f.clone();
        let i = pos % g.len();
        g[i] ^= 1 << bit;
        // Any single-bit change is rejected (header bytes of the user id: unknown user or a
        // different user's tag).
        prop_assert!(frame::verify(&g, store).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = frame::verify(&data, store);
    }
}
