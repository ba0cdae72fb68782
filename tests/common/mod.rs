//! The integration-test harness, shared by every `tests/*.rs` file through `mod common;`.
//!
//! Everything runs for real on ephemeral loopback ports: the `tollgate` binary, the example
//! upstream (`rating-api`) and `redis-server`. Readiness is polled with a deadline, never waited
//! for with a fixed sleep; a process that finds a port the harness picked already taken is
//! started again on new ports. The HTTP client is hand-written on `std::net::TcpStream` so that a
//! request goes on the wire byte for byte as the test wrote it (`//rating`, `/%72ating`, odd
//! header casing, duplicate headers, smuggling attempts).
//!
//! Each test file uses a subset of this module, hence the blanket `dead_code` allowance.
#![allow(dead_code)]
pub mod delay;

use serde_json::{json, Value};
use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Read and write timeout of every client connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_DEADLINE: Duration = Duration::from_secs(10);
const GATEWAY_DEADLINE: Duration = Duration::from_secs(30);
const REDIS_DEADLINE: Duration = Duration::from_secs(10);

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port on 127.0.0.1")
        .port()
}

/// Polls `f` every 10 ms until it returns true (then true) or `deadline` passes (then false).
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// The example upstream.

/// A running `rating-api` on an ephemeral port; killed on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    child: Child,
}

impl Upstream {
    /// Starts `rating-api --listen 127.0.0.1:0` and reads its port from the
    /// `rating-api listening on ADDR` line it prints once bound.
    pub fn start() -> Upstream {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rating-api"))
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rating-api");
        let stdout = child.stdout.take().expect("rating-api stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            lines.for_each(drop); // keep draining so the pipe never fills
        });
        let line = rx.recv_timeout(UPSTREAM_DEADLINE);
        let addr = line.as_deref().ok().and_then(|l| {
            l.strip_prefix("rating-api listening on ")?
                .trim()
                .parse()
                .ok()
        });
        match addr {
            Some(addr) => Upstream { addr, child },
            None => {
                kill_and_reap(&mut child);
                panic!("rating-api did not report its address within {UPSTREAM_DEADLINE:?}: got {line:?}");
            }
        }
    }

    /// Kills the upstream now (its port then refuses connections).
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway.

/// A running `tollgate run` with a harness-written config; SIGKILLed on drop. When a test
/// panics, the drop prints the end of the gateway's log to help explain the failure.
pub struct Gateway {
    /// The first proxy listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    token: Option<String>,
    listeners: Value,
    child: Child,
    dir: tempfile::TempDir,
}

/// Fills in the addresses the harness owns: `listeners` (only when the caller gave none) and
/// `admin.address` (always; any other `admin` field, such as `token`, is kept); and two worker
/// `threads` when the caller gave none, so that a test behaves alike on machines with more
/// CPUs (the default is the CPU count).
fn place_addresses(mut config: Value, listeners: &Value, admin: SocketAddr) -> Value {
    let obj = config
        .as_object_mut()
        .expect("a gateway config must be a JSON object");
    if obj.get("listeners").is_none_or(Value::is_null) {
        obj.insert("listeners".into(), listeners.clone());
    }
    obj.entry("threads").or_insert_with(|| json!(2));
    let admin_obj = obj.entry("admin").or_insert_with(|| json!({}));
    if !admin_obj.is_object() {
        *admin_obj = json!({});
    }
    admin_obj["address"] = json!(admin.to_string());
    config
}

/// Writes through a temporary file and a rename, so a reload never reads half a file.
fn write_config(path: &PathBuf, config: &Value) {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(config).expect("serialize config");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("move config into place");
}

/// How many times [`GatewayBuilder::try_start`] draws new ports after the gateway found one of
/// the ports the harness picked taken (another process bound it between [`free_port`] and the
/// gateway's bind).
const START_ATTEMPTS: usize = 5;

