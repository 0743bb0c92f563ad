//! Background reconciliation on each storage node — repair, rebalance and scrub healing in one
//! idempotent pass: for every local chunk the nodes placement puts it on must hold a good copy
//! (the first live holder in placement order pushes the missing ones), a damaged local copy is
//! replaced from a good replica, and a copy placement no longer wants is dropped once every
//! placed node holds a good one. A pass only ever asks and copies what is missing, so a returning
//! node receives nothing it already has, and a restart simply starts a new pass. Copies of
//! chunks something references go first; those of unreferenced ones (garbage awaiting pool GC,
//! or chunks put and not yet committed) wait until the pass's scan is done.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chunk_engine::{ChunkEngine, ChunkHash, ChunkInfo};
use cluster::nodemap::now_unix_ms;
use cluster::{NodeMap, NodeState, REPAIR_PREFIX, RepairProgress, Timeouts, UNDER_PREFIX};
use futures::StreamExt;
use metadata_client::MetaClient;
use node_client::NodeClient;
use tokio::sync::watch;

use crate::PutTracker;

/// Chunks examined per step of a pass.
const PAGE: usize = 256;
/// Bytes of copies pushed at once: four 4 MiB chunks, or up to `MAX_PARALLEL_PUSHES` small ones
/// (block volumes' 64 KiB chunks are latency-bound at four in flight).
const PUSH_BYTES_IN_FLIGHT: u64 = 16 << 20;
/// How often the node map is looked at for a membership change.
const MEMBERSHIP_CHECK: Duration = Duration::from_millis(200);
/// Most copies pushed at once.
const MAX_PARALLEL_PUSHES: usize = 32;
/// Most copies of unreferenced chunks a pass holds back until its scan is done (~150 bytes
/// each); past it they are copied in scan order.
const DEFERRED_MAX: usize = 1 << 16;

/// How a node reconciles.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// This node's id in the node map.
    pub self_id: String,
    /// Copies of every chunk (R), the same on every node.
    pub replicas: usize,
    /// When nodes count as down and out, the same on every node.
    pub timeouts: Timeouts,
    /// A full pass at least this often; membership changes start one sooner.
    pub interval: Duration,
    /// Push bandwidth limit in bytes per second (0: unlimited), so foreground I/O keeps going.
    pub rate_bytes_per_sec: u64,
}

