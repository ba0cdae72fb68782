//! Which route a request takes, and what it costs.

use crate::config::{Config, Cost, Route, RouteId};
use crate::request::{key, path};
use http::HeaderMap;
use std::borrow::Cow;

/// Whether `route` matches a request with this method, normalized path and host.
pub fn matches(route: &Route, method: &str, norm_path: &str, host: Option<&str>) -> bool {
    if let Some(methods) = &route.methods {
        if !methods.iter().any(|m| m.as_str() == method) {
            return false;
        }
    }
    if let Some(h) = &route.host {
        if host != Some(h.as_str()) {
            return false;
        }
    }
    path::matches_prefix(norm_path, &route.path_prefix)
}

/// The host a request is routed on, and whether it has a `Host` field: normalized from its
/// `Host` (or an absolute-form target's `authority`) when some route matches on hosts or the
/// request has no `Host` (an HTTP/1.1 request needs one or an authority); otherwise none, as
/// no route reads it.
pub fn routing_host<'r>(
    config: &Config,
    headers: &'r HeaderMap,
    authority: Option<&'r str>,
) -> (Option<Cow<'r, str>>, bool) {
    let has_host = key::has_header(headers, &http::header::HOST);
    if !config.routes_match_hosts() && has_host {
        return (None, true);
    }
    // A request without the field has no `Host` to look up.
    let from_field = has_host.then(|| key::host_of(headers)).flatten();
    let host = from_field.or_else(|| authority.and_then(key::normalize_host));
    (host, has_host)
}

/// The first route of `config` that matches (routes match in order).
pub fn find(config: &Config, method: &str, norm_path: &str, host: Option<&str>) -> Option<RouteId> {
    config
        .routes_by_id()
        .find(|(_, r)| matches(r, method, norm_path, host))
        .map(|(id, _)| id)
}

/// Why a request's cost cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// A per-byte route got a body without a declared length (answered 411).
    #[error("this route charges per byte: send Content-Length")]
    LengthRequired,
    /// The declared length is not a number (answered 400).
    #[error("invalid Content-Length")]
    BadLength,
}

impl CostError {
    /// The status the gateway answers with.
    pub fn status(self) -> u16 {
        match self {
            CostError::LengthRequired => 411,
            CostError::BadLength => 400,
        }
    }
}

/// The tokens a request with these headers takes from each limit of a route that costs `cost`.
pub fn request_cost(cost: Cost, headers: &HeaderMap) -> Result<u64, CostError> {
    match cost {
        Cost::Fixed(n) => Ok(n),
        Cost::PerBytes(n) => {
            if headers.contains_key(http::header::TRANSFER_ENCODING) {
                return Err(CostError::LengthRequired);
            }
            let len = headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().parse::<u64>());
            match len {
                None => Ok(1),
                Some(Ok(len)) => Ok(len.div_ceil(n).max(1)),
                Some(Err(_)) => Err(CostError::BadLength),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_per_byte_cost_counts_started_blocks_of_the_declared_length() {
        let per_kib = Cost::PerBytes(1024);
        let cost = |pairs: &[(&'static str, &'static str)]| request_cost(per_kib, &headers(pairs));
        assert_eq!(cost(&[]), Ok(1), "no body declared: one token");
        assert_eq!(cost(&[("content-length", "0")]), Ok(1));
        assert_eq!(cost(&[("content-length", "1024")]), Ok(1));
        assert_eq!(cost(&[("content-length", "1025")]), Ok(2));
        assert_eq!(cost(&[("content-length", "x")]), Err(CostError::BadLength));
        assert_eq!(
            cost(&[("transfer-encoding", "chunked")]),
            Err(CostError::LengthRequired)
        );
        assert_eq!(request_cost(Cost::Fixed(3), &headers(&[])), Ok(3));
    }
}
