//! One sync round, as pure steps around its round trip: [`build`] turns the buckets that
//! changed into the commands of the round, [`apply`] merges the replies into the store and
//! says what the round saw (config drift, a twin writing this node's fields, refusals). The
//! sync loop ([`super::sync`]) sends the commands and reports what [`apply`] found; the
//! pacing simulation (`tests/pacing_simulation.rs`) drives the same two steps against a map.
//!
//! A bucket new to this node (fresh, or stale after a long silence) is read first and its
//! counters pushed on the next round, so that it continues what the store holds; the read
//! already writes its `seen_ms`, which announces its demand to the others. A known bucket has
//! this node's fields max-merged into its hash and the merged hash read back in the same
//! command.
//!
//! A quota's command writes and reads the fields of one window (see `layout`): the window the
//! node's clock is in when the round is built (or the bucket's, should a charge have started
//! a later one meanwhile). Counters of a window that has ended are not written: that window's
//! fields are gone or going, and the bucket starts the next from zero at its next change.

use super::layout;
use crate::limit::bucket::Counters;
use crate::limit::store::{split_store_key, LimitSpec, Store};
use crate::limit::store_key::StoreKey;
use crate::limit::store_quiet::Stored;
use crate::limit::store_slots::OtherSlots;
use crate::limit::store_sync::{self, DirtyBucket, Read};
use crate::limit::window::{WindowAt, WindowWaste};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// What a round needs to know of this node and its config.
pub struct Context<'a> {
    pub node_id: &'a str,
    pub key_prefix: &'a str,
    pub sync_interval: Duration,
    pub limits: &'a [LimitSpec],
    /// The node's clock, as the buckets see it (Unix ms).
    pub now_ms: u64,
    /// The other nodes the registry holds live, when it has been read: a concurrency limit
    /// counts only their slots (`None`: every node's).
    pub live_others: Option<&'a HashSet<String>>,
}

impl Context<'_> {
    fn limit(&self, name: &str) -> Option<&LimitSpec> {
        self.limits.iter().find(|l| l.name == name)
    }

    /// What the bucket of `key` under `limit` is charged as: the limit, or the key's
    /// override; `None` when the limit is gone or the key has no bucket (unlimited, denied).
    fn spec(&self, limit: &str, key: &str) -> Option<&LimitSpec> {
        self.limit(limit)?.for_key(key).bucket()
    }

    /// The same by store key.
    fn spec_at(&self, store_key: &str) -> Option<&LimitSpec> {
        let (limit, key) = split_store_key(store_key)?;
        self.spec(limit, key)
    }

    /// The window of `spec`, a quota, that the node's clock is in.
    fn window_of(&self, spec: &LimitSpec) -> Option<WindowAt> {
        let now_ns = i64::try_from(self.now_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        spec.params.window().map(|w| WindowAt::of(w, now_ns))
    }
}

/// One bucket's command: the merge script, which max-merges `fields`, extends the hash's
/// TTL to `ttl_ms` and returns the hash.
#[derive(Debug, Clone)]
pub struct Op {
    /// `bucket.fresh`: written with [`layout::fresh_script`], else [`layout::merge_script`].
    pub bucket: DirtyBucket,
    pub redis_key: String,
    pub ttl_ms: u64,
    /// Field, value pairs. A field named without a value is not written, but returned even
    /// from a hash too big to return whole (see [`layout::MAX_FIELDS`]).
    pub fields: Vec<(String, String)>,
    /// A quota: the window its fields name, and the reply is read for.
    pub window: Option<WindowAt>,
}

/// The bucket commands of one round trip, in order (the replies come in the same order).
#[derive(Debug, Default)]
pub struct Round {
    pub ops: Vec<Op>,
}

/// The commands for the buckets that changed. A bucket of a limit that no longer exists is
/// dropped (its state is evicted with the limit).
pub fn build(ctx: &Context<'_>, dirty: Vec<DirtyBucket>) -> Round {
    let mut ops = Vec::with_capacity(dirty.len());
    for bucket in dirty {
        let Some((limit, key)) = split_store_key(&bucket.store_key) else {
            continue;
        };
        let Some(spec) = ctx.spec(limit, key) else {
            continue;
        };
        let redis_key = layout::redis_key(ctx.key_prefix, limit, key);
        let p = &spec.params;
        let (bucket, window) = in_window(bucket, ctx.window_of(spec));
        // A fresh bucket sends the same fields: its counters only grow from zero, so
        // max-merging them never lowers what the store holds, and the others see its demand
        // at once; the fresh script answers the hash as it was, for the rebase, and keeps the
        // waste (the creation's assumption) out of a hash that already existed.
        let mut fields = layout::bucket_fields(
            ctx.node_id,
            &bucket.own,
            (p.capacity(), p.rate_q()),
            ctx.now_ms,
            window.as_ref(),
        );
        if bucket.credit > 0 {
            fields.push(layout::credit_field(
                ctx.node_id,
                bucket.credit,
                window.as_ref(),
            ));
        }
        ops.push(Op {
            bucket,
            redis_key,
            ttl_ms: p.state_ttl_ms(ctx.sync_interval),
            fields,
            window,
        });
    }
    Round { ops }
}

