//! A data directory's `FORMAT` file (`{"format_version": N}`, JSON): written durably on first
//! start (temp file, fsync, rename, fsync dir); a directory that holds data but no `FORMAT`
//! file was written before versions were and counts as version 1; a newer version is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NewerFormat;

/// The file's name inside the data directory.
pub const FORMAT_FILE: &str = "FORMAT";

/// What the `FORMAT` file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatFile {
    /// Version of the directory's layout and of everything in it.
    pub format_version: u32,
}

/// Why a data directory's format cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatFileError {
    /// Written by a newer release.
    #[error(transparent)]
    Newer(#[from] NewerFormat),
    /// The `FORMAT` file is not what any release writes.
    #[error("{} is unreadable ({why}); refusing to start", path.display())]
    Unreadable { path: PathBuf, why: String },
    /// Reading or writing it failed.
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Checks the `FORMAT` file of the data directory `dir` (described as `what`, e.g. "metadata
/// data directory") against `current`, the newest version this build reads and writes; writes
/// one holding `current` when the directory is new, and one holding 1 when it holds data
/// (anything but `FORMAT` itself) from before versions were. Returns the directory's version.
pub fn open_or_init(dir: &Path, what: &str, current: u32) -> Result<u32, FormatFileError> {
    let path = dir.join(FORMAT_FILE);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FormatFileError::Io { what, path, source }
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let f: FormatFile = serde_json::from_slice(&bytes)
                .map_err(|e| FormatFileError::Unreadable { path: path.clone(), why: e.to_string() })?;
            Ok(crate::check(format!("{what} {}", dir.display()), f.format_version, current)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            let has_data = std::fs::read_dir(dir).map_err(io("list", dir))?.next().is_some();
            let version = if has_data { 1 } else { current };
            write_durably(&path, &FormatFile { format_version: version })?;
            Ok(version)
        }
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Temp file, fsync, rename, fsync the directory.
fn write_durably(path: &Path, f: &FormatFile) -> Result<(), FormatFileError> {
    let io = |what: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| FormatFileError::Io { what, path, source }
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(f).expect("a FormatFile serializes");
    let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&bytes).and_then(|_| file.write_all(b"\n")).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_gets_the_current_version_and_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("meta");
        assert_eq!(open_or_init(&dir, "metadata data directory", 2).unwrap(), 2);
        let f: FormatFile = serde_json::from_slice(&std::fs::read(dir.join(FORMAT_FILE)).unwrap()).unwrap();
        assert_eq!(f, FormatFile { format_version: 2 });
        assert_eq!(open_or_init(&dir, "metadata data directory", 2).unwrap(), 2);
        assert!(!dir.join("FORMAT.tmp").exists());
    }

    #[test]
    fn a_directory_with_data_and_no_format_file_is_version_1() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("state")).unwrap();
        assert_eq!(open_or_init(d.path(), "metadata data directory", 2).unwrap(), 1);
        assert_eq!(open_or_init(d.path(), "metadata data directory", 2).unwrap(), 1, "pinned at 1");
    }

    #[test]
    fn a_newer_directory_is_refused_in_one_line_naming_both_versions() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FORMAT_FILE), br#"{"format_version": 3}"#).unwrap();
        let e = open_or_init(d.path(), "metadata data directory", 2).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "metadata data directory {} has format version 3; this build reads up to version 2",
                d.path().display()
            )
        );
        std::fs::write(d.path().join(FORMAT_FILE), b"garbage").unwrap();
        let e = open_or_init(d.path(), "metadata data directory", 2).unwrap_err().to_string();
        assert!(e.contains("unreadable") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn the_format_file_round_trips() {
        for v in [1, 2, u32::MAX] {
            let f = FormatFile { format_version: v };
            let back: FormatFile = serde_json::from_slice(&serde_json::to_vec(&f).unwrap()).unwrap();
            assert_eq!(back, f);
        }
    }
}
