//! `<data>/local.env`: KEY=value lines telling clients where the local system listens.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The env file of one local system.
pub struct LocalEnv {
    path: PathBuf,
}

impl LocalEnv {
    /// The file `local.env` inside `data`.
    pub fn new(data: &Path) -> Self {
        LocalEnv { path: data.join("local.env") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the variables atomically (temp file, fsync, rename).
    pub fn write(&self, vars: &[(String, String)]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("env.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for (k, v) in vars {
            writeln!(f, "{k}={v}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the file (the system is no longer running).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
