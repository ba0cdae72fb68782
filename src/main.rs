//! The `tollgate` command: `run`, `check`.

use clap::{Parser, Subcommand};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tollgate::clock::SystemClock;
use tollgate::config::Config;
use tollgate::node::{Node, Runtime};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "A rate-limiting reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/tollgate.json")]
        config: PathBuf,
        /// Graceful upgrade: take the listening sockets over from the running process with the
        /// same config (start this, then send SIGQUIT to the old process).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Read bucket state from Redis: list buckets, or explain one (--limit and --key).
    Inspect {
        /// Config file (its redis section says where to look).
        #[arg(short, long, default_value = "conf/tollgate.json")]
        config: PathBuf,
        /// Only this limit.
        #[arg(long)]
        limit: Option<String>,
        /// One key, as the limit builds it (composite parts joined with '|').
        #[arg(long)]
        key: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Most buckets to list.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Validate a config file: exit 0 with a summary, or 2 with every error.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "conf/tollgate.json")]
        config: PathBuf,
    },
}

/// Loads and compiles a config, printing every error as `FILE:LINE:COL: path: message`.
fn load(path: &std::path::Path) -> Result<Runtime, ExitCode> {
    Config::load(path)
        .and_then(Runtime::build)
        .map_err(|e| report(path, e))
}

/// Prints config errors; the exit code of `check`.
fn report(path: &std::path::Path, errors: tollgate::config::ConfigErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("{e}");
    }
    let n = errors.0.len();
    eprintln!(
        "{}: {n} error{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}

/// The host's clock. `TOLLGATE_CLOCK_OFFSET_MS` shifts it, to simulate a host whose clock is
/// wrong (tests and drills of the clock-skew correction; see the README).
fn host_clock() -> Arc<dyn tollgate::clock::Clock> {
    let skew_ms: i64 = std::env::var("TOLLGATE_CLOCK_OFFSET_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if skew_ms == 0 {
        return Arc::new(SystemClock);
    }
    tracing::warn!(
        skew_ms,
        "TOLLGATE_CLOCK_OFFSET_MS: this process's clock is shifted on purpose"
    );
    Arc::new(tollgate::clock::SkewedClock {
        base: Arc::new(SystemClock),
        skew_ns: skew_ms.saturating_mul(1_000_000),
    })
}

fn main() -> ExitCode {
    // Two rustls providers are linked (ring through pingora and redis); pick ring explicitly
    // before any TLS use, or the first handshake panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(rt) => {
                println!("{}", rt.config.summary());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Inspect {
            config,
            limit,
            key,
            json,
            max,
        } => {
            // The config only says where Redis is and what the limits are: upstream names
            // need not resolve here.
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&config, e),
            };
            let q = tollgate::inspect::Query {
                limit: limit.as_deref(),
                key: key.as_deref(),
                json,
                max,
            };
            match tollgate::inspect::run(&cfg, &q) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate inspect: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, upgrade } => {
            tollgate::logging::init();
            let rt = match load(&config) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let listeners: Vec<String> = rt
                .config
                .listeners
                .iter()
                .map(|l| {
                    format!(
                        "{}{}",
                        l.address,
                        if l.tls.is_some() { " (tls)" } else { "" }
                    )
                })
                .collect();
            let redis_mode = match &rt.config.redis {
                None => "standalone (no redis)".to_string(),
                Some(r) => format!(
                    "redis {}",
                    r.urls
                        .iter()
                        .map(|u| tollgate::config::mask_url_password(u))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            tracing::info!(
                node_id = %rt.config.node_id,
                listeners = %listeners.join(", "),
                admin = %rt.config.admin.address,
                redis = %redis_mode,
                config = %config.display(),
                "tollgate starting"
            );
            let node = match Node::new(rt, &config, host_clock()) {
                Ok(n) => Arc::new(n),
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if node.runtime().config.redis.is_some() {
                // Read this node's counters back before serving (a restart continues them).
                match tollgate::sync::warm_start(&node) {
                    Ok(n) => {
                        tracing::info!(buckets = n, "read this node's buckets back from redis")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read this node's buckets back from redis before serving; each is read on first use instead")
                    }
                }
            }
            let server = match tollgate::server::build(node, upgrade) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    return ExitCode::from(2);
                }
            };
            tollgate::server::run(server);
            tracing::info!("tollgate stopped");
            ExitCode::SUCCESS
        }
    }
}
