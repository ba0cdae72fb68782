//! How the names of the upstream's response headers are spelled on the way down, and the
//! names of the `RateLimit` headers the gateway adds to them: with `preserve_header_case`,
//! as the upstream and the draft spell them; without (the default), as [`without_header_case`]
//! explains.

use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

/// The names of the rate-limit response headers as the draft spells them, for
/// `preserve_header_case` (given to pingora as static bytes, a name costs no copy).
pub(super) const RATELIMIT_POLICY: &[u8] = b"RateLimit-Policy";
pub(super) const RATELIMIT: &[u8] = b"RateLimit";
/// The same names without case (see [`without_header_case`]). Constants, not statics: each
/// use is the name itself, where a static's would be cloned (a call through `Bytes`' vtable).
const RATELIMIT_POLICY_NAME: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
const RATELIMIT_NAME: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// Drops pingora's record of how the upstream spelled its header names, removes the headers
/// in `strip` (response costs the client must not see), then adds the rate-limit headers. Header names are case-insensitive (RFC 9110, section 5.1); an HTTP/1
/// response then carries them in lower case, except the standard names pingora writes
/// title-cased (`Content-Type`, `Content-Length`, `Date`, `Connection`, `Server`, ...), as
/// Envoy and HAProxy write theirs. Keeping the spelling costs pingora a copy of every header
/// name added or changed (`Date`, `Connection`, the two `RateLimit` headers): two allocations
/// and a second map insert each, about 4% of the proxy's instructions per request, and the
/// reason the case is dropped unless `preserve_header_case` asks for it. A reason phrase
/// other than the standard one is kept.
pub(super) fn without_header_case<'h>(
    resp: &mut ResponseHeader,
    rate_headers: Option<(HeaderValue, HeaderValue)>,
    strip: impl Iterator<Item = &'h http::HeaderName>,
) -> Result<()> {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::build_no_case(200, Some(0))?;
    let mut parts: http::response::Parts = std::mem::replace(resp, placeholder).into();
    for name in strip {
        parts.headers.remove(name);
    }
    // Room for pingora's `Date` and `Connection` and the rate-limit headers, in at most one
    // growth. A response read from an HTTP/1 upstream has room for four added fields already
    // (pingora-core patches 4 and 4b, vendor/README.md) and this grows nothing; one from an
    // HTTP/2 upstream comes as the h2 crate built it. Reserving more than is added would grow
    // a map that has room.
    let added = if rate_headers.is_some() { 4 } else { 2 };
    parts.headers.reserve(added);
    if let Some((policy, rl)) = rate_headers {
        parts.headers.insert(RATELIMIT_POLICY_NAME, policy);
        parts.headers.insert(RATELIMIT_NAME, rl);
    }
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
}
