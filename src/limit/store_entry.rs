//! A bucket's entry in the store and the shards that hold them: the types the store
//! ([`super::store`]) and its sync bookkeeping (`store_sync`, `store_sweep`, `store_quiet`)
//! share, with the map operations they all use.

use super::bucket::{Bucket, BucketParams, Decision, UNITS_PER_TOKEN};
use super::overrides::Plan;
use super::pacing::Pace;
use super::slot_state::SlotState;
use super::store_key::StoreKey;
use super::store_slab::Entries;
use parking_lot::{Mutex, MutexGuard};

/// A bucket and its sync state.
pub(super) struct Entry {
    pub(super) bucket: Bucket,
    /// Changed since the last successful push to the shared store: on the list of the next
    /// sync (`Dirty`), or quiet (`Quiet`, see [`crate::limit::store_quiet`]); `None` when
    /// there is nothing to push.
    pub(super) listed: Option<Listed>,
    /// How this node's view of the shared bucket stands.
    pub(super) view: View,
    /// Shared mode only (boxed, so a standalone bucket stays small): sync time and pace.
    pub(super) sync: Option<Box<SyncState>>,
    /// Refusals in the last minutes, for `/buckets` (see [`crate::limit::store_top`]); in
    /// the entry's padding, so a bucket costs no more memory for them.
    pub(super) refused: Refusals,
    /// The key's override when the bucket last looked it up (a limit with overrides, see
    /// [`super::store_plans`]).
    pub(super) plan: Plan,
}

/// Refusals of one bucket in the current and the previous minute (minutes since the epoch,
/// modulo 2^16: only compared for equality with now and one before; a bucket untouched for
/// 45 days that is refused again in the very minute its count was taken would count its old
/// refusals too).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Refusals {
    minute: u16,
    current: u16,
    previous: u16,
}

const NS_PER_MINUTE: i64 = 60_000_000_000;

impl Refusals {
    /// One more refusal at `now_ns`.
    #[cold]
    pub(super) fn note(&mut self, now_ns: i64) {
        let minute = now_ns.div_euclid(NS_PER_MINUTE) as u16;
        if minute == self.minute {
            self.current = self.current.saturating_add(1);
            return;
        }
        self.previous = if minute == self.minute.wrapping_add(1) {
            self.current
        } else {
            0
        };
        self.minute = minute;
        self.current = 1;
    }

    /// Refusals in the 60 s before `now_ns`: this minute's, and the previous minute's
    /// weighted by how much of it the last 60 s still cover (a sliding window's estimate).
    pub(super) fn last_minute(&self, now_ns: i64) -> u64 {
        let minute = now_ns.div_euclid(NS_PER_MINUTE) as u16;
        let into = now_ns.rem_euclid(NS_PER_MINUTE) as f64 / NS_PER_MINUTE as f64;
        let (current, previous) = if minute == self.minute {
            (self.current, self.previous)
        } else if minute == self.minute.wrapping_add(1) {
            (0, self.current)
        } else {
            (0, 0)
        };
        (f64::from(current) + f64::from(previous) * (1.0 - into)).round() as u64
    }
}

/// How a node's view of a shared bucket stands, which decides how the next sync merges it
/// (see [`Store::absorb`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum View {
    /// Merged with the shared store at the last read.
    Current,
    /// Created since the last read: its counters start from zero and are rebased onto what
    /// the store holds.
    New,
    /// Touched after more than a few sync intervals without a read: it may lag far behind the
    /// other nodes, so the next sync takes the stored state before this node's waste.
    Lagging,
}

/// What a shared bucket needs besides its counters.
#[derive(Default)]
pub(super) struct SyncState {
    /// When the bucket was last merged with the shared store.
    pub(super) synced_ns: i64,
    /// This node's allowance between syncs: none until the bucket's first read, or its first
    /// decision when the limit is guarded. Until then a pace would start as the whole bucket
    /// (see [`Pace::check`]: a limit without `burst_guard` starts with the whole of it), so a
    /// bucket that is never read, as a quiet one, carries 32 bytes of sync state instead of
    /// the pace's too.
    pub(super) pace: Option<Box<Pace>>,
    /// Tokens this node credited to the bucket by resets, in total (its `NODE:credit`).
    pub(super) own_credit: u64,
    /// A concurrency limit's cap and last read, from its first sync (see
    /// [`SlotState`]); a concurrency limit's bucket has no pace.
    pub(super) slots: Option<Box<SlotState>>,
}

impl SyncState {
    /// The pace, started (as [`Pace::default`]) if the bucket has none yet. (The entry's
    /// [`Entry::pace_mut`] only finds one.)
    pub(super) fn pace_or_start(&mut self) -> &mut Pace {
        self.pace.get_or_insert_with(Box::default)
    }
}

