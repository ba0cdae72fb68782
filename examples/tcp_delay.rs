//! `tcp_delay`: the TCP delay proxy of `tests/common/delay.rs` as a command, for scripts (the
//! accuracy run puts Redis 80 or 150 ms away with it, and stalls it).
//!
//! ```text
//! tcp_delay --listen 127.0.0.1:0 --target HOST:PORT --delay-ms N
//! ```
//!
//! Prints the address it listens on as the first line of stdout, then reads commands on stdin,
//! one a line, and answers each with one line, `ok` or `error: WHY`:
//!
//! | command | effect |
//! |---|---|
//! | `delay MS` | one-way delay of the bytes read from now on (a round trip gains twice that) |
//! | `hold` | stall every connection: bytes are kept, new connections wait unconnected |
//! | `release` | deliver what was held, in order; connect the waiting connections |
//! | `drop` | reset every connection, and new ones, until `release` |
//! | `stats` | `ok accepted=N waiting=N open=N read=N held=N forwarded=N` |
//! | `quit` | answer `ok` and exit (end of input does the same) |
//!
//! Build: `cargo build --release --example tcp_delay` (then `target/release/examples/tcp_delay`).

#[allow(dead_code)] // the tests use parts of it that the command does not
#[path = "../tests/common/delay.rs"]
mod delay;

use delay::DelayProxy;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: tcp_delay --listen ADDR --target HOST:PORT --delay-ms N";

struct Args {
    listen: SocketAddr,
    target: SocketAddr,
    one_way: Duration,
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut listen, mut target, mut delay_ms) = (None, None, None);
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{USAGE}\n(a flag without a value)"));
        };
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {value:?}: {e}"))?,
                );
            }
            "--target" => {
                let addr = value
                    .to_socket_addrs()
                    .map_err(|e| format!("--target {value:?}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--target {value:?}: no address"))?;
                target = Some(addr);
            }
            "--delay-ms" => {
                delay_ms = Some(parse_ms(value).map_err(|e| format!("--delay-ms: {e}"))?);
            }
            other => return Err(format!("{USAGE}\n(unknown flag {other:?})")),
        }
    }
    Ok(Args {
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        target: target.ok_or_else(|| format!("{USAGE}\n(--target is required)"))?,
        one_way: delay_ms.unwrap_or(Duration::ZERO),
    })
}

/// Milliseconds, possibly fractional (`12.5`).
fn parse_ms(text: &str) -> Result<Duration, String> {
    let ms: f64 = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a number of milliseconds: {e}"))?;
    if !(0.0..=3_600_000.0).contains(&ms) {
        return Err(format!("{text:?} is out of range (0 to 3600000 ms)"));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Carries out one command line: whether to quit, and the answer.
fn command(proxy: &DelayProxy, line: &str) -> Result<(bool, String), String> {
    let mut words = line.split_whitespace();
    let reply = |quit: bool| Ok((quit, "ok".to_string()));
    match (words.next(), words.next(), words.next()) {
        (Some("delay"), Some(ms), None) => {
            proxy.set_delay(parse_ms(ms)?);
            reply(false)
        }
        (Some("hold"), None, None) => {
            proxy.hold();
            reply(false)
        }
        (Some("release"), None, None) => {
            proxy.release();
            reply(false)
        }
        (Some("drop"), None, None) => {
            proxy.drop_connections();
            reply(false)
        }
        (Some("stats"), None, None) => {
            let s = proxy.stats();
            Ok((
                false,
                format!(
                    "ok accepted={} waiting={} open={} read={} held={} forwarded={}",
                    s.accepted, s.waiting, s.open, s.read_bytes, s.held_bytes, s.forwarded_bytes
                ),
            ))
        }
        (Some("quit"), None, None) => reply(true),
        _ => Err(format!(
            "unknown command {line:?} (delay MS, hold, release, drop, stats, quit)"
        )),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tcp_delay: {e}");
            return ExitCode::from(2);
        }
    };
    let proxy = match DelayProxy::start_on(args.listen, args.target, args.one_way) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("tcp_delay: listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let mut out = io::stdout().lock();
    if writeln!(out, "{}", proxy.addr())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let (quit, reply) =
            command(&proxy, &line).unwrap_or_else(|e| (false, format!("error: {e}")));
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() || quit {
            break;
        }
    }
    ExitCode::SUCCESS
}
