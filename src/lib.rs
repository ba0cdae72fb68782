//! tollgate: a rate-limiting reverse proxy on pingora.
//!
//! Where things live:
//! - [`bucket`]: the pure token-bucket core, a CRDT of per-node monotone counters;
//! - [`clock`]: time sources (the core never reads the clock itself);
//! - [`config`]: the JSON config, parsed then validated into a runtime form;
//! - [`path`], [`key`], [`clientip`]: what a request is charged to;
//! - [`limiter`]: the sharded in-memory store of buckets, all-or-nothing charging;
//! - [`headers`]: IETF `RateLimit` headers and the bodies the gateway writes itself;
//! - [`proxy`]: the pingora hooks; [`admin`]: the admin listener; [`health`]: upstream checks;
//! - [`node`]: the state shared by them, reload; [`metrics`]; [`server`]: assembly;
//! - [`logging`]: tracing setup with pingora's `log` bridged in.
//! - [`layout`]: the Redis key and field layout; [`redis_conn`]: standalone, cluster and TLS
//!   connections; [`sync`]: the sync loop; [`pacing`]: shares between syncs; [`inspect`].

pub mod admin;
pub mod bucket;
pub mod clientip;
pub mod clock;
pub mod config;
pub mod headers;
pub mod health;
pub mod inspect;
pub mod key;
pub mod layout;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod pacing;
pub mod path;
pub mod proxy;
pub mod redis_conn;
pub mod server;
pub mod sync;
