//! csi-block's one configuration: defaults, then a TOML file, then environment variables and
//! flags (highest wins), validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every setting of csi-block. File keys use these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CsiBlockConfig {
    /// The CSI socket: `unix:///path/csi.sock` (or an absolute path). Default
    /// `unix:///run/cairn/csi-block.sock`.
    pub endpoint: String,
    /// Metadata service endpoints (`host:port`). Required.
    pub meta: Vec<String>,
    /// Serve the Controller service (one instance per cluster, beside the upstream sidecars).
    /// Default true.
    pub controller: bool,
    /// Serve the Node service as this node id (the Kubernetes node name); unset: no Node service.
    pub node_id: Option<String>,
    /// The driver name a StorageClass's `provisioner` names. Default `block.csi.cairn.io`.
    pub driver_name: String,
    /// Node service: where attached volumes' FUSE mounts live. Default `/var/lib/cairn/csi-block`.
    pub state_dir: PathBuf,
    /// Replicas of a volume whose StorageClass does not say (`replicas`). Default 3.
    pub default_replicas: u32,
    /// Node service: also export every staged volume over NBD, on the unix socket
    /// `<state_dir>/volumes/<id>/nbd.sock` (for qemu, or `nbd-client` where the nbd module is).
    /// Default false.
    pub nbd_export: bool,
    /// Node service: memory each attached volume's data path keeps for chunks read or flushed
    /// recently, in MiB (0: no read cache). Default 64.
    pub read_cache_mib: u64,
    /// HTTP listen address for `/metrics` and `/healthz`. Default `127.0.0.1:7790`.
    pub http_listen: SocketAddr,
    /// Log filter (`RUST_LOG` syntax). Default `info`.
    pub log: String,
    /// Cluster CA certificate (PEM) for mutual TLS to the metadata service and storage nodes.
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    pub tls_key: Option<PathBuf>,
}

/// The largest read cache a volume's data path may keep (MiB).
pub const MAX_READ_CACHE_MIB: u64 = 64 << 10;

