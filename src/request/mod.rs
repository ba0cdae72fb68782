//! What a request is charged to, and the decision: plain functions of the request's parts.
//!
//! - [`path`]: the request target, split and normalized for matching;
//! - [`client_ip`]: the client's address behind trusted proxies;
//! - [`key`]: the bucket key a limit builds from a request (its byte checks in `bytes`);
//! - [`route`]: which route a request takes, and its cost;
//! - [`decision`]: the one decision function: charge a request's limits, all or none.
//!
//! No pingora or Redis types: the proxy hooks ([`crate::http`]) hand in a [`key::RequestView`].

mod bytes;
pub mod client_ip;
pub mod decision;
pub mod key;
pub mod path;
pub mod route;
