//! Replay protection: the last accepted sequence number per stream.
//!
//! # The rule
//!
//! A *stream* is `(city, script kind, reader id)`. For each stream the store keeps
//! the sequence number and SM3 digest of the last envelope that opened
//! successfully. A new envelope is accepted when
//!
//! * the stream has no entry yet, or
//! * its sequence number is **strictly greater** than the stored one, or
//! * it is a **command** script whose sequence number equals the stored one *and*
//!   whose whole sealed blob has the same SM3 digest — i.e. the reader re-opens the
//!   very command script it already accepted (after a restart, or after it fell out
//!   of the [`OpenCache`](super::OpenCache)). Data scripts carry one transaction and
//!   never get this exception.
//!
//! Everything else is [`OpenError::Replayed`](super::OpenError::Replayed). The new
//! entry is recorded only after the whole open (signature, reader, expiry, key
//! unwrap, tag) succeeded, so a forged or corrupted envelope cannot advance the
//! counter.

use alloc::collections::BTreeMap;
use alloc::string::String;

use super::ScriptKind;

/// One replay stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplayKey {
    /// City / issuer id.
    pub city: u32,
    /// Script kind code ([`ScriptKind::code`]).
    pub kind: u8,
    /// Reader id.
    pub reader_id: String,
}

impl ReplayKey {
    /// The stream of an envelope header.
    pub fn new(city: u32, kind: ScriptKind, reader_id: &str) -> Self {
        ReplayKey {
            city,
            kind: kind.code(),
            reader_id: reader_id.into(),
        }
    }
}

/// The last accepted envelope of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayEntry {
    /// Its sequence number.
    pub seq: u64,
    /// SM3 of the whole sealed blob.
    pub digest: [u8; 32],
}

/// A replay-store failure (I/O in `std` builds, or a corrupt store file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("replay store {op} failed: {detail}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The system's message.
        detail: String,
    },
    /// The store file is malformed.
    #[error("replay store is corrupt at line {line}")]
    Corrupt {
        /// 1-based line number.
        line: usize,
    },
}

/// Keeps the last accepted sequence number per stream (see the module docs).
pub trait ReplayStore {
    /// The last accepted entry of `key`'s stream, if any.
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError>;
    /// Records `entry` as the last accepted one of `key`'s stream (durably, for
    /// persistent stores, before returning `Ok`).
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError>;
}

impl<T: ReplayStore + ?Sized> ReplayStore for &mut T {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        (**self).last(key)
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        (**self).record(key, entry)
    }
}

/// Applies the acceptance rule. `Err(last_seq)` when the envelope is a replay.
pub fn accept(
    kind: ScriptKind,
    last: Option<ReplayEntry>,
    seq: u64,
    digest: &[u8; 32],
) -> Result<(), u64> {
    match last {
        None => Ok(()),
        Some(l) if seq > l.seq => Ok(()),
        Some(l) if kind == ScriptKind::Command && seq == l.seq && l.digest == *digest => Ok(()),
        Some(l) => Err(l.seq),
    }
}

/// An in-memory replay store (lost on restart; for tests and `no_std` embedders
/// that persist it themselves via [`MemoryReplayStore::entries`]).
#[derive(Debug, Clone, Default)]
pub struct MemoryReplayStore {
    map: BTreeMap<ReplayKey, ReplayEntry>,
}

impl MemoryReplayStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// All streams and their last entries, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&ReplayKey, &ReplayEntry)> {
        self.map.iter()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
        Ok(self.map.get(key).copied())
    }
    fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
        self.map.insert(key.clone(), entry);
        Ok(())
    }
}

#[cfg(feature = "std")]
pub use file::FileReplayStore;

#[cfg(feature = "std")]
mod file {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    const HEADER: &str = "# cardvm replay store v1: city kind reader-id-hex seq sm3-hex";

    /// A replay store kept in a small text file, rewritten atomically (temp file,
    /// fsync, rename, fsync of the directory) on every record, so it survives
    /// restarts and power loss.
    #[derive(Debug)]
    pub struct FileReplayStore {
        path: PathBuf,
        mem: MemoryReplayStore,
    }

