//! The card company's side (feature `issuer`, `std`): its PKI and master keys. With
//! feature `pki` alone, only the PKI ([`cert`], [`csr`], [`crl`], [`pki`], [`trust`],
//! [`ca`]) is built: no database, no key store.
//!
//! * [`cert`] issues SM2 X.509 v3 certificates: a root or intermediate CA, the
//!   card company's script-signing certificate and one per reader.
//! * [`csr`] builds and checks PKCS#10 requests, so a reader's private key never
//!   leaves the reader.
//! * [`crl`] builds and checks revocation lists.
//! * [`trust`] is what the issuer service calls on every request and receipt:
//!   [`TrustStore::verify_reader`] builds the chain to a trusted root, checks each
//!   signature (SM2 with SM3, signer id `1234567812345678`), validity, CA constraints
//!   and revocation, and returns the reader's identity and key.
//! * [`keys`] holds the per-city master keys (an encrypted file, or a PKCS#11 token with
//!   feature `pkcs11`) and diversifies each card's keys from them; masters never leave it.
//! * [`ca`] keeps a CA's state (next serial, issued certificates, revocations) in a
//!   JSON file in the CA directory.
//!
//! Certificates interoperate with OpenSSL 3 (see `docs/pki.md`). The reader core does
//! not depend on this module; it stays `no_std`.
//!
//! ## Naming profile
//!
//! A reader certificate's subject is `O=<card company>, OU=reader, CN=<reader id>`;
//! the script-signing certificate's is `O=…, OU=script-signing, CN=<name>`. The
//! reader id is the `CN`; the `OU` is the role, so a script-signing certificate can
//! never pass as a reader's (or the other way round). A reader certificate's
//! `certificatePolicies` names its [`ReaderKind`] (desktop, or secure element).

#[cfg(feature = "issuer")]
pub mod bootstrap;
pub mod ca;
pub mod cert;
#[cfg(feature = "issuer")]
pub mod clearing;
pub mod crl;
pub mod csr;
#[cfg(feature = "issuer")]
pub mod engine;
#[cfg(feature = "issuer")]
pub mod keys;
#[cfg(feature = "issuer")]
pub mod ledger;
#[cfg(feature = "issuer")]
pub mod merchant;
/// Offline purchases from PSAM terminals, settled from their journals.
#[cfg(feature = "issuer")]
pub mod offline;
#[cfg(feature = "issuer")]
pub mod payment;
pub mod pki;
#[cfg(feature = "issuer")]
pub mod query;
#[cfg(feature = "issuer")]
pub mod reconcile;
pub mod trust;

pub use ca::{Ca, CaState, IssuedCert};
#[cfg(feature = "issuer")]
pub use engine::{Bundle, Issuer, IssuerError, IssuerPolicy, SealedScript, Settled, VerifiedQuery};
#[cfg(feature = "issuer")]
pub use ledger::{Ledger, LedgerError, TxnKind, TxnState};
pub use pki::{PkiError, ReaderKind, Role};
#[cfg(feature = "issuer")]
pub use query::CardQuery;
pub use trust::{CrlInstall, ReaderIdentity, TrustStore};
pub use x509_cert::{Certificate, crl::CertificateList, request::CertReq};
