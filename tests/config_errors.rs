//! One fixture per kind of config error (`tests/fixtures/config/`), each with the exact
//! `FILE:LINE:COL: json.path: message` lines that `tollgate check` prints, plus the defaults
//! of a minimal valid config and the shipped demo config.

use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tollgate::config::{Config, Cost, KeySource};

const DIR: &str = "tests/fixtures/config";

fn load(name: &str) -> Result<Config, Vec<String>> {
    Config::load(Path::new(&format!("{DIR}/{name}.json")))
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

/// Loads fixture `name` and compares its errors to `expected`, each written without the
/// leading `FILE:`.
fn assert_errors(name: &str, expected: &[&str]) {
    let errors = load(name)
        .err()
        .unwrap_or_else(|| panic!("{name}.json should not load"));
    let expected: Vec<String> = expected
        .iter()
        .map(|e| format!("{DIR}/{name}.json:{e}"))
        .collect();
    assert_eq!(errors, expected, "{name}.json");
}

#[test]
fn syntax_error() {
    assert_errors(
        "syntax_error",
        &["3:58: upstreams.api: trailing comma; not valid JSON: fix it at this line and column"],
    );
}

#[test]
fn unknown_key() {
    assert_errors(
        "unknown_key",
        &["3:58: upstreams.api.timeout_ms: unknown field `timeout_ms`, expected one of `servers`, `tls`, `sni`, `ca_file`, `health_check`, `connect_timeout_ms`, `read_timeout_ms`, `write_timeout_ms`"],
    );
}

#[test]
fn type_error() {
    assert_errors(
        "type_error",
        &["4:39: limits.per-ip.capacity: invalid type: string \"ten\", expected u64"],
    );
}

#[test]
fn reject_out_of_range() {
    // The unknown key is a parse error: it is reported alone, before any value is checked.
    assert_errors(
        "reject_out_of_range",
        &["6:96: limits.c.reject.code: unknown field `code`, expected `status` or `message`"],
    );
    let text = std::fs::read_to_string(format!("{DIR}/reject_out_of_range.json"))
        .unwrap()
        .replace(r#""code": 503"#, r#""status": 503, "message": "Slow down""#);
    let errors: Vec<String> = Config::parse(&text, "inline")
        .expect_err("bad statuses and message")
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "inline:4:106: limits.a.reject.status: the status of a rejection must be between 400 and 599, not 200",
            "inline:5:106: limits.b.reject.status: the status of a rejection must be between 400 and 599, not 600",
            "inline:5:122: limits.b.reject.message: the message must be 1 to 1024 bytes of text without control characters",
        ]
    );
}

#[test]
fn burst_guard_not_bool() {
    assert_errors(
        "burst_guard_not_bool",
        &["4:104: limits.per-ip.burst_guard: invalid type: string \"yes\", expected a boolean"],
    );
}

#[test]
fn missing_field() {
    assert_errors(
        "missing_field",
        &["4:25: limits.per-ip: missing field `refill_per_second`"],
    );
}

#[test]
fn duplicate_key() {
    assert_errors(
        "duplicate_key",
        &["6:5: limits.per-ip: duplicate key: the earlier value would be silently ignored"],
    );
}

#[test]
fn no_listeners() {
    assert_errors(
        "no_listeners",
        &["2:16: listeners: no listeners: add at least one, e.g. [{\"address\": \"0.0.0.0:8080\"}]"],
    );
}

#[test]
fn bad_listener_address() {
    assert_errors(
        "bad_listener_address",
        &["2:30: listeners[0].address: \"localhost:8080\" is not an ip:port socket address (like 0.0.0.0:8080); host names are not allowed here"],
    );
}

#[test]
fn duplicate_listener() {
    assert_errors(
        "duplicate_listener",
        &["2:63: listeners[1].address: duplicate listener address 127.0.0.1:8080 (also listeners[0])"],
    );
}

#[test]
fn admin_public_no_token() {
    assert_errors(
        "admin_public_no_token",
        &["3:25: admin.address: admin listener on a non-loopback address needs admin.token"],
    );
}

