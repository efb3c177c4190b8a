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

/// A loader that reads files from the file system, relative to the including file,
/// confined to one directory tree: the *include root*.
///
/// An `.include` / `include` path must be relative; the file it names must lie under
/// the root both as written (`..` resolved lexically, before the file system is
/// touched) and after canonicalization (so a symlink cannot lead out). A refused path
/// is never opened, and the error names only the path as written and the root — never
/// anything read from the file. [`FsLoader::for_root_file`] chooses the root for the
/// file being assembled (see [`include_root`]).
///
/// It reads regular files only, at most [`MAX_SOURCE_FILE`] bytes (see
/// [`read_source_file`]): an `.include` of a FIFO or a device is an error, not a hang.
#[cfg(feature = "std")]
#[derive(Debug, Clone)]
pub struct FsLoader {
    /// The root as the paths are written (absolute, `..` resolved lexically).
    lexical: std::path::PathBuf,
    /// The root canonicalized.
    canonical: std::path::PathBuf,
}

/// Largest source file [`FsLoader`] reads.
#[cfg(feature = "std")]
pub const MAX_SOURCE_FILE: u64 = 8 << 20;

/// The directory whose tree the files included by the root file `path` must stay in:
/// the nearest of the root file's directory and that directory's parent that has a
/// `common` subdirectory, or else the root file's directory.
///
/// So `scripts/city0731-des3/load.cvs` may include `../common/ep_load.cvs` (the root
/// is `scripts/`, which holds `common/`), a file in `scripts/common/` may include its
/// neighbours (same root), and a file in a directory without such a layout may
/// include only files in its own directory and below. The parent is decided on the
/// canonical directory, which is what `..` resolves to.
#[cfg(feature = "std")]
pub fn include_root(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let dir = std::fs::canonicalize(parent_dir(path))?;
    let has_common = |d: &std::path::Path| d.join("common").is_dir();
    if has_common(&dir) {
        return Ok(dir);
    }
    match dir.parent() {
        Some(up) if has_common(up) => Ok(up.to_path_buf()),
        _ => Ok(dir),
    }
}

#[cfg(feature = "std")]
fn parent_dir(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    }
}

/// `path` made absolute (against the current directory) with `.` and `..` resolved
/// lexically.
#[cfg(feature = "std")]
fn lexical_absolute(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(feature = "std")]
impl FsLoader {
    /// A loader confined to the directory tree `root`.
    pub fn confined(root: &std::path::Path) -> std::io::Result<Self> {
        Ok(FsLoader {
            lexical: lexical_absolute(root)?,
            canonical: std::fs::canonicalize(root)?,
        })
    }

    /// The loader for the files included by the root file `path` (the file given on
    /// the command line): confined to [`include_root`]`(path)`.
    pub fn for_root_file(path: &std::path::Path) -> std::io::Result<Self> {
        let canonical = include_root(path)?;
        // The same directory as written: the file's directory, or its parent.
        let dir = lexical_absolute(parent_dir(path))?;
        let lexical = if canonical == std::fs::canonicalize(&dir)? {
            dir
        } else {
            dir.parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or(dir)
        };
        Ok(FsLoader { lexical, canonical })
    }

    /// The include root (canonical).
    pub fn root(&self) -> &std::path::Path {
        &self.canonical
    }

    fn outside(&self) -> String {
        alloc::format!(
            "outside the include root {} (includes stay in the directory of the file \
             being assembled, or its parent when that holds `common/`)",
            self.lexical.display()
        )
    }
}

