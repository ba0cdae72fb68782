//! Plans: per-key overrides (`overrides`, `overrides_file`) through the real binary, in front
//! of the real upstream: a plain key, an overridden key, an unlimited and a denied key on one
//! limit with the headers each gets; the overrides file changed and reloaded (the bucket keeps
//! its tokens, clamped), and broken (the running config stays); in shared mode, nodes that
//! disagree about a key's override show as drift.

mod common;

use common::{get, request, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `per-key`: 2 tokens, one per 100 s; "batch" unlimited and "leaked" denied in the config,
/// the plans of `file` (written by the test) on top.
fn config(up: &Upstream, file: &Path) -> Value {
    json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "per-key": {
            "capacity": 2, "refill_per_second": 0.01, "key": ["header:x-api-key"],
            "overrides": { "batch": "unlimited", "leaked": "deny" },
            "overrides_file": file,
        } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }],
    })
}

fn statuses(gw: &Gateway, key: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| get(gw.addr, "/x", &[("x-api-key", key)]).status)
        .collect()
}

#[test]
fn plain_overridden_unlimited_and_denied_keys_get_what_their_plan_says() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plans.json");
    std::fs::write(&file, r#"{ "pro": { "capacity": 5 } }"#).unwrap();
    let gw = Gateway::builder(config(&up, &file)).start();

    // A plain key: the limit's 2 tokens.
    let r = get(gw.addr, "/x", &[("x-api-key", "plain")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=2;w=200"));
    assert_eq!(statuses(&gw, "plain", 2), [200, 429]);

    // An overridden key: its own 5 tokens, reported in both headers and in the 429.
    let r = get(gw.addr, "/x", &[("x-api-key", "pro")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=5;w=500"));
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=4;t=100"));
    assert_eq!(statuses(&gw, "pro", 4), [200; 4]);
    let r = get(gw.addr, "/x", &[("x-api-key", "pro")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=5;w=500"));
    assert_eq!(r.header("retry-after"), Some("100"));

    // An unlimited key: every request forwarded, no rate-limit headers, counted as allowed.
    let r = get(gw.addr, "/x", &[("x-api-key", "batch")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), None);
    assert_eq!(r.header("ratelimit"), None);
    assert_eq!(statuses(&gw, "batch", 50), [200; 50]);

    // A denied key: 403 JSON from the gateway, never forwarded, its own outcome.
    let r = get(gw.addr, "/x", &[("x-api-key", "leaked")]);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "Forbidden", "limit": "per-key", "status": 403})
    );
    // Counted when the request is logged, just after its response: polled.
    // 2 (plain) + 5 (pro) + 51 (batch) forwarded; 2 refused (plain, pro); 1 denied.
    for line in [
        "tollgate_requests_total{outcome=\"denied\",route=\"r\"} 1",
        "tollgate_requests_total{outcome=\"allowed\",route=\"r\"} 58",
        "tollgate_requests_total{outcome=\"limited\",route=\"r\"} 2",
    ] {
        assert!(wait_until(WAIT, || gw.has_metric_line(line)), "{line}");
    }

    // The admin API answers for each key as the proxy does.
    let rating = |k: &str| get(gw.admin, &format!("/rating?limit=per-key&key={k}"), &[]).json();
    assert_eq!(rating("pro")["capacity"], 5);
    assert_eq!(rating("pro")["override"], "params");
    assert_eq!(rating("plain")["capacity"], 2);
    assert_eq!(rating("plain")["override"], Value::Null);
    assert_eq!(rating("batch")["override"], "unlimited");
    assert_eq!(rating("leaked")["override"], "deny");
    let consume = |k: &str| {
        request(
            gw.admin,
            "POST",
            &format!("/consume?limit=per-key&key={k}"),
            &[],
            b"",
        )
    };
    assert_eq!(consume("leaked").status, 403);
    assert_eq!(
        consume("batch").json(),
        json!({"allowed": true, "unlimited": true})
    );
}

#[test]
fn a_changed_overrides_file_reloads_and_a_broken_one_keeps_the_running_plans() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plans.json");
    std::fs::write(&file, r#"{ "pro": { "capacity": 5 } }"#).unwrap();
    let gw = Gateway::builder(config(&up, &file)).start();
    assert_eq!(statuses(&gw, "pro", 1), [200]);

    // pro: 5 -> 3 tokens. Its bucket held 4: it keeps 3 (clamped); "gold" is a new plan.
    std::fs::write(
        &file,
        r#"{ "pro": { "capacity": 3 }, "gold": { "capacity": 8, "refill_per_second": 1 } }"#,
    )
    .unwrap();
    let r = request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limits_rebased"], json!(["per-key"]));
    let r = get(gw.addr, "/x", &[("x-api-key", "pro")]);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=3;w=300"));
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=2;t=100"));
    assert_eq!(statuses(&gw, "pro", 3), [200, 200, 429]);
    let r = get(gw.addr, "/x", &[("x-api-key", "gold")]);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-key\";q=8;w=8"));

    // A broken file: the reload is refused with the file's own line and column, and the
    // plans that run stay.
    std::fs::write(
        &file,
        "{ \"pro\": { \"capacity\": 3 },\n  \"gold\": { \"capacity\": 0 } }",
    )
    .unwrap();
    let r = request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    let errors = r.json()["errors"].to_string();
    let at = format!(
        "{}:2:25: gold.capacity: the capacity must be at least 1 token",
        file.display()
    );
    assert!(errors.contains(&at), "{errors}");
    assert_eq!(
        get(gw.admin, "/rating?limit=per-key&key=gold", &[]).json()["capacity"],
        8
    );
    // And `check` says the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&at), "{text}");
}

#[test]
fn nodes_that_disagree_about_a_key_override_show_drift() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = |node: &str, pro: u64| {
        let file = dir.path().join(format!("{node}.json"));
        std::fs::write(&file, json!({ "pro": { "capacity": pro } }).to_string()).unwrap();
        let mut c = config(&up, &file);
        c["node_id"] = json!(node);
        c["redis"] = json!({ "url": redis.url, "sync_interval_ms": 50, "quiet_buckets": false });
        c
    };
    let a = Gateway::builder(shared("node-a", 5)).start();
    let b = Gateway::builder(shared("node-b", 7)).start();
    let drift = "tollgate_config_drift{limit=\"per-key\"} 1";
    // A plain key: both agree, no drift.
    assert_eq!(statuses(&a, "plain", 1), [200]);
    assert_eq!(statuses(&b, "plain", 1), [200]);
    let hash = "tollgate:per-key:pro";
    // Each node writes the key's parameters as it sees them into the hash.
    assert!(wait_until(WAIT, || {
        statuses(&a, "pro", 1);
        statuses(&b, "pro", 1);
        redis.cmd(&["HGET", hash, "node-a:capacity"]).trim() == "5"
            && redis.cmd(&["HGET", hash, "node-b:capacity"]).trim() == "7"
    }));
    assert!(
        wait_until(WAIT, || {
            statuses(&a, "pro", 1);
            a.has_metric_line(drift)
        }),
        "a saw no drift:\n{}",
        a.log()
    );
    assert!(a
        .log()
        .contains("nodes disagree on this limit's capacity or rate"));
    // In shared mode a key's rate is fixed while its hash lives: a reload that changes it is
    // refused, one that changes its capacity is taken.
    let file = dir.path().join("node-a.json");
    std::fs::write(
        &file,
        r#"{ "pro": { "capacity": 5, "refill_per_second": 1 } }"#,
    )
    .unwrap();
    let r = request(a.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["errors"][0].as_str().is_some_and(|e| e.contains(
            "the refill rate of a shared key cannot change on reload (1 key(s), first \"pro\")"
        )),
        "{}",
        r.text()
    );
    std::fs::write(&file, r#"{ "pro": { "capacity": 7 } }"#).unwrap();
    let r = request(a.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(a.admin, "/rating?limit=per-key&key=pro", &[]).json()["capacity"],
        7
    );
}

/// Seconds since the Unix epoch, now.
fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_minute_quota_resets_when_the_minute_ends_and_says_when() {
    let up = Upstream::start();
    let gw = Gateway::builder(json!({
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "per-minute": { "quota": 3, "window": "minute", "key": ["header:x-api-key"] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-minute"] }],
    }))
    .start();
    let h = [("x-api-key", "q")];
    // Close to the end of a minute the seconds below could straddle it: start afresh then.
    if 60.0 - unix_secs() % 60.0 < 5.0 {
        let next = unix_secs().div_euclid(60.0) + 1.0;
        assert!(wait_until(Duration::from_secs(10), || unix_secs() / 60.0 >= next));
    }
    let minute = unix_secs().div_euclid(60.0);
    let left = 60.0 - unix_secs() % 60.0;
    for r in [2, 1, 0] {
        let resp = get(gw.addr, "/x", &h);
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"per-minute\";q=3;w=60")
        );
        let rl = resp.header("ratelimit").unwrap().to_string();
        let t: f64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
        assert!(rl.starts_with(&format!("\"per-minute\";r={r};t=")), "{rl}");
        assert!(
            (t - left).abs() <= 2.0,
            "t={t}, {left:.1} s left in the minute"
        );
    }
    let refused = get(gw.addr, "/x", &h);
    assert_eq!(refused.status, 429);
    let retry: f64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (retry - left).abs() <= 2.0,
        "Retry-After {retry}, {left:.1} s left"
    );
    // Nothing more this minute; all 3 again from the next one.
    let mut admitted_at = None;
    assert!(
        wait_until(Duration::from_secs(70), || {
            let status = get(gw.addr, "/x", &h).status;
            if status == 200 {
                admitted_at = Some(unix_secs());
            }
            status == 200
        }),
        "the quota never came back"
    );
    let at = admitted_at.unwrap();
    assert!(
        at.div_euclid(60.0) > minute,
        "admitted at {at}, still in minute {minute}"
    );
    assert_eq!(statuses(&gw, "q", 3), [200, 200, 429]);
}

