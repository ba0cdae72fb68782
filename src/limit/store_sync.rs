//! The store's side of sharing buckets: which buckets changed since the last sync, what this
//! node holds of each, and merging what the shared store holds (the others' counters) back
//! into memory, with the pace recomputed. The sync round ([`crate::shared::round`]) drives
//! these; nothing here does I/O.

use super::bucket::Counters;
use super::pacing::Cluster;
use super::store::LimitSpec;
use super::store::Store;
use super::store_entry::{bucket_entry, lock, View};
use super::store_key::StoreKey;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// A bucket to push to the shared store: its store key, this node's counters, and whether it
/// must first be read (fresh).
#[derive(Debug, Clone)]
pub struct DirtyBucket {
    pub store_key: StoreKey,
    pub own: Counters,
    /// Tokens this node credited by resets, in total (written only when not 0).
    pub credit: u64,
    pub fresh: bool,
}

/// What a sync read of a bucket's hash holds: every node's counters (this node's under its
/// own name), when each node last wrote or announced the bucket (Unix ms), and the window
/// they count (a quota's index, see [`super::window`]; `None` for any other bucket).
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    pub nodes: &'a BTreeMap<String, Counters>,
    pub seen_ms: &'a BTreeMap<String, u64>,
    pub window: Option<i64>,
}

impl<'a> Read<'a> {
    /// A read of counters alone, without when each node wrote (as [`Store::preload`] reads a
    /// bucket back at start).
    pub fn counters(nodes: &'a BTreeMap<String, Counters>, window: Option<i64>) -> Read<'a> {
        static NOT_SEEN: BTreeMap<String, u64> = BTreeMap::new();
        Read {
            nodes,
            seen_ms: &NOT_SEEN,
            window,
        }
    }
}

/// The other nodes' counters of a bucket, as a merge takes them: their consumption summed,
/// their waste the greatest (None when there is none).
pub fn others<'c>(counters: impl IntoIterator<Item = &'c Counters>) -> (u64, Option<i128>) {
    counters
        .into_iter()
        .fold((0u64, None::<i128>), |(consumed, waste), c| {
            (
                consumed.saturating_add(c.consumed),
                Some(waste.map_or(c.waste, |w| w.max(c.waste))),
            )
        })
}

impl Store {
    /// Takes the list of buckets changed since the last call, with this node's counters.
    /// They stay marked dirty (and are not evicted) until [`Store::absorb`] confirms them;
    /// on a failed push, [`Store::requeue`] lists them again.
    pub fn take_dirty(&self) -> Vec<DirtyBucket> {
        self.take_dirty_up_to(usize::MAX)
    }

