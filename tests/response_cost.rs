//! Costs the upstream reports (a route's `{"limit", "cost": {"response_header", "reserve",
//! "strip"}}`) through the real binary and the example upstream's `/v1/complete`, which reports
//! the tokens a call used in `x-usage-tokens`: admission on the reserve, the charge settled
//! above or below it when the response head arrives (into debt, which delays the key's next
//! request), a missing header keeping the reserve, `strip`, the `RateLimit` header after
//! settling, and a settled bucket seen by a second node through Redis.

mod common;

use common::{free_port, get, wait_until, Gateway, RedisServer, Response, Upstream};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `llm`: 100 tokens, refilled so slowly that every figure below is exact. Routes: `/v1` charged
/// by `x-usage-tokens` (reserve 10, stripped), `/kept` the same without strip, `/gone` to a
/// dead upstream, `/rating` (no usage header) by response cost too.
fn config(up: &Upstream) -> Value {
    let dead = format!("127.0.0.1:{}", free_port());
    let metered = |strip: bool| {
        json!([{ "limit": "llm",
                 "cost": { "response_header": "x-usage-tokens", "reserve": 10, "strip": strip } }])
    };
    json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] },
                       "gone": { "servers": [dead], "connect_timeout_ms": 200 } },
        "limits": {
            "llm": { "capacity": 100, "refill_per_second": 0.001, "key": ["header:x-api-key"] },
        },
        "routes": [
            { "name": "chat", "match": { "path_prefix": "/v1" }, "upstream": "api",
              "limits": metered(true) },
            { "name": "kept", "match": { "path_prefix": "/kept" }, "upstream": "api",
              "limits": metered(false) },
            { "name": "gone", "match": { "path_prefix": "/gone" }, "upstream": "gone",
              "limits": metered(true) },
            { "name": "plain", "match": { "path_prefix": "/rating" }, "upstream": "api",
              "limits": metered(true) },
        ],
    })
}

/// `r` of the `RateLimit` header (`"llm";r=70;t=...`).
fn remaining(r: &Response) -> u64 {
    let v = r
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit: {r:?}"));
    v.split(';')
        .find_map(|p| p.strip_prefix("r="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no r= in {v}"))
}

fn call(gw: &Gateway, target: &str, key: &str) -> Response {
    get(gw.addr, target, &[("x-api-key", key)])
}

fn bucket_remaining(gw: &Gateway, key: &str) -> u64 {
    let r = get(gw.admin, &format!("/rating?limit=llm&key={key}"), &[]);
    r.json()["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}", r.text()))
}

#[test]
fn a_response_cost_settles_above_and_below_the_reserve_and_debt_delays_the_next_request() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up)).start();
    // 30 used: the reserve of 10 is settled at 30, and the client sees what is left after it;
    // the header is stripped.
    let r = call(&gw, "/v1/complete?tokens=30", "a");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-usage-tokens"), None, "strip: true");
    assert_eq!(r.json()["usage"]["tokens"], 30);
    assert_eq!(remaining(&r), 70);
    // 4 used, below the reserve: the difference comes back.
    let r = call(&gw, "/v1/complete?tokens=4", "a");
    assert_eq!(remaining(&r), 66);
    assert_eq!(bucket_remaining(&gw, "a"), 66);
    // 200 used with 66 left: admitted on its reserve, settled into debt (66 - 200 = -134).
    let r = call(&gw, "/v1/complete?tokens=200", "a");
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), 0);
    // The debt delays the next request: 134 + 10 tokens at 0.001 a second.
    let r = call(&gw, "/v1/complete?tokens=1", "a");
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((143_000..=145_000).contains(&retry), "Retry-After {retry}");
    // An answer without the usage header (`/kept` is the upstream's echo) keeps the reserve.
    let r = call(&gw, "/kept/x", "b");
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), 90);
    let r = call(&gw, "/v1/complete?tokens=7", "c");
    assert_eq!(remaining(&r), 93);
    // Consumed counts what was taken: each reserve (10), and what a settlement took on top
    // (20 and 190 for a); refunded what a settlement below the reserve gave back (6 and 3).
    for line in [
        "tollgate_tokens_consumed_total{limit=\"llm\"} 260",
        "tollgate_tokens_refunded_total{limit=\"llm\"} 9",
        "tollgate_response_cost_missing_total{limit=\"llm\",route=\"kept\"} 1",
    ] {
        assert!(
            wait_until(WAIT, || gw.has_metric_line(line)),
            "{line}\n{}",
            get(gw.admin, "/metrics", &[]).text()
        );
    }
}

