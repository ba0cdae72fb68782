//! The admin listener, reload (endpoint and SIGHUP), startup refusal and `tollgate check`,
//! against the real binary.

mod common;

use common::{free_port, get, request, wait_until, Gateway, Upstream};
use serde_json::{json, Value};
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

fn base(up: &Upstream, capacity: u64) -> Value {
    json!({
        "node_id": "admin-test",
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "per-key": { "capacity": capacity, "refill_per_second": 0.01, "key": ["header:x-api-key"] } },
        "routes": [{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }],
    })
}

#[test]
fn health_metrics_rating_consume_and_config() {
    let up = Upstream::start();
    let gw = Gateway::builder(base(&up, 3)).start();
    let h = get(gw.admin, "/health", &[]).json();
    assert_eq!(
        h,
        json!({"status": "ok", "node_id": "admin-test", "redis": "disabled"})
    );

    // Peek never consumes.
    for _ in 0..3 {
        let p = get(gw.admin, "/rating?limit=per-key&key=k", &[]).json();
        assert_eq!(p["remaining"], 3);
        assert_eq!(p["capacity"], 3);
        assert_eq!(p["refill_per_second"], 0.01);
        assert_eq!(p["full_in_ms"], 0);
        assert_eq!(p["retry_after_ms"], 0);
    }
    // Sidecar consume shares buckets with the proxy.
    assert_eq!(get(gw.addr, "/x", &[("x-api-key", "k")]).status, 200);
    let c = request(
        gw.admin,
        "POST",
        "/consume?limit=per-key&key=k&cost=2",
        &[],
        b"",
    );
    assert_eq!(c.status, 200);
    assert_eq!(
        c.json(),
        json!({"allowed": true, "remaining": 0, "shadow_limited": false})
    );
    let c = request(gw.admin, "POST", "/consume?limit=per-key&key=k", &[], b"");
    assert_eq!(c.status, 429);
    assert_eq!(c.json()["error"], "Rate limit exceeded");
    assert_eq!(c.header("retry-after"), Some("100"));
    assert_eq!(c.header("ratelimit-policy"), Some("\"per-key\";q=3;w=300"));
    assert_eq!(get(gw.addr, "/x", &[("x-api-key", "k")]).status, 429);
    let p = get(gw.admin, "/rating?limit=per-key&key=k", &[]).json();
    assert_eq!(p["remaining"], 0);
    assert!(p["retry_after_ms"].as_u64().unwrap() > 90_000);

    // Bad admin calls get clear errors.
    assert_eq!(get(gw.admin, "/rating?limit=nope&key=k", &[]).status, 404);
    assert_eq!(get(gw.admin, "/rating?limit=per-key", &[]).status, 400);
    assert_eq!(
        request(
            gw.admin,
            "POST",
            "/consume?limit=per-key&key=k&cost=0",
            &[],
            b""
        )
        .status,
        400
    );
    assert_eq!(
        request(
            gw.admin,
            "POST",
            "/consume?limit=per-key&key=k&cost=4",
            &[],
            b""
        )
        .status,
        413
    );
    assert_eq!(
        get(gw.admin, "/consume?limit=per-key&key=k", &[]).status,
        405
    );
    assert_eq!(get(gw.admin, "/nope", &[]).status, 404);

    // Requests are counted by the logging hook, just after their response is written.
    wait_until(Duration::from_secs(5), || {
        get(gw.admin, "/metrics", &[])
            .text()
            .contains("tollgate_requests_total{outcome=\"limited\",route=\"rating\"} 1")
    });
    let m = get(gw.admin, "/metrics", &[]);
    assert_eq!(m.status, 200);
    let text = m.text();
    for line in [
        "tollgate_limit_capacity{limit=\"per-key\"} 3",
        "tollgate_limit_refill_per_second{limit=\"per-key\"} 0.01",
        "tollgate_buckets_active{limit=\"per-key\"} 1",
        "tollgate_bucket_tokens_min{limit=\"per-key\"} 0",
        "tollgate_tokens_consumed_total{limit=\"per-key\"} 3",
        "tollgate_requests_total{outcome=\"allowed\",route=\"rating\"} 1",
        "tollgate_requests_total{outcome=\"limited\",route=\"rating\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains("tollgate_request_duration_seconds_bucket{route=\"rating\""));
    // A standalone node exports no Redis metrics (nothing to alert on).
    assert!(!text.contains("tollgate_redis_up"), "{text}");
    // No client-supplied value in any label.
    assert!(!text.contains("\"k\""));

    let c = get(gw.admin, "/config", &[]).json();
    assert_eq!(c["node_id"], "admin-test");
    assert_eq!(c["limits"]["per-key"]["capacity"], 3);
}