#[cfg(feature = "std")]
impl SourceLoader for FsLoader {
    fn load(&mut self, path: &str, from: &str) -> Result<(String, String), String> {
        let written = std::path::Path::new(path);
        let rooted = matches!(
            written.components().next(),
            Some(std::path::Component::Prefix(_) | std::path::Component::RootDir)
        );
        if rooted || path.starts_with(['/', '\\']) || written.is_absolute() {
            return Err(String::from(
                "an absolute path; an include names a file relative to the including one",
            ));
        }
        let name = resolve_relative(path, from);
        let lexical =
            lexical_absolute(std::path::Path::new(&name)).map_err(|e| alloc::format!("{e}"))?;
        if !lexical.starts_with(&self.lexical) {
            return Err(self.outside());
        }
        let real = std::fs::canonicalize(&name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => String::from("not found"),
            _ => alloc::format!("{e}"),
        })?;
        if !real.starts_with(&self.canonical) {
            return Err(self.outside());
        }
        let text = read_source_file(&real, MAX_SOURCE_FILE).map_err(|e| alloc::format!("{e}"))?;
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
        let mut loader = FsLoader::confined(std::path::Path::new("/dev")).unwrap();
        assert_eq!(
            loader.load("zero", "/dev/main.casm"),
            Err(String::from("not a regular file (a device)"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(all(feature = "std", unix))]
    #[test]
    fn includes_stay_under_the_include_root() {
        use std::path::Path;
        let base =
            std::env::temp_dir().join(alloc::format!("cardvm-include-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let proj = base.join("proj");
        for d in ["proj/common", "proj/city", "proj/city/sub", "a/b"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        const SECRET: &str = "secret-line-7f3a";
        std::fs::write(base.join("secret.cvs"), alloc::format!("{SECRET}\n")).unwrap();
        std::fs::write(proj.join("common/purse.cvs"), "const A = 1\n").unwrap();
        std::fs::write(proj.join("city/sub/x.cvs"), "const B = 1\n").unwrap();
        std::os::unix::fs::symlink(base.join("secret.cvs"), proj.join("city/link.cvs")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", proj.join("city/zero.cvs")).unwrap();
        std::os::unix::fs::symlink(&base, proj.join("city/up")).unwrap();
        let main = proj.join("city/main.cvs");
        let from = main.to_str().unwrap();

        // The root: the nearest of the file's directory and its parent with `common/`.
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(include_root(&main).unwrap(), canon(&proj));
        assert_eq!(
            include_root(&proj.join("common/purse.cvs")).unwrap(),
            canon(&proj)
        );
        assert_eq!(
            include_root(&base.join("a/b/main.cvs")).unwrap(),
            canon(&base.join("a/b"))
        );

        let mut loader = FsLoader::for_root_file(&main).unwrap();
        assert_eq!(loader.root(), canon(&proj));
        // Inside the tree: the shared flows and subdirectories.
        let (name, text) = loader.load("../common/purse.cvs", from).unwrap();
        assert!(name.ends_with("proj/common/purse.cvs"), "{name}");
        assert_eq!(text, "const A = 1\n");
        assert!(loader.load("sub/x.cvs", from).is_ok());
        assert!(loader.load("./sub/../../common/purse.cvs", from).is_ok());
        assert_eq!(
            loader.load("missing.cvs", from),
            Err(String::from("not found"))
        );
        // Absolute paths, `..` past the root and symlinks out of it are refused, with
        // nothing of the file in the reason.
        for (path, why) in [
            ("/etc/passwd", "an absolute path"),
            ("../../../../etc/passwd", "outside the include root"),
            (
                "../../../../../../../../../../../../etc/passwd",
                "outside the include root",
            ),
            ("../../secret.cvs", "outside the include root"),
            ("link.cvs", "outside the include root"),
            ("up/secret.cvs", "outside the include root"),
            ("zero.cvs", "outside the include root"),
            ("/dev/zero", "an absolute path"),
        ] {
            let e = loader.load(path, from).unwrap_err();
            assert!(e.starts_with(why), "{path}: {e}");
            assert!(!e.contains(SECRET) && !e.contains("root:"), "{path}: {e}");
        }
        // A directory without the `scripts/` layout: its own tree only.
        let lone = base.join("a/b/main.cvs");
        let mut loader = FsLoader::for_root_file(&lone).unwrap();
        let e = loader
            .load("../../secret.cvs", lone.to_str().unwrap())
            .unwrap_err();
        assert!(e.starts_with("outside the include root"), "{e}");
        // Relative root file names work as well (the root follows the current directory).
        let mut loader =
            FsLoader::for_root_file(Path::new("scripts/city0731-des3/load.cvs")).unwrap();
        assert!(
            loader
                .load("../common/ep_load.cvs", "scripts/city0731-des3/load.cvs")
                .is_ok()
        );
        assert!(
            loader
                .load("../../Cargo.toml", "scripts/city0731-des3/load.cvs")
                .is_err()
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
