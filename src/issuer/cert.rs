//! Issuing SM2 X.509 v3 certificates (CA, reader, script-signing) and reading the
//! fields the verifier and the CLI need.
//!
//! Every certificate carries `subjectKeyIdentifier` and `authorityKeyIdentifier`
//! (SHA-1 of the key bits, RFC 5280 §4.2.1.2 method 1, as OpenSSL computes them),
//! a critical `basicConstraints` and a critical `keyUsage`:
//! CAs get `CA:TRUE` (with an optional `pathLenConstraint`) and `keyCertSign, cRLSign`;
//! readers and the script signer get `CA:FALSE` and `digitalSignature`.
//!
//! A reader certificate also carries a non-critical `certificatePolicies` with one
//! policy naming its [`ReaderKind`] ([`reader_kind_of`] reads it back).

use der::asn1::OctetString;
use der::oid::AssociatedOid;
use der::{Any, Decode, Encode, Sequence, Tag, Tagged};
use rand_core::CryptoRng;
use sm2::dsa::DerSignature;
use spki::SubjectPublicKeyInfoRef;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::{Certificate, TbsCertificate};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use super::pki::{
    CertSigner, OID_COMMON_NAME, OID_ORG_UNIT, OID_ORGANIZATION, PkiError, ReaderKind, Role,
    key_from_spki, name_attr, serial_hex, spki_of, time_from_unix, time_to_unix, verify_signature,
};
use crate::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};

/// What a certificate is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// A certification authority; `path_len` limits the CAs below it (`None`: no limit).
    Ca {
        /// `pathLenConstraint`.
        path_len: Option<u8>,
    },
    /// A reader or the script signer: signs, issues nothing.
    EndEntity,
}

/// The contents of a certificate to issue.
#[derive(Debug, Clone)]
pub struct CertTemplate {
    /// Serial number (unique per issuing CA).
    pub serial: u64,
    /// The subject (see [`super::pki::entity_name`] for readers).
    pub subject: Name,
    /// The subject's public key.
    pub public_key: Sm2PublicKey,
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity, unix seconds.
    pub not_after: u64,
    /// CA or end entity.
    pub kind: CertKind,
    /// For a reader: its kind, as a `certificatePolicies` policy. `None`: no
    /// `certificatePolicies` (CAs, the script signer).
    pub reader_kind: Option<ReaderKind>,
}

struct Profile {
    subject: Name,
    issuer: Name,
    kind: CertKind,
    reader_kind: Option<ReaderKind>,
}

/// `PolicyInformation` (RFC 5280 §4.2.1.4) with the policy identifier as a raw
/// `OBJECT IDENTIFIER`: `x509_cert`'s [`x509_cert::ext::pkix::certpolicy::PolicyInformation`]
/// holds a `const-oid` identifier, which refuses the 128-bit arc of a `2.25` UUID OID
/// (and so would refuse to decode the whole extension).
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
struct PolicyInfo {
    policy_identifier: Any,
    policy_qualifiers: Option<Any>,
}

/// The `certificatePolicies` extension (non-critical) naming `kind`.
fn reader_kind_extension(kind: ReaderKind) -> der::Result<Extension> {
    let policies = vec![PolicyInfo {
        policy_identifier: Any::new(Tag::ObjectIdentifier, kind.policy_oid_octets())?,
        policy_qualifiers: None,
    }];
    Ok(Extension {
        extn_id: CertificatePolicies::OID,
        critical: false,
        extn_value: OctetString::new(policies.to_der()?)?,
    })
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut exts = Vec::new();
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        let issuer_ski = SubjectKeyIdentifier::try_from(issuer_spk)?;
        let (bc, ku) = match self.kind {
            CertKind::Ca { path_len } => (
                BasicConstraints {
                    ca: true,
                    path_len_constraint: path_len,
                },
                KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            ),
            CertKind::EndEntity => (
                BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                KeyUsage(KeyUsages::DigitalSignature.into()),
            ),
        };
        // basicConstraints is critical for end entities too: a verifier that does not
        // know it must not take the reader's key for a CA.
        let mut bc_ext = bc.to_extension(tbs.subject(), &exts)?;
        bc_ext.critical = true;
        exts.push(bc_ext);
        exts.push(ku.to_extension(tbs.subject(), &exts)?);
        exts.push(ski.to_extension(tbs.subject(), &exts)?);
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(issuer_ski.0),
            ..Default::default()
        };
        exts.push(aki.to_extension(tbs.subject(), &exts)?);
        if let Some(kind) = self.reader_kind {
            exts.push(reader_kind_extension(kind)?);
        }
        Ok(exts)
    }
}

