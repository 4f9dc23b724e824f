//! The agent's allocator: mimalloc, entered by its plain functions wherever
//! they give the alignment asked for.
//!
//! The `mimalloc` crate calls `mi_malloc_aligned` for every allocation. Its
//! fast path takes only small blocks no more aligned than their size, and
//! whatever it cannot place goes through mimalloc's generic aligned path:
//! 14% of the active agent's instructions per acked work unit went to
//! allocation, 5% to that generic path (callgrind, `examples/replication`),
//! and under TCG every guest instruction is emulated. Every mimalloc block is
//! aligned to at least a machine word, which is what nearly every Rust
//! allocation asks for (strings, vectors, boxed structs).
#![allow(unsafe_code)] // A global allocator is an unsafe trait over C functions.

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment every mimalloc block has (`MI_INTPTR_SIZE`).
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc with the plain entry points for word-aligned layouts.
pub struct Alloc;

// SAFETY: each method forwards to the mimalloc function for the same job; the
// plain ones only for layouts whose alignment every mimalloc block meets.
unsafe impl GlobalAlloc for Alloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(p: *mut u8, align: usize) -> bool {
        p as usize & (align - 1) == 0
    }

    /// Every layout gets a block aligned as asked, through either path.
    #[test]
    fn each_allocation_is_aligned_as_its_layout_asks() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 24, 40, 48, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap_or_else(|e| panic!("{e}"));
                // SAFETY: a non-zero-size layout, freed with the allocator that made it.
                unsafe {
                    let p = Alloc.alloc(layout);
                    assert!(!p.is_null() && aligned(p, align), "{size} bytes aligned to {align}: {p:?}");
                    p.write_bytes(0xa5, size);
                    let q = Alloc.realloc(p, layout, size * 3);
                    assert!(!q.is_null() && aligned(q, align), "realloc of {size} to {align}: {q:?}");
                    assert_eq!(*q, 0xa5, "realloc kept the contents");
                    Alloc.dealloc(q, Layout::from_size_align_unchecked(size * 3, align));
                    let z = Alloc.alloc_zeroed(layout);
                    assert!(!z.is_null() && aligned(z, align) && *z == 0);
                    Alloc.dealloc(z, layout);
                }
            }
        }
    }
}
