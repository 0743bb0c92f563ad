//! The storage pool as one: the node map (registrations, heartbeats, states) in the metadata
//! service, placement of chunks on nodes, and [`ChunkClient`], the replicated chunk client every
//! frontend uses.

mod client;
mod error;
pub mod gc;
pub mod io_retry;
pub mod journal;
pub mod nodemap;
pub mod refs;
pub mod read_cache;
mod repair_status;
pub mod settings;

#[cfg(test)]
mod format_tests;

pub use client::{ChunkClient, ClientConfig, PutReport, UNDER_PREFIX, UnderReplicated, Writer};
pub use error::ClusterError;
pub use io_retry::{Attempts, DEFAULT_IO_TIMEOUT, IoRetry};
pub use nodemap::{AdminState, NodeMap, NodeRecord, NodeState, Timeouts};
pub use repair_status::{REPAIR_PREFIX, RepairProgress};
pub use settings::{PoolSettings, SETTINGS_KEY};
