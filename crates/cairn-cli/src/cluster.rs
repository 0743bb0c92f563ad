//! `cairn cluster status` (the storage pool as the metadata service sees it: node states, capacity,
//! under-replicated chunks, repair progress) and the admin state behind `cairn node drain|undrain|remove`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ::cluster::nodemap::{self, now_unix_ms};
use ::cluster::{AdminState, NodeMap, NodeState, PoolSettings, REPAIR_PREFIX, RepairProgress, Timeouts, UNDER_PREFIX};
use clap::Subcommand;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use metadata_client::MetaClient;
use serde::Serialize;

use crate::progress::text_bar;

/// Keys read per range page.
const PAGE: u32 = 1000;
/// `--watch` ends once no repair pass has been active and nothing pending for this long: a pass
/// starts up to about two seconds after a membership change, and a node publishes its figures only
/// after each page of 256 chunks and at the end of a pass, so one idle look right after `cairn
/// node drain` proves nothing.
const SETTLE: Duration = Duration::from_secs(3);

/// Cluster commands (they read the metadata service given by `--meta`).
#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes (state, capacity, chunks, heartbeat), under-replicated chunks and repair progress.
    Status {
        /// Judge nodes as down after this long instead of the pool's setting (`cluster/settings`).
        #[arg(long)]
        down_after_ms: Option<u64>,
        /// Judge nodes as out after this long instead of the pool's setting.
        #[arg(long)]
        out_after_ms: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show repair progress every second until no pass is active and nothing is pending,
        /// then print the status and exit.
        #[arg(long)]
        watch: bool,
    },
    /// Start a pool garbage-collection round now (storage nodes also start one every
    /// `pool_gc_interval_secs`, every minute by default); each node sweeps at once, keeping
    /// chunks put within the writers' window.
    Gc {
        /// Writers' window in seconds: references are committed this soon after their puts.
        #[arg(long, default_value_t = cluster::gc::WRITE_WINDOW.as_secs())]
        window_secs: u64,
    },
}

pub async fn run(endpoints: &str, cmd: ClusterCmd) -> anyhow::Result<()> {
    let meta = connect(endpoints)?;
    match cmd {
        ClusterCmd::Status { down_after_ms, out_after_ms, json, watch } => {
            // The pool's timeouts, so states read as the storage nodes judge them.
            let settings = PoolSettings::load(&meta).await?;
            let replicas = settings.map(|p| p.replicas);
            let pool = settings.map(|p| p.timeouts()).unwrap_or_default();
            let down_after_ms = down_after_ms.unwrap_or(pool.down_after.as_millis() as u64);
            let out_after_ms = out_after_ms.unwrap_or(pool.out_after.as_millis() as u64);
            if down_after_ms > out_after_ms {
                anyhow::bail!("--down-after-ms ({down_after_ms}) must not exceed --out-after-ms ({out_after_ms})");
            }
            let t = Timeouts {
                down_after: Duration::from_millis(down_after_ms),
                out_after: Duration::from_millis(out_after_ms),
            };
            let status =
                if watch { watch_repair(&meta, &t, replicas, json).await? } else { load(&meta, &t, replicas).await? };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        ClusterCmd::Gc { window_secs } => {
            let e = cluster::gc::start_epoch(&meta, Duration::from_secs(window_secs)).await?;
            println!(
                "GC round {} started: each storage node sweeps as soon as it has run {window_secs}s; \
                 `cairn cluster status` shows the sweeps",
                e.epoch
            );
        }
    }
    Ok(())
}

fn connect(endpoints: &str) -> anyhow::Result<MetaClient> {
    let list: Vec<&str> = endpoints.split(',').collect();
    Ok(MetaClient::new(&list)?)
}

/// Sets the admin state of node `id` (which must be in the node map) and says what follows.
pub async fn set_admin(endpoints: &str, id: &str, state: AdminState) -> anyhow::Result<()> {
    let meta = connect(endpoints)?;
    let map = NodeMap::load(&meta).await?;
    if !map.nodes.contains_key(id) {
        if map.nodes.is_empty() {
            anyhow::bail!("node {id:?} is not in the node map (no storage node has registered)");
        }
        let known = map.nodes.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        anyhow::bail!("node {id:?} is not in the node map (registered: {known})");
    }
    let already = if map.admin_state(id) == state { " (it already was)" } else { "" };
    nodemap::set_admin_state(&meta, id, state).await?;
    let watch = "`cairn cluster status --watch` shows progress";
    match state {
        AdminState::Draining => println!(
            "{id} draining{already}: it takes no new chunks and its chunks are copied to other nodes; {watch}, \
             then `cairn node remove {id}`"
        ),
        AdminState::Out => println!(
            "{id} out{already}: no longer a member; its chunks are re-replicated onto the remaining nodes; {watch}"
        ),
        AdminState::In => {
            println!("{id} in{already}: a full member again; it takes new chunks and gets its share back; {watch}")
        }
    }
    Ok(())
}

/// Calls `f(key, value)` for every key under `prefix`, a page at a time.
async fn scan(meta: &MetaClient, prefix: &str, mut f: impl FnMut(&[u8], &[u8])) -> anyhow::Result<()> {
    let end = metadata_client::prefix_end(prefix.as_bytes());
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let page = meta.range(&start, &end, PAGE).await?;
        for kv in &page.kvs {
            f(&kv.key, &kv.value);
        }
        match page.next_key {
            Some(k) => start = k,
            None => return Ok(()),
        }
    }
}

