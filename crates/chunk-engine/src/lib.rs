//! The chunk engine: content-hashed chunks stored in append-only segment files on a local disk.
//!
//! A chunk is a byte string of at most `max_chunk_size` bytes (pinned at format time), named by
//! its blake3 hash. Chunks are appended as self-describing records to segment files; an index
//! (hash → segment, offset, length, reference count) lives in a [`kv_engine::KvEngine`] and changes
//! atomically. Puts are acknowledged only after the record and the index entry are fsynced, and
//! concurrent puts share those fsyncs (group commit, see `commit`). Every read verifies the hash.
//! See `docs/ARCHITECTURE.md` for the on-disk layout.

mod aligned;
mod commit;
pub mod cv_cache;
mod engine;
mod error;
mod format;
mod fsutil;
mod gc;
mod hash;
mod index;
mod lanes;
mod record;
mod scrub;
mod segment;
mod stats;
pub mod tree;

pub use aligned::AlignedBuf;
pub use engine::{ChunkEngine, ChunkInfo, EngineConfig, PutOutcome};
pub use error::ChunkError;
pub use format::{FORMAT_VERSION, PinnedSettings};
pub use gc::GcReport;
pub use hash::ChunkHash;
pub use scrub::{ScrubProgress, ScrubReport};
pub use stats::EngineStats;

/// Default maximum chunk size: 4 MiB.
pub const DEFAULT_MAX_CHUNK_SIZE: u32 = 4 << 20;

#[cfg(test)]
mod tests;
