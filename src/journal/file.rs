//! Files (`std`): [`FileStorage`], the path-based opens of [`Journal`], [`verify`] and
//! [`repair`]. See the [module docs](super) for the files a journal at `PATH` uses.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::storage::{Storage, StorageError};
use super::{Journal, JournalError, RepairReport, VerifyReport};

/// A journal in a file: `Journal<FileStorage>`, what [`Journal::open_locked`] returns.
pub type FileJournal = Journal<FileStorage>;

/// Temporaries a crash may leave behind; a writer's open removes them.
const TEMP_SUFFIXES: [&str; 3] = [".new", ".compact", ".ack.tmp"];

/// How long a writer's open keeps retrying a held lock before it reports
/// [`JournalError::Locked`]: a child being forked by another thread of this process shares
/// the lock until its `exec` closes the descriptor, which takes far less than this.
const LOCK_RETRIES: u32 = 20;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// How many numbered `PATH.bad-<seq>.<n>` names [`FileStorage`] tries before giving up.
const MAX_ASIDE_NAMES: u32 = 1000;

/// The [`Storage`] of a journal at `PATH` (the log), with `PATH.ack`, `PATH.lock`,
/// `PATH.bad-<seq>` beside it. A writer holds an exclusive OS lock on `PATH.lock` for its
/// whole life (released on drop or process death).
#[derive(Debug)]
pub struct FileStorage {
    path: PathBuf,
    location: String,
    /// The log; `None` until it exists (a writer creating a journal).
    file: Option<File>,
    staging: Option<File>,
    /// Held only to keep the lock.
    _lock: Option<File>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |e| StorageError {
        op,
        location: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// fsyncs the directory holding `path`, so a rename or create in it is durable.
fn sync_parent(path: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory of", path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync directory.
fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut f = File::create(tmp).map_err(io_err("create", tmp))?;
    f.write_all(bytes).map_err(io_err("write", tmp))?;
    f.sync_all().map_err(io_err("sync", tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io_err("rename onto", path))?;
    sync_parent(path)
}

fn read_exact_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::Read;
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

impl FileStorage {
    /// Opens the journal files at `path` for a writer: takes the exclusive lock on
    /// `PATH.lock` (without waiting for a writer: [`JournalError::Locked`] if the lock is
    /// still held after about 100 ms of retries, which only cover a fork in progress),
    /// removes temporaries a crash left, and opens the log if it exists.
    pub fn open_writer(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref();
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("create lock file", &lock_path))?;
        let mut attempt = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if attempt < LOCK_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(LOCK_RETRY_PAUSE);
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(JournalError::Locked {
                        location: path.display().to_string(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e).into()),
            }
        }
        for suffix in TEMP_SUFFIXES {
            let p = with_suffix(path, suffix);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &p)(e).into()),
            }
        }
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("open", path)(e).into()),
        };
        Ok(FileStorage {
            path: path.to_path_buf(),
            location: path.display().to_string(),
            file,
            staging: None,
            _lock: Some(lock),
        })
    }

    /// Opens an existing journal's files at `path` for reading only (no lock, nothing
    /// created or removed).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_err("open", path))?;
        Ok(FileStorage {
            path: path.to_path_buf(),
            location: path.display().to_string(),
            file: Some(file),
            staging: None,
            _lock: None,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the log file exists (a writer's storage may not have created it yet).
    pub fn exists(&self) -> bool {
        self.file.is_some()
    }

    fn log(&self, op: &'static str) -> Result<&File, StorageError> {
        self.file.as_ref().ok_or_else(|| StorageError {
            op,
            location: self.location.clone(),
            detail: "the log file does not exist".into(),
        })
    }

    fn log_mut(&mut self, op: &'static str) -> Result<&mut File, StorageError> {
        let location = &self.location;
        self.file.as_mut().ok_or_else(|| StorageError {
            op,
            location: location.clone(),
            detail: "the log file does not exist".into(),
        })
    }
}

impl Storage for FileStorage {
    fn location(&self) -> &str {
        &self.location
    }

    fn log_len(&self) -> Result<u64, StorageError> {
        match &self.file {
            None => Ok(0),
            Some(f) => Ok(f.metadata().map_err(io_err("stat", &self.path))?.len()),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        read_exact_at(self.log("read")?, offset, buf).map_err(io_err("read", &self.path))
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.path.clone();
        let f = self.log_mut("append to")?;
        f.seek(SeekFrom::End(0))
            .and_then(|_| f.write_all(bytes))
            .map_err(io_err("append to", &path))
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.log("sync")?
            .sync_data()
            .map_err(io_err("sync", &self.path))
    }

    fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        self.log("truncate")?
            .set_len(len)
            .map_err(io_err("truncate", &self.path))
    }

    fn read_ack(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let ap = with_suffix(&self.path, ".ack");
        match fs::read(&ap) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &ap)(e)),
        }
    }

    fn write_ack(&mut self, record: &[u8]) -> Result<(), StorageError> {
        write_atomic(
            &with_suffix(&self.path, ".ack"),
            &with_suffix(&self.path, ".ack.tmp"),
            record,
        )
    }

    fn begin_replace(&mut self) -> Result<(), StorageError> {
        let tmp = with_suffix(&self.path, ".compact");
        self.staging = Some(File::create(&tmp).map_err(io_err("create", &tmp))?);
        Ok(())
    }

    fn replace_append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = with_suffix(&self.path, ".compact");
        let f = self.staging.as_mut().ok_or_else(|| StorageError {
            op: "write",
            location: tmp.display().to_string(),
            detail: "no replacement started".into(),
        })?;
        f.write_all(bytes).map_err(io_err("write", &tmp))
    }

    fn commit_replace(&mut self) -> Result<(), StorageError> {
        let tmp = with_suffix(&self.path, ".compact");
        let f = self.staging.take().ok_or_else(|| StorageError {
            op: "rename",
            location: tmp.display().to_string(),
            detail: "no replacement started".into(),
        })?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(io_err("rename onto", &self.path))?;
        // The old handle now points at the unlinked old log: never use it again.
        self.file = None;
        let reopened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_err("reopen", &self.path))?;
        self.file = Some(reopened);
        sync_parent(&self.path)
    }

    fn keep_aside(&mut self, seq: u64, bytes: &[u8]) -> Result<String, StorageError> {
        let base = with_suffix(&self.path, &format!(".bad-{seq}"));
        for n in 1..=MAX_ASIDE_NAMES {
            let p = if n == 1 {
                base.clone()
            } else {
                with_suffix(&base, &format!(".{n}"))
            };
            match OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(mut f) => {
                    f.write_all(bytes).map_err(io_err("write", &p))?;
                    f.sync_all().map_err(io_err("sync", &p))?;
                    sync_parent(&p)?;
                    return Ok(p.display().to_string());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A re-run of an interrupted repair finds its own copy; anything else
                    // there is kept and another name used.
                    if fs::read(&p).map_err(io_err("read", &p))? == bytes {
                        let f = File::open(&p).map_err(io_err("open", &p))?;
                        f.sync_all().map_err(io_err("sync", &p))?;
                        return Ok(p.display().to_string());
                    }
                }
                Err(e) => return Err(io_err("create", &p)(e)),
            }
        }
        Err(StorageError {
            op: "keep aside",
            location: base.display().to_string(),
            detail: format!("{MAX_ASIDE_NAMES} names already taken"),
        })
    }
}

