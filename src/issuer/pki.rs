//! What every part of the PKI shares: object identifiers, the typed error, the SM2
//! signer the `x509-cert` builders sign with, SM2 signature and key checks on parsed
//! objects, PEM and time conversions, and the reader-naming profile.
//!
//! All ASN.1 goes through the RustCrypto `x509-cert` / `der` / `spki` types: this
//! module encodes and decodes no DER by hand.

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use der::asn1::{AnyRef, BitString, ObjectIdentifier, Utf8StringRef};
use der::{Any, DateTime, Decode, DecodePem, Encode, EncodePem, pem::LineEnding};
use rand_core::CryptoRng;
use sm2::dsa::signature::{self, Keypair, Signer};
use sm2::dsa::{DerSignature, Signature, VerifyingKey};
use spki::{
    AlgorithmIdentifier, AlgorithmIdentifierOwned, AssociatedAlgorithmIdentifier,
    SignatureAlgorithmIdentifier, SubjectPublicKeyInfoOwned,
};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::time::Time;

use crate::crypto::sm2::{DEFAULT_DIST_ID, SIGNATURE_LEN, Sm2PrivateKey, Sm2PublicKey};

/// `sm2sign-with-sm3` (GM/T 0006): the signature algorithm of every certificate,
/// request and CRL.
pub const OID_SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");
/// The SM2 curve (GM/T 0006), the `namedCurve` parameter of an SM2 public key.
pub const OID_SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
/// `id-ecPublicKey` (RFC 5480), the algorithm of an SM2 `SubjectPublicKeyInfo`.
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `id-at-commonName`: carries the reader id (or the script signer's name).
pub const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// `id-at-organizationalUnitName`: carries the certificate's role ([`Role`]).
pub const OID_ORG_UNIT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
/// `id-at-organizationName`: the card company, copied from the issuing CA's subject.
pub const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");

/// The project's own OID arc, `2.25.<UUID>` (ITU-T X.667 | ISO/IEC 9834-8, RFC 4122
/// UUID `f43ab226-654a-489e-be26-f6ddb10f3090` as one decimal integer): an arc under
/// `2.25` needs no registration.
pub const OID_PROJECT_ARC: &str = "2.25.324636397500241907971645557769933631632";
/// `<arc>.1.1`: the `certificatePolicies` policy of a desktop reader ([`ReaderKind::Desktop`]).
pub const OID_READER_DESKTOP: &str = "2.25.324636397500241907971645557769933631632.1.1";
/// `<arc>.1.2`: the `certificatePolicies` policy of a reader whose VM and key live in a
/// secure element ([`ReaderKind::SecureElement`]).
pub const OID_READER_SECURE_ELEMENT: &str = "2.25.324636397500241907971645557769933631632.1.2";

/// The UUID of [`OID_PROJECT_ARC`] as an integer.
const PROJECT_UUID: u128 = 324_636_397_500_241_907_971_645_557_769_933_631_632;
/// Base-128 groups of the 128-bit UUID arc (X.690 §8.19.2): ceil(128 / 7).
const UUID_GROUPS: usize = 19;
// The first group is not zero, so the encoding below is the minimal (DER) one.
const _: () = assert!(PROJECT_UUID >> (7 * (UUID_GROUPS - 1)) != 0);

/// The content octets (X.690 §8.19) of `<arc>.1.<leaf>`, `leaf` < 128.
///
/// `der`'s `ObjectIdentifier` (`const-oid`) refuses arcs above 2^32-1 by design, so it
/// cannot hold a `2.25` UUID arc; these octets are computed from the integer and
/// compared with OpenSSL's encoding of the dotted form in the tests. The tag and length
/// around them are `der`'s.
const fn reader_policy_octets(leaf: u8) -> [u8; UUID_GROUPS + 3] {
    let mut out = [0u8; UUID_GROUPS + 3];
    // First two arcs 2.25 in one octet: 2 * 40 + 25.
    out[0] = 105;
    let mut i = 0;
    while i < UUID_GROUPS {
        let group = ((PROJECT_UUID >> (7 * (UUID_GROUPS - 1 - i))) & 0x7F) as u8;
        out[1 + i] = if i + 1 < UUID_GROUPS {
            group | 0x80
        } else {
            group
        };
        i += 1;
    }
    out[UUID_GROUPS + 1] = 1;
    out[UUID_GROUPS + 2] = leaf & 0x7F;
    out
}

/// What kind of reader a reader certificate vouches for (its `certificatePolicies`).
///
/// Bundles that carry card keys are for [`ReaderKind::SecureElement`] readers only: a
/// desktop reader's owner controls its VM and key (`docs/security.md`). Anything a
/// certificate does not clearly say (no policy, an unknown one, or both) is
/// [`ReaderKind::Desktop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReaderKind {
    /// A reader on a general-purpose computer (a cardholder's PC): its owner controls
    /// the VM and the reader key. The default.
    #[default]
    Desktop,
    /// Reader firmware whose VM and reader key live in a secure element.
    SecureElement,
}

