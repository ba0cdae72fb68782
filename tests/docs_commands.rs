//! Every command that README.md and docs/*.md show is run here against real processes, or is
//! listed in [`NOT_RUN`] with the place that exercises it. A doc that shows a command neither
//! run nor listed fails this test, and so does a run command that fails or whose documented
//! output differs from what it prints.
//!
//! # What counts as a command
//!
//! - In a fenced code block of any language, a line starting with `$ `: a transcript. The lines
//!   after it, up to the next `$ ` line or the end of the block, are its documented output.
//! - Every line of a `sh`, `bash` or `shell` block that is not blank or only a comment (a
//!   trailing `\` continues a line).
//! - An inline code span of the prose (it may wrap a line) whose first word, after any
//!   `VAR=value` assignments, is one of [`COMMAND_WORDS`] followed by at least one argument,
//!   or is the path of an executable file of the repository (`scripts/demo.sh`, `.ci/run`).
//!   A lone program name (`redis-server`, `tollgate`) names a program, not a command; Redis
//!   commands without `redis-cli` (`HGETALL {prefix}:nodes`) are not shell commands.
//!
//! A ` # ...` after a command is a comment. Three kinds are expectations: a JSON sketch
//! (`# {"status":"ok","node_id":…,"redis":…}`: the output is a JSON object with exactly these
//! keys and the values given; `…` is any value), `# no RateLimit headers` (the response has
//! none), and `# the 6th today` (the command is run five times first).
//!
//! # How each one is satisfied
//!
//! 1. **Run.** A scenario claims the commands of some doc sections ([`Claim`]) and runs each of
//!    them in document order through `sh -c`, from the repository root with the built
//!    binaries first on `PATH`, against processes it started from the real binaries: the
//!    example upstream, the gateway with the shipped config the doc names, and in shared mode
//!    a private `redis-server`. Each run must exit 0 and pass at least one check of its
//!    output ([`run_doc`]); a command this file has no check for fails.
//! 2. **Named.** A command without documented output that a run covers: a synopsis
//!    (`tollgate inspect -c FILE [--limit NAME] ...`: placeholders match any word, and each
//!    `[...]` group must be covered too) or a mention (`tollgate check`, `kill -HUP`) whose
//!    words appear, in order and after the same program, in a command run here.
//! 3. **Listed.** [`NOT_RUN`]: commands a test cannot run (root, systemd, a cluster, Docker,
//!    benchmarks of minutes, the suite itself), each with where it is exercised or why it is
//!    not, and the files that back that up: each must exist and contain the string given (a
//!    script the table names must also pass `bash -n`), and an entry that matches no doc
//!    command any more fails.
//!
//! # The scenarios (run in parallel, each on its own processes)
//!
//! - **plans**: README, "Plans and quotas": the upstream and `conf/plans.json` started as the
//!   section says, its `curl -si` transcript compared line by line, `kill -HUP` and `POST
//!   /reload` (each must add one successful reload to `tollgate_config_reloads_total`),
//!   `/buckets` and `/reset`.
//! - **demo**: `conf/tollgate.json` (the demo config, and the one an install copies): the
//!   admin API examples, the install's health check and its `tollgate.new check`, and `ss` on
//!   the proxy port.
//! - **shared**: two nodes of `conf/tollgate-redis.json` (edge-1, and edge-2 with an admin
//!   token) on a private Redis, after 13 and 7 requests from one client as
//!   docs/shared-state.md says: its `redis-cli` and `tollgate inspect` transcript,
//!   `tollgate inspect -c CONFIG` and `--json --max N` (the synopsis' other options), and the
//!   status page (and `/status`) with the token.
//! - **checks**: `tollgate check -c FILE` on every `conf/*.json` (exit 0, `FILE: ok (node`),
//!   and on a broken copy (exit 2, `FILE:LINE:COL: path: message`).
//!
//! The admin checks need state to be meaningful: before a `/buckets` the proxy is made to
//! refuse one key of that limit (the list must then hold it, by fingerprint); before a
//! `/reset` the key's missing tokens are peeked (the reset must credit them, and the key's
//! next request through the proxy must pass).
//!
//! # Rewrites
//!
//! The docs use the shipped configs' fixed addresses; the processes here listen on free ports.
//! In a command, `localhost:8080` and `127.0.0.1:8080` become the gateway's proxy address,
//! `…:9091` its admin address, `redis-cli` gets `-p` and the private Redis's port, a config
//! path the test's copy (the shipped file with those addresses replaced, written by the
//! harness), and the placeholders `TOKEN`, `ADMIN`, `PORT`, `CONFIG` the scenario's values.
//! `cargo run --release [--bin B] --` is the built binary, `/usr/local/bin/tollgate[.new]` the
//! built `tollgate`, and `/etc/tollgate/tollgate.json` the `conf/tollgate.json` that the
//! install copies there. A rewritten command that still names a fixed port, a placeholder or
//! the default Redis fails rather than reach whatever listens there on this machine.
//!
//! # Comparing output
//!
//! Each documented output line must equal a line of the real output, in any order (runs of
//! whitespace compare as one space; a line `...` marks an abridged transcript), except that
//! numbers that move with the clock match any number: `retry-after: N`, `t=N`,
//! `"retry_after_ms":N`, `tokens=N/`, `full_in=Nms`, numbers of ten digits or more (Unix
//! milliseconds, `waste` counters), and the whole output of `redis-cli PTTL`. Admin API
//! answers are also checked against the JSON sketch of their endpoint in the table of
//! docs/admin-api.md ([`check_admin`]).

mod common;

use common::{get, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a command may run before it is killed and the test fails.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// How long a poll waits for something that happens asynchronously (a sync, a reload).
const WAIT: Duration = Duration::from_secs(10);

/// The programs whose inline code spans are commands (with at least one argument).
const COMMAND_WORDS: &[&str] = &[
    "curl",
    "tollgate",
    "rating-api",
    "cargo",
    "redis-cli",
    "redis-server",
    "kill",
    "systemctl",
    "journalctl",
    "systemd-analyze",
    "runuser",
    "sudo",
    "install",
    "useradd",
    "mv",
    "apt-get",
    "kubectl",
    "kustomize",
    "docker",
    "promtool",
    "ss",
    "wrk",
    "valgrind",
    "strace",
    "perf",
    "bash",
    "sh",
];

/// Words of a synopsis or command that stand for a value.
const PLACEHOLDERS: &[&str] = &[
    "FILE", "CONFIG", "NAME", "KEY", "N", "ADDR", "PORT", "TOKEN", "ADMIN", "SECONDS",
];

/// Where a number in a documented output line moves with the clock (lower case).
const TIME_DEPENDENT: &[&str] = &[
    "retry-after: ",
    ";t=",
    "\"retry_after_ms\":",
    "tokens=",
    "full_in=",
];

/// The admin token of the shared scenario's second node.
const TOKEN: &str = "docs-test-token";

// ---------------------------------------------------------------------------------------------
// The commands that are not run here.

/// Doc commands this test does not run, and where each is exercised instead.
struct Listed {
    /// The doc file the entry applies to; `""` for every file.
    doc: &'static str,
    /// The command texts it covers (comment and leading `VAR=value` assignments removed,
    /// whitespace runs as one space); `*` matches anything.
    patterns: &'static [&'static str],
    /// Where the command is exercised, or why it is not.
    exercised: &'static str,
    /// `(file, string)`: each file must exist and contain its string.
    places: &'static [(&'static str, &'static str)],
}

