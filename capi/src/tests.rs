//! Tests of the ABI through its extern functions: misuse (null pointers, bad lengths,
//! small buffers, stale handles) returns codes; runs, sealed scripts, tearing and
//! re-entrancy behave as documented; panics are caught.
//!
//! SAFETY (for every unsafe block of this test module, which calls the extern
//! functions as C would): each pointer passed is either a live Rust buffer, CString or
//! local of at least the length passed, or deliberately null / dangling together with
//! a length the callee rejects before reading; the user pointer given to `cardvm_run`
//! is a live `&mut Tx` for the duration of the run.
#![allow(clippy::undocumented_unsafe_blocks)]

use super::*;
use cardvm_core::envelope::{EnvelopeHeader, ScriptKind, seal};
use cardvm_core::reader::{JournalFailure, ReceiptJournal};
use std::ffi::CStr;
use std::path::PathBuf;

fn city() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/city0731-des3")
}

fn command_bytes() -> Vec<u8> {
    assemble_file(&city().join("load.casm"), &AsmOptions::default())
        .unwrap()
        .script
        .encode()
}

fn data_bytes() -> Vec<u8> {
    compile_data(&std::fs::read_to_string(city().join("load.toml")).unwrap())
        .unwrap()
        .encode()
}

fn card_toml() -> std::ffi::CString {
    std::ffi::CString::new(std::fs::read_to_string(city().join("card.toml")).unwrap()).unwrap()
}

fn new_sim() -> cardvm_sim {
    let toml = card_toml();
    let sim = unsafe { cardvm_sim_new_from_toml(toml.as_ptr()) };
    assert_ne!(sim, 0, "{}", last_message(0));
    sim
}

fn last_message(ctx: cardvm_ctx) -> String {
    let mut buf = vec![0u8; 1024];
    let mut needed = 0usize;
    let rc = unsafe { cardvm_last_error(ctx, buf.as_mut_ptr().cast(), buf.len(), &mut needed) };
    assert_eq!(rc, CARDVM_OK);
    buf.truncate(needed.saturating_sub(1));
    String::from_utf8(buf).unwrap()
}

fn loaded_ctx(command: &[u8], data: &[u8]) -> cardvm_ctx {
    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    assert_ne!(ctx, 0);
    assert_eq!(
        unsafe { cardvm_load_command(ctx, command.as_ptr(), command.len()) },
        CARDVM_OK,
        "{}",
        last_message(ctx)
    );
    assert_eq!(
        unsafe { cardvm_load_data(ctx, data.as_ptr(), data.len()) },
        CARDVM_OK,
        "{}",
        last_message(ctx)
    );
    ctx
}

/// The transport of the tests: a simulated card plus fault switches.
struct Tx {
    sim: cardvm_sim,
    ctx: cardvm_ctx,
    apdus: usize,
    /// Return this code instead of exchanging at APDU n (1-based).
    fail_at: Option<(usize, c_int)>,
    /// Report a response longer than the buffer.
    lie_about_len: bool,
    /// Result of calling back into the running context.
    reentry: Option<c_int>,
}

impl Tx {
    fn new(sim: cardvm_sim) -> Self {
        Tx {
            sim,
            ctx: 0,
            apdus: 0,
            fail_at: None,
            lie_about_len: false,
            reentry: None,
        }
    }
}

unsafe extern "C" fn test_transmit(
    user: *mut c_void,
    cmd: *const u8,
    cmd_len: usize,
    resp: *mut u8,
    resp_cap: usize,
    resp_len: *mut usize,
) -> c_int {
    // SAFETY: the tests pass a live &mut Tx as the user pointer.
    let tx = unsafe { &mut *user.cast::<Tx>() };
    tx.apdus += 1;
    if tx.ctx != 0 && tx.reentry.is_none() {
        let b = [0u8; 4];
        tx.reentry = Some(unsafe { cardvm_load_data(tx.ctx, b.as_ptr(), b.len()) });
    }
    if let Some((n, code)) = tx.fail_at
        && n == tx.apdus
    {
        return code;
    }
    let rc = unsafe {
        cardvm_sim_transmit(
            CARDVM_SIM_USER(tx.sim),
            cmd,
            cmd_len,
            resp,
            resp_cap,
            resp_len,
        )
    };
    if tx.lie_about_len {
        unsafe { *resp_len = resp_cap + 1 };
    }
    rc
}

#[allow(non_snake_case)]
fn CARDVM_SIM_USER(sim: cardvm_sim) -> *mut c_void {
    sim as usize as *mut c_void
}

fn run(ctx: cardvm_ctx, tx: &mut Tx) -> (c_int, c_int) {
    let mut outcome = -1;
    let rc = unsafe {
        cardvm_run(
            ctx,
            Some(test_transmit),
            (tx as *mut Tx).cast(),
            &mut outcome,
        )
    };
    (rc, outcome)
}

fn field(ctx: cardvm_ctx, name: &std::ffi::CStr) -> Result<u64> {
    let mut v = 0u64;
    match unsafe { cardvm_receipt_field_int(ctx, name.as_ptr(), &mut v) } {
        CARDVM_OK => Ok(v),
        c => Err(Error::new(c, last_message(ctx))),
    }
}

