//! The journal through the `cardvm` binary: a second writer process is locked out, and the
//! operator's recovery from a damaged last entry (`verify` refuses, `repair` keeps the
//! bytes aside and records the seq as lost, `verify` says so).
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cardvm::journal::{self, Journal};

fn cardvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardvm"))
        .args(args)
        .output()
        .expect("cardvm runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A directory of this test's own (tests run in parallel).
fn tmp(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("cardvm-journal-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Attack: another process writes (here `cardvm journal ack` / `repair`) while the reader has
/// its journal open. It fails with a one-line "in use by another writer"; read-only commands
/// still work; the reader keeps appending and the chain verifies.
#[test]
fn a_second_writer_process_is_locked_out() {
    let dir = tmp("lock");
    let p = dir.join("receipts.cvj");
    let mut j = Journal::open_locked(&p).unwrap();
    j.append(b"one").unwrap();
    for args in [
        vec!["journal", "ack", s(&p), "--upto", "1"],
        vec!["journal", "repair", s(&p)],
    ] {
        let o = cardvm(&args);
        assert!(!o.status.success(), "{args:?} ran beside a writer");
        let e = stderr(&o);
        assert!(e.contains("in use by another writer"), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    let o = cardvm(&["journal", "verify", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(j.append(b"two").unwrap(), 2);
    drop(j);
    let o = cardvm(&["journal", "ack", s(&p), "--upto", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = journal::verify(&p).unwrap();
    assert_eq!((v.entries, v.acked_upto, v.torn_tail_bytes), (2, 2, 0));
}

/// Attack: flip a byte in the last complete entry so that it is dropped and its seq reused,
/// and `verify` still says ok. Now `verify` fails and names the repair; nothing changes
/// until `repair`, which keeps the exact bytes in PATH.bad-3; the next entry is seq 4 and
/// `verify` reports the lost entry.
#[test]
fn operator_recovers_a_damaged_last_entry() {
    let dir = tmp("repair");
    let p = dir.join("receipts.cvj");
    let mut j = Journal::open(&p).unwrap();
    for r in [
        &b"{\"receipt\":1}"[..],
        b"{\"receipt\":2}",
        b"{\"receipt\":3}",
    ] {
        j.append(r).unwrap();
    }
    drop(j);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - (80 + 13);
    let n = bytes.len();
    bytes[n - 50] ^= 0x01;
    std::fs::write(&p, &bytes).unwrap();

    for args in [
        vec!["journal", "verify", s(&p)],
        vec!["journal", "list", s(&p)],
        vec!["journal", "ack", s(&p), "--upto", "1"],
    ] {
        let o = cardvm(&args);
        assert!(
            !o.status.success(),
            "{args:?} accepted a damaged last entry"
        );
        let e = stderr(&o);
        assert!(
            e.contains("seq 3") && e.contains("cardvm journal repair"),
            "{args:?}: {e}"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{args:?} changed the journal"
        );
    }

    let o = cardvm(&["journal", "repair", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("seq 3"), "{}", stdout(&o));
    let aside = dir.join("receipts.cvj.bad-3");
    assert_eq!(std::fs::read(&aside).unwrap(), &bytes[last..]);

    let o = cardvm(&["journal", "verify", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("ok"), "{out}");
    assert!(out.contains("1 lost entry: seq 3 (repaired"), "{out}");
    assert!(out.contains(s(&aside)), "{out}");
    let o = cardvm(&["journal", "list", s(&p)]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains(" 3 ") && l.contains("lost")),
        "{}",
        stdout(&o)
    );

    let mut j = Journal::open(&p).unwrap();
    assert_eq!(j.append(b"{\"receipt\":4}").unwrap(), 4);
    drop(j);
    // A second repair finds nothing and keeps the aside copy as it is.
    let o = cardvm(&["journal", "repair", s(&p)]);
    assert!(stdout(&o).contains("nothing to repair"), "{}", stdout(&o));
    assert_eq!(std::fs::read(&aside).unwrap(), &bytes[last..]);
    let _ = std::fs::remove_dir_all(&dir);
}
