//! The C ABI of cardvm: `libcardvm.a` / `libcardvm.so` and `include/cardvm.h`.
//!
//! This crate is the only place in cardvm with `unsafe` code; every unsafe block
//! carries a `// SAFETY:` comment, and all raw-pointer handling is in `src/ffi.rs`.
//!
//! # The reader flow
//! A context ([`cardvm_ctx`]) is a thin adapter over one
//! [`cardvm::reader::Reader`](cardvm_core::reader::Reader): the reader opens sealed
//! scripts, applies the policy (sealed only, command ↔ data binding, replay, expiry),
//! binds, runs, signs the receipt and journals it. The ABI has no policy of its own.
//! A C reader does:
//! 1. [`cardvm_ctx_new`] — an authoring reader (plain scripts, unsigned development
//!    receipts);
//! 2. [`cardvm_set_keys`] — the reader key, the issuer key (the reader then runs
//!    sealed scripts only), the reader id and the replay store;
//! 3. [`cardvm_set_journal`] — the receipt journal, opened now, before any card is
//!    touched (sealed scripts need one); steps 2 and 3 in either order;
//!    [`cardvm_set_allow_plain`] is the explicit development mode;
//! 4. [`cardvm_load_command`], [`cardvm_load_data`] — the scripts as received;
//! 5. [`cardvm_run`] with the card's transmit callback — `CARDVM_OK`, or
//!    [`CARDVM_E_UNJOURNALED`] when the receipt could not be journaled (deliver it
//!    yourself), or an error before the card was touched;
//! 6. [`cardvm_receipt_bytes`] / [`cardvm_receipt_json`] — the signed receipt;
//!    [`cardvm_receipt_mode`] says production or development.
//!
//! # Conventions (see also `capi/README.md`)
//! - **Return codes.** Functions return `int`: [`CARDVM_OK`] (0) or a negative
//!   `CARDVM_E_*` code. The message of the most recent failure is kept per context
//!   ([`cardvm_last_error`] with the context) and per thread (with handle 0, which
//!   also covers calls that have no context, or a bad one).
//! - **Handles.** Contexts ([`cardvm_ctx`]) and simulated cards ([`cardvm_sim`]) are
//!   `uint64_t` handles, not pointers; 0 is never a valid handle. A freed, forged or
//!   double-freed handle returns `CARDVM_E_BAD_HANDLE`, never undefined behaviour.
//!   Handles are never reused.
//! - **Ownership.** The library never keeps a pointer it was given beyond the call
//!   (except `user`, passed back to the transmit callback during [`cardvm_run`] only)
//!   and never hands out pointers to its own memory (except [`cardvm_version`]'s static
//!   string). Input buffers are copied; output goes into caller-supplied buffers
//!   (`buf`, `cap`, `needed`): on `CARDVM_E_BUFFER_TOO_SMALL` `*needed` holds the size
//!   required (strings: including the NUL), so a call with `cap = 0` is a size query.
//!   Nothing needs to be freed by the caller except handles.
//! - **Lengths.** Input lengths must be 1..=[`CARDVM_MAX_INPUT`]; strings are
//!   NUL-terminated UTF-8 of at most that many bytes.
//! - **Panics** never cross the boundary: every entry point catches them and returns
//!   [`CARDVM_E_PANIC`].
//! - **Threads.** Different contexts may be used from different threads at once. A
//!   context used by two calls at the same time (or re-entered from its own transmit
//!   callback) returns `CARDVM_E_BUSY` rather than blocking.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
#![allow(non_camel_case_types)]

mod adapter;
mod ffi;
mod registry;

#[cfg(test)]
mod tests;

use adapter::{Keys, Settings, SharedJournal, SharedStore, reader_error};
use cardvm_core::asm::{AsmOptions, assemble_file, compile_data};
use cardvm_core::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use cardvm_core::envelope::{FileReplayStore, MemoryReplayStore, SealedEnvelope};
use cardvm_core::reader::{Completed, JournalStatus};
use cardvm_core::receipt::{FieldValue, Mode, Receipt};
use cardvm_core::script::{CommandScript, DataScript};
use cardvm_core::sim::{CardProfile, SimCard};
use cardvm_core::transport::{CardTransport, TransportError};
use cardvm_core::verify::VerifiedProgram;
use cardvm_core::vm::{Limits, NoTrace, Outcome};
use core::ffi::{c_char, c_int, c_void};
use registry::{Table, lock, try_lock};
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------------
// Codes and types
// ---------------------------------------------------------------------------------