impl ReaderKind {
    /// The name the CLI takes and prints: `desktop` or `secure-element`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReaderKind::Desktop => "desktop",
            ReaderKind::SecureElement => "secure-element",
        }
    }

    /// The policy OID, dotted ([`OID_READER_DESKTOP`], [`OID_READER_SECURE_ELEMENT`]).
    pub fn policy_oid(self) -> &'static str {
        match self {
            ReaderKind::Desktop => OID_READER_DESKTOP,
            ReaderKind::SecureElement => OID_READER_SECURE_ELEMENT,
        }
    }

    /// The policy OID's DER content octets (without tag and length).
    pub fn policy_oid_octets(self) -> &'static [u8] {
        const DESKTOP: [u8; UUID_GROUPS + 3] = reader_policy_octets(1);
        const SECURE_ELEMENT: [u8; UUID_GROUPS + 3] = reader_policy_octets(2);
        match self {
            ReaderKind::Desktop => &DESKTOP,
            ReaderKind::SecureElement => &SECURE_ELEMENT,
        }
    }
}

impl fmt::Display for ReaderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReaderKind {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s {
            "desktop" => Ok(ReaderKind::Desktop),
            "secure-element" => Ok(ReaderKind::SecureElement),
            other => Err(PkiError::Decode {
                what: "reader kind",
                reason: format!("{other:?} (expected desktop or secure-element)"),
            }),
        }
    }
}

/// Longest reader id (the envelope's limit, `envelope::format::MAX_READER_ID`).
pub const MAX_READER_ID: usize = 64;
/// Longest issuer chain [`crate::issuer::TrustStore`] builds (certificates above the leaf).
pub const MAX_CHAIN_DEPTH: usize = 8;

