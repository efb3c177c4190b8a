//! Chain verification: the issuer service's check of a reader (or script-signing)
//! certificate on every request and receipt.
//!
//! [`TrustStore`] holds trusted roots (trust anchors: any CA certificate the card
//! company configures, self-signed or not), known intermediates and CRLs. A check:
//!
//! 1. builds the path from the leaf up: an anchor whose subject is the certificate's
//!    issuer and whose key verifies its signature ends the path; otherwise an
//!    intermediate (from the store or sent with the leaf) that does; at most
//!    [`MAX_CHAIN_DEPTH`] issuers;
//! 2. checks every certificate on the path, the anchor included, is within its
//!    validity period at `now`, and has no critical extension other than
//!    `basicConstraints` and `keyUsage`;
//! 3. checks every issuer has `basicConstraints CA:TRUE` and `keyUsage keyCertSign`,
//!    and that no `pathLenConstraint` is exceeded;
//! 4. checks revocation of every certificate below the anchor against its issuer's
//!    CRL, which must be signed by that issuer and current (`thisUpdate <= now <
//!    nextUpdate`); a missing CRL is an error unless [`TrustStore::set_require_crl`]
//!    turned that off;
//! 5. checks the leaf is an end entity of the wanted role (`OU=reader` with the
//!    reader id in `CN`, or `OU=script-signing`).
//!
//! A verified reader's [`ReaderIdentity::kind`] comes from its certificate's
//! `certificatePolicies` ([`super::cert::reader_kind_of`]): desktop unless the
//! certificate names the secure-element policy alone.

use std::collections::HashSet;

use der::oid::AssociatedOid;
use x509_cert::certificate::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use super::cert::{
    basic_constraints, cert_public_key, check_signed_by, key_usage, name_parts, reader_kind_of,
    role_of, serial_of, subject_of, validity_of,
};
use super::crl::{crl_number, revoked_at, verify_crl};
use super::pki::{
    MAX_CHAIN_DEPTH, PkiError, ReaderKind, Role, check_reader_id, from_pem, time_to_unix,
};
use crate::crypto::sm2::Sm2PublicKey;

/// Who a verified reader certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderIdentity {
    /// The reader id (the subject's `CN`).
    pub reader_id: String,
    /// The reader's SM2 public key: verifies its requests and receipts.
    pub public_key: Sm2PublicKey,
    /// The certificate's serial number, upper-case hex.
    pub serial: String,
    /// End of the certificate's validity, unix seconds.
    pub not_after: u64,
    /// The issuing CA's subject.
    pub issuer: String,
    /// What kind of reader the certificate vouches for (its `certificatePolicies`;
    /// [`ReaderKind::Desktop`] when it does not say): only a
    /// [`ReaderKind::SecureElement`] reader may be sent card keys.
    pub kind: ReaderKind,
}

/// A verified path: the leaf first, the trust anchor last.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    /// The certificates from the leaf to the anchor.
    pub path: Vec<Certificate>,
    /// The leaf's public key.
    pub leaf_key: Sm2PublicKey,
}

/// What [`TrustStore::install_crl`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlInstall {
    /// The first CRL of its issuer.
    Added,
    /// Replaced the issuer's older CRL (whose number, or `thisUpdate`, is given).
    Replaced {
        /// The replaced CRL's `crlNumber` (or `thisUpdate`).
        installed: u64,
    },
    /// The same CRL was installed already.
    Unchanged,
}

/// Trusted roots, known intermediates and CRLs.
#[derive(Debug, Clone)]
pub struct TrustStore {
    roots: Vec<Certificate>,
    intermediates: Vec<Certificate>,
    crls: Vec<CertificateList>,
    require_crl: bool,
}