/// A quota's bucket as a round writes it, and the window its fields name: the later of the
/// node's (`now`) and the bucket's. Counters of an ended window are not written: the bucket
/// is written as its next window starts, from zero (see the module docs).
fn in_window(mut bucket: DirtyBucket, now: Option<WindowAt>) -> (DirtyBucket, Option<WindowAt>) {
    let Some(now) = now else {
        return (bucket, None);
    };
    let own = WindowWaste::unpack(bucket.own.waste).index;
    if own >= now.index {
        let at = WindowAt { index: own, ..now };
        return (bucket, Some(at));
    }
    bucket.own = Counters {
        consumed: 0,
        attempts: 0,
        waste: WindowWaste {
            index: now.index,
            tokens: 0,
        }
        .pack(),
    };
    bucket.credit = 0;
    (bucket, Some(now))
}

/// A quiet bucket to ask about (see [`crate::limit::store_quiet`]): does its hash exist?
#[derive(Debug, Clone)]
pub struct Check {
    pub store_key: StoreKey,
    pub redis_key: String,
}

/// The checks for the quiet buckets that may be forgotten. A bucket of a limit that no longer
/// exists is left out (the housekeeping sweep evicts it).
pub fn checks(ctx: &Context<'_>, due: Vec<StoreKey>) -> Vec<Check> {
    due.into_iter()
        .filter_map(|store_key| {
            let (limit, key) = split_store_key(&store_key)?;
            ctx.spec(limit, key)?;
            let redis_key = layout::redis_key(ctx.key_prefix, limit, key);
            Some(Check {
                store_key,
                redis_key,
            })
        })
        .collect()
}

/// Hands the answers to the checks to the store: `Ok` holds each bucket's hash (empty when
/// no node wrote it), in the order of `checks`; on `Err` (no answer) they are checked again
/// later. Returns how many quiet buckets were forgotten, and how many listed for a sync.
pub fn settle(
    store: &Store,
    ctx: &Context<'_>,
    checks: Vec<Check>,
    answers: Result<Vec<HashMap<String, String>>, ()>,
) -> (u64, u64) {
    let params_of = |store_key: &str| ctx.spec_at(store_key).map(|l| l.params.clone());
    let (mut forgotten, mut synced) = (0, 0);
    match answers {
        Ok(hashes) if hashes.len() == checks.len() => {
            for (c, hash) in checks.iter().zip(&hashes) {
                match store.settle_quiet(&c.store_key, &stored(ctx, &c.store_key, hash), params_of)
                {
                    Some(true) => forgotten += 1,
                    Some(false) => synced += 1,
                    None => {}
                }
            }
        }
        _ => store.relist_quiet(checks.into_iter().map(|c| c.store_key)),
    }
    (forgotten, synced)
}

/// What a checked hash holds, for [`Store::settle_quiet`].
fn stored(ctx: &Context<'_>, store_key: &str, hash: &HashMap<String, String>) -> Stored {
    if hash.contains_key(layout::TOO_BIG) {
        return Stored::Unknown;
    }
    // A quota's: the fields of the window the node is in.
    let window = ctx.spec_at(store_key).and_then(|spec| ctx.window_of(spec));
    let (nodes, _ignored) = layout::parse_hash_at(hash, window.as_ref());
    if nodes.is_empty() {
        return Stored::Absent;
    }
    let own = nodes
        .get(ctx.node_id)
        .filter(|f| f.counted)
        .map(|f| f.counters);
    let others = || nodes.iter().filter(|(n, _)| n.as_str() != ctx.node_id);
    let (others_consumed, others_waste) = store_sync::others(
        others()
            .filter(|(_, f)| f.counted)
            .map(|(_, f)| &f.counters),
    );
    Stored::State {
        own,
        others_consumed,
        others_waste,
        // Nodes that only announced the bucket (a read) count: they are using the key.
        others_seen_ms: others().filter_map(|(_, f)| f.seen_ms).max(),
    }
}

