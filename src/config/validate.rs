//! The checks that turn a [`RawConfig`] into a [`Config`]. Each check records its error and
//! goes on, so that one run reports every problem; placeholders stand in for bad values
//! until the end, where any error discards the whole result.

use super::checker::{Checker, MAX_NAME_LEN};
use super::raw::{RawAdmin, RawConfig, RawLimit, RawListener, RawRedis, RawReject, RawUpstream};
use super::spans::{element, member, Spans};
use super::values::*;
use super::*;
use crate::limit::window::Window;

const MAX_SYNC_INTERVAL_MS: u64 = 60_000;

/// Checks everything; all errors or a config.
pub(super) fn validate(
    raw: RawConfig,
    source: &str,
    spans: &Spans,
) -> Result<Config, ConfigErrors> {
    let mut c = Checker::new(source, spans);
    for (path, pos) in &spans.duplicates {
        c.push(
            path,
            Some(*pos),
            "duplicate key: the earlier value would be silently ignored".into(),
        );
    }
    objects_not_arrays(&mut c, &raw);
    let node_id = match &raw.node_id {
        Some(id) => {
            let id = id.clone();
            c.check("node_id", check_name("node_id", &id, usize::MAX))
                .map(|_| id)
                .unwrap_or_default()
        }
        None => default_node_id(),
    };
    let listeners = listeners(&mut c, &raw.listeners);
    let admin = admin(&mut c, &raw.admin, &listeners);
    let redis = raw.redis.as_ref().map(|r| redis(&mut c, r));
    let upstreams: Vec<Upstream> = raw
        .upstreams
        .iter()
        .map(|(n, u)| upstream(&mut c, n, u))
        .collect();
    // Each limit, and its capacity when its parameters are valid (for the routes' costs).
    let (mut limits, capacities): (Vec<Limit>, Vec<Option<u64>>) =
        raw.limits.iter().map(|(n, l)| limit(&mut c, n, l)).unzip();
    super::routes::share_keys(&mut limits);
    let routes = super::routes::routes(&mut c, &raw.routes, &upstreams, (&limits, &capacities));
    let mut trusted_proxies = Vec::new();
    for (i, s) in raw.trusted_proxies.iter().enumerate() {
        let path = element("trusted_proxies", i);
        trusted_proxies.extend(c.check(&path, parse_cidr(s)));
    }
    if raw.threads == 0 {
        c.err("threads", "must be at least 1");
    }
    if raw.max_buckets == 0 {
        c.err("max_buckets", "must be at least 1");
    }
    if c.error_count() > 0 {
        let mut errors = c.into_errors();
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.col));
        return Err(ConfigErrors(errors));
    }
    let mut raw = raw;
    raw.node_id = Some(node_id.clone());
    Ok(Config {
        source: source.to_string(),
        node_id,
        listeners,
        admin,
        redis,
        upstreams,
        limits,
        routes_match_hosts: routes.iter().any(|r| r.host.is_some()),
        routes,
        trusted_proxies,
        access_log: raw.access_log,
        preserve_header_case: raw.preserve_header_case,
        grace_period_seconds: raw.grace_period_seconds,
        threads: raw.threads,
        max_buckets: raw.max_buckets,
        raw,
    })
}

/// serde lets a struct be written as an array of its fields in order; the file format is
/// objects only.
fn objects_not_arrays(c: &mut Checker, raw: &RawConfig) {
    let mut paths = vec![String::new(), "admin".to_string(), "redis".to_string()];
    for (i, l) in raw.listeners.iter().enumerate() {
        paths.push(element("listeners", i));
        if l.tls.is_some() {
            paths.push(format!("{}.tls", element("listeners", i)));
        }
    }
    for name in raw.upstreams.keys() {
        paths.push(member("upstreams", name));
        paths.push(format!("{}.health_check", member("upstreams", name)));
    }
    paths.extend(raw.limits.keys().map(|name| member("limits", name)));
    for i in 0..raw.routes.len() {
        paths.push(element("routes", i));
        paths.push(format!("{}.match", element("routes", i)));
    }
    for p in paths {
        if c.spans().is_array(&p) {
            c.err(&p, "expected an object, found an array");
        }
    }
}

