//! The operations files (`docker/`, `ops/`, the example configs in `conf/`) checked against the
//! real gateway, so that they cannot drift from it unnoticed:
//!
//! - every `tollgate_*` metric (and every label matcher on one) named by the Grafana dashboard
//!   or the Prometheus alert rules is exported by a running gateway with Redis;
//! - every shipped config passes `tollgate check`;
//! - the compose stack is consistent with its Dockerfile, node configs and Prometheus config;
//! - with `promtool` (required: scripts/test.sh installs it, and the test fails without it):
//!   the rules and the Prometheus config pass `promtool check`, every dashboard query parses
//!   as PromQL, and each alert fires on a synthetic failure and stays quiet on healthy series
//!   (`promtool test rules`).
//!
//! No YAML parser is available to the tests, so the YAML files are read line by line; they are
//! written in a plain style (block mappings, JSON-compatible flow sequences) that this reads.

mod common;

use common::{get, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const DASHBOARD: &str = "ops/grafana/tollgate-dashboard.json";
const ALERTS: &str = "ops/prometheus/alerts.yml";
const COMPOSE: &str = "docker/compose.yaml";
const DOCKERFILE: &str = "docker/Dockerfile";
const PROMETHEUS: &str = "docker/prometheus.yml";

/// Labels that Prometheus attaches to every scraped series (`node` by the compose stack's
/// relabelling): queries may use them although the gateway does not export them.
const TARGET_LABELS: [&str; 3] = ["instance", "job", "node"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn json_file(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `dir/*.json` relative to the repository root, sorted.
fn json_files(dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .map(|e| e.expect("read a directory entry").file_name())
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Metric references in PromQL (and in prose that quotes PromQL).

/// One mention of a metric: its name as written and the label matchers that follow it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MetricRef {
    name: String,
    /// (label, operator, value) of each matcher in `{...}`.
    matchers: Vec<(String, String, String)>,
}

impl MetricRef {
    /// The metric family: the histogram series suffixes removed.
    fn family(&self) -> &str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| self.name.strip_suffix(s))
            .unwrap_or(&self.name)
    }
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every `tollgate_[a-z_]+` in `text`, with the matchers of a `{...}` right after it.
fn metric_refs(text: &str) -> Vec<MetricRef> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("tollgate_") {
        let start = i + pos;
        i = start + "tollgate_".len();
        if start > 0 && is_name_char(b[start - 1]) {
            continue; // part of a longer word
        }
        let mut end = i;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        if end == i || (end < b.len() && is_name_char(b[end])) {
            continue; // not a [a-z_]+ metric name
        }
        let mut r = MetricRef {
            name: text[start..end].to_string(),
            matchers: Vec::new(),
        };
        if b.get(end) == Some(&b'{') {
            let (matchers, after) = parse_matchers(text, end + 1)
                .unwrap_or_else(|e| panic!("bad label matchers after {}: {e}", r.name));
            r.matchers = matchers;
            end = after;
        }
        out.push(r);
        i = end;
    }
    out
}

/// Parses `label op "value", ...}` from `from` (just after the `{`); returns the matchers and
/// the index after the closing `}`. Values may hold braces (`{{ $labels.route }}`).
#[allow(clippy::type_complexity)]
fn parse_matchers(
    text: &str,
    from: usize,
) -> Result<(Vec<(String, String, String)>, usize), String> {
    let b = text.as_bytes();
    let mut i = from;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        match b.get(i) {
            Some(b'}') => return Ok((out, i + 1)),
            Some(b',') => {
                i += 1;
                continue;
            }
            None => return Err("unterminated {".into()),
            _ => {}
        }
        let name_start = i;
        while i < b.len() && is_name_char(b[i]) {
            i += 1;
        }
        let name = text[name_start..i].to_string();
        if name.is_empty() {
            return Err(format!("expected a label name at {:?}", &text[i..]));
        }
        skip_ws(&mut i);
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = text[op_start..i].to_string();
        if !matches!(op.as_str(), "=" | "!=" | "=~" | "!~") {
            return Err(format!("bad matcher operator {op:?} for label {name}"));
        }
        skip_ws(&mut i);
        let quote = *b.get(i).ok_or("missing label value")?;
        if quote != b'"' && quote != b'\'' {
            return Err(format!("label {name}: expected a quoted value"));
        }
        i += 1;
        let value_start = i;
        while i < b.len() && b[i] != quote {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        if i >= b.len() {
            return Err(format!("label {name}: unterminated value"));
        }
        out.push((name, op, text[value_start..i].to_string()));
        i += 1;
    }
}

/// What a gateway exports: for each series name (`_bucket` etc. included), the labels seen
/// on it with their values, and the families declared by `# TYPE`.
#[derive(Debug, Default)]
struct Exposition {
    families: BTreeSet<String>,
    series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                e.families.insert(name.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let labels = e.series.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let (matchers, _) = parse_matchers(line, end + 1)
                .unwrap_or_else(|err| panic!("bad exposition line {line:?}: {err}"));
            for (name, _, value) in matchers {
                labels.entry(name).or_default().insert(value);
            }
        }
    }
    e
}

