//! SM2 (GB/T 32918 / GM/T 0003): key pairs, signatures and public-key encryption.
//!
//! * Signatures use SM3 and the distinguishing identifier [`DEFAULT_DIST_ID`]
//!   (`1234567812345678`, GM/T 0009 default) unless a caller asks for another one; they
//!   are 64 bytes `r ‖ s`, big endian.
//! * Encryption uses the C1‖C3‖C2 layout (GM/T 0003-2012 current order) with an
//!   uncompressed C1 point: ciphertext length = plaintext length + 97.
//! * Private keys zeroize their scalar on drop and print `REDACTED` in `Debug`.
//!   The `sm2` crate's own signing/decrypting key objects do not zeroize, so this
//!   module keeps only the zeroizing scalar and builds them for the duration of one
//!   operation (costing one extra base-point multiplication per private-key use).

use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRng;
use sm2::dsa::signature::{RandomizedSigner, Verifier};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::elliptic_curve::Generate;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use sm2::{NonZeroScalar, PublicKey};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The default SM2 distinguishing identifier (GM/T 0009): ASCII `1234567812345678`.
pub const DEFAULT_DIST_ID: &str = "1234567812345678";

/// Length of an SM2 signature `r ‖ s`.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an uncompressed SEC1 public point (`04 ‖ x ‖ y`).
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of a private scalar.
pub const PRIVATE_KEY_LEN: usize = 32;
/// Bytes SM2 encryption adds to a plaintext (C1 uncompressed 65 + C3 32).
pub const CIPHERTEXT_OVERHEAD: usize = 97;

/// An SM2 failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Sm2Error {
    /// The private key bytes are not a scalar in `[1, n-1]` or not 32 bytes long.
    #[error("invalid SM2 private key ({len} bytes, must be a 32-byte scalar in [1, n-1])")]
    InvalidPrivateKey {
        /// Length of the rejected input.
        len: usize,
    },
    /// The public key bytes are not a valid point on the curve.
    #[error("invalid SM2 public key ({len} bytes, must be a SEC1 point on the curve)")]
    InvalidPublicKey {
        /// Length of the rejected input.
        len: usize,
    },
    /// The distinguishing identifier is too long (over 8191 bytes).
    #[error("SM2 distinguishing identifier too long")]
    InvalidDistId,
    /// The signature does not verify under this key.
    #[error("SM2 signature does not verify")]
    BadSignature,
    /// Signing failed (random generator failure).
    #[error("SM2 signing failed")]
    SignFailed,
    /// Encryption failed (empty message or random generator failure).
    #[error("SM2 encryption failed (empty message?)")]
    EncryptFailed,
    /// Decryption failed: malformed ciphertext, C1 not on the curve or C3 mismatch.
    #[error("SM2 decryption failed (not for this key, or corrupted)")]
    DecryptFailed,
}

/// An SM2 public key (a point on the curve), with its signature-verification
/// context for [`DEFAULT_DIST_ID`] precomputed.
#[derive(Clone)]
pub struct Sm2PublicKey {
    point: PublicKey,
    verifier: VerifyingKey,
}

impl PartialEq for Sm2PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}
impl Eq for Sm2PublicKey {}

impl fmt::Debug for Sm2PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sm2PublicKey(")?;
        for b in self.to_sec1_bytes() {
            write!(f, "{b:02X}")?;
        }
        write!(f, ")")
    }
}

impl Sm2PublicKey {
    fn from_point(point: PublicKey) -> Result<Self, Sm2Error> {
        let verifier =
            VerifyingKey::new(DEFAULT_DIST_ID, point).map_err(|_| Sm2Error::InvalidDistId)?;
        Ok(Self { point, verifier })
    }

