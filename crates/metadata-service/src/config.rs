//! The metadata node's one configuration: defaults, then a TOML file, then environment
//! variables and flags (highest wins), validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::MetaError;
use crate::types::{MetaNode, NodeId};

/// Every setting of a metadata node. File keys use these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    /// This node's Raft id (non-zero, unique in the group). Default 1.
    pub id: NodeId,
    /// Data directory (raft-log/, state/, snapshot). Default `./data/meta`.
    pub data_dir: PathBuf,
    /// Client API listen address. Default `127.0.0.1:7710`.
    pub listen: SocketAddr,
    /// Raft peer listen address. Default `127.0.0.1:7711`.
    pub peer_listen: SocketAddr,
    /// `/metrics` and `/healthz` listen address. Default `127.0.0.1:7712`.
    pub http_listen: SocketAddr,
    /// Also serve the client API on this unix socket (absolute path), without TLS: the socket
    /// is made mode 0600, so only this user's processes on this machine reach it (the all-in-one
    /// gives it to its storage node and objectd). Default none.
    pub unix_socket: Option<PathBuf>,
    /// API address other nodes and clients are told (default: `listen`).
    pub advertise_api: Option<String>,
    /// Peer address other nodes are told (default: `peer_listen`).
    pub advertise_peer: Option<String>,
    /// The first voters, `ID=API_ADDR/PEER_ADDR` comma-separated; the lowest id initialises the
    /// group once. Empty: a single-voter group of this node.
    pub initial_members: String,
    /// Start without initialising anything: wait to be added with `cairn meta add-voter`.
    pub join: bool,
    /// Build a snapshot (and compact the log) after this many log entries. Default 10000.
    pub snapshot_logs: u64,
    /// Leader heartbeat interval in milliseconds (openraft ticks every 1.5× this). Default 50.
    pub heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this). Default 400.
    /// openraft 0.9 draws each node's timeout once per process, in [this, 2× this), and a
    /// follower of a live leader waits its leader lease (2× this) on top: it starts an election
    /// after 3–4× this without hearing from the leader (1.2–1.6 s by default), which is also
    /// how long a SIGKILLed leader goes unnoticed.
    pub election_timeout_ms: u64,
    /// Log filter (`RUST_LOG` syntax). Default `info`.
    pub log: String,
    /// Cluster CA certificate (PEM); with `tls_cert` and `tls_key` every gRPC link is mutual
    /// TLS: callers must present a certificate from this CA. Default: none (plaintext).
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM), signed by the cluster CA.
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    pub tls_key: Option<PathBuf>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            id: 1,
            data_dir: PathBuf::from("./data/meta"),
            listen: "127.0.0.1:7710".parse().expect("default address"),
            peer_listen: "127.0.0.1:7711".parse().expect("default address"),
            http_listen: "127.0.0.1:7712".parse().expect("default address"),
            advertise_api: None,
            advertise_peer: None,
            unix_socket: None,
            initial_members: String::new(),
            join: false,
            snapshot_logs: 10_000,
            heartbeat_ms: 50,
            election_timeout_ms: 400,
            log: "info".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetaArgs {
    /// TOML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "CAIRN_META_CONFIG")]
    pub config: Option<PathBuf>,
    /// Raft id of this node.
    #[arg(long, env = "CAIRN_META_ID")]
    pub id: Option<NodeId>,
    /// Data directory.
    #[arg(long, env = "CAIRN_META_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client API listen address.
    #[arg(long, env = "CAIRN_META_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Raft peer listen address.
    #[arg(long, env = "CAIRN_META_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// /metrics and /healthz listen address.
    #[arg(long, env = "CAIRN_META_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Also serve the client API, without TLS, on this unix socket (absolute path; mode 0600).
    #[arg(long, env = "CAIRN_META_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,
    /// API address to advertise.
    #[arg(long, env = "CAIRN_META_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// Peer address to advertise.
    #[arg(long, env = "CAIRN_META_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// First voters: ID=API_ADDR/PEER_ADDR,...
    #[arg(long, env = "CAIRN_META_INITIAL_MEMBERS")]
    pub initial_members: Option<String>,
    /// Wait to be added to an existing group.
    #[arg(long, env = "CAIRN_META_JOIN")]
    pub join: Option<bool>,
    /// Log entries between snapshots.
    #[arg(long, env = "CAIRN_META_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Heartbeat interval (ms).
    #[arg(long, env = "CAIRN_META_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout (ms).
    #[arg(long, env = "CAIRN_META_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Log filter.
    #[arg(long, env = "CAIRN_META_LOG")]
    pub log: Option<String>,
    /// Cluster CA certificate (PEM) for mutual TLS.
    #[arg(long, env = "CAIRN_META_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This member's certificate (PEM).
    #[arg(long, env = "CAIRN_META_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long, env = "CAIRN_META_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl MetaConfig {
    /// Builds the configuration from defaults, the file named by `args.config`, then `args`.
    pub fn load(args: &MetaArgs) -> Result<Self, MetaError> {
        let mut c = match &args.config {
            Some(path) => daemon_kit::read_toml_file(path).map_err(MetaError::Config)?,
            None => MetaConfig::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &args.$f { c.$f = v.clone(); } )* };
        }
        over!(
            id,
            data_dir,
            listen,
            peer_listen,
            http_listen,
            initial_members,
            join,
            snapshot_logs,
            heartbeat_ms,
            election_timeout_ms,
            log
        );
        if args.advertise_api.is_some() {
            c.advertise_api = args.advertise_api.clone();
        }
        if args.advertise_peer.is_some() {
            c.advertise_peer = args.advertise_peer.clone();
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
    pub fn validate(&self) -> Result<(), MetaError> {
        self.tls().validate().map_err(|e| MetaError::Config(e.to_string()))?;
        let bad = |m: String| Err(MetaError::Config(m));
        if self.id == 0 {
            return bad("id must be non-zero".into());
        }
        let addrs = [self.listen, self.peer_listen, self.http_listen];
        if addrs[0] == addrs[1] || addrs[0] == addrs[2] || addrs[1] == addrs[2] {
            return bad(format!("listen, peer_listen and http_listen must differ ({addrs:?})"));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            return bad(format!(
                "election_timeout_ms ({}) must exceed twice heartbeat_ms ({})",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        if self.snapshot_logs == 0 {
            return bad("snapshot_logs must be at least 1".into());
        }
        if let Some(p) = &self.unix_socket {
            daemon_kit::check_unix_path("unix_socket", p).map_err(MetaError::Config)?;
        }
        let members = self.members()?;
        if !members.is_empty() && !self.join && !members.contains_key(&self.id) {
            return bad(format!("initial_members does not list this node's id {}", self.id));
        }
        Ok(())
    }

    /// This node as other nodes see it.
    pub fn me(&self) -> MetaNode {
        MetaNode {
            api_addr: self.advertise_api.clone().unwrap_or_else(|| self.listen.to_string()),
            peer_addr: self.advertise_peer.clone().unwrap_or_else(|| self.peer_listen.to_string()),
        }
    }

    /// The parsed `initial_members`.
    pub fn members(&self) -> Result<BTreeMap<NodeId, MetaNode>, MetaError> {
        parse_members(&self.initial_members)
    }
}

/// Parses `ID=API_ADDR/PEER_ADDR,...`.
pub fn parse_members(spec: &str) -> Result<BTreeMap<NodeId, MetaNode>, MetaError> {
    let mut out = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let err = || MetaError::Config(format!("initial_members entry {part:?} is not ID=API_ADDR/PEER_ADDR"));
        let (id, addrs) = part.split_once('=').ok_or_else(err)?;
        let (api, peer) = addrs.split_once('/').ok_or_else(err)?;
        let id: NodeId = id.trim().parse().map_err(|_| err())?;
        if id == 0 || api.is_empty() || peer.is_empty() {
            return Err(err());
        }
        if out.insert(id, MetaNode { api_addr: api.to_string(), peer_addr: peer.to_string() }).is_some() {
            return Err(MetaError::Config(format!("initial_members lists id {id} twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_validate() {
        let m = parse_members("1=127.0.0.1:1/127.0.0.1:2, 2=h:3/h:4").unwrap();
        assert_eq!(m[&2].peer_addr, "h:4");
        assert!(parse_members("1=x").is_err());
        assert!(parse_members("0=a/b").is_err());
        assert!(parse_members("1=a/b,1=c/d").is_err());
        let c = MetaConfig { id: 3, initial_members: "1=a/b,2=c/d".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("id 3"));
        let c = MetaConfig { heartbeat_ms: 600, ..Default::default() };
        assert!(c.validate().is_err());
        MetaConfig::default().validate().expect("the defaults are valid");
    }
}
