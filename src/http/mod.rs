//! The HTTP side: pingora's proxy hooks and what the gateway writes itself.
//!
//! - [`proxy`]: the hooks (route, charge, answer or forward) and the per-request state;
//! - `limits`: a request charged to its route's limits (`limits::decide`, from the hooks), the
//!   verdict counted in the metrics, and what the response and the access log report;
//! - `respond`: the responses the gateway writes itself (429, 4xx, 5xx) and whether the
//!   connection stays alive after one;
//! - `forwarding`: what the upstream gets (`X-Forwarded-For`, `X-Forwarded-Proto`, a single
//!   `Content-Length`);
//! - `header_case`: how response header names are spelled on the way down, and the
//!   `RateLimit` header names;
//! - [`headers`]: the IETF `RateLimit` headers and the JSON bodies of the gateway's answers;
//! - [`upstream`]: upstream pools, their servers' health and the round-robin cursor;
//! - [`health`]: upstream health checks.

mod forwarding;
mod header_case;
pub mod headers;
pub mod health;
mod limits;
pub mod proxy;
mod respond;
pub mod upstream;
