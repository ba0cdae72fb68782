//! Shared state under faults, with real processes: a restarted node reads its fields back
//! before serving, clock skew is corrected against Redis `TIME`, and three nodes under
//! sustained overload lose nothing while Redis is killed and restarted empty (no field ever
//! decreases, every admitted request is in Redis at the end).

mod common;

use common::{get, wait_until, Conn, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);
const KEY: &str = "tollgate:per-key:hot";

fn config(
    up: &Upstream,
    redis: &RedisServer,
    node: &str,
    sync_ms: u64,
    cap: u64,
    rate: f64,
) -> Value {
    json!({
        "node_id": node,
        "access_log": false,
        "redis": { "url": redis.url, "sync_interval_ms": sync_ms, "timeout_ms": 200 },
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "per-key": { "capacity": cap, "refill_per_second": rate, "key": ["header:x-api-key"] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }],
    })
}

fn remaining(gw: &Gateway) -> u64 {
    get(gw.admin, "/rating?limit=per-key&key=hot", &[]).json()["remaining"]
        .as_u64()
        .expect("remaining")
}

/// The hot hash's fields as numbers (`NODE:waste` needs i128: it is about 1e28, or negative).
fn hash(redis: &RedisServer) -> HashMap<String, i128> {
    let Ok(text) = redis.try_cmd(&["HGETALL", KEY]) else {
        return HashMap::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter_map(|p| Some((p.first()?.to_string(), p.get(1)?.parse().ok()?)))
        .collect()
}

fn consumed(redis: &RedisServer, node: &str) -> Option<u64> {
    let v = hash(redis).get(&format!("{node}:consumed")).copied()?;
    u64::try_from(v).ok()
}

#[test]
fn a_restarted_node_reads_its_fields_back_before_serving() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let cfg = config(&up, &redis, "node-a", 50, 10, 0.001);
    let a = Gateway::builder(cfg.clone()).start();
    for _ in 0..6 {
        assert_eq!(get(a.addr, "/x", &[("x-api-key", "hot")]).status, 200);
    }
    assert!(wait_until(WAIT, || consumed(&redis, "node-a") == Some(6)));
    drop(a); // SIGKILL: no final flush, no leaving the registry
             // A sync interval far longer than the test: only the read before serving can explain
             // what the restarted node knows.
    let mut slow = cfg;
    slow["redis"]["sync_interval_ms"] = json!(60_000);
    let a = Gateway::builder(slow).start();
    assert!(
        a.log().contains("read this node's buckets back from redis"),
        "{}",
        a.log()
    );
    // Before any request: the bucket is already in memory with its 6 spent tokens.
    assert_eq!(remaining(&a), 4, "{}", a.log());
    let statuses: Vec<u16> = (0..5)
        .map(|_| get(a.addr, "/x", &[("x-api-key", "hot")]).status)
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 429]);
}

#[test]
fn clock_skew_is_corrected_against_redis_time() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    // Ten tokens, one every ten seconds: a clock 60 s ahead would see the bucket full again.
    // Every change written (no quiet buckets): B's first request is read against A's state.
    let loud = |node| {
        let mut c = config(&up, &redis, node, 50, 10, 0.1);
        c["redis"]["quiet_buckets"] = json!(false);
        c
    };
    let a = Gateway::builder(loud("node-a")).start();
    let b = Gateway::builder(loud("node-b"))
        .env("TOLLGATE_CLOCK_OFFSET_MS", "60000")
        .start();
    // B measured its offset: about -60 s.
    let offset = || -> Option<f64> {
        let text = get(b.admin, "/metrics", &[]).text();
        text.lines()
            .find_map(|l| l.strip_prefix("tollgate_clock_offset_seconds "))
            .and_then(|v| v.trim().parse().ok())
    };
    assert!(
        wait_until(WAIT, || offset().is_some_and(|o| (o + 60.0).abs() < 1.0)),
        "offset {:?}\n{}",
        offset(),
        b.log()
    );
    // A sees B and is settled in the cluster.
    a.settle(2);
    // A empties the bucket at once (a bucket new to a node may spend the whole of it, B
    // being live); B, once it has read the counters, sees it (nearly) empty too.
    let statuses: Vec<u16> = (0..11)
        .map(|_| get(a.addr, "/x", &[("x-api-key", "hot")]).status)
        .collect();
    let mut expected = vec![200; 10];
    expected.push(429);
    assert_eq!(statuses, expected);
    assert!(wait_until(WAIT, || consumed(&redis, "node-a") == Some(10)));
    // B reads the hash on its first use of the key, then merges every sync.
    let first = get(b.addr, "/x", &[("x-api-key", "hot")]).status;
    assert!(
        wait_until(WAIT, || remaining(&b) <= 1),
        "B sees {} tokens (first answer {first}); uncorrected it would see 10",
        remaining(&b)
    );
    // The seen_ms B writes is on Redis's time line, not 60 s ahead.
    let redis_ms: u64 = redis
        .cmd(&["TIME"])
        .lines()
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1000;
    assert!(wait_until(WAIT, || hash(&redis).contains_key("node-b:seen_ms")));
    let seen = hash(&redis)["node-b:seen_ms"];
    assert!(
        seen.abs_diff(i128::from(redis_ms)) < 5_000,
        "node-b:seen_ms {seen} vs redis {redis_ms}"
    );
}

