//! Concurrency limits (`max_in_flight`) through the real binary: a key's requests in flight
//! at once are bounded, a refusal is a 429 with `Retry-After: 1`, and every way a request can
//! end gives its slot back (an answer, an upstream timeout or failure, a retry on another
//! server, a client that leaves mid-body or while the upstream works); in shared mode the
//! count spans the nodes, and a node that dies stops holding its slots.

mod common;

use common::{free_port, get, wait_until, Conn, Gateway, RedisServer, Response, Upstream};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `in-flight`: 3 requests of an API key at once. Routes: `/dead` to a server that refuses
/// connections, host `impatient.test` to the upstream with a 300 ms read timeout, `/retry` to
/// a pool of a dead server and the upstream, and everything else to the upstream.
fn config(up: &Upstream) -> Value {
    let dead = format!("127.0.0.1:{}", free_port());
    let live = up.addr.to_string();
    json!({
        "upstreams": {
            "api": { "servers": [live] },
            "dead": { "servers": [dead], "connect_timeout_ms": 200 },
            "impatient": { "servers": [live], "read_timeout_ms": 300 },
            "pool": { "servers": [dead, live], "connect_timeout_ms": 200 },
        },
        "limits": {
            "in-flight": { "max_in_flight": 3, "key": ["header:x-api-key"],
                           "overrides": { "solo": { "max_in_flight": 1 } } },
        },
        "routes": [
            { "name": "dead", "match": { "path_prefix": "/dead" }, "upstream": "dead",
              "limits": ["in-flight"] },
            { "name": "timeout", "match": { "host": "impatient.test" }, "upstream": "impatient",
              "limits": ["in-flight"] },
            { "name": "retry", "match": { "path_prefix": "/retry" }, "upstream": "pool",
              "limits": ["in-flight"] },
            { "name": "api", "match": { "path_prefix": "/" }, "upstream": "api",
              "limits": ["in-flight"] },
        ],
    })
}

/// Free slots of `key` as the node sees them.
fn free(gw: &Gateway, key: &str) -> u64 {
    let r = get(gw.admin, &format!("/rating?limit=in-flight&key={key}"), &[]);
    r.json()["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}", r.text()))
}

fn call(gw: &Gateway, target: &str, key: &str) -> Response {
    get(gw.addr, target, &[("x-api-key", key)])
}

/// Sends `target` for `key` on another thread; the response comes back on join.
fn in_background(gw: &Gateway, target: &str, key: &str) -> std::thread::JoinHandle<Response> {
    let (addr, target, key) = (gw.addr, target.to_string(), key.to_string());
    std::thread::spawn(move || get(addr, &target, &[("x-api-key", &key)]))
}

fn wait_free(gw: &Gateway, key: &str, n: u64) {
    assert!(
        wait_until(WAIT, || free(gw, key) == n),
        "{key}: {} free, expected {n}\n{}",
        free(gw, key),
        gw.log()
    );
}

#[test]
fn a_key_holds_at_most_its_slots_and_gets_them_back_when_its_requests_end() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up)).start();
    let slow: Vec<_> = (0..3)
        .map(|_| in_background(&gw, "/slow?ms=1500", "k"))
        .collect();
    wait_free(&gw, "k", 0);
    // A fourth while three are in flight: refused, told to come back in a second.
    let r = call(&gw, "/rating/1", "k");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"in-flight\";q=3"));
    assert_eq!(r.header("ratelimit"), Some("\"in-flight\";r=0;t=0"));
    // Another key is not held up.
    assert_eq!(call(&gw, "/rating/1", "other").status, 200);
    for h in slow {
        assert_eq!(h.join().unwrap().status, 200);
    }
    wait_free(&gw, "k", 3);
    // One at a time, a key never waits: each request reports the slots left while it runs.
    let r = call(&gw, "/rating/1", "k");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit"), Some("\"in-flight\";r=2;t=0"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"in-flight\";q=3"));
    // An override: one slot for "solo".
    let held = in_background(&gw, "/slow?ms=1000", "solo");
    wait_free(&gw, "solo", 0);
    assert_eq!(call(&gw, "/rating/1", "solo").status, 429);
    assert_eq!(held.join().unwrap().status, 200);
    wait_free(&gw, "solo", 1);
}

