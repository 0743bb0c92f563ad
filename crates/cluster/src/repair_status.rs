//! What each storage node's reconciler (repair, rebalance, scrub healing) publishes about its
//! progress under `cluster/repair/<node id>`, for `cairn cluster status` and dashboards.

use serde::{Deserialize, Serialize};

/// `cluster/repair/<node id>` → [`RepairProgress`] (JSON).
pub const REPAIR_PREFIX: &str = "cluster/repair/";

/// Format version of [`RepairProgress`] (a `"version"` beside its fields; records from before
/// it read as 1).
pub const REPAIR_PROGRESS_VERSION: u32 = 1;

/// One node's reconciliation figures: the current (or last) pass and running totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// The node.
    pub node: String,
    /// Passes started since the node started.
    pub passes: u64,
    /// A pass is running now.
    pub active: bool,
    /// Local chunks when the pass started.
    pub pass_total: u64,
    /// Local chunks examined so far in this pass.
    pub pass_scanned: u64,
    /// Copies this pass found to make that are not made yet.
    pub pending_chunks: u64,
    /// Bytes of those.
    pub pending_bytes: u64,
    /// Chunks this node coordinates that have fewer good copies than R on reachable nodes.
    pub under_replicated: u64,
    /// Copies pushed to other nodes (since start).
    pub copied_chunks: u64,
    /// Bytes pushed (since start).
    pub copied_bytes: u64,
    /// Local copies dropped because placement moved them elsewhere (since start).
    pub dropped_chunks: u64,
    /// Damaged local copies replaced from a good replica (since start).
    pub healed_chunks: u64,
    /// Failed copy, heal or drop attempts (since start).
    pub errors: u64,
    /// Push rate of this pass, bytes per second.
    pub rate_bytes_per_sec: f64,
    /// When this pass started (ms since the Unix epoch).
    pub started_unix_ms: u64,
    /// When these figures were taken.
    pub updated_unix_ms: u64,
}

impl RepairProgress {
    /// As stored: JSON with `"version"`.
    pub fn encode(&self) -> Vec<u8> {
        format_version::json::encode(self, REPAIR_PROGRESS_VERSION)
    }

    /// As read from `key` (a record without a version is version 1; a newer one is refused).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self, format_version::json::JsonRecordError> {
        format_version::json::decode(key, bytes, REPAIR_PROGRESS_VERSION).map(|(_, r)| r)
    }

    /// Seconds left at the current rate for what is known to be pending, if a rate is known.
    pub fn eta_secs(&self) -> Option<f64> {
        (self.rate_bytes_per_sec > 0.0).then(|| self.pending_bytes as f64 / self.rate_bytes_per_sec)
    }
}
