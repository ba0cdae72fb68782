//! End-to-end tests of the proxy: the real `tollgate` binary in front of the real example
//! upstream, on ephemeral ports.

mod common;

use common::{get, request, wait_until, Conn, Gateway, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A config with one upstream, the given limits and routes.
fn config(up: &Upstream, limits: Value, routes: Value) -> Value {
    json!({
        "node_id": "test-node",
        "upstreams": { "api": { "servers": [up.addr.to_string()], "connect_timeout_ms": 500, "read_timeout_ms": 2000 } },
        "limits": limits,
        "routes": routes,
    })
}

fn one_limit(up: &Upstream, capacity: u64, rate: f64, key: &str) -> Value {
    config(
        up,
        json!({ "per-key": { "capacity": capacity, "refill_per_second": rate, "key": [key] } }),
        json!([
            { "name": "rating", "match": { "path_prefix": "/rating" }, "upstream": "api", "limits": ["per-key"] },
            { "name": "other", "match": { "path_prefix": "/" }, "upstream": "api" }
        ]),
    )
}

fn metric(gw: &Gateway, line_prefix: &str) -> f64 {
    let m = get(gw.admin, "/metrics", &[]);
    m.text()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits for a metric to reach `want` (the access-log hook that counts a request runs just
/// after its response is written), then asserts it.
fn assert_metric(gw: &Gateway, line_prefix: &str, want: f64) {
    wait_until(Duration::from_secs(5), || metric(gw, line_prefix) == want);
    assert_eq!(metric(gw, line_prefix), want, "{line_prefix}");
}

#[test]
fn forwards_method_path_query_headers_and_body_intact() {
    let up = Upstream::start();
    let gw = Gateway::builder(one_limit(&up, 100, 10.0, "header:x-api-key")).start();
    let body = b"{\"score\": 5}";
    let r = request(
        gw.addr,
        "POST",
        "/rating/7?lang=en&x=%20y",
        &[
            ("x-api-key", "k1"),
            ("X-Custom", "Value 1"),
            ("content-type", "application/json"),
        ],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = &r.json()["request"];
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["target"], "/rating/7?lang=en&x=%20y");
    assert_eq!(echo["body"], "{\"score\": 5}");
    assert_eq!(echo["body_len"], body.len());
    let headers: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_ascii_lowercase(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(h("x-custom").as_deref(), Some("Value 1"));
    assert_eq!(h("x-api-key").as_deref(), Some("k1"));
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    // The response carries the rate-limit headers of the limit charged.
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=100;w=10"));
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=99;t=1"));
    // A large streamed body arrives whole.
    let big = vec![b'z'; 3 * 1024 * 1024];
    let r = request(gw.addr, "POST", "/rating/big", &[("x-api-key", "k1")], &big);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["request"]["body_len"], big.len());
}

#[test]
fn burst_beyond_capacity_gets_429_with_exact_body_and_headers_and_keeps_alive() {
    let up = Upstream::start();
    let gw = Gateway::builder(one_limit(&up, 5, 0.5, "header:x-api-key")).start();
    let mut conn = Conn::open(gw.addr);
    for i in 0..5 {
        let r = conn
            .request("GET", "/rating/1", &[("x-api-key", "burst")], b"")
            .unwrap();
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-key\";r={};t={}", 4 - i, 2 * (i + 1)).as_str())
        );
    }
    let r = conn
        .request("GET", "/rating/1", &[("x-api-key", "burst")], b"")
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=5;w=10"));
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=0;t=10"));
    let body = r.json();
    assert_eq!(body["error"], "Rate limit exceeded");
    assert_eq!(body["limit"], "per-key");
    let ms = body["retry_after_ms"].as_u64().unwrap();
    assert!((1000..=2000).contains(&ms), "retry_after_ms {ms}");
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    // The same connection still works after the 429 (keep-alive survives).
    let r = conn.request("GET", "/other", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    // A 429 with a small body to drain also keeps the connection.
    let r = conn
        .request("POST", "/rating/1", &[("x-api-key", "burst")], b"abc")
        .unwrap();
    assert_eq!(r.status, 429);
    let r = conn.request("GET", "/other", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_metric(
        &gw,
        "tollgate_requests_total{outcome=\"limited\",route=\"rating\"}",
        2.0,
    );
    assert_metric(
        &gw,
        "tollgate_rate_limited_total{limit=\"per-key\",route=\"rating\"}",
        2.0,
    );
}

#[test]
fn other_keys_are_unaffected_and_keyless_requests_are_charged() {
    let up = Upstream::start();
    let gw = Gateway::builder(one_limit(&up, 2, 0.1, "header:x-api-key")).start();
    for _ in 0..2 {
        assert_eq!(get(gw.addr, "/rating/1", &[("x-api-key", "a")]).status, 200);
    }
    assert_eq!(get(gw.addr, "/rating/1", &[("x-api-key", "a")]).status, 429);
    assert_eq!(get(gw.addr, "/rating/1", &[("x-api-key", "b")]).status, 200);
    // No key header: charged to the shared bucket of the missing value, not free.
    assert_eq!(get(gw.addr, "/rating/1", &[]).status, 200);
    assert_eq!(get(gw.addr, "/rating/1", &[]).status, 200);
    assert_eq!(get(gw.addr, "/rating/1", &[]).status, 429);
    // Routes without limits are not charged.
    for _ in 0..5 {
        assert_eq!(
            get(gw.addr, "/elsewhere", &[("x-api-key", "a")]).status,
            200
        );
    }
}

#[test]
fn refill_lets_requests_through_again() {
    let up = Upstream::start();
    // 20 tokens/s: one token every 50 ms.
    let gw = Gateway::builder(one_limit(&up, 2, 20.0, "header:x-api-key")).start();
    let h = [("x-api-key", "refill")];
    assert_eq!(get(gw.addr, "/rating/1", &h).status, 200);
    assert_eq!(get(gw.addr, "/rating/1", &h).status, 200);
    let rejected = get(gw.addr, "/rating/1", &h);
    assert_eq!(rejected.status, 429);
    let wait_ms = rejected.json()["retry_after_ms"].as_u64().unwrap();
    assert!(wait_ms <= 50, "retry_after_ms {wait_ms}");
    let t0 = Instant::now();
    // Rejected polls take no tokens, so the bucket refills while we poll.
    assert!(wait_until(Duration::from_secs(3), || get(
        gw.addr,
        "/rating/1",
        &h
    )
    .status
        == 200));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_limit_answers_its_refusals_with_its_own_status_and_message() {
    let up = Upstream::start();
    let mut cfg = one_limit(&up, 1, 0.001, "header:x-api-key");
    cfg["limits"]["per-key"]["reject"] = json!({ "status": 503, "message": "Busy: try later" });
    let gw = Gateway::builder(cfg).start();
    let h = [("x-api-key", "k")];
    assert_eq!(get(gw.addr, "/rating/1", &h).status, 200);
    let r = get(gw.addr, "/rating/1", &h);
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(
        (body["error"].as_str(), body["limit"].as_str()),
        (Some("Busy: try later"), Some("per-key"))
    );
    assert_eq!(r.header("retry-after"), Some("1000"));
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=0;t=1000"));
    // Counted when the request is logged, after its answer went out: polled.
    let limited = "tollgate_requests_total{outcome=\"limited\",route=\"rating\"}";
    assert!(
        wait_until(Duration::from_secs(5), || metric(&gw, limited) == 1.0),
        "{limited} = {}",
        metric(&gw, limited)
    );
    // The sidecar endpoint answers the same.
    let c = request(gw.admin, "POST", "/consume?limit=per-key&key=k", &[], b"");
    assert_eq!(c.status, 503, "{}", c.text());
    assert_eq!(c.json()["error"], "Busy: try later");
    // Without `reject`, a limit answers 429 "Rate limit exceeded".
    let plain = Gateway::builder(one_limit(&up, 1, 0.001, "header:x-api-key")).start();
    assert_eq!(get(plain.addr, "/rating/1", &h).status, 200);
    let r = get(plain.addr, "/rating/1", &h);
    assert_eq!(
        (r.status, r.json()["error"].as_str().map(str::to_string)),
        (429, Some("Rate limit exceeded".to_string()))
    );
}

#[test]
fn several_limits_are_charged_all_or_nothing() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(
        &up,
        json!({
            "wide": { "capacity": 10, "refill_per_second": 0.01, "key": ["header:x-api-key"] },
            "narrow": { "capacity": 2, "refill_per_second": 0.01, "key": ["header:x-api-key"] }
        }),
        json!([{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["wide", "narrow"] }]),
    )).start();
    let h = [("x-api-key", "multi")];
    for _ in 0..2 {
        assert_eq!(get(gw.addr, "/rating", &h).status, 200);
    }
    for _ in 0..3 {
        let r = get(gw.addr, "/rating", &h);
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["limit"], "narrow");
    }
    // "wide" paid only for the two admitted requests.
    let peek = get(gw.admin, "/rating?limit=wide&key=multi", &[]).json();
    assert_eq!(peek["remaining"], 8, "{peek}");
    let peek = get(gw.admin, "/rating?limit=narrow&key=multi", &[]).json();
    assert_eq!(peek["remaining"], 0, "{peek}");
}