/// One node's row.
#[derive(Serialize)]
struct NodeRow {
    id: String,
    addr: String,
    zone: String,
    host: String,
    state: NodeState,
    admin: AdminState,
    capacity_bytes: u64,
    free_bytes: u64,
    used_percent: f64,
    chunks: u64,
    heartbeat_age_ms: u64,
    /// What the node last published about its reconciler, if anything.
    repair: Option<RepairRow>,
}

#[derive(Serialize)]
struct RepairRow {
    #[serde(flatten)]
    progress: RepairProgress,
    eta_secs: Option<f64>,
    /// The node is up or draining: these figures are current (a down or out node's are stale).
    current: bool,
}

impl NodeRow {
    /// Repair figures of a live node with a pass running or copies pending.
    fn busy(&self) -> Option<&RepairProgress> {
        self.repair
            .as_ref()
            .filter(|r| r.current && (r.progress.active || r.progress.pending_chunks > 0))
            .map(|r| &r.progress)
    }
}

#[derive(Serialize)]
struct Under {
    /// Recorded at write time under `cluster/under/` (acknowledged with fewer than R copies).
    recorded: u64,
    /// Found by the live nodes' repair passes.
    found_by_repair: u64,
    total: u64,
}

/// What `cluster status` shows.
#[derive(Serialize)]
struct Status {
    /// Copies per chunk, as the pool records it (none before a storage node has joined).
    replicas: Option<usize>,
    down_after_ms: u64,
    out_after_ms: u64,
    nodes: Vec<NodeRow>,
    under_replicated: Under,
    /// Some live node has a repair pass running or copies pending.
    repair_active: bool,
    /// Pool garbage collection: the current round and each node's garbage.
    gc: GcStatus,
}

/// Garbage and its reclaim, pool-wide and per node.
#[derive(Serialize)]
struct GcStatus {
    /// The current round, if any was ever started.
    epoch: Option<cluster::gc::GcEpoch>,
    nodes: Vec<GcNodeRow>,
}

#[derive(Serialize)]
struct GcNodeRow {
    id: String,
    /// Dead bytes in segment files (segment GC gives them back).
    dead_bytes: u64,
    /// Bytes in segment files.
    used_bytes: u64,
    /// The round of this node's latest sweep, and the sweep.
    last_epoch: Option<u64>,
    last_sweep: Option<cluster::gc::GcSweep>,
}

