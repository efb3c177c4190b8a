//! Checked conversions between C pointers and Rust values.
//!
//! Every raw-pointer access of the ABI goes through this module (plus the two calls
//! of C function pointers in `lib.rs`). Each helper checks what can be checked — null,
//! length against [`MAX_INPUT`](crate::CARDVM_MAX_INPUT), buffer capacity — and
//! documents what cannot (that a non-null pointer really points to `len` readable
//! bytes is the caller's promise, stated on every entry point).

use crate::{CARDVM_E_BUFFER_TOO_SMALL, CARDVM_E_INVALID_ARG, CARDVM_E_NULL, CARDVM_MAX_INPUT};
use crate::{Error, Result};
use core::ffi::{c_char, c_int};

/// Borrows `len` bytes at `ptr`.
///
/// # Safety
/// If `ptr` is non-null, it must point to `len` initialized bytes that stay valid and
/// unmodified for the returned lifetime.
pub(crate) unsafe fn bytes_in<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8]> {
    if ptr.is_null() {
        return Err(Error::new(CARDVM_E_NULL, format!("{what}: null pointer")));
    }
    if len == 0 {
        return Err(Error::new(
            CARDVM_E_INVALID_ARG,
            format!("{what}: length 0"),
        ));
    }
    if len > CARDVM_MAX_INPUT {
        return Err(Error::new(
            CARDVM_E_INVALID_ARG,
            format!("{what}: length {len} above the limit of {CARDVM_MAX_INPUT} bytes"),
        ));
    }
    // SAFETY: `ptr` is non-null and, by this function's contract, points to `len`
    // initialized bytes valid for 'a; `len` <= CARDVM_MAX_INPUT < isize::MAX, and u8 has
    // alignment 1.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Reads a NUL-terminated UTF-8 string of at most [`CARDVM_MAX_INPUT`] bytes.
///
/// # Safety
/// If `ptr` is non-null, it must point to a NUL-terminated string, or to at least
/// `CARDVM_MAX_INPUT + 1` readable bytes.
pub(crate) unsafe fn str_in(ptr: *const c_char, what: &str) -> Result<String> {
    if ptr.is_null() {
        return Err(Error::new(CARDVM_E_NULL, format!("{what}: null pointer")));
    }
    let p = ptr.cast::<u8>();
    let mut len = 0usize;
    loop {
        if len > CARDVM_MAX_INPUT {
            return Err(Error::new(
                CARDVM_E_INVALID_ARG,
                format!("{what}: no NUL terminator within {CARDVM_MAX_INPUT} bytes"),
            ));
        }
        // SAFETY: by the contract the string is NUL-terminated (or at least
        // CARDVM_MAX_INPUT + 1 bytes long), and we stop at the first NUL, so every byte
        // read up to and including it is inside the caller's allocation.
        if unsafe { p.add(len).read() } == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: the `len` bytes before the NUL were just read one by one above, so they
    // are readable and initialized; u8 has alignment 1.
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::new(CARDVM_E_INVALID_ARG, format!("{what}: not UTF-8")))
}

/// Like [`str_in`], but a null pointer is `None`.
///
/// # Safety
/// As [`str_in`].
pub(crate) unsafe fn opt_str_in(ptr: *const c_char, what: &str) -> Result<Option<String>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract (non-null here).
    unsafe { str_in(ptr, what) }.map(Some)
}

/// Copies `bytes` to the caller's buffer `buf` of `cap` bytes and stores the size in
/// `*needed` (when `needed` is non-null). Returns `CARDVM_E_BUFFER_TOO_SMALL` (with
/// `*needed` set, nothing copied) when `cap < bytes.len()`. `buf` may be null only
/// when `cap` is 0 (a size query).
///
/// # Safety
/// If `buf` is non-null it must be valid for writes of `cap` bytes; if `needed` is
/// non-null it must be valid for a write of one `size_t`.
pub(crate) unsafe fn bytes_out(
    bytes: &[u8],
    buf: *mut u8,
    cap: usize,
    needed: *mut usize,
) -> Result<c_int> {
    if buf.is_null() && cap != 0 {
        return Err(Error::new(
            CARDVM_E_NULL,
            "output buffer is null but its capacity is not 0",
        ));
    }
    if !needed.is_null() {
        // SAFETY: non-null, and by contract valid for writing one usize (size_t).
        unsafe { needed.write_unaligned(bytes.len()) };
    }
    if bytes.len() > cap {
        return Err(Error::new(
            CARDVM_E_BUFFER_TOO_SMALL,
            format!("buffer of {cap} bytes, {} needed", bytes.len()),
        ));
    }
    if !bytes.is_empty() {
        // SAFETY: `buf` is non-null (cap >= bytes.len() > 0, and null is only allowed
        // with cap 0), valid for `cap` >= bytes.len() bytes by contract; the source is a
        // Rust slice, which cannot overlap caller memory we do not own.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    }
    Ok(crate::CARDVM_OK)
}

/// [`bytes_out`] of `s` plus a terminating NUL (counted in `*needed`).
///
/// # Safety
/// As [`bytes_out`].
pub(crate) unsafe fn str_out(
    s: &str,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> Result<c_int> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend(s.bytes().map(|b| if b == 0 { b'?' } else { b }));
    v.push(0);
    // SAFETY: forwarded contract.
    unsafe { bytes_out(&v, buf.cast::<u8>(), cap, needed) }
}

/// Stores `value` at `out`.
///
/// # Safety
/// If `out` is non-null it must be valid for a write of one `T`.
pub(crate) unsafe fn value_out<T>(out: *mut T, value: T, what: &str) -> Result<()> {
    if out.is_null() {
        return Err(Error::new(CARDVM_E_NULL, format!("{what}: null pointer")));
    }
    // SAFETY: non-null and, by contract, valid for writing one T; write_unaligned
    // tolerates any alignment the caller's pointer has.
    unsafe { out.write_unaligned(value) };
    Ok(())
}

/// Checks an output pointer before any work is done (so a null out-pointer fails
/// early instead of after a run).
pub(crate) fn non_null<T>(p: *const T, what: &str) -> Result<()> {
    if p.is_null() {
        Err(Error::new(CARDVM_E_NULL, format!("{what}: null pointer")))
    } else {
        Ok(())
    }
}
