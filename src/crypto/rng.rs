//! Operating-system randomness for `std` builds.
//!
//! The core API takes a caller-supplied `rand_core::CryptoRng` (the reader firmware's
//! TRNG); on a host, [`os_rng`] gives the operating system's generator.

use getrandom::SysRng;
use rand_core::UnwrapErr;

/// The operating system's cryptographic generator as an infallible `CryptoRng`.
///
/// An OS generator failure (practically never seen on supported systems) panics
/// inside `UnwrapErr` rather than returning predictable bytes.
pub type OsRng = UnwrapErr<SysRng>;

/// Returns the operating system's cryptographic generator.
pub fn os_rng() -> OsRng {
    UnwrapErr(SysRng)
}
