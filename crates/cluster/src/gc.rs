//! Garbage collection across the pool: the epoch record that starts a round, and what each
//! storage node reports when its sweep is done. The protocol and why it is safe are in
//! `docs/ARCHITECTURE.md` ("Garbage collection across the pool"); the node side is the storage
//! node's `pool_gc` module.

use std::time::Duration;

use metadata_client::{MetaClient, Txn};
use serde::{Deserialize, Serialize};

use crate::ClusterError;
use crate::nodemap::now_unix_ms;

/// `cluster/gc/epoch` → [`GcEpoch`] (JSON): the current round.
pub const EPOCH_KEY: &str = "cluster/gc/epoch";
/// `cluster/gc/done/<epoch>/<node>` → [`GcSweep`] (JSON).
pub const DONE_PREFIX: &str = "cluster/gc/done/";
/// Format version of [`GcEpoch`] and [`GcSweep`] (a `"version"` beside their fields; records
/// from before it read as 1).
pub const GC_RECORD_VERSION: u32 = 1;
/// Default write window: reference keys must be committed this soon after their chunks' puts.
pub const WRITE_WINDOW: Duration = Duration::from_secs(600);

/// One round of pool GC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcEpoch {
    /// Increases by one per round.
    pub epoch: u64,
    /// Writers' window in milliseconds: a node sweeps no sooner than this after it started
    /// tracking puts for the round.
    pub write_window_ms: u64,
    /// When the round was started (ms since the Unix epoch; informational).
    pub started_unix_ms: u64,
}

/// What one node's sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcSweep {
    /// The node.
    pub node: String,
    /// Local chunks examined.
    pub examined: u64,
    /// Chunks deleted (no reference key, not put since tracking began).
    pub deleted: u64,
    /// Bytes of those.
    pub deleted_bytes: u64,
    /// Unreferenced chunks kept because they were put within the window (garbage, unless a
    /// writer is about to reference them; a later round decides). Absent before release 2.
    #[serde(default)]
    pub held: u64,
    /// Bytes of those.
    #[serde(default)]
    pub held_bytes: u64,
    /// How long the sweep took, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// When it finished.
    pub finished_unix_ms: u64,
}

/// The current epoch record, if any round was ever started.
pub async fn current_epoch(meta: &MetaClient) -> Result<Option<GcEpoch>, ClusterError> {
    match meta.get(EPOCH_KEY.as_bytes()).await? {
        Some(kv) => decode(EPOCH_KEY, &kv.value).map(Some),
        None => Ok(None),
    }
}

/// Starts the next round (compare-and-set on the epoch record, so two starters make one
/// round) and returns it.
pub async fn start_epoch(meta: &MetaClient, write_window: Duration) -> Result<GcEpoch, ClusterError> {
    loop {
        let cur = meta.get(EPOCH_KEY.as_bytes()).await?;
        let (next, txn) = match &cur {
            Some(kv) => {
                let e: GcEpoch = decode(EPOCH_KEY, &kv.value)?;
                (e.epoch + 1, Txn::new().mod_revision_equals(EPOCH_KEY.as_bytes(), kv.mod_revision))
            }
            None => (1, Txn::new().absent(EPOCH_KEY.as_bytes())),
        };
        let rec =
            GcEpoch { epoch: next, write_window_ms: write_window.as_millis() as u64, started_unix_ms: now_unix_ms() };
        let out = meta.txn(txn.put(EPOCH_KEY.as_bytes(), &encode(&rec))).await?;
        if out.succeeded {
            return Ok(rec);
        }
    }
}

/// The sweeps reported for `epoch` so far, by node.
pub async fn sweeps(meta: &MetaClient, epoch: u64) -> Result<Vec<GcSweep>, ClusterError> {
    let start = format!("{DONE_PREFIX}{epoch}/").into_bytes();
    let end = crate::nodemap::prefix_end(&start);
    let page = meta.range(&start, &end, 10_000).await?;
    Ok(page.kvs.iter().filter_map(|kv| decode(&String::from_utf8_lossy(&kv.key), &kv.value).ok()).collect())
}

