//! The trusted-tag frame for reader → server messages (receipt batches).
//!
//! This is the gateway message check of `reference/trusted-tag-frame.md` (steps S1–S5).
//! A reader and the gateway share, per bound user/device, a **trusted tag** and a **user
//! identifier**. The reader frames each message; the gateway looks the tag up by the user id
//! carried in the frame header and checks the frame before it lets the message through.
//!
//! # Wire format (version 1)
//!
//! ```text
//! header: magic "CVTF" (4) ‖ version (1) = 1 ‖ user-id length (1, 1..=255) ‖ user id
//!         ‖ body length (u32, big-endian)
//! body:   SecpakData ‖ SM3(SecpakData)            (body length = message length + 64)
//!   where P          = message ‖ SM3(message)                           (S1)
//!         SecpakData = P XOR (tag repeated to the length of P)          (S2, S3)
//! ```
//!
//! [`verify`] performs, in this order: header parse (magic, version, lengths), user lookup
//! (S4), empty-tag check, S5.1 outer hash `SM3(SecpakData)`, S5.2 un-XOR, S5.3 inner hash
//! `SM3(message)`. Each failed step is its own [`FrameError`] variant. Hash comparisons are
//! constant time.
//!
//! # What it protects — and what it does not
//!
//! It **does**:
//! - detect accidental corruption of the frame body (S5.1);
//! - bind a message to a device that holds the tag of the user id in the header: a party that
//!   has never seen a plaintext together with its frame for that user cannot make a frame that
//!   passes S5.3.
//!
//! It **does not**:
//! - give any **confidentiality**: XOR with a repeated tag is not encryption. The message
//!   hash is inside `P`, so the tag's period and bytes leak through any known or guessable
//!   plaintext;
//! - keep the tag secret: **anyone who sees one plaintext and its frame learns the tag**
//!   (`tag = SecpakData XOR P`, repeated), and can then forge frames for that user (this is
//!   demonstrated by a test in `tests/frame.rs`);
//! - protect against replay: there is no nonce, counter or time in the frame;
//! - authenticate the header: the user id is not hashed; changing it is caught only because
//!   another user's tag differs (S5.3).
//!
//! So it is a device-binding check and nothing more. It must always sit **beneath** the SM2
//! signatures of receipts: the gateway verifies the frame, then the server verifies each
//! receipt's reader signature and de-duplicates by journal sequence number / hash. Never
//! accept a receipt because its frame verified.

use alloc::vec::Vec;
use core::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::sm3;

/// Frame magic, the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CVTF";
/// Frame format version written by [`encode`] and accepted by [`verify`].
pub const VERSION: u8 = 1;
/// Length of an SM3 digest.
pub const HASH_LEN: usize = 32;
/// Longest user identifier a frame header can carry.
pub const MAX_USER_ID_LEN: usize = 255;
/// Largest message [`encode`] accepts (the body length must fit a `u32`).
pub const MAX_MESSAGE_LEN: usize = u32::MAX as usize - 2 * HASH_LEN;

/// magic ‖ version ‖ user-id length.
const FIXED_HEAD: usize = 4 + 1 + 1;

/// The user/device identifier carried in the frame header (1..=255 bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Vec<u8>);

