//! The limiting work of one admitted request, repeated N times: the decision the proxy's
//! request path calls ([`decision::decide`]: the store keys of two limits, an API key header
//! and the client IP, and one charge of both) and the `RateLimit` header value. It exists to count instructions without a
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
//! `HOT_PATH_PLANS=1` configures plans as `INSTR_PLANS=1` of `scripts/bench_instructions.sh`
//! does: the API-key limit with 100,000 overrides (the benchmark's key among them) and, in place
//! of the per-IP limit, a daily quota on the API key with overrides. Two more, to tell what
//! the plans cost from what the quota costs: `HOT_PATH_PLANS=2` is the same two limits
//! without overrides (the plain charge), `HOT_PATH_PLANS=3` two buckets on the API key with
//! overrides (no quota).
//!
//! `scripts/bench_instructions.sh` measures the whole proxy the same way.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use tollgate::config::KeySource;
use tollgate::http::headers;
use tollgate::limit::bucket::BucketParams;
use tollgate::limit::clock::SystemClock;
use tollgate::limit::store::{ChargeResult, LimitSpec, Store};
use tollgate::request::decision::{self, Charged, KeyOf, Verdict};
use tollgate::request::key::RequestView;

fn limit(name: &str, key: KeySource) -> (LimitSpec, Arc<[KeySource]>) {
    let spec = LimitSpec {
        name: name.into(),
        // Far above the load, as in the proxy benchmarks: every request is admitted.
        params: BucketParams::new(1_000_000_000, 1e9, 1_000_000_000).expect("params"),
        shadow: false,
        burst_guard: false,
        overrides: Default::default(),
    };
    (spec, Arc::from([key]))
}

/// 100,000 overrides on each limit (one in ten unlimited, "bench" overridden), and the second
/// limit a daily quota on the API key (the same list of sources, as the config shares it).
fn with_plans(limits: &mut [(LimitSpec, Arc<[KeySource]>); 2]) {
    use tollgate::limit::overrides::{Override, Overrides, Own};
    use tollgate::limit::window::Window;
    let api_key = limits[0].1.clone();
    let mode = std::env::var("HOT_PATH_PLANS").unwrap_or_default();
    if mode != "3" {
        let quota = BucketParams::quota(1_000_000_000_000, Window::Day).expect("quota");
        limits[1] = (LimitSpec::new("per-ip", quota), api_key.clone());
    } else {
        limits[1].1 = api_key;
    }
    if mode == "2" {
        return;
    }
    for (spec, _) in limits.iter_mut() {
        let own = Override::Bucket(Box::new(Own::new(spec.with_params(spec.params.clone()))));
        let entries = (0..99_999)
            .map(|i| {
                let o = if i % 10 == 9 {
                    Override::Unlimited
                } else {
                    own.clone()
                };
                (format!("key-{i}"), o)
            })
            .chain([("bench".to_string(), own.clone())]);
        spec.overrides = Overrides::new(entries);
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut limits = [
        limit(
            "per-api-key",
            KeySource::Header(HeaderName::from_static("x-api-key")),
        ),
        limit("per-ip", KeySource::ClientIp),
    ];
    if std::env::var_os("HOT_PATH_PLANS").is_some_and(|v| v != "0") {
        with_plans(&mut limits);
    }
    let store = Store::new(Arc::new(SystemClock), false);
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static("bench"));
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("user-agent", HeaderValue::from_static("Python-urllib/3.11"));
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
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
        let charged = [&limits[0], &limits[1]].map(|(spec, key)| Charged {
            limit: spec,
            key: KeyOf::Request(key, &view),
        });
        let mut result = ChargeResult::default();
        if let Verdict::Pass { report, .. } =
            decision::decide(&store, &charged, 1, false, &mut result)
        {
            admitted += 1;
            let i = report.unwrap_or(0);
            black_box(headers::ratelimit_header(
                &limits[i].0.name,
                &result.decisions[i],
            ));
        }
    }
    println!("{admitted} of {n} admitted");
}
