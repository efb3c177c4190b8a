//! The C ABI of cardvm: `libcardvm.a` / `libcardvm.so` and `include/cardvm.h`.
//!
//! This crate is the only place in cardvm with `unsafe` code; every unsafe block
//! carries a `// SAFETY:` comment, and all raw-pointer handling is in `src/ffi.rs`.
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

mod ffi;
mod registry;

#[cfg(test)]
mod tests;

use cardvm_core::asm::{AsmOptions, assemble_file, compile_data};
use cardvm_core::crypto::sm2::{Sm2PrivateKey, Sm2PublicKey};
use cardvm_core::envelope::{
    FileReplayStore, MemoryReplayStore, Opener, ReplayEntry, ReplayKey, ReplayStore, StoreError,
};
use cardvm_core::receipt::{FieldValue, Receipt};
use cardvm_core::script::{CommandScript, DataScript};
use cardvm_core::sim::{CardProfile, SimCard};
use cardvm_core::transport::{ApduLayer, CardTransport, TransportError};
use cardvm_core::verify::{Binding, VerifiedProgram};
use cardvm_core::vm::{Limits, NoTrace, Outcome, Vm};
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
/// The call is not possible in the context's state (no script loaded, no receipt yet,
/// no reader key to sign with, no such receipt field).
pub const CARDVM_E_STATE: c_int = -6;
/// A command or data script is malformed, failed verification, or the data script
/// does not fit the command script's inputs.
pub const CARDVM_E_SCRIPT: c_int = -7;
/// A sealed script could not be opened (signature, reader id, expiry, replay, or
/// tampering), or sealed input came without keys set.
pub const CARDVM_E_OPEN: c_int = -8;
/// A key could not be used (bad SM2 private key or public point), or the replay store
/// could not be opened.
pub const CARDVM_E_KEY: c_int = -9;
/// Assembling a command script or compiling a data script failed.
pub const CARDVM_E_ASM: c_int = -10;
/// A simulated card could not be built from its profile, or does not support the call.
pub const CARDVM_E_SIM: c_int = -11;
/// Any other failure (e.g. encoding a receipt).
pub const CARDVM_E_INTERNAL: c_int = -12;
/// A Rust panic was caught at the boundary (a bug in cardvm; please report it).
pub const CARDVM_E_PANIC: c_int = -99;

/// The transaction was committed by the card.
pub const CARDVM_OUTCOME_COMMITTED: c_int = 0;
/// The transaction did not happen.
pub const CARDVM_OUTCOME_FAILED: c_int = 1;
/// Unknown whether the card committed (tearing after the commit point): recover.
pub const CARDVM_OUTCOME_UNKNOWN: c_int = 2;

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

/// A VM context: loaded scripts, keys, limits, the last receipt and the last error.
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
    if let Some(Ok(c)) = ctx.map(|h| CONTEXTS.get(h)) {
        if let Ok(mut c) = c.try_lock() {
            c.last_error = (e.code, e.msg.clone());
        }
    }
}

fn code(r: Result<c_int>) -> c_int {
    r.unwrap_or_else(|e| e.code)
}

// ---------------------------------------------------------------------------------
// The context
// ---------------------------------------------------------------------------------

/// The replay store of a context's opener.
enum Store {
    Memory(MemoryReplayStore),
    File(FileReplayStore),
}

impl ReplayStore for Store {
    fn last(&self, key: &ReplayKey) -> core::result::Result<Option<ReplayEntry>, StoreError> {
        match self {
            Store::Memory(s) => s.last(key),
            Store::File(s) => s.last(key),
        }
    }
    fn record(
        &mut self,
        key: &ReplayKey,
        entry: ReplayEntry,
    ) -> core::result::Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.record(key, entry),
            Store::File(s) => s.record(key, entry),
        }
    }
}

struct Keys {
    reader: Sm2PrivateKey,
    opener: Opener<Store>,
}

struct Ctx {
    /// Kept across runs with the binding storage: a warm run allocates only its report.
    vm: Vm,
    binding: Binding,
    keys: Option<Keys>,
    reader_id: String,
    card_id: Vec<u8>,
    program: Option<VerifiedProgram>,
    data: Option<DataScript>,
    receipt: Option<Receipt>,
    last_error: (c_int, String),
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

/// Creates a context with `limits` (null: the defaults). Returns its handle, or 0 on
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
        Ok(CONTEXTS.insert(Ctx {
            vm: Vm::new(limits),
            binding: Binding::default(),
            keys: None,
            reader_id: String::from("local"),
            card_id: Vec::new(),
            program: None,
            data: None,
            receipt: None,
            last_error: (CARDVM_OK, String::new()),
        }))
    })
    .unwrap_or(0)
}

