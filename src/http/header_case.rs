//! How the names of the upstream's response headers are spelled on the way down, and the
//! names of the `RateLimit` headers the gateway adds to them: with `preserve_header_case`,
//! as the upstream and the draft spell them; without (the default), as [`without_header_case`]
//! explains.

use crate::app::node::Runtime;
use crate::http::headers::{ceil_secs, ratelimit_header};
use crate::http::limits::Rate;
use crate::limit::bucket::Decision;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::cell::RefCell;

/// The names of the rate-limit response headers (`RateLimit-Policy`, `RateLimit`): as the
/// draft spells them with `preserve_header_case`, else in lower case (given to pingora as
/// static bytes, a name costs no copy).
fn rate_names(preserve: bool) -> (&'static [u8], &'static [u8]) {
    if preserve {
        (b"RateLimit-Policy", b"RateLimit")
    } else {
        (b"ratelimit-policy", b"ratelimit")
    }
}
/// The same names without case (see [`without_header_case`]). Constants, not statics: each
/// use is the name itself, where a static's would be cloned (a call through `Bytes`' vtable).
const RATELIMIT_POLICY_NAME: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
const RATELIMIT_NAME: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// Removes the headers in `strip` (response costs the client must not see) from the
/// upstream's response and adds the rate-limit headers (`rate_headers`, for a client that is
/// not HTTP/1: see [`rate_fields`]), in place when its names' spelling is kept (`preserve`)
/// or was never recorded (a response read without it, as the gateway asks when the names are
/// not kept: pingora-core patch 11, see `Gateway::keep_header_case`); else the spelling is
/// dropped first ([`without_header_case`]).
pub(super) fn set_response_fields<'h>(
    resp: &mut ResponseHeader,
    rate_headers: Option<(HeaderValue, HeaderValue)>,
    strip: impl Iterator<Item = &'h http::HeaderName>,
    preserve: bool,
) -> Result<()> {
    if !preserve && resp.has_case() {
        return without_header_case(resp, rate_headers, strip);
    }
    for name in strip {
        resp.remove_header(name);
    }
    if let Some((policy, rl)) = rate_headers {
        // By static name (see `forwarding::set_forwarded`).
        let (policy_name, rl_name) = rate_names(preserve);
        resp.insert_header(Bytes::from_static(policy_name), policy)?;
        resp.insert_header(Bytes::from_static(rl_name), rl)?;
    }
    Ok(())
}

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

/// The rate-limit fields of an admitted request's response (`rate`): to an HTTP/1 client as
/// lines written after the response's own fields ([`rate_limit_lines`]), replacing any the
/// upstream sent; otherwise returned, to go into the header map.
pub(super) fn rate_fields(
    session: &mut Session,
    resp: &mut ResponseHeader,
    rt: &Runtime,
    rate: Rate,
    preserve: bool,
) -> Option<(HeaderValue, HeaderValue)> {
    let name = &rt.limit_spec(rate.limit).name;
    let decision = rate.decision();
    let policy = rate.policy_value(rt);
    let lines = rate_limit_lines(policy, name, &decision, preserve);
    match session.set_extra_response_fields(lines) {
        None => {
            drop_rate_fields(resp);
            None
        }
        // Not HTTP/1: into the header map.
        Some(_) => Some((policy.clone(), ratelimit_header(name, &decision))),
    }
}

/// `RateLimit-Policy` (`policy`) and `RateLimit` (limit `name` after decision `d`) as field
/// lines (`name: value\r\n` each), which pingora writes after the response's own fields
/// (pingora-core patch 8, vendor/README.md): two fields added to the response's header map
/// cost a hash of each name and an insert each (about 560 instructions per request), lines one
/// copy as the head is written. The names as the draft spells them with
/// `preserve_header_case`, else in lower case; the `RateLimit` value as
/// [`ratelimit_header`] makes it (empty for a limit name that is no valid header value).
///
/// Each thread keeps the last lines it built and hands them out again (a reference count, no
/// copy) for the same policy value (the same allocation: the config's, or the one kept with an
/// override; the lines keep it alive, so no other value can take its address),
/// `r`, `t` and case. They stay the same for every client well under its limit: its bucket is
/// full or nearly so after each request.
fn rate_limit_lines(policy: &HeaderValue, name: &str, d: &Decision, preserve: bool) -> Bytes {
    let reset = ceil_secs(d.full_in_ns);
    LAST_LINES.with(|cell| {
        let Ok(mut last) = cell.try_borrow_mut() else {
            return build_lines(policy, name, d, preserve);
        };
        if let Some(l) = last.as_ref() {
            if l.remaining == d.remaining
                && l.reset == reset
                && l.preserve == preserve
                && std::ptr::eq(l.policy.as_bytes(), policy.as_bytes())
            {
                return l.lines.clone();
            }
        }
        let lines = build_lines(policy, name, d, preserve);
        *last = Some(LastLines {
            policy: policy.clone(),
            remaining: d.remaining,
            reset,
            preserve,
            lines: lines.clone(),
        });
        lines
    })
}

