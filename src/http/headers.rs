//! Rate-limit response headers (draft-ietf-httpapi-ratelimit-headers-10) and the bodies the
//! gateway writes itself (429, 4xx, 5xx), all JSON.
//!
//! Mapping from a bucket to the draft's parameters:
//! - `RateLimit-Policy: "NAME";q=CAPACITY;w=SECONDS` where `w` is the time to refill an empty
//!   bucket (capacity / refill rate, rounded up, at least 1);
//! - `RateLimit: "NAME";r=REMAINING;t=SECONDS` where `r` is whole tokens left after this request
//!   and `t` the seconds until the bucket is full again (rounded up; 0 when full);
//! - `Retry-After` on a 429: whole seconds until the request's cost is affordable (rounded up,
//!   at least 1); it wins over `t`.

use crate::limit::bucket::{BucketParams, Decision};
use crate::limit::overrides::Own;
use bytes::Bytes;
use http::HeaderValue;

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;

/// Seconds, rounded up.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_SEC)
}

/// Milliseconds, rounded up.
pub fn ceil_ms(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_MS)
}

/// `RateLimit-Policy` value of one limit. A quota's `w` is its window's length in seconds (a
/// month's: the current one's, which is why a monthly quota's value is built per response,
/// see [`fresh_policy`]).
pub fn policy_value(name: &str, p: &BucketParams) -> String {
    if let Some(w) = p.window() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        return format!("\"{name}\";q={};w={}", p.capacity(), w.secs_at(now));
    }
    if p.is_slots() {
        // A concurrency limit has no window.
        return format!("\"{name}\";q={}", p.capacity());
    }
    let w = (p.capacity() as f64 / p.refill_per_second())
        .ceil()
        .max(1.0);
    let w = if w.is_finite() && w < u64::MAX as f64 {
        w as u64
    } else {
        u64::MAX
    };
    format!("\"{name}\";q={};w={w}", p.capacity())
}