fn listeners(c: &mut Checker, raw: &[RawListener]) -> Vec<Listener> {
    if raw.is_empty() {
        c.err(
            "listeners",
            "no listeners: add at least one, e.g. [{\"address\": \"0.0.0.0:8080\"}]",
        );
    }
    let mut out: Vec<Listener> = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let path = element("listeners", i);
        let addr_path = format!("{path}.address");
        let Some(address) = c.check(&addr_path, parse_socket_addr(&l.address, "0.0.0.0:8080"))
        else {
            continue;
        };
        if let Some(j) = out
            .iter()
            .position(|o| o.address == address && address.port() != 0)
        {
            c.err(
                &addr_path,
                format!("duplicate listener address {address} (also listeners[{j}])"),
            );
        }
        let tls = l.tls.as_ref().map(|t| {
            c.check(
                &format!("{path}.tls.cert"),
                check_certificates(&t.cert, "certificate file"),
            );
            c.check(&format!("{path}.tls.key"), check_private_key(&t.key));
            TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
            }
        });
        out.push(Listener { address, tls });
    }
    out
}

fn admin(c: &mut Checker, raw: &RawAdmin, listeners: &[Listener]) -> Admin {
    let address = c.check(
        "admin.address",
        parse_socket_addr(&raw.address, "127.0.0.1:9091"),
    );
    if let Some(token) = &raw.token {
        if token.is_empty() {
            c.err("admin.token", "the token is empty: set a secret, or null for no authentication on a loopback address");
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            c.err("admin.token", "the token must be printable ASCII without spaces (it is sent in an Authorization header)");
        }
    }
    if let Some(addr) = address {
        if !addr.ip().is_loopback() && raw.token.is_none() {
            c.err(
                "admin.address",
                "admin listener on a non-loopback address needs admin.token",
            );
        }
        if let Some(i) = listeners
            .iter()
            .position(|l| l.address == addr && addr.port() != 0)
        {
            c.err(
                "admin.address",
                format!("the admin address {addr} is also listeners[{i}]: use another port"),
            );
        }
    }
    Admin {
        address: address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9091))),
        token: raw.token.clone(),
    }
}

fn redis(c: &mut Checker, raw: &RawRedis) -> RedisConfig {
    let urls: Vec<(String, String)> = match (&raw.url, &raw.urls) {
        (Some(u), None) => vec![("redis.url".to_string(), u.clone())],
        (None, Some(list)) => {
            if list.is_empty() {
                c.err("redis.urls", "redis.urls is empty: give at least one URL");
            }
            list.iter()
                .enumerate()
                .map(|(i, u)| (element("redis.urls", i), u.clone()))
                .collect()
        }
        (Some(_), Some(_)) => {
            c.err(
                "redis.urls",
                "give either redis.url or redis.urls, not both",
            );
            Vec::new()
        }
        (None, None) => {
            c.err("redis", "redis needs a url (or urls for a cluster); remove the redis section to run standalone");
            Vec::new()
        }
    };
    if !raw.cluster && urls.len() > 1 {
        c.err(
            "redis.urls",
            "several URLs need \"cluster\": true; without a cluster, give one url",
        );
    }
    for (path, url) in &urls {
        c.check(path, check_redis_url(url));
    }
    if raw.sync_interval_ms == 0 || raw.sync_interval_ms > MAX_SYNC_INTERVAL_MS {
        c.err(
            "redis.sync_interval_ms",
            format!("must be between 1 and {MAX_SYNC_INTERVAL_MS} ms"),
        );
    }
    if raw.timeout_ms == 0 {
        c.err("redis.timeout_ms", "must be at least 1 ms");
    }
    let prefix = &raw.key_prefix;
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        c.err(
            "redis.key_prefix",
            format!("key_prefix {prefix:?} must be non-empty printable ASCII without whitespace, '{{' or '}}'"),
        );
    }
    if let Some(ca) = &raw.ca_file {
        c.check("redis.ca_file", check_certificates(ca, "CA file"));
    }
    RedisConfig {
        urls: urls.into_iter().map(|(_, u)| u).collect(),
        cluster: raw.cluster,
        sync_interval: Duration::from_millis(raw.sync_interval_ms),
        key_prefix: raw.key_prefix.clone(),
        timeout: Duration::from_millis(raw.timeout_ms),
        ca_file: raw.ca_file.clone(),
        quiet_buckets: raw.quiet_buckets,
    }
}

