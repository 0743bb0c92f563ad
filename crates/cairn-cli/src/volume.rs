//! `cairn volume list|snapshots|rebuild`: the block volumes and snapshots csi-block keeps in the
//! metadata service, the data each volume holds, its replica health (every flushed block's
//! copies checked against the pool) and the rebuild of the missing copies.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use csi_block::admin::{self, ReplicaHealth};
use csi_block::records::{SnapshotRecord, VolumeRecord};
use futures::{StreamExt, TryStreamExt};
use metadata_client::MetaClient;
use serde::Serialize;

use crate::cluster::{print_table, repair_rows, table};
use crate::progress::{Frames, text_bar};

/// Volumes whose replicas are checked at once.
const PARALLEL: usize = 8;
/// Cells of a rebuild bar.
const BAR: usize = 30;

/// Block volume commands (they read the metadata service given by `--meta`, and ask the storage
/// nodes which copies they hold).
#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Every volume: size, flushed data, replicas, health and the nodes it is attached to.
    List {
        /// Print JSON instead of a table (sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Every snapshot: source volume, size, ready, when it was cut.
    Snapshots {
        /// Print JSON instead of a table (sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Per volume, the chunks fully replicated and the copies missing; below, the pool's repair
    /// on each storage node.
    Rebuild {
        /// Redraw every second until every volume is fully replicated.
        #[arg(long)]
        watch: bool,
        /// Only this volume.
        #[arg(long, value_name = "ID")]
        volume: Option<String>,
    },
}

pub async fn run(meta: &str, cmd: VolumeCmd) -> anyhow::Result<()> {
    let eps: Vec<&str> = meta.split(',').collect();
    let meta = MetaClient::new(&eps).context("metadata service")?;
    match cmd {
        VolumeCmd::List { json } => {
            let vols = admin::list_volumes(&meta).await?;
            let rows = with_health(&meta, vols).await?;
            if json {
                let v: Vec<VolumeRow> = rows.iter().map(|(rec, h)| VolumeRow::new(rec, h)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if rows.is_empty() {
                println!("no block volumes");
            } else {
                print_volumes(&rows);
            }
        }
        VolumeCmd::Snapshots { json } => {
            let snaps = admin::list_snapshots(&meta).await?;
            if json {
                let v: Vec<SnapshotRow> = snaps.iter().map(SnapshotRow::new).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if snaps.is_empty() {
                println!("no snapshots");
            } else {
                print_snapshots(&snaps);
            }
        }
        VolumeCmd::Rebuild { watch, volume } => rebuild(&meta, watch, volume).await?,
    }
    Ok(())
}

/// A client of the storage pool (it reads the pool's copies per chunk from the metadata service).
async fn pool_client(meta: &MetaClient) -> anyhow::Result<cluster::ChunkClient> {
    // A node that does not answer counts as holding nothing; do not wait long for it.
    let cfg = cluster::ClientConfig { rpc_timeout: Duration::from_secs(5), ..Default::default() };
    cluster::ChunkClient::new(meta.clone(), cfg).await.context("storage pool")
}

/// Each volume with its replica health, in the order given.
async fn with_health(meta: &MetaClient, vols: Vec<VolumeRecord>) -> anyhow::Result<Vec<(VolumeRecord, ReplicaHealth)>> {
    if vols.is_empty() {
        return Ok(Vec::new());
    }
    let pool = pool_client(meta).await?;
    let out = futures::stream::iter(vols)
        .map(|rec| {
            let pool = &pool;
            async move {
                let h = admin::volume_health(meta, pool, &rec.id).await?;
                Ok::<_, anyhow::Error>((rec, h))
            }
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    Ok(out)
}

/// `0 B`, `512 B`, `1.5 KiB`, `1.0 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    // Round first, so 1023.96 KiB reads 1.0 MiB rather than 1024.0 KiB.
    while (v * 10.0).round() / 10.0 >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `healthy`, or `degraded 42.9% (283 copies missing)`: the share of chunks fully replicated.
fn health_text(h: &ReplicaHealth) -> String {
    if h.degraded() {
        let copies = if h.missing_copies == 1 { "copy" } else { "copies" };
        format!("degraded {:.1}% ({} {copies} missing)", h.progress() * 100.0, h.missing_copies)
    } else {
        "healthy".to_string()
    }
}

fn mode(readonly: bool) -> &'static str {
    if readonly { "ro" } else { "rw" }
}

/// `node-a:rw,node-b:ro`, or `-` when not attached.
fn attached_text(rec: &VolumeRecord) -> String {
    if rec.published.is_empty() {
        return "-".to_string();
    }
    rec.published.iter().map(|(node, p)| format!("{node}:{}", mode(p.readonly))).collect::<Vec<_>>().join(",")
}

/// `2024-05-01 12:34:56 UTC` for milliseconds since the Unix epoch.
pub(crate) fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for days on or after 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

#[derive(Serialize)]
struct Attached {
    node: String,
    /// `rw` or `ro`.
    mode: &'static str,
}

/// One volume in `volume list --json`.
#[derive(Serialize)]
struct VolumeRow {
    id: String,
    /// The PV name.
    name: String,
    size_bytes: u64,
    /// Flushed data: blocks holding data times the block size.
    used_bytes: u64,
    block_size: u32,
    replicas: u32,
    min_replicas: u32,
    /// `healthy` or `degraded`.
    health: &'static str,
    /// Distinct chunks its blocks are.
    chunks: u64,
    /// Chunks with every copy in place.
    complete_chunks: u64,
    missing_copies: u64,
    /// Percent of the chunks fully replicated.
    replicated_percent: f64,
    attached: Vec<Attached>,
}

impl VolumeRow {
    fn new(rec: &VolumeRecord, h: &ReplicaHealth) -> VolumeRow {
        VolumeRow {
            id: rec.id.clone(),
            name: rec.name.clone(),
            size_bytes: rec.capacity_bytes,
            used_bytes: admin::volume_usage(rec, h),
            block_size: rec.block_size,
            replicas: rec.replicas,
            min_replicas: rec.min_replicas,
            health: if h.degraded() { "degraded" } else { "healthy" },
            chunks: h.chunks,
            complete_chunks: h.complete,
            missing_copies: h.missing_copies,
            replicated_percent: h.progress() * 100.0,
            attached: rec
                .published
                .iter()
                .map(|(node, p)| Attached { node: node.clone(), mode: mode(p.readonly) })
                .collect(),
        }
    }
}

fn print_volumes(rows: &[(VolumeRecord, ReplicaHealth)]) {
    let mut t = vec![["ID", "NAME", "SIZE", "USED", "REPLICAS", "HEALTH", "ATTACHED"].map(String::from).to_vec()];
    for (rec, h) in rows {
        t.push(vec![
            rec.id.clone(),
            rec.name.clone(),
            human_bytes(rec.capacity_bytes),
            human_bytes(admin::volume_usage(rec, h)),
            format!("{} (min {})", rec.replicas, rec.min_replicas),
            health_text(h),
            attached_text(rec),
        ]);
    }
    print_table(&t, &[2, 3]);
}

/// One snapshot in `volume snapshots --json`.
#[derive(Serialize)]
struct SnapshotRow {
    id: String,
    name: String,
    source_volume: String,
    size_bytes: u64,
    ready: bool,
    created_unix_ms: u64,
    /// The same, as a UTC time.
    created: String,
}

impl SnapshotRow {
    fn new(s: &SnapshotRecord) -> SnapshotRow {
        SnapshotRow {
            id: s.id.clone(),
            name: s.name.clone(),
            source_volume: s.source_volume.clone(),
            size_bytes: s.size_bytes,
            ready: s.ready,
            created_unix_ms: s.created_unix_ms,
            created: utc(s.created_unix_ms),
        }
    }
}

fn print_snapshots(snaps: &[SnapshotRecord]) {
    let mut t = vec![["ID", "SOURCE VOLUME", "SIZE", "READY", "CREATED"].map(String::from).to_vec()];
    for s in snaps {
        t.push(vec![
            s.id.clone(),
            s.source_volume.clone(),
            human_bytes(s.size_bytes),
            if s.ready { "yes" } else { "no" }.to_string(),
            utc(s.created_unix_ms),
        ]);
    }
    print_table(&t, &[2]);
}

/// The lines `volume rebuild` shows: a bar per volume of its chunks fully replicated, then the
/// pool's repair per storage node (`repair`: rows from [`repair_rows`]).
fn rebuild_frame(vols: &[(VolumeRecord, ReplicaHealth)], repair: &[Vec<String>]) -> Vec<String> {
    let mut lines = Vec::new();
    if vols.is_empty() {
        lines.push("no block volumes".to_string());
    } else {
        let mut t = vec![
            ["VOLUME", "NAME", "FULLY REPLICATED CHUNKS", "", "MISSING COPIES", "HEALTH"].map(String::from).to_vec(),
        ];
        for (rec, h) in vols {
            t.push(vec![
                rec.id.clone(),
                rec.name.clone(),
                text_bar(h.complete, h.chunks, BAR),
                format!("{}/{} ({:.1}%)", h.complete, h.chunks, h.progress() * 100.0),
                h.missing_copies.to_string(),
                if h.degraded() { "degraded" } else { "healthy" }.to_string(),
            ]);
        }
        lines.extend(table(&t, &[3, 4]));
    }
    lines.push(String::new());
    if repair.is_empty() {
        lines.push("pool repair: no storage node has registered".to_string());
    } else {
        lines.push("pool repair:".to_string());
        let mut t = vec![["NODE", "STATE", "PASS", "PROGRESS"].map(String::from).to_vec()];
        t.extend(repair.iter().cloned());
        lines.extend(table(&t, &[]));
    }
    lines
}

/// `volume rebuild`: once, or with `watch` every second until every volume is healthy.
async fn rebuild(meta: &MetaClient, watch: bool, volume: Option<String>) -> anyhow::Result<()> {
    let mut frames = Frames::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let vols = match &volume {
            Some(id) => match admin::get_volume(meta, id).await? {
                Some(rec) => vec![rec],
                None => bail!("no volume {id:?} (`cairn volume list` shows the volumes)"),
            },
            None => admin::list_volumes(meta).await?,
        };
        let vols = with_health(meta, vols).await?;
        let frame = rebuild_frame(&vols, &repair_rows(meta).await?);
        frames.show(frame);
        let degraded = vols.iter().filter(|(_, h)| h.degraded()).count();
        if !watch {
            return Ok(());
        }
        if degraded == 0 {
            println!("every volume is fully replicated");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn health_texts() {
        let healthy = ReplicaHealth { blocks: 10, chunks: 7, complete: 7, missing_copies: 0 };
        assert_eq!(health_text(&healthy), "healthy");
        assert_eq!(health_text(&ReplicaHealth::default()), "healthy", "no data, nothing missing");
        let d = ReplicaHealth { blocks: 700, chunks: 700, complete: 300, missing_copies: 283 };
        assert_eq!(health_text(&d), "degraded 42.9% (283 copies missing)");
        let one = ReplicaHealth { blocks: 2, chunks: 2, complete: 1, missing_copies: 1 };
        assert_eq!(health_text(&one), "degraded 50.0% (1 copy missing)");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59 UTC");
    }

    fn rec(published: &[(&str, bool)]) -> VolumeRecord {
        VolumeRecord {
            version: 1,
            id: "blk-00000000000000000000000000000001".into(),
            name: "pv-a".into(),
            capacity_bytes: 8 << 20,
            block_size: 64 << 10,
            replicas: 3,
            min_replicas: 2,
            fs_type: String::new(),
            created_unix_ms: 0,
            generation: 1,
            published: published
                .iter()
                .map(|(n, ro)| {
                    (n.to_string(), csi_block::records::Publication { mode: 1, readonly: *ro, since_unix_ms: 0 })
                })
                .collect(),
            source: None,
            populated: true,
            io_timeout_secs: 120,
        }
    }

    #[test]
    fn attachments_and_json_rows() {
        assert_eq!(attached_text(&rec(&[])), "-");
        assert_eq!(attached_text(&rec(&[("node-b", true), ("node-a", false)])), "node-a:rw,node-b:ro");
        let h = ReplicaHealth { blocks: 3, chunks: 2, complete: 1, missing_copies: 1 };
        let v = serde_json::to_value(VolumeRow::new(&rec(&[("node-a", false)]), &h)).unwrap();
        assert_eq!(v["size_bytes"], 8 << 20);
        assert_eq!(v["used_bytes"], 3 * (64 << 10));
        assert_eq!((v["replicas"].as_u64(), v["min_replicas"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["health"], "degraded");
        assert_eq!(v["replicated_percent"], 50.0);
        assert_eq!(v["attached"], serde_json::json!([{"node": "node-a", "mode": "rw"}]));
    }

    #[test]
    fn rebuild_frames() {
        let h = ReplicaHealth { blocks: 4, chunks: 4, complete: 1, missing_copies: 3 };
        let repair = vec![vec!["n1".to_string(), "up".to_string(), String::new(), "idle".to_string()]];
        let f = rebuild_frame(&[(rec(&[]), h)], &repair);
        assert!(f[0].starts_with("VOLUME"), "{f:?}");
        assert!(f[1].contains("pv-a  [=======>                      ]  1/4 (25.0%)  "), "{f:?}");
        assert!(f[1].ends_with(" 3  degraded"), "{f:?}");
        assert_eq!(f[2], "");
        assert_eq!(f[3], "pool repair:");
        assert!(f[5].starts_with("n1    up") && f[5].ends_with("idle"), "{f:?}");
        let f = rebuild_frame(&[], &[]);
        assert_eq!(f, ["no block volumes", "", "pool repair: no storage node has registered"]);
    }
}