    fn io(op: &'static str, e: std::io::Error) -> StoreError {
        StoreError::Io {
            op,
            detail: e.to_string(),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02X}")).collect()
    }

    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }

    impl FileReplayStore {
        /// Opens the store at `path`; a missing file is an empty store.
        pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
            let path = path.as_ref().to_path_buf();
            let mut mem = MemoryReplayStore::new();
            match fs::read_to_string(&path) {
                Ok(text) => {
                    for (n, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        let (key, entry) =
                            parse_line(line).ok_or(StoreError::Corrupt { line: n + 1 })?;
                        mem.map.insert(key, entry);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("read", e)),
            }
            Ok(FileReplayStore { path, mem })
        }

        /// The file this store lives in.
        pub fn path(&self) -> &Path {
            &self.path
        }

        fn persist(&self) -> Result<(), StoreError> {
            let mut text = String::from(HEADER);
            text.push('\n');
            for (k, e) in self.mem.entries() {
                text.push_str(&format!(
                    "{} {} {} {} {}\n",
                    k.city,
                    k.kind,
                    hex(k.reader_id.as_bytes()),
                    e.seq,
                    hex(&e.digest)
                ));
            }
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            {
                let mut f = fs::File::create(&tmp).map_err(|e| io("create", e))?;
                f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
                f.sync_all().map_err(|e| io("fsync", e))?;
            }
            fs::rename(&tmp, &self.path).map_err(|e| io("rename", e))?;
            if let Some(dir) = self.path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                // Directory fsync makes the rename durable; not all platforms allow
                // opening a directory, so failure to open it is not an error.
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        }
    }

    fn parse_line(line: &str) -> Option<(ReplayKey, ReplayEntry)> {
        let mut it = line.split_ascii_whitespace();
        let city = it.next()?.parse().ok()?;
        let kind: u8 = it.next()?.parse().ok()?;
        ScriptKind::from_code(kind)?;
        let reader_id = String::from_utf8(unhex(it.next()?)?).ok()?;
        let seq = it.next()?.parse().ok()?;
        let digest = unhex(it.next()?)?.try_into().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some((
            ReplayKey {
                city,
                kind,
                reader_id,
            },
            ReplayEntry { seq, digest },
        ))
    }

    impl ReplayStore for FileReplayStore {
        fn last(&self, key: &ReplayKey) -> Result<Option<ReplayEntry>, StoreError> {
            self.mem.last(key)
        }
        fn record(&mut self, key: &ReplayKey, entry: ReplayEntry) -> Result<(), StoreError> {
            // Keep the newer entry in memory even if persisting fails: the reader
            // stays protected for this run, and the caller sees the error.
            self.mem.record(key, entry)?;
            self.persist()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule() {
        let d = [1u8; 32];
        let e = Some(ReplayEntry { seq: 5, digest: d });
        assert_eq!(accept(ScriptKind::Data, None, 0, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Data, e, 6, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Data, e, 5, &d), Err(5));
        assert_eq!(accept(ScriptKind::Data, e, 4, &d), Err(5));
        assert_eq!(accept(ScriptKind::Command, e, 5, &d), Ok(()));
        assert_eq!(accept(ScriptKind::Command, e, 5, &[2; 32]), Err(5));
        assert_eq!(accept(ScriptKind::Command, e, 4, &d), Err(5));
    }

    #[cfg(feature = "std")]
    #[test]
    fn file_store_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("cardvm-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("replay.db");
        let _ = std::fs::remove_file(&path);
        let k1 = ReplayKey::new(731, ScriptKind::Data, "reader 1");
        let k2 = ReplayKey::new(731, ScriptKind::Command, "reader 1");
        {
            let mut s = FileReplayStore::open(&path).unwrap();
            assert_eq!(s.last(&k1).unwrap(), None);
            s.record(
                &k1,
                ReplayEntry {
                    seq: 9,
                    digest: [3; 32],
                },
            )
            .unwrap();
            s.record(
                &k2,
                ReplayEntry {
                    seq: 2,
                    digest: [4; 32],
                },
            )
            .unwrap();
        }
        let s = FileReplayStore::open(&path).unwrap();
        assert_eq!(
            s.last(&k1).unwrap(),
            Some(ReplayEntry {
                seq: 9,
                digest: [3; 32]
            })
        );
        assert_eq!(
            s.last(&k2).unwrap(),
            Some(ReplayEntry {
                seq: 2,
                digest: [4; 32]
            })
        );
        std::fs::write(&path, "731 2 zz 1 00\n").unwrap();
        assert_eq!(
            FileReplayStore::open(&path).unwrap_err(),
            StoreError::Corrupt { line: 1 }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