fn upstream(c: &mut Checker, name: &str, raw: &RawUpstream) -> Upstream {
    let path = member("upstreams", name);
    if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        c.err_key(
            &path,
            format!("upstream name {name:?} must be non-empty, without whitespace"),
        );
    }
    if raw.servers.is_empty() {
        c.err(
            &format!("{path}.servers"),
            "an upstream needs at least one server (\"host:port\")",
        );
    }
    for (i, s) in raw.servers.iter().enumerate() {
        c.check(&element(&format!("{path}.servers"), i), check_server(s));
    }
    if raw.tls && raw.sni.is_empty() {
        c.err(
            &format!("{path}.sni"),
            "tls is on but sni is empty: an empty SNI would turn certificate verification off; set the name on the server's certificate",
        );
    }
    if let Some(ca) = &raw.ca_file {
        c.check(
            &format!("{path}.ca_file"),
            check_certificates(ca, "CA file"),
        );
    }
    let health_check = raw.health_check.as_ref().map(|h| {
        if !h.path.starts_with('/') {
            c.err(
                &format!("{path}.health_check.path"),
                format!("health check path {:?} must start with '/'", h.path),
            );
        }
        if h.interval_ms == 0 {
            c.err(
                &format!("{path}.health_check.interval_ms"),
                "must be at least 1 ms",
            );
        }
        HealthCheck {
            path: h.path.clone(),
            interval: Duration::from_millis(h.interval_ms),
        }
    });
    for (key, ms) in [
        ("connect_timeout_ms", raw.connect_timeout_ms),
        ("read_timeout_ms", raw.read_timeout_ms),
        ("write_timeout_ms", raw.write_timeout_ms),
    ] {
        if ms == 0 {
            c.err(&format!("{path}.{key}"), "must be at least 1 ms");
        }
    }
    Upstream {
        name: name.to_string(),
        servers: raw.servers.clone(),
        tls: raw.tls,
        sni: raw.sni.clone(),
        ca_file: raw.ca_file.clone(),
        health_check,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        read_timeout: Duration::from_millis(raw.read_timeout_ms),
        write_timeout: Duration::from_millis(raw.write_timeout_ms),
    }
}

/// A limit, and its capacity when its parameters are valid.
fn limit(c: &mut Checker, name: &str, raw: &RawLimit) -> (Limit, Option<u64>) {
    let errors_before = c.error_count();
    let path = member("limits", name);
    if let Err(m) = check_name("limit name", name, MAX_NAME_LEN) {
        c.err_key(&path, m);
    }
    let key_path = format!("{path}.key");
    if raw.key.0.is_empty() {
        c.err(
            &key_path,
            "a limit needs at least one key source, e.g. [\"client_ip\"]",
        );
    }
    let mut key = Vec::new();
    for (i, s) in raw.key.0.iter().enumerate() {
        key.extend(c.check(&element(&key_path, i), s.parse::<KeySource>()));
    }
    let params = limit_params(c, &path, raw);
    let capacity = params.as_ref().ok().map(BucketParams::capacity);
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            // The checks have said why, with the value's position; this one is a net.
            if c.error_count() == errors_before {
                c.err(&path, e);
            }
            BucketParams::default()
        }
    };
    let parts = key.len();
    let mut limit = Limit {
        name: name.to_string(),
        params,
        key: key.into(),
        shadow: raw.shadow,
        burst_guard: raw.burst_guard,
        reject: reject(c, &path, raw.reject.as_ref()),
        overrides: Overrides::default(),
    };
    if raw.overrides.is_some() || raw.overrides_file.is_some() {
        let base = limit.spec();
        limit.overrides = super::overrides::overrides(c, &path, raw, &base, parts);
    }
    (limit, capacity)
}