pub(super) struct Shard {
    /// The shard's buckets by store key (see [`super::store_slab`]). aHash: keys are
    /// client-chosen, so a keyed hash (random per process), and faster than SipHash on short
    /// keys. One hash per request picks the shard and probes its table.
    ///
    /// Its table and slab blocks come from the system allocator, whatever the global
    /// allocator is: the table is one large block per shard that doubles as buckets come, and
    /// glibc maps such a block from the system and hands it back the moment it is freed,
    /// where a general-purpose allocator such as mimalloc keeps the freed half-size block for
    /// reuse (over 50 bytes per bucket more at a million buckets when the table held the
    /// entries, `scripts/memory.sh`). So memory per bucket does not depend on the allocator
    /// the binary ships with.
    pub(super) map: Entries<Entry>,
    /// Keys whose entry turned dirty, each listed once until drained. (Quiet buckets are on
    /// no list: the quiet check scans the slab for them, see [`crate::limit::store_quiet`].)
    pub(super) dirty: Vec<StoreKey>,
}

impl Shard {
    pub(super) fn mark_dirty(&mut self, key: &str) {
        self.mark_dirty_hashed(self.map.hash_of(key), key);
    }

    /// [`Shard::mark_dirty`] for a key whose hash (the store's) is known.
    pub(super) fn mark_dirty_hashed(&mut self, hash: u64, key: &str) {
        if let Some(e) = self.map.get_hashed_mut(hash, key) {
            if e.listed != Some(Listed::Dirty) {
                e.listed = Some(Listed::Dirty);
                self.dirty.push(key.into());
            }
        }
    }
}

/// Shard locks are parking_lot's: a lock and an unlock are one atomic operation each, with
/// none of std's poisoning checks. No code panics while holding a shard lock; if one ever
/// did, the map is still consistent (each operation is a single insert or field update), so
/// the next request is served as usual.
pub(super) fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock()
}

/// The shards of one charge, locked in ascending order (so that two charges never wait on
/// each other's locks) and unlocked when this is dropped. A set of shard numbers rather than a
/// list of guards: locking, finding a key's shard and unlocking are a few instructions each,
/// where a vector of guards took about a hundred a charge of two keys.
pub(super) struct Locked<'s> {
    shards: &'s [Mutex<Shard>],
    /// Bit i: shard i is locked by this set.
    set: u64,
}

impl<'s> Locked<'s> {
    /// Locks the shards of `set` (bit i: shard i; at most 64 shards).
    #[inline(always)]
    pub(super) fn new(shards: &'s [Mutex<Shard>], set: u64) -> Self {
        let mut rest = set;
        while rest != 0 {
            // Held until `drop`, which unlocks it.
            std::mem::forget(lock(&shards[rest.trailing_zeros() as usize]));
            rest &= rest - 1;
        }
        Locked { shards, set }
    }

    /// Shard `id`, which this set holds locked.
    #[inline(always)]
    pub(super) fn shard(&mut self, id: usize) -> &mut Shard {
        assert!(
            id < 64 && self.set & (1 << id) != 0,
            "shard {id} is not locked"
        );
        // SAFETY: this set holds shard `id`'s lock (taken in `new`, given back only in
        // `drop`), and `&mut self` lends out one shard at a time.
        unsafe { &mut *self.shards[id].data_ptr() }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let mut rest = self.set;
        while rest != 0 {
            // SAFETY: locked by `new` (its guard forgotten), and unlocked only here.
            unsafe { self.shards[rest.trailing_zeros() as usize].force_unlock() };
            rest &= rest - 1;
        }
    }
}

/// The entry of `key` (hash `hash`), created when missing unless the shard holds `cap`
/// entries already: one probe, and the key is allocated only on insertion.
#[inline]
pub(super) fn bucket_entry<'s>(
    shard: &'s mut Shard,
    hash: u64,
    key: &str,
    p: &BucketParams,
    now: i64,
    (cap, shared): (usize, bool),
) -> Option<&'s mut Entry> {
    shard
        .map
        .get_or_insert_hashed(hash, key, cap, || new_entry(p, now, shared))
}

/// A new bucket's entry for `key` (hash `hash`), which the shard was just found not to hold
/// ([`bucket_entry`] without its probe), unless the shard holds `cap` entries already.
#[inline]
pub(super) fn new_bucket_entry<'s>(
    shard: &'s mut Shard,
    hash: u64,
    key: &str,
    p: &BucketParams,
    now: i64,
    (cap, shared): (usize, bool),
) -> Option<&'s mut Entry> {
    shard
        .map
        .insert_new(hash, key, cap, || new_entry(p, now, shared))
}

/// A new bucket's entry: out of line, so that finding an existing one (nearly every request)
/// is inlined into the charge.
#[cold]
#[inline(never)]
fn new_entry(p: &BucketParams, now: i64, shared: bool) -> Entry {
    Entry {
        bucket: Bucket::new(p, now),
        listed: None,
        view: View::New,
        refused: Refusals::default(),
        plan: Plan::default(),
        sync: shared.then(|| {
            Box::new(SyncState {
                synced_ns: now,
                pace: None,
                own_credit: 0,
                slots: None,
            })
        }),
    }
}

