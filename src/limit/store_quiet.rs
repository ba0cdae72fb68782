//! Quiet buckets: a shared bucket that only this node has touched, and that is far from empty,
//! is not written to the shared store every sync interval. Real API traffic is thousands of
//! keys at low rates: written on every change, each of those requests would cost the shared
//! store a script with a handful of commands (tens of µs of Redis CPU on the development
//! machine), which is what `docs/shared-state.md` ("Many keys") budgets at 3 µs per request.
//!
//! # The rule
//!
//! A bucket new to this node (created since it last read the store, see `View::New`) stays
//! *quiet* after a charge when all of these hold:
//!
//! - its limit is not `burst_guard` (a guarded limit announces its demand at once);
//! - the charge was allowed;
//! - this node has taken from it, since it was created, at most half the capacity plus its
//!   share (1 / live nodes) of what the bucket refilled since then,
//! - and no more than two tokens beyond all that the bucket refilled since then (a node
//!   whose own demand outruns the refill is not light: it syncs at once, as a node joining a
//!   busy key must, to learn what the others spent).
//!
//! A quiet bucket is not listed for the next sync. The first charge that breaks the rule
//! lists it as usual (it is then read and written like any other, and is never quiet again
//! while it lives: it knows the stored state from then on).
//!
//! A quiet bucket is *forgettable* once its state no longer matters to anyone: it is full
//! again, and what this node took from it is at most its share of what the bucket refilled
//! since it was created: `consumed <= rate x age / live nodes`. The sync loop then reads the
//! bucket's hash ([`Store::take_quiet_due`]; one script call per round for all of them, one
//! `HLEN` for a hash that does not exist) and hands it to [`Store::settle_quiet`]: if no node
//! wrote the bucket, or what the hash holds leaves it at least half full with this node's
//! tokens counted, the node drops it without writing; otherwise the bucket is listed for a
//! normal sync, so that its consumption counts there too. A quiet bucket older than
//! [`QUIET_MAX_AGE_NS`] is listed in any case, and the final flush of a stopping node lists
//! every quiet bucket ([`Store::wake_quiet`]).
//!
//! # Why it keeps the bounds
//!
//! - A client within its limit is never turned away by this rule: a quiet bucket is decided
//!   exactly as one node alone decides it (whole bucket, default pacing).
//! - A key under pressure anywhere is written by the node where it is pressed (it is not
//!   quiet there: more than half the capacity and its share taken, demand beyond the refill,
//!   or a refusal), so its hash shows the pressure to every other node that checks a quiet
//!   bucket of the key, and those list their buckets: their consumption joins the shared
//!   state.
//! - A node forgets a bucket only when it took at most its share of the refill, no other
//!   node wrote the key since the bucket was created here, and the bucket, as far as the
//!   store shows, is at least half full with this node's tokens counted. So the nodes that
//!   leave tokens out are all light on the key at once, each within its share: together
//!   within the refill. Light demands that add up to more than the refill have at least one
//!   node above its share, which keeps its bucket until it is pressed and writes (half the
//!   capacity plus its share, or [`QUIET_MAX_AGE_NS`]); from then on the others find it
//!   active and write theirs.
//! - Before its first sync, this node may spend a quiet bucket up to half the capacity (plus
//!   its share of the refill, and at most two tokens beyond all of the refill) without the
//!   others knowing: less than the default mode's "whole bucket before hearing from the
//!   others" (SPEC section 5), which remains the stated bound for simultaneous bursts.

use super::bucket::{BucketParams, Counters, UNITS_PER_TOKEN};
use super::store::Store;
use super::store_entry::{lock, Entry, Listed, Shard, View};
use super::store_key::StoreKey;
use std::sync::atomic::Ordering;

/// How old (since created) a quiet bucket must be before it may be checked and forgotten.
pub const QUIET_MIN_AGE_NS: i64 = 1_000_000_000;

/// A quiet bucket this old is listed for a sync whatever its state.
pub const QUIET_MAX_AGE_NS: i64 = 60_000_000_000;

