//! The in-memory bucket store: every live bucket of every limit, sharded by key hash so that
//! requests on different keys rarely touch the same lock.
//!
//! A route may charge several limits; [`Store::charge`] charges all of them or none: it locks
//! the shards involved in ascending order (no deadlock), evaluates every bucket, and commits
//! the costs only when every enforcing limit can pay. A `shadow` limit that cannot pay is
//! reported but does not block the request, and is not charged (a bucket never goes below zero
//! on its own node).

use crate::limit::bucket::{Bucket, BucketParams, Counters, Decision};
use crate::limit::clock::Clock;
use crate::limit::pacing::Pace;
use hashbrown::hash_map::RawEntryMut;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const SHARDS: usize = 64;
// A charge collects the shards it locks in a 64-bit set.
const _: () = assert!(SHARDS <= 64);

/// Per-request lists: a route charges a handful of limits, so these stay on the stack.
pub type Small<T> = SmallVec<[T; 2]>;

/// One limit as the running config defines it.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    pub name: String,
    pub params: BucketParams,
    pub shadow: bool,
}

/// One bucket to charge.
pub struct Charge<'a> {
    pub limit: &'a LimitSpec,
    pub key: &'a str,
    pub cost: u64,
}

/// What [`Store::charge`] decided.
#[derive(Debug, Clone)]
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

/// A bucket and its sync state.
struct Entry {
    bucket: Bucket,
    /// Changed since the last successful push to the shared store.
    dirty: bool,
    /// Created since the last read from the shared store: its counters start from zero and
    /// must be rebased onto what the store holds (see [`Store::absorb`]).
    fresh: bool,
    /// Touched after more than a few sync intervals without a read: the view may lag far
    /// behind the other nodes, so the next sync reads before it writes (see [`Store::absorb`]).
    stale: bool,
    /// Shared mode only (boxed, so a standalone bucket stays small): sync time and pace.
    sync: Option<Box<SyncState>>,
}

/// What a shared bucket needs besides its counters.
#[derive(Default)]
struct SyncState {
    /// When the bucket was last merged with the shared store.
    synced_ns: i64,
    /// This node's allowance between syncs.
    pace: Pace,
}

struct Shard {
    /// aHash: keys are client-chosen, so a keyed hash (random per process), and faster than
    /// SipHash on short keys. One hash per request picks the shard and probes its map.
    map: hashbrown::HashMap<Box<str>, Entry, ahash::RandomState>,
    /// Keys whose entry turned dirty, each listed once until drained.
    dirty: Vec<Box<str>>,
}

impl Shard {
    fn mark_dirty(&mut self, key: &str) {
        if let Some(e) = self.map.get_mut(key) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(key.into());
            }
        }
    }
}

/// A bucket to push to the shared store: its store key, this node's counters, and whether it
/// must first be read (fresh).
#[derive(Debug, Clone)]
pub struct DirtyBucket {
    pub store_key: String,
    pub own: Counters,
    pub fresh: bool,
}

/// Sharded map from `"{limit}:{key}"` to bucket.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// The hasher of every shard's map (same keys), so a key is hashed once.
    hasher: ahash::RandomState,
    clock: Arc<dyn Clock>,
    /// Buckets are shared through Redis: track what changed for the sync loop, and pace.
    shared: bool,
    /// Live nodes sharing the buckets (from the sync loop's registry).
    live_nodes: AtomicU32,
    /// A pace older than this (no sync of its bucket) falls back to the equal share.
    stale_ns: AtomicI64,
    /// The sync interval (shared mode), for the Redis TTL of a bucket.
    sync_interval_ns: AtomicI64,
    /// Most buckets per shard (`max_buckets` / shards, at least 1).
    shard_cap: AtomicUsize,
    /// Requests refused because their bucket could not be created (the store was full).
    overflows: AtomicU64,
}

