//! The pingora proxy hooks ([`Gateway`]) and their per-request state ([`Ctx`], [`Outcome`]):
//! route, key, charge, then answer or forward.
//!
//! `request_filter` does all limiting before any upstream work: it finds the client's IP,
//! normalizes the path, matches a route, builds each limit's key, and charges all the route's
//! limits at once (`limits::decide`). A request refused or malformed is answered here (`answer`,
//! `reject_bad`: 400, 404, 413, or 429 with the IETF headers, in JSON, see `respond`) without
//! touching the upstream. Allowed requests get `X-Forwarded-For`/`X-Forwarded-Proto` on the
//! way up (`forwarding`) and the `RateLimit` headers on the way down (`header_case`).
//! `upstream_peer` and `fail_to_connect` pick the pool's server (the next one after a failed
//! connect), `fail_to_proxy` turns upstream failures into JSON 502/503/504, and `logging`
//! records metrics and the access log line.

use crate::app::node::{Node, Runtime};
use crate::config::{Config, RouteId};
use crate::http::forwarding::{
    forwarded_for, peer_ip, set_forwarded, single_length, Forwarded, X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
};
use crate::http::header_case::{rate_fields, set_response_fields};
use crate::http::headers;
use crate::http::limits::{self, Refused, Reported};
use crate::http::respond::{failure_answer, json_header, respond};
use crate::request::client_ip;
use crate::request::key::RequestView;
use crate::request::{path, route};
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a keep-alive connection may wait for (the rest of) its next request head.
const KEEPALIVE_IDLE_SECS: u64 = 60;

/// How a request ended, as counted in `requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Limited,
    ShadowLimited,
    NoRoute,
    UpstreamError,
    BadRequest,
    /// A key denied by a limit's override (403).
    Denied,
}

// `requests_total` handles are kept per outcome, by discriminant.
const _: () = assert!(Outcome::Denied as usize + 1 == crate::app::metrics::OUTCOMES);

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::NoRoute => "no_route",
            Outcome::UpstreamError => "upstream_error",
            Outcome::BadRequest => "bad_request",
            Outcome::Denied => "denied",
        }
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    runtime: Option<Arc<Runtime>>,
    route: Option<RouteId>,
    client_ip: IpAddr,
    outcome: Outcome,
    /// What the limits report on the response and in the access log.
    reported: Reported,
    /// `X-Forwarded-For` for the upstream (see [`forwarded_for`]); taken when it is sent.
    xff: String,
    /// The peer is one of `trusted_proxies`.
    trusted_peer: bool,
    status: u16,
    /// Connection attempts to other servers of the pool after a failed connect.
    connect_retries: usize,
}

/// The proxy service.
pub struct Gateway {
    pub node: Arc<Node>,
}

impl Gateway {
    async fn reject_bad(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        msg: &str,
    ) -> Result<bool> {
        ctx.outcome = Outcome::BadRequest;
        ctx.status = status;
        let body = headers::error_body(status, msg);
        respond(session, status, &[], body, preserve_case(ctx)).await?;
        Ok(true)
    }
}

/// Finds the client's IP (`ctx.client_ip`, through `trusted_proxies`), whether the peer is a
/// trusted proxy (`ctx.trusted_peer`), and writes `X-Forwarded-For` into `ctx.xff` now, as the
/// upstream will get it: the client IP of the keys is the same text when the client is the
/// peer (no trusted proxy in between). Returns the address that ends that chain and where it
/// starts in `ctx.xff`.
fn note_client(session: &Session, ctx: &mut Ctx, cfg: &Config) -> (IpAddr, usize) {
    let peer = peer_ip(session);
    let req = session.req_header();
    // Looked up only if read: `client_ip` reads the chain from a trusted peer alone.
    let chain = std::iter::once(&req.headers)
        .flat_map(|h| h.get_all(&X_FORWARDED_FOR))
        .map(|v| v.as_bytes());
    ctx.client_ip = client_ip::client_ip(
        peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        chain,
        &cfg.trusted_proxies,
    );
    ctx.trusted_peer = peer.is_some_and(|p| client_ip::is_trusted(p, &cfg.trusted_proxies));
    let forwarded_ip = peer.unwrap_or(ctx.client_ip);
    let ip_at = forwarded_for(&mut ctx.xff, req, ctx.trusted_peer, forwarded_ip);
    (forwarded_ip, ip_at)
}