#[test]
fn admin_token_is_required_and_secrets_are_masked() {
    let up = Upstream::start();
    let mut cfg = base(&up, 3);
    cfg["admin"] = json!({ "token": "s3cret-token" });
    let gw = Gateway::builder(cfg).start();
    for path in [
        "/health",
        "/metrics",
        "/config",
        "/rating?limit=per-key&key=k",
    ] {
        assert_eq!(get(gw.admin, path, &[]).status, 401, "{path}");
        assert_eq!(
            get(gw.admin, path, &[("authorization", "Bearer wrong")]).status,
            401,
            "{path}"
        );
        assert_eq!(
            get(gw.admin, path, &[("authorization", "Bearer s3cret-token")]).status,
            200,
            "{path}"
        );
    }
    let auth = [("authorization", "Bearer s3cret-token")];
    assert_eq!(request(gw.admin, "POST", "/reload", &[], b"").status, 401);
    let c = get(gw.admin, "/config", &auth);
    assert!(!c.text().contains("s3cret-token"), "{}", c.text());
    assert_eq!(c.json()["admin"]["token"], "***");
}

#[test]
fn reload_good_and_bad_by_endpoint_and_sighup() {
    let up = Upstream::start();
    let gw = Gateway::builder(base(&up, 3)).start();
    let h = [("x-api-key", "r")];
    assert_eq!(get(gw.addr, "/x", &h).status, 200);

    // A good reload: capacity 3 -> 10; the bucket keeps its 2 tokens.
    gw.rewrite_config(base(&up, 10));
    let r = request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limits_rebased"], json!(["per-key"]));
    assert_eq!(
        get(gw.admin, "/config", &[]).json()["limits"]["per-key"]["capacity"],
        10
    );
    let r = get(gw.addr, "/x", &h);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-key\";q=10;w=1000")
    );
    assert_eq!(r.header("ratelimit"), Some("\"per-key\";r=1;t=900"));

    // A bad reload: rejected with the errors, the running config stays.
    let mut bad = base(&up, 10);
    bad["routes"][0]["upstream"] = json!("missing");
    gw.rewrite_config(bad);
    let r = request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 400);
    let errors = r.json()["errors"].to_string();
    assert!(errors.contains("routes[0].upstream"), "{errors}");
    assert_eq!(get(gw.addr, "/x", &[("x-api-key", "other")]).status, 200);
    assert_eq!(
        get(gw.admin, "/config", &[]).json()["limits"]["per-key"]["capacity"],
        10
    );

    // SIGHUP reloads too.
    gw.rewrite_config(base(&up, 50));
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || {
        get(gw.admin, "/config", &[]).json()["limits"]["per-key"]["capacity"] == 50
    }));
    let m = get(gw.admin, "/metrics", &[]).text();
    assert!(
        m.contains("tollgate_config_reloads_total{result=\"success\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

/// `tollgate run` on a config with an error exits with code 2 and prints exactly what
/// `tollgate check` prints (the error as `FILE:LINE:COL: path: message`, then the count), and
/// never opens the listener or admin port that config names.
#[test]
fn run_refuses_a_bad_config_before_listening() {
    let listen_port = free_port();
    let admin_port = loop {
        let p = free_port();
        if p != listen_port {
            break p;
        }
    };
    let limits_line = r#"  "limits": { "per-key": { "capacity": 0, "refill_per_second": 0.01, "key": ["header:x-api-key"] } },"#;
    let text = [
        "{".to_string(),
        format!(r#"  "listeners": [{{ "address": "127.0.0.1:{listen_port}" }}],"#),
        format!(r#"  "admin": {{ "address": "127.0.0.1:{admin_port}" }},"#),
        r#"  "upstreams": { "api": { "servers": ["127.0.0.1:9"] } },"#.to_string(),
        limits_line.to_string(),
        r#"  "routes": [{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }]"#.to_string(),
        "}".to_string(),
    ]
    .join("\n");
    // Line 5 holds the limit; the column is that of the value 0.
    let col = limits_line.find(r#""capacity": 0"#).unwrap() + r#""capacity": "#.len() + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, text).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "-c"])
        .arg(&path)
        .env("TOLLGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate run");
    let mut status = None;
    let exited = wait_until(Duration::from_secs(10), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        exited,
        "still running after 10 s on a bad config:\n{stdout}{stderr}"
    );
    let p = path.display();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{p}:5:{col}: limits.per-key.capacity: the capacity must be at least 1 token\n\
             {p}: 1 error\n"
        )
    );
    assert_eq!(stdout, "", "nothing logged: it stopped before starting");
    // Both ports are free after the refusal: no process of the gateway's (a forked child, a
    // late listener thread) holds them.
    for port in [listen_port, admin_port] {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} of the bad config is not free: {e}"));
    }
}

/// The `tollgate check` summary of a valid config, as `Config::summary` writes it, worked out
/// from the file's JSON: `FILE: ok (node ID, N listeners, N upstreams, N limits, N routes,
/// redis: disabled | cluster of N seeds | URL with its password masked)`.
fn expected_summary(file: &str, config: &Value, node: &str) -> String {
    let count = |key: &str, what: &str| {
        let n = match &config[key] {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            other => panic!("{file}: {key} is {other}"),
        };
        format!("{n} {what}{}", if n == 1 { "" } else { "s" })
    };
    let redis = &config["redis"];
    let redis = if redis.is_null() {
        "disabled".to_string()
    } else if redis["cluster"] == true {
        let n = redis["urls"].as_array().map_or(0, Vec::len);
        format!("cluster of {n} seed{}", if n == 1 { "" } else { "s" })
    } else {
        let url = redis["url"]
            .as_str()
            .or_else(|| redis["urls"][0].as_str())
            .unwrap_or_else(|| panic!("{file}: redis without a url"));
        // user:password@ -> user:***@
        match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
                let colon = s + 3 + url[s + 3..at].find(':').unwrap();
                format!("{}:***{}", &url[..colon], &url[at..])
            }
            _ => url.to_string(),
        }
    };
    format!(
        "{file}: ok (node {node}, {}, {}, {}, {}, redis: {redis})",
        count("listeners", "listener"),
        count("upstreams", "upstream"),
        count("limits", "limit"),
        count("routes", "route"),
    )
}

