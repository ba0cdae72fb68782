//! The loop of a charge: the buckets of a request's keys, found and their shards locked
//! ([`Store::charge_store_keys`], [`Store::charge_planned`]), evaluated and paid all or none.

use super::store::{ChargeResult, LimitSpec, Small, Store, EXEMPT, OVERFLOW};
use super::store_entry::{bucket_entry, Entry, Listed, Locked};
use smallvec::SmallVec;
use std::sync::atomic::Ordering;

impl Store {
    /// Charges `n` buckets, all or none: charge `i` is to `of(i)` (limit and cost) on store
    /// key `key_of(i)`, each key read once; `of(i) == None` charges nothing there and decides
    /// [`EXEMPT`]. Inlined into its two callers (each calls it once),
    /// so that the request path's decision is one function.
    #[inline(always)]
    pub(super) fn charge_store_keys<'l, 'k>(
        &self,
        n: usize,
        of: impl Fn(usize) -> Option<(&'l LimitSpec, u64)>,
        key_of: impl Fn(usize) -> &'k str,
        out: &mut ChargeResult,
    ) {
        let now = self.clock.now_ns();
        let mut located: Small<Located<'_>> = SmallVec::new();
        let shards = self.locate_all(n, |i| of(i).is_some(), key_of, &mut located);
        let guards = Locked::new(&self.shards, shards);
        self.charge_located(guards, &mut located, of, now, out);
    }

    /// Where each of `n` store keys is (into `located`, written in place: returned, the
    /// vector was copied), and the set of their shards (bit i: shard i), to be locked in
    /// ascending order, so that two requests never wait on each other's locks. A key that is
    /// not `charged(i)` (exempt) is neither hashed nor its shard locked for it.
    #[inline(always)]
    pub(super) fn locate_all<'k>(
        &self,
        n: usize,
        charged: impl Fn(usize) -> bool,
        key_of: impl Fn(usize) -> &'k str,
        located: &mut Small<Located<'k>>,
    ) -> u64 {
        let mut shards = 0u64;
        for i in 0..n {
            let key = key_of(i);
            let (hash, sid) = if charged(i) {
                let at = self.locate(key);
                shards |= 1 << at.1;
                at
            } else {
                (0, 0)
            };
            located.push(Located {
                hash,
                sid,
                key,
                paid: None,
            });
        }
        shards
    }

    /// The charges of `located` (found, and their shards locked by `guards`), all or none:
    /// the loop of [`Store::charge_store_keys`] ([`Store::charge_planned`] has its own, which
    /// finds each key's plan on the way).
    #[inline(always)]
    pub(super) fn charge_located<'l>(
        &self,
        mut guards: Locked<'_>,
        located: &mut [Located<'_>],
        of: impl Fn(usize) -> Option<(&'l LimitSpec, u64)>,
        now: i64,
        out: &mut ChargeResult,
    ) {
        let single = located.len() == 1;
        let mut wake = false;
        debug_assert!(out.decisions.is_empty() && out.rejected_by.is_none());
        let cap = self.shard_cap.load(Ordering::Relaxed);
        for (i, at) in located.iter_mut().enumerate() {
            let Some((limit, cost)) = of(i) else {
                out.decisions.push(EXEMPT);
                continue;
            };
            let shard = guards.shard(at.sid);
            // A slot found under these locks holds its entry until they are released.
            let found = bucket_entry(
                shard,
                at.hash,
                at.key,
                &limit.params,
                now,
                (cap, self.shared),
            );
            let Some(entry) = found else {
                self.overflow(i, limit, out);
                continue;
            };
            if let Some((list, new)) = self.pay(entry, at, limit, cost, now, single, i, out) {
                wake |= new;
                shard.list(list, at.key);
            }
        }
        self.charged(guards, located, false, wake, out);
    }

    /// Charge `i`'s bucket (`entry`, of `at`) evaluated for `cost` on `limit` and, when it can
    /// pay, paid now, with the entry in hand (should a later limit refuse, the payment is
    /// undone by [`Store::charged`], under the same locks: a refusal is the rare case, and
    /// it alone costs a second lookup). The decision goes into `out`; returned: the list the
    /// key must join, if any (see [`Store::listing`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pay(
        &self,
        entry: &mut Entry,
        at: &mut Located<'_>,
        limit: &LimitSpec,
        cost: u64,
        now: i64,
        single: bool,
        i: usize,
        out: &mut ChargeResult,
    ) -> Option<(Listed, bool)> {
        let d = self.evaluate(entry, limit, cost, now);
        if d.allowed {
            if !single {
                let spent = entry.pace().map(|p| p.spent());
                at.paid = Some((entry.bucket.own_consumed(), spent));
            }
            entry.bucket.commit(cost);
            if let Some(pace) = entry.pace_mut() {
                pace.spend(cost);
            }
        }
        if !d.allowed && !limit.shadow {
            entry.refused.note(now);
        }
        let listed = self.listing(entry, limit, &d, now);
        out.push(i, limit.shadow, d);
        listed
    }

    /// No room for charge `i`'s new bucket: refused (a shadow limit only reports it).
    #[cold]
    pub(super) fn overflow(&self, i: usize, limit: &LimitSpec, out: &mut ChargeResult) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        out.push(i, limit.shadow, OVERFLOW);
    }

    /// The end of a charge: what was paid undone if a limit refused or the charge was
    /// `stopped`, the locks released, and the sync loop woken if a new bucket wants it.
    #[inline(always)]
    pub(super) fn charged(
        &self,
        mut guards: Locked<'_>,
        located: &[Located<'_>],
        stopped: bool,
        wake: bool,
        out: &ChargeResult,
    ) {
        if stopped || out.rejected_by.is_some() {
            undo(&mut guards, located);
        }
        drop(guards);
        if wake {
            self.wake();
        }
    }
}

/// One bucket of a charge: its hash, shard and store key, and what it held before the charge
/// paid it (consumed, and spent of its pace), should the charge be undone.
pub(super) struct Located<'k> {
    pub(super) hash: u64,
    pub(super) sid: usize,
    pub(super) key: &'k str,
    pub(super) paid: Option<(u64, Option<u64>)>,
}

/// Undoes the payments of a refused charge, under the locks it holds.
#[cold]
fn undo(guards: &mut Locked<'_>, located: &[Located<'_>]) {
    for at in located {
        let Some((consumed, spent)) = at.paid else {
            continue;
        };
        let shard = guards.shard(at.sid);
        if let Some(e) = shard.map.get_hashed_mut(at.hash, at.key) {
            e.bucket.uncommit_to(consumed);
            if let (Some(pace), Some(spent)) = (e.pace_mut(), spent) {
                pace.unspend_to(spent);
            }
        }
    }
}
