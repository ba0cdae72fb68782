//! `tollgate inspect`: reads bucket state from Redis and explains it. Without `--key` it lists
//! buckets with SCAN (never KEYS); with `--limit` and `--key` it shows one bucket: each node's
//! fields, the merged totals, the tokens available now and when the bucket will be full. A
//! quota is shown as of the window holding now (its fields name it; other windows' are left
//! out), and `full_in` is the time until the next window. A key with an override is shown with
//! its own parameters.

use crate::config::Config;
use crate::limit::bucket::{Bucket, BucketParams, State};
use crate::limit::clock::{Clock, SystemClock};
use crate::limit::overrides::Override;
use crate::limit::window::WindowAt;
use crate::shared::conn::ConnError;
use crate::shared::layout::{self, NodeFields};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// What to inspect.
pub struct Query<'a> {
    pub limit: Option<&'a str>,
    pub key: Option<&'a str>,
    pub json: bool,
    /// Most buckets listed without `--key`.
    pub max: usize,
}

/// Why `inspect` has nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The config has no `redis` section (`file` names the config).
    #[error("{file}: no redis section: buckets are node-local (use the admin API's /rating)")]
    NoRedis { file: String },
    /// No runtime to run the reads on.
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No connection to the Redis at `at` (its URLs, passwords masked).
    #[error("cannot reach redis at {at}: {source}")]
    Connect { at: String, source: ConnError },
    /// A command to the Redis at `at` failed.
    #[error("cannot reach redis at {at}: {source}")]
    Redis {
        at: String,
        source: redis::RedisError,
    },
    /// No hash at this Redis key.
    #[error("no bucket at {0} (never used, or expired after a full refill)")]
    NoBucket(String),
    /// `--key` without `--limit`.
    #[error("--key needs --limit")]
    KeyWithoutLimit,
}

/// One bucket (`key`: its client key as the Redis key names it), explained, at `now_ns`.
fn describe(
    redis_key: &str,
    (limit, key): (&str, &str),
    config: &Config,
    hash: &HashMap<String, String>,
    now_ns: i64,
) -> Value {
    // The key's own parameters when it has an override (a plan), else its limit's.
    let configured = config.limit_id(limit).map(|id| {
        let l = config.limit(id);
        match l.overrides.get(key) {
            Some(Override::Bucket(own)) => own.spec.params.clone(),
            _ => l.params.clone(),
        }
    });
    // A quota's fields of the window holding now.
    let window = configured
        .as_ref()
        .and_then(BucketParams::window)
        .map(|w| WindowAt::of(w, now_ns));
    let (nodes, ignored) = layout::parse_hash_at(hash, window.as_ref());
    let mut state = State::default();
    for (n, f) in &nodes {
        state.insert(n, f.counters);
    }
    // Parameters: this config's, else what a node wrote.
    let params = configured.or_else(|| {
        let f: &NodeFields = nodes
            .values()
            .find(|f| f.capacity.is_some() && f.rate_q.is_some())?;
        let (c, r) = (f.capacity?, f.rate_q?);
        BucketParams::new(c, r as f64 / 1e9, c).ok()
    });
    let node_json: BTreeMap<&String, Value> = nodes
        .iter()
        .map(|(n, f)| {
            (
                n,
                json!({
                    "consumed": f.counters.consumed,
                    "attempts": f.counters.attempts,
                    "waste": ({ f.counters.waste }).to_string(),
                    "capacity": f.capacity,
                    "refill_per_second": f.rate_q.map(|r| r as f64 / 1e9),
                    "seen_ms": f.seen_ms,
                }),
            )
        })
        .collect();
    let mut v = json!({
        "redis_key": redis_key,
        "limit": limit,
        "nodes": node_json,
        "total_consumed": state.total_consumed(),
        "total_attempts": nodes.values().map(|f| f.counters.attempts).sum::<u64>(),
        "ignored_fields": ignored,
    });
    if let Some(w) = window {
        v["window"] = json!(w.label());
    }
    if let Some(p) = params {
        let d = Bucket::from_state(&state, &p, now_ns).peek(&p, 0, now_ns);
        v["capacity"] = json!(p.capacity());
        v["refill_per_second"] = json!(p.refill_per_second());
        v["tokens_now"] = json!(d.remaining);
        v["full_in_ms"] = json!(d.full_in_ns.div_ceil(1_000_000));
    }
    let caps: Vec<u64> = nodes.values().filter_map(|f| f.capacity).collect();
    let rates: Vec<u64> = nodes.values().filter_map(|f| f.rate_q).collect();
    v["config_drift"] =
        json!(caps.windows(2).any(|w| w[0] != w[1]) || rates.windows(2).any(|w| w[0] != w[1]));
    v
}

