//! In-process memory per active bucket (`docs/performance.md`, target: under 256 bytes), and
//! eviction, for a standalone limit and for a shared one.
//!
//! Each mode runs in a process of its own (this program starts itself once per mode), so that
//! no mode reuses memory another one freed. A mode builds a `Store` on a manual clock, creates
//! N distinct buckets (default 1,000,000) through `Store::charge`, the path the proxy takes
//! for every request, and reads the resident set size (`/proc/self/statm`) before and after:
//! bytes per bucket = RSS growth / N, with the global allocator the gateway ships with
//! (mimalloc, set by the library). It also reports the growth of what glibc malloc has handed
//! out (`mallinfo2`), which pages do not round: the buckets' slabs and hash tables, which come from the
//! system allocator (see `Shard::map`). It then moves the clock on and lets
//! the proxy's own housekeeping drop the buckets, and counts what remains.
//!
//! - `standalone`: a store without Redis. Eviction: the sweep the proxy runs every 10 s
//!   (`Store::evict_idle`), once every bucket is full again.
//! - `shared-quiet`: a shared store (three live nodes, 100 ms sync interval), light keys (one
//!   request each) and `redis.quiet_buckets` on, the default: every bucket carries its boxed
//!   sync state (pace, last sync) and stays quiet, found by the quiet check's scan.
//!   Eviction: the sync loop's quiet check (`Store::take_quiet_due`, `round::checks`,
//!   `round::settle`) with the answer Redis gives for a key no node wrote (an empty hash).
//! - `shared-synced`: the same store with `redis.quiet_buckets` off, so every bucket is synced
//!   as any busy shared bucket is: the sync loop's round (`round::build`, `round::apply`, at
//!   most 512 buckets a round, run after every 512 new buckets) against replies built as the
//!   merge scripts answer for a key the two other nodes also wrote. A synced bucket's pace
//!   keeps the demand of its last read, summed over the nodes. Eviction: `Store::evict_idle`
//!   once the bucket's Redis TTL has passed (a shared bucket is kept until then).
//!
//! No Redis runs: the store is driven by the same functions the sync loop calls around its
//! round trip, and the replies are dropped once merged (only what the store keeps is counted).
//!
//! Exit status: 0 when every mode is under 256 bytes per bucket and eviction leaves at most
//! 0.1% of the buckets in each; 2 when only shared-mode buckets are at 256 bytes or more; 1
//! otherwise (the standalone figure, or an eviction). Run it in release mode for the figures
//! of the docs: `scripts/memory.sh` (or `cargo run --release --example memory -- [N]`);
//! `scripts/memory.sh --short` is the test run's form. `memory --mode MODE [N]` runs one mode
//! in this process (exit 0 or 1).
//!
//! Keys look like IPv4 addresses under a `per-ip` limit ("per-ip:10.x.y.z", 15 to 18 bytes,
//! a typical short key); `MEMORY_KEY_PREFIX` prepends a string to every key to see the effect
//! of longer keys (e.g. API keys).

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tollgate::limit::bucket::{Bucket, BucketParams, Counters};
use tollgate::limit::clock::{Clock, ManualClock};
use tollgate::limit::pacing::Pace;
use tollgate::limit::store::{limit_of, Charge, LimitSpec, Store};
use tollgate::shared::{layout, round};

const TARGET_BYTES: f64 = 256.0;
/// Eviction must leave at most this fraction of the buckets.
const MAX_REMAINING_FRACTION: f64 = 0.001;
/// Shared mode: the nodes, this one first, and their sync interval.
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const SYNC_INTERVAL_NS: i64 = 100_000_000;
/// The sync loop's most buckets per round and quiet checks per round (`shared::sync`).
const BUCKETS_PER_ROUND: usize = 512;
const CHECKS_PER_ROUND: usize = 4096;
/// Where the clock starts (ns since the epoch).
const START_NS: i64 = 1_790_000_000_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standalone,
    SharedQuiet,
    SharedSynced,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Standalone, Mode::SharedQuiet, Mode::SharedSynced];

    fn name(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::SharedQuiet => "shared-quiet",
            Mode::SharedSynced => "shared-synced",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    fn shared(self) -> bool {
        self != Mode::Standalone
    }
}

