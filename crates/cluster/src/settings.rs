//! The pool's settings — copies per chunk (R) and when a silent node is down and out — kept once
//! in the metadata service, so that every storage node, client and the CLI place chunks and judge
//! nodes alike. Two nodes that disagreed on R would each undo the other's copies forever.

use metadata_client::{MetaClient, Txn};
use serde::{Deserialize, Serialize};

use crate::{ClusterError, Timeouts};

/// `cluster/settings` → [`PoolSettings`] (JSON), written once by the first storage node to join.
pub const SETTINGS_KEY: &str = "cluster/settings";
/// Format version of the settings record.
pub const SETTINGS_VERSION: u32 = 1;

/// What every member of the pool must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSettings {
    /// Format version ([`SETTINGS_VERSION`]).
    pub version: u32,
    /// Copies of every chunk.
    pub replicas: usize,
    /// Milliseconds without heartbeat before a node is down.
    pub down_after_ms: u64,
    /// Milliseconds without heartbeat before a node is out (its chunks are repaired elsewhere).
    pub out_after_ms: u64,
}

impl PoolSettings {
    /// Settings with `replicas` copies and timeouts `t`.
    pub fn new(replicas: usize, t: Timeouts) -> Self {
        PoolSettings {
            version: SETTINGS_VERSION,
            replicas,
            down_after_ms: t.down_after.as_millis() as u64,
            out_after_ms: t.out_after.as_millis() as u64,
        }
    }

    /// The node timeouts.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            down_after: std::time::Duration::from_millis(self.down_after_ms),
            out_after: std::time::Duration::from_millis(self.out_after_ms),
        }
    }

    pub(crate) fn decode(value: &[u8]) -> Result<Self, ClusterError> {
        let s: PoolSettings = serde_json::from_slice(value)
            .map_err(|e| ClusterError::Config(format!("unreadable pool settings at {SETTINGS_KEY}: {e}")))?;
        format_version::check(format!("pool settings at {SETTINGS_KEY}"), s.version, SETTINGS_VERSION)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        Ok(s)
    }

    /// The pool's recorded settings, if a storage node has joined yet.
    pub async fn load(meta: &MetaClient) -> Result<Option<Self>, ClusterError> {
        match meta.get(SETTINGS_KEY.as_bytes()).await? {
            Some(kv) => Ok(Some(Self::decode(&kv.value)?)),
            None => Ok(None),
        }
    }

    /// Records these settings as the pool's unless some are recorded already (the first storage
    /// node to join sets them); otherwise checks that they are the pool's, with a one-line error
    /// naming both when they are not.
    pub async fn establish(&self, meta: &MetaClient) -> Result<(), ClusterError> {
        let key = SETTINGS_KEY.as_bytes();
        let value = serde_json::to_vec(self).expect("pool settings serialize");
        if meta.txn(Txn::new().absent(key).put(key, &value)).await?.succeeded {
            return Ok(());
        }
        let pool = Self::load(meta).await?.ok_or_else(|| {
            ClusterError::Unavailable(format!("pool settings vanished from {SETTINGS_KEY} right after being set"))
        })?;
        if pool != *self {
            return Err(ClusterError::Config(format!(
                "this pool keeps {} copies, nodes down after {} ms and out after {} ms ({SETTINGS_KEY}); \
                 this member is configured for {} copies, {} ms and {} ms: configure it like the pool",
                pool.replicas,
                pool.down_after_ms,
                pool.out_after_ms,
                self.replicas,
                self.down_after_ms,
                self.out_after_ms
            )));
        }
        Ok(())
    }
}
