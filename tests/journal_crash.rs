//! Crash safety and tamper detection of the receipt journal.
//!
//! - `sigkill_during_appends_loses_nothing_that_returned`: re-executes this test binary as a
//!   writer child (env `CARDVM_JOURNAL_CRASH_WRITER`), which appends, acknowledges and
//!   compacts in a loop and prints `SEQ n` after each append returned and `ACK n` after each
//!   ack returned. The parent SIGKILLs it at random moments, reopens, and checks that every
//!   printed seq above the acknowledged point is present with its payload, the chain
//!   verifies, and the ack point is at least the last printed one.
//! - `a_writer_in_another_process_locks_the_journal`: the same writer child holds the
//!   journal; this process's writer opens get `Locked`, read-only opens work, and the lock
//!   goes with the child's death.
//! - every byte flip and every truncation of a small journal is classified as documented: a
//!   flip anywhere, the last entry included, is an error that changes nothing; only a cut
//!   inside the last entry (an interrupted append) is truncated.
#![cfg(feature = "std")]

use cardvm::journal::{self, Journal, JournalError};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WRITER_ENV: &str = "CARDVM_JOURNAL_CRASH_WRITER";
/// Documented format sizes (see `cardvm::journal` module docs).
const HEADER_LEN: usize = 84;
const ENTRY_OVERHEAD: usize = 80;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cardvm-journal-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The payload of entry `seq`: its content and length depend only on `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = (seq as usize * 37) % 700 + 1;
    (0..len)
        .map(|i| (seq as usize).wrapping_mul(131).wrapping_add(i) as u8)
        .collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The writer child. Does nothing unless started by the crash test.
#[test]
fn writer_child() {
    let Some(path) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let mut j = Journal::open(&path).unwrap();
    let out = std::io::stdout();
    loop {
        let seq = j.next_seq();
        assert_eq!(j.append(&payload(seq)).unwrap(), seq);
        writeln!(out.lock(), "SEQ {seq}").unwrap();
        out.lock().flush().unwrap();
        if seq % 9 == 0 {
            let upto = seq - 4;
            j.ack(upto).unwrap();
            writeln!(out.lock(), "ACK {upto}").unwrap();
            out.lock().flush().unwrap();
            j.compact().unwrap();
        }
    }
}

#[test]
fn sigkill_during_appends_loses_nothing_that_returned() {
    let dir = TempDir::new("crash");
    let path = dir.0.join("receipts.cvj");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut printed_total = 0usize;
    let mut torn_rounds = 0usize;
    let mut last_ack = 0u64;
    let mut rounds = 0;
    while rounds < 25 && started.elapsed() < Duration::from_secs(8) {
        rounds += 1;
        let mut child = Command::new(&exe)
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                // `lines()` drops a final line without '\n' only if it is incomplete UTF-8;
                // an incomplete "SEQ 12" is filtered below by requiring the newline.
                let mut r = BufReader::new(stdout);
                let mut s = String::new();
                while r.read_line(&mut s).map(|n| n > 0).unwrap_or(false) {
                    if s.ends_with('\n') {
                        lines.lock().unwrap().push(s.trim_end().to_string());
                    }
                    s.clear();
                }
            })
        };
        // Wait for the first append to return, then kill at a random moment.
        let wait_start = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.starts_with("SEQ"))
            && wait_start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        reader.join().unwrap();

        let lines = lines.lock().unwrap().clone();
        let mut seqs = Vec::new();
        for l in &lines {
            if let Some(n) = l.strip_prefix("SEQ ") {
                seqs.push(n.parse::<u64>().unwrap());
            } else if let Some(n) = l.strip_prefix("ACK ") {
                last_ack = last_ack.max(n.parse::<u64>().unwrap());
            }
        }
        printed_total += seqs.len();

        // SIGKILL cannot tear a single write(2) (the kernel finishes it), but power loss can.
        // In some rounds, simulate that: leave a partial entry (a prefix of the entry the
        // writer would append next, or zeros as a file system may show after a crash) at the
        // end of the log.
        let simulated_tear = match rng.below(3) {
            0 => {
                let r = Journal::open_read_only(&path).unwrap();
                let e = entry_prefix(r.next_seq(), &r.head_hash(), rng.below(200) as usize + 1);
                drop(r);
                append_raw(&path, &e);
                e.len() as u64
            }
            1 => {
                let n = rng.below(300) as usize + 1;
                append_raw(&path, &vec![0u8; n]);
                n as u64
            }
            _ => 0,
        };

        // Read-only check first (nothing modified), then the writer's open.
        let report = journal::verify(&path).unwrap();
        if report.torn_tail_bytes > 0 {
            torn_rounds += 1;
        }
        // SIGKILL can also cut the writer's one write(2) short: Linux checks for a fatal
        // signal between the pages it copies, so an entry that crosses a page of the page
        // cache may be left as a prefix. That append never returned (no `SEQ` line), so
        // the prefix is a torn tail like the simulated one, just before it.
        let killed_mid_write = report
            .torn_tail_bytes
            .checked_sub(simulated_tear)
            .unwrap_or_else(|| {
                panic!("torn tail {report:?} shorter than the {simulated_tear} bytes torn")
            });
        assert!(
            killed_mid_write < (ENTRY_OVERHEAD + 700) as u64,
            "{killed_mid_write} torn bytes before the simulated tear: more than one entry"
        );
        let j = Journal::open(&path).unwrap();
        assert!(
            j.acked_upto() >= last_ack,
            "ack {} went back below printed {last_ack}",
            j.acked_upto()
        );
        for &s in &seqs {
            if s <= j.acked_upto() {
                continue;
            }
            let e = j
                .get(s)
                .unwrap_or_else(|e| panic!("round {rounds}: returned seq {s} lost: {e}"));
            assert_eq!(e.payload, payload(s), "seq {s} payload");
        }
        // Pending entries are consecutive, chained, and contain every printed pending seq.
        let mut prev = None;
        for e in j.pending() {
            let e = e.unwrap();
            if let Some((ps, ph)) = prev {
                assert_eq!(e.seq, ps + 1);
                assert_eq!(e.prev_hash, ph);
            }
            assert_eq!(e.payload, payload(e.seq));
            prev = Some((e.seq, e.hash));
        }
        if let Some(&max) = seqs.iter().max() {
            assert!(j.next_seq() > max);
        }
    }
    eprintln!(
        "{rounds} rounds, {printed_total} returned appends, {torn_rounds} rounds with a torn tail"
    );
    assert!(printed_total > 0, "the writer never completed an append");
}

/// Attack: a second process appends while a writer has the journal open (the chain would
/// break). It must get `Locked`, while the writer keeps appending; the OS lock goes away with
/// the writer's process.
#[test]
fn a_writer_in_another_process_locks_the_journal() {
    let dir = TempDir::new("lock");
    let path = dir.0.join("receipts.cvj");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut seen = 0;
    // Wait until the child has appended a few entries: it holds the lock by then.
    while seen < 3 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "writer child ended");
        if line.starts_with("SEQ ") {
            seen += 1;
        }
    }
    for attempt in 0..4 {
        let e = Journal::open(&path).map(|_| ()).unwrap_err();
        assert!(
            matches!(e, JournalError::Locked { .. }),
            "attempt {attempt}: {e}"
        );
        assert!(matches!(
            Journal::open_existing(&path),
            Err(JournalError::Locked { .. })
        ));
        assert!(matches!(
            journal::repair(&path),
            Err(JournalError::Locked { .. })
        ));
        std::thread::sleep(Duration::from_millis(2));
    }
    // The writer kept appending meanwhile.
    let mut later = 0;
    while later < 3 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "writer child ended");
        if line.starts_with("SEQ ") {
            later += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Lock released by the process's death; the chain is whole.
    let mut j = Journal::open(&path).unwrap();
    let n = j.next_seq();
    assert_eq!(j.append(b"after").unwrap(), n);
    drop(j);
    let v = journal::verify(&path).unwrap();
    assert_eq!((v.next_seq, v.torn_tail_bytes), (n + 1, 0));
}

/// The first `n` bytes (fewer than the whole) of entry `seq` chained to `prev` that was
/// being written: magic, a length that runs past the end of the file, seq, prev, payload.
fn entry_prefix(seq: u64, prev: &[u8; 32], n: usize) -> Vec<u8> {
    let mut e = b"CVJE".to_vec();
    e.extend_from_slice(&500u32.to_be_bytes());
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(prev);
    e.extend(std::iter::repeat_n(0x5A, 500 + 32));
    assert!(n < e.len());
    e.truncate(n);
    e
}

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Builds a journal with entries of the given payload sizes; returns its bytes and the
/// entries' start offsets.
fn small_journal(path: &Path, sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
    let mut j = Journal::open(path).unwrap();
    let mut offsets = Vec::new();
    let mut off = HEADER_LEN;
    for (i, &n) in sizes.iter().enumerate() {
        offsets.push(off);
        j.append(&vec![i as u8 + 0x41; n]).unwrap();
        off += ENTRY_OVERHEAD + n;
    }
    drop(j);
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), off);
    (bytes, offsets)
}

/// Every single-byte change of the log is detected, and changes nothing:
/// - in the header or in any entry but the last: `verify` and `open` fail with an error;
/// - in the last entry (its length field included): `verify`, a read-only open and a
///   writer's open fail with `CorruptLastEntry` naming its seq; the entry is never dropped
///   as a torn tail (the attack: flip a byte, let the next writer drop the entry and reuse
///   its seq, and `verify` says ok).
#[test]
fn every_byte_flip_is_detected() {
    let dir = TempDir::new("flip");
    let good = dir.0.join("good.cvj");
    let sizes = [5, 0, 17, 9];
    let (bytes, offsets) = small_journal(&good, &sizes);
    let last = *offsets.last().unwrap();
    let work = dir.0.join("work.cvj");
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut m = bytes.clone();
            m[i] ^= mask;
            std::fs::write(&work, &m).unwrap();
            let v = journal::verify(&work);
            let e = v.expect_err(&format!("flip {mask:#x} at {i} not detected"));
            if i < HEADER_LEN {
                assert!(
                    matches!(
                        e,
                        JournalError::BadHeader { .. } | JournalError::UnsupportedVersion { .. }
                    ),
                    "header flip at {i}: {e}"
                );
            } else if i < last {
                assert!(
                    matches!(e, JournalError::CorruptEntry { .. }),
                    "entry flip at {i}: {e}"
                );
            } else {
                let want_seq = sizes.len() as u64;
                let is_last = |e: &JournalError| {
                    matches!(e, JournalError::CorruptLastEntry { seq, offset, .. }
                        if *seq == want_seq && *offset as usize == last)
                };
                assert!(is_last(&e), "last-entry flip {mask:#x} at {i}: {e}");
                let ro = Journal::open_read_only(&work).map(|_| ()).unwrap_err();
                assert!(is_last(&ro), "read-only open, flip at {i}: {ro}");
                let w = Journal::open(&work).map(|_| ()).unwrap_err();
                assert!(is_last(&w), "writer open, flip at {i}: {w}");
                assert!(w.to_string().contains("cardvm journal repair"), "{w}");
            }
            assert!(Journal::open(&work).is_err());
            // Nothing was modified by the failed opens.
            assert_eq!(std::fs::read(&work).unwrap(), m, "flip at {i}");
        }
    }
}

/// Truncation: inside the header → error; inside an entry → torn tail (reported, then cut
/// back to the previous entry boundary by a writer's open); exactly at an entry boundary →
/// not detectable from the file alone (documented).
#[test]
fn every_truncation_is_classified() {
    let dir = TempDir::new("trunc");
    let good = dir.0.join("good.cvj");
    let (bytes, offsets) = small_journal(&good, &[3, 40, 0, 8]);
    let work = dir.0.join("work.cvj");
    for len in 0..bytes.len() {
        std::fs::write(&work, &bytes[..len]).unwrap();
        let v = journal::verify(&work);
        if len < HEADER_LEN {
            assert!(
                matches!(v, Err(JournalError::BadHeader { .. })),
                "len {len}"
            );
            continue;
        }
        let v = v.unwrap();
        let boundary = offsets
            .iter()
            .copied()
            .chain([bytes.len()])
            .filter(|&o| o <= len)
            .max()
            .unwrap_or(HEADER_LEN)
            .max(HEADER_LEN);
        let complete = offsets.iter().filter(|&&o| o < boundary).count();
        assert_eq!(v.entries, complete, "len {len}");
        assert_eq!(v.torn_tail_bytes, (len - boundary) as u64, "len {len}");
        let mut j = Journal::open(&work).unwrap();
        assert_eq!(j.next_seq(), complete as u64 + 1);
        j.append(b"after").unwrap();
        drop(j);
        assert_eq!(journal::verify(&work).unwrap().entries, complete + 1);
    }
}

/// A bad entry with valid data after it is never silently dropped.
#[test]
fn damage_before_valid_entries_is_an_error_not_a_drop() {
    let dir = TempDir::new("mid");
    let p = dir.0.join("j.cvj");
    let (bytes, offsets) = small_journal(&p, &[10, 10, 10]);
    let mut m = bytes.clone();
    // Zero the whole first entry: looks like a torn write, but entries follow.
    for b in &mut m[offsets[0]..offsets[1]] {
        *b = 0;
    }
    std::fs::write(&p, &m).unwrap();
    match Journal::open(&p) {
        Err(JournalError::CorruptEntry {
            offset, next_valid, ..
        }) => {
            assert_eq!(offset as usize, offsets[0]);
            assert_eq!(next_valid as usize, offsets[1]);
        }
        other => panic!("expected CorruptEntry, got {other:?}"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), m);
}
