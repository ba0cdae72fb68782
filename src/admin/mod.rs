//! The admin listener (`docs/admin-api.md`): health, metrics, peek, sidecar consume, reload, config.
//!
//! It listens on loopback unless configured otherwise, and then the config demands a token:
//! every request must carry `Authorization: Bearer TOKEN` (compared in constant time).

mod buckets;
mod reset;
mod status;
mod status_page;

use crate::app::node::Node;
use crate::config::LimitId;
use crate::http::headers;
use crate::limit::bucket::Decision;
use crate::limit::overrides::{ForKey, Own};
use crate::limit::store::ChargeResult;
use crate::request::decision::{self, Charged, KeyOf, Verdict};
use crate::request::key;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin HTTP application.
pub struct AdminApp {
    pub node: Arc<Node>,
}

fn json_response(status: u16, body: &Value) -> Response<Vec<u8>> {
    bytes_response(
        status,
        "application/json",
        body.to_string().into_bytes(),
        &[],
    )
}

fn bytes_response(
    status: u16,
    content_type: &str,
    body: Vec<u8>,
    extra: &[(&str, String)],
) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("content-length", body.len().to_string());
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(body).unwrap_or_else(|_| Response::new(Vec::new()))
}

/// The error of a 401: which header to send, never the token itself.
fn token_refusal(session: &ServerSession) -> &'static str {
    match session.req_header().headers.get("authorization") {
        None => "admin token required: send the header `Authorization: Bearer <admin.token from the config>`",
        Some(v) if !v.as_bytes().starts_with(b"Bearer ") => {
            "Authorization header not understood: send `Authorization: Bearer <admin.token from the config>`"
        }
        Some(_) => "admin token does not match: send `Authorization: Bearer <admin.token from the config>` with this node's admin.token",
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Query parameters, percent-decoded (duplicates: the first wins).
fn query_get(query: Option<&str>, name: &str) -> Option<String> {
    key::query_param(query, name).ok().flatten().or_else(|| {
        // Duplicate parameters are refused by key extraction; for admin calls take the first.
        query?.split('&').find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == name).then(|| v.to_string())
        })
    })
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> bool {
        let rt = self.node.runtime();
        let Some(token) = rt.config.admin.token.as_deref() else {
            return true;
        };
        let Some(auth) = session.req_header().headers.get("authorization") else {
            return false;
        };
        let auth = auth.as_bytes();
        match auth.strip_prefix(b"Bearer ") {
            Some(given) => constant_time_eq(given, token.as_bytes()),
            None => false,
        }
    }

    fn health(&self) -> Response<Vec<u8>> {
        let rt = self.node.runtime();
        let (status, redis) = if rt.config.redis.is_none() {
            ("ok", "disabled")
        } else if self.node.sync_status.connected() {
            ("ok", "connected")
        } else {
            ("degraded", "disconnected")
        };
        json_response(
            200,
            &json!({"status": status, "node_id": rt.config.node_id, "redis": redis}),
        )
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        self.node.refresh_bucket_gauges();
        bytes_response(
            200,
            "text/plain; version=0.0.4",
            self.node.metrics.encode(),
            &[],
        )
    }

    /// `/rating` and `/consume`: find the limit and key, and the cost for consume.
    /// Errors are (status, body).
    fn limit_args(&self, query: Option<&str>) -> Result<(LimitId, String, u64), (u16, Value)> {
        let rt = self.node.runtime();
        let Some(name) = query_get(query, "limit") else {
            return Err((400, json!({"error": "missing query parameter: limit"})));
        };
        let Some(li) = rt.config.limit_id(&name) else {
            let known: Vec<&str> = rt.config.limits.iter().map(|l| l.name.as_str()).collect();
            return Err((
                404,
                json!({"error": format!("unknown limit {name:?}"), "known": known}),
            ));
        };
        let Some(k) = query_get(query, "key") else {
            return Err((400, json!({"error": "missing query parameter: key"})));
        };
        let cost = match query_get(query, "cost") {
            None => 1,
            Some(c) => match c.parse::<u64>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err((
                        400,
                        json!({"error": "cost must be a whole number of tokens, at least 1"}),
                    ))
                }
            },
        };
        Ok((li, k, cost))
    }

    fn rating(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let (li, k, cost) = match self.limit_args(query) {
            Ok(a) => a,
            Err((status, body)) => return json_response(status, &body),
        };
        let rt = self.node.runtime();
        let base = rt.limit_spec(li);
        let l = match base.for_key(&k) {
            ForKey::Bucket(l) => l,
            ForKey::Own(o) => &o.spec,
            ForKey::Unlimited => {
                return json_response(
                    200,
                    &json!({"limit": base.name, "key": k, "override": "unlimited"}),
                )
            }
            ForKey::Deny => {
                return json_response(
                    200,
                    &json!({"limit": base.name, "key": k, "override": "deny"}),
                )
            }
        };
        // "remaining" and "full_in" describe the bucket now; "retry_after" the given cost.
        let now = self.node.store.peek(l, &k, 0);
        let d = self.node.store.peek(l, &k, cost);
        json_response(
            200,
            &json!({
                "limit": l.name,
                "key": k,
                "override": (!std::ptr::eq(l, base)).then_some("params"),
                "remaining": now.remaining,
                "capacity": l.params.capacity(),
                "refill_per_second": l.params.refill_per_second(),
                "retry_after_ms": headers::ceil_ms(d.retry_after_ns),
                "full_in_ms": headers::ceil_ms(now.full_in_ns),
            }),
        )
    }

    fn consume(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let (li, k, cost) = match self.limit_args(query) {
            Ok(a) => a,
            Err((status, body)) => return json_response(status, &body),
        };
        let rt = self.node.runtime();
        let l = rt.limit_spec(li);
        if l.params.is_slots() {
            // A slot taken here could never be given back: only proxied requests end.
            let msg = format!("limit \"{}\" is a concurrency limit (max_in_flight): its slots are taken and given back by proxied requests, not by /consume", l.name);
            return json_response(400, &serde_json::json!({ "error": msg }));
        }
        let too_costly = |capacity| {
            let body = headers::too_costly_body(&l.name, cost, capacity);
            bytes_response(413, "application/json", body, &[])
        };
        if let Some(p) = l.params_for(&k).filter(|p| cost > p.capacity()) {
            // A shadow limit too: no cost above its capacity is ever tracked.
            return too_costly(p.capacity());
        }
        let charged = [Charged {
            limit: l,
            key: KeyOf::Given(&k),
        }];
        let m = &self.node.metrics;
        let limited = || {
            m.rate_limited_total
                .with_label_values(&["admin:consume", &l.name])
                .inc()
        };
        let policy =
            |own: Option<&Own>| rt.policy_for(li, own.map(|o| &o.spec.params)).into_owned();
        let mut result = ChargeResult::default();
        match decision::decide(&self.node.store, &charged, cost, false, &mut result) {
            Verdict::Pass { report, own, .. } => {
                let d = &result.decisions[0];
                if d.allowed {
                    m.tokens_consumed_total
                        .with_label_values(&[&l.name])
                        .inc_by(cost);
                } else {
                    limited();
                }
                consumed(&l.name, d, report.map(|_| policy(own)))
            }
            Verdict::Limited { at, own, .. } => {
                let d = result.decisions[at];
                limited();
                let reject = &rt.config.limit(li).reject;
                bytes_response(
                    reject.status,
                    "application/json",
                    headers::rejection_body(&l.name, &reject.message, &d),
                    &headers::rejection_headers(&l.name, &policy(own), &d),
                )
            }
            Verdict::Denied { .. } => {
                bytes_response(403, "application/json", headers::denied_body(&l.name), &[])
            }
            // A given key needs no building.
            Verdict::BadKey(e) => json_response(400, &json!({"error": e.to_string()})),
            Verdict::TooCostly { capacity, .. } => too_costly(capacity),
        }
    }

    fn reload(&self) -> Response<Vec<u8>> {
        match self.node.reload() {
            Ok(s) => json_response(
                200,
                &json!({"status": "reloaded", "limits_rebased": s.limits_rebased,
                        "limits_removed": s.limits_removed}),
            ),
            Err(e) => {
                let errors: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
                json_response(
                    400,
                    &json!({"error": "invalid config; the running config is unchanged", "errors": errors}),
                )
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            let req = session.req_header();
            if req.method == http::Method::GET && req.uri.path() == "/" {
                return status_page::login();
            }
            return bytes_response(
                401,
                "application/json",
                json!({ "error": token_refusal(session) })
                    .to_string()
                    .into_bytes(),
                &[("www-authenticate", "Bearer".to_string())],
            );
        }
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let q = query.as_deref();
        match (method.as_str(), path.as_str()) {
            ("GET", "/health") => self.health(),
            ("GET", "/metrics") => self.metrics(),
            ("GET", "/rating") => self.rating(q),
            ("POST", "/consume") => self.consume(q),
            ("POST", "/reload") => self.reload(),
            ("GET", "/config") => json_response(200, &self.node.runtime().config.masked_json()),
            ("GET", "/buckets") => buckets::buckets(&self.node, q),
            ("POST", "/reset") => match self.limit_args(q) {
                Ok((li, k, _)) => reset::reset(&self.node, li, &k).await,
                Err((status, body)) => json_response(status, &body),
            },
            ("GET", "/") => {
                status_page::page(&status::status(&self.node), &status::tops(&self.node))
            }
            ("GET", "/status") => json_response(200, &status::status(&self.node)),
            (
                _,
                "/health" | "/metrics" | "/rating" | "/consume" | "/reload" | "/config"
                | "/buckets" | "/reset" | "/" | "/status",
            ) => json_response(
                405,
                &json!({"error": format!("method {method} not allowed on {path}")}),
            ),
            _ => json_response(
                404,
                &json!({"error": "not found", "endpoints": ["GET /health", "GET /metrics", "GET /rating",
                        "POST /consume", "POST /reload", "GET /config", "GET /buckets", "POST /reset", "GET /", "GET /status"]}),
            ),
        }
    }
}

/// The 200 of `/consume`: the decision and its rate-limit headers (`policy`: none for an
/// unlimited key, which is not charged and has nothing to report).
fn consumed(limit: &str, d: &Decision, policy: Option<String>) -> Response<Vec<u8>> {
    let Some(policy) = policy else {
        return json_response(200, &json!({"allowed": true, "unlimited": true}));
    };
    let extra = [
        ("ratelimit-policy", policy),
        ("ratelimit", headers::ratelimit_value(limit, d)),
    ];
    let body = json!({"allowed": true, "remaining": d.remaining, "shadow_limited": !d.allowed});
    bytes_response(
        200,
        "application/json",
        body.to_string().into_bytes(),
        &extra,
    )
}