#[test]
fn admin_empty_token() {
    assert_errors(
        "admin_empty_token",
        &["3:52: admin.token: the token is empty: set a secret, or null for no authentication on a loopback address"],
    );
}

#[test]
fn redis_no_url() {
    assert_errors(
        "redis_no_url",
        &["3:12: redis: redis needs a url (or urls for a cluster); remove the redis section to run standalone"],
    );
}

#[test]
fn redis_bad_url_masks_the_password() {
    assert_errors(
        "redis_bad_url",
        &["3:21: redis.url: \"http://user:***@127.0.0.1:6379\" is not a redis:// or rediss:// (TLS) URL"],
    );
}

#[test]
fn redis_bad_settings() {
    assert_errors(
        "redis_bad_settings",
        &[
            "3:67: redis.sync_interval_ms: must be between 1 and 60000 ms",
            "3:84: redis.timeout_ms: must be at least 1 ms",
            "3:101: redis.key_prefix: key_prefix \"{tg}\" must be non-empty printable ASCII without whitespace, '{' or '}'",
        ],
    );
}

#[test]
fn redis_urls_without_cluster() {
    assert_errors(
        "redis_urls_without_cluster",
        &["3:22: redis.urls: several URLs need \"cluster\": true; without a cluster, give one url"],
    );
}

#[test]
fn upstream_no_servers() {
    assert_errors(
        "upstream_no_servers",
        &["3:38: upstreams.api.servers: an upstream needs at least one server (\"host:port\")"],
    );
}

#[test]
fn upstream_bad_server() {
    assert_errors(
        "upstream_bad_server",
        &["3:57: upstreams.api.servers[1]: server \"backend\" is not host:port"],
    );
}

#[test]
fn upstream_tls_no_sni() {
    assert_errors(
        "upstream_tls_no_sni",
        &["3:25: upstreams.api.sni: tls is on but sni is empty: an empty SNI would turn certificate verification off; set the name on the server's certificate"],
    );
}

#[test]
fn upstream_zero_timeouts() {
    assert_errors(
        "upstream_zero_timeouts",
        &[
            "4:67: upstreams.api.connect_timeout_ms: must be at least 1 ms",
            "5:47: upstreams.api.health_check.interval_ms: must be at least 1 ms",
        ],
    );
}

#[test]
fn capacity_zero() {
    assert_errors(
        "capacity_zero",
        &["4:39: limits.per-ip.capacity: the capacity must be at least 1 token"],
    );
}

#[test]
fn capacity_too_large() {
    assert_errors(
        "capacity_too_large",
        &["4:39: limits.per-ip.capacity: the capacity must be at most 1000000000000"],
    );
}

#[test]
fn bad_refill() {
    assert_errors(
        "bad_refill",
        &[
            "5:56: limits.negative.refill_per_second: the rate must be a positive number of tokens per second, not -1",
            "6:52: limits.tiny.refill_per_second: the rate must be between 1e-9 and 1e9 tokens per second, not 1e-12",
        ],
    );
}

#[test]
fn initial_above_capacity() {
    assert_errors(
        "initial_above_capacity",
        &["4:85: limits.per-ip.initial_tokens: initial_tokens (11) is more than capacity (10)"],
    );
}

#[test]
fn bad_key_source() {
    assert_errors(
        "bad_key_source",
        &[
            "5:88: limits.composite.key[1]: unknown key source \"ip\": use header:NAME, client_ip, query:NAME, path, method, host or route",
            "5:94: limits.composite.key[2]: key source \"query:\" needs a name: query:NAME",
            "6:63: limits.empty.key: a limit needs at least one key source, e.g. [\"client_ip\"]",
        ],
    );
}

#[test]
fn bad_limit_name() {
    assert_errors(
        "bad_limit_name",
        &["4:15: limits[\"per ip\"]: limit name \"per ip\" contains ' ': it is used in Redis keys and metric labels, so use printable ASCII without whitespace, ':', '{' or '}'"],
    );
}