/// The last lines [`rate_limit_lines`] built, with what it built them from.
struct LastLines {
    policy: HeaderValue,
    remaining: u64,
    reset: u64,
    preserve: bool,
    lines: Bytes,
}

thread_local! {
    static LAST_LINES: RefCell<Option<LastLines>> = const { RefCell::new(None) };
}

fn build_lines(policy: &HeaderValue, name: &str, d: &Decision, preserve: bool) -> Bytes {
    let (policy_name, rl_name) = rate_names(preserve);
    let rl = ratelimit_header(name, d);
    let mut out =
        Vec::with_capacity(policy_name.len() + rl_name.len() + policy.len() + rl.len() + 8);
    for (name, value) in [(policy_name, policy.as_bytes()), (rl_name, rl.as_bytes())] {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    Bytes::from(out)
}

/// Removes the upstream's own `RateLimit-Policy` and `RateLimit` fields from its response, if
/// it sent any: the gateway's, written as lines after the response's fields
/// ([`rate_limit_lines`]), replace them, as an insert into the map would. A scan of the
/// field names (a handful, most of them standard names, told apart from these two without
/// comparing bytes) costs less than looking the two names up.
fn drop_rate_fields(resp: &mut ResponseHeader) {
    let theirs = |n: &http::HeaderName| *n == RATELIMIT_NAME || *n == RATELIMIT_POLICY_NAME;
    if !resp.headers.keys().any(theirs) {
        return;
    }
    for name in [RATELIMIT_POLICY_NAME, RATELIMIT_NAME] {
        resp.remove_header(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(remaining: u64, full_in_s: u64) -> Decision {
        Decision {
            allowed: true,
            remaining,
            retry_after_ns: 0,
            full_in_ns: full_in_s * 1_000_000_000,
            never: false,
        }
    }

    #[test]
    fn rate_limit_lines_are_the_two_fields_as_sent() {
        let policy = HeaderValue::from_static("\"per-ip\";q=10;w=5");
        let d = decision(7, 2);
        assert_eq!(
            rate_limit_lines(&policy, "per-ip", &d, false),
            &b"ratelimit-policy: \"per-ip\";q=10;w=5\r\nratelimit: \"per-ip\";r=7;t=2\r\n"[..]
        );
        assert_eq!(
            rate_limit_lines(&policy, "per-ip", &d, true),
            &b"RateLimit-Policy: \"per-ip\";q=10;w=5\r\nRateLimit: \"per-ip\";r=7;t=2\r\n"[..]
        );
        // The same inputs again: the same lines, not built again; another `r`: new lines.
        let again = rate_limit_lines(&policy, "per-ip", &d, true);
        assert_eq!(
            again.as_ptr(),
            rate_limit_lines(&policy, "per-ip", &d, true).as_ptr()
        );
        assert_eq!(
            rate_limit_lines(&policy, "per-ip", &decision(6, 2), true),
            &b"RateLimit-Policy: \"per-ip\";q=10;w=5\r\nRateLimit: \"per-ip\";r=6;t=2\r\n"[..]
        );
        // Another policy value with the same bytes (another config's): built from it.
        let other = HeaderValue::from_str("\"per-ip\";q=10;w=5").unwrap();
        let lines = rate_limit_lines(&other, "per-ip", &d, true);
        assert_ne!(lines.as_ptr(), again.as_ptr());
        assert_eq!(lines, again);
    }

    #[test]
    fn a_name_that_is_no_header_value_gives_an_empty_rate_limit() {
        let policy = HeaderValue::from_static("");
        let lines = rate_limit_lines(&policy, "bad\nname", &decision(1, 1), false);
        assert_eq!(lines, &b"ratelimit-policy: \r\nratelimit: \r\n"[..]);
    }
}
