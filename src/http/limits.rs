//! A proxied request charged to its route's limits: [`decide`] calls the one decision
//! function ([`decision::decide`]), counts what the verdict says in the metrics, and notes what
//! the response and the access log report. What the proxy must answer itself comes back as a
//! [`Refused`].

use crate::app::node::{Node, Runtime};
use crate::config::{LimitId, Route, RouteId};
use crate::http::headers;
use crate::limit::bucket::{BucketParams, Decision};
use crate::limit::overrides::Own;
use crate::limit::store::{ChargeResult, Small};
use crate::request::decision::{self, Charged, KeyOf, Verdict, UNLIMITED};
use crate::request::key::{self, Fingerprint, KeyError, RequestView};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use smallvec::SmallVec;
use std::sync::Arc;

/// What the limits report on the response and in the access log.
#[derive(Default)]
pub(super) struct Reported {
    /// What the `RateLimit-Policy` and `RateLimit` fields of an admitted request's response
    /// report.
    pub(super) rate: Option<Rate>,
    /// Fingerprint of the reported (or refusing) limit's key, for the access log.
    pub(super) key_fp: Option<Fingerprint>,
    /// A route that keeps its charges (`refund_statuses`, response costs, concurrency limits):
    /// what the admitted request was charged, to settle, give back or release later.
    pub(super) kept: Kept,
    /// A route with response costs: the decisions to report again once they are settled
    /// (in place, not boxed: an allocation and its release cost more instructions than the
    /// context's copies of these bytes do).
    pub(super) unsettled: Option<Unsettled>,
}

/// The limit an admitted request's response reports, and how it stands.
pub(super) struct Rate {
    /// Where its `RateLimit-Policy` value comes from.
    pub(super) policy: Policy,
    pub(super) limit: LimitId,
    /// What `RateLimit` reports of the decision (`r` and `t`): the rest of a [`Decision`]
    /// would make every request's context bigger for nothing.
    pub(super) remaining: u64,
    pub(super) full_in_ns: u64,
}

/// Where a response's `RateLimit-Policy` value comes from.
pub(super) enum Policy {
    /// The limit's, built with the config (`Runtime::policy_value`).
    Limit,
    /// The one kept with the key's own bucket (an override), at this position of the
    /// limit's overrides ([`Own::at`]): found again through the request's runtime, which
    /// holds the table, instead of a copy (a reference count taken and given back) carried
    /// from the decision to the response.
    Own(u32),
    /// Built for this response: a monthly quota's (its `w` changes).
    Built(HeaderValue),
}

impl Policy {
    /// The policy of limit `li` for a key whose own bucket is `own` (an override), if any.
    pub(super) fn of(rt: &Runtime, li: LimitId, own: Option<&Own>) -> Policy {
        match own {
            Some(o) if !headers::fresh_policy(&o.spec.params) => Policy::Own(o.at),
            _ => rt
                .own_policy_value(li, own)
                .map_or(Policy::Limit, Policy::Built),
        }
    }
}

impl Rate {
    /// Its `RateLimit-Policy` value; `rt`: the runtime the request was decided with.
    pub(super) fn policy_value<'r>(&'r self, rt: &'r Runtime) -> &'r HeaderValue {
        let own = |at| rt.limit_spec(self.limit).overrides.own_at(at);
        match &self.policy {
            Policy::Own(at) => {
                own(*at).map_or_else(|| rt.policy_value(self.limit), headers::own_policy_kept)
            }
            Policy::Built(v) => v,
            Policy::Limit => rt.policy_value(self.limit),
        }
    }

    /// The decision as `RateLimit` reports it.
    pub(super) fn decision(&self) -> Decision {
        Decision {
            allowed: true,
            remaining: self.remaining,
            retry_after_ns: 0,
            full_in_ns: self.full_in_ns,
            never: false,
        }
    }
}

/// What an admitted request was charged, limit by limit, on a route that keeps its charges:
/// the store keys back to back in one buffer (one allocation for them all). The slots it holds
/// on concurrency limits are given back, as a credit of the node, when this is dropped, with
/// the request's context: a request ends by dropping its context, whatever ended it (an
/// answer, the client gone, the upstream failed or timed out, a retry exhausted), so a slot is
/// never kept by a request that is over.
#[derive(Default)]
pub(super) struct Kept {
    keys: String,
    /// Inline up to four limits (no allocation per request); empty on routes that keep
    /// nothing.
    paid: SmallVec<[Paid; 4]>,
    /// The node to give slots back to, when the request holds any.
    slots_of: Option<Arc<Node>>,
}

