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
use super::store::{ChargeResult, Small, Store, EXEMPT};
use super::store_entry::{new_bucket_entry, Locked};
use std::sync::atomic::Ordering;

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
    /// charge, in order, up to a denied key: an unlimited key's decision is
    /// [`super::store::EXEMPT`]), the decisions into `out`. A denied key (the first, in
    /// order), else a cost over an enforcing key's capacity (the first), stops the charge
    /// with nothing charged.
    ///
    /// One pass, as the plain charge's: each key's bucket is found, its plan read from it
    /// (or looked up), and the bucket charged at once. A stop undoes what was paid before
    /// it, as a refusal does, under the same locks; after a too-costly key the rest are only
    /// looked at for a denial. Refusals noted by earlier keys of a request that turns out
    /// denied stay noted (`/buckets?by=rejected`): those keys were over their limits.
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
        let cap = self.shard_cap.load(Ordering::Relaxed);
        let (single, mut wake, mut stop) = (n == 1, false, None);
        for (i, at) in located.iter_mut().enumerate() {
            let limit = limit_of(i);
            let shard = guards.shard(at.sid);
            let found = (shard.map.find(at.hash, at.key)).and_then(|s| shard.map.entry_at(s));
            let known = (found.as_ref())
                .map(|e| e.plan)
                .filter(|p| p.generation == limit.overrides.generation());
            let plan = known.unwrap_or_else(|| limit.overrides.plan_of(limit.key_of(at.key)));
            let subject = limit.for_plan(plan);
            if let ForKey::Deny = subject {
                stop = Some(Stop::Denied { at: i });
                break;
            }
            subjects.push(subject);
            let Some(spec) = subject.bucket() else {
                out.decisions.push(EXEMPT);
                continue;
            };
            if stop.is_some() {
                continue;
            }
            let cost = cost(i);
            if !spec.shadow && cost > spec.params.capacity() {
                let capacity = spec.params.capacity();
                stop = Some(Stop::TooCostly { at: i, capacity });
                continue;
            }
            // A key without a bucket was probed for above: its new bucket is added without a
            // second probe.
            let found = match found {
                Some(e) => Some(e),
                None => new_bucket_entry(
                    shard,
                    at.hash,
                    at.key,
                    &spec.params,
                    now,
                    (cap, self.shared),
                ),
            };
            let Some(entry) = found else {
                self.overflow(i, spec, out);
                continue;
            };
            entry.plan = plan;
            if let Some((list, new)) = self.pay(entry, at, spec, cost, now, single, i, out) {
                wake |= new;
                shard.list(list, at.key);
            }
        }
        self.charged(guards, &located, stop.is_some(), wake, out);
        stop
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

    /// Charges `key` once on `l`: the stop and the decision.
    fn charge(s: &Store, l: &LimitSpec, key: &str, cost: u64) -> (Option<Stop>, ChargeResult) {
        charge_all(s, &[l], key, cost)
    }

    /// Charges `key` once on each of `limits`, in order: the stop and the decisions.
    fn charge_all(
        s: &Store,
        limits: &[&LimitSpec],
        key: &str,
        cost: u64,
    ) -> (Option<Stop>, ChargeResult) {
        let keys: Vec<_> = limits.iter().map(|l| store_key(&l.name, key)).collect();
        let (mut subjects, mut out) = (Small::new(), ChargeResult::default());
        let stop = s.charge_planned(
            limits.len(),
            |i| limits[i],
            |i| keys[i].as_str(),
            |_| cost,
            &mut subjects,
            &mut out,
        );
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
        let charge_two = |key: &str, cost: u64| charge_all(&s, &[&plain, &l], key, cost);
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
        // The denied key's plain bucket was paid before its denial was seen, and given back:
        // its 3 tokens are all there.
        let (stop, out) = charge(&s, &plain, "leaked", 3);
        assert_eq!(stop, None);
        assert_eq!((out.allowed(), out.decisions[0].remaining), (true, 0));
    }

    #[test]
    fn a_stop_after_a_paid_key_gives_its_payment_back_and_a_denial_comes_before_a_cost() {
        let s = store();
        let base = limit(vec![]);
        // "tiny" has a capacity of 2 on `l`, the plain limit 3; `other` denies "tiny".
        let l = limit(vec![("tiny", pro(&base, 2))]);
        let plain = LimitSpec::new("plain", BucketParams::new(3, 1.0, 3).expect("params"));
        let mut other = LimitSpec::new("other", BucketParams::new(9, 1.0, 9).expect("params"));
        other.overrides = Overrides::new([("tiny".to_string(), Override::Deny)]);
        let charge_on = |limits: &[&LimitSpec], cost: u64| charge_all(&s, limits, "tiny", cost);
        // 3 on the plain limit is paid, then 3 is over "tiny"'s 2 on `l`: too costly, and the
        // plain limit's 3 come back.
        let (stop, _) = charge_on(&[&plain, &l], 3);
        assert_eq!(stop, Some(Stop::TooCostly { at: 1, capacity: 2 }));
        // Too costly on `l` first, but denied by `other` after it: the denial is the answer.
        let (stop, _) = charge_on(&[&l, &other], 3);
        assert_eq!(stop, Some(Stop::Denied { at: 1 }));
        // Both plain tokens sets intact: 3 and 2 paid now.
        let (stop, out) = charge_on(&[&plain, &l], 2);
        assert_eq!(stop, None);
        let left: Vec<u64> = out.decisions.iter().map(|d| d.remaining).collect();
        assert_eq!(left, [1, 0]);
        let (stop, out) = charge_on(&[&plain], 1);
        assert_eq!((stop, out.decisions[0].remaining), (None, 0));
    }
}