impl UserId {
    /// A user id from its bytes; fails with [`FrameError::BadUserIdLength`] unless it is
    /// 1..=[`MAX_USER_ID_LEN`] bytes long.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, FrameError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_USER_ID_LEN {
            return Err(FrameError::BadUserIdLength(bytes.len()));
        }
        Ok(UserId(bytes))
    }

    /// The identifier's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl fmt::Display for UserId {
    /// Printable ASCII ids print as text, anything else as hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic()) {
            for &b in &self.0 {
                write!(f, "{}", b as char)?;
            }
        } else {
            f.write_str("0x")?;
            for b in &self.0 {
                write!(f, "{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// A trusted tag. Its bytes are zeroized on drop and never printed by `Debug`.
///
/// An empty tag can be constructed (a gateway's store may hold one) but [`encode`] and
/// [`verify`] reject it with [`FrameError::EmptyTag`].
#[derive(Clone)]
pub struct Tag(Zeroizing<Vec<u8>>);

impl Tag {
    /// A tag from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Tag(Zeroizing::new(bytes.into()))
    }

    /// The tag's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the tag is empty (unusable).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret tag bytes. Handle with care: do not log them.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag(REDACTED, {} bytes)", self.0.len())
    }
}

impl PartialEq for Tag {
    /// Constant-time for equal lengths.
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl Eq for Tag {}

/// Why a frame could not be built or did not verify. One variant per failed step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame ends inside its header.
    #[error("frame truncated: {len} bytes, the header needs {need}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("not a trusted-tag frame (bad magic)")]
    BadMagic,
    /// The version byte is not [`VERSION`].
    #[error("unsupported trusted-tag frame version {0}")]
    UnsupportedVersion(u8),
    /// A user id of the wrong length (0 or over [`MAX_USER_ID_LEN`]).
    #[error("user id must be 1..={max} bytes, got {0}", max = MAX_USER_ID_LEN)]
    BadUserIdLength(usize),
    /// The body length field disagrees with the bytes that follow the header.
    #[error("frame body length field says {declared} bytes but {actual} follow the header")]
    LengthMismatch {
        /// The header's body length.
        declared: u64,
        /// Bytes actually after the header.
        actual: u64,
    },
    /// The body is too short to hold the two hashes.
    #[error("frame body of {0} bytes is shorter than its two SM3 hashes")]
    BodyTooShort(usize),
    /// The message is too large to frame.
    #[error("message of {0} bytes is too large for a frame")]
    MessageTooLarge(usize),
    /// S4: no tag is bound to this user id.
    #[error("unknown user id {0}")]
    UnknownUser(UserId),
    /// The tag is empty.
    #[error("empty trusted tag")]
    EmptyTag,
    /// S5.1: `SM3(SecpakData)` does not match the frame's trailing hash.
    #[error("outer hash mismatch (S5.1): frame body corrupted")]
    OuterHashMismatch,
    /// S5.3: the hash inside `P` does not match `SM3(message)`: the frame was not made with
    /// this user's tag.
    #[error("inner hash mismatch (S5.3): frame not made with this user's tag")]
    InnerHashMismatch,
}

/// A parsed frame header, borrowing from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader<'a> {
    /// The user id bytes (1..=255 bytes).
    pub user_id: &'a [u8],
    /// The body: `SecpakData ‖ SM3(SecpakData)`.
    pub body: &'a [u8],
}

/// XORs `buf` in place with `tag` repeated (S2/S5.2). `tag` must be non-empty.
fn xor_with_tag(buf: &mut [u8], tag: &[u8]) {
    for (b, t) in buf.iter_mut().zip(tag.iter().cycle()) {
        *b ^= t;
    }
}

/// Frames `message` for `user_id` with its trusted `tag` (S1–S4).
pub fn encode(user_id: &UserId, tag: &Tag, message: &[u8]) -> Result<Vec<u8>, FrameError> {
    if tag.is_empty() {
        return Err(FrameError::EmptyTag);
    }
    if message.len() > MAX_MESSAGE_LEN {
        return Err(FrameError::MessageTooLarge(message.len()));
    }
    let body_len = message.len() + 2 * HASH_LEN;
    let body_len_u32 =
        u32::try_from(body_len).map_err(|_| FrameError::MessageTooLarge(message.len()))?;
    let uid = user_id.as_bytes();
    let uid_len = u8::try_from(uid.len()).map_err(|_| FrameError::BadUserIdLength(uid.len()))?;

    let mut out = Vec::with_capacity(FIXED_HEAD + uid.len() + 4 + body_len);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(uid_len);
    out.extend_from_slice(uid);
    out.extend_from_slice(&body_len_u32.to_be_bytes());

    // S1: P = pakData ‖ SM3(pakData)
    let secpak_start = out.len();
    out.extend_from_slice(message);
    out.extend_from_slice(&sm3(message));
    // S2: SecpakData = P XOR noise
    xor_with_tag(&mut out[secpak_start..], tag.expose_bytes());
    // S3: body = SecpakData ‖ SM3(SecpakData)
    let outer = sm3(&out[secpak_start..]);
    out.extend_from_slice(&outer);
    Ok(out)
}