fn build_err(e: x509_cert::builder::Error) -> PkiError {
    match e {
        x509_cert::builder::Error::Signature(_) => PkiError::Sign,
        e => PkiError::Encode {
            what: "certificate",
            reason: e.to_string(),
        },
    }
}

/// Issues a certificate. `issuer` is the issuing CA's certificate and key; `None`
/// makes a self-signed root (issuer name = subject, signed by `self_key`).
///
/// The issuer's certificate must hold the key it signs with ([`PkiError::KeyMismatch`]).
pub fn issue<R: CryptoRng>(
    tpl: &CertTemplate,
    issuer: Option<&Certificate>,
    signing_key: &Sm2PrivateKey,
    rng: R,
) -> Result<Certificate, PkiError> {
    let issuer_name = match issuer {
        Some(ca) => {
            if &cert_public_key(ca)? != signing_key.public_key() {
                return Err(PkiError::KeyMismatch { what: "CA key" });
            }
            ca.tbs_certificate().subject().clone()
        }
        None => {
            if &tpl.public_key != signing_key.public_key() {
                return Err(PkiError::KeyMismatch {
                    what: "self-signing key",
                });
            }
            tpl.subject.clone()
        }
    };
    if tpl.not_after <= tpl.not_before {
        return Err(PkiError::Encode {
            what: "certificate",
            reason: "notAfter is not after notBefore".into(),
        });
    }
    let validity = Validity::new(
        time_from_unix(tpl.not_before)?,
        time_from_unix(tpl.not_after)?,
    );
    let profile = Profile {
        subject: tpl.subject.clone(),
        issuer: issuer_name,
        kind: tpl.kind,
        reader_kind: tpl.reader_kind,
    };
    let signer = CertSigner::new(signing_key, rng)?;
    let builder = CertificateBuilder::new(
        profile,
        SerialNumber::from(tpl.serial),
        validity,
        spki_of(&tpl.public_key)?,
    )
    .map_err(build_err)?;
    builder.build::<_, DerSignature>(&signer).map_err(build_err)
}

/// The certificate's SM2 public key (any other algorithm is refused).
pub fn cert_public_key(cert: &Certificate) -> Result<Sm2PublicKey, PkiError> {
    key_from_spki(
        cert.tbs_certificate().subject_public_key_info(),
        &subject_of(cert),
    )
}

/// The subject as RFC 4514 text (`CN=R1,OU=reader,O=City`), for messages.
pub fn subject_of(cert: &Certificate) -> String {
    cert.tbs_certificate().subject().to_string()
}

/// The serial number as upper-case hex (`openssl x509 -serial` style).
pub fn serial_of(cert: &Certificate) -> String {
    serial_hex(cert.tbs_certificate().serial_number().as_bytes())
}

/// `notBefore` and `notAfter`, unix seconds.
pub fn validity_of(cert: &Certificate) -> (u64, u64) {
    let v = cert.tbs_certificate().validity();
    (time_to_unix(v.not_before), time_to_unix(v.not_after))
}

/// The parts of a subject this PKI uses, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameParts {
    /// `CN`: the reader id, the script signer's or the CA's name.
    pub cn: Option<String>,
    /// `OU`: the role.
    pub ou: Option<String>,
    /// `O`: the card company.
    pub o: Option<String>,
}

/// The subject's `CN`, `OU` and `O`.
pub fn name_parts(name: &Name) -> Result<NameParts, PkiError> {
    Ok(NameParts {
        cn: name_attr(name, OID_COMMON_NAME)?,
        ou: name_attr(name, OID_ORG_UNIT)?,
        o: name_attr(name, OID_ORGANIZATION)?,
    })
}

