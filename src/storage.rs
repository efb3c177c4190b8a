//! What the reader needs from the device to keep small state durably.
//!
//! Reader firmware keeps the replay store in a few flash pages; a desktop reader keeps it
//! in a file. Both are a [`RecordStorage`]: one small blob, read whole and replaced whole,
//! atomically (a crash leaves the old or the new blob, never a mix). Flash firmware
//! implements it with two pages and a generation counter; the `std` feature provides
//! [`FileRecord`] (temp file, fsync, rename, directory fsync) and every build has
//! [`MemoryRecord`] for tests.
//!
//! The storage gives durability only. Integrity (a MAC under a key only the reader
//! holds) is added above it, by the user of the record (see
//! [`crate::envelope::replay::ProtectedReplayStore`]).

use alloc::string::String;
use alloc::vec::Vec;

/// A storage failure, as one line of text (the device's own error, with context).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {location}: {detail}")]
pub struct StorageError {
    /// What was being done (`read`, `write`, `fsync`, …).
    pub op: &'static str,
    /// Where (a file path or a flash region name).
    pub location: String,
    /// The device's or the OS's message.
    pub detail: String,
}

/// One small blob kept durably and replaced atomically (see the module docs).
pub trait RecordStorage {
    /// The stored blob, `None` when nothing was ever stored.
    fn load(&mut self) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the blob; durable when this returns `Ok`.
    fn store(&mut self, bytes: &[u8]) -> Result<(), StorageError>;
    /// Where the record lives, for messages.
    fn location(&self) -> String;
}

/// A record in memory (tests; firmware models).
#[derive(Debug, Clone, Default)]
pub struct MemoryRecord {
    /// The stored blob.
    pub bytes: Option<Vec<u8>>,
}

impl RecordStorage for MemoryRecord {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.bytes.clone())
    }
    fn store(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.bytes = Some(bytes.to_vec());
        Ok(())
    }
    fn location(&self) -> String {
        String::from("(memory)")
    }
}

impl<T: RecordStorage + ?Sized> RecordStorage for &mut T {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).load()
    }
    fn store(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        (**self).store(bytes)
    }
    fn location(&self) -> String {
        (**self).location()
    }
}

#[cfg(feature = "std")]
pub use file::FileRecord;

#[cfg(feature = "std")]
mod file {
    use super::*;
    use std::fs;
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};

    /// Largest record file read (the replay store is a few kilobytes).
    pub const MAX_RECORD_FILE: u64 = 1 << 20;

    /// A record in one file, replaced by temp file + fsync + rename + directory fsync.
    #[derive(Debug, Clone)]
    pub struct FileRecord {
        path: PathBuf,
    }

    impl FileRecord {
        /// The record at `path` (nothing is read until [`RecordStorage::load`]).
        pub fn new(path: impl AsRef<Path>) -> Self {
            FileRecord {
                path: path.as_ref().to_path_buf(),
            }
        }

        /// The file.
        pub fn path(&self) -> &Path {
            &self.path
        }

        fn err(&self, op: &'static str, e: impl core::fmt::Display) -> StorageError {
            StorageError {
                op,
                location: self.path.display().to_string(),
                detail: e.to_string(),
            }
        }
    }

    impl RecordStorage for FileRecord {
        fn load(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
            let f = match fs::File::open(&self.path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.err("open", e)),
            };
            let meta = f.metadata().map_err(|e| self.err("stat", e))?;
            if !meta.is_file() {
                return Err(self.err("read", "not a regular file"));
            }
            let mut bytes = Vec::new();
            f.take(MAX_RECORD_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| self.err("read", e))?;
            if bytes.len() as u64 > MAX_RECORD_FILE {
                return Err(self.err("read", "larger than 1 MiB"));
            }
            Ok(Some(bytes))
        }

        fn store(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            {
                let mut f = fs::File::create(&tmp).map_err(|e| self.err("create", e))?;
                f.write_all(bytes).map_err(|e| self.err("write", e))?;
                f.sync_all().map_err(|e| self.err("fsync", e))?;
            }
            fs::rename(&tmp, &self.path).map_err(|e| self.err("rename", e))?;
            if let Some(dir) = self.path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                // Directory fsync makes the rename durable; not every platform lets a
                // directory be opened, so failing to open it is not an error.
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        }

        fn location(&self) -> String {
            self.path.display().to_string()
        }
    }
}
