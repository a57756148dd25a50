//! The global allocator: glibc's malloc, except that large blocks get mappings of
//! their own, aligned to 2 MiB and marked for transparent huge pages.
//!
//! Large buffers here are image-sized: a stored original read for a transform (10 MB
//! for a camera photo), an upload body, decoded pixels. glibc maps each one afresh
//! (its mmap threshold is pinned, see `main`), so every 4 KiB page of it is
//! page-faulted and zeroed on first touch: under load on the 10 MP photo, faults were
//! a quarter of the server's CPU. Mapped in 2 MiB huge pages, the same buffer takes
//! five faults instead of 2,400. Even so the kernel zeroes every fresh page, which was
//! the largest cost of an upload after SHA-1 (29% of its CPU), so up to
//! [`POOL_BYTES`] of freed mappings are kept and handed out again, already faulted in;
//! the rest go straight back to the kernel, so the peak stays bounded. Where
//! transparent huge pages are off, `madvise` is a no-op.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// The size of a huge page on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Blocks at least this large get a huge-page mapping; smaller ones would waste too
/// much of their last huge page.
pub const THRESHOLD: usize = 4 << 20;

/// At most this much freed memory is kept for reuse (in at most [`POOL_SLOTS`]
/// mappings): a few uploads' or sources' worth.
pub const POOL_BYTES: usize = 64 << 20;
const POOL_SLOTS: usize = 16;

/// See the module documentation.
pub struct HugePages;

static POOL: Pool = Pool::new(POOL_BYTES);

/// Freed huge mappings kept for reuse: (address, length) pairs in a fixed array, since
/// an allocator cannot allocate for its own bookkeeping.
struct Pool {
    slots: Mutex<[(usize, usize); POOL_SLOTS]>,
    capacity: usize,
}

impl Pool {
    const fn new(capacity: usize) -> Pool {
        Pool {
            slots: Mutex::new([(0, 0); POOL_SLOTS]),
            capacity,
        }
    }

    /// The smallest kept mapping of at least `len` bytes, its excess unmapped.
    fn take(&self, len: usize) -> Option<*mut u8> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots
            .iter_mut()
            .filter(|slot| slot.1 >= len)
            .min_by_key(|slot| slot.1)?;
        let (address, kept) = std::mem::take(slot);
        drop(slots);
        if kept > len {
            // SAFETY: the tail lies inside a mapping this pool owned and now hands out
            // without it.
            unsafe { libc::munmap((address + len) as *mut libc::c_void, kept - len) };
        }
        Some(address as *mut u8)
    }

    /// Keeps a mapping of `len` bytes if there is room, else gives it back to the kernel.
    fn put(&self, address: *mut u8, len: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = slots.iter().map(|slot| slot.1).sum();
        let free = slots.iter_mut().find(|slot| slot.1 == 0);
        match free {
            Some(slot) if held + len <= self.capacity => *slot = (address as usize, len),
            // SAFETY: a mapping of `len` bytes that nothing else refers to any more.
            _ => unsafe {
                libc::munmap(address.cast(), len);
            },
        }
    }
}

// SAFETY: every block is either System's, or a private anonymous mapping of
// `mapped_len(size)` bytes at a 2 MiB boundary that `dealloc` pools or unmaps with the
// same length; `layout.size()` (which decides between the two) is the same at `alloc` and
// `dealloc` by GlobalAlloc's contract, and `realloc` moves blocks between the two
// kinds through `alloc` and `dealloc`.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            let len = mapped_len(layout.size());
            POOL.take(len).unwrap_or_else(|| map_huge(len))
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            let len = mapped_len(layout.size());
            match POOL.take(len) {
                // SAFETY: a whole mapping of at least `layout.size()` bytes, now ours.
                Some(reused) => unsafe {
                    reused.write_bytes(0, layout.size());
                    reused
                },
                None => map_huge(len), // fresh anonymous mappings come zeroed
            }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(layout) {
            POOL.put(ptr, mapped_len(layout.size()));
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(layout) && !is_huge(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as the default `realloc` does: a new block, a copy, the old freed.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

fn is_huge(layout: Layout) -> bool {
    layout.size() >= THRESHOLD && layout.align() <= HUGE_PAGE
}

fn mapped_len(size: usize) -> usize {
    size.next_multiple_of(HUGE_PAGE)
}

/// A fresh mapping of `len` bytes (a multiple of 2 MiB) at a 2 MiB boundary, advised
/// for huge pages; null if the kernel refuses it.
fn map_huge(len: usize) -> *mut u8 {
    // Over-map by one huge page, then trim the ends to the aligned middle.
    // SAFETY: a new private anonymous mapping touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    // SAFETY: both ranges lie inside the mapping just made and outside the part kept;
    // madvise only advises on the part kept.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let tail = start + len + HUGE_PAGE - (aligned + len);
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    aligned as *mut u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_aligned_zeroed_and_survive_realloc() {
        let allocator = HugePages;
        let size = THRESHOLD + 12345;
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: the layouts are valid and each block is freed once with its layout.
        unsafe {
            let block = allocator.alloc_zeroed(layout);
            assert!(!block.is_null());
            assert_eq!(block as usize % HUGE_PAGE, 0, "2 MiB aligned");
            let slice = std::slice::from_raw_parts_mut(block, size);
            assert!(slice.iter().all(|&b| b == 0), "zeroed");
            slice.fill(7);

            // Large to larger, then down to small: the contents move each time.
            let grown = allocator.realloc(block, layout, 2 * size);
            let grown_layout = Layout::from_size_align(2 * size, 8).unwrap();
            assert_eq!(*grown.add(size - 1), 7);
            let shrunk = allocator.realloc(grown, grown_layout, 100);
            assert_eq!(std::slice::from_raw_parts(shrunk, 100), &[7; 100]);
            allocator.dealloc(shrunk, Layout::from_size_align(100, 8).unwrap());
        }
    }

    #[test]
    fn freed_mappings_are_reused_up_to_the_pool_size() {
        let pool = Pool::new(3 * HUGE_PAGE);
        let first = map_huge(2 * HUGE_PAGE);
        let second = map_huge(2 * HUGE_PAGE);
        pool.put(first, 2 * HUGE_PAGE);
        pool.put(second, 2 * HUGE_PAGE); // over capacity: unmapped, not kept
        assert_eq!(pool.take(4 * HUGE_PAGE), None, "nothing that large is kept");
        assert_eq!(
            pool.take(HUGE_PAGE),
            Some(first),
            "trimmed to size and reused"
        );
        assert_eq!(pool.take(HUGE_PAGE), None, "handed out once");
        // SAFETY: the trimmed block is ours, one huge page long.
        unsafe { libc::munmap(first.cast(), HUGE_PAGE) };
    }

    #[test]
    fn small_blocks_grow_into_huge_ones() {
        let allocator = HugePages;
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: as above.
        unsafe {
            let block = allocator.alloc(small);
            block.write_bytes(3, 64);
            let grown = allocator.realloc(block, small, THRESHOLD);
            assert_eq!(grown as usize % HUGE_PAGE, 0);
            assert_eq!(std::slice::from_raw_parts(grown, 64), &[3; 64]);
            allocator.dealloc(grown, Layout::from_size_align(THRESHOLD, 8).unwrap());
        }
    }
}