/// Success.
pub const CARDVM_OK: c_int = 0;
/// A required pointer argument was null.
pub const CARDVM_E_NULL: c_int = -1;
/// An argument has a bad value: a length of 0 or above `CARDVM_MAX_INPUT`, a string
/// that is not UTF-8, a key of the wrong size, a zero limit.
pub const CARDVM_E_INVALID_ARG: c_int = -2;
/// The handle is not live: never created, already freed, or of the other kind.
pub const CARDVM_E_BAD_HANDLE: c_int = -3;
/// The output buffer is too small; `*needed` holds the size required.
pub const CARDVM_E_BUFFER_TOO_SMALL: c_int = -4;
/// The context is in use by another call (re-entered from its transmit callback, or
/// used from two threads at once).
pub const CARDVM_E_BUSY: c_int = -5;
/// The call is not possible in the context's state: no script loaded, no receipt
/// yet, an unsigned receipt (no reader key), no such receipt field, a sealed script
/// without a journal (`cardvm_set_journal`), or a run while the last receipt is
/// undelivered (see [`CARDVM_E_UNJOURNALED`]).
pub const CARDVM_E_STATE: c_int = -6;
/// A command or data script is malformed, failed verification, the data script does
/// not fit the command script's inputs, or the two name different cities.
pub const CARDVM_E_SCRIPT: c_int = -7;
/// A sealed script could not be opened: signature, issuer, reader id, expiry, clock,
/// replay, tampering, a data script bound to another command script, or sealed input
/// on a context without keys (`cardvm_set_keys`).
pub const CARDVM_E_OPEN: c_int = -8;
/// A key could not be used (bad SM2 private key or public point).
pub const CARDVM_E_KEY: c_int = -9;
/// Assembling a command script or compiling a data script failed.
pub const CARDVM_E_ASM: c_int = -10;
/// A simulated card could not be built from its profile, or does not support the call.
pub const CARDVM_E_SIM: c_int = -11;
/// Any other failure (e.g. encoding or signing a receipt).
pub const CARDVM_E_INTERNAL: c_int = -12;
/// A plain (unsealed) script on a context that runs sealed scripts only (it has keys):
/// refused before the card is touched. `cardvm_set_allow_plain(ctx, 1)` is the explicit
/// development mode.
pub const CARDVM_E_POLICY: c_int = -13;
/// The replay store could not be opened or written, failed its integrity check, or is
/// missing or older than the receipts in the journal (rolled back): sealed scripts are
/// refused until it is rebuilt from the journal.
pub const CARDVM_E_STORE: c_int = -14;
/// The receipt journal could not be opened or read, or another writer (context or
/// process) holds its lock.
pub const CARDVM_E_JOURNAL: c_int = -15;
/// `cardvm_run` only: the card was reached and `*outcome` is set, but the receipt is
/// NOT in the journal (appending failed): fetch it (`cardvm_receipt_bytes` or
/// `cardvm_receipt_json`) and deliver it yourself. Until it is fetched, the next
/// `cardvm_run` on the context returns `CARDVM_E_STATE`. Calling `cardvm_set_journal`
/// with the same path reopens the journal.
pub const CARDVM_E_UNJOURNALED: c_int = -16;
/// A Rust panic was caught at the boundary (a bug in cardvm; please report it).
pub const CARDVM_E_PANIC: c_int = -99;

/// The transaction was committed by the card.
pub const CARDVM_OUTCOME_COMMITTED: c_int = 0;
/// The transaction did not happen.
pub const CARDVM_OUTCOME_FAILED: c_int = 1;
/// Unknown whether the card committed (tearing after the commit point): recover.
pub const CARDVM_OUTCOME_UNKNOWN: c_int = 2;

/// Receipt mode ([`cardvm_receipt_mode`]): both scripts were sealed by the trusted
/// issuer and opened by this reader; the card company settles it.
pub const CARDVM_MODE_PRODUCTION: c_int = 0;
/// Receipt mode: plain scripts ran (authoring, or the development mode of
/// `cardvm_set_allow_plain`); never settled.
pub const CARDVM_MODE_DEVELOPMENT: c_int = 1;
/// Receipt mode: the card company's sealed offline terminal program ran with the amount
/// keyed in at the terminal (a PSAM sale; docs/psam.md "Offline purchases"); settled on
/// the card's TAC once its journal is uploaded.
pub const CARDVM_MODE_TERMINAL: c_int = 2;

/// Transmit callback result: the response is in `resp[0..*resp_len]`.
pub const CARDVM_TX_OK: c_int = 0;
/// Transmit callback result: the card left the field during the exchange (tearing).
pub const CARDVM_TX_CARD_REMOVED: c_int = 1;
/// Transmit callback result: no card is present.
pub const CARDVM_TX_NO_CARD: c_int = 2;
/// Transmit callback result: the card did not answer in time.
pub const CARDVM_TX_TIMEOUT: c_int = 3;

/// Longest input buffer or string the ABI accepts (16 MiB).
pub const CARDVM_MAX_INPUT: usize = 16 * 1024 * 1024;

/// A reader context: the reader (keys, replay store, journal, policy, limits), the
/// loaded scripts, the last receipt and the last error.
/// A handle (0 is never valid), created by [`cardvm_ctx_new`], freed by
/// [`cardvm_ctx_free`].
pub type cardvm_ctx = u64;

/// A simulated card, created by [`cardvm_sim_new_from_toml`], freed by
/// [`cardvm_sim_free`]. Pass it to [`cardvm_sim_transmit`] as the user pointer with
/// `CARDVM_SIM_USER(sim)`, i.e. `(void *)(uintptr_t)sim`.
pub type cardvm_sim = u64;

/// Resource limits of a context's runs. Every field must be non-zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cardvm_limits {
    /// Most instructions one run executes.
    pub fuel: u64,
    /// Most APDUs one run sends.
    pub max_apdus: u32,
    /// Longest byte string a register may hold (at most `CARDVM_MAX_INPUT`).
    pub max_bytes: u64,
    /// Most bytes all registers may hold together (at most `CARDVM_MAX_INPUT`).
    pub max_memory: u64,
}

/// Sends one command APDU to the card.
///
/// `cmd[0..cmd_len]` is the command (valid during the call only). Write the raw
/// response (data ‖ SW1 SW2) into `resp[0..resp_cap]` and its length into
/// `*resp_len`; never write more than `resp_cap` bytes. Return [`CARDVM_TX_OK`],
/// [`CARDVM_TX_CARD_REMOVED`] (tearing), [`CARDVM_TX_NO_CARD`], [`CARDVM_TX_TIMEOUT`],
/// or any other value for a reader failure. `user` is the pointer given to
/// [`cardvm_run`]. The callback must not call functions on the running context (they
/// return `CARDVM_E_BUSY`).
pub type cardvm_transmit_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        cmd: *const u8,
        cmd_len: usize,
        resp: *mut u8,
        resp_cap: usize,
        resp_len: *mut usize,
    ) -> c_int,
>;

// ---------------------------------------------------------------------------------
// Errors and the panic-catching call wrapper
// ---------------------------------------------------------------------------------

/// A failure of one call: a `CARDVM_E_*` code and a message.
#[derive(Debug, Clone)]
pub(crate) struct Error {
    code: c_int,
    msg: String,
}

impl Error {
    pub(crate) fn new(code: c_int, msg: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
        }
    }
}

pub(crate) type Result<T> = core::result::Result<T, Error>;

thread_local! {
    static LAST_ERROR: RefCell<(c_int, String)> = const { RefCell::new((CARDVM_OK, String::new())) };
}

