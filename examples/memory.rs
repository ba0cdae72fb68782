//! In-process memory per active bucket (`docs/performance.md`, targets: under 256 bytes), and eviction.
//!
//! Builds a standalone `Store` on a manual clock, creates N distinct buckets (default
//! 1,000,000) through `Store::charge`, the path the proxy takes for every request, and reads
//! the resident set size (`/proc/self/statm`) before and after: bytes per bucket = RSS growth
//! / N. It then moves the clock past the full-refill time, runs the eviction sweep the proxy
//! runs every 10 s (`Store::evict_idle`), and counts what remains.
//!
//! Exit status: 0 when bytes per bucket < 256 and eviction leaves at most 0.1% of the buckets,
//! 1 otherwise. Run it in release mode: `scripts/memory.sh` (or
//! `cargo run --release --example memory -- [N]`).
//!
//! Keys look like IPv4 addresses under a `per-ip` limit ("per-ip:10.x.y.z", 15 to 18 bytes,
//! a typical short key); `MEMORY_KEY_PREFIX` prepends a string to every key to see the effect
//! of longer keys (e.g. API keys).

use std::sync::Arc;
use tollgate::limit::bucket::{Bucket, BucketParams, Counters};
use tollgate::limit::clock::ManualClock;
use tollgate::limit::pacing::Pace;
use tollgate::limit::store::{Charge, LimitSpec, Store};

const TARGET_BYTES: f64 = 256.0;
/// Eviction must leave at most this fraction of the buckets.
const MAX_REMAINING_FRACTION: f64 = 0.001;

fn page_size() -> u64 {
    std::process::Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Resident set size in bytes, from /proc/self/statm (second field, in pages).
fn rss_bytes(page: u64) -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * page
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse().expect("N: a bucket count"))
        .unwrap_or(1_000_000);
    let prefix = std::env::var("MEMORY_KEY_PREFIX").unwrap_or_default();
    let page = page_size();

    // capacity 100, 10 tokens/s: a full refill takes 10 s.
    let spec = LimitSpec::new("per-ip", BucketParams::new(100, 10.0, 100).expect("params"));
    let start_ns = 1_790_000_000_000_000_000i64;
    let clock = Arc::new(ManualClock::new(start_ns));
    let store = Store::new(clock.clone(), false);

    // Keys built before the baseline: what the proxy holds per request is transient, what the
    // store keeps is its own copy.
    let keys: Vec<String> = (0..n)
        .map(|i| {
            let i = i as u32 + (10 << 24);
            let [a, b, c, d] = i.to_be_bytes();
            format!("{prefix}{a}.{b}.{c}.{d}")
        })
        .collect();
    let key_bytes: usize = keys.iter().map(|k| k.len()).sum();

    // Warm the charge path once (lazy statics, first shard allocations) on a throwaway store.
    {
        let warm = Store::new(clock.clone(), false);
        warm.charge(&[Charge {
            limit: &spec,
            key: "warm",
            cost: 1,
        }]);
    }

    let before = rss_bytes(page);
    let mut admitted = 0usize;
    for k in &keys {
        let r = store.charge(&[Charge {
            limit: &spec,
            key: k,
            cost: 1,
        }]);
        admitted += usize::from(r.allowed());
        // 1 µs between requests, as a busy proxy would see them.
        clock.advance_ns(1_000);
    }
    let after = rss_bytes(page);
    let live = store.len();
    assert_eq!(live, n, "every key must have its own bucket");
    assert_eq!(admitted, n, "every first request on a bucket is admitted");

    let per_bucket = (after.saturating_sub(before)) as f64 / n as f64;

    // What an entry is made of (the entry and shard types are private to the limiter; these
    // are their public parts).
    let bucket = std::mem::size_of::<Bucket>();
    let pace = std::mem::size_of::<Pace>();
    let counters = std::mem::size_of::<Counters>();
    // Entry = Bucket + three bools + the boxed sync state (a pointer, None when standalone;
    // in shared mode the box holds a Pace and the last sync time), aligned to 16 (i128 fields).
    let entry = (bucket + 3 + 8).div_ceil(16) * 16;
    // A hashbrown slot holds (Box<str>, Entry): 16-byte fat pointer + entry, plus one control
    // byte. 64 shards; each grows to the next power of two above len * 8 / 7.
    let slot = (16 + entry).div_ceil(16) * 16;
    let per_shard = n.div_ceil(64);
    let shard_buckets = (per_shard * 8).div_ceil(7).next_power_of_two();
    let table_bytes = 64 * shard_buckets * (slot + 1);
    let avg_key = (key_bytes + n * (spec.name.len() + 1)) as f64 / n as f64;
    // glibc malloc: a chunk is the request + 8 bytes, rounded up to 16, at least 32.
    let key_alloc = ((avg_key as usize + 8).div_ceil(16) * 16).max(32);

    println!("buckets created        {n}");
    println!("live buckets           {live}");
    println!(
        "average store key      {avg_key:.1} bytes (\"{}:{}\")",
        spec.name,
        keys[n / 2]
    );
    println!(
        "RSS before / after     {:.1} MiB / {:.1} MiB",
        mib(before),
        mib(after)
    );
    println!("bytes per bucket       {per_bucket:.1}   (target < {TARGET_BYTES})");
    println!("estimated breakdown (per bucket):");
    println!(
        "  size_of Bucket {bucket} (Counters {counters}), Entry ~{entry} (+ a {pace}-byte Pace in a box, shared mode only)"
    );
    println!(
        "  hash slot (Box<str>, Entry) {slot} + 1 control byte; {shard_buckets} slots per shard x 64 \
         for {per_shard} entries/shard (load {:.2}) -> {:.0} bytes",
        per_shard as f64 / shard_buckets as f64,
        table_bytes as f64 / n as f64
    );
    println!("  key heap allocation   ~{key_alloc} bytes (malloc chunk)");
    println!(
        "  estimate total        ~{:.0} bytes",
        table_bytes as f64 / n as f64 + key_alloc as f64
    );

    // Past the full refill (capacity / rate = 10 s): every bucket is full again, so the sweep
    // may drop it.
    let fill_ns = (spec.params.seconds_to_fill() * 1e9) as i64;
    clock.advance_ns(fill_ns + 1_000_000_000);
    let dropped = store.evict_idle(|l| (l == spec.name).then(|| spec.params.clone()));
    let remaining = store.len();
    let after_evict = rss_bytes(page);
    println!(
        "eviction               advanced clock {:.1} s, dropped {dropped}, remaining {remaining}",
        (fill_ns + 1_000_000_000) as f64 / 1e9
    );
    println!(
        "RSS after eviction     {:.1} MiB (the maps keep their capacity; informational)",
        mib(after_evict)
    );

    let mut ok = true;
    if per_bucket >= TARGET_BYTES {
        println!("FAIL: {per_bucket:.1} bytes per bucket >= {TARGET_BYTES}");
        ok = false;
    }
    if remaining as f64 > n as f64 * MAX_REMAINING_FRACTION {
        println!("FAIL: {remaining} of {n} buckets remain after eviction");
        ok = false;
    }
    println!(
        "result                 {}",
        if ok { "PASS" } else { "FAIL" }
    );
    drop(keys);
    std::process::exit(if ok { 0 } else { 1 });
}
