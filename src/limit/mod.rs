//! The pure core: token buckets and the store that holds them.
//!
//! - [`bucket`]: one bucket as a CRDT of per-node monotone counters, and its parameters;
//! - [`params`]: a bucket's or a quota's validated parameters;
//! - [`pacing`]: how much of a shared bucket this node may spend between syncs (and
//!   `pacing_demand`: the demand its shares are measured from);
//! - [`clock`]: time sources (the core never reads the clock itself);
//! - [`overrides`]: per-key parameters, `unlimited` and `deny` (plans);
//! - [`window`]: the calendar windows of quotas;
//! - [`store`]: the sharded in-memory store, all-or-nothing charging, and the bookkeeping the
//!   sync loop needs (what changed, what to read, what the others hold), and the quiet
//!   buckets that need no sync (`store_quiet`), and concurrency limits (`store_slots`); each
//!   shard's buckets are a slab behind a table of slot numbers (`store_slab`).
//!
//! Nothing here does I/O or knows pingora, Redis or tokio: a test drives it with a
//! [`clock::ManualClock`].

pub mod bucket;
pub mod clock;
pub mod overrides;
pub mod pacing;
mod pacing_demand;
pub mod params;
mod slot_state;
pub mod store;
pub mod store_charge;
pub mod store_entry;
pub mod store_key;
pub mod store_plans;
pub mod store_quiet;
pub mod store_reset;
mod store_slab;
pub mod store_slots;
pub mod store_sweep;
pub mod store_sync;
pub mod store_top;
pub mod window;