static CONTEXTS: Table<Ctx> = Table::new("context");
static SIMS: Table<SimCard> = Table::new("simulated card");

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| String::from("(no message)"));
    format!("internal panic caught at the C boundary: {what}")
}

/// Runs `f`, catching panics; records a failure as the thread's last error and, when
/// `ctx` names a live, idle context, as that context's last error.
fn call<T>(ctx: Option<cardvm_ctx>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::new(CARDVM_E_PANIC, panic_message(p.as_ref()))),
    };
    if let Err(e) = &r {
        // Recording must not panic either (a panic here would cross the boundary).
        let _ = catch_unwind(AssertUnwindSafe(|| record(ctx, e)));
    }
    r
}

fn record(ctx: Option<cardvm_ctx>, e: &Error) {
    LAST_ERROR.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = (e.code, e.msg.clone());
        }
    });
    if let Some(Ok(c)) = ctx.map(|h| CONTEXTS.get(h))
        && let Ok(mut c) = c.try_lock()
    {
        c.last_error = (e.code, e.msg.clone());
    }
}

fn code(r: Result<c_int>) -> c_int {
    r.unwrap_or_else(|e| e.code)
}

// ---------------------------------------------------------------------------------
// The context
// ---------------------------------------------------------------------------------

struct Ctx {
    /// What the reader is built from (see `adapter`).
    settings: Settings,
    /// The reader: the whole pipeline and its policy.
    pipeline: adapter::Pipeline,
    /// The loaded scripts, as given (plain or sealed); opened by the reader at each run.
    command: Option<Vec<u8>>,
    data: Option<Zeroizing<Vec<u8>>>,
    /// The last run that reached the card.
    last: Option<Completed>,
    /// The last receipt did not reach the journal and has not been fetched yet.
    undelivered: bool,
    last_error: (c_int, String),
}

impl Ctx {
    /// Applies `change` to a copy of the settings and rebuilds the reader from it; on
    /// failure the context keeps its previous reader and settings.
    fn reconfigure(&mut self, change: impl FnOnce(&mut Settings) -> Result<()>) -> Result<c_int> {
        let mut settings = self.settings.clone();
        change(&mut settings)?;
        let pipeline = settings.build()?;
        self.settings = settings;
        self.pipeline = pipeline;
        Ok(CARDVM_OK)
    }

    fn receipt(&self) -> Result<&Receipt> {
        self.last
            .as_ref()
            .map(|c| &c.receipt)
            .ok_or_else(|| Error::new(CARDVM_E_STATE, "no receipt: call cardvm_run first"))
    }
}

fn with_ctx<T>(h: cardvm_ctx, f: impl FnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
    let arc = CONTEXTS.get(h)?;
    let mut guard = try_lock(&arc, "context")?;
    f(&mut guard)
}

fn limits_from(l: &cardvm_limits) -> Result<Limits> {
    let size = |v: u64, what: &str| -> Result<usize> {
        match usize::try_from(v) {
            Ok(n) if n > 0 && n <= CARDVM_MAX_INPUT => Ok(n),
            _ => Err(Error::new(
                CARDVM_E_INVALID_ARG,
                format!("limits.{what} = {v}: must be 1..={CARDVM_MAX_INPUT}"),
            )),
        }
    };
    if l.fuel == 0 || l.max_apdus == 0 {
        return Err(Error::new(
            CARDVM_E_INVALID_ARG,
            "limits.fuel and limits.max_apdus must be non-zero",
        ));
    }
    Ok(Limits {
        fuel: l.fuel,
        max_apdus: l.max_apdus,
        max_bytes: size(l.max_bytes, "max_bytes")?,
        max_memory: size(l.max_memory, "max_memory")?,
    })
}

/// The library version, a static NUL-terminated string (do not free).
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_version() -> *const c_char {
    c"cardvm 0.1.0".as_ptr()
}

/// Fills `*out` with the default limits.
///
/// # Safety
/// `out` must be null (→ `CARDVM_E_NULL`) or valid for writing one `cardvm_limits`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_limits_default(out: *mut cardvm_limits) -> c_int {
    code(call(None, || {
        let d = Limits::default();
        let l = cardvm_limits {
            fuel: d.fuel,
            max_apdus: d.max_apdus,
            max_bytes: d.max_bytes as u64,
            max_memory: d.max_memory as u64,
        };
        // SAFETY: forwarded contract of `out`.
        unsafe { ffi::value_out(out, l, "out") }?;
        Ok(CARDVM_OK)
    }))
}

/// Creates a context with `limits` (null: the defaults): an *authoring* reader with
/// no keys, which runs plain scripts and produces unsigned development receipts.
/// [`cardvm_set_keys`] makes it a production reader. Returns its handle, or 0 on
/// failure (the reason is in `cardvm_last_error(0, ...)`). Free it with
/// [`cardvm_ctx_free`].
///
/// # Safety
/// `limits` must be null or point to a readable `cardvm_limits` (copied).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_ctx_new(limits: *const cardvm_limits) -> cardvm_ctx {
    call(None, || {
        let limits = if limits.is_null() {
            Limits::default()
        } else {
            // SAFETY: non-null and, by contract, points to a readable cardvm_limits
            // (a repr(C) struct of plain integers: every bit pattern is valid).
            let l = unsafe { limits.read_unaligned() };
            limits_from(&l)?
        };
        let settings = Settings::new(limits);
        let pipeline = settings.build()?;
        Ok(CONTEXTS.insert(Ctx {
            settings,
            pipeline,
            command: None,
            data: None,
            last: None,
            undelivered: false,
            last_error: (CARDVM_OK, String::new()),
        }))
    })
    .unwrap_or(0)
}

/// Frees a context (its reader, keys — zeroized —, scripts and receipt; the journal
/// and replay store are closed). 0 is a no-op returning `CARDVM_OK`; a handle already
/// freed returns `CARDVM_E_BAD_HANDLE`. A context freed while another thread runs on
/// it is dropped when that run returns.
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_ctx_free(ctx: cardvm_ctx) -> c_int {
    code(call(None, || {
        if ctx == 0 {
            return Ok(CARDVM_OK);
        }
        CONTEXTS.remove(ctx)?;
        Ok(CARDVM_OK)
    }))
}

