//! `cardvm journal …`: inspect, export, acknowledge and repair the offline receipt journal.

use std::path::PathBuf;

use clap::Subcommand;

use cardvm::crypto::sm3;
use cardvm::journal::{self, ExportLimits, Journal};

use super::CliResult;

/// The journal subcommands.
#[derive(Subcommand, Debug)]
pub enum JournalCmd {
    /// List stored entries: seq, state (pending/acked), payload length, SM3 prefix of the
    /// payload. Read-only.
    List {
        /// The journal file.
        path: PathBuf,
    },
    /// Write a batch of the oldest pending entries (for upload) to OUT. Read-only on the
    /// journal.
    Export {
        /// The journal file.
        path: PathBuf,
        /// At most this many entries.
        #[arg(long, default_value_t = 256)]
        max: usize,
        /// At most this many bytes of batch (a single larger entry is still exported alone).
        #[arg(long, default_value_t = 256 * 1024)]
        max_bytes: usize,
        /// Where to write the batch.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Record that the server accepted every entry up to and including SEQ.
    Ack {
        /// The journal file.
        path: PathBuf,
        /// The last sequence number the server confirmed.
        #[arg(long)]
        upto: u64,
        /// Also compact: remove acknowledged entries from the file (pending ones are kept).
        #[arg(long)]
        compact: bool,
    },
    /// Check the header, every entry, the hash chain and the ack file without modifying
    /// anything. Fails on damage and also on a torn tail; names every lost (repaired) entry.
    Verify {
        /// The journal file.
        path: PathBuf,
    },
    /// Recover from a damaged last entry: keep its bytes in PATH.bad-SEQ and record SEQ as
    /// lost (a chained entry), so that the seq is never reused. Takes the writers' lock.
    /// Also truncates a torn tail; does nothing to a clean journal.
    Repair {
        /// The journal file.
        path: PathBuf,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn torn_note(bytes: u64) {
    if bytes > 0 {
        eprintln!(
            "cardvm: warning: torn tail of {bytes} bytes after the last valid entry (an interrupted append; a writer's open truncates it)"
        );
    }
}

/// Runs one journal subcommand.
pub fn run(cmd: JournalCmd) -> CliResult {
    match cmd {
        JournalCmd::List { path } => {
            let j = Journal::open_read_only(&path).map_err(|e| e.to_string())?;
            torn_note(j.torn_tail_bytes());
            println!("{:>10}  {:<7}  {:>8}  sm3", "seq", "state", "length");
            for e in j.entries() {
                let e = e.map_err(|e| e.to_string())?;
                let state = if e.lost().is_some() {
                    "lost"
                } else if e.seq <= j.acked_upto() {
                    "acked"
                } else {
                    "pending"
                };
                println!(
                    "{:>10}  {:<7}  {:>8}  {}",
                    e.seq,
                    state,
                    e.payload.len(),
                    hex(&sm3(&e.payload)[..8])
                );
            }
            Ok(())
        }
        JournalCmd::Export {
            path,
            max,
            max_bytes,
            out,
        } => {
            let j = Journal::open_read_only(&path).map_err(|e| e.to_string())?;
            torn_note(j.torn_tail_bytes());
            let b = j
                .export(ExportLimits {
                    max_entries: max,
                    max_bytes,
                })
                .map_err(|e| e.to_string())?;
            std::fs::write(&out, &b.bytes).map_err(|e| format!("write {}: {e}", out.display()))?;
            match (b.first_seq, b.last_seq) {
                (Some(f), Some(l)) => eprintln!(
                    "exported {} entries (seq {f}..={l}, {} bytes) to {}; after upload: cardvm journal ack {} --upto {l}",
                    b.count,
                    b.bytes.len(),
                    out.display(),
                    path.display()
                ),
                _ => eprintln!(
                    "no pending entries; wrote an empty batch to {}",
                    out.display()
                ),
            }
            Ok(())
        }
        JournalCmd::Ack {
            path,
            upto,
            compact,
        } => {
            let mut j = Journal::open_existing(&path).map_err(|e| e.to_string())?;
            torn_note(j.torn_tail_bytes());
            j.ack(upto).map_err(|e| e.to_string())?;
            eprint!(
                "acknowledged up to seq {}; {} pending",
                j.acked_upto(),
                j.pending_count()
            );
            if compact {
                let r = j.compact().map_err(|e| e.to_string())?;
                eprint!(
                    "; compacted {} entries ({} bytes)",
                    r.dropped_entries, r.dropped_bytes
                );
            }
            eprintln!();
            Ok(())
        }
        JournalCmd::Verify { path } => {
            let j = Journal::open_read_only(&path).map_err(|e| e.to_string())?;
            let r = j.report();
            if r.torn_tail_bytes > 0 {
                return Err(format!(
                    "{}: torn tail of {} bytes after seq {} (an append did not complete; a writer's open truncates it)",
                    path.display(),
                    r.torn_tail_bytes,
                    r.next_seq - 1
                ));
            }
            // A repaired journal is never reported as plainly ok: name every lost seq.
            let mut lost = Vec::new();
            for e in j.entries() {
                let e = e.map_err(|e| e.to_string())?;
                if let Some(l) = e.lost() {
                    lost.push(format!(
                        "seq {} (repaired; {} bytes kept in {})",
                        e.seq, l.lost_len, l.kept_at
                    ));
                }
            }
            let lost_note = if lost.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} lost entr{}: {}",
                    lost.len(),
                    if lost.len() == 1 { "y" } else { "ies" },
                    lost.join(", ")
                )
            };
            println!(
                "ok: {} entries (seq {}..{}), acknowledged up to {}, {} pending{lost_note}",
                r.entries, r.first_seq, r.next_seq, r.acked_upto, r.pending
            );
            Ok(())
        }
        JournalCmd::Repair { path } => {
            let r = journal::repair(&path).map_err(|e| e.to_string())?;
            match (r.lost_seq, &r.kept_at) {
                (Some(seq), Some(kept)) => println!(
                    "repaired {}: damaged entry seq {seq} ({} bytes) kept in {kept} and recorded as lost; the next entry gets seq {}",
                    path.display(),
                    r.lost_bytes,
                    seq + 1
                ),
                _ if r.torn_tail_bytes > 0 => println!(
                    "repaired {}: truncated a torn tail of {} bytes (an interrupted append; nothing lost)",
                    path.display(),
                    r.torn_tail_bytes
                ),
                _ => println!("{}: nothing to repair", path.display()),
            }
            Ok(())
        }
    }
}
