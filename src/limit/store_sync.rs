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
                if let Some(e) = shard.map.get(&*k) {
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
            steps: false,
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
    /// node's under `me`; `seen_ms`: when each node last wrote or announced the bucket), then
    /// recomputes this node's pace. `pushed`: the counters this round wrote for this node, if
    /// any (then the entry is clean unless it changed meanwhile, or its counters were rebased
    /// on stored ones and must be written again).
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
        seen_ms: &BTreeMap<String, u64>,
        limit: &LimitSpec,
        pushed: Option<&Counters>,
    ) {
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
            steps: params.window().is_some(),
            ..self.cluster(limit.burst_guard)
        };
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let relist = {
            let Some(e) = shard.map.get_mut(store_key) else {
                return;
            };
            let stored_any = !nodes.is_empty();
            merge_stored(
                e,
                stored_any,
                own_stored.as_ref(),
                (others_consumed, others_waste),
            );
            let tokens = e.bucket.tokens_units(params, now);
            let own = *e.bucket.own();
            let e_new = e.view == View::New;
            let sync = e.sync.get_or_insert_with(Default::default);
            if params.is_slots() {
                slot_sync(sync, own_stored.as_ref(), e_new);
            }
            sync.pace
                .resync((me, &own), (nodes, seen_ms), tokens, now, &cluster);
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
        nodes: &BTreeMap<String, Counters>,
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
        self.absorb(store_key, me, nodes, &BTreeMap::new(), limit, pushed);
    }
}

/// Merges a bucket's stored counters into `e`, as its view asks: a new bucket is rebased on
/// them, a lagging one takes the stored waste, a current one takes the max of each.
fn merge_stored(
    e: &mut super::store_entry::Entry,
    stored_any: bool,
    own_stored: Option<&Counters>,
    (others_consumed, others_waste): (u64, Option<i128>),
) {
    if e.view == View::New && stored_any {
        e.bucket
            .rebase_on_store(own_stored, others_consumed, others_waste);
    } else if e.view == View::Lagging {
        // Waste raised locally on a lagging view would over-state the refill lost at the cap
        // by everything the others spent meanwhile: take the stored one.
        e.bucket
            .refresh_from_store(own_stored, others_consumed, others_waste);
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
