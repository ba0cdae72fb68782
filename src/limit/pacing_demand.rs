//! The demand a pace measures a share from ([`crate::limit::pacing`], "What a pace remembers
//! of the previous read"): a read's counters summed over the nodes, and the share from two
//! such sums.

use crate::limit::bucket::Counters;
use std::collections::BTreeMap;

/// The whole bucket, in parts per million.
pub const WHOLE: u32 = 1_000_000;

/// The demand one read showed, summed over the nodes: what a share is measured from, against
/// the next read. Counters are kept as their low 32 bits and compared with wrapping
/// arithmetic ([`since`]), which is exact while no sum moves by 2^31 between two reads of one
/// bucket. Requests never do. Tokens taken could only with more than two billion tokens spent
/// on one key within one sync interval (a limit's capacity may be up to 10^12); that read
/// would then see fewer tokens taken than requests, as if some were turned away, and the
/// share it gives (by demand, instead of the whole bucket) lasts until the next read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sums {
    /// This node's attempts.
    pub(super) own: u32,
    /// Every node's attempts (this one's included).
    pub(super) attempts: u32,
    /// Every node's tokens taken.
    pub(super) consumed: u32,
    /// The latest `seen_ms` of another node, never 0 (0: none yet, see [`newer`]): a node
    /// that announces the bucket later is new.
    pub(super) seen: u32,
}

/// How much a counter kept as its low 32 bits grew from `was` to `now`: 0 when it went down
/// (a counter that restarted: a quota's new window, a store that lost the hash).
fn since(now: u32, was: u32) -> u64 {
    let d = now.wrapping_sub(was);
    if d > i32::MAX as u32 {
        0
    } else {
        u64::from(d)
    }
}

/// Whether `seen_ms` (its low 32 bits) is later than `was`, a [`Sums::seen`] (0: none).
fn newer(ms: u32, was: u32) -> bool {
    was == 0 || since(ms, was) > 0
}

/// The low 32 bits of a counter, as [`Sums`] keeps it.
fn low(v: u64) -> u32 {
    v as u32
}

/// The demand a read shows ([`Sums`]), `own` being this node's counters (the read's own
/// fields are not counted again), the nodes whose counters it holds (this one always
/// counts), and, against the previous read `prev` (unless this is the `first`), the other
/// nodes that announced the bucket since without counters yet (see [`demand_share`]).
pub(super) fn reading(
    me: &str,
    own: &Counters,
    (nodes, seen_ms): (&BTreeMap<String, Counters>, &BTreeMap<String, u64>),
    prev: &Sums,
    first: bool,
) -> (Sums, u32, u64) {
    let mut sums = Sums {
        own: low(own.attempts),
        attempts: low(own.attempts),
        consumed: low(own.consumed),
        seen: 0,
    };
    let mut counted = 1u32;
    for (_, c) in nodes.iter().filter(|(n, _)| n.as_str() != me) {
        sums.attempts = sums.attempts.wrapping_add(low(c.attempts));
        sums.consumed = sums.consumed.wrapping_add(low(c.consumed));
        counted = counted.saturating_add(1);
    }
    let mut announced = 0u64;
    sums.seen = if first { 0 } else { prev.seen };
    let mut latest: Option<u32> = None;
    for (n, &ms) in seen_ms {
        if n == me {
            continue;
        }
        // 0 is kept for "none".
        let ms = low(ms).max(1);
        if !first && !nodes.contains_key(n) && newer(ms, prev.seen) {
            announced += 1;
        }
        if latest.is_none_or(|l| since(ms, l) > 0) {
            latest = Some(ms);
        }
    }
    if let Some(l) = latest {
        if first || newer(l, prev.seen) {
            sums.seen = l;
        }
    }
    (sums, counted, announced)
}