#[test]
fn a_reset_refills_a_key_on_every_node_and_is_audited_by_fingerprint() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plans.json");
    std::fs::write(&file, "{}").unwrap();
    let node = |id: &str| {
        let mut c = config(&up, &file);
        c["node_id"] = json!(id);
        c["redis"] = json!({ "url": redis.url, "sync_interval_ms": 50 });
        c
    };
    let a = Gateway::builder(node("node-a")).start();
    let b = Gateway::builder(node("node-b")).start();
    a.settle(2);
    // The client spends its 2 tokens on a; both nodes come to know it.
    assert_eq!(statuses(&a, "throttled-by-mistake", 3), [200, 200, 429]);
    let remaining = |gw: &Gateway| {
        get(
            gw.admin,
            "/rating?limit=per-key&key=throttled-by-mistake",
            &[],
        )
        .json()["remaining"]
            .as_u64()
            .unwrap()
    };
    let hash = "tollgate:per-key:throttled-by-mistake";
    assert!(wait_until(WAIT, || {
        redis.cmd(&["HGET", hash, "node-a:consumed"]).trim() == "2"
    }));
    // The operator resets it on b, which reads the bucket from Redis first: 2 credited.
    let r = request(
        b.admin,
        "POST",
        "/reset?limit=per-key&key=throttled-by-mistake",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"limit": "per-key", "key": "throttled-by-mistake", "credited": 2, "remaining": 2, "capacity": 2})
    );
    // a sees it after a sync: the client is served again there, as much as the limit allows.
    assert!(
        wait_until(WAIT, || redis.cmd(&["HGET", hash, "node-b:credit"]).trim()
            == "2"),
        "b's credit never reached Redis"
    );
    assert!(
        wait_until(WAIT, || remaining(&a) == 2),
        "a never saw the reset"
    );
    assert_eq!(statuses(&a, "throttled-by-mistake", 3), [200, 200, 429]);
    // The log names the key's fingerprint, never the key.
    let fp = format!(
        "{:016x}",
        tollgate::request::key::fnv1a(b"throttled-by-mistake")
    );
    let log = b.log();
    assert!(
        log.contains("bucket reset by the admin API") && log.contains(&fp),
        "{log}"
    );
    assert!(!log.contains("throttled-by-mistake"), "{log}");
    // Nothing to reset on an unlimited key; a bad query is a 4xx.
    let r = request(b.admin, "POST", "/reset?limit=per-key&key=batch", &[], b"");
    assert_eq!(r.status, 409);
    assert_eq!(
        request(b.admin, "POST", "/reset?limit=nope&key=x", &[], b"").status,
        404
    );
    assert_eq!(
        request(b.admin, "GET", "/reset?limit=per-key&key=x", &[], b"").status,
        405
    );
}