#[test]
fn shadow_limits_count_but_never_reject() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(
        &up,
        json!({ "trial": { "capacity": 2, "refill_per_second": 0.01, "key": ["client_ip"], "shadow": true } }),
        json!([{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["trial"] }]),
    )).start();
    for i in 0..5 {
        let r = get(gw.addr, "/rating", &[]);
        assert_eq!(r.status, 200, "request {i}");
        assert!(r.header("ratelimit").is_some());
    }
    assert_metric(
        &gw,
        "tollgate_requests_total{outcome=\"shadow_limited\",route=\"rating\"}",
        3.0,
    );
    assert_metric(
        &gw,
        "tollgate_requests_total{outcome=\"allowed\",route=\"rating\"}",
        2.0,
    );
    assert_metric(
        &gw,
        "tollgate_rate_limited_total{limit=\"trial\",route=\"rating\"}",
        3.0,
    );
}

#[test]
fn per_bytes_cost_charges_by_declared_length() {
    let up = Upstream::start();
    let mut cfg = one_limit(&up, 10, 0.01, "header:x-api-key");
    cfg["routes"][0]["cost"] = json!({ "per_bytes": 100 });
    let gw = Gateway::builder(cfg).start();
    let h = [("x-api-key", "bytes")];
    // 250 bytes: 3 tokens (started hundreds).
    let r = request(gw.addr, "POST", "/rating", &h, &[b'a'; 250]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=7;t=300"));
    // No body: at least 1 token.
    assert_eq!(get(gw.addr, "/rating", &h).status, 200);
    // 700 bytes: 7 tokens, only 6 left.
    let r = request(gw.addr, "POST", "/rating", &h, &[b'a'; 700]);
    assert_eq!(r.status, 429);
    // 600 bytes fit exactly.
    assert_eq!(
        request(gw.addr, "POST", "/rating", &h, &[b'a'; 600]).status,
        200
    );
    // A body costing more than the capacity can never pass: 413.
    let r = request(
        gw.addr,
        "POST",
        "/rating",
        &[("x-api-key", "other")],
        &[b'a'; 1001],
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["capacity"], 10);
    // Chunked bodies declare no length: refused on a per-byte route.
    let mut conn = Conn::open(gw.addr);
    let r = conn
        .send_raw(b"POST /rating HTTP/1.1\r\nHost: t\r\nx-api-key: bytes\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 411);
}

#[test]
fn no_route_is_404_json() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(
        &up,
        json!({}),
        json!([{ "name": "rating", "match": { "path_prefix": "/rating", "methods": ["GET"] }, "upstream": "api" }]),
    )).start();
    let r = get(gw.addr, "/nothing-here", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["status"], 404);
    assert_eq!(
        request(gw.addr, "DELETE", "/rating/1", &[], b"").status,
        404
    );
    assert_eq!(get(gw.addr, "/rating/1", &[]).status, 200);
    assert_metric(
        &gw,
        "tollgate_requests_total{outcome=\"no_route\",route=\"none\"}",
        2.0,
    );
}

