//! The in-memory bucket store: every live bucket of every limit, sharded by key hash so that
//! requests on different keys rarely touch the same lock.
//!
//! A route may charge several limits; [`Store::charge`] charges all of them or none: it locks
//! the shards involved in ascending order (no deadlock), evaluates every bucket, and commits
//! the costs only when every enforcing limit can pay. A `shadow` limit that cannot pay is
//! reported but does not block the request, and is not charged (a bucket never goes below zero
//! on its own node).

use super::store_entry::{is_quiet, lock, Entry, Listed, Shard, View};
use super::store_key::KeyHasher;
pub use super::store_key::{
    eq_short, limit_of, push_limit_prefix, push_short, push_within, split_store_key, store_key,
};
use super::store_slab::Entries;
use crate::limit::bucket::{Bucket, Decision};
use crate::limit::clock::Clock;
pub use crate::limit::overrides::LimitSpec;
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const SHARDS: usize = 64;
// A charge collects the shards it locks in a 64-bit set.
const _: () = assert!(SHARDS <= 64);

/// Per-request lists: a route charges a handful of limits, so these stay on the stack (up to
/// four: a plan's bucket and quota, a concurrency limit and a response cost, without an
/// allocation).
pub type Small<T> = SmallVec<[T; 4]>;

/// One bucket to charge.
pub struct Charge<'a> {
    pub limit: &'a LimitSpec,
    pub key: &'a str,
    pub cost: u64,
}

/// What [`Store::charge`] decided.
#[derive(Debug, Clone, Default)]
pub struct ChargeResult {
    /// One decision per charge, in order; `allowed` means "could pay".
    pub decisions: Small<Decision>,
    /// The enforcing limit (index into the charges) that refused, if any: the one that needs
    /// the longest wait.
    pub rejected_by: Option<usize>,
    /// Shadow limits that could not pay.
    pub shadow_rejected: Small<usize>,
}

impl ChargeResult {
    pub fn allowed(&self) -> bool {
        self.rejected_by.is_none()
    }
}

/// The decision on a key exempt from a limit (an `unlimited` override): allowed, nothing
/// taken, never the limit to report.
pub const EXEMPT: Decision = Decision {
    allowed: true,
    remaining: u64::MAX,
    retry_after_ns: 0,
    full_in_ns: 0,
    never: false,
};

/// Sharded map from `"{limit}:{key}"` to bucket (each shard a slab behind a table of slot
/// numbers, see `limit::store_slab`).
pub struct Store {
    pub(super) shards: Box<[Mutex<Shard>]>,
    /// The hasher of every shard's map (same keys), so a key is hashed once.
    pub(super) hasher: KeyHasher,
    pub(super) clock: Arc<dyn Clock>,
    /// Buckets are shared through Redis: track what changed for the sync loop, and pace.
    pub(super) shared: bool,
    /// Live nodes sharing the buckets (from the sync loop's registry).
    pub(super) live_nodes: AtomicU32,
    /// A pace older than this (no sync of its bucket) falls back to the equal share.
    pub(super) stale_ns: AtomicI64,
    /// The sync interval (shared mode), for the Redis TTL of a bucket.
    pub(super) sync_interval_ns: AtomicI64,
    /// The shared store answered the last sync round.
    pub(super) connected: AtomicBool,
    /// The oldest last sync among the other live nodes (see [`Store::set_others_synced`]).
    pub(super) others_synced_ns: AtomicI64,
    /// The shard [`Store::take_dirty_up_to`] starts from next.
    pub(super) dirty_cursor: AtomicUsize,
    /// Most buckets per shard (`max_buckets` / shards, at least 1).
    pub(super) shard_cap: AtomicUsize,
    /// Requests refused because their bucket could not be created (the store was full).
    pub(super) overflows: AtomicU64,
    /// Light buckets may stay quiet (see [`crate::limit::store_quiet`]).
    pub(super) quiet: AtomicBool,
    /// The shard the quiet check scans next.
    pub(super) quiet_cursor: AtomicUsize,
    /// Called when a bucket new to this node is listed for a sync: the sync loop then runs a
    /// round at once instead of at its next tick (see [`Store::set_waker`]).
    pub(super) waker: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

thread_local! {
    /// The store keys of one charge, concatenated: built without allocating per request.
    static KEYS: RefCell<String> = const { RefCell::new(String::new()) };
}

impl LimitSpec {
    /// The key part of one of this limit's store keys.
    pub fn key_of<'k>(&self, store_key: &'k str) -> &'k str {
        store_key.get(self.name.len() + 1..).unwrap_or_default()
    }
}