/// What an admitted request was charged on one of its route's limits.
struct Paid {
    cost: u64,
    /// Its store key in [`Kept::keys`] (see [`Paid::key`]).
    key: (u32, u32),
    /// Position in the route's limits.
    at: u32,
    /// A slot of a concurrency limit (released when the request ends, never refunded).
    slot: bool,
}

impl Paid {
    /// Its store key, in `keys` (the [`Kept::keys`] it was noted in).
    fn key<'k>(&self, keys: &'k str) -> &'k str {
        let range = self.key.0 as usize..self.key.1 as usize;
        debug_assert!(keys.get(range.clone()).is_some());
        // SAFETY: the range is one the decision wrote a whole store key at, in this very
        // buffer: `Kept::keys` is replaced only by `Kept::start`, while nothing is noted, and
        // written only by the decision that notes each `Paid` after writing its key. So it is
        // in bounds and on char boundaries. Checked, the slice cost about ten instructions a
        // key for what cannot fail.
        unsafe { keys.get_unchecked(range) }
    }
}

impl Kept {
    pub(super) fn is_empty(&self) -> bool {
        self.paid.is_empty()
    }

    /// Starts noting a request's charges: a fresh buffer for their keys, and where to note
    /// each. Once per request: what is noted points into the buffer (see [`Paid::key`]).
    fn start(&mut self) -> (&mut String, &mut SmallVec<[Paid; 4]>) {
        assert!(self.paid.is_empty(), "a request's charges are noted once");
        self.keys = String::with_capacity(64);
        (&mut self.keys, &mut self.paid)
    }

