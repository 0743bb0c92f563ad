//! File manifests: the ordered chunk hashes that make up a file stored with `cairn chunk put`,
//! and (from version 2) the unique id naming the pool references that keep those chunks.

use serde::{Deserialize, Serialize};

/// Manifest format version written by this build. Version 1 (no `id`) is still read.
pub const MANIFEST_VERSION: u32 = 2;

/// A file cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Unique id of this put (version 2 on): the pool references of its chunks are owned by
    /// [`Manifest::owner`]. Absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
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
    /// A fresh random manifest id (32 hex digits).
    pub fn new_id() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// The reference owner naming this manifest's chunks in the pool (`cli:<id>`); `None` for a
    /// version-1 manifest, which has no references.
    pub fn owner(&self) -> Option<String> {
        self.id.as_ref().map(|id| format!("cli:{id}"))
    }

    /// The manifest as written to disk (pretty JSON and a newline).
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serializes") + "\n"
    }

    /// Parses and checks a manifest of any version this build reads.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not a chunk manifest ({e})"))?;
        match (m.version, &m.id) {
            (1, None) => {}
            (1, Some(_)) => anyhow::bail!("version-1 manifest carries an id (only version 2 has one)"),
            (2, Some(id)) if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) => {}
            (2, _) => anyhow::bail!("version-2 manifest needs an id of hex digits"),
            (v, _) => {
                anyhow::bail!("manifest version {v} is not supported (this build reads 1 to {MANIFEST_VERSION})")
            }
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

    fn v2() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            id: Some(Manifest::new_id()),
            size: 10,
            chunk_size: 4,
            blake3: "ab".into(),
            chunks: vec!["a".into(); 3],
        }
    }

    #[test]
    fn round_trips_through_the_text_put_writes() {
        let m = v2();
        let back = Manifest::parse(&m.to_text()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.owner().unwrap(), format!("cli:{}", m.id.as_ref().unwrap()));
        assert_eq!(m.id.as_ref().unwrap().len(), 32);
        assert_ne!(Manifest::new_id(), Manifest::new_id());
    }

    #[test]
    fn reads_version_1_as_earlier_releases_wrote_it() {
        let text = r#"{
  "version": 1,
  "size": 10,
  "chunk_size": 4,
  "blake3": "ab",
  "chunks": ["a", "b", "c"]
}
"#;
        let m = Manifest::parse(text).unwrap();
        assert_eq!((m.version, m.id.as_deref(), m.size, m.chunks.len()), (1, None, 10, 3));
        assert_eq!(m.owner(), None);
    }

    #[test]
    fn parse_checks_version_id_and_count() {
        let m = v2();
        let bad = Manifest { chunks: vec!["a".into(); 2], ..m.clone() };
        assert!(Manifest::parse(&bad.to_text()).unwrap_err().to_string().contains("needs 3"));
        let v3 = Manifest { version: 3, ..m.clone() };
        assert!(Manifest::parse(&v3.to_text()).unwrap_err().to_string().contains("version 3"));
        let no_id = Manifest { id: None, ..m.clone() };
        assert!(Manifest::parse(&no_id.to_text()).unwrap_err().to_string().contains("needs an id"));
        let odd_id = Manifest { id: Some("../x".into()), ..m.clone() };
        assert!(Manifest::parse(&odd_id.to_text()).is_err());
        let v1_with_id = Manifest { version: 1, ..m };
        assert!(Manifest::parse(&v1_with_id.to_text()).is_err());
        assert!(Manifest::parse("{").unwrap_err().to_string().starts_with("not a chunk manifest"));
    }
}