async fn load(meta: &MetaClient, t: &Timeouts, replicas: Option<usize>) -> anyhow::Result<Status> {
    let map = NodeMap::load(meta).await?;
    let mut repair: HashMap<String, RepairProgress> = HashMap::new();
    scan(meta, REPAIR_PREFIX, |key, value| {
        let id = String::from_utf8_lossy(&key[REPAIR_PREFIX.len()..]).into_owned();
        // An unreadable record (another version) is left out rather than failing the status.
        if let Ok(p) = RepairProgress::decode(&String::from_utf8_lossy(key), value) {
            repair.insert(id, p);
        }
    })
    .await?;
    let mut recorded = 0u64;
    scan(meta, UNDER_PREFIX, |_, _| recorded += 1).await?;
    let now = now_unix_ms();
    let nodes: Vec<NodeRow> = map
        .nodes
        .values()
        .map(|r| {
            let state = map.state(&r.id, now, t).unwrap_or(NodeState::Out);
            let used = r.capacity_bytes.saturating_sub(r.free_bytes);
            let current = matches!(state, NodeState::Up | NodeState::Draining);
            NodeRow {
                id: r.id.clone(),
                addr: r.addr.clone(),
                zone: r.zone.clone(),
                host: r.host.clone(),
                state,
                admin: map.admin_state(&r.id),
                capacity_bytes: r.capacity_bytes,
                free_bytes: r.free_bytes,
                used_percent: if r.capacity_bytes > 0 { used as f64 * 100.0 / r.capacity_bytes as f64 } else { 0.0 },
                chunks: r.chunks,
                heartbeat_age_ms: now.saturating_sub(r.heartbeat_unix_ms),
                repair: repair.remove(&r.id).map(|p| RepairRow { eta_secs: p.eta_secs(), progress: p, current }),
            }
        })
        .collect();
    let sweeps: HashMap<String, (u64, cluster::gc::GcSweep)> =
        cluster::gc::latest_sweeps(meta).await?.into_iter().map(|(e, s)| (s.node.clone(), (e, s))).collect();
    let gc = GcStatus {
        epoch: cluster::gc::current_epoch(meta).await?,
        nodes: map
            .nodes
            .values()
            .map(|r| {
                let last = sweeps.get(&r.id);
                GcNodeRow {
                    id: r.id.clone(),
                    dead_bytes: r.dead_bytes,
                    used_bytes: r.used_bytes,
                    last_epoch: last.map(|l| l.0),
                    last_sweep: last.map(|l| l.1.clone()),
                }
            })
            .collect(),
    };
    let found_by_repair =
        nodes.iter().filter_map(|n| n.repair.as_ref()).filter(|r| r.current).map(|r| r.progress.under_replicated).sum();
    let repair_active = nodes.iter().any(|n| n.busy().is_some());
    Ok(Status {
        replicas,
        down_after_ms: t.down_after.as_millis() as u64,
        out_after_ms: t.out_after.as_millis() as u64,
        nodes,
        under_replicated: Under { recorded, found_by_repair, total: recorded + found_by_repair },
        repair_active,
        gc,
    })
}

/// `12.0s`, `95s`, `14m`, `5h`, `3d`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    match s {
        _ if s < 10.0 => format!("{s:.1}s"),
        _ if s < 120.0 => format!("{s:.0}s"),
        _ if s < 7200.0 => format!("{:.0}m", s / 60.0),
        _ if s < 172_800.0 => format!("{:.0}h", s / 3600.0),
        _ => format!("{:.0}d", s / 86_400.0),
    }
}

fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Up => "up",
        NodeState::Down => "down",
        NodeState::Draining => "draining",
        NodeState::Out => "out",
    }
}

fn rate(p: &RepairProgress) -> String {
    format!("{}/s", HumanBytes(p.rate_bytes_per_sec as u64))
}

/// Time left for the pending copies at the current rate; with none pending (nodes publish between
/// pages, when a page's copies are done) the running pass's remaining scan at its pace so far.
fn eta(p: &RepairProgress) -> String {
    let elapsed = p.updated_unix_ms.saturating_sub(p.started_unix_ms) as f64 / 1000.0;
    match p.eta_secs() {
        Some(s) if p.pending_bytes > 0 => format!("ETA {}", short_duration(Duration::from_secs_f64(s))),
        _ if p.pending_bytes > 0 => "ETA unknown".to_string(),
        _ if p.active && p.pass_scanned > 0 && elapsed > 0.0 => {
            let left = p.pass_total.saturating_sub(p.pass_scanned) as f64 * elapsed / p.pass_scanned as f64;
            format!("pass ETA {}", short_duration(Duration::from_secs_f64(left)))
        }
        _ => "ETA -".to_string(),
    }
}

/// Pending work of a busy node, for its bar and its line.
fn left(p: &RepairProgress) -> String {
    format!("{} chunks, {} left  {}  {}", p.pending_chunks, HumanBytes(p.pending_bytes), rate(p), eta(p))
}

