//! `rating-api`: the example upstream that tollgate's demo and integration tests proxy to.
//!
//! A deliberately small HTTP/1.1 server written by hand on tokio, so that what the proxy sends
//! is what the upstream sees: every response echoes the request exactly as received (method,
//! raw target, header names and order, body, TCP peer). It must never panic on input: bad
//! requests get 400, oversized headers 431, and the connection is closed.
//!
//! Endpoints: `GET /health`, `GET|POST /rating/ITEM`, `GET /slow?ms=N`, `GET /status/CODE`
//! (`?ms=N`: after a delay), `GET /big?bytes=N`, `GET|POST /v1/complete` (an AI call: answers
//! after `?ms=N` with the tokens it "used" in `x-usage-tokens`, `?tokens=N` or one per 4 bytes
//! of the body, at least 1), `GET /inflight` (below), and a catch-all echo for everything
//! else.
//!
//! `GET /inflight` answers `{"in_flight": N, "max": M}`: the requests being served now, every
//! endpoint's but its own (counted from the moment a request has been read until its response
//! is ready to be written, so a `/slow?ms=200` counts for 200 ms; a proxy holds a request's
//! slot from before the first moment until after the second), and the most served at once since the
//! start or the last reset; `?reset=1` answers the same and then starts the max again from the
//! requests in flight now, so that polling with it gives the exact peak of each interval. The
//! accuracy script (`scripts/accuracy.py`) measures concurrency limits with it.

#[path = "rating_api/wire.rs"]
mod wire;

use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wire::{read_request, Reader, Reject, Request, SERVED_ON};

/// Request line plus headers (and, separately, chunked trailers) may not exceed this.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies up to this size are echoed as text; larger ones only by length.
const MAX_ECHO_BODY: usize = 64 * 1024;
const MAX_SLOW_MS: u64 = 60_000;
const MAX_BIG_BYTES: usize = 64 * 1024 * 1024;

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// What to send back: a status and a JSON body, or `/big`'s generated body.
enum Reply {
    Json(u16, Value),
    /// JSON with extra response headers.
    JsonWith(u16, Value, Vec<(&'static str, String)>),
    Big(usize),
}

/// The response header in which `/v1/complete` reports the tokens a call used.
const USAGE_HEADER: &str = "x-usage-tokens";

/// The requests being served (low 32 bits) and the most at once since the last reset (high 32
/// bits), in one word, so that a reset never loses a peak that comes while it runs.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
const COUNT: u64 = u32::MAX as u64;

/// One request being served: counted in [`IN_FLIGHT`] until dropped.
struct Serving;

impl Serving {
    fn start() -> Serving {
        let _ = IN_FLIGHT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            let n = (w & COUNT) + 1;
            Some(((w >> 32).max(n) << 32) | n)
        });
        Serving
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `/inflight`: the requests served now and the most at once since the last reset; `reset`
/// starts the max again from those served now.
fn in_flight(reset: bool) -> Value {
    let w = if reset {
        let reset = |w: u64| Some(((w & COUNT) << 32) | (w & COUNT));
        IN_FLIGHT
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, reset)
            .unwrap_or_else(|w| w)
    } else {
        IN_FLIGHT.load(Ordering::SeqCst)
    };
    json!({"in_flight": w & COUNT, "max": w >> 32})
}

/// Sleeps for the request's `?ms=N` (capped), if any; returns the milliseconds slept.
async fn delay(req: &Request) -> u64 {
    let ms = req
        .query("ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_SLOW_MS);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    ms
}

/// FNV-1a: a stable hash, so an item's rating never changes between runs.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

async fn route(req: &Request, peer: SocketAddr) -> Reply {
    let echo = req.echo(peer);
    let path = req.target.split('?').next().unwrap_or_default();
    let get = req.method == "GET" || req.method == "HEAD";
    let item = path
        .strip_prefix("/rating/")
        .filter(|i| !i.is_empty() && !i.contains('/'));
    let invalid = |what: &str| Reply::Json(400, json!({"error": what, "request": echo}));
    match (get, req.method.as_str(), path, item) {
        (true, _, "/health", _) => Reply::Json(200, json!({"status": "ok"})),
        (true, _, "/inflight", _) => Reply::Json(200, in_flight(req.query("reset") == Some("1"))),
        (true, _, _, Some(item)) => {
            let h = fnv(item);
            let rating = 10 + h % 41; // 1.0 ..= 5.0 in tenths
            let votes = (h >> 16) % 10_000;
            Reply::Json(
                200,
                json!({"item": item, "rating": rating as f64 / 10.0, "votes": votes, "request": echo}),
            )
        }
        (_, "POST", _, Some(item)) => Reply::Json(
            200,
            json!({"item": item, "accepted": true, "request": echo}),
        ),
        (true, _, "/slow", _) => match req.query("ms").and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => {
                let ms = ms.min(MAX_SLOW_MS);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Reply::Json(200, json!({"slept_ms": ms, "request": echo}))
            }
            None => invalid("/slow needs ?ms=N"),
        },
        (true, _, "/big", _) => match req.query("bytes").and_then(|v| v.parse::<usize>().ok()) {
            Some(n) => Reply::Big(n.min(MAX_BIG_BYTES)),
            None => invalid("/big needs ?bytes=N"),
        },
        (true, _, p, _) if p.starts_with("/status/") => {
            match p["/status/".len()..].parse::<u16>() {
                Ok(code @ 200..=599) => {
                    let ms = delay(req).await;
                    Reply::Json(
                        code,
                        json!({"status": code, "slept_ms": ms, "request": echo}),
                    )
                }
                _ => invalid("/status/CODE needs a code from 200 to 599"),
            }
        }
        (_, "GET" | "HEAD" | "POST", "/v1/complete", _) => {
            let tokens = match req.query("tokens") {
                None => req.body_len.div_ceil(4).max(1),
                Some(t) => match t.parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => return invalid("/v1/complete?tokens=N needs a whole number"),
                },
            };
            let ms = delay(req).await;
            let body = json!({"usage": {"tokens": tokens}, "slept_ms": ms, "request": echo});
            Reply::JsonWith(200, body, vec![(USAGE_HEADER, tokens.to_string())])
        }
        _ => Reply::Json(200, json!({"request": echo})),
    }
}