/// A PKI failure: one line, with the subject or serial it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Bytes that are not a well-formed certificate, request or CRL.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded (`certificate`, `certificate request`, `CRL`).
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// Building or encoding an object failed.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's reason.
        reason: String,
    },
    /// An algorithm other than SM2-with-SM3 / an SM2 public key.
    #[error("{what}: unsupported algorithm {oid} (only SM2 with SM3 is accepted)")]
    UnsupportedAlgorithm {
        /// Which object.
        what: String,
        /// The algorithm found.
        oid: String,
    },
    /// A signature that does not verify under the issuer's key (SM2/SM3, signer id
    /// `1234567812345678`).
    #[error("bad signature on {what}")]
    BadSignature {
        /// Which object (`certificate CN=R1`, `CRL of CN=City CA`, …).
        what: String,
    },
    /// A certificate past its `notAfter`.
    #[error("certificate {subject} expired at {}", rfc3339(*not_after))]
    Expired {
        /// The certificate's subject.
        subject: String,
        /// Its `notAfter`, unix seconds.
        not_after: u64,
    },
    /// A certificate before its `notBefore`.
    #[error("certificate {subject} is not valid before {}", rfc3339(*not_before))]
    NotYetValid {
        /// The certificate's subject.
        subject: String,
        /// Its `notBefore`, unix seconds.
        not_before: u64,
    },
    /// A certificate listed on its issuer's CRL.
    #[error("certificate serial {serial} ({subject}) was revoked at {}", rfc3339(*at))]
    Revoked {
        /// Serial number, upper-case hex as OpenSSL prints it.
        serial: String,
        /// The certificate's subject.
        subject: String,
        /// Revocation date, unix seconds.
        at: u64,
    },
    /// No trusted root or known intermediate issued this certificate.
    #[error("unknown issuer {issuer} of {subject} (not a trusted CA or known intermediate)")]
    UnknownIssuer {
        /// The certificate whose issuer is missing.
        subject: String,
        /// The issuer name it names.
        issuer: String,
    },
    /// An issuing certificate without `basicConstraints CA:TRUE` and `keyCertSign`.
    #[error("{subject} is not a CA (needs basicConstraints CA:TRUE and keyUsage keyCertSign)")]
    NotACa {
        /// The would-be issuer.
        subject: String,
    },
    /// A chain longer than an issuer's `pathLenConstraint` (or [`MAX_CHAIN_DEPTH`]) allows.
    #[error("chain too long under {subject} (pathLen {path_len})")]
    PathTooLong {
        /// The CA whose constraint is exceeded.
        subject: String,
        /// Its `pathLenConstraint`.
        path_len: u8,
    },
    /// A leaf that is not a reader certificate (a CA, or another role).
    #[error("{subject} is not a {expected} certificate")]
    WrongRole {
        /// The certificate's subject.
        subject: String,
        /// The role asked for.
        expected: Role,
    },
    /// A reader certificate for another reader.
    #[error("certificate is for reader {found:?}, expected {expected:?}")]
    WrongReaderId {
        /// The reader id the caller expected.
        expected: String,
        /// The reader id in the certificate.
        found: String,
    },
    /// A certificate whose public key is not the key it is used with.
    #[error("certificate public key does not match the {what}")]
    KeyMismatch {
        /// What it was compared with (`reader key`, `request key`, …).
        what: &'static str,
    },
    /// An invalid reader id (empty, longer than 64 bytes, or with control characters).
    #[error("invalid reader id {id:?} (1-64 printable characters)")]
    InvalidReaderId {
        /// The rejected id.
        id: String,
    },
    /// A critical extension this verifier does not understand (RFC 5280 §4.2).
    #[error("{subject}: unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// The certificate's subject.
        subject: String,
        /// The extension.
        oid: String,
    },
    /// A CRL that would not move its issuer's list forward: not newer than the installed
    /// one (its `crlNumber`, or `thisUpdate` without numbers), so installing it could
    /// un-revoke a certificate.
    #[error(
        "CRL of {issuer}: number {number} is not above the installed {installed} (no rollback)"
    )]
    CrlNotNewer {
        /// The CRL's issuer.
        issuer: String,
        /// Its `crlNumber` (or `thisUpdate`, Unix seconds, without numbers).
        number: u64,
        /// The installed one's.
        installed: u64,
    },
    /// A CRL whose issuer is not a trusted root or known intermediate.
    #[error("CRL of {issuer}: not issued by a trusted CA")]
    CrlUntrusted {
        /// The issuer name it names.
        issuer: String,
    },
    /// A malformed or contradictory field.
    #[error("{subject}: {reason}")]
    Malformed {
        /// The object's subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// No CRL from an issuer whose certificates must be checked for revocation.
    #[error("no CRL from {issuer} (revocation cannot be checked)")]
    MissingCrl {
        /// The issuer.
        issuer: String,
    },
    /// A CRL past its `nextUpdate` (or not yet valid): revocation cannot be trusted.
    #[error("CRL from {issuer} is stale (next update {})", rfc3339(*next_update))]
    StaleCrl {
        /// The CRL's issuer.
        issuer: String,
        /// Its `nextUpdate`, unix seconds.
        next_update: u64,
    },
    /// `ca revoke` of a serial this CA never issued.
    #[error("serial {serial} was not issued by this CA")]
    UnknownSerial {
        /// The serial, hex.
        serial: String,
    },
    /// `ca revoke` of a serial that is already revoked.
    #[error("serial {serial} is already revoked")]
    AlreadyRevoked {
        /// The serial, hex.
        serial: String,
    },
    /// The CA state file cannot be read or written, or is inconsistent.
    #[error("CA state {path}: {reason}")]
    State {
        /// The state file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An empty chain was passed.
    #[error("no certificate given")]
    EmptyChain,
    /// Signing failed (random generator failure).
    #[error("SM2 signing failed")]
    Sign,
}

/// The role a certificate carries in its subject's `OU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A reader (`OU=reader`, `CN=` the reader id).
    Reader,
    /// The card company's script-signing key (`OU=script-signing`).
    ScriptSigning,
}