#[test]
fn a_load_through_the_callback_commits_and_the_receipt_says_so() {
    let sim = new_sim();
    let ctx = loaded_ctx(&command_bytes(), &data_bytes());
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(tx.apdus, 4);
    assert_eq!(field(ctx, c"balance_before").unwrap(), 500);
    assert_eq!(field(ctx, c"balance_after").unwrap(), 10_500);
    assert_eq!(field(ctx, c"terminal_id").unwrap_err().code, CARDVM_E_STATE);
    assert_eq!(field(ctx, c"no_such").unwrap_err().code, CARDVM_E_STATE);
    let mut bal = 0u32;
    assert_eq!(unsafe { cardvm_sim_balance(sim, &mut bal) }, CARDVM_OK);
    assert_eq!(bal, 10_500);

    // Receipt bytes: size query, then exact fit; they parse back.
    let mut needed = 0usize;
    assert_eq!(
        unsafe { cardvm_receipt_bytes(ctx, core::ptr::null_mut(), 0, &mut needed) },
        CARDVM_E_BUFFER_TOO_SMALL
    );
    let mut buf = vec![0u8; needed];
    assert_eq!(
        unsafe { cardvm_receipt_bytes(ctx, buf.as_mut_ptr(), buf.len(), &mut needed) },
        CARDVM_OK
    );
    let receipt = Receipt::from_bytes(&buf).unwrap();
    assert_eq!(receipt.outcome, cardvm_core::receipt::Outcome::Committed);
    assert_eq!(receipt.reader_id, "local");
    assert_eq!(receipt.mode, cardvm_core::receipt::Mode::Development);

    // JSON: one byte short is refused and nothing is written.
    let mut json_len = 0usize;
    unsafe { cardvm_receipt_json(ctx, core::ptr::null_mut(), 0, &mut json_len) };
    let mut json = vec![0xAAu8; json_len - 1];
    assert_eq!(
        unsafe { cardvm_receipt_json(ctx, json.as_mut_ptr().cast(), json.len(), &mut needed) },
        CARDVM_E_BUFFER_TOO_SMALL
    );
    assert_eq!(needed, json_len);
    assert!(json.iter().all(|&b| b == 0xAA));
    json.push(0);
    assert_eq!(
        unsafe { cardvm_receipt_json(ctx, json.as_mut_ptr().cast(), json.len(), &mut needed) },
        CARDVM_OK
    );
    assert_eq!(json.last(), Some(&0));
    let text = std::str::from_utf8(&json[..json.len() - 1]).unwrap();
    assert_eq!(
        Receipt::from_json(text).unwrap(),
        receipt,
        "JSON and bytes agree"
    );

    // A second load on the same context (its VM and binding are reused) and card.
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(field(ctx, c"balance_before").unwrap(), 10_500);
    assert_eq!(field(ctx, c"balance_after").unwrap(), 20_500);
    assert_eq!(unsafe { cardvm_sim_balance(sim, &mut bal) }, CARDVM_OK);
    assert_eq!(bal, 20_500);

    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn null_pointers_return_e_null() {
    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    let b = [1u8; 8];
    let mut n = 0usize;
    let mut o = 0;
    unsafe {
        assert_eq!(
            cardvm_load_command(ctx, core::ptr::null(), 8),
            CARDVM_E_NULL
        );
        assert_eq!(cardvm_load_data(ctx, core::ptr::null(), 8), CARDVM_E_NULL);
        assert_eq!(cardvm_set_journal(ctx, core::ptr::null()), CARDVM_E_NULL);
        assert_eq!(
            cardvm_receipt_mode(ctx, core::ptr::null_mut()),
            CARDVM_E_NULL
        );
        assert_eq!(
            cardvm_receipt_journal_seq(ctx, core::ptr::null_mut()),
            CARDVM_E_NULL
        );
        assert_eq!(cardvm_set_reader_id(ctx, core::ptr::null()), CARDVM_E_NULL);
        assert_eq!(
            cardvm_set_keys(
                ctx,
                core::ptr::null(),
                32,
                b.as_ptr(),
                8,
                core::ptr::null(),
                core::ptr::null()
            ),
            CARDVM_E_NULL
        );
        assert_eq!(
            cardvm_run(ctx, None, core::ptr::null_mut(), &mut o),
            CARDVM_E_NULL
        );
        assert_eq!(
            cardvm_run(
                ctx,
                Some(test_transmit),
                core::ptr::null_mut(),
                core::ptr::null_mut()
            ),
            CARDVM_E_NULL
        );
        assert_eq!(cardvm_limits_default(core::ptr::null_mut()), CARDVM_E_NULL);
        assert_eq!(
            cardvm_assemble_file(core::ptr::null(), core::ptr::null_mut(), 0, &mut n),
            CARDVM_E_NULL
        );
        assert_eq!(
            cardvm_compile_data(core::ptr::null(), core::ptr::null_mut(), 0, &mut n),
            CARDVM_E_NULL
        );
        assert_eq!(cardvm_sim_new_from_toml(core::ptr::null()), 0);
        assert_eq!(cardvm_last_error_code(0), CARDVM_E_NULL);
        assert_eq!(cardvm_sim_balance(12, core::ptr::null_mut()), CARDVM_E_NULL);
        assert_eq!(
            cardvm_receipt_field_int(ctx, core::ptr::null(), &mut 0),
            CARDVM_E_NULL
        );
        // A null output buffer with a non-zero capacity.
        assert_eq!(
            cardvm_last_error(ctx, core::ptr::null_mut(), 10, &mut n),
            CARDVM_E_NULL
        );
        // The sim transmit function checks its pointers too.
        let sim = new_sim();
        assert_eq!(
            cardvm_sim_transmit(
                CARDVM_SIM_USER(sim),
                core::ptr::null(),
                5,
                core::ptr::null_mut(),
                0,
                core::ptr::null_mut()
            ),
            CARDVM_E_NULL
        );
        let mut r = [0u8; 4];
        assert_eq!(
            cardvm_sim_transmit(
                CARDVM_SIM_USER(sim),
                b.as_ptr(),
                5,
                r.as_mut_ptr(),
                r.len(),
                core::ptr::null_mut()
            ),
            CARDVM_E_NULL
        );
        assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
    }
    assert_eq!(cardvm_last_error_code(ctx), CARDVM_E_NULL);
    assert!(last_message(ctx).contains("null"), "{}", last_message(ctx));
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
}

#[test]
fn zero_and_huge_lengths_are_refused_before_any_read() {
    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    // A dangling (never dereferenced) pointer: the length check comes first.
    let dangling = core::ptr::NonNull::<u8>::dangling().as_ptr();
    unsafe {
        assert_eq!(cardvm_load_command(ctx, dangling, 0), CARDVM_E_INVALID_ARG);
        assert_eq!(
            cardvm_load_command(ctx, dangling, CARDVM_MAX_INPUT + 1),
            CARDVM_E_INVALID_ARG
        );
        assert_eq!(
            cardvm_load_data(ctx, dangling, usize::MAX),
            CARDVM_E_INVALID_ARG
        );
        // Wrong key sizes.
        let k = [7u8; 32];
        assert_eq!(
            cardvm_set_keys(
                ctx,
                k.as_ptr(),
                31,
                k.as_ptr(),
                32,
                core::ptr::null(),
                core::ptr::null()
            ),
            CARDVM_E_KEY
        );
        // Not UTF-8.
        let bad = [0xFFu8, 0xFE, 0];
        assert_eq!(
            cardvm_set_reader_id(ctx, bad.as_ptr().cast()),
            CARDVM_E_INVALID_ARG
        );
        // Junk scripts.
        let junk = [0u8; 64];
        assert_eq!(
            cardvm_load_command(ctx, junk.as_ptr(), junk.len()),
            CARDVM_E_SCRIPT
        );
        assert_eq!(
            cardvm_load_data(ctx, junk.as_ptr(), junk.len()),
            CARDVM_E_SCRIPT
        );
    }
    // Zero limits are refused (an all-zero struct is most likely uninitialized).
    let zero = cardvm_limits {
        fuel: 0,
        max_apdus: 0,
        max_bytes: 0,
        max_memory: 0,
    };
    assert_eq!(unsafe { cardvm_ctx_new(&zero) }, 0);
    assert_eq!(cardvm_last_error_code(0), CARDVM_E_INVALID_ARG);
    let mut l = zero;
    assert_eq!(unsafe { cardvm_limits_default(&mut l) }, CARDVM_OK);
    l.max_memory = u64::MAX;
    assert_eq!(unsafe { cardvm_ctx_new(&l) }, 0);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
}

#[test]
fn stale_double_freed_and_mixed_up_handles_return_bad_handle() {
    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    let sim = new_sim();
    let b = [1u8; 4];
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_E_BAD_HANDLE);
    assert_eq!(
        unsafe { cardvm_load_data(ctx, b.as_ptr(), b.len()) },
        CARDVM_E_BAD_HANDLE
    );
    assert_eq!(cardvm_last_error_code(ctx), CARDVM_E_BAD_HANDLE);
    assert_eq!(cardvm_last_error_code(0), CARDVM_E_BAD_HANDLE);
    assert!(last_message(0).contains("already freed"));
    assert_eq!(cardvm_sign_receipt(u64::MAX), CARDVM_E_BAD_HANDLE);
    // A card handle is not a context handle, and the reverse.
    assert_eq!(cardvm_ctx_free(sim), CARDVM_E_BAD_HANDLE);
    let other = unsafe { cardvm_ctx_new(core::ptr::null()) };
    assert_eq!(cardvm_sim_free(other), CARDVM_E_BAD_HANDLE);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_E_BAD_HANDLE);
    let mut o = 0u32;
    assert_eq!(
        unsafe { cardvm_sim_balance(sim, &mut o) },
        CARDVM_E_BAD_HANDLE
    );
    assert_eq!(cardvm_ctx_free(0), CARDVM_OK);
    assert_eq!(cardvm_sim_free(0), CARDVM_OK);
    assert_eq!(cardvm_ctx_free(other), CARDVM_OK);
}

