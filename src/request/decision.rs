//! The decision: one request (or one `/consume` call) charged to its limits, all or none.
//!
//! [`decide`] is the one place where a request meets the store. The proxy hooks call it for
//! every routed request, the admin API's `/consume` for a given key, and the hot-path example
//! and the benchmarks for their measurements, so what they measure is what serves. It builds
//! each limit's store key into a reused per-thread buffer (no allocation per request), refuses
//! a cost that no wait could ever pay (413), charges the store, and picks the limit whose state
//! the response reports. What to answer, and which metrics to count, is the caller's business.

use crate::config::KeySource;
use crate::limit::bucket::Decision;
use crate::limit::overrides::{ForKey, Own};
use crate::limit::store::{
    push_limit_prefix, push_short, push_within, ChargeResult, LimitSpec, Small, Store, EXEMPT,
};
use crate::limit::store_plans::Stop;
use crate::request::key::{self, Fingerprint, KeyError, RequestView};
use smallvec::SmallVec;
use std::cell::Cell;
use std::mem::ManuallyDrop;

/// One limit to charge, and where its key comes from.
#[derive(Clone, Copy)]
pub struct Charged<'a> {
    pub limit: &'a LimitSpec,
    pub key: KeyOf<'a>,
}

/// Where a limit's key comes from.
#[derive(Clone, Copy)]
pub enum KeyOf<'a> {
    /// Built from this request, from these sources.
    Request(&'a [KeySource], &'a RequestView<'a>),
    /// Given as is (`/consume`: the key as the limit would build it).
    Given(&'a str),
}

/// What the limits decided. Positions are into the charged list, in its order. Each limit's
/// decision, and the shadow limits that could not pay, are in the [`ChargeResult`] the
/// decision was given (written there in place: carried in the verdict, they were copied
/// twice on their way to the caller).
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Admitted: every enforcing limit paid. In the [`ChargeResult`]: one decision per
    /// charged limit, whose `allowed` is false only for shadow limits that could not pay
    /// (and were not charged); a key that is `unlimited` under a limit (an override) has
    /// [`UNLIMITED`] there.
    Pass {
        /// The limit to report on the response: fewest tokens left, then longest until full
        /// (never an unlimited key's).
        report: Option<usize>,
        /// The reported limit's bucket for this key, when the key has its own (an
        /// override): the `RateLimit-Policy` to send instead of the limit's.
        own: Option<&'a Own>,
        /// The fingerprint of the reported limit's key, when asked for.
        key_fp: Option<Fingerprint>,
    },
    /// A key could not be built (400).
    BadKey(KeyError),
    /// The cost exceeds the capacity of this enforcing limit (for this key): no wait would
    /// let it pass (413).
    TooCostly { at: usize, capacity: u64 },
    /// The key is denied by this limit (an override, `"deny"`: 403); nothing was charged.
    Denied { at: usize, key_fp: Fingerprint },
    /// This enforcing limit refused (429); nothing was charged. Its decision is at `at` in
    /// the [`ChargeResult`], whose shadow limits could not pay either.
    Limited {
        at: usize,
        /// The limit's bucket for this key, when the key has its own (an override).
        own: Option<&'a Own>,
        key_fp: Fingerprint,
    },
}

thread_local! {
    /// The store keys of one decision, back to back: reused, so building keys allocates
    /// nothing.
    ///
    /// Kept without drop glue (`ManuallyDrop`): a thread-local with a destructor checks on
    /// every access that the destructor is registered. A thread that ends leaves its buffer
    /// (a few hundred bytes, once per thread) to the process's exit.
    static KEYS: Cell<ManuallyDrop<String>> = const { Cell::new(ManuallyDrop::new(String::new())) };
}

