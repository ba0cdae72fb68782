//! Passes over every bucket of the store: the housekeeping sweep that evicts buckets whose
//! state says nothing any more, the rebase of a limit's buckets onto new parameters on
//! reload, and the per-limit statistics that the metrics show.

use super::bucket::BucketParams;
use super::store::{limit_of, Store};
use super::store_entry::lock;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl Store {
    /// Drops buckets that are full (their state says nothing a new bucket would not) and those
    /// whose limit no longer exists. Returns how many were dropped.
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
                let limit = limit_of(k);
                match params_of(limit) {
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

    /// Re-bases every bucket of `limit` onto new parameters, carrying its tokens over.
    pub fn rebase(&self, limit: &str, old: &BucketParams, new: &BucketParams) {
        let now = self.clock.now_ns();
        for s in self.shards.iter() {
            let mut shard = lock(s);
            for (k, e) in shard.map.iter_mut() {
                if limit_of(k) == limit {
                    e.bucket = e.bucket.carry_over(old, new, now);
                }
            }
        }
    }

    /// Per limit: (live buckets, lowest whole tokens among them).
    pub fn stats(
        &self,
        params_of: impl Fn(&str) -> Option<BucketParams>,
    ) -> HashMap<String, (u64, u64)> {
        let now = self.clock.now_ns();
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for s in self.shards.iter() {
            let shard = lock(s);
            for (k, e) in shard.map.iter() {
                let limit = limit_of(k);
                let Some(p) = params_of(limit) else { continue };
                let tokens = e.bucket.peek(&p, 0, now).remaining;
                let e = out.entry(limit.to_string()).or_insert((0, u64::MAX));
                e.0 += 1;
                e.1 = e.1.min(tokens);
            }
        }
        out
    }
}
