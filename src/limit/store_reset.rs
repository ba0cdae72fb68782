//! Resets (`POST /reset`): an operator refills one key's bucket or quota, on every node;
//! refunds (a route's `refund_statuses`): a request's cost given back, by the same credit; and
//! settlements (a response cost): a reserve replaced by what the upstream reported, by a
//! further charge (which may leave the bucket in debt) or by the same credit.
//!
//! A quota's credits are of one window, like its counters (see [`super::window`]): a reset
//! credits the window holding it, and a refund or a settlement the window the bucket counts
//! when it arrives. One that arrives after its charge's window ended, before the key's next
//! charge, goes with that window (it would have been lost to the cap of the new one, which
//! is full); after it, it counts in the new window, capped at the quota like any credit.
//!
//! A reset is a credit, not a write of the tokens: the node that resets adds the tokens the
//! bucket lacks to its own `credit` counter, which only grows like every other field and is
//! summed over the nodes like their consumption; every node's tokens are A(t) + credit - X - W.
//! So no merge can undo a reset (the max of a grown counter is the grown counter), two resets
//! on two nodes add up to at most two refills, and a node that has not heard of the reset yet
//! sees it at its next sync. What the other nodes spent unseen when the reset was made stays
//! spent: the bucket is full as of the resetting node's view.

use super::bucket::{BucketParams, Decision};
use super::overrides::LimitSpec;
use super::store::Store;
use super::store_entry::{bucket_entry, lock};
use std::sync::atomic::Ordering;

/// What a reset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// Whole tokens credited (0 when the bucket was full, or had no state here).
    pub credited: u64,
    /// Whole tokens in the bucket after it.
    pub remaining: u64,
    /// Shared mode: this node's reset credit on the bucket, in total (its `NODE:credit`; a
    /// quota's, in the window it counts).
    pub own_credit: u64,
    /// A quota: the window the bucket counts (its index), which the credit is of.
    pub window: Option<i64>,
}

impl Store {
    /// Refills the bucket of `key` (without its `LIMIT:` prefix) under `limit` (the key's own
    /// spec, an override's if it has one) to its capacity. In shared mode the credit is this
    /// node's, pushed at the next sync (the sync loop is woken); a bucket this node has not
    /// read from the store yet must be loaded first (see `shared::warm_start::load_key`), or
    /// the credit would be computed on a full bucket and credit nothing.
    pub fn reset(&self, limit: &LimitSpec, key: &str) -> Reset {
        let store_key = super::store::store_key(&limit.name, key);
        let now = self.clock.now_ns();
        let (hash, sid) = self.locate(&store_key);
        let mut shard = lock(&self.shards[sid]);
        let cap = self.shard_cap.load(Ordering::Relaxed);
        let p = &limit.params;
        let Some(e) = bucket_entry(&mut shard, hash, &store_key, p, now, (cap, self.shared)) else {
            // No room for a bucket: the key has none here, so nothing of it to refill.
            return Reset {
                credited: 0,
                remaining: p.capacity(),
                own_credit: 0,
                window: p.window().map(|w| w.index(now)),
            };
        };
        e.roll(p, now);
        let credited = e.bucket.missing(p, now);
        let push = credited > 0 && e.credit(credited);
        let remaining = e.bucket.peek(p, 0, now).remaining;
        let own_credit = e.sync.as_ref().map_or(0, |s| s.own_credit);
        let e_window = e.bucket.window_index(p);
        if push {
            shard.mark_dirty(&store_key);
        }
        drop(shard);
        if push {
            self.wake();
        }
        Reset {
            credited,
            remaining,
            own_credit,
            window: e_window,
        }
    }

    /// Gives `cost` tokens back to the bucket of `store_key` (a refund: its answer was one
    /// of its route's `refund_statuses`), as this node's credit, like a reset's, so that
    /// `consumed` never decreases; the bucket's cap applies. Returns whether the bucket was
    /// there (one evicted meanwhile is full: nothing to give back).
    pub fn refund(&self, store_key: &str, cost: u64) -> bool {
        // Hashed once, for the shard and its map.
        let (hash, sid) = self.locate(store_key);
        let mut shard = lock(&self.shards[sid]);
        let Some(e) = shard.map.get_hashed_mut(hash, store_key) else {
            return false;
        };
        if e.credit(cost) {
            shard.mark_dirty_hashed(hash, store_key);
        }
        true
    }