/// Records that the limit at `path` lacks `field`, as serde words it; the same message back.
fn missing(c: &mut Checker, path: &str, field: &str) -> String {
    let m = format!("missing field `{field}`");
    c.err(path, m.clone());
    m
}

/// A limit's kind and parameters: a token bucket (`capacity`, `refill_per_second`,
/// `initial_tokens`) or a quota (`quota`, `window`), not both. Errors are recorded at the
/// values; `Err` carries a last word for when none was.
fn limit_params(c: &mut Checker, path: &str, raw: &RawLimit) -> Result<BucketParams, String> {
    let bucket_keys = [
        ("capacity", raw.capacity.is_some()),
        ("refill_per_second", raw.refill_per_second.is_some()),
        ("initial_tokens", raw.initial_tokens.is_some()),
    ];
    if let Some(n) = raw.max_in_flight {
        let quota_keys = [
            ("quota", raw.quota.is_some()),
            ("window", raw.window.is_some()),
        ];
        for (k, _) in bucket_keys
            .iter()
            .chain(&quota_keys)
            .filter(|(_, set)| *set)
        {
            c.err_key(
                &format!("{path}.{k}"),
                format!("a limit is a token bucket, a quota or a concurrency limit (max_in_flight), one kind only: remove {k} or max_in_flight"),
            );
        }
        let slots =
            BucketParams::slots(n).map_err(|e| e.to_string().replace("capacity", "max_in_flight"));
        if let Err(m) = &slots {
            c.err(&format!("{path}.max_in_flight"), m.clone());
        }
        return slots;
    }
    if raw.quota.is_some() || raw.window.is_some() {
        for (k, _) in bucket_keys.iter().filter(|(_, set)| *set) {
            c.err_key(
                &format!("{path}.{k}"),
                format!("a limit is a token bucket (capacity, refill_per_second) or a quota (quota, window), not both: remove {k} or the quota"),
            );
        }
        let (Some(quota), Some(window)) = (raw.quota, raw.window.as_deref()) else {
            return Err(missing(
                c,
                path,
                if raw.quota.is_none() {
                    "quota"
                } else {
                    "window"
                },
            ));
        };
        let Some(w) = Window::parse(window) else {
            c.err(
                &format!("{path}.window"),
                format!("unknown window {window:?}: use minute, hour, day or month (UTC calendar)"),
            );
            return Err("bad window".into());
        };
        if let Some((_, m)) = param_errors(quota, 1.0, None).into_iter().next() {
            c.err(
                &format!("{path}.quota"),
                m.replace("the capacity", "the quota"),
            );
        }
        return BucketParams::quota(quota, w).map_err(|e| e.to_string());
    }
    let (Some(capacity), Some(rate)) = (raw.capacity, raw.refill_per_second) else {
        let field = if raw.capacity.is_none() {
            "capacity"
        } else {
            "refill_per_second"
        };
        return Err(missing(c, path, field));
    };
    for (field, m) in param_errors(capacity, rate, raw.initial_tokens) {
        c.err(&format!("{path}.{field}"), m);
    }
    BucketParams::new(capacity, rate, raw.initial_tokens.unwrap_or(capacity))
        .map_err(|e| e.to_string())
}

/// Longest `reject.message`.
const MAX_REJECT_MESSAGE: usize = 1024;

/// A limit's `reject`, checked: a 4xx or 5xx status, a message of printable text.
fn reject(c: &mut Checker, path: &str, raw: Option<&RawReject>) -> Reject {
    let mut out = Reject::default();
    let Some(raw) = raw else {
        return out;
    };
    if let Some(status) = raw.status {
        if (400..=599).contains(&status) {
            out.status = status;
        } else {
            c.err(
                &format!("{path}.reject.status"),
                format!("the status of a rejection must be between 400 and 599, not {status}"),
            );
        }
    }
    if let Some(message) = &raw.message {
        if message.is_empty()
            || message.len() > MAX_REJECT_MESSAGE
            || message.chars().any(char::is_control)
        {
            c.err(
                &format!("{path}.reject.message"),
                format!("the message must be 1 to {MAX_REJECT_MESSAGE} bytes of text without control characters"),
            );
        } else {
            out.message = message.clone();
        }
    }
    out
}