/// Charges `cost` to every limit in `charged` or to none of them. `fingerprint`: whether an
/// admitted request's `key_fp` is wanted (the access log; a refusal always has one). The
/// decisions go into `out` (empty: `ChargeResult::default()`), as far as the charge went
/// (none for a key that could not be built, a denied key or a cost no wait would pay).
pub fn decide<'a>(
    store: &Store,
    charged: &[Charged<'a>],
    cost: u64,
    fingerprint: bool,
    out: &mut ChargeResult,
) -> Verdict<'a> {
    // The buffer is taken from the thread and put back, rather than borrowed inside
    // `KEYS.with`, so that the verdict is written where the caller wants it instead of being
    // copied out of a closure. Not reentrant in practice; if it were, the inner call would
    // find the buffer taken and start an empty one.
    let mut keys = PutBack(ManuallyDrop::into_inner(KEYS.take()));
    let mut ends = SmallVec::new();
    decide_with(
        store,
        charged,
        |_| cost,
        fingerprint,
        (&mut keys.0, &mut ends),
        out,
    )
}

/// [`decide`] with a cost per limit (`cost(i)` on `charged[i]`), for routes that keep what
/// an admitted request was charged, to settle or give back when its answer comes
/// (`refund_statuses`, response costs, concurrency limits): the store keys are written into
/// `keys` (the caller keeps it), and an admitted request calls `paid(i, range in keys)` for
/// each limit it was charged to, in order (not for an unlimited key, nor for a shadow limit
/// that could not pay).
pub fn decide_keeping<'a>(
    store: &Store,
    charged: &[Charged<'a>],
    cost: impl Fn(usize) -> u64 + Copy,
    fingerprint: bool,
    (keys, out): (&mut String, &mut ChargeResult),
    mut paid: impl FnMut(usize, std::ops::Range<usize>),
) -> Verdict<'a> {
    let mut ends = SmallVec::new();
    let verdict = decide_with(store, charged, cost, fingerprint, (keys, &mut ends), out);
    if let Verdict::Pass { .. } = &verdict {
        for (i, d) in out.decisions.iter().enumerate() {
            if d.allowed && *d != UNLIMITED {
                paid(i, key_range(&ends, i));
            }
        }
    }
    verdict
}

/// The key buffer while a decision holds it; put back into [`KEYS`] when dropped (the
/// verdict is written in place meanwhile).
struct PutBack(String);

impl Drop for PutBack {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // A thread that is ending has no buffer to keep.
        let _ = KEYS.try_with(|k| k.set(ManuallyDrop::new(buf)));
    }
}

/// Where a decision writes its store keys, back to back, and where each ends.
type KeyBuf<'b> = (&'b mut String, &'b mut SmallVec<[usize; 4]>);

/// `cost(i)`: the cost on `charged[i]`.
#[inline(always)]
fn decide_with<'a>(
    store: &Store,
    charged: &[Charged<'a>],
    cost: impl Fn(usize) -> u64 + Copy,
    fingerprint: bool,
    (buf, ends): KeyBuf<'_>,
    result: &mut ChargeResult,
) -> Verdict<'a> {
    debug_assert!(result.decisions.is_empty() && result.rejected_by.is_none());
    // Each key is written as its store key, `LIMIT:KEY`, which the store takes as is.
    buf.clear();
    ends.clear();
    let mut overridden = false;
    for (i, c) in charged.iter().enumerate() {
        push_limit_prefix(buf, &c.limit.name);
        let built = match c.key {
            KeyOf::Given(k) => {
                push_short(buf, k);
                Ok(())
            }
            KeyOf::Request(sources, view) => match same_key_as_earlier(charged, i, sources) {
                // Built from the same sources as an earlier limit's key (a plan's per-second
                // bucket and its daily quota, both on the API key): copied, not built again.
                Some(j) => {
                    // That key without its `LIMIT:` prefix.
                    let earlier = key_range(ends, j);
                    let earlier_key = earlier.start + charged[j].limit.name.len() + 1..earlier.end;
                    // A whole `str` slice of `buf`: between key boundaries, which are char
                    // boundaries.
                    push_within(buf, earlier_key);
                    Ok(())
                }
                None => key::build_key_into(sources, view, buf),
            },
        };
        if let Err(e) = built {
            return Verdict::BadKey(e);
        }
        ends.push(buf.len());
        overridden |= !c.limit.overrides.is_empty();
    }
    if overridden {
        return decide_overridden(store, charged, &cost, fingerprint, (buf, ends), result);
    }
    // Every capacity is at least 1 (see `BucketParams`): a request's usual cost of 1 is
    // never too costly, and the limits' capacities are not read for it.
    let too_costly = |(i, c): (usize, &Charged<'_>)| {
        let cost = cost(i);
        cost > 1 && !c.limit.shadow && cost > c.limit.params.capacity()
    };
    if let Some(at) = charged.iter().enumerate().position(too_costly) {
        let capacity = charged[at].limit.params.capacity();
        return Verdict::TooCostly { at, capacity };
    }
    store.charge_prefixed(
        charged.len(),
        |i| Some(charged[i].limit),
        |i| key_at(buf, ends, i),
        cost,
        result,
    );
    // The key without its `LIMIT:` prefix.
    let key_fp = |i: usize| Fingerprint::of(charged[i].limit.key_of(key_at(buf, ends, i)));
    if let Some(at) = result.rejected_by {
        return Verdict::Limited {
            at,
            own: None,
            key_fp: key_fp(at),
        };
    }
    let report = most_restrictive(&result.decisions);
    Verdict::Pass {
        key_fp: report.filter(|_| fingerprint).map(key_fp),
        report,
        own: None,
    }
}