/// Makes the context a production reader: it opens sealed scripts, signs receipts,
/// and runs sealed scripts only (unless [`cardvm_set_allow_plain`]).
///
/// `reader_key`: the reader's 32-byte SM2 private key (copied; zeroized on free).
/// `issuer_pub`: the trusted issuer's 65-byte uncompressed SM2 public key.
/// `reader_id`: this reader's id: sealed scripts must name it, receipts carry it
/// (null: the one of [`cardvm_set_reader_id`], else the reader key's id in hex).
/// `replay_store_path`: the file remembering the sequence numbers already accepted,
/// integrity-protected with the reader key (null: in memory, for the context's
/// lifetime only — for tests; with a journal holding earlier sealed receipts it is
/// refused as missing, `CARDVM_E_STORE`).
///
/// The reader is rebuilt and its replay store checked against the journal (if one is
/// set): a store that fails its integrity check, or is missing or older than the
/// journal's receipts, returns `CARDVM_E_STORE`. On any failure the context keeps its
/// previous configuration. Call before or after [`cardvm_set_journal`].
///
/// # Safety
/// Pointers must be null or valid for their lengths / NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_set_keys(
    ctx: cardvm_ctx,
    reader_key: *const u8,
    reader_key_len: usize,
    issuer_pub: *const u8,
    issuer_pub_len: usize,
    reader_id: *const c_char,
    replay_store_path: *const c_char,
) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contracts of the pointer arguments.
        let (rk, ip, id, path) = unsafe {
            (
                Zeroizing::new(ffi::bytes_in(reader_key, reader_key_len, "reader_key")?.to_vec()),
                ffi::bytes_in(issuer_pub, issuer_pub_len, "issuer_pub")?,
                ffi::opt_str_in(reader_id, "reader_id")?,
                ffi::opt_str_in(replay_store_path, "replay_store_path")?,
            )
        };
        with_ctx(ctx, |c| {
            let reader = Sm2PrivateKey::from_bytes(&rk)
                .map_err(|e| Error::new(CARDVM_E_KEY, format!("reader_key: {e}")))?;
            let issuer = Sm2PublicKey::from_sec1_bytes(ip)
                .map_err(|e| Error::new(CARDVM_E_KEY, format!("issuer_pub: {e}")))?;
            let store = match &path {
                None => SharedStore::new(MemoryReplayStore::new()),
                // The store's errors name its file.
                Some(p) => SharedStore::new(
                    FileReplayStore::open_file(p, &reader)
                        .map_err(|e| Error::new(CARDVM_E_STORE, e.to_string()))?,
                ),
            };
            c.reconfigure(|s| {
                if id.is_some() {
                    s.reader_id = id;
                }
                s.keys = Some(Keys {
                    reader,
                    issuer,
                    store,
                });
                Ok(())
            })
        })
    }))
}

/// Sets the receipt journal: the file at `path` (created if missing) is opened and
/// locked for writing now, before any card is touched, and every receipt of
/// [`cardvm_run`] is appended to it. Sealed scripts run only with a journal (else
/// `CARDVM_E_STATE`). `CARDVM_E_JOURNAL` if it cannot be opened or another writer
/// (another context, or another process) holds it; `CARDVM_E_STORE` if the replay
/// store of [`cardvm_set_keys`] is older than its receipts. On failure the context
/// keeps its previous journal, except when naming the current journal again: that
/// reopens it (after `CARDVM_E_UNJOURNALED`), and if the reopen fails the context has
/// no journal.
///
/// # Safety
/// `path` must be null (→ `CARDVM_E_NULL`) or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_set_journal(ctx: cardvm_ctx, path: *const c_char) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let path = unsafe { ffi::str_in(path, "path") }?;
        with_ctx(ctx, |c| {
            let path = adapter::canonical(path.as_ref())?;
            if c.settings.journal.as_ref().and_then(SharedJournal::path) == Some(path.as_path()) {
                // Reopening the current journal: its writers' lock must be released
                // first, so the context is without a journal until the reopen succeeds
                // (sealed scripts are refused meanwhile).
                c.reconfigure(|s| {
                    s.journal = None;
                    Ok(())
                })?;
            }
            c.reconfigure(|s| {
                s.journal = Some(SharedJournal::open_file(path)?);
                Ok(())
            })
        })
    }))
}

/// The explicit development mode: `allow` non-zero lets a context with keys also run
/// plain (unsealed) scripts; their receipts say development (a signed field) and
/// never settle. A sealed data script still runs only with the command script it was
/// sealed for. 0 restores sealed-only (the default). A context without keys runs plain
/// scripts anyway.
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_set_allow_plain(ctx: cardvm_ctx, allow: c_int) -> c_int {
    code(call(Some(ctx), || {
        with_ctx(ctx, |c| {
            c.reconfigure(|s| {
                s.allow_plain = allow != 0;
                Ok(())
            })
        })
    }))
}

/// Sets this reader's id: sealed scripts must name it, receipts carry it (default:
/// the reader key's id in hex, or `local` without keys).
///
/// # Safety
/// `reader_id` must be null (→ `CARDVM_E_NULL`) or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_set_reader_id(ctx: cardvm_ctx, reader_id: *const c_char) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let id = unsafe { ffi::str_in(reader_id, "reader_id") }?;
        with_ctx(ctx, |c| {
            c.reconfigure(|s| {
                s.reader_id = Some(id);
                Ok(())
            })
        })
    }))
}

/// Early format check at load; the reader opens, verifies and applies the policy at
/// each run.
fn check_envelope(bytes: &[u8], what: &str) -> Result<()> {
    SealedEnvelope::parse(bytes)
        .map(drop)
        .map_err(|e| Error::new(CARDVM_E_OPEN, format!("sealed {what} script: {e}")))
}