fn page_size() -> u64 {
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

extern "C" {
    /// mimalloc's `mi_collect`, in the library the gateway links (its Rust declaration is
    /// behind a feature of `libmimalloc-sys` the gateway does not need).
    fn mi_collect(force: bool);
}

/// Resident set size in bytes, from /proc/self/statm (second field, in pages), once mimalloc
/// has returned what was freed. mimalloc keeps freed pages resident for up to its purge delay
/// (1 s in the version built here) before it gives them back on its own: read without the
/// collect, the figure counted whatever the last second of sync rounds had allocated and freed
/// (their requests and replies), by the run's speed: 243 to 259 bytes a synced bucket in the
/// short form from one machine to the next, for the same store.
fn rss_bytes(page: u64) -> u64 {
    // SAFETY: a plain call into the allocator the process uses; `force` frees nothing in use.
    unsafe { mi_collect(true) };
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * page
}

/// Bytes glibc malloc has handed out and not taken back: in its arenas, and mapped alone.
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// What mimalloc, the allocator the gateway ships with, takes for a request of `n` bytes: its
/// size class. 8 bytes, then up to 64 bytes a multiple of 16 (x86-64's 16-byte alignment:
/// its `MI_ALIGN2W`; a 24-byte request takes 32, a 40-byte one 48); above, four classes
/// between powers of two (80, 96, 112, 128, 160, ...). It keeps no header in the block.
fn chunk(n: usize) -> usize {
    if n <= 8 {
        return 8;
    }
    if n <= 64 {
        return n.div_ceil(16) * 16;
    }
    // The greatest power of two below n; its classes are a quarter of it apart.
    let step = (1usize << (usize::BITS - 1 - (n - 1).leading_zeros())) / 4;
    n.div_ceil(step) * step
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn parse_n(arg: Option<&String>) -> usize {
    arg.map(|a| {
        a.replace(['_', ','], "")
            .parse()
            .expect("N: a bucket count")
    })
    .unwrap_or(1_000_000)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--mode") {
        let mode = args
            .get(1)
            .and_then(|m| Mode::parse(m))
            .expect("--mode standalone|shared-quiet|shared-synced");
        let ok = measure(mode, parse_n(args.get(2)));
        std::process::exit(if ok { 0 } else { 1 });
    }
    std::process::exit(run_all(parse_n(args.first())));
}

/// One line of a mode's results, as its process prints it last.
struct Summary {
    bytes: f64,
    heap: f64,
    remaining: usize,
    passed: bool,
}

/// Runs every mode in a process of its own and sums up; returns the exit status.
fn run_all(n: usize) -> i32 {
    let exe = std::env::current_exe().expect("this program's path");
    let mut rows = Vec::new();
    for mode in Mode::ALL {
        println!("== {} ({n} buckets)", mode.name());
        let out = Command::new(&exe)
            .args(["--mode", mode.name(), &n.to_string()])
            .output()
            .expect("run one mode");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut summary = None;
        for line in text.lines() {
            match line.strip_prefix("summary ") {
                Some(s) => summary = parse_summary(s),
                None => println!("{line}"),
            }
        }
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let summary = summary.filter(|_| out.status.success() || out.status.code() == Some(1));
        rows.push((mode, summary));
        println!();
    }
    println!("mode            bytes/bucket (RSS)   malloc'd/bucket   left after eviction   result");
    let (mut standalone_ok, mut shared_bytes_ok, mut evicted_ok) = (true, true, true);
    for (mode, s) in &rows {
        let Some(s) = s else {
            println!("{:<15} (the run failed)", mode.name());
            standalone_ok = false;
            continue;
        };
        println!(
            "{:<15} {:>18.1}   {:>15.1}   {:>19}   {}",
            mode.name(),
            s.bytes,
            s.heap,
            s.remaining,
            if s.passed { "PASS" } else { "FAIL" }
        );
        evicted_ok &= s.remaining as f64 <= n as f64 * MAX_REMAINING_FRACTION;
        if s.bytes >= TARGET_BYTES {
            if mode.shared() {
                shared_bytes_ok = false;
            } else {
                standalone_ok = false;
            }
        }
    }
    let status = if !standalone_ok || !evicted_ok {
        1
    } else if !shared_bytes_ok {
        2
    } else {
        0
    };
    println!(
        "result          {}",
        match status {
            0 => "PASS",
            2 => "FAIL (shared-mode buckets only: exit status 2)",
            _ => "FAIL",
        }
    );
    status
}

fn parse_summary(s: &str) -> Option<Summary> {
    let f: Vec<&str> = s.split_whitespace().collect();
    Some(Summary {
        bytes: f.first()?.parse().ok()?,
        heap: f.get(1)?.parse().ok()?,
        remaining: f.get(2)?.parse().ok()?,
        passed: *f.get(3)? == "pass",
    })
}

/// The shared store's side of one sync round, as the sync loop runs it, with Redis's replies
/// built in place. Returns how many buckets it synced.
fn sync_round(store: &Store, limits: &[LimitSpec], clock: &ManualClock) -> usize {
    let ctx = context(limits, clock);
    let r = round::build(&ctx, store.take_dirty_up_to(BUCKETS_PER_ROUND));
    let replies: Vec<round::Reply> = r.ops.iter().map(|op| Ok(reply(op, &ctx))).collect();
    let seen = round::apply(store, &ctx, &r, replies, &HashSet::new());
    assert!(seen.requeue.is_empty(), "every bucket merged");
    r.ops.len()
}

fn context<'a>(limits: &'a [LimitSpec], clock: &ManualClock) -> round::Context<'a> {
    round::Context {
        node_id: NODES[0],
        key_prefix: "tollgate",
        sync_interval: Duration::from_nanos(SYNC_INTERVAL_NS as u64),
        limits,
        now_ms: (clock.now_ns() / 1_000_000) as u64,
        live_others: None,
    }
}