#[test]
fn the_header_is_stripped_or_kept_as_asked_and_a_missing_or_failed_answer_keeps_the_reserve() {
    let up = Upstream::start();
    let mut cfg = config(&up);
    cfg["routes"][0]["limits"][0]["cost"]["strip"] = json!(false);
    let gw = Gateway::builder(cfg).start();
    // strip: false: the client sees the upstream's header, and is charged it.
    let r = call(&gw, "/v1/complete?tokens=12", "k");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-usage-tokens"), Some("12"));
    assert_eq!(remaining(&r), 88);
    // No usage header (the rating endpoint): the reserve of 10 stays charged.
    let r = call(&gw, "/rating/42", "k");
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), 78);
    // The upstream cannot be reached: no response head, the reserve stays charged.
    let r = call(&gw, "/gone", "k");
    assert_eq!(r.status, 502);
    assert_eq!(bucket_remaining(&gw, "k"), 68);
    // An answer the upstream made without the header (a 400 for a bad query) keeps it too.
    let r = call(&gw, "/v1/complete?tokens=lots", "k");
    assert_eq!(r.status, 400);
    assert_eq!(remaining(&r), 58);
    assert!(wait_until(WAIT, || gw.has_metric_line(
        "tollgate_response_cost_missing_total{limit=\"llm\",route=\"chat\"} 1"
    )));
    assert!(
        gw.has_metric_line("tollgate_response_cost_missing_total{limit=\"llm\",route=\"plain\"} 1")
    );
}

#[test]
fn a_refunded_answer_gives_back_its_reserve_on_a_route_with_two_limits() {
    let up = Upstream::start();
    let mut cfg = config(&up);
    cfg["limits"]["per-key"] =
        json!({ "capacity": 5, "refill_per_second": 0.001, "key": ["header:x-api-key"] });
    let metered = cfg["routes"][0]["limits"][0].clone();
    cfg["routes"] = json!([
        { "name": "st", "match": { "path_prefix": "/status" }, "upstream": "api",
          "limits": ["per-key", metered], "refund_statuses": ["5xx"] },
        { "name": "chat", "match": { "path_prefix": "/v1" }, "upstream": "api",
          "limits": ["per-key", metered], "refund_statuses": ["5xx"] },
    ]);
    let gw = Gateway::builder(cfg).start();
    let per_key = || {
        let r = get(gw.admin, "/rating?limit=per-key&key=z", &[]);
        r.json()["remaining"].as_u64().unwrap()
    };
    // Upstream 503s, answered after a delay and without a usage header: refunded on both
    // limits, so more of them than per-key's capacity go through, and llm keeps its 100.
    for _ in 0..7 {
        assert_eq!(call(&gw, "/status/503?ms=5", "z").status, 503);
    }
    assert_eq!((per_key(), bucket_remaining(&gw, "z")), (5, 100));
    // A settled call: 1 on per-key, 20 on llm.
    let r = call(&gw, "/v1/complete?tokens=20", "z");
    assert_eq!(r.status, 200);
    assert_eq!((per_key(), bucket_remaining(&gw, "z")), (4, 80));
    // A 2xx without a usage header is not refunded: its reserve stays.
    assert_eq!(call(&gw, "/status/200", "z").status, 200);
    assert_eq!((per_key(), bucket_remaining(&gw, "z")), (3, 70));
}

