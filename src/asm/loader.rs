//! Where `.include`d sources come from.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// Resolves and reads the files named by `.include`.
pub trait SourceLoader {
    /// Loads the file that `path` names, as written in an `.include` inside the file
    /// called `from` (relative paths are relative to `from`'s directory).
    ///
    /// Returns the resolved name — used in diagnostics, debug info and to detect
    /// include cycles, so one file must always resolve to the same name — and the text.
    /// On failure, returns a short reason (e.g. "not found").
    fn load(&mut self, path: &str, from: &str) -> Result<(String, String), String>;
}

/// Joins `path` to the directory of `from` and normalizes `.` and `..` lexically.
pub fn resolve_relative(path: &str, from: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    if !absolute {
        if let Some(dir) = from.rfind('/').map(|i| &from[..i]) {
            if from.starts_with('/') {
                parts.push("");
            }
            parts.extend(dir.split('/').filter(|p| !p.is_empty()));
        }
    } else {
        parts.push("");
    }
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| !l.is_empty() && *l != "..") => {
                parts.pop();
            }
            ".." if parts.last() == Some(&"") => {}
            p => parts.push(p),
        }
    }
    if parts.as_slice() == [""] {
        return String::from("/");
    }
    parts.join("/")
}

/// A loader over an in-memory map from resolved names to texts (no_std, tests).
#[derive(Debug, Clone, Default)]
pub struct MapLoader {
    files: BTreeMap<String, String>,
}

impl MapLoader {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file `name`.
    pub fn insert(&mut self, name: impl Into<String>, text: impl Into<String>) -> &mut Self {
        self.files.insert(name.into(), text.into());
        self
    }

    /// The text of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.files.get(name).map(String::as_str)
    }
}

impl SourceLoader for MapLoader {
    fn load(&mut self, path: &str, from: &str) -> Result<(String, String), String> {
        let name = resolve_relative(path, from);
        match self.files.get(&name) {
            Some(text) => Ok((name, text.clone())),
            None => Err(String::from("not found")),
        }
    }
}

/// A loader that reads files from the file system, relative to the including file.
///
/// It reads regular files only, at most [`MAX_SOURCE_FILE`] bytes (see
/// [`read_source_file`]): an `.include` of a FIFO or a device is an error, not a hang.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, Default)]
pub struct FsLoader;

/// Largest source file [`FsLoader`] reads.
#[cfg(feature = "std")]
pub const MAX_SOURCE_FILE: u64 = 8 << 20;

#[cfg(feature = "std")]
impl SourceLoader for FsLoader {
    fn load(&mut self, path: &str, from: &str) -> Result<(String, String), String> {
        let name = resolve_relative(path, from);
        let text = read_source_file(std::path::Path::new(&name), MAX_SOURCE_FILE)
            .map_err(|e| alloc::format!("{e}"))?;
        Ok((name, text))
    }
}

/// Why [`read_source_file`] refused or failed to read a file.
#[cfg(feature = "std")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceFileError {
    /// The path is not a regular file (or a symlink to one): a FIFO would block, a
    /// device may never end. It is not opened.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// The file is larger than the limit.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// The file does not exist.
    #[error("not found")]
    NotFound,
    /// Another I/O error.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Reads the source file at `path` as text: a regular file (symlinks to regular files
/// are followed), at most `limit` bytes, UTF-8.
///
/// The type is checked before opening (opening a FIFO blocks until a writer comes) and
/// again on the open handle; the read itself is bounded to `limit + 1` bytes, so a file
/// that grows, or a path swapped for a device, cannot make it read without end.
#[cfg(feature = "std")]
pub fn read_source_file(path: &std::path::Path, limit: u64) -> Result<String, SourceFileError> {
    use std::io::Read;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => SourceFileError::NotFound,
        _ => SourceFileError::Io(e),
    };
    let regular = |meta: &std::fs::Metadata| -> Result<(), SourceFileError> {
        if !meta.is_file() {
            return Err(SourceFileError::NotRegular(file_kind(&meta.file_type())));
        }
        if meta.len() > limit {
            return Err(SourceFileError::TooLarge { limit });
        }
        Ok(())
    };
    regular(&std::fs::metadata(path).map_err(io)?)?;
    let file = std::fs::File::open(path).map_err(io)?;
    regular(&file.metadata().map_err(io)?)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(SourceFileError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| SourceFileError::NotUtf8)
}

#[cfg(feature = "std")]
fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(resolve_relative("b.casm", "dir/a.casm"), "dir/b.casm");
        assert_eq!(resolve_relative("b.casm", "a.casm"), "b.casm");
        assert_eq!(resolve_relative("../b.casm", "x/y/a.casm"), "x/b.casm");
        assert_eq!(resolve_relative("./c/b.casm", "/x/a.casm"), "/x/c/b.casm");
        assert_eq!(resolve_relative("/abs/b.casm", "x/a.casm"), "/abs/b.casm");
        assert_eq!(resolve_relative("../../b", "/a"), "/b");
        assert_eq!(resolve_relative("../b", "a"), "../b");
    }

    #[test]
    fn map_loader() {
        let mut m = MapLoader::new();
        m.insert("lib/common.casm", "nop");
        assert_eq!(
            m.load("common.casm", "lib/main.casm"),
            Ok(("lib/common.casm".into(), "nop".into()))
        );
        assert_eq!(m.load("x.casm", "main.casm"), Err("not found".into()));
    }

    #[cfg(all(feature = "std", unix))]
    #[test]
    fn source_files_are_bounded_regular_files() {
        let dev = std::path::Path::new("/dev/zero");
        assert!(matches!(
            read_source_file(dev, 1 << 20),
            Err(SourceFileError::NotRegular("a device"))
        ));
        assert!(matches!(
            read_source_file(std::path::Path::new("/"), 1 << 20),
            Err(SourceFileError::NotRegular("a directory"))
        ));
        let dir = std::env::temp_dir().join(alloc::format!("cardvm-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.casm");
        std::fs::write(&big, "nop\n".repeat(300)).unwrap();
        assert!(matches!(
            read_source_file(&big, 1000),
            Err(SourceFileError::TooLarge { limit: 1000 })
        ));
        assert_eq!(read_source_file(&big, 1200).unwrap().len(), 1200);
        let bin = dir.join("bin.casm");
        std::fs::write(&bin, [0xFFu8, 0xFE]).unwrap();
        assert!(matches!(
            read_source_file(&bin, 100),
            Err(SourceFileError::NotUtf8)
        ));
        // An include of a device is an assembly error, not an endless read.
        assert_eq!(
            FsLoader.load("/dev/zero", "main.casm"),
            Err(String::from("not a regular file (a device)"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
