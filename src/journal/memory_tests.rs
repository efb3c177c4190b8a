//! The journal on [`MemoryStorage`]: no file system, only `core` + `alloc` (as firmware
//! would run it). Power cuts at every byte of an append, a compaction, an ack and a repair.

use alloc::vec::Vec;

use super::format::{ENTRY_OVERHEAD, HEADER_LEN};
use super::*;

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 17 + i) as u8).collect()
}

/// Payload size of entry `seq` made by [`storage_with`] (varies, at most 22).
fn size(seq: u64) -> usize {
    (seq as usize * 5) % 23
}

/// A journal with entries 1..=n (payload sizes vary), closed.
fn storage_with(n: u64) -> MemoryStorage {
    let mut j = Journal::create_in(MemoryStorage::new("flash0")).unwrap();
    for s in 1..=n {
        assert_eq!(j.append(&payload(s, size(s))).unwrap(), s);
    }
    j.into_storage()
}

/// Entries are consecutive and chained, the original ones (seq ≤ `originals`, made by
/// [`storage_with`]) have their payloads, and none of them is missing.
fn assert_intact(j: &Journal<MemoryStorage>, originals: u64) {
    let mut prev = None;
    for e in j.entries() {
        let e = e.unwrap();
        if e.seq <= originals && e.lost().is_none() {
            assert_eq!(e.payload, payload(e.seq, size(e.seq)));
        }
        if let Some((s, h)) = prev {
            assert_eq!((e.seq, e.prev_hash), (s + 1, h));
        }
        prev = Some((e.seq, e.hash));
    }
    assert!(j.next_seq() > originals);
}

#[test]
fn create_append_reopen_ack_compact() {
    let mut j = Journal::create_in(MemoryStorage::new("flash0")).unwrap();
    for s in 1..=6 {
        assert_eq!(j.append(&payload(s, size(s))).unwrap(), s);
    }
    j.ack(3).unwrap();
    let r = j.compact().unwrap();
    assert_eq!(r.dropped_entries, 3);
    let st = j.into_storage();
    assert!(matches!(
        Journal::create_in(st.clone()),
        Err(JournalError::NotEmpty { .. })
    ));
    let j = Journal::open_in(st).unwrap();
    assert_eq!((j.first_seq(), j.next_seq(), j.acked_upto()), (4, 7, 3));
    assert_intact(&j, 6);
    let newest: Vec<u64> = j.entries().rev().map(|e| e.unwrap().seq).collect();
    assert_eq!(newest, vec![6, 5, 4]);
}

/// Attack: a flipped byte anywhere in the last complete entry. Every open refuses it with
/// `CorruptLastEntry` and changes nothing; repair keeps the exact bytes aside and the next
/// append gets a greater seq.
#[test]
fn every_flip_in_the_last_entry_is_refused_and_repairable() {
    let good = storage_with(3);
    let len = good.log().len();
    let last = len - (ENTRY_OVERHEAD + size(3));
    for i in last..len {
        let mut st = good.clone();
        st.log_mut()[i] ^= 0x20;
        let damaged = st.log().to_vec();
        for ro in [false, true] {
            let r = if ro {
                Journal::open_in_read_only(st.clone()).map(|_| ())
            } else {
                Journal::open_in(st.clone()).map(|_| ())
            };
            assert!(
                matches!(r, Err(JournalError::CorruptLastEntry { seq: 3, offset, .. }) if offset as usize == last),
                "flip at {i} (read-only {ro}): {r:?}"
            );
        }
        let (mut j, rep) = Journal::repair_in(st).unwrap();
        assert_eq!(rep.lost_seq, Some(3), "flip at {i}");
        assert_eq!(j.storage().aside().len(), 1);
        assert_eq!(j.storage().aside()[0].0, "flash0.bad-3");
        assert_eq!(j.storage().aside()[0].1, &damaged[last..]);
        assert_eq!(j.report().lost_entries, 1);
        assert_eq!(j.append(b"next").unwrap(), 4);
        assert_intact(&j, 2);
    }
}

/// The crash model: power is cut after every possible number of bytes of an append. Every
/// entry whose append returned survives; the torn entry is reported and dropped, and its
/// seq is then given to the next append (it never returned, so nothing held it).
#[test]
fn power_cut_at_every_byte_of_an_append() {
    let base = storage_with(4);
    let entry_len = ENTRY_OVERHEAD + 40;
    for cut in 0..=entry_len {
        let mut st = base.clone();
        st.cut_power_after(cut);
        let mut j = Journal::open_in(st).unwrap();
        let r = j.append(&payload(5, 40));
        if cut < entry_len {
            assert!(r.is_err(), "cut {cut}");
            assert!(
                j.append(b"x").is_err(),
                "cut {cut}: usable after power loss"
            );
        } else {
            assert_eq!(r.unwrap(), 5);
        }
        let mut st = j.into_storage();
        st.restore_power();
        let ro = Journal::open_in_read_only(st.clone()).unwrap();
        let torn = if cut < entry_len { cut as u64 } else { 0 };
        assert_eq!(ro.torn_tail_bytes(), torn, "cut {cut}");
        let mut j = Journal::open_in(st).unwrap();
        assert_eq!(j.torn_tail_bytes(), torn);
        let want_next = if cut < entry_len { 5 } else { 6 };
        assert_eq!(j.next_seq(), want_next, "cut {cut}");
        assert_intact(&j, 4);
        assert_eq!(j.append(&payload(want_next, 3)).unwrap(), want_next);
        let j = Journal::open_in(j.into_storage()).unwrap();
        assert_eq!(j.torn_tail_bytes(), 0);
    }
}