impl Store {
    pub fn new(clock: Arc<dyn Clock>, shared: bool) -> Self {
        let hasher = KeyHasher::default();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: Entries::new(hasher.clone()),
                    dirty: Vec::new(),
                })
            })
            .collect();
        Store {
            shards,
            hasher,
            clock,
            shared,
            live_nodes: AtomicU32::new(1),
            stale_ns: AtomicI64::new(300_000_000),
            connected: AtomicBool::new(true),
            others_synced_ns: AtomicI64::new(0),
            dirty_cursor: AtomicUsize::new(0),
            shard_cap: AtomicUsize::new(usize::MAX),
            sync_interval_ns: AtomicI64::new(100_000_000),
            overflows: AtomicU64::new(0),
            quiet: AtomicBool::new(true),
            quiet_cursor: AtomicUsize::new(0),
            waker: std::sync::OnceLock::new(),
        }
    }

    /// Caps the buckets held in memory (`max_buckets`). At the cap, a request whose bucket
    /// does not exist yet is refused (429, retry after one second) rather than evicting a
    /// bucket that still holds state: evicting one would hand its client a full bucket again.
    /// Full buckets say nothing a new one would not, and the housekeeping sweep evicts them,
    /// which makes room (as nginx's `limit_req` zone does, answering 503 when full).
    pub fn set_max_buckets(&self, max: u64) {
        let per_shard = usize::try_from(max / SHARDS as u64)
            .unwrap_or(usize::MAX)
            .max(1);
        self.shard_cap.store(per_shard, Ordering::Relaxed);
    }

    /// Requests refused so far because the store was at `max_buckets`.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    pub(super) fn live(&self) -> u32 {
        self.live_nodes.load(Ordering::Relaxed)
    }

    pub fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }

    /// The hash of a store key, and its shard, from bits 32-37 of the hash: the maps use the
    /// low bits (slot) and the top seven (tag), which must stay spread within a shard.
    pub(super) fn locate(&self, key: &str) -> (u64, usize) {
        let h = self.hasher.hash_one(key);
        (h, (h >> 32) as usize % SHARDS)
    }

    pub(super) fn shard_of(&self, key: &str) -> usize {
        self.locate(key).1
    }

    /// Charges every bucket in `charges` or none of them.
    pub fn charge(&self, charges: &[Charge<'_>]) -> ChargeResult {
        KEYS.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => self.charge_with(charges, &mut buf),
            // Not reentrant in practice; a fresh buffer keeps it correct if it ever were.
            Err(_) => self.charge_with(charges, &mut String::new()),
        })
    }

    fn charge_with(&self, charges: &[Charge<'_>], buf: &mut String) -> ChargeResult {
        buf.clear();
        let mut ends: Small<usize> = SmallVec::new();
        for c in charges {
            push_limit_prefix(buf, &c.limit.name);
            buf.push_str(c.key);
            ends.push(buf.len());
        }
        let of = |i: usize| Some((charges[i].limit, charges[i].cost));
        let mut out = ChargeResult::default();
        self.charge_store_keys(
            charges.len(),
            of,
            |i| {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                &buf[start..ends[i]]
            },
            &mut out,
        );
        out
    }

    /// [`Store::charge`] for `n` charges whose keys are already store keys
    /// (`LIMIT:KEY`, see [`store_key`]): charge `i` is `cost(i)` to limit `limit_of(i)` on `key_of(i)`,
    /// or to nothing when `limit_of(i)` is `None` (a key exempt from that limit: its decision
    /// is [`EXEMPT`]). The request path writes its keys that way, so they are neither copied
    /// nor listed again. The decisions go into `out` (empty), which the caller keeps: returned,
    /// they were copied once more (about 30 instructions a request).
    #[inline]
    pub fn charge_prefixed<'l, 'k>(
        &self,
        n: usize,
        limit_of: impl Fn(usize) -> Option<&'l LimitSpec>,
        key_of: impl Fn(usize) -> &'k str,
        cost: impl Fn(usize) -> u64,
        out: &mut ChargeResult,
    ) {
        debug_assert!((0..n).all(|i| {
            let k = key_of(i);
            limit_of(i).is_none_or(|l| store_key(&l.name, l.key_of(k)) == k)
        }));
        self.charge_store_keys(n, |i| limit_of(i).map(|l| (l, cost(i))), key_of, out)
    }

    /// Shared mode: notes a charge's change to `entry` (quiet or not: see
    /// [`crate::limit::store_quiet`]); returns the list its key must join, if any, and whether
    /// it is a bucket new to this node listed for a sync (the sync loop is woken for it).
    #[inline(always)]
    pub(super) fn listing(
        &self,
        entry: &mut Entry,
        limit: &LimitSpec,
        d: &Decision,
        now: i64,
    ) -> Option<(Listed, bool)> {
        if !self.shared {
            return None;
        }
        // A concurrency limit is never quiet: every slot taken or given back is written.
        let quiet = self.quiet.load(Ordering::Relaxed)
            && !limit.params.is_slots()
            && is_quiet(
                entry,
                (&limit.params, limit.burst_guard),
                d,
                now,
                self.live(),
            );
        let list = entry.note_change(quiet)?;
        let new = matches!(list, Listed::Dirty) && entry.view == View::New;
        Some((list, new))
    }

    /// Sets what to call when a bucket new to this node is listed for a sync (the sync loop's
    /// wake-up; once). Syncing such a bucket at once, rather than at the next tick, shortens
    /// the time a node spends a bucket it has not read: a node that joins a busy key learns
    /// its state after one round trip instead of up to one interval later.
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.waker.set(Box::new(wake));
    }

    #[cold]
    pub(super) fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }

    /// One bucket's decision on a charge, pace included; records the attempt.
    #[inline(always)]
    pub(super) fn evaluate(
        &self,
        entry: &mut Entry,
        limit: &LimitSpec,
        cost: u64,
        now: i64,
    ) -> Decision {
        entry.roll(&limit.params, now);
        if limit.params.is_slots() {
            return self.evaluate_slots(entry, limit, cost, now);
        }
        if let Some(sync) = entry.sync.as_ref() {
            if entry.view != View::New
                && now.saturating_sub(sync.synced_ns) > self.stale_ns.load(Ordering::Relaxed)
            {
                entry.view = View::Lagging;
            }
        }
        let tokens = entry.bucket.tokens_units(&limit.params, now);
        let mut d = Bucket::decide(&limit.params, tokens, cost, now);
        entry.bucket.record_attempt();
        if let (true, Some(sync)) = (d.allowed, entry.sync.as_mut()) {
            // No pace yet (a bucket not read): the whole bucket, unless the limit is guarded.
            let pace = match sync.pace {
                Some(ref mut pace) => pace,
                None if limit.burst_guard => sync.pace_or_start(),
                None => return d,
            };
            let cluster = self.cluster(limit.burst_guard);
            if let Err(wait) = pace.check(&limit.params, cost, tokens, now, &cluster) {
                // This node's share is spent: nothing left here until it refills.
                d.allowed = false;
                d.remaining = 0;
                d.retry_after_ns = wait;
            }
        }
        d
    }

    /// Peeks at a bucket without creating or charging it: a missing bucket is a new one.
    pub fn peek(&self, limit: &LimitSpec, key: &str, cost: u64) -> Decision {
        let now = self.clock.now_ns();
        let k = store_key(&limit.name, key);
        let shard = lock(&self.shards[self.shard_of(&k)]);
        match shard.map.get(k.as_str()) {
            Some(e) => e.bucket.peek(&limit.params, cost, now),
            None => Bucket::new(&limit.params, now).peek(&limit.params, cost, now),
        }
    }

    /// Number of live buckets.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decision for a bucket that could not be created (the store is at `max_buckets`).
