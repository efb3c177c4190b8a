//! A certification authority: its certificate, key and state (next serial, next CRL
//! number, what it issued and revoked).
//!
//! The state is a small JSON file (`state.json` in the CA directory) written by
//! write-then-rename, so a crash leaves the old or the new state, never half of one.
//! It is the CA's bookkeeping, not the settlement ledger.

use std::fs;
use std::io::Write;
use std::path::Path;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x509_cert::certificate::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use super::cert::{CertKind, CertTemplate, issue, name_parts, subject_of, validity_of};
use super::crl::{Revocation, build_crl};
use super::csr::{requested_cn, verify_request};
use super::pki::{PkiError, ReaderKind, Role, check_reader_id, entity_name, serial_hex};
use crate::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// One certificate a CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedCert {
    /// Serial number.
    pub serial: u64,
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// `reader`, `script-signing` or `ca`.
    pub role: String,
    /// End of validity, unix seconds.
    pub not_after: u64,
    /// Revocation time, unix seconds, once revoked.
    pub revoked_at: Option<u64>,
}

/// A CA's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The serial the next certificate gets.
    pub next_serial: u64,
    /// The `crlNumber` the next CRL gets.
    pub next_crl_number: u64,
    /// Everything issued, oldest first.
    pub issued: Vec<IssuedCert>,
}

impl Default for CaState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            next_serial: 1,
            next_crl_number: 1,
            issued: Vec::new(),
        }
    }
}

