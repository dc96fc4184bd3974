//! Read buffers kept for reuse. A fetch reads up to megabytes a partition into a fresh
//! buffer that lives until the response is written; glibc serves such sizes from memory it
//! hands back to the kernel when they are freed, so every fetch page-faulted its buffer in
//! again (measured: a tenth of the broker's CPU while consumers read at 600 MB/s). Buffers
//! of at least [`MIN_POOLED`] bytes go back to a small process-wide pool when the last
//! `Bytes` made from them drops, and the next read of a similar size takes one.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// Smaller buffers come from the allocator's own free lists, warm already.
const MIN_POOLED: usize = 64 << 10;
/// Most bytes the pool keeps while nobody uses them.
const MAX_IDLE: usize = 64 << 20;

static POOL: Pool = Pool::new();

/// An empty buffer with room for at least `want` bytes (see [`Pool::take`]).
pub(crate) fn take(want: usize) -> Vec<u8> {
    POOL.take(want)
}

/// Gives `out`, when it has no buffer yet, a pooled one with room for `want` bytes: what a
/// read appends to.
pub(crate) fn ensure(out: &mut Vec<u8>, want: usize) {
    if out.capacity() == 0 {
        *out = take(want);
    }
}

/// The bytes read into `buf` (see [`Pool::freeze`]).
pub(crate) fn freeze(buf: Vec<u8>) -> Bytes {
    POOL.freeze(buf)
}

struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    const fn new() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer with room for at least `want` bytes: a pooled one if one fits with
    /// little to spare (an eighth of `want`: a read fills all of a buffer's spare capacity
    /// and throws away what is past `want`), else a new one.
    fn take(&self, want: usize) -> Vec<u8> {
        if want >= MIN_POOLED / 2 {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let fits = |b: &Vec<u8>| b.capacity() >= want && b.capacity() - want <= want / 8;
            if let Some(i) = idle.iter().position(fits) {
                return idle.swap_remove(i);
            }
        }
        Vec::with_capacity(want)
    }

    /// The bytes read into `buf`; a buffer worth keeping returns to the pool when they drop.
    fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() < MIN_POOLED {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Pooled(buf, self))
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= MAX_IDLE {
            idle.push(buf);
        }
    }
}

struct Pooled(Vec<u8>, &'static Pool);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.1.give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_reused_once_its_bytes_drop_and_a_small_one_is_not() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new()));
        let mut buf = pool.take(1 << 20);
        buf.extend_from_slice(b"first");
        let first = buf.as_ptr();
        let bytes = pool.freeze(buf);
        let copy = bytes.clone();
        drop(bytes);
        let busy = pool.take(1 << 20);
        assert_ne!(busy.as_ptr(), first, "still in use by a clone");
        drop(copy);
        let (larger, smaller) = (pool.take(4 << 20), pool.take(100 << 10));
        assert_ne!(larger.as_ptr(), first, "too small for this read");
        assert_ne!(smaller.as_ptr(), first, "far larger than this read needs");
        let slightly = pool.take((1 << 20) - (1 << 18));
        assert_ne!(
            slightly.as_ptr(),
            first,
            "a third more than this read needs"
        );
        let again = pool.take(1 << 20);
        assert_eq!(again.as_ptr(), first, "reused");
        assert!(again.is_empty());
        let small = pool.freeze(Vec::with_capacity(100));
        drop(small);
        assert!(
            pool.idle.lock().expect("lock").is_empty(),
            "small buffers are not kept"
        );
    }
}