thread_local! {
    /// The store keys of one charge, concatenated: built without allocating per request.
    static KEYS: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Shard locks are parking_lot's: a lock and an unlock are one atomic operation each, with
/// none of std's poisoning checks. No code panics while holding a shard lock; if one ever
/// did, the map is still consistent (each operation is a single insert or field update), so
/// the next request is served as usual.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock()
}

impl LimitSpec {
    /// The key part of one of this limit's store keys.
    pub fn key_of<'k>(&self, store_key: &'k str) -> &'k str {
        store_key.get(self.name.len() + 1..).unwrap_or_default()
    }
}

/// The store key of a bucket: limit names contain no ':' (checked by the config).
pub fn store_key(limit: &str, key: &str) -> String {
    let mut s = String::with_capacity(limit.len() + 1 + key.len());
    push_limit_prefix(&mut s, limit);
    s.push_str(key);
    s
}

/// The `LIMIT:` that starts every store key of `limit`.
#[inline]
pub fn push_limit_prefix(out: &mut String, limit: &str) {
    out.push_str(limit);
    out.push(':');
}

impl Store {
    pub fn new(clock: Arc<dyn Clock>, shared: bool) -> Self {
        let hasher = ahash::RandomState::new();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: hashbrown::HashMap::with_hasher(hasher.clone()),
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
            shard_cap: AtomicUsize::new(usize::MAX),
            sync_interval_ns: AtomicI64::new(100_000_000),
            overflows: AtomicU64::new(0),
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

    pub fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }

    /// The hash of a store key, and its shard, from bits 32-37 of the hash: the maps use the
    /// low bits (slot) and the top seven (tag), which must stay spread within a shard.
    fn locate(&self, key: &str) -> (u64, usize) {
        let h = self.hasher.hash_one(key);
        (h, (h >> 32) as usize % SHARDS)
    }

