//! The local system's first S3 access key: made once and kept in `<data>/s3/first-key.json`
//! (mode 0600; `daemon_kit::write_file_atomic`), registered in the metadata service at every start
//! (a no-op once it is there), and handed to clients through `local.env`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The key's id and secret.
#[derive(Clone, Serialize, Deserialize)]
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
        let k: FirstKey = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if k.version != 1 {
            return Err(format!("{}: format version {} (this build reads 1)", path.display(), k.version));
        }
        return Ok(k);
    }
    let g = objectd::records::AccessKey::generate("local-admin", true, true);
    let k = FirstKey { version: 1, id: g.id, secret: g.secret };
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