fn text(v: &Value) -> String {
    let mut out = String::new();
    let window = v["window"]
        .as_str()
        .map_or_else(String::new, |w| format!("  window={w}"));
    let _ = writeln!(
        out,
        "{}  limit={}{window}  tokens={}/{}  full_in={}ms  consumed={}{}",
        v["redis_key"].as_str().unwrap_or(""),
        v["limit"].as_str().unwrap_or(""),
        v["tokens_now"],
        v["capacity"],
        v["full_in_ms"],
        v["total_consumed"],
        if v["config_drift"] == json!(true) {
            "  CONFIG DRIFT"
        } else {
            ""
        },
    );
    if let Some(nodes) = v["nodes"].as_object() {
        let _ = writeln!(
            out,
            "  {:<20} {:>12} {:>12} {:>10} {:>12} {:>15}",
            "node", "consumed", "attempts", "capacity", "rate/s", "seen_ms"
        );
        for (n, f) in nodes {
            let _ = writeln!(
                out,
                "  {:<20} {:>12} {:>12} {:>10} {:>12} {:>15}",
                n,
                f["consumed"].to_string(),
                f["attempts"].to_string(),
                f["capacity"].to_string(),
                f["refill_per_second"].to_string(),
                f["seen_ms"].to_string()
            );
        }
    }
    out
}

/// Runs `inspect`; returns what to print.
pub fn run(config: &Config, q: &Query<'_>) -> Result<String, InspectError> {
    let Some(r) = config.redis.as_ref() else {
        return Err(InspectError::NoRedis {
            file: config.source.clone(),
        });
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(InspectError::Runtime)?;
    let results = rt.block_on(collect(config, r, q))?;
    if q.json {
        return Ok(serde_json::to_string_pretty(&results).unwrap_or_default());
    }
    let mut out = String::new();
    for v in &results {
        match v.get("error") {
            Some(e) => {
                let _ = writeln!(out, "{}  error: {e}", v["redis_key"].as_str().unwrap_or(""));
            }
            None => out.push_str(&text(v)),
        }
    }
    let _ = writeln!(out, "{} bucket(s)", results.len());
    Ok(out)
}

/// Reads the buckets the query names, from a standalone server or every primary of a cluster.
async fn collect(
    config: &Config,
    r: &crate::config::RedisConfig,
    q: &Query<'_>,
) -> Result<Vec<Value>, InspectError> {
    let where_ = r
        .urls
        .iter()
        .map(|u| crate::config::mask_url_password(u))
        .collect::<Vec<_>>()
        .join(",");
    let unreachable = |source| InspectError::Redis {
        at: where_.clone(),
        source,
    };
    let mut con = crate::shared::conn::open(r)
        .await
        .map_err(|source| InspectError::Connect {
            at: where_.clone(),
            source,
        })?;
    let prefix = &r.key_prefix;
    let mut results = Vec::new();
    match (q.limit, q.key) {
        (Some(limit), Some(key)) => {
            let rk = layout::redis_key(prefix, limit, key);
            let hash: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&rk)
                .query_async(&mut con)
                .await
                .map_err(unreachable)?;
            if hash.is_empty() {
                return Err(InspectError::NoBucket(rk));
            }
            let mut v = describe(&rk, (limit, key), config, &hash, SystemClock.now_ns());
            v["key"] = json!(key);
            results.push(v);
        }
        (None, Some(_)) => return Err(InspectError::KeyWithoutLimit),
        (limit, None) => {
            let pattern = format!("{prefix}:{}:*", limit.unwrap_or("*"));
            // The registry of nodes matches the pattern too; it is not a bucket.
            let keys = con
                .scan(&pattern, q.max.saturating_add(1))
                .await
                .map_err(unreachable)?;
            for k in keys {
                if results.len() >= q.max {
                    break;
                }
                let Some(rest) = k.strip_prefix(&format!("{prefix}:")) else {
                    continue;
                };
                let Some((limit, key)) = rest.split_once(':') else {
                    continue;
                };
                let hash: redis::RedisResult<HashMap<String, String>> =
                    redis::cmd("HGETALL").arg(&k).query_async(&mut con).await;
                match hash {
                    Ok(h) => {
                        let now = SystemClock.now_ns();
                        results.push(describe(&k, (limit, key), config, &h, now));
                    }
                    Err(e) => results.push(json!({"redis_key": k, "error": e.to_string()})),
                }
            }
        }
    }
    Ok(results)
}

/// `tollgate inspect`: prints what [`run`] finds, or the error (exit 1); a config that does
/// not load exits 2 with its errors.
pub fn command(config: &std::path::Path, q: &Query<'_>) -> std::process::ExitCode {
    use std::process::ExitCode;
    // The config only says where Redis is and what the limits are: upstream names need not
    // resolve here.
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return super::check::report(config, e),
    };
    match run(&cfg, q) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate inspect: {e}");
            ExitCode::FAILURE
        }
    }
}