    /// Settles a charge of `reserved` tokens on the bucket of `store_key` (charged as `limit`,
    /// the key's own spec) at `actual`: the difference is charged on top, without asking
    /// whether the bucket can pay (it may go below zero, and the debt delays the key's next
    /// requests), or given back as this node's credit. Returns the bucket's state after it
    /// (as a decision on a cost of 0: `remaining` and `full_in_ns`), or `None` when the bucket
    /// is gone (evicted meanwhile: full, so nothing is owed).
    pub fn settle(
        &self,
        limit: &LimitSpec,
        store_key: &str,
        reserved: u64,
        actual: u64,
    ) -> Option<Decision> {
        let now = self.clock.now_ns();
        let (hash, sid) = self.locate(store_key);
        let mut shard = lock(&self.shards[sid]);
        let e = shard.map.get_hashed_mut(hash, store_key)?;
        let push = if actual > reserved {
            let extra = actual - reserved;
            e.bucket.commit(extra);
            if let Some(pace) = e.pace_mut() {
                pace.spend(extra);
            }
            e.sync.is_some()
        } else {
            actual < reserved && e.credit(reserved - actual)
        };
        let state = e.bucket.peek(&limit.params, 0, now);
        if push {
            shard.mark_dirty_hashed(hash, store_key);
        }
        Some(state)
    }

    /// Merges the reset credits a sync read: this node's stored one (what it wrote before a
    /// restart) and the sum of the others'. Nothing is lowered. `window`: the window they are
    /// of, for a quota (`p` its parameters): credits of another window than the bucket's are
    /// not merged.
    pub fn absorb_credit(
        &self,
        (store_key, p): (&str, &BucketParams),
        own_stored: Option<u64>,
        others: u64,
        window: Option<i64>,
    ) {
        let now = self.clock.now_ns();
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let Some(e) = shard.map.get_mut(store_key) else {
            return;
        };
        if !e.align(p, window, now) {
            return;
        }
        let Some(sync) = e.sync.as_mut() else {
            return;
        };
        sync.own_credit = sync.own_credit.max(own_stored.unwrap_or(0));
        let total = sync.own_credit.saturating_add(others);
        e.bucket.set_reset_credit(total);
        // A store that lost this node's credit (restarted empty) gets it again.
        if own_stored.unwrap_or(0) < sync.own_credit {
            shard.mark_dirty(store_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::BucketParams;
    use crate::limit::clock::ManualClock;
    use crate::limit::store::Charge;
    use std::sync::Arc;

    fn limit() -> LimitSpec {
        LimitSpec::new("l", BucketParams::new(5, 0.001, 5).expect("params"))
    }

    fn take(store: &Store, l: &LimitSpec, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                store
                    .charge(&[Charge {
                        limit: l,
                        key: "k",
                        cost: 1,
                    }])
                    .allowed()
            })
            .count()
    }

    #[test]
    fn a_reset_refills_the_bucket_by_a_credit_and_a_full_one_gets_none() {
        let store = Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), false);
        let l = limit();
        let r = |credited, remaining| Reset {
            credited,
            remaining,
            own_credit: 0,
            window: None,
        };
        assert_eq!(store.reset(&l, "k"), r(0, 5));
        assert_eq!(take(&store, &l, 7), 5);
        assert_eq!(store.reset(&l, "k"), r(5, 5));
        assert_eq!(take(&store, &l, 7), 5, "all of it again, and no more");
    }

    #[test]
    fn a_shared_reset_is_pushed_and_merged_by_the_others_and_never_undone() {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let (a, b) = (Store::new(clock.clone(), true), Store::new(clock, true));
        let l = limit();
        assert_eq!(take(&a, &l, 5), 5);
        let r = a.reset(&l, "k");
        assert_eq!((r.credited, r.remaining, r.own_credit), (5, 5, 5));
        // a pushes its credit with its counters.
        let pushed = a.take_dirty_up_to(10);
        assert_eq!(pushed.len(), 1);
        assert_eq!((pushed[0].own.consumed, pushed[0].credit), (5, 5));
        // b, which took 1 itself, reads a's fields: a's 5 consumed and a's credit of 5.
        assert_eq!(take(&b, &l, 1), 1);
        let nodes = std::collections::BTreeMap::from([("a".to_string(), pushed[0].own)]);
        let read = crate::limit::store_sync::Read::counters(&nodes, None);
        b.absorb("l:k", "b", read, &l, None);
        let seen = |s: &Store| s.peek(&l, "k", 0).remaining;
        assert_eq!(
            seen(&b),
            0,
            "5 - 5 - 1, capped at 0 whole tokens, before the credit"
        );
        b.absorb_credit(("l:k", &l.params), None, 5, None);
        assert_eq!(seen(&b), 4, "5 + 5 - 5 - 1");
        // A stale read (less credit) lowers nothing.
        b.absorb_credit(("l:k", &l.params), None, 2, None);
        assert_eq!(seen(&b), 4);
        // a's own stored credit, read back after a restart, is not counted twice.
        a.absorb_credit(("l:k", &l.params), Some(5), 0, None);
        assert_eq!(seen(&a), 5);
    }
}