/// A quiet bucket that may be forgotten, if no node has written it (see the module docs).
fn forgettable(e: &Entry, p: &BucketParams, now: i64, live: u32) -> bool {
    let Some(sync) = e.sync.as_ref() else {
        return false;
    };
    let age = now.saturating_sub(sync.synced_ns);
    let taken = i128::from(e.bucket.own_consumed())
        .saturating_mul(UNITS_PER_TOKEN)
        .saturating_mul(i128::from(live.max(1)));
    let refilled = i128::from(p.rate_q()).saturating_mul(i128::from(age));
    Listed::quiet(e.listed)
        && e.view == View::New
        && age >= QUIET_MIN_AGE_NS
        && e.bucket.is_full(p, now)
        && taken <= refilled
}

/// What the shared store holds for a quiet bucket being checked.
#[derive(Debug, Clone)]
pub enum Stored {
    /// No node wrote it.
    Absent,
    /// This node's stored counters (from before the bucket was last evicted, if any), the
    /// others' (their consumption summed, their waste the greatest), and when another node
    /// last wrote the hash (Unix ms, the greatest of their `seen_ms`).
    State {
        own: Option<Counters>,
        others_consumed: u64,
        others_waste: Option<i128>,
        others_seen_ms: Option<u64>,
    },
    /// It could not be read whole (a hash over the size guard).
    Unknown,
}

/// Buckets the quiet check looks at in one call at most (whole shards, at least one): at
/// 100 ms a round, each of a million buckets is looked at every 1.6 s.
pub const QUIET_SCAN_PER_ROUND: usize = 65_536;

/// What becomes of one quiet bucket examined by [`Store::take_quiet_due`].
enum Due {
    /// Not forgettable yet (or too young to look at): stays quiet.
    Later,
    /// To ask the shared store about.
    Check,
    /// Listed for a sync.
    Sync,
}

fn examine(e: &Entry, p: impl FnOnce() -> Option<BucketParams>, now: i64, live: u32) -> Due {
    let Some(sync) = e.sync.as_ref() else {
        return Due::Later;
    };
    let age = now.saturating_sub(sync.synced_ns);
    if age < QUIET_MIN_AGE_NS {
        return Due::Later;
    }
    match p() {
        None => Due::Later,
        Some(_) if age > QUIET_MAX_AGE_NS => Due::Sync,
        Some(p) if forgettable(e, &p, now, live) => Due::Check,
        Some(_) => Due::Later,
    }
}

impl Store {
    /// Whether light buckets may stay quiet (on by default); off, every change is listed for
    /// the next sync.
    pub fn set_quiet(&self, on: bool) {
        self.quiet.store(on, Ordering::Relaxed);
    }

    /// The quiet buckets that may be forgotten now, at most `max`, by store key: the caller
    /// asks the shared store whether each one's hash exists and answers with
    /// [`Store::settle_quiet`] (or [`Store::relist_quiet`] when it could not ask). Quiet
    /// buckets too old to stay quiet are listed for the next sync instead. `params_of` gives
    /// a bucket's parameters by its store key (a key may have its own: an override).
    ///
    /// Quiet buckets are on no list (a list of their keys cost a copy of each key): each call
    /// scans the slabs of whole shards, from the one after the last it finished, until it has
    /// `max` buckets or has looked at [`QUIET_SCAN_PER_ROUND`] buckets. A bucket handed out is
    /// not handed out again until it is settled or relisted.
    pub fn take_quiet_due(
        &self,
        params_of: impl Fn(&str) -> Option<BucketParams>,
        max: usize,
    ) -> Vec<StoreKey> {
        let now = self.clock.now_ns();
        let live = self.live_nodes.load(Ordering::Relaxed);
        let n = self.shards.len();
        let mut out = Vec::new();
        let mut scanned = 0;
        for _ in 0..n {
            if out.len() >= max || scanned >= QUIET_SCAN_PER_ROUND {
                break;
            }
            let at = self.quiet_cursor.load(Ordering::Relaxed) % n;
            let mut shard = lock(&self.shards[at]);
            let Shard { map, dirty } = &mut *shard;
            scanned += map.len();
            for (k, e) in map.iter_mut() {
                if e.listed != Some(Listed::Quiet) {
                    continue;
                }
                if out.len() >= max {
                    // The rest of this shard comes first next time.
                    return out;
                }
                match examine(e, || params_of(k), now, live) {
                    Due::Later => {}
                    Due::Check => {
                        e.listed = Some(Listed::Checking);
                        out.push(k.clone());
                    }
                    Due::Sync => {
                        e.listed = Some(Listed::Dirty);
                        dirty.push(k.clone());
                    }
                }
            }
            self.quiet_cursor.store(at + 1, Ordering::Relaxed);
        }
        out
    }

