//! What a front end serves: the bytes of one volume ([`BlockBackend`]), with its errors
//! ([`BlockError`]); implemented by the volume engine's [`Volume`] and by [`MemBackend`] (memory:
//! tests, and block-bench's measure of what the front end alone costs).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;
use volume_engine::{EngineError, Volume};

/// Why a backend call failed. The values are errno values, which the NBD protocol's error field
/// uses too (and FUSE answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Writing is not allowed (a fenced attachment, a read-only export).
    #[error("operation not permitted")]
    Perm,
    #[error("input/output error")]
    Io,
    #[error("invalid argument")]
    Inval,
    #[error("no space left on device")]
    NoSpace,
}

impl BlockError {
    /// The errno value (also the NBD reply's error field).
    pub fn code(self) -> u32 {
        match self {
            BlockError::Perm => 1,
            BlockError::Io => 5,
            BlockError::Inval => 22,
            BlockError::NoSpace => 28,
        }
    }
}

/// The bytes a front end serves. Ranges are within [`size`](Self::size) (the front ends check).
/// `flush` must make durable every write acknowledged before it, whichever connection or request
/// took it (NBD advertises multi-connection consistency).
pub trait BlockBackend: Send + Sync + 'static {
    /// A short name (the FUSE mount's file-system name).
    fn name(&self) -> String;
    /// The size in bytes.
    fn size(&self) -> impl Future<Output = u64> + Send;
    /// Bytes that hold data (thin backends report less than `size`).
    fn allocated(&self) -> impl Future<Output = u64> + Send;
    /// Grows to `size` bytes (online expansion); new bytes read as zeros. Shrinking is refused.
    fn grow(&self, size: u64) -> impl Future<Output = Result<(), BlockError>> + Send;
    /// Exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = Result<Vec<u8>, BlockError>> + Send;
    /// Writes `data` at `offset` (durable after the next `flush`).
    fn write(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<(), BlockError>> + Send;
    /// Zeroes `len` bytes at `offset` (TRIM, WRITE_ZEROES, hole punching); they read back as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), BlockError>> + Send;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> impl Future<Output = Result<(), BlockError>> + Send;
}

/// The one mapping of the volume engine's errors at the front ends.
fn engine_error(e: EngineError) -> BlockError {
    match e {
        EngineError::OutOfRange { .. } | EngineError::Invalid(_) => BlockError::Inval,
        EngineError::Fenced { .. } => BlockError::Perm,
        other => {
            warn!(error = %other, "volume I/O failed");
            BlockError::Io
        }
    }
}

impl BlockBackend for Volume {
    fn name(&self) -> String {
        self.id().to_string()
    }
    async fn size(&self) -> u64 {
        self.geometry().await.capacity
    }
    async fn allocated(&self) -> u64 {
        self.allocated_blocks().await * self.geometry().await.block_size
    }
    async fn grow(&self, size: u64) -> Result<(), BlockError> {
        Volume::grow(self, size).await.map_err(engine_error)
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, BlockError> {
        Volume::read(self, offset, len.into()).await.map_err(engine_error)
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        Volume::write(self, offset, data).await.map_err(engine_error)
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        Volume::write_zeroes(self, offset, len).await.map_err(engine_error)
    }
    async fn flush(&self) -> Result<(), BlockError> {
        Volume::flush(self).await.map_err(engine_error)
    }
}

/// A backend held in memory (tests and benchmarks); counts its flushes.
pub struct MemBackend {
    data: std::sync::Mutex<Vec<u8>>,
    flushes: AtomicU64,
}

impl MemBackend {
    /// `size` zero bytes.
    pub fn new(size: usize) -> Self {
        Self::with_contents(vec![0; size])
    }
    /// A backend holding `data`.
    pub fn with_contents(data: Vec<u8>) -> Self {
        Self { data: std::sync::Mutex::new(data), flushes: AtomicU64::new(0) }
    }
    /// A copy of the bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }
    /// Flushes served so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    /// Runs `f` on the bytes `offset..offset+len`.
    pub(crate) fn with_range<T>(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8]) -> T) -> Result<T, BlockError> {
        let mut data = self.lock();
        let end = offset.checked_add(len).filter(|end| *end <= data.len() as u64).ok_or(BlockError::Inval)?;
        Ok(f(&mut data[offset as usize..end as usize]))
    }
}

impl BlockBackend for MemBackend {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    async fn allocated(&self) -> u64 {
        self.lock().len() as u64
    }
    async fn grow(&self, size: u64) -> Result<(), BlockError> {
        let mut data = self.lock();
        let size = usize::try_from(size).map_err(|_| BlockError::NoSpace)?;
        if size < data.len() {
            return Err(BlockError::Inval);
        }
        data.resize(size, 0);
        Ok(())
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, BlockError> {
        self.with_range(offset, len.into(), |r| r.to_vec())
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.with_range(offset, data.len() as u64, |r| r.copy_from_slice(data))
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.with_range(offset, len, |r| r.fill(0))
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_backend_checks_ranges_and_grows_with_zeros() {
        let m = MemBackend::with_contents(vec![7; 8]);
        assert_eq!(m.read(6, 4).await, Err(BlockError::Inval));
        assert_eq!(m.write(u64::MAX, &[1]).await, Err(BlockError::Inval));
        m.write_zeroes(2, 2).await.unwrap();
        assert_eq!(m.grow(4).await, Err(BlockError::Inval));
        m.grow(12).await.unwrap();
        assert_eq!(m.size().await, 12);
        assert_eq!(m.read(0, 12).await.unwrap(), vec![7, 7, 0, 0, 7, 7, 7, 7, 0, 0, 0, 0]);
        m.flush().await.unwrap();
        assert_eq!(m.flushes(), 1);
    }
}
