//! What a running issuer reads from its ledger, shared by `cardvm issuer`, an embedded
//! service and the tests: the trust anchors and CRLs `issuer init` and `issuer crl`
//! recorded, and the installation of a new CRL.
//!
//! The service re-reads them while it runs (`ServiceConfig::trust_reload`), so a
//! revocation installed into the ledger by any process reaches every instance, embedded
//! or not, within seconds.

use super::ledger::{Ledger, LedgerError};
use super::pki::PkiError;
use super::trust::TrustStore;

/// Why the ledger's trust could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A certificate or CRL was refused.
    #[error("{what}: {error}")]
    Pki {
        /// Which one.
        what: &'static str,
        /// Why.
        error: PkiError,
    },
    /// The ledger records no trusted CA (`cardvm issuer init` first).
    #[error("ledger {0}: no trusted CA recorded (run cardvm issuer init first)")]
    NoCa(String),
    /// The text holds no `BEGIN X509 CRL` block.
    #[error("no `BEGIN X509 CRL` block")]
    NoCrl,
}

/// The PEM blocks labelled `label` in `text`, each with its line feed.
pub fn split_pem(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(&begin) {
        let Some(e) = rest[b..].find(&end) else { break };
        let stop = b + e + end.len();
        out.push(format!("{}\n", &rest[b..stop]));
        rest = &rest[stop..];
    }
    out
}

/// The trust and CRL texts as recorded (`ca_pem`, `crls`): what a reload compares.
pub async fn recorded(ledger: &Ledger) -> Result<(Option<String>, Option<String>), LedgerError> {
    Ok((ledger.config("ca_pem").await?, ledger.config("crls").await?))
}

/// The trust store the ledger records: its CA anchors and installed CRLs.
pub async fn trust_store(ledger: &Ledger) -> Result<TrustStore, BootstrapError> {
    let (ca, crls) = recorded(ledger).await?;
    trust_from(&ledger.url(), ca.as_deref(), crls.as_deref())
}

fn trust_from(
    url: &str,
    ca: Option<&str>,
    crls: Option<&str>,
) -> Result<TrustStore, BootstrapError> {
    let mut trust = TrustStore::new();
    trust
        .add_roots_pem(ca.ok_or_else(|| BootstrapError::NoCa(url.into()))?)
        .map_err(|error| BootstrapError::Pki {
            what: "trusted CA",
            error,
        })?;
    for block in split_pem(crls.unwrap_or_default(), "X509 CRL") {
        trust
            .add_crl_pem(&block)
            .map_err(|error| BootstrapError::Pki {
                what: "installed CRL",
                error,
            })?;
    }
    Ok(trust)
}

/// Installs the CRLs in `pem` into the ledger: each only if a trusted CA signed it, it
/// is current at `now`, and its number is above the installed one's (no rollback: an
/// older CRL could un-revoke a reader); a newer CRL of a CA replaces its older one.
/// Returns how many CRLs the ledger holds now.
pub async fn install_crls(ledger: &Ledger, pem: &str, now: u64) -> Result<usize, BootstrapError> {
    let blocks = split_pem(pem, "X509 CRL");
    if blocks.is_empty() {
        return Err(BootstrapError::NoCrl);
    }
    let mut trust = trust_store(ledger).await?;
    for b in &blocks {
        let crl = super::pki::from_pem::<super::CertificateList>(b, "CRL")
            .map_err(|error| BootstrapError::Pki { what: "CRL", error })?;
        trust
            .install_crl(crl, now)
            .map_err(|error| BootstrapError::Pki {
                what: "CRL refused",
                error,
            })?;
    }
    let mut all = ledger
        .config("crls")
        .await?
        .map(|s| split_pem(&s, "X509 CRL"))
        .unwrap_or_default();
    let issuer_of = |b: &str| -> Option<String> {
        super::pki::from_pem::<super::CertificateList>(b, "CRL")
            .ok()
            .map(|c| c.tbs_cert_list.issuer.to_string())
    };
    for b in &blocks {
        let who = issuer_of(b);
        all.retain(|old| issuer_of(old) != who);
        all.push(b.clone());
    }
    ledger.set_config("crls", &all.concat()).await?;
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_split_by_label() {
        let text = "junk\n-----BEGIN X509 CRL-----\nAAA\n-----END X509 CRL-----\n\
                    -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n\
                    -----BEGIN X509 CRL-----\nCCC\n-----END X509 CRL-----";
        let crls = split_pem(text, "X509 CRL");
        assert_eq!(crls.len(), 2);
        assert!(crls[0].contains("AAA") && crls[1].contains("CCC"));
        assert_eq!(split_pem(text, "CERTIFICATE").len(), 1);
        assert!(split_pem("-----BEGIN X509 CRL-----\nunterminated", "X509 CRL").is_empty());
    }

    #[test]
    fn no_ca_is_one_line() {
        let e = trust_from("issuer.db", None, None).expect_err("no CA");
        assert!(e.to_string().contains("cardvm issuer init"), "{e}");
    }
}
