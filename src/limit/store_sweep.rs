//! Passes over every bucket of the store: the housekeeping sweep that evicts buckets whose
//! state says nothing any more, the rebase of a limit's buckets onto new parameters on
//! reload, and the per-limit statistics that the metrics show.

use super::bucket::BucketParams;
use super::store::{limit_of, split_store_key, Store};
use super::store_entry::lock;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl Store {
    /// Drops buckets that are full (their state says nothing a new bucket would not) and those
    /// whose limit no longer exists (or whose key has no bucket any more: an override made it
    /// unlimited or denied). `params_of` gives a bucket's parameters by its store key.
    /// Returns how many were dropped.
    pub fn evict_idle(&self, params_of: impl Fn(&str) -> Option<BucketParams>) -> usize {
        let now = self.clock.now_ns();
        let interval = std::time::Duration::from_nanos(
            u64::try_from(self.sync_interval_ns.load(Ordering::Relaxed)).unwrap_or(0),
        );
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut shard = lock(s);
            let before = shard.map.len();
            shard.map.retain(|k, e| {
                match params_of(k) {
                    // Unpushed changes stay until the sync loop has written them, and a shared
                    // bucket stays as long as its hash may live in Redis (the TTL from its last
                    // sync): if Redis restarts empty meanwhile, this node restores it from here.
                    Some(p) => {
                        let kept_for_redis = e.sync.as_ref().is_some_and(|sync| {
                            let ttl_ms = p.state_ttl_ms(interval);
                            let ttl_ns = i64::try_from(ttl_ms)
                                .unwrap_or(i64::MAX)
                                .saturating_mul(1_000_000);
                            now.saturating_sub(sync.synced_ns) <= ttl_ns
                        });
                        // A quiet bucket goes when the sync loop has checked it (`store_quiet`).
                        e.listed.is_some()
                            || kept_for_redis
                            || !(p.initial_tokens() == p.capacity() && e.bucket.is_full(&p, now))
                    }
                    None => false,
                }
            });
            dropped += before - shard.map.len();
        }
        dropped
    }

    /// Re-bases every bucket of `limit` whose parameters change onto the new ones, carrying
    /// its tokens over (clamped to the new capacity). `old` and `new` give a key's parameters
    /// (the key without its `LIMIT:` prefix; a key may have its own: an override); a key
    /// without a bucket under either (unlimited, denied) is left to the sweep. Returns how
    /// many buckets were re-based.
    pub fn rebase<'p>(
        &self,
        limit: &str,
        old: impl Fn(&str) -> Option<&'p BucketParams>,
        new: impl Fn(&str) -> Option<&'p BucketParams>,
    ) -> usize {
        let now = self.clock.now_ns();
        let mut rebased = 0;
        for s in self.shards.iter() {
            let mut shard = lock(s);
            for (k, e) in shard.map.iter_mut() {
                let Some((l, key)) = split_store_key(k) else {
                    continue;
                };
                if l != limit {
                    continue;
                }
                if let (Some(o), Some(n)) = (old(key), new(key)) {
                    if o != n {
                        e.bucket = e.bucket.carry_over(o, n, now);
                        rebased += 1;
                    }
                }
            }
        }
        rebased
    }

    /// Per limit: (live buckets, lowest whole tokens among them); `params_of` as for
    /// [`Store::evict_idle`].
    pub fn stats(
        &self,
        params_of: impl Fn(&str) -> Option<BucketParams>,
    ) -> HashMap<String, (u64, u64)> {
        let now = self.clock.now_ns();
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, e) in shard.map.iter() {
                let Some(p) = params_of(k) else { continue };
                let limit = limit_of(k);
                let tokens = e.bucket.peek(&p, 0, now).remaining;
                let e = out.entry(limit.to_string()).or_insert((0, u64::MAX));
                e.0 += 1;
                e.1 = e.1.min(tokens);
            }
        }
        out
    }
}
