//! The HTTP side: pingora's proxy hooks and what the gateway writes itself.
//!
//! - [`proxy`]: the hooks (route, charge, answer or forward);
//! - [`headers`]: the IETF `RateLimit` headers and the JSON bodies of the gateway's answers;
//! - [`health`]: upstream health checks.

pub mod headers;
pub mod health;
pub mod proxy;