#[test]
fn no_routes() {
    assert_errors(
        "no_routes",
        &["4:13: routes: no routes: add at least one, e.g. {\"name\": \"default\", \"upstream\": \"...\"}"],
    );
}

#[test]
fn duplicate_route() {
    assert_errors(
        "duplicate_route",
        &["6:15: routes[1].name: duplicate route name \"rating\" (also routes[0])"],
    );
}

#[test]
fn unknown_upstream() {
    assert_errors(
        "unknown_upstream",
        &["4:47: routes[0].upstream: unknown upstream \"x\" (known: a, b)"],
    );
}

#[test]
fn unknown_limit_and_duplicate_limit() {
    assert_errors(
        "unknown_limit",
        &[
            "5:75: routes[0].limits[1]: unknown limit \"per-key\" (known: per-ip)",
            "5:86: routes[0].limits[2]: limit \"per-ip\" is listed twice",
        ],
    );
}

#[test]
fn bad_match() {
    assert_errors(
        "bad_match",
        &[
            "5:51: routes[0].match.path_prefix: path_prefix \"rating\" must start with '/'",
            "5:73: routes[0].match.methods[0]: method \"get\" must be written in upper case, like \"GET\"",
            "5:89: routes[0].match.host: host \"api.example.com:443\" must be a host name or IP address without port, like \"api.example.com\"",
        ],
    );
}

#[test]
fn bad_cost() {
    assert_errors(
        "bad_cost",
        &[
            "6:87: routes[0].cost: cost must be at least 1 token",
            "7:106: routes[1].cost.per_bytes: must be at least 1 byte",
            "8:75: routes[2].cost: cost 11 is more than the capacity 10 of limit \"per-ip\": no request could ever pass",
        ],
    );
}

#[test]
fn unreachable_route() {
    assert_errors(
        "unreachable_route",
        &["6:5: routes[1]: route \"rating\" can never match: routes[0] (\"default\") matches every request first; put the catch-all route last"],
    );
}

#[test]
fn bad_cidr() {
    assert_errors(
        "bad_cidr",
        &["5:52: trusted_proxies[2]: \"10.0.0.0/33\" is not a CIDR (like 10.0.0.0/8) or an IP address"],
    );
}

#[test]
fn tls_missing_file() {
    let errors = load("tls_missing_file").unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let prefix = format!("{DIR}/tls_missing_file.json:");
    assert!(errors[0].starts_with(&format!("{prefix}4:24: listeners[0].tls.cert: cannot read certificate file \"{DIR}/missing.crt\": ")), "{errors:?}");
    assert!(
        errors[1].starts_with(&format!(
            "{prefix}4:68: listeners[0].tls.key: cannot read key file \"{DIR}/missing.key\": "
        )),
        "{errors:?}"
    );
    assert!(errors.iter().all(|e| e.ends_with(
        "check the path (relative paths start from the working directory) and its permissions"
    )));
}

#[test]
fn tls_not_pem() {
    assert_errors(
        "tls_not_pem",
        &[
            "4:24: listeners[0].tls.cert: certificate file \"tests/fixtures/config/tls_not_pem.json\" holds no PEM certificate: expected a \"-----BEGIN CERTIFICATE-----\" block",
            "4:73: listeners[0].tls.key: key file \"tests/fixtures/config/tls_not_pem.json\" holds no PEM private key: expected a \"-----BEGIN PRIVATE KEY-----\" (or RSA / EC PRIVATE KEY) block",
        ],
    );
}

#[test]
fn bad_globals() {
    assert_errors(
        "bad_globals",
        &[
            "2:14: node_id: node_id \"edge 1\" contains ' ': it is used in Redis keys and metric labels, so use printable ASCII without whitespace, ':', '{' or '}'",
            "6:14: threads: must be at least 1",
            "7:18: max_buckets: must be at least 1",
        ],
    );
}