    fn shard_of(&self, key: &str) -> usize {
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
        self.charge_store_keys(charges, |i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &buf[start..ends[i]]
        })
    }

    /// [`Store::charge`] for charges whose `key` is already the store key (`LIMIT:KEY`, see
    /// [`store_key`]): the request path writes its keys that way, so they are not copied.
    pub fn charge_prefixed(&self, charges: &[Charge<'_>]) -> ChargeResult {
        debug_assert!(charges
            .iter()
            .all(|c| store_key(&c.limit.name, c.limit.key_of(c.key)) == c.key));
        self.charge_store_keys(charges, |i| charges[i].key)
    }

    fn charge_store_keys<'k>(
        &self,
        charges: &[Charge<'_>],
        key_of: impl Fn(usize) -> &'k str,
    ) -> ChargeResult {
        let now = self.clock.now_ns();
        let mut located: Small<(u64, usize)> = SmallVec::new();
        // The shards to lock, as a set: locked in ascending order, so that two requests
        // never wait on each other's locks.
        let mut shards = 0u64;
        for i in 0..charges.len() {
            let (hash, sid) = self.locate(key_of(i));
            located.push((hash, sid));
            shards |= 1 << sid;
        }
        let mut guards: Small<(usize, MutexGuard<'_, Shard>)> = SmallVec::new();
        while shards != 0 {
            let sid = shards.trailing_zeros() as usize;
            guards.push((sid, lock(&self.shards[sid])));
            shards &= shards - 1;
        }

        let single = charges.len() == 1;
        let mut decisions: Small<Decision> = SmallVec::new();
        let mut rejected_by: Option<usize> = None;
        let mut shadow_rejected: Small<usize> = SmallVec::new();
        // Charges paid in the first pass: (index, consumed before, spent before).
        let mut paid: Small<(usize, u64, Option<u64>)> = SmallVec::new();
        for (i, c) in charges.iter().enumerate() {
            let (hash, sid) = located[i];
            let key = key_of(i);
            let shard = guard_for(&mut guards, sid);
            let shared = self.shared;
            let cap = self.shard_cap.load(Ordering::Relaxed);
            let Some(entry) = bucket_entry(shard, hash, key, &c.limit.params, now, (cap, shared))
            else {
                // No room for a new bucket: refused (a shadow limit only reports it).
                self.overflows.fetch_add(1, Ordering::Relaxed);
                let d = Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after_ns: 1_000_000_000,
                    full_in_ns: 0,
                    never: false,
                };
                if c.limit.shadow {
                    shadow_rejected.push(i);
                } else if rejected_by
                    .is_none_or(|r| d.retry_after_ns > decisions_retry(&decisions, r))
                {
                    rejected_by = Some(i);
                }
                decisions.push(d);
                continue;
            };
            if let Some(sync) = entry.sync.as_ref() {
                if !entry.fresh
                    && now.saturating_sub(sync.synced_ns) > self.stale_ns.load(Ordering::Relaxed)
                {
                    entry.stale = true;
                }
            }
            let tokens = entry.bucket.tokens_units(&c.limit.params, now);
            let mut d = Bucket::decide(&c.limit.params, tokens, c.cost);
            entry.bucket.record_attempt();
            if let (true, Some(sync)) = (d.allowed, entry.sync.as_mut()) {
                let live = self.live_nodes.load(Ordering::Relaxed);
                let stale = self.stale_ns.load(Ordering::Relaxed);
                if let Err(wait) =
                    sync.pace
                        .check(&c.limit.params, c.cost, tokens, now, live, stale)
                {
                    // This node's share is spent: nothing left here until it refills.
                    d.allowed = false;
                    d.remaining = 0;
                    d.retry_after_ns = wait;
                }
            }
            // Pay now, with the entry in hand; should a later limit refuse, the payments are
            // undone below, under the same locks (a refusal is the rare case: it alone costs a
            // second lookup).
            if d.allowed {
                if !single {
                    paid.push((
                        i,
                        entry.bucket.own_consumed(),
                        entry.sync.as_ref().map(|s| s.pace.spent()),
                    ));
                }
                entry.bucket.commit(c.cost);
                if let Some(sync) = entry.sync.as_mut() {
                    sync.pace.spend(c.cost);
                }
            }
            let newly_dirty = shared && !entry.dirty;
            if newly_dirty {
                entry.dirty = true;
                shard.dirty.push(key.into());
            }
            if !d.allowed {
                if c.limit.shadow {
                    shadow_rejected.push(i);
                } else {
                    let longer = rejected_by
                        .map(|r: usize| d.retry_after_ns > decisions_retry(&decisions, r))
                        .unwrap_or(true);
                    if longer {
                        rejected_by = Some(i);
                    }
                }
            }
            decisions.push(d);
        }
        if rejected_by.is_some() {
            for &(i, consumed, spent) in &paid {
                let (hash, sid) = located[i];
                let shard = guard_for(&mut guards, sid);
                if let Some(e) = get_hashed(shard, hash, key_of(i)) {
                    e.bucket.uncommit_to(consumed);
                    if let (Some(sync), Some(spent)) = (e.sync.as_mut(), spent) {
                        sync.pace.unspend_to(spent);
                    }
                }
            }
        }
        ChargeResult {
            decisions,
            rejected_by,
            shadow_rejected,
        }
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

    /// Drops buckets that are full (their state says nothing a new bucket would not) and those
    /// whose limit no longer exists. Returns how many were dropped.
    pub fn evict_idle(&self, params_of: impl Fn(&str) -> Option<BucketParams>) -> usize {
        let now = self.clock.now_ns();
        let interval = std::time::Duration::from_nanos(
            u64::try_from(self.sync_interval_ns.load(Ordering::Relaxed)).unwrap_or(0),
        );
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let before = shard.map.len();
            shard.map.retain(|k, e| {
                let limit = k.split_once(':').map_or(&**k, |(l, _)| l);
                match params_of(limit) {
                    // Unpushed changes stay until the sync loop has written them, and a shared
                    // bucket stays as long as its hash may live in Redis (the TTL from its last
                    // sync): if Redis restarts empty meanwhile, this node restores it from here.
                    Some(p) => {
                        let kept_for_redis = e.sync.as_ref().is_some_and(|sync| {
                            let ttl_ms = p.state_ttl_ms(interval);
                            let ttl_ns = i64::try_from(ttl_ms)
                                .unwrap_or(i64::MAX)
                                .saturating_mul(1_000_000);
                            now.saturating_sub(sync.synced_ns) <= ttl_ns
                        });
                        e.dirty
                            || kept_for_redis
                            || !(p.initial_tokens() == p.capacity() && e.bucket.is_full(&p, now))
                    }
                    None => false,
                }
            });
            dropped += before - shard.map.len();
        }
        dropped
    }

    /// Re-bases every bucket of `limit` onto new parameters, carrying its tokens over.
    pub fn rebase(&self, limit: &str, old: &BucketParams, new: &BucketParams) {
        let now = self.clock.now_ns();
        for s in self.shards.iter() {
            let mut shard = lock(s);
            for (k, e) in shard.map.iter_mut() {
                if k.split_once(':').map(|(l, _)| l) == Some(limit) {
                    e.bucket = e.bucket.carry_over(old, new, now);
                }
            }
        }
    }

    /// Per limit: (live buckets, lowest whole tokens among them).
    pub fn stats(
        &self,
        params_of: impl Fn(&str) -> Option<BucketParams>,
    ) -> HashMap<String, (u64, u64)> {
        let now = self.clock.now_ns();
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, e) in shard.map.iter() {
                let limit = k.split_once(':').map_or(&**k, |(l, _)| l);
                let Some(p) = params_of(limit) else { continue };
                let tokens = e.bucket.peek(&p, 0, now).remaining;
                let e = out.entry(limit.to_string()).or_insert((0, u64::MAX));
                e.0 += 1;
                e.1 = e.1.min(tokens);
            }
        }
        out
    }

    /// Takes the list of buckets changed since the last call, with this node's counters.
    /// They stay marked dirty (and are not evicted) until [`Store::absorb`] confirms them;
    /// on a failed push, [`Store::requeue`] lists them again.
    pub fn take_dirty(&self) -> Vec<DirtyBucket> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let keys = std::mem::take(&mut shard.dirty);
            for k in keys {
                if let Some(e) = shard.map.get(&*k) {
                    out.push(DirtyBucket {
                        store_key: k.to_string(),
                        own: *e.bucket.own(),
                        fresh: e.fresh || e.stale,
                    });
                }
            }
        }
        out
    }

    /// Lists buckets again after a failed push.
    pub fn requeue(&self, keys: impl IntoIterator<Item = String>) {
        for k in keys {
            let mut shard = lock(&self.shards[self.shard_of(&k)]);
            if let Some(e) = shard.map.get_mut(k.as_str()) {
                e.dirty = false;
                shard.mark_dirty(&k);
            }
        }
    }

    /// Lists every bucket for a push (after the shared store lost its data).
    pub fn mark_all_dirty(&self) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let keys: Vec<Box<str>> = shard.map.keys().cloned().collect();
            for k in keys {
                shard.mark_dirty(&k);
            }
        }
    }

    /// Sets what the sync loop knows of the cluster: live nodes and the sync interval.
    pub fn set_cluster(&self, live_nodes: u32, sync_interval_ns: i64) {
        self.live_nodes.store(live_nodes.max(1), Ordering::Relaxed);
        self.sync_interval_ns
            .store(sync_interval_ns, Ordering::Relaxed);
        self.stale_ns
            .store(sync_interval_ns.saturating_mul(3), Ordering::Relaxed);
    }

    /// Merges what the shared store holds for a bucket (`nodes`: every node's counters, this
    /// node's under `me`), then recomputes this node's pace. `pushed` says whether this
    /// node's counters were written in the same round trip (then the entry is clean unless it
    /// changed meanwhile).
    ///
    /// A fresh bucket (created since the last read) counted from zero: its own counters are
    /// rebased onto the stored ones (stored + what it took since), and its waste becomes the
    /// stored one, so a bucket evicted from memory, or a restarted node, continues where the
    /// store says instead of starting full again. It is then pushed on the next sync.
    pub fn absorb(
        &self,
        store_key: &str,
        me: &str,
        nodes: &BTreeMap<String, Counters>,
        params: &BucketParams,
        pushed: bool,
    ) {
        let now = self.clock.now_ns();
        let own_stored = nodes.get(me).copied();
        let (mut others_consumed, mut others_waste) = (0u64, None::<i128>);
        for (_, c) in nodes.iter().filter(|(n, _)| n.as_str() != me) {
            others_consumed = others_consumed.saturating_add(c.consumed);
            others_waste = Some(others_waste.map_or(c.waste, |w| w.max(c.waste)));
        }
        let live = self.live_nodes.load(Ordering::Relaxed);
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let relist = {
            let Some(e) = shard.map.get_mut(store_key) else {
                return;
            };
            if e.fresh && !nodes.is_empty() {
                e.bucket
                    .rebase_on_store(own_stored.as_ref(), others_consumed, others_waste);
            } else if e.stale {
                // Waste raised locally on a lagging view would over-state the refill lost at
                // the cap by everything the others spent meanwhile: take the stored one.
                e.bucket
                    .refresh_from_store(own_stored.as_ref(), others_consumed, others_waste);
            } else {
                let own = own_stored.unwrap_or(Counters {
                    consumed: 0,
                    attempts: 0,
                    waste: i128::MIN,
                });
                e.bucket
                    .absorb(&own, others_consumed, others_waste.unwrap_or(i128::MIN));
            }
            let tokens = e.bucket.tokens_units(params, now);
            let own_attempts = e.bucket.own().attempts;
            let sync = e.sync.get_or_insert_with(Default::default);
            sync.pace
                .resync((me, own_attempts), nodes, live, tokens, now);
            sync.synced_ns = now;
            let was_fresh = e.fresh || e.stale;
            e.fresh = false;
            e.stale = false;
            // Clean only if what was pushed is still all there is. Waste alone does not count:
            // evaluating a full bucket raises it (the cap), which any node recomputes from the
            // same counters, so pushing it would keep every full bucket syncing forever.
            let own = e.bucket.own();
            let changed = !pushed
                || was_fresh
                || own_stored
                    .is_none_or(|o| o.consumed != own.consumed || o.attempts != own.attempts);
            e.dirty = false;
            changed
        };
        if relist {
            shard.mark_dirty(store_key);
        }
    }

    /// Loads a bucket that the shared store holds (a starting node reading its own fields
    /// back): created if absent, then merged as a fresh bucket, so it continues the stored
    /// counters; it is pushed on the next sync.
    pub fn preload(
        &self,
        store_key: &str,
        me: &str,
        nodes: &BTreeMap<String, Counters>,
        params: &BucketParams,
    ) {
        let now = self.clock.now_ns();
        {
            let (hash, sid) = self.locate(store_key);
            let mut shard = lock(&self.shards[sid]);
            let cap = self.shard_cap.load(Ordering::Relaxed);
            if bucket_entry(&mut shard, hash, store_key, params, now, (cap, self.shared)).is_none()
            {
                return;
            }
        }
        self.absorb(store_key, me, nodes, params, false);
    }

    /// Number of live buckets.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn decisions_retry(decisions: &[Decision], i: usize) -> u64 {
    decisions.get(i).map_or(0, |d| d.retry_after_ns)
}

