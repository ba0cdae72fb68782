//! The buckets an operator looks at in an incident (`GET /buckets`): those of a limit refused
//! most often in the last minute, or those with the fewest tokens.
//!
//! Each bucket counts its refusals in the current and the previous minute (in its entry's
//! padding: no memory per bucket, no map of its own, nothing on the admitted path); the last
//! minute's count is the sliding-window estimate from the two. A query walks the limit's
//! buckets shard by shard, keeping the best `n` in a bounded heap, so it costs one pass over
//! the store and `n` entries of memory, whatever the number of buckets. No metric label ever
//! carries a key: keys are only in this answer, as the caller chooses to show them.

use super::bucket::BucketParams;
use super::store::{split_store_key, Store};
use super::store_entry::lock;
use std::collections::BinaryHeap;

/// How to rank buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    /// Most refusals in the last minute first, then fewest tokens (buckets not refused in it
    /// are left out).
    Refused,
    /// Fewest whole tokens first (then most refused).
    Tokens,
}

/// One bucket of the answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopBucket {
    /// The key, without the `LIMIT:` prefix.
    pub key: String,
    /// Whole tokens now (0 when empty or in debt).
    pub tokens: u64,
    pub capacity: u64,
    /// Refusals in the last minute.
    pub refused_last_minute: u64,
}

impl Store {
    /// The `n` buckets of `limit` first by `by`; ties go to the smaller key. `params_of`
    /// gives a bucket's parameters by its key (a key may have its own: an override); a key
    /// without (gone, unlimited, denied) is left out.
    pub fn top<'p>(
        &self,
        limit: &str,
        n: usize,
        by: TopBy,
        params_of: impl Fn(&str) -> Option<&'p BucketParams>,
    ) -> Vec<TopBucket> {
        let now = self.clock.now_ns();
        // A max-heap of the worst kept so far (by rank, then key), popped when over `n`.
        let mut kept: BinaryHeap<(u64, u64, String, TopBucket)> = BinaryHeap::new();
        if n == 0 {
            return Vec::new();
        }
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, e) in shard.map.iter() {
                let Some((l, key)) = split_store_key(k) else {
                    continue;
                };
                if l != limit {
                    continue;
                }
                let Some(p) = params_of(key) else { continue };
                let refused = e.refused.last_minute(now);
                if by == TopBy::Refused && refused == 0 {
                    continue;
                }
                let tokens = e.bucket.peek(p, 0, now).remaining;
                // Smaller ranks first: most refusals, then fewest tokens; or fewest tokens,
                // then most refusals.
                let rank = match by {
                    TopBy::Refused => (u64::MAX - refused, tokens),
                    TopBy::Tokens => (tokens, u64::MAX - refused),
                };
                let worse_than_kept = kept.len() == n
                    && kept.peek().is_some_and(|(r0, r1, kk, _)| {
                        (rank.0, rank.1, key) >= (*r0, *r1, kk.as_str())
                    });
                if worse_than_kept {
                    continue;
                }
                let b = TopBucket {
                    key: key.to_string(),
                    tokens,
                    capacity: p.capacity(),
                    refused_last_minute: refused,
                };
                kept.push((rank.0, rank.1, key.to_string(), b));
                if kept.len() > n {
                    kept.pop();
                }
            }
        }
        let mut out: Vec<_> = kept.into_iter().collect();
        out.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        out.into_iter().map(|(_, _, _, b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::clock::ManualClock;
    use crate::limit::store::{Charge, LimitSpec};
    use std::sync::Arc;

    const T0: i64 = 1_700_000_080_000_000_000; // 40 s into a minute
    const SEC: i64 = 1_000_000_000;

    fn limit() -> LimitSpec {
        LimitSpec::new("l", BucketParams::new(3, 0.001, 3).expect("params"))
    }

    fn hit(store: &Store, l: &LimitSpec, key: &str, n: usize) {
        for _ in 0..n {
            store.charge(&[Charge {
                limit: l,
                key,
                cost: 1,
            }]);
        }
    }

    #[test]
    fn ranks_by_refusals_in_the_last_minute_and_by_tokens() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::new(clock.clone(), false);
        let l = limit();
        let params = |_: &str| Some(&l.params);
        // a: 3 admitted, 7 refused; b: 3 + 2; c: 2 admitted; d: 1 admitted.
        hit(&store, &l, "a", 10);
        hit(&store, &l, "b", 5);
        hit(&store, &l, "c", 2);
        hit(&store, &l, "d", 1);
        let keys = |v: Vec<TopBucket>| v.into_iter().map(|b| b.key).collect::<Vec<_>>();
        let top = store.top("l", 10, TopBy::Refused, params);
        assert_eq!(keys(top.clone()), ["a", "b"], "never refused: left out");
        assert_eq!(
            (top[0].refused_last_minute, top[0].tokens, top[0].capacity),
            (7, 0, 3)
        );
        assert_eq!(keys(store.top("l", 1, TopBy::Refused, params)), ["a"]);
        // Ties (a and b hold 0 tokens) go to the smaller key.
        assert_eq!(
            keys(store.top("l", 3, TopBy::Tokens, params)),
            ["a", "b", "c"]
        );
        assert!(store.top("other", 5, TopBy::Tokens, params).is_empty());
        assert!(store.top("l", 0, TopBy::Tokens, params).is_empty());
        // 30 s later (10 s into the next minute): b is refused 4 more times; a's 7 count
        // for the 50 s of their minute still in the window, about 5.8.
        clock.advance_ns(30 * SEC);
        hit(&store, &l, "b", 4);
        let top = store.top("l", 10, TopBy::Refused, params);
        assert_eq!(keys(top.clone()), ["a", "b"]);
        assert_eq!(
            (top[0].refused_last_minute, top[1].refused_last_minute),
            (6, 6)
        );
        // Two minutes on, nothing is recent.
        clock.advance_ns(120 * SEC);
        assert!(store.top("l", 10, TopBy::Refused, params).is_empty());
    }
}
