//! Errors of the symmetric crypto layer.

use super::key::{KeyAlg, KeyUsage};

/// Why a symmetric crypto operation was refused.
///
/// Messages carry the algorithm and lengths involved, never key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key of the wrong length for its algorithm.
    #[error("wrong key length for {}: {len} bytes, expected {}", alg.name(), alg.key_len())]
    WrongKeyLength {
        /// The algorithm the key was meant for.
        alg: KeyAlg,
        /// The length that was given.
        len: usize,
    },
    /// Data for a raw block operation (ECB) whose length is not a multiple of the block size.
    #[error("data length {len} is not a multiple of the {block}-byte block")]
    NotBlockAligned {
        /// The data length that was given.
        len: usize,
        /// The cipher's block size.
        block: usize,
    },
    /// A block-cipher operation asked of a key that is not a block-cipher key (M1 sector key).
    #[error("{} key is not a block-cipher key", .0.name())]
    NotABlockCipher(KeyAlg),
    /// A purse derivation (process key, TAC key, diversification) that is not defined for this
    /// key algorithm (for example single DES as a master key).
    #[error("{op} is not defined for a {} key", alg.name())]
    UnsupportedAlg {
        /// The operation that was asked, e.g. `"process_key"`.
        op: &'static str,
        /// The algorithm of the key that was given.
        alg: KeyAlg,
    },
    /// A key whose usage the operation does not accept: a derivation from a key that is not
    /// its source (see [`KeyUsage::derive`]), or ECB with a key that is not an `enc` key.
    #[error("{op} does not accept a `{}` key", usage.name())]
    WrongUsage {
        /// The operation that was asked, e.g. `"diversify"`.
        op: &'static str,
        /// The usage of the key that was given.
        usage: KeyUsage,
    },
}