    /// Parses a SEC1 point (uncompressed `04 ‖ x ‖ y` or compressed `02/03 ‖ x`).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, Sm2Error> {
        let point = PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| Sm2Error::InvalidPublicKey { len: bytes.len() })?;
        Self::from_point(point)
    }

    /// The uncompressed SEC1 encoding `04 ‖ x ‖ y` (65 bytes).
    pub fn to_sec1_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        let enc = self.point.to_sec1_point(false);
        let mut out = [0u8; PUBLIC_KEY_LEN];
        let bytes = enc.as_bytes();
        if bytes.len() == PUBLIC_KEY_LEN {
            out.copy_from_slice(bytes);
        }
        out
    }

    /// An 8-byte identifier of this key: the first 8 bytes of SM3 over the
    /// uncompressed point. Used in envelopes to tell "wrong key" from "bad signature".
    pub fn key_id(&self) -> [u8; 8] {
        let d = super::sm3(&self.to_sec1_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }

    /// Verifies a 64-byte `r ‖ s` signature over `msg` with [`DEFAULT_DIST_ID`].
    pub fn verify(&self, msg: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Result<(), Sm2Error> {
        count!(VERIFY);
        let sig = Signature::from_slice(signature).map_err(|_| Sm2Error::BadSignature)?;
        self.verifier
            .verify(msg, &sig)
            .map_err(|_| Sm2Error::BadSignature)
    }

    /// Verifies a signature made with another distinguishing identifier.
    pub fn verify_with_id(
        &self,
        dist_id: &str,
        msg: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), Sm2Error> {
        count!(VERIFY);
        let vk = VerifyingKey::new(dist_id, self.point).map_err(|_| Sm2Error::InvalidDistId)?;
        let sig = Signature::from_slice(signature).map_err(|_| Sm2Error::BadSignature)?;
        vk.verify(msg, &sig).map_err(|_| Sm2Error::BadSignature)
    }

    /// Encrypts `msg` to this key (C1‖C3‖C2). `msg` must not be empty.
    pub fn encrypt<R: CryptoRng>(&self, rng: &mut R, msg: &[u8]) -> Result<Vec<u8>, Sm2Error> {
        count!(ENCRYPT);
        EncryptingKey::new_with_mode(self.point, Mode::C1C3C2)
            .encrypt(rng, msg)
            .map_err(|_| Sm2Error::EncryptFailed)
    }
}

/// An SM2 private key. The scalar is zeroized on drop; `Debug` prints `REDACTED`.
#[derive(Clone)]
pub struct Sm2PrivateKey {
    scalar: Zeroizing<NonZeroScalar>,
    public: Sm2PublicKey,
}

impl ZeroizeOnDrop for Sm2PrivateKey {}

impl fmt::Debug for Sm2PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sm2PrivateKey(REDACTED)")
    }
}

impl PartialEq for Sm2PrivateKey {
    /// Constant-time comparison of the scalars.
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.scalar.ct_eq(&*other.scalar))
    }
}
impl Eq for Sm2PrivateKey {}

impl Sm2PrivateKey {
    fn from_scalar(scalar: NonZeroScalar) -> Result<Self, Sm2Error> {
        let public = Sm2PublicKey::from_point(PublicKey::from_secret_scalar(&scalar))?;
        Ok(Self {
            scalar: Zeroizing::new(scalar),
            public,
        })
    }

    /// Generates a fresh key pair from `rng`.
    pub fn generate<R: CryptoRng>(rng: &mut R) -> Self {
        // `from_scalar` only fails for an over-long identifier, never for the
        // short constant default one; retrying with a fresh scalar keeps this total.
        loop {
            let scalar = NonZeroScalar::generate_from_rng(rng);
            if let Ok(k) = Self::from_scalar(scalar) {
                return k;
            }
        }
    }

    /// Parses a big-endian 32-byte private scalar in `[1, n-1]`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Sm2Error> {
        if bytes.len() != PRIVATE_KEY_LEN {
            return Err(Sm2Error::InvalidPrivateKey { len: bytes.len() });
        }
        let scalar = NonZeroScalar::try_from(bytes)
            .map_err(|_| Sm2Error::InvalidPrivateKey { len: bytes.len() })?;
        Self::from_scalar(scalar)
    }

    /// The big-endian private scalar, in a buffer that zeroizes on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; PRIVATE_KEY_LEN]> {
        let mut fb = self.scalar.to_bytes();
        let mut out = Zeroizing::new([0u8; PRIVATE_KEY_LEN]);
        out.copy_from_slice(&fb);
        fb.zeroize();
        out
    }

    /// The matching public key.
    pub fn public_key(&self) -> &Sm2PublicKey {
        &self.public
    }

    /// Signs `msg` with [`DEFAULT_DIST_ID`]; returns `r ‖ s`.
    pub fn sign<R: CryptoRng>(
        &self,
        rng: &mut R,
        msg: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], Sm2Error> {
        self.sign_with_id(DEFAULT_DIST_ID, rng, msg)
    }

    /// Signs `msg` with another distinguishing identifier.
    pub fn sign_with_id<R: CryptoRng>(
        &self,
        dist_id: &str,
        rng: &mut R,
        msg: &[u8],
    ) -> Result<[u8; SIGNATURE_LEN], Sm2Error> {
        count!(SIGN);
        let sk = SigningKey::from_nonzero_scalar(dist_id, *self.scalar)
            .map_err(|_| Sm2Error::InvalidDistId)?;
        let sig: Signature = sk
            .try_sign_with_rng(rng, msg)
            .map_err(|_| Sm2Error::SignFailed)?;
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }

    /// Decrypts a C1‖C3‖C2 ciphertext made for this key. The plaintext is returned in
    /// a buffer that zeroizes on drop.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Sm2Error> {
        count!(DECRYPT);
        if ciphertext.len() <= CIPHERTEXT_OVERHEAD || ciphertext.first() != Some(&0x04) {
            return Err(Sm2Error::DecryptFailed);
        }
        let dk = DecryptingKey::new_with_mode(*self.scalar, Mode::C1C3C2);
        dk.decrypt(ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| Sm2Error::DecryptFailed)
    }
}