impl Role {
    /// The `OU` value naming this role.
    pub fn org_unit(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::ScriptSigning => "script-signing",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.org_unit())
    }
}

/// Formats unix seconds as RFC 3339 UTC (`2030-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    match DateTime::from_unix_duration(Duration::from_secs(secs)) {
        Ok(dt) => dt.to_string(),
        Err(_) => format!("{secs} (unix seconds)"),
    }
}

/// Unix seconds as an X.509 `Time` (UTCTime through 2049, GeneralizedTime after).
pub fn time_from_unix(secs: u64) -> Result<Time, PkiError> {
    DateTime::from_unix_duration(Duration::from_secs(secs))
        .map(Time::from)
        .map_err(|e| PkiError::Encode {
            what: "time",
            reason: e.to_string(),
        })
}

/// An X.509 `Time` as unix seconds.
pub fn time_to_unix(t: Time) -> u64 {
    t.to_unix_duration().as_secs()
}

/// A serial number as upper-case hex without separators (`openssl x509 -serial` style).
pub fn serial_hex(bytes: &[u8]) -> String {
    // Leading zero bytes (DER's sign byte, or a fixed-width integer) are not printed,
    // as OpenSSL prints serials.
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    let bytes = bytes.get(first..).unwrap_or_default();
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Parses a serial written as hex (`07`, `0x1F`, `1f:a0`) into its magnitude bytes.
pub fn parse_serial(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let mut out = Vec::with_capacity(padded.len() / 2);
    for i in (0..padded.len()).step_by(2) {
        out.push(u8::from_str_radix(padded.get(i..i + 2)?, 16).ok()?);
    }
    // Canonical form: no leading zero bytes.
    let first = out.iter().position(|b| *b != 0).unwrap_or(out.len() - 1);
    Some(out.split_off(first))
}

/// Checks a reader id: 1 to 64 bytes of printable characters.
pub fn check_reader_id(id: &str) -> Result<(), PkiError> {
    if id.is_empty() || id.len() > MAX_READER_ID || id.chars().any(char::is_control) {
        return Err(PkiError::InvalidReaderId { id: id.into() });
    }
    Ok(())
}

fn atv(oid: ObjectIdentifier, value: &str) -> Result<AttributeTypeAndValue, PkiError> {
    let enc = |e: der::Error| PkiError::Encode {
        what: "name",
        reason: e.to_string(),
    };
    let s = Utf8StringRef::new(value).map_err(enc)?;
    Ok(AttributeTypeAndValue {
        oid,
        value: Any::encode_from(&s).map_err(enc)?,
    })
}

/// Builds the subject of an end-entity certificate: `O=<org>` (when the issuing CA
/// names one), `OU=<role>`, `CN=<name>`. Built attribute by attribute, so a reader id
/// with `,` or `=` cannot add attributes.
pub fn entity_name(role: Role, cn: &str, org: Option<&str>) -> Result<Name, PkiError> {
    let mut rdns = RdnSequence::default();
    let mut push = |oid, value: &str| -> Result<(), PkiError> {
        let rdn = RelativeDistinguishedName::try_from(vec![atv(oid, value)?]).map_err(|e| {
            PkiError::Encode {
                what: "name",
                reason: e.to_string(),
            }
        })?;
        rdns.push(rdn);
        Ok(())
    };
    if let Some(o) = org {
        push(OID_ORGANIZATION, o)?;
    }
    push(OID_ORG_UNIT, role.org_unit())?;
    push(OID_COMMON_NAME, cn)?;
    // `Name` is built from its own DER: the crate checks the sequence on the way in.
    let der = rdns.to_der().map_err(|e| PkiError::Encode {
        what: "name",
        reason: e.to_string(),
    })?;
    Name::from_der(&der).map_err(|e| PkiError::Encode {
        what: "name",
        reason: e.to_string(),
    })
}

/// Parses an RFC 4514 subject (`CN=Shenzhen Tong CA,O=Shenzhen Tong`).
pub fn parse_name(text: &str) -> Result<Name, PkiError> {
    text.parse::<Name>().map_err(|e| PkiError::Decode {
        what: "subject name",
        reason: format!("{text:?}: {e}"),
    })
}

/// The single value of attribute `oid` in `name`, as text; `None` when absent.
/// Two values (a name naming two readers) is an error.
pub fn name_attr(name: &Name, oid: ObjectIdentifier) -> Result<Option<String>, PkiError> {
    let mut found = None;
    for a in name.iter().filter(|a| a.oid == oid) {
        if found.is_some() {
            return Err(PkiError::Malformed {
                subject: name.to_string(),
                reason: format!("attribute {oid} appears twice"),
            });
        }
        let s = x509_cert::ext::pkix::name::DirectoryString::try_from(&a.value)
            .map(|d| d.value().into_owned())
            .map_err(|e| PkiError::Malformed {
                subject: name.to_string(),
                reason: format!("attribute {oid} is not a string: {e}"),
            })?;
        found = Some(s);
    }
    Ok(found)
}

/// The `SubjectPublicKeyInfo` of an SM2 key: `id-ecPublicKey` with the SM2 curve.
pub fn spki_of(key: &Sm2PublicKey) -> Result<SubjectPublicKeyInfoOwned, PkiError> {
    let vk = verifying_key(key)?;
    SubjectPublicKeyInfoOwned::from_key(&vk).map_err(|e| PkiError::Encode {
        what: "public key",
        reason: e.to_string(),
    })
}

/// The SM2 key in a `SubjectPublicKeyInfo`; any other algorithm or curve is refused.
pub fn key_from_spki(
    spki: &SubjectPublicKeyInfoOwned,
    what: &str,
) -> Result<Sm2PublicKey, PkiError> {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SM2_CURVE) {
        return Err(PkiError::UnsupportedAlgorithm {
            what: format!("{what} public key"),
            oid: match curve {
                Some(c) => format!("{} (curve {c})", spki.algorithm.oid),
                None => spki.algorithm.oid.to_string(),
            },
        });
    }
    let bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| PkiError::Malformed {
            subject: what.into(),
            reason: "public key bit string has unused bits".into(),
        })?;
    Sm2PublicKey::from_sec1_bytes(bytes).map_err(|e| PkiError::Malformed {
        subject: what.into(),
        reason: e.to_string(),
    })
}