/// Live figures, read by `/metrics` and published to the metadata service.
#[derive(Default)]
pub struct RepairStats {
    passes: AtomicU64,
    active: AtomicBool,
    pass_total: AtomicU64,
    pass_scanned: AtomicU64,
    pending_chunks: AtomicU64,
    pending_bytes: AtomicU64,
    under_replicated: AtomicU64,
    copied_chunks: AtomicU64,
    copied_bytes: AtomicU64,
    dropped_chunks: AtomicU64,
    healed_chunks: AtomicU64,
    errors: AtomicU64,
    pass_bytes: AtomicU64,
    started_unix_ms: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl RepairStats {
    /// The figures now.
    pub fn snapshot(&self, node: &str) -> RepairProgress {
        let now = now_unix_ms();
        let started = get(&self.started_unix_ms);
        let secs = now.saturating_sub(started) as f64 / 1000.0;
        RepairProgress {
            node: node.to_string(),
            passes: get(&self.passes),
            active: self.active.load(Ordering::Relaxed),
            pass_total: get(&self.pass_total),
            pass_scanned: get(&self.pass_scanned),
            pending_chunks: get(&self.pending_chunks),
            pending_bytes: get(&self.pending_bytes),
            under_replicated: get(&self.under_replicated),
            copied_chunks: get(&self.copied_chunks),
            copied_bytes: get(&self.copied_bytes),
            dropped_chunks: get(&self.dropped_chunks),
            healed_chunks: get(&self.healed_chunks),
            errors: get(&self.errors),
            rate_bytes_per_sec: if secs > 0.0 { get(&self.pass_bytes) as f64 / secs } else { 0.0 },
            started_unix_ms: started,
            updated_unix_ms: now,
        }
    }
}

/// The membership as placement sees it: a new pass starts when this changes.
fn membership(map: &NodeMap, t: &Timeouts) -> Vec<(String, u64, Option<NodeState>)> {
    let now = now_unix_ms();
    let weights: BTreeMap<_, _> = map.placement_nodes(now, t).into_iter().map(|n| (n.id, n.weight > 0)).collect();
    map.nodes
        .keys()
        .map(|id| (id.clone(), u64::from(weights.get(id).copied().unwrap_or(false)), map.state(id, now, t)))
        .collect()
}

/// One node's reconciler.
pub struct Reconciler {
    engine: Arc<ChunkEngine>,
    meta: MetaClient,
    map: watch::Receiver<Arc<NodeMap>>,
    cfg: RepairConfig,
    stats: Arc<RepairStats>,
    tracker: Arc<PutTracker>,
    conns: Mutex<HashMap<String, NodeClient>>,
    last_publish: Mutex<Instant>,
}

/// A copy to push: the chunk, and the node that lacks it.
struct Push {
    id: String,
    addr: String,
    hash: ChunkHash,
    len: u64,
}

/// What one page of local chunks needs.
struct Plan {
    hash: ChunkHash,
    info: ChunkInfo,
    /// Placement order of every member, with each one's state.
    rank: Vec<(String, NodeState)>,
}

impl Reconciler {
    /// A reconciler for `engine`, following the node map `map`.
    pub fn new(
        engine: Arc<ChunkEngine>,
        meta: MetaClient,
        map: watch::Receiver<Arc<NodeMap>>,
        cfg: RepairConfig,
        stats: Arc<RepairStats>,
        tracker: Arc<PutTracker>,
    ) -> Self {
        Reconciler {
            engine,
            meta,
            map,
            cfg,
            stats,
            tracker,
            conns: Mutex::new(HashMap::new()),
            last_publish: Mutex::new(Instant::now()),
        }
    }

    /// Runs passes until `stop` turns true: every `interval`, and within `MEMBERSHIP_CHECK` of a
    /// membership change (a node going down, out, draining, or joining); only while this node
    /// sees itself up or draining in the node map.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut last_members = None;
        let mut last_pass = Instant::now() - self.cfg.interval;
        loop {
            let (members, self_live) = {
                let map = self.map.borrow();
                (membership(&map, &self.cfg.timeouts), self.sees_itself_live(&map))
            };
            // A node that does not see itself up (or draining) has a stale view: it has just
            // started and its first heartbeat has not come back through the watch, or it is cut
            // off from the metadata service. Placement without it would call its copies surplus.
            if self_live && (last_members.as_ref() != Some(&members) || last_pass.elapsed() >= self.cfg.interval) {
                last_members = Some(members);
                last_pass = Instant::now();
                let pass = self.pass();
                tokio::select! {
                    r = pass => if let Err(e) = r {
                        add(&self.stats.errors, 1);
                        tracing::warn!(error = %e, "repair pass stopped early; the next one resumes");
                    },
                    _ = stop.wait_for(|s| *s) => return,
                }
                self.stats.active.store(false, Ordering::Relaxed);
                self.publish().await;
            }
            // Membership follows heartbeat ages, so it is looked at often (it costs nothing):
            // a rebuild starts within `MEMBERSHIP_CHECK` of a node going out.
            tokio::select! {
                _ = tokio::time::sleep(MEMBERSHIP_CHECK) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Whether `map` shows this node up or draining (anything else is a stale or cut-off view).
    fn sees_itself_live(&self, map: &NodeMap) -> bool {
        let state = map.state(&self.cfg.self_id, now_unix_ms(), &self.cfg.timeouts);
        matches!(state, Some(NodeState::Up | NodeState::Draining))
    }

    /// Publishes the figures if the last publication is a second old (or `now`).
    async fn publish_every_second(&self) {
        {
            let mut last = self.last_publish.lock().expect("publish lock");
            if last.elapsed() < Duration::from_secs(1) {
                return;
            }
            *last = Instant::now();
        }
        self.publish().await;
    }

    async fn publish(&self) {
        *self.last_publish.lock().expect("publish lock") = Instant::now();
        let p = self.stats.snapshot(&self.cfg.self_id);
        let key = format!("{REPAIR_PREFIX}{}", self.cfg.self_id);
        let value = p.encode();
        if let Err(e) = self.meta.put(key.as_bytes(), &value).await {
            tracing::debug!(error = %e, "could not publish repair progress");
        }
    }

    async fn conn(&self, addr: &str) -> Result<NodeClient, String> {
        if let Some(c) = self.conns.lock().expect("conns lock").get(addr) {
            return Ok(c.clone());
        }
        let c = NodeClient::connect(addr).await.map_err(|e| e.to_string())?;
        self.conns.lock().expect("conns lock").insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChunkEngine) -> Result<T, chunk_engine::ChunkError> + Send + 'static,
    ) -> Result<T, String> {
        let e = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&e)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }

