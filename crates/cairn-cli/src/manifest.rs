//! File manifests: the ordered chunk hashes that make up a file stored with `cairn chunk put`.

use serde::{Deserialize, Serialize};

/// Manifest format version written by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// A file cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// File length in bytes.
    pub size: u64,
    /// Chunk length used (the last chunk may be shorter).
    pub chunk_size: u64,
    /// blake3 of the whole file, checked after `get`.
    pub blake3: String,
    /// Chunk hashes in file order.
    pub chunks: Vec<String>,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not a chunk manifest ({e})"))?;
        if m.version != MANIFEST_VERSION {
            anyhow::bail!("manifest version {} is not supported (this build reads {MANIFEST_VERSION})", m.version);
        }
        if m.chunk_size == 0 {
            anyhow::bail!("manifest has a chunk size of 0");
        }
        let expected = m.size.div_ceil(m.chunk_size);
        if m.chunks.len() as u64 != expected {
            anyhow::bail!("manifest lists {} chunks but a {}-byte file needs {expected}", m.chunks.len(), m.size);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_version_and_count() {
        let m = Manifest { version: 1, size: 10, chunk_size: 4, blake3: String::new(), chunks: vec!["a".into(); 3] };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        let bad = Manifest { chunks: vec!["a".into(); 2], ..m.clone() };
        assert!(Manifest::parse(&serde_json::to_string(&bad).unwrap()).is_err());
        let v2 = Manifest { version: 2, ..m };
        assert!(Manifest::parse(&serde_json::to_string(&v2).unwrap()).unwrap_err().to_string().contains("version 2"));
        assert!(Manifest::parse("{").is_err());
    }
}