    /// Gives back what the request paid on every limit but its slots (a refund), once; calls
    /// `counted(position in the route's limits, tokens)` for each.
    pub(super) fn refund(&mut self, node: &Node, mut counted: impl FnMut(usize, u64)) {
        for p in self.paid.iter_mut().filter(|p| !p.slot && p.cost > 0) {
            if node.store.refund(p.key(&self.keys), p.cost) {
                counted(p.at as usize, p.cost);
            }
            p.cost = 0;
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(node) = self.slots_of.take() {
            for p in self.paid.iter().filter(|p| p.slot) {
                node.store.refund(p.key(&self.keys), 1);
            }
        }
    }
}

/// An admitted request's decisions on a route with response costs, until its response head
/// settles them.
pub(super) struct Unsettled {
    decisions: Small<Decision>,
}

/// What the gateway answers itself. Positions are into the route's limits.
pub(super) enum Refused {
    /// A key could not be built (400).
    BadKey(KeyError),
    /// The cost on this limit exceeds its capacity for the key (413).
    TooCostly { at: usize, capacity: u64, cost: u64 },
    /// The key is denied by this limit (an override: 403).
    Denied(usize),
    /// This limit refused (429); `params` are the key's own, when it has an override.
    Limited {
        at: usize,
        decision: Decision,
        params: Option<BucketParams>,
    },
}

/// Charges route `ri`'s limits for this request, counts the verdict in the metrics and notes in
/// `out` what the response and the access log report. `Ok(shadow_limited)` forwards the
/// request (`true` when a shadow limit could not pay); `Err` is what to answer instead.
pub(super) fn decide(
    node: &Arc<Node>,
    rt: &Runtime,
    ri: RouteId,
    view: &RequestView<'_>,
    cost: u64,
    out: &mut Reported,
) -> Result<bool, Refused> {
    let route = rt.config.route(ri);
    let mut result = ChargeResult::default();
    let verdict = verdict(node, rt, ri, view, cost, out, &mut result);
    let m = &node.metrics;
    let limited = |i: usize| {
        let limit = &rt.limit_spec(route.limits[i]).name;
        m.rate_limited_total
            .with_label_values(&[&route.name, limit])
            .inc()
    };
    let shadow_limited = &result.shadow_rejected;
    match verdict {
        Verdict::Pass {
            report,
            own,
            key_fp,
        } => {
            shadow_limited.iter().for_each(|&i| limited(i));
            let decisions = &mut result.decisions;
            count_consumed(node, rt, route, decisions, cost);
            if route.response_costs.is_empty() {
                if let Some(i) = report {
                    let li = route.limits[i];
                    out.rate = Some(rate(li, &decisions[i], Policy::of(rt, li, own)));
                }
            } else {
                // The response head settles the costs, and the headers are chosen then
                // ([`settle`]): a request that gets no response head reports none.
                out.unsettled = Some(Unsettled {
                    decisions: std::mem::take(decisions),
                });
            }
            out.key_fp = key_fp;
            Ok(!shadow_limited.is_empty())
        }
        Verdict::Limited { at, own, key_fp } => {
            shadow_limited.iter().for_each(|&i| limited(i));
            limited(at);
            out.key_fp = Some(key_fp);
            Err(Refused::Limited {
                at,
                decision: result.decisions[at],
                params: own.map(|o| o.spec.params.clone()),
            })
        }
        Verdict::Denied { at, key_fp } => {
            out.key_fp = Some(key_fp);
            Err(Refused::Denied(at))
        }
        Verdict::BadKey(e) => Err(Refused::BadKey(e)),
        Verdict::TooCostly { at, capacity } => Err(Refused::TooCostly {
            at,
            capacity,
            cost: route.cost_at(at, cost),
        }),
    }
}

/// The one decision on route `ri`'s limits for this request (see [`decision::decide`]), its
/// decisions into `result`; on a route with `refund_statuses`, the charged keys and the cost
/// are noted in `out`.
fn verdict<'r>(
    node: &Arc<Node>,
    rt: &'r Runtime,
    ri: RouteId,
    view: &'r RequestView<'_>,
    cost: u64,
    out: &mut Reported,
    result: &mut ChargeResult,
) -> Verdict<'r> {
    let route = rt.config.route(ri);
    let charged_of = |li| Charged {
        limit: rt.limit_spec(li),
        key: KeyOf::Request(&rt.config.limit(li).key, view),
    };
    // Pushed one by one: `collect` into a SmallVec goes through its generic `extend`, several
    // times the instructions for a handful of items.
    let all = || {
        let mut all: SmallVec<[Charged<'_>; 4]> = SmallVec::new();
        for &li in &route.limits {
            all.push(charged_of(li));
        }
        all
    };
    let fp = rt.config.access_log;
    if route.keeps_charges() {
        let (keys, paid) = out.kept.start();
        let mut slots = false;
        let verdict = decision::decide_keeping(
            &node.store,
            &all(),
            |i| route.cost_at(i, cost),
            fp,
            (keys, result),
            |at, key| {
                // Positions and key ends fit: a route has far fewer than 2^32 limits, and a
                // request's keys (bounded by its header size) far fewer than 4 GiB.
                let (Ok(at32), Ok(start), Ok(end)) = (
                    u32::try_from(at),
                    u32::try_from(key.start),
                    u32::try_from(key.end),
                ) else {
                    return;
                };
                let (cost, slot) = route.charge_at(at, cost);
                slots |= slot;
                paid.push(Paid {
                    cost,
                    key: (start, end),
                    at: at32,
                    slot,
                });
            },
        );
        if slots {
            out.kept.slots_of = Some(Arc::clone(node));
        }
        return verdict;
    }
    // Most routes have one or two limits: those are listed on the stack without a SmallVec
    // (whose length checks the request path would pay for).
    match route.limits[..] {
        [] => decision::decide(&node.store, &[], cost, fp, result),
        [a] => decision::decide(&node.store, &[charged_of(a)], cost, fp, result),
        [a, b] => {
            let both = [charged_of(a), charged_of(b)];
            decision::decide(&node.store, &both, cost, fp, result)
        }
        _ => decision::decide(&node.store, &all(), cost, fp, result),
    }
}

/// What an admitted request's response reports for limit `li` after decision `d`; `policy`:
/// its `RateLimit-Policy` when it is not the one built with the config (see [`Rate::policy`]).
fn rate(li: LimitId, d: &Decision, policy: Policy) -> Rate {
    Rate {
        policy,
        limit: li,
        remaining: d.remaining,
        full_in_ns: d.full_in_ns,
    }
}

/// Counts the tokens each limit that paid took, in `tokens_consumed_total`.
fn count_consumed(node: &Node, rt: &Runtime, route: &Route, decisions: &[Decision], cost: u64) {
    let (m, rm) = (&node.metrics, rt.request_metrics(&node.metrics));
    for (i, (d, &li)) in decisions.iter().zip(&route.limits).enumerate() {
        if d.allowed {
            rm.consumed(m, li).inc_by(route.cost_at(i, cost));
        }
    }
}

/// The largest cost a response may report: more is taken for a broken header (the reserve is
/// kept).
pub const MAX_RESPONSE_COST: u64 = 1 << 40;

