//! Checks of the route list: names, references to upstreams and limits (resolved to ids),
//! match rules, costs, and routes hidden behind an earlier catch-all.

use super::checker::{Checker, MAX_NAME_LEN};
use super::raw::{RawCost, RawMatch, RawRoute};
use super::spans::element;
use super::values::{check_name, parse_host, parse_method};
use super::{ChargedAs, Cost, Limit, LimitId, Refund, ResponseCost, Route, Upstream, UpstreamId};
use std::collections::HashMap;

fn known(names: &[&str], what: &str) -> String {
    if names.is_empty() {
        format!("no {what} are defined")
    } else {
        format!("known: {}", names.join(", "))
    }
}

pub(super) fn routes(
    c: &mut Checker,
    raw: &[RawRoute],
    upstreams: &[Upstream],
    (limits, capacities): (&[Limit], &[Option<u64>]),
) -> Vec<Route> {
    if raw.is_empty() {
        c.err(
            "routes",
            "no routes: add at least one, e.g. {\"name\": \"default\", \"upstream\": \"...\"}",
        );
    }
    let upstream_names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let limit_names: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut catch_all: Option<usize> = None;
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = element("routes", i);
        unique_name(c, &path, (i, &r.name), &mut seen);
        if let Some(j) = catch_all {
            shadowed(c, &path, &r.name, (j, &raw[j].name));
        }
        let upstream = upstream_ref(c, &path, &r.upstream, &upstream_names);
        let (route_limits, response_costs) = limit_refs(c, &path, &r.limits, &limit_names);
        reserves(
            c,
            &path,
            &response_costs,
            &route_limits,
            (limits, capacities),
        );
        let charged_as: Vec<ChargedAs> = (route_limits.iter().enumerate())
            .map(|(at, li)| {
                ChargedAs::of(at, limits[li.index()].params.is_slots(), &response_costs)
            })
            .collect();
        let m = &r.matcher;
        path_prefix(c, &path, &m.path_prefix);
        let methods = m.methods.as_ref().map(|list| methods(c, &path, list));
        let host = m
            .host
            .as_ref()
            .and_then(|h| c.check(&format!("{path}.match.host"), parse_host(h)));
        // The route's cost is not charged on a limit with a response cost, nor on a
        // concurrency limit (one slot a request).
        let fixed_cost_limits: Vec<LimitId> = (route_limits.iter().zip(&charged_as))
            .filter(|(_, c)| **c == ChargedAs::Cost)
            .map(|(&li, _)| li)
            .collect();
        let cost = cost(c, &path, &r.cost, &fixed_cost_limits, (limits, capacities));
        // A route whose every limit is charged the route's cost keeps none of them listed:
        // `Route::keeps_charges` reads an empty list without a loop (most routes).
        let charged_as = if charged_as.iter().all(|c| *c == ChargedAs::Cost) {
            Vec::new()
        } else {
            charged_as
        };
        if catch_all.is_none() && matches_everything(m) {
            catch_all = Some(i);
        }
        out.push(Route {
            name: r.name.clone(),
            path_prefix: m.path_prefix.clone(),
            methods,
            host,
            upstream: upstream.unwrap_or(UpstreamId(0)),
            cost,
            refund: refund(c, &path, &r.refund_statuses),
            limits: route_limits,
            response_costs,
            charged_as,
        });
    }
    out
}

/// A route's `refund_statuses`: codes 100..599 (as numbers or strings) and classes `1xx` to
/// `5xx`.
fn refund(c: &mut Checker, path: &str, raw: &[serde_json::Value]) -> Refund {
    let mut out = Refund::default();
    for (i, v) in raw.iter().enumerate() {
        let at = element(&format!("{path}.refund_statuses"), i);
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        let class = text.strip_suffix("xx").and_then(|d| d.parse::<u8>().ok());
        match (class, text.parse::<u16>()) {
            (Some(d @ 1..=5), _) if text.len() == 3 => out.classes |= 1 << d,
            (_, Ok(code @ 100..=599)) => out.statuses.push(code),
            _ => c.err(
                &at,
                format!("{text} is not a status (100 to 599) or a class (1xx to 5xx, as \"5xx\")"),
            ),
        }
    }
    out
}

/// Checks the name of route `i` and that no earlier route has it; `seen` holds the names so
/// far, with their index.
fn unique_name<'a>(
    c: &mut Checker,
    path: &str,
    (i, name): (usize, &'a str),
    seen: &mut HashMap<&'a str, usize>,
) {
    let name_path = format!("{path}.name");
    if c.check(&name_path, check_name("route name", name, MAX_NAME_LEN))
        .is_some()
    {
        if let Some(j) = seen.insert(name, i) {
            c.err(
                &name_path,
                format!("duplicate route name \"{name}\" (also routes[{j}])"),
            );
        }
    }
}

