//! Sealing and opening scripts for one reader (SM2 + SM4 + SM3).
//!
//! **Seal** (card company): a fresh 16-byte SM4 content key is encrypted to the
//! reader's SM2 public key; the script is encrypted with SM4-CTR and authenticated
//! with HMAC-SM3 over every preceding byte (encrypt-then-MAC, see [`aead`]); the
//! issuer signs every byte (SM2, default distinguishing id). The format is in
//! [`format`](mod@format).
//!
//! **Open** (reader), in this order, each failure its own [`OpenError`]:
//! 1. the clock: unset or implausible ([`OpenError::ClockUnset`]), or earlier than the
//!    issue time of a script already accepted ([`OpenError::ClockBehind`]);
//! 2. format ([`OpenError::Format`]);
//! 3. issuer: key id ([`OpenError::WrongIssuerKey`]) then signature
//!    ([`OpenError::BadSignature`]);
//! 4. reader: reader key id and, when configured, reader id ([`OpenError::WrongReader`]);
//! 5. what the caller expects ([`Expect`]): the kind ([`OpenError::WrongKind`]) and,
//!    for a data script, that it is bound to the command script about to run
//!    ([`OpenError::WrongCommand`]);
//! 6. expiry, valid while `now < expires` ([`OpenError::Expired`]);
//! 7. replay ([`OpenError::Replayed`], rule in [`replay`]);
//! 8. content-key unwrap ([`OpenError::KeyUnwrap`]) and tag ([`OpenError::BadTag`]),
//!    then decryption; a command script's bytes must hash to its own binding
//!    ([`OpenError::BadBinding`]);
//! 9. only then the sequence number is recorded.
//!
//! **Binding** (DESIGN §4 invariant 6): every envelope carries SM3 of a command script.
//! A data script can be opened only for the command script it names, so a sealed data
//! script (with the issuer's keys) never runs under any other program.
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
pub use replay::ProtectedReplayStore;

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
    /// A command script's header binding is not the SM3 of its payload.
    #[error("cannot seal: a command script's binding must be the SM3 of its own bytes")]
    BindingMismatch,
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
    /// The reader's clock is not set (or reads before 2020): expiry cannot be checked.
    #[error("the reader's clock is not set (reads {}); refusing sealed scripts", time::format_rfc3339(*now))]
    ClockUnset {
        /// The clock's reading, unix seconds.
        now: u64,
    },
    /// The reader's clock reads earlier than a script it already accepted was issued.
    #[error("the reader's clock ({}) is behind the issue time of an accepted script ({}); refusing sealed scripts until the clock is right", time::format_rfc3339(*now), time::format_rfc3339(*issued))]
    ClockBehind {
        /// The clock's reading.
        now: u64,
        /// The latest accepted issue time.
        issued: u64,
    },
    /// A command script where a data script was expected, or the other way round.
    #[error("expected a sealed {expected} script, got a {found} script")]
    WrongKind {
        /// What the caller expected.
        expected: &'static str,
        /// What the envelope holds.
        found: &'static str,
    },
    /// The data script is bound to another command script than the one about to run.
    #[error("this data script may only run with command script SM3 {bound}, not with {running}")]
    WrongCommand {
        /// Hex SM3 of the command script the data script names.
        bound: String,
        /// Hex SM3 of the command script about to run.
        running: String,
    },
    /// A command script whose bytes do not hash to the binding it was sealed with.
    #[error("command script bytes do not match the digest it was sealed with")]
    BadBinding,
}

/// Earliest clock reading a reader accepts (2020-01-01T00:00:00Z): anything before is an
/// unset clock.
pub const MIN_PLAUSIBLE_TIME: u64 = 1_577_836_800;

/// How far the reader's clock may run behind an accepted script's issue time before it
/// counts as set back (a slow clock, not an attack).
pub const CLOCK_SKEW: u64 = 15 * 60;

/// What [`Opener::open`] must find in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// A command script.
    Command,
    /// A card query script ([`ScriptKind::Query`]).
    Query,
    /// An offline terminal program ([`ScriptKind::Terminal`]).
    Terminal,
    /// A data script bound to the command script with this SM3.
    DataFor(&'a [u8; 32]),
    /// Either kind, binding not checked: only for inspecting an envelope (`cardvm
    /// open`); a reader never runs what it opened this way.
    Inspect,
}

