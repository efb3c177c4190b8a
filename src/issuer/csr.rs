//! PKCS#10 certificate requests: a reader proves it holds its key without sending it.

use der::Encode;
use rand_core::CryptoRng;
use sm2::dsa::DerSignature;
use x509_cert::builder::Builder;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, RequestBuilder};

use super::pki::{
    CertSigner, OID_COMMON_NAME, PkiError, Role, entity_name, key_from_spki, name_attr,
    verify_signature,
};
use crate::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};

/// Builds a request for `subject`, signed with `key` (SM2/SM3, signer id
/// `1234567812345678`).
pub fn build_request<R: CryptoRng>(
    key: &Sm2PrivateKey,
    subject: Name,
    rng: R,
) -> Result<CertReq, PkiError> {
    let enc = |e: x509_cert::builder::Error| match e {
        x509_cert::builder::Error::Signature(_) => PkiError::Sign,
        e => PkiError::Encode {
            what: "certificate request",
            reason: e.to_string(),
        },
    };
    let signer = CertSigner::new(key, rng)?;
    RequestBuilder::new(subject)
        .map_err(enc)?
        .build::<_, DerSignature>(&signer)
        .map_err(enc)
}

/// Builds a reader's request: subject `OU=reader, CN=<reader id>`.
pub fn reader_request<R: CryptoRng>(
    key: &Sm2PrivateKey,
    reader_id: &str,
    rng: R,
) -> Result<CertReq, PkiError> {
    super::pki::check_reader_id(reader_id)?;
    build_request(key, entity_name(Role::Reader, reader_id, None)?, rng)
}

/// Checks the request's self-signature (proof of possession) and returns its key.
pub fn verify_request(req: &CertReq) -> Result<Sm2PublicKey, PkiError> {
    let what = format!("certificate request {}", req.info.subject);
    let key = key_from_spki(&req.info.public_key, &what)?;
    let tbs = req.info.to_der().map_err(|e| PkiError::Encode {
        what: "certificate request",
        reason: e.to_string(),
    })?;
    verify_signature(&key, &req.algorithm, &req.signature, &tbs, &what)?;
    Ok(key)
}

/// The request subject's `CN` (the reader id a reader asked for), if any.
pub fn requested_cn(req: &CertReq) -> Result<Option<String>, PkiError> {
    name_attr(&req.info.subject, OID_COMMON_NAME)
}
