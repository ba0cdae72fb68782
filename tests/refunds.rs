//! Refunds (`refund_statuses` on a route) through the real binary: a request answered with
//! one of its route's statuses gets its cost back on every limit it was charged to, gateway
//! answers included; other answers keep their cost.

mod common;

use common::{free_port, get, wait_until, Gateway, Upstream};
use serde_json::json;
use std::time::Duration;

#[test]
fn a_refunded_status_costs_nothing_on_every_limit_and_a_2xx_keeps_its_cost() {
    let up = Upstream::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::builder(json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] },
                       "gone": { "servers": [dead], "connect_timeout_ms": 200 } },
        "limits": {
            "per-key": { "capacity": 2, "refill_per_second": 0.001, "key": ["header:x-api-key"] },
            "per-ip": { "capacity": 3, "refill_per_second": 0.001, "key": ["client_ip"] },
        },
        "routes": [
            { "name": "gone", "match": { "path_prefix": "/gone" }, "upstream": "gone",
              "limits": ["per-key", "per-ip"], "refund_statuses": ["5xx"] },
            { "name": "api", "match": { "path_prefix": "/" }, "upstream": "api",
              "limits": ["per-key", "per-ip"], "refund_statuses": ["5xx", 404] },
        ],
    }))
    .start();
    let send = |path: &str, key: &str| get(gw.addr, path, &[("x-api-key", key)]).status;
    // Upstream 503s and 404s, gateway 502s: refunded on both limits, so far more of them
    // than either capacity go through.
    for _ in 0..6 {
        assert_eq!(send("/status/503", "a"), 503);
        assert_eq!(send("/status/404", "a"), 404);
        assert_eq!(send("/gone", "a"), 502);
    }
    // Refunded (and counted) before each answer goes out; the metrics are read through the
    // admin listener, polled.
    for line in [
        "tollgate_tokens_refunded_total{limit=\"per-key\"} 18",
        "tollgate_tokens_refunded_total{limit=\"per-ip\"} 18",
    ] {
        assert!(
            wait_until(Duration::from_secs(5), || gw.has_metric_line(line)),
            "{line}"
        );
    }
    // Both buckets are still full: key a's 2 tokens, then a 429 (refused, not charged, not
    // refunded). A 2xx keeps its cost.
    assert_eq!(send("/status/200", "a"), 200);
    assert_eq!(send("/status/201", "a"), 201);
    assert_eq!(send("/status/200", "a"), 429);
    // The per-IP bucket (3) kept those two: one more key's request, then the IP is spent.
    assert_eq!(send("/status/200", "b"), 200);
    assert_eq!(send("/status/200", "c"), 429);
}

#[test]
fn refund_statuses_are_checked() {
    let up = Upstream::start();
    let bad = json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "l": { "capacity": 2, "refill_per_second": 1, "key": ["client_ip"] } },
        "routes": [{ "name": "r", "upstream": "api", "limits": ["l"],
                     "refund_statuses": ["5xx", "6xx", 700, "abc", 429] }],
    });
    let Err(err) = Gateway::builder(bad).try_start() else {
        panic!("a config with bad refund statuses started");
    };
    for at in [
        "refund_statuses[1]: 6xx is not",
        "refund_statuses[2]: 700 is not",
        "refund_statuses[3]: abc is not",
    ] {
        assert!(err.contains(at), "{at} in:\n{err}");
    }
    assert!(
        !err.contains("refund_statuses[0]") && !err.contains("refund_statuses[4]"),
        "{err}"
    );
}