/// One [`hammer`] thread per node, on shared counters.
fn hammer_all(
    nodes: &[Gateway],
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicU64>,
    limited: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    nodes
        .iter()
        .map(|g| {
            let (addr, stop, ok, limited) = (g.addr, stop.clone(), ok.clone(), limited.clone());
            std::thread::spawn(move || hammer(addr, stop, ok, limited))
        })
        .collect()
}

/// Sends requests on one keep-alive connection until `stop`, counting 200s and 429s.
fn hammer(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    limited: Arc<AtomicU64>,
) {
    let mut conn = Conn::open(addr);
    while !stop.load(Ordering::Relaxed) {
        match conn.request("GET", "/x", &[("x-api-key", "hot")], b"") {
            Ok(r) if r.status == 200 => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status == 429 => {
                limited.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => panic!("unexpected status {}", r.status),
            Err(_) => conn = Conn::open(addr),
        }
    }
}

#[test]
fn three_nodes_lose_nothing_when_redis_is_killed_and_restarted_empty() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let (cap, rate) = (50u64, 50.0);
    let names = ["n1", "n2", "n3"];
    let nodes: Vec<Gateway> = names
        .iter()
        .map(|n| Gateway::builder(config(&up, &redis, n, 50, cap, rate)).start())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    // Watcher: no field may ever be seen lower than before (a missing hash, while Redis is
    // down or just restarted, is not a value).
    let highest: Arc<Mutex<HashMap<String, i128>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = redis.port;
    let watcher = {
        let (stop, highest, violations) = (stop.clone(), highest.clone(), violations.clone());
        let probe = RedisProbe(port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (f, v) in probe.hash() {
                    if f.ends_with(":seen_ms") {
                        continue;
                    }
                    let mut h = highest.lock().unwrap();
                    let top = h.entry(f.clone()).or_insert(i128::MIN);
                    if v < *top {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{f}: {v} after {top}"));
                    }
                    *top = (*top).max(v);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let clients = hammer_all(&nodes, &stop, &ok, &limited);
    // Let the load run with Redis, then kill it, run without, restart it empty, run again.
    let phase = |d: Duration| {
        let end = Instant::now() + d;
        wait_until(d + Duration::from_secs(1), || Instant::now() >= end);
    };
    phase(Duration::from_secs(2));
    eprintln!(
        "phase up: {} ok {} limited at {:?}",
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        started.elapsed()
    );
    let before_kill = hash(&redis);
    assert!(before_kill.contains_key("n1:consumed"), "{before_kill:?}");
    redis.kill();
    // Every node reports degraded while Redis is away (from its next sync on).
    for g in &nodes {
        let degraded = || get(g.admin, "/health", &[]).json()["status"] == "degraded";
        assert!(wait_until(WAIT, degraded), "{}", g.log());
    }
    phase(Duration::from_secs(2));
    eprintln!(
        "phase down: {} ok {} limited at {:?}",
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        started.elapsed()
    );
    redis.restart();
    phase(Duration::from_secs(2));
    eprintln!(
        "phase restarted: {} ok {} limited at {:?}",
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        started.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    watcher.join().expect("watcher thread");
    let admitted = ok.load(Ordering::Relaxed);
    // Every admitted request reaches Redis once the nodes have synced.
    let recorded = || -> u64 { names.iter().map(|n| consumed(&redis, n).unwrap_or(0)).sum() };
    assert!(
        wait_until(WAIT, || recorded() == admitted),
        "redis records {} consumed, clients saw {admitted} admitted",
        recorded()
    );
    // Restored fields are at least what Redis held before it died.
    let after = hash(&redis);
    for (f, v) in &before_kill {
        if f.ends_with(":consumed") || f.ends_with(":attempts") || f.ends_with(":waste") {
            assert!(
                after.get(f).is_some_and(|a| a >= v),
                "{f}: {v} before, {:?} after",
                after.get(f)
            );
        }
    }
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "fields decreased: {v:?}");
    // The watcher saw every node's waste, the field that "nothing is forgotten" rests on.
    let watched = highest.lock().unwrap();
    for n in names {
        assert!(
            watched.contains_key(&format!("{n}:waste")),
            "{n}:waste never watched: {:?}",
            watched.keys().collect::<Vec<_>>()
        );
    }
    // Accuracy through the outage: nodes limit from their last view and shares.
    let ideal = cap as f64 + rate * elapsed;
    let ratio = admitted as f64 / ideal;
    eprintln!(
        "admitted {admitted}, limited {}, ideal {ideal:.0}, ratio {ratio:.3}",
        limited.load(Ordering::Relaxed)
    );
    assert!(
        limited.load(Ordering::Relaxed) > admitted,
        "the key was not overloaded"
    );
    assert!((0.6..=1.25).contains(&ratio), "admitted/ideal {ratio:.3}");
}

/// Reads the hot hash over a short-lived connection; empty while Redis is down.
struct RedisProbe(u16);

impl RedisProbe {
    fn hash(&self) -> HashMap<String, i128> {
        use std::io::{BufRead, BufReader, Read, Write};
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], self.0).into();
        let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return HashMap::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let cmd = format!("*2\r\n$7\r\nHGETALL\r\n${}\r\n{KEY}\r\n", KEY.len());
        if (&s).write_all(cmd.as_bytes()).is_err() {
            return HashMap::new();
        }
        let mut r = BufReader::new(s);
        let mut line = String::new();
        if r.read_line(&mut line).is_err() || !line.starts_with('*') {
            return HashMap::new();
        }
        let n: usize = line[1..].trim().parse().unwrap_or(0);
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            if r.read_line(&mut line).is_err() {
                return HashMap::new();
            }
            let len: usize = line.trim().trim_start_matches('$').parse().unwrap_or(0);
            let mut buf = vec![0; len + 2];
            if r.read_exact(&mut buf).is_err() {
                return HashMap::new();
            }
            buf.truncate(len);
            items.push(String::from_utf8_lossy(&buf).into_owned());
        }
        items
            .chunks(2)
            .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.parse().ok()?)))
            .collect()
    }
}

#[test]
fn three_nodes_under_sustained_balanced_overload_stay_within_the_bounds() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let (cap, rate) = (50u64, 100.0);
    let nodes: Vec<Gateway> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| Gateway::builder(config(&up, &redis, n, 50, cap, rate)).start())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients = hammer_all(&nodes, &stop, &ok, &limited);
    let end = started + Duration::from_secs(5);
    wait_until(Duration::from_secs(6), || Instant::now() >= end);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = ok.load(Ordering::Relaxed) as f64;
    let ideal = cap as f64 + rate * elapsed;
    let ratio = admitted / ideal;
    eprintln!(
        "admitted {admitted}, limited {}, ideal {ideal:.0}, ratio {ratio:.3}",
        limited.load(Ordering::Relaxed)
    );
    assert!(
        limited.load(Ordering::Relaxed) as f64 > admitted,
        "not overloaded"
    );
    // docs/shared-state.md, "Accuracy": at most 5% over one sequential bucket, at least 95% of it.
    assert!((0.95..=1.05).contains(&ratio), "admitted/ideal {ratio:.3}");
}
