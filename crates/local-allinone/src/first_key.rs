//! The local system's first S3 access key: made once and kept in `<data>/s3/first-key.json`
//! (mode 0600; `daemon_kit::write_file_atomic`), registered in the metadata service at every start
//! (a no-op once it is there), and handed to clients through `local.env`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Format of `first-key.json`.
pub const FIRST_KEY_VERSION: u32 = 1;

/// The key's id and secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstKey {
    pub version: u32,
    pub id: String,
    pub secret: String,
}

/// Reads the key, or makes and stores one.
pub fn open_or_create(data: &Path) -> Result<FirstKey, String> {
    let dir = data.join("s3");
    let path = dir.join("first-key.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        // The version first, so a newer file is refused as newer even when its fields changed.
        #[derive(Deserialize)]
        struct VersionOnly {
            #[serde(default = "format_version::v1")]
            version: u32,
        }
        let unreadable = |e: serde_json::Error| format!("{}: {e}", path.display());
        let v: VersionOnly = serde_json::from_str(&text).map_err(unreadable)?;
        format_version::check(path.display(), v.version, FIRST_KEY_VERSION).map_err(|e| e.to_string())?;
        return serde_json::from_str(&text).map_err(unreadable);
    }
    let g = objectd::records::AccessKey::generate("local-admin", true, true);
    let k = FirstKey { version: FIRST_KEY_VERSION, id: g.id, secret: g.secret };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        daemon_kit::write_file_atomic(&path, serde_json::to_string(&k).expect("serializes").as_bytes(), 0o600)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(k)
}

/// Stores the key in the metadata service unless it is there.
pub async fn register(meta: &str, k: &FirstKey) -> Result<(), String> {
    let meta = metadata_client::MetaClient::new(&[meta]).map_err(|e| e.to_string())?;
    objectd::admin::sync_admin_key(&meta, &k.id, &k.secret, "local-admin").await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_read_back_and_a_newer_file_is_refused_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let made = open_or_create(tmp.path()).unwrap();
        let read = open_or_create(tmp.path()).unwrap();
        assert!(read == made, "the same key is read back");
        assert_eq!((read.version, read.id.len(), read.secret.len()), (FIRST_KEY_VERSION, 20, 40));
        let path = tmp.path().join("s3/first-key.json");
        let mut newer: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        newer["version"] = (FIRST_KEY_VERSION + 1).into();
        newer["kind"] = "scoped".into();
        std::fs::write(&path, serde_json::to_vec(&newer).unwrap()).unwrap();
        let e = open_or_create(tmp.path()).err().expect("refused");
        assert_eq!(e, format!("{} has format version 2; this build reads up to version 1", path.display()));
    }
}
