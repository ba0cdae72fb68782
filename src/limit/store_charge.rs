//! The loop of a charge: the buckets of a request's keys, found and their shards locked
//! ([`Store::charge_store_keys`], [`Store::charge_planned`]), evaluated and paid all or none.

use super::overrides::Plan;
use super::store::{ChargeResult, LimitSpec, Small, Store, EXEMPT, OVERFLOW};
use super::store_entry::{bucket_entry, Locked};
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
        self.charge_located::<false>(guards, &mut located, of, now, out);
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
                slot: None,
                plan: Plan::default(),
                paid: None,
            });
        }
        shards
    }

    /// The charges of `located` (found, and their shards locked by `guards`), all or none:
    /// the loop of [`Store::charge_store_keys`] and [`Store::charge_planned`]. A charge whose
    /// bucket was found already (`slot`) is not looked up again, and a `plan` is written into
    /// its bucket; both only when `PLANNED` (the plain charge has neither, and does not test
    /// for them).
    #[inline(always)]
    pub(super) fn charge_located<'l, const PLANNED: bool>(
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
        for (i, at) in located.iter_mut().enumerate() {
            let Some((limit, cost)) = of(i) else {
                out.decisions.push(EXEMPT);
                continue;
            };
            let (hash, sid, key) = (at.hash, at.sid, at.key);
            let shard = guards.shard(sid);
            let cap = self.shard_cap.load(Ordering::Relaxed);
            // A slot found under these locks holds its entry until they are released.
            let found = match at.slot.filter(|_| PLANNED) {
                Some(slot) => shard.map.entry_at(slot),
                None => bucket_entry(shard, hash, key, &limit.params, now, (cap, self.shared)),
            };
            let Some(entry) = found else {
                // No room for a new bucket: refused (a shadow limit only reports it).
                self.overflows.fetch_add(1, Ordering::Relaxed);
                out.push(i, limit.shadow, OVERFLOW);
                continue;
            };
            if PLANNED {
                entry.plan = at.plan;
            }
            let d = self.evaluate(entry, limit, cost, now);
            // Pay now, with the entry in hand; should a later limit refuse, the payments are
            // undone below, under the same locks (a refusal is the rare case: it alone costs a
            // second lookup).
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
            if let Some((list, new)) = self.listing(entry, limit, &d, now) {
                wake |= new;
                shard.list(list, key);
            }
            out.push(i, limit.shadow, d);
        }
        if out.rejected_by.is_some() {
            undo(&mut guards, located);
        }
        drop(guards);
        if wake {
            self.wake();
        }
    }
}
/// One bucket of a charge: its hash, shard and store key, its slot when it was found before
/// the charge (see [`Store::charge_planned`]), the plan to note in it, and what it held
/// before the charge paid it (consumed, and spent of its pace), should the charge be undone.
pub(super) struct Located<'k> {
    pub(super) hash: u64,
    pub(super) sid: usize,
    pub(super) key: &'k str,
    pub(super) slot: Option<u32>,
    pub(super) plan: Plan,
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