/// Parses the header of `frame` (magic, version, user id, body length) without any check
/// that needs a tag. The gateway may use it to route or rate-limit by user id.
pub fn parse_header(frame: &[u8]) -> Result<FrameHeader<'_>, FrameError> {
    if frame.len() < FIXED_HEAD {
        return Err(FrameError::Truncated {
            len: frame.len(),
            need: FIXED_HEAD,
        });
    }
    if frame[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if frame[4] != VERSION {
        return Err(FrameError::UnsupportedVersion(frame[4]));
    }
    let uid_len = usize::from(frame[5]);
    if uid_len == 0 {
        return Err(FrameError::BadUserIdLength(0));
    }
    let need = FIXED_HEAD + uid_len + 4;
    if frame.len() < need {
        return Err(FrameError::Truncated {
            len: frame.len(),
            need,
        });
    }
    let user_id = &frame[FIXED_HEAD..FIXED_HEAD + uid_len];
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&frame[need - 4..need]);
    let declared = u32::from_be_bytes(len_bytes);
    let body = &frame[need..];
    if u64::from(declared) != body.len() as u64 {
        return Err(FrameError::LengthMismatch {
            declared: u64::from(declared),
            actual: body.len() as u64,
        });
    }
    if body.len() < 2 * HASH_LEN {
        return Err(FrameError::BodyTooShort(body.len()));
    }
    Ok(FrameHeader { user_id, body })
}

/// The gateway's check (S4, S5.1–S5.3). `lookup` returns the tag bound to a user id, or
/// `None` if the id is unknown. On success returns the message (`pakData`).
///
/// Passing this check only shows the frame was made by a holder of the tag; see the module
/// docs for what it does not show.
pub fn verify<F>(frame: &[u8], lookup: F) -> Result<Vec<u8>, FrameError>
where
    F: Fn(&UserId) -> Option<Tag>,
{
    let header = parse_header(frame)?;
    let user = UserId::new(header.user_id)?;
    // S4: the gateway looks the tag up by the user identifier.
    let tag = lookup(&user).ok_or(FrameError::UnknownUser(user))?;
    if tag.is_empty() {
        return Err(FrameError::EmptyTag);
    }
    let split = header.body.len() - HASH_LEN;
    let (secpak, outer) = header.body.split_at(split);
    // S5.1: SM3(SecpakData) against the trailing hash.
    if !bool::from(sm3(secpak).as_slice().ct_eq(outer)) {
        return Err(FrameError::OuterHashMismatch);
    }
    // S5.2: P = SecpakData XOR noise.
    let mut p = secpak.to_vec();
    xor_with_tag(&mut p, tag.expose_bytes());
    // S5.3: the hash inside P against SM3(pakData).
    let msg_len = p.len() - HASH_LEN;
    let ok = bool::from(sm3(&p[..msg_len]).as_slice().ct_eq(&p[msg_len..]));
    if !ok {
        return Err(FrameError::InnerHashMismatch);
    }
    p.truncate(msg_len);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_debug_is_redacted() {
        let t = Tag::new(alloc::vec![0xAB; 8]);
        let s = alloc::format!("{t:?}");
        assert!(s.contains("REDACTED"));
        assert!(!s.to_lowercase().contains("ab"));
    }

    #[test]
    fn layout_matches_reference() {
        let uid = UserId::new(&b"dev1"[..]).unwrap();
        let tag = Tag::new(alloc::vec![1, 2, 3]);
        let f = encode(&uid, &tag, b"hello").unwrap();
        let h = parse_header(&f).unwrap();
        assert_eq!(h.user_id, b"dev1");
        assert_eq!(h.body.len(), 5 + 64);
        let (secpak, outer) = h.body.split_at(5 + 32);
        assert_eq!(outer, sm3(secpak));
        let mut p = b"hello".to_vec();
        p.extend_from_slice(&sm3(b"hello"));
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= [1u8, 2, 3][i % 3];
        }
        assert_eq!(secpak, &p[..]);
    }
}