    /// One pass over every local chunk. The scan runs ahead of the copying by up to a page of
    /// pushes, so copies never stop for a page's listing and `Has` round trips.
    async fn pass(&self) -> Result<(), String> {
        let s = &self.stats;
        add(&s.passes, 1);
        s.active.store(true, Ordering::Relaxed);
        s.pass_total.store(self.engine.stats().chunks, Ordering::Relaxed);
        for a in [&s.pass_scanned, &s.pending_chunks, &s.pending_bytes, &s.under_replicated, &s.pass_bytes] {
            a.store(0, Ordering::Relaxed);
        }
        s.started_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        self.publish().await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Push>(PAGE);
        let scan = async move {
            let mut after: Option<ChunkHash> = None;
            // Copies of chunks nothing references yet (garbage awaiting pool GC, or put and not
            // yet committed) wait until the scan is done, so the data in use is whole again first.
            let mut deferred = Vec::new();
            loop {
                let page = self.blocking(move |e| e.list(after.as_ref(), PAGE)).await?;
                let (Some(first), Some(last)) = (page.first().map(|c| c.0), page.last().map(|c| c.0)) else { break };
                after = Some(last);
                let pushes = self.page(page).await?;
                let now = self.live_first(pushes, &first, &last, &mut deferred).await;
                for push in now {
                    if tx.send(push).await.is_err() {
                        break;
                    }
                }
                self.publish_every_second().await;
            }
            if !deferred.is_empty() {
                tracing::info!(
                    copies = deferred.len(),
                    "copies of referenced chunks queued; now those of unreferenced ones"
                );
            }
            for push in deferred {
                if tx.send(push).await.is_err() {
                    break;
                }
            }
            Ok::<(), String>(())
        };
        let (scanned, ()) = tokio::join!(scan, self.copy(rx));
        scanned?;
        self.clear_repaired_records().await
    }

    /// Deletes `cluster/under/` records of chunks held here whose R placed nodes are all up and
    /// hold a good copy now (whichever holder gets there first; deleting twice is harmless).
    async fn clear_repaired_records(&self) -> Result<(), String> {
        let end = {
            let mut e = UNDER_PREFIX.as_bytes().to_vec();
            e.push(0xff);
            e
        };
        let mut from = UNDER_PREFIX.as_bytes().to_vec();
        loop {
            let page = self.meta.range(&from, &end, 256).await.map_err(|e| e.to_string())?;
            let hashes: Vec<ChunkHash> = page
                .kvs
                .iter()
                .filter_map(|kv| std::str::from_utf8(&kv.key).ok()?.strip_prefix(UNDER_PREFIX)?.parse().ok())
                .collect();
            let local = self.blocking(move |e| {
                hashes.into_iter().filter_map(|h| Some(e.info(&h).transpose()?.map(|i| (h, i)))).collect()
            });
            let local: Vec<(ChunkHash, ChunkInfo)> = local.await?;
            let plans = self.plan(local);
            let good = self.ask_holders(&plans).await;
            for p in &plans {
                let placed = &p.rank[..p.rank.len().min(self.cfg.replicas)];
                let whole = placed.len() == self.cfg.replicas
                    && placed.iter().all(|(id, s)| *s == NodeState::Up && good.holds(id, p, &self.cfg.self_id));
                if whole {
                    let key = format!("{UNDER_PREFIX}{}", p.hash);
                    self.meta.delete(key.as_bytes()).await.map_err(|e| e.to_string())?;
                }
            }
            match page.next_key {
                Some(k) => from = k,
                None => return Ok(()),
            }
        }
    }

