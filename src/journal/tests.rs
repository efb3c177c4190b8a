use super::format::{AckRecord, ENTRY_OVERHEAD, FileHeader, HEADER_LEN, encode_entry};
use super::*;
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cardvm-journal-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn pending_seqs(j: &FileJournal) -> Vec<u64> {
    j.pending().map(|e| e.unwrap().seq).collect()
}

#[test]
fn append_reopen_and_read_back() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    assert_eq!(j.next_seq(), 1);
    for s in 1..=5u64 {
        assert_eq!(j.append(&payload(s, s as usize * 7)).unwrap(), s);
    }
    drop(j);
    let j = Journal::open(&p).unwrap();
    assert_eq!(j.torn_tail_bytes(), 0);
    assert_eq!(j.len(), 5);
    let all: Vec<Entry> = j.entries().map(Result::unwrap).collect();
    let mut prev = GENESIS;
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.payload, payload(e.seq, e.seq as usize * 7));
        assert_eq!(e.prev_hash, prev);
        prev = e.hash;
    }
    assert_eq!(j.head_hash(), prev);
    assert_eq!(j.get(3).unwrap(), all[2]);
    assert!(matches!(j.get(6), Err(JournalError::NoSuchEntry(6))));
    assert!(matches!(j.get(0), Err(JournalError::NoSuchEntry(0))));
}

#[test]
fn empty_payload_and_limits() {
    let d = TempDir::new();
    let mut j = Journal::open(d.file("j")).unwrap();
    assert_eq!(j.append(b"").unwrap(), 1);
    assert!(matches!(
        j.append(&vec![0; MAX_PAYLOAD_LEN + 1]),
        Err(JournalError::EntryTooLarge { .. })
    ));
    assert_eq!(j.append(b"x").unwrap(), 2);
    assert_eq!(j.get(1).unwrap().payload, b"");
}

#[test]
fn read_only_does_not_truncate_or_write() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    j.append(b"one").unwrap();
    j.append(b"two").unwrap();
    drop(j);
    let full = fs::read(&p).unwrap();
    fs::write(&p, &full[..full.len() - 5]).unwrap();
    let mut r = Journal::open_read_only(&p).unwrap();
    assert_eq!(r.torn_tail_bytes(), (ENTRY_OVERHEAD + 3 - 5) as u64);
    assert_eq!(r.len(), 1);
    assert!(matches!(r.append(b"x"), Err(JournalError::ReadOnly)));
    assert!(matches!(r.ack(1), Err(JournalError::ReadOnly)));
    assert!(matches!(r.compact(), Err(JournalError::ReadOnly)));
    assert_eq!(fs::read(&p).unwrap().len(), full.len() - 5);
    let v = verify(&p).unwrap();
    assert_eq!(v.torn_tail_bytes, r.torn_tail_bytes());
    // A writer's open truncates, and appending continues the chain.
    let mut w = Journal::open_existing(&p).unwrap();
    assert_eq!(w.torn_tail_bytes(), v.torn_tail_bytes);
    assert_eq!(w.append(b"two again").unwrap(), 2);
    drop(w);
    let w = Journal::open_existing(&p).unwrap();
    assert_eq!(w.torn_tail_bytes(), 0);
    assert_eq!(w.get(2).unwrap().payload, b"two again");
}

#[test]
fn open_existing_requires_a_file_and_header() {
    let d = TempDir::new();
    assert!(matches!(
        Journal::open_existing(d.file("nope")),
        Err(JournalError::Io { .. })
    ));
    fs::write(d.file("short"), b"CVMJ").unwrap();
    assert!(matches!(
        Journal::open(d.file("short")),
        Err(JournalError::BadHeader { .. })
    ));
}

