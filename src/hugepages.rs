//! The global allocator: glibc's malloc, except that large blocks get mappings of
//! their own, aligned to 2 MiB and marked for transparent huge pages.
//!
//! Large buffers here are image-sized: a stored original read for a transform (10 MB
//! for a camera photo), an upload body, decoded pixels. glibc maps each one afresh
//! (its mmap threshold is pinned, see `main`), so every 4 KiB page of it is
//! page-faulted and zeroed on first touch: under load on the 10 MP photo, faults were
//! a quarter of the server's CPU. Mapped in 2 MiB huge pages, the same buffer takes
//! five faults instead of 2,400. Freed blocks still go straight back to the kernel,
//! so the bounded peak the memory budget promises is kept (upload bodies and stored
//! originals read for transforms are the exception: their buffers are kept for reuse,
//! up to a bound, see `buffers`). Where transparent huge
//! pages are off, `madvise` is a no-op and this is what glibc would have done.

use std::alloc::{GlobalAlloc, Layout, System};

/// The size of a huge page on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Blocks at least this large get a huge-page mapping; smaller ones would waste too
/// much of their last huge page.
pub const THRESHOLD: usize = 4 << 20;

/// See the module documentation.
pub struct HugePages;

// SAFETY: every block is either System's, or a private anonymous mapping of
// `mapped_len(size)` bytes at a 2 MiB boundary that `dealloc` unmaps with the same
// length; `layout.size()` (which decides between the two) is the same at `alloc` and
// `dealloc` by GlobalAlloc's contract, and `realloc` keeps a mapping only for a size
// of the same mapped length, else moves the block through `alloc` and `dealloc`.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            map_huge(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            map_huge(layout.size()) // anonymous mappings are zeroed by the kernel
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(layout) {
            // SAFETY: mapped by `map_huge` with this length (see the impl's comment).
            unsafe { libc::munmap(ptr.cast(), mapped_len(layout.size())) };
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
        if is_huge(layout)
            && is_huge(new_layout)
            && mapped_len(layout.size()) == mapped_len(new_size)
        {
            return ptr; // the mapping already holds the new size
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

/// A fresh mapping of `mapped_len(size)` bytes at a 2 MiB boundary, advised for huge
/// pages; null if the kernel refuses it.
fn map_huge(size: usize) -> *mut u8 {
    let len = mapped_len(size);
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

            // Within the same mapping, nothing moves.
            let same = allocator.realloc(block, layout, size + 1);
            assert_eq!(same, block, "still fits its mapping");
            let block = same;
            let layout = Layout::from_size_align(size + 1, 8).unwrap();

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