/// Where a changed bucket stands: on the list of the next sync, or quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listed {
    /// Listed for the next sync.
    Dirty,
    /// Quiet (see [`super::store_quiet`]): found by the quiet check's scan.
    Quiet,
    /// Quiet, and being checked against the shared store (handed out by
    /// [`super::store::Store::take_quiet_due`], not yet settled): not handed out again.
    Checking,
}

impl Listed {
    /// Quiet, checked or not.
    pub(super) fn quiet(listed: Option<Listed>) -> bool {
        matches!(listed, Some(Listed::Quiet | Listed::Checking))
    }
}

impl Entry {
    /// The bucket's pace, if it has one (a shared bucket once read, or guarded and decided).
    pub(super) fn pace(&self) -> Option<&Pace> {
        self.sync.as_ref()?.pace.as_deref()
    }

    pub(super) fn pace_mut(&mut self) -> Option<&mut Pace> {
        self.sync.as_mut()?.pace.as_deref_mut()
    }

    /// Starts the window holding `now` when the bucket is a quota whose counters are of an
    /// earlier one ([`Bucket::roll`]): this node's credit is of that window too, and starts
    /// again from zero with the bucket. Every change to a bucket comes after this.
    #[inline(always)]
    pub(super) fn roll(&mut self, p: &BucketParams, now: i64) {
        if self.bucket.roll(p, now) {
            if let Some(sync) = self.sync.as_mut() {
                sync.own_credit = 0;
            }
        }
    }

    /// [`Entry::roll`], then whether state the shared store holds for `window` (a quota's,
    /// by index; `None` for any other bucket) is of the bucket's window and may be merged: a
    /// sync that read one window while the bucket has moved on to the next merges nothing.
    pub(super) fn align(&mut self, p: &BucketParams, window: Option<i64>, now: i64) -> bool {
        self.roll(p, now);
        self.bucket.window_index(p) == window
    }

    /// Credits `n` tokens to the bucket (a reset, a refund); in shared mode they are this
    /// node's credit, to be pushed: returns whether the bucket must be listed for a sync.
    pub(super) fn credit(&mut self, n: u64) -> bool {
        self.bucket.add_credit(n);
        match self.sync.as_mut() {
            Some(sync) => {
                sync.own_credit = sync.own_credit.saturating_add(n);
                true
            }
            None => false,
        }
    }

    /// Notes a change to this bucket (shared mode): quiet or not (see [`is_quiet`]). Returns
    /// the list its key must join, if it is on none yet.
    #[inline(always)]
    pub(super) fn note_change(&mut self, quiet: bool) -> Option<Listed> {
        let list = match (self.listed, quiet) {
            (Some(Listed::Dirty), _) | (Some(Listed::Quiet | Listed::Checking), true) => {
                return None
            }
            (_, true) => Listed::Quiet,
            (_, false) => Listed::Dirty,
        };
        self.listed = Some(list);
        Some(list)
    }
}

impl Shard {
    /// Puts `key` on the list its entry joined (see [`Entry::note_change`]): the dirty one;
    /// a quiet bucket is on none.
    #[inline(always)]
    pub(super) fn list(&mut self, list: Listed, key: &str) {
        if list == Listed::Dirty {
            self.dirty.push(key.into());
        }
    }
}

/// Whether a bucket just charged stays quiet: the rule of [`super::store_quiet`], for a
/// limit with parameters `p` and `burst_guard`, with `live` nodes sharing it.
#[inline(always)]
pub(super) fn is_quiet(
    entry: &Entry,
    (p, burst_guard): (&BucketParams, bool),
    d: &Decision,
    now: i64,
    live: u32,
) -> bool {
    if entry.view != View::New || burst_guard || !d.allowed {
        return false;
    }
    let Some(sync) = entry.sync.as_ref() else {
        return false;
    };
    let taken = i128::from(entry.bucket.own_consumed()).saturating_mul(UNITS_PER_TOKEN);
    let age = i128::from(now.saturating_sub(sync.synced_ns).max(0));
    let refilled = i128::from(p.rate_q()).saturating_mul(age);
    let half = i128::from(p.capacity()).saturating_mul(UNITS_PER_TOKEN / 2);
    taken <= half.saturating_add(refilled / i128::from(live.max(1)))
        && taken <= (2 * UNITS_PER_TOKEN).saturating_add(refilled)
}

// The refusal counts live in what would otherwise be padding; the plan takes the entry from
// 80 to 88 bytes (the bucket's i128s are aligned to 8, see `Bucket`, or it would be 96).
const _: () = assert!(std::mem::size_of::<Entry>() <= 88);
// A slot of the shard's slab: the key (one pointer) and the entry, 96 bytes as before the
// plan was added.
const _: () = assert!(std::mem::size_of::<Option<(StoreKey, Entry)>>() <= 96);
// A shared bucket's sync state fits the allocator's 32-byte size class (its pace apart).
const _: () = assert!(std::mem::size_of::<SyncState>() <= 32);