#[test]
fn ack_and_compact_keep_exactly_pending() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    for s in 1..=10u64 {
        j.append(&payload(s, 40)).unwrap();
    }
    assert!(matches!(
        j.ack(11),
        Err(JournalError::AckOutOfRange { upto: 11, .. })
    ));
    j.ack(4).unwrap();
    j.ack(2).unwrap(); // going back is a no-op
    assert_eq!(j.acked_upto(), 4);
    assert_eq!(pending_seqs(&j), (5..=10).collect::<Vec<_>>());
    drop(j);
    let mut j = Journal::open(&p).unwrap();
    assert_eq!(j.acked_upto(), 4);
    let before = fs::metadata(&p).unwrap().len();
    let r = j.compact().unwrap();
    assert_eq!(r.dropped_entries, 4);
    assert_eq!(r.dropped_bytes, 4 * (ENTRY_OVERHEAD as u64 + 40));
    assert_eq!(fs::metadata(&p).unwrap().len(), before - r.dropped_bytes);
    assert_eq!(j.first_seq(), 5);
    assert_eq!(pending_seqs(&j), (5..=10).collect::<Vec<_>>());
    assert_eq!(j.append(b"eleven").unwrap(), 11);
    assert!(matches!(j.ack(3), Ok(())));
    assert!(matches!(j.get(4), Err(JournalError::NoSuchEntry(4))));
    drop(j);
    let mut j = Journal::open(&p).unwrap();
    assert_eq!(j.first_seq(), 5);
    assert_eq!(j.acked_upto(), 4);
    assert_eq!(pending_seqs(&j), (5..=11).collect::<Vec<_>>());
    for e in j.pending() {
        let e = e.unwrap();
        if e.seq <= 10 {
            assert_eq!(e.payload, payload(e.seq, 40));
        }
    }
    // Ack everything and compact to an empty log; the chain still continues.
    j.ack(11).unwrap();
    j.compact().unwrap();
    assert_eq!(j.len(), 0);
    assert_eq!(j.next_seq(), 12);
    assert_eq!(j.append(b"twelve").unwrap(), 12);
    drop(j);
    let j = Journal::open(&p).unwrap();
    assert_eq!(pending_seqs(&j), vec![12]);
    assert_eq!(j.first_seq(), 12);
}