/// A bucket command's reply: the hash, or why Redis refused the command.
pub type Reply = Result<HashMap<String, String>, Refusal>;

/// A command Redis refused (WRONGTYPE, NOPERM, NOSCRIPT, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    /// Redis has lost the scripts (SCRIPT FLUSH, a failover): load them again.
    pub no_script: bool,
}

/// What a round saw, for the sync loop to report.
#[derive(Debug, Default)]
pub struct Seen {
    /// Per limit met in the round: whether another node holds other parameters for it.
    pub drift: BTreeMap<String, bool>,
    /// After a push the hash held more of this node's counters than it pushed: another live
    /// process writes this node's fields.
    pub duplicate: bool,
    /// Buckets whose command failed or got no reply: listed again for the next round.
    pub requeue: Vec<StoreKey>,
    /// The first refusal, as `BUCKET: message`.
    pub first_error: Option<String>,
    pub no_script: bool,
    /// A bucket whose hash is over [`layout::MAX_FIELDS`], and its field count.
    pub too_big: Option<(String, String)>,
    /// Buckets of `oversized` whose hash is back to a normal size.
    pub resized: Vec<String>,
}

/// Merges the replies into the store, in the order of `round`'s commands (missing replies
/// count as failures). `oversized`: buckets known to have an oversized hash.
pub fn apply(
    store: &Store,
    ctx: &Context<'_>,
    round: &Round,
    replies: impl IntoIterator<Item = Reply>,
    oversized: &HashSet<String>,
) -> Seen {
    let mut seen = Seen::default();
    let mut replies = replies.into_iter();
    for op in &round.ops {
        let d = &op.bucket;
        match replies.next() {
            Some(Ok(hash)) => {
                if let Some(n) = hash.get(layout::TOO_BIG) {
                    seen.too_big
                        .get_or_insert_with(|| (d.store_key.to_string(), n.clone()));
                } else if oversized.contains(d.store_key.as_str()) {
                    seen.resized.push(d.store_key.to_string());
                }
                absorb_hash(store, ctx, op, &hash, &mut seen);
            }
            Some(Err(refusal)) => {
                seen.no_script |= refusal.no_script;
                seen.first_error
                    .get_or_insert_with(|| format!("{}: {}", d.store_key, refusal.message));
                seen.requeue.push(d.store_key.clone());
            }
            None => seen.requeue.push(d.store_key.clone()),
        }
    }
    seen
}

/// One bucket's hash (of its op's window, a quota's): drift and twin checks, then the store
/// merges it.
fn absorb_hash(
    store: &Store,
    ctx: &Context<'_>,
    op: &Op,
    hash: &HashMap<String, String>,
    seen: &mut Seen,
) {
    let d = &op.bucket;
    let (nodes, _ignored) = layout::parse_hash_at(hash, op.window.as_ref());
    let Some(spec) = ctx.spec_at(&d.store_key) else {
        return;
    };
    let p = &spec.params;
    let differs = nodes.iter().any(|(n, f)| {
        n.as_str() != ctx.node_id
            && (f.capacity.is_some_and(|c| c != p.capacity())
                || f.rate_q.is_some_and(|r| r != p.rate_q()))
    });
    *seen.drift.entry(spec.name.clone()).or_insert(false) |= differs;
    // After a push the hash holds max(stored, ours): more than we pushed means another live
    // node writes our fields.
    let own = nodes
        .get(ctx.node_id)
        .filter(|f| f.counted)
        .map(|f| f.counters);
    if !d.fresh && own.is_some_and(|o| o.consumed > d.own.consumed || o.attempts > d.own.attempts) {
        seen.duplicate = true;
    }
    // Counters of the nodes that wrote some (not of those that only announced the bucket).
    let counters: BTreeMap<String, Counters> = nodes
        .iter()
        .filter(|(_, f)| f.counted)
        .map(|(n, f)| (n.clone(), f.counters))
        .collect();
    let seen: BTreeMap<String, u64> = nodes
        .iter()
        .filter_map(|(n, f)| Some((n.clone(), f.seen_ms?)))
        .collect();
    let window = op.window.map(|w| w.index);
    let read = Read {
        nodes: &counters,
        seen_ms: &seen,
        window,
    };
    // Read before the merge replaces the bucket's previous read.
    let refusing = if p.is_slots() {
        store.refusing(&d.store_key, &counters)
    } else {
        BTreeSet::new()
    };
    store.absorb(&d.store_key, ctx.node_id, read, spec, Some(&d.own));
    let (own_credit, others_credit) = layout::credits(&nodes, ctx.node_id);
    let others = if p.is_slots() {
        slot_holders(ctx, &nodes, &refusing)
    } else {
        SlotHolders::default()
    };
    store.absorb_credit(
        (&d.store_key, p),
        own_credit,
        others_credit.saturating_add(others.gone),
        window,
    );
    if p.is_slots() {
        store.set_slot_cap(&d.store_key, spec, others.active, &others.live);
    }
}