/// The certificate's role, from its subject's `OU` (`None` for other subjects).
pub fn role_of(cert: &Certificate) -> Result<Option<Role>, PkiError> {
    let ou = name_attr(cert.tbs_certificate().subject(), OID_ORG_UNIT)?;
    Ok(match ou.as_deref() {
        Some("reader") => Some(Role::Reader),
        Some("script-signing") => Some(Role::ScriptSigning),
        _ => None,
    })
}

/// Checks `cert`'s signature with `issuer_key` (SM2/SM3, signer id `1234567812345678`).
pub fn check_signed_by(cert: &Certificate, issuer_key: &Sm2PublicKey) -> Result<(), PkiError> {
    let what = format!("certificate {}", subject_of(cert));
    // Both algorithm fields must agree (RFC 5280 §4.1.1.2).
    if cert.signature_algorithm() != cert.tbs_certificate().signature() {
        return Err(PkiError::Malformed {
            subject: subject_of(cert),
            reason: "signatureAlgorithm differs from tbsCertificate.signature".into(),
        });
    }
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| PkiError::Encode {
            what: "certificate",
            reason: e.to_string(),
        })?;
    verify_signature(
        issuer_key,
        cert.signature_algorithm(),
        cert.signature(),
        &tbs,
        &what,
    )
}

/// `basicConstraints` (`None` when absent).
pub fn basic_constraints(cert: &Certificate) -> Result<Option<BasicConstraints>, PkiError> {
    cert.tbs_certificate()
        .get_extension::<BasicConstraints>()
        .map(|o| o.map(|(_, bc)| bc))
        .map_err(|e| PkiError::Malformed {
            subject: subject_of(cert),
            reason: format!("basicConstraints: {e}"),
        })
}

/// `keyUsage` (`None` when absent).
pub fn key_usage(cert: &Certificate) -> Result<Option<KeyUsage>, PkiError> {
    cert.tbs_certificate()
        .get_extension::<KeyUsage>()
        .map(|o| o.map(|(_, ku)| ku))
        .map_err(|e| PkiError::Malformed {
            subject: subject_of(cert),
            reason: format!("keyUsage: {e}"),
        })
}

/// The reader kind a certificate's `certificatePolicies` names.
///
/// [`ReaderKind::SecureElement`] only when the secure-element policy is present and the
/// desktop policy is not; otherwise (no extension, only unknown policies, or both kind
/// policies) [`ReaderKind::Desktop`]. A certificate naming both contradicts itself: it
/// is read as the kind that gets no card key (failing safe) rather than refused, so a
/// CA's mistake does not lock the reader out of what a desktop reader may do.
/// Other policies are ignored. An extension that does not decode is
/// [`PkiError::Malformed`].
pub fn reader_kind_of(cert: &Certificate) -> Result<ReaderKind, PkiError> {
    let malformed = |reason: String| PkiError::Malformed {
        subject: subject_of(cert),
        reason: format!("certificatePolicies: {reason}"),
    };
    let mut found = cert
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id == CertificatePolicies::OID);
    let Some(ext) = found.next() else {
        return Ok(ReaderKind::Desktop);
    };
    if found.next().is_some() {
        return Err(malformed("appears twice".into()));
    }
    let policies = Vec::<PolicyInfo>::from_der(ext.extn_value.as_bytes())
        .map_err(|e| malformed(e.to_string()))?;
    let (mut desktop, mut secure_element) = (false, false);
    for p in &policies {
        if p.policy_identifier.tag() != Tag::ObjectIdentifier {
            return Err(malformed(
                "policyIdentifier is not an OBJECT IDENTIFIER".into(),
            ));
        }
        let oid = p.policy_identifier.value();
        desktop |= oid == ReaderKind::Desktop.policy_oid_octets();
        secure_element |= oid == ReaderKind::SecureElement.policy_oid_octets();
    }
    Ok(if secure_element && !desktop {
        ReaderKind::SecureElement
    } else {
        ReaderKind::Desktop
    })
}