    /// Each chunk's ranking over the current members, with their states.
    fn plan(&self, chunks: Vec<(ChunkHash, ChunkInfo)>) -> Vec<Plan> {
        let map = self.map.borrow().clone();
        let now = now_unix_ms();
        let t = &self.cfg.timeouts;
        let members = map.placement_nodes(now, t);
        chunks
            .into_iter()
            .map(|(hash, info)| {
                let rank = placement::rank(&hash.0, &members, self.cfg.replicas)
                    .into_iter()
                    .filter_map(|n| Some((n.id.clone(), map.state(&n.id, now, t)?)))
                    .collect();
                Plan { hash, info, rank }
            })
            .collect()
    }

    /// Asks the other live nodes that matter (the placed ones, and any ranked before this one)
    /// which of these chunks they hold in good shape: one call per node.
    async fn ask_holders(&self, plans: &[Plan]) -> Holders {
        let map = self.map.borrow().clone();
        let (r, me) = (self.cfg.replicas, self.cfg.self_id.as_str());
        let mut ask: HashMap<String, Vec<ChunkHash>> = HashMap::new();
        for p in plans {
            let my_pos = p.rank.iter().position(|(id, _)| id == me).unwrap_or(usize::MAX);
            for (i, (id, state)) in p.rank.iter().enumerate() {
                let relevant = i < r || i < my_pos;
                if id != me && relevant && matches!(state, NodeState::Up | NodeState::Draining) {
                    ask.entry(id.clone()).or_default().push(p.hash);
                }
            }
        }
        let answers = futures::future::join_all(ask.into_iter().map(|(id, hashes)| {
            let addr = map.nodes.get(&id).map(|n| n.addr.clone()).unwrap_or_default();
            async move {
                let res = async {
                    let c = self.conn(&addr).await?;
                    c.has(&hashes).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(Duration::from_secs(10), res).await {
                    Ok(Ok(states)) => states
                        .into_iter()
                        .filter(|s| s.present && !s.quarantined)
                        .map(|s| (id.clone(), s.hash))
                        .collect(),
                    Ok(Err(e)) => {
                        tracing::debug!(node = %id, error = %e, "has() failed; treating its copies as missing");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                }
            }
        }))
        .await;
        Holders(answers.into_iter().flatten().collect())
    }

    /// Scans one page of local chunks: heals damaged copies, drops surplus ones, and returns the
    /// copies this node must push.
    async fn page(&self, page: Vec<(ChunkHash, ChunkInfo)>) -> Result<Vec<Push>, String> {
        let map = self.map.borrow().clone();
        let r = self.cfg.replicas;
        let me = self.cfg.self_id.as_str();
        if !self.sees_itself_live(&map) {
            return Err("this node no longer sees itself up in the node map".into());
        }
        let plans = self.plan(page);
        let good = self.ask_holders(&plans).await;
        let holds = |id: &str, p: &Plan| good.holds(id, p, me);

        let mut pushes = Vec::new();
        for p in &plans {
            add(&self.stats.pass_scanned, 1);
            let live = |s: &NodeState| matches!(s, NodeState::Up | NodeState::Draining);
            if p.info.quarantined {
                // Scrub found (or a read hit) a damaged copy here: take a good one from a replica.
                let source =
                    p.rank.iter().find(|(id, s)| id != me && live(s) && holds(id, p)).map(|(id, _)| id.clone());
                match source {
                    Some(src) => match self.heal(&map, &src, &p.hash).await {
                        Ok(()) => add(&self.stats.healed_chunks, 1),
                        Err(e) => {
                            add(&self.stats.errors, 1);
                            tracing::warn!(chunk = %p.hash, error = %e, "could not heal damaged copy");
                        }
                    },
                    None => tracing::warn!(chunk = %p.hash, "damaged copy and no good replica reachable"),
                }
                continue;
            }
            let coordinator = p.rank.iter().find(|(id, s)| live(s) && holds(id, p)).map(|(id, _)| id.as_str());
            let placed = &p.rank[..p.rank.len().min(r)];
            if coordinator == Some(me) {
                let mut short = false;
                for (id, state) in placed {
                    if id == me || holds(id, p) {
                        continue;
                    }
                    if *state == NodeState::Up {
                        let addr = map.nodes.get(id).map(|n| n.addr.clone()).unwrap_or_default();
                        pushes.push(Push { id: id.clone(), addr, hash: p.hash, len: p.info.len as u64 });
                        add(&self.stats.pending_chunks, 1);
                        add(&self.stats.pending_bytes, p.info.len as u64);
                    } else {
                        short = true;
                    }
                }
                if short || placed.len() < r {
                    add(&self.stats.under_replicated, 1);
                }
            }
            let wanted_here = placed.iter().any(|(id, _)| id == me);
            let all_placed_hold = placed.len() == r && placed.iter().all(|(id, s)| *s == NodeState::Up && holds(id, p));
            if !wanted_here && all_placed_hold {
                let (hash, refs) = (p.hash, p.info.refs);
                match self.blocking(move |e| (0..refs).try_for_each(|_| e.unref(&hash).map(|_| ()))).await {
                    Ok(()) => add(&self.stats.dropped_chunks, 1),
                    Err(e) => {
                        add(&self.stats.errors, 1);
                        tracing::warn!(chunk = %p.hash, error = %e, "could not drop surplus copy");
                    }
                }
            }
        }

        Ok(pushes)
    }

    /// Splits one page's copies (its chunks from `first` to `last`): those of chunks something
    /// references go now; the others join `deferred` while it has room (`DEFERRED_MAX`). When
    /// the references cannot be read, everything goes now, in scan order.
    async fn live_first(
        &self,
        pushes: Vec<Push>,
        first: &ChunkHash,
        last: &ChunkHash,
        deferred: &mut Vec<Push>,
    ) -> Vec<Push> {
        if pushes.is_empty() || deferred.len() >= DEFERRED_MAX {
            return pushes;
        }
        match cluster::refs::referenced_between(&self.meta, first, last).await {
            Ok(referenced) => split_live(pushes, &referenced, deferred),
            Err(e) => {
                tracing::debug!(error = %e, "reading references failed; copying in scan order");
                pushes
            }
        }
    }

    /// Pushes the copies the scan found missing as they come: at most `MAX_PARALLEL_PUSHES` and
    /// `PUSH_BYTES_IN_FLIGHT` at once, within the bandwidth budget.
    async fn copy(&self, rx: tokio::sync::mpsc::Receiver<Push>) {
        let mut budget = Throttle::new(self.cfg.rate_bytes_per_sec);
        let bytes = Arc::new(tokio::sync::Semaphore::new(PUSH_BYTES_IN_FLIGHT as usize));
        let pushes = tokio_stream::wrappers::ReceiverStream::new(rx).map(|p| {
            let bytes = bytes.clone();
            async move {
                // A chunk larger than the whole allowance goes alone.
                let want = p.len.min(PUSH_BYTES_IN_FLIGHT) as u32;
                let _held = bytes.acquire_many_owned(want).await.expect("semaphore never closed");
                let res = self.push(&p.addr, &p.hash).await.map_err(|e| format!("push {} to {}: {e}", p.hash, p.id));
                (res, p.len)
            }
        });
        let mut done = pushes.buffer_unordered(MAX_PARALLEL_PUSHES);
        while let Some((res, len)) = done.next().await {
            self.stats.pending_chunks.fetch_sub(1, Ordering::Relaxed);
            self.stats.pending_bytes.fetch_sub(len, Ordering::Relaxed);
            match res {
                Ok(()) => {
                    add(&self.stats.copied_chunks, 1);
                    add(&self.stats.copied_bytes, len);
                    add(&self.stats.pass_bytes, len);
                    budget.spend(len).await;
                    self.publish_every_second().await;
                }
                Err(e) => {
                    add(&self.stats.errors, 1);
                    tracing::warn!(error = %e, "repair copy failed; retried next pass");
                }
            }
        }
    }

    /// Copies a chunk to `addr`. The receiver verifies the data before storing it, so it is not
    /// hashed here too; if the receiver refuses it, this copy is verified (and quarantined if bad,
    /// so the next pass copies from another replica).
    async fn push(&self, addr: &str, hash: &ChunkHash) -> Result<(), String> {
        let h = *hash;
        let data = self.blocking(move |e| e.get_for_copy(&h)).await?;
        let c = self.conn(addr).await?;
        match c.put(Some(*hash), data).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.code() == Some(tonic::Code::InvalidArgument) {
                    let _ = self.blocking(move |e| e.get(&h)).await;
                }
                Err(e.to_string())
            }
        }
    }