/// What pingora logs (at `WARN`) when a port it binds is taken; it then retries once a second
/// for 30 s and finally fails with `... ADDR still in use`.
const IN_USE_RETRY: &str = " is in use, will try again";
const IN_USE_FINAL: &str = " still in use";
/// What tollgate prints when it finds a port taken before it hands the addresses to pingora:
/// `tollgate: cannot listen on ADDR: address already in use: ...`.
const CANNOT_LISTEN: &str = "cannot listen on ";
const ALREADY_IN_USE: &str = ": address already in use";

/// How to start a [`Gateway`]: `Gateway::builder(config).env("K", "V").start()`.
#[must_use = "a builder does nothing until start() or try_start()"]
pub struct GatewayBuilder {
    config: Value,
    env: Vec<(String, String)>,
}

/// One start attempt's outcome.
enum Attempt {
    Ready(Gateway),
    /// A port the harness picked was taken: worth another attempt with new ports.
    PortTaken(String),
    /// Anything else (a refused config, a crash, a timeout, a port the test itself chose).
    Failed(String),
}

impl Gateway {
    /// A builder for a gateway running `config`. The harness fills in the admin address, and
    /// one listener when `config` has none.
    pub fn builder(config: Value) -> GatewayBuilder {
        GatewayBuilder {
            config,
            env: Vec::new(),
        }
    }
}

impl GatewayBuilder {
    /// Sets an environment variable of the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> GatewayBuilder {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets several environment variables of the gateway process.
    pub fn envs(self, vars: &[(&str, &str)]) -> GatewayBuilder {
        vars.iter().fold(self, |b, (k, v)| b.env(k, v))
    }

