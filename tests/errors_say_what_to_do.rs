//! Errors an operator meets first, read as printed by the real binary: each names the problem
//! and what to do next, without a panic or a backtrace, and exits non-zero when the process
//! cannot go on. A taken port, an unreadable config, Redis unreachable at start (the node
//! serves degraded), a missing TLS file, and an admin request without the right token.

mod common;

use common::{free_port, get, wait_until, Gateway, Upstream};
use serde_json::{json, Value};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough for a slow start; far shorter than pingora's 30 s of retries on a taken port.
const DEADLINE: Duration = Duration::from_secs(20);

/// A valid config without addresses, for [`Gateway::builder`] (which places them).
fn base(upstream: &str) -> Value {
    json!({
        "upstreams": { "api": { "servers": [upstream] } },
        "limits": { "per-ip": { "capacity": 10, "refill_per_second": 1, "key": ["client_ip"] } },
        "routes": [{ "name": "default", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-ip"] }],
    })
}

/// A valid config on the given addresses (its upstream is never contacted).
fn config(listen: SocketAddr, admin: SocketAddr) -> Value {
    let mut c = base("127.0.0.1:9");
    c["listeners"] = json!([{ "address": listen.to_string() }]);
    c["admin"] = json!({ "address": admin.to_string() });
    c
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Writes `config` as `dir/name` and returns its path as text.
fn write(dir: &Path, name: &str, config: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    path.display().to_string()
}

/// What `tollgate ARGS` printed (stdout and stderr) and its exit code; run as `uid` when given.
/// Killed if still running after [`DEADLINE`] (the code is then `None`).
fn tollgate(args: &[&str], uid: Option<u32>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("out.log");
    let log = File::create(&log_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .env("TOLLGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().expect("spawn tollgate");
    let mut status = None;
    wait_until(DEADLINE, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = std::fs::read_to_string(&log_path).unwrap();
    (status.and_then(|s| s.code()), out)
}

/// No panic, no backtrace.
fn assert_clean(out: &str) {
    assert!(
        !out.contains("panicked") && !out.contains("stack backtrace"),
        "{out}"
    );
}

fn assert_has(out: &str, phrases: &[&str]) {
    for p in phrases {
        assert!(out.contains(p), "missing {p:?} in:\n{out}");
    }
    assert_clean(out);
}

#[test]
fn a_listener_port_in_use_says_who_to_ask_and_what_to_change() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "t.json", &config(taken, loopback(free_port())));
    let started = Instant::now();
    let (code, out) = tollgate(&["run", "-c", &file], None);
    assert_eq!(code, Some(1), "{out}");
    let port = taken.port();
    assert_has(
        &out,
        &[
            &format!("tollgate: cannot listen on {taken}: address already in use: another process holds the port"),
            &format!("(see `ss -ltnp 'sport = :{port}'`)"),
            &format!("or change listeners[0].address in {file}"),
        ],
    );
    // Refused at once, not after pingora's 30 s of retries.
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
}

#[test]
fn an_admin_port_in_use_names_admin_address() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "t.json", &config(loopback(free_port()), taken));
    let (code, out) = tollgate(&["run", "-c", &file], None);
    assert_eq!(code, Some(1), "{out}");
    assert_has(
        &out,
        &[
            &format!("cannot listen on {taken}: address already in use"),
            &format!("`ss -ltnp 'sport = :{}'`", taken.port()),
            &format!("or change admin.address in {file}"),
        ],
    );
}

#[test]
fn an_unreadable_config_says_why_and_what_to_give_instead() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let missing = format!("{d}/absent.json");
    std::fs::write(
        dir.path().join("yaml.json"),
        "listeners:\n  - address: 0.0.0.0:80\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.json"), "\n").unwrap();
    std::fs::write(dir.path().join("cut.json"), "{\"listeners\": [").unwrap();
    let cwd = std::env::current_dir().unwrap().display().to_string();
    let cases: [(String, Vec<String>); 5] = [
        (missing.clone(), vec![
            format!("{missing}: cannot read the config file: No such file or directory"),
            format!("give the path of an existing config file with -c FILE (a relative path starts from the working directory, {cwd})"),
        ]),
        (d.clone(), vec![
            format!("{d}: cannot read the config file: Is a directory"),
            format!("give the JSON config file inside it with -c FILE (like {d}/tollgate.json)"),
        ]),
        (format!("{d}/yaml.json"), vec![
            format!("{d}/yaml.json:1:1: expected value; the file is not JSON: a config is one JSON object, {{ ... }}"),
        ]),
        (format!("{d}/empty.json"), vec![
            "EOF while parsing a value; the file is empty: a config is one JSON object".into(),
        ]),
        (format!("{d}/cut.json"), vec![
            "EOF while parsing a list; not valid JSON: fix it at this line and column".into(),
        ]),
    ];
    for (file, phrases) in &cases {
        for cmd in ["check", "run"] {
            let (code, out) = tollgate(&[cmd, "-c", file], None);
            assert_eq!(code, Some(2), "{cmd} -c {file}: {out}");
            let phrases: Vec<&str> = phrases.iter().map(String::as_str).collect();
            assert_has(&out, &phrases);
            assert!(out.ends_with(&format!("{file}: 1 error\n")), "{out}");
        }
    }
}