#[test]
fn export_round_trip_and_batch_checks() {
    let d = TempDir::new();
    let mut j = Journal::open(d.file("j")).unwrap();
    for s in 1..=6u64 {
        j.append(&payload(s, 100)).unwrap();
    }
    j.ack(1).unwrap();
    let b = j
        .export(ExportLimits {
            max_entries: 3,
            max_bytes: usize::MAX,
        })
        .unwrap();
    assert_eq!((b.count, b.first_seq, b.last_seq), (3, Some(2), Some(4)));
    let es = parse_batch(&b.bytes).unwrap();
    assert_eq!(es.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(es[0].prev_hash, j.get(1).unwrap().hash);
    for e in &es {
        assert_eq!(e.payload, payload(e.seq, 100));
    }
    // Byte budget: header + two entries fits, three do not.
    let one = ENTRY_OVERHEAD + 100;
    let b = j
        .export(ExportLimits {
            max_entries: 100,
            max_bytes: BATCH_HEADER_LEN + 2 * one + one - 1,
        })
        .unwrap();
    assert_eq!(b.count, 2);
    // A budget smaller than one entry still exports that one entry.
    let b1 = j
        .export(ExportLimits {
            max_entries: 100,
            max_bytes: 1,
        })
        .unwrap();
    assert_eq!(b1.count, 1);
    // Any flipped byte of a batch is rejected.
    for i in 0..b.bytes.len() {
        let mut m = b.bytes.clone();
        m[i] ^= 0x01;
        assert!(parse_batch(&m).is_err(), "flip at {i}");
    }
    for n in 0..b.bytes.len() {
        assert!(parse_batch(&b.bytes[..n]).is_err(), "cut at {n}");
    }
    j.ack(6).unwrap();
    let e = j.export(ExportLimits::default()).unwrap();
    assert_eq!((e.count, e.first_seq, e.last_seq), (0, None, None));
    assert!(parse_batch(&e.bytes).unwrap().is_empty());
}

/// Writes `entries` (already encoded) after a fresh header.
fn write_log(p: &Path, base: u64, genesis: [u8; 32], entries: &[Vec<u8>]) {
    let mut f = FileHeader {
        base_seq: base,
        genesis,
    }
    .encode()
    .to_vec();
    for e in entries {
        f.extend_from_slice(e);
    }
    fs::write(p, f).unwrap();
}

#[test]
fn removed_reordered_duplicated_or_rechained_entries_are_tampering() {
    let d = TempDir::new();
    let p = d.file("j");
    let (e1, h1) = encode_entry(1, &GENESIS, b"one");
    let (e2, h2) = encode_entry(2, &h1, b"two");
    let (e3, _) = encode_entry(3, &h2, b"three");
    write_log(&p, 1, GENESIS, &[e1.clone(), e2.clone(), e3.clone()]);
    assert_eq!(verify(&p).unwrap().entries, 3);

    write_log(&p, 1, GENESIS, &[e1.clone(), e3.clone()]);
    assert!(matches!(
        Journal::open(&p),
        Err(JournalError::SequenceBreak {
            expected: 2,
            found: 3,
            ..
        })
    ));
    write_log(&p, 1, GENESIS, &[e2.clone(), e1.clone(), e3.clone()]);
    assert!(matches!(
        verify(&p),
        Err(JournalError::SequenceBreak { .. })
    ));
    write_log(&p, 1, GENESIS, &[e1.clone(), e2.clone(), e2.clone()]);
    assert!(matches!(
        verify(&p),
        Err(JournalError::SequenceBreak { .. })
    ));
    // Checksum-valid entry 2 that chains to something else.
    let (forged2, _) = encode_entry(2, &[7; 32], b"two");
    write_log(&p, 1, GENESIS, &[e1.clone(), forged2]);
    assert!(matches!(
        verify(&p),
        Err(JournalError::ChainBroken { seq: 2, .. })
    ));
    // Wrong genesis in a (consistent) header.
    write_log(&p, 1, [1; 32], std::slice::from_ref(&e1));
    assert!(matches!(
        verify(&p),
        Err(JournalError::ChainBroken { seq: 1, .. })
    ));
    // Corrupt middle entry followed by a valid one.
    let mut bad2 = e2.clone();
    bad2[50] ^= 1;
    write_log(&p, 1, GENESIS, &[e1, bad2, e3]);
    assert!(matches!(
        Journal::open(&p),
        Err(JournalError::CorruptEntry {
            expected_seq: 2,
            ..
        })
    ));
}

#[test]
fn zero_filled_tail_is_torn_not_tampering() {
    // A crash can leave the in-flight append as zeros (size updated, data not written).
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    j.append(b"kept").unwrap();
    drop(j);
    let mut f = fs::read(&p).unwrap();
    let good = f.len();
    f.extend_from_slice(&[0u8; 700]);
    fs::write(&p, &f).unwrap();
    let j = Journal::open(&p).unwrap();
    assert_eq!(j.torn_tail_bytes(), 700);
    assert_eq!(fs::metadata(&p).unwrap().len(), good as u64);
}

#[test]
fn ack_file_damage_is_detected() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    for s in 1..=3u64 {
        j.append(&payload(s, 10)).unwrap();
    }
    j.ack(2).unwrap();
    drop(j);
    let ap = d.file("j.ack");
    let good = fs::read(&ap).unwrap();
    for i in 0..good.len() {
        let mut m = good.clone();
        m[i] ^= 0x01;
        fs::write(&ap, &m).unwrap();
        assert!(verify(&p).is_err(), "ack flip at {i}");
    }
    fs::write(&ap, &good[..good.len() - 1]).unwrap();
    assert!(matches!(verify(&p), Err(JournalError::BadAckFile { .. })));
    // An ack record for an entry the log does not hold.
    let rec = AckRecord {
        upto: 9,
        hash: [0; 32],
    };
    fs::write(&ap, rec.encode()).unwrap();
    assert!(matches!(verify(&p), Err(JournalError::AckMismatch { .. })));
    // An ack record whose hash is not the entry's.
    let rec = AckRecord {
        upto: 2,
        hash: [0; 32],
    };
    fs::write(&ap, rec.encode()).unwrap();
    assert!(matches!(verify(&p), Err(JournalError::AckMismatch { .. })));
    fs::write(&ap, &good).unwrap();
    assert_eq!(verify(&p).unwrap().acked_upto, 2);
}