/// Writes one response. 204 and 304 carry no body (HTTP forbids one); HEAD gets the headers
/// only. `/big` is streamed rather than built in memory.
async fn respond(
    s: &mut TcpStream,
    reply: Reply,
    head_only: bool,
    close: bool,
) -> std::io::Result<()> {
    const BIG_PREFIX: &[u8] = b"{\"data\":\"";
    const BIG_SUFFIX: &[u8] = b"\"}";
    let (code, body, big, extra) = match reply {
        Reply::Json(code, v) => (code, v.to_string().into_bytes(), None, Vec::new()),
        Reply::JsonWith(code, v, extra) => (code, v.to_string().into_bytes(), None, extra),
        Reply::Big(n) => (200, Vec::new(), Some(n), Vec::new()),
    };
    let no_body = code == 204 || code == 304;
    let len = big.map_or(body.len(), |n| BIG_PREFIX.len() + n + BIG_SUFFIX.len());
    let mut head = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    if !no_body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {len}\r\n"
        ));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if no_body || head_only {
        s.write_all(&out).await?;
        return s.flush().await;
    }
    match big {
        None => {
            out.extend_from_slice(&body);
            s.write_all(&out).await?;
        }
        Some(mut left) => {
            out.extend_from_slice(BIG_PREFIX);
            s.write_all(&out).await?;
            let xs = vec![b'x'; left.min(64 * 1024)];
            while left > 0 {
                let n = left.min(xs.len());
                s.write_all(&xs[..n]).await?;
                left -= n;
            }
            s.write_all(BIG_SUFFIX).await?;
        }
    }
    s.flush().await
}

async fn serve(stream: TcpStream, peer: SocketAddr) {
    let mut r = Reader {
        stream,
        buf: Vec::new(),
    };
    loop {
        let req = match read_request(&mut r).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(Reject(code, msg)) => {
                let reply = Reply::Json(code, json!({"error": msg}));
                let _ = respond(&mut r.stream, reply, false, true).await;
                // Lingering close: finish our side, then drain what the client is still
                // sending, so that closing does not reset the connection under our answer.
                let _ = r.stream.shutdown().await;
                let mut sink = [0u8; 16 * 1024];
                let drain = async { while matches!(r.stream.read(&mut sink).await, Ok(1..)) {} };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                return;
            }
        };
        let keep_alive = req.keep_alive();
        let head_only = req.method == "HEAD";
        let counted = (req.target.split('?').next() != Some("/inflight")).then(Serving::start);
        let reply = route(&req, peer).await;
        // Served once the answer is ready, before it is written: a proxy in front reads the
        // answer and may send the next request the moment the write is done, before this task
        // (on a busy machine, preempted right after its write) would count this one out.
        drop(counted);
        let sent = respond(&mut r.stream, reply, head_only, !keep_alive).await;
        if sent.is_err() || !keep_alive {
            return;
        }
    }
}

fn parse_args() -> Result<SocketAddr, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [] => "127.0.0.1:8000",
        [flag, addr] if flag == "--listen" => addr,
        _ => return Err("usage: rating-api [--listen ADDR]   (default 127.0.0.1:8000)".into()),
    };
    listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e}"))
}

#[tokio::main]
async fn main() {
    let addr = parse_args().unwrap_or_else(|e| {
        eprintln!("rating-api: {e}");
        std::process::exit(2);
    });
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("rating-api: cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    let local = listener.local_addr().unwrap_or(addr);
    let _ = SERVED_ON.set(local.to_string());
    // The handlers exist before the readiness line: a SIGTERM sent as soon as it is read is
    // a clean stop, not the default action.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "rating-api listening on {local}").and_then(|()| out.flush());
    drop(out);
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, peer));
                }
                // EMFILE and friends: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        () = accept => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    std::process::exit(0);
}