/// A response cost header's value: a whole number of tokens, 0 to [`MAX_RESPONSE_COST`],
/// optionally surrounded by spaces.
fn response_cost(v: &HeaderValue) -> Option<u64> {
    let b = v.as_bytes();
    // Trimmed as `str::trim` does: for ASCII (a header value holds no vertical tab, the
    // one ASCII white space `trim_ascii` keeps), `trim_ascii`.
    let digits = if b.is_ascii() {
        b.trim_ascii()
    } else {
        std::str::from_utf8(b).ok()?.trim().as_bytes()
    };
    if digits.is_empty() {
        return None;
    }
    // Read digit by digit (`str::parse` takes about three times the instructions); more
    // than a u64 holds is as invalid as more than the bound.
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    (n <= MAX_RESPONSE_COST).then_some(n)
}

/// The response head of an admitted request on a route with response costs: each such limit's
/// reserve is replaced by the cost the header reports (charged on top or given back, see
/// [`crate::limit::store::Store::settle`]), and the `RateLimit` headers are chosen again from
/// the settled state (the proxy strips the headers asked, see [`stripped`]). A missing or invalid value
/// keeps the reserve and is counted in `response_cost_missing_total`.
pub(super) fn settle(
    node: &Node,
    rt: &Runtime,
    ri: RouteId,
    resp: &mut ResponseHeader,
    out: &mut Reported,
) {
    let route = rt.config.route(ri);
    let Some(mut un) = out.unsettled.take() else {
        return;
    };
    let (m, rm) = (&node.metrics, rt.request_metrics(&node.metrics));
    let kept = &mut out.kept;
    for rc in &route.response_costs {
        let reported = key::first_value(&resp.headers, &rc.header).and_then(response_cost);
        let li = route.limits[rc.at];
        // Not charged there: an unlimited key, or a shadow limit that could not pay.
        let Some(paid) = kept.paid.iter_mut().find(|p| p.at as usize == rc.at) else {
            continue;
        };
        let key = paid.key(&kept.keys);
        let Some(actual) = reported else {
            let labels = [route.name.as_str(), rt.limit_spec(li).name.as_str()];
            m.response_cost_missing_total
                .with_label_values(&labels)
                .inc();
            continue;
        };
        let limit = rt.limit_spec(li);
        let Some(spec) = limit.spec_at(key) else {
            continue;
        };
        if let Some(state) = node.store.settle(spec, key, paid.cost, actual) {
            un.decisions[rc.at] = Decision {
                allowed: true,
                ..state
            };
        }
        if actual > paid.cost {
            rm.consumed(m, li).inc_by(actual - paid.cost);
        } else if actual < paid.cost {
            rm.refunded(m, li).inc_by(paid.cost - actual);
        }
        paid.cost = actual;
    }
    let Some(i) =
        decision::most_restrictive(&un.decisions).filter(|&i| un.decisions[i] != UNLIMITED)
    else {
        return;
    };
    let (li, d) = (route.limits[i], &un.decisions[i]);
    // The key's own bucket there, if it has one (an override): its policy is reported.
    let limit = rt.limit_spec(li);
    let own = (kept.paid.iter().find(|p| p.at as usize == i))
        .and_then(|p| limit.for_key(limit.key_of(p.key(&kept.keys))).own());
    out.rate = Some(rate(li, d, Policy::of(rt, li, own)));
}

/// The response headers of route `route`'s response costs that the client must not see.
pub(super) fn stripped(route: &Route) -> impl Iterator<Item = &http::HeaderName> {
    (route.response_costs.iter())
        .filter(|rc| rc.strip)
        .map(|rc| &rc.header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_cost_is_a_whole_number_of_tokens_within_bounds() {
        let cost = |s: &str| response_cost(&HeaderValue::from_str(s).unwrap());
        assert_eq!(cost("420"), Some(420));
        assert_eq!(cost(" 7 "), Some(7));
        assert_eq!(cost("\t12\t"), Some(12));
        assert_eq!(cost("00042"), Some(42));
        // Trimmed as `str::trim` trims, Unicode white space included.
        assert_eq!(cost("\u{a0}5\u{2003}"), Some(5));
        assert_eq!(cost("5\u{e9}"), None);
        assert_eq!(cost("0"), Some(0));
        assert_eq!(
            cost(&MAX_RESPONSE_COST.to_string()),
            Some(MAX_RESPONSE_COST)
        );
        for bad in ["", " ", "-3", "+3", "1.5", "1e3", "12 tokens", "0x10"] {
            assert_eq!(cost(bad), None, "{bad:?}");
        }
        assert_eq!(cost(&(MAX_RESPONSE_COST + 1).to_string()), None);
        assert_eq!(cost("99999999999999999999999"), None);
        assert_eq!(
            response_cost(&HeaderValue::from_bytes(b"1\xff").unwrap()),
            None
        );
    }
}