#[test]
fn three_errors_are_all_reported() {
    assert_errors(
        "three_errors",
        &[
            "4:39: limits.per-ip.capacity: the capacity must be at least 1 token",
            "5:47: routes[0].upstream: unknown upstream \"nope\" (known: api)",
            "6:23: trusted_proxies[0]: \"not-a-cidr\" is not a CIDR (like 10.0.0.0/8) or an IP address",
        ],
    );
}

#[test]
fn unreadable_config_file() {
    let err = Config::load(Path::new("tests/fixtures/config/absent.json")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.to_string()
            .starts_with("tests/fixtures/config/absent.json: cannot read the config file: "),
        "{err}"
    );
}

#[test]
fn root_must_be_an_object() {
    let err = Config::parse("[]", "x.json").unwrap_err().to_string();
    assert!(
        err.starts_with("x.json:1:1: expected an object, found an array\n"),
        "{err}"
    );
    let err = Config::parse("", "x.json").unwrap_err().to_string();
    assert_eq!(
        err,
        "x.json:1:1: EOF while parsing a value; the file is empty: a config is one JSON object (see docs/configuration.md)"
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let c = load("minimal").unwrap();
    assert_eq!(c.source, "tests/fixtures/config/minimal.json");
    assert!(!c.node_id.is_empty() && !c.node_id.contains([':', '{', '}', ' ']));
    assert_eq!(c.raw.node_id.as_deref(), Some(c.node_id.as_str()));
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(
        c.listeners[0].address,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert!(c.listeners[0].tls.is_none());
    assert_eq!(
        c.admin.address,
        "127.0.0.1:9091".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.admin.token, None);
    assert!(c.redis.is_none());

    let u = &c.upstreams[0];
    assert_eq!(
        (u.name.as_str(), u.servers.clone()),
        ("api", vec!["127.0.0.1:8000".to_string()])
    );
    assert!(!u.tls && u.sni.is_empty() && u.ca_file.is_none() && u.health_check.is_none());
    assert_eq!(u.connect_timeout, Duration::from_millis(1000));
    assert_eq!(u.read_timeout, Duration::from_millis(30_000));
    assert_eq!(u.write_timeout, Duration::from_millis(30_000));

    let l = &c.limits[0];
    assert_eq!(
        (
            l.name.as_str(),
            l.params.capacity(),
            l.params.refill_per_second()
        ),
        ("per-ip", 10, 0.5)
    );
    assert_eq!(
        l.params.initial_tokens(),
        10,
        "initial_tokens defaults to capacity"
    );
    assert_eq!(
        l.key[..],
        [KeySource::ClientIp],
        "a single string is a one-part key"
    );
    assert!(!l.shadow);
    assert!(!l.burst_guard, "burst_guard defaults to false");

    let r = &c.routes[0];
    assert_eq!((r.name.as_str(), r.path_prefix.as_str()), ("default", "/"));
    assert_eq!((r.methods.clone(), r.host.clone()), (None, None));
    let limit_indices: Vec<usize> = r.limits.iter().map(|l| l.index()).collect();
    assert_eq!(
        (r.upstream.index(), limit_indices, r.cost),
        (0, vec![0], Cost::Fixed(1))
    );

    assert!(c.trusted_proxies.is_empty());
    assert!(c.access_log);
    assert_eq!(c.grace_period_seconds, 5);
    assert_eq!(
        c.threads,
        std::thread::available_parallelism().map_or(2, |n| n.get()),
        "threads defaults to the CPU count"
    );
    assert_eq!(c.max_buckets, 1_000_000);
    assert_eq!(c.limit_id("per-ip").map(|id| id.index()), Some(0));
    assert_eq!(c.limit_id("nope"), None);
    assert_eq!(
        c.summary(),
        format!("{DIR}/minimal.json: ok (node {}, 1 listener, 1 upstream, 1 limit, 1 route, redis: disabled)", c.node_id)
    );
}

#[test]
fn every_setting_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, label: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!("-----BEGIN {label}-----\nMIIBCgKCAQEA\n-----END {label}-----\n"),
        )
        .unwrap();
        p.display().to_string()
    };
    let (cert, key, ca) = (
        pem("s.crt", "CERTIFICATE"),
        pem("s.key", "PRIVATE KEY"),
        pem("ca.crt", "CERTIFICATE"),
    );
    let text = json!({
        "node_id": "edge-1",
        "listeners": [{ "address": "[::1]:8443", "tls": { "cert": cert, "key": key } }],
        "admin": { "address": "0.0.0.0:9091", "token": "s3cret" },
        "redis": { "urls": ["redis://:pw@10.0.0.1:6379", "rediss://u:pw@10.0.0.2:6379"], "cluster": true,
                   "sync_interval_ms": 50, "key_prefix": "tg:prod", "timeout_ms": 300, "ca_file": ca,
                   "quiet_buckets": false },
        "upstreams": { "api": { "servers": ["api.internal:443", "[::1]:8000"], "tls": true, "sni": "api.internal",
                                "ca_file": ca, "health_check": {}, "connect_timeout_ms": 10,
                                "read_timeout_ms": 20, "write_timeout_ms": 30 } },
        "limits": { "bytes": { "capacity": 1000, "refill_per_second": 0.0166, "initial_tokens": 0,
                               "key": ["header:X-Api-Key", "query:user", "path", "method", "host", "route"],
                               "shadow": true, "burst_guard": true } },
        "routes": [{ "name": "upload", "match": { "path_prefix": "/up", "methods": ["POST", "PUT", "POST"],
                                                  "host": "API.Example.com." },
                     "upstream": "api", "limits": ["bytes"], "cost": { "per_bytes": 1024 } }],
        "trusted_proxies": ["10.0.0.0/8", "192.168.1.1", "::1"],
        "access_log": false, "grace_period_seconds": 0, "threads": 8, "max_buckets": 10
    });
    let c = Config::parse(&text.to_string(), "inline").unwrap();
    assert_eq!(
        c.listeners[0]
            .tls
            .as_ref()
            .map(|t| t.cert.display().to_string()),
        Some(cert)
    );
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
    let r = c.redis.as_ref().unwrap();
    assert_eq!(r.urls.len(), 2);
    assert!(r.cluster);
    assert_eq!(
        (r.sync_interval, r.timeout),
        (Duration::from_millis(50), Duration::from_millis(300))
    );
    assert_eq!(r.key_prefix, "tg:prod");
    assert!(!r.quiet_buckets && !c.quiet_buckets());
    let u = &c.upstreams[0];
    let hc = u.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.path.as_str(), hc.interval),
        ("/health", Duration::from_millis(2000))
    );
    assert_eq!(u.write_timeout, Duration::from_millis(30));
    let l = &c.limits[0];
    assert_eq!(
        (l.params.initial_tokens(), l.shadow, l.burst_guard),
        (0, true, true)
    );
    assert_eq!(
        l.key[0],
        KeySource::Header(http::HeaderName::from_static("x-api-key"))
    );
    assert_eq!(l.key[1], KeySource::Query("user".into()));
    let route = &c.routes[0];
    assert_eq!(
        route.methods,
        Some(vec![http::Method::POST, http::Method::PUT])
    );
    assert_eq!(route.host.as_deref(), Some("api.example.com"));
    assert_eq!(route.cost, Cost::PerBytes(1024));
    let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.1/32", "::1/128"]);
    assert!(!c.access_log);
    assert_eq!(
        (c.grace_period_seconds, c.threads, c.max_buckets),
        (0, 8, 10)
    );
    assert!(
        c.summary().ends_with("redis: cluster of 2 seeds)"),
        "{}",
        c.summary()
    );

    // GET /config shows `masked_json`: the raw config with the admin token and the Redis
    // passwords replaced by "***", and every other value as it is.
    let masked = c.masked_json();
    let mut expected = serde_json::to_value(&c.raw).unwrap();
    expected["admin"]["token"] = json!("***");
    expected["redis"]["urls"] =
        json!(["redis://:***@10.0.0.1:6379", "rediss://u:***@10.0.0.2:6379"]);
    assert_eq!(masked, expected);
    let masked_text = masked.to_string();
    for secret in ["s3cret", "pw@", ":pw"] {
        assert!(!masked_text.contains(secret), "{secret} in {masked_text}");
    }
    // Spot checks that "the rest" is really there, not just equal on both sides.
    assert_eq!(masked["node_id"], "edge-1");
    assert_eq!(masked["admin"]["address"], "0.0.0.0:9091");
    assert_eq!(masked["redis"]["key_prefix"], "tg:prod");
    assert_eq!(masked["routes"][0]["cost"], json!({ "per_bytes": 1024 }));
    assert_eq!(masked["max_buckets"], 10);
    // What is shown loads back as the same config, but for the masked secrets.
    let shown = Config::parse(&masked_text, "shown").unwrap();
    assert_eq!(shown.admin.token.as_deref(), Some("***"));
    assert_eq!(
        shown.redis.as_ref().unwrap().urls,
        ["redis://:***@10.0.0.1:6379", "rediss://u:***@10.0.0.2:6379"]
    );
    let mut unmasked = shown.raw.clone();
    unmasked.admin = c.raw.admin.clone();
    unmasked.redis = c.raw.redis.clone();
    assert_eq!(unmasked, c.raw);
}

