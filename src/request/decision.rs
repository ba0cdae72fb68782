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
use crate::limit::store::{push_limit_prefix, LimitSpec, Small, Store};
use crate::request::key::{self, Fingerprint, KeyError, RequestView};
use smallvec::SmallVec;
use std::cell::Cell;

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

/// What the limits decided. Positions are into the charged list, in its order.
#[derive(Debug)]
pub enum Verdict {
    /// Admitted: every enforcing limit paid.
    Pass {
        /// One decision per charged limit; `allowed` is false only for shadow limits that
        /// could not pay (and were not charged).
        decisions: Small<Decision>,
        /// The limit to report on the response: fewest tokens left, then longest until full.
        report: Option<usize>,
        /// Shadow limits that could not pay.
        shadow_limited: Small<usize>,
        /// The fingerprint of the reported limit's key, when asked for.
        key_fp: Option<Fingerprint>,
    },
    /// A key could not be built (400).
    BadKey(KeyError),
    /// The cost exceeds the capacity of this enforcing limit: no wait would let it pass (413).
    TooCostly(usize),
    /// This enforcing limit refused (429); nothing was charged.
    Limited {
        at: usize,
        decision: Decision,
        /// Shadow limits that could not pay either.
        shadow_limited: Small<usize>,
        key_fp: Fingerprint,
    },
}

thread_local! {
    /// The store keys of one decision, back to back: reused, so building keys allocates
    /// nothing.
    static KEYS: Cell<String> = const { Cell::new(String::new()) };
}

/// Charges `cost` to every limit in `charged` or to none of them. `fingerprint`: whether an
/// admitted request's `key_fp` is wanted (the access log; a refusal always has one).
pub fn decide(store: &Store, charged: &[Charged<'_>], cost: u64, fingerprint: bool) -> Verdict {
    // The buffer is taken from the thread and put back, rather than borrowed inside
    // `KEYS.with`, so that the verdict is written where the caller wants it instead of being
    // copied out of a closure. Not reentrant in practice; if it were, the inner call would
    // find the buffer taken and start an empty one.
    let mut keys = PutBack(KEYS.take());
    decide_with(store, charged, cost, fingerprint, &mut keys.0)
}

/// The key buffer while a decision holds it; put back into [`KEYS`] when dropped (the
/// verdict is written in place meanwhile).
struct PutBack(String);

impl Drop for PutBack {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // A thread that is ending has no buffer to keep.
        let _ = KEYS.try_with(|k| k.set(buf));
    }
}

fn decide_with(
    store: &Store,
    charged: &[Charged<'_>],
    cost: u64,
    fingerprint: bool,
    buf: &mut String,
) -> Verdict {
    // Each key is written as its store key, `LIMIT:KEY`, which the store takes as is.
    buf.clear();
    let mut ends: SmallVec<[usize; 4]> = SmallVec::new();
    for c in charged {
        push_limit_prefix(buf, &c.limit.name);
        let built = match c.key {
            KeyOf::Given(k) => {
                buf.push_str(k);
                Ok(())
            }
            KeyOf::Request(sources, view) => key::build_key_into(sources, view, buf),
        };
        if let Err(e) = built {
            return Verdict::BadKey(e);
        }
        ends.push(buf.len());
    }
    if let Some(at) = charged
        .iter()
        .position(|c| !c.limit.shadow && cost > c.limit.params.capacity())
    {
        return Verdict::TooCostly(at);
    }
    let result = store.charge_prefixed(
        charged.len(),
        |i| charged[i].limit,
        |i| key_at(buf, &ends, i),
        cost,
    );
    // The key without its `LIMIT:` prefix.
    let key_fp = |i: usize| Fingerprint::of(charged[i].limit.key_of(key_at(buf, &ends, i)));
    if let Some(at) = result.rejected_by {
        return Verdict::Limited {
            at,
            decision: result.decisions[at],
            shadow_limited: result.shadow_rejected,
            key_fp: key_fp(at),
        };
    }
    let report = most_restrictive(&result.decisions);
    Verdict::Pass {
        key_fp: report.filter(|_| fingerprint).map(key_fp),
        decisions: result.decisions,
        report,
        shadow_limited: result.shadow_rejected,
    }
}

/// The store key `i` in `buf`, where the keys end at `ends`.
#[inline(always)]
fn key_at<'b>(buf: &'b str, ends: &[usize], i: usize) -> &'b str {
    &buf[if i == 0 { 0 } else { ends[i - 1] }..ends[i]]
}

/// The decision to report: fewest tokens left, then longest until full.
fn most_restrictive(decisions: &[Decision]) -> Option<usize> {
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
        }
    }

    fn store() -> Store {
        Store::new(Arc::new(ManualClock::new(1_700_000_000_000_000_000)), false)
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
                Verdict::Pass {
                    report, decisions, ..
                } => {
                    assert_eq!(report, Some(1), "narrow is the tighter");
                    assert_eq!(decisions[1].remaining, left);
                }
                v => panic!("admitted twice, got {v:?}"),
            }
        }
        match decide(&s, &charged, 1, false) {
            Verdict::Limited { at, key_fp, .. } => {
                assert_eq!(at, 1);
                assert_eq!(key_fp, Fingerprint::of("k"));
            }
            v => panic!("the third is refused, got {v:?}"),
        }
        // The refusal charged nothing: wide still has 8.
        let only_wide = &charged[..1];
        match decide(&s, only_wide, 8, false) {
            Verdict::Pass { decisions, .. } => assert_eq!(decisions[0].remaining, 0),
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
            decide(&s, &charged, 6, false),
            Verdict::TooCostly(1)
        ));
        match decide(&s, &charged, 3, false) {
            Verdict::Pass { shadow_limited, .. } => assert_eq!(shadow_limited.as_slice(), &[0]),
            v => panic!("a shadow limit never refuses, got {v:?}"),
        }
    }
}