    /// Starts the gateway and waits (up to 30 s) until it listens on every listener and the
    /// admin address itself, the admin `/health` answers 200 and the listeners accept
    /// connections. Panics with the gateway's log otherwise.
    pub fn start(self) -> Gateway {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`GatewayBuilder::start`], but a gateway that exits or never becomes healthy is an
    /// `Err` holding its exit status and log, for tests that expect a refusal. When the
    /// gateway reports a port the harness picked as taken, it is killed and started again on
    /// new ports, up to [`START_ATTEMPTS`] times.
    pub fn try_start(self) -> Result<Gateway, String> {
        let mut taken = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.attempt() {
                Attempt::Ready(gw) => return Ok(gw),
                Attempt::PortTaken(why) => taken.push(why),
                Attempt::Failed(why) => return Err(why),
            }
        }
        Err(format!(
            "tollgate found a port the harness picked taken in each of {START_ATTEMPTS} attempts:\n{}",
            taken.join("\n")
        ))
    }

    fn attempt(&self) -> Attempt {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let given = self
            .config
            .get("listeners")
            .filter(|l| !l.is_null())
            .cloned();
        let given_ports: Vec<u16> = addresses_of(given.as_ref().unwrap_or(&Value::Null))
            .iter()
            .map(SocketAddr::port)
            .collect();
        // Distinct ports: two calls may return the same just-released port, and the admin
        // address must not be one of the test's own listeners.
        let mut picked: Vec<u16> = Vec::new();
        let mut pick = |avoid: &[u16]| loop {
            let p = free_port();
            if !avoid.contains(&p) && !picked.contains(&p) {
                picked.push(p);
                return p;
            }
        };
        let default_listeners = match given {
            Some(_) => Value::Null,
            None => json!([{ "address": format!("127.0.0.1:{}", pick(&given_ports)) }]),
        };
        let admin: SocketAddr = ([127, 0, 0, 1], pick(&given_ports)).into();
        let config = place_addresses(self.config.clone(), &default_listeners, admin);
        let listeners = config["listeners"].clone();
        let listener_addrs = addresses_of(&listeners);
        let addr = *listener_addrs.first().unwrap_or_else(|| {
            panic!("the config's first listener needs an ip:port address: {listeners}")
        });
        let token = config["admin"]["token"].as_str().map(str::to_string);
        let config_path = dir.path().join("tollgate.json");
        write_config(&config_path, &config);

        let log = File::create(dir.path().join("gateway.log")).expect("create gateway.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("TOLLGATE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn tollgate");
        let mut gw = Gateway {
            addr,
            admin,
            config_path,
            token,
            listeners,
            child,
            dir,
        };
        let mut ports: Vec<u16> = listener_addrs.iter().map(SocketAddr::port).collect();
        ports.push(admin.port());

        let end = Instant::now() + GATEWAY_DEADLINE;
        let mut pending = listener_addrs;
        let mut healthy = false;
        loop {
            let exited = gw.child.try_wait().ok().flatten();
            let log = gw.log();
            if let Some(taken) = port_in_use(&log) {
                let report = format!(
                    "tollgate found {taken} in use ({}); log:\n{log}",
                    exited.map_or("still retrying".to_string(), |s| format!("exited {s}"))
                );
                kill_and_reap(&mut gw.child);
                // Only a port the harness picked is worth another draw; one the test chose
                // would be taken again.
                return if picked.contains(&taken.port()) {
                    Attempt::PortTaken(report)
                } else {
                    Attempt::Failed(report)
                };
            }
            if let Some(status) = exited {
                return Attempt::Failed(format!(
                    "tollgate exited ({status}) before becoming healthy; log:\n{log}"
                ));
            }
            // Until the gateway holds every port itself, a probe may reach whichever process
            // took one of them.
            let not_owned: Vec<u16> = match listening_ports_of(gw.pid()) {
                Some(owned) => ports
                    .iter()
                    .copied()
                    .filter(|p| !owned.contains(p))
                    .collect(),
                // Without /proc (not Linux) the probes alone decide.
                None if !cfg!(target_os = "linux") => Vec::new(),
                None => ports.clone(),
            };
            if not_owned.is_empty() {
                healthy = healthy || gw.health_ok();
                if healthy {
                    pending
                        .retain(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_err());
                    if pending.is_empty() {
                        return Attempt::Ready(gw);
                    }
                }
            }
            if Instant::now() >= end {
                return Attempt::Failed(format!(
                    "tollgate not ready within {GATEWAY_DEADLINE:?} (ports not listened on by \
                     it: {not_owned:?}, admin healthy: {healthy}, listeners not accepting: \
                     {pending:?}); log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The `ip:port` addresses of a `listeners` array.
fn addresses_of(listeners: &Value) -> Vec<SocketAddr> {
    listeners
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["address"].as_str()?.parse().ok())
        .collect()
}

/// The address of the first port tollgate or pingora reported as taken in `log`, if any.
fn port_in_use(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        if let Some((_, rest)) = line.split_once(CANNOT_LISTEN) {
            let (addr, _) = rest.split_once(ALREADY_IN_USE)?;
            return addr.parse().ok();
        }
        let before = [IN_USE_RETRY, IN_USE_FINAL]
            .iter()
            .find_map(|m| line.find(m).map(|i| &line[..i]))?;
        before.rsplit(' ').next()?.parse().ok()
    })
}

/// The TCP ports on which process `pid` has a listening socket, from `/proc` (the listening
/// sockets of `/proc/net/tcp{,6}` whose inode is among the process's descriptors). `None`
/// when `/proc` cannot say (not Linux, or the process is gone).
fn listening_ports_of(pid: u32) -> Option<std::collections::HashSet<u16>> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes: std::collections::HashSet<u64> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut ports = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode ...
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                if inodes.contains(&inode) {
                    ports.insert(port);
                }
            }
        }
    }
    Some(ports)
}

impl Gateway {
    /// Whether `/metrics` holds this exact line (a sample with its labels and value).
    pub fn has_metric_line(&self, line: &str) -> bool {
        get(self.admin, "/metrics", &[])
            .text()
            .lines()
            .any(|l| l == line)
    }