/// A single `redis.url` is masked too; a URL without a password, and a null token, are shown
/// as they are.
#[test]
fn masked_json_masks_a_single_redis_url() {
    let base = json!({
        "listeners": [{ "address": "127.0.0.1:8080" }],
        "admin": { "token": "t0ken-value" },
        "redis": { "url": "redis://app:hunter2@cache.internal:6379/0" },
        "upstreams": { "api": { "servers": ["127.0.0.1:8000"] } },
        "limits": { "l": { "capacity": 1, "refill_per_second": 1, "key": "client_ip" } },
        "routes": [{ "name": "r", "upstream": "api", "limits": ["l"] }],
    });
    let c = Config::parse(&base.to_string(), "inline").unwrap();
    let mut expected = serde_json::to_value(&c.raw).unwrap();
    expected["admin"]["token"] = json!("***");
    expected["redis"]["url"] = json!("redis://app:***@cache.internal:6379/0");
    let masked = c.masked_json();
    assert_eq!(masked, expected);
    let text = masked.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("t0ken-value"),
        "{text}"
    );

    let mut plain = base.clone();
    plain["admin"]["token"] = json!(null);
    plain["redis"]["url"] = json!("redis://cache.internal:6379/0");
    let c = Config::parse(&plain.to_string(), "inline").unwrap();
    assert_eq!(c.masked_json(), serde_json::to_value(&c.raw).unwrap());
    assert_eq!(
        c.masked_json()["redis"]["url"],
        "redis://cache.internal:6379/0"
    );
    assert_eq!(c.masked_json()["admin"]["token"], json!(null));
}