    /// [`Store::take_dirty`], at most `max` buckets: the oldest of each shard first, the shards
    /// in turn from one further along at each call; the others stay listed for the next.
    pub fn take_dirty_up_to(&self, max: usize) -> Vec<DirtyBucket> {
        let mut out = Vec::new();
        let n = self.shards.len();
        let first = self.dirty_cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let left = max.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let mut shard = lock(&self.shards[(first + i) % n]);
            let take = shard.dirty.len().min(left);
            let keys: Vec<StoreKey> = shard.dirty.drain(..take).collect();
            for k in keys {
                if let Some(e) = shard.map.get(&k) {
                    out.push(DirtyBucket {
                        store_key: k,
                        own: *e.bucket.own(),
                        credit: e.sync.as_ref().map_or(0, |s| s.own_credit),
                        fresh: e.view != View::Current,
                    });
                }
            }
        }
        out
    }

    /// Whether some bucket waits to be pushed.
    pub fn has_dirty(&self) -> bool {
        self.shards.iter().any(|s| !lock(s).dirty.is_empty())
    }

    /// Lists buckets again after a failed push.
    pub fn requeue(&self, keys: impl IntoIterator<Item = StoreKey>) {
        for k in keys {
            let mut shard = lock(&self.shards[self.shard_of(&k)]);
            if let Some(e) = shard.map.get_mut(k.as_str()) {
                e.listed = None;
                shard.mark_dirty(&k);
            }
        }
    }

    /// Lists every bucket for a push (after the shared store lost its data).
    pub fn mark_all_dirty(&self) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let keys: Vec<StoreKey> = shard.map.keys().cloned().collect();
            for k in keys {
                shard.mark_dirty(&k);
            }
        }
    }

    /// Sets whether the shared store answers (the last sync round went through): while it
    /// does not, paces keep their last shares (see [`crate::limit::pacing`]).
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Sets the oldest last sync among the other live nodes (ns, this node's corrected
    /// clock), from the registry: a guarded pace waits for it (see [`crate::limit::pacing`]).
    pub fn set_others_synced(&self, ns: i64) {
        self.others_synced_ns.store(ns, Ordering::Relaxed);
    }

    /// What a pace needs to know of the cluster, for a limit with this `burst_guard`.
    pub(super) fn cluster(&self, guard: bool) -> Cluster {
        Cluster {
            live: self.live_nodes.load(Ordering::Relaxed),
            sync_interval_ns: self.sync_interval_ns.load(Ordering::Relaxed),
            others_synced_ns: self.others_synced_ns.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            guard,
            window: None,
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

    /// Merges what the shared store holds for a bucket (`read`: every node's counters, this
    /// node's under `me`, and when each node last wrote or announced the bucket), then
    /// recomputes this node's pace. A quota first starts the window holding now if it has
    /// not yet; counters read for another window than the bucket's are not merged, and the
    /// bucket is listed for the next sync, which reads its window. `pushed`: the counters
    /// this round wrote for this node, if any (then the entry is clean unless it changed
    /// meanwhile, or its counters were rebased on stored ones and must be written again).
    ///
    /// A fresh bucket (created since the last read) counted from zero: its own counters are
    /// rebased onto the stored ones (stored + what it took since), and its waste becomes the
    /// stored one, so a bucket evicted from memory, or a restarted node, continues where the
    /// store says instead of starting full again. It is then pushed on the next sync.
    pub fn absorb(
        &self,
        store_key: &str,
        me: &str,
        read: Read<'_>,
        limit: &LimitSpec,
        pushed: Option<&Counters>,
    ) {
        let Read {
            nodes,
            seen_ms,
            window,
        } = read;
        let params = &limit.params;
        let now = self.clock.now_ns();
        let own_stored = nodes.get(me).copied();
        let (others_consumed, others_waste) = others(
            nodes
                .iter()
                .filter(|(n, _)| n.as_str() != me)
                .map(|(_, c)| c),
        );
        let cluster = Cluster {
            window: params.window(),
            ..self.cluster(limit.burst_guard)
        };
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let relist = {
            let Some(e) = shard.map.get_mut(store_key) else {
                return;
            };
            if !e.align(params, window, now) {
                e.listed = None;
                shard.mark_dirty(store_key);
                return;
            }
            let stored_any = !nodes.is_empty();
            merge_stored(
                e,
                params,
                stored_any,
                own_stored.as_ref(),
                (others_consumed, others_waste),
            );
            let tokens = e.bucket.tokens_units(params, now);
            let own = own_demand(e.bucket.own(), own_stored.as_ref());
            let e_new = e.view == View::New;
            let sync = e.sync.get_or_insert_with(Default::default);
            if params.is_slots() {
                slot_sync(sync, own_stored.as_ref(), e_new);
                (sync.slots.get_or_insert_with(Box::default)).remember(me, &own, nodes);
            } else {
                sync.pace_or_start()
                    .resync((me, &own), (nodes, seen_ms), tokens, now, &cluster);
            }
            sync.synced_ns = now;
            let was_fresh = e.view != View::Current;
            let e_was_new = e.view == View::New;
            e.view = View::Current;
            // Clean only if what was pushed is still all there is. Waste alone does not count:
            // evaluating a full bucket raises it (the cap), which any node recomputes from the
            // same counters, so pushing it would keep every full bucket syncing forever.
            let own = e.bucket.own();
            let differs = |o: &Counters| o.consumed != own.consumed || o.attempts != own.attempts;
            let changed = match pushed {
                None => true,
                // A new bucket's counters were written as they were taken (the store answered
                // the hash as it was before): clean, unless they were rebased on stored ones
                // or moved since. Its waste is the stored one, or was written with them.
                Some(w) if was_fresh => (e_was_new && own_stored.is_some()) || differs(w),
                // A merge answered the hash after it: clean if that is still all there is.
                Some(_) => own_stored.is_none_or(|o| differs(&o)),
            };
            e.listed = None;
            changed
        };
        if relist {
            shard.mark_dirty(store_key);
        }
    }

    /// Loads a bucket that the shared store holds (a starting node reading the shared state
    /// back): created if absent, then merged as a fresh bucket, so it continues its own stored
    /// counters and sees what the others spent. It is pushed on the next sync when it holds
    /// fields of this node; otherwise it stays clean until this node charges it.
    pub fn preload(
        &self,
        store_key: &str,
        me: &str,
        (nodes, window): (&BTreeMap<String, Counters>, Option<i64>),
        limit: &LimitSpec,
    ) {
        let params = &limit.params;
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
        // A bucket that holds no fields of this node has nothing of this node's to push: it
        // is absorbed as if its (zero) counters had been written, so it stays clean until this
        // node charges it.
        let nothing = Counters {
            consumed: 0,
            attempts: 0,
            waste: i128::MIN,
        };
        let pushed = (!nodes.contains_key(me)).then_some(&nothing);
        self.absorb(store_key, me, Read::counters(nodes, window), limit, pushed);
    }
}

/// Merges a bucket's stored counters into `e`, as its view asks: a new bucket is rebased on
/// them, a lagging one takes the stored waste, a current one takes the max of each.
fn merge_stored(
    e: &mut super::store_entry::Entry,
    params: &super::bucket::BucketParams,
    stored_any: bool,
    own_stored: Option<&Counters>,
    (others_consumed, others_waste): (u64, Option<i128>),
) {
    if e.view == View::New && stored_any {
        e.bucket
            .rebase_on_store(params, own_stored, others_consumed, others_waste);
    } else if e.view == View::Lagging {
        // Waste raised locally on a lagging view would over-state the refill lost at the cap
        // by everything the others spent meanwhile: take the stored one.
        e.bucket
            .refresh_from_store(params, own_stored, others_consumed, others_waste);
    } else {
        let own = own_stored.copied().unwrap_or(Counters {
            consumed: 0,
            attempts: 0,
            waste: i128::MIN,
        });
        e.bucket
            .absorb(&own, others_consumed, others_waste.unwrap_or(i128::MIN));
    }
}

/// This node's counters for its pace or slot state at a sync: what it counted, whatever the
/// store shows (a store that restarted empty may not hold it yet), and at least what the store
/// shows of them.
fn own_demand(counted: &Counters, stored: Option<&Counters>) -> Counters {
    let mut own = *counted;
    if let Some(stored) = stored {
        own.merge(stored);
    }
    own
}

/// A concurrency limit at a sync: a fresh bucket (a restarted node, or one evicted and made
/// again) counts every slot it held before as given back (the process that held them is gone,
/// or held none when it was evicted), so its credit continues from its stored `consumed`.
/// (What it may hold until the next sync is set once the credits are merged:
/// [`Store::set_slot_cap`].)
fn slot_sync(sync: &mut super::store_entry::SyncState, own_stored: Option<&Counters>, fresh: bool) {
    if let (true, Some(stored)) = (fresh, own_stored) {
        sync.own_credit = sync.own_credit.saturating_add(stored.consumed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::BucketParams;
    use crate::limit::clock::ManualClock;
    use crate::limit::store::Charge;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    /// Two nodes that each spent a whole quota before hearing from the other: once merged
    /// the window is overspent, and the next window gives each node the whole quota again.
    #[test]
    fn a_quota_overshot_in_a_window_starts_the_next_one_full() {
        use crate::limit::window::Window;
        // 10 s before a minute ends.
        let t0 = 1_790_000_040_000_000_000 - 10_000_000_000;
        let w = Window::Minute;
        assert_eq!(w.left_ns(t0), 10_000_000_000);
        let clock = Arc::new(ManualClock::new(t0));
        let (a, b) = (
            Store::new(clock.clone(), true),
            Store::new(clock.clone(), true),
        );
        let l = LimitSpec::new("q", BucketParams::quota(10, w).expect("params"));
        let take = |s: &Store, n: usize| {
            (0..n)
                .filter(|_| {
                    let c = [Charge {
                        limit: &l,
                        key: "k",
                        cost: 1,
                    }];
                    s.charge(&c).allowed()
                })
                .count()
        };
        assert_eq!((take(&a, 10), take(&b, 10)), (10, 10));
        // Each reads the other's counters of this window: 20 spent of 10.
        let (da, db) = (a.take_dirty(), b.take_dirty());
        let read = |from: &str, d: &[DirtyBucket]| BTreeMap::from([(from.to_string(), d[0].own)]);
        let window = Some(w.index(t0));
        let seen = BTreeMap::new();
        let merge = |s: &Store, me: &str, nodes: &BTreeMap<String, Counters>, window| {
            let r = Read {
                nodes,
                seen_ms: &seen,
                window,
            };
            s.absorb("q:k", me, r, &l, None);
        };
        merge(&a, "a", &read("b", &db), window);
        merge(&b, "b", &read("a", &da), window);
        for s in [&a, &b] {
            let d = s.peek(&l, "k", 1);
            assert_eq!((d.allowed, d.remaining), (false, 0));
            assert_eq!(d.retry_after_ns, 10_000_000_000, "until the next minute");
        }
        // The next minute: the whole quota on each node, no debt, counted from zero.
        clock.advance_ns(10_000_000_000);
        for s in [&a, &b] {
            assert_eq!(s.peek(&l, "k", 0).remaining, 10);
        }
        assert_eq!(take(&a, 12), 10);
        let pushed = a.take_dirty();
        assert_eq!((pushed[0].own.consumed, pushed[0].own.attempts), (10, 12));
        // A read of the minute before, answered after the roll, is not merged into this one
        // (its counters are of another window); the bucket is listed to read its own. (The
        // round that read it took it off the list.)
        assert_eq!(b.take_dirty().len(), 1);
        merge(&b, "b", &read("a", &da), window);
        assert_eq!(b.peek(&l, "k", 0).remaining, 10);
        assert_eq!(b.take_dirty().len(), 1);
        // This minute's read is.
        merge(&b, "b", &read("a", &pushed), Some(w.index(t0) + 1));
        assert_eq!(b.peek(&l, "k", 0).remaining, 0);
    }

    #[test]
    fn a_round_takes_at_most_its_share_of_the_changed_buckets_and_leaves_the_rest_listed() {
        let store = Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), true);
        store.set_quiet(false);
        let l = LimitSpec::new("l", BucketParams::new(10, 1.0, 10).expect("params"));
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        for k in &keys {
            let c = [Charge {
                limit: &l,
                key: k,
                cost: 1,
            }];
            assert!(store.charge(&c).allowed());
        }
        let mut taken = BTreeSet::new();
        for want in [4, 4, 2, 0] {
            let round = store.take_dirty_up_to(4);
            assert_eq!(round.len(), want);
            assert_eq!(store.has_dirty(), want == 4);
            taken.extend(round.into_iter().map(|d| d.store_key));
        }
        assert_eq!(taken.len(), 10, "every bucket exactly once: {taken:?}");
    }
}