#[test]
fn every_way_a_request_ends_gives_its_slot_back() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up)).start();
    // The upstream cannot be reached: 502.
    assert_eq!(call(&gw, "/dead", "k").status, 502);
    wait_free(&gw, "k", 3);
    // The upstream takes longer than the read timeout: 504.
    let r = get(
        gw.addr,
        "/slow?ms=3000",
        &[("x-api-key", "k"), ("host", "impatient.test")],
    );
    assert_eq!(r.status, 504, "{}", r.text());
    wait_free(&gw, "k", 3);
    // A failed connect retried on the pool's other server: one slot, given back once.
    assert_eq!(call(&gw, "/retry/rating/1", "k").status, 200);
    wait_free(&gw, "k", 3);
    // The upstream answers an error.
    assert_eq!(call(&gw, "/status/503", "k").status, 503);
    wait_free(&gw, "k", 3);
    // The client leaves in the middle of its body.
    let mut c = Conn::open(gw.addr);
    c.write_raw(b"POST /rating/1 HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nContent-Length: 1000\r\n\r\nonly ten b")
        .unwrap();
    wait_free(&gw, "k", 2);
    drop(c);
    wait_free(&gw, "k", 3);
    // The client leaves while the upstream works on its request.
    let mut c = Conn::open(gw.addr);
    c.write_raw(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n\r\n")
        .unwrap();
    wait_free(&gw, "k", 2);
    drop(c);
    wait_free(&gw, "k", 3);
    // After all that, three at once still fit, and a fourth does not.
    let slow: Vec<_> = (0..3)
        .map(|_| in_background(&gw, "/slow?ms=1000", "k"))
        .collect();
    wait_free(&gw, "k", 0);
    assert_eq!(call(&gw, "/rating/1", "k").status, 429);
    for h in slow {
        assert_eq!(h.join().unwrap().status, 200);
    }
    wait_free(&gw, "k", 3);
}

#[test]
fn shared_slots_span_the_nodes_and_a_dead_nodes_slots_return() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let node = |id: &str| Gateway::builder(redis.node_config(config(&up), id)).start();
    let (a, b) = (node("node-a"), node("node-b"));
    a.settle(2);
    // a holds two of the key's three slots; Redis shows them taken and not given back.
    let held: Vec<_> = (0..2)
        .map(|_| in_background(&a, "/slow?ms=20000", "k"))
        .collect();
    let hash = "tollgate:in-flight:k";
    let field = |f: &str| redis.cmd(&["HGET", hash, f]).trim().to_string();
    assert!(
        wait_until(WAIT, || field("node-a:consumed") == "2"),
        "{}",
        redis.cmd(&["HGETALL", hash])
    );
    // b, touching the key, sees them: one slot left.
    let probe = |gw: &Gateway| {
        assert_eq!(call(gw, "/rating/1", "k").status, 200);
    };
    probe(&b);
    assert!(
        wait_until(WAIT, || {
            probe(&b);
            free(&b, "k") == 1
        }),
        "b sees {} free\n{}",
        free(&b, "k"),
        redis.cmd(&["HGETALL", hash])
    );
    // a dies with its two slots held: once it has left the registry, b counts them free.
    a.signal("KILL");
    assert!(
        wait_until(Duration::from_secs(15), || {
            probe(&b);
            free(&b, "k") == 3
        }),
        "b still sees {} free\n{}",
        free(&b, "k"),
        redis.cmd(&["HGETALL", hash])
    );
    for h in held {
        let _ = h.join();
    }
    // b's own slots all came back: its credit matches what it took.
    assert!(wait_until(WAIT, || field("node-b:consumed") == field("node-b:credit")));
}

#[test]
fn a_restarted_node_holds_none_of_the_slots_it_held_before() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let cfg = redis.node_config(config(&up), "node-r");
    let first = Gateway::builder(cfg.clone()).start();
    let held: Vec<_> = (0..3)
        .map(|_| in_background(&first, "/slow?ms=20000", "k"))
        .collect();
    let hash = "tollgate:in-flight:k";
    assert!(wait_until(WAIT, || redis
        .cmd(&["HGET", hash, "node-r:consumed"])
        .trim()
        == "3"));
    first.signal("KILL");
    for h in held {
        let _ = h.join();
    }
    let second = Gateway::builder(cfg).start();
    // The new process reads its old fields back and gives their slots back at once.
    assert_eq!(call(&second, "/rating/1", "k").status, 200);
    wait_free(&second, "k", 3);
    assert!(wait_until(WAIT, || redis
        .cmd(&["HGET", hash, "node-r:credit"])
        .trim()
        == "4"));
}

#[test]
fn concurrency_limits_are_checked() {
    let up = Upstream::start();
    let bad = json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": {
            "both": { "max_in_flight": 3, "capacity": 5, "refill_per_second": 1, "key": ["client_ip"] },
            "zero": { "max_in_flight": 0, "key": ["client_ip"] },
            "slots": { "max_in_flight": 2, "key": ["client_ip"],
                       "overrides": { "a": { "capacity": 3 }, "b": { "max_in_flight": -1 } } },
        },
        "routes": [{ "name": "r", "upstream": "api",
                     "limits": [{ "limit": "slots", "cost": { "response_header": "x-u" } }] }],
    });
    let Err(err) = Gateway::builder(bad).try_start() else {
        panic!("a config with bad concurrency limits started");
    };
    for expected in [
        "limits.both.capacity: a limit is a token bucket, a quota or a concurrency limit",
        "limits.zero.max_in_flight: max_in_flight must be at least 1",
        "overrides.a: unknown field \"capacity\": an override sets max_in_flight",
        "overrides.b",
        "routes[0].limits[0].cost: limit \"slots\" is a concurrency limit",
    ] {
        assert!(err.contains(expected), "{expected}\nin:\n{err}");
    }
}
