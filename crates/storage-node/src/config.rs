//! The storage node's one configuration: defaults, then a TOML file, then environment
//! variables and flags (highest wins), validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use chunk_engine::{DEFAULT_MAX_CHUNK_SIZE, EngineConfig};
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// Every setting of a storage node. File keys use these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Data directory (FORMAT, index/, segments/). Default `./data/node`.
    pub data_dir: PathBuf,
    /// gRPC listen address. Default `127.0.0.1:7700`.
    pub listen: SocketAddr,
    /// HTTP listen address for `/metrics` and `/healthz`. Default `127.0.0.1:7701`.
    pub http_listen: SocketAddr,
    /// Also serve gRPC on this unix socket (absolute path), without TLS: the socket is made mode
    /// 0600, so only this user's processes on this machine reach it. For clients on the same
    /// machine (the all-in-one advertises it: no TLS or TCP on the local data path). Default none.
    pub unix_socket: Option<PathBuf>,
    /// Largest chunk in bytes; pinned when the data directory is formatted. Default 4 MiB.
    pub max_chunk_size: u32,
    /// Segment file size in bytes before a new one is started. Default 64 MiB.
    pub segment_size: u64,
    /// O_DIRECT for large chunks. Default true.
    pub direct_io: bool,
    /// GC rewrites sealed segments whose live fraction is below this. Default 0.5.
    pub gc_live_threshold: f64,
    /// Dead bytes in sealed segments may reach this fraction of the live bytes; past it a GC
    /// pass runs at once (checked every second) and also rewrites the emptiest segments until
    /// they are under half of it. 0: off (the threshold and the interval alone). Default 0.2.
    pub gc_max_dead_ratio: f64,
    /// Seconds between background GC passes; 0 disables them. Default 30 (a pass with no
    /// segment under the threshold only reads the accounting).
    pub gc_interval_secs: u64,
    /// Seconds between background scrubs (every chunk read and verified); 0 disables them.
    /// Default 604800 (weekly).
    pub scrub_interval_secs: u64,
    /// Log filter (`RUST_LOG` syntax). Default `info`.
    pub log: String,
    /// Metadata service endpoints (`host:port`); empty runs the node standalone (no node map).
    pub meta: Vec<String>,
    /// This node's id in the cluster, stable across restarts. Default `<host>-<listen port>`.
    pub node_id: String,
    /// Address other components reach the gRPC service at. Default: `listen`.
    pub advertise: String,
    /// Failure domain: zone. Default empty (unknown).
    pub zone: String,
    /// Failure domain: host. Default: this machine's hostname.
    pub host: String,
    /// Milliseconds between heartbeats to the node map. Default 1000.
    pub heartbeat_ms: u64,
    /// Copies of every chunk (R); must be the same on every node and client. Default 3.
    pub replicas: usize,
    /// A node without heartbeat for this many milliseconds is down. Default 10000.
    pub down_after_ms: u64,
    /// A node without heartbeat for this many milliseconds is out and its chunks are repaired
    /// elsewhere. Default 600000 (10 minutes).
    pub out_after_ms: u64,
    /// Seconds between full repair passes (membership changes start one sooner). Default 300.
    pub repair_interval_secs: u64,
    /// Bandwidth repair and rebalance may use, in MiB/s (0: unlimited). Default 200.
    pub repair_rate_mib: u64,
    /// Seconds between pool GC rounds, started by the lowest-id node that is up (0: only when
    /// the operator runs `cairn cluster gc`). Default 60: nodes keep their put history from the
    /// start, so a round sweeps at once and costs one scan of the local chunks and their
    /// reference keys.
    pub pool_gc_interval_secs: u64,
    /// Writers' window of the rounds this node starts, in seconds: every writer must commit a
    /// chunk's reference this soon after its put (`cluster::gc::WRITE_WINDOW`, 600, by default;
    /// lower it only where every writer is known to commit sooner, as tests do).
    pub pool_gc_window_secs: u64,
    /// Cluster CA certificate (PEM); with `tls_cert` and `tls_key` every gRPC link is mutual
    /// TLS: callers must present a certificate from this CA. Default: none (plaintext).
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM), signed by the cluster CA.
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./data/node"),
            listen: "127.0.0.1:7700".parse().expect("default address"),
            http_listen: "127.0.0.1:7701".parse().expect("default address"),
            max_chunk_size: DEFAULT_MAX_CHUNK_SIZE,
            segment_size: 64 << 20,
            direct_io: true,
            gc_live_threshold: 0.5,
            gc_max_dead_ratio: 0.2,
            gc_interval_secs: 30,
            scrub_interval_secs: 604_800,
            log: "info".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            meta: Vec::new(),
            node_id: String::new(),
            advertise: String::new(),
            unix_socket: None,
            zone: String::new(),
            host: String::new(),
            heartbeat_ms: 1000,
            replicas: 3,
            down_after_ms: 10_000,
            out_after_ms: 600_000,
            repair_interval_secs: 300,
            repair_rate_mib: 200,
            pool_gc_interval_secs: 60,
            pool_gc_window_secs: cluster::gc::WRITE_WINDOW.as_secs(),
        }
    }
}

