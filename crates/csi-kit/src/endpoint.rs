//! CSI endpoints: `unix:///path/csi.sock` (as the sidecars pass them) or a bare absolute path.

use std::path::PathBuf;

/// The socket path of a CSI endpoint; the error is one line naming `setting`.
pub fn socket_path(setting: &str, endpoint: &str) -> Result<PathBuf, String> {
    let path = match endpoint.strip_prefix("unix://") {
        Some(p) => p,
        None if endpoint.contains("://") => {
            return Err(format!("{setting} must be unix:///absolute/path, got {endpoint:?}"));
        }
        None => endpoint,
    };
    let path = PathBuf::from(path);
    daemon_kit::check_unix_path(setting, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_endpoints_and_bare_paths() {
        assert_eq!(socket_path("endpoint", "unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("endpoint", "/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        assert!(socket_path("endpoint", "tcp://127.0.0.1:1").unwrap_err().contains("endpoint"));
        assert!(socket_path("endpoint", "unix://relative.sock").is_err());
        assert!(socket_path("endpoint", &format!("/{}", "x".repeat(200))).is_err());
    }
}
