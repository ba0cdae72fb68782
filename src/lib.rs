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
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod limit;
pub mod request;
pub mod shared;