/// Loads a command script: plain bytecode (`.cvm`) or sealed for this reader. A plain
/// one is parsed and verified now (`CARDVM_E_SCRIPT`), a sealed one checked for form
/// (`CARDVM_E_OPEN`); it is opened, and the policy applied, by [`cardvm_run`]. On
/// failure the previously loaded command script is kept. The bytes are copied.
///
/// # Safety
/// `bytes` must be null (→ `CARDVM_E_NULL`) or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_load_command(
    ctx: cardvm_ctx,
    bytes: *const u8,
    len: usize,
) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let bytes = unsafe { ffi::bytes_in(bytes, len, "command script") }?;
        with_ctx(ctx, |c| {
            if cardvm_core::reader::is_sealed(bytes) {
                check_envelope(bytes, "command")?;
            } else {
                let script = CommandScript::parse(bytes)
                    .map_err(|e| Error::new(CARDVM_E_SCRIPT, format!("command script: {e}")))?;
                VerifiedProgram::from_script(script).map_err(|e| {
                    Error::new(CARDVM_E_SCRIPT, format!("command script: verify: {e}"))
                })?;
            }
            c.command = Some(bytes.to_vec());
            Ok(CARDVM_OK)
        })
    }))
}

/// Loads a data script: plain (`.cvd`) or sealed for this reader. A plain one is
/// parsed now (`CARDVM_E_SCRIPT`), a sealed one checked for form (`CARDVM_E_OPEN`); it
/// is opened and bound to the command script by [`cardvm_run`]. A sealed data script
/// runs once (its sequence number is spent when it opens). The bytes are copied; key
/// material is zeroized when replaced or freed.
///
/// # Safety
/// `bytes` must be null (→ `CARDVM_E_NULL`) or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_load_data(ctx: cardvm_ctx, bytes: *const u8, len: usize) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let bytes = unsafe { ffi::bytes_in(bytes, len, "data script") }?;
        with_ctx(ctx, |c| {
            if cardvm_core::reader::is_sealed(bytes) {
                check_envelope(bytes, "data")?;
            } else {
                DataScript::parse(bytes)
                    .map_err(|e| Error::new(CARDVM_E_SCRIPT, format!("data script: {e}")))?;
            }
            c.data = Some(Zeroizing::new(bytes.to_vec()));
            Ok(CARDVM_OK)
        })
    }))
}

/// A card reached through the C transmit callback.
struct CallbackCard {
    f: unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut u8, usize, *mut usize) -> c_int,
    user: *mut c_void,
}

impl CardTransport for CallbackCard {
    fn transmit(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> core::result::Result<usize, TransportError> {
        let mut len = 0usize;
        // SAFETY: `f` is the non-null callback the caller of `cardvm_run` promised to
        // be a valid function of this signature; `command` and `response` are live
        // Rust buffers valid for their lengths during the call, `len` is a local.
        let rc = unsafe {
            (self.f)(
                self.user,
                command.as_ptr(),
                command.len(),
                response.as_mut_ptr(),
                response.len(),
                &mut len,
            )
        };
        match rc {
            CARDVM_TX_OK if len > response.len() => Err(TransportError::Other(format!(
                "transmit callback reported {len} response bytes for a buffer of {}",
                response.len()
            ))),
            CARDVM_TX_OK => Ok(len),
            CARDVM_TX_CARD_REMOVED => Err(TransportError::CardRemoved),
            CARDVM_TX_NO_CARD => Err(TransportError::NoCard),
            CARDVM_TX_TIMEOUT => Err(TransportError::Timeout),
            other => Err(TransportError::Other(format!(
                "transmit callback returned {other}"
            ))),
        }
    }
}

/// Runs one transaction through the context's reader: opens the loaded scripts (when
/// sealed), applies the policy, binds, runs on the card behind `transmit` (called
/// with `user` for each APDU, on this thread, during this call only), signs the
/// receipt (with a reader key) and appends it to the journal (when set).
///
/// Returns:
/// - `CARDVM_OK`: the card was reached; `*outcome` is a `CARDVM_OUTCOME_*` value and
///   the receipt is available (journaled, if a journal is set). A failed or unknown
///   transaction is still `CARDVM_OK`: its reason is in the receipt.
/// - [`CARDVM_E_UNJOURNALED`]: the card was reached and `*outcome` is set, but the
///   receipt is NOT in the journal: fetch it and deliver it yourself.
/// - Any other code: the card was not touched (the transmit callback was not called)
///   and there is no receipt: `CARDVM_E_POLICY` (plain script on a sealed-only
///   reader), `CARDVM_E_OPEN`, `CARDVM_E_SCRIPT`, `CARDVM_E_STORE`,
///   `CARDVM_E_STATE` (nothing loaded, sealed scripts without a journal, or an
///   undelivered receipt), ... One exception may come after the card was reached,
///   without a receipt: `CARDVM_E_PANIC`; treat the transaction as unknown and
///   recover. (A receipt whose signature failed is still journaled and returned,
///   unsigned.)
///
/// # Safety
/// `transmit` must be null (→ `CARDVM_E_NULL`) or a function of the
/// `cardvm_transmit_fn` contract; `outcome` null or valid for writing one `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_run(
    ctx: cardvm_ctx,
    transmit: cardvm_transmit_fn,
    user: *mut c_void,
    outcome: *mut c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { run_on_card(ctx, None, transmit, user, outcome) }
}

/// Runs the loaded command script as the city's **card query** (DESIGN §7): the reader
/// builds the data script itself — `now` from its clock (UTC) and `nonce`, the card
/// company's challenge (`nonce_len` 0..=32 bytes; `nonce` may be null when it is 0) —
/// and refuses, before the card is touched, a script with a key input, another input
/// or a commit point (`CARDVM_E_SCRIPT`), a nonce over 32 bytes
/// (`CARDVM_E_INVALID_ARG`), and on a sealed-only reader a query not sealed as one
/// (`seal --kind query`; `CARDVM_E_POLICY` / `CARDVM_E_OPEN`). Only read-only commands
/// reach the card. The loaded data script, if any, is not used. Returns as
/// [`cardvm_run`]; a sealed query's receipt is a production receipt with no data
/// identity: the request for a bundle, never settled.
///
/// # Safety
/// As [`cardvm_run`]; `nonce` null or valid for `nonce_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_query(
    ctx: cardvm_ctx,
    nonce: *const u8,
    nonce_len: usize,
    transmit: cardvm_transmit_fn,
    user: *mut c_void,
    outcome: *mut c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { run_on_card(ctx, Some((nonce, nonce_len)), transmit, user, outcome) }
}

