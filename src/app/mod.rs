//! The running node and its assembly.
//!
//! - [`node`]: the running config (swapped on reload), the store, the metrics;
//! - [`start`]: `tollgate run`: load, build the node, warm start, serve;
//! - [`server`]: the pingora server with its services, and housekeeping;
//! - [`metrics`]: the Prometheus registry; [`logging`]: tracing with pingora's `log` bridged in;
//! - [`history`]: recent traffic sampled from the metrics, for the status page.

pub mod history;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod server;
pub mod start;
