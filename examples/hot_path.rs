//! The limiting work of one admitted request, repeated N times: the store keys of two limits
//! (an API key header and the client IP), one charge of both, and the `RateLimit` header value,
//! the same steps the proxy's request path takes. It exists to count instructions without a
//! network in the way:
//!
//! ```text
//! cargo build --release --example hot_path
//! for n in 1000 101000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/hp.$n target/release/examples/hot_path $n
//! done
//! # instructions per request = (total(101000) - total(1000)) / 100000
//! ```
//!
//! `scripts/bench_instructions.sh` measures the whole proxy the same way.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use tollgate::bucket::BucketParams;
use tollgate::clock::SystemClock;
use tollgate::config::KeySource;
use tollgate::headers;
use tollgate::key::RequestView;
use tollgate::limiter::{Charge, LimitSpec, Store};

fn limit(name: &str, key: KeySource) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        // Far above the load, as in the proxy benchmarks: every request is admitted.
        params: BucketParams::new(1_000_000_000, 1e9, 1_000_000_000).expect("params"),
        shadow: false,
        key: vec![key],
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let limits = [
        limit(
            "per-api-key",
            KeySource::Header(HeaderName::from_static("x-api-key")),
        ),
        limit("per-ip", KeySource::ClientIp),
    ];
    let store = Store::new(Arc::new(SystemClock), false);
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static("bench"));
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("user-agent", HeaderValue::from_static("Python-urllib/3.11"));
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let mut buf = String::new();
    let mut admitted = 0u64;
    for _ in 0..n {
        let view = RequestView {
            method: "GET",
            path: "/rating/42",
            query: None,
            headers: black_box(&h),
            client_ip: black_box(ip),
            client_ip_text: None,
            route: "rating",
        };
        buf.clear();
        let mut ends = [0usize; 2];
        for (i, l) in limits.iter().enumerate() {
            l.push_store_key(&view, &mut buf).expect("key");
            ends[i] = buf.len();
        }
        let charges = [
            Charge {
                limit: &limits[0],
                key: &buf[..ends[0]],
                cost: 1,
            },
            Charge {
                limit: &limits[1],
                key: &buf[ends[0]..ends[1]],
                cost: 1,
            },
        ];
        let r = store.charge_prefixed(&charges);
        if r.allowed() {
            admitted += 1;
        }
        black_box(headers::ratelimit_header(&limits[0].name, &r.decisions[0]));
    }
    println!("{admitted} of {n} admitted");
}