impl Journal<FileStorage> {
    /// Opens the journal at `path` for writing and locks it against every other writer (in
    /// this and other processes) until the handle is dropped; creates an empty journal
    /// (atomically) if there is none. The reader opens its journal this way before it
    /// touches a card.
    ///
    /// Fails with [`JournalError::Locked`] if another writer holds it, and with
    /// [`JournalError::CorruptLastEntry`] (nothing changed) if the last entry is damaged.
    /// Truncates a torn tail (see [`Journal::torn_tail_bytes`]).
    pub fn open_locked(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let storage = FileStorage::open_writer(path)?;
        if storage.exists() {
            Journal::open_in(storage)
        } else {
            Journal::create_in(storage)
        }
    }

    /// The same as [`Journal::open_locked`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::open_locked(path)
    }

    /// Like [`Journal::open_locked`], but the journal must exist.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref();
        // Checked before the lock, so that no lock file is left beside a missing journal.
        fs::metadata(path).map_err(io_err("open", path))?;
        let storage = FileStorage::open_writer(path)?;
        if !storage.exists() {
            return Err(io_err("open", path)(io::ErrorKind::NotFound.into()).into());
        }
        Journal::open_in(storage)
    }

    /// Opens an existing journal without modifying anything and without the lock: a torn
    /// tail is reported, not truncated, and every write fails with [`JournalError::ReadOnly`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Journal::open_in_read_only(FileStorage::open_read_only(path)?)
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        self.storage().path()
    }
}

/// Checks the whole journal at `path` (header, every entry hash, sequence numbers, the
/// chain, the ack file) without modifying anything. A torn tail is not an error here; it is
/// reported in [`VerifyReport::torn_tail_bytes`] (callers that want a clean file must check
/// it), and so are lost-entry records ([`VerifyReport::lost_entries`]).
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, JournalError> {
    Journal::open_read_only(path).map(|j| j.report())
}

/// Repairs the journal at `path` as [`Journal::repair_in`] does (the damaged last entry is
/// kept in `PATH.bad-<seq>` and replaced by a lost-entry record), under the writers' lock.
/// See the module docs, *Recovery*.
pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport, JournalError> {
    let path = path.as_ref();
    fs::metadata(path).map_err(io_err("open", path))?;
    let storage = FileStorage::open_writer(path)?;
    Journal::repair_in(storage).map(|(_, report)| report)
}
