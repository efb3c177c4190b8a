//! Handle tables: contexts and simulated cards are `uint64_t` handles, never raw
//! pointers, so a stale, double-freed, forged or mixed-up handle is looked up, not
//! dereferenced, and fails with `CARDVM_E_BAD_HANDLE`.
//!
//! Handles come from one process-wide counter (starting at 1, never reused), so a
//! freed handle can never alias a later object, and a card handle is never a valid
//! context handle or the reverse.

use crate::{CARDVM_E_BAD_HANDLE, CARDVM_E_BUSY, Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A table of objects behind handles.
pub(crate) struct Table<T> {
    map: Mutex<BTreeMap<u64, Arc<Mutex<T>>>>,
    kind: &'static str,
}

/// Locks a mutex, recovering from poisoning: every entry point catches panics, so a
/// poisoned lock only means an earlier call panicked half-way; the objects behind
/// these locks stay memory-safe, and the next call reports its own errors.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Table<T> {
    /// An empty table of objects called `kind` in error messages.
    pub(crate) const fn new(kind: &'static str) -> Self {
        Table {
            map: Mutex::new(BTreeMap::new()),
            kind,
        }
    }

    /// Stores `value` under a fresh handle.
    pub(crate) fn insert(&self, value: T) -> u64 {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(&self.map).insert(id, Arc::new(Mutex::new(value)));
        id
    }

    /// The object behind `handle`.
    pub(crate) fn get(&self, handle: u64) -> Result<Arc<Mutex<T>>> {
        lock(&self.map)
            .get(&handle)
            .cloned()
            .ok_or_else(|| self.bad(handle))
    }

    /// Removes `handle`; the object is dropped once no running call holds it.
    pub(crate) fn remove(&self, handle: u64) -> Result<()> {
        lock(&self.map)
            .remove(&handle)
            .map(drop)
            .ok_or_else(|| self.bad(handle))
    }

    fn bad(&self, handle: u64) -> Error {
        Error::new(
            CARDVM_E_BAD_HANDLE,
            format!(
                "{handle} is not a live {} handle (never created, or already freed)",
                self.kind
            ),
        )
    }
}

/// Locks an object without waiting: a context is busy while a call on it runs (for
/// example `cardvm_run` calling the transmit callback, which must not call back into
/// the same context).
pub(crate) fn try_lock<'a, T>(m: &'a Mutex<T>, kind: &str) -> Result<MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Error::new(
            CARDVM_E_BUSY,
            format!(
                "the {kind} is in use by another call (re-entered from a callback, or used from two threads at once)"
            ),
        )),
    }
}