/// This machine's hostname (empty if unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "CAIRN_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "CAIRN_NODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (host:port).
    #[arg(long, env = "CAIRN_NODE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// /metrics and /healthz listen address (host:port).
    #[arg(long, env = "CAIRN_NODE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Maximum chunk size in bytes (pinned at format time).
    #[arg(long, env = "CAIRN_NODE_MAX_CHUNK_SIZE")]
    pub max_chunk_size: Option<u32>,
    /// Segment file size in bytes.
    #[arg(long, env = "CAIRN_NODE_SEGMENT_SIZE")]
    pub segment_size: Option<u64>,
    /// Use O_DIRECT for large chunks (true/false).
    #[arg(long, env = "CAIRN_NODE_DIRECT_IO")]
    pub direct_io: Option<bool>,
    /// GC live-fraction threshold (0.0–1.0).
    #[arg(long, env = "CAIRN_NODE_GC_LIVE_THRESHOLD")]
    pub gc_live_threshold: Option<f64>,
    /// Dead bytes allowed in sealed segments, as a fraction of live bytes (0: off).
    #[arg(long, env = "CAIRN_NODE_GC_MAX_DEAD_RATIO")]
    pub gc_max_dead_ratio: Option<f64>,
    /// Seconds between background GC passes (0: off).
    #[arg(long, env = "CAIRN_NODE_GC_INTERVAL_SECS")]
    pub gc_interval_secs: Option<u64>,
    /// Seconds between background scrubs (0: off).
    #[arg(long, env = "CAIRN_NODE_SCRUB_INTERVAL_SECS")]
    pub scrub_interval_secs: Option<u64>,
    /// Log filter.
    #[arg(long, env = "CAIRN_NODE_LOG")]
    pub log: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS.
    #[arg(long, env = "CAIRN_NODE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    #[arg(long, env = "CAIRN_NODE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long, env = "CAIRN_NODE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Metadata service endpoints, comma-separated (empty: standalone).
    #[arg(long, env = "CAIRN_NODE_META", value_delimiter = ',')]
    pub meta: Option<Vec<String>>,
    /// Node id in the cluster.
    #[arg(long, env = "CAIRN_NODE_ID")]
    pub node_id: Option<String>,
    /// Address others reach this node's gRPC service at (host:port, or unix:///path for the
    /// unix socket).
    #[arg(long, env = "CAIRN_NODE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Also serve gRPC, without TLS, on this unix socket (absolute path; made mode 0600).
    #[arg(long, env = "CAIRN_NODE_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,
    /// Failure domain: zone.
    #[arg(long, env = "CAIRN_NODE_ZONE")]
    pub zone: Option<String>,
    /// Failure domain: host.
    #[arg(long, env = "CAIRN_NODE_HOST")]
    pub host: Option<String>,
    /// Milliseconds between heartbeats.
    #[arg(long, env = "CAIRN_NODE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Copies of every chunk (R).
    #[arg(long, env = "CAIRN_NODE_REPLICAS")]
    pub replicas: Option<usize>,
    /// Milliseconds without heartbeat before a node is down.
    #[arg(long, env = "CAIRN_NODE_DOWN_AFTER_MS")]
    pub down_after_ms: Option<u64>,
    /// Milliseconds without heartbeat before a node is out (its chunks are repaired elsewhere).
    #[arg(long, env = "CAIRN_NODE_OUT_AFTER_MS")]
    pub out_after_ms: Option<u64>,
    /// Seconds between full repair passes.
    #[arg(long, env = "CAIRN_NODE_REPAIR_INTERVAL_SECS")]
    pub repair_interval_secs: Option<u64>,
    /// Repair bandwidth in MiB/s (0: unlimited).
    #[arg(long, env = "CAIRN_NODE_REPAIR_RATE_MIB")]
    pub repair_rate_mib: Option<u64>,
    /// Seconds between pool GC rounds (0: only on demand).
    #[arg(long, env = "CAIRN_NODE_POOL_GC_INTERVAL_SECS")]
    pub pool_gc_interval_secs: Option<u64>,
    /// Writers' window of the pool GC rounds this node starts, in seconds.
    #[arg(long, env = "CAIRN_NODE_POOL_GC_WINDOW_SECS")]
    pub pool_gc_window_secs: Option<u64>,
}