/// Reports the route `name`, which comes after the catch-all route `j`, as never matching.
fn shadowed(c: &mut Checker, path: &str, name: &str, (j, catch_all): (usize, &str)) {
    c.err(
        path,
        format!("route \"{name}\" can never match: routes[{j}] (\"{catch_all}\") matches every request first; put the catch-all route last"),
    );
}

/// Whether a route with this match rule takes every request.
fn matches_everything(m: &RawMatch) -> bool {
    m.path_prefix == "/" && m.methods.is_none() && m.host.is_none()
}

/// The route's upstream, or `None` (reported) when no upstream has that name.
fn upstream_ref(c: &mut Checker, path: &str, upstream: &str, names: &[&str]) -> Option<UpstreamId> {
    let id = names.iter().position(|n| *n == upstream).map(UpstreamId);
    if id.is_none() {
        let msg = format!(
            "unknown upstream \"{upstream}\" ({})",
            known(names, "upstreams")
        );
        c.err(&format!("{path}.upstream"), msg);
    }
    id
}

/// The route's limits, in the order written, and those charged what the response reports;
/// unknown and repeated names, and malformed entries, are reported and left out.
fn limit_refs(
    c: &mut Checker,
    path: &str,
    limits: &[serde_json::Value],
    names: &[&str],
) -> (Vec<LimitId>, Vec<ResponseCost>) {
    let mut out: Vec<LimitId> = Vec::new();
    let mut costs = Vec::new();
    for (k, entry) in limits.iter().enumerate() {
        let lpath = element(&format!("{path}.limits"), k);
        let (name, cost) = match entry {
            serde_json::Value::String(name) => (name.as_str(), None),
            serde_json::Value::Object(o) => {
                for key in o.keys().filter(|k| *k != "limit" && *k != "cost") {
                    c.err_key(
                        &format!("{lpath}.{key}"),
                        format!("unknown field \"{key}\" (known: limit, cost)"),
                    );
                }
                let Some(name) = o.get("limit").and_then(|v| v.as_str()) else {
                    c.err(&lpath, "needs \"limit\": the name of a limit");
                    continue;
                };
                let cost = match o.get("cost") {
                    None => {
                        c.err(&lpath, "needs \"cost\": {\"response_header\": NAME} (or write the limit's name alone)");
                        continue;
                    }
                    Some(v) => response_cost(c, &format!("{lpath}.cost"), v),
                };
                (name, cost)
            }
            _ => {
                c.err(
                    &lpath,
                    "must be a limit's name or {\"limit\": NAME, \"cost\": {\"response_header\": HEADER}}",
                );
                continue;
            }
        };
        match names.iter().position(|n| *n == name).map(LimitId) {
            None => c.err(
                &lpath,
                format!("unknown limit \"{name}\" ({})", known(names, "limits")),
            ),
            Some(li) if out.contains(&li) => {
                c.err(&lpath, format!("limit \"{name}\" is listed twice"))
            }
            Some(li) => {
                if let Some(mut rc) = cost {
                    rc.at = out.len();
                    costs.push(rc);
                }
                out.push(li);
            }
        }
    }
    (out, costs)
}

/// A route limit's `cost`: `{"response_header": NAME, "reserve": R (default 1), "strip":
/// BOOL (default false)}`. A reserve of 0 admits a request whenever the key's bucket is not in
/// debt.
fn response_cost(c: &mut Checker, path: &str, v: &serde_json::Value) -> Option<ResponseCost> {
    let Some(o) = v.as_object() else {
        c.err(
            path,
            "must be an object: {\"response_header\": NAME, \"reserve\": 1, \"strip\": false}",
        );
        return None;
    };
    let mut ok = true;
    for key in o.keys() {
        if !matches!(key.as_str(), "response_header" | "reserve" | "strip") {
            c.err_key(
                &format!("{path}.{key}"),
                format!("unknown field \"{key}\" (known: response_header, reserve, strip)"),
            );
            ok = false;
        }
    }
    let header = match o.get("response_header").map(|h| h.as_str()) {
        None => {
            c.err(
                path,
                "needs \"response_header\": the response header that reports the cost",
            );
            None
        }
        Some(None) => {
            c.err(
                &format!("{path}.response_header"),
                "must be a header name (a string)",
            );
            None
        }
        Some(Some(name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                c.err(
                    &format!("{path}.response_header"),
                    format!("{name:?} is not a valid header name"),
                );
                None
            }
        },
    };
    let reserve = match o.get("reserve") {
        None => Some(1),
        Some(r) => {
            let n = r.as_u64();
            if n.is_none() {
                c.err(
                    &format!("{path}.reserve"),
                    "must be a whole number of tokens, 0 or more",
                );
            }
            n
        }
    };
    let strip = match o.get("strip") {
        None => Some(false),
        Some(b) => {
            let b = b.as_bool();
            if b.is_none() {
                c.err(&format!("{path}.strip"), "must be true or false");
            }
            b
        }
    };
    Some(ResponseCost {
        at: 0,
        header: header?,
        reserve: reserve?,
        strip: strip?,
    })
    .filter(|_| ok)
}