/// Whether this request's config asks to keep header-name case (see [`set_response_fields`]).
fn preserve_case(ctx: &Ctx) -> bool {
    (ctx.runtime.as_ref()).is_some_and(|rt| rt.config.preserve_header_case)
}

impl Gateway {
    /// A request answered with one of its route's `refund_statuses` gets its cost back on
    /// every limit it was charged to (gateway-made answers too: a 502 or 504 when the
    /// upstream failed), before the answer goes out, so that a client's next request finds
    /// it. Only routes with `refund_statuses` note what was charged.
    fn refund(&self, ctx: &mut Ctx, status: u16) {
        let (Some(rt), Some(ri)) = (ctx.runtime.as_ref(), ctx.route) else {
            return;
        };
        let route = rt.config.route(ri);
        if !route.refund.covers(status) {
            return;
        }
        let (m, rm) = (&self.node.metrics, rt.request_metrics(&self.node.metrics));
        (ctx.reported.kept).refund(&self.node, |at, tokens| {
            rm.refunded(m, route.limits[at]).inc_by(tokens)
        });
    }

    /// Answers what the gateway must answer itself (400, 413, 429).
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rt: &Runtime,
        ri: RouteId,
        refused: Refused,
    ) -> Result<bool> {
        let route = rt.config.route(ri);
        match refused {
            Refused::BadKey(e) => self.reject_bad(session, ctx, 400, &e.to_string()).await,
            Refused::TooCostly { at, capacity, cost } => {
                let l = rt.limit_spec(route.limits[at]);
                ctx.status = 413;
                ctx.outcome = Outcome::Limited;
                let body = headers::too_costly_body(&l.name, cost, capacity);
                respond(session, 413, &[], body, preserve_case(ctx)).await?;
                Ok(true)
            }
            Refused::Denied(at) => {
                let l = rt.limit_spec(route.limits[at]);
                ctx.status = 403;
                ctx.outcome = Outcome::Denied;
                let body = headers::denied_body(&l.name);
                respond(session, 403, &[], body, preserve_case(ctx)).await?;
                Ok(true)
            }
            Refused::Limited {
                at,
                decision,
                params,
            } => {
                let li = route.limits[at];
                let limit = rt.limit_spec(li);
                let reject = &rt.config.limit(li).reject;
                ctx.outcome = Outcome::Limited;
                ctx.status = reject.status;
                let policy = rt.policy_for(li, params.as_ref());
                let extra = headers::rejection_headers(&limit.name, &policy, &decision);
                let body = headers::rejection_body(&limit.name, &reject.message, &decision);
                respond(session, reject.status, &extra, body, preserve_case(ctx)).await?;
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules. pingora's default set is a response-compression module, disabled,
    /// that is still built and consulted for every request (an allocation and a virtual call
    /// per response phase); the gateway compresses nothing, so it installs none.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Names' spelling recorded only to be kept (`preserve_header_case`; pingora-core patch
    /// 11, vendor/README.md); asked before each request is read: a reload applies at once.
    fn keep_header_case(&self) -> bool {
        self.node.preserve_header_case()
    }

    /// A connection waiting for a request when a shutdown or upgrade starts gets half the
    /// grace period, at most 1 s, to send it (pingora-proxy patch 14, vendor/README.md).
    fn shutdown_request_wait(&self) -> Option<Duration> {
        let grace = Duration::from_secs(self.node.runtime().config.grace_period_seconds);
        Some((grace / 2).min(Duration::from_secs(1)))
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            runtime: None,
            route: None,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            outcome: Outcome::Allowed,
            reported: Reported::default(),
            xff: String::new(),
            trusted_peer: false,
            status: 0,
            connect_retries: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // After an HTTP/1.1 request without a Keep-Alive header pingora's keep-alive wait is
        // infinite, and it also covers reading the next request head: bound it.
        if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(KEEPALIVE_IDLE_SECS));
        }
        let rt = self.node.runtime();
        ctx.runtime = Some(rt.clone());
        let cfg = &rt.config;
        let (forwarded_ip, ip_at) = note_client(session, ctx, cfg);
        let req = session.req_header();

        // Route on the target as the upstream will read it: pingora's `req.uri` holds no
        // authority for an absolute-form target, and `/` for a target of no known form.
        let target = match path::split_target(req.raw_path()) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                return self.reject_bad(session, ctx, 400, &msg).await;
            }
        };
        let norm = match path::normalize(&target.path) {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                return self.reject_bad(session, ctx, 400, &msg).await;
            }
        };
        let method = req.method.as_str();
        let (host, has_host) = route::routing_host(cfg, &req.headers, target.authority.as_deref());
        if host.is_none() && req.version == http::Version::HTTP_11 && !has_host {
            return self
                .reject_bad(session, ctx, 400, "HTTP/1.1 request without Host")
                .await;
        }
        let Some(ri) = route::find(cfg, method, &norm, host.as_deref()) else {
            ctx.outcome = Outcome::NoRoute;
            ctx.status = 404;
            let body = headers::error_body(404, "no route matches this request");
            respond(session, 404, &[], body, preserve_case(ctx)).await?;
            return Ok(true);
        };
        ctx.route = Some(ri);
        let route = cfg.route(ri);
        let cost = match route::request_cost(route.cost, &req.headers) {
            Ok(cost) => cost,
            Err(e) => {
                let msg = e.to_string();
                return self.reject_bad(session, ctx, e.status(), &msg).await;
            }
        };
        if route.limits.is_empty() {
            return Ok(false);
        }
        let view = RequestView {
            method,
            path: &norm,
            query: req.uri.query(),
            headers: &req.headers,
            client_ip: ctx.client_ip,
            client_ip_text: (forwarded_ip == ctx.client_ip).then_some(&ctx.xff[ip_at..]),
            route: &route.name,
        };
        match limits::decide(&self.node, &rt, ri, &view, cost, &mut ctx.reported) {
            Ok(shadow_limited) => {
                if shadow_limited {
                    ctx.outcome = Outcome::ShadowLimited;
                }
                Ok(false)
            }
            Err(refused) => self.answer(session, ctx, &rt, ri, refused).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(rt), Some(ri)) = (ctx.runtime.as_ref(), ctx.route) else {
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let route = rt.config.route(ri);
        let up = rt.config.upstream(route.upstream);
        let pool = rt.pool(route.upstream);
        let Some(addr) = pool.next_server() else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no upstream server available");
        };
        let mut peer = HttpPeer::new(addr, up.tls, up.sni.clone());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        // A connection given back to the pool is checked when a request takes it, not watched
        // by a task of its own while idle, nor asked for its peer's address (pingora-core
        // patches 12 and 17, vendor/README.md: the pool keys it by this peer, address and all).
        peer.options.watch_idle_connections = false;
        peer.options.check_fd_match_on_reuse = false;
        // The response's names' spelling recorded only to be kept (see `keep_header_case`).
        peer.options.keep_h1_response_header_case = rt.config.preserve_header_case;
        // Certificates and host names verified (pingora's defaults); a private CA replaces the roots.
        peer.options.ca = pool.ca.clone();
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the server: try the next healthy one of the pool (each other server
        // at most once), so a server that died since its last health check costs no request.
        let others = match (ctx.runtime.as_ref(), ctx.route) {
            (Some(rt), Some(ri)) => rt
                .pool(rt.config.route(ri).upstream)
                .servers
                .len()
                .saturating_sub(1),
            _ => 0,
        };
        if ctx.connect_retries < others {
            ctx.connect_retries += 1;
            tracing::debug!(peer = %peer, error = %e, "upstream connect failed; trying the next server");
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let trusted = ctx.trusted_peer;
        let mut xff = std::mem::take(&mut ctx.xff);
        if xff.is_empty() {
            // A retry on a new connection: the first attempt took it.
            let peer = peer_ip(session).unwrap_or(ctx.client_ip);
            forwarded_for(&mut xff, upstream_request, trusted, peer);
        }
        let single_length = single_length(upstream_request);
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let keep_proto = trusted && upstream_request.headers.contains_key(&X_FORWARDED_PROTO);
        let forwarded = Forwarded {
            xff: HeaderValue::try_from(xff)
                .or_else(|_| Error::e_explain(ErrorType::InternalError, "X-Forwarded-For"))?,
            length: single_length,
            proto: (!keep_proto).then_some(if tls { "https" } else { "http" }),
        };
        set_forwarded(upstream_request, forwarded, preserve_case(ctx))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An interim head (`100 Continue`, `103 Early Hints`) neither settles the response
        // costs nor carries the rate-limit fields: the final one does (`101` is final).
        let status = upstream_response.status;
        let interim = status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS;
        if ctx.reported.unsettled.is_some() && !interim {
            if let (Some(rt), Some(ri)) = (ctx.runtime.as_ref(), ctx.route) {
                limits::settle(&self.node, rt, ri, upstream_response, &mut ctx.reported);
            }
        }
        let preserve = preserve_case(ctx);
        let rate = (!interim).then(|| ctx.reported.rate.take()).flatten();
        let rate_headers = (ctx.runtime.as_deref())
            .and_then(|rt| rate_fields(session, upstream_response, rt, rate?, preserve));
        let route = (ctx.runtime.as_ref()).and_then(|rt| Some(rt.config.route(ctx.route?)));
        // Response costs' headers to strip (most routes have none).
        let strip = (route.filter(|r| !r.response_costs.is_empty()))
            .into_iter()
            .flat_map(limits::stripped);
        set_response_fields(upstream_response, rate_headers, strip, preserve)?;
        ctx.status = upstream_response.status.as_u16();
        if !ctx.reported.kept.is_empty() {
            self.refund(ctx, ctx.status);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (code, msg) = failure_answer(e);
        if code >= 500 || ctx.outcome == Outcome::Allowed {
            ctx.outcome = if code >= 500 {
                Outcome::UpstreamError
            } else {
                Outcome::BadRequest
            };
        }
        ctx.status = code;
        if !ctx.reported.kept.is_empty() {
            self.refund(ctx, code);
        }
        if code > 0 {
            let body = headers::error_body(code, msg);
            let written = async {
                let h = json_header(code, body.len(), &[], preserve_case(ctx))?;
                session.write_response_header(Box::new(h), false).await?;
                session
                    .write_response_body(Some(Bytes::from(body)), true)
                    .await
            }
            .await;
            if let Err(err) = written {
                tracing::debug!(error = %err, "could not write the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        let m = &self.node.metrics;
        let outcome = ctx.outcome.as_str();
        let elapsed = ctx.start.elapsed();
        let route = match (ctx.runtime.as_ref(), ctx.route) {
            (Some(rt), Some(ri)) => {
                let rm = rt.request_metrics(m);
                rm.requests(m, ri, ctx.outcome as usize, outcome).inc();
                rm.duration(m, ri).observe(elapsed.as_secs_f64());
                rt.config.route(ri).name.as_str()
            }
            _ => {
                m.requests_total.with_label_values(&["none", outcome]).inc();
                m.request_duration_seconds
                    .with_label_values(&["none"])
                    .observe(elapsed.as_secs_f64());
                "none"
            }
        };
        if ctx.runtime.as_ref().is_some_and(|rt| rt.config.access_log) {
            tracing::info!(
                target: "tollgate::access",
                route = %route,
                outcome = %outcome,
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                client_ip = %ctx.client_ip,
                method = %session.req_header().method,
                key = %ctx.reported.key_fp.map_or_else(|| "-".to_string(), |f| f.to_string()),
                "request"
            );
        }
    }
}