/// Why `r` would select nothing on a gateway exporting `e`, if it would.
fn missing(r: &MetricRef, e: &Exposition) -> Option<String> {
    if !e.families.contains(r.family()) {
        return Some(format!("{}: no such metric", r.name));
    }
    // A histogram family named without a suffix (in prose) is exported as NAME_count etc.
    let series = e
        .series
        .get(&r.name)
        .or_else(|| e.series.get(&format!("{}_count", r.family())));
    let Some(series) = series else {
        return Some(format!("{}: no such series", r.name));
    };
    for (label, op, value) in &r.matchers {
        if TARGET_LABELS.contains(&label.as_str()) {
            continue;
        }
        let Some(values) = series.get(label) else {
            return Some(format!("{}: no label {label:?}", r.name));
        };
        // A literal equality (no template variable) must name a value the gateway exports.
        let literal = !value.contains('$') && !value.contains("{{");
        if op == "=" && literal && !values.contains(value) {
            return Some(format!(
                "{}: label {label}=\"{value}\" never exported (values seen: {values:?})",
                r.name
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The dashboard and the alert rules.

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("dashboard.panels is a list") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, PromQL) of every query of the dashboard, template variables' included.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str();
            let expr = expr.unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            out.push((title.to_string(), expr.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            let q = q.unwrap_or_else(|| panic!("variable {}: no query", v["name"]));
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// Every string anywhere in a JSON value (titles, descriptions and queries alike).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// One alerting rule, as read line by line from the rules file.
#[derive(Debug, Default)]
struct Alert {
    name: String,
    expr: String,
    has_for: bool,
    severity: Option<String>,
    summary: bool,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The alerting rules of a Prometheus rules file: `- alert: NAME` items with `expr:` either
/// inline or as a block scalar (`|`, `>`) of more indented lines.
fn alerts(text: &str) -> Vec<Alert> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<Alert> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        i += 1;
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push(Alert {
                name: name.trim().to_string(),
                ..Alert::default()
            });
            continue;
        }
        let Some(a) = out.last_mut() else { continue };
        if let Some(v) = t.strip_prefix("expr:") {
            let v = v.trim();
            if v.starts_with('|') || v.starts_with('>') {
                let mut body = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
                {
                    body.push(lines[i].trim());
                    i += 1;
                }
                a.expr = body.join("\n").trim().to_string();
            } else {
                a.expr = v.to_string();
            }
        } else if t.starts_with("for:") {
            a.has_for = true;
        } else if let Some(v) = t.strip_prefix("severity:") {
            a.severity = Some(v.trim().to_string());
        } else if t.starts_with("summary:") {
            a.summary = true;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// (a) Every metric the dashboard and the alerts name exists on a real gateway.

/// A gateway with Redis and an upstream, after an allowed, a rate-limited and an unrouted
/// request and at least one Redis sync: its `/metrics` text.
fn live_metrics() -> String {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let config = json!({
        "node_id": "ops-files",
        "redis": { "url": redis.url, "sync_interval_ms": 50 },
        "upstreams": { "rating-api": { "servers": [up.addr.to_string()] } },
        "limits": {
            "per-api-key": { "capacity": 1, "refill_per_second": 0.001, "key": ["header:x-api-key"] },
            "per-ip": { "capacity": 1000, "refill_per_second": 100, "key": ["client_ip"] }
        },
        "routes": [
            { "name": "rating", "match": { "path_prefix": "/rating" }, "upstream": "rating-api",
              "limits": ["per-api-key", "per-ip"] }
        ]
    });
    let gw = Gateway::builder(config).start();
    let key = [("x-api-key", "ops")];
    assert_eq!(get(gw.addr, "/rating/1", &key).status, 200);
    assert_eq!(get(gw.addr, "/rating/1", &key).status, 429);
    assert_eq!(get(gw.addr, "/elsewhere", &[]).status, 404);

    let mut text = String::new();
    let ready = wait_until(Duration::from_secs(15), || {
        let r = get(gw.admin, "/metrics", &[]);
        text = r.text();
        r.status == 200
            && text.contains("tollgate_redis_up 1")
            && text.contains("tollgate_rate_limited_total{")
            && text.contains("tollgate_bucket_tokens_min{")
            && text.contains("tollgate_config_drift{")
            // Counted when each response ends, which may be after the client has read it.
            && text.contains("outcome=\"limited\"")
            && text.contains("outcome=\"no_route\"")
            && text.contains("tollgate_request_duration_seconds_count{route=\"rating\"} 2")
            && text.lines().any(|l| {
                l.starts_with("tollgate_sync_duration_seconds_count") && !l.ends_with(" 0")
            })
    });
    assert!(
        ready,
        "the gateway never showed a synced Redis and a 429 in /metrics:\n{text}"
    );
    text
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    // The files first: a syntax error should not wait for a gateway to start.
    let d = dashboard();
    let mut texts = Vec::new();
    strings(&d, &mut texts);
    let dash_refs: Vec<MetricRef> = texts.iter().flat_map(|s| metric_refs(s)).collect();
    let alerts_text = read(ALERTS);
    let rules = alerts(&alerts_text);
    let alert_refs = metric_refs(&alerts_text);

    // Each required view and alert is there (so that deleting one is a visible change).
    let dash_families: BTreeSet<&str> = dash_refs.iter().map(MetricRef::family).collect();
    for m in [
        "tollgate_bucket_tokens_min",
        "tollgate_limit_capacity",
        "tollgate_rate_limited_total",
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_sync_duration_seconds",
        "tollgate_sync_lag_seconds",
        "tollgate_redis_up",
        "tollgate_config_drift",
        "tollgate_buckets_active",
        "tollgate_sync_errors_total",
    ] {
        assert!(dash_families.contains(m), "{DASHBOARD} shows no {m}");
    }
    let alert_exprs: String = rules.iter().map(|a| a.expr.as_str()).collect();
    for m in [
        "tollgate_bucket_tokens_min",
        "tollgate_sync_duration_seconds_bucket",
        "tollgate_requests_total{outcome=\"limited\"}",
        "tollgate_redis_up",
        "tollgate_config_drift",
        "tollgate_sync_errors_total",
    ] {
        assert!(alert_exprs.contains(m), "no alert expression uses {m}");
    }
    assert!(rules.len() >= 6, "{ALERTS}: {} alerts", rules.len());
    for a in &rules {
        assert!(!a.expr.is_empty(), "alert {}: no expr", a.name);
        assert!(
            a.has_for,
            "alert {}: no `for:` (fires on one sample)",
            a.name
        );
        assert!(a.severity.is_some(), "alert {}: no severity label", a.name);
        assert!(a.summary, "alert {}: no summary annotation", a.name);
    }
    let names: BTreeSet<&str> = rules.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names.len(),
        rules.len(),
        "duplicate alert names in {ALERTS}"
    );
    for n in &names {
        assert!(
            ALERT_TESTS.contains(&format!("alertname: {n}")),
            "alert {n} has no case in ALERT_TESTS (the promtool unit tests below)"
        );
    }

    // Then the gateway: every mention must select something it exports.
    let exposition = parse_exposition(&live_metrics());
    let mut problems = BTreeSet::new();
    for (file, refs) in [(DASHBOARD, &dash_refs), (ALERTS, &alert_refs)] {
        assert!(!refs.is_empty(), "{file} names no tollgate_ metric");
        for r in refs {
            if let Some(p) = missing(r, &exposition) {
                problems.insert(format!("{file}: {p}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metrics named in the ops files but not exported by the gateway:\n{}\nexported: {:?}",
        problems.into_iter().collect::<Vec<_>>().join("\n"),
        exposition.families
    );
}

#[test]
fn dashboard_is_a_well_formed_grafana_dashboard() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains("datasource"), "no datasource variable");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64()),
            "duplicate panel id in {title:?}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        assert!(x + w <= 24, "panel {title:?} is wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title:?}: the datasource is not the variable"
        );
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {title:?} has no query"
        );
    }
    // Template variables used in queries are defined.
    for (title, q) in dashboard_queries(&d) {
        for part in q.split('$').skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| is_name_char(*c as u8))
                .collect();
            if !name.starts_with("__") {
                assert!(
                    vars.contains(name.as_str()),
                    "{title}: ${name} is not a variable"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Every shipped config passes `tollgate check`.

#[test]
fn every_shipped_config_passes_check() {
    let mut files = json_files("conf");
    files.extend(json_files("docker/conf"));
    for expected in [
        "conf/tollgate-cluster.json",
        "conf/tollgate-tls.json",
        "docker/conf/edge-1.json",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} is missing");
    }
    let mut failures = Vec::new();
    for f in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["check", "-c", f])
            .current_dir(repo())
            .output()
            .expect("run tollgate check");
        if !out.status.success() {
            failures.push(format!(
                "{f}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let cluster = json_file(&repo().join("conf/tollgate-cluster.json"));
    assert_eq!(cluster["redis"]["cluster"], true);
    assert!(cluster["redis"]["urls"]
        .as_array()
        .is_some_and(|u| u.len() > 1));
    // The TLS example names only files of the repository, by paths from its root.
    let tls = read("conf/tollgate-tls.json");
    let tls_json: Value = serde_json::from_str(&tls).expect("conf/tollgate-tls.json is JSON");
    let mut paths = Vec::new();
    for l in tls_json["listeners"].as_array().into_iter().flatten() {
        for k in ["cert", "key"] {
            paths.extend(l["tls"][k].as_str());
        }
    }
    for u in tls_json["upstreams"].as_object().into_iter().flatten() {
        paths.extend(u.1["ca_file"].as_str());
    }
    assert!(
        paths.len() >= 3,
        "the TLS example has no TLS files: {paths:?}"
    );
    for p in paths {
        assert!(
            !p.starts_with('/') && repo().join(p).is_file(),
            "conf/tollgate-tls.json: {p} is not a file of the repository"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The compose stack is consistent.

/// A service of the compose file: its own lines (merged anchors are not expanded).
#[derive(Debug, Default)]
struct Service {
    lines: Vec<String>,
}

impl Service {
    /// The value of `key:` on one of the service's lines (first match).
    fn value(&self, key: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let t = l.trim().strip_prefix(key)?.strip_prefix(':')?;
            Some(t.trim().to_string())
        })
    }

    /// A JSON-style flow sequence (`["a", "b"]`) under `key:`.
    fn list(&self, key: &str) -> Option<Vec<String>> {
        let v = self.value(key)?;
        Some(serde_json::from_str(&v).unwrap_or_else(|e| panic!("{key}: {v}: {e}")))
    }

    /// The block-sequence items under `key:` (`- item` lines), unquoted.
    fn items(&self, key: &str) -> Vec<String> {
        let Some(start) = self
            .lines
            .iter()
            .position(|l| l.trim() == format!("{key}:"))
        else {
            return Vec::new();
        };
        let base = indent(&self.lines[start]);
        self.lines[start + 1..]
            .iter()
            .take_while(|l| indent(l) > base)
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|s| s.trim().trim_matches('"').to_string())
            .collect()
    }

    /// (source, target) of each bind mount (`- ./file:/path[:ro]`).
    fn binds(&self) -> Vec<(String, String)> {
        self.items("volumes")
            .into_iter()
            .filter(|v| v.starts_with('.'))
            .map(|v| {
                let mut parts = v.split(':');
                let src = parts.next().unwrap_or_default().to_string();
                let dst = parts.next().unwrap_or_default().to_string();
                (src, dst)
            })
            .collect()
    }
}

/// The services of a compose file, by name.
fn services(text: &str) -> BTreeMap<String, Service> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut inside = false;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if indent(line) == 0 {
            inside = line.trim_end() == "services:";
            current = None;
            continue;
        }
        if !inside {
            continue;
        }
        if indent(line) == 2 && line.trim_end().ends_with(':') {
            let name = line.trim().trim_end_matches(':').to_string();
            out.insert(name.clone(), Service::default());
            current = Some(name);
        } else if let Some(name) = &current {
            out.get_mut(name)
                .expect("current service")
                .lines
                .push(line.to_string());
        }
    }
    out
}

/// `[[bin]]`, `[[bench]]`, `[[example]]`, `[[test]]` sections of Cargo.toml: (kind, name, path).
fn cargo_targets() -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut kind: Option<String> = None;
    let mut section: (String, String) = Default::default();
    let flush = |kind: &Option<String>, s: &(String, String), out: &mut Vec<_>| {
        if let Some(k) = kind {
            let dir = match k.as_str() {
                "bench" => "benches",
                "example" => "examples",
                "test" => "tests",
                _ => "src/bin",
            };
            let path = if s.1.is_empty() {
                format!("{dir}/{}.rs", s.0)
            } else {
                s.1.clone()
            };
            out.push((k.clone(), s.0.clone(), path));
        }
    };
    for line in read("Cargo.toml").lines() {
        let t = line.trim();
        if t.starts_with('[') {
            flush(&kind, &section, &mut out);
            kind = t
                .strip_prefix("[[")
                .and_then(|r| r.strip_suffix("]]"))
                .map(str::to_string);
            section = Default::default();
        } else if let Some((k, v)) = t.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "name" => section.0 = v,
                "path" => section.1 = v,
                _ => {}
            }
        }
    }
    flush(&kind, &section, &mut out);
    out
}

/// The host of a `redis://[user:pass@]host[:port][/db]` URL.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .to_string()
}

#[test]
fn compose_stack_is_consistent() {
    let compose = read(COMPOSE);
    let svcs = services(&compose);
    let docker_dir = repo().join("docker");
    for required in ["redis", "rating-api", "prometheus"] {
        assert!(
            svcs.contains_key(required),
            "{COMPOSE}: no {required} service"
        );
    }

    // Bind mounts name files of the repository (paths relative to docker/).
    for (name, s) in &svcs {
        for (src, dst) in s.binds() {
            assert!(
                docker_dir.join(&src).is_file(),
                "service {name} mounts {src}, which does not exist"
            );
            assert!(dst.starts_with('/'), "service {name}: mount target {dst}");
        }
    }

    // The Dockerfile builds every binary, and the image holds the ones compose runs.
    let dockerfile = read(DOCKERFILE);
    let bins: BTreeSet<String> = cargo_targets()
        .into_iter()
        .filter(|t| t.0 == "bin")
        .map(|t| t.1)
        .collect();
    assert!(bins.contains("tollgate") && bins.contains("rating-api"));
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile runs cargo build");
    assert!(build.contains("--release") && build.contains("--locked"));
    let copy_bins = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=builder"))
        .expect("the runtime stage copies the binaries from the builder");
    let entrypoint: Vec<String> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .map(|v| serde_json::from_str(v).expect("ENTRYPOINT in exec form"))
        .expect("the Dockerfile has an ENTRYPOINT");
    let mut run = vec![entrypoint[0].clone()];
    for s in svcs.values() {
        run.extend(s.list("entrypoint").map(|e| e[0].clone()));
    }
    for b in &run {
        assert!(bins.contains(b), "compose runs {b}, which is no [[bin]]");
        assert!(
            build.contains("--bins") || build.contains(&format!("--bin {b}")),
            "the Dockerfile does not build {b}: {build}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{b}"))
                && copy_bins
                    .split_whitespace()
                    .any(|w| w.ends_with(&format!("/{b}"))),
            "the image does not hold {b}"
        );
    }
    // What cargo needs is copied into the builder: every target's directory.
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            copied.contains(&needed),
            "the Dockerfile does not copy {needed}"
        );
    }
    for (kind, name, path) in cargo_targets() {
        let top = path.split('/').next().unwrap_or_default();
        assert!(
            copied.iter().any(|c| c.trim_end_matches('/') == top),
            "[[{kind}]] {name} is at {path}, but the Dockerfile does not copy {top}/"
        );
        assert!(repo().join(&path).is_file(), "[[{kind}]] {name}: no {path}");
    }
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "the image runs as root"
    );

    // The tollgate nodes: services that mount a node config where their command reads it.
    let redis_services: BTreeSet<&str> = svcs
        .iter()
        .filter(|(_, s)| s.value("image").is_some_and(|i| i.starts_with("redis")))
        .map(|(n, _)| n.as_str())
        .collect();
    let rating = &svcs["rating-api"];
    let rating_ip = rating
        .value("ipv4_address")
        .expect("rating-api has a fixed address");
    let rating_cmd = rating.list("command").expect("rating-api command");
    let rating_port = rating_cmd
        .iter()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("rating-api --listen HOST:PORT");
    assert_eq!(rating_cmd[1], format!("0.0.0.0:{rating_port}"));

    let mut node_ids = BTreeMap::new();
    let mut admin_targets = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    let mut limits = BTreeSet::new();
    for (name, s) in &svcs {
        let Some((src, dst)) = s
            .binds()
            .into_iter()
            .find(|(src, _)| src.starts_with("./conf/") && src.ends_with(".json"))
        else {
            continue;
        };
        let cmd = s.list("command").expect("a tollgate node has a command");
        let config_arg = cmd
            .iter()
            .skip_while(|a| *a != "-c")
            .nth(1)
            .expect("run -c FILE");
        assert_eq!(cmd[0], "run", "service {name}");
        assert_eq!(config_arg, &dst, "service {name} mounts {src} at {dst}");
        let cfg = json_file(&docker_dir.join(&src));
        let id = cfg["node_id"].as_str().expect("node_id").to_string();
        if let Some(other) = node_ids.insert(id.clone(), name.clone()) {
            panic!("services {other} and {name} share node_id {id}");
        }
        let redis_url = cfg["redis"]["url"].as_str().expect("redis.url");
        assert!(
            redis_services.contains(url_host(redis_url).as_str()),
            "{src}: redis host of {redis_url} is not a redis service of {COMPOSE}"
        );
        for server in cfg["upstreams"]["rating-api"]["servers"]
            .as_array()
            .expect("a rating-api upstream")
        {
            assert_eq!(
                server.as_str(),
                Some(format!("{rating_ip}:{rating_port}").as_str()),
                "{src}: the upstream is not the rating-api service"
            );
        }
        let listener = cfg["listeners"][0]["address"].as_str().expect("a listener");
        let port = listener.rsplit_once(':').expect("ip:port").1;
        assert!(
            s.items("ports")
                .iter()
                .any(|p| p.ends_with(&format!(":{port}"))),
            "service {name} does not publish its listener port {port}"
        );
        let admin = cfg["admin"]["address"].as_str().expect("admin.address");
        let admin_port = admin.rsplit_once(':').expect("ip:port").1;
        admin_targets.insert(format!("{name}:{admin_port}"));
        tokens.insert(
            cfg["admin"]["token"]
                .as_str()
                .expect("admin.token")
                .to_string(),
        );
        limits.insert(cfg["limits"].to_string());
    }
    assert_eq!(node_ids.len(), 3, "three tollgate nodes: {node_ids:?}");
    assert_eq!(
        limits.len(),
        1,
        "the nodes' limits differ (config drift from the start)"
    );
    assert_eq!(tokens.len(), 1, "the nodes have different admin tokens");
    let token = tokens.into_iter().next().unwrap_or_default();

    // Prometheus scrapes every node's admin listener with that token and loads the rules
    // from where compose mounts them.
    let prom = read(PROMETHEUS);
    let targets: BTreeSet<String> = prom
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- "))
        .map(|l| l.trim_matches('"').to_string())
        .filter(|l| {
            l.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    assert_eq!(targets, admin_targets, "{PROMETHEUS} scrape targets");
    assert!(
        prom.lines()
            .any(|l| l.trim() == format!("credentials: {token}")),
        "{PROMETHEUS} does not scrape with the nodes' admin token"
    );
    assert!(
        compose.contains(&format!("Bearer {token}")),
        "the node health checks do not send the admin token"
    );
    let prom_svc = &svcs["prometheus"];
    let binds = prom_svc.binds();
    let config_target = binds
        .iter()
        .find(|(src, _)| src == "./prometheus.yml")
        .map(|(_, dst)| dst.clone())
        .expect("compose mounts docker/prometheus.yml");
    let config_dir = config_target.rsplit_once('/').expect("absolute").0;
    let rules_target = binds
        .iter()
        .find(|(src, _)| src == &format!("../{ALERTS}"))
        .map(|(_, dst)| dst.clone())
        .expect("compose mounts the alert rules");
    let rule_globs: Vec<String> = {
        let lines: Vec<&str> = prom.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim() == "rule_files:")
            .expect("rule_files");
        lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with(' ') || l.trim().is_empty())
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|g| g.trim_matches('"').to_string())
            .collect()
    };
    let loaded = rule_globs.iter().any(|g| {
        let g = if g.starts_with('/') {
            g.clone()
        } else {
            format!("{config_dir}/{g}")
        };
        let (prefix, suffix) = g.split_once('*').unwrap_or((&g, ""));
        rules_target.starts_with(prefix) && rules_target.ends_with(suffix)
    });
    assert!(
        loaded,
        "rules mounted at {rules_target}, but {PROMETHEUS} loads {rule_globs:?}"
    );
    assert!(
        compose.contains(&format!("config.file={config_target}")),
        "prometheus is not started with {config_target}"
    );
}