#[test]
fn dead_upstream_is_502_and_slow_upstream_504_quickly() {
    let mut up = Upstream::start();
    let mut cfg = one_limit(&up, 100, 10.0, "client_ip");
    cfg["upstreams"]["api"]["read_timeout_ms"] = json!(300);
    let gw = Gateway::builder(cfg).start();
    let t0 = Instant::now();
    let r = get(gw.addr, "/slow?ms=3000", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t0.elapsed()
    );
    up.kill();
    let t0 = Instant::now();
    let r = get(gw.addr, "/rating/1", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["status"], 502);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert_metric(
        &gw,
        "tollgate_requests_total{outcome=\"upstream_error\",route=\"rating\"}",
        1.0,
    );
}

#[test]
fn x_forwarded_for_is_honoured_only_from_trusted_proxies() {
    let up = Upstream::start();
    // Untrusted peer: XFF is ignored for the key and replaced upstream.
    let gw = Gateway::builder(one_limit(&up, 1, 0.01, "client_ip")).start();
    let r = get(gw.addr, "/rating", &[("x-forwarded-for", "1.2.3.4")]);
    assert_eq!(r.status, 200);
    let xff: Vec<String> = r.json()["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p[0].as_str()
                .unwrap()
                .eq_ignore_ascii_case("x-forwarded-for")
        })
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(xff, vec!["127.0.0.1".to_string()]);
    assert_eq!(
        get(gw.addr, "/rating", &[("x-forwarded-for", "5.6.7.8")]).status,
        429
    );
    // The key is the peer's address as text, exactly.
    let peek = get(gw.admin, "/rating?limit=per-key&key=127.0.0.1", &[]).json();
    assert_eq!(peek["remaining"], 0, "{peek}");
    drop(gw);

    // Trusted peer (loopback): the rightmost untrusted address is the client.
    let mut cfg = one_limit(&up, 1, 0.01, "client_ip");
    cfg["trusted_proxies"] = json!(["127.0.0.0/8"]);
    let gw = Gateway::builder(cfg).start();
    let r = get(
        gw.addr,
        "/rating",
        &[("x-forwarded-for", "9.9.9.9, 1.2.3.4")],
    );
    assert_eq!(r.status, 200);
    let echo = r.json();
    let fwd = echo["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p[0].as_str()
                .unwrap()
                .eq_ignore_ascii_case("x-forwarded-for")
        })
        .map(|p| p[1].as_str().unwrap().to_string());
    assert_eq!(fwd.as_deref(), Some("9.9.9.9, 1.2.3.4, 127.0.0.1"));
    // Same client behind a different spoofed left part: same bucket.
    assert_eq!(
        get(
            gw.addr,
            "/rating",
            &[("x-forwarded-for", "7.7.7.7, 1.2.3.4")]
        )
        .status,
        429
    );
    assert_eq!(
        get(gw.addr, "/rating", &[("x-forwarded-for", "5.6.7.8")]).status,
        200
    );
    let peek = get(gw.admin, "/rating?limit=per-key&key=1.2.3.4", &[]).json();
    assert_eq!(peek["remaining"], 0);
}