pub(super) const OVERFLOW: Decision = Decision {
    allowed: false,
    remaining: 0,
    retry_after_ns: 1_000_000_000,
    full_in_ns: 0,
    never: false,
};

impl ChargeResult {
    /// Adds charge `i`'s decision: a refusal by an enforcing limit that needs a longer wait
    /// than the refusals so far becomes the one reported.
    #[inline(always)]
    pub(super) fn push(&mut self, i: usize, shadow: bool, d: Decision) {
        if !d.allowed {
            if shadow {
                self.shadow_rejected.push(i);
            } else if self.rejected_by.is_none_or(|r| {
                d.retry_after_ns > self.decisions.get(r).map_or(0, |x| x.retry_after_ns)
            }) {
                self.rejected_by = Some(i);
            }
        }
        self.decisions.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::{BucketParams, Counters};
    use crate::limit::clock::ManualClock;
    use std::collections::BTreeMap;

    const SEC: i64 = 1_000_000_000;

    fn spec(name: &str, capacity: u64, rate: f64, shadow: bool) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            params: BucketParams::new(capacity, rate, capacity).unwrap(),
            shadow,
            burst_guard: false,
            overrides: Default::default(),
        }
    }

    fn store() -> (Arc<ManualClock>, Store) {
        store_shared(false)
    }

    fn store_shared(shared: bool) -> (Arc<ManualClock>, Store) {
        let clock = Arc::new(ManualClock::new(1_700_000_000 * SEC));
        (clock.clone(), Store::new(clock, shared))
    }

    #[test]
    fn all_or_nothing_across_limits() {
        // Standalone and shared (where the pace's spending is undone too).
        for shared in [false, true] {
            all_or_nothing(shared);
        }
    }

    /// Two limits on one key: 10 tokens and 2.
    fn wide_and_narrow() -> (LimitSpec, LimitSpec) {
        (spec("wide", 10, 1.0, false), spec("narrow", 2, 1.0, false))
    }

    fn both<'a>(wide: &'a LimitSpec, narrow: &'a LimitSpec) -> [Charge<'a>; 2] {
        [wide, narrow].map(|limit| Charge {
            limit,
            key: "k",
            cost: 1,
        })
    }

    #[test]
    fn a_refused_multi_limit_charge_leaves_this_nodes_share_unspent() {
        let (_clock, s) = store_shared(true);
        s.set_cluster(2, SEC);
        // Two nodes, guarded limits: this one may spend a fifth of each new bucket, 20 tokens
        // of wide and 2 of narrow.
        let guarded = |l: LimitSpec| LimitSpec {
            burst_guard: true,
            overrides: Default::default(),
            ..l
        };
        let wide = guarded(spec("wide", 100, 1.0, false));
        let narrow = guarded(spec("narrow", 10, 1.0, false));
        let charges = both(&wide, &narrow);
        assert!(s.charge(&charges).allowed());
        assert!(s.charge(&charges).allowed());
        // Narrow's share is spent: refused, and wide's payment is undone.
        assert_eq!(s.charge(&charges).rejected_by, Some(1));
        for _ in 0..18 {
            assert!(s.charge(&charges[..1]).allowed());
        }
        assert!(!s.charge(&charges[..1]).allowed());
    }

    fn all_or_nothing(shared: bool) {
        let (_clock, s) = store_shared(shared);
        let (wide, narrow) = wide_and_narrow();
        let charges = both(&wide, &narrow);
        assert!(s.charge(&charges).allowed());
        assert!(s.charge(&charges).allowed());
        let r = s.charge(&charges);
        assert_eq!(r.rejected_by, Some(1));
        assert_eq!(s.peek(&wide, "k", 0).remaining, 8);
        assert_eq!(s.peek(&narrow, "k", 0).remaining, 0);
        // The refused charge left the wide bucket as it was: 8 more fit, not 7.
        for _ in 0..8 {
            assert!(s.charge(&charges[..1]).allowed(), "shared: {shared}");
        }
        assert!(!s.charge(&charges[..1]).allowed(), "shared: {shared}");
    }

    #[test]
    fn shadow_limits_never_block_and_are_not_charged_when_dry() {
        let (_clock, s) = store();
        let real = spec("real", 10, 1.0, false);
        let shadow = spec("shadow", 1, 1.0, true);
        let charges = [
            Charge {
                limit: &real,
                key: "k",
                cost: 1,
            },
            Charge {
                limit: &shadow,
                key: "k",
                cost: 1,
            },
        ];
        assert!(s.charge(&charges).allowed());
        let r = s.charge(&charges);
        assert!(r.allowed());
        assert_eq!(r.shadow_rejected.as_slice(), &[1]);
        assert_eq!(s.peek(&real, "k", 0).remaining, 8);
        assert_eq!(s.peek(&shadow, "k", 0).remaining, 0);
    }

    #[test]
    fn refill_follows_the_clock_and_full_buckets_are_evicted() {
        let (clock, s) = store();
        let l = spec("l", 2, 2.0, false);
        let c = [Charge {
            limit: &l,
            key: "k",
            cost: 2,
        }];
        assert!(s.charge(&c).allowed());
        assert!(!s.charge(&c).allowed());
        assert_eq!(s.len(), 1);
        assert_eq!(s.evict_idle(|_| Some(l.params.clone())), 0);
        clock.advance_ns(SEC / 2);
        assert_eq!(s.peek(&l, "k", 0).remaining, 1);
        clock.advance_ns(SEC / 2);
        assert!(s.peek(&l, "k", 2).allowed);
        assert_eq!(s.evict_idle(|_| Some(l.params.clone())), 1);
        assert!(s.is_empty());
        // Buckets of limits that no longer exist go too.
        assert!(s.charge(&c).allowed());
        assert_eq!(s.evict_idle(|_| None), 1);
    }

    #[test]
    fn rebase_carries_tokens_over() {
        let (_clock, s) = store();
        let old = spec("l", 10, 1.0, false);
        assert!(s
            .charge(&[Charge {
                limit: &old,
                key: "k",
                cost: 7
            }])
            .allowed());
        let bigger = spec("l", 100, 1.0, false);
        s.rebase("l", |_| Some(&old.params), |_| Some(&bigger.params));
        assert_eq!(s.peek(&bigger, "k", 0).remaining, 3);
        let smaller = spec("l", 2, 1.0, false);
        s.rebase("l", |_| Some(&bigger.params), |_| Some(&smaller.params));
        assert_eq!(s.peek(&smaller, "k", 0).remaining, 2);
    }

    #[test]
    fn dirty_tracking_and_absorb_for_the_sync_loop() {
        let (_clock, s) = store_shared(true);
        s.set_quiet(false); // the sync of every change, quiet buckets aside
        let l = spec("l", 10, 1.0, false);
        assert!(s
            .charge(&[Charge {
                limit: &l,
                key: "k",
                cost: 1
            }])
            .allowed());
        let d = s.take_dirty();
        assert_eq!(d.len(), 1);
        assert!(d[0].fresh);
        assert_eq!(d[0].store_key, "l:k");
        assert!(s.take_dirty().is_empty(), "listed once");
        // The store knew this node had taken 6 already: the fresh bucket continues from there.
        let stored = Counters {
            consumed: 6,
            attempts: 6,
            waste: d[0].own.waste,
        };
        let one = |c: Counters| BTreeMap::from([("me".to_string(), c)]);
        s.absorb(
            "l:k",
            "me",
            crate::limit::store_sync::Read::counters(&one(stored), None),
            &l,
            None,
        );
        assert_eq!(s.peek(&l, "k", 0).remaining, 3);
        // Rebased counters must be pushed next.
        let d = s.take_dirty();
        assert_eq!(d.len(), 1);
        assert!(!d[0].fresh);
        assert_eq!(d[0].own.consumed, 7);
        // Pushed and confirmed: clean, and evictable once full.
        let mut both = one(d[0].own);
        both.insert(
            "other".into(),
            Counters {
                consumed: 2,
                attempts: 2,
                waste: d[0].own.waste,
            },
        );
        s.absorb(
            "l:k",
            "me",
            crate::limit::store_sync::Read::counters(&both, None),
            &l,
            Some(&d[0].own),
        );
        assert!(s.take_dirty().is_empty());
        assert_eq!(s.peek(&l, "k", 0).remaining, 1);
        // A failed push lists the bucket again.
        assert!(s
            .charge(&[Charge {
                limit: &l,
                key: "k",
                cost: 1
            }])
            .allowed());
        let d = s.take_dirty();
        s.requeue(d.into_iter().map(|b| b.store_key));
        assert_eq!(s.take_dirty().len(), 1);
    }

    #[test]
    fn a_shared_bucket_outlives_fullness_until_its_redis_ttl() {
        let (clock, s) = store_shared(true);
        s.set_quiet(false); // the sync of every change, quiet buckets aside
        s.set_cluster(2, SEC / 10);
        // Capacity 5, refill 5/s: full again one second after its last token.
        let l = spec("l", 5, 5.0, false);
        let c = [Charge {
            limit: &l,
            key: "k",
            cost: 1,
        }];
        assert!(s.charge(&c).allowed());
        // Read (fresh), then pushed: clean.
        for pushed in [false, true] {
            let d = s.take_dirty();
            let mut nodes = BTreeMap::new();
            nodes.insert("me".to_string(), d[0].own);
            s.absorb(
                "l:k",
                "me",
                crate::limit::store_sync::Read::counters(&nodes, None),
                &l,
                pushed.then_some(&d[0].own),
            );
        }
        assert!(s.take_dirty().is_empty());
        // Two seconds on: full, clean, but Redis may still hold it (TTL = 1 s + 10 s margin).
        clock.advance_ns(2 * SEC);
        assert_eq!(s.evict_idle(|_| Some(l.params.clone())), 0);
        // Past the TTL: Redis has dropped it too, so may this node.
        clock.advance_ns(10 * SEC);
        assert_eq!(s.evict_idle(|_| Some(l.params.clone())), 1);
    }

    #[test]
    fn a_full_shared_bucket_stops_syncing() {
        let (clock, s) = store_shared(true);
        s.set_quiet(false); // the sync of every change, quiet buckets aside
        let l = spec("l", 5, 5.0, false);
        let c = [Charge {
            limit: &l,
            key: "k",
            cost: 1,
        }];
        assert!(s.charge(&c).allowed());
        for pushed in [false, true] {
            clock.advance_ns(SEC);
            let d = s.take_dirty();
            assert_eq!(d.len(), 1);
            let mut nodes = BTreeMap::new();
            nodes.insert("me".to_string(), d[0].own);
            // Evaluated full at absorb: the cap raises waste, which is not a change to push.
            s.absorb(
                "l:k",
                "me",
                crate::limit::store_sync::Read::counters(&nodes, None),
                &l,
                pushed.then_some(&d[0].own),
            );
        }
        clock.advance_ns(SEC);
        assert!(
            s.take_dirty().is_empty(),
            "a full, unchanged bucket is pushed again"
        );
    }

    #[test]
    fn a_new_demand_waits_for_the_next_sync_at_most() {
        let (_clock, s) = store_shared(true);
        s.set_cluster(2, SEC / 10);
        let l = spec("l", 1000, 1000.0, false);
        let c = [Charge {
            limit: &l,
            key: "k",
            cost: 1,
        }];
        assert!(s.charge(&c).allowed());
        s.take_dirty();
        // First read keeps the creation allowance; the second sets a share from demand: the
        // other node asked 1000 times since, this one did not ask at all.
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "me".to_string(),
            Counters {
                consumed: 1,
                attempts: 1,
                waste: 0,
            },
        );
        nodes.insert(
            "other".to_string(),
            Counters {
                consumed: 0,
                attempts: 0,
                waste: 0,
            },
        );
        s.absorb(
            "l:k",
            "me",
            crate::limit::store_sync::Read::counters(&nodes, None),
            &l,
            Some(&nodes["me"].clone()),
        );
        nodes.insert(
            "other".to_string(),
            Counters {
                consumed: 100,
                attempts: 1000,
                waste: 0,
            },
        );
        s.absorb(
            "l:k",
            "me",
            crate::limit::store_sync::Read::counters(&nodes, None),
            &l,
            Some(&nodes["me"].clone()),
        );
        // Its floor (a tenth of the equal share) still admits at once, and when that is spent
        // the announced wait never goes past the next sync.
        let mut admitted = 0;
        let mut last = None;
        for _ in 0..200 {
            let r = s.charge(&c);
            if r.allowed() {
                admitted += 1;
            } else {
                last = Some(r.decisions[0].retry_after_ns);
                break;
            }
        }
        assert!(admitted >= 1, "shut out until the next sync");
        let wait = last.expect("the share runs out");
        assert!(wait <= 3 * (SEC as u64) / 10, "wait {wait} ns");
    }

    #[test]
    fn stats_report_count_and_lowest_tokens() {
        let (_clock, s) = store();
        let l = spec("l", 10, 1.0, false);
        s.charge(&[Charge {
            limit: &l,
            key: "a",
            cost: 3,
        }]);
        s.charge(&[Charge {
            limit: &l,
            key: "b",
            cost: 6,
        }]);
        let st = s.stats(|_| Some(l.params.clone()));
        assert_eq!(st.get("l"), Some(&(2, 4)));
    }
}
