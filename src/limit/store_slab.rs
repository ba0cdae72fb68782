//! The buckets of one shard: a slab of entries (the store's `Entry`) behind a hash table of
//! 4-byte slot numbers.
//!
//! A hash table keeps room for its growth: it doubles when it is 7/8 full, so right after
//! doubling it is 7/16 full, and every one of its slots is written when it is rehashed. With
//! the entries in its slots (a key and the entry, 96 bytes), that room cost over 100
//! bytes per bucket at the worst point of the growth, more than the entry itself. Here the
//! table holds only the number of the entry's slot in a slab (4 bytes and a control byte, at
//! most about 12 bytes per bucket at that point), and the slab grows by blocks of 1,024 slots
//! that never move: the part of the last block that no bucket has reached is never written,
//! so it is not resident. A bucket that goes leaves its slot to the next new one.
//!
//! Both come from the system allocator, whatever the global allocator is (see the store's
//! `Shard`): the table is one block that doubles, which glibc maps from the system and hands
//! back when it is freed, where a general-purpose allocator keeps the freed half-size block
//! for reuse.
//!
//! The table's probes compare the key in the slab; the hash is the store's (`KeyHasher`, one per
//! request, see `Store::locate`), and a growth of the table hashes each key again.

use super::store_key::{eq_short, KeyHasher, StoreKey};
use allocator_api2::vec::Vec as SysVec;
use std::alloc::System;
use std::hash::BuildHasher;

type Slot<E> = Option<(StoreKey, E)>;

/// Slots per block of the slab: 1,024 (96 KiB of entries).
const BLOCK_BITS: u32 = 10;
const BLOCK: usize = 1 << BLOCK_BITS;

/// A shard's buckets by store key (the subset of a map's interface the store uses).
pub(super) struct Entries<E> {
    /// Slot numbers, by the hash of their slot's key.
    index: hashbrown::HashTable<u32, System>,
    /// Every slot a bucket has held, in blocks of [`BLOCK`] allocated whole and never moved
    /// (slot `i` is in block `i / BLOCK`); `None` once its bucket has gone (on `free`). A
    /// vector of slots that doubled instead would copy them into a new block each time, and
    /// the old one, freed, would stay resident until the allocator reuses it.
    slots: SysVec<SysVec<Slot<E>, System>, System>,
    /// Empty slots, the next new bucket's.
    free: SysVec<u32, System>,
    hasher: KeyHasher,
}

type Blocks<E> = SysVec<SysVec<Slot<E>, System>, System>;

/// Slot `i`.
#[inline(always)]
fn slot<E>(slots: &Blocks<E>, i: u32) -> Option<&Slot<E>> {
    slots
        .get((i >> BLOCK_BITS) as usize)?
        .get(i as usize & (BLOCK - 1))
}

#[inline(always)]
fn slot_mut<E>(slots: &mut Blocks<E>, i: u32) -> Option<&mut Slot<E>> {
    slots
        .get_mut((i >> BLOCK_BITS) as usize)?
        .get_mut(i as usize & (BLOCK - 1))
}

/// Whether slot `i` holds `key` (a slot the table names always holds a bucket).
#[inline(always)]
fn holds<E>(slots: &Blocks<E>, i: u32, key: &str) -> bool {
    matches!(slot(slots, i), Some(Some((k, _))) if eq_short(k.as_str().as_bytes(), key.as_bytes()))
}

impl<E> Entries<E> {
    pub(super) fn new(hasher: KeyHasher) -> Self {
        Entries {
            index: hashbrown::HashTable::new_in(System),
            slots: SysVec::new_in(System),
            free: SysVec::new_in(System),
            hasher,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Slots made so far (held or free).
    fn slot_count(&self) -> usize {
        self.slots
            .last()
            .map_or(0, |b| (self.slots.len() - 1) * BLOCK + b.len())
    }

    /// The slot of `key` (hash `hash`), if the shard holds it.
    #[inline(always)]
    pub(super) fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |&i| holds(slots, i, key)).copied()
    }