#[test]
fn header_is_fixed_size() {
    assert_eq!(
        FileHeader {
            base_seq: 1,
            genesis: GENESIS
        }
        .encode()
        .len(),
        HEADER_LEN
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// Ack up to a fraction (0..=100 %) of the way from the acked point to the last entry.
    Ack(u8),
    Compact,
    Reopen,
    Export(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..300).prop_map(Op::Append),
        2 => (0u8..=100).prop_map(Op::Ack),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => (0usize..6).prop_map(Op::Export),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Against a model: appends, acks, compactions, reopens and exports keep exactly the
    /// pending entries, with their payloads, in order.
    #[test]
    fn ops_keep_exactly_the_pending_entries(ops in proptest::collection::vec(op(), 1..40)) {
        let d = TempDir::new();
        let p = d.file("j");
        let mut j = Journal::open(&p).unwrap();
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new(); // all ever appended
        let mut acked = 0u64;
        for o in ops {
            match o {
                Op::Append(n) => {
                    let seq = model.len() as u64 + 1;
                    let data = payload(seq, n);
                    prop_assert_eq!(j.append(&data).unwrap(), seq);
                    model.push((seq, data));
                }
                Op::Ack(pct) => {
                    let last = model.len() as u64;
                    let upto = acked + (last - acked) * u64::from(pct) / 100;
                    j.ack(upto).unwrap();
                    acked = acked.max(upto);
                }
                Op::Compact => { j.compact().unwrap(); }
                Op::Reopen => {
                    drop(j);
                    j = Journal::open(&p).unwrap();
                    prop_assert_eq!(j.torn_tail_bytes(), 0);
                }
                Op::Export(max) => {
                    let b = j.export(ExportLimits { max_entries: max, max_bytes: usize::MAX }).unwrap();
                    let es = parse_batch(&b.bytes).unwrap();
                    let want: Vec<&(u64, Vec<u8>)> = model.iter().skip(acked as usize).take(max).collect();
                    prop_assert_eq!(es.len(), want.len());
                    for (e, w) in es.iter().zip(want) {
                        prop_assert_eq!(e.seq, w.0);
                        prop_assert_eq!(&e.payload, &w.1);
                    }
                }
            }
            prop_assert_eq!(j.acked_upto(), acked);
            let pending: Vec<(u64, Vec<u8>)> = j.pending().map(|e| { let e = e.unwrap(); (e.seq, e.payload) }).collect();
            prop_assert_eq!(&pending[..], &model[acked as usize..]);
        }
        drop(j);
        let v = verify(&p).unwrap();
        prop_assert_eq!(v.pending, model.len() - acked as usize);
        prop_assert_eq!(v.next_seq, model.len() as u64 + 1);
    }
}

// --- Attacks from the security review -------------------------------------------------

/// Attack: two writers append at once and break the chain. A second writer in the same
/// process (open, open_existing, repair) gets `Locked` while the first is open; read-only
/// opens still work; the first keeps appending and the chain verifies.
#[test]
fn second_writer_in_this_process_is_locked_out() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut first = Journal::open_locked(&p).unwrap();
    first.append(b"one").unwrap();
    let locked = |r: Result<(), JournalError>| matches!(&r, Err(JournalError::Locked { location }) if location.contains("j"));
    assert!(locked(Journal::open(&p).map(|_| ())));
    assert!(locked(Journal::open_locked(&p).map(|_| ())));
    assert!(locked(Journal::open_existing(&p).map(|_| ())));
    assert!(locked(repair(&p).map(|_| ())));
    let msg = Journal::open(&p).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("in use by another writer"), "{msg}");
    let ro = Journal::open_read_only(&p).unwrap();
    assert_eq!(ro.len(), 1);
    assert_eq!(first.append(b"two").unwrap(), 2);
    assert_eq!(first.append(b"three").unwrap(), 3);
    drop(first);
    // Released on drop.
    let mut again = Journal::open(&p).unwrap();
    assert_eq!(again.append(b"four").unwrap(), 4);
    drop(again);
    let v = verify(&p).unwrap();
    assert_eq!((v.entries, v.torn_tail_bytes, v.lost_entries), (4, 0, 0));
}