/// What Redis answers to one bucket's command when the other two nodes have written the key
/// too (one request each): the fresh script, the hash as it was before its write; the merge
/// script, the hash after it (this node's fields are the greatest of its own).
fn reply(op: &round::Op, ctx: &round::Context<'_>) -> HashMap<String, String> {
    let p = &ctx.limits[0].params;
    let theirs = Counters {
        consumed: 1,
        attempts: 1,
        waste: op.bucket.own.waste,
    };
    let mut hash: HashMap<String, String> = NODES[1..]
        .iter()
        .flat_map(|n| layout::node_fields(n, &theirs, p.capacity(), p.rate_q(), ctx.now_ms))
        .collect();
    if !op.bucket.fresh {
        hash.extend(op.fields.iter().cloned());
    }
    hash
}

/// One mode, in this process: prints its figures and a last `summary` line for [`run_all`];
/// returns whether it passed.
fn measure(mode: Mode, n: usize) -> bool {
    let prefix = std::env::var("MEMORY_KEY_PREFIX").unwrap_or_default();
    let page = page_size();

    // capacity 100, 10 tokens/s: a full refill takes 10 s.
    let spec = LimitSpec::new("per-ip", BucketParams::new(100, 10.0, 100).expect("params"));
    let limits = [spec.clone()];
    let params_of = |k: &str| (limit_of(k) == spec.name).then(|| spec.params.clone());
    let clock = Arc::new(ManualClock::new(START_NS));
    let new_store = || {
        let store = Store::new(clock.clone(), mode.shared());
        if mode.shared() {
            store.set_cluster(NODES.len() as u32, SYNC_INTERVAL_NS);
            store.set_quiet(mode == Mode::SharedQuiet);
        }
        store
    };
    let store = new_store();

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
    let charge = |store: &Store, key: &str| {
        store
            .charge(&[Charge {
                limit: &spec,
                key,
                cost: 1,
            }])
            .allowed()
    };

    // Warm the paths once (lazy statics, first shard allocations, a round) on a throwaway
    // store.
    {
        let warm = new_store();
        charge(&warm, "warm");
        sync_round(&warm, &limits, &clock);
    }

    let before = rss_bytes(page);
    let heap_before = heap_in_use();
    let mut admitted = 0usize;
    let mut rounds = 0usize;
    for (i, k) in keys.iter().enumerate() {
        admitted += usize::from(charge(&store, k));
        // 1 µs between requests, as a busy proxy would see them.
        clock.advance_ns(1_000);
        // The sync loop keeps up: a round after every round's worth of new buckets.
        if mode == Mode::SharedSynced && (i + 1) % BUCKETS_PER_ROUND == 0 {
            sync_round(&store, &limits, &clock);
            rounds += 1;
        }
    }
    while mode == Mode::SharedSynced && sync_round(&store, &limits, &clock) > 0 {
        rounds += 1;
    }
    let after = rss_bytes(page);
    let heap_after = heap_in_use();
    let live = store.len();
    assert_eq!(live, n, "every key must have its own bucket");
    assert_eq!(admitted, n, "every first request on a bucket is admitted");
    match mode {
        Mode::Standalone => {}
        Mode::SharedQuiet => assert_eq!(store.quiet_len(), n, "every bucket quiet"),
        Mode::SharedSynced => assert!(!store.has_dirty(), "every bucket synced"),
    }

    let per_bucket = after.saturating_sub(before) as f64 / n as f64;
    let heap_per_bucket = heap_after.saturating_sub(heap_before) as f64 / n as f64;

    println!("buckets created        {n}");
    println!("live buckets           {live}");
    match mode {
        Mode::Standalone => println!("store                  standalone"),
        Mode::SharedQuiet => println!(
            "store                  shared, {} live nodes, quiet buckets on: {} quiet",
            NODES.len(),
            store.quiet_len()
        ),
        Mode::SharedSynced => println!(
            "store                  shared, {} live nodes, quiet buckets off: {rounds} sync \
             rounds of up to {BUCKETS_PER_ROUND}",
            NODES.len()
        ),
    }
    let avg_key = (key_bytes + n * (spec.name.len() + 1)) as f64 / n as f64;
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
    println!("malloc'd per bucket    {heap_per_bucket:.1}   (mallinfo2: the tables, from glibc; informational)");
    breakdown(mode, n, avg_key);

    // Every bucket full again and, in shared mode, past what keeps it: evicted by the proxy's
    // own housekeeping.
    let fill_ns = (spec.params.seconds_to_fill() * 1e9) as i64;
    let wait_ns = match mode {
        Mode::SharedSynced => {
            let ttl_ms = spec
                .params
                .state_ttl_ms(Duration::from_nanos(SYNC_INTERVAL_NS as u64));
            ttl_ms as i64 * 1_000_000 + 1_000_000_000
        }
        _ => fill_ns + 1_000_000_000,
    };
    clock.advance_ns(wait_ns);
    let mut forgotten = 0u64;
    if mode == Mode::SharedQuiet {
        loop {
            let due = store.take_quiet_due(params_of, CHECKS_PER_ROUND);
            if due.is_empty() {
                break;
            }
            let ctx = context(&limits, &clock);
            let checks = round::checks(&ctx, due);
            let answers = Ok(vec![HashMap::new(); checks.len()]);
            forgotten += round::settle(&store, &ctx, checks, answers).0;
        }
    }
    let dropped = store.evict_idle(params_of);
    let remaining = store.len();
    let after_evict = rss_bytes(page);
    let how = if mode == Mode::SharedQuiet {
        format!("quiet checks forgot {forgotten}, the sweep dropped {dropped}")
    } else {
        format!("the sweep dropped {dropped}")
    };
    println!(
        "eviction               clock advanced {:.1} s, {how}, remaining {remaining}",
        wait_ns as f64 / 1e9
    );
    println!(
        "RSS after eviction     {:.1} MiB (the slabs and tables keep their capacity; informational)",
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
    println!(
        "summary {per_bucket:.1} {heap_per_bucket:.1} {remaining} {}",
        if ok { "pass" } else { "fail" }
    );
    drop(keys);
    ok
}

/// What a bucket is made of, from the sizes of its parts (the entry, the sync state and the
/// pace's demand list are private to the limiter: their sizes are worked out from their fields).
fn breakdown(mode: Mode, n: usize, avg_key: f64) {
    let bucket = std::mem::size_of::<Bucket>();
    let counters = std::mem::size_of::<Counters>();
    let pace = std::mem::size_of::<Pace>();
    // Entry = Bucket (aligned to 8) + the boxed sync state (a pointer; None when standalone)
    // + the key's plan (two u32s) + listed and view (a byte each) and the refusal counts (6
    // bytes), aligned to 8.
    let entry = (bucket + 8 + 8 + 8).div_ceil(8) * 8;
    // Each shard's slab holds (StoreKey, Entry): a one-pointer key (its length in its
    // allocation) and the entry, in blocks of 1,024 written only as buckets come (the rest of
    // the last block is not resident). Its hash table holds a 4-byte slot number and a
    // control byte per slot, and grows to the next power of two above len * 8 / 7; every
    // slot of it is written.
    let slot = (8 + entry).div_ceil(8) * 8;
    let per_shard = n.div_ceil(64);
    let shard_buckets = (per_shard * 8).div_ceil(7).next_power_of_two();
    let table = (64 * shard_buckets * (4 + 1)) as f64 / n as f64;
    // The key's allocation: its 4-byte length, then its bytes.
    let key = chunk(4 + avg_key as usize);
    println!("estimated breakdown (per bucket):");
    println!("  size_of Bucket {bucket} (Counters {counters}), Entry ~{entry}");
    println!("  slab slot (StoreKey, Entry)                                       {slot}");
    println!(
        "  table: 4-byte slot number + 1 control byte; {shard_buckets} per shard x 64 \
         for {per_shard} entries/shard (load {:.2})   {table:.0}",
        per_shard as f64 / shard_buckets as f64
    );
    println!("  store key, heap                                                   {key}");
    let mut total = slot as f64 + table + key as f64;
    if mode.shared() {
        // SyncState = last sync (i64), own credit (u64), the pace's box pointer (none until
        // the first read) and a concurrency limit's slot state's (none for other limits).
        let sync = 4 * 8;
        let sync_chunk = chunk(sync);
        println!(
            "  sync state box: SyncState ~{sync}, size class                             {sync_chunk}"
        );
        total += sync_chunk as f64;
    }
    match mode {
        Mode::Standalone => {}
        // A quiet bucket is on no list: the quiet check scans the slab.
        Mode::SharedQuiet => {}
        Mode::SharedSynced => {
            // Once read: the pace, boxed, with the demand of its last read summed over the
            // nodes (whatever their number).
            let paced = chunk(pace);
            println!(
                "  pace box (size_of Pace {pace}, the last read's demand summed over {} nodes) {paced}",
                NODES.len()
            );
            total += paced as f64;
        }
    }
    println!("  estimate total                                                    ~{total:.0}");
}