/// An opened script. The payload is zeroized on drop and not shown by `Debug`.
#[derive(Clone)]
pub struct OpenedScript {
    /// The verified header.
    pub header: EnvelopeHeader,
    /// Whether it came from the [`OpenCache`] (no asymmetric crypto spent).
    pub from_cache: bool,
    /// Key id of the issuer key that signed it.
    pub issuer_key_id: [u8; 8],
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
    if header.kind.is_program() && header.binding != crate::crypto::sm3(payload) {
        return Err(SealError::BindingMismatch);
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
    let mut w = crate::codec::Writer::with_capacity(
        format::FIXED_OVERHEAD + header.reader_id.len() + payload.len(),
    );
    env.write_tagged_part(&mut w);
    env.tag = keys.tag(w.as_slice());
    w.put(&env.tag);
    env.signature = issuer.sign(rng, w.as_slice())?;
    w.put(&env.signature);
    Ok(w.into_vec())
}

fn hex8(id: &[u8]) -> String {
    id.iter().map(|b| alloc::format!("{b:02X}")).collect()
}

/// Opens sealed scripts for one reader: its keys, the trusted issuer key, a
/// replay store and an [`OpenCache`].
pub struct Opener<S: ReplayStore> {
    reader_id: Option<String>,
    reader_key: Sm2PrivateKey,
    issuers: Vec<([u8; 8], Sm2PublicKey)>,
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
            .field("issuers", &self.issuers.len())
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
        Opener {
            reader_id: reader_id.map(String::from),
            reader_key,
            issuers: alloc::vec![(issuer_pub.key_id(), issuer_pub)],
            reader_key_id,
            store,
            cache: OpenCache::default(),
            stats: OpenStats::default(),
        }
    }

    /// Trusts one more issuer key (a card company rotating its key, or several cities'
    /// issuers on one reader).
    pub fn with_issuer(mut self, issuer_pub: Sm2PublicKey) -> Self {
        self.issuers.push((issuer_pub.key_id(), issuer_pub));
        self
    }

    /// Mutable access to the replay store (the reader's reconciliation and rebuild).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
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

    /// The clock checks: set, plausible, not behind an accepted script's issue time.
    fn check_clock(&self, now: u64) -> Result<(), OpenError> {
        if now < MIN_PLAUSIBLE_TIME {
            return Err(OpenError::ClockUnset { now });
        }
        let issued = self.store.latest_issued()?;
        if now.saturating_add(CLOCK_SKEW) < issued {
            return Err(OpenError::ClockBehind { now, issued });
        }
        Ok(())
    }

    /// Opens `blob` at time `now` (unix seconds), expecting `expect`. See the module docs
    /// for the order of checks.
    pub fn open(
        &mut self,
        blob: &[u8],
        now: u64,
        expect: Expect<'_>,
    ) -> Result<OpenedScript, OpenError> {
        self.check_clock(now)?;
        // format
        let env = SealedEnvelope::parse(blob)?;
        let digest = crate::crypto::sm3(blob);
        let h = &env.header;
        match (expect, h.kind) {
            (Expect::Command, ScriptKind::Command)
            | (Expect::Query, ScriptKind::Query)
            | (Expect::Terminal, ScriptKind::Terminal)
            | (Expect::DataFor(_), ScriptKind::Data)
            | (Expect::Inspect, _) => {}
            (Expect::Command | Expect::Query | Expect::Terminal | Expect::DataFor(_), found) => {
                return Err(OpenError::WrongKind {
                    expected: match expect {
                        Expect::Command => "command",
                        Expect::Query => "query",
                        Expect::Terminal => "terminal",
                        _ => "data",
                    },
                    found: found.name(),
                });
            }
        }
        let cache_key = CacheKey {
            city: h.city,
            script_id: h.script_id,
            script_version: h.script_version,
            digest,
        };
        if h.kind.is_program()
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
                issuer_key_id: env.issuer_key_id,
                payload: Zeroizing::new(payload.to_vec()),
            };
            self.stats.cache_hits += 1;
            return Ok(opened);
        }
        self.stats.full_opens += 1;
        // issuer key and signature
        let Some((_, issuer)) = self.issuers.iter().find(|(id, _)| *id == env.issuer_key_id) else {
            let expected: Vec<String> = self.issuers.iter().map(|(id, _)| hex8(id)).collect();
            return Err(OpenError::WrongIssuerKey {
                expected: expected.join(" or "),
                found: hex8(&env.issuer_key_id),
            });
        };
        let signed = &blob[..blob.len() - env.signature.len()];
        issuer
            .verify(signed, &env.signature)
            .map_err(|_| OpenError::BadSignature)?;
        // reader
        self.check_reader(&h.reader_id, &env.reader_key_id)?;
        // binding: checked before anything is recorded, so a mismatched pairing does
        // not burn the data script's sequence number
        if let Expect::DataFor(command) = expect
            && h.binding != *command
        {
            return Err(OpenError::WrongCommand {
                bound: hex8(&h.binding),
                running: hex8(command),
            });
        }
        // expiry
        if now >= h.expires {
            return Err(OpenError::Expired {
                expires: h.expires,
                now,
            });
        }
        // replay
        let rkey = ReplayKey::new(h.city, h.kind, &h.reader_id);
        let last = self.store.last(&rkey)?;
        replay::accept(h.kind, last, h.seq, &digest)
            .map_err(|last| OpenError::Replayed { seq: h.seq, last })?;
        // unwrap, authenticate, decrypt
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
        if h.kind.is_program() && crate::crypto::sm3(&payload) != h.binding {
            return Err(OpenError::BadBinding);
        }
        // record
        self.store.record(
            &rkey,
            ReplayEntry {
                seq: h.seq,
                digest,
                issued: h.issued,
            },
        )?;
        if h.kind.is_program() {
            self.cache.insert(cache_key, env.header.clone(), &payload);
        }
        Ok(OpenedScript {
            header: env.header,
            from_cache: false,
            issuer_key_id: env.issuer_key_id,
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