/// Frees a context (its scripts, keys — zeroized — and receipt). 0 is a no-op
/// returning `CARDVM_OK`; a handle already freed returns `CARDVM_E_BAD_HANDLE`.
/// A context freed while another thread runs on it is dropped when that run returns.
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

/// Sets the reader's keys, so that sealed scripts can be loaded and receipts signed.
///
/// `reader_key`: the reader's 32-byte SM2 private key (copied; zeroized on free).
/// `issuer_pub`: the issuer's 65-byte uncompressed SM2 public key.
/// `reader_id`: this reader's id, checked against sealed scripts and written into
/// receipts (null: not checked; receipts carry the reader key's id in hex).
/// `replay_store_path`: a file remembering the sequence numbers already accepted
/// (null: in memory, for the context's lifetime only).
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
                ffi::bytes_in(reader_key, reader_key_len, "reader_key")?,
                ffi::bytes_in(issuer_pub, issuer_pub_len, "issuer_pub")?,
                ffi::opt_str_in(reader_id, "reader_id")?,
                ffi::opt_str_in(replay_store_path, "replay_store_path")?,
            )
        };
        let reader = Sm2PrivateKey::from_bytes(rk)
            .map_err(|e| Error::new(CARDVM_E_KEY, format!("reader_key: {e}")))?;
        let issuer = Sm2PublicKey::from_sec1_bytes(ip)
            .map_err(|e| Error::new(CARDVM_E_KEY, format!("issuer_pub: {e}")))?;
        let store = match &path {
            None => Store::Memory(MemoryReplayStore::new()),
            Some(p) => Store::File(
                FileReplayStore::open(p)
                    .map_err(|e| Error::new(CARDVM_E_KEY, format!("replay store {p}: {e}")))?,
            ),
        };
        with_ctx(ctx, |c| {
            c.reader_id = match &id {
                Some(id) => id.clone(),
                None => reader
                    .public_key()
                    .key_id()
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect(),
            };
            let opener = Opener::new(id.as_deref(), reader.clone(), issuer, store);
            c.keys = Some(Keys { reader, opener });
            Ok(CARDVM_OK)
        })
    }))
}

/// Sets the reader id written into receipts (and overrides the one from
/// [`cardvm_set_keys`] for receipts; sealed scripts are still checked against that one).
///
/// # Safety
/// `reader_id` must be null (→ `CARDVM_E_NULL`) or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_set_reader_id(ctx: cardvm_ctx, reader_id: *const c_char) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let id = unsafe { ffi::str_in(reader_id, "reader_id") }?;
        with_ctx(ctx, |c| {
            c.reader_id = id;
            Ok(CARDVM_OK)
        })
    }))
}

/// Sets the card id written into receipts (e.g. the card's application serial or
/// UID, as reported by [`cardvm_sim_card_id`] or the reader). Copied.
///
/// # Safety
/// `card_id` must be null (→ `CARDVM_E_NULL`) or valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cardvm_set_card_id(
    ctx: cardvm_ctx,
    card_id: *const u8,
    len: usize,
) -> c_int {
    code(call(Some(ctx), || {
        // SAFETY: forwarded contract.
        let id = unsafe { ffi::bytes_in(card_id, len, "card_id") }?.to_vec();
        with_ctx(ctx, |c| {
            c.card_id = id;
            Ok(CARDVM_OK)
        })
    }))
}

fn is_sealed(b: &[u8]) -> bool {
    b.starts_with(&cardvm_core::envelope::format::MAGIC)
}

/// Opens `bytes` if sealed; plain bytes are returned as they are.
fn open_if_sealed(c: &mut Ctx, bytes: &[u8], what: &str) -> Result<Zeroizing<Vec<u8>>> {
    if !is_sealed(bytes) {
        return Ok(Zeroizing::new(bytes.to_vec()));
    }
    let keys = c.keys.as_mut().ok_or_else(|| {
        Error::new(
            CARDVM_E_OPEN,
            format!("{what} is sealed: set the reader's keys first (cardvm_set_keys)"),
        )
    })?;
    let opened = keys
        .opener
        .open(bytes, cardvm_core::envelope::unix_now())
        .map_err(|e| Error::new(CARDVM_E_OPEN, format!("{what}: {e}")))?;
    Ok(opened.into_payload())
}

/// Loads a command script: plain bytecode (`.cvm`) or sealed for this reader (then
/// [`cardvm_set_keys`] first). It is parsed and verified now; on failure the
/// previously loaded command script is kept. The bytes are copied.
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
            let plain = open_if_sealed(c, bytes, "command script")?;
            let script = CommandScript::parse(&plain)
                .map_err(|e| Error::new(CARDVM_E_SCRIPT, format!("command script: {e}")))?;
            let program = VerifiedProgram::from_script(script)
                .map_err(|e| Error::new(CARDVM_E_SCRIPT, format!("command script: verify: {e}")))?;
            c.program = Some(program);
            Ok(CARDVM_OK)
        })
    }))
}