#[test]
fn state_errors_before_loading_or_running() {
    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    let sim = new_sim();
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_STATE);
    assert_eq!(tx.apdus, 0);
    let mut n = 0;
    assert_eq!(
        unsafe { cardvm_receipt_bytes(ctx, core::ptr::null_mut(), 0, &mut n) },
        CARDVM_E_STATE
    );
    assert_eq!(cardvm_sign_receipt(ctx), CARDVM_E_STATE);
    // A data script that does not fit the command script: refused at run.
    let other_data = compile_data("x = 1").unwrap().encode();
    let cmd = command_bytes();
    unsafe {
        assert_eq!(cardvm_load_command(ctx, cmd.as_ptr(), cmd.len()), CARDVM_OK);
        assert_eq!(
            cardvm_load_data(ctx, other_data.as_ptr(), other_data.len()),
            CARDVM_OK
        );
    }
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_SCRIPT);
    assert_eq!(tx.apdus, 0);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn transport_failures_become_outcomes_not_crashes() {
    let (cmd, data) = (command_bytes(), data_bytes());
    // Card removed at the last APDU (the commit): unknown.
    let sim = new_sim();
    let ctx = loaded_ctx(&cmd, &data);
    let mut tx = Tx::new(sim);
    tx.fail_at = Some((4, CARDVM_TX_CARD_REMOVED));
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_UNKNOWN));
    // A reader error at the first APDU: failed.
    let mut tx = Tx::new(sim);
    tx.fail_at = Some((1, 42));
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_FAILED));
    // A callback claiming more bytes than the buffer holds: failed, nothing read.
    let mut tx = Tx::new(sim);
    tx.lie_about_len = true;
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_FAILED));
    // The card is untouched by all of these (tearing before the card's commit).
    let mut bal = 0;
    assert_eq!(unsafe { cardvm_sim_balance(sim, &mut bal) }, CARDVM_OK);
    assert_eq!(bal, 500);
    // Then a clean run commits.
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn re_entering_the_running_context_is_busy_not_a_deadlock() {
    let sim = new_sim();
    let ctx = loaded_ctx(&command_bytes(), &data_bytes());
    let mut tx = Tx::new(sim);
    tx.ctx = ctx;
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(tx.reentry, Some(CARDVM_E_BUSY));
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn a_panic_is_caught_and_reported() {
    let r: Result<c_int> = call(None, || panic!("boom"));
    assert_eq!(code(r), CARDVM_E_PANIC);
    assert_eq!(cardvm_last_error_code(0), CARDVM_E_PANIC);
    assert!(last_message(0).contains("boom"));
}

#[test]
fn tools_assemble_compile_and_report_errors() {
    let path = std::ffi::CString::new(city().join("load.casm").to_str().unwrap()).unwrap();
    let mut n = 0usize;
    unsafe {
        assert_eq!(
            cardvm_assemble_file(path.as_ptr(), core::ptr::null_mut(), 0, &mut n),
            CARDVM_E_BUFFER_TOO_SMALL
        );
        let mut buf = vec![0u8; n];
        assert_eq!(
            cardvm_assemble_file(path.as_ptr(), buf.as_mut_ptr(), n, &mut n),
            CARDVM_OK
        );
        assert_eq!(buf, command_bytes());
        assert_eq!(
            cardvm_assemble_file(c"/nonexistent.casm".as_ptr(), buf.as_mut_ptr(), n, &mut n),
            CARDVM_E_ASM
        );
        assert_eq!(
            cardvm_compile_data(c"x = ".as_ptr(), buf.as_mut_ptr(), n, &mut n),
            CARDVM_E_ASM
        );
        assert!(!last_message(0).is_empty());
    }
}

// ---------------------------------------------------------------------------------
// The reader pipeline through the ABI: each test fails if its attack works again.
// ---------------------------------------------------------------------------------

/// A scratch directory of one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cardvm-capi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn cpath(&self, name: &str) -> std::ffi::CString {
        std::ffi::CString::new(self.path(name).to_str().unwrap()).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The card company and one reader: their keys, and sealing for that reader.
struct Issuer {
    issuer: Sm2PrivateKey,
    reader: Sm2PrivateKey,
}

const READER_ID: &CStr = c"kiosk-1";

impl Issuer {
    fn new() -> Self {
        let mut rng = cardvm_core::crypto::rng::os_rng();
        Issuer {
            issuer: Sm2PrivateKey::generate(&mut rng),
            reader: Sm2PrivateKey::generate(&mut rng),
        }
    }

    fn seal(&self, kind: ScriptKind, seq: u64, payload: &[u8], binding: [u8; 32]) -> Vec<u8> {
        let h = CommandScript::parse(&command_bytes()).unwrap().header;
        let now = cardvm_core::envelope::unix_now();
        let header = EnvelopeHeader {
            kind,
            city: h.city,
            script_id: h.script_id,
            script_version: h.version,
            seq,
            issued: now - 60,
            expires: now + 600,
            binding,
            reader_id: READER_ID.to_str().unwrap().into(),
        };
        let mut rng = cardvm_core::crypto::rng::os_rng();
        seal(
            &self.issuer,
            self.reader.public_key(),
            &header,
            payload,
            &mut rng,
        )
        .unwrap()
    }

    /// The city's load command script, sealed (bound to its own bytes).
    fn command(&self, seq: u64) -> Vec<u8> {
        let cmd = command_bytes();
        self.seal(
            ScriptKind::Command,
            seq,
            &cmd,
            cardvm_core::crypto::sm3(&cmd),
        )
    }

    /// The load's data script, sealed for the city's load command script.
    fn data(&self, seq: u64) -> Vec<u8> {
        let bound_to = cardvm_core::crypto::sm3(&command_bytes());
        self.seal(ScriptKind::Data, seq, &data_bytes(), bound_to)
    }

    fn set_keys(&self, ctx: cardvm_ctx, store: Option<&CStr>) -> c_int {
        let rk = self.reader.to_bytes();
        let ip = self.issuer.public_key().to_sec1_bytes();
        unsafe {
            cardvm_set_keys(
                ctx,
                rk.as_ptr(),
                rk.len(),
                ip.as_ptr(),
                ip.len(),
                READER_ID.as_ptr(),
                store.map_or(core::ptr::null(), CStr::as_ptr),
            )
        }
    }
}

fn new_ctx() -> cardvm_ctx {
    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    assert_ne!(ctx, 0);
    ctx
}

fn load(ctx: cardvm_ctx, command: &[u8], data: &[u8]) {
    unsafe {
        assert_eq!(
            cardvm_load_command(ctx, command.as_ptr(), command.len()),
            CARDVM_OK,
            "{}",
            last_message(ctx)
        );
        assert_eq!(
            cardvm_load_data(ctx, data.as_ptr(), data.len()),
            CARDVM_OK,
            "{}",
            last_message(ctx)
        );
    }
}

fn set_journal(ctx: cardvm_ctx, path: &CStr) -> c_int {
    unsafe { cardvm_set_journal(ctx, path.as_ptr()) }
}

fn receipt_of(ctx: cardvm_ctx) -> Receipt {
    let mut n = 0usize;
    unsafe { cardvm_receipt_bytes(ctx, core::ptr::null_mut(), 0, &mut n) };
    let mut buf = vec![0u8; n];
    assert_eq!(
        unsafe { cardvm_receipt_bytes(ctx, buf.as_mut_ptr(), n, &mut n) },
        CARDVM_OK,
        "{}",
        last_message(ctx)
    );
    Receipt::from_bytes(&buf).unwrap()
}

fn mode_of(ctx: cardvm_ctx) -> c_int {
    let mut mode = -1;
    assert_eq!(unsafe { cardvm_receipt_mode(ctx, &mut mode) }, CARDVM_OK);
    mode
}

fn journal_entries(path: &std::path::Path) -> Vec<Vec<u8>> {
    let j = cardvm_core::journal::Journal::open_read_only(path).unwrap();
    j.entries().map(|e| e.unwrap().payload).collect()
}

/// A plain command script of the attacker's: not the bytes the data script was sealed
/// for (here the same program with debug info; any other script is refused alike).
fn attackers_command() -> Vec<u8> {
    let cmd = assemble_file(&city().join("load.casm"), &AsmOptions { debug: true })
        .unwrap()
        .script
        .encode();
    assert_ne!(cmd, command_bytes());
    cmd
}

#[test]
fn a_sealed_data_script_never_runs_under_an_attackers_plain_command_script() {
    let dir = Scratch::new("attacker-command");
    let keys = Issuer::new();
    let ctx = new_ctx();
    assert_eq!(keys.set_keys(ctx, None), CARDVM_OK, "{}", last_message(ctx));
    assert_eq!(set_journal(ctx, &dir.cpath("j")), CARDVM_OK);
    let sealed_data = keys.data(1);
    load(ctx, &attackers_command(), &sealed_data);
    let sim = new_sim();

    // Sealed-only: the plain command script is refused, the card never reached.
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_POLICY);
    assert_eq!(tx.apdus, 0);
    assert!(
        last_message(ctx).contains("cardvm_set_allow_plain"),
        "{}",
        last_message(ctx)
    );
    assert_eq!(
        mode_of_err(ctx),
        CARDVM_E_STATE,
        "no receipt after a refusal"
    );

    // Development mode: the data script still opens only for its own command script.
    assert_eq!(cardvm_set_allow_plain(ctx, 1), CARDVM_OK);
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_OPEN);
    assert_eq!(tx.apdus, 0);
    assert!(
        last_message(ctx).contains("may only run with command script"),
        "{}",
        last_message(ctx)
    );
    assert!(journal_entries(&dir.path("j")).is_empty());
    let mut bal = 0;
    assert_eq!(unsafe { cardvm_sim_balance(sim, &mut bal) }, CARDVM_OK);
    assert_eq!(bal, 500);

    // The refusals did not spend the data script: with its own sealed command script
    // it runs, in production mode.
    assert_eq!(cardvm_set_allow_plain(ctx, 0), CARDVM_OK);
    load(ctx, &keys.command(1), &sealed_data);
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(mode_of(ctx), CARDVM_MODE_PRODUCTION);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