/// Removes `node`'s reports of rounds before `epoch` (rounds are frequent; only the latest is
/// kept per node).
pub async fn forget_sweeps_before(meta: &MetaClient, node: &str, epoch: u64) -> Result<(), ClusterError> {
    let start = DONE_PREFIX.as_bytes().to_vec();
    let end = crate::nodemap::prefix_end(&start);
    let page = meta.range(&start, &end, 10_000).await?;
    let suffix = format!("/{node}");
    for kv in page.kvs {
        let Ok(key) = std::str::from_utf8(&kv.key) else { continue };
        let Some(e) = key.strip_prefix(DONE_PREFIX).and_then(|k| k.strip_suffix(&suffix)) else { continue };
        if e.parse::<u64>().is_ok_and(|e| e < epoch) {
            meta.delete(&kv.key).await?;
        }
    }
    Ok(())
}

/// The latest round each node reported a sweep for, with that sweep (one per node).
pub async fn latest_sweeps(meta: &MetaClient) -> Result<Vec<(u64, GcSweep)>, ClusterError> {
    let start = DONE_PREFIX.as_bytes().to_vec();
    let end = crate::nodemap::prefix_end(&start);
    let page = meta.range(&start, &end, 10_000).await?;
    let mut latest: std::collections::BTreeMap<String, (u64, GcSweep)> = Default::default();
    for kv in page.kvs {
        let Some(epoch) = std::str::from_utf8(&kv.key)
            .ok()
            .and_then(|k| k.strip_prefix(DONE_PREFIX))
            .and_then(|k| k.split('/').next())
            .and_then(|e| e.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(s) = decode::<GcSweep>(&String::from_utf8_lossy(&kv.key), &kv.value) else { continue };
        if latest.get(&s.node).is_none_or(|(e, _)| *e < epoch) {
            latest.insert(s.node.clone(), (epoch, s));
        }
    }
    Ok(latest.into_values().collect())
}

/// Records `sweep` as `node`'s result for `epoch`.
pub async fn report_sweep(meta: &MetaClient, epoch: u64, sweep: &GcSweep) -> Result<(), ClusterError> {
    let key = format!("{DONE_PREFIX}{epoch}/{}", sweep.node);
    meta.put(key.as_bytes(), &encode(sweep)).await?;
    Ok(())
}

/// A GC record as stored: its JSON with `"version"` ([`GC_RECORD_VERSION`]).
pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    format_version::json::encode(rec, GC_RECORD_VERSION)
}

/// A GC record as read (one without a version is version 1; a newer one is refused).
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ClusterError> {
    format_version::json::decode(key, bytes, GC_RECORD_VERSION)
        .map(|(_, r)| r)
        .map_err(|e| ClusterError::Unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_reports_round_trip_and_older_ones_still_read() {
        let s = GcSweep {
            node: "n1".into(),
            examined: 10,
            deleted: 3,
            deleted_bytes: 300,
            held: 2,
            held_bytes: 200,
            duration_ms: 7,
            finished_unix_ms: 1,
        };
        let back: GcSweep = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // What earlier releases wrote: no held/duration fields.
        let old = br#"{"node":"n2","examined":5,"deleted":1,"deleted_bytes":9,"finished_unix_ms":4}"#;
        let back: GcSweep = serde_json::from_slice(old).unwrap();
        assert_eq!((back.deleted, back.held, back.duration_ms), (1, 0, 0));
        let e = GcEpoch { epoch: 4, write_window_ms: 600_000, started_unix_ms: 9 };
        assert_eq!(serde_json::from_slice::<GcEpoch>(&serde_json::to_vec(&e).unwrap()).unwrap(), e);
    }
}
