//! Upload buffers kept for reuse, and the buffers stored originals are read into.
//!
//! An upload is held whole in memory while it is hashed, probed and stored, in a
//! buffer sized by its `Content-Length`. A new buffer of megabytes is fresh memory:
//! the kernel maps and zeroes every page of it on first touch, and when it is freed
//! the pages go straight back (see `hugepages`), so the next upload pays again. Under
//! a stream of uploads that zeroing and faulting was a fifth of the server's CPU
//! (DECISIONS, "Upload buffers reused"). So a finished upload's buffer is kept, up to
//! a total, and the next upload takes the smallest one that fits. A stored original
//! read from a directory store for a transform takes its buffer from the same pool.
//!
//! The bound: idle buffers hold at most `max_idle_bytes`, beside what the memory
//! budget lets requests hold; a buffer in use is counted by its request's reservation.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::hugepages;

/// Buffers smaller than this are not kept: malloc recycles them itself (only larger
/// blocks get mappings of their own, see `tune_malloc` in main.rs), and the idle list
/// stays short.
const SMALLEST_KEPT: usize = 1024 * 1024;

/// See the module documentation. Shared behind an `Arc`.
pub struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
    max_idle_bytes: usize,
}

impl BufferPool {
    pub fn new(max_idle_bytes: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle_bytes,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest idle one
    /// that fits, else a new one. A new buffer that will be kept is at least
    /// `hugepages::THRESHOLD` long, so that the binary's allocator gives it a mapping
    /// of its own, aligned to 2 MiB: that is what lets the directory store write an
    /// upload from it straight to the disk (see `store::direct`).
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let fitting = idle
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.capacity() >= capacity)
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(index, _)| index);
        match fitting {
            Some(index) => idle.swap_remove(index),
            None if capacity >= SMALLEST_KEPT => {
                Vec::with_capacity(capacity.max(hugepages::THRESHOLD))
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `buffer` for a later upload if the idle total stays within the bound;
    /// frees it otherwise.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() < SMALLEST_KEPT {
            return;
        }
        buffer.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if capacity_of(&idle) + buffer.capacity() <= self.max_idle_bytes {
            idle.push(buffer);
        }
    }

    /// `buffer`'s contents as `Bytes` (no copy); the buffer comes back to the pool
    /// when the last clone is dropped.
    pub fn freeze(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buffer,
            pool: Arc::clone(self),
        })
    }

    /// Bytes held by idle buffers.
    #[cfg(test)]
    pub(crate) fn idle_bytes(&self) -> usize {
        capacity_of(&self.idle.lock().unwrap())
    }
}

fn capacity_of(buffers: &[Vec<u8>]) -> usize {
    buffers.iter().map(Vec::capacity).sum()
}

/// A pooled buffer behind a `Bytes`, given back on drop.
struct Lent {
    buffer: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_buffers_come_back_and_are_reused() {
        let pool = Arc::new(BufferPool::new(hugepages::THRESHOLD));
        let mut buffer = pool.take(SMALLEST_KEPT);
        assert_eq!(
            buffer.capacity(),
            hugepages::THRESHOLD,
            "a mapping of its own"
        );
        buffer.extend_from_slice(b"image bytes");
        let address = buffer.as_ptr();
        let bytes = pool.freeze(buffer);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a clone still holds it");
        assert_eq!(clone, "image bytes");
        drop(clone);
        assert_eq!(pool.idle_bytes(), hugepages::THRESHOLD);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), address, "the same memory, handed out again");
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn the_smallest_fitting_buffer_is_taken_and_the_idle_total_is_bounded() {
        let unit = SMALLEST_KEPT;
        let pool = BufferPool::new(10 * unit);
        pool.give(Vec::with_capacity(6 * unit));
        pool.give(Vec::with_capacity(3 * unit));
        pool.give(Vec::with_capacity(2 * unit)); // over the bound: freed
        pool.give(Vec::with_capacity(unit - 1)); // small: left to malloc
        assert_eq!(pool.idle_bytes(), 9 * unit);
        assert_eq!(pool.take(2 * unit + 1).capacity(), 3 * unit);
        assert!(
            pool.take(7 * unit).capacity() >= 7 * unit,
            "none fits: a new one"
        );
        assert_eq!(pool.idle_bytes(), 6 * unit);
    }
}
