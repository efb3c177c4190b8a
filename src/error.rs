//! The crate's top-level error.

/// Any error cardvm reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The card transport failed.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}