/// [`policy_value`] as a header value (an empty value for a name that is not a valid header
/// value). The limits' own values are built once per config, an override's once and kept with
/// it ([`own_policy_header`]): only a monthly quota's is built per response.
pub fn policy_header(name: &str, p: &BucketParams) -> HeaderValue {
    HeaderValue::from_str(&policy_value(name, p)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `RateLimit-Policy` value of a key's own bucket (an override), built the first time a
/// response reports it and kept with the override: a reference count, no lookup. A monthly
/// quota's is built every time (its `w` changes).
pub fn own_policy_header(own: &Own) -> HeaderValue {
    let (name, p) = (&own.spec.name, &own.spec.params);
    if fresh_policy(p) {
        return policy_header(name, p);
    }
    own_policy_kept(own).clone()
}

/// The `RateLimit-Policy` value kept with a key's own bucket (built the first time): for
/// parameters whose value does not change over time (see [`fresh_policy`]).
pub fn own_policy_kept(own: &Own) -> &HeaderValue {
    let (name, p) = (&own.spec.name, &own.spec.params);
    own.policy.get_or_init(|| policy_header(name, p))
}

/// Whether a limit's `RateLimit-Policy` changes over time (a monthly quota's `w`), so that
/// the value built once per config would go stale.
pub fn fresh_policy(p: &BucketParams) -> bool {
    p.window() == Some(crate::limit::window::Window::Month)
}

/// `RateLimit` value after decision `d`.
pub fn ratelimit_value(name: &str, d: &Decision) -> String {
    let mut out = Vec::with_capacity(name.len() + 48);
    write_ratelimit(name, d, |part| out.extend_from_slice(part));
    // Only ASCII digits and punctuation are added to a `&str`.
    String::from_utf8(out).unwrap_or_default()
}

/// The same as a header value, as every admitted request sends it. A name that is not a
/// valid header value (the config allows any name) gives an empty value.
///
/// Each thread keeps the last value it built and hands out that value again (a reference
/// count, no copy) while name, `r` and `t` are the same. They stay the same for every client
/// well under its limit: its bucket is full or nearly so after each request, so the value
/// repeats from one request to the next and across keys of the same limit. A client that
/// spends its bucket quickly gets a new value on each request. A new value is written into a
/// stack buffer without the formatting machinery and stored with one allocation.
pub fn ratelimit_header(name: &str, d: &Decision) -> HeaderValue {
    let reset = ceil_secs(d.full_in_ns);
    LAST_RATELIMIT.with(|cell| {
        let Ok(mut last) = cell.try_borrow_mut() else {
            return build_ratelimit(name, d);
        };
        if let Some(l) = last.as_ref() {
            if l.remaining == d.remaining && l.reset == reset && *l.name == *name {
                return l.value.clone();
            }
        }
        let value = build_ratelimit(name, d);
        match last.as_mut() {
            Some(l) => {
                l.name.clear();
                l.name.push_str(name);
                l.remaining = d.remaining;
                l.reset = reset;
                l.value = value.clone();
            }
            None => {
                *last = Some(LastRateLimit {
                    name: name.to_owned(),
                    remaining: d.remaining,
                    reset,
                    value: value.clone(),
                })
            }
        }
        value
    })
}

/// The last `RateLimit` value a thread built, with what it was built from.
struct LastRateLimit {
    name: String,
    remaining: u64,
    reset: u64,
    value: HeaderValue,
}

thread_local! {
    static LAST_RATELIMIT: std::cell::RefCell<Option<LastRateLimit>> =
        const { std::cell::RefCell::new(None) };
}

/// A short header value held inline, so that it costs one allocation (the shared owner
/// [`Bytes::from_owner`] makes) however often it is handed out.
struct Inline {
    buf: [u8; 96],
    len: usize,
}

impl AsRef<[u8]> for Inline {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn build_ratelimit(name: &str, d: &Decision) -> HeaderValue {
    let mut v = Inline {
        buf: [0u8; 96],
        len: 0,
    };
    let mut fits = true;
    write_ratelimit(name, d, |part| {
        match v.buf.get_mut(v.len..v.len + part.len()) {
            Some(dst) => {
                dst.copy_from_slice(part);
                v.len += part.len();
            }
            None => fits = false,
        }
    });
    let value = if fits {
        HeaderValue::from_maybe_shared(Bytes::from_owner(v))
    } else {
        HeaderValue::from_str(&ratelimit_value(name, d))
    };
    value.unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Writes `"NAME";r=REMAINING;t=SECONDS` as a few byte slices.
fn write_ratelimit(name: &str, d: &Decision, mut put: impl FnMut(&[u8])) {
    let mut digits = itoa::Buffer::new();
    put(b"\"");
    put(name.as_bytes());
    put(b"\";r=");
    put(digits.format(d.remaining).as_bytes());
    put(b";t=");
    put(digits.format(ceil_secs(d.full_in_ns)).as_bytes());
}

/// `Retry-After` seconds for a rejected decision.
pub fn retry_after_secs(d: &Decision) -> u64 {
    ceil_secs(d.retry_after_ns).max(1)
}

/// The body of a refusal: `message` is the limit's `reject.message` ("Rate limit exceeded"
/// unless configured).
pub fn rejection_body(limit: &str, message: &str, d: &Decision) -> Vec<u8> {
    serde_json::json!({
        "error": message,
        "limit": limit,
        "retry_after_ms": ceil_ms(d.retry_after_ns).max(1),
    })
    .to_string()
    .into_bytes()
}

/// The headers of a 429: `Retry-After`, and the limit's `RateLimit-Policy` (`policy`, as
/// [`policy_value`] wrote it) and `RateLimit`.
pub fn rejection_headers(limit: &str, policy: &str, d: &Decision) -> [(&'static str, String); 3] {
    [
        ("Retry-After", retry_after_secs(d).to_string()),
        ("RateLimit-Policy", policy.to_string()),
        ("RateLimit", ratelimit_value(limit, d)),
    ]
}

/// The 413 body: a cost that the limit's capacity can never pay.
pub fn too_costly_body(limit: &str, cost: u64, capacity: u64) -> Vec<u8> {
    serde_json::json!({
        "error": "Request cost exceeds the limit's capacity",
        "limit": limit,
        "cost": cost,
        "capacity": capacity,
    })
    .to_string()
    .into_bytes()
}

/// The 403 body of a key that a limit denies (an override, `"deny"`).
pub fn denied_body(limit: &str) -> Vec<u8> {
    serde_json::json!({ "error": "Forbidden", "limit": limit, "status": 403 })
        .to_string()
        .into_bytes()
}

/// A JSON error body `{"error": message, "status": code}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    serde_json::json!({ "error": message, "status": status })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overrides_policy_is_built_once_and_a_monthly_quotas_every_time() {
        use crate::limit::overrides::LimitSpec;
        use crate::limit::window::Window;
        let own = Own::new(LimitSpec::new(
            "plan",
            BucketParams::new(100, 10.0, 100).expect("params"),
        ));
        let (a, b) = (own_policy_header(&own), own_policy_header(&own));
        assert_eq!(a.to_str().ok(), Some("\"plan\";q=100;w=10"));
        // The second is the first's storage, shared.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        let month = Own::new(LimitSpec::new(
            "plan",
            BucketParams::quota(1000, Window::Month).expect("quota"),
        ));
        let (a, b) = (own_policy_header(&month), own_policy_header(&month));
        assert_eq!(a, b);
        assert!(a
            .to_str()
            .is_ok_and(|v| v.starts_with("\"plan\";q=1000;w=")));
        assert!(
            month.policy.get().is_none(),
            "a month's w changes: never kept"
        );
    }

    fn decision(remaining: u64, retry_ns: u64, full_ns: u64) -> Decision {
        Decision {
            allowed: retry_ns == 0,
            remaining,
            retry_after_ns: retry_ns,
            full_in_ns: full_ns,
            never: false,
        }
    }

    #[test]
    fn header_values_follow_the_draft() {
        let p = BucketParams::new(5000, 1000.0, 5000).unwrap();
        assert_eq!(
            policy_value("per-api-key", &p),
            "\"per-api-key\";q=5000;w=5"
        );
        let d = decision(4987, 0, 13_000_000);
        assert_eq!(
            ratelimit_value("per-api-key", &d),
            "\"per-api-key\";r=4987;t=1"
        );
        assert_eq!(
            ratelimit_header("per-api-key", &d),
            "\"per-api-key\";r=4987;t=1"
        );
        let edge = decision(u64::MAX, 0, 0);
        assert_eq!(
            ratelimit_header("x", &edge),
            format!("\"x\";r={};t=0", u64::MAX).as_str()
        );
        assert_eq!(ratelimit_header("bad\nname", &d), "");
        // A name too long for the stack buffer takes the slower way, to the same value.
        let long = "n".repeat(200);
        assert_eq!(
            ratelimit_header(&long, &d),
            format!("\"{long}\";r=4987;t=1").as_str()
        );
        let slow = BucketParams::new(10, 0.5, 10).unwrap();
        assert_eq!(policy_value("x", &slow), "\"x\";q=10;w=20");
    }

    #[test]
    fn a_repeated_ratelimit_value_is_shared_and_any_change_makes_a_new_one() {
        let d = decision(41, 0, 2_500_000_000);
        let first = ratelimit_header("per-ip", &d);
        let again = ratelimit_header("per-ip", &d);
        assert_eq!(again, "\"per-ip\";r=41;t=3");
        // The same bytes, not a copy of them.
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        // Each part of what the value is built from makes a new one.
        let cases = [
            ("per-ip", 40, 2_500_000_000, "\"per-ip\";r=40;t=3"),
            ("per-ip", 40, 3_500_000_000, "\"per-ip\";r=40;t=4"),
            ("per-ipx", 40, 3_500_000_000, "\"per-ipx\";r=40;t=4"),
            // A value the thread built before is built again, not confused with the last one.
            ("per-ip", 41, 2_500_000_000, "\"per-ip\";r=41;t=3"),
            ("bad\nname", 41, 2_500_000_000, ""),
            ("per-ip", 41, 2_500_000_000, "\"per-ip\";r=41;t=3"),
        ];
        for (name, remaining, full_ns, want) in cases {
            let d = decision(remaining, 0, full_ns);
            assert_eq!(ratelimit_header(name, &d), want, "{name} {d:?}");
        }
        // A value handed out stays valid after the thread has moved on to others.
        assert_eq!(first, "\"per-ip\";r=41;t=3");
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(&decision(0, 1, 1)), 1);
        assert_eq!(retry_after_secs(&decision(0, 740 * NS_PER_MS, 1)), 1);
        assert_eq!(retry_after_secs(&decision(0, 1_000_000_001, 1)), 2);
        let body: serde_json::Value = serde_json::from_slice(&rejection_body(
            "per-ip",
            "Rate limit exceeded",
            &decision(0, 739_500_000, 1),
        ))
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error":"Rate limit exceeded","limit":"per-ip","retry_after_ms":740})
        );
    }
}