/// A shared quota in Redis: each node's counters name the window they count, by its UTC start
/// (`node-a:consumed@2026-11-29T08:41`); an overshoot in one window is not carried into the
/// next; a node's first write of the next window removes the fields of the one before (its
/// own, and those of the nodes that wrote it); a reset credits the window it is made in; a
/// restarted node reads its counters of the current window back; `inspect` shows the window.
/// Runs across a minute boundary: up to 75 s.
#[test]
fn a_shared_quota_names_its_window_in_redis_and_starts_each_window_afresh() {
    use std::collections::HashMap;
    use tollgate::limit::window::{Window, WindowAt};
    let redis = RedisServer::start();
    let up = Upstream::start();
    let config = |id: &str| {
        let mut c = redis.node_config(
            json!({
                "upstreams": { "api": { "servers": [up.addr.to_string()] } },
                "limits": { "q": { "quota": 5, "window": "minute", "key": ["header:x-api-key"] } },
                "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["q"] }],
            }),
            id,
        );
        // Every change written (a light key may otherwise stay out of Redis).
        c["redis"]["quiet_buckets"] = json!(false);
        c
    };
    let a = Gateway::builder(config("node-a")).start();
    let b = Gateway::builder(config("node-b")).start();
    a.settle(2);
    let key = "tollgate:q:k";
    let hash = || -> HashMap<String, String> {
        let flat = redis.cmd(&["HGETALL", key]);
        let lines: Vec<&str> = flat.lines().collect();
        lines
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| (p[0].to_string(), p[1].to_string()))
            .collect()
    };
    let has =
        |h: &HashMap<String, String>, f: &str, v: &str| h.get(f).map(String::as_str) == Some(v);
    // The first part must fit in one minute.
    if 60.0 - unix_secs() % 60.0 < 20.0 {
        let next = unix_secs().div_euclid(60.0) + 1.0;
        assert!(wait_until(Duration::from_secs(25), || unix_secs() / 60.0 >= next));
    }
    let first = WindowAt::of(Window::Minute, (unix_secs() * 1e9) as i64);
    let (this, next) = (first.label(), Window::Minute.label(first.index + 1));

    // This minute: a takes 3, b 1; each node's counters name the minute, none are unnamed.
    assert_eq!(statuses(&a, "k", 3), [200; 3]);
    assert_eq!(statuses(&b, "k", 1), [200]);
    assert!(
        wait_until(WAIT, || {
            let h = hash();
            has(&h, &format!("node-a:consumed@{this}"), "3")
                && has(&h, &format!("node-b:consumed@{this}"), "1")
        }),
        "{:?}",
        hash()
    );
    let h = hash();
    assert!(has(&h, "node-a:capacity", "5") && h.contains_key("node-b:seen_ms"));
    assert!(
        h.keys()
            .all(|f| !f.ends_with(":consumed") && !f.contains(&next)),
        "{h:?}"
    );
    // Overspent, as nodes that did not see each other in time can: another node took 20.
    redis.cmd(&["HSET", key, &format!("node-c:consumed@{this}"), "20"]);
    assert!(wait_until(WAIT, || statuses(&a, "k", 1) == [429]));

    // The next minute: the whole quota again, whatever the minute before took. (A second
    // in: a node's clock is Redis's, which may differ from this one by a little.)
    let boundary = (first.index + 1) as f64 * 60.0;
    assert!(wait_until(Duration::from_secs(75), || unix_secs() >= boundary + 1.0));
    assert_eq!(statuses(&a, "k", 6), [200, 200, 200, 200, 200, 429]);
    // a's write of the new minute removed every field of the one before: its own, b's and c's.
    assert!(
        wait_until(WAIT, || {
            let h = hash();
            has(&h, &format!("node-a:consumed@{next}"), "5")
                && has(&h, &format!("node-a:attempts@{next}"), "6")
                && h.keys().all(|f| !f.contains(&this))
        }),
        "{:?}",
        hash()
    );
    let h = hash();
    assert!(has(&h, "node-b:capacity", "5"), "parameters stay: {h:?}");

    // inspect shows this minute's state.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inspect.json");
    let mut c = config("inspector");
    c["listeners"] = json!([{ "address": "127.0.0.1:8080" }]);
    std::fs::write(&file, c.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["inspect", "-c"])
        .arg(&file)
        .args(["--limit", "q", "--key", "k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("limit=q  window={next}  tokens=0/5")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(3).eq(["node-a", "5", "6"])),
        "{text}"
    );

    // A reset on b credits this minute, in a field that names it.
    let r = request(b.admin, "POST", "/reset?limit=q&key=k", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["credited"], json!(5));
    assert!(
        wait_until(WAIT, || has(&hash(), &format!("node-b:credit@{next}"), "5")),
        "{:?}",
        hash()
    );
    // A restarted a reads its counters of this minute back before it serves.
    drop(a);
    let a = Gateway::builder(config("node-a")).start();
    let rating = get(a.admin, "/rating?limit=q&key=k", &[]).json();
    assert_eq!(rating["remaining"], json!(5), "5 - 5 + 5: {rating}");
}