impl Default for CsiBlockConfig {
    fn default() -> Self {
        CsiBlockConfig {
            endpoint: "unix:///run/cairn/csi-block.sock".into(),
            meta: Vec::new(),
            controller: true,
            node_id: None,
            driver_name: "block.csi.cairn.io".into(),
            state_dir: PathBuf::from("/var/lib/cairn/csi-block"),
            default_replicas: 3,
            nbd_export: false,
            read_cache_mib: 64,
            http_listen: "127.0.0.1:7790".parse().expect("default address"),
            log: "info".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CsiBlockArgs {
    /// TOML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "CAIRN_CSI_BLOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// CSI socket (unix:///path/csi.sock).
    #[arg(long, env = "CSI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Metadata service endpoints, comma-separated.
    #[arg(long, env = "CAIRN_CSI_BLOCK_META", value_delimiter = ',')]
    pub meta: Option<Vec<String>>,
    /// Serve the Controller service (true or false).
    #[arg(long, env = "CAIRN_CSI_BLOCK_CONTROLLER")]
    pub controller: Option<bool>,
    /// Serve the Node service as this node id.
    #[arg(long, env = "CAIRN_CSI_BLOCK_NODE_ID")]
    pub node_id: Option<String>,
    /// Driver name.
    #[arg(long, env = "CAIRN_CSI_BLOCK_DRIVER_NAME")]
    pub driver_name: Option<String>,
    /// Node service state directory (FUSE mounts of attached volumes).
    #[arg(long, env = "CAIRN_CSI_BLOCK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Replicas of a volume whose StorageClass does not say.
    #[arg(long, env = "CAIRN_CSI_BLOCK_DEFAULT_REPLICAS")]
    pub default_replicas: Option<u32>,
    /// Also export staged volumes over NBD (true or false).
    #[arg(long, env = "CAIRN_CSI_BLOCK_NBD_EXPORT")]
    pub nbd_export: Option<bool>,
    /// MiB of read cache per attached volume (0: none).
    #[arg(long, env = "CAIRN_CSI_BLOCK_READ_CACHE_MIB")]
    pub read_cache_mib: Option<u64>,
    /// /metrics and /healthz listen address (host:port).
    #[arg(long, env = "CAIRN_CSI_BLOCK_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Log filter.
    #[arg(long, env = "CAIRN_CSI_BLOCK_LOG")]
    pub log: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS.
    #[arg(long, env = "CAIRN_CSI_BLOCK_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    #[arg(long, env = "CAIRN_CSI_BLOCK_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long, env = "CAIRN_CSI_BLOCK_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl CsiBlockConfig {
    /// Builds the configuration from defaults, the file named by `args.config`, then `args`.
    pub fn load(args: &CsiBlockArgs) -> Result<Self, String> {
        let mut c = match &args.config {
            Some(path) => daemon_kit::read_toml_file(path)?,
            None => CsiBlockConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone(); } )* };
        }
        over!(endpoint, meta, controller, driver_name, state_dir, default_replicas, nbd_export, read_cache_mib, http_listen, log);
        if args.node_id.is_some() {
            c.node_id = args.node_id.clone();
        }
        if args.tls_ca.is_some() {
            c.tls_ca = args.tls_ca.clone();
        }
        if args.tls_cert.is_some() {
            c.tls_cert = args.tls_cert.clone();
        }
        if args.tls_key.is_some() {
            c.tls_key = args.tls_key.clone();
        }
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
            crate::records::check_node_id(n)?;
        }
        if !self.state_dir.is_absolute() {
            return Err(format!("state_dir must be an absolute path, got {}", self.state_dir.display()));
        }
        if !valid_driver_name(&self.driver_name) {
            return Err(format!(
                "driver_name must be a domain name of at most 63 characters (like block.csi.cairn.io), got {:?}",
                self.driver_name
            ));
        }
        if !(1..=crate::params::MAX_REPLICAS).contains(&self.default_replicas) {
            return Err(format!(
                "default_replicas must be between 1 and {}, got {}",
                crate::params::MAX_REPLICAS,
                self.default_replicas
            ));
        }
        if self.read_cache_mib > MAX_READ_CACHE_MIB {
            return Err(format!(
                "read_cache_mib must be at most {MAX_READ_CACHE_MIB} (MiB per attached volume), got {}",
                self.read_cache_mib
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

/// CSI driver names: at most 63 characters, alphanumerics, `-` and `.`, starting and ending
/// with an alphanumeric (the spec's rule).
fn valid_driver_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_what_it_serves() {
        let mut c = CsiBlockConfig::default();
        assert!(c.validate().unwrap_err().contains("meta"));
        c.meta = vec!["127.0.0.1:7710".into()];
        c.validate().unwrap();
        c.controller = false;
        assert!(c.validate().unwrap_err().contains("nothing to serve"));
        c.node_id = Some("worker-1".into());
        c.validate().unwrap();
        c.node_id = Some("bad/node".into());
        assert!(c.validate().is_err());
        c.node_id = Some("worker-1".into());
        c.endpoint = "tcp://0.0.0.0:1".into();
        assert!(c.validate().unwrap_err().contains("endpoint"));
        c.endpoint = "unix:///tmp/csi.sock".into();
        c.driver_name = "-bad".into();
        assert!(c.validate().unwrap_err().contains("driver_name"));
        c.driver_name = "block.csi.cairn.io".into();
        c.default_replicas = 0;
        assert!(c.validate().unwrap_err().contains("default_replicas"));
    }

    #[test]
    fn flags_override_defaults() {
        let args = CsiBlockArgs {
            meta: Some(vec!["a:1".into()]),
            node_id: Some("n1".into()),
            controller: Some(false),
            ..Default::default()
        };
        let c = CsiBlockConfig::load(&args).unwrap();
        assert_eq!((c.node_id.as_deref(), c.controller), (Some("n1"), false));
        assert_eq!(c.socket(), PathBuf::from("/run/cairn/csi-block.sock"));
    }
}