/// The decision of a request some of whose limits have overrides: each key's override is
/// found through its bucket or looked up once (see [`crate::limit::store_plans`]), a denied
/// key is refused before anything is charged, an unlimited one is left out of the charge
/// ([`UNLIMITED`]), and the rest are charged with their own parameters. Out of line: requests
/// on limits without overrides never come here.
#[inline(never)]
fn decide_overridden<'a>(
    store: &Store,
    charged: &[Charged<'a>],
    cost: &dyn Fn(usize) -> u64,
    fingerprint: bool,
    (buf, ends): (&str, &[usize]),
    result: &mut ChargeResult,
) -> Verdict<'a> {
    let key = |i: usize| charged[i].limit.key_of(key_at(buf, ends, i));
    // What each key is subject to: its limit, its own bucket (an override) or nothing (an
    // unlimited key: not charged); found through its bucket, or looked up once.
    let mut subject: Small<ForKey<'a>> = SmallVec::new();
    let stop = store.charge_planned(
        charged.len(),
        |i| charged[i].limit,
        |i| key_at(buf, ends, i),
        cost,
        &mut subject,
        result,
    );
    match stop {
        None => {}
        Some(Stop::Denied { at }) => {
            return Verdict::Denied {
                at,
                key_fp: Fingerprint::of(key(at)),
            }
        }
        Some(Stop::TooCostly { at, capacity }) => return Verdict::TooCostly { at, capacity },
    }
    if let Some(at) = result.rejected_by {
        return Verdict::Limited {
            at,
            own: subject[at].own(),
            key_fp: Fingerprint::of(key(at)),
        };
    }
    // An unlimited key is never the one to report.
    let report = most_restrictive(&result.decisions).filter(|&i| subject[i].bucket().is_some());
    Verdict::Pass {
        key_fp: report
            .filter(|_| fingerprint)
            .map(|i| Fingerprint::of(key(i))),
        report,
        own: report.and_then(|i| subject[i].own()),
    }
}

/// The first limit before `i` whose key is built from the same sources as limit `i`'s.
#[inline(always)]
fn same_key_as_earlier(charged: &[Charged<'_>], i: usize, sources: &[KeySource]) -> Option<usize> {
    // The kinds of the first sources are compared first: inline, and enough to tell the
    // usual pair apart (an API key and the client IP).
    let kind = |s: &[KeySource]| s.first().map(std::mem::discriminant);
    (0..i).find(|&j| {
        matches!(charged[j].key, KeyOf::Request(earlier, _)
            if std::ptr::eq(earlier, sources)
                || (earlier.len() == sources.len() && kind(earlier) == kind(sources) && earlier == sources))
    })
}

/// The decision reported for a key that is `unlimited` under a limit: allowed, nothing taken.
pub const UNLIMITED: Decision = EXEMPT;

/// The store key `i` in `buf`, where the keys end at `ends`.
#[inline(always)]
fn key_at<'b>(buf: &'b str, ends: &[usize], i: usize) -> &'b str {
    let range = key_range(ends, i);
    debug_assert!(buf.is_char_boundary(range.start) && buf.is_char_boundary(range.end));
    // SAFETY: `ends` holds the buffer's length after each key was written (whole `str`s
    // pushed), so every range between them is in bounds and on char boundaries.
    unsafe { buf.get_unchecked(range) }
}

