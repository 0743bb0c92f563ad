//! Page-aligned heap buffers for O_DIRECT I/O, convertible into `Bytes` without copying, and the
//! pools that recycle them by size class (so that a put or get neither allocates nor zeroes a
//! buffer, and a 64 KiB chunk does not take a 4 MiB one).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment required by O_DIRECT on the filesystems we run on.
pub(crate) const IO_ALIGN: usize = 4096;

/// A zero-initialised buffer whose start and length are multiples of [`IO_ALIGN`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer exclusively owns its allocation; &AlignedBuf only gives shared reads.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` bytes rounded up to the alignment, zeroed.
    pub fn zeroed(len: usize) -> Self {
        let len = len.max(IO_ALIGN).next_multiple_of(IO_ALIGN);
        let layout = Layout::from_size_align(len, IO_ALIGN).expect("aligned layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer (never: lengths are rounded up to the alignment).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, IO_ALIGN).expect("aligned layout");
        // SAFETY: allocated in `zeroed` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Buffers of one size kept for reuse. Their contents are whatever the last user left.
pub(crate) struct BufPool {
    size: usize,
    keep: usize,
    bufs: Mutex<Vec<AlignedBuf>>,
}

impl BufPool {
    /// A pool of buffers of `size` bytes (rounded up to the alignment) keeping at most `keep`.
    pub(crate) fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(BufPool { size: size.max(IO_ALIGN).next_multiple_of(IO_ALIGN), keep, bufs: Mutex::new(Vec::new()) })
    }

    /// The size of the pool's buffers.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A buffer of the pool's size (`len` must not exceed it): a recycled one, else a new one.
    pub(crate) fn take(&self, len: usize) -> AlignedBuf {
        debug_assert!(len <= self.size, "buffer of {len} bytes asked from a pool of {}", self.size);
        let recycled = self.bufs.lock().expect("buffer pool lock").pop();
        recycled.unwrap_or_else(|| AlignedBuf::zeroed(self.size.max(len)))
    }

    /// Returns a buffer for reuse (dropped when the pool is full or it has another size).
    pub(crate) fn give(&self, buf: AlignedBuf) {
        if buf.len() == self.size {
            let mut bufs = self.bufs.lock().expect("buffer pool lock");
            if bufs.len() < self.keep {
                bufs.push(buf);
            }
        }
    }

    /// Lends `buf` out; it comes back to the pool when the last `Bytes` made from it is dropped.
    pub(crate) fn lend(self: &Arc<Self>, buf: AlignedBuf) -> Lent {
        Lent { buf: Some(buf), pool: self.clone() }
    }
}

/// Smallest size class of [`BufPools`] (a 64 KiB chunk's record fits it).
const SMALLEST_CLASS: usize = 128 << 10;
/// Bytes each class may keep idle (at least `MIN_KEEP`, at most `MAX_KEEP` buffers).
const KEEP_BYTES: usize = 16 << 20;
const MIN_KEEP: usize = 16;
const MAX_KEEP: usize = 64;

/// Pools by size class: powers of four from 128 KiB below the largest record, and the largest
/// record's span itself. A buffer comes from the smallest class it fits.
pub(crate) struct BufPools {
    pools: Vec<Arc<BufPool>>,
}

impl BufPools {
    /// Classes for records of at most `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(IO_ALIGN).next_multiple_of(IO_ALIGN);
        let mut sizes = Vec::new();
        let mut size = SMALLEST_CLASS;
        while size < max {
            sizes.push(size);
            size *= 4;
        }
        sizes.push(max);
        let pools =
            sizes.into_iter().map(|size| BufPool::new(size, (KEEP_BYTES / size).clamp(MIN_KEEP, MAX_KEEP))).collect();
        BufPools { pools }
    }

    /// The pool whose buffers hold `len` bytes most tightly; none when `len` is past the largest.
    pub(crate) fn for_len(&self, len: usize) -> Option<&Arc<BufPool>> {
        self.pools.iter().find(|p| p.size() >= len)
    }

    /// A buffer of at least `len` bytes: recycled from its class, else new.
    pub(crate) fn take(&self, len: usize) -> AlignedBuf {
        match self.for_len(len) {
            Some(p) => p.take(len),
            None => AlignedBuf::zeroed(len),
        }
    }

    /// Returns a buffer to its class (dropped when it has none or the class is full).
    pub(crate) fn give(&self, buf: AlignedBuf) {
        if let Some(p) = self.pools.iter().find(|p| p.size() == buf.len()) {
            p.give(buf);
        }
    }
}

/// A pooled buffer owned by `Bytes` (see [`BufPool::lend`]).
pub(crate) struct Lent {
    buf: Option<AlignedBuf>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_ref())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.give(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_from_the_smallest_class_it_fits_and_returns_there() {
        let max = (4 << 20) + IO_ALIGN;
        let pools = BufPools::new(max);
        let sizes: Vec<usize> = pools.pools.iter().map(|p| p.size()).collect();
        assert_eq!(sizes, vec![128 << 10, 512 << 10, 2 << 20, max]);
        assert_eq!(pools.for_len((64 << 10) + IO_ALIGN).map(|p| p.size()), Some(128 << 10));
        assert_eq!(pools.for_len((1 << 20) + IO_ALIGN).map(|p| p.size()), Some(2 << 20));
        assert_eq!(pools.for_len(max).map(|p| p.size()), Some(max));
        assert!(pools.for_len(max + 1).is_none());

        // A 68 KiB record takes a 128 KiB buffer, which goes back to its class and is reused.
        let b = pools.take(68 << 10);
        assert_eq!(b.len(), 128 << 10);
        let addr = b.as_ref().as_ptr();
        pools.give(b);
        assert_eq!(pools.take(4096).as_ref().as_ptr(), addr);
        // Past the largest class: a buffer of its own, not kept.
        let big = pools.take(max + 1);
        assert_eq!(big.len(), max + IO_ALIGN);
        pools.give(big);
        assert!(pools.pools.iter().all(|p| p.bufs.lock().unwrap().is_empty()));
    }
}