    /// Sync rounds that went through (`tollgate_sync_duration_seconds_count`).
    pub fn sync_rounds(&self) -> u64 {
        get(self.admin, "/metrics", &[])
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_sync_duration_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (up to 10 s) until this node sees `live` live nodes and five of its sync rounds
    /// have gone through; panics with its log otherwise.
    pub fn settle(&self, live: usize) {
        let line = format!("tollgate_nodes_live {live}");
        let settled = || self.has_metric_line(&line) && self.sync_rounds() >= 5;
        assert!(
            wait_until(Duration::from_secs(10), settled),
            "not settled with {live} live nodes ({} sync rounds)\n{}",
            self.sync_rounds(),
            self.log()
        );
    }

    fn health_ok(&self) -> bool {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let probe = Conn::try_open(self.admin, Duration::from_secs(2))
            .and_then(|mut c| c.request("GET", "/health", &headers, b""));
        probe.is_ok_and(|r| r.status == 200)
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("gateway.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`"HUP"`, `"TERM"`, `"-INT"`, `"SIGQUIT"`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let sig = sig.trim_start_matches('-');
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{sig} {} failed: {status}",
            self.pid()
        );
    }

    /// Replaces the config file (atomically). The harness-assigned addresses are kept: the
    /// admin address always, the listeners unless `config` brings its own.
    pub fn rewrite_config(&self, config: Value) {
        let config = place_addresses(config, &self.listeners, self.admin);
        write_config(&self.config_path, &config);
    }

    /// Waits up to `timeout` for the gateway to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- last lines of the gateway log ---\n{}", tail.join("\n"));
        }
    }
}

/// For hand-written upstreams: reads one request head, up to its blank line (the tests send
/// no bodies to them), and returns its lines without that blank line. `None` at the end of
/// the connection.
pub fn read_request_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => return Some(head),
            Ok(_) => head.push_str(&line),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client.

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header of that name, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as JSON; panics with the status and body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// One client connection; responses are read from a buffer kept across requests.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `addr`; panics if that fails.
    pub fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Writes bytes without reading anything (for requests sent in pieces).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)?;
        self.reader.get_mut().flush()
    }

    /// Writes `bytes` exactly as given and reads one response.
    /// If the peer answers and closes before taking all the bytes, that answer is returned.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<Response> {
        let written = self.write_raw(bytes);
        match self.read_response(bytes.starts_with(b"HEAD ")) {
            Err(e) => Err(written.err().unwrap_or(e)),
            response => response,
        }
    }

    /// Sends a well-formed HTTP/1.1 request. `Host` is added unless given; `Content-Length`
    /// is added for a non-empty body (or POST/PUT/PATCH) unless a length or
    /// `Transfer-Encoding` header is given.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut head = format!("{method} {target} HTTP/1.1\r\n");
        if !has("host") {
            head.push_str(&format!("Host: {}\r\n", self.reader.get_ref().peer_addr()?));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let wants_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
        if wants_length && !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed mid-line",
            ));
        }
        let line = String::from_utf8_lossy(&line);
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Reads one response (skipping `1xx` interim ones). The body is framed by
    /// `Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection.
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let (status, headers) = loop {
            let status_line = self.line()?;
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|_| status_line.starts_with("HTTP/1."))
                .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
            let mut headers = Vec::new();
            loop {
                let line = self.line()?;
                if line.is_empty() {
                    break;
                }
                let (n, v) = line
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
                headers.push((n.to_string(), v.trim().to_string()));
            }
            if !(100..200).contains(&status) || status == 101 {
                break (status, headers);
            }
        };
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .headers_named("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let no_body = head_request || status == 204 || status == 304 || status == 101;
        if no_body {
            return Ok(response);
        }
        if chunked {
            loop {
                let line = self.line()?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    while !self.line()?.is_empty() {} // trailers
                    break;
                }
                let start = response.body.len();
                response.body.resize(start + size, 0);
                self.reader.read_exact(&mut response.body[start..])?;
                if !self.line()?.is_empty() {
                    return Err(invalid("chunk not followed by CRLF"));
                }
            }
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {len:?}")))?;
            response.body.resize(len, 0);
            self.reader.read_exact(&mut response.body)?;
        } else {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    /// True if the peer closes (EOF or reset) within `timeout`; bytes that arrive meanwhile
    /// are discarded.
    pub fn is_closed_by_peer(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let closed = loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.reader.get_ref().set_read_timeout(Some(left)).is_err() {
                break false;
            }
            match self.reader.fill_buf() {
                Ok([]) => break true,
                Ok(buf) => {
                    let n = buf.len();
                    self.reader.consume(n);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let _ = self.reader.get_ref().set_read_timeout(Some(IO_TIMEOUT));
        closed
    }
}

/// `GET target` on a new connection; panics on I/O errors.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", target, headers, b"")
}

/// One request on a new connection; panics on I/O errors.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Conn::open(addr)
        .request(method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target} to {addr}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Redis.

/// A private `redis-server` on a free port, without persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// `config` as node `id` sharing its buckets through this Redis, synced every 50 ms.
    pub fn node_config(&self, mut config: Value, id: &str) -> Value {
        config["node_id"] = json!(id);
        config["redis"] = json!({ "url": self.url, "sync_interval_ms": 50 });
        config
    }

    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("create a temp dir");
        // A port taken between free_port() and redis's bind makes redis exit: try another.
        let mut errors = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            match spawn_redis(port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        url: format!("redis://127.0.0.1:{port}"),
                        child: Some(child),
                        dir,
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("redis-server did not start: {}", errors.join("\n"));
    }

    /// Kills the server (connections are refused until `restart`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Kills the server if running and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = spawn_redis(self.port, self.dir.path())
            .unwrap_or_else(|e| panic!("redis-server restart on port {}: {e}", self.port));
        self.child = Some(child);
    }

    /// Sends one command; panics on I/O errors. See [`RedisServer::try_cmd`] for the reply form.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Sends one command on a new connection and returns the reply as text: simple strings,
    /// integers and bulk strings as their content, a nil as `(nil)`, an error as
    /// `(error) MESSAGE`, and an array as its elements (flattened), one per line.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<String> {
        redis_cmd(self.port, args)
    }

    /// [`RedisServer::try_cmd`] by port, for threads that do not hold the server.
    pub fn cmd_on(port: u16, args: &[&str]) -> io::Result<String> {
        redis_cmd(port, args)
    }
}

