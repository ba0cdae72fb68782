//! A proxied request charged to its route's limits: [`decide`] calls the one decision
//! function ([`decision::decide`]), counts what the verdict says in the metrics, and notes what
//! the response and the access log report. What the proxy must answer itself comes back as a
//! [`Refused`].

use crate::app::node::{Node, Runtime};
use crate::config::{LimitId, RouteId};
use crate::http::headers;
use crate::limit::bucket::{BucketParams, Decision};
use crate::limit::store_key::StoreKey;
use crate::request::decision::{self, Charged, KeyOf, Verdict};
use crate::request::key::{Fingerprint, KeyError, RequestView};
use http::HeaderValue;
use smallvec::SmallVec;

/// What the limits report on the response and in the access log.
#[derive(Default)]
pub(super) struct Reported {
    /// `RateLimit-Policy` and `RateLimit` to add to an admitted request's response.
    pub(super) rate_headers: Option<(HeaderValue, HeaderValue)>,
    /// Fingerprint of the reported (or refusing) limit's key, for the access log.
    pub(super) key_fp: Option<Fingerprint>,
    /// A route with `refund_statuses`: the store keys the admitted request was charged to,
    /// and its cost, to give back if its answer is one of them.
    pub(super) charged: Vec<StoreKey>,
    pub(super) cost: u64,
}

/// What the gateway answers itself. Positions are into the route's limits.
pub(super) enum Refused {
    /// A key could not be built (400).
    BadKey(KeyError),
    /// The cost exceeds this limit's capacity for the key (413).
    TooCostly { at: usize, capacity: u64 },
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
    node: &Node,
    rt: &Runtime,
    ri: RouteId,
    view: &RequestView<'_>,
    cost: u64,
    out: &mut Reported,
) -> Result<bool, Refused> {
    let route = rt.config.route(ri);
    let verdict = verdict(node, rt, ri, view, cost, out);
    let m = &node.metrics;
    let limited = |i: usize| {
        let limit = &rt.limit_spec(route.limits[i]).name;
        m.rate_limited_total
            .with_label_values(&[&route.name, limit])
            .inc()
    };
    match verdict {
        Verdict::Pass {
            decisions,
            report,
            params,
            shadow_limited,
            key_fp,
        } => {
            shadow_limited.iter().for_each(|&i| limited(i));
            count_consumed(node, rt, &route.limits, &decisions, cost);
            if let Some(i) = report {
                out.rate_headers = Some(rate_headers(rt, route.limits[i], &decisions[i], params));
            }
            out.key_fp = key_fp;
            Ok(!shadow_limited.is_empty())
        }
        Verdict::Limited {
            at,
            decision,
            params,
            shadow_limited,
            key_fp,
        } => {
            shadow_limited.iter().for_each(|&i| limited(i));
            limited(at);
            out.key_fp = Some(key_fp);
            Err(Refused::Limited {
                at,
                decision,
                params,
            })
        }
        Verdict::Denied { at, key_fp } => {
            out.key_fp = Some(key_fp);
            Err(Refused::Denied(at))
        }
        Verdict::BadKey(e) => Err(Refused::BadKey(e)),
        Verdict::TooCostly { at, capacity } => Err(Refused::TooCostly { at, capacity }),
    }
}

/// The one decision on route `ri`'s limits for this request (see [`decision::decide`]); on a
/// route with `refund_statuses`, the charged keys and the cost are noted in `out`.
fn verdict(
    node: &Node,
    rt: &Runtime,
    ri: RouteId,
    view: &RequestView<'_>,
    cost: u64,
    out: &mut Reported,
) -> Verdict {
    let route = rt.config.route(ri);
    let charged_of = |li| Charged {
        limit: rt.limit_spec(li),
        key: KeyOf::Request(&rt.config.limit(li).key, view),
    };
    let fp = rt.config.access_log;
    if !route.refund.is_empty() {
        let all: SmallVec<[Charged<'_>; 4]> =
            route.limits.iter().map(|&li| charged_of(li)).collect();
        out.cost = cost;
        return decision::decide_keeping(&node.store, &all, cost, fp, &mut out.charged);
    }
    // Most routes have one or two limits: those are listed on the stack without a SmallVec
    // (whose length checks the request path would pay for).
    match route.limits[..] {
        [] => decision::decide(&node.store, &[], cost, fp),
        [a] => decision::decide(&node.store, &[charged_of(a)], cost, fp),
        [a, b] => decision::decide(&node.store, &[charged_of(a), charged_of(b)], cost, fp),
        _ => {
            let all: SmallVec<[Charged<'_>; 4]> =
                route.limits.iter().map(|&li| charged_of(li)).collect();
            decision::decide(&node.store, &all, cost, fp)
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` of an admitted request, reported for limit `li`: the
/// policy built once per config, or the key's own (`params`, an override).
fn rate_headers(
    rt: &Runtime,
    li: LimitId,
    d: &Decision,
    params: Option<BucketParams>,
) -> (HeaderValue, HeaderValue) {
    let name = &rt.limit_spec(li).name;
    let policy = rt.policy_value_for(li, params.as_ref());
    (policy, headers::ratelimit_header(name, d))
}

/// Counts the tokens each limit that paid took, in `tokens_consumed_total`.
fn count_consumed(
    node: &Node,
    rt: &Runtime,
    limits: &[LimitId],
    decisions: &[Decision],
    cost: u64,
) {
    let (m, rm) = (&node.metrics, rt.request_metrics(&node.metrics));
    for (d, &li) in decisions.iter().zip(limits) {
        if d.allowed {
            rm.consumed(m, li).inc_by(cost);
        }
    }
}
