//! Certificate revocation lists: built and signed by the issuing CA, checked against it.

use der::Encode;
use der::asn1::Uint;
use rand_core::CryptoRng;
use x509_cert::certificate::{Certificate, Version};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::ToExtension;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, SubjectKeyIdentifier};
use x509_cert::serial_number::SerialNumber;

use der::oid::AssociatedOid;
use der::referenced::OwnedToRef;
use spki::DynSignatureAlgorithmIdentifier;

use super::cert::{cert_public_key, key_usage, subject_of};
use super::pki::{CertSigner, PkiError, time_from_unix, time_to_unix, verify_signature};
use crate::crypto::sm2::Sm2PrivateKey;

/// One revoked certificate: serial and revocation time (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate's serial number.
    pub serial: u64,
    /// When it was revoked, unix seconds.
    pub at: u64,
}

fn enc(e: impl core::fmt::Display) -> PkiError {
    PkiError::Encode {
        what: "CRL",
        reason: e.to_string(),
    }
}

/// Builds a v2 CRL for the CA `issuer` (its certificate and key): `crlNumber`
/// `number`, valid from `this_update` to `next_update` (unix seconds).
pub fn build_crl<R: CryptoRng>(
    issuer: &Certificate,
    key: &Sm2PrivateKey,
    number: u64,
    this_update: u64,
    next_update: u64,
    revoked: &[Revocation],
    rng: R,
) -> Result<CertificateList, PkiError> {
    if &cert_public_key(issuer)? != key.public_key() {
        return Err(PkiError::KeyMismatch { what: "CA key" });
    }
    let signer = CertSigner::new(key, rng)?;
    let name = issuer.tbs_certificate().subject().clone();
    // The CRL names the issuer's own key (its subjectKeyIdentifier), so OpenSSL finds it.
    let ski = SubjectKeyIdentifier::try_from(
        issuer
            .tbs_certificate()
            .subject_public_key_info()
            .owned_to_ref(),
    )
    .map_err(enc)?;
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(ski.0),
        ..Default::default()
    };
    let mut exts = Vec::new();
    let num = CrlNumber(Uint::new(&number.to_be_bytes()).map_err(enc)?);
    exts.push(num.to_extension(&name, &exts).map_err(enc)?);
    exts.push(aki.to_extension(&name, &exts).map_err(enc)?);
    let mut entries = Vec::with_capacity(revoked.len());
    for r in revoked {
        entries.push(RevokedCert {
            serial_number: SerialNumber::from(r.serial),
            revocation_date: time_from_unix(r.at)?,
            crl_entry_extensions: None,
        });
    }
    let tbs = TbsCertList {
        version: Version::V2,
        signature: signer.signature_algorithm_identifier().map_err(enc)?,
        issuer: name,
        this_update: time_from_unix(this_update)?,
        next_update: Some(time_from_unix(next_update)?),
        revoked_certificates: if entries.is_empty() {
            None
        } else {
            Some(entries)
        },
        crl_extensions: Some(exts),
    };
    let signature = signer.sign_bits(&tbs.to_der().map_err(enc)?)?;
    Ok(CertificateList {
        signature_algorithm: tbs.signature.clone(),
        tbs_cert_list: tbs,
        signature,
    })
}

/// Checks that `crl` was issued and signed by the CA `issuer` (name, `cRLSign`,
/// SM2 signature) and is current at `now`: `thisUpdate <= now < nextUpdate`.
pub fn verify_crl(crl: &CertificateList, issuer: &Certificate, now: u64) -> Result<(), PkiError> {
    let issuer_name = subject_of(issuer);
    let tbs = &crl.tbs_cert_list;
    if &tbs.issuer != issuer.tbs_certificate().subject() {
        return Err(PkiError::Malformed {
            subject: format!("CRL of {}", tbs.issuer),
            reason: format!("not issued by {issuer_name}"),
        });
    }
    if let Some(ku) = key_usage(issuer)?
        && !ku.crl_sign()
    {
        return Err(PkiError::NotACa {
            subject: issuer_name,
        });
    }
    if crl.signature_algorithm != tbs.signature {
        return Err(PkiError::Malformed {
            subject: format!("CRL of {issuer_name}"),
            reason: "signatureAlgorithm differs from tbsCertList.signature".into(),
        });
    }
    let bytes = tbs.to_der().map_err(enc)?;
    verify_signature(
        &cert_public_key(issuer)?,
        &crl.signature_algorithm,
        &crl.signature,
        &bytes,
        &format!("CRL of {issuer_name}"),
    )?;
    // Delta CRLs and unknown critical CRL extensions would change what the list means.
    for e in tbs.crl_extensions.iter().flatten() {
        let known = e.extn_id == CrlNumber::OID || e.extn_id == AuthorityKeyIdentifier::OID;
        if e.critical && !known {
            return Err(PkiError::UnknownCriticalExtension {
                subject: format!("CRL of {issuer_name}"),
                oid: e.extn_id.to_string(),
            });
        }
    }
    let this_update = time_to_unix(tbs.this_update);
    let next_update = tbs.next_update.map(time_to_unix);
    match next_update {
        Some(next) if this_update <= now && now < next => Ok(()),
        _ => Err(PkiError::StaleCrl {
            issuer: issuer_name,
            next_update: next_update.unwrap_or(0),
        }),
    }
}

/// The revocation time of `cert` if `crl` lists its serial.
pub fn revoked_at(crl: &CertificateList, cert: &Certificate) -> Option<u64> {
    let serial = cert.tbs_certificate().serial_number();
    crl.tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .find(|r| &r.serial_number == serial)
        .map(|r| time_to_unix(r.revocation_date))
}

/// The CRL's `crlNumber` as an integer, if present and at most 8 bytes.
pub fn crl_number(crl: &CertificateList) -> Option<u64> {
    let exts = crl.tbs_cert_list.crl_extensions.as_ref()?;
    let e = exts.iter().find(|e| e.extn_id == CrlNumber::OID)?;
    let n = <CrlNumber as der::Decode>::from_der(e.extn_value.as_bytes()).ok()?;
    let b = n.0.as_bytes();
    if b.len() > 8 {
        return None;
    }
    let mut buf = [0u8; 8];
    buf[8 - b.len()..].copy_from_slice(b);
    Some(u64::from_be_bytes(buf))
}