fn guard_for<'g, 'a>(guards: &'g mut [(usize, MutexGuard<'a, Shard>)], id: usize) -> &'g mut Shard {
    let pos = guards.iter().position(|(i, _)| *i == id).unwrap_or(0);
    &mut guards[pos].1
}

/// The entry of `key` (hash `hash`), created when missing unless the shard holds `cap`
/// entries already: one probe, and the key is allocated only on insertion.
#[inline]
fn bucket_entry<'s>(
    shard: &'s mut Shard,
    hash: u64,
    key: &str,
    p: &BucketParams,
    now: i64,
    (cap, shared): (usize, bool),
) -> Option<&'s mut Entry> {
    let len = shard.map.len();
    match shard.map.raw_entry_mut().from_key_hashed_nocheck(hash, key) {
        RawEntryMut::Occupied(o) => Some(o.into_mut()),
        RawEntryMut::Vacant(_) if len >= cap => None,
        RawEntryMut::Vacant(v) => Some(new_entry(v, hash, key, p, now, shared)),
    }
}

/// Inserts a new bucket's entry: out of line, so that finding an existing one (nearly every
/// request) is inlined into the charge.
#[cold]
#[inline(never)]
fn new_entry<'s>(
    v: hashbrown::hash_map::RawVacantEntryMut<'s, Box<str>, Entry, ahash::RandomState>,
    hash: u64,
    key: &str,
    p: &BucketParams,
    now: i64,
    shared: bool,
) -> &'s mut Entry {
    v.insert_hashed_nocheck(
        hash,
        key.into(),
        Entry {
            bucket: Bucket::new(p, now),
            dirty: false,
            fresh: true,
            stale: false,
            sync: shared.then(|| {
                Box::new(SyncState {
                    synced_ns: now,
                    pace: Pace::default(),
                })
            }),
        },
    )
    .1
}

