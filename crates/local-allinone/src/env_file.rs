//! `<data>/local.env`: KEY=value lines telling clients where the local system listens.

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

    /// Writes the variables atomically (temp file, fsync, rename, fsync the directory); 0600, as
    /// the file holds the first access key's secret.
    pub fn write(&self, vars: &[(String, String)]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        daemon_kit::write_file_atomic(&self.path, text.as_bytes(), 0o600)
    }

    /// Removes the file (the system is no longer running).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
