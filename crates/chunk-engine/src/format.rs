//! The data directory's `FORMAT` file: format version and the settings pinned at format time.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ChunkError;
use crate::fsutil::durable_write;

/// Version of the on-disk layout (FORMAT file, segment files, records, index entries).
pub const FORMAT_VERSION: u32 = 1;

/// The only hash this version writes.
pub const HASH_NAME: &str = "blake3";

/// Settings fixed when a data directory is formatted; a later start with others is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedSettings {
    /// On-disk format version.
    pub format_version: u32,
    /// Hash function naming chunks.
    pub hash: String,
    /// Largest chunk accepted, in bytes.
    pub max_chunk_size: u32,
}

impl PinnedSettings {
    /// The settings this build writes for a given maximum chunk size.
    pub fn current(max_chunk_size: u32) -> Self {
        PinnedSettings { format_version: FORMAT_VERSION, hash: HASH_NAME.to_string(), max_chunk_size }
    }
}

/// Formats `dir` with `want` if it has no FORMAT file yet, else checks that it matches.
pub(crate) fn format_or_check(dir: &Path, want: &PinnedSettings) -> Result<(), ChunkError> {
    let path = dir.join("FORMAT");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let have: PinnedSettings = serde_json::from_slice(&bytes).map_err(|e| {
                ChunkError::FormatMismatch(format!("{} is unreadable ({e}); refusing to start", path.display()))
            })?;
            // Written by a newer release: say so in the one line every format uses.
            format_version::check(
                format!("chunk data directory {}", dir.display()),
                have.format_version,
                FORMAT_VERSION,
            )
            .map_err(|e| ChunkError::FormatMismatch(format!("{e}; refusing to start")))?;
            let mut diffs = Vec::new();
            if have.hash != want.hash {
                diffs.push(format!("hash {} on disk vs {} configured", have.hash, want.hash));
            }
            if have.max_chunk_size != want.max_chunk_size {
                diffs.push(format!(
                    "max_chunk_size {} on disk vs {} configured",
                    have.max_chunk_size, want.max_chunk_size
                ));
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(ChunkError::FormatMismatch(format!(
                    "data directory {} was formatted with other settings: {}; refusing to start",
                    dir.display(),
                    diffs.join(", ")
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = serde_json::to_vec_pretty(want).expect("settings serialize");
            durable_write(&path, &bytes)
        }
        Err(e) => Err(ChunkError::io(format!("read {}", path.display()), e)),
    }
}