/// Where store key `i` is in a buffer whose keys end at `ends`.
#[inline(always)]
fn key_range(ends: &[usize], i: usize) -> std::ops::Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] };
    start..ends[i]
}

/// The decision to report: fewest tokens left, then longest until full.
pub fn most_restrictive(decisions: &[Decision]) -> Option<usize> {
    let mut reported: Option<(usize, &Decision)> = None;
    for (i, d) in decisions.iter().enumerate() {
        let tighter = reported.is_none_or(|(_, r)| {
            (d.remaining, std::cmp::Reverse(d.full_in_ns))
                < (r.remaining, std::cmp::Reverse(r.full_in_ns))
        });
        if tighter {
            reported = Some((i, d));
        }
    }
    reported.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::bucket::BucketParams;
    use crate::limit::clock::ManualClock;
    use std::sync::Arc;

    fn spec(name: &str, capacity: u64, shadow: bool) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            params: BucketParams::new(capacity, 1.0, capacity).expect("params"),
            shadow,
            burst_guard: false,
            overrides: Default::default(),
        }
    }

    fn store() -> Store {
        Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), false)
    }

    /// [`super::decide`], with the decisions it wrote.
    fn decide<'a>(
        s: &Store,
        charged: &[Charged<'a>],
        cost: u64,
        fingerprint: bool,
    ) -> (Verdict<'a>, ChargeResult) {
        let mut r = ChargeResult::default();
        (super::decide(s, charged, cost, fingerprint, &mut r), r)
    }

    /// [`super::decide_keeping`], with the decisions it wrote; the charged limits' positions
    /// and key ranges into `kept`.
    fn decide_keeping<'a>(
        s: &Store,
        charged: &[Charged<'a>],
        costs: &[u64],
        (keys, kept): (&mut String, &mut Vec<(usize, std::ops::Range<usize>)>),
    ) -> (Verdict<'a>, ChargeResult) {
        let mut r = ChargeResult::default();
        let v = super::decide_keeping(
            s,
            charged,
            |i| costs[i],
            false,
            (keys, &mut r),
            |i, k| kept.push((i, k)),
        );
        (v, r)
    }

    #[test]
    fn reports_the_tightest_limit_and_refuses_all_or_nothing() {
        let s = store();
        let (wide, narrow) = (spec("wide", 10, false), spec("narrow", 2, false));
        let charged = [&wide, &narrow].map(|limit| Charged {
            limit,
            key: KeyOf::Given("k"),
        });
        for left in [1, 0] {
            match decide(&s, &charged, 1, true) {
                (Verdict::Pass { report, .. }, r) => {
                    assert_eq!(report, Some(1), "narrow is the tighter");
                    assert_eq!(r.decisions[1].remaining, left);
                }
                v => panic!("admitted twice, got {v:?}"),
            }
        }
        match decide(&s, &charged, 1, false) {
            (Verdict::Limited { at, key_fp, .. }, r) => {
                assert_eq!(at, 1);
                assert_eq!(key_fp, Fingerprint::of("k"));
                assert!(!r.decisions[1].allowed && r.decisions[1].remaining == 0);
            }
            v => panic!("the third is refused, got {v:?}"),
        }
        // The refusal charged nothing: wide still has 8.
        let only_wide = &charged[..1];
        match decide(&s, only_wide, 8, false) {
            (Verdict::Pass { .. }, r) => assert_eq!(r.decisions[0].remaining, 0),
            v => panic!("8 tokens left on wide, got {v:?}"),
        }
    }

    #[test]
    fn a_cost_over_an_enforcing_capacity_is_too_costly_but_not_over_a_shadow_one() {
        let s = store();
        let (shadow, real) = (spec("shadow", 2, true), spec("real", 5, false));
        let charged = [&shadow, &real].map(|limit| Charged {
            limit,
            key: KeyOf::Given("k"),
        });
        assert!(matches!(
            decide(&s, &charged, 6, false).0,
            Verdict::TooCostly { at: 1, capacity: 5 }
        ));
        match decide(&s, &charged, 3, false) {
            (Verdict::Pass { .. }, r) => assert_eq!(r.shadow_rejected.as_slice(), &[0]),
            v => panic!("a shadow limit never refuses, got {v:?}"),
        }
    }

    #[test]
    fn a_key_built_from_the_same_sources_as_an_earlier_one_is_the_same_key() {
        use http::{HeaderMap, HeaderName, HeaderValue};
        let s = store();
        let api = vec![KeySource::Header(HeaderName::from_static("x-api-key"))];
        let (ip, other_header) = (
            vec![KeySource::ClientIp],
            vec![KeySource::Header(HeaderName::from_static("x-user"))],
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        h.insert("x-user", HeaderValue::from_static("u7"));
        let view = RequestView {
            method: "GET",
            path: "/",
            query: None,
            headers: &h,
            client_ip: "10.0.0.9".parse().expect("ip"),
            client_ip_text: None,
            route: "r",
        };
        let specs = ["second", "day", "user", "ip", "again"].map(|n| spec(n, 10, false));
        let sources = [&api, &api.clone(), &other_header, &ip, &api];
        let charged: Vec<Charged<'_>> = specs
            .iter()
            .zip(sources)
            .map(|(limit, src)| Charged {
                limit,
                key: KeyOf::Request(src, &view),
            })
            .collect();
        let (mut keys, mut kept) = (String::new(), Vec::new());
        assert!(matches!(
            decide_keeping(&s, &charged, &[1; 5], (&mut keys, &mut kept)).0,
            Verdict::Pass { .. }
        ));
        let kept: Vec<(usize, &str)> = kept.iter().map(|(i, r)| (*i, &keys[r.clone()])).collect();
        assert_eq!(
            kept,
            [
                (0, "second:k1"),
                (1, "day:k1"),
                (2, "user:u7"),
                (3, "ip:10.0.0.9"),
                (4, "again:k1")
            ]
        );
    }

    #[test]
    fn each_limit_is_charged_its_own_cost_when_the_costs_differ() {
        let s = store();
        let (a, b) = (spec("a", 10, false), spec("b", 10, false));
        let charged = [&a, &b].map(|limit| Charged {
            limit,
            key: KeyOf::Given("k"),
        });
        let (mut keys, mut kept) = (String::new(), Vec::new());
        let mut decide =
            |costs: &[u64]| decide_keeping(&s, &charged, costs, (&mut keys, &mut kept));
        for left in [(9, 6), (8, 2)] {
            match decide(&[1, 4]) {
                (Verdict::Pass { .. }, r) => {
                    assert_eq!((r.decisions[0].remaining, r.decisions[1].remaining), left)
                }
                v => panic!("admitted, got {v:?}"),
            }
        }
        // b has 2 left, so a cost of 4 there is refused, and a keeps its 8.
        assert!(matches!(decide(&[1, 4]).0, Verdict::Limited { at: 1, .. }));
        assert!(matches!(
            decide(&[1, 11]).0,
            Verdict::TooCostly {
                at: 1,
                capacity: 10
            }
        ));
        match decide(&[8, 0]) {
            (Verdict::Pass { .. }, r) => assert_eq!(r.decisions[0].remaining, 0),
            v => panic!("a still had 8, got {v:?}"),
        }
        assert_eq!(kept.len(), 6, "two keys kept per admitted request");
    }

    /// `narrow` (capacity 2) with overrides: "pro" gets 5, "batch" is unlimited, "leaked"
    /// denied.
    fn with_overrides() -> LimitSpec {
        use crate::limit::overrides::{Override, Overrides, Own};
        let mut l = spec("narrow", 2, false);
        let pro = l.with_params(BucketParams::new(5, 1.0, 5).expect("params"));
        l.overrides = Overrides::new([
            ("pro".to_string(), Override::Bucket(Box::new(Own::new(pro)))),
            ("batch".to_string(), Override::Unlimited),
            ("leaked".to_string(), Override::Deny),
        ]);
        l
    }

    fn admitted(s: &Store, charged: &[Charged<'_>], n: usize) -> usize {
        (0..n)
            .filter(|_| matches!(decide(s, charged, 1, false).0, Verdict::Pass { .. }))
            .count()
    }

    #[test]
    fn an_overridden_key_has_its_own_capacity_and_reports_it() {
        let s = store();
        let l = with_overrides();
        let on = |k| {
            [Charged {
                limit: &l,
                key: KeyOf::Given(k),
            }]
        };
        assert_eq!(admitted(&s, &on("plain"), 4), 2);
        match decide(&s, &on("pro"), 1, false) {
            (Verdict::Pass { own, report, .. }, r) => {
                assert_eq!(own.map(|o| o.spec.params.capacity()), Some(5));
                assert_eq!(report, Some(0));
                assert_eq!(r.decisions[0].remaining, 4);
            }
            v => panic!("pro's first request, got {v:?}"),
        }
        assert_eq!(admitted(&s, &on("pro"), 6), 4);
        match decide(&s, &on("pro"), 1, false) {
            (Verdict::Limited { own, .. }, _) => {
                assert_eq!(own.map(|o| o.spec.params.capacity()), Some(5))
            }
            v => panic!("pro's bucket is empty, got {v:?}"),
        }
        match decide(&s, &on("plain"), 1, false) {
            (Verdict::Limited { own, .. }, _) => assert!(own.is_none()),
            v => panic!("plain's bucket is empty, got {v:?}"),
        }
        // A cost over the key's own capacity, not the limit's, is too costly.
        assert!(matches!(
            decide(&s, &on("pro"), 6, false).0,
            Verdict::TooCostly { at: 0, capacity: 5 }
        ));
    }

    #[test]
    fn an_unlimited_key_is_not_charged_and_a_denied_one_charges_nothing() {
        let s = store();
        let l = with_overrides();
        let wide = spec("wide", 3, false);
        let both = |k| {
            [
                Charged {
                    limit: &wide,
                    key: KeyOf::Given(k),
                },
                Charged {
                    limit: &l,
                    key: KeyOf::Given(k),
                },
            ]
        };
        // batch: unlimited on narrow, so only wide's 3 tokens count, and wide is reported.
        match decide(&s, &both("batch"), 1, false) {
            (Verdict::Pass { report, own, .. }, r) => {
                assert_eq!(report, Some(0));
                assert!(own.is_none());
                assert_eq!(r.decisions[1], UNLIMITED);
            }
            v => panic!("batch is unlimited on narrow, got {v:?}"),
        }
        assert_eq!(admitted(&s, &both("batch"), 5), 2);
        match decide(&s, &both("batch"), 1, false) {
            (Verdict::Limited { at, .. }, _) => assert_eq!(at, 0, "wide refuses"),
            v => panic!("wide is empty, got {v:?}"),
        }
        // Alone on an unlimited key: admitted every time, nothing to report.
        let alone = [Charged {
            limit: &l,
            key: KeyOf::Given("batch"),
        }];
        assert_eq!(admitted(&s, &alone, 100), 100);
        assert!(matches!(
            decide(&s, &alone, 1, false).0,
            Verdict::Pass { report: None, .. }
        ));
        // leaked: denied by narrow before anything is charged, so wide keeps its 3 tokens.
        for _ in 0..5 {
            assert!(matches!(
                decide(&s, &both("leaked"), 1, false).0,
                Verdict::Denied { at: 1, .. }
            ));
        }
        let wide_alone = [Charged {
            limit: &wide,
            key: KeyOf::Given("leaked"),
        }];
        assert_eq!(admitted(&s, &wide_alone, 5), 3);
    }
}
