//! `rating-api`: the example upstream that tollgate's demo and integration tests proxy to.
//!
//! A deliberately small HTTP/1.1 server written by hand on tokio, so that what the proxy sends
//! is what the upstream sees: every response echoes the request exactly as received (method,
//! raw target, header names and order, body, TCP peer). It must never panic on input: bad
//! requests get 400, oversized headers 431, and the connection is closed.
//!
//! Endpoints: `GET /health`, `GET|POST /rating/ITEM`, `GET /slow?ms=N`, `GET /status/CODE`,
//! `GET /big?bytes=N`, and a catch-all echo for everything else.

use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request line plus headers (and, separately, chunked trailers) may not exceed this.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies up to this size are echoed as text; larger ones only by length.
const MAX_ECHO_BODY: usize = 64 * 1024;
const MAX_SLOW_MS: u64 = 60_000;
const MAX_BIG_BYTES: usize = 64 * 1024 * 1024;

/// Why a request could not be read: answered with this status, then the connection closes.
struct Reject(u16, String);

/// The address this server listens on, echoed as `server` so that tests can see which server
/// of a pool answered.
static SERVED_ON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn bad(msg: impl Into<String>) -> Reject {
    Reject(400, msg.into())
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_len: u64,
}

impl Request {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_string();
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        self.version == "HTTP/1.1" && !self.has_token("connection", "close")
    }

    fn echo(&self, peer: SocketAddr) -> Value {
        let body = (self.body_len <= MAX_ECHO_BODY as u64)
            .then(|| String::from_utf8_lossy(&self.body).into_owned());
        json!({
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": self.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body_len": self.body_len,
            "body": body,
            "peer": peer.to_string(),
            "server": SERVED_ON.get().map_or("", String::as_str),
        })
    }

    fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A connection's read side: a buffer that survives between pipelined requests.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads more bytes; `Ok(false)` at EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads through the next blank line (`\r\n\r\n`), at most `limit` bytes, and returns the
    /// text before it. `Ok(None)`: clean EOF before any byte.
    async fn head(&mut self, limit: usize, status: u16) -> Result<Option<Vec<u8>>, Reject> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                if i + 4 > limit {
                    return Err(Reject(status, "header section too large".into()));
                }
                let head = self.buf[..i].to_vec();
                self.buf.drain(..i + 4);
                return Ok(Some(head));
            }
            if self.buf.len() >= limit {
                return Err(Reject(status, "header section too large".into()));
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) if self.buf.is_empty() => return Ok(None),
                _ => return Err(bad("connection closed inside the header section")),
            }
        }
    }

    /// One `\r\n`-terminated line of at most 4 KiB (chunk sizes).
    async fn line(&mut self) -> Result<String, Reject> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err(bad("chunk size line too long"));
            }
            if !matches!(self.fill().await, Ok(true)) {
                return Err(bad("connection closed inside a chunk size line"));
            }
        }
    }

    /// Reads `n` body bytes, keeping the first `MAX_ECHO_BODY + 1` in `keep`.
    async fn body(&mut self, mut n: u64, keep: &mut Vec<u8>) -> Result<(), Reject> {
        while n > 0 {
            if self.buf.is_empty() && !matches!(self.fill().await, Ok(true)) {
                return Err(bad("connection closed inside the body"));
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let room = (MAX_ECHO_BODY + 1).saturating_sub(keep.len()).min(take);
            keep.extend_from_slice(&self.buf[..room]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses the request line and headers.
fn parse_head(head: &[u8]) -> Result<Request, Reject> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("malformed request line"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(format!("unsupported version {version:?}")));
    }
    let mut headers = Vec::new();
    for l in lines {
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| bad("header line without a colon"))?;
        if !is_token(name) {
            return Err(bad(format!("invalid header name {name:?}")));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(bad("invalid header value"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(Request {
        method: method.into(),
        target: target.into(),
        version: version.into(),
        headers,
        body: Vec::new(),
        body_len: 0,
    })
}

/// Reads one full request; `Ok(None)` when the client closed cleanly between requests.
async fn read_request(r: &mut Reader) -> Result<Option<Request>, Reject> {
    let Some(head) = r.head(MAX_HEAD, 431).await? else {
        return Ok(None);
    };
    let mut req = parse_head(&head)?;
    let te: Vec<&str> = req.header("transfer-encoding").collect();
    let cl: Vec<&str> = req.header("content-length").collect();
    let chunked = match te.as_slice() {
        [] => false,
        _ if !cl.is_empty() => return Err(bad("both Transfer-Encoding and Content-Length")),
        _ if req.version == "HTTP/1.0" => return Err(bad("Transfer-Encoding in HTTP/1.0")),
        _ => {
            let codings = te.join(",");
            let last = codings.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(bad("request Transfer-Encoding must end with chunked"));
            }
            true
        }
    };
    let length = match cl.as_slice() {
        [] => 0,
        [first, rest @ ..] if rest.iter().all(|v| v == first) => {
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("invalid Content-Length"));
            }
            first
                .parse::<u64>()
                .map_err(|_| bad("invalid Content-Length"))?
        }
        _ => return Err(bad("conflicting Content-Length headers")),
    };
    let expects_continue = req.version == "HTTP/1.1" && req.has_token("expect", "100-continue");
    if expects_continue && (chunked || length > 0) {
        let _ = r.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = r.line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16)
                .ok()
                .filter(|_| !size.is_empty() && !size.starts_with('+'))
                .ok_or_else(|| bad(format!("invalid chunk size {size:?}")))?;
            if size == 0 {
                break;
            }
            r.body(size, &mut body).await?;
            req.body_len = req.body_len.saturating_add(size);
            if !r.line().await?.is_empty() {
                return Err(bad("chunk data not followed by CRLF"));
            }
        }
        // Trailers: lines until a blank one. Put the CRLF of the last-chunk line back so that
        // "no trailers" is simply the blank line right after it.
        r.buf.splice(0..0, *b"\r\n");
        r.head(MAX_HEAD, 400).await?;
    } else {
        r.body(length, &mut body).await?;
        req.body_len = length;
    }
    req.body = body;
    Ok(Some(req))
}

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
    Big(usize),
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
                Ok(code @ 200..=599) => Reply::Json(code, json!({"status": code, "request": echo})),
                _ => invalid("/status/CODE needs a code from 200 to 599"),
            }
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
    let (code, body, big) = match reply {
        Reply::Json(code, v) => (code, v.to_string().into_bytes(), None),
        Reply::Big(n) => (200, Vec::new(), Some(n)),
    };
    let no_body = code == 204 || code == 304;
    let len = big.map_or(body.len(), |n| BIG_PREFIX.len() + n + BIG_SUFFIX.len());
    let mut head = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    if !no_body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {len}\r\n"
        ));
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
        let reply = route(&req, peer).await;
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
