//! Concurrency limits (`max_in_flight`) in the store: a bucket of slots that never refills
//! (see [`crate::limit::params::BucketParams::slots`]), taken by a request when it is
//! admitted and given back, as a credit, when it ends; in shared mode each node's `consumed`
//! and `credit` are the slots it took and gave back, and the difference, summed over the live
//! nodes, is what is in flight.

use super::bucket::{Bucket, BucketParams, Counters, Decision};
use super::overrides::LimitSpec;
use super::params::SLOT_RETRY_NS;
use super::slot_state::NO_CAP;
use super::store::Store;
use super::store_entry::{lock, Entry};
use std::collections::{BTreeMap, BTreeSet};

/// Another live node's part in a concurrency limit, as a sync read it.
#[derive(Debug, Clone, Copy)]
pub struct OtherSlots {
    /// The slots it held when it last wrote.
    pub held: u64,
    /// It turned a request away since the previous read (see [`Store::refusing`]).
    pub refused: bool,
}

impl Store {
    /// A concurrency limit's decision on taking `cost` slots (see `docs/shared-state.md`,
    /// "Response costs, refunds and concurrency"). Standalone, or alone, the free slots
    /// decide. In shared mode a node may always hold its fair share (`max_in_flight / live
    /// nodes`), so that a client within its limit spread over the nodes is never turned away
    /// for a finish not seen yet; beyond it, no more than its cap (see [`Store::set_slot_cap`]).
    #[cold]
    pub(super) fn evaluate_slots(
        &self,
        entry: &mut Entry,
        limit: &LimitSpec,
        cost: u64,
        now: i64,
    ) -> Decision {
        let p = &limit.params;
        let tokens = entry.bucket.tokens_units(p, now);
        let mut d = Bucket::decide(p, tokens, cost, now);
        entry.bucket.record_attempt();
        let (Some(held), Some(sync)) = (held(entry), entry.sync.as_ref()) else {
            return d;
        };
        if self.live() <= 1 {
            return d;
        }
        let wanted = held.saturating_add(cost);
        let fair = wanted <= self.fair_slots(p);
        // Before its first sync a bucket has no cap: with burst_guard it holds its fair share
        // only; in the default mode, what the view allows.
        let cap = match sync.slots.as_ref().map_or(NO_CAP, |s| s.cap) {
            NO_CAP if limit.burst_guard => 0,
            cap => cap,
        };
        let free = d.allowed && wanted <= cap;
        if fair && !d.allowed {
            d.allowed = true;
            d.retry_after_ns = 0;
        } else if !free && !fair {
            d.allowed = false;
            d.remaining = 0;
            d.retry_after_ns = SLOT_RETRY_NS;
        }
        d
    }