#[test]
fn path_normalization_bypass_attempts_are_charged_to_the_right_route() {
    let up = Upstream::start();
    let gw = Gateway::builder(one_limit(&up, 5, 0.01, "route")).start();
    let mut conn = Conn::open(gw.addr);
    for target in [
        "/rating",
        "//rating",
        "/./rating",
        "/%72ating",
        "/%2e//rating",
    ] {
        let r = conn
            .send_raw(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(r.status, 200, "{target}");
        // Forwarded as sent.
        assert_eq!(r.json()["request"]["target"], target);
    }
    let peek = get(gw.admin, "/rating?limit=per-key&key=rating", &[]).json();
    assert_eq!(peek["remaining"], 0, "{peek}");
    for target in ["/rating", "/%2e/rating", "///rating"] {
        let r = conn
            .send_raw(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(r.status, 429, "{target}");
    }
    // Paths an upstream could read differently are refused.
    for target in ["/rating%2Fx", "/../rating", "/x/../rating", "/a%00b"] {
        let r = Conn::open(gw.addr)
            .send_raw(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(r.status, 400, "{target}");
    }
}

#[test]
fn duplicate_key_headers_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::builder(one_limit(&up, 5, 0.01, "header:x-api-key")).start();
    let r = Conn::open(gw.addr)
        .send_raw(b"GET /rating HTTP/1.1\r\nHost: t\r\nx-api-key: a\r\nX-Api-Key: b\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("duplicate x-api-key header"),
        "{}",
        r.text()
    );
}

#[test]
fn upstream_servers_take_turns() {
    let a = Upstream::start();
    let b = Upstream::start();
    let mut cfg = one_limit(&a, 100, 10.0, "client_ip");
    cfg["upstreams"]["api"]["servers"] = json!([a.addr.to_string(), b.addr.to_string()]);
    let gw = Gateway::builder(cfg).start();
    let served: Vec<String> = (0..4)
        .map(|_| {
            get(gw.addr, "/other", &[]).json()["request"]["server"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let on_a = served.iter().filter(|s| **s == a.addr.to_string()).count();
    let on_b = served.iter().filter(|s| **s == b.addr.to_string()).count();
    assert_eq!((on_a, on_b), (2, 2), "{served:?}");
}

#[test]
fn access_log_shows_a_key_fingerprint_never_the_key() {
    let up = Upstream::start();
    let gw = Gateway::builder(one_limit(&up, 1, 0.01, "header:x-api-key")).start();
    let secret = "sk-live-very-secret-0123456789";
    assert_eq!(
        get(gw.addr, "/rating/1", &[("x-api-key", secret)]).status,
        200
    );
    assert_eq!(
        get(gw.addr, "/rating/1", &[("x-api-key", secret)]).status,
        429
    );
    let fp = tollgate::request::key::fingerprint(secret);
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .matches(&fp)
        .count()
        >= 2));
    let log = gw.log();
    assert!(!log.contains(secret), "raw key in log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains(&fp) && l.contains("status=429"))
        .unwrap_or_else(|| panic!("no access line for the 429:\n{log}"));
    for field in [
        "route=rating",
        "outcome=limited",
        "client_ip=127.0.0.1",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}
