//! Plans (`docs/performance.md`): loading and checking an overrides file of 100,000 keys (the
//! target: well under a second), and the decision on an overridden key against a plain one with
//! 1 and 100,000 overrides (the target: at most one more hash lookup).
//!
//! `cargo bench --bench overrides`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use tollgate::config::Config;
use tollgate::limit::clock::SystemClock;
use tollgate::limit::store::{ChargeResult, Store};
use tollgate::request::decision::{self, Charged, KeyOf};

/// A config whose one limit has `n` overrides in a file under `dir` (`key-0` ..; every tenth
/// unlimited, every hundredth denied, the rest their own capacity).
fn config_with(dir: &std::path::Path, n: usize) -> String {
    let mut plans = serde_json::Map::new();
    for i in 0..n {
        let v = match i {
            i if i % 100 == 99 => json!("deny"),
            i if i % 10 == 9 => json!("unlimited"),
            i => json!({ "capacity": 1_000_000_000u64 + i as u64, "refill_per_second": 1e9 }),
        };
        plans.insert(format!("key-{i}"), v);
    }
    let file = dir.join(format!("plans-{n}.json"));
    std::fs::write(&file, serde_json::Value::Object(plans).to_string()).expect("write plans");
    json!({
        "listeners": [{ "address": "127.0.0.1:8080" }],
        "upstreams": { "api": { "servers": ["127.0.0.1:8000"] } },
        "limits": { "per-api-key": {
            "capacity": 1_000_000_000u64, "refill_per_second": 1e9, "key": ["header:x-api-key"],
            "overrides_file": file } },
        "routes": [{ "name": "default", "upstream": "api", "limits": ["per-api-key"] }],
    })
    .to_string()
}

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_with(dir.path(), 100_000);
    let mut g = c.benchmark_group("overrides/load_and_check");
    g.sample_size(10);
    g.bench_function("100000", |b| {
        b.iter(|| black_box(Config::parse(&text, "bench").expect("valid")))
    });
    g.finish();
}

fn decide(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("overrides/decision");
    for n in [0usize, 1, 100_000] {
        let config = Config::parse(&config_with(dir.path(), n), "bench").expect("valid");
        let l = config.limits[0].spec();
        let store = Store::new(Arc::new(SystemClock), false);
        // key-0 is overridden whenever there are overrides; "plain" never is.
        for key in ["key-0", "plain"] {
            let charged = [Charged {
                limit: &l,
                key: KeyOf::Given(key),
            }];
            let name = format!("{key}/{n}_overrides");
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    let mut result = ChargeResult::default();
                    black_box(decision::decide(
                        &store,
                        black_box(&charged),
                        1,
                        false,
                        &mut result,
                    ));
                    black_box(result)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, load, decide);
criterion_main!(benches);
