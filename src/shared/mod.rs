//! Sharing buckets between nodes through Redis.
//!
//! - [`layout`]: the key and field layout and the merge scripts, as pure functions;
//! - [`batch`]: every bucket of a round in one script call (a single server);
//! - [`conn`]: standalone, Cluster and TLS connections;
//! - [`round`]: one sync round's pure steps: build its commands, apply its replies;
//! - [`registry`]: the registry of live nodes (pacing shares, twins);
//! - [`sync`]: the sync loop, which sends each round and reports what it saw;
//! - [`transport`]: one round trip: the scripts, the registry and the bucket commands;
//! - [`status`]: what the sync loop knows, for the admin API;
//! - [`clock_check`]: this host's clock against Redis `TIME`;
//! - [`warm_start`]: a starting node reads its own fields back before it serves.

pub mod batch;
pub mod clock_check;
pub mod conn;
pub mod layout;
pub mod load_key;
pub mod registry;
pub mod resets;
pub mod round;
pub mod status;
pub mod sync;
pub mod transport;
pub mod warm_start;
