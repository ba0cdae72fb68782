//! `GET /buckets?limit=NAME&top=N&by=rejected|tokens[&raw=1]`: the buckets of a limit that an
//! operator looks at in an incident (see [`crate::limit::store_top`]). Keys are fingerprints
//! (as in the access log) unless `raw=1` asks for them as the limit built them.

use super::{json_response, query_get};
use crate::app::node::Node;
use crate::limit::store_top::TopBy;
use crate::request::key::Fingerprint;
use http::Response;
use serde_json::json;

/// Buckets listed when `top` is not given, and at most.
const DEFAULT_TOP: usize = 10;
const MAX_TOP: usize = 1000;

pub(super) fn buckets(node: &Node, q: Option<&str>) -> Response<Vec<u8>> {
    let rt = node.runtime();
    let Some(name) = query_get(q, "limit") else {
        return json_response(400, &json!({"error": "missing query parameter: limit"}));
    };
    let Some(l) = rt.limit_named(&name) else {
        let known: Vec<&str> = rt.limits.iter().map(|l| l.name.as_str()).collect();
        let error = format!("unknown limit {name:?}");
        return json_response(404, &json!({"error": error, "known": known}));
    };
    let top = match query_get(q, "top").map(|t| t.parse::<usize>()) {
        None => DEFAULT_TOP,
        Some(Ok(n)) if (1..=MAX_TOP).contains(&n) => n,
        Some(_) => {
            let error = format!("top must be a whole number from 1 to {MAX_TOP}");
            return json_response(400, &json!({ "error": error }));
        }
    };
    let by = match query_get(q, "by").as_deref() {
        None | Some("rejected") => TopBy::Refused,
        Some("tokens") => TopBy::Tokens,
        Some(other) => {
            let error = format!("by must be rejected or tokens, not {other:?}");
            return json_response(400, &json!({ "error": error }));
        }
    };
    let raw = query_get(q, "raw").is_some_and(|v| v == "1" || v == "true");
    let found = node.store.top(&l.name, top, by, |k| l.params_for(k));
    let buckets: Vec<_> = found
        .into_iter()
        .map(|b| {
            let key = if raw {
                b.key
            } else {
                Fingerprint::of(&b.key).to_string()
            };
            json!({
                "key": key,
                "tokens": b.tokens,
                "capacity": b.capacity,
                "rejected_last_minute": b.refused_last_minute,
            })
        })
        .collect();
    let by = match by {
        TopBy::Refused => "rejected",
        TopBy::Tokens => "tokens",
    };
    json_response(
        200,
        &json!({"limit": l.name, "by": by, "raw": raw, "buckets": buckets}),
    )
}
