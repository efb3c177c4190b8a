//! Sealing and opening scripts for one reader (SM2 + SM4 + SM3).
//!
//! **Seal** (card company): a fresh 16-byte SM4 content key is encrypted to the
//! reader's SM2 public key; the script is encrypted with SM4-CTR and authenticated
//! with HMAC-SM3 over every preceding byte (encrypt-then-MAC, see [`aead`]); the
//! issuer signs every byte (SM2, default distinguishing id). The format is in
//! [`format`](mod@format).
//!
//! **Open** (reader), in this order, each failure its own [`OpenError`]:
//! 1. format ([`OpenError::Format`]);
//! 2. issuer: key id ([`OpenError::WrongIssuerKey`]) then signature
//!    ([`OpenError::BadSignature`]);
//! 3. reader: reader key id and, when configured, reader id ([`OpenError::WrongReader`]);
//! 4. expiry, valid while `now < expires` ([`OpenError::Expired`]);
//! 5. replay ([`OpenError::Replayed`], rule in [`replay`]);
//! 6. content-key unwrap ([`OpenError::KeyUnwrap`]) and tag ([`OpenError::BadTag`]),
//!    then decryption;
//! 7. only then the sequence number is recorded.
//!
//! [`Opener`] adds the [`OpenCache`]: a command script already opened is served
//! from the cache with zero asymmetric operations; the per-transaction data script
//! costs one SM2 verify and one SM2 decrypt.
//!
//! Time (`now`, unix seconds) and randomness (`rand_core::CryptoRng`) come from the
//! caller; `std` builds have [`crate::crypto::rng::os_rng`] and [`unix_now`].

pub mod aead;
pub mod cache;
pub mod format;
pub mod replay;
pub mod time;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::sm2::{Sm2Error, Sm2PrivateKey, Sm2PublicKey};

pub use cache::{CacheKey, OpenCache};
pub use format::{EnvelopeHeader, FormatError, ScriptKind, SealedEnvelope};
pub use replay::{MemoryReplayStore, ReplayEntry, ReplayKey, ReplayStore, StoreError};

#[cfg(feature = "std")]
pub use replay::FileReplayStore;