#[test]
fn demo_config_is_valid() {
    let c = Config::load(Path::new("conf/tollgate.json")).unwrap();
    assert_eq!(
        c.listeners[0].address,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.admin.address,
        "127.0.0.1:9091".parse::<SocketAddr>().unwrap()
    );
    assert!(c.redis.is_none() && c.admin.token.is_none() && c.trusted_proxies.is_empty());
    let per_key = c.limit(c.limit_id("per-api-key").unwrap());
    assert_eq!(
        (
            per_key.params.capacity(),
            per_key.params.refill_per_second()
        ),
        (10, 1.0)
    );
    assert_eq!(
        per_key.key[..],
        [KeySource::Header(http::HeaderName::from_static(
            "x-api-key"
        ))]
    );
    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["rating", "default"]);
    assert_eq!(c.routes[0].limits.len(), 2);
    assert_eq!(c.upstream(c.routes[0].upstream).servers, ["127.0.0.1:8000"]);
}

#[test]
fn overrides_bad() {
    // Errors of the config's own overrides are placed in the config, those of the overrides
    // file in that file; a key in both places is reported in the file.
    const FILE: &str = "tests/fixtures/config/overrides/bad.json";
    let errors = load("overrides_bad").expect_err("bad overrides");
    let c = |e: &str| format!("{DIR}/overrides_bad.json:{e}");
    let f = |e: &str| format!("{FILE}:{e}");
    let mut want = vec![
        c("6:54: limits.per-key.overrides.pro.capacity: the capacity must be at least 1 token"),
        c("7:41: limits.per-key.overrides.free: an override is an object of parameters (capacity, refill_per_second, initial_tokens; quota, window for a quota), \"unlimited\" or \"deny\", not \"sometimes\""),
        c("8:33: limits.per-key.overrides[\"a|b\"]: the key \"a|b\" has 2 part(s) but the limit builds keys of 1 (parts joined with '|'; a '|' inside a part is written %7C)"),
        c("9:41: limits.per-key.overrides.slow: unknown field \"burst\": an override sets capacity, refill_per_second or initial_tokens"),
        c("9:64: limits.per-key.overrides.slow.refill_per_second: refill_per_second must be a number, not \"fast\""),
        c("10:75: limits.per-key.overrides.big.initial_tokens: initial_tokens (6) is more than capacity (5)"),
        c("14:36: limits.missing.overrides_file: cannot read the overrides file \"tests/fixtures/config/overrides/absent.json\": No such file or directory (os error 2)"),
        f("5:3: ok: duplicate key: the earlier value would be silently ignored"),
        f("3:3: both: the key \"both\" is overridden in the config too: keep one"),
        f("4:24: neg.capacity: capacity must be a whole number, not -1"),
        f("6:8: x: an override is an object of parameters (capacity, refill_per_second, initial_tokens; quota, window for a quota), \"unlimited\" or \"deny\", not null"),
    ];
    let mut got = errors.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{errors:#?}");
}

#[test]
fn overrides_file_syntax_error() {
    assert_eq!(
        load("overrides_syntax").expect_err("a syntax error in the overrides file"),
        ["tests/fixtures/config/overrides/syntax.json:2:28: ok: trailing comma"]
    );
}

#[test]
fn overrides_load_from_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plans.json");
    let mut plans = serde_json::Map::new();
    for i in 0..1000 {
        plans.insert(format!("key-{i}"), json!({ "capacity": 100 + i }));
    }
    plans.insert("leaked".into(), json!("deny"));
    std::fs::write(&file, serde_json::Value::Object(plans).to_string()).unwrap();
    let text = json!({
        "listeners": [{ "address": "127.0.0.1:8080" }],
        "upstreams": { "api": { "servers": ["127.0.0.1:8000"] } },
        "limits": { "per-key": { "capacity": 10, "refill_per_second": 1, "key": ["header:x-api-key"],
                                 "overrides": { "batch": "unlimited", "pro": { "refill_per_second": 100 } },
                                 "overrides_file": file } },
        "routes": [{ "name": "default", "upstream": "api", "limits": ["per-key"] }],
    })
    .to_string();
    let config = Config::parse(&text, "inline").expect("valid overrides");
    let l = config.limits[0].spec();
    assert_eq!(l.overrides.len(), 1003);
    let p = l.params_for("key-7").expect("a bucket");
    assert_eq!(
        (p.capacity(), p.refill_per_second(), p.initial_tokens()),
        (107, 1.0, 107)
    );
    let p = l.params_for("pro").expect("a bucket");
    assert_eq!((p.capacity(), p.refill_per_second()), (10, 100.0));
    assert!(l.params_for("batch").is_none() && l.params_for("leaked").is_none());
    assert_eq!(l.params_for("other").map(|p| p.capacity()), Some(10));
}

