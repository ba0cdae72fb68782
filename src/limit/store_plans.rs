//! Charging limits that have overrides (plans): each key's override is known before anything
//! is charged (a denied key is refused, an unlimited one left out, the rest charged with their
//! own parameters), and a key that has a bucket finds it there rather than in the limit's
//! overrides table.
//!
//! A bucket keeps the [`Plan`] its key had when it last looked it up: the generation of the
//! overrides table and the key's position in it. While the limit's table is the same (a
//! reload that leaves the overrides alone keeps it), a request finds its key's override
//! through the bucket it finds anyway: no second hash lookup, no second key comparison. A key
//! without a bucket (new, swept, or unlimited or denied, which never get one) is looked up in
//! the table, and the plan is written into its bucket when the charge makes one.

use super::overrides::{ForKey, LimitSpec};
use super::store::{ChargeResult, Small, Store};
use super::store_entry::Locked;

/// Why a charge on overridden limits stopped before charging anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Charge `at`'s key is denied by its limit (`"deny"`).
    Denied { at: usize },
    /// The cost of enforcing charge `at` exceeds its key's capacity: no wait would let it pass.
    TooCostly { at: usize, capacity: u64 },
}

impl Store {
    /// [`Store::charge_prefixed`] for `n` charges whose limits may have overrides: charge `i`
    /// is `cost(i)` to limit `limit_of(i)` on store key `key_of(i)`, with the parameters its
    /// key's override gives. What each key is subject to goes into `subjects` (one per
    /// charge, in order: an unlimited key's decision is [`super::store::EXEMPT`]), the
    /// decisions into `out`. A denied key (the first, in order), else a cost over an enforcing
    /// key's capacity, stops the charge before anything is charged.
    #[inline]
    pub fn charge_planned<'l, 'k>(
        &self,
        n: usize,
        limit_of: impl Fn(usize) -> &'l LimitSpec,
        key_of: impl Fn(usize) -> &'k str,
        cost: impl Fn(usize) -> u64,
        subjects: &mut Small<ForKey<'l>>,
        out: &mut ChargeResult,
    ) -> Option<Stop> {
        let now = self.clock.now_ns();
        let mut located = Small::new();
        // Every key's shard is locked, an unlimited key's too: which keys are unlimited is
        // known only once their buckets have been looked at.
        let shards = self.locate_all(n, |_| true, key_of, &mut located);
        let mut guards = Locked::new(&self.shards, shards);
        for (i, at) in located.iter_mut().enumerate() {
            let limit = limit_of(i);
            let shard = guards.shard(at.sid);
            at.slot = shard.map.find(at.hash, at.key);
            let known = (at.slot)
                .and_then(|s| shard.map.entry_ref(s))
                .map(|e| e.plan)
                .filter(|p| p.generation == limit.overrides.generation());
            let plan = known.unwrap_or_else(|| limit.overrides.plan_of(limit.key_of(at.key)));
            // Written into the bucket by the charge.
            at.plan = plan;
            let subject = limit.for_plan(plan);
            if let ForKey::Deny = subject {
                return Some(Stop::Denied { at: i });
            }
            subjects.push(subject);
        }
        // A denial comes first: only then a cost no wait would let pass.
        let too_costly = subjects.iter().enumerate().find_map(|(i, s)| {
            (s.bucket())
                .filter(|l| !l.shadow && cost(i) > l.params.capacity())
                .map(|l| Stop::TooCostly {
                    at: i,
                    capacity: l.params.capacity(),
                })
        });
        if too_costly.is_some() {
            return too_costly;
        }
        let subjects = &*subjects;
        self.charge_located::<true>(
            guards,
            &mut located,
            |i| subjects[i].bucket().map(|l| (l, cost(i))),
            now,
            out,
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::BucketParams;
    use crate::limit::clock::ManualClock;
    use crate::limit::overrides::{Override, Overrides, Own, Plan};
    use crate::limit::store::{store_key, EXEMPT};
    use std::sync::Arc;

    fn limit(overrides: Vec<(&str, Override)>) -> LimitSpec {
        let mut l = LimitSpec::new("plan", BucketParams::new(2, 1.0, 2).expect("params"));
        l.overrides = Overrides::new(overrides.into_iter().map(|(k, o)| (k.to_string(), o)));
        l
    }

    fn pro(l: &LimitSpec, capacity: u64) -> Override {
        let p = BucketParams::new(capacity, 1.0, capacity).expect("params");
        Override::Bucket(Box::new(Own::new(l.with_params(p))))
    }

    fn store() -> Store {
        Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), false)
    }

