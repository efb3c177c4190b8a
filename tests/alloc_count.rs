//! Counts heap allocations during a transaction with a counting global allocator: the
//! dispatch loop must not allocate once a reused VM's buffers have grown; the only
//! allocations of a run are its report (output names and byte values).
//!
//! (The counting allocator needs `unsafe impl GlobalAlloc`; it lives in this test crate,
//! the library itself forbids unsafe code.)

use cardvm::asm::{AsmOptions, assemble_file, compile_data};
use cardvm::transport::{ApduLayer, CardTransport, TransportError};
use cardvm::verify::{Binding, VerifiedProgram};
use cardvm::vm::{NoTrace, Outcome, Vm};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Answers the published PBOC load exchange without allocating.
struct PublishedCard;

impl CardTransport for PublishedCard {
    fn transmit(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        let answer: &[u8] = match command.get(1) {
            Some(0x50) => &[
                0, 0, 0, 0, 0, 0, 0, 1, 0xF9, 0xCA, 0xBA, 0x91, 0x6C, 0x39, 0x4D, 0x64, 0x90, 0x00,
            ],
            Some(0x52) => &[0x11, 0x22, 0x33, 0x44, 0x90, 0x00],
            _ => &[0x90, 0x00],
        };
        response[..answer.len()].copy_from_slice(answer);
        Ok(answer.len())
    }
}

#[test]
fn a_warm_transaction_allocates_only_for_its_report() {
    let script = assemble_file(
        "scripts/examples/load.casm".as_ref(),
        &AsmOptions::default(),
    )
    .unwrap()
    .script;
    let data =
        compile_data(&std::fs::read_to_string("scripts/examples/load.toml").unwrap()).unwrap();
    let program = VerifiedProgram::verify(&script).unwrap();
    // What a reader keeps between transactions: the VM and the binding storage.
    let mut vm = Vm::default();
    let mut binding = Binding::default();
    let transaction = |vm: &mut Vm, binding: &mut Binding| {
        let bound = program.bind_into(&data, binding).unwrap();
        // A new APDU layer per transaction, as a reader does per card.
        vm.run(bound, &mut ApduLayer::new(PublishedCard), &mut NoTrace)
    };
    // Warm-up run: registers and buffers grow to size.
    let first = transaction(&mut vm, &mut binding);
    assert_eq!(first.outcome, Outcome::Committed);
    assert!(
        first
            .outputs
            .iter()
            .any(|(_, v)| matches!(v, cardvm::vm::OutputRef::Bytes(_))),
        "the load writes byte-string outputs"
    );

    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let second = transaction(&mut vm, &mut binding);
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);

    assert_eq!(second.outcome, Outcome::Committed);
    assert_eq!(second.outputs, first.outputs);
    // Report: its output entries and one buffer for all byte-string values. Output
    // names are shared with the program; binding, layer, registers, output slots and
    // the dispatch loop allocate nothing.
    let budget = 2;
    println!(
        "allocations in a warm load: {allocs} (report budget {budget}); peak register bytes {}",
        second.peak_memory
    );
    assert!(
        allocs <= budget,
        "{allocs} allocations in a warm run, budget {budget}"
    );
    // DESIGN §5: VM state for a load under 8 KiB.
    assert!(second.peak_memory < 8 * 1024);
}
