//! `GET /status`: what the status page shows, as JSON (`docs/operating.md`, "Status page"):
//! this node, its Redis sync, every limit with its traffic, and the recent history. The page
//! renders it on the server for the first paint and in the browser on each refresh, so both
//! read the same fields. Read from the node's state and its own metrics; no label and no
//! field carries a client value.

use crate::app::history::{sum_by_label, unix_ms};
use crate::app::node::Node;
use crate::limit::store_top::TopBy;
use crate::request::key::Fingerprint;
use prometheus::core::Collector;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::SystemTime;

/// Keys listed per limit under "Keys rejected most".
const TOP_KEYS: usize = 5;

/// Gauges by the value of their `limit` label.
fn gauges_by_limit(c: &dyn Collector) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for family in c.collect() {
        for m in &family.metric {
            if let Some(p) = m.label.iter().find(|p| p.name() == "limit") {
                out.insert(p.value().to_string(), m.gauge.value());
            }
        }
    }
    out
}

/// The whole answer of `GET /status`.
pub(super) fn status(node: &Node) -> Value {
    json!({
        "now_ms": unix_ms(SystemTime::now()),
        "node": this_node(node),
        "redis": redis(node),
        "limits": limits(node),
        "totals": totals(node),
        "history": history(node),
    })
}

fn this_node(node: &Node) -> Value {
    let rt = node.runtime();
    let reloads = sum_by_label(&node.metrics.config_reloads_total, Some("result"));
    let count = |r: &str| reloads.get(r).copied().unwrap_or(0);
    json!({
        "id": rt.config.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at_ms": node.history.started_ms(),
        "uptime_seconds": node.history.uptime().as_secs(),
        "config_file": node.config_path.display().to_string(),
        "config_loaded_at_ms": unix_ms(rt.loaded_at),
        "reloads": {"success": count("success"), "failure": count("failure")},
    })
}

/// `null` in standalone mode.
fn redis(node: &Node) -> Value {
    if node.runtime().config.redis.is_none() {
        return Value::Null;
    }
    let m = &node.metrics;
    let s = &node.sync_status;
    json!({
        "connected": s.connected(),
        "sync_lag_seconds": m.sync_lag_seconds.get(),
        "sync_round_seconds": node.history.recent_sync_seconds(),
        "sync_rounds": m.sync_duration_seconds.get_sample_count(),
        "sync_errors": m.sync_errors_total.get(),
        "live_nodes": s.live_nodes(),
        "duplicate_node_id": s.duplicate_node_id(),
        "clock_offset_seconds": m.clock_offset_seconds.get(),
    })
}

fn limits(node: &Node) -> Value {
    let rt = node.runtime();
    let m = &node.metrics;
    let stats = node.store.stats(|k| rt.params_of(k));
    let rates = node.history.limit_rates();
    let tokens = sum_by_label(&m.tokens_consumed_total, Some("limit"));
    let rejected = sum_by_label(&m.rate_limited_total, Some("limit"));
    let shared = rt.config.redis.is_some();
    let drift = gauges_by_limit(&m.config_drift);
    let list: Vec<Value> = rt
        .limits
        .iter()
        .map(|l| {
            let (active, min) = stats.get(&l.name).copied().unwrap_or((0, 0));
            let r = rates.get(&l.name).copied().unwrap_or_default();
            json!({
                "name": l.name,
                "kind": kind(&l.params),
                "capacity": l.params.capacity(),
                "refill_per_second": l.params.refill_per_second(),
                "shadow": l.shadow,
                "burst_guard": l.burst_guard,
                "overrides": l.overrides.len(),
                "buckets_active": active,
                "tokens_min": (active > 0).then_some(min),
                "admitted_per_second": r.tokens_per_second,
                "rejected_per_second": r.rejected_per_second,
                "tokens_total": tokens.get(&l.name).copied().unwrap_or(0),
                "rejected_total": rejected.get(&l.name).copied().unwrap_or(0),
                "drift": shared && drift.get(&l.name).is_some_and(|d| *d > 0.0),
            })
        })
        .collect();
    Value::Array(list)
}

fn totals(node: &Node) -> Value {
    let t = crate::app::history::totals_of(&node.metrics);
    json!({"admitted": t.admitted, "rejected": t.rejected})
}

fn history(node: &Node) -> Value {
    let points: Vec<Value> = node
        .history
        .points()
        .into_iter()
        .map(|p| {
            json!({
                "at_ms": p.at_ms,
                "admitted_per_second": p.admitted_per_second,
                "rejected_per_second": p.rejected_per_second,
            })
        })
        .collect();
    let interval_ms = crate::app::history::SAMPLE_EVERY.as_millis() as u64;
    json!({"interval_ms": interval_ms, "points": points})
}

/// Per limit, what `GET /buckets?limit=NAME&top=5&by=rejected` answers (the same store
/// query; keys as fingerprints), for the page's first paint.
pub(super) fn tops(node: &Node) -> HashMap<String, Value> {
    let rt = node.runtime();
    rt.limits
        .iter()
        .map(|l| {
            let found = node
                .store
                .top(&l.name, TOP_KEYS, TopBy::Refused, |k| l.params_for(k));
            let buckets: Vec<Value> = found
                .into_iter()
                .map(|b| {
                    json!({
                        "key": Fingerprint::of(&b.key).to_string(),
                        "tokens": b.tokens,
                        "capacity": b.capacity,
                        "rejected_last_minute": b.refused_last_minute,
                    })
                })
                .collect();
            let answer = json!({"limit": l.name, "by": "rejected", "buckets": buckets});
            (l.name.clone(), answer)
        })
        .collect()
}

/// A limit's kind as the status page shows it: `bucket`, `quota (day)`, `concurrency`.
fn kind(p: &crate::limit::bucket::BucketParams) -> String {
    match p.window() {
        Some(w) => format!("quota ({w})"),
        None if p.is_slots() => "concurrency".into(),
        None => "bucket".into(),
    }
}