// ---------------------------------------------------------------------------------------------
// (d) promtool (required: a missing promtool fails these tests).

/// `promtool ARGS` from the repository root: (success, stdout and stderr). Panics when
/// promtool cannot be run: these checks are part of the suite, and scripts/test.sh installs
/// promtool (Debian's `prometheus` package), so a missing one is a broken setup, not a skip.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): it is required by these tests; install it with \
                 `apt-get install prometheus` (scripts/test.sh does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The rules without their annotations (promtool's unit tests compare annotations exactly,
/// and the prose is not what these tests are about).
fn without_annotations(rules: &str) -> String {
    let mut out = Vec::new();
    let mut skip_deeper_than: Option<usize> = None;
    for line in rules.lines() {
        if let Some(level) = skip_deeper_than {
            if line.trim().is_empty() || indent(line) > level {
                continue;
            }
            skip_deeper_than = None;
        }
        if line.trim() == "annotations:" {
            skip_deeper_than = Some(indent(line));
            continue;
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// Synthetic series (one node, 1-minute samples for 20 minutes) on which every alert fires,
/// and healthy ones on which none does.
const ALERT_TESTS: &str = r#"
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="tollgate",instance="n:9091"}'
        values: '0x20'
      - series: 'tollgate_redis_up{job="tollgate",instance="n:9091"}'
        values: '0x20'
      - series: 'tollgate_config_drift{job="tollgate",instance="n:9091",limit="per-ip"}'
        values: '1x20'
      - series: 'tollgate_duplicate_node_id{job="tollgate",instance="n:9091"}'
        values: '1x20'
      - series: 'tollgate_sync_errors_total{job="tollgate",instance="n:9091"}'
        values: '0+10x20'
      - series: 'tollgate_bucket_tokens_min{job="tollgate",instance="n:9091",limit="per-ip"}'
        values: '5x20'
      - series: 'tollgate_limit_capacity{job="tollgate",instance="n:9091",limit="per-ip"}'
        values: '100x20'
      - series: 'tollgate_requests_total{job="tollgate",instance="n:9091",route="rating",outcome="allowed"}'
        values: '0+600x20'
      - series: 'tollgate_requests_total{job="tollgate",instance="n:9091",route="rating",outcome="limited"}'
        values: '0+300x20'
      - series: 'tollgate_sync_duration_seconds_bucket{job="tollgate",instance="n:9091",le="0.5"}'
        values: '0+1x20'
      - series: 'tollgate_sync_duration_seconds_bucket{job="tollgate",instance="n:9091",le="1"}'
        values: '0+2x20'
      - series: 'tollgate_sync_duration_seconds_bucket{job="tollgate",instance="n:9091",le="+Inf"}'
        values: '0+60x20'
    alert_rule_test:
      - eval_time: 20m
        alertname: TollgateDown
        exp_alerts:
          - exp_labels: { severity: critical, job: tollgate, instance: "n:9091" }
      - eval_time: 20m
        alertname: TollgateRedisDown
        exp_alerts:
          - exp_labels: { severity: critical, job: tollgate, instance: "n:9091" }
      - eval_time: 20m
        alertname: TollgateConfigDrift
        exp_alerts:
          - exp_labels: { severity: warning, limit: per-ip }
      - eval_time: 20m
        alertname: TollgateDuplicateNodeId
        exp_alerts:
          - exp_labels: { severity: critical, job: tollgate, instance: "n:9091" }
      - eval_time: 20m
        alertname: TollgateSyncErrors
        exp_alerts:
          - exp_labels: { severity: warning, job: tollgate, instance: "n:9091" }
      - eval_time: 20m
        alertname: TollgateTokensLow
        exp_alerts:
          - exp_labels: { severity: warning, job: tollgate, instance: "n:9091", limit: per-ip }
      - eval_time: 20m
        alertname: TollgateRateLimitedSpike
        exp_alerts:
          - exp_labels: { severity: warning, route: rating }
      - eval_time: 20m
        alertname: TollgateSyncSlow
        exp_alerts:
          - exp_labels: { severity: warning, instance: "n:9091" }
  - interval: 1m
    input_series:
      - series: 'up{job="tollgate",instance="n:9091"}'
        values: '1x20'
      - series: 'tollgate_redis_up{job="tollgate",instance="n:9091"}'
        values: '1x20'
      - series: 'tollgate_config_drift{job="tollgate",instance="n:9091",limit="per-ip"}'
        values: '0x20'
      - series: 'tollgate_duplicate_node_id{job="tollgate",instance="n:9091"}'
        values: '0x20'
      - series: 'tollgate_sync_errors_total{job="tollgate",instance="n:9091"}'
        values: '0 1 1 1 1 1 1 1 1 1 1 2 2 2 2 2 2 2 2 2 2'
      - series: 'tollgate_bucket_tokens_min{job="tollgate",instance="n:9091",limit="per-ip"}'
        values: '80x20'
      - series: 'tollgate_limit_capacity{job="tollgate",instance="n:9091",limit="per-ip"}'
        values: '100x20'
      - series: 'tollgate_requests_total{job="tollgate",instance="n:9091",route="rating",outcome="allowed"}'
        values: '0+600x20'
      - series: 'tollgate_requests_total{job="tollgate",instance="n:9091",route="rating",outcome="limited"}'
        values: '0+6x20'
      - series: 'tollgate_sync_duration_seconds_bucket{job="tollgate",instance="n:9091",le="0.005"}'
        values: '0+590x20'
      - series: 'tollgate_sync_duration_seconds_bucket{job="tollgate",instance="n:9091",le="1"}'
        values: '0+600x20'
      - series: 'tollgate_sync_duration_seconds_bucket{job="tollgate",instance="n:9091",le="+Inf"}'
        values: '0+600x20'
    alert_rule_test:
      - { eval_time: 20m, alertname: TollgateDown, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateRedisDown, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateConfigDrift, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateDuplicateNodeId, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateSyncErrors, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateTokensLow, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateRateLimitedSpike, exp_alerts: [] }
      - { eval_time: 20m, alertname: TollgateSyncSlow, exp_alerts: [] }
"#;

#[test]
fn promtool_accepts_rules_config_and_dashboard_queries() {
    let run = |args: &[&str]| {
        let (ok, out) = promtool(args);
        assert!(ok, "promtool {}:\n{out}", args.join(" "));
        out
    };
    run(&["check", "rules", ALERTS]);

    // The Prometheus config, with the rules where compose mounts them relative to it.
    let dir = tempfile::tempdir().expect("temp dir");
    let compose = read(COMPOSE);
    let prom_svc = &services(&compose)["prometheus"];
    let binds = prom_svc.binds();
    let target_of = |src: &str| {
        binds
            .iter()
            .find(|(s, _)| s == src)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("compose does not mount {src}"))
    };
    let config_target = target_of("./prometheus.yml");
    let root = Path::new(&config_target).parent().expect("a directory");
    for (src, repo_path) in [
        ("./prometheus.yml", PROMETHEUS),
        ("../ops/prometheus/alerts.yml", ALERTS),
    ] {
        let target = target_of(src);
        let rel = Path::new(&target)
            .strip_prefix(root)
            .unwrap_or_else(|_| panic!("{target} is not under {}", root.display()));
        let dest = dir.path().join(rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(repo().join(repo_path), &dest).expect("copy");
    }
    let config = dir.path().join("prometheus.yml");
    let out = run(&["check", "config", config.to_str().expect("utf-8 path")]);
    assert!(
        out.contains("rules found") && !out.contains(" 0 rules found"),
        "prometheus.yml loads no rules:\n{out}"
    );

    // Every dashboard query is valid PromQL (as a recording rule, variables filled in).
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, q)) in dashboard_queries(&d).into_iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$route", ".*")
            .replace("$limit", ".*");
        let q = match q.strip_prefix("label_values(") {
            // label_values(METRIC, LABEL) is Grafana's, not PromQL: check the metric part.
            Some(args) => args
                .rsplit_once(',')
                .expect("label_values(m, l)")
                .0
                .to_string(),
            None => q,
        };
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            Value::String(q)
        ));
    }
    let dash_rules = dir.path().join("dashboard-rules.yml");
    std::fs::write(&dash_rules, rules).expect("write dashboard rules");
    run(&["check", "rules", dash_rules.to_str().expect("utf-8 path")]);

    // Each alert fires on a failure and stays quiet when healthy.
    let stripped = dir.path().join("alerts-no-annotations.yml");
    std::fs::write(&stripped, without_annotations(&read(ALERTS))).expect("write rules");
    let tests = dir.path().join("alert-tests.yml");
    std::fs::write(
        &tests,
        format!(
            "rule_files:\n  - {}\n{ALERT_TESTS}",
            Value::String(stripped.display().to_string())
        ),
    )
    .expect("write rule tests");
    run(&["test", "rules", tests.to_str().expect("utf-8 path")]);
}
