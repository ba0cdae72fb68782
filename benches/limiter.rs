//! Micro-benchmarks of the limiter decision (SPEC section 8: median under 200 ns, flat from 1
//! to 1,000,000 live buckets), key extraction and header formatting.
//!
//! `cargo bench --bench limiter`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use std::hint::black_box;
use std::sync::Arc;
use tollgate::bucket::{Bucket, BucketParams};
use tollgate::clock::SystemClock;
use tollgate::config::KeySource;
use tollgate::key::{build_key, RequestView};
use tollgate::limiter::{Charge, LimitSpec, Store};

fn spec() -> LimitSpec {
    LimitSpec {
        name: "per-api-key".into(),
        // Far above the load: every decision admits.
        params: BucketParams::new(1_000_000_000, 1e9, 1_000_000_000).expect("params"),
        shadow: false,
        key: vec![KeySource::Header("x-api-key".into())],
    }
}

fn bucket_core(c: &mut Criterion) {
    let p = spec().params;
    let mut b = Bucket::new(&p, 1_790_000_000_000_000_000);
    let mut now = 1_790_000_000_000_000_000i64;
    c.bench_function("bucket/try_take", |bench| {
        bench.iter(|| {
            now += 1000;
            black_box(b.try_take(&p, 1, black_box(now)))
        })
    });
}

fn store_decision(c: &mut Criterion) {
    let l = spec();
    let mut group = c.benchmark_group("store/charge_existing_bucket");
    for live in [1usize, 1_000, 1_000_000] {
        let store = Store::new(Arc::new(SystemClock), false);
        let keys: Vec<String> = (0..live).map(|i| format!("key-{i}")).collect();
        for k in &keys {
            store.charge(&[Charge {
                limit: &l,
                key: k,
                cost: 1,
            }]);
        }
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(live), &live, |bench, &live| {
            bench.iter(|| {
                i = (i + 7919) % live;
                black_box(store.charge(&[Charge {
                    limit: &l,
                    key: &keys[i],
                    cost: 1,
                }]))
            })
        });
    }
    group.finish();
}

fn key_and_headers(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-api-key",
        HeaderValue::from_static("sk-live-0123456789abcdef"),
    );
    headers.insert("host", HeaderValue::from_static("api.example.com"));
    let sources = vec![KeySource::Header("x-api-key".into()), KeySource::ClientIp];
    let view = RequestView {
        method: "GET",
        path: "/rating/42",
        query: Some("lang=en"),
        headers: &headers,
        client_ip: "192.0.2.7".parse().expect("ip"),
        route: "rating",
    };
    c.bench_function("key/build_header_and_ip", |b| {
        b.iter(|| black_box(build_key(&sources, &view)))
    });
    let l = spec();
    let d = tollgate::bucket::Decision {
        allowed: true,
        remaining: 4987,
        retry_after_ns: 0,
        full_in_ns: 13_000_000,
        never: false,
    };
    c.bench_function("headers/ratelimit_value", |b| {
        b.iter(|| black_box(tollgate::headers::ratelimit_value(&l.name, &d)))
    });
}

criterion_group!(benches, bucket_core, store_decision, key_and_headers);
criterion_main!(benches);