impl NodeConfig {
    /// Builds the configuration from defaults, the file named by `args.config`, then `args`.
    pub fn load(args: &NodeArgs) -> Result<Self, NodeError> {
        let mut c = match &args.config {
            Some(path) => daemon_kit::read_toml_file(path).map_err(NodeError::Config)?,
            None => NodeConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone(); } )* };
        }
        over!(
            data_dir,
            listen,
            http_listen,
            max_chunk_size,
            segment_size,
            direct_io,
            gc_live_threshold,
            gc_max_dead_ratio,
            gc_interval_secs,
            scrub_interval_secs,
            log,
            meta,
            node_id,
            advertise,
            zone,
            host,
            heartbeat_ms,
            replicas,
            down_after_ms,
            out_after_ms,
            repair_interval_secs,
            repair_rate_mib,
            pool_gc_interval_secs,
            pool_gc_window_secs
        );
        if c.host.is_empty() {
            c.host = hostname();
        }
        if c.node_id.is_empty() {
            c.node_id = format!("{}-{}", if c.host.is_empty() { "node" } else { &c.host }, c.listen.port());
        }
        if c.advertise.is_empty() {
            c.advertise = c.listen.to_string();
        }
        if args.unix_socket.is_some() {
            c.unix_socket = args.unix_socket.clone();
        }
        for (field, arg) in
            [(&mut c.tls_ca, &args.tls_ca), (&mut c.tls_cert, &args.tls_cert), (&mut c.tls_key, &args.tls_key)]
        {
            if arg.is_some() {
                *field = arg.clone();
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// The mutual-TLS files (all or none).
    pub fn tls(&self) -> mtls::TlsFiles {
        mtls::TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() }
    }

    /// Checks every setting; the error names the setting in one line.
    pub fn validate(&self) -> Result<(), NodeError> {
        self.tls().validate().map_err(|e| NodeError::Config(e.to_string()))?;
        self.engine().validate().map_err(NodeError::Config)?;
        if self.listen == self.http_listen {
            return Err(NodeError::Config(format!("listen and http_listen must differ (both are {})", self.listen)));
        }
        if let Some(p) = &self.unix_socket {
            daemon_kit::check_unix_path("unix_socket", p).map_err(NodeError::Config)?;
        }
        if self.heartbeat_ms < 100 {
            return Err(NodeError::Config(format!("heartbeat_ms must be at least 100, got {}", self.heartbeat_ms)));
        }
        if self.replicas == 0 || self.replicas > 16 {
            return Err(NodeError::Config(format!("replicas must be between 1 and 16, got {}", self.replicas)));
        }
        if self.down_after_ms < 2 * self.heartbeat_ms || self.out_after_ms < self.down_after_ms {
            return Err(NodeError::Config(format!(
                "need 2 x heartbeat_ms <= down_after_ms <= out_after_ms, got {} / {} / {}",
                self.heartbeat_ms, self.down_after_ms, self.out_after_ms
            )));
        }
        if self.pool_gc_window_secs == 0 {
            return Err(NodeError::Config("pool_gc_window_secs must be at least 1".into()));
        }
        if self.repair_interval_secs == 0 {
            return Err(NodeError::Config("repair_interval_secs must be at least 1".into()));
        }
        if self.node_id.contains('/') || self.node_id.chars().any(char::is_whitespace) {
            return Err(NodeError::Config(format!("node_id must not contain '/' or spaces, got {:?}", self.node_id)));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(NodeError::Config("data_dir must not be empty".into()));
        }
        Ok(())
    }

    /// When nodes count as down and out.
    pub fn timeouts(&self) -> cluster::Timeouts {
        cluster::Timeouts {
            down_after: std::time::Duration::from_millis(self.down_after_ms),
            out_after: std::time::Duration::from_millis(self.out_after_ms),
        }
    }

    /// The chunk-engine settings this configuration implies.
    pub fn engine(&self) -> EngineConfig {
        let mut e = EngineConfig::new(&self.data_dir);
        e.max_chunk_size = self.max_chunk_size;
        e.segment_size = self.segment_size;
        e.direct_io = self.direct_io;
        e.gc_live_threshold = self.gc_live_threshold;
        e.gc_max_dead_ratio = self.gc_max_dead_ratio;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "data_dir = \"/srv/x\"\nsegment_size = 2097152\n").unwrap();
        let args = NodeArgs { config: Some(file), segment_size: Some(4 << 20), ..Default::default() };
        let c = NodeConfig::load(&args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/x"));
        assert_eq!(c.segment_size, 4 << 20);
        assert_eq!(c.max_chunk_size, DEFAULT_MAX_CHUNK_SIZE);
    }

    #[test]
    fn bad_settings_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "segmnt_size = 1\n").unwrap();
        let err = NodeConfig::load(&NodeArgs { config: Some(file), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("unknown field `segmnt_size`"), "{err}");
        let err = NodeConfig::load(&NodeArgs { gc_live_threshold: Some(3.0), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("gc_live_threshold"), "{err}");
        let same = NodeArgs {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            http_listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Default::default()
        };
        assert!(NodeConfig::load(&same).is_err());
    }
}