/// How long the read spans of a share are, in ms: this node's, from its previous read to
/// this one, and the others', from the latest write of another node the previous read showed
/// to the latest this one shows. A node's write carries its counters as they were when it
/// wrote, so the others' demand since the previous read is their demand over their span, not
/// over this node's: with sync rounds that drift against each other, a read sees none, one
/// or two of another node's writes since the previous one, and the counts alone would give
/// this node the whole bucket, or a third of it, where a half is its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spans {
    pub(super) own_ms: u64,
    pub(super) others_ms: u64,
}

impl Spans {
    /// The spans of a read `own_ms` after the previous one, which showed `prev` (see
    /// [`Spans`]). The others' span is taken as this node's when it cannot be measured (no
    /// write of another node seen before, or none since), and kept within half and twice
    /// this node's: the latest write may be of another node than the previous read's, whose
    /// clock may differ.
    pub(super) fn of(prev: &Sums, now: &Sums, own_ms: u64) -> Spans {
        let own_ms = own_ms.max(1);
        let others_ms = if prev.seen == 0 || now.seen == prev.seen {
            own_ms
        } else {
            since(now.seen, prev.seen).clamp(own_ms.div_ceil(2), own_ms.saturating_mul(2))
        };
        Spans { own_ms, others_ms }
    }
}

/// Whether a read `own_ms` after the previous one (`prev`), with a sync every `sync_ms`,
/// shows no write of any other node since, while others wrote before (`prev` knows the
/// latest of their writes): it cannot tell their demand since from none (see [`Spans`]),
/// unless it comes longer than a round takes after the previous one.
pub(super) fn nothing_new(prev: &Sums, now: &Sums, own_ms: u64, sync_ms: u64) -> bool {
    prev.seen != 0 && now.seen == prev.seen && own_ms.saturating_mul(2) < sync_ms.saturating_mul(3)
}

/// The share from the demand since the previous read, `prev`, to this one, `now`, over
/// `spans`, with `announced` other nodes that announced the bucket since without counters
/// yet and the limit's `burst_guard` (see [`crate::limit::pacing`], which takes the whole
/// bucket for a node alone and floors a share at a tenth of the equal one). The sums differ
/// by every node's demand since the previous read as long as no node's counters went away in
/// between (the caller checks the count of nodes). The share is this node's rate of demand
/// over every node's: the others' attempts count over their span.
pub(super) fn demand_share(
    prev: Sums,
    now: Sums,
    announced: u64,
    guard: bool,
    spans: Spans,
) -> u32 {
    let mine = since(now.own, prev.own);
    let spent = since(now.consumed, prev.consumed);
    // Guarded: a node that announced the bucket but shows no demand yet (a new bucket on it)
    // is counted as asking as much as this one.
    let announced = if guard { announced } else { 0 };
    let total = since(now.attempts, prev.attempts).max(mine);
    // Pressure: some request was turned away in the span (a request admitted took at
    // least a token, so fewer tokens than requests means a refusal). Without one, every
    // client got what it asked for, and a share could only turn one away.
    if announced == 0 && (total <= mine || spent >= total) {
        return WHOLE;
    }
    // Rates in attempts per ms, scaled by both spans: mine x others_ms against the others'
    // x own_ms.
    let (own_ms, others_ms) = (u128::from(spans.own_ms), u128::from(spans.others_ms));
    let mine_w = u128::from(mine) * others_ms;
    let all_w = mine_w
        + u128::from(total - mine) * own_ms
        + u128::from(announced) * u128::from(mine.max(1)) * others_ms;
    u32::try_from(mine_w * u128::from(WHOLE) / all_w.max(1)).unwrap_or(WHOLE)
}

/// A share measured after a share (`last`): a third of the new one and two of the last, which
/// smooths the noise of a span's few requests (a fifth of its variance is left, a third after
/// the mean of the two) and keeps the sum over the nodes (each weighs shares that summed to
/// about the whole). A change of demand shows in full within a few syncs.
pub(super) fn smoothed(last: u32, share: u32) -> u32 {
    let mean = (u64::from(share) + 2 * u64::from(last)) / 3;
    u32::try_from(mean).unwrap_or(WHOLE)
}