    async fn heal(&self, map: &NodeMap, src: &str, hash: &ChunkHash) -> Result<(), String> {
        let addr = map.nodes.get(src).map(|n| n.addr.clone()).ok_or("source left the map")?;
        let data = self.conn(&addr).await?.get(hash).await.map_err(|e| e.to_string())?;
        let h = *hash;
        self.tracker.record(hash);
        self.blocking(move |e| e.put_verified(&h, &data)).await?;
        tracing::info!(chunk = %hash, from = src, "damaged copy replaced from a good replica");
        Ok(())
    }
}

/// The copies of referenced chunks, in order; the others are appended to `deferred` while it
/// holds fewer than `DEFERRED_MAX` (past that they stay in the returned list).
fn split_live(pushes: Vec<Push>, referenced: &HashSet<ChunkHash>, deferred: &mut Vec<Push>) -> Vec<Push> {
    let mut now = Vec::with_capacity(pushes.len());
    for p in pushes {
        if referenced.contains(&p.hash) || deferred.len() >= DEFERRED_MAX {
            now.push(p);
        } else {
            deferred.push(p);
        }
    }
    now
}

/// Which (node, chunk) pairs hold a good copy, from `Has` answers.
struct Holders(HashSet<(String, Vec<u8>)>);

impl Holders {
    /// Whether node `id` holds a good copy of `p`'s chunk (this node: unless quarantined here).
    fn holds(&self, id: &str, p: &Plan, me: &str) -> bool {
        if id == me { !p.info.quarantined } else { self.0.contains(&(id.to_string(), p.hash.0.to_vec())) }
    }
}

/// Keeps pushes under a byte rate.
struct Throttle {
    rate: u64,
    start: Instant,
    spent: u64,
}

impl Throttle {
    fn new(rate: u64) -> Self {
        Throttle { rate, start: Instant::now(), spent: 0 }
    }