    /// The shared store's answer for a quiet bucket from [`Store::take_quiet_due`]: what its
    /// hash holds. If no node wrote it, or what it holds leaves the bucket at least half full
    /// with this node's consumption counted, and the bucket is still forgettable, it is
    /// dropped (`Some(true)`). If the stored state leaves it less than half full (or cannot be
    /// read), it is listed for a sync (`Some(false)`). Otherwise (charged meanwhile) it stays
    /// quiet (`None`).
    pub fn settle_quiet(
        &self,
        store_key: &str,
        stored: &Stored,
        params_of: impl Fn(&str) -> Option<BucketParams>,
    ) -> Option<bool> {
        let now = self.clock.now_ns();
        let live = self.live_nodes.load(Ordering::Relaxed);
        let p = params_of(store_key)?;
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let e = shard.map.get_mut(store_key)?;
        if e.listed != Some(Listed::Checking) {
            return None;
        }
        let pressed = match stored {
            Stored::Absent => false,
            Stored::Unknown => true,
            Stored::State {
                own,
                others_consumed,
                others_waste,
                others_seen_ms,
            } => {
                // Another node wrote the key since this bucket was created: it is in use
                // there, and this node's tokens must count with its.
                let created_ms = e.sync.as_ref().map_or(0, |s| s.synced_ns / 1_000_000);
                let others_active = others_seen_ms
                    .is_some_and(|ms| i64::try_from(ms).unwrap_or(i64::MAX) >= created_ms);
                // (A quota's check reads the window holding now: the bucket's, once rolled.)
                let mut merged = e.bucket.clone();
                merged.roll(&p, now);
                merged.rebase_on_store(&p, own.as_ref(), *others_consumed, *others_waste);
                let full = i128::from(p.capacity()).saturating_mul(UNITS_PER_TOKEN);
                others_active || merged.tokens_units(&p, now).saturating_mul(2) < full
            }
        };
        if pressed {
            shard.mark_dirty(store_key);
            Some(false)
        } else if forgettable(e, &p, now, live) {
            shard.map.remove(store_key);
            Some(true)
        } else {
            e.listed = Some(Listed::Quiet);
            None
        }
    }

    /// Quiet again: buckets whose check got no answer.
    pub fn relist_quiet(&self, keys: impl IntoIterator<Item = StoreKey>) {
        for k in keys {
            let mut shard = lock(&self.shards[self.shard_of(&k)]);
            if let Some(e) = shard.map.get_mut(k.as_str()) {
                if e.listed == Some(Listed::Checking) {
                    e.listed = Some(Listed::Quiet);
                }
            }
        }
    }

