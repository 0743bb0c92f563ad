//! objectd's one configuration: defaults, then a TOML file, then environment variables and
//! flags (highest wins), validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ObjectdError;

/// Every setting of objectd. File keys use these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectdConfig {
    /// Metadata service endpoints (`host:port`). Required.
    pub meta: Vec<String>,
    /// S3 HTTP listen address. Default `127.0.0.1:7780`.
    pub listen: SocketAddr,
    /// HTTP listen address for `/metrics` and `/healthz`. Default `127.0.0.1:7781`.
    pub http_listen: SocketAddr,
    /// The region objectd answers GetBucketLocation with. Requests signed for any region are
    /// accepted (clients default to us-east-1). Default `us-east-1`.
    pub region: String,
    /// Base domains for virtual-hosted-style requests (`bucket.<domain>`). Path-style requests
    /// always work. Default `["localhost"]`.
    pub domain: Vec<String>,
    /// Objects are cut into chunks of this many bytes. Default 4 MiB (the pool's chunk size).
    pub chunk_size: usize,
    /// Objects up to this size are stored inline in the metadata service. Default 4096.
    pub inline_max: usize,
    /// Chunk puts in flight per request (upload pipeline depth). Default 4.
    pub put_depth: usize,
    /// Chunk reads ahead per GET. Default 4.
    pub get_depth: usize,
    /// Multipart uploads older than this many seconds are aborted. Default 604800 (7 days).
    pub mpu_expiry_secs: u64,
    /// Seconds between sweeps for abandoned multipart uploads (0: off). Default 3600.
    pub mpu_sweep_secs: u64,
    /// Log filter (`RUST_LOG` syntax). Default `info`.
    pub log: String,
    /// Cluster CA certificate (PEM) for mutual TLS to the metadata service and storage nodes.
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// An admin access key objectd keeps in the metadata service from its start on (made if
    /// missing, its secret brought in step if changed): how a Kubernetes Secret becomes the
    /// first S3 key. Set together with `admin_secret_access_key`, or neither.
    pub admin_access_key_id: Option<String>,
    /// That key's secret (never logged).
    pub admin_secret_access_key: Option<SecretString>,
}

/// A secret that prints as `<redacted>` in `Debug` output (and so in logs).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for ObjectdConfig {
    fn default() -> Self {
        ObjectdConfig {
            meta: Vec::new(),
            listen: "127.0.0.1:7780".parse().expect("default address"),
            http_listen: "127.0.0.1:7781".parse().expect("default address"),
            region: "us-east-1".into(),
            domain: vec!["localhost".into()],
            chunk_size: 4 << 20,
            inline_max: 4096,
            put_depth: 4,
            get_depth: 4,
            mpu_expiry_secs: 7 * 86_400,
            mpu_sweep_secs: 3600,
            log: "info".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            admin_access_key_id: None,
            admin_secret_access_key: None,
        }
    }
}

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObjectdArgs {
    /// TOML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "CAIRN_S3_CONFIG")]
    pub config: Option<PathBuf>,
    /// Metadata service endpoints, comma-separated.
    #[arg(long, env = "CAIRN_S3_META", value_delimiter = ',')]
    pub meta: Option<Vec<String>>,
    /// S3 HTTP listen address (host:port).
    #[arg(long, env = "CAIRN_S3_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// /metrics and /healthz listen address (host:port).
    #[arg(long, env = "CAIRN_S3_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Region reported by GetBucketLocation.
    #[arg(long, env = "CAIRN_S3_REGION")]
    pub region: Option<String>,
    /// Base domain for virtual-hosted-style requests (repeatable or comma-separated).
    #[arg(long, env = "CAIRN_S3_DOMAIN", value_delimiter = ',')]
    pub domain: Option<Vec<String>>,
    /// Chunk size in bytes.
    #[arg(long, env = "CAIRN_S3_CHUNK_SIZE")]
    pub chunk_size: Option<usize>,
    /// Largest object stored inline in the metadata service, in bytes.
    #[arg(long, env = "CAIRN_S3_INLINE_MAX")]
    pub inline_max: Option<usize>,
    /// Chunk puts in flight per upload.
    #[arg(long, env = "CAIRN_S3_PUT_DEPTH")]
    pub put_depth: Option<usize>,
    /// Chunk reads ahead per download.
    #[arg(long, env = "CAIRN_S3_GET_DEPTH")]
    pub get_depth: Option<usize>,
    /// Abort multipart uploads older than this many seconds.
    #[arg(long, env = "CAIRN_S3_MPU_EXPIRY_SECS")]
    pub mpu_expiry_secs: Option<u64>,
    /// Seconds between sweeps for abandoned multipart uploads (0: off).
    #[arg(long, env = "CAIRN_S3_MPU_SWEEP_SECS")]
    pub mpu_sweep_secs: Option<u64>,
    /// Log filter.
    #[arg(long, env = "CAIRN_S3_LOG")]
    pub log: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS.
    #[arg(long, env = "CAIRN_S3_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    #[arg(long, env = "CAIRN_S3_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long, env = "CAIRN_S3_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Admin access key id kept in the metadata service (with --admin-secret-access-key; best
    /// given through the environment, e.g. from a Kubernetes Secret).
    #[arg(long, env = "CAIRN_S3_ADMIN_ACCESS_KEY_ID")]
    pub admin_access_key_id: Option<String>,
    /// That admin key's secret.
    #[arg(long, env = "CAIRN_S3_ADMIN_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub admin_secret_access_key: Option<String>,
}