/// The pool's repair per storage node as table rows (node, state, a bar of the running pass's
/// scan, what is left), judged with the pool's own timeouts; `cairn volume rebuild` shows them.
pub(crate) async fn repair_rows(meta: &MetaClient) -> anyhow::Result<Vec<Vec<String>>> {
    let settings = PoolSettings::load(meta).await?;
    let t = settings.map(|p| p.timeouts()).unwrap_or_default();
    let status = load(meta, &t, settings.map(|p| p.replicas)).await?;
    Ok(status
        .nodes
        .iter()
        .map(|n| {
            let (bar, what) = match (n.busy(), &n.repair) {
                (Some(p), _) => (
                    text_bar(p.pass_scanned, p.pass_total.max(p.pass_scanned), 30),
                    format!("pass {}: scanned {}/{} chunks, {}", p.passes, p.pass_scanned, p.pass_total, left(p)),
                ),
                // A down or out node's figures are stale.
                _ if !matches!(n.state, NodeState::Up | NodeState::Draining) => (String::new(), "-".to_string()),
                (None, Some(_)) => (String::new(), "idle".to_string()),
                (None, None) => (String::new(), "no repair figures yet".to_string()),
            };
            vec![n.id.clone(), state_name(n.state).to_string(), bar, what]
        })
        .collect())
}

/// Prints `rows` as columns two spaces apart; columns in `right` are right-aligned.
pub(crate) fn print_table(rows: &[Vec<String>], right: &[usize]) {
    for line in table(rows, right) {
        println!("{line}");
    }
}

/// `rows` as lines of columns two spaces apart; columns in `right` are right-aligned.
pub(crate) fn table(rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if right.contains(&c) {
                        format!("{s:>w$}", w = widths[c])
                    } else {
                        format!("{s:<w$}", w = widths[c])
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

fn summary(s: &Status) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &s.nodes {
        *counts.entry(state_name(n.state)).or_default() += 1;
    }
    let states = ["up", "draining", "down", "out"]
        .iter()
        .filter_map(|k| counts.get(k).map(|c| format!("{c} {k}")))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{} nodes ({states}); {} under-replicated chunks", s.nodes.len(), s.under_replicated.total)
}

fn print_status(s: &Status) {
    let (down, out) = (Duration::from_millis(s.down_after_ms), Duration::from_millis(s.out_after_ms));
    if let Some(r) = s.replicas {
        println!(
            "pool: {r} copies per chunk; a silent node is down after {}, out after {}",
            short_duration(down),
            short_duration(out)
        );
    }
    if s.nodes.is_empty() {
        println!("no storage node has registered");
    } else {
        let mut rows = vec![
            ["ID", "ADDRESS", "ZONE/HOST", "STATE", "CAPACITY", "USED", "CHUNKS", "HEARTBEAT"]
                .map(String::from)
                .to_vec(),
        ];
        for n in &s.nodes {
            let zone = if n.zone.is_empty() { "-" } else { &n.zone };
            let host = if n.host.is_empty() { "-" } else { &n.host };
            rows.push(vec![
                n.id.clone(),
                n.addr.clone(),
                format!("{zone}/{host}"),
                state_name(n.state).to_string(),
                HumanBytes(n.capacity_bytes).to_string(),
                format!("{:.0}%", n.used_percent),
                n.chunks.to_string(),
                format!("{} ago", short_duration(Duration::from_millis(n.heartbeat_age_ms))),
            ]);
        }
        print_table(&rows, &[4, 5, 6, 7]);
    }
    let u = &s.under_replicated;
    println!(
        "under-replicated chunks: {} ({} recorded at write, {} found by repair)",
        u.total, u.recorded, u.found_by_repair
    );
    print_gc(&s.gc);
    let busy: Vec<(&str, &RepairProgress)> = s.nodes.iter().filter_map(|n| Some((n.id.as_str(), n.busy()?))).collect();
    if busy.is_empty() {
        println!("repair: idle");
        return;
    }
    println!("repair:");
    let mut rows = Vec::new();
    for (id, p) in busy {
        rows.push(vec![
            format!("  {id}"),
            format!("pass {} {}", p.passes, if p.active { "running" } else { "done" }),
            format!("scanned {}/{} chunks", p.pass_scanned, p.pass_total),
            format!("pending {} chunks ({})", p.pending_chunks, HumanBytes(p.pending_bytes)),
            format!("copied {}", HumanBytes(p.copied_bytes)),
            rate(p),
            eta(p),
        ]);
    }
    print_table(&rows, &[]);
}

/// Garbage per node: unreferenced chunks held within the write window and dead segment space
/// (both still on disk), and what the node's latest sweep deleted.
fn print_gc(g: &GcStatus) {
    let now = now_unix_ms();
    match &g.epoch {
        None => println!("garbage collection: no round yet"),
        Some(e) => println!(
            "garbage collection: round {} started {} ago (window {})",
            e.epoch,
            short_duration(Duration::from_millis(now.saturating_sub(e.started_unix_ms))),
            short_duration(Duration::from_millis(e.write_window_ms))
        ),
    }
    if g.nodes.is_empty() {
        return;
    }
    let mut rows = vec![
        ["  NODE", "SWEPT", "DELETED", "HELD (IN WINDOW)", "DEAD IN SEGMENTS", "SWEEP TOOK"].map(String::from).to_vec(),
    ];
    for n in &g.nodes {
        let (swept, deleted, held, took) = match (&n.last_sweep, n.last_epoch) {
            (Some(s), Some(e)) => (
                format!(
                    "round {e}, {} ago",
                    short_duration(Duration::from_millis(now.saturating_sub(s.finished_unix_ms)))
                ),
                format!("{} ({} chunks)", HumanBytes(s.deleted_bytes), s.deleted),
                format!("{} ({} chunks)", HumanBytes(s.held_bytes), s.held),
                format!("{} ms, {} chunks", s.duration_ms, s.examined),
            ),
            _ => ("never".into(), "-".into(), "-".into(), "-".into()),
        };
        let dead = if n.used_bytes > 0 {
            format!("{} of {}", HumanBytes(n.dead_bytes), HumanBytes(n.used_bytes))
        } else {
            HumanBytes(n.dead_bytes).to_string()
        };
        rows.push(vec![format!("  {}", n.id), swept, deleted, held, dead, took]);
    }
    print_table(&rows, &[]);
}

fn node_bar(id: &str) -> ProgressBar {
    // Drawn once it is added to the MultiProgress, with its figures set.
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} chunks scanned  {msg}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    bar
}