#[test]
fn a_bucket_settled_on_one_node_is_seen_on_another() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let node = |id: &str| Gateway::builder(redis.node_config(config(&up), id)).start();
    let (a, b) = (node("node-a"), node("node-b"));
    a.settle(2);
    // b holds the key first (10 used: its reserve, settled at 10).
    assert_eq!(remaining(&call(&b, "/v1/complete?tokens=10", "shared")), 90);
    // a settles 45: Redis holds a's consumption at 45.
    assert_eq!(call(&a, "/v1/complete?tokens=45", "shared").status, 200);
    let hash = "tollgate:llm:shared";
    assert!(
        wait_until(WAIT, || redis
            .cmd(&["HGET", hash, "node-a:consumed"])
            .trim()
            == "45"),
        "{}",
        redis.cmd(&["HGETALL", hash])
    );
    // b's next call (3 used: 7 of its reserve back as b's credit) is synced, and b's view
    // then counts a's settled 45: 100 - 45 - 20 + 7.
    assert_eq!(call(&b, "/v1/complete?tokens=3", "shared").status, 200);
    assert!(
        wait_until(WAIT, || bucket_remaining(&b, "shared") == 42),
        "b sees {}\n{}",
        bucket_remaining(&b, "shared"),
        redis.cmd(&["HGETALL", hash])
    );
    // b's view counts its credit at once; Redis gets it at b's next sync.
    assert!(
        wait_until(WAIT, || redis.cmd(&["HGET", hash, "node-b:credit"]).trim()
            == "7"),
        "{}",
        redis.cmd(&["HGETALL", hash])
    );
    // And a, at its next call (5 used), counts b's: 100 - 55 - 20 + 7 + 5.
    assert_eq!(call(&a, "/v1/complete?tokens=5", "shared").status, 200);
    assert!(
        wait_until(WAIT, || bucket_remaining(&a, "shared") == 37),
        "a sees {}\n{}",
        bucket_remaining(&a, "shared"),
        redis.cmd(&["HGETALL", hash])
    );
}

#[test]
fn response_cost_entries_are_checked() {
    let up = Upstream::start();
    let bad = json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "llm": { "capacity": 100, "refill_per_second": 1, "key": ["client_ip"] },
                    "other": { "capacity": 5, "refill_per_second": 1, "key": ["client_ip"] } },
        "routes": [
            { "name": "a", "match": { "path_prefix": "/a" }, "upstream": "api",
              "limits": [{ "limit": "llm", "cost": { "response_header": "bad header", "reserve": 1 } }] },
            { "name": "b", "match": { "path_prefix": "/b" }, "upstream": "api",
              "limits": [{ "limit": "other", "cost": { "response_header": "x-u", "reserve": 6 } }] },
            { "name": "c", "match": { "path_prefix": "/c" }, "upstream": "api",
              "limits": [{ "limit": "llm" }, { "limit": "nope", "cost": { "response_header": "x-u" } }] },
            { "name": "d", "match": { "path_prefix": "/d" }, "upstream": "api",
              "limits": [{ "limit": "llm", "cost": { "response_header": "x-u", "strip": "yes", "resrve": 2 } }, 7] },
        ],
    });
    let Err(err) = Gateway::builder(bad).try_start() else {
        panic!("a config with bad response costs started");
    };
    for expected in [
        "routes[0].limits[0].cost.response_header: \"bad header\" is not a valid header name",
        "routes[1].limits[0].cost.reserve: reserve 6 is more than the capacity 5 of limit \"other\"",
        "routes[2].limits[0]: needs \"cost\"",
        "routes[2].limits[1]: unknown limit \"nope\"",
        "routes[3].limits[0].cost.strip: must be true or false",
        "routes[3].limits[0].cost.resrve: unknown field \"resrve\"",
        "routes[3].limits[1]: must be a limit's name or",
    ] {
        assert!(err.contains(expected), "{expected}\nin:\n{err}");
    }
}

