//! Checks of the route list: names, references to upstreams and limits (resolved to
//! indices), match rules, costs, and routes hidden behind an earlier catch-all.

use super::raw::{RawCost, RawRoute};
use super::spans::element;
use super::validate::{Checker, MAX_NAME_LEN};
use super::values::{check_name, parse_host, parse_method};
use super::{Cost, Limit, Route, Upstream};
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
        let name_path = format!("{path}.name");
        if c.check(&name_path, check_name("route name", &r.name, MAX_NAME_LEN))
            .is_some()
        {
            if let Some(j) = seen.insert(&r.name, i) {
                c.err(
                    &name_path,
                    format!("duplicate route name \"{}\" (also routes[{j}])", r.name),
                );
            }
        }
        if let Some(j) = catch_all {
            c.err(
                &path,
                format!("route \"{}\" can never match: routes[{j}] (\"{}\") matches every request first; put the catch-all route last", r.name, raw[j].name),
            );
        }
        let upstream = upstream_names.iter().position(|n| *n == r.upstream);
        if upstream.is_none() {
            let msg = format!(
                "unknown upstream \"{}\" ({})",
                r.upstream,
                known(&upstream_names, "upstreams")
            );
            c.err(&format!("{path}.upstream"), msg);
        }
        let mut route_limits: Vec<usize> = Vec::new();
        for (k, name) in r.limits.iter().enumerate() {
            let lpath = element(&format!("{path}.limits"), k);
            match limit_names.iter().position(|n| n == name) {
                None => c.err(
                    &lpath,
                    format!(
                        "unknown limit \"{name}\" ({})",
                        known(&limit_names, "limits")
                    ),
                ),
                Some(li) if route_limits.contains(&li) => {
                    c.err(&lpath, format!("limit \"{name}\" is listed twice"))
                }
                Some(li) => route_limits.push(li),
            }
        }
        let m = &r.matcher;
        if !m.path_prefix.starts_with('/') {
            c.err(
                &format!("{path}.match.path_prefix"),
                format!("path_prefix {:?} must start with '/'", m.path_prefix),
            );
        } else {
            // Routes match the normalized path, so a prefix that normalization would change
            // never matches, and its requests would fall through to a later route.
            let msg = match crate::request::path::normalize(&m.path_prefix) {
                Ok(n) if n == m.path_prefix => None,
                Ok(n) => Some(format!(
                    "path_prefix {:?} can never match: requests are routed on their normalized path; write {n:?}",
                    m.path_prefix
                )),
                Err(e) => Some(format!(
                    "path_prefix {:?} can never match: {e}",
                    m.path_prefix
                )),
            };
            if let Some(msg) = msg {
                c.err(&format!("{path}.match.path_prefix"), msg);
            }
        }
        let methods = m.methods.as_ref().map(|list| {
            let mpath = format!("{path}.match.methods");
            if list.is_empty() {
                c.err(&mpath, "methods is empty, so the route matches nothing: leave it out to match every method");
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
        });
        let host = m
            .host
            .as_ref()
            .and_then(|h| c.check(&format!("{path}.match.host"), parse_host(h)));
        let cost = match r.cost {
            RawCost::Fixed(n) => Cost::Fixed(n),
            RawCost::PerBytes(n) => Cost::PerBytes(n),
        };
        match cost {
            Cost::Fixed(0) => c.err(&format!("{path}.cost"), "cost must be at least 1 token"),
            Cost::PerBytes(0) => {
                c.err(&format!("{path}.cost.per_bytes"), "must be at least 1 byte")
            }
            Cost::Fixed(n) => {
                for &li in &route_limits {
                    let Some(capacity) = capacities[li] else {
                        continue;
                    };
                    if n > capacity {
                        let msg = format!(
                            "cost {n} is more than the capacity {capacity} of limit \"{}\": no request could ever pass",
                            limits[li].name
                        );
                        c.err(&format!("{path}.cost"), msg);
                    }
                }
            }
            Cost::PerBytes(_) => {}
        }
        if catch_all.is_none() && m.path_prefix == "/" && m.methods.is_none() && m.host.is_none() {
            catch_all = Some(i);
        }
        out.push(Route {
            name: r.name.clone(),
            path_prefix: m.path_prefix.clone(),
            methods,
            host,
            upstream: upstream.unwrap_or(0),
            limits: route_limits,
            cost,
        });
    }
    out
}