fn get_hashed<'s>(shard: &'s mut Shard, hash: u64, key: &str) -> Option<&'s mut Entry> {
    match shard.map.raw_entry_mut().from_key_hashed_nocheck(hash, key) {
        RawEntryMut::Occupied(o) => Some(o.into_mut()),
        RawEntryMut::Vacant(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::clock::ManualClock;

    const SEC: i64 = 1_000_000_000;

    fn spec(name: &str, capacity: u64, rate: f64, shadow: bool) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            params: BucketParams::new(capacity, rate, capacity).unwrap(),
            shadow,
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
        // Two nodes: this one may spend half of each new bucket.
        let (wide, narrow) = wide_and_narrow();
        let charges = both(&wide, &narrow);
        assert!(s.charge(&charges).allowed());
        // Narrow's share (1 token) is spent: refused, and wide's payment is undone.
        assert_eq!(s.charge(&charges).rejected_by, Some(1));
        for _ in 0..4 {
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
        s.rebase("l", &old.params, &bigger.params);
        assert_eq!(s.peek(&bigger, "k", 0).remaining, 3);
        let smaller = spec("l", 2, 1.0, false);
        s.rebase("l", &bigger.params, &smaller.params);
        assert_eq!(s.peek(&smaller, "k", 0).remaining, 2);
    }

    #[test]
    fn dirty_tracking_and_absorb_for_the_sync_loop() {
        let (_clock, s) = store_shared(true);
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
        s.absorb("l:k", "me", &one(stored), &l.params, false);
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
        s.absorb("l:k", "me", &both, &l.params, true);
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
            s.absorb("l:k", "me", &nodes, &l.params, pushed);
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
            s.absorb("l:k", "me", &nodes, &l.params, pushed);
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
        s.absorb("l:k", "me", &nodes, &l.params, true);
        nodes.insert(
            "other".to_string(),
            Counters {
                consumed: 100,
                attempts: 1000,
                waste: 0,
            },
        );
        s.absorb("l:k", "me", &nodes, &l.params, true);
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