/// Why sealing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The header or payload does not fit the format.
    #[error("cannot seal: {0}")]
    Format(#[from] FormatError),
    /// The payload is empty.
    #[error("cannot seal an empty script")]
    EmptyPayload,
    /// An SM2 operation failed.
    #[error("cannot seal: {0}")]
    Crypto(#[from] Sm2Error),
}

/// Why opening failed. Each check has its own variant (see the module docs for
/// the order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not a well-formed envelope.
    #[error("bad envelope format: {0}")]
    Format(#[from] FormatError),
    /// Signed with another issuer key than the one this reader trusts.
    #[error("sealed by another issuer key (key id {found}, expected {expected})")]
    WrongIssuerKey {
        /// Hex key id the reader trusts.
        expected: String,
        /// Hex key id in the envelope.
        found: String,
    },
    /// The issuer signature does not verify.
    #[error("issuer signature does not verify")]
    BadSignature,
    /// Sealed for another reader (other reader id or other reader key).
    #[error("sealed for reader {found:?}, this is reader {expected:?}")]
    WrongReader {
        /// This reader's id (or key id, when the id is not configured).
        expected: String,
        /// The id (or key id) in the envelope.
        found: String,
    },
    /// Past its expiry.
    #[error("expired at {} (now {})", time::format_rfc3339(*expires), time::format_rfc3339(*now))]
    Expired {
        /// Expiry, unix seconds.
        expires: u64,
        /// The caller's time.
        now: u64,
    },
    /// A sequence number that is not newer than the last accepted one.
    #[error("replayed: sequence {seq} not after last accepted {last}")]
    Replayed {
        /// The envelope's sequence number.
        seq: u64,
        /// The last accepted one for this stream.
        last: u64,
    },
    /// The content key does not decrypt under this reader's key.
    #[error("content key does not decrypt with this reader key")]
    KeyUnwrap,
    /// The HMAC-SM3 tag does not match (ciphertext or header altered).
    #[error("authentication tag mismatch")]
    BadTag,
    /// The replay store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// An opened script. The payload is zeroized on drop and not shown by `Debug`.
#[derive(Clone)]
pub struct OpenedScript {
    /// The verified header.
    pub header: EnvelopeHeader,
    /// Whether it came from the [`OpenCache`] (no asymmetric crypto spent).
    pub from_cache: bool,
    payload: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for OpenedScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedScript")
            .field("header", &self.header)
            .field("from_cache", &self.from_cache)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl OpenedScript {
    /// The decrypted script bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the decrypted script bytes.
    pub fn into_payload(self) -> Zeroizing<Vec<u8>> {
        self.payload
    }
}

/// Seals `payload` for the reader holding `reader`'s private key.
///
/// `rng` supplies the content key, the CTR nonce and the SM2 nonces.
pub fn seal<R: CryptoRng>(
    issuer: &Sm2PrivateKey,
    reader: &Sm2PublicKey,
    header: &EnvelopeHeader,
    payload: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    if payload.is_empty() {
        return Err(SealError::EmptyPayload);
    }
    let mut content_key = Zeroizing::new([0u8; aead::CONTENT_KEY_LEN]);
    rng.fill_bytes(&mut content_key[..]);
    let mut nonce = [0u8; format::NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let wrapped = reader.encrypt(rng, &content_key[..])?;
    let wrapped_key: [u8; format::WRAPPED_KEY_LEN] = wrapped
        .as_slice()
        .try_into()
        .map_err(|_| Sm2Error::EncryptFailed)?;
    let keys = aead::DerivedKeys::derive(&content_key);
    let mut ciphertext = payload.to_vec();
    keys.ctr_xor(&nonce, &mut ciphertext);
    let mut env = SealedEnvelope {
        header: header.clone(),
        issuer_key_id: issuer.public_key().key_id(),
        reader_key_id: reader.key_id(),
        wrapped_key,
        nonce,
        ciphertext,
        tag: [0; format::TAG_LEN],
        signature: [0; 64],
    };
    env.check_lengths()?;
    let mut bytes =
        Vec::with_capacity(format::FIXED_OVERHEAD + header.reader_id.len() + payload.len());
    env.encode_tagged_part(&mut bytes);
    env.tag = keys.tag(&bytes);
    bytes.extend_from_slice(&env.tag);
    env.signature = issuer.sign(rng, &bytes)?;
    bytes.extend_from_slice(&env.signature);
    Ok(bytes)
}

fn hex8(id: &[u8; 8]) -> String {
    id.iter().map(|b| alloc::format!("{b:02X}")).collect()
}

/// Opens sealed scripts for one reader: its keys, the trusted issuer key, a
/// replay store and an [`OpenCache`].
pub struct Opener<S: ReplayStore> {
    reader_id: Option<String>,
    reader_key: Sm2PrivateKey,
    issuer_pub: Sm2PublicKey,
    issuer_key_id: [u8; 8],
    reader_key_id: [u8; 8],
    store: S,
    cache: OpenCache,
    stats: OpenStats,
}

impl<S: ReplayStore> fmt::Debug for Opener<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("reader_id", &self.reader_id)
            .field("reader_key", &self.reader_key)
            .field("issuer_pub", &self.issuer_pub)
            .field("cache", &self.cache)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What an [`Opener`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenStats {
    /// Full opens (one SM2 verify + one SM2 decrypt each, when they get that far).
    pub full_opens: u64,
    /// Command scripts served from the cache (no asymmetric crypto).
    pub cache_hits: u64,
}

impl<S: ReplayStore> Opener<S> {
    /// An opener for the reader `reader_id` (checked against every envelope when
    /// `Some`; the reader *key* is always checked), trusting `issuer_pub`.
    pub fn new(
        reader_id: Option<&str>,
        reader_key: Sm2PrivateKey,
        issuer_pub: Sm2PublicKey,
        store: S,
    ) -> Self {
        let reader_key_id = reader_key.public_key().key_id();
        let issuer_key_id = issuer_pub.key_id();
        Opener {
            reader_id: reader_id.map(String::from),
            reader_key,
            issuer_pub,
            issuer_key_id,
            reader_key_id,
            store,
            cache: OpenCache::default(),
            stats: OpenStats::default(),
        }
    }

    /// Replaces the cache (e.g. `OpenCache::new(0)` to disable caching).
    pub fn with_cache(mut self, cache: OpenCache) -> Self {
        self.cache = cache;
        self
    }

    /// The replay store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives back the replay store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The command-script cache.
    pub fn cache(&self) -> &OpenCache {
        &self.cache
    }

    /// Counters of full opens and cache hits.
    pub fn stats(&self) -> OpenStats {
        self.stats
    }

    fn check_reader(&self, env_reader_id: &str, env_reader_key: &[u8; 8]) -> Result<(), OpenError> {
        if *env_reader_key != self.reader_key_id {
            return Err(OpenError::WrongReader {
                expected: alloc::format!("key {}", hex8(&self.reader_key_id)),
                found: alloc::format!("key {}", hex8(env_reader_key)),
            });
        }
        if let Some(id) = &self.reader_id
            && id != env_reader_id
        {
            return Err(OpenError::WrongReader {
                expected: id.clone(),
                found: env_reader_id.into(),
            });
        }
        Ok(())
    }

    /// Opens `blob` at time `now` (unix seconds). See the module docs for the order
    /// of checks.
    pub fn open(&mut self, blob: &[u8], now: u64) -> Result<OpenedScript, OpenError> {
        // 1. format
        let env = SealedEnvelope::parse(blob)?;
        let digest = crate::crypto::sm3(blob);
        let h = &env.header;
        let cache_key = CacheKey {
            city: h.city,
            script_id: h.script_id,
            script_version: h.script_version,
            digest,
        };
        if h.kind == ScriptKind::Command
            && let Some((hdr, payload)) = self.cache.get(&cache_key)
        {
            // Same bytes as a blob fully opened before with these keys.
            self.check_reader(&hdr.reader_id, &env.reader_key_id)?;
            if now >= hdr.expires {
                return Err(OpenError::Expired {
                    expires: hdr.expires,
                    now,
                });
            }
            let opened = OpenedScript {
                header: hdr.clone(),
                from_cache: true,
                payload: Zeroizing::new(payload.to_vec()),
            };
            self.stats.cache_hits += 1;
            return Ok(opened);
        }
        self.stats.full_opens += 1;
        // 2. issuer key and signature
        if env.issuer_key_id != self.issuer_key_id {
            return Err(OpenError::WrongIssuerKey {
                expected: hex8(&self.issuer_key_id),
                found: hex8(&env.issuer_key_id),
            });
        }
        let signed = &blob[..blob.len() - env.signature.len()];
        self.issuer_pub
            .verify(signed, &env.signature)
            .map_err(|_| OpenError::BadSignature)?;
        // 3. reader
        self.check_reader(&h.reader_id, &env.reader_key_id)?;
        // 4. expiry
        if now >= h.expires {
            return Err(OpenError::Expired {
                expires: h.expires,
                now,
            });
        }
        // 5. replay
        let rkey = ReplayKey::new(h.city, h.kind, &h.reader_id);
        let last = self.store.last(&rkey)?;
        replay::accept(h.kind, last, h.seq, &digest)
            .map_err(|last| OpenError::Replayed { seq: h.seq, last })?;
        // 6. unwrap, authenticate, decrypt
        let ck = self
            .reader_key
            .decrypt(&env.wrapped_key)
            .map_err(|_| OpenError::KeyUnwrap)?;
        let ck: &[u8; aead::CONTENT_KEY_LEN] =
            ck.as_slice().try_into().map_err(|_| OpenError::KeyUnwrap)?;
        let keys = aead::DerivedKeys::derive(ck);
        let tagged = &signed[..signed.len() - env.tag.len()];
        if !keys.check_tag(tagged, &env.tag) {
            return Err(OpenError::BadTag);
        }
        let mut payload = Zeroizing::new(env.ciphertext);
        keys.ctr_xor(&env.nonce, &mut payload);
        // 7. record
        self.store
            .record(&rkey, ReplayEntry { seq: h.seq, digest })?;
        if h.kind == ScriptKind::Command {
            self.cache.insert(cache_key, env.header.clone(), &payload);
        }
        Ok(OpenedScript {
            header: env.header,
            from_cache: false,
            payload,
        })
    }
}

/// The system clock as unix seconds (`std` builds; 0 if the clock is before 1970).
#[cfg(feature = "std")]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
