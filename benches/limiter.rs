//! Micro-benchmarks of the limiter decision (`docs/performance.md`, targets: median under 200 ns, flat from 1
//! to 1,000,000 live buckets), key extraction and header formatting.
//!
//! `cargo bench --bench limiter`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use std::hint::black_box;
use std::sync::Arc;
use tollgate::config::KeySource;
use tollgate::limit::bucket::{Bucket, BucketParams};
use tollgate::limit::clock::SystemClock;
use tollgate::limit::store::{Charge, ChargeResult, LimitSpec, Store};
use tollgate::request::decision::{self, Charged, KeyOf};
use tollgate::request::key::{build_key_into, RequestView};

fn spec() -> LimitSpec {
    LimitSpec {
        name: "per-api-key".into(),
        // Far above the load: every decision admits.
        params: BucketParams::new(1_000_000_000, 1e9, 1_000_000_000).expect("params"),
        shadow: false,
        burst_guard: false,
        overrides: Default::default(),
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

/// A store holding `live` buckets (`key-0` .. `key-{live-1}`).
fn filled_store(l: &LimitSpec, live: usize) -> (Store, Vec<String>) {
    let store = Store::new(Arc::new(SystemClock), false);
    let keys: Vec<String> = (0..live).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        store.charge(&[Charge {
            limit: l,
            key: k,
            cost: 1,
        }]);
    }
    (store, keys)
}

/// The decision on an existing bucket while 1, 1,000 or 1,000,000 buckets are live: a hot key
/// (the data structure's own cost, cache-warm, as for a busy client), and a different key at
/// each call (stride through all of them: memory-bound once the buckets outgrow the caches).
fn store_decision(c: &mut Criterion) {
    let l = spec();
    let mut hot = c.benchmark_group("store/charge_hot_key");
    let mut stores = Vec::new();
    for live in [1usize, 1_000, 1_000_000] {
        let (store, keys) = filled_store(&l, live);
        let key = keys[live / 2].clone();
        hot.bench_with_input(BenchmarkId::from_parameter(live), &live, |bench, _| {
            bench.iter(|| {
                black_box(store.charge(&[Charge {
                    limit: &l,
                    key: &key,
                    cost: 1,
                }]))
            })
        });
        stores.push((live, store, keys));
    }
    hot.finish();
    let mut spread = c.benchmark_group("store/charge_existing_bucket");
    for (live, store, keys) in &stores {
        let mut i = 0usize;
        spread.bench_with_input(BenchmarkId::from_parameter(live), live, |bench, &live| {
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
    spread.finish();
}

/// Several threads charging at once: all on one hot key (one shard lock), and each on its own
/// keys (spread over the shards). Reported as the time of one charge seen by one thread.
fn store_contended(c: &mut Criterion) {
    let l = spec();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let (store, keys) = filled_store(&l, 10_000);
    let mut group = c.benchmark_group(format!("store/contended_{threads}_threads"));
    for (name, hot) in [("one_hot_key", true), ("many_keys", false)] {
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let per = iters / threads as u64 + 1;
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (store, keys, l) = (&store, &keys, &l);
                        s.spawn(move || {
                            let mut i = t * 997;
                            for _ in 0..per {
                                i = (i + 7919) % keys.len();
                                let key = if hot { &keys[0] } else { &keys[i] };
                                black_box(store.charge(&[Charge {
                                    limit: l,
                                    key,
                                    cost: 1,
                                }]));
                            }
                        });
                    }
                });
                // Each thread made `per` charges in this time: report the time of one charge
                // as a thread sees it (criterion divides by iters = threads x per).
                start.elapsed() * threads as u32
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
    let sources = vec![
        KeySource::Header(http::HeaderName::from_static("x-api-key")),
        KeySource::ClientIp,
    ];
    let view = RequestView {
        method: "GET",
        path: "/rating/42",
        query: Some("lang=en"),
        headers: &headers,
        client_ip: "192.0.2.7".parse().expect("ip"),
        client_ip_text: None,
        route: "rating",
    };
    // As the request path does: into a reused buffer.
    let mut buf = String::new();
    c.bench_function("key/build_header_and_ip", |b| {
        b.iter(|| {
            buf.clear();
            black_box(build_key_into(&sources, &view, &mut buf)).expect("key");
            black_box(buf.len())
        })
    });
    // The whole decision as the proxy calls it: both keys built, both limits charged.
    let store = Store::new(Arc::new(SystemClock), false);
    let (per_key, per_ip) = (
        spec(),
        LimitSpec {
            name: "per-ip".into(),
            ..spec()
        },
    );
    c.bench_function("decision/two_limits", |b| {
        b.iter(|| {
            let charged = [
                Charged {
                    limit: &per_key,
                    key: KeyOf::Request(&sources[..1], &view),
                },
                Charged {
                    limit: &per_ip,
                    key: KeyOf::Request(&sources[1..], &view),
                },
            ];
            let mut result = ChargeResult::default();
            black_box(decision::decide(&store, &charged, 1, false, &mut result));
            black_box(result)
        })
    });
    let l = spec();
    let d = tollgate::limit::bucket::Decision {
        allowed: true,
        remaining: 4987,
        retry_after_ns: 0,
        full_in_ns: 13_000_000,
        never: false,
    };
    // The same value as the last one on this thread (a client well under its limit) ...
    c.bench_function("headers/ratelimit_value", |b| {
        b.iter(|| black_box(tollgate::http::headers::ratelimit_header(&l.name, &d)))
    });
    // ... and a new one on each call (a client spending its bucket).
    let mut spent = d;
    c.bench_function("headers/ratelimit_value_new", |b| {
        b.iter(|| {
            spent.remaining = spent.remaining.wrapping_sub(1);
            black_box(tollgate::http::headers::ratelimit_header(&l.name, &spent))
        })
    });
}

criterion_group!(
    benches,
    bucket_core,
    store_decision,
    store_contended,
    key_and_headers
);
criterion_main!(benches);