/// A reserve above the capacity of its limit: no request could ever pass.
fn reserves(
    c: &mut Checker,
    path: &str,
    costs: &[ResponseCost],
    route_limits: &[LimitId],
    (limits, capacities): (&[Limit], &[Option<u64>]),
) {
    for rc in costs {
        let li = route_limits[rc.at];
        if limits[li.index()].params.is_slots() {
            let msg = format!(
                "limit \"{}\" is a concurrency limit (max_in_flight): it counts requests in flight, not tokens, so it takes no response cost",
                limits[li.index()].name
            );
            c.err(
                &format!("{}.cost", element(&format!("{path}.limits"), rc.at)),
                msg,
            );
            continue;
        }
        if let Some(capacity) = capacities[li.index()].filter(|&cap| rc.reserve > cap) {
            let msg = format!(
                "reserve {} is more than the capacity {capacity} of limit \"{}\": no request could ever pass",
                rc.reserve,
                limits[li.index()].name
            );
            c.err(
                &format!("{}.cost.reserve", element(&format!("{path}.limits"), rc.at)),
                msg,
            );
        }
    }
}

/// Checks that the path prefix starts with '/' and is already normalized.
fn path_prefix(c: &mut Checker, path: &str, prefix: &str) {
    let prefix_path = format!("{path}.match.path_prefix");
    if !prefix.starts_with('/') {
        c.err(
            &prefix_path,
            format!("path_prefix {prefix:?} must start with '/'"),
        );
        return;
    }
    // Routes match the normalized path, so a prefix that normalization would change
    // never matches, and its requests would fall through to a later route.
    let msg = match crate::request::path::normalize(prefix) {
        Ok(n) if n == prefix => None,
        Ok(n) => Some(format!(
            "path_prefix {prefix:?} can never match: requests are routed on their normalized path; write {n:?}"
        )),
        Err(e) => Some(format!("path_prefix {prefix:?} can never match: {e}")),
    };
    if let Some(msg) = msg {
        c.err(&prefix_path, msg);
    }
}

/// The route's methods, without repeats; an empty list and bad methods are reported.
fn methods(c: &mut Checker, path: &str, list: &[String]) -> Vec<http::Method> {
    let mpath = format!("{path}.match.methods");
    if list.is_empty() {
        c.err(
            &mpath,
            "methods is empty, so the route matches nothing: leave it out to match every method",
        );
    }
    let mut methods: Vec<http::Method> = Vec::new();
    for (k, s) in list.iter().enumerate() {
        if let Some(method) = c.check(&element(&mpath, k), parse_method(s)) {
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
    }
    methods
}

/// The route's cost; a zero cost, and a fixed cost above the capacity of one of the route's
/// limits (no request could ever pass), are reported.
fn cost(
    c: &mut Checker,
    path: &str,
    raw: &RawCost,
    route_limits: &[LimitId],
    (limits, capacities): (&[Limit], &[Option<u64>]),
) -> Cost {
    let cost = match *raw {
        RawCost::Fixed(n) => Cost::Fixed(n),
        RawCost::PerBytes(n) => Cost::PerBytes(n),
    };
    match cost {
        Cost::Fixed(0) => c.err(&format!("{path}.cost"), "cost must be at least 1 token"),
        Cost::PerBytes(0) => c.err(&format!("{path}.cost.per_bytes"), "must be at least 1 byte"),
        Cost::Fixed(n) => {
            for &li in route_limits {
                let Some(capacity) = capacities[li.index()] else {
                    continue;
                };
                if n > capacity {
                    let msg = format!(
                        "cost {n} is more than the capacity {capacity} of limit \"{}\": no request could ever pass",
                        limits[li.index()].name
                    );
                    c.err(&format!("{path}.cost"), msg);
                }
            }
        }
        Cost::PerBytes(_) => {}
    }
    cost
}

/// Limits whose keys are built from the same sources share one list of them (a route's
/// decision builds such a key once, see `request::decision`).
pub(super) fn share_keys(limits: &mut [Limit]) {
    for i in 1..limits.len() {
        if let Some(j) = (0..i).find(|&j| limits[j].key == limits[i].key) {
            limits[i].key = std::sync::Arc::clone(&limits[j].key);
        }
    }
}