fn mode_of_err(ctx: cardvm_ctx) -> c_int {
    let mut mode = -1;
    unsafe { cardvm_receipt_mode(ctx, &mut mode) }
}

#[test]
fn plain_scripts_on_a_reader_with_keys_are_refused_unless_allow_plain() {
    let keys = Issuer::new();
    let sim = new_sim();
    let ctx = loaded_ctx(&command_bytes(), &data_bytes());
    assert_eq!(keys.set_keys(ctx, None), CARDVM_OK, "{}", last_message(ctx));
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_POLICY);
    assert_eq!(tx.apdus, 0);

    // A sealed command script does not make a plain data script acceptable.
    let dir = Scratch::new("plain-data");
    assert_eq!(set_journal(ctx, &dir.cpath("j")), CARDVM_OK);
    let sealed_cmd = keys.command(1);
    load(ctx, &sealed_cmd, &data_bytes());
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_POLICY);
    assert!(
        last_message(ctx).contains("plain data"),
        "{}",
        last_message(ctx)
    );
    assert_eq!(tx.apdus, 0);

    // The explicit development mode: runs, and the signed receipt says development.
    assert_eq!(cardvm_set_allow_plain(ctx, 1), CARDVM_OK);
    load(ctx, &command_bytes(), &data_bytes());
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(mode_of(ctx), CARDVM_MODE_DEVELOPMENT);
    assert_eq!(cardvm_sign_receipt(ctx), CARDVM_OK);
    let receipt = receipt_of(ctx);
    receipt.verify(keys.reader.public_key()).unwrap();
    assert!(receipt.verify_production(keys.reader.public_key()).is_err());
    assert_eq!(receipt.reader_id, "kiosk-1");

    // Back to sealed-only.
    assert_eq!(cardvm_set_allow_plain(ctx, 0), CARDVM_OK);
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_POLICY);
    assert_eq!(tx.apdus, 0);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn sealed_scripts_need_a_journal_and_their_receipts_land_in_it() {
    let dir = Scratch::new("journal");
    let keys = Issuer::new();
    let sim = new_sim();
    let ctx = new_ctx();
    assert_eq!(
        keys.set_keys(ctx, Some(&dir.cpath("replay"))),
        CARDVM_OK,
        "{}",
        last_message(ctx)
    );
    let sealed_data = keys.data(7);
    load(ctx, &keys.command(1), &sealed_data);

    // No journal: refused before the card is touched.
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_STATE);
    assert!(
        last_message(ctx).contains("journal"),
        "{}",
        last_message(ctx)
    );
    assert_eq!(tx.apdus, 0);

    // With a journal: the signed production receipt is its first entry.
    assert_eq!(set_journal(ctx, &dir.cpath("j")), CARDVM_OK);
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(tx.apdus, 4);
    assert_eq!(cardvm_sign_receipt(ctx), CARDVM_OK);
    let mut seq = 0u64;
    assert_eq!(
        unsafe { cardvm_receipt_journal_seq(ctx, &mut seq) },
        CARDVM_OK
    );
    assert_eq!(seq, 1);
    let receipt = receipt_of(ctx);
    receipt.verify_production(keys.reader.public_key()).unwrap();
    assert_eq!(receipt.reader_id, "kiosk-1");
    assert_eq!(receipt.data.map(|d| d.seq), Some(7));
    assert_eq!(
        receipt.command_sm3,
        cardvm_core::crypto::sm3(&command_bytes())
    );
    let entries = journal_entries(&dir.path("j"));
    assert_eq!(entries.len(), 1);
    assert_eq!(Receipt::from_bytes(&entries[0]).unwrap(), receipt);

    // The same sealed data script again: a replay, refused before the card.
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_OPEN);
    assert!(
        last_message(ctx).contains("replayed"),
        "{}",
        last_message(ctx)
    );
    assert_eq!(tx.apdus, 0);
    assert_eq!(journal_entries(&dir.path("j")).len(), 1);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn sealed_scripts_for_another_reader_or_tampered_are_refused() {
    let dir = Scratch::new("tamper");
    let keys = Issuer::new();
    let sim = new_sim();
    // No keys: a sealed script cannot be opened.
    let ctx = new_ctx();
    assert_eq!(set_journal(ctx, &dir.cpath("j")), CARDVM_OK);
    let (sealed_cmd, sealed_data) = (keys.command(1), keys.data(1));
    load(ctx, &sealed_cmd, &sealed_data);
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_OPEN);
    assert!(last_message(ctx).contains("cardvm_set_keys"));
    // Keys of another reader id: the envelopes are not for this reader.
    assert_eq!(
        unsafe { cardvm_set_reader_id(ctx, c"kiosk-2".as_ptr()) },
        CARDVM_OK
    );
    let rk = keys.reader.to_bytes();
    let ip = keys.issuer.public_key().to_sec1_bytes();
    let rc = unsafe {
        cardvm_set_keys(
            ctx,
            rk.as_ptr(),
            rk.len(),
            ip.as_ptr(),
            ip.len(),
            core::ptr::null(),
            core::ptr::null(),
        )
    };
    assert_eq!(rc, CARDVM_OK, "{}", last_message(ctx));
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_OPEN);
    assert!(
        last_message(ctx).contains("kiosk-2"),
        "{}",
        last_message(ctx)
    );
    // A tampered byte is detected.
    assert_eq!(keys.set_keys(ctx, None), CARDVM_OK);
    let mut bad = sealed_data.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    load(ctx, &sealed_cmd, &bad);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_OPEN);
    // A script of another issuer.
    let other = Issuer::new();
    load(ctx, &sealed_cmd, &other.data(1));
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_OPEN);
    assert_eq!(tx.apdus, 0);
    // Garbage after the magic is refused at load.
    let mut junk = cardvm_core::envelope::format::MAGIC.to_vec();
    junk.extend_from_slice(&[0; 3]);
    assert_eq!(
        unsafe { cardvm_load_data(ctx, junk.as_ptr(), junk.len()) },
        CARDVM_E_OPEN
    );
    // The genuine pair runs.
    load(ctx, &sealed_cmd, &sealed_data);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    let receipt = receipt_of(ctx);
    receipt.verify(keys.reader.public_key()).unwrap();
    assert!(receipt.verify(keys.issuer.public_key()).is_err());
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn a_replay_store_rolled_back_tampered_or_lost_is_refused_in_either_order() {
    let dir = Scratch::new("rollback");
    let keys = Issuer::new();
    let sim = new_sim();
    let (store, journal) = (dir.cpath("replay"), dir.cpath("j"));
    // An empty store, saved before the first sealed transaction.
    let ctx = new_ctx();
    assert_eq!(keys.set_keys(ctx, Some(&store)), CARDVM_OK);
    assert_eq!(set_journal(ctx, &journal), CARDVM_OK);
    let saved = std::fs::read(dir.path("replay")).ok();
    load(ctx, &keys.command(1), &keys.data(1));
    assert_eq!(
        run(ctx, &mut Tx::new(sim)),
        (CARDVM_OK, CARDVM_OUTCOME_COMMITTED)
    );
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);

    // Roll the store back (or delete it) to replay data script 1.
    match &saved {
        Some(bytes) => std::fs::write(dir.path("replay"), bytes).unwrap(),
        None => std::fs::remove_file(dir.path("replay")).unwrap(),
    }
    let ctx = new_ctx();
    assert_eq!(keys.set_keys(ctx, Some(&store)), CARDVM_OK);
    assert_eq!(set_journal(ctx, &journal), CARDVM_E_STORE);
    // The failed call left no journal: sealed scripts stay refused.
    load(ctx, &keys.command(1), &keys.data(1));
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_STATE);
    assert_eq!(tx.apdus, 0);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    // The other order, and an in-memory store, fail alike.
    let ctx = new_ctx();
    assert_eq!(set_journal(ctx, &journal), CARDVM_OK);
    assert_eq!(keys.set_keys(ctx, Some(&store)), CARDVM_E_STORE);
    assert!(
        last_message(ctx).contains("replay store"),
        "{}",
        last_message(ctx)
    );
    assert_eq!(keys.set_keys(ctx, None), CARDVM_E_STORE);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);

    // An edited store fails its integrity check.
    let ctx = new_ctx();
    assert_eq!(keys.set_keys(ctx, Some(&dir.cpath("replay2"))), CARDVM_OK);
    assert_eq!(set_journal(ctx, &dir.cpath("j2")), CARDVM_OK);
    load(ctx, &keys.command(2), &keys.data(2));
    assert_eq!(
        run(ctx, &mut Tx::new(sim)),
        (CARDVM_OK, CARDVM_OUTCOME_COMMITTED)
    );
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    let mut bytes = std::fs::read(dir.path("replay2")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.path("replay2"), &bytes).unwrap();
    let ctx = new_ctx();
    assert_eq!(
        keys.set_keys(ctx, Some(&dir.cpath("replay2"))),
        CARDVM_E_STORE
    );
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