    /// Charges `key` once on `l`: the stop, the decision and what it was subject to.
    fn charge(s: &Store, l: &LimitSpec, key: &str, cost: u64) -> (Option<Stop>, ChargeResult) {
        let k = store_key(&l.name, key);
        let (mut subjects, mut out) = (Small::new(), ChargeResult::default());
        let stop = s.charge_planned(1, |_| l, |_| k.as_str(), |_| cost, &mut subjects, &mut out);
        (stop, out)
    }

    /// The plan noted in the bucket of `key`, if it has a bucket.
    fn noted(s: &Store, l: &LimitSpec, key: &str) -> Option<Plan> {
        let k = store_key(&l.name, key);
        let shard = crate::limit::store_entry::lock(&s.shards[s.shard_of(&k)]);
        shard.map.get(k.as_str()).map(|e| e.plan)
    }

    #[test]
    fn a_bucket_notes_its_keys_plan_and_a_new_table_is_looked_up_again() {
        let s = store();
        let base = limit(vec![]);
        let l = limit(vec![("pro", pro(&base, 5)), ("batch", Override::Unlimited)]);
        // The overridden key gets its own capacity (5, not 2), found in the table once and
        // then in its bucket.
        for _ in 0..5 {
            let (stop, out) = charge(&s, &l, "pro", 1);
            assert_eq!(stop, None);
            assert!(out.allowed());
        }
        assert!(
            !charge(&s, &l, "pro", 1).1.allowed(),
            "its own capacity is 5"
        );
        let plan = noted(&s, &l, "pro").expect("a bucket");
        assert_eq!(plan.generation, l.overrides.generation());
        assert_ne!(plan.at, Plan::LIMIT);
        // A plain key: the limit's capacity, its plan "no override" of this table.
        assert!(charge(&s, &l, "free", 2).1.allowed());
        assert!(!charge(&s, &l, "free", 1).1.allowed());
        let free = noted(&s, &l, "free").expect("a bucket");
        assert_eq!(
            (free.generation, free.at),
            (l.overrides.generation(), Plan::LIMIT)
        );
        // Unlimited: never charged, no bucket.
        let (stop, out) = charge(&s, &l, "batch", 100);
        assert_eq!((stop, out.decisions[0]), (None, EXEMPT));
        assert_eq!(noted(&s, &l, "batch"), None);

        // A reload: a new table (a new generation) in which "free" is denied and "pro" is
        // plain. The plans the buckets noted are of the old table and are not used.
        let reloaded = limit(vec![("free", Override::Deny), ("pro", Override::Unlimited)]);
        assert_ne!(reloaded.overrides.generation(), l.overrides.generation());
        let (stop, _) = charge(&s, &reloaded, "free", 1);
        assert_eq!(stop, Some(Stop::Denied { at: 0 }));
        let (stop, out) = charge(&s, &reloaded, "pro", 1);
        assert_eq!((stop, out.decisions[0]), (None, EXEMPT));
        // Overridden again with a larger bucket: a cost of 6 is over the first table's
        // capacity for "pro" (5) and within the new one's (8), which its bucket now notes.
        assert_eq!(
            charge(&s, &l, "pro", 6).0,
            Some(Stop::TooCostly { at: 0, capacity: 5 })
        );
        let again = limit(vec![("pro", pro(&base, 8))]);
        assert_eq!(charge(&s, &again, "pro", 6).0, None);
        let noted_again = noted(&s, &again, "pro").map(|p| p.generation);
        assert_eq!(noted_again, Some(again.overrides.generation()));
    }

    #[test]
    fn a_denied_or_too_costly_key_stops_the_charge_before_anything_is_charged() {
        let s = store();
        let base = limit(vec![]);
        let l = limit(vec![("leaked", Override::Deny), ("pro", pro(&base, 5))]);
        let plain = LimitSpec::new("plain", BucketParams::new(3, 1.0, 3).expect("params"));
        let charge_two = |key: &str, cost: u64| {
            let keys = [store_key(&plain.name, key), store_key(&l.name, key)];
            let limits = [&plain, &l];
            let (mut subjects, mut out) = (Small::new(), ChargeResult::default());
            let stop = s.charge_planned(
                2,
                |i| limits[i],
                |i| keys[i].as_str(),
                |_| cost,
                &mut subjects,
                &mut out,
            );
            (stop, out)
        };
        assert_eq!(charge_two("leaked", 1).0, Some(Stop::Denied { at: 1 }));
        // Cost 4: over the plain limit's 3 first, in order.
        assert_eq!(
            charge_two("pro", 4).0,
            Some(Stop::TooCostly { at: 0, capacity: 3 })
        );
        // Nothing was charged: the plain limit still holds its 3 tokens for the key.
        let (stop, out) = charge_two("pro", 3);
        assert_eq!(stop, None);
        assert!(out.allowed());
        assert_eq!(out.decisions[0].remaining, 0);
        assert_eq!(out.decisions[1].remaining, 2);
    }
}