const NOT_RUN: &[Listed] = &[
    Listed {
        doc: "",
        patterns: &["scripts/test.sh"],
        exercised: "the whole suite, this test included: CI runs it through .ci/run",
        places: &[(".ci/run", "exec bash scripts/test.sh")],
    },
    Listed {
        doc: "",
        patterns: &["cargo test*"],
        exercised: "the test suite, this test included: scripts/test.sh runs it",
        places: &[("scripts/test.sh", "cargo test --")],
    },
    Listed {
        doc: "",
        patterns: &[".ci/run"],
        exercised: "the CI entry point itself: it runs scripts/test.sh",
        places: &[(".ci/run", "exec bash scripts/test.sh")],
    },
    Listed {
        doc: "",
        patterns: &["scripts/demo.sh"],
        exercised: "not run by the suite: it builds a release and binds the fixed ports 8080, \
                    9091 and 8000. What it starts, rating-api and `tollgate run -c \
                    conf/tollgate.json`, is what the demo scenario here runs on free ports",
        places: &[
            (
                "scripts/demo.sh",
                "./target/release/tollgate run -c conf/tollgate.json",
            ),
            (
                "scripts/demo.sh",
                "./target/release/rating-api --listen 127.0.0.1:8000",
            ),
        ],
    },
    Listed {
        doc: "",
        patterns: &["scripts/demo.sh --shared"],
        exercised: "tests/demo_script.rs runs it (DEMO_NO_WAIT=1, on the built binaries) and \
                    asserts its checks",
        places: &[(
            "tests/demo_script.rs",
            r#".args(["scripts/demo.sh", "--shared"])"#,
        )],
    },
    Listed {
        doc: "README.md",
        patterns: &[
            "tollgate inspect -c a.json --limit per-api-key --key demo",
            "redis-cli -p * HGETALL tollgate:per-api-key:demo",
            "curl -s http://127.0.0.1:*/health",
        ],
        exercised: "lines of the `scripts/demo.sh --shared` transcript: the script prints and \
                    runs them on its own ports, and tests/demo_script.rs asserts them",
        places: &[
            (
                "scripts/demo.sh",
                r#"echo "\$ tollgate inspect -c a.json --limit $LIMIT --key $KEY""#,
            ),
            (
                "scripts/demo.sh",
                r#"echo "\$ redis-cli -p $RPORT HGETALL $HASH""#,
            ),
            (
                "scripts/demo.sh",
                r#"echo "\$ curl -s http://127.0.0.1:${ADMIN[a]}/health""#,
            ),
            (
                "tests/demo_script.rs",
                "$ tollgate inspect -c a.json --limit per-api-key --key demo",
            ),
            ("tests/demo_script.rs", "HGETALL tollgate:per-api-key:demo"),
            ("tests/demo_script.rs", r#"\"status\":\"degraded\""#),
        ],
    },
    Listed {
        doc: "",
        patterns: &["scripts/accuracy.sh"],
        exercised: "by hand (a quarter of an hour on an idle machine; the docs' accuracy \
                    figures come from it); tests/shared_accuracy.rs runs its within-limit, \
                    outage and distant-Redis scenarios with real processes",
        places: &[
            ("scripts/accuracy.sh", "# Usage: scripts/accuracy.sh"),
            ("tests/shared_accuracy.rs", "scripts/accuracy.sh"),
        ],
    },
    Listed {
        doc: "",
        patterns: &[
            "scripts/bench.sh",
            "scripts/bench_instructions.sh*",
            "scripts/redis_traffic.sh",
            "scripts/soak.sh*",
            "scripts/bench/callgrind_lines.py*",
        ],
        exercised: "measurements run by hand for docs/performance.md and docs/security.md \
                    (minutes each, on an otherwise idle machine), and the per-line reading of \
                    a callgrind profile of one; not in the suite",
        places: &[
            ("scripts/bench.sh", "# Usage: scripts/bench.sh"),
            (
                "scripts/bench_instructions.sh",
                "# Usage: scripts/bench_instructions.sh",
            ),
            (
                "scripts/redis_traffic.sh",
                "# Usage: scripts/redis_traffic.sh",
            ),
            ("scripts/soak.sh", "# Usage: scripts/soak.sh"),
            (
                "scripts/bench/callgrind_lines.py",
                "callgrind_lines.py OUT BINARY N",
            ),
        ],
    },
    Listed {
        doc: "",
        patterns: &["scripts/memory.sh*"],
        exercised: "by hand for the figures of docs/performance.md (a release build, a \
                    million buckets)",
        places: &[("scripts/memory.sh", "# Usage: scripts/memory.sh")],
    },
    Listed {
        doc: "docs/performance.md",
        patterns: &[
            "wrk *",
            "valgrind --tool=callgrind",
            "strace -c",
            "perf record*",
            "perf stat",
        ],
        exercised: "the tools the benchmark scripts run (scripts/bench.sh: wrk and, with \
                    BENCH_PERF=1, perf record, with BENCH_KERNEL=1, perf stat; \
                    scripts/bench_instructions.sh: callgrind and strace -c)",
        places: &[
            ("scripts/bench.sh", "wrk -t"),
            ("scripts/bench.sh", "perf record -F 999 -g"),
            ("scripts/bench.sh", "if ! perf stat -e"),
            ("scripts/bench_instructions.sh", "valgrind --tool=callgrind"),
            ("scripts/bench_instructions.sh", r#"["strace", "-f", "-c""#),
        ],
    },
    Listed {
        doc: "docs/performance.md",
        patterns: &[
            "cargo bench --bench limiter",
            "cargo bench --bench overrides",
        ],
        exercised: "criterion benchmarks, run by hand; scripts/test.sh compiles them \
                    (cargo clippy --all-targets)",
        places: &[
            ("Cargo.toml", "name = \"limiter\""),
            ("Cargo.toml", "name = \"overrides\""),
            ("scripts/test.sh", "cargo clippy --all-targets"),
        ],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &["apt-get install -y build-essential cmake"],
        exercised: "scripts/test.sh installs the same packages when missing",
        places: &[("scripts/test.sh", "cmake:cmake cc:build-essential")],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &["cargo build --release --locked --bins"],
        exercised: "a release build of every binary (minutes): the Dockerfile runs it, and the \
                    suite builds the same binaries in the test profile",
        places: &[("docker/Dockerfile", "cargo build --release --locked --bins")],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &[
            "install -m 0755 target/release/tollgate /usr/local/bin/tollgate*",
            "useradd *",
            "install -d -m 0750 -g tollgate /etc/tollgate",
            "install -m 0644 ops/systemd/tollgate.service /etc/systemd/system/tollgate.service",
            "install -m 0640 -g tollgate conf/tollgate.json /etc/tollgate/tollgate.json",
            "mv -f /usr/local/bin/tollgate.new /usr/local/bin/tollgate",
        ],
        exercised: "installing on a host needs root and a `tollgate` user: not run by the \
                    suite. The unit's header lists the same steps, scripts/ops_check.sh checks \
                    the unit with systemd-analyze verify, and the config they copy passes \
                    `tollgate check` here",
        places: &[
            (
                "ops/systemd/tollgate.service",
                "useradd --system --no-create-home --home-dir /nonexistent --shell \
                 /usr/sbin/nologin tollgate",
            ),
            ("scripts/ops_check.sh", "systemd-analyze verify"),
        ],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &[
            "runuser -u tollgate -- /usr/local/bin/tollgate check -c /etc/tollgate/tollgate.json",
        ],
        exercised: "needs root and the `tollgate` user; the unit runs the same check as that \
                    user before every start (ExecStartPre), and the check itself is run here \
                    on conf/tollgate.json (the upgrade step's `tollgate.new check`)",
        places: &[
            (
                "ops/systemd/tollgate.service",
                "ExecStartPre=/usr/local/bin/tollgate check -c /etc/tollgate/tollgate.json",
            ),
            ("ops/systemd/tollgate.service", "User=tollgate"),
        ],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &["tollgate run -c /etc/tollgate/tollgate.json"],
        exercised: "the unit's ExecStart, which scripts/ops_check.sh checks",
        places: &[(
            "scripts/ops_check.sh",
            "ExecStart=$BIN run -c /etc/tollgate/tollgate.json",
        )],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &[
            "systemctl *",
            "journalctl *",
            "systemd-analyze security tollgate",
        ],
        exercised: "operating the installed unit needs systemd as the service manager: not run \
                    by the suite; scripts/ops_check.sh checks the unit (its ExecStartPre, \
                    ExecReload, KillSignal) with systemd-analyze verify",
        places: &[
            (
                "ops/systemd/tollgate.service",
                "ExecReload=/usr/local/bin/tollgate check -c /etc/tollgate/tollgate.json",
            ),
            ("scripts/ops_check.sh", "systemd-analyze verify"),
        ],
    },
    Listed {
        doc: "",
        patterns: &["tollgate run *--upgrade"],
        exercised: "tests/production.rs starts a second gateway with --upgrade beside a \
                    running one under load and sends SIGQUIT to the old one",
        places: &[(
            "tests/production.rs",
            r#".args(["run", "--upgrade", "-c"])"#,
        )],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &[
            "kubectl apply -k ops/kubernetes",
            "kubectl apply -k ops/kubernetes/overlays/shared",
            "kubectl kustomize",
        ],
        exercised: "needs a cluster; scripts/ops_check.sh renders both kustomizations with \
                    kubectl kustomize and validates every object (skipped, with a line that \
                    says so, where no kubectl 1.21 or later can be installed)",
        places: &[
            ("scripts/ops_check.sh", "kubectl kustomize \"$dir\""),
            (
                "scripts/ops_check.sh",
                "shared:ops/kubernetes/overlays/shared",
            ),
        ],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &["kustomize edit set image *"],
        exercised: "edits the reader's own overlay; the image name it replaces, \
                    tollgate:latest, is the one scripts/ops_check.sh requires of the Deployment",
        places: &[(
            "scripts/ops_check.sh",
            "c[\"image\"] != \"tollgate:latest\"",
        )],
    },
    Listed {
        doc: "docs/install.md",
        patterns: &["tollgate check -c tollgate.json"],
        exercised: "the check of a kustomization's tollgate.json: scripts/ops_check.sh runs it \
                    as a pod would (the pod's hostname, the Service names resolvable)",
        places: &[("scripts/ops_check.sh", r#"exec "$3" check -c "$4""#)],
    },
    Listed {
        doc: "",
        patterns: &["scripts/ops_check.sh", "systemd-analyze verify"],
        exercised: "scripts/test.sh runs scripts/ops_check.sh, which runs systemd-analyze \
                    verify on the unit",
        places: &[
            ("scripts/test.sh", "bash scripts/ops_check.sh"),
            ("scripts/ops_check.sh", "systemd-analyze verify"),
        ],
    },
    Listed {
        doc: "",
        patterns: &[
            "docker build -f docker/Dockerfile -t tollgate:*",
            "docker compose -f docker/compose.yaml up --build -d",
        ],
        exercised: "no Docker engine in the suite; tests/ops_files.rs checks the Dockerfile, \
                    the compose file and that every config it mounts passes tollgate check",
        places: &[
            (
                "tests/ops_files.rs",
                "const DOCKERFILE: &str = \"docker/Dockerfile\";",
            ),
            (
                "tests/ops_files.rs",
                "const COMPOSE: &str = \"docker/compose.yaml\";",
            ),
        ],
    },
    Listed {
        doc: "docs/operating.md",
        patterns: &["curl -i -H 'x-api-key: demo' http://127.0.0.1:8081/rating/42"],
        exercised: "a request to the compose stack's first gateway (host port 8081), which \
                    needs Docker; tests/ops_files.rs checks the stack",
        places: &[
            ("docker/compose.yaml", "\"8081:8080\""),
            ("tests/ops_files.rs", "fn compose_stack_is_consistent()"),
        ],
    },
    Listed {
        doc: "docs/operating.md",
        patterns: &["promtool check rules", "promtool test rules"],
        exercised: "tests/ops_files.rs runs both on ops/prometheus/alerts.yml",
        places: &[
            ("tests/ops_files.rs", r#"run(&["check", "rules", ALERTS]);"#),
            ("tests/ops_files.rs", r#"run(&["test", "rules","#),
        ],
    },
];

// ---------------------------------------------------------------------------------------------
// The commands the docs show.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `$ ` line of a code block, with its documented output.
    Prompt,
    /// A line of a `sh` block.
    Script,
    /// An inline code span of the prose.
    Inline,
}

#[derive(Debug, Clone)]
struct DocCommand {
    file: String,
    line: usize,
    /// The heading the command is under.
    section: String,
    kind: Kind,
    /// The command, without `$ ` and its comment.
    text: String,
    comment: Option<String>,
    /// The documented output lines (`Prompt` only).
    output: Vec<String>,
}

impl DocCommand {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// Documented output or an expectation in the comment: it has to be run to be checked.
    fn shows_output(&self) -> bool {
        !self.output.is_empty() || self.comment.as_deref().is_some_and(|c| c.starts_with('{'))
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tollgate"))
        .parent()
        .expect("the binary's directory")
        .to_path_buf()
}

/// README.md and every docs/*.md, by path relative to the repository.
fn doc_files() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("read docs/")
        .map(|e| {
            e.expect("a docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    docs.insert(0, "README.md".into());
    docs
}

fn all_commands() -> Vec<DocCommand> {
    doc_files()
        .iter()
        .flat_map(|f| parse_doc(f, &read(f)))
        .collect()
}

/// The commands of one markdown file, in document order.
fn parse_doc(file: &str, text: &str) -> Vec<DocCommand> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut para: Vec<(usize, &str)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            inline_commands(file, &section, &para, &mut out);
            para.clear();
            let end = (i + 1..lines.len())
                .find(|&j| lines[j].trim_start().starts_with("```"))
                .unwrap_or_else(|| panic!("{file}:{}: a code block that is not closed", i + 1));
            block_commands(
                file,
                &section,
                lang.trim(),
                &lines[i + 1..end],
                i + 2,
                &mut out,
            );
            i = end + 1;
            continue;
        }
        if line.starts_with('#') {
            inline_commands(file, &section, &para, &mut out);
            para.clear();
            section = line.trim_start_matches('#').trim().to_string();
        }
        if line.trim().is_empty() {
            inline_commands(file, &section, &para, &mut out);
            para.clear();
        } else {
            para.push((i + 1, line));
        }
        i += 1;
    }
    inline_commands(file, &section, &para, &mut out);
    out
}

/// The commands of a fenced block whose first line is line `first` of the file.
fn block_commands(
    file: &str,
    section: &str,
    lang: &str,
    block: &[&str],
    first: usize,
    out: &mut Vec<DocCommand>,
) {
    let shell = matches!(lang, "sh" | "bash" | "shell");
    let mut j = 0;
    while j < block.len() {
        let line = block[j];
        if let Some(cmd) = line.strip_prefix("$ ") {
            let mut k = j + 1;
            while k < block.len() && !block[k].starts_with("$ ") {
                k += 1;
            }
            let (text, comment) = split_comment(cmd);
            out.push(DocCommand {
                file: file.into(),
                line: first + j,
                section: section.into(),
                kind: Kind::Prompt,
                text,
                comment,
                output: block[j + 1..k].iter().map(|s| s.to_string()).collect(),
            });
            j = k;
            continue;
        }
        let start = j;
        let mut joined = line.trim().to_string();
        while shell && joined.ends_with('\\') && j + 1 < block.len() {
            joined.pop();
            joined.truncate(joined.trim_end().len());
            j += 1;
            joined.push(' ');
            joined.push_str(block[j].trim());
        }
        if shell && !joined.is_empty() && !joined.starts_with('#') {
            let (text, comment) = split_comment(&joined);
            out.push(DocCommand {
                file: file.into(),
                line: first + start,
                section: section.into(),
                kind: Kind::Script,
                text,
                comment,
                output: Vec::new(),
            });
        }
        j += 1;
    }
}

/// The commands among the inline code spans of a paragraph (lines with their numbers).
fn inline_commands(file: &str, section: &str, para: &[(usize, &str)], out: &mut Vec<DocCommand>) {
    let Some(&(first, _)) = para.first() else {
        return;
    };
    let text = para.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
    let mut rest = text.as_str();
    let mut offset = 0;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let span = &after[..close];
        let line = first + text[..offset + open].matches('\n').count();
        let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
        if is_command(&span) {
            out.push(DocCommand {
                file: file.into(),
                line,
                section: section.into(),
                kind: Kind::Inline,
                text: span,
                comment: None,
                output: Vec::new(),
            });
        }
        let consumed = open + 1 + close + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
}

fn is_env_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Whether an inline code span is a command (see the module docs).
fn is_command(span: &str) -> bool {
    let words: Vec<&str> = span
        .split_whitespace()
        .skip_while(|w| is_env_assignment(w))
        .collect();
    let Some(first) = words.first() else {
        return false;
    };
    if COMMAND_WORDS.contains(first) {
        return words.len() >= 2;
    }
    first.contains('/')
        && std::fs::metadata(repo().join(first))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Splits `cmd  # comment` at the first `#` that starts a word outside quotes.
fn split_comment(line: &str) -> (String, Option<String>) {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => {
                let comment = line[i + 1..].trim().to_string();
                return (line[..i].trim().to_string(), Some(comment));
            }
            _ => {}
        }
        prev = c;
    }
    (line.trim().to_string(), None)
}

/// The words of a command as `sh` would split them (quotes removed; no expansion).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                cur.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

// ---------------------------------------------------------------------------------------------
// Matching.

/// `*` in `pattern` matches any run of characters (none included).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic backtracking over the last star.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A command text as [`Listed::patterns`] see it.
fn table_text(text: &str) -> String {
    let words: Vec<&str> = text
        .split_whitespace()
        .skip_while(|w| is_env_assignment(w))
        .collect();
    words.join(" ")
}

/// The [`NOT_RUN`] entry that lists a command text of `file`, if any.
fn listed(file: &str, text: &str) -> Option<&'static Listed> {
    let text = table_text(text);
    NOT_RUN
        .iter()
        .find(|l| (l.doc.is_empty() || l.doc == file) && l.patterns.iter().any(|p| glob(p, &text)))
}

/// Runs of ASCII digits and of everything else, in order.
fn segments(s: &str) -> Vec<(bool, &str)> {
    let mut out: Vec<(bool, &str)> = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    for i in 1..=bytes.len() {
        if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
            out.push((bytes[start].is_ascii_digit(), &s[start..i]));
            start = i;
        }
    }
    out
}

/// Whether a real output line matches a documented one (see the module docs); with
/// `any_number`, every number matches any number.
fn line_matches(doc: &str, real: &str, any_number: bool) -> bool {
    let (doc, real) = (normalize(doc), normalize(real));
    if doc.is_empty() || real.is_empty() {
        return doc == real;
    }
    let (d, r) = (segments(&doc), segments(&real));
    if d.len() != r.len() {
        return false;
    }
    let mut before = String::new();
    for (&(d_digits, d_text), &(r_digits, r_text)) in d.iter().zip(&r) {
        if d_digits != r_digits {
            return false;
        }
        let varies = d_digits
            && (any_number
                || d_text.len() >= 10
                || TIME_DEPENDENT.iter().any(|p| before.ends_with(p)));
        if !varies && d_text != r_text {
            return false;
        }
        before.push_str(&d_text.to_ascii_lowercase());
    }
    true
}

/// The documented output lines that no line of `real` matches.
fn missing_lines(doc: &[String], real: &str, any_number: bool) -> Vec<String> {
    doc.iter()
        .filter(|d| d.trim() != "...")
        .filter(|d| !real.lines().any(|r| line_matches(d, r, any_number)))
        .cloned()
        .collect()
}

/// Whether `doc` (a word of a doc command, placeholders allowed) matches `word`.
fn word_matches(doc: &str, word: &str) -> bool {
    if doc == word {
        return true;
    }
    // Each placeholder, delimited by non-alphanumerics, becomes a `*`.
    let mut pattern = String::new();
    let mut token = String::new();
    let mut any = false;
    for c in doc.chars().chain(std::iter::once('\u{0}')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            token.push(c);
            continue;
        }
        if PLACEHOLDERS.contains(&token.as_str()) {
            pattern.push('*');
            any = true;
        } else {
            pattern.push_str(&token);
        }
        token.clear();
        if c != '\u{0}' {
            pattern.push(c);
        }
    }
    any && glob(&pattern, word)
}

/// The forms a synopsis stands for: without its `[...]` groups, and with each one alone.
fn synopsis_forms(text: &str) -> Vec<Vec<String>> {
    let mut base: Vec<String> = Vec::new();
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    let mut open: Option<Vec<String>> = None;
    for w in shell_words(text) {
        if let Some(g) = open.as_mut() {
            let end = w.ends_with(']');
            g.push(w.trim_end_matches(']').to_string());
            if end {
                groups.push((base.len(), open.take().unwrap_or_default()));
            }
        } else if let Some(rest) = w.strip_prefix('[') {
            if let Some(inner) = rest.strip_suffix(']') {
                groups.push((base.len(), vec![inner.to_string()]));
            } else {
                open = Some(vec![rest.to_string()]);
            }
        } else {
            base.push(w);
        }
    }
    let mut forms = vec![base.clone()];
    for (at, group) in groups {
        let mut f = base.clone();
        f.splice(at..at, group);
        forms.push(f);
    }
    forms
}

/// Whether a command that ran (`ran`, its words) covers a form of a doc command: the same
/// program, then the form's words in order.
fn covers(ran: &[String], form: &[String]) -> bool {
    let (Some(f0), Some(r0)) = (form.first(), ran.first()) else {
        return false;
    };
    if !word_matches(f0, r0) {
        return false;
    }
    let mut it = ran[1..].iter();
    form[1..]
        .iter()
        .all(|f| it.by_ref().any(|r| word_matches(f, r)))
}

// ---------------------------------------------------------------------------------------------
// JSON sketches: `{"limit","key","buckets":[{"key"}],"status":"ok"|"degraded","node_id":…}`.

#[derive(Debug, Clone, PartialEq)]
enum SketchValue {
    Any,
    OneOf(Vec<Value>),
    ArrayOf(Sketch),
}

type Sketch = Vec<(String, SketchValue)>;

fn parse_sketch(text: &str) -> Sketch {
    let chars: Vec<char> = text.replace("\\|", "|").chars().collect();
    let mut pos = 0;
    sketch_object(&chars, &mut pos)
        .unwrap_or_else(|e| panic!("cannot read the JSON sketch {text:?}: {e}"))
}

fn skip_ws(c: &[char], pos: &mut usize) {
    while *pos < c.len() && c[*pos].is_whitespace() {
        *pos += 1;
    }
}

fn expect(c: &[char], pos: &mut usize, want: char) -> Result<(), String> {
    skip_ws(c, pos);
    if c.get(*pos) == Some(&want) {
        *pos += 1;
        Ok(())
    } else {
        Err(format!("expected {want:?} at {}", *pos))
    }
}

fn sketch_string(c: &[char], pos: &mut usize) -> Result<String, String> {
    expect(c, pos, '"')?;
    let start = *pos;
    while *pos < c.len() && c[*pos] != '"' {
        *pos += 1;
    }
    let s: String = c[start..*pos].iter().collect();
    expect(c, pos, '"')?;
    Ok(s)
}

fn sketch_object(c: &[char], pos: &mut usize) -> Result<Sketch, String> {
    expect(c, pos, '{')?;
    let mut out = Vec::new();
    loop {
        skip_ws(c, pos);
        if c.get(*pos) == Some(&'}') {
            *pos += 1;
            return Ok(out);
        }
        let key = sketch_string(c, pos)?;
        skip_ws(c, pos);
        let value = if c.get(*pos) == Some(&':') {
            *pos += 1;
            sketch_value(c, pos)?
        } else {
            SketchValue::Any
        };
        out.push((key, value));
        skip_ws(c, pos);
        match c.get(*pos) {
            Some(',') => *pos += 1,
            Some('}') => {}
            other => return Err(format!("expected ',' or '}}' at {}, got {other:?}", *pos)),
        }
    }
}

fn sketch_value(c: &[char], pos: &mut usize) -> Result<SketchValue, String> {
    skip_ws(c, pos);
    match c.get(*pos) {
        Some('…') => {
            *pos += 1;
            Ok(SketchValue::Any)
        }
        Some('[') => {
            *pos += 1;
            let inner = sketch_object(c, pos)?;
            expect(c, pos, ']')?;
            Ok(SketchValue::ArrayOf(inner))
        }
        _ => {
            let mut alternatives = Vec::new();
            loop {
                skip_ws(c, pos);
                let v = if c.get(*pos) == Some(&'"') {
                    Value::String(sketch_string(c, pos)?)
                } else {
                    let start = *pos;
                    while *pos < c.len() && !matches!(c[*pos], ',' | '}' | '|' | ']') {
                        *pos += 1;
                    }
                    let word: String = c[start..*pos].iter().collect();
                    serde_json::from_str(word.trim()).map_err(|e| format!("value {word:?}: {e}"))?
                };
                alternatives.push(v);
                skip_ws(c, pos);
                if c.get(*pos) == Some(&'|') {
                    *pos += 1;
                } else {
                    return Ok(SketchValue::OneOf(alternatives));
                }
            }
        }
    }
}

/// Checks a JSON value against a sketch: exactly its keys, and the values it gives.
fn check_sketch(real: &Value, sketch: &Sketch) -> Result<(), String> {
    let obj = real
        .as_object()
        .ok_or_else(|| format!("not a JSON object: {real}"))?;
    let want: BTreeSet<&str> = sketch.iter().map(|(k, _)| k.as_str()).collect();
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    if want != got {
        return Err(format!("keys {got:?}, documented {want:?}: {real}"));
    }
    for (key, value) in sketch {
        match value {
            SketchValue::Any => {}
            SketchValue::OneOf(options) if options.contains(&obj[key]) => {}
            SketchValue::OneOf(options) => {
                return Err(format!("{key} is {}, documented {options:?}", obj[key]))
            }
            SketchValue::ArrayOf(inner) => {
                let items = obj[key]
                    .as_array()
                    .ok_or_else(|| format!("{key} is not an array: {real}"))?;
                for item in items {
                    check_sketch(item, inner)?;
                }
            }
        }
    }
    Ok(())
}

/// The JSON sketch of each endpoint's answer in the table of docs/admin-api.md, by path:
/// the first code span of the row's answer that is a JSON object.
fn endpoint_sketches() -> BTreeMap<String, Sketch> {
    let mut out = BTreeMap::new();
    for line in read("docs/admin-api.md").lines() {
        if !line.starts_with("| `") {
            continue;
        }
        // Cells are split at `|` not escaped as `\|`.
        let mut cells = Vec::new();
        let mut cur = String::new();
        let mut prev = ' ';
        for c in line.chars() {
            if c == '|' && prev != '\\' {
                cells.push(std::mem::take(&mut cur));
            } else {
                cur.push(c);
            }
            prev = c;
        }
        let (Some(endpoint), Some(answer)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(path) = endpoint
            .trim()
            .trim_matches('`')
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.split(['?', '[']).next())
        else {
            continue;
        };
        let sketch = answer
            .split('`')
            .skip(1)
            .step_by(2)
            .find(|s| s.starts_with('{'))
            .map(parse_sketch);
        if let Some(sketch) = sketch {
            out.insert(path.to_string(), sketch);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running commands.

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn report(&self, line: &str) -> String {
        format!(
            "$ {line}\nexit: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Runs `sh -c LINE` from the repository root with the built binaries first on `PATH`, in its
/// own process group (killed whole past [`COMMAND_DEADLINE`]).
fn sh(line: &str) -> Ran {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("sh")
        .args(["-c", line])
        .current_dir(repo())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("run sh -c {line:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let end = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sh") {
            break status;
        }
        if Instant::now() > end {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("`{line}` ran past {COMMAND_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ran {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A gateway a scenario started, as the commands see it.
struct Node<'a> {
    gw: &'a Gateway,
    /// The shipped config it runs (before the harness placed its addresses).
    config: Value,
    token: Option<String>,
}

/// What the commands of a scenario run against.
struct Setup<'a> {
    /// The gateway that `localhost:8080`, `:9091`, `kill -HUP` and `PORT` mean.
    main: Node<'a>,
    others: Vec<Node<'a>>,
    /// Literal replacements, in order, then placeholder values.
    rewrites: Vec<(String, String)>,
    placeholders: Vec<(&'static str, String)>,
}

impl<'a> Setup<'a> {
    fn new(main: Node<'a>) -> Setup<'a> {
        let (proxy, admin) = (main.gw.addr.to_string(), main.gw.admin.to_string());
        let rewrites = vec![
            ("localhost:8080".into(), proxy.clone()),
            ("127.0.0.1:8080".into(), proxy),
            ("localhost:9091".into(), admin.clone()),
            ("127.0.0.1:9091".into(), admin),
            ("/usr/local/bin/tollgate.new ".into(), "tollgate ".into()),
            ("/usr/local/bin/tollgate ".into(), "tollgate ".into()),
            (
                "/etc/tollgate/tollgate.json".into(),
                "conf/tollgate.json".into(),
            ),
        ];
        let placeholders = vec![("PORT", main.gw.addr.port().to_string())];
        Setup {
            main,
            others: Vec::new(),
            rewrites,
            placeholders,
        }
    }

    fn nodes(&self) -> impl Iterator<Item = &Node<'a>> {
        std::iter::once(&self.main).chain(&self.others)
    }

    /// The command as it runs here (see the module docs).
    fn rewrite(&self, text: &str) -> String {
        let mut line = text.to_string();
        if shell_words(&line) == ["kill", "-HUP"] {
            line = format!("kill -HUP {}", self.main.gw.pid());
        }
        for (from, to) in &self.rewrites {
            line = line.replace(from.as_str(), to);
        }
        // Placeholders are whole alphanumeric runs.
        let mut out = String::new();
        let mut token = String::new();
        for c in line.chars().chain(std::iter::once('\u{0}')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                token.push(c);
                continue;
            }
            match self.placeholders.iter().find(|(p, _)| *p == token) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&token),
            }
            token.clear();
            if c != '\u{0}' {
                out.push(c);
            }
        }
        for fixed in [
            "localhost:",
            "127.0.0.1:8080",
            "127.0.0.1:9091",
            "127.0.0.1:8000",
        ] {
            let bare = out.match_indices(fixed).any(|(i, _)| {
                !out[i + fixed.len()..].starts_with(|c: char| c.is_ascii_digit())
                    || fixed == "localhost:"
            });
            assert!(
                !bare,
                "`{text}` still names {fixed} once rewritten: `{out}`"
            );
        }
        assert!(
            !out.contains("redis-cli") || out.contains("redis-cli -p "),
            "`{text}` would reach the default Redis: `{out}`"
        );
        let left: Vec<String> = shell_words(&out)
            .iter()
            .flat_map(|w| {
                w.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .filter(|t| PLACEHOLDERS.contains(t) && *t != "N")
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(left.is_empty(), "`{text}`: no value here for {left:?}");
        out
    }

    /// The node whose admin address the rewritten command calls, with the target it asks for.
    fn admin_target(&self, line: &str) -> Option<(&Node<'a>, String)> {
        self.nodes().find_map(|n| {
            let admin = n.gw.admin.to_string();
            let rest = line.match_indices(&admin).find_map(|(at, _)| {
                let rest = &line[at + admin.len()..];
                (!rest.starts_with(|c: char| c.is_ascii_digit())).then_some(rest)
            })?;
            let target: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '\'' | '"'))
                .collect();
            Some((
                n,
                if target.is_empty() {
                    "/".into()
                } else {
                    target
                },
            ))
        })
    }
}

fn query_param(target: &str, name: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn admin_get(node: &Node, target: &str) -> common::Response {
    let auth = node.token.as_ref().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    get(node.gw.admin, target, &headers)
}

/// `tollgate_config_reloads_total{result="success"}` of a node (0 before the first).
fn reloads(node: &Node) -> u64 {
    admin_get(node, "/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_config_reloads_total{result=\"success\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for_reloads(node: &Node, want: u64, what: &str) {
    let done = common::wait_until(WAIT, || reloads(node) >= want);
    assert!(
        done,
        "{what}: the success count of config reloads did not reach {want} (it is {})",
        reloads(node)
    );
}

/// The capacity the node's config gives `limit` (its `capacity`, or a quota's `quota`).
fn capacity_of(node: &Node, limit: &str) -> u64 {
    let l = &node.config["limits"][limit];
    l["capacity"]
        .as_u64()
        .or_else(|| l["quota"].as_u64())
        .unwrap_or_else(|| panic!("no limit {limit} in {}", node.config))
}

/// A key of `limit` (keyed by `x-api-key`) refused by the node's proxy, so that `/buckets`
/// has a bucket to list.
fn refuse_a_key(node: &Node, limit: &str) {
    let key = "refused-by-docs-test";
    let refused = (0..capacity_of(node, limit) + 50).any(|_| {
        let r = get(node.gw.addr, "/rating/1", &[("x-api-key", key)]);
        r.status == 429 && r.json()["limit"] == limit
    });
    assert!(refused, "the gateway never refused {key} on {limit}");
}

/// The checks of an admin API answer, by endpoint; `before` holds what was peeked before the
/// command ran (a `/reset`'s missing tokens, the reload count).
fn check_admin(cmd: &DocCommand, node: &Node, target: &str, out: &str, before: u64) {
    let path = target.split('?').next().unwrap_or(target);
    let at = cmd.at();
    let json = || -> Value {
        serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("{at}: `{}` printed no JSON ({e}): {out}", cmd.text))
    };
    let sketch = |path: &str| {
        let sketches = endpoint_sketches();
        let s = sketches.get(path).unwrap_or_else(|| {
            panic!("docs/admin-api.md documents no answer for {path} (sketches: {sketches:?})")
        });
        if let Err(e) = check_sketch(&json(), s) {
            panic!(
                "{at}: `{}`: the answer differs from docs/admin-api.md: {e}",
                cmd.text
            );
        }
    };
    let param = |name: &str| {
        query_param(target, name).unwrap_or_else(|| panic!("{at}: no {name}= in {target}"))
    };
    match path {
        "/health" => {
            sketch(path);
            assert_eq!(json()["node_id"], node.config["node_id"], "{at}: {out}");
        }
        "/rating" => {
            sketch(path);
            let (v, limit) = (json(), param("limit"));
            assert_eq!(
                (&v["limit"], &v["key"]),
                (&json!(limit), &json!(param("key"))),
                "{at}: {out}"
            );
            assert_eq!(v["capacity"], capacity_of(node, &limit), "{at}: {out}");
            let remaining = v["remaining"].as_u64().expect("a whole remaining");
            assert!(remaining <= capacity_of(node, &limit), "{at}: {out}");
        }
        "/consume" => {
            sketch(path);
            let (v, limit) = (json(), param("limit"));
            let cost: u64 = param("cost").parse().expect("a whole cost");
            let left = v["remaining"].as_u64().expect("remaining");
            assert!(left + cost <= capacity_of(node, &limit), "{at}: {out}");
        }
        "/buckets" => {
            sketch(path);
            let v = json();
            assert_eq!(v["limit"], param("limit"), "{at}: {out}");
            let first = &v["buckets"][0];
            assert!(
                first["rejected_last_minute"].as_u64() >= Some(1),
                "{at}: {out}"
            );
            // The key is a fingerprint (16 hex digits) unless raw=1.
            let key = first["key"].as_str().unwrap_or_default();
            if query_param(target, "raw").as_deref() != Some("1") {
                assert!(
                    key.len() == 16 && key.chars().all(|c| c.is_ascii_hexdigit()),
                    "{at}: {out}"
                );
            }
        }
        "/reset" => {
            sketch(path);
            let (v, key) = (json(), param("key"));
            assert_eq!(
                (&v["limit"], &v["key"]),
                (&json!(param("limit")), &json!(key))
            );
            assert_eq!(v["remaining"], v["capacity"], "{at}: not refilled: {out}");
            // A token may refill between the peek and the reset.
            let credited = v["credited"].as_u64().expect("credited");
            assert!(
                credited == before || credited + 1 == before,
                "{at}: credited {credited}, {before} were missing: {out}"
            );
            let r = get(node.gw.addr, "/rating/1", &[("x-api-key", &key)]);
            assert_eq!(r.status, 200, "{at}: {key} after the reset: {}", r.text());
        }
        "/reload" => {
            let v = json();
            assert!(v.get("errors").is_none(), "{at}: {out}");
            wait_for_reloads(node, before + 1, &at);
        }
        "/status" => {
            let v = json();
            assert_eq!(v["node"]["id"], node.config["node_id"], "{at}: {out}");
            let names: BTreeSet<&str> = v["limits"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["name"].as_str())
                .collect();
            let configured: BTreeSet<&str> = node.config["limits"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(names, configured, "{at}: {out}");
        }
        "/" => {
            let id = node.config["node_id"].as_str().expect("a node_id");
            assert!(
                out.contains("<html") && out.contains(&format!("tollgate {id} status")),
                "{at}: no status page of {id}: {out}"
            );
        }
        _ => panic!(
            "{at}: `{}`: no check here for the admin endpoint {path}",
            cmd.text
        ),
    }
}

/// `# the 6th today` -> 6.
fn nth(comment: Option<&str>) -> Option<usize> {
    let rest = comment?.strip_prefix("the ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let suffix = &rest[digits.len()..];
    ["st ", "nd ", "rd ", "th "]
        .iter()
        .any(|s| suffix.starts_with(s))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Runs one doc command and checks what it printed. Panics (with the command's place and
/// output) on a failure, or when nothing of its output could be checked.
fn run_doc(cmd: &DocCommand, s: &Setup, log: &mut Log) {
    let line = s.rewrite(&cmd.text);
    let at = cmd.at();
    let words = shell_words(&line);
    let comment = cmd.comment.as_deref();
    if let Some(n) = nth(comment) {
        for _ in 1..n {
            let r = sh(&line);
            assert!(r.status.success(), "{at}: {}", r.report(&line));
        }
    }
    // What the checks compare with, read before the command runs.
    let admin = s.admin_target(&line);
    let before = match (&admin, words.first().map(String::as_str)) {
        (Some((node, target)), _) if target.starts_with("/reload") => reloads(node),
        (Some((node, target)), _) if target.starts_with("/reset") => {
            let (limit, key) = (
                query_param(target, "limit").expect("limit="),
                query_param(target, "key").expect("key="),
            );
            let v = admin_get(node, &format!("/rating?limit={limit}&key={key}")).json();
            v["capacity"].as_u64().unwrap_or(0) - v["remaining"].as_u64().unwrap_or(0)
        }
        (Some((node, target)), _) if target.starts_with("/buckets") => {
            refuse_a_key(node, &query_param(target, "limit").expect("limit="));
            0
        }
        (None, Some("kill")) => reloads(&s.main),
        _ => 0,
    };

    let r = sh(&line);
    let report = r.report(&line);
    assert!(r.status.success(), "{at}: {report}");
    let mut checks = 0;

    if !cmd.output.is_empty() {
        let ttl = words.iter().any(|w| w.eq_ignore_ascii_case("pttl"));
        let missing = missing_lines(&cmd.output, &r.stdout, ttl);
        assert!(
            missing.is_empty(),
            "{at}: documented output lines not printed:\n{}\n{report}",
            missing.join("\n")
        );
        checks += 1;
    }
    if let Some(sketch) = comment.filter(|c| c.starts_with('{')) {
        let real: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{at}: not JSON ({e}): {report}"));
        if let Err(e) = check_sketch(&real, &parse_sketch(sketch)) {
            panic!("{at}: the output differs from its comment {sketch}: {e}\n{report}");
        }
        checks += 1;
    }
    if comment == Some("no RateLimit headers") {
        let header = r
            .stdout
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("ratelimit"));
        assert!(header.is_none(), "{at}: {header:?}\n{report}");
        checks += 1;
    }
    if let Some((node, target)) = &admin {
        check_admin(cmd, node, target, &r.stdout, before);
        checks += 1;
    }
    match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["kill", "-HUP", _] => {
            wait_for_reloads(&s.main, before + 1, &at);
            checks += 1;
        }
        ["tollgate", "check", "-c", file] => {
            let want = format!("{file}: ok (node ");
            assert!(
                r.stdout.lines().count() == 1 && r.stdout.starts_with(&want),
                "{at}: {report}"
            );
            checks += 1;
        }
        ["tollgate", "inspect", ..]
            if cmd.output.is_empty() && !words.contains(&"--key".to_string()) =>
        {
            let count = r
                .stdout
                .lines()
                .last()
                .and_then(|l| l.strip_suffix(" bucket(s)"));
            assert!(
                count.and_then(|n| n.parse::<u64>().ok()) >= Some(1),
                "{at}: no `N bucket(s)` line: {report}"
            );
            checks += 1;
        }
        ["ss", ..] => {
            let ports: Vec<String> = s
                .nodes()
                .map(|n| format!(":{} ", n.gw.addr.port()))
                .collect();
            let holder = r.stdout.lines().any(|l| {
                l.starts_with("LISTEN")
                    && ports.iter().any(|p| l.contains(p.as_str()))
                    && l.contains("((\"tollgate\"")
            });
            assert!(
                holder,
                "{at}: the gateway is not shown holding its port: {report}"
            );
            checks += 1;
        }
        _ => {}
    }
    assert!(
        checks > 0,
        "{at}: `{}` ran, but docs_commands.rs has no check of its output: document its \
         output, or add a check to run_doc\n{report}",
        cmd.text
    );
    log.ran.push(cmd.clone());
    log.texts.push(cmd.text.clone());
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// The commands a scenario runs: those of a doc file's section (its heading starts with
/// `section`) of one of `kinds` that start with `prefix` and are not in [`NOT_RUN`].
struct Claim {
    file: &'static str,
    section: &'static str,
    kinds: &'static [Kind],
    prefix: &'static str,
}

const ANY: &[Kind] = &[Kind::Prompt, Kind::Script, Kind::Inline];

const PLANS: &[Claim] = &[Claim {
    file: "README.md",
    section: "Plans and quotas",
    kinds: ANY,
    prefix: "",
}];
const AI: &[Claim] = &[Claim {
    file: "README.md",
    section: "AI APIs",
    kinds: ANY,
    prefix: "",
}];
const DEMO: &[Claim] = &[
    Claim {
        file: "docs/admin-api.md",
        section: "Endpoints",
        kinds: ANY,
        prefix: "curl ",
    },
    Claim {
        file: "docs/install.md",
        section: "Start",
        kinds: ANY,
        prefix: "curl ",
    },
    Claim {
        file: "docs/install.md",
        section: "Upgrade",
        kinds: ANY,
        prefix: "/usr/local/bin/tollgate.new check ",
    },
    Claim {
        file: "docs/operating.md",
        section: "When things fail",
        kinds: ANY,
        prefix: "ss ",
    },
];
const SHARED: &[Claim] = &[
    Claim {
        file: "docs/shared-state.md",
        section: "Reading a bucket with redis-cli",
        kinds: &[Kind::Prompt],
        prefix: "",
    },
    Claim {
        file: "docs/operating.md",
        section: "Reading the state",
        kinds: ANY,
        prefix: "tollgate inspect -c ",
    },
    Claim {
        file: "docs/operating.md",
        section: "Status page",
        kinds: ANY,
        prefix: "curl ",
    },
];

fn claimed<'a>(docs: &'a [DocCommand], claims: &[Claim]) -> Vec<&'a DocCommand> {
    let mut out = Vec::new();
    for c in claims {
        let found: Vec<&DocCommand> = docs
            .iter()
            .filter(|d| d.file == c.file && d.section.starts_with(c.section))
            .filter(|d| c.kinds.contains(&d.kind))
            .filter(|d| d.text.starts_with(c.prefix) && listed(&d.file, &d.text).is_none())
            .collect();
        assert!(
            !found.is_empty(),
            "no command in {} under a heading \"{}...\" starts with {:?}: update the claims",
            c.file,
            c.section,
            c.prefix
        );
        out.extend(found);
    }
    out.sort_by_key(|d| (d.file.clone(), d.line));
    out
}

/// What a scenario ran: the doc commands, and every command text (extra runs included) for
/// the synopses and mentions to be matched against.
#[derive(Default)]
struct Log {
    ran: Vec<DocCommand>,
    texts: Vec<String>,
}

/// Starts the gateway with a shipped config: its upstream servers (`127.0.0.1:8000`) are
/// `up`, its Redis the private one, its listeners and admin address the harness's.
fn start_gateway(
    file: &str,
    up: &Upstream,
    redis: Option<&RedisServer>,
    tweak: impl FnOnce(&mut Value),
) -> (Gateway, Value) {
    let mut shipped: Value =
        serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    tweak(&mut shipped);
    let mut config = shipped.clone();
    let obj = config.as_object_mut().expect("a config object");
    obj.remove("listeners");
    for (name, u) in obj["upstreams"].as_object_mut().expect("upstreams") {
        for server in u["servers"].as_array_mut().expect("servers") {
            assert_eq!(server, "127.0.0.1:8000", "{file}: upstream {name}");
            *server = json!(up.addr.to_string());
        }
    }
    if let Some(r) = redis {
        config["redis"]["url"] = json!(r.url);
    }
    (Gateway::builder(config).start(), shipped)
}

/// README, "Plans and quotas": the upstream and `conf/plans.json` as the section starts them,
/// then its transcript, its reloads, `/buckets` and `/reset`.
fn plans_scenario(docs: &[DocCommand]) -> Log {
    section_scenario(docs, PLANS)
}

/// README's "AI APIs": `conf/ai-api.json` in front of the upstream, its curl transcript.
fn ai_scenario(docs: &[DocCommand]) -> Log {
    section_scenario(docs, AI)
}

/// A README section that starts the upstream and the gateway with a shipped config
/// (`cargo run ...`), then runs its commands against them.
fn section_scenario(docs: &[DocCommand], claims: &[Claim]) -> Log {
    let mut log = Log::default();
    let mut up: Option<Upstream> = None;
    let mut gw: Option<(Gateway, Value)> = None;
    for cmd in claimed(docs, claims) {
        let mut words = shell_words(&cmd.text);
        if words.last().is_some_and(|w| w == "&") {
            words.pop();
        }
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        match w[..] {
            ["cargo", "run", "--release", "--bin", "rating-api", "--", ref args @ ..] => {
                assert_eq!(
                    args,
                    ["--listen", "127.0.0.1:8000"],
                    "{}: the upstream the configs name",
                    cmd.at()
                );
                up = Some(Upstream::start());
                log.texts.push(format!("rating-api {}", args.join(" ")));
            }
            ["cargo", "run", "--release", "--", "run", "-c", file] => {
                let up = up.as_ref().expect("the section starts the upstream first");
                gw = Some(start_gateway(file, up, None, |_| {}));
                log.texts.push(format!("tollgate run -c {file}"));
            }
            _ => {
                let (gw, config) = gw.as_ref().unwrap_or_else(|| {
                    panic!("{}: `{}` before the gateway is started", cmd.at(), cmd.text)
                });
                let setup = Setup::new(Node {
                    gw,
                    config: config.clone(),
                    token: None,
                });
                run_doc(cmd, &setup, &mut log);
                continue;
            }
        }
        log.ran.push(cmd.clone());
        log.texts.push(cmd.text.clone());
    }
    log
}

/// `conf/tollgate.json`, the demo config (and the one an install copies): the admin API's
/// examples, the install's health check and its check of a new binary, `ss` on the proxy port.
fn demo_scenario(docs: &[DocCommand]) -> Log {
    let mut log = Log::default();
    let up = Upstream::start();
    let (gw, config) = start_gateway("conf/tollgate.json", &up, None, |_| {});
    log.texts.push("rating-api --listen 127.0.0.1:8000".into());
    log.texts.push("tollgate run -c conf/tollgate.json".into());
    let setup = Setup::new(Node {
        gw: &gw,
        config,
        token: None,
    });
    for cmd in claimed(docs, DEMO) {
        run_doc(cmd, &setup, &mut log);
    }
    log
}

/// Two nodes of `conf/tollgate-redis.json` (edge-1, and edge-2 with an admin token) on a
/// private Redis, after 13 and 7 requests from one client, as docs/shared-state.md describes:
/// its redis-cli and `tollgate inspect` transcript, operating.md's `inspect -c CONFIG` and the
/// status page with a token.
fn shared_scenario(docs: &[DocCommand]) -> Log {
    let mut log = Log::default();
    let redis = RedisServer::start();
    let up = Upstream::start();
    let (gw1, config1) = start_gateway("conf/tollgate-redis.json", &up, Some(&redis), |_| {});
    let (gw2, config2) = start_gateway("conf/tollgate-redis.json", &up, Some(&redis), |c| {
        c["node_id"] = json!("edge-2");
        c["admin"]["token"] = json!(TOKEN);
    });
    log.texts.push("rating-api --listen 127.0.0.1:8000".into());
    log.texts
        .push("tollgate run -c conf/tollgate-redis.json".into());
    // Both nodes see each other (edge-2's admin API wants its token).
    gw1.settle(2);
    let edge2 = Node {
        gw: &gw2,
        config: config2,
        token: Some(TOKEN.into()),
    };
    let sees_both = || {
        let metrics = admin_get(&edge2, "/metrics").text();
        metrics.lines().any(|l| l == "tollgate_nodes_live 2")
    };
    assert!(
        common::wait_until(WAIT, sees_both),
        "edge-2 does not see 2 live nodes"
    );

    let hash = "tollgate:per-ip:127.0.0.1";
    // On one keep-alive connection each: a burst that takes more than the bucket refills,
    // so that neither node keeps it quiet (out of Redis).
    for (gw, node, n) in [(&gw1, "edge-1", 13), (&gw2, "edge-2", 7)] {
        let mut conn = common::Conn::open(gw.addr);
        for _ in 0..n {
            let r = conn
                .request("GET", "/rating/1", &[("x-api-key", "demo")], b"")
                .unwrap_or_else(|e| panic!("{node}: {e}"));
            assert_eq!(r.status, 200, "{node}: {}", r.text());
        }
        let field = format!("{node}:consumed");
        let synced = common::wait_until(WAIT, || {
            redis.try_cmd(&["HGET", hash, &field]).ok() == Some(n.to_string())
        });
        assert!(
            synced,
            "{hash} {field} is not {n}: {:?}",
            redis.try_cmd(&["HGETALL", hash])
        );
    }

    let config_path = gw1.config_path.display().to_string();
    let mut setup = Setup::new(Node {
        gw: &gw1,
        config: config1,
        token: None,
    });
    setup.others.push(edge2);
    setup.rewrites.extend([
        (
            "redis-cli ".to_string(),
            format!("redis-cli -p {} ", redis.port),
        ),
        ("conf/tollgate-redis.json".to_string(), config_path.clone()),
    ]);
    setup.placeholders.extend([
        ("CONFIG", config_path),
        ("TOKEN", TOKEN.to_string()),
        ("ADMIN", gw2.admin.to_string()),
    ]);
    for cmd in claimed(docs, SHARED) {
        run_doc(cmd, &setup, &mut log);
    }

    // The options of the inspect synopsis the transcript leaves out.
    let text = "tollgate inspect -c conf/tollgate-redis.json --json --max 10";
    let line = setup.rewrite(text);
    let r = sh(&line);
    assert!(r.status.success(), "{}", r.report(&line));
    let listed: Value = serde_json::from_str(&r.stdout).expect("inspect --json prints JSON");
    let bucket = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["redis_key"] == hash)
        .unwrap_or_else(|| panic!("{hash} not listed: {}", r.report(&line)));
    assert_eq!(bucket["nodes"]["edge-1"]["consumed"], 13, "{bucket}");
    assert_eq!(bucket["nodes"]["edge-2"]["consumed"], 7, "{bucket}");
    log.texts.push(text.into());

    // The status page's data, which operating.md names beside the page ("or `/status`").
    let text = "curl -s -H 'Authorization: Bearer TOKEN' http://ADMIN/status";
    let line = setup.rewrite(text);
    let r = sh(&line);
    let v: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.report(&line)));
    assert_eq!(v["node"]["id"], "edge-2", "{}", r.report(&line));
    assert_eq!(v["redis"]["live_nodes"], 2, "{}", r.report(&line));
    log.texts.push(text.into());
    log
}

/// `tollgate check -c FILE` on every shipped config, and on a broken one.
fn checks_scenario(_: &[DocCommand]) -> Log {
    let mut log = Log::default();
    let mut confs: Vec<String> = std::fs::read_dir(repo().join("conf"))
        .expect("read conf/")
        .map(|e| {
            e.expect("a conf/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("conf/{n}"))
        .collect();
    confs.sort();
    for file in &confs {
        let text = format!("tollgate check -c {file}");
        let r = sh(&text);
        assert!(
            r.status.success() && r.stdout.starts_with(&format!("{file}: ok (node ")),
            "{}",
            r.report(&text)
        );
        log.texts.push(text);
    }
    // A broken config: exit 2 and `FILE:LINE:COL: json.path: message`.
    let dir = tempfile::tempdir().expect("a temp dir");
    let bad = dir.path().join("bad.json");
    let mut config: Value = serde_json::from_str(&read("conf/tollgate.json")).expect("JSON");
    config["bogus"] = json!(1);
    std::fs::write(&bad, serde_json::to_string_pretty(&config).expect("JSON")).expect("write");
    let text = format!("tollgate check -c {}", bad.display());
    let r = sh(&text);
    let first = r
        .stdout
        .lines()
        .chain(r.stderr.lines())
        .next()
        .unwrap_or_default();
    let rest = first.strip_prefix(&format!("{}:", bad.display()));
    let located = rest.and_then(|rest| {
        let mut parts = rest.splitn(3, ':');
        let line: u32 = parts.next()?.parse().ok()?;
        let col: u32 = parts.next()?.parse().ok()?;
        Some((line, col, parts.next()?.to_string()))
    });
    assert!(
        r.status.code() == Some(2)
            && located
                .as_ref()
                .is_some_and(|(_, _, m)| m.starts_with(" bogus: ")),
        "expected exit 2 and `FILE:LINE:COL: bogus: ...`:\n{}",
        r.report(&text)
    );
    log.texts.push(text);
    log
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[test]
fn every_documented_command_is_run_or_listed() {
    for cmd in ["curl", "redis-cli", "redis-server", "ss"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{cmd} not found: scripts/test.sh installs redis-server and redis-tools; \
             apt-get install curl iproute2"
        );
    }
    let docs = all_commands();
    let started = Instant::now();
    type Scenario = fn(&[DocCommand]) -> Log;
    let scenarios: [(&str, Scenario); 5] = [
        ("plans", plans_scenario),
        ("ai", ai_scenario),
        ("demo", demo_scenario),
        ("shared", shared_scenario),
        ("checks", checks_scenario),
    ];
    let all = &docs;
    let results: Vec<(&str, Result<Log, String>)> = thread::scope(|scope| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|&(name, f)| (name, scope.spawn(move || f(all))))
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| (name, h.join().map_err(panic_message)))
            .collect()
    });
    eprintln!("scenarios ran in {:?}", started.elapsed());
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("scenario {name}: {e}")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));

    let logs: Vec<Log> = results.into_iter().filter_map(|(_, r)| r.ok()).collect();
    let ran: BTreeSet<(String, usize, String)> = logs
        .iter()
        .flat_map(|l| &l.ran)
        .map(|c| (c.file.clone(), c.line, c.text.clone()))
        .collect();
    let texts: Vec<Vec<String>> = logs
        .iter()
        .flat_map(|l| &l.texts)
        .map(|t| shell_words(t))
        .collect();

    let mut unhandled = Vec::new();
    let mut summary = Vec::new();
    for cmd in &docs {
        let how = if ran.contains(&(cmd.file.clone(), cmd.line, cmd.text.clone())) {
            "run".to_string()
        } else if let Some(l) = listed(&cmd.file, &cmd.text) {
            format!("listed: {}", l.places[0].0)
        } else {
            let covered = !cmd.shows_output()
                && synopsis_forms(&cmd.text).iter().all(|form| {
                    texts.iter().any(|t| covers(t, form))
                        || listed(&cmd.file, &form.join(" ")).is_some()
                });
            if !covered {
                unhandled.push(format!("{}: `{}` ({:?})", cmd.at(), cmd.text, cmd.kind));
            }
            if covered { "named" } else { "NEITHER" }.to_string()
        };
        summary.push(format!(
            "{:<26} {:<8} {how:<32} {}",
            cmd.at(),
            format!("{:?}", cmd.kind),
            cmd.text
        ));
    }
    eprintln!("{}", summary.join("\n"));
    assert!(
        unhandled.is_empty(),
        "commands the docs show that are neither run by tests/docs_commands.rs nor listed in \
         its NOT_RUN table:\n{}",
        unhandled.join("\n")
    );
}

#[test]
fn not_run_entries_match_doc_commands_and_name_real_places() {
    let docs = all_commands();
    let mut problems = Vec::new();
    for entry in NOT_RUN {
        for pattern in entry.patterns {
            let used = docs.iter().any(|c| {
                (entry.doc.is_empty() || entry.doc == c.file)
                    && (glob(pattern, &table_text(&c.text))
                        || synopsis_forms(&c.text)
                            .iter()
                            .any(|f| glob(pattern, &table_text(&f.join(" ")))))
            });
            if !used {
                problems.push(format!(
                    "`{pattern}` matches no command of the docs any more"
                ));
            }
        }
        for (file, needle) in entry.places {
            match std::fs::read_to_string(repo().join(file)) {
                Ok(text) if text.contains(needle) => {}
                Ok(_) => problems.push(format!(
                    "{file} does not contain {needle:?} (claimed for {:?}: {})",
                    entry.patterns, entry.exercised
                )),
                Err(e) => problems.push(format!("{file}: {e} (claimed for {:?})", entry.patterns)),
            }
        }
        // A script the table names at least parses.
        for pattern in entry.patterns {
            let first = pattern.split_whitespace().find(|w| !is_env_assignment(w));
            if let Some(script) = first.filter(|w| w.starts_with("scripts/") && w.ends_with(".sh"))
            {
                let ok = Command::new("bash")
                    .args(["-n", script])
                    .current_dir(repo())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    problems.push(format!("bash -n {script} fails"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_parser_finds_each_kind_of_command() {
    let md = [
        "# T",
        "",
        "Run `tollgate check -c FILE` or `redis-server`, and",
        "`curl -s",
        "localhost:9091/health`.",
        "",
        "```sh",
        "apt-get install x   # a comment",
        "# only a comment",
        "cargo build \\",
        "  --release",
        "```",
        "",
        "```json",
        "{\"a\": 1}",
        "```",
        "",
        "```",
        "$ curl -si x # the 2nd today",
        "HTTP/1.1 200 OK",
        "$ redis-cli PTTL k",
        "14057",
        "```",
    ]
    .join("\n");
    let cmds = parse_doc("x.md", &md);
    let got: Vec<(Kind, usize, &str, Option<&str>)> = cmds
        .iter()
        .map(|c| (c.kind, c.line, c.text.as_str(), c.comment.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Kind::Inline, 3, "tollgate check -c FILE", None),
            (Kind::Inline, 4, "curl -s localhost:9091/health", None),
            (Kind::Script, 8, "apt-get install x", Some("a comment")),
            (Kind::Script, 10, "cargo build --release", None),
            (Kind::Prompt, 19, "curl -si x", Some("the 2nd today")),
            (Kind::Prompt, 21, "redis-cli PTTL k", None),
        ]
    );
    assert_eq!(cmds[4].output, ["HTTP/1.1 200 OK"]);
    assert_eq!(nth(cmds[4].comment.as_deref()), Some(2));
    assert!(is_command(
        "INSTR_PLANS=1 scripts/bench_instructions.sh 6000"
    ));
    assert!(!is_command("TOLLGATE_LOG_FORMAT=json"));
    assert!(!is_command("tollgate"));
}

#[test]
fn the_comparisons_can_fail() {
    // Exact numbers stay exact; numbers that move with the clock match any number.
    assert!(line_matches(
        r#"ratelimit: "daily";r=0;t=73031"#,
        r#"ratelimit: "daily";r=0;t=5"#,
        false
    ));
    assert!(!line_matches(
        r#"ratelimit: "daily";r=0;t=73031"#,
        r#"ratelimit: "daily";r=1;t=5"#,
        false
    ));
    assert!(!line_matches(
        "Retry-After: 73031",
        "retry-after: 12",
        false
    ));
    assert!(line_matches("retry-after: 73031", "retry-after: 12", false));
    assert!(line_matches(
        "edge-1:seen_ms  1795419307454",
        "edge-1:seen_ms\t1795931881597",
        false
    ));
    assert!(!line_matches(
        "edge-1:consumed 13",
        "edge-1:consumed 14",
        false
    ));
    assert!(!line_matches(
        "HTTP/1.1 200 OK",
        "HTTP/1.1 429 Too Many Requests",
        false
    ));
    assert!(line_matches("14057", "19534", true));
    assert!(!line_matches("14057", "-2 x", true));
    assert_eq!(
        missing_lines(&["a 1".into(), "...".into(), "b 2".into()], "b 2\nc", false),
        ["a 1"]
    );

    // Sketches: keys exactly, values where given.
    let health = parse_sketch(r#"{"status":"ok"\|"degraded","node_id":…,"redis":"disabled"}"#);
    assert!(check_sketch(
        &json!({"status":"ok","node_id":"n","redis":"disabled"}),
        &health
    )
    .is_ok());
    assert!(check_sketch(
        &json!({"status":"down","node_id":"n","redis":"disabled"}),
        &health
    )
    .is_err());
    assert!(check_sketch(&json!({"status":"ok","node_id":"n"}), &health).is_err());
    let buckets = parse_sketch(r#"{"limit","buckets":[{"key","tokens"}]}"#);
    assert!(check_sketch(
        &json!({"limit":"l","buckets":[{"key":"k","tokens":1}]}),
        &buckets
    )
    .is_ok());
    assert!(check_sketch(&json!({"limit":"l","buckets":[{"key":"k"}]}), &buckets).is_err());

    // Synopses: placeholders match a word, each optional group must be covered.
    let forms = synopsis_forms("tollgate inspect -c FILE [--limit NAME] [--json]");
    assert_eq!(forms.len(), 3);
    let ran = shell_words("tollgate inspect -c conf/x.json --limit per-ip --key k");
    assert!(covers(&ran, &forms[0]) && covers(&ran, &forms[1]) && !covers(&ran, &forms[2]));
    assert!(!covers(
        &shell_words("tollgate check -c conf/x.json"),
        &forms[0]
    ));
    assert!(word_matches("http://ADMIN/", "http://127.0.0.1:1/"));
    assert!(!word_matches("-XPOST", "-XGET"));
    assert!(glob(
        "redis-cli -p * HGETALL k",
        "redis-cli -p 28856 HGETALL k"
    ));
    assert!(!glob("scripts/demo.sh", "scripts/demo.sh --shared"));
}