/// A journal whose appends fail (a full disk), reads succeed.
struct FailingJournal;

impl ReceiptJournal for FailingJournal {
    fn append(&mut self, _: &[u8]) -> core::result::Result<u64, JournalFailure> {
        Err(JournalFailure(String::from("no space left on device")))
    }
    fn for_each(&self, _: &mut dyn FnMut(&[u8])) -> core::result::Result<(), JournalFailure> {
        Ok(())
    }
}

#[test]
fn a_receipt_the_journal_refused_is_still_delivered_and_not_overwritten() {
    let sim = new_sim();
    let ctx = loaded_ctx(&command_bytes(), &data_bytes());
    with_ctx(ctx, |c| {
        c.reconfigure(|s| {
            s.journal = Some(SharedJournal::from_journal(FailingJournal));
            Ok(())
        })
    })
    .unwrap();
    let mut tx = Tx::new(sim);
    assert_eq!(
        run(ctx, &mut tx),
        (CARDVM_E_UNJOURNALED, CARDVM_OUTCOME_COMMITTED)
    );
    assert_eq!(tx.apdus, 4);
    assert!(last_message(ctx).contains("NOT in the journal"));
    assert!(last_message(ctx).contains("no space left"));
    let mut seq = 0u64;
    assert_eq!(
        unsafe { cardvm_receipt_journal_seq(ctx, &mut seq) },
        CARDVM_E_UNJOURNALED
    );
    assert_eq!(field(ctx, c"balance_after").unwrap(), 10_500);

    // Until it is fetched, no new run can overwrite it.
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx).0, CARDVM_E_STATE);
    assert_eq!(tx.apdus, 0);
    let mut n = 0usize;
    assert_eq!(
        unsafe { cardvm_receipt_json(ctx, core::ptr::null_mut(), 0, &mut n) },
        CARDVM_E_BUFFER_TOO_SMALL
    );
    assert_eq!(
        run(ctx, &mut tx).0,
        CARDVM_E_STATE,
        "a size query is not delivery"
    );
    let receipt = receipt_of(ctx);
    assert_eq!(receipt.outcome, cardvm_core::receipt::Outcome::Committed);
    let mut tx = Tx::new(sim);
    assert_eq!(
        run(ctx, &mut tx),
        (CARDVM_E_UNJOURNALED, CARDVM_OUTCOME_COMMITTED)
    );
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn a_journal_has_one_writer() {
    let dir = Scratch::new("one-writer");
    let (a, b) = (new_ctx(), new_ctx());
    assert_eq!(set_journal(a, &dir.cpath("j")), CARDVM_OK);
    assert_eq!(set_journal(b, &dir.cpath("j")), CARDVM_E_JOURNAL);
    assert!(last_message(b).contains("in use"), "{}", last_message(b));
    let other_spelling = dir.0.join(".").join("j");
    let other_spelling = std::ffi::CString::new(other_spelling.to_str().unwrap()).unwrap();
    assert_eq!(set_journal(b, &other_spelling), CARDVM_E_JOURNAL);
    // The owner may reopen it; once it is freed, another context may open it.
    assert_eq!(set_journal(a, &dir.cpath("j")), CARDVM_OK);
    assert_eq!(set_journal(a, &dir.cpath("k")), CARDVM_OK);
    assert_eq!(set_journal(b, &dir.cpath("j")), CARDVM_OK, "released by a");
    assert_eq!(set_journal(a, &dir.cpath("j")), CARDVM_E_JOURNAL);
    assert_eq!(cardvm_ctx_free(b), CARDVM_OK);
    assert_eq!(set_journal(a, &dir.cpath("j")), CARDVM_OK);
    // Not a journal file: refused, the context keeps its journal.
    std::fs::write(dir.path("junk"), b"not a journal").unwrap();
    assert_eq!(set_journal(a, &dir.cpath("junk")), CARDVM_E_JOURNAL);
    let c = new_ctx();
    assert_eq!(
        set_journal(c, &dir.cpath("j")),
        CARDVM_E_JOURNAL,
        "still a's"
    );
    assert_eq!(set_journal(b, &dir.cpath("j")), CARDVM_E_BAD_HANDLE);
    assert_eq!(cardvm_ctx_free(a), CARDVM_OK);
    assert_eq!(
        set_journal(c, &dir.cpath("j")),
        CARDVM_OK,
        "released by free"
    );
    assert_eq!(cardvm_ctx_free(c), CARDVM_OK);
}

