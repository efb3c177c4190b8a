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
        let meta = std::fs::metadata(&name).map_err(|e| short_io(&e))?;
        if meta.len() > MAX_SOURCE_FILE {
            return Err(alloc::format!("larger than {MAX_SOURCE_FILE} bytes"));
        }
        let text = std::fs::read_to_string(&name).map_err(|e| short_io(&e))?;
        Ok((name, text))
    }
}

#[cfg(feature = "std")]
fn short_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => String::from("not found"),
        std::io::ErrorKind::InvalidData => String::from("not UTF-8 text"),
        _ => alloc::format!("{e}"),
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
}
