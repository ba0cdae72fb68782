//! Faulty Redis replies and states, against a real `redis-server`: a key that is not a hash
//! (WRONGTYPE), garbage field values, a hash with 100,000 foreign fields, slow replies
//! (`DEBUG SLEEP`), dropped connections (`CLIENT KILL`), and a user denied the script (ACL).
//! For each: no crash, requests keep being decided locally and quickly, an error metric and
//! one log line per incident, recovery when the fault ends, and no counter lowered.

mod common;

use common::{get, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn config(up: &Upstream, redis: &RedisServer) -> Value {
    json!({
        "node_id": "node-a",
        "access_log": false,
        // Every change is written (no quiet buckets: see limit::store_quiet), so that each
        // request's count is the fault path's to lose.
        "redis": { "url": redis.url, "sync_interval_ms": 50, "timeout_ms": 200, "quiet_buckets": false },
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "per-key": { "capacity": 5, "refill_per_second": 0.001, "key": ["header:x-api-key"] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }],
    })
}

fn send(gw: &Gateway, key: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| get(gw.addr, "/x", &[("x-api-key", key)]).status)
        .collect()
}

fn field(redis: &RedisServer, key: &str, f: &str) -> Option<u64> {
    redis
        .try_cmd(&["HGET", &format!("tollgate:per-key:{key}"), f])
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn sync_errors(gw: &Gateway) -> u64 {
    get(gw.admin, "/metrics", &[])
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_sync_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_key_that_is_not_a_hash_is_an_incident_not_a_crash() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    redis.cmd(&["SET", "tollgate:per-key:bad", "not a hash"]);
    let gw = Gateway::builder(config(&up, &redis)).start();
    // Decided locally all along: five admitted, then refused.
    assert_eq!(send(&gw, "bad", 6), vec![200, 200, 200, 200, 200, 429]);
    assert!(wait_until(WAIT, || sync_errors(&gw) >= 5), "{}", gw.log());
    let incidents = |log: &str| log.matches("redis refused some bucket updates").count();
    assert_eq!(incidents(&gw.log()), 1, "{}", gw.log());
    assert!(gw.log().contains("WRONGTYPE"));
    // Other keys are unaffected.
    assert_eq!(send(&gw, "good", 1), vec![200]);
    assert!(wait_until(WAIT, || field(
        &redis,
        "good",
        "node-a:consumed"
    ) == Some(1)));
    // The fault ends: everything admitted is written.
    redis.cmd(&["DEL", "tollgate:per-key:bad"]);
    assert!(
        wait_until(WAIT, || field(&redis, "bad", "node-a:consumed") == Some(5)),
        "{}",
        gw.log()
    );
    assert!(wait_until(WAIT, || gw
        .log()
        .contains("redis accepts every bucket update again")));
    assert_eq!(incidents(&gw.log()), 1);
}

#[test]
fn garbage_fields_and_a_huge_foreign_hash_are_survived() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    // 100,000 foreign nodes, each with a zero counter (written in batches).
    for batch in 0..10 {
        let mut args: Vec<String> = vec!["HSET".into(), "tollgate:per-key:huge".into()];
        for i in 0..10_000 {
            args.push(format!("n{}:consumed", batch * 10_000 + i));
            args.push("0".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        redis.cmd(&refs);
    }
    let gw = Gateway::builder(config(&up, &redis)).start();
    assert_eq!(send(&gw, "g", 1), vec![200]);
    assert!(wait_until(WAIT, || field(&redis, "g", "node-a:consumed") == Some(1)));
    // Garbage next to the node's fields: non-numbers, negatives, overflowing numbers, fields
    // without a node or a known name.
    redis.cmd(&[
        "HSET",
        "tollgate:per-key:g",
        "x:consumed",
        "abc",
        "y:consumed",
        "-5",
        "z:waste",
        "99999999999999999999999999999999999999999999",
        "weird",
        "1",
        ":consumed",
        "2",
        "w:colour",
        "blue",
    ]);
    // The garbage is ignored: four tokens left, then 429.
    let statuses = send(&gw, "g", 5);
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert!(wait_until(WAIT, || field(&redis, "g", "node-a:consumed") == Some(5)));
    assert_eq!(
        redis
            .cmd(&["HGET", "tollgate:per-key:g", "x:consumed"])
            .trim(),
        "abc",
        "a node writes only its own fields"
    );
    // The huge hash: requests are still answered quickly, and the node's fields land in it.
    let t = Instant::now();
    let statuses = send(&gw, "huge", 3);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    let admitted = statuses.iter().filter(|&&s| s == 200).count() as u64;
    assert!(
        wait_until(WAIT, || field(&redis, "huge", "node-a:attempts") == Some(3)),
        "{}",
        gw.log()
    );
    assert_eq!(
        field(&redis, "huge", "node-a:consumed").unwrap_or(0),
        admitted
    );
    // One log line for the incident, however many syncs meet it. The sync's write lands in
    // Redis before its reply is read and found too large: the error is counted just after.
    assert!(wait_until(WAIT, || sync_errors(&gw) >= 1), "{}", gw.log());
    let errors = sync_errors(&gw);
    send(&gw, "huge", 2);
    assert!(wait_until(WAIT, || field(
        &redis,
        "huge",
        "node-a:attempts"
    ) == Some(5)));
    assert!(wait_until(WAIT, || sync_errors(&gw) > errors));
    assert_eq!(
        gw.log().matches("far more fields than nodes write").count(),
        1,
        "{}",
        gw.log()
    );
    assert_eq!(get(gw.admin, "/health", &[]).json()["status"], "ok");
}

#[test]
fn slow_redis_and_dropped_connections_do_not_slow_requests() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up, &redis)).start();
    assert_eq!(send(&gw, "k", 1), vec![200]);
    assert!(wait_until(WAIT, || field(&redis, "k", "node-a:consumed") == Some(1)));
    // Redis stalls for two seconds: syncs time out, requests do not wait.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        let r = RedisServer::cmd_on(port, &["DEBUG", "SLEEP", "2"]);
        assert!(r.is_ok(), "DEBUG SLEEP: {r:?}");
    });
    assert!(wait_until(WAIT, || get(gw.admin, "/health", &[]).json()
        ["status"]
        == "degraded"));
    let t = Instant::now();
    assert_eq!(send(&gw, "k", 2), vec![200, 200]);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "requests waited {:?}",
        t.elapsed()
    );
    sleeper.join().expect("sleeper");
    assert!(
        wait_until(WAIT, || field(&redis, "k", "node-a:consumed") == Some(3)),
        "{}",
        gw.log()
    );
    assert_eq!(
        gw.log().matches("redis sync failed").count(),
        1,
        "{}",
        gw.log()
    );
    // Every client connection dropped: the node reconnects and goes on.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"]);
    assert_eq!(send(&gw, "k", 1), vec![200]);
    assert!(
        wait_until(WAIT, || field(&redis, "k", "node-a:consumed") == Some(4)),
        "{}",
        gw.log()
    );
    assert!(wait_until(WAIT, || get(gw.admin, "/health", &[]).json()
        ["status"]
        == "ok"));
    // The scripts are loaded once per connection: a flush makes Redis answer NOSCRIPT, and
    // the node loads them again.
    redis.cmd(&["SCRIPT", "FLUSH"]);
    assert_eq!(send(&gw, "k", 1), vec![200]);
    assert!(
        wait_until(WAIT, || field(&redis, "k", "node-a:consumed") == Some(5)),
        "{}",
        gw.log()
    );
}

#[test]
fn a_user_denied_the_script_loses_nothing() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up, &redis)).start();
    assert_eq!(send(&gw, "k", 1), vec![200]);
    assert!(wait_until(WAIT, || field(&redis, "k", "node-a:consumed") == Some(1)));
    redis.cmd(&["ACL", "SETUSER", "default", "-evalsha", "-eval", "-script"]);
    assert_eq!(send(&gw, "k", 2), vec![200, 200]);
    assert!(
        wait_until(WAIT, || gw.log().contains("NOPERM")),
        "{}",
        gw.log()
    );
    assert_eq!(
        field(&redis, "k", "node-a:consumed"),
        Some(1),
        "nothing lowered, nothing written"
    );
    let errors = sync_errors(&gw);
    assert!(errors >= 1);
    redis.cmd(&["ACL", "SETUSER", "default", "+@all"]);
    assert!(
        wait_until(WAIT, || field(&redis, "k", "node-a:consumed") == Some(3)),
        "{}",
        gw.log()
    );
    // The limit held locally throughout: five tokens, three spent.
    assert_eq!(send(&gw, "k", 3), vec![200, 200, 429]);
}