#[test]
fn receipts_name_the_card_the_card_reports() {
    let balance = assemble_file(&city().join("balance.casm"), &AsmOptions::default())
        .unwrap()
        .script
        .encode();
    let no_data = DataScript::default().encode();
    let sim = new_sim();
    let ctx = loaded_ctx(&balance, &no_data);
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    let mut id = [0u8; 16];
    let mut n = 0usize;
    assert_eq!(
        unsafe { cardvm_sim_card_id(sim, id.as_mut_ptr(), id.len(), &mut n) },
        CARDVM_OK
    );
    let receipt = receipt_of(ctx);
    assert_eq!(receipt.card_id, id[..n]);
    // An authoring context: development mode, unsigned.
    assert_eq!(mode_of(ctx), CARDVM_MODE_DEVELOPMENT);
    assert_eq!(receipt.signature, None);
    assert_eq!(cardvm_sign_receipt(ctx), CARDVM_E_STATE);
    assert!(last_message(ctx).contains("unsigned"));
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

#[test]
fn sim_card_id_and_profile_round_trip() {
    let sim = new_sim();
    let mut id = [0u8; 8];
    let mut n = 0usize;
    assert_eq!(
        unsafe { cardvm_sim_card_id(sim, id.as_mut_ptr(), id.len(), &mut n) },
        CARDVM_OK
    );
    assert_eq!(id, [0x41, 0, 0, 0, 0x89, 0x99, 0x99, 0x85]);
    unsafe { cardvm_sim_to_toml(sim, core::ptr::null_mut(), 0, &mut n) };
    let mut text = vec![0u8; n];
    assert_eq!(
        unsafe { cardvm_sim_to_toml(sim, text.as_mut_ptr().cast(), n, &mut n) },
        CARDVM_OK
    );
    let again = unsafe { cardvm_sim_new_from_toml(text.as_ptr().cast()) };
    assert_ne!(again, 0);
    assert_eq!(cardvm_sim_free(again), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}

fn query_bytes() -> Vec<u8> {
    assemble_file(&city().join("query.casm"), &AsmOptions::default())
        .unwrap()
        .script
        .encode()
}

fn query(ctx: cardvm_ctx, nonce: &[u8], tx: &mut Tx) -> (c_int, c_int) {
    let mut outcome = -1;
    let rc = unsafe {
        cardvm_query(
            ctx,
            if nonce.is_empty() {
                core::ptr::null()
            } else {
                nonce.as_ptr()
            },
            nonce.len(),
            Some(test_transmit),
            (tx as *mut Tx).cast(),
            &mut outcome,
        )
    };
    (rc, outcome)
}

/// `cardvm_query`: a plain query is refused on a sealed-only reader, the loaded load
/// script (keys, commit point) is refused as a query, both before the card; the query
/// sealed as one runs, its receipt a production one with no data identity, the nonce
/// echoed; the card keeps its balance.
#[test]
fn card_query_through_the_abi() {
    let dir = Scratch::new("query");
    let keys = Issuer::new();
    let ctx = new_ctx();
    assert_eq!(keys.set_keys(ctx, None), CARDVM_OK, "{}", last_message(ctx));
    assert_eq!(set_journal(ctx, &dir.cpath("j")), CARDVM_OK);
    let sim = new_sim();
    let q = query_bytes();
    let load_cmd = |bytes: &[u8]| unsafe {
        assert_eq!(
            cardvm_load_command(ctx, bytes.as_ptr(), bytes.len()),
            CARDVM_OK,
            "{}",
            last_message(ctx)
        );
    };

    load_cmd(&q);
    let mut tx = Tx::new(sim);
    assert_eq!(query(ctx, b"n", &mut tx).0, CARDVM_E_POLICY);
    assert_eq!(tx.apdus, 0);

    assert_eq!(cardvm_set_allow_plain(ctx, 1), CARDVM_OK);
    load_cmd(&command_bytes());
    let mut tx = Tx::new(sim);
    assert_eq!(query(ctx, b"n", &mut tx).0, CARDVM_E_SCRIPT);
    assert!(
        last_message(ctx).contains("key input"),
        "{}",
        last_message(ctx)
    );
    assert_eq!(tx.apdus, 0);
    load_cmd(&q);
    let mut tx = Tx::new(sim);
    assert_eq!(query(ctx, &[0; 33], &mut tx).0, CARDVM_E_INVALID_ARG);
    assert_eq!(tx.apdus, 0);
    assert_eq!(cardvm_set_allow_plain(ctx, 0), CARDVM_OK);

    let sealed = keys.seal(ScriptKind::Query, 1, &q, cardvm_core::crypto::sm3(&q));
    load_cmd(&sealed);
    let mut tx = Tx::new(sim);
    assert_eq!(
        query(ctx, b"\x01\x02", &mut tx),
        (CARDVM_OK, CARDVM_OUTCOME_COMMITTED),
        "{}",
        last_message(ctx)
    );
    assert_eq!(mode_of(ctx), CARDVM_MODE_PRODUCTION);
    let r = receipt_of(ctx);
    assert!(r.is_query());
    r.verify_production(keys.reader.public_key()).unwrap();
    assert_eq!(
        r.field("nonce"),
        Some(&cardvm_core::receipt::FieldValue::Bytes(vec![1, 2]))
    );
    assert_eq!(field(ctx, c"balance").unwrap(), 500);
    assert_eq!(journal_entries(&dir.path("j")).len(), 1);
    // An empty nonce (null pointer, length 0) is fine too.
    let mut tx = Tx::new(sim);
    assert_eq!(
        query(ctx, &[], &mut tx).0,
        CARDVM_OK,
        "{}",
        last_message(ctx)
    );
    let mut bal = 0;
    assert_eq!(unsafe { cardvm_sim_balance(sim, &mut bal) }, CARDVM_OK);
    assert_eq!(bal, 500);
    assert_eq!(cardvm_ctx_free(ctx), CARDVM_OK);
    assert_eq!(cardvm_sim_free(sim), CARDVM_OK);
}