#[cfg(test)]
pub(crate) mod test_rng {
    //! Deterministic generator for unit tests.
    use rand_core::{TryCryptoRng, TryRng};

    /// A deterministic test generator (SplitMix64); NOT for production use.
    pub(crate) struct TestRng(pub(crate) u64);
    impl TryRng for TestRng {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, core::convert::Infallible> {
            Ok(self.try_next_u64()? as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, core::convert::Infallible> {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            Ok(z ^ (z >> 31))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), core::convert::Infallible> {
            for chunk in dst.chunks_mut(8) {
                let v = self.try_next_u64()?.to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            Ok(())
        }
    }
    impl TryCryptoRng for TestRng {}
}

#[cfg(test)]
mod tests {
    use super::test_rng::TestRng;
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Vectors from the sm2 0.14 crate's tests (tests/sm2dsa.rs, tests/sm2pke.rs).
    const DSA_PUB: &str = "0408D77AE04C01CC4C1104360DD8AF6B6F7DF334283D7C1A6AFD5652407B87BEE5014E2A57C36C150D16324DC664E31E6432359609C4E79847A5B161C8C7364C8A";
    const DSA_ID: &str = "example@rustcrypto.org";
    const DSA_SIG: &str = "d1dcccedd9fb785e0f67c16b7c52901625c0b69de9bca2144acc7be713cad2fcf7d1eae6e3a157b36c65f672f738ca8b46298bf149a6510072c431b49cd88b1c";
    const PKE_PRIV: &str = "3DDD2A3679BF6F1DFC3B49D3E99114718E48EC170EB4E4D3A82052DAB19E8B50";
    const PKE_CIPHER: &str = "041ed68db303f5bc6bce516d5a62e1cd16781d3007df6864d970a56d46a6cecca0e0d33bfc71e78c440ae6afeef1a18cce473b3e27002189a058ddadc9182c80a3f13be66476ba6ef66d95a7fb11f30de441b3b66d566e48348bd830e584e7ec37f9b704ef32eba9055c";

    #[test]
    fn published_signature_verifies() {
        let pk = Sm2PublicKey::from_sec1_bytes(&hex(DSA_PUB)).unwrap();
        let sig: [u8; 64] = hex(DSA_SIG).try_into().unwrap();
        pk.verify_with_id(DSA_ID, b"testing", &sig).unwrap();
        // Same signature, other message / other identifier: rejected.
        assert_eq!(
            pk.verify_with_id(DSA_ID, b"testinh", &sig),
            Err(Sm2Error::BadSignature)
        );
        assert_eq!(pk.verify(b"testing", &sig), Err(Sm2Error::BadSignature));
        let mut bad = sig;
        bad[63] ^= 1;
        assert!(pk.verify_with_id(DSA_ID, b"testing", &bad).is_err());
    }

    #[test]
    fn published_ciphertext_decrypts() {
        let sk = Sm2PrivateKey::from_bytes(&hex(PKE_PRIV)).unwrap();
        // The crate's vector is in the C1C3C2 layout its DecryptingKey::new uses.
        assert_eq!(
            sk.decrypt(&hex(PKE_CIPHER)).unwrap().as_slice(),
            b"plaintext"
        );
        let mut c = hex(PKE_CIPHER);
        let n = c.len();
        c[n - 1] ^= 0x01;
        assert_eq!(sk.decrypt(&c), Err(Sm2Error::DecryptFailed));
    }

