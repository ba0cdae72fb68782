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

use crate::bucket::{BucketParams, Decision};

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

/// `RateLimit-Policy` value of one limit.
pub fn policy_value(name: &str, p: &BucketParams) -> String {
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

/// `RateLimit` value after decision `d` (on every admitted request: built without the
/// formatting machinery, in one allocation).
pub fn ratelimit_value(name: &str, d: &Decision) -> String {
    let mut out = String::with_capacity(name.len() + 48);
    out.push('"');
    out.push_str(name);
    out.push_str("\";r=");
    push_u64(&mut out, d.remaining);
    out.push_str(";t=");
    push_u64(&mut out, ceil_secs(d.full_in_ns));
    out
}

/// Appends `n` in decimal.
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &digits[i..] {
        out.push(char::from(b));
    }
}

/// `Retry-After` seconds for a rejected decision.
pub fn retry_after_secs(d: &Decision) -> u64 {
    ceil_secs(d.retry_after_ns).max(1)
}

/// The 429 body.
pub fn rejection_body(limit: &str, d: &Decision) -> Vec<u8> {
    serde_json::json!({
        "error": "Rate limit exceeded",
        "limit": limit,
        "retry_after_ms": ceil_ms(d.retry_after_ns).max(1),
    })
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
        let slow = BucketParams::new(10, 0.5, 10).unwrap();
        assert_eq!(policy_value("x", &slow), "\"x\";q=10;w=20");
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(&decision(0, 1, 1)), 1);
        assert_eq!(retry_after_secs(&decision(0, 740 * NS_PER_MS, 1)), 1);
        assert_eq!(retry_after_secs(&decision(0, 1_000_000_001, 1)), 2);
        let body: serde_json::Value =
            serde_json::from_slice(&rejection_body("per-ip", &decision(0, 739_500_000, 1)))
                .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error":"Rate limit exceeded","limit":"per-ip","retry_after_ms":740})
        );
    }
}