/// A concurrency limit's other nodes, as one read of the hash shows them.
#[derive(Default)]
struct SlotHolders {
    /// Slots still held by nodes that are not live (given back: a node that died holds none).
    gone: u64,
    /// Live nodes that use the key: they hold slots, or wrote the hash within the last three
    /// sync intervals (a node whose requests all ended at its last write is still competing
    /// for the slots).
    active: u32,
    /// The live ones.
    live: Vec<OtherSlots>,
}

/// A concurrency limit's other nodes, in one pass (see [`SlotHolders`]).
fn slot_holders(
    ctx: &Context<'_>,
    nodes: &BTreeMap<String, layout::NodeFields>,
    refusing: &BTreeSet<String>,
) -> SlotHolders {
    let recent = u64::try_from(ctx.sync_interval.as_millis().saturating_mul(3)).unwrap_or(0);
    let mut out = SlotHolders::default();
    for (n, f) in nodes.iter().filter(|(n, _)| n.as_str() != ctx.node_id) {
        let held = f.counters.consumed.saturating_sub(f.credit.unwrap_or(0));
        if ctx.live_others.is_some_and(|l| !l.contains(n.as_str())) {
            out.gone = out.gone.saturating_add(held);
            continue;
        }
        out.live.push(OtherSlots {
            held,
            refused: refusing.contains(n),
        });
        if held > 0
            || f.seen_ms
                .is_some_and(|ms| ms.saturating_add(recent) >= ctx.now_ms)
        {
            out.active = out.active.saturating_add(1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::BucketParams;
    use crate::limit::clock::ManualClock;
    use crate::limit::store::Charge;
    use std::sync::Arc;

    fn limit() -> LimitSpec {
        LimitSpec::new("l", BucketParams::new(10, 1.0, 10).expect("params"))
    }

    fn ctx(limits: &[LimitSpec]) -> Context<'_> {
        Context {
            node_id: "me",
            key_prefix: "tg",
            sync_interval: Duration::from_millis(100),
            limits,
            now_ms: 1_700_000_000_000,
            live_others: None,
        }
    }

    #[test]
    fn a_new_bucket_is_written_once_then_merged_and_a_refused_one_is_listed_again() {
        let limits = [limit()];
        let store = Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), true);
        store.set_quiet(false); // every change listed (see limit::store_quiet)
        let charge = || {
            store.charge(&[Charge {
                limit: &limits[0],
                key: "k",
                cost: 1,
            }])
        };
        assert!(charge().allowed());
        let ctx = ctx(&limits);
        let round = build(&ctx, store.take_dirty());
        assert_eq!(round.ops.len(), 1);
        assert_eq!(round.ops[0].redis_key, "tg:l:k");
        // Fresh: every field is sent (the script keeps the waste out of an existing hash).
        assert!(round.ops[0].bucket.fresh);
        assert!(round.ops[0].fields.iter().all(|(_, v)| !v.is_empty()));
        // The store held 4 tokens taken by another node (whose bucket started full, as this
        // one did): this node continues from there.
        let other: HashMap<String, String> = layout::node_fields(
            "other",
            &Counters {
                consumed: 4,
                attempts: 4,
                waste: round.ops[0].bucket.own.waste,
            },
            10,
            1_000_000_000,
            1,
        )
        .into_iter()
        .collect();
        let seen = apply(&store, &ctx, &round, [Ok(other)], &HashSet::new());
        assert!(seen.requeue.is_empty() && !seen.duplicate);
        assert_eq!(seen.drift.get("l"), Some(&false));
        assert_eq!(store.peek(&limits[0], "k", 0).remaining, 5);
        // Its counters were written as they were, and it held nothing of its own before:
        // nothing left to push.
        assert!(store.take_dirty().is_empty());
        // The next request's round is a merge, and a refusal lists the bucket again.
        assert!(charge().allowed());
        let round = build(&ctx, store.take_dirty());
        assert!(!round.ops[0].bucket.fresh);
        let fields = &round.ops[0].fields;
        assert!(fields.contains(&("me:consumed".to_string(), "2".to_string())));
        let refused = Refusal {
            message: "WRONGTYPE".into(),
            no_script: false,
        };
        let seen = apply(&store, &ctx, &round, [Err(refused)], &HashSet::new());
        assert_eq!(seen.requeue, vec![StoreKey::new("l", "k")]);
        assert_eq!(seen.first_error.as_deref(), Some("l:k: WRONGTYPE"));
    }

    /// A quota's round writes and reads the window the node is in: fields of another window
    /// in the reply are not counted, and counters of a window that has ended are not written.
    #[test]
    fn a_quota_round_names_the_window_the_node_is_in_and_reads_it_alone() {
        use crate::limit::window::Window;
        // 2026-11-29T08:41:50Z: 10 s before the minute ends.
        let t0: i64 = 1_795_941_710 * 1_000_000_000;
        let clock = Arc::new(ManualClock::new(t0));
        let limits = [LimitSpec::new(
            "q",
            BucketParams::quota(10, Window::Minute).expect("params"),
        )];
        let store = Store::new(clock.clone(), true);
        store.set_quiet(false);
        let charge = |n: usize| {
            (0..n)
                .filter(|_| {
                    store
                        .charge(&[Charge {
                            limit: &limits[0],
                            key: "k",
                            cost: 1,
                        }])
                        .allowed()
                })
                .count()
        };
        let ctx_at = |ns: i64| Context {
            now_ms: (ns / 1_000_000) as u64,
            ..ctx(&limits)
        };
        // The round of `ctx`, whose one op names `window` and writes `consumed` there.
        let round_in = |ctx: &Context<'_>, window: &str, consumed: &str| {
            let round = build(ctx, store.take_dirty());
            let op = &round.ops[0];
            assert_eq!(op.window.map(|w| w.label()).as_deref(), Some(window));
            let field = (format!("me:consumed@{window}"), consumed.to_string());
            assert!(op.fields.contains(&field), "{field:?}");
            round
        };
        assert_eq!(charge(3), 3);
        let ctx = ctx_at(t0);
        let round = round_in(&ctx, "2026-11-29T08:41", "3");
        let op = &round.ops[0];
        // Another node spent 4 in this minute, and 50 in the one before (its fields not yet
        // removed): only the 4 count.
        let mut reply: HashMap<String, String> = layout::bucket_fields(
            "other",
            &Counters {
                consumed: 4,
                attempts: 4,
                waste: op.bucket.own.waste,
            },
            (10, limits[0].params.rate_q()),
            1,
            op.window.as_ref(),
        )
        .into_iter()
        .collect();
        reply.insert("other:consumed@2026-11-29T08:40".into(), "50".into());
        let seen = apply(&store, &ctx, &round, [Ok(reply)], &HashSet::new());
        assert!(seen.requeue.is_empty());
        assert_eq!(store.peek(&limits[0], "k", 0).remaining, 3);
        // Charged in the last second of the minute, pushed in the next: the new minute's
        // fields, from zero (the ended minute's counters are not written).
        clock.advance_ns(9_500_000_000);
        assert_eq!(charge(1), 1);
        let t1 = t0 + 10_000_000_000;
        clock.set_ns(t1);
        let ctx = ctx_at(t1);
        let round = round_in(&ctx, "2026-11-29T08:42", "0");
        let seen = apply(&store, &ctx, &round, [Ok(HashMap::new())], &HashSet::new());
        assert!(seen.requeue.is_empty());
        assert_eq!(
            store.peek(&limits[0], "k", 0).remaining,
            10,
            "no debt carried"
        );
        assert!(store.take_dirty().is_empty(), "written as it is");
    }

    #[test]
    fn more_of_our_own_counters_than_we_pushed_means_a_twin() {
        let limits = [limit()];
        let store = Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), true);
        let bucket = DirtyBucket {
            store_key: StoreKey::new("l", "k"),
            own: Counters {
                consumed: 1,
                attempts: 1,
                waste: 0,
            },
            credit: 0,
            fresh: false,
        };
        let ctx = ctx(&limits);
        let round = build(&ctx, vec![bucket]);
        let twin = Counters {
            consumed: 3,
            attempts: 3,
            waste: 0,
        };
        let hash: HashMap<String, String> = layout::node_fields("me", &twin, 10, 1, 1)
            .into_iter()
            .collect();
        let seen = apply(&store, &ctx, &round, [Ok(hash)], &HashSet::new());
        assert!(seen.duplicate);
        assert_eq!(seen.drift.get("l"), Some(&false), "own fields are no drift");
    }
}