/// Starts `redis-server` on `port` and waits for `PONG`; `Err` (with its log) if it exits or
/// stays silent past the deadline.
fn spawn_redis(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    let log_path = dir.join("redis.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("create redis.log");
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--enable-debug-command", "yes"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("redis-server not found: run scripts/test.sh, which installs it")
        }
        Err(e) => panic!("spawn redis-server: {e}"),
    };
    let end = Instant::now() + REDIS_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("exited ({status}) on port {port}; log:\n{log}"));
        }
        if redis_cmd(port, &["PING"]).is_ok_and(|r| r == "PONG") {
            return Ok(child);
        }
        if Instant::now() >= end {
            kill_and_reap(&mut child);
            return Err(format!("no PONG on port {port} within {REDIS_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn redis_cmd(port: u16, args: &[&str]) -> io::Result<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&stream).write_all(out.as_bytes())?;
    let mut parts = Vec::new();
    read_resp(&mut BufReader::new(stream), &mut parts)?;
    Ok(parts.join("\n"))
}

fn read_resp(r: &mut impl BufRead, out: &mut Vec<String>) -> io::Result<()> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(ErrorKind::UnexpectedEof, "redis closed"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let n = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("bad RESP {line:?}")))
    };
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => out.push(format!("(error) {rest}")),
        "$" if n()? < 0 => out.push("(nil)".into()),
        "$" => {
            let mut buf = vec![0; n()? as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(buf.len() - 2);
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        "*" if n()? < 0 => out.push("(nil)".into()),
        "*" => {
            for _ in 0..n()? {
                read_resp(r, out)?;
            }
        }
        _ => return Err(invalid(format!("unexpected RESP {line:?}"))),
    }
    Ok(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