    #[test]
    fn sign_verify_round_trip() {
        let mut rng = TestRng(1);
        let sk = Sm2PrivateKey::generate(&mut rng);
        let sig = sk.sign(&mut rng, b"hello").unwrap();
        sk.public_key().verify(b"hello", &sig).unwrap();
        assert!(sk.public_key().verify(b"hellp", &sig).is_err());
        let other = Sm2PrivateKey::generate(&mut rng);
        assert!(other.public_key().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn encrypt_decrypt_round_trip() {
        let mut rng = TestRng(2);
        let sk = Sm2PrivateKey::generate(&mut rng);
        let ct = sk
            .public_key()
            .encrypt(&mut rng, b"content key 0123")
            .unwrap();
        assert_eq!(ct.len(), 16 + CIPHERTEXT_OVERHEAD);
        assert_eq!(sk.decrypt(&ct).unwrap().as_slice(), b"content key 0123");
        let other = Sm2PrivateKey::generate(&mut rng);
        assert_eq!(other.decrypt(&ct), Err(Sm2Error::DecryptFailed));
        assert!(sk.public_key().encrypt(&mut rng, b"").is_err());
    }

    #[test]
    fn key_bytes_round_trip_and_redacted_debug() {
        let mut rng = TestRng(3);
        let sk = Sm2PrivateKey::generate(&mut rng);
        let bytes = sk.to_bytes();
        let again = Sm2PrivateKey::from_bytes(&bytes[..]).unwrap();
        assert_eq!(sk, again);
        assert_eq!(again.public_key(), sk.public_key());
        let pub_bytes = sk.public_key().to_sec1_bytes();
        assert_eq!(pub_bytes[0], 0x04);
        assert_eq!(
            &Sm2PublicKey::from_sec1_bytes(&pub_bytes).unwrap(),
            sk.public_key()
        );
        let dbg = alloc::format!("{sk:?}");
        assert!(dbg.contains("REDACTED"));
        let hexkey: alloc::string::String =
            bytes.iter().map(|b| alloc::format!("{b:02X}")).collect();
        assert!(!dbg.to_uppercase().contains(&hexkey[..8]));
    }

    #[test]
    fn invalid_keys_rejected() {
        assert!(Sm2PrivateKey::from_bytes(&[0u8; 32]).is_err());
        assert!(Sm2PrivateKey::from_bytes(&[0xFFu8; 32]).is_err());
        assert!(Sm2PrivateKey::from_bytes(&[1u8; 31]).is_err());
        let mut p = hex(DSA_PUB);
        p[10] ^= 1;
        assert!(Sm2PublicKey::from_sec1_bytes(&p).is_err());
        assert!(Sm2PublicKey::from_sec1_bytes(&[]).is_err());
    }
}

/// How many SM2 operations this process has done, for a service's metrics (a firmware
/// build without 64-bit atomics counts nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sm2Counts {
    /// Signatures made.
    pub sign: u64,
    /// Signatures verified (whatever the result).
    pub verify: u64,
    /// Encryptions.
    pub encrypt: u64,
    /// Decryptions (whatever the result).
    pub decrypt: u64,
}

#[cfg(target_has_atomic = "64")]
mod counters {
    use core::sync::atomic::{AtomicU64, Ordering};
    pub(super) static SIGN: AtomicU64 = AtomicU64::new(0);
    pub(super) static VERIFY: AtomicU64 = AtomicU64::new(0);
    pub(super) static ENCRYPT: AtomicU64 = AtomicU64::new(0);
    pub(super) static DECRYPT: AtomicU64 = AtomicU64::new(0);
    pub(super) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The SM2 operations done so far by this process.
pub fn counts() -> Sm2Counts {
    #[cfg(target_has_atomic = "64")]
    {
        use counters::*;
        Sm2Counts {
            sign: get(&SIGN),
            verify: get(&VERIFY),
            encrypt: get(&ENCRYPT),
            decrypt: get(&DECRYPT),
        }
    }
    #[cfg(not(target_has_atomic = "64"))]
    {
        Sm2Counts::default()
    }
}

macro_rules! count {
    ($c:ident) => {
        #[cfg(target_has_atomic = "64")]
        counters::bump(&counters::$c);
    };
}
use count;
