//! Reading one HTTP/1.1 request off a connection, by hand: the head, then a body by
//! `Content-Length` or chunked, with the checks that turn bad input into 400 or 431.

use super::{MAX_ECHO_BODY, MAX_HEAD};
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request could not be read: answered with this status, then the connection closes.
pub(crate) struct Reject(pub(crate) u16, pub(crate) String);

/// The address this server listens on, echoed as `server` so that tests can see which server
/// of a pool answered.
pub(crate) static SERVED_ON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn bad(msg: impl Into<String>) -> Reject {
    Reject(400, msg.into())
}

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) version: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) body_len: u64,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_string();
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub(crate) fn keep_alive(&self) -> bool {
        self.version == "HTTP/1.1" && !self.has_token("connection", "close")
    }

    pub(crate) fn echo(&self, peer: SocketAddr) -> Value {
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

    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A connection's read side: a buffer that survives between pipelined requests.
pub(crate) struct Reader {
    pub(crate) stream: TcpStream,
    pub(crate) buf: Vec<u8>,
}

impl Reader {
    /// Reads more bytes; `Ok(false)` at EOF.
    pub(crate) async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads through the next blank line (`\r\n\r\n`), at most `limit` bytes, and returns the
    /// text before it. `Ok(None)`: clean EOF before any byte.
    pub(crate) async fn head(
        &mut self,
        limit: usize,
        status: u16,
    ) -> Result<Option<Vec<u8>>, Reject> {
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
    pub(crate) async fn line(&mut self) -> Result<String, Reject> {
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
    pub(crate) async fn body(&mut self, mut n: u64, keep: &mut Vec<u8>) -> Result<(), Reject> {
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

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses the request line and headers.
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, Reject> {
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
pub(crate) async fn read_request(r: &mut Reader) -> Result<Option<Request>, Reject> {
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
