//! Placeholder for the master-key stores (replaced by the `keys` branch).

use crate::crypto::{KeyAlg, SecretKey};

/// Which card key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Load.
    Load,
    /// Purchase.
    Purchase,
    /// TAC.
    Tac,
}

/// A key-store failure.
#[derive(Debug, thiserror::Error)]
#[error("key store: {0}")]
pub struct KeyStoreError(pub String);

/// Master keys per city.
pub trait MasterKeyStore: Send + Sync {
    /// The diversified card key.
    fn card_key(&self, city: u32, role: KeyRole, serial: &[u8])
    -> Result<SecretKey, KeyStoreError>;
    /// Cities held.
    fn cities(&self) -> Result<Vec<(u32, KeyAlg)>, KeyStoreError>;
}
