//! A flood of distinct keys against a capped bucket store (`max_buckets`): memory stays
//! bounded, new keys are refused (429) while the store is full, existing buckets keep their
//! state (no reset, so no bypass), and room comes back as full buckets are evicted.

mod common;

use common::{get, wait_until, Conn, Gateway, Upstream};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_key_flood_is_bounded_and_bypasses_nothing() {
    let up = Upstream::start();
    let gw = Gateway::builder(json!({
        "access_log": false,
        "max_buckets": 640,
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": {
            // Refills in a millisecond: a flood bucket is full (evictable) right after use.
            "flood": { "capacity": 1, "refill_per_second": 1000, "key": ["header:x-key"] },
            "victim": { "capacity": 5, "refill_per_second": 0.001, "key": ["header:x-key"] },
        },
        "routes": [
            { "name": "victim", "match": { "path_prefix": "/victim" }, "upstream": "api", "limits": ["victim"] },
            { "name": "flood", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["flood"] },
        ],
    })).start();
    let victim = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| get(gw.addr, "/victim", &[("x-key", "me")]).status)
            .collect()
    };
    assert_eq!(victim(3), vec![200; 3]);

    let mut conn = Conn::open(gw.addr);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..3000 {
        let key = format!("flood-{i}");
        let r = conn
            .request("GET", "/x", &[("x-key", key.as_str())], b"")
            .expect("flood request");
        match r.status {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(refused > 0 && ok >= 600, "ok {ok}, refused {refused}");
    let metrics = get(gw.admin, "/metrics", &[]).text();
    let active = gauge(&metrics, "tollgate_buckets_active{limit=\"flood\"} ").expect("gauge");
    assert!(active <= 640.0, "{active} buckets in memory");
    assert!(
        gauge(&metrics, "tollgate_buckets_overflow_total ").is_some_and(|v| v >= refused as f64)
    );

    // The victim's bucket kept its state through the flood: two tokens left, then 429.
    assert_eq!(victim(3), vec![200, 200, 429]);

    // Full buckets are evicted as they refill: new keys get buckets again.
    assert!(
        wait_until(WAIT, || get(gw.addr, "/x", &[("x-key", "late-comer")])
            .status
            == 200),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("bucket store full"));
    // Still no reset for the victim.
    assert_eq!(victim(1), vec![429]);
}
