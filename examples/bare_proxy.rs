//! `bare_proxy`: the floor for `scripts/bench.sh`, a pingora 0.9 HTTP proxy with nothing of
//! tollgate in it: no limiter, no routing, no admin or background service, no access log.
//! Every request goes to the one upstream given on the command line, over the keep-alive
//! connections pingora pools by default. What tollgate costs on top of this is what tollgate
//! adds to pingora; what this costs above nginx is pingora's own share. It is built with the
//! same choices tollgate makes for pingora (the library's allocator, no downstream modules, no
//! work stealing between threads, header names read without their spelling as tollgate reads
//! them by default, idle upstream connections checked when taken rather than watched, the
//! patched pingora crates of `vendor/`), so that the two
//! differ only by what tollgate does per request.
//!
//! ```text
//! bare_proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS]     e.g. bare_proxy 127.0.0.1:8081 127.0.0.1:8080 1
//! ```
//!
//! `THREADS` (default 1) is pingora's `ServerConf::threads`, the worker threads of the one
//! proxy service. Stops on SIGTERM or SIGINT, as any pingora server.
//!
//! Build: `cargo build --release --example bare_proxy` (then `target/release/examples/bare_proxy`).

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use std::net::SocketAddr;
// The allocator tollgate ships with (set by its library).
use std::process::ExitCode;
use tollgate as _;

const USAGE: &str = "usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [THREADS]";

/// Sends every request to `upstream`, in plain HTTP.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    /// None, as tollgate (pingora's default is a disabled compression module).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// No, as tollgate by default (header names written in lower case, pingora-core patch 11).
    fn keep_header_case(&self) -> bool {
        false
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.keep_h1_response_header_case = false;
        // As tollgate (pingora-core patch 12).
        peer.options.watch_idle_connections = false;
        Ok(Box::new(peer))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [listen, upstream] => Some((listen, upstream, "1")),
        [listen, upstream, threads] => Some((listen, upstream, threads.as_str())),
        _ => None,
    }
    .and_then(|(listen, upstream, threads)| {
        Some((
            listen.parse::<SocketAddr>().ok()?,
            upstream.parse::<SocketAddr>().ok()?,
            threads.parse::<usize>().ok().filter(|&t| t > 0)?,
        ))
    });
    let Some((listen, upstream, threads)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };

    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // Per listen port, so that several instances never share the defaults' /tmp files.
        pid_file: format!("/tmp/bare-proxy-{}.pid", listen.port()),
        upgrade_sock: format!("/tmp/bare-proxy-{}.upgrade.sock", listen.port()),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Bare { upstream },
        "bare proxy",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run(RunArgs::default());
    ExitCode::SUCCESS
}
