//! tollgate: a rate-limiting reverse proxy on pingora.
//!
//! The folders are the layers, from the pure core outwards (`docs/design.md` has the long form):
//! - [`limit`]: the token bucket, a CRDT of per-node monotone counters; pacing between syncs;
//!   time sources; the in-memory store of buckets. Plain Rust: no pingora, Redis or tokio.
//! - [`request`]: what a request is charged to: its path, client IP, keys, route, cost, and the
//!   one decision function that the proxy, the admin API and the benchmarks call.
//! - [`config`]: the JSON config, parsed, then validated once into the form the rest uses.
//! - [`http`]: the pingora proxy hooks, the responses the gateway writes, the rate-limit
//!   headers, upstream pools and their health checks.
//! - [`shared`]: sharing buckets through Redis: the key and field layout, connections
//!   (standalone, Cluster, TLS), the sync loop, the registry of live nodes, warm start.
//! - [`admin`]: the admin listener.
//! - [`cli`]: the `check` and `inspect` commands.
//! - [`app`]: the node (running config, store, metrics), reload, server assembly,
//!   housekeeping, metrics and logging.
//!
//! The rule that keeps the core testable with plain `#[test]`s: [`limit`] and [`request`]
//! import nothing from [`http`], [`shared`], [`admin`], [`app`] or [`cli`], nor from pingora,
//! redis or tokio (checked by `tests/layers.rs`).

/// mimalloc, not glibc's malloc: pingora allocates tens of times per proxied request, and
/// mimalloc takes 13% fewer instructions per request (`docs/performance.md`). Set here, so that
/// every binary and example built on the library (the memory benchmark among them) measures
/// the allocator the gateway ships with. The bucket tables do not depend on it (see
/// `limit::store_entry::Shard`).
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc through its plain `malloc` when the alignment asked for is one every mimalloc block
/// has (a word: block sizes are multiples of 8 bytes from 16-byte aligned page starts), as
/// std's `System` allocator does with glibc; through its aligned entry points otherwise. The
/// `mimalloc` crate's own `MiMalloc` calls `mi_malloc_aligned` for every allocation, whose fast
/// path only serves blocks of at most 1 KiB: every larger one (pingora's 4 KiB, 8 KiB and
/// 64 KiB buffers, boxed request futures) took the generic path and, unless its size was a
/// power of two of at most 4 KiB, an over-allocation, about 20 allocations and 3,500
/// instructions per proxied request (`docs/performance.md`).
struct Mimalloc;

/// The alignment of every block `mi_malloc` returns.
const MI_WORD: usize = 8;

// SAFETY: each method forwards to mimalloc's, which return null on failure and blocks of at
// least `size` bytes; the plain entry points only when `layout.align()` is at most a word,
// which every mimalloc block is aligned to. Every block, however allocated, is freed by
// `mi_free`.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MI_WORD {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MI_WORD {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MI_WORD {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod allocator_tests {
    use super::GLOBAL;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every size and alignment, through each entry point, gives a block aligned as asked that
    /// holds its bytes (through a realloc too).
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 24, 100, 1024, 1025, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; each block is freed with its layout.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{size} {align}"
                    );
                    p.write_bytes(0xA5, size);
                    let bigger = size * 3;
                    let q = GLOBAL.realloc(p, layout, bigger);
                    assert!(
                        !q.is_null() && (q as usize).is_multiple_of(align),
                        "realloc {size} {align}"
                    );
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|&b| b == 0xA5));
                    GLOBAL.dealloc(q, Layout::from_size_align(bigger, align).expect("layout"));
                    let z = GLOBAL.alloc_zeroed(layout);
                    assert!(
                        !z.is_null() && (z as usize).is_multiple_of(align),
                        "zeroed {size} {align}"
                    );
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    GLOBAL.dealloc(z, layout);
                }
            }
        }
    }
}

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod limit;
pub mod request;
pub mod shared;
