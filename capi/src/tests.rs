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
    if let Some((n, code)) = tx.fail_at {
        if n == tx.apdus {
            return code;
        }
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
    assert_eq!(tx.apdus, 3);
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
        assert_eq!(cardvm_set_card_id(ctx, core::ptr::null(), 8), CARDVM_E_NULL);
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
        assert_eq!(
            cardvm_set_card_id(ctx, dangling, usize::MAX),
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
    // Card removed at the last APDU (after the commit point): unknown.
    let sim = new_sim();
    let ctx = loaded_ctx(&cmd, &data);
    let mut tx = Tx::new(sim);
    tx.fail_at = Some((3, CARDVM_TX_CARD_REMOVED));
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

#[test]
fn sealed_scripts_open_with_keys_and_replays_or_tampering_are_refused() {
    use cardvm_core::crypto::rng::os_rng;
    let mut rng = os_rng();
    let issuer = Sm2PrivateKey::generate(&mut rng);
    let reader = Sm2PrivateKey::generate(&mut rng);
    let script = CommandScript::parse(&command_bytes()).unwrap();
    let h = script.header;
    let header = |kind, seq| EnvelopeHeader {
        kind,
        city: h.city,
        script_id: h.script_id,
        script_version: h.version,
        seq,
        expires: cardvm_core::envelope::unix_now() + 600,
        reader_id: "kiosk-1".into(),
    };
    let sealed_cmd = seal(
        &issuer,
        reader.public_key(),
        &header(ScriptKind::Command, 1),
        &command_bytes(),
        &mut rng,
    )
    .unwrap();
    let sealed_data = seal(
        &issuer,
        reader.public_key(),
        &header(ScriptKind::Data, 1),
        &data_bytes(),
        &mut rng,
    )
    .unwrap();

    let ctx = unsafe { cardvm_ctx_new(core::ptr::null()) };
    // Without keys: refused.
    assert_eq!(
        unsafe { cardvm_load_command(ctx, sealed_cmd.as_ptr(), sealed_cmd.len()) },
        CARDVM_E_OPEN
    );
    let rk = reader.to_bytes();
    let ip = issuer.public_key().to_sec1_bytes();
    let set = |id: &std::ffi::CStr| unsafe {
        cardvm_set_keys(
            ctx,
            rk.as_ptr(),
            rk.len(),
            ip.as_ptr(),
            ip.len(),
            id.as_ptr(),
            core::ptr::null(),
        )
    };
    // Keys of another reader id: the envelope is not for us.
    assert_eq!(set(c"kiosk-2"), CARDVM_OK);
    assert_eq!(
        unsafe { cardvm_load_command(ctx, sealed_cmd.as_ptr(), sealed_cmd.len()) },
        CARDVM_E_OPEN
    );
    assert_eq!(set(c"kiosk-1"), CARDVM_OK);
    // A tampered byte is detected.
    let mut bad = sealed_data.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        unsafe { cardvm_load_data(ctx, bad.as_ptr(), bad.len()) },
        CARDVM_E_OPEN
    );
    unsafe {
        assert_eq!(
            cardvm_load_command(ctx, sealed_cmd.as_ptr(), sealed_cmd.len()),
            CARDVM_OK,
            "{}",
            last_message(ctx)
        );
        assert_eq!(
            cardvm_load_data(ctx, sealed_data.as_ptr(), sealed_data.len()),
            CARDVM_OK,
            "{}",
            last_message(ctx)
        );
        // The same data envelope again: a replay.
        assert_eq!(
            cardvm_load_data(ctx, sealed_data.as_ptr(), sealed_data.len()),
            CARDVM_E_OPEN
        );
        assert!(last_message(ctx).contains("data script"));
    }
    let sim = new_sim();
    let mut tx = Tx::new(sim);
    assert_eq!(run(ctx, &mut tx), (CARDVM_OK, CARDVM_OUTCOME_COMMITTED));
    assert_eq!(cardvm_sign_receipt(ctx), CARDVM_OK);
    let mut n = 0usize;
    unsafe { cardvm_receipt_bytes(ctx, core::ptr::null_mut(), 0, &mut n) };
    let mut buf = vec![0u8; n];
    assert_eq!(
        unsafe { cardvm_receipt_bytes(ctx, buf.as_mut_ptr(), n, &mut n) },
        CARDVM_OK
    );
    let receipt = Receipt::from_bytes(&buf).unwrap();
    assert_eq!(receipt.reader_id, "kiosk-1");
    receipt.verify(reader.public_key()).unwrap();
    assert!(receipt.verify(issuer.public_key()).is_err());
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