/// An upstream that answers every request with an interim `100 Continue` and then a final head
/// reporting 30 tokens.
fn upstream_continuing() -> std::net::SocketAddr {
    use std::io::{BufReader, Write};
    const REPLY: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-usage-tokens: 30\r\nContent-Length: 2\r\n\r\n{}";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(read_half) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(read_half);
                let mut writer = stream;
                while common::read_request_head(&mut reader).is_some() {
                    if writer.write_all(REPLY).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The final head settles the charge, not an interim one before it (which carries no usage:
/// read as missing, it would keep the reserve).
#[test]
fn an_interim_head_leaves_the_settlement_to_the_final_one() {
    use std::io::{Read, Write};
    let addr = upstream_continuing();
    let cfg = json!({
        "upstreams": { "api": { "servers": [addr.to_string()] } },
        "limits": {
            "llm": { "capacity": 100, "refill_per_second": 0.001, "key": ["header:x-api-key"] },
        },
        "routes": [{ "name": "chat", "match": { "path_prefix": "/" }, "upstream": "api",
                     "limits": [{ "limit": "llm", "cost": { "response_header": "x-usage-tokens",
                                                            "reserve": 10, "strip": true } }] }],
    });
    let gw = Gateway::builder(cfg).start();
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /v1/chat HTTP/1.1\r\nHost: api.test\r\nx-api-key: interim\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let last = text.rsplit("HTTP/1.1 ").next().unwrap_or_default();
    assert!(last.starts_with("200"), "{text}");
    assert!(!text.contains("x-usage-tokens"), "stripped: {text}");
    assert!(last.contains("ratelimit: \"llm\";r=70;"), "{text}");
    assert_eq!(bucket_remaining(&gw, "interim"), 70, "{}", gw.log());
}

/// A key with its own bucket (an override) on a response-cost limit: its `RateLimit-Policy`
/// after settling is the override's, whether the settled limit was the one reported at
/// admission or becomes the tightest only when settled.
#[test]
fn an_overridden_keys_policy_follows_the_settled_limit() {
    let up = Upstream::start();
    let config = json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": {
            // Reported at admission for "pro" while the llm budget is larger.
            "calls": { "capacity": 50, "refill_per_second": 0.001, "key": ["header:x-api-key"] },
            "llm": { "capacity": 100, "refill_per_second": 0.001, "key": ["header:x-api-key"],
                     "overrides": { "pro": { "capacity": 400, "refill_per_second": 0.004 } } },
        },
        "routes": [
            { "name": "chat", "match": { "path_prefix": "/v1" }, "upstream": "api",
              "limits": ["calls", { "limit": "llm", "cost": {
                  "response_header": "x-usage-tokens", "reserve": 1, "strip": true } }] },
        ],
    });
    let gw = Gateway::builder(config).start();
    // "plain": llm is the tighter one after settling 60 (40 left against calls' 49).
    let r = call(&gw, "/v1/complete?tokens=60", "plain");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit-policy"), Some("\"llm\";q=100;w=100000"));
    assert_eq!(remaining(&r), 40);
    // "pro": at admission calls is the tighter (49 against 399): after settling 370, its own
    // llm bucket is (30 left), reported with the override's policy.
    let r = call(&gw, "/v1/complete?tokens=370", "pro");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit-policy"), Some("\"llm\";q=400;w=100000"));
    assert_eq!(remaining(&r), 30);
    // And when the override's bucket is the tightest already at admission.
    let r = call(&gw, "/v1/complete?tokens=5", "pro");
    assert_eq!(r.header("ratelimit-policy"), Some("\"llm\";q=400;w=100000"));
    assert_eq!(remaining(&r), 25);
}