/// [`cardvm_run`] (`query` None) and [`cardvm_query`] (`query` the nonce's pointer
/// and length).
///
/// # Safety
/// As [`cardvm_run`]; a query's nonce pointer null or valid for its length.
unsafe fn run_on_card(
    ctx: cardvm_ctx,
    query: Option<(*const u8, usize)>,
    transmit: cardvm_transmit_fn,
    user: *mut c_void,
    outcome: *mut c_int,
) -> c_int {
    code(call(Some(ctx), || {
        ffi::non_null(outcome, "outcome")?;
        let query: Option<&[u8]> = match query {
            None => None,
            Some((_, 0)) => Some(&[]),
            // SAFETY: forwarded contract of the nonce.
            Some((ptr, len)) => Some(unsafe { ffi::bytes_in(ptr, len, "nonce") }?),
        };
        let f = transmit.ok_or_else(|| Error::new(CARDVM_E_NULL, "transmit: null function"))?;
        let (o, unjournaled) = with_ctx(ctx, |c| {
            if c.undelivered {
                return Err(Error::new(
                    CARDVM_E_STATE,
                    "the last receipt is not in the journal and was not fetched: fetch it (cardvm_receipt_bytes or cardvm_receipt_json) and deliver it before the next run",
                ));
            }
            c.last = None;
            let reader = &mut c.pipeline.reader;
            let prepared = match (query, &c.command, &c.data) {
                (Some(nonce), Some(command), _) => reader.prepare_query(command, nonce),
                (None, Some(command), Some(data)) => reader.prepare(command, data),
                (Some(_), None, _) => {
                    return Err(Error::new(
                        CARDVM_E_STATE,
                        "load the query script (cardvm_load_command) before cardvm_query",
                    ));
                }
                (None, _, _) => {
                    return Err(Error::new(
                        CARDVM_E_STATE,
                        "load a command script and a data script before cardvm_run",
                    ));
                }
            }
            .map_err(|e| reader_error(&e))?;
            let completed = reader
                .run(
                    &prepared,
                    &mut CallbackCard { f, user },
                    &mut NoTrace,
                    &mut cardvm_core::crypto::rng::os_rng(),
                )
                .map_err(|e| reader_error(&e))?;
            let o = match completed.report.outcome {
                Outcome::Committed => CARDVM_OUTCOME_COMMITTED,
                Outcome::Failed(_) => CARDVM_OUTCOME_FAILED,
                Outcome::Unknown(_) => CARDVM_OUTCOME_UNKNOWN,
            };
            let unjournaled = match &completed.journal {
                JournalStatus::Failed(e) => Some(format!(
                    "the card was reached (outcome {}), but the receipt is NOT in the journal ({e}): fetch it with cardvm_receipt_bytes and deliver it yourself",
                    completed.report.outcome.name()
                )),
                JournalStatus::Appended(_) | JournalStatus::NotConfigured => None,
            };
            c.undelivered = unjournaled.is_some();
            c.last = Some(completed);
            Ok((o, unjournaled))
        })?;
        // SAFETY: forwarded contract of `outcome` (checked non-null above).
        unsafe { ffi::value_out(outcome, o, "outcome") }?;
        match unjournaled {
            Some(msg) => Err(Error::new(CARDVM_E_UNJOURNALED, msg)),
            None => Ok(CARDVM_OK),
        }
    }))
}

/// `CARDVM_OK` if the last receipt is signed. [`cardvm_run`] signs every receipt on a
/// context with a reader key, so this only checks (kept for compatibility):
/// `CARDVM_E_STATE` without a receipt, or when the context has no reader key
/// ([`cardvm_set_keys`]) and the receipt is unsigned.
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_sign_receipt(ctx: cardvm_ctx) -> c_int {
    code(call(Some(ctx), || {
        with_ctx(ctx, |c| match c.receipt()?.signature {
            Some(_) => Ok(CARDVM_OK),
            None => Err(Error::new(
                CARDVM_E_STATE,
                "the receipt is unsigned: this context has no reader key (cardvm_set_keys)",
            )),
        })
    }))
}

/// Copies the last receipt's canonical bytes (signed when the context has a reader
/// key) into `buf` (see the buffer convention). A successful copy counts as delivery
/// of an unjournaled receipt ([`CARDVM_E_UNJOURNALED`]).
///
/// # Safety
/// `buf` null with `cap` 0, or valid for `cap` bytes; `needed` null or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_receipt_bytes(
    ctx: cardvm_ctx,
    buf: *mut u8,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    code(call(Some(ctx), || {
        with_ctx(ctx, |c| {
            let bytes = c
                .receipt()?
                .to_bytes()
                .map_err(|e| Error::new(CARDVM_E_INTERNAL, format!("receipt: {e}")))?;
            // SAFETY: forwarded contract.
            let rc = unsafe { ffi::bytes_out(&bytes, buf, cap, needed) }?;
            c.undelivered = false;
            Ok(rc)
        })
    }))
}

/// Copies the last receipt as JSON (NUL-terminated) into `buf`. A successful copy
/// counts as delivery of an unjournaled receipt ([`CARDVM_E_UNJOURNALED`]).
///
/// # Safety
/// As [`cardvm_receipt_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_receipt_json(
    ctx: cardvm_ctx,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    code(call(Some(ctx), || {
        with_ctx(ctx, |c| {
            let json = c.receipt()?.to_json();
            // SAFETY: forwarded contract.
            let rc = unsafe { ffi::str_out(&json, buf, cap, needed) }?;
            c.undelivered = false;
            Ok(rc)
        })
    }))
}

