//! `cairn fs list`: the shared filesystems csi-fs keeps in the metadata service, each with its
//! quota, usage (bytes and inodes), what it is to the CSI driver (a volume or a snapshot), the
//! filesystem it was copied from and the clients that have it mounted, on which nodes.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;
use csi_fs::admin::{self, FsInfo, FsKind};
use metadata_client::MetaClient;
use serde::Serialize;

use crate::cluster::print_table;
use crate::volume::{human_bytes, utc};

/// Shared filesystem commands (they read the metadata service given by `--meta`).
#[derive(Subcommand)]
pub enum FsCmd {
    /// Every filesystem: what it is, quota, used bytes and inodes, origin, mounted clients.
    List {
        /// Print JSON instead of a table (sizes in bytes).
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(meta: &str, cmd: FsCmd) -> anyhow::Result<()> {
    let eps: Vec<&str> = meta.split(',').collect();
    let meta = MetaClient::new(&eps).context("metadata service")?;
    match cmd {
        FsCmd::List { json } => {
            let all = admin::list_filesystems(&meta).await.context("cannot list the filesystems")?;
            if json {
                let v: Vec<FsRow> = all.iter().map(FsRow::new).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if all.is_empty() {
                println!("no filesystems");
            } else {
                print_filesystems(&all);
            }
        }
    }
    Ok(())
}

fn mode(read_only: bool) -> &'static str {
    if read_only { "ro" } else { "rw" }
}

/// `volume`, `snapshot` or `other`, with `, deleting` while it is being deleted.
fn kind_text(f: &FsInfo) -> String {
    let kind = match f.kind {
        FsKind::Volume { .. } => "volume",
        FsKind::Snapshot { .. } => "snapshot",
        FsKind::Other => "other",
    };
    if f.deleting { format!("{kind}, deleting") } else { kind.to_string() }
}

/// The CSI name (the PV's, or the VolumeSnapshotContent's), if csi-fs recorded one.
fn csi_name(f: &FsInfo) -> Option<&str> {
    match &f.kind {
        FsKind::Volume { name } | FsKind::Snapshot { name, .. } => name.as_deref(),
        FsKind::Other => None,
    }
}

/// Where its content came from: a snapshot's source volume, else the filesystem it was copied
/// from (a restored or cloned volume), else `-`.
fn origin_text(f: &FsInfo) -> String {
    match (&f.kind, &f.origin) {
        (FsKind::Snapshot { source_volume: Some(v), .. }, _) => v.clone(),
        (_, Some(o)) => o.clone(),
        _ => "-".to_string(),
    }
}

/// `node-a:rw,node-b:rw x2`: the nodes with the filesystem mounted (each client's mode; a node
/// with several clients of one mode counted), or `-` when none has.
fn clients_text(f: &FsInfo) -> String {
    let mut per: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for c in &f.clients {
        *per.entry((c.node.as_str(), mode(c.read_only))).or_default() += 1;
    }
    if per.is_empty() {
        return "-".to_string();
    }
    per.iter()
        .map(|((node, m), n)| if *n > 1 { format!("{node}:{m} x{n}") } else { format!("{node}:{m}") })
        .collect::<Vec<_>>()
        .join(",")
}

fn print_filesystems(all: &[FsInfo]) {
    let mut t = vec![["ID", "KIND", "NAME", "QUOTA", "USED", "INODES", "ORIGIN", "CLIENTS"].map(String::from).to_vec()];
    for f in all {
        t.push(vec![
            f.id.clone(),
            kind_text(f),
            csi_name(f).unwrap_or("-").to_string(),
            human_bytes(f.capacity_bytes),
            human_bytes(f.used_bytes),
            f.used_inodes.to_string(),
            origin_text(f),
            clients_text(f),
        ]);
    }
    print_table(&t, &[3, 4, 5]);
}

/// One mounted client in `fs list --json`.
#[derive(Serialize)]
struct ClientRow {
    id: String,
    node: String,
    /// `rw` or `ro`.
    mode: &'static str,
    mounted_unix_ms: u64,
    /// Its last sign of life.
    heartbeat_unix_ms: u64,
}

/// One filesystem in `fs list --json`.
#[derive(Serialize)]
struct FsRow {
    id: String,
    /// `volume`, `snapshot` or `other`.
    kind: &'static str,
    /// The CSI name, if any.
    name: Option<String>,
    /// A snapshot's source volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    source_volume: Option<String>,
    quota_bytes: u64,
    used_bytes: u64,
    used_inodes: u64,
    /// The filesystem it was copied from.
    origin: Option<String>,
    deleting: bool,
    created_unix_ms: u64,
    /// The same, as a UTC time.
    created: String,
    clients: Vec<ClientRow>,
}

impl FsRow {
    fn new(f: &FsInfo) -> FsRow {
        let (kind, source_volume) = match &f.kind {
            FsKind::Volume { .. } => ("volume", None),
            FsKind::Snapshot { source_volume, .. } => ("snapshot", source_volume.clone()),
            FsKind::Other => ("other", None),
        };
        FsRow {
            id: f.id.clone(),
            kind,
            name: csi_name(f).map(String::from),
            source_volume,
            quota_bytes: f.capacity_bytes,
            used_bytes: f.used_bytes,
            used_inodes: f.used_inodes,
            origin: f.origin.clone(),
            deleting: f.deleting,
            created_unix_ms: f.created_unix_ms,
            created: utc(f.created_unix_ms),
            clients: f
                .clients
                .iter()
                .map(|c| ClientRow {
                    id: c.id.clone(),
                    node: c.node.clone(),
                    mode: mode(c.read_only),
                    mounted_unix_ms: c.mounted_ms,
                    heartbeat_unix_ms: c.heartbeat_ms,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_meta::filesystem::ClientRecord;

    fn client(id: &str, node: &str, read_only: bool) -> ClientRecord {
        ClientRecord { version: 1, id: id.into(), node: node.into(), mounted_ms: 1, heartbeat_ms: 2, read_only }
    }

    fn info(kind: FsKind, clients: Vec<ClientRecord>) -> FsInfo {
        FsInfo {
            id: "fs-00000000000000000000000000000001".into(),
            kind,
            capacity_bytes: 64 << 20,
            used_bytes: 1536,
            used_inodes: 3,
            origin: None,
            deleting: false,
            created_unix_ms: 0,
            clients,
        }
    }

    #[test]
    fn clients_per_node_and_mode() {
        assert_eq!(clients_text(&info(FsKind::Other, vec![])), "-");
        let f = info(
            FsKind::Volume { name: Some("pv-a".into()) },
            vec![client("b-1", "node-b", false), client("a-1", "node-a", true), client("b-2", "node-b", false)],
        );
        assert_eq!(clients_text(&f), "node-a:ro,node-b:rw x2");
    }

    #[test]
    fn kinds_names_and_origins() {
        let mut v = info(FsKind::Volume { name: Some("pv-a".into()) }, vec![]);
        assert_eq!((kind_text(&v), csi_name(&v), origin_text(&v)), ("volume".into(), Some("pv-a"), "-".into()));
        v.origin = Some("fss-1".into());
        v.deleting = true;
        assert_eq!((kind_text(&v), origin_text(&v)), ("volume, deleting".into(), "fss-1".into()));
        let s = info(FsKind::Snapshot { name: Some("snap-1".into()), source_volume: Some("fs-9".into()) }, vec![]);
        assert_eq!((kind_text(&s), csi_name(&s), origin_text(&s)), ("snapshot".into(), Some("snap-1"), "fs-9".into()));
        let o = info(FsKind::Other, vec![]);
        assert_eq!((kind_text(&o), csi_name(&o)), ("other".into(), None));
    }

    #[test]
    fn json_rows() {
        let f =
            info(FsKind::Snapshot { name: None, source_volume: Some("fs-9".into()) }, vec![client("c", "n", false)]);
        let v = serde_json::to_value(FsRow::new(&f)).unwrap();
        assert_eq!(v["kind"], "snapshot");
        assert_eq!(v["source_volume"], "fs-9");
        assert_eq!(v["name"], serde_json::Value::Null);
        assert_eq!((v["quota_bytes"].as_u64(), v["used_bytes"].as_u64()), (Some(64 << 20), Some(1536)));
        assert_eq!(v["used_inodes"], 3);
        assert_eq!(v["created"], "1970-01-01 00:00:00 UTC");
        assert_eq!(
            v["clients"],
            serde_json::json!([{"id": "c", "node": "n", "mode": "rw", "mounted_unix_ms": 1, "heartbeat_unix_ms": 2}])
        );
        let o = serde_json::to_value(FsRow::new(&info(FsKind::Other, vec![]))).unwrap();
        assert!(o.get("source_volume").is_none(), "{o}");
    }
}