    /// The entry in slot `i` (from [`Entries::find`], with no removal since).
    #[inline(always)]
    pub(super) fn entry_at(&mut self, i: u32) -> Option<&mut E> {
        match slot_mut(&mut self.slots, i) {
            Some(Some((_, e))) => Some(e),
            _ => None,
        }
    }

    /// The entry in slot `i`, to read.
    #[inline(always)]
    pub(super) fn entry_ref(&self, i: u32) -> Option<&E> {
        match slot(&self.slots, i) {
            Some(Some((_, e))) => Some(e),
            _ => None,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&E> {
        self.entry_ref(self.find(self.hash_of(key), key)?)
    }

    /// The hash of `key` in this map (the store's).
    pub(super) fn hash_of(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut E> {
        self.get_hashed_mut(self.hash_of(key), key)
    }

    /// The entry of `key`, whose hash (the store's) is `hash`.
    #[inline]
    pub(super) fn get_hashed_mut(&mut self, hash: u64, key: &str) -> Option<&mut E> {
        let i = self.find(hash, key)?;
        self.entry_at(i)
    }

    /// The entry of `key` (hash `hash`); when missing, `make`'s, unless the shard holds `cap`
    /// entries already. One probe when it is there (nearly every request).
    #[inline(always)]
    pub(super) fn get_or_insert_hashed(
        &mut self,
        hash: u64,
        key: &str,
        cap: usize,
        make: impl FnOnce() -> E,
    ) -> Option<&mut E> {
        match self.find(hash, key) {
            Some(i) => self.entry_at(i),
            None => self.insert_new(hash, key, cap, make),
        }
    }

    /// Adds `make`'s entry for `key` (hash `hash`), which the shard does not hold (the caller
    /// has just probed for it), unless the shard holds `cap` entries already.
    pub(super) fn insert_new(
        &mut self,
        hash: u64,
        key: &str,
        cap: usize,
        make: impl FnOnce() -> E,
    ) -> Option<&mut E> {
        if self.len() >= cap {
            return None;
        }
        self.insert_hashed(hash, key.into(), make())
    }

    /// Adds the entry of `key` (hash `hash`), which the shard does not hold. `None` when the
    /// shard has no slot number left (2^32 buckets): the caller treats the shard as full.
    #[cold]
    #[inline(never)]
    fn insert_hashed(&mut self, hash: u64, key: StoreKey, entry: E) -> Option<&mut E> {
        let i = match self.free.pop() {
            Some(i) => {
                *slot_mut(&mut self.slots, i)? = Some((key, entry));
                i
            }
            None => {
                let i = u32::try_from(self.slot_count()).ok()?;
                if self.slots.last().is_none_or(|b| b.len() == BLOCK) {
                    self.slots.push(SysVec::with_capacity_in(BLOCK, System));
                }
                self.slots.last_mut()?.push(Some((key, entry)));
                i
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| match slot(slots, j) {
                Some(Some((k, _))) => hasher.hash_one(k.as_str()),
                _ => 0,
            });
        self.entry_at(i)
    }

    /// Removes the entry of `key`, if any.
    pub(super) fn remove(&mut self, key: &str) -> Option<E> {
        let hash = self.hash_of(key);
        let slots = &self.slots;
        let found = self
            .index
            .find_entry(hash, |&i| holds(slots, i, key))
            .ok()?;
        let (i, _) = found.remove();
        self.free.push(i);
        slot_mut(&mut self.slots, i)?.take().map(|(_, e)| e)
    }

    /// Keeps the entries for which `keep` is true.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&StoreKey, &mut E) -> bool) {
        let (slots, free) = (&mut self.slots, &mut self.free);
        self.index.retain(|&mut i| {
            let Some(slot) = slot_mut(slots, i) else {
                return false;
            };
            let kept = match slot {
                Some((k, e)) => keep(k, e),
                None => false,
            };
            if !kept {
                *slot = None;
                free.push(i);
            }
            kept
        });
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&StoreKey, &E)> {
        self.slots
            .iter()
            .flat_map(|b| b.iter())
            .filter_map(|s| s.as_ref().map(|(k, e)| (k, e)))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&StoreKey, &mut E)> {
        self.slots
            .iter_mut()
            .flat_map(|b| b.iter_mut())
            .filter_map(|s| s.as_mut().map(|(k, e)| (&*k, e)))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &StoreKey> {
        self.iter().map(|(k, _)| k)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &E> {
        self.iter().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> String {
        format!("l:{i}")
    }

    fn insert(m: &mut Entries<u32>, i: u32) -> bool {
        let k = key(i);
        let h = m.hasher.hash_one(k.as_str());
        m.get_or_insert_hashed(h, &k, usize::MAX, || i).is_some()
    }

    #[test]
    fn entries_are_found_by_key_through_the_tables_growth_and_a_freed_slot_is_reused() {
        let mut m = Entries::new(KeyHasher::default());
        for i in 0..10_000 {
            assert!(insert(&mut m, i));
        }
        assert_eq!(m.len(), 10_000);
        for i in 0..10_000 {
            assert_eq!(m.get(&key(i)), Some(&i), "key {i}");
        }
        assert_eq!(m.get("l:10000"), None);
        // Found again, not inserted twice.
        assert!(insert(&mut m, 7));
        assert_eq!(m.len(), 10_000);

        assert_eq!(m.remove(&key(7)), Some(7));
        assert_eq!(m.remove(&key(7)), None);
        assert_eq!(m.get(&key(7)), None);
        assert_eq!(m.len(), 9_999);
        let slots = m.slot_count();
        assert!(insert(&mut m, 20_000));
        assert_eq!(m.slot_count(), slots, "the freed slot is taken");
        assert_eq!(m.get(&key(20_000)), Some(&20_000));
        *m.get_mut(&key(20_000)).expect("present") += 1;
        assert_eq!(m.get(&key(20_000)), Some(&20_001));
    }

    #[test]
    fn retain_drops_exactly_the_entries_refused_and_frees_their_slots() {
        let mut m = Entries::new(KeyHasher::default());
        for i in 0..1_000 {
            insert(&mut m, i);
        }
        m.retain(|k, v| {
            assert_eq!(k.as_str(), key(*v));
            *v % 3 != 0
        });
        assert_eq!(m.len(), 666);
        for i in 0..1_000 {
            assert_eq!(m.get(&key(i)).is_some(), i % 3 != 0, "key {i}");
        }
        let mut seen: Vec<u32> = m.values().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1_000).filter(|i| i % 3 != 0).collect::<Vec<_>>());
        assert_eq!(m.keys().count(), 666);
        for (_, v) in m.iter_mut() {
            *v += 1_000;
        }
        assert_eq!(m.get(&key(1)), Some(&1_001));
        // 334 freed slots, then the slab grows again.
        let slots = m.slot_count();
        for i in 5_000..5_400 {
            insert(&mut m, i);
        }
        assert_eq!(m.slot_count(), slots + 66);
        assert_eq!(m.len(), 1_066);
        assert!((5_000..5_400).all(|i| m.get(&key(i)) == Some(&i)));
    }

    #[test]
    fn a_full_shard_adds_no_entry_but_finds_the_ones_it_has() {
        let mut m = Entries::new(KeyHasher::default());
        let k = |i: u32| key(i);
        let h = |m: &Entries<u32>, s: &str| m.hasher.hash_one(s);
        for i in 0..4 {
            let (s, hh) = (k(i), h(&m, &k(i)));
            assert!(m.get_or_insert_hashed(hh, &s, 4, || i).is_some());
        }
        let s = k(9);
        let hh = h(&m, &s);
        assert!(m.get_or_insert_hashed(hh, &s, 4, || 9).is_none());
        let s = k(2);
        let hh = h(&m, &s);
        assert_eq!(m.get_or_insert_hashed(hh, &s, 4, || 99).copied(), Some(2));
    }
}