    async fn spend(&mut self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        self.spent += bytes;
        let due = Duration::from_secs_f64(self.spent as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(n: u8) -> Push {
        Push { id: "n2".into(), addr: "127.0.0.1:1".into(), hash: ChunkHash::of(&[n]), len: 64 << 10 }
    }

    #[test]
    fn referenced_chunks_are_copied_first_and_the_rest_wait_in_order() {
        let referenced: HashSet<ChunkHash> = [1u8, 3].iter().map(|n| ChunkHash::of(&[*n])).collect();
        let mut deferred = Vec::new();
        let now = split_live((0..5).map(push).collect(), &referenced, &mut deferred);
        let hashes = |v: &[Push]| v.iter().map(|p| p.hash).collect::<Vec<_>>();
        assert_eq!(hashes(&now), vec![ChunkHash::of(&[1]), ChunkHash::of(&[3])]);
        assert_eq!(hashes(&deferred), vec![ChunkHash::of(&[0]), ChunkHash::of(&[2]), ChunkHash::of(&[4])]);
    }

    #[test]
    fn a_full_deferred_list_lets_the_rest_go_at_once() {
        let referenced = HashSet::new();
        let mut deferred: Vec<Push> = (0..DEFERRED_MAX).map(|i| push((i % 251) as u8)).collect();
        let now = split_live((0..3).map(push).collect(), &referenced, &mut deferred);
        assert_eq!(now.len(), 3, "nothing more is held back once the list is full");
        assert_eq!(deferred.len(), DEFERRED_MAX);
    }
}
