//! `scripts/demo.sh --shared` end to end: the script starts its own Redis, the example upstream
//! and three nodes from the binaries this build made (`DEMO_BIN_DIR`), runs its traffic, its
//! Redis outage and its checks, and exits (`DEMO_NO_WAIT=1`). The test asserts exit 0 and the
//! lines that carry the demo's claims. The script runs in its own process group, so a run past
//! the deadline is ended with everything it started.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Signals the whole process group `pgid`.
fn kill_group(signal: &str, pgid: u32) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status();
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn shared_demo_runs_its_checks_and_passes() {
    for cmd in ["redis-server", "redis-cli", "curl"] {
        assert!(
            on_path(cmd),
            "{cmd} not found: scripts/test.sh installs redis-server and redis-tools, apt-get install curl"
        );
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tollgate"))
        .parent()
        .expect("the binary's directory");
    assert!(
        Path::new(env!("CARGO_BIN_EXE_rating-api")).parent() == Some(bin_dir),
        "tollgate and rating-api are built into one directory"
    );

    let mut child = Command::new("bash")
        .args(["scripts/demo.sh", "--shared"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DEMO_BIN_DIR", bin_dir)
        .env("DEMO_NO_WAIT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash scripts/demo.sh --shared");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            // SIGTERM lets the script's trap stop what it started; SIGKILL whatever is left.
            kill_group("-TERM", child.id());
            thread::sleep(Duration::from_secs(10));
            kill_group("-KILL", child.id());
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let out = stdout.join().expect("stdout reader");
    let err = stderr.join().expect("stderr reader");
    let report = format!("--- stdout:\n{out}\n--- stderr:\n{err}");
    let status = status.unwrap_or_else(|| panic!("the demo ran past {DEADLINE:?}\n{report}"));
    eprintln!("demo finished in {:?}", started.elapsed());
    assert!(status.success(), "the demo exited {status}\n{report}");

    let has = |needle: &str| {
        assert!(
            out.contains(needle),
            "no line with {needle:?} in the demo's output\n{report}"
        )
    };
    // The burst: statuses with the rate-limit headers, a refusal with its Retry-After.
    has("  a -> 200  ratelimit-policy: \"per-api-key\";q=10;w=5  ratelimit: \"per-api-key\";r=9;");
    has(" -> 429  ");
    has("retry-after: ");
    // The bucket as Redis holds it, through tollgate inspect and redis-cli.
    has("$ tollgate inspect -c a.json --limit per-api-key --key demo");
    has("tollgate:per-api-key:demo  limit=per-api-key");
    has("HGETALL tollgate:per-api-key:demo");
    for node in ["a", "b", "c"] {
        has(&format!("  {node}:consumed "));
    }
    // The outage.
    has("\"status\":\"degraded\"");
    has("ok: limiting goes on without Redis: 200s and 429s");
    has("ok: no more admitted than the limit allows");
    has("ok: the key within its limit got only 200s (3 of 3)");
    // Nothing lost.
    has("ok: the overloaded key got 429s");
    has("ok: every answer was a 200 or a 429 (0 others)");
    has("ok: Redis holds every admitted request: sum of consumed ");
    for node in ["a", "b", "c"] {
        has(&format!("ok: node {node}: consumed "));
    }
    assert!(!out.contains("FAILED"), "a check failed\n{report}");
    has("All checks passed.");
    has("admin http://127.0.0.1:");

    // The figures the script compared agree, as it says.
    let line = out
        .lines()
        .find(|l| l.starts_with("ok: Redis holds every admitted request"))
        .expect("the sum line");
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        numbers.len() == 2 && numbers[0] == numbers[1] && numbers[0] > 0,
        "{line}"
    );
}