    /// The nodes of `nodes` (a sync's read of a concurrency limit's counters) that turned a
    /// request away since the previous read, as the bucket's last read shows them: to be
    /// called before the read is merged ([`Store::absorb`]).
    pub fn refusing(
        &self,
        store_key: &str,
        nodes: &BTreeMap<String, Counters>,
    ) -> BTreeSet<String> {
        let shard = lock(&self.shards[self.shard_of(store_key)]);
        let Some(slots) =
            (shard.map.get(store_key)).and_then(|e| e.sync.as_ref()?.slots.as_deref())
        else {
            return BTreeSet::new();
        };
        nodes
            .iter()
            .filter(|(n, c)| slots.refused_since_read(n, c))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Sets what this node may hold of a concurrency limit's slots until its next sync, once a
    /// sync has merged the bucket (counters and credits): what it holds now, plus its part of
    /// the slots free. The free slots are divided among the nodes that hold some
    /// (`active_others` besides this one) in the default mode, so that a node alone on a key
    /// may take them all while nodes that compete share them instead of each taking the same
    /// ones from views that do not yet show the others' latest; with `burst_guard` among twice
    /// the live nodes, so that nodes filling at once from views that do not show each other
    /// yet stay within about the limit.
    ///
    /// `others`: the other live nodes. What is free is the limit less what this node holds
    /// and what the others are counted at, the larger of this read's count and the previous
    /// read's. A node counts at what it held when it last wrote, and at least its fair share
    /// (`max_in_flight / live nodes`) when it turned a request away since the previous read:
    /// it may take its fair share again at any moment without a sync, so slots of its fair
    /// share that it held none of at its write are not free for this node. And a node that
    /// competes gives a slot back and takes it again between two of its writes, so one write
    /// may show it holding less than it does: the previous read still counts it. So caps of
    /// nodes that all compete add up to at most the limit, whatever moment each read shows.
    pub fn set_slot_cap(
        &self,
        store_key: &str,
        limit: &LimitSpec,
        active_others: u32,
        others: &[OtherSlots],
    ) {
        let now = self.clock.now_ns();
        let fair = self.fair_slots(&limit.params);
        let counted = others.iter().fold(0u64, |sum, o| {
            let at = if o.refused { o.held.max(fair) } else { o.held };
            sum.saturating_add(at)
        });
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let Some(e) = shard.map.get_mut(store_key) else {
            return;
        };
        let viewed = e.bucket.peek(&limit.params, 0, now).remaining;
        let Some(held) = held(e) else {
            return;
        };
        let divide = if limit.burst_guard {
            2 * self.live().max(1)
        } else {
            1 + active_others
        };
        if let Some(sync) = e.sync.as_mut() {
            let slots = sync.slots.get_or_insert_with(Box::default);
            let others = counted.max(slots.others);
            slots.others = counted;
            let free = viewed.min(
                limit
                    .params
                    .capacity()
                    .saturating_sub(held)
                    .saturating_sub(others),
            );
            slots.cap = held.saturating_add(free / u64::from(divide));
        }
    }

    /// A node's fair share of a concurrency limit's slots: `max_in_flight / live nodes`.
    fn fair_slots(&self, p: &BucketParams) -> u64 {
        p.capacity() / u64::from(self.live().max(1))
    }
}

/// The slots this node holds of a shared concurrency limit: those it took less those it gave
/// back (`None` standalone).
fn held(e: &Entry) -> Option<u64> {
    let sync = e.sync.as_ref()?;
    Some(e.bucket.own_consumed().saturating_sub(sync.own_credit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::{BucketParams, Counters};
    use crate::limit::clock::ManualClock;
    use crate::limit::store::Charge;
    use crate::limit::store_sync::Read;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// One sync of node "me", as `shared::round` runs it: the other two nodes, both live and
    /// using the key, wrote `others` (slots taken, slots given back, requests decided) each.
    fn sync(s: &Store, l: &LimitSpec, others: [(u64, u64, u64); 2]) {
        let d = s.take_dirty().pop().expect("dirty");
        let mut nodes = BTreeMap::from([("me".to_string(), d.own)]);
        let mut credit = 0;
        for (n, (taken, _, attempts)) in ["b", "c"].into_iter().zip(others) {
            let c = Counters {
                consumed: taken,
                attempts,
                waste: i128::MIN,
            };
            nodes.insert(n.to_string(), c);
        }
        let refusing = s.refusing(d.store_key.as_str(), &nodes);
        let live: Vec<OtherSlots> = ["b", "c"]
            .into_iter()
            .zip(others)
            .map(|(n, (taken, given, _))| {
                credit += given;
                OtherSlots {
                    held: taken - given,
                    refused: refusing.contains(n),
                }
            })
            .collect();
        s.absorb(
            d.store_key.as_str(),
            "me",
            Read::counters(&nodes, None),
            l,
            Some(&d.own),
        );
        s.absorb_credit((d.store_key.as_str(), &l.params), None, credit, None);
        s.set_slot_cap(d.store_key.as_str(), l, 2, &live);
    }

    fn three_nodes() -> (Store, LimitSpec) {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let s = Store::new(clock, true);
        s.set_cluster(3, 100_000_000);
        let l = LimitSpec::new("c", BucketParams::slots(12).expect("params"));
        assert_eq!((0..4).filter(|_| take(&s, &l)).count(), 4);
        (s, l)
    }

    fn take(s: &Store, l: &LimitSpec) -> bool {
        let c = [Charge {
            limit: l,
            key: "k",
            cost: 1,
        }];
        s.charge(&c).allowed()
    }

    /// Three nodes compete for 12 slots, holding 4 each. A write of the others that shows a
    /// dip (each gave slots back and had not taken them again yet) does not let this node take
    /// a fifth: the previous read still counts them at 4 each. Once two reads show the others
    /// holding fewer, this node may take its part of the slots they left.
    #[test]
    fn a_dip_in_one_write_of_the_others_does_not_raise_the_cap() {
        let (s, l) = three_nodes();
        sync(&s, &l, [(4, 0, 4), (4, 0, 4)]);
        assert!(!take(&s, &l), "4 + 4 + 4 held: none free");
        // Each of the others gave two back at its write, and took them again since.
        sync(&s, &l, [(6, 4, 6), (6, 4, 6)]);
        assert!(!take(&s, &l), "a dip in one write is not free slots");
        // Two reads in a row show them holding 2 each: 4 free, a third of them this node's.
        sync(&s, &l, [(6, 4, 6), (6, 4, 6)]);
        assert!(take(&s, &l), "a fifth slot once the others hold fewer");
        assert!(!take(&s, &l), "but no more than its part of the free ones");
    }

    /// The others hold 2 each of their fair share of 4, and turn requests away: they may take
    /// their fair share again at any moment, so this node may not take the slots they hold
    /// none of. Once they stop turning requests away, it may.
    #[test]
    fn the_fair_share_of_a_node_turning_requests_away_is_not_free() {
        let (s, l) = three_nodes();
        sync(&s, &l, [(4, 2, 10), (4, 2, 10)]);
        sync(&s, &l, [(4, 2, 20), (4, 2, 20)]);
        assert!(!take(&s, &l), "each other node refused some: counted at 4");
        sync(&s, &l, [(4, 2, 20), (4, 2, 20)]);
        sync(&s, &l, [(4, 2, 20), (4, 2, 20)]);
        assert!(take(&s, &l), "refusing none: counted at the 2 they hold");
        assert!(!take(&s, &l), "a third of the 4 free");
    }
}