impl Default for TrustStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses every `CERTIFICATE` block in `pem` (at least one).
pub fn certs_from_pem(pem: &str) -> Result<Vec<Certificate>, PkiError> {
    let certs = Certificate::load_pem_chain(pem.as_bytes()).map_err(|e| PkiError::Decode {
        what: "certificate",
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(PkiError::EmptyChain);
    }
    Ok(certs)
}

fn is_ca(cert: &Certificate) -> Result<bool, PkiError> {
    let bc = basic_constraints(cert)?;
    let ku = key_usage(cert)?;
    Ok(bc.is_some_and(|b| b.ca) && ku.is_some_and(|k| k.key_cert_sign()))
}

impl TrustStore {
    /// An empty store that requires a current CRL from every issuer on a path.
    pub fn new() -> Self {
        Self {
            roots: Vec::new(),
            intermediates: Vec::new(),
            crls: Vec::new(),
            require_crl: true,
        }
    }

    /// Whether a path whose issuer has no CRL here is refused (default `true`).
    pub fn set_require_crl(&mut self, require: bool) {
        self.require_crl = require;
    }

    /// Trusts `cert` as a root (a trust anchor). It must be an SM2 CA certificate.
    pub fn add_root(&mut self, cert: Certificate) -> Result<(), PkiError> {
        cert_public_key(&cert)?;
        if !is_ca(&cert)? {
            return Err(PkiError::NotACa {
                subject: subject_of(&cert),
            });
        }
        if !self.roots.contains(&cert) {
            self.roots.push(cert);
        }
        Ok(())
    }

    /// Adds an intermediate CA certificate; it is trusted only through a root.
    pub fn add_intermediate(&mut self, cert: Certificate) -> Result<(), PkiError> {
        cert_public_key(&cert)?;
        if !is_ca(&cert)? {
            return Err(PkiError::NotACa {
                subject: subject_of(&cert),
            });
        }
        if !self.intermediates.contains(&cert) {
            self.intermediates.push(cert);
        }
        Ok(())
    }

    /// Adds a CRL. It replaces an older CRL of the same issuer (higher `crlNumber`,
    /// or later `thisUpdate` without numbers); its signature is checked when used.
    pub fn add_crl(&mut self, crl: CertificateList) {
        let issuer = crl.tbs_cert_list.issuer.clone();
        let newer = |old: &CertificateList| match (crl_number(&crl), crl_number(old)) {
            (Some(n), Some(o)) => n >= o,
            _ => {
                crl.tbs_cert_list.this_update.to_unix_duration()
                    >= old.tbs_cert_list.this_update.to_unix_duration()
            }
        };
        if let Some(slot) = self
            .crls
            .iter_mut()
            .find(|c| c.tbs_cert_list.issuer == issuer)
        {
            if newer(slot) {
                *slot = crl;
            }
        } else {
            self.crls.push(crl);
        }
    }

    /// Installs a CRL only if it can be trusted and moves its issuer's list forward
    /// (DESIGN invariant 15): signed by a trusted root or known intermediate, current at
    /// `now` (`thisUpdate` ≤ now < `nextUpdate`), and with a `crlNumber` above the
    /// installed one's (`thisUpdate` later, where either has no number). The same CRL
    /// again changes nothing ([`CrlInstall::Unchanged`]).
    pub fn install_crl(&mut self, crl: CertificateList, now: u64) -> Result<CrlInstall, PkiError> {
        let issuer = crl.tbs_cert_list.issuer.clone();
        let ca = self
            .roots
            .iter()
            .chain(&self.intermediates)
            .find(|c| c.tbs_certificate().subject() == &issuer)
            .ok_or_else(|| PkiError::CrlUntrusted {
                issuer: issuer.to_string(),
            })?;
        verify_crl(&crl, ca, now)?;
        if let Some(slot) = self
            .crls
            .iter_mut()
            .find(|c| c.tbs_cert_list.issuer == issuer)
        {
            if *slot == crl {
                return Ok(CrlInstall::Unchanged);
            }
            let (number, installed) = match (crl_number(&crl), crl_number(slot)) {
                (Some(n), Some(o)) => (n, o),
                _ => (
                    time_to_unix(crl.tbs_cert_list.this_update),
                    time_to_unix(slot.tbs_cert_list.this_update),
                ),
            };
            if number <= installed {
                return Err(PkiError::CrlNotNewer {
                    issuer: issuer.to_string(),
                    number,
                    installed,
                });
            }
            *slot = crl;
            return Ok(CrlInstall::Replaced { installed });
        }
        self.crls.push(crl);
        Ok(CrlInstall::Added)
    }

    /// What runs out within `window` seconds of `now` (or already has): each CRL's
    /// `nextUpdate` and each CA certificate's `notAfter`, soonest first, as
    /// `(unix time, what)` — for `issuer status` and the service's warnings.
    pub fn expiring(&self, now: u64, window: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for c in self.roots.iter().chain(&self.intermediates) {
            let (_, not_after) = validity_of(c);
            if not_after <= now.saturating_add(window) {
                out.push((not_after, format!("CA certificate {}", subject_of(c))));
            }
        }
        for crl in &self.crls {
            let next = crl.tbs_cert_list.next_update.map(time_to_unix).unwrap_or(0);
            if next <= now.saturating_add(window) {
                out.push((next, format!("CRL of {}", crl.tbs_cert_list.issuer)));
            }
        }
        out.sort();
        out
    }

    /// The installed CRLs: issuer, `crlNumber`, `thisUpdate`, `nextUpdate` (Unix seconds).
    pub fn crl_summary(&self) -> Vec<(String, Option<u64>, u64, Option<u64>)> {
        self.crls
            .iter()
            .map(|c| {
                let t = &c.tbs_cert_list;
                (
                    t.issuer.to_string(),
                    crl_number(c),
                    time_to_unix(t.this_update),
                    t.next_update.map(time_to_unix),
                )
            })
            .collect()
    }

    /// Adds every certificate of a PEM bundle as a root.
    pub fn add_roots_pem(&mut self, pem: &str) -> Result<(), PkiError> {
        for c in certs_from_pem(pem)? {
            self.add_root(c)?;
        }
        Ok(())
    }

    /// Adds a PEM CRL (`-----BEGIN X509 CRL-----`).
    pub fn add_crl_pem(&mut self, pem: &str) -> Result<(), PkiError> {
        self.add_crl(from_pem(pem, "CRL")?);
        Ok(())
    }

    /// Verifies a reader's certificate (`chain[0]`, followed by any intermediates it
    /// sent) at `now` (unix seconds) and returns who it is.
    pub fn verify_reader(
        &self,
        chain: &[Certificate],
        now: u64,
    ) -> Result<ReaderIdentity, PkiError> {
        let verified = self.verify_chain(chain, Role::Reader, now)?;
        let leaf = &verified.path[0];
        let reader_id = name_parts(leaf.tbs_certificate().subject())?
            .cn
            .ok_or_else(|| PkiError::Malformed {
                subject: subject_of(leaf),
                reason: "reader certificate without CN (the reader id)".into(),
            })?;
        check_reader_id(&reader_id)?;
        let kind = reader_kind_of(leaf)?;
        Ok(ReaderIdentity {
            reader_id,
            public_key: verified.leaf_key,
            serial: serial_of(leaf),
            not_after: validity_of(leaf).1,
            issuer: leaf.tbs_certificate().issuer().to_string(),
            kind,
        })
    }

    /// [`Self::verify_reader`], and the certificate must name `reader_id`.
    pub fn verify_reader_id(
        &self,
        chain: &[Certificate],
        reader_id: &str,
        now: u64,
    ) -> Result<ReaderIdentity, PkiError> {
        let id = self.verify_reader(chain, now)?;
        if id.reader_id != reader_id {
            return Err(PkiError::WrongReaderId {
                expected: reader_id.into(),
                found: id.reader_id,
            });
        }
        Ok(id)
    }

    /// Verifies the card company's script-signing certificate; returns its key.
    pub fn verify_script_signer(
        &self,
        chain: &[Certificate],
        now: u64,
    ) -> Result<Sm2PublicKey, PkiError> {
        Ok(self.verify_chain(chain, Role::ScriptSigning, now)?.leaf_key)
    }

    /// Builds and checks the path of `chain[0]` (steps 1–5 of the module docs).
    pub fn verify_chain(
        &self,
        chain: &[Certificate],
        role: Role,
        now: u64,
    ) -> Result<VerifiedChain, PkiError> {
        let leaf = chain.first().ok_or(PkiError::EmptyChain)?;
        let leaf_key = cert_public_key(leaf)?;
        let path = self.build_path(leaf, &chain[1..])?;
        for cert in &path {
            check_time(cert, now)?;
            check_extensions(cert)?;
        }
        for (i, ca) in path.iter().enumerate().skip(1) {
            if !is_ca(ca)? {
                return Err(PkiError::NotACa {
                    subject: subject_of(ca),
                });
            }
            if let Some(len) = basic_constraints(ca)?.and_then(|b| b.path_len_constraint) {
                // Intermediates strictly between this CA and the leaf.
                if i - 1 > usize::from(len) {
                    return Err(PkiError::PathTooLong {
                        subject: subject_of(ca),
                        path_len: len,
                    });
                }
            }
        }
        check_leaf(leaf, role)?;
        for pair in path.windows(2) {
            self.check_revocation(&pair[0], &pair[1], now)?;
        }
        Ok(VerifiedChain { path, leaf_key })
    }

    fn build_path(
        &self,
        leaf: &Certificate,
        sent: &[Certificate],
    ) -> Result<Vec<Certificate>, PkiError> {
        let mut path = vec![leaf.clone()];
        loop {
            let cur = path.last().ok_or(PkiError::EmptyChain)?;
            let issuer = cur.tbs_certificate().issuer();
            let mut last_err = None;
            // Anchors first: a path ends at the first trusted CA that signed it.
            for root in self
                .roots
                .iter()
                .filter(|r| r.tbs_certificate().subject() == issuer)
            {
                match check_signed_by(cur, &cert_public_key(root)?) {
                    Ok(()) => {
                        if root != cur {
                            path.push(root.clone());
                        }
                        return Ok(path);
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if path.len() > MAX_CHAIN_DEPTH {
                return Err(PkiError::PathTooLong {
                    subject: subject_of(cur),
                    path_len: MAX_CHAIN_DEPTH as u8,
                });
            }
            let mut next = None;
            for ca in sent
                .iter()
                .chain(&self.intermediates)
                .filter(|c| c.tbs_certificate().subject() == issuer && !path.contains(c))
            {
                match check_signed_by(cur, &cert_public_key(ca)?) {
                    Ok(()) => {
                        next = Some(ca.clone());
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            match (next, last_err) {
                (Some(ca), _) => path.push(ca),
                (None, Some(e)) => return Err(e),
                (None, None) => {
                    return Err(PkiError::UnknownIssuer {
                        subject: subject_of(cur),
                        issuer: issuer.to_string(),
                    });
                }
            }
        }
    }

    fn check_revocation(
        &self,
        cert: &Certificate,
        issuer: &Certificate,
        now: u64,
    ) -> Result<(), PkiError> {
        let name = issuer.tbs_certificate().subject();
        let mut seen = false;
        for crl in self.crls.iter().filter(|c| &c.tbs_cert_list.issuer == name) {
            verify_crl(crl, issuer, now)?;
            seen = true;
            if let Some(at) = revoked_at(crl, cert) {
                return Err(PkiError::Revoked {
                    serial: serial_of(cert),
                    subject: subject_of(cert),
                    at,
                });
            }
        }
        if !seen && self.require_crl {
            return Err(PkiError::MissingCrl {
                issuer: name.to_string(),
            });
        }
        Ok(())
    }
}

fn check_time(cert: &Certificate, now: u64) -> Result<(), PkiError> {
    let (not_before, not_after) = validity_of(cert);
    if now < not_before {
        return Err(PkiError::NotYetValid {
            subject: subject_of(cert),
            not_before,
        });
    }
    if now > not_after {
        return Err(PkiError::Expired {
            subject: subject_of(cert),
            not_after,
        });
    }
    Ok(())
}

fn check_extensions(cert: &Certificate) -> Result<(), PkiError> {
    let mut seen = HashSet::new();
    for e in cert.tbs_certificate().extensions().into_iter().flatten() {
        if !seen.insert(e.extn_id) {
            return Err(PkiError::Malformed {
                subject: subject_of(cert),
                reason: format!("extension {} appears twice", e.extn_id),
            });
        }
        if e.critical && e.extn_id != BasicConstraints::OID && e.extn_id != KeyUsage::OID {
            return Err(PkiError::UnknownCriticalExtension {
                subject: subject_of(cert),
                oid: e.extn_id.to_string(),
            });
        }
    }
    Ok(())
}

fn check_leaf(leaf: &Certificate, role: Role) -> Result<(), PkiError> {
    let wrong = || PkiError::WrongRole {
        subject: subject_of(leaf),
        expected: role,
    };
    if basic_constraints(leaf)?.is_some_and(|b| b.ca) {
        return Err(wrong());
    }
    if key_usage(leaf)?.is_some_and(|k| !k.digital_signature()) {
        return Err(wrong());
    }
    if role_of(leaf)? != Some(role) {
        return Err(wrong());
    }
    Ok(())
}
