//! What the upstream gets besides the client's request: `X-Forwarded-For` (the peer, after
//! a trusted proxy's chain), `X-Forwarded-Proto`, and a single `Content-Length`, set on the
//! request as it leaves ([`set_forwarded`]), with its header names' case kept or dropped.

use crate::request::client_ip;
use crate::request::key;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::IpAddr;

/// The peer's IP address, canonical (an IPv4-mapped IPv6 address as IPv4); none on a Unix
/// socket.
pub(super) fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| client_ip::canonical(a.ip()))
}

/// Writes `X-Forwarded-For` for the upstream into `out`: from a trusted proxy, its chain
/// extended by the peer; from anyone else, a new chain (a client's own X-Forwarded-For proves
/// nothing and is dropped). `peer` is the peer's address, canonical. Returns where the peer's
/// address starts in `out`.
pub(super) fn forwarded_for(
    out: &mut String,
    req: &RequestHeader,
    trusted: bool,
    peer: IpAddr,
) -> usize {
    out.clear();
    if trusted {
        for prior in req
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            out.push_str(prior);
            out.push_str(", ");
        }
    } else {
        out.reserve(48);
    }
    let at = out.len();
    key::push_ip(out, peer);
    at
}

/// The headers the gateway sets on a forwarded request.
pub(super) struct Forwarded {
    pub(super) xff: HeaderValue,
    /// The single `Content-Length` to send instead of identical duplicates.
    pub(super) length: Option<u64>,
    /// `X-Forwarded-Proto`, unless a trusted proxy sent one.
    pub(super) proto: Option<&'static str>,
}

pub(super) static X_FORWARDED_FOR: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-proto");

/// Sets the [`Forwarded`] headers. Without `preserve_case`, the request loses pingora's record
/// of how the client spelled its header names, for the reason and in the way
/// [`without_header_case`](super::header_case::without_header_case) describes; a request
/// target that the URI does not reproduce byte for byte (absolute form, say) is put back as
/// it came.
pub(super) fn set_forwarded(
    req: &mut RequestHeader,
    f: Forwarded,
    preserve_case: bool,
) -> Result<()> {
    // With the spelling kept, or none recorded (a request read without it: pingora-core patch
    // 11, see `Gateway::keep_header_case`), the fields go in as they are. The forwarding
    // fields are named by their `HeaderName`s, which pingora-http (patch 19) inserts without
    // parsing; a case map spells them in lower case, as the text did. `content-length` stays
    // text: a case map would spell the standard name `Content-Length`.
    if preserve_case || !req.has_case() {
        req.insert_header(&X_FORWARDED_FOR, f.xff)?;
        if let Some(n) = f.length {
            req.insert_header("content-length", n)?;
        }
        if let Some(p) = f.proto {
            // A static value: neither checked nor copied, as a `&str` would be.
            req.insert_header(&X_FORWARDED_PROTO, HeaderValue::from_static(p))?;
        }
        return Ok(());
    }
    let raw_target = {
        let raw = req.raw_path();
        let from_uri = req
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes());
        (raw != from_uri).then(|| raw.to_vec())
    };
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, placeholder).into();
    parts.headers.reserve(2);
    parts.headers.insert(X_FORWARDED_FOR.clone(), f.xff);
    if let Some(n) = f.length {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(p) = f.proto {
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(p));
    }
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw_target {
        req.set_raw_path(&raw)?;
    }
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    Ok(())
}

/// The single `Content-Length` to send when the request has identical duplicates: pingora
/// accepts them (two lines, or "5, 5") and forwards them as they came; the upstream gets the
/// single length pingora validated. `None` when there is one plain value or none.
pub(super) fn single_length(req: &RequestHeader) -> Option<u64> {
    let mut values = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if !v.as_bytes().contains(&b',') => None,
        (Some(v), _) => v
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<u64>().ok()),
        (None, _) => None,
    }
}