/// Every `conf/*.json` passes `tollgate check` (exit 0, nothing on stderr) with exactly its
/// one-line summary; a broken config gets every error with its position and exit 2.
#[test]
fn check_accepts_shipped_configs_and_lists_errors() {
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files: Vec<String> = std::fs::read_dir(format!("{root}/conf"))
        .expect("read conf/")
        .map(|e| {
            e.expect("conf/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("conf/{n}"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f == "conf/tollgate.json"),
        "conf/tollgate.json is missing from {files:?}"
    );
    for file in &files {
        // From the repository root, as the configs name their TLS files from there.
        let out = Command::new(bin)
            .args(["check", "-c", file])
            .current_dir(root)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
        assert_eq!(stderr, "", "{file}");
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{root}/{file}")).unwrap())
                .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        // A file without a node_id gets the host name: taken from the output, then checked
        // to be one word.
        let node = match config["node_id"].as_str() {
            Some(node) => node.to_string(),
            None => {
                let node = stdout
                    .split_once("(node ")
                    .and_then(|(_, rest)| rest.split_once(", "))
                    .map_or("", |(node, _)| node);
                assert!(
                    !node.is_empty() && !node.contains([' ', '(', ')']),
                    "{file}: {stdout:?}"
                );
                node.to_string()
            }
        };
        assert_eq!(
            stdout,
            format!("{}\n", expected_summary(file, &config, &node)),
            "{file}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(
        &path,
        "{\n  \"listeners\": [{\"address\": \"127.0.0.1:8080\"}],\n  \"upstreams\": {},\n  \"limits\": {\"l\": {\"capacity\": 0, \"refill_per_second\": 1, \"key\": [\"client_ip\"]}},\n  \"routes\": [{\"name\": \"r\", \"upstream\": \"nope\", \"limits\": [\"l\"]}]\n}\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display().to_string();
    assert!(
        err.contains(&format!("{p}:4:")) && err.contains("limits.l.capacity"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:5:")) && err.contains("routes[0].upstream"),
        "{err}"
    );
}

#[test]
fn buckets_lists_the_most_refused_keys_and_the_emptiest_as_fingerprints() {
    let up = Upstream::start();
    let gw = Gateway::builder(base(&up, 3)).start();
    let send = |k: &str, n: usize| {
        for _ in 0..n {
            get(gw.addr, "/x", &[("x-api-key", k)]);
        }
    };
    // noisy: 3 admitted, 9 refused; pushy: 3 + 2; calm: 1 admitted, never refused.
    send("noisy", 12);
    send("pushy", 5);
    send("calm", 1);
    let top = get(gw.admin, "/buckets?limit=per-key&top=5&by=rejected", &[]).json();
    let fp = |k: &str| format!("{:016x}", tollgate::request::key::fnv1a(k.as_bytes()));
    assert_eq!(
        top,
        json!({"limit": "per-key", "by": "rejected", "raw": false, "buckets": [
            {"key": fp("noisy"), "tokens": 0, "capacity": 3, "rejected_last_minute": 9},
            {"key": fp("pushy"), "tokens": 0, "capacity": 3, "rejected_last_minute": 2},
        ]})
    );
    let raw = get(gw.admin, "/buckets?limit=per-key&top=1&raw=1", &[]).json();
    assert_eq!(raw["buckets"][0]["key"], "noisy");
    assert_eq!(raw["buckets"].as_array().map(Vec::len), Some(1));
    let emptiest = get(gw.admin, "/buckets?limit=per-key&by=tokens&raw=1", &[]).json();
    let keys: Vec<&str> = emptiest["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["noisy", "pushy", "calm"]);
    assert_eq!(emptiest["buckets"][2]["tokens"], 2);
    // No key ever shows in a metric label.
    let metrics = get(gw.admin, "/metrics", &[]).text();
    assert!(!metrics.contains("noisy") && !metrics.contains(&fp("noisy")));
    // Bad queries.
    for (q, status) in [
        ("", 400),
        ("?limit=nope", 404),
        ("?limit=per-key&top=0", 400),
        ("?limit=per-key&top=x", 400),
        ("?limit=per-key&by=age", 400),
    ] {
        assert_eq!(
            get(gw.admin, &format!("/buckets{q}"), &[]).status,
            status,
            "{q}"
        );
    }
}