fn verifying_key(key: &Sm2PublicKey) -> Result<VerifyingKey, PkiError> {
    VerifyingKey::from_sec1_bytes(DEFAULT_DIST_ID, &key.to_sec1_bytes()).map_err(|_| {
        PkiError::Encode {
            what: "public key",
            reason: "not an SM2 point".into(),
        }
    })
}

/// Checks an SM2-with-SM3 signature (DER `SEQUENCE { r, s }` in a BIT STRING) over
/// `tbs` with the signer id `1234567812345678`. `what` names the object in errors.
pub fn verify_signature(
    key: &Sm2PublicKey,
    algorithm: &AlgorithmIdentifierOwned,
    signature: &BitString,
    tbs: &[u8],
    what: &str,
) -> Result<(), PkiError> {
    check_sig_alg(algorithm, what)?;
    let bad = || PkiError::BadSignature { what: what.into() };
    let der = signature.as_bytes().ok_or_else(bad)?;
    let sig = DerSignature::from_bytes(der).map_err(|_| bad())?;
    let sig = Signature::try_from(sig).map_err(|_| bad())?;
    let mut rs = [0u8; SIGNATURE_LEN];
    rs.copy_from_slice(&sig.to_bytes());
    key.verify(tbs, &rs).map_err(|_| bad())
}

/// Accepts only `sm2sign-with-sm3` with absent (or NULL) parameters.
pub fn check_sig_alg(algorithm: &AlgorithmIdentifierOwned, what: &str) -> Result<(), PkiError> {
    let params_ok = match &algorithm.parameters {
        None => true,
        Some(p) => p.is_null(),
    };
    if algorithm.oid != OID_SM2_WITH_SM3 || !params_ok {
        return Err(PkiError::UnsupportedAlgorithm {
            what: what.into(),
            oid: algorithm.oid.to_string(),
        });
    }
    Ok(())
}

