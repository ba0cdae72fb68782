//! The responses the gateway writes itself, in JSON: from `request_filter` (400, 404, 413,
//! 429; [`respond`]), with whether the connection stays alive after one (a request body small
//! enough to drain, up to `DRAIN_LIMIT`, keeps it; a larger or chunked one closes it), and from
//! `fail_to_proxy` (the status of a failed request, [`failure_answer`], and its header,
//! [`json_header`]). The bodies are [`headers`](super::headers)'.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

/// Request bodies larger than this are not drained after a 429: the connection closes instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The header of a JSON response the gateway writes itself. Its names are spelled as the
/// RateLimit draft and RFC 9110 spell them with `preserve_case`, and lower case (pingora's
/// title case for the standard ones) without, like the upstream's responses.
pub(super) fn json_header(
    status: u16,
    len: usize,
    extra: &[(&'static str, String)],
    preserve_case: bool,
) -> Result<ResponseHeader> {
    let hint = Some(2 + extra.len());
    let mut h = if preserve_case {
        ResponseHeader::build(status, hint)?
    } else {
        ResponseHeader::build_no_case(status, hint)?
    };
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", len.to_string())?;
    for (name, value) in extra {
        h.insert_header(*name, value.as_str())?;
    }
    Ok(h)
}

/// Writes a complete response from `request_filter` and keeps the connection alive when the
/// request body is small enough to drain. `preserve_case` is the request's config's
/// `preserve_header_case` (see [`json_header`]).
pub(super) async fn respond(
    session: &mut Session,
    status: u16,
    extra: &[(&'static str, String)],
    body: Vec<u8>,
    preserve_case: bool,
) -> Result<()> {
    let h = json_header(status, body.len(), extra, preserve_case)?;
    let req = session.req_header();
    let declared = req
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = req.headers.contains_key("transfer-encoding");
    if chunked || declared.is_some_and(|n| n > DRAIN_LIMIT) {
        session.set_keepalive(None);
    } else {
        // pingora closes a connection answered before its request body was read; a small
        // body is drained instead when the session is reused, so keep-alive survives.
        session.set_close_on_response_before_downstream_finish(false);
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// The status and message `fail_to_proxy` answers a failed request with: 503 when no server
/// of the pool is healthy, 504 for an upstream timeout, 502 for another upstream failure, 400
/// for a bad request, 500 for an internal error, and 0 (nothing to write) when the downstream
/// connection is gone.
pub(super) fn failure_answer(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        ErrorType::HTTPStatus(503) => (503, "no healthy upstream server"),
        ErrorType::HTTPStatus(c) => (*c, "request failed"),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            (504, "upstream timed out")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream connection failed"),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    (0, "")
                }
                _ => (400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal error"),
        },
    }
}
