//! csi-fs's one configuration: defaults, then a TOML file, then environment variables and flags
//! (highest wins), validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every setting of csi-fs. File keys use these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsiFsConfig {
    /// The CSI socket: `unix:///path/csi.sock` (or an absolute path). Default
    /// `unix:///run/cairn/csi-fs.sock`.
    pub endpoint: String,
    /// Metadata service endpoints (`host:port`). Required.
    pub meta: Vec<String>,
    /// Serve the Controller service (one instance per cluster, beside the upstream sidecars).
    /// Default true.
    pub controller: bool,
    /// Serve the Node service as this node id (the Kubernetes node name); unset: no Node service.
    pub node_id: Option<String>,
    /// The driver name a StorageClass's `provisioner` names. Default `fs.csi.cairn.io`.
    pub driver_name: String,
    /// Node service: where staged volumes' FUSE mounts and their state live. Default
    /// `/var/lib/cairn/csi-fs`.
    pub state_dir: PathBuf,
    /// HTTP listen address for `/metrics` and `/healthz`. Default `127.0.0.1:7791`.
    pub http_listen: SocketAddr,
    /// Node service: MiB of memory each staged volume's mount process keeps for file blocks
    /// read or written recently, shared by its files (0: none). Default 64.
    pub read_cache_mib: u64,
    /// Log filter (`RUST_LOG` syntax). Default `info`.
    pub log: String,
    /// Cluster CA certificate (PEM) for mutual TLS to the metadata service and storage nodes.
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Default for CsiFsConfig {
    fn default() -> Self {
        CsiFsConfig {
            endpoint: "unix:///run/cairn/csi-fs.sock".into(),
            meta: Vec::new(),
            controller: true,
            node_id: None,
            driver_name: "fs.csi.cairn.io".into(),
            state_dir: PathBuf::from("/var/lib/cairn/csi-fs"),
            http_listen: "127.0.0.1:7791".parse().expect("default address"),
            read_cache_mib: 64,
            log: "info".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The largest read cache per staged volume, in MiB (64 GiB).
pub const MAX_READ_CACHE_MIB: u64 = 64 << 10;

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CsiFsArgs {
    /// TOML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "CAIRN_CSI_FS_CONFIG")]
    pub config: Option<PathBuf>,
    /// CSI socket (unix:///path/csi.sock).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Metadata service endpoints, comma-separated.
    #[arg(long, env = "CAIRN_CSI_FS_META", value_delimiter = ',')]
    pub meta: Option<Vec<String>>,
    /// Serve the Controller service (true or false).
    #[arg(long, env = "CAIRN_CSI_FS_CONTROLLER")]
    pub controller: Option<bool>,
    /// Serve the Node service as this node id.
    #[arg(long, env = "CAIRN_CSI_FS_NODE_ID")]
    pub node_id: Option<String>,
    /// Driver name.
    #[arg(long, env = "CAIRN_CSI_FS_DRIVER_NAME")]
    pub driver_name: Option<String>,
    /// Node service state directory (FUSE mounts of staged volumes).
    #[arg(long, env = "CAIRN_CSI_FS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// /metrics and /healthz listen address (host:port).
    #[arg(long, env = "CAIRN_CSI_FS_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// MiB of read cache per staged volume (0: none).
    #[arg(long, env = "CAIRN_CSI_FS_READ_CACHE_MIB")]
    pub read_cache_mib: Option<u64>,
    /// Log filter.
    #[arg(long, env = "CAIRN_CSI_FS_LOG")]
    pub log: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS.
    #[arg(long, env = "CAIRN_CSI_FS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    #[arg(long, env = "CAIRN_CSI_FS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long, env = "CAIRN_CSI_FS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl CsiFsConfig {
    /// Builds the configuration from defaults, the file named by `args.config`, then `args`.
    pub fn load(args: &CsiFsArgs) -> Result<Self, String> {
        let mut c = match &args.config {
            Some(path) => daemon_kit::read_toml_file(path)?,
            None => CsiFsConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone(); } )* };
        }
        over!(endpoint, meta, controller, driver_name, state_dir, http_listen, read_cache_mib, log);
        macro_rules! over_opt {
            ($($f:ident),*) => { $( if args.$f.is_some() { c.$f = args.$f.clone(); } )* };
        }
        over_opt!(node_id, tls_ca, tls_cert, tls_key);
        c.validate()?;
        Ok(c)
    }

    /// Checks every setting; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        csi_kit::socket_path("endpoint", &self.endpoint)?;
        if self.meta.iter().all(|m| m.trim().is_empty()) {
            return Err("meta: at least one metadata service endpoint is required (--meta host:port)".into());
        }
        if !self.controller && self.node_id.is_none() {
            return Err("nothing to serve: enable the controller (--controller true) or give a --node-id".into());
        }
        if let Some(n) = &self.node_id {
            csi_kit::records::check_node_id(n)?;
        }
        if !self.state_dir.is_absolute() {
            return Err(format!("state_dir must be an absolute path, got {}", self.state_dir.display()));
        }
        if self.state_dir.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!("state_dir must not contain '..', got {}", self.state_dir.display()));
        }
        if self.read_cache_mib > MAX_READ_CACHE_MIB {
            return Err(format!(
                "read_cache_mib must be at most {MAX_READ_CACHE_MIB} (MiB per staged volume), got {}",
                self.read_cache_mib
            ));
        }
        if !csi_kit::records::valid_driver_name(&self.driver_name) {
            return Err(format!(
                "driver_name must be a domain name of at most 63 characters (like fs.csi.cairn.io), got {:?}",
                self.driver_name
            ));
        }
        self.tls().validate().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The CSI socket's path.
    pub fn socket(&self) -> PathBuf {
        csi_kit::socket_path("endpoint", &self.endpoint).expect("validated endpoint")
    }

    /// The mutual-TLS files (all unset: plaintext).
    pub fn tls(&self) -> mtls::TlsFiles {
        mtls::TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_what_it_serves() {
        let mut c = CsiFsConfig::default();
        assert!(c.validate().unwrap_err().contains("meta"));
        c.meta = vec!["127.0.0.1:7710".into()];
        c.validate().unwrap();
        c.controller = false;
        assert!(c.validate().unwrap_err().contains("nothing to serve"));
        c.node_id = Some("worker-1".into());
        c.validate().unwrap();
        c.node_id = Some("bad/node".into());
        assert!(c.validate().unwrap_err().contains("node id"));
        c.node_id = Some("worker-1".into());
        c.endpoint = "tcp://0.0.0.0:1".into();
        assert!(c.validate().unwrap_err().contains("endpoint"));
        c.endpoint = "unix:///tmp/csi.sock".into();
        c.driver_name = "-bad".into();
        assert!(c.validate().unwrap_err().contains("driver_name"));
        c.driver_name = "fs.csi.cairn.io".into();
        c.state_dir = PathBuf::from("relative");
        assert!(c.validate().unwrap_err().contains("state_dir"));
        c.state_dir = PathBuf::from("/var/../etc");
        assert!(c.validate().unwrap_err().contains("state_dir"));
        c.state_dir = PathBuf::from("/var/lib/x");
        c.tls_ca = Some("/ca.pem".into());
        assert!(c.validate().is_err(), "a CA without a certificate and key");
        let e = CsiFsConfig::default().validate().unwrap_err();
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn flags_override_defaults() {
        let args = CsiFsArgs {
            meta: Some(vec!["a:1".into()]),
            node_id: Some("n1".into()),
            controller: Some(false),
            ..Default::default()
        };
        let c = CsiFsConfig::load(&args).unwrap();
        assert_eq!((c.node_id.as_deref(), c.controller), (Some("n1"), false));
        assert_eq!(c.socket(), PathBuf::from("/run/cairn/csi-fs.sock"));
        assert_eq!(c.driver_name, "fs.csi.cairn.io");
    }
}