/// The last receipt's mode: [`CARDVM_MODE_PRODUCTION`] (both scripts sealed by the
/// trusted issuer), [`CARDVM_MODE_DEVELOPMENT`] (plain scripts; never settled) or
/// [`CARDVM_MODE_TERMINAL`] (an offline terminal sale).
///
/// # Safety
/// `out` null (→ `CARDVM_E_NULL`) or valid for writing one `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_receipt_mode(ctx: cardvm_ctx, out: *mut c_int) -> c_int {
    code(call(Some(ctx), || {
        ffi::non_null(out, "out")?;
        let mode = with_ctx(ctx, |c| {
            Ok(match c.receipt()?.mode {
                Mode::Production => CARDVM_MODE_PRODUCTION,
                Mode::Development => CARDVM_MODE_DEVELOPMENT,
                Mode::Terminal => CARDVM_MODE_TERMINAL,
            })
        })?;
        // SAFETY: forwarded contract (checked non-null above).
        unsafe { ffi::value_out(out, mode, "out") }?;
        Ok(CARDVM_OK)
    }))
}

/// The journal sequence number of the last receipt. `CARDVM_E_STATE` when there is no
/// receipt or no journal; [`CARDVM_E_UNJOURNALED`] when appending it failed.
///
/// # Safety
/// `out` null (→ `CARDVM_E_NULL`) or valid for writing one `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_receipt_journal_seq(ctx: cardvm_ctx, out: *mut u64) -> c_int {
    code(call(Some(ctx), || {
        ffi::non_null(out, "out")?;
        let seq = with_ctx(ctx, |c| {
            c.receipt()?;
            match c.last.as_ref().map(|l| &l.journal) {
                Some(JournalStatus::Appended(seq)) => Ok(*seq),
                Some(JournalStatus::Failed(e)) => Err(Error::new(
                    CARDVM_E_UNJOURNALED,
                    format!("the receipt is not in the journal: {e}"),
                )),
                _ => Err(Error::new(
                    CARDVM_E_STATE,
                    "no journal: the receipt was not journaled (cardvm_set_journal)",
                )),
            }
        })?;
        // SAFETY: forwarded contract (checked non-null above).
        unsafe { ffi::value_out(out, seq, "out") }?;
        Ok(CARDVM_OK)
    }))
}

/// Reads the integer output field `name` (e.g. `"balance_after"`) of the last
/// receipt. `CARDVM_E_STATE` if there is no such integer field.
///
/// # Safety
/// `name` NUL-terminated or null; `out` null or valid for writing one `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_receipt_field_int(
    ctx: cardvm_ctx,
    name: *const c_char,
    out: *mut u64,
) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let name = unsafe { ffi::str_in(name, "name") }?;
        ffi::non_null(out, "out")?;
        let v = with_ctx(ctx, |c| match c.receipt()?.field(&name) {
            Some(FieldValue::Int(v)) => Ok(*v),
            Some(FieldValue::Bytes(_)) => Err(Error::new(
                CARDVM_E_STATE,
                format!("receipt field `{name}` is bytes, not an integer"),
            )),
            None => Err(Error::new(
                CARDVM_E_STATE,
                format!("the receipt has no field `{name}`"),
            )),
        })?;
        // SAFETY: forwarded contract (checked non-null above).
        unsafe { ffi::value_out(out, v, "out") }?;
        Ok(CARDVM_OK)
    }))
}

/// The code of the last failure: of context `ctx`, or of the calling thread when
/// `ctx` is 0 (covers every call on this thread, including those without a context).
/// `CARDVM_OK` if none; `CARDVM_E_BAD_HANDLE` if `ctx` is not live.
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_last_error_code(ctx: cardvm_ctx) -> c_int {
    match last_error(ctx) {
        Ok((c, _)) => c,
        Err(e) => e.code,
    }
}

fn last_error(ctx: cardvm_ctx) -> Result<(c_int, String)> {
    // Not through `call`: reading the last error must not overwrite it.
    catch_unwind(AssertUnwindSafe(|| {
        if ctx == 0 {
            Ok(LAST_ERROR.with(|l| l.try_borrow().map(|l| l.clone()).unwrap_or_default()))
        } else {
            with_ctx(ctx, |c| Ok(c.last_error.clone()))
        }
    }))
    .unwrap_or_else(|p| Err(Error::new(CARDVM_E_PANIC, panic_message(p.as_ref()))))
}

/// Copies the message of the last failure (see [`cardvm_last_error_code`]),
/// NUL-terminated, into `buf`; an empty string if none. Does not change the last error.
///
/// # Safety
/// As [`cardvm_receipt_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_last_error(
    ctx: cardvm_ctx,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    let r = last_error(ctx).and_then(|(_, msg)| {
        catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: forwarded contract.
            unsafe { ffi::str_out(&msg, buf, cap, needed) }
        }))
        .unwrap_or_else(|p| Err(Error::new(CARDVM_E_PANIC, panic_message(p.as_ref()))))
    });
    code(r)
}

// ---------------------------------------------------------------------------------
// Tools: assembler and data compiler
// ---------------------------------------------------------------------------------

/// Assembles the command script text file at `path` (`.include`s are resolved
/// relative to it) and copies the bytecode into `buf`. Each call assembles again (a
/// size query with `cap` 0 costs a full assembly). Errors: thread's last error.
///
/// # Safety
/// `path` NUL-terminated or null; `buf`/`needed` as [`cardvm_receipt_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_assemble_file(
    path: *const c_char,
    buf: *mut u8,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    code(call(None, || {
        // SAFETY: forwarded contract.
        let path = unsafe { ffi::str_in(path, "path") }?;
        let script = assemble_file(path.as_ref(), &AsmOptions::default())
            .map_err(|e| Error::new(CARDVM_E_ASM, e.to_string()))?
            .script;
        // SAFETY: forwarded contract.
        unsafe { ffi::bytes_out(&script.encode(), buf, cap, needed) }
    }))
}