impl ObjectdConfig {
    /// Builds the configuration from defaults, the file named by `args.config`, then `args`.
    pub fn load(args: &ObjectdArgs) -> Result<Self, ObjectdError> {
        let mut c = match &args.config {
            Some(path) => daemon_kit::read_toml_file(path).map_err(ObjectdError::Config)?,
            None => ObjectdConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone(); } )* };
        }
        over!(meta, listen, http_listen, region, domain, chunk_size, inline_max, put_depth, get_depth);
        over!(mpu_expiry_secs, mpu_sweep_secs, log);
        if args.tls_ca.is_some() {
            c.tls_ca = args.tls_ca.clone();
        }
        if args.tls_cert.is_some() {
            c.tls_cert = args.tls_cert.clone();
        }
        if args.tls_key.is_some() {
            c.tls_key = args.tls_key.clone();
        }
        if args.admin_access_key_id.is_some() {
            c.admin_access_key_id = args.admin_access_key_id.clone();
        }
        if let Some(s) = &args.admin_secret_access_key {
            c.admin_secret_access_key = Some(SecretString(s.clone()));
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every setting; the error is one line.
    pub fn validate(&self) -> Result<(), ObjectdError> {
        let bad = |m: String| Err(ObjectdError::Config(m));
        if self.meta.iter().all(|m| m.trim().is_empty()) {
            return bad("meta: at least one metadata service endpoint is required (--meta host:port)".into());
        }
        if !(64 << 10..=64 << 20).contains(&self.chunk_size) {
            return bad(format!("chunk_size must be between 64 KiB and 64 MiB, got {}", self.chunk_size));
        }
        if self.inline_max > 64 << 10 {
            return bad(format!("inline_max must be at most 64 KiB, got {}", self.inline_max));
        }
        if self.put_depth == 0 || self.put_depth > 64 || self.get_depth == 0 || self.get_depth > 64 {
            return bad("put_depth and get_depth must be between 1 and 64".into());
        }
        if self.region.is_empty() {
            return bad("region must not be empty".into());
        }
        if self.domain.iter().any(|d| d.is_empty() || d.contains('/')) {
            return bad(format!("domain: not a host name in {:?}", self.domain));
        }
        if self.mpu_expiry_secs == 0 {
            return bad("mpu_expiry_secs must be at least 1".into());
        }
        match (&self.admin_access_key_id, &self.admin_secret_access_key) {
            (None, None) => {}
            (Some(id), Some(secret)) => {
                if !(3..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return bad("admin_access_key_id must be 3 to 128 letters and digits".into());
                }
                if !(8..=128).contains(&secret.0.len()) || secret.0.bytes().any(|b| !b.is_ascii_graphic()) {
                    return bad("admin_secret_access_key must be 8 to 128 printable characters without spaces".into());
                }
            }
            _ => return bad("admin_access_key_id and admin_secret_access_key go together".into()),
        }
        self.tls().validate().map_err(|e| ObjectdError::Config(e.to_string()))?;
        Ok(())
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
    fn requires_meta_and_sane_sizes() {
        let mut c = ObjectdConfig::default();
        assert!(c.validate().unwrap_err().to_string().contains("meta"));
        c.meta = vec!["127.0.0.1:7710".into()];
        c.validate().unwrap();
        c.chunk_size = 1000;
        assert!(c.validate().unwrap_err().to_string().contains("chunk_size"));
    }

    #[test]
    fn flags_override_defaults() {
        let args =
            ObjectdArgs { meta: Some(vec!["a:1".into()]), region: Some("eu-west-3".into()), ..Default::default() };
        let c = ObjectdConfig::load(&args).unwrap();
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.meta, vec!["a:1".to_string()]);
    }

    #[test]
    fn admin_key_goes_in_pairs_and_its_secret_is_never_printed() {
        let mut args = ObjectdArgs {
            meta: Some(vec!["a:1".into()]),
            admin_access_key_id: Some("CKADMIN".into()),
            ..Default::default()
        };
        assert!(ObjectdConfig::load(&args).unwrap_err().to_string().contains("go together"));
        args.admin_secret_access_key = Some("short".into());
        assert!(ObjectdConfig::load(&args).unwrap_err().to_string().contains("admin_secret_access_key"));
        args.admin_secret_access_key = Some("s3cr3t-value-long".into());
        let c = ObjectdConfig::load(&args).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        args.admin_access_key_id = Some("bad id".into());
        assert!(ObjectdConfig::load(&args).unwrap_err().to_string().contains("admin_access_key_id"));
    }
}