/// Attack: flip a byte in the last complete entry so that the next writer's open drops it
/// and reuses its seq, and `verify` says ok. Now: every open fails with `CorruptLastEntry`
/// and nothing changes; `repair` keeps the bytes aside (byte-exact), records the seq as
/// lost, and the next append gets a greater seq; `verify` reports the lost entry.
#[test]
fn damaged_last_entry_is_refused_then_repaired_without_reusing_its_seq() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    for s in 1..=3u64 {
        j.append(&payload(s, 20)).unwrap();
    }
    let head_before = j.get(2).unwrap().hash;
    drop(j);
    let mut bytes = fs::read(&p).unwrap();
    let last = bytes.len() - (ENTRY_OVERHEAD + 20);
    bytes[last + ENTRY_OVERHEAD] ^= 0x04; // inside the payload
    fs::write(&p, &bytes).unwrap();
    let is_last = |e: &JournalError| matches!(e, JournalError::CorruptLastEntry { seq: 3, offset, .. } if *offset as usize == last);
    assert!(is_last(&Journal::open(&p).unwrap_err()));
    assert!(is_last(&Journal::open_read_only(&p).unwrap_err()));
    assert!(is_last(&verify(&p).unwrap_err()));
    assert_eq!(
        fs::read(&p).unwrap(),
        bytes,
        "a failed open changed the file"
    );

    // An unrelated file already sits at the first aside name: it must not be overwritten.
    fs::write(d.file("j.bad-3"), b"someone else's").unwrap();
    let r = repair(&p).unwrap();
    assert_eq!(r.lost_seq, Some(3));
    assert_eq!(r.lost_bytes, (ENTRY_OVERHEAD + 20) as u64);
    let kept = PathBuf::from(r.kept_at.clone().unwrap());
    assert_eq!(kept, d.file("j.bad-3.2"));
    assert_eq!(fs::read(&kept).unwrap(), &bytes[last..]);
    assert_eq!(fs::read(d.file("j.bad-3")).unwrap(), b"someone else's");

    let v = verify(&p).unwrap();
    assert_eq!((v.entries, v.next_seq, v.lost_entries), (3, 4, 1));
    let mut j = Journal::open(&p).unwrap();
    let rec = j.get(3).unwrap();
    assert_eq!(rec.prev_hash, head_before);
    let lost = rec.lost().unwrap();
    assert_eq!(lost.lost_len, r.lost_bytes);
    assert_eq!(lost.lost_sm3, crate::crypto::sm3(&bytes[last..]));
    assert_eq!(lost.kept_at, kept.display().to_string());
    assert_eq!(j.append(b"after repair").unwrap(), 4);
    // The record travels to the server like any entry.
    let b = j.export(ExportLimits::default()).unwrap();
    let es = parse_batch(&b.bytes).unwrap();
    assert_eq!(
        es.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(es[2].lost().is_some() && es[3].lost().is_none());
    drop(j);
    // Repairing a clean journal changes nothing.
    let before = fs::read(&p).unwrap();
    assert_eq!(repair(&p).unwrap(), RepairReport::default());
    assert_eq!(fs::read(&p).unwrap(), before);
}

/// The repair path reports a torn tail (interrupted append) like a writer's open, and loses
/// nothing.
#[test]
fn repair_of_a_torn_tail_only_truncates() {
    let d = TempDir::new();
    let p = d.file("j");
    let mut j = Journal::open(&p).unwrap();
    j.append(b"one").unwrap();
    j.append(b"two").unwrap();
    drop(j);
    let full = fs::read(&p).unwrap();
    fs::write(&p, &full[..full.len() - 7]).unwrap();
    let r = repair(&p).unwrap();
    assert_eq!(r.lost_seq, None);
    assert_eq!(r.torn_tail_bytes, (ENTRY_OVERHEAD + 3 - 7) as u64);
    assert_eq!(verify(&p).unwrap().next_seq, 2);
}

/// A receipt can never pass for a lost-entry record.
#[test]
fn payloads_with_the_lost_marker_are_refused() {
    let d = TempDir::new();
    let mut j = Journal::open(d.file("j")).unwrap();
    let mut fake = LostEntry {
        lost_len: 1,
        lost_sm3: [0; 32],
        kept_at: "x".into(),
    }
    .encode();
    assert!(matches!(
        j.append(&fake),
        Err(JournalError::ReservedPayload)
    ));
    fake.truncate(8);
    assert!(matches!(
        j.append(&fake),
        Err(JournalError::ReservedPayload)
    ));
    assert_eq!(j.next_seq(), 1);
    assert_eq!(j.append(b"CVJLOST").unwrap(), 1);
}

#[test]
fn entries_iterate_both_ways() {
    let d = TempDir::new();
    let mut j = Journal::open(d.file("j")).unwrap();
    for s in 1..=4u64 {
        j.append(&payload(s, 3)).unwrap();
    }
    j.ack(1).unwrap();
    let newest_first: Vec<u64> = j.entries().rev().map(|e| e.unwrap().seq).collect();
    assert_eq!(newest_first, vec![4, 3, 2, 1]);
    let pending_rev: Vec<u64> = j.pending().rev().map(|e| e.unwrap().seq).collect();
    assert_eq!(pending_rev, vec![4, 3, 2]);
    assert_eq!(j.pending().len(), 3);
}
