//! The `tollgate` command: `run`, `check`, `inspect`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::cli::inspect::Query;

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

fn main() -> ExitCode {
    // Two rustls providers are linked (ring through pingora and redis); pick ring explicitly
    // before any TLS use, or the first handshake panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Check { config } => tollgate::cli::check::command(&config),
        Command::Inspect {
            config,
            limit,
            key,
            json,
            max,
        } => {
            let q = Query {
                limit: limit.as_deref(),
                key: key.as_deref(),
                json,
                max,
            };
            tollgate::cli::inspect::command(&config, &q)
        }
        Command::Run { config, upgrade } => tollgate::app::start::command(&config, upgrade),
    }
}
