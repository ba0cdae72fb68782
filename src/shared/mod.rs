//! Sharing buckets between nodes through Redis.
//!
//! - [`layout`]: the key and field layout and the merge scripts, as pure functions;
//! - [`conn`]: standalone, Cluster and TLS connections;
//! - [`sync`]: the sync loop, the registry of live nodes, warm start and the clock check.

pub mod conn;
pub mod layout;
pub mod sync;