/// Loads a data script: plain (`.cvd`) or sealed for this reader. It is parsed now
/// and bound to the command script at [`cardvm_run`]. The bytes are copied; key
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
            let plain = open_if_sealed(c, bytes, "data script")?;
            let data = DataScript::parse(&plain)
                .map_err(|e| Error::new(CARDVM_E_SCRIPT, format!("data script: {e}")))?;
            c.data = Some(data);
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

/// Runs the loaded command script with the loaded data script against the card
/// behind `transmit` (called with `user` for each APDU, on this thread, during this
/// call only). On `CARDVM_OK` `*outcome` is a `CARDVM_OUTCOME_*` value and the
/// (unsigned) receipt is available; a failed or unknown transaction is still
/// `CARDVM_OK` — its reason is in the receipt.
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
    code(call(Some(ctx), || {
        ffi::non_null(outcome, "outcome")?;
        let f = transmit.ok_or_else(|| Error::new(CARDVM_E_NULL, "transmit: null function"))?;
        let o = with_ctx(ctx, |c| {
            let (Some(program), Some(data)) = (&c.program, &c.data) else {
                return Err(Error::new(
                    CARDVM_E_STATE,
                    "load a command script and a data script before cardvm_run",
                ));
            };
            let bound = program
                .bind_into(data, &mut c.binding)
                .map_err(|e| Error::new(CARDVM_E_SCRIPT, format!("data script: {e}")))?;
            let mut layer = ApduLayer::new(CallbackCard { f, user });
            let report = c.vm.run(bound, &mut layer, &mut NoTrace);
            let receipt =
                Receipt::from_run(program.header(), &c.reader_id, &c.card_id, &report, None);
            let o = match report.outcome {
                Outcome::Committed => CARDVM_OUTCOME_COMMITTED,
                Outcome::Failed(_) => CARDVM_OUTCOME_FAILED,
                Outcome::Unknown(_) => CARDVM_OUTCOME_UNKNOWN,
            };
            c.receipt = Some(receipt);
            Ok(o)
        })?;
        // SAFETY: forwarded contract of `outcome` (checked non-null above).
        unsafe { ffi::value_out(outcome, o, "outcome") }?;
        Ok(CARDVM_OK)
    }))
}

fn with_receipt<T>(ctx: cardvm_ctx, f: impl FnOnce(&mut Receipt) -> Result<T>) -> Result<T> {
    with_ctx(ctx, |c| {
        let r = c
            .receipt
            .as_mut()
            .ok_or_else(|| Error::new(CARDVM_E_STATE, "no receipt: call cardvm_run first"))?;
        f(r)
    })
}

/// Signs the last receipt with the reader key of [`cardvm_set_keys`].
#[unsafe(no_mangle)]
pub extern "C" fn cardvm_sign_receipt(ctx: cardvm_ctx) -> c_int {
    code(call(Some(ctx), || {
        with_ctx(ctx, |c| {
            let key =
                c.keys.as_ref().map(|k| k.reader.clone()).ok_or_else(|| {
                    Error::new(CARDVM_E_STATE, "no reader key: call cardvm_set_keys")
                })?;
            let r = c
                .receipt
                .as_mut()
                .ok_or_else(|| Error::new(CARDVM_E_STATE, "no receipt: call cardvm_run first"))?;
            r.sign(&key, &mut cardvm_core::crypto::rng::os_rng())
                .map_err(|e| Error::new(CARDVM_E_INTERNAL, format!("signing the receipt: {e}")))?;
            Ok(CARDVM_OK)
        })
    }))
}

/// Copies the last receipt's canonical bytes (signed if [`cardvm_sign_receipt`] was
/// called) into `buf` (see the buffer convention).
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
        let bytes = with_receipt(ctx, |r| {
            r.to_bytes()
                .map_err(|e| Error::new(CARDVM_E_INTERNAL, format!("receipt: {e}")))
        })?;
        // SAFETY: forwarded contract.
        unsafe { ffi::bytes_out(&bytes, buf, cap, needed) }
    }))
}

/// Copies the last receipt as JSON (NUL-terminated) into `buf`.
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
        let json = with_receipt(ctx, |r| Ok(r.to_json()))?;
        // SAFETY: forwarded contract.
        unsafe { ffi::str_out(&json, buf, cap, needed) }
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
        let v = with_receipt(ctx, |r| match r.field(&name) {
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