/// Power cut at every byte of a compaction and of an ack: the old or the new state, always
/// consistent with the ack record, every pending entry kept.
#[test]
fn power_cut_during_ack_and_compaction() {
    let base = storage_with(6);
    for cut in 0..=(HEADER_LEN + 6 * (ENTRY_OVERHEAD + 23) + 100) {
        let mut st = base.clone();
        st.cut_power_after(cut);
        let mut j = Journal::open_in(st).unwrap();
        let acked = j.ack(4).is_ok();
        let compacted = acked && j.compact().is_ok();
        let mut st = j.into_storage();
        st.restore_power();
        let j = Journal::open_in(st).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(j.acked_upto(), if acked { 4 } else { 0 }, "cut {cut}");
        if compacted {
            assert_eq!(j.first_seq(), 5);
        }
        assert!(j.first_seq() == 1 || j.first_seq() == 5, "cut {cut}");
        assert_eq!(j.next_seq(), 7);
        assert_intact(&j, 6);
    }
}

/// Power cut at every byte of a repair: afterwards the journal is either still refused
/// (run repair again) or repaired; a second repair completes it, keeps one aside copy, and
/// the damaged seq is never reused.
#[test]
fn power_cut_at_every_byte_of_a_repair() {
    let mut damaged = storage_with(3);
    let n = damaged.log().len();
    damaged.log_mut()[n - 1] ^= 1;
    let bad_len = ENTRY_OVERHEAD + size(3);
    for cut in 0..=(bad_len + HEADER_LEN + 3 * (ENTRY_OVERHEAD + 23) + 200) {
        let mut st = damaged.clone();
        st.cut_power_after(cut);
        let first_ok = Journal::repair_in(&mut st).is_ok();
        st.restore_power();
        // After the reboot: still refused (repair did not get to the swap), or repaired.
        match Journal::open_in_read_only(&mut st) {
            Err(JournalError::CorruptLastEntry { seq: 3, .. }) => assert!(!first_ok, "cut {cut}"),
            Ok(j) => assert_eq!(j.report().lost_entries, 1, "cut {cut}"),
            Err(e) => panic!("cut {cut}: {e}"),
        }
        let (mut j, _) = Journal::repair_in(&mut st).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(j.report().lost_entries, 1, "cut {cut}");
        assert_eq!(j.append(b"after").unwrap(), 4, "cut {cut}");
        drop(j);
        assert_eq!(st.aside().len(), 1, "cut {cut}: aside copy duplicated");
        assert_eq!(st.aside()[0].1.len(), bad_len);
    }
}

/// If the damaged last entry had been acknowledged (the server holds it), repair moves the
/// ack to the lost-entry record instead of leaving an ack that no entry matches.
#[test]
fn repair_of_an_acknowledged_entry_moves_the_ack() {
    let mut j = Journal::create_in(MemoryStorage::new("flash0")).unwrap();
    j.append(b"one").unwrap();
    j.append(b"two").unwrap();
    j.ack(2).unwrap();
    let mut st = j.into_storage();
    let n = st.log().len();
    st.log_mut()[n - 40] ^= 0xFF;
    assert!(matches!(
        Journal::open_in(st.clone()),
        Err(JournalError::CorruptLastEntry { seq: 2, .. })
    ));
    let (mut j, r) = Journal::repair_in(st).unwrap();
    assert_eq!(r.lost_seq, Some(2));
    assert_eq!(j.acked_upto(), 2);
    assert_eq!(j.pending_count(), 0);
    assert_eq!(j.append(b"three").unwrap(), 3);
}

/// Interrupted-append tails are torn; anything else after the last entry is not.
#[test]
fn tails_are_classified() {
    let base = storage_with(2);
    let j = Journal::open_in_read_only(base.clone()).unwrap();
    let (next, prev) = (j.next_seq(), j.head_hash());
    drop(j);
    let (entry, _) = format::encode_entry(next, &prev, &[7u8; 30]);
    // Every strict prefix of the next entry, and zeros: torn.
    for cut in 1..entry.len() {
        let mut st = base.clone();
        st.log_mut().extend_from_slice(&entry[..cut]);
        assert_eq!(
            Journal::open_in_read_only(st).unwrap().torn_tail_bytes(),
            cut as u64
        );
    }
    let mut st = base.clone();
    st.log_mut().extend_from_slice(&[0; 500]);
    assert_eq!(Journal::open_in(st).unwrap().torn_tail_bytes(), 500);
    // A prefix of an entry that does not continue this journal (wrong seq, wrong prev, not
    // an entry at all): damaged, kept.
    let (other_seq, _) = format::encode_entry(next + 1, &prev, &[7u8; 30]);
    let (other_prev, _) = format::encode_entry(next, &[9; 32], &[7u8; 30]);
    for junk in [
        &other_seq[..40],
        &other_prev[..40],
        &b"garbage"[..],
        &[0xFF; 3][..],
    ] {
        let mut st = base.clone();
        st.log_mut().extend_from_slice(junk);
        assert!(
            matches!(
                Journal::open_in(st),
                Err(JournalError::CorruptLastEntry { seq: 3, .. })
            ),
            "{junk:?}"
        );
    }
}