impl CaState {
    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        let err = |reason: String| PkiError::State {
            path: path.display().to_string(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let st: Self = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if st.version != STATE_VERSION {
            return Err(err(format!("unsupported version {}", st.version)));
        }
        if st.next_serial == 0 || st.issued.iter().any(|c| c.serial >= st.next_serial) {
            return Err(err("next_serial is not above every issued serial".into()));
        }
        Ok(st)
    }

    /// Writes the state atomically: a temporary file in the same directory, synced,
    /// then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let err = |reason: String| PkiError::State {
            path: path.display().to_string(),
            reason,
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut f = fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(json.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; not every platform can open a directory.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn take_serial(&mut self) -> Result<u64, PkiError> {
        let s = self.next_serial;
        self.next_serial = s.checked_add(1).ok_or_else(|| PkiError::State {
            path: "state".into(),
            reason: "serial numbers exhausted".into(),
        })?;
        Ok(s)
    }
}

/// A CA: certificate, key, the chain above it and its state.
pub struct Ca {
    /// The CA's own certificate.
    pub cert: Certificate,
    /// Its issuers' certificates, nearest first (empty for a root).
    pub parents: Vec<Certificate>,
    /// Its bookkeeping; save it after every change.
    pub state: CaState,
    key: Sm2PrivateKey,
}

impl core::fmt::Debug for Ca {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &subject_of(&self.cert))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Puts a CA together from its parts; the key must be the certificate's.
    pub fn new(
        cert: Certificate,
        parents: Vec<Certificate>,
        key: Sm2PrivateKey,
        state: CaState,
    ) -> Result<Self, PkiError> {
        if &super::cert::cert_public_key(&cert)? != key.public_key() {
            return Err(PkiError::KeyMismatch { what: "CA key" });
        }
        Ok(Self {
            cert,
            parents,
            state,
            key,
        })
    }

    /// Creates a self-signed root CA valid from `not_before` to `not_after`.
    pub fn new_root<R: CryptoRng>(
        subject: Name,
        key: Sm2PrivateKey,
        not_before: u64,
        not_after: u64,
        path_len: Option<u8>,
        rng: R,
    ) -> Result<Self, PkiError> {
        let tpl = CertTemplate {
            serial: 1,
            subject,
            public_key: key.public_key().clone(),
            not_before,
            not_after,
            kind: CertKind::Ca { path_len },
            reader_kind: None,
        };
        let cert = issue(&tpl, None, &key, rng)?;
        let state = CaState {
            next_serial: 2,
            issued: vec![IssuedCert {
                serial: 1,
                subject: subject_of(&cert),
                role: "ca".into(),
                not_after,
                revoked_at: None,
            }],
            ..CaState::default()
        };
        Self::new(cert, Vec::new(), key, state)
    }

    /// Creates an intermediate CA (a city card company under an industry root)
    /// signed by `self`; `key` is the new CA's key.
    pub fn new_intermediate<R: CryptoRng>(
        &mut self,
        subject: Name,
        key: Sm2PrivateKey,
        not_before: u64,
        not_after: u64,
        path_len: Option<u8>,
        rng: R,
    ) -> Result<Ca, PkiError> {
        let public_key = key.public_key().clone();
        let cert = self.issue_template(
            subject,
            public_key,
            not_before,
            not_after,
            CertKind::Ca { path_len },
            None,
            "ca",
            rng,
        )?;
        let mut parents = vec![self.cert.clone()];
        parents.extend(self.parents.iter().cloned());
        Self::new(cert, parents, key, CaState::default())
    }

    /// The CA subject's `O` (copied into the certificates it issues).
    pub fn organization(&self) -> Result<Option<String>, PkiError> {
        Ok(name_parts(self.cert.tbs_certificate().subject())?.o)
    }

    /// Issues a reader certificate for `reader_id` and `public_key`, naming `kind` in
    /// its `certificatePolicies`. The kind is the CA operator's word: only a reader
    /// whose VM and key are in a secure element may be issued
    /// [`ReaderKind::SecureElement`].
    pub fn issue_reader<R: CryptoRng>(
        &mut self,
        reader_id: &str,
        public_key: &Sm2PublicKey,
        kind: ReaderKind,
        not_before: u64,
        not_after: u64,
        rng: R,
    ) -> Result<Certificate, PkiError> {
        check_reader_id(reader_id)?;
        let subject = entity_name(Role::Reader, reader_id, self.organization()?.as_deref())?;
        self.issue_template(
            subject,
            public_key.clone(),
            not_before,
            not_after,
            CertKind::EndEntity,
            Some(kind),
            "reader",
            rng,
        )
    }

    /// Issues the card company's script-signing certificate (`CN=name`).
    pub fn issue_script_signer<R: CryptoRng>(
        &mut self,
        name: &str,
        public_key: &Sm2PublicKey,
        not_before: u64,
        not_after: u64,
        rng: R,
    ) -> Result<Certificate, PkiError> {
        check_reader_id(name)?;
        let subject = entity_name(Role::ScriptSigning, name, self.organization()?.as_deref())?;
        self.issue_template(
            subject,
            public_key.clone(),
            not_before,
            not_after,
            CertKind::EndEntity,
            None,
            "script-signing",
            rng,
        )
    }

    /// Issues a reader certificate from a PKCS#10 request: its signature must verify
    /// (the reader holds the key), and its `CN`, when present, must be `reader_id`
    /// (`None`: take the reader id from the `CN`). The subject is the CA's, not the
    /// request's: only the key and the id are taken from it. The certificate names
    /// `kind`; nothing in the request can choose it.
    pub fn issue_from_request<R: CryptoRng>(
        &mut self,
        req: &CertReq,
        reader_id: Option<&str>,
        kind: ReaderKind,
        not_before: u64,
        not_after: u64,
        rng: R,
    ) -> Result<Certificate, PkiError> {
        let key = verify_request(req)?;
        let cn = requested_cn(req)?;
        let id = match (reader_id, cn) {
            (Some(want), Some(found)) if want != found => {
                return Err(PkiError::WrongReaderId {
                    expected: want.into(),
                    found,
                });
            }
            (Some(want), _) => want.to_owned(),
            (None, Some(found)) => found,
            (None, None) => {
                return Err(PkiError::Malformed {
                    subject: req.info.subject.to_string(),
                    reason: "request has no CN and no reader id was given".into(),
                });
            }
        };
        self.issue_reader(&id, &key, kind, not_before, not_after, rng)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_template<R: CryptoRng>(
        &mut self,
        subject: Name,
        public_key: Sm2PublicKey,
        not_before: u64,
        not_after: u64,
        kind: CertKind,
        reader_kind: Option<ReaderKind>,
        role: &str,
        rng: R,
    ) -> Result<Certificate, PkiError> {
        // Nothing outlives the CA that vouches for it.
        let not_after = not_after.min(validity_of(&self.cert).1);
        let serial = self.state.take_serial()?;
        let tpl = CertTemplate {
            serial,
            subject,
            public_key,
            not_before,
            not_after,
            kind,
            reader_kind,
        };
        let cert = issue(&tpl, Some(&self.cert), &self.key, rng)?;
        self.state.issued.push(IssuedCert {
            serial,
            subject: subject_of(&cert),
            role: role.into(),
            not_after,
            revoked_at: None,
        });
        Ok(cert)
    }

    /// Marks `serial` revoked at `at` (unix seconds); the next [`Self::crl`] lists it.
    pub fn revoke(&mut self, serial: u64, at: u64) -> Result<&IssuedCert, PkiError> {
        let hex = serial_hex(&serial.to_be_bytes());
        let entry = self
            .state
            .issued
            .iter_mut()
            .find(|c| c.serial == serial)
            .ok_or(PkiError::UnknownSerial {
                serial: hex.clone(),
            })?;
        if entry.revoked_at.is_some() {
            return Err(PkiError::AlreadyRevoked { serial: hex });
        }
        entry.revoked_at = Some(at);
        Ok(entry)
    }

    /// Signs a CRL of every revocation, valid from `this_update` to `next_update`,
    /// with the next `crlNumber`.
    pub fn crl<R: CryptoRng>(
        &mut self,
        this_update: u64,
        next_update: u64,
        rng: R,
    ) -> Result<CertificateList, PkiError> {
        let revoked: Vec<Revocation> = self
            .state
            .issued
            .iter()
            .filter_map(|c| {
                c.revoked_at.map(|at| Revocation {
                    serial: c.serial,
                    at,
                })
            })
            .collect();
        let number = self.state.next_crl_number;
        let crl = build_crl(
            &self.cert,
            &self.key,
            number,
            this_update,
            next_update,
            &revoked,
            rng,
        )?;
        self.state.next_crl_number = number.saturating_add(1);
        Ok(crl)
    }
}