#[test]
fn a_config_without_read_permission_says_who_must_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "t.json", &config(loopback(1), loopback(2)));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Root reads anything: run as nobody then, for whom the file is closed.
    let as_root = std::fs::metadata(&file).unwrap().uid() == 0;
    if as_root {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let uid = as_root.then_some(65534);
    for cmd in ["check", "run"] {
        let (code, out) = tollgate(&[cmd, "-c", &file], uid);
        assert_eq!(code, Some(2), "{cmd}: {out}");
        assert_has(
            &out,
            &[
                &format!("{file}: cannot read the config file: Permission denied"),
                "the user tollgate runs as must be allowed to read it and to enter its folders",
                &format!("(see `ls -l {file}` and `id`)"),
            ],
        );
    }
}

#[test]
fn redis_unreachable_at_start_serves_degraded_and_says_what_to_check() {
    let up = Upstream::start();
    let refused = format!("127.0.0.1:{}", free_port());
    for (host, why) in [
        (
            refused.as_str(),
            "connection refused: nothing listens at that host and port",
        ),
        (
            "no-such-host.invalid:6379",
            "the host name does not resolve",
        ),
    ] {
        let mut cfg = base(&up.addr.to_string());
        cfg["redis"] = json!({ "url": format!("redis://:hunter2-secret@{host}") });
        let gw = Gateway::builder(cfg).start();
        let log = gw.log();
        let masked = format!("redis://:***@{host}");
        assert_has(
            &log,
            &[
                &format!("redis unreachable at start ({why}): serving degraded, limiting from this node's own view; it syncs once redis answers"),
                &format!("Check redis.url in {} ({masked}), that redis-server runs there", gw.config_path.display()),
                &format!("`redis-cli -u '{masked}' ping` (with the password for ***) from this host"),
            ],
        );
        assert!(!log.contains("hunter2-secret"), "{log}");
        // As documented: it serves, degraded, until Redis comes.
        let h = get(gw.admin, "/health", &[]).json();
        assert_eq!(h["status"], "degraded", "{h}");
        assert_eq!(get(gw.addr, "/", &[]).status, 200);
    }
}

#[test]
fn a_missing_tls_file_names_the_file_the_key_and_what_it_should_hold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut cfg = config(loopback(free_port()), loopback(free_port()));
    cfg["listeners"][0]["tls"] =
        json!({ "cert": format!("{d}/gw.crt"), "key": format!("{d}/gw.key") });
    cfg["upstreams"]["api"] = json!({ "servers": ["127.0.0.1:9"], "tls": true, "sni": "api.test", "ca_file": format!("{d}/up-ca.pem") });
    cfg["redis"] = json!({ "url": "rediss://127.0.0.1:9", "ca_file": format!("{d}/redis-ca.pem") });
    let file = write(dir.path(), "t.json", &cfg);
    let expected = [
        (
            "listeners[0].tls.cert",
            "certificate file",
            "gw.crt",
            "a PEM certificate chain, this server's certificate first",
        ),
        (
            "listeners[0].tls.key",
            "key file",
            "gw.key",
            "the PEM private key of the listener's certificate",
        ),
        (
            "upstreams.api.ca_file",
            "CA file",
            "up-ca.pem",
            "PEM CA certificates that signed the server's certificate",
        ),
        (
            "redis.ca_file",
            "CA file",
            "redis-ca.pem",
            "PEM CA certificates that signed the server's certificate",
        ),
    ];
    for cmd in ["check", "run"] {
        let (code, out) = tollgate(&[cmd, "-c", &file], None);
        assert_eq!(code, Some(2), "{cmd}: {out}");
        for (key, what, name, holds) in expected {
            let line = out
                .lines()
                .find(|l| l.contains(&format!(" {key}: ")))
                .unwrap_or_else(|| panic!("no error for {key}:\n{out}"));
            assert!(line.starts_with(&format!("{file}:")), "{line}");
            let phrases = [
                &format!("{key}: cannot read {what} \"{d}/{name}\": No such file or directory"),
                &format!("; it should hold {holds}; check the path"),
            ];
            assert_has(line, &phrases.map(String::as_str));
        }
        assert!(out.ends_with(&format!("{file}: 4 errors\n")), "{out}");
    }
}

#[test]
fn an_admin_request_without_the_right_token_is_told_which_header_to_send() {
    let token = "s3cret-admin-token";
    let mut cfg = base("127.0.0.1:9");
    cfg["admin"] = json!({ "token": token });
    let gw = Gateway::builder(cfg).start();
    let send = "`Authorization: Bearer <admin.token from the config>`";
    for (headers, says) in [
        (vec![], "admin token required: send the header "),
        (
            vec![("authorization", "Bearer nope")],
            "admin token does not match: send ",
        ),
        (
            vec![("authorization", "Basic czNjcmV0")],
            "Authorization header not understood: send ",
        ),
        (
            vec![("x-admin-token", token)],
            "admin token required: send the header ",
        ),
    ] {
        let r = get(gw.admin, "/health", &headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.starts_with(says) && error.contains(send),
            "{headers:?}: {error}"
        );
        assert!(!r.text().contains(token), "{}", r.text());
    }
    let auth = format!("Bearer {token}");
    let r = get(gw.admin, "/health", &[("authorization", auth.as_str())]);
    assert_eq!(r.status, 200, "{}", r.text());
}
