//! A shared concurrency limit's state between syncs (see [`super::store_slots`]).

use super::bucket::Counters;
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// A concurrency limit's cap before its first sync: none (see [`SlotState::cap`]).
pub(super) const NO_CAP: u64 = u64::MAX;

/// A shared concurrency limit's state between syncs, boxed in its bucket's sync state (the
/// buckets of other limits carry none): this node's cap and the slots the others were counted
/// at, from the last sync (see [`super::store::Store::set_slot_cap`]), and every node's
/// counters at the last read, to tell which nodes turned a request away since (see
/// [`super::store::Store::refusing`]).
pub(super) struct SlotState {
    /// The most slots this node may hold beyond its fair share until the next sync.
    pub(super) cap: u64,
    /// The slots the other live nodes were counted at by the previous sync.
    pub(super) others: u64,
    /// (node id, attempts, consumed) of every node at the last read ([`node_id`]).
    read: Box<[(u64, u64, u64)]>,
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState {
            cap: NO_CAP,
            others: 0,
            read: Box::default(),
        }
    }
}

impl SlotState {
    /// Keeps a read's counters, `me`'s being `own` (the read's own fields are not kept
    /// again); in place when the read shows as many nodes as the last one.
    pub(super) fn remember(
        &mut self,
        me: &str,
        own: &Counters,
        nodes: &BTreeMap<String, Counters>,
    ) {
        let mut read: SmallVec<[(u64, u64, u64); 4]> = (nodes.iter())
            .filter(|(n, _)| n.as_str() != me)
            .map(|(n, c)| (node_id(n), c.attempts, c.consumed))
            .collect();
        read.push((node_id(me), own.attempts, own.consumed));
        if self.read.len() == read.len() {
            self.read.copy_from_slice(&read);
        } else {
            self.read = read.as_slice().into();
        }
    }

    /// Whether node `n`, its counters now `c`, turned a request away since the last read: it
    /// decided more requests than it took slots (each request takes one). False without a
    /// last read.
    pub(super) fn refused_since_read(&self, n: &str, c: &Counters) -> bool {
        if self.read.is_empty() {
            return false;
        }
        let id = node_id(n);
        let (attempts, consumed) = (self.read.iter())
            .find(|(m, ..)| *m == id)
            .map_or((0, 0), |&(_, a, c)| (a, c));
        c.attempts.saturating_sub(attempts) > c.consumed.saturating_sub(consumed)
    }
}

/// The id of a node's name in [`SlotState`]: SipHash with fixed keys (the same in every
/// process; only this node's reads are compared with each other). Two nodes of one cluster
/// whose names hash alike would count as one (odds 2^-64).
fn node_id(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}