    /// Lists every quiet bucket for a sync (a stopping node writes all it holds).
    pub fn wake_quiet(&self) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let Shard { map, dirty } = &mut *shard;
            for (k, e) in map.iter_mut() {
                if Listed::quiet(e.listed) {
                    e.listed = Some(Listed::Dirty);
                    dirty.push(k.clone());
                }
            }
        }
    }

    /// Quiet buckets held (being checked or not).
    pub fn quiet_len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                lock(s)
                    .map
                    .values()
                    .filter(|e| Listed::quiet(e.listed))
                    .count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::clock::ManualClock;
    use crate::limit::store::{Charge, LimitSpec};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const SEC: i64 = 1_000_000_000;

    fn limit(capacity: u64, rate: f64, burst_guard: bool) -> LimitSpec {
        LimitSpec {
            name: "l".into(),
            params: BucketParams::new(capacity, rate, capacity).expect("params"),
            shadow: false,
            burst_guard,
            overrides: Default::default(),
        }
    }

    fn shared() -> (Arc<ManualClock>, Store) {
        let clock = Arc::new(ManualClock::new(1_700_000_000 * SEC));
        let store = Store::new(clock.clone(), true);
        store.set_cluster(3, SEC / 10);
        (clock, store)
    }

    fn take(store: &Store, l: &LimitSpec, key: &str, n: usize) {
        for _ in 0..n {
            let c = [Charge {
                limit: l,
                key,
                cost: 1,
            }];
            assert!(
                store.charge(&c).allowed(),
                "{key}: a client within its limit"
            );
        }
    }

    /// A hash where other nodes took `consumed`, last written at `seen_ms`.
    fn other(consumed: u64, seen_ms: Option<u64>) -> Stored {
        Stored::State {
            own: None,
            others_consumed: consumed,
            others_waste: None,
            others_seen_ms: seen_ms,
        }
    }

    fn listed(store: &Store) -> Vec<String> {
        let mut keys: Vec<String> = store
            .take_dirty()
            .into_iter()
            .map(|d| d.store_key.to_string())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn a_bucket_stays_quiet_until_half_its_capacity_and_its_share_are_taken_then_syncs() {
        let (clock, store) = shared();
        let l = limit(10, 1.0, false);
        take(&store, &l, "a", 1);
        clock.advance_ns(4 * SEC);
        // 6 <= 5 + 4 s x 1/s / 3 nodes, and <= 2 + 4 s x 1/s.
        take(&store, &l, "a", 5);
        assert!(listed(&store).is_empty(), "6 of 10 after 4 s: quiet");
        assert_eq!(store.quiet_len(), 1);
        take(&store, &l, "a", 1);
        assert_eq!(listed(&store), ["l:a"], "7 > 5 + 4/3: listed");
        assert_eq!(store.quiet_len(), 0);
    }

    #[test]
    fn a_demand_faster_than_the_refill_syncs_at_once() {
        let (clock, store) = shared();
        let l = limit(10, 1.0, false);
        take(&store, &l, "a", 2);
        assert!(listed(&store).is_empty(), "two tokens: quiet");
        clock.advance_ns(SEC / 2);
        take(&store, &l, "a", 1);
        assert_eq!(listed(&store), ["l:a"], "3 tokens > 2 + 0.5 s x 1/s");
    }

    #[test]
    fn a_stored_state_at_least_half_full_lets_a_quiet_bucket_go() {
        let (clock, store) = shared();
        let l = limit(5, 1.0, false);
        let params_of = |_: &str| Some(l.params.clone());
        take(&store, &l, "a", 1);
        take(&store, &l, "b", 1);
        clock.advance_ns(4 * SEC);
        assert_eq!(store.take_quiet_due(params_of, 100).len(), 2);
        // With this node's token counted, another node took 2 (5 + 4 s x 1/s - 3 = 6, capped
        // at 5: at least half full), or 7 (5 + 4 - 8 = 1 left: under half).
        // Written before the buckets were created.
        let before = Some(1_699_999_999_000);
        assert_eq!(
            store.settle_quiet("l:a", &other(2, before), params_of),
            Some(true)
        );
        assert_eq!(
            store.settle_quiet("l:b", &other(7, before), params_of),
            Some(false)
        );
        assert_eq!(listed(&store), ["l:b"]);
        // Another node wrote the key after this bucket was created: listed, however full.
        take(&store, &l, "c", 1);
        clock.advance_ns(4 * SEC);
        assert_eq!(store.take_quiet_due(params_of, 100), ["l:c"]);
        let active = other(0, Some(1_700_000_005_000));
        assert_eq!(store.settle_quiet("l:c", &active, params_of), Some(false));
        assert_eq!(
            store.settle_quiet("l:x", &Stored::Unknown, params_of),
            None,
            "gone"
        );
    }

    #[test]
    fn a_guarded_limit_is_never_quiet() {
        let (_clock, store) = shared();
        take(&store, &limit(10, 1.0, true), "a", 1);
        assert_eq!(listed(&store), ["l:a"]);
    }

    #[test]
    fn a_bucket_read_once_is_never_quiet_again() {
        let (_clock, store) = shared();
        let l = limit(10, 1.0, false);
        take(&store, &l, "a", 6);
        let pushed = store.take_dirty();
        assert_eq!(pushed.len(), 1);
        let own = pushed[0].own;
        // The first write answers the hash as it was: empty.
        store.absorb(
            "l:a",
            "me",
            crate::limit::store_sync::Read::counters(&BTreeMap::new(), None),
            &l,
            Some(&own),
        );
        assert!(listed(&store).is_empty(), "clean after its push");
        take(&store, &l, "a", 1);
        assert_eq!(
            listed(&store),
            ["l:a"],
            "a known bucket syncs on every change"
        );
    }

    #[test]
    fn a_bucket_has_no_pace_until_its_first_read_or_its_first_guarded_decision() {
        let (_clock, store) = shared();
        let open = limit(10, 1.0, false);
        let guarded = LimitSpec {
            name: "g".into(),
            ..limit(10, 1.0, true)
        };
        take(&store, &open, "a", 1);
        take(&store, &open, "b", 8);
        take(&store, &guarded, "a", 1);
        let paced = |k: &str| {
            let shard = lock(&store.shards[store.shard_of(k)]);
            let sync = shard.map.get(k).and_then(|e| e.sync.as_ref());
            sync.map(|s| s.pace.is_some())
        };
        assert_eq!(paced("l:a"), Some(false), "quiet: no pace");
        assert_eq!(paced("l:b"), Some(false), "listed, not read yet: no pace");
        assert_eq!(paced("g:a"), Some(true), "guarded: from its first decision");
        let empty = BTreeMap::new();
        let read = crate::limit::store_sync::Read::counters(&empty, None);
        store.absorb("l:b", "me", read, &open, None);
        assert_eq!(paced("l:b"), Some(true), "read: paced from then on");
        // Within its limit, and alone on the key: still the whole bucket.
        take(&store, &open, "b", 2);
    }

    #[test]
    fn the_quiet_check_hands_out_every_due_bucket_once_a_few_at_a_time_and_no_young_one() {
        let (clock, store) = shared();
        let l = limit(5, 1.0, false);
        let params_of = |_: &str| Some(l.params.clone());
        let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        for k in &keys {
            take(&store, &l, k, 1);
        }
        clock.advance_ns(4 * SEC);
        // Young: created now, on the same shards as the others.
        let young: Vec<String> = (0..50).map(|i| format!("y{i}")).collect();
        for k in &young {
            take(&store, &l, k, 1);
        }
        let mut handed = Vec::new();
        for _ in 0..1_000 {
            let due = store.take_quiet_due(params_of, 7);
            assert!(due.len() <= 7);
            if due.is_empty() {
                break;
            }
            handed.extend(due.into_iter().map(|k| k.to_string()));
        }
        handed.sort();
        let mut want: Vec<String> = keys.iter().map(|k| format!("l:{k}")).collect();
        want.sort();
        assert_eq!(handed, want, "each due bucket once, no young one");
        assert!(
            store.take_quiet_due(params_of, 7).is_empty(),
            "all being checked"
        );
        assert_eq!(store.quiet_len(), 350);
        for k in &handed {
            assert_eq!(
                store.settle_quiet(k, &Stored::Absent, params_of),
                Some(true)
            );
        }
        assert_eq!(store.quiet_len(), 50);
        assert!(listed(&store).is_empty());
    }

    #[test]
    fn a_quiet_bucket_is_checked_once_full_and_within_its_share_then_forgotten_or_synced() {
        let (clock, store) = shared();
        // 1 token/s, 3 live nodes: a node's share of the refill is 1/3 token per second.
        let l = limit(5, 1.0, false);
        let params_of = |_: &str| Some(l.params.clone());
        take(&store, &l, "one", 1);
        take(&store, &l, "two", 1);
        assert!(
            store.take_quiet_due(params_of, 100).is_empty(),
            "younger than 1 s"
        );
        clock.advance_ns(SEC);
        take(&store, &l, "two", 1);
        assert!(
            listed(&store).is_empty(),
            "2 tokens <= 2 + 1 s x 1/s: quiet"
        );
        assert!(
            store.take_quiet_due(params_of, 100).is_empty(),
            "\"one\" is full again, but 1 token > 1 s x 1/3 token/s; \"two\" is not full"
        );
        clock.advance_ns(5 * SEC / 2);
        // 3.5 s: "one" took 1 <= 3.5 / 3; "two" took 2 > 3.5 / 3.
        assert_eq!(store.take_quiet_due(params_of, 100), ["l:one"]);
        clock.advance_ns(3 * SEC);
        assert_eq!(store.take_quiet_due(params_of, 100), ["l:two"]);
        // No node wrote "one": forgotten. Another node took 100 of "two": listed for a sync.
        assert_eq!(
            store.settle_quiet("l:one", &Stored::Absent, params_of),
            Some(true)
        );
        assert_eq!(
            store.settle_quiet("l:two", &other(100, None), params_of),
            Some(false)
        );
        assert_eq!(listed(&store), ["l:two"]);
        assert_eq!(store.quiet_len(), 0);
        assert_eq!(
            store.stats(params_of).get("l").map(|s| s.0),
            Some(1),
            "one forgotten"
        );
    }

    #[test]
    fn a_bucket_charged_while_checked_is_kept_and_an_unanswered_check_comes_back() {
        let (clock, store) = shared();
        let l = limit(5, 1.0, false);
        let params_of = |_: &str| Some(l.params.clone());
        take(&store, &l, "a", 1);
        take(&store, &l, "b", 1);
        clock.advance_ns(4 * SEC);
        let due = store.take_quiet_due(params_of, 100);
        assert_eq!(due.len(), 2);
        assert!(
            store.take_quiet_due(params_of, 100).is_empty(),
            "each asked once"
        );
        take(&store, &l, "a", 1); // no longer full: must not be dropped
        assert_eq!(store.settle_quiet("l:a", &Stored::Absent, params_of), None);
        store.relist_quiet([StoreKey::new("l", "b")]);
        assert_eq!(store.quiet_len(), 2, "both kept");
        clock.advance_ns(10 * SEC);
        let mut again = store.take_quiet_due(params_of, 100);
        again.sort();
        assert_eq!(again, ["l:a", "l:b"]);
    }

    #[test]
    fn a_quiet_bucket_syncs_when_too_old_and_on_a_stop() {
        let (clock, store) = shared();
        let l = limit(100, 0.001, false);
        let params_of = |_: &str| Some(l.params.clone());
        take(&store, &l, "old", 1);
        clock.advance_ns(QUIET_MAX_AGE_NS + 1);
        take(&store, &l, "new", 1);
        assert!(store.take_quiet_due(params_of, 100).is_empty());
        assert_eq!(listed(&store), ["l:old"]);
        store.wake_quiet();
        assert_eq!(listed(&store), ["l:new"]);
    }

    #[test]
    fn a_quiet_bucket_is_not_evicted_before_its_check() {
        let (clock, store) = shared();
        let l = limit(5, 1.0, false);
        take(&store, &l, "a", 1);
        clock.advance_ns(3600 * SEC);
        assert_eq!(store.evict_idle(|_| Some(l.params.clone())), 0);
        assert_eq!(store.quiet_len(), 1);
    }
}

#[cfg(test)]
mod waker_tests {
    use crate::limit::bucket::BucketParams;
    use crate::limit::clock::ManualClock;
    use crate::limit::store::{Charge, LimitSpec, Store};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_new_bucket_listed_for_a_sync_wakes_the_sync_loop_once() {
        let store = Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), true);
        let woken = Arc::new(AtomicUsize::new(0));
        let count = woken.clone();
        store.set_waker(move || {
            count.fetch_add(1, Ordering::Relaxed);
        });
        let l = LimitSpec::new("l", BucketParams::new(10, 1.0, 10).expect("params"));
        let take = |key: &str| {
            let c = [Charge {
                limit: &l,
                key,
                cost: 1,
            }];
            assert!(store.charge(&c).allowed());
        };
        take("a");
        take("a");
        assert_eq!(woken.load(Ordering::Relaxed), 0, "quiet: no sync needed");
        take("a");
        assert_eq!(
            woken.load(Ordering::Relaxed),
            1,
            "3 tokens at once: listed, woken"
        );
        take("a");
        assert_eq!(woken.load(Ordering::Relaxed), 1, "already listed");
        assert_eq!(store.take_dirty().len(), 1);
    }
}