/// Signs with an [`Sm2PrivateKey`] for the `x509-cert` builders: SM2 with SM3,
/// signer id `1234567812345678`, DER signatures, randomness from `rng`.
///
/// The builders want a plain [`Signer`]; the generator sits in a `RefCell` because
/// [`Signer::try_sign`] takes `&self`.
pub struct CertSigner<'k, R> {
    key: &'k Sm2PrivateKey,
    verifying: VerifyingKey,
    rng: RefCell<R>,
}

impl<'k, R: CryptoRng> CertSigner<'k, R> {
    /// A signer for `key`, drawing its nonces from `rng`.
    pub fn new(key: &'k Sm2PrivateKey, rng: R) -> Result<Self, PkiError> {
        Ok(Self {
            key,
            verifying: verifying_key(key.public_key())?,
            rng: RefCell::new(rng),
        })
    }

    /// Signs `msg` and returns the DER signature as a BIT STRING.
    pub fn sign_bits(&self, msg: &[u8]) -> Result<BitString, PkiError> {
        let sig: DerSignature = self.try_sign(msg).map_err(|_| PkiError::Sign)?;
        BitString::from_bytes(sig.as_bytes()).map_err(|e| PkiError::Encode {
            what: "signature",
            reason: e.to_string(),
        })
    }
}

impl<R> fmt::Debug for CertSigner<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertSigner(REDACTED)")
    }
}

impl<R> Keypair for CertSigner<'_, R> {
    type VerifyingKey = VerifyingKey;
    fn verifying_key(&self) -> VerifyingKey {
        self.verifying.clone()
    }
}

impl<R> SignatureAlgorithmIdentifier for CertSigner<'_, R> {
    type Params = AnyRef<'static>;
    const SIGNATURE_ALGORITHM_IDENTIFIER: AlgorithmIdentifier<AnyRef<'static>> =
        Signature::ALGORITHM_IDENTIFIER;
}

impl<R: CryptoRng> Signer<DerSignature> for CertSigner<'_, R> {
    fn try_sign(&self, msg: &[u8]) -> Result<DerSignature, signature::Error> {
        let mut rng = self
            .rng
            .try_borrow_mut()
            .map_err(|_| signature::Error::new())?;
        let rs = self
            .key
            .sign(&mut *rng, msg)
            .map_err(|_| signature::Error::new())?;
        Ok(Signature::from_slice(&rs)?.to_der())
    }
}

/// Decodes one PEM object of type `T` (`CERTIFICATE`, `CERTIFICATE REQUEST`, `X509 CRL`).
pub fn from_pem<T: DecodePem>(text: &str, what: &'static str) -> Result<T, PkiError> {
    T::from_pem(text.trim()).map_err(|e| PkiError::Decode {
        what,
        reason: e.to_string(),
    })
}

/// Encodes `obj` as PEM with LF line endings.
pub fn to_pem<T: EncodePem>(obj: &T, what: &'static str) -> Result<String, PkiError> {
    obj.to_pem(LineEnding::LF).map_err(|e| PkiError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Parses RFC 3339 UTC (`2030-01-01T00:00:00Z`) into unix seconds.
pub fn parse_rfc3339(text: &str) -> Result<u64, PkiError> {
    text.trim()
        .parse::<DateTime>()
        .map(|d| d.unix_duration().as_secs())
        .map_err(|e| PkiError::Decode {
            what: "time",
            reason: format!("{text:?} is not RFC 3339 UTC (2030-01-01T00:00:00Z): {e}"),
        })
}

/// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, an EC key on the
/// SM2 curve), the form `openssl x509 -CAkey` reads. The text zeroizes on drop.
pub fn private_key_pkcs8_pem(key: &Sm2PrivateKey) -> Result<zeroize::Zeroizing<String>, PkiError> {
    use sm2::pkcs8::EncodePrivateKey;
    let enc = |reason: String| PkiError::Encode {
        what: "private key",
        reason,
    };
    let sk = sm2::SecretKey::from_slice(&key.to_bytes()[..]).map_err(|e| enc(e.to_string()))?;
    sk.to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| enc(e.to_string()))
}