/// Shows every busy node's repair every second until all are idle for [`SETTLE`]; returns the
/// last status. Without a terminal on stderr (bars hidden), prints each change as a line on
/// stdout instead (nothing with `--json`, whose stdout is the final status only).
async fn watch_repair(meta: &MetaClient, t: &Timeouts, replicas: Option<usize>, json: bool) -> anyhow::Result<Status> {
    let multi = MultiProgress::new();
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("progress template"));
    let lines = multi.is_hidden() && !json;
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut printed: HashMap<String, String> = HashMap::new();
    let mut idle_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let status = load(meta, t, replicas).await?;
        let head = summary(&status);
        header.set_message(head.clone());
        header.tick();
        if lines && printed.get("").is_none_or(|h| *h != head) {
            println!("{head}");
            printed.insert(String::new(), head);
        }
        let busy: BTreeMap<&str, &RepairProgress> =
            status.nodes.iter().filter_map(|n| Some((n.id.as_str(), n.busy()?))).collect();
        for (id, p) in &busy {
            let bar = bars.get(*id).cloned().unwrap_or_else(|| node_bar(id));
            bar.set_length(p.pass_total.max(p.pass_scanned));
            bar.set_position(p.pass_scanned);
            bar.set_message(left(p));
            if !bars.contains_key(*id) {
                bars.insert(id.to_string(), multi.add(bar));
            }
            let line = format!("{id}  scanned {}/{} chunks, {}", p.pass_scanned, p.pass_total, left(p));
            if lines && printed.get(*id) != Some(&line) {
                println!("{line}");
                printed.insert(id.to_string(), line);
            }
        }
        printed.retain(|id, _| id.is_empty() || busy.contains_key(id.as_str()));
        bars.retain(|id, bar| {
            let keep = busy.contains_key(id.as_str());
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        if busy.is_empty() {
            if idle_since.get_or_insert_with(Instant::now).elapsed() >= SETTLE {
                header.finish_and_clear();
                return Ok(status);
            }
        } else {
            idle_since = None;
        }
    }
}
