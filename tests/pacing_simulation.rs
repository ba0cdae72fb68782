//! A deterministic simulation of N nodes sharing one bucket: each node is a real [`Store`]
//! (the code the gateway runs), Redis is a map merged by max, time is a manual clock, and
//! syncs run every 100 ms at staggered phases. Asserts the bounds of `docs/shared-state.md` ("Accuracy") against a
//! sequential reference (capacity + rate x time).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tollgate::limit::bucket::BucketParams;
use tollgate::limit::clock::{Clock, ManualClock};
use tollgate::limit::store::{Charge, LimitSpec, Store};
use tollgate::shared::round;

const MS: i64 = 1_000_000;
const T0: i64 = 1_790_000_000_000 * MS;
const SYNC: i64 = 100 * MS;
const CAPACITY: u64 = 100;
const RATE: f64 = 200.0;

struct Cluster {
    clock: Arc<ManualClock>,
    nodes: Vec<(String, Store)>,
    redis: HashMap<String, HashMap<String, String>>,
    limit: LimitSpec,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let clock = Arc::new(ManualClock::new(T0));
        let nodes = (0..n)
            .map(|i| {
                let s = Store::new(clock.clone(), true);
                s.set_cluster(n as u32, SYNC);
                (format!("node-{i}"), s)
            })
            .collect();
        let limit = LimitSpec {
            name: "l".into(),
            params: BucketParams::new(CAPACITY, RATE, CAPACITY).unwrap(),
            shadow: false,
        };
        Cluster {
            clock,
            nodes,
            redis: HashMap::new(),
            limit,
        }
    }

    fn request(&self, node: usize) -> bool {
        self.nodes[node]
            .1
            .charge(&[Charge {
                limit: &self.limit,
                key: "k",
                cost: 1,
            }])
            .allowed()
    }

    /// What the sync loop does for one node: the real round ([`round::build`] and
    /// [`round::apply`]), with a map that max-merges as the merge script does for Redis.
    fn sync(&mut self, node: usize) {
        let (me, store) = &self.nodes[node];
        let limits = std::slice::from_ref(&self.limit);
        let ctx = round::Context {
            node_id: me,
            key_prefix: "sim",
            sync_interval: std::time::Duration::from_nanos(SYNC as u64),
            limits,
            now_ms: (self.clock.now_ns() / MS) as u64,
        };
        let r = round::build(&ctx, store.take_dirty());
        let replies: Vec<round::Reply> = r
            .ops
            .iter()
            .map(|op| {
                let hash = self.redis.entry(op.redis_key.clone()).or_default();
                if let round::Command::Merge { fields, .. } = &op.command {
                    for (f, v) in fields {
                        merge_field(hash, f, v);
                    }
                }
                Ok(hash.clone())
            })
            .collect();
        round::apply(store, &ctx, &r, replies, &HashSet::new());
    }

    /// Runs `ms` milliseconds; node i gets `load[i]` requests each millisecond.
    fn run(&mut self, ms: i64, load: &[u32]) -> u64 {
        let mut admitted = 0;
        let n = self.nodes.len() as i64;
        for t in 0..ms {
            for (i, &reqs) in load.iter().enumerate() {
                for _ in 0..reqs {
                    admitted += u64::from(self.request(i));
                }
            }
            self.clock.advance_ns(MS);
            let now_ms = (self.clock.now_ns() - T0) / MS;
            let sync_ms = SYNC / MS;
            for i in 0..self.nodes.len() {
                // Staggered phases: node i syncs at i x (interval / n).
                if (now_ms - i as i64 * sync_ms / n).rem_euclid(sync_ms) == 0 {
                    self.sync(i);
                }
            }
            let _ = t;
        }
        admitted
    }
}

/// The merge script's rule: a counter is written only when greater (parameters always).
fn merge_field(hash: &mut HashMap<String, String>, field: &str, value: &str) {
    let Ok(v) = value.parse::<i128>() else {
        return;
    };
    let param = field.ends_with(":capacity") || field.ends_with(":rate");
    let greater = match hash.get(field).map(|c| c.parse::<i128>()) {
        Some(Ok(cur)) => v > cur,
        _ => true,
    };
    if param || greater {
        hash.insert(field.to_string(), value.to_string());
    }
}

fn ideal(ms: i64) -> f64 {
    CAPACITY as f64 + RATE * ms as f64 / 1000.0
}

#[test]
fn balanced_overload_stays_within_five_percent() {
    let mut c = Cluster::new(3);
    let admitted = c.run(10_000, &[1, 1, 1]);
    let ratio = admitted as f64 / ideal(10_000);
    println!("balanced: admitted {admitted}, ratio {ratio:.4}");
    assert!((0.95..=1.05).contains(&ratio), "ratio {ratio}");
}

#[test]
fn skewed_overload_stays_within_five_percent() {
    let mut c = Cluster::new(3);
    let admitted = c.run(10_000, &[8, 1, 1]);
    let ratio = admitted as f64 / ideal(10_000);
    println!("skewed: admitted {admitted}, ratio {ratio:.4}");
    assert!((0.95..=1.05).contains(&ratio), "ratio {ratio}");
}

#[test]
fn simultaneous_burst_onto_a_full_bucket_admits_at_most_1_25_capacity() {
    let c = Cluster::new(3);
    let mut admitted = 0;
    for _ in 0..CAPACITY {
        for i in 0..3 {
            admitted += u64::from(c.request(i));
        }
    }
    println!("burst: admitted {admitted} of capacity {CAPACITY}");
    assert!(
        admitted as f64 <= 1.25 * CAPACITY as f64,
        "admitted {admitted}"
    );
    assert!(
        admitted as f64 >= 0.9 * CAPACITY as f64,
        "admitted {admitted}"
    );
}

#[test]
fn burst_through_one_node_after_idle_admits_its_share() {
    let mut c = Cluster::new(3);
    // Some earlier traffic, then 5 s idle: the bucket is full again.
    c.run(1_000, &[1, 1, 1]);
    c.run(5_000, &[0, 0, 0]);
    let admitted = (0..CAPACITY).filter(|_| c.request(0)).count() as u64;
    println!("single-node burst after idle: admitted {admitted}");
    assert!(admitted >= CAPACITY / 3, "admitted {admitted}");
    assert!(admitted <= CAPACITY, "admitted {admitted}");
}

#[test]
fn a_node_leaving_returns_its_share_and_a_node_joining_gets_one() {
    let mut c = Cluster::new(3);
    // Node 2 leaves after 2 s; the others keep overloading.
    let first = c.run(2_000, &[1, 1, 1]);
    let second = c.run(8_000, &[1, 1, 0]);
    let ratio = (first + second) as f64 / ideal(10_000);
    println!("leave: ratio {ratio:.4}");
    assert!((0.95..=1.05).contains(&ratio), "ratio {ratio}");
    // Node 2 joins again; within a few syncs the three share the refill.
    let third = c.run(5_000, &[1, 1, 1]);
    let ratio = third as f64 / (RATE * 5.0);
    println!("join: ratio {ratio:.4}");
    assert!((0.95..=1.05).contains(&ratio), "ratio {ratio}");
}