/// A config text with one limit written as `limit` (JSON), for the quota checks.
fn with_limit(limit: serde_json::Value) -> Result<Config, Vec<String>> {
    let text = json!({
        "listeners": [{ "address": "127.0.0.1:8080" }],
        "upstreams": { "api": { "servers": ["127.0.0.1:8000"] } },
        "limits": { "q": limit },
        "routes": [{ "name": "default", "upstream": "api", "limits": ["q"] }],
    });
    Config::parse(&serde_json::to_string_pretty(&text).unwrap(), "inline")
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn quotas_and_their_errors() {
    let ok = with_limit(json!({ "quota": 10000, "window": "day", "key": ["header:x-api-key"] }))
        .expect("a daily quota");
    let p = &ok.limits[0].params;
    assert_eq!((p.capacity(), p.initial_tokens()), (10000, 10000));
    assert_eq!(p.window().map(|w| w.name()), Some("day"));
    let errors = |limit| with_limit(limit).expect_err("refused");
    assert_eq!(
        errors(json!({ "quota": 10, "window": "week", "key": ["client_ip"] })),
        ["inline:8:17: limits.q.window: unknown window \"week\": use minute, hour, day or month (UTC calendar)"]
    );
    assert_eq!(
        errors(json!({ "quota": 10, "key": ["client_ip"] })),
        ["inline:3:10: limits.q: missing field `window`"]
    );
    assert_eq!(
        errors(json!({ "quota": 0, "window": "hour", "key": ["client_ip"] })),
        ["inline:7:16: limits.q.quota: the quota must be at least 1 token"]
    );
    assert_eq!(
        errors(json!({ "quota": 10, "window": "hour", "capacity": 5, "key": ["client_ip"] })),
        ["inline:4:7: limits.q.capacity: a limit is a token bucket (capacity, refill_per_second) or a quota (quota, window), not both: remove capacity or the quota"]
    );
    assert_eq!(
        errors(json!({ "key": ["client_ip"] })),
        ["inline:3:10: limits.q: missing field `capacity`"]
    );
    // An override of a quota sets a quota (or window), not a bucket's parameters.
    let plans = json!({ "quota": 10, "window": "month", "key": ["header:k"],
                        "overrides": { "pro": { "quota": 1000 }, "hourly": { "window": "hour" },
                                       "odd": { "capacity": 3 } } });
    assert_eq!(
        errors(plans.clone()),
        ["inline:11:16: limits.q.overrides.odd: unknown field \"capacity\": an override sets quota or window (the limit is a quota)"]
    );
    let mut fine = plans;
    fine["overrides"].as_object_mut().unwrap().remove("odd");
    let l = with_limit(fine).expect("quota overrides").limits[0].spec();
    let pro = l.params_for("pro").expect("a quota");
    assert_eq!(
        (pro.capacity(), pro.window().map(|w| w.name())),
        (1000, Some("month"))
    );
    let hourly = l.params_for("hourly").expect("a quota");
    assert_eq!(
        (hourly.capacity(), hourly.window().map(|w| w.name())),
        (10, Some("hour"))
    );
}

/// Limits whose keys are built from the same sources share one list of them, which the
/// decision tells apart by address; other limits keep their own.
#[test]
fn limits_with_the_same_key_sources_share_them() {
    let text = json!({
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {"api": {"servers": ["127.0.0.1:8000"]}},
        "limits": {
            "a": {"capacity": 10, "refill_per_second": 1, "key": ["header:x-api-key"]},
            "b": {"capacity": 10, "refill_per_second": 1, "key": ["client_ip"]},
            "c": {"capacity": 10, "refill_per_second": 1, "key": "header:X-Api-Key"}
        },
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "api",
                    "limits": ["a", "b", "c"]}]
    })
    .to_string();
    let c = Config::parse(&text, "inline").expect("valid");
    let key = |n: &str| &c.limits[c.limit_id(n).expect("limit").index()].key;
    assert!(std::sync::Arc::ptr_eq(key("a"), key("c")));
    assert!(!std::sync::Arc::ptr_eq(key("a"), key("b")));
    assert_eq!(key("b")[..], [KeySource::ClientIp]);
}