/// Compiles a data script from TOML text and copies the bytes into `buf` (they
/// contain key material: wipe them after loading).
///
/// # Safety
/// `toml` NUL-terminated or null; `buf`/`needed` as [`cardvm_receipt_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_compile_data(
    toml: *const c_char,
    buf: *mut u8,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    code(call(None, || {
        // SAFETY: forwarded contract.
        let text = Zeroizing::new(unsafe { ffi::str_in(toml, "toml") }?);
        let data = compile_data(&text).map_err(|e| Error::new(CARDVM_E_ASM, e.to_string()))?;
        let bytes = Zeroizing::new(data.encode());
        // SAFETY: forwarded contract.
        unsafe { ffi::bytes_out(&bytes, buf, cap, needed) }
    }))
}

// ---------------------------------------------------------------------------------
// Simulated cards
// ---------------------------------------------------------------------------------

/// Builds a simulated card (CPU or M1) from CARD.toml text (see `cardvm sim new`).
/// Returns its handle, or 0 on failure (reason in `cardvm_last_error(0, ...)`).
///
/// # Safety
/// `toml` NUL-terminated or null (→ 0, `CARDVM_E_NULL`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_sim_new_from_toml(toml: *const c_char) -> cardvm_sim {
    call(None, || {
        // SAFETY: forwarded contract.
        let text = Zeroizing::new(unsafe { ffi::str_in(toml, "toml") }?);
        let card = CardProfile::from_toml(&text)
            .and_then(|p| p.build())
            .map_err(|e| Error::new(CARDVM_E_SIM, e.to_string()))?;
        Ok(SIMS.insert(card))
    })
    .unwrap_or(0)
}

/// Frees a simulated card. 0 is a no-op; a freed handle returns `CARDVM_E_BAD_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_sim_free(sim: cardvm_sim) -> c_int {
    code(call(None, || {
        if sim == 0 {
            return Ok(CARDVM_OK);
        }
        SIMS.remove(sim)?;
        Ok(CARDVM_OK)
    }))
}

/// A ready-made [`cardvm_transmit_fn`] for a simulated card: pass it to
/// [`cardvm_run`] with `user = CARDVM_SIM_USER(sim)`. Returns `CARDVM_TX_*`, or a
/// negative `CARDVM_E_*` code (bad handle, null pointers, response too long).
///
/// # Safety
/// `cmd` valid for `cmd_len` bytes, `resp` for `resp_cap` bytes, `resp_len` for one
/// `size_t` (each may be null: → `CARDVM_E_NULL`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_sim_transmit(
    user: *mut c_void,
    cmd: *const u8,
    cmd_len: usize,
    resp: *mut u8,
    resp_cap: usize,
    resp_len: *mut usize,
) -> c_int {
    let r = call(None, || {
        // The handle travels as the pointer's value; it is never dereferenced.
        let sim = user as usize as u64;
        // SAFETY: forwarded contract.
        let cmd = unsafe { ffi::bytes_in(cmd, cmd_len, "cmd") }?;
        ffi::non_null(resp, "resp")?;
        ffi::non_null(resp_len, "resp_len")?;
        let card = SIMS.get(sim)?;
        let mut out = vec![0u8; resp_cap.min(65_538)];
        let n = match lock(&card).transmit(cmd, &mut out) {
            Ok(n) => n,
            Err(TransportError::CardRemoved) => return Ok(CARDVM_TX_CARD_REMOVED),
            Err(TransportError::NoCard) => return Ok(CARDVM_TX_NO_CARD),
            Err(TransportError::Timeout) => return Ok(CARDVM_TX_TIMEOUT),
            Err(TransportError::ResponseTooLong { needed, capacity }) => {
                return Err(Error::new(
                    CARDVM_E_BUFFER_TOO_SMALL,
                    format!("response of {needed} bytes, buffer of {capacity}"),
                ));
            }
            Err(e) => return Err(Error::new(CARDVM_E_SIM, e.to_string())),
        };
        let body = out
            .get(..n)
            .ok_or_else(|| Error::new(CARDVM_E_INTERNAL, "simulated card reported a bad length"))?;
        // SAFETY: forwarded contracts of `resp` (resp_cap >= out.len() >= n bytes) and
        // `resp_len` (checked non-null above).
        unsafe {
            ffi::bytes_out(body, resp, resp_cap, core::ptr::null_mut())?;
            ffi::value_out(resp_len, n, "resp_len")?;
        }
        Ok(CARDVM_TX_OK)
    });
    code(r)
}

/// The committed balance of a simulated CPU card, in fen (`CARDVM_E_SIM` for M1 cards).
///
/// # Safety
/// `out` null (→ `CARDVM_E_NULL`) or valid for writing one `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_sim_balance(sim: cardvm_sim, out: *mut u32) -> c_int {
    code(call(None, || {
        ffi::non_null(out, "out")?;
        let card = SIMS.get(sim)?;
        let balance = match &*lock(&card) {
            SimCard::Cpu(c) => c.balance(),
            _ => {
                return Err(Error::new(
                    CARDVM_E_SIM,
                    "cardvm_sim_balance: only simulated CPU cards have a purse balance",
                ));
            }
        };
        // SAFETY: forwarded contract (checked non-null above).
        unsafe { ffi::value_out(out, balance, "out") }?;
        Ok(CARDVM_OK)
    }))
}

/// Copies the simulated card's id (CPU: application serial; M1: UID) into `buf`.
///
/// # Safety
/// As [`cardvm_receipt_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_sim_card_id(
    sim: cardvm_sim,
    buf: *mut u8,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    code(call(None, || {
        let card = SIMS.get(sim)?;
        let id = lock(&card).card_id().to_vec();
        // SAFETY: forwarded contract.
        unsafe { ffi::bytes_out(&id, buf, cap, needed) }
    }))
}

/// Copies the simulated card's committed state as CARD.toml text (NUL-terminated)
/// into `buf`, so a later run can continue from it.
///
/// # Safety
/// As [`cardvm_receipt_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_sim_to_toml(
    sim: cardvm_sim,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> c_int {
    code(call(None, || {
        let card = SIMS.get(sim)?;
        let text = lock(&card)
            .to_profile()
            .to_toml()
            .map_err(|e| Error::new(CARDVM_E_SIM, e.to_string()))?;
        let text = Zeroizing::new(text);
        // SAFETY: forwarded contract.
        unsafe { ffi::str_out(&text, buf, cap, needed) }
    }))
}
