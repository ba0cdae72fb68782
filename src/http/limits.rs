//! A proxied request charged to its route's limits: [`decide`] calls the one decision
//! function ([`decision::decide`]), counts what the verdict says in the metrics, and notes what
//! the response and the access log report. What the proxy must answer itself comes back as a
//! [`Refused`].

use crate::app::node::{Node, Runtime};
use crate::config::RouteId;
use crate::http::headers;
use crate::limit::bucket::Decision;
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
}

/// What the gateway answers itself. Positions are into the route's limits.
pub(super) enum Refused {
    /// A key could not be built (400).
    BadKey(KeyError),
    /// The cost exceeds this limit's capacity (413).
    TooCostly(usize),
    /// This limit refused (429).
    Limited { at: usize, decision: Decision },
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
    let charged_of = |li| Charged {
        limit: rt.limit_spec(li),
        key: KeyOf::Request(&rt.config.limit(li).key, view),
    };
    // Most routes have one or two limits: those are listed on the stack without a SmallVec
    // (whose length checks the request path would pay for).
    let verdict = match route.limits[..] {
        [] => decision::decide(&node.store, &[], cost, rt.config.access_log),
        [a] => decision::decide(&node.store, &[charged_of(a)], cost, rt.config.access_log),
        [a, b] => decision::decide(
            &node.store,
            &[charged_of(a), charged_of(b)],
            cost,
            rt.config.access_log,
        ),
        _ => {
            let all: SmallVec<[Charged<'_>; 4]> =
                route.limits.iter().map(|&li| charged_of(li)).collect();
            decision::decide(&node.store, &all, cost, rt.config.access_log)
        }
    };
    let m = &node.metrics;
    let limit_name = |i: usize| &rt.limit_spec(route.limits[i]).name;
    let limited = |i: usize| {
        m.rate_limited_total
            .with_label_values(&[&route.name, limit_name(i)])
            .inc()
    };
    match verdict {
        Verdict::Pass {
            decisions,
            report,
            shadow_limited,
            key_fp,
        } => {
            shadow_limited.iter().for_each(|&i| limited(i));
            let rm = rt.request_metrics(m);
            for (d, &li) in decisions.iter().zip(&route.limits) {
                if d.allowed {
                    rm.consumed(m, li).inc_by(cost);
                }
            }
            if let Some(i) = report {
                out.rate_headers = Some((
                    rt.policy_value(route.limits[i]).clone(),
                    headers::ratelimit_header(limit_name(i), &decisions[i]),
                ));
            }
            out.key_fp = key_fp;
            Ok(!shadow_limited.is_empty())
        }
        Verdict::Limited {
            at,
            decision,
            shadow_limited,
            key_fp,
        } => {
            shadow_limited.iter().for_each(|&i| limited(i));
            limited(at);
            out.key_fp = Some(key_fp);
            Err(Refused::Limited { at, decision })
        }
        Verdict::BadKey(e) => Err(Refused::BadKey(e)),
        Verdict::TooCostly(at) => Err(Refused::TooCostly(at)),
    }
}
