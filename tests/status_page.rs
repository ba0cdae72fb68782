//! The status page (`GET /`) and its data (`GET /status`) against the real binary: the login
//! form without the token, the page as plain HTML (no JavaScript), and the page in headless
//! Chromium, driven through the DevTools protocol over a WebSocket: log in through the form,
//! see the limits and the fingerprint of a rejected key, watch a counter grow with more
//! traffic, draw the chart, keep the token across a reload, fit a phone's width, and save
//! screenshots to `target/status-page.png` and `target/status-page-phone.png`.
//!
//! Chromium is Debian's `chromium` (`scripts/test.sh` installs it); `TOLLGATE_CHROMIUM` names
//! another binary. Without one the browser test fails and says so.

mod common;

use base64::Engine;
use common::{get, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const TOKEN: &str = "status-page-test-token";
/// The key the test overloads (capacity 3, next to no refill).
const NOISY: &str = "k-noisy";

fn config(up: &Upstream) -> Value {
    json!({
        "node_id": "status-node",
        "admin": { "token": TOKEN },
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": {
            "per-key": { "capacity": 3, "refill_per_second": 0.01, "key": ["header:x-api-key"] },
            "per-ip": { "capacity": 1000, "refill_per_second": 100, "key": ["client_ip"] },
        },
        "routes": [{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api",
                     "limits": ["per-ip", "per-key"] }],
    })
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// Sends `n` requests with the noisy key; returns how many were rejected (429).
fn noisy_requests(gw: &Gateway, n: usize) -> usize {
    (0..n)
        .filter(|_| get(gw.addr, "/rating/1", &[("x-api-key", NOISY)]).status == 429)
        .count()
}

/// The page's markup without its inline script and style (the script holds the same markup
/// templates: a check of what the node rendered must not find them there).
fn markup(html: &str) -> String {
    let cut = |text: &str, open: &str, close: &str| match (text.find(open), text.find(close)) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &text[..a], &text[b + close.len()..]),
        _ => panic!("no {open}...{close} in the page:\n{text}"),
    };
    cut(&cut(html, "<script>", "</script>"), "<style>", "</style>")
}

fn fingerprint(key: &str) -> String {
    format!("{:016x}", tollgate::request::key::fnv1a(key.as_bytes()))
}

/// A request to the admin listener.
fn request_with(
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> common::Response {
    common::request(gw.admin, method, target, headers, b"")
}

#[test]
fn without_the_token_the_page_is_a_login_form() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up)).start();
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let r = get(gw.admin, "/", &headers);
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let html = markup(&r.text());
        assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
        assert!(html.contains("<form id=\"login\""));
        assert!(html.contains("<label for=\"token\">Admin token</label>"));
        assert!(html.contains("<input id=\"token\" name=\"token\" type=\"password\""));
        // Nothing of the node's state, and no refresh loop on the form.
        assert!(!html.contains("per-key") && !html.contains("status-node"));
        assert!(!html.contains("http-equiv=\"refresh\""));
    }
    // The JSON and every other endpoint stay plain 401s.
    let r = get(gw.admin, "/status", &[]);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("token"));
    assert_eq!(
        request_with(&gw, "POST", "/", &[]).status,
        401,
        "only GET / answers the form"
    );
}

#[test]
fn the_page_reads_without_javascript_and_status_has_every_field() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up)).start();
    assert_eq!(noisy_requests(&gw, 5), 2);
    let (k, v) = bearer();
    let r = get(gw.admin, "/", &[(k, &v)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let full = r.text();
    // Self-contained: no external script, style, font or image.
    for external in ["<link", " src=", "http://", "https://", "@import", "url("] {
        assert!(!full.contains(external), "the page refers to {external}");
    }
    let html = markup(&full);
    assert!(
        html.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
    );
    assert!(html.contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"));
    // The limits table, server-side, with the rejections, and the rejected key's fingerprint.
    assert!(html.contains("<th scope=\"col\">Limit</th>"));
    for name in ["per-key", "per-ip"] {
        assert!(html.contains(&format!(
            "<tr data-limit=\"{name}\"><th scope=\"row\">{name}</th>"
        )));
    }
    assert!(html.contains("<td data-field=\"rejected_total\">2</td>"));
    assert!(html.contains(&format!("<code>{}</code>", fingerprint(NOISY))));
    assert!(!html.contains(NOISY), "the raw key is never on the page");
    assert!(html.contains("<code>status-node</code>") && html.contains("Standalone"));

    // A request is counted in `requests_total` by the logging hook, after its response is
    // out: the client can ask before the last one is counted.
    let status = || get(gw.admin, "/status", &[(k, &v)]).json();
    let want = json!({"admitted": 3, "rejected": 2});
    assert!(
        wait_until(Duration::from_secs(5), || status()["totals"] == want),
        "totals {}",
        status()["totals"]
    );
    let s = status();
    assert_eq!(s["node"]["id"], "status-node");
    assert_eq!(s["node"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        s["node"]["config_file"],
        gw.config_path.display().to_string()
    );
    assert_eq!(s["node"]["reloads"], json!({"success": 0, "failure": 0}));
    let at = |field: &str| {
        s["node"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {s}"))
    };
    // The config is loaded just before the node starts; both are a moment ago.
    assert!(at("config_loaded_at_ms").abs_diff(at("started_at_ms")) < 5_000);
    assert!(at("started_at_ms") <= s["now_ms"].as_u64().expect("now_ms"));
    assert!(s["redis"].is_null());
    assert_eq!(s["totals"], want);
    let limit = |s: &Value, name: &str| {
        s["limits"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == name))
            .cloned()
            .expect("limit listed")
    };
    let per_key = limit(&s, "per-key");
    assert_eq!(per_key["capacity"], 3);
    assert_eq!(per_key["refill_per_second"], 0.01);
    assert_eq!(
        (&per_key["shadow"], &per_key["burst_guard"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(per_key["overrides"], 0);
    assert_eq!(per_key["buckets_active"], 1);
    assert_eq!(per_key["tokens_min"], 0);
    assert_eq!(per_key["rejected_total"], 2);
    assert_eq!(per_key["tokens_total"], 3);
    assert_eq!(per_key["drift"], false);
    assert_eq!(s["history"]["interval_ms"], 2000);
    // The sampler takes one sample at once and one every 2 s: a point appears after the second.
    let mut points = Vec::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let s = get(gw.admin, "/status", &[(k, &v)]).json();
            points = s["history"]["points"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            !points.is_empty()
        }),
        "no history point within 15 s"
    );
    let p = &points[0];
    assert!(p["at_ms"].as_u64().is_some() && p["admitted_per_second"].as_f64().is_some());
    assert!(p["rejected_per_second"].as_f64().is_some_and(|r| r >= 0.0));
}

#[test]
fn in_shared_mode_the_page_shows_redis_and_highlights_drift_and_a_twin() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let node = |id: &str, capacity: u64| {
        json!({
            "node_id": id,
            "redis": { "url": redis.url, "sync_interval_ms": 50, "quiet_buckets": false },
            "upstreams": { "api": { "servers": [up.addr.to_string()] } },
            "limits": { "per-key": { "capacity": capacity, "refill_per_second": 0.01,
                                     "key": ["header:x-api-key"] } },
            "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api",
                         "limits": ["per-key"] }],
        })
    };
    let a = Gateway::builder(node("node-a", 5)).start();
    let b = Gateway::builder(node("node-b", 7)).start();
    a.settle(2);
    // Both nodes write the same key with different capacities: drift.
    let mut s = Value::Null;
    let drifted = wait_until(Duration::from_secs(10), || {
        get(a.addr, "/x", &[("x-api-key", "shared")]);
        get(b.addr, "/x", &[("x-api-key", "shared")]);
        s = get(a.admin, "/status", &[]).json();
        s["limits"][0]["drift"] == true
    });
    assert!(drifted, "no drift in /status: {s}\n{}", a.log());
    let r = &s["redis"];
    assert_eq!(
        (&r["connected"], &r["live_nodes"]),
        (&json!(true), &json!(2))
    );
    assert_eq!(r["duplicate_node_id"], false);
    assert!(r["sync_rounds"].as_u64() >= Some(5), "{r}");
    assert!(r["sync_errors"].as_u64().is_some() && r["clock_offset_seconds"].is_f64());
    assert!(
        r["sync_lag_seconds"].as_f64().is_some_and(|l| l < 5.0),
        "{r}"
    );
    assert!(r["sync_round_seconds"].is_null() || r["sync_round_seconds"].is_f64());
    let html = markup(&get(a.admin, "/", &[]).text());
    assert!(html.contains("<strong>Config drift:</strong>"));
    assert!(html.contains("<tr data-limit=\"per-key\" class=\"alert\">"));
    assert!(html.contains("<dt>Live nodes</dt><dd>2</dd>"));
    assert!(html.contains("<span class=\"ok\">connected</span>"));
    assert!(!html.contains("Duplicate node id:</strong>"));

    // A second process with node-a's id: one of the two sees its twin, and its page says so.
    let twin = Gateway::builder(node("node-a", 5)).start();
    let mut flagged = None;
    let seen = wait_until(Duration::from_secs(10), || {
        flagged = [&a, &twin]
            .into_iter()
            .find(|g| get(g.admin, "/status", &[]).json()["redis"]["duplicate_node_id"] == true);
        flagged.is_some()
    });
    assert!(seen, "no twin seen:\n{}\n{}", a.log(), twin.log());
    let html = markup(&get(flagged.expect("flagged").admin, "/", &[]).text());
    assert!(html.contains("<strong>Duplicate node id:</strong>"));
    assert!(html.contains("<dt>Duplicate node id</dt><dd><span class=\"bad\">yes</span></dd>"));
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium over the DevTools protocol.

/// A headless Chromium in its own process group, killed (with its helpers) on drop.
struct Chromium {
    child: Child,
    ws_url: String,
    _profile: tempfile::TempDir,
}

fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium found: this test drives a headless Chromium. Install Debian's `chromium` \
         package (scripts/test.sh does so) or set TOLLGATE_CHROMIUM to a Chromium binary"
    );
}

impl Chromium {
    fn start() -> Chromium {
        let bin = chromium_binary();
        let profile = tempfile::tempdir().expect("a profile dir");
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                } else if !sent {
                    let _ = tx.send(format!("stderr: {line}"));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        let ws_url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ws://") => break line,
                Ok(line) => said.push(line),
                Err(_) => {
                    kill_group(&mut child);
                    panic!(
                        "{} did not open its DevTools port within 30 s:\n{}",
                        bin.display(),
                        said.join("\n")
                    );
                }
            }
        };
        Chromium {
            child,
            ws_url,
            _profile: profile,
        }
    }
}

fn kill_group(child: &mut Child) {
    // The group holds Chromium's helper processes too.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// A DevTools-protocol connection to the browser, attached to one page (a flat session).
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// Exceptions thrown by the page and errors it logged (CSP refusals among them).
    page_errors: Vec<String>,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
        let hostport = ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("a ws:// URL");
        let stream = TcpStream::connect(hostport).expect("connect to the DevTools port");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (ws, _) = tungstenite::client::client(ws_url, stream).expect("WebSocket handshake");
        Cdp {
            ws,
            next_id: 0,
            session: None,
            page_errors: Vec::new(),
        }
    }

    /// Sends a command and waits for its answer, keeping the page's errors from the events
    /// that come in between.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send a DevTools command");
        loop {
            let text = match self.ws.read().expect("read from DevTools") {
                Message::Text(t) => t.to_string(),
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if v["id"] == id {
                if !v["error"].is_null() {
                    panic!("{method} failed: {}", v["error"]);
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                self.page_errors
                    .push(v["params"]["exceptionDetails"].to_string());
            }
            Some("Log.entryAdded") => {
                let e = &v["params"]["entry"];
                // A 404 for /favicon.ico is a network entry, not a fault of the page.
                if e["level"] == "error" && e["source"] != "network" {
                    self.page_errors.push(e["text"].to_string());
                }
            }
            _ => {}
        }
    }

    /// Opens a new page and attaches to it.
    fn open_page(&mut self) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(domain, json!({}));
        }
    }

    /// Evaluates `expr` in the page; its value (JSON).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr:?} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` every 100 ms until it is true; panics with `what` after `deadline`.
    fn wait_for(&mut self, expr: &str, deadline: Duration, what: &str) {
        let end = Instant::now() + deadline;
        loop {
            if self.eval(expr) == json!(true) {
                return;
            }
            if Instant::now() >= end {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "{what}: not within {deadline:?}; the page says:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        let expr = format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        );
        self.wait_for(&expr, Duration::from_secs(20), "the page loads");
    }

    fn screenshot(&mut self, path: &PathBuf) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let data = shot["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// The cargo target directory (`target/` unless moved).
fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(PathBuf::from).unwrap_or(tmp)
}

/// The number in the per-key row's cell `field`, or -1 when there is none yet.
fn cell(cdp: &mut Cdp, field: &str) -> i64 {
    let expr = format!(
        "(() => {{ const c = document.querySelector('tr[data-limit=\"per-key\"] td[data-field=\"{field}\"]'); \
         return c ? Number(c.textContent) : -1; }})()"
    );
    cdp.eval(&expr).as_i64().unwrap_or(-1)
}

#[test]
fn the_page_in_chromium_logs_in_updates_and_fits_a_phone() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(&up)).start();
    assert_eq!(noisy_requests(&gw, 5), 2);
    let browser = Chromium::start();
    let mut cdp = Cdp::connect(&browser.ws_url);
    cdp.open_page();
    let url = format!("http://{}/", gw.admin);
    cdp.navigate(&url);
    assert_eq!(cdp.eval("document.body.dataset.view"), "login");

    // A wrong token is refused and not kept.
    log_in(&mut cdp, "not-the-token");
    cdp.wait_for(
        "!document.getElementById('login-error').hidden && document.getElementById('login-error').textContent.includes('refused')",
        Duration::from_secs(10),
        "the refusal of a wrong token",
    );
    assert_eq!(
        cdp.eval("sessionStorage.getItem('tollgate-admin-token')"),
        Value::Null
    );

    // The right one shows the status, the limits and the rejected key's fingerprint.
    log_in(&mut cdp, TOKEN);
    cdp.wait_for(
        "document.body.dataset.view === 'status' && !!document.querySelector('tr[data-limit=\"per-ip\"]')",
        Duration::from_secs(10),
        "the status after logging in",
    );
    assert_eq!(
        cdp.eval("sessionStorage.getItem('tollgate-admin-token')"),
        TOKEN
    );
    assert_eq!(cell(&mut cdp, "rejected_total"), 2);
    let fp = fingerprint(NOISY);
    cdp.wait_for(
        &format!("document.querySelector('[data-top=\"per-key\"]').textContent.includes('{fp}')"),
        Duration::from_secs(10),
        "the rejected key's fingerprint under per-key",
    );

    // More traffic: the page refreshes itself and the counter grows.
    assert_eq!(noisy_requests(&gw, 4), 4);
    let end = Instant::now() + Duration::from_secs(20);
    while cell(&mut cdp, "rejected_total") < 6 {
        assert!(
            Instant::now() < end,
            "the rejected count on the page did not reach 6 within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cdp.wait_for(
        "document.querySelectorAll('#chart svg polyline').length === 2",
        Duration::from_secs(20),
        "the chart",
    );

    // The token survives a reload of the tab (sessionStorage): no login form again.
    cdp.eval("window.beforeReload = true");
    cdp.call("Page.reload", json!({}));
    cdp.wait_for(
        "window.beforeReload === undefined && document.readyState === 'complete' && document.body.dataset.view === 'status' && !!document.querySelector('#chart svg')",
        Duration::from_secs(20),
        "the status after a reload",
    );
    cdp.screenshot(&target_dir().join("status-page.png"));

    // A phone: the page fits its width; the wide limits table scrolls inside its own box.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    );
    cdp.wait_for(
        "document.documentElement.scrollWidth <= window.innerWidth && document.querySelector('#chart svg').viewBox.baseVal.width < window.innerWidth",
        Duration::from_secs(10),
        "the page and its chart within a phone's width",
    );
    let scrolls = cdp.eval(
        "(() => { const s = document.querySelector('#limits').parentElement; return s.scrollWidth > s.clientWidth && getComputedStyle(s).overflowX === 'auto'; })()",
    );
    assert_eq!(
        scrolls, true,
        "the limits table scrolls horizontally on a phone"
    );
    cdp.screenshot(&target_dir().join("status-page-phone.png"));
    assert!(
        cdp.page_errors.is_empty(),
        "the page reported errors: {:?}",
        cdp.page_errors
    );
}

/// Types `token` into the login form and submits it.
fn log_in(cdp: &mut Cdp, token: &str) {
    cdp.wait_for(
        "!!document.getElementById('token')",
        Duration::from_secs(10),
        "the login form",
    );
    cdp.eval("(() => { const i = document.getElementById('token'); i.value = ''; i.focus(); return true; })()");
    cdp.call("Input.insertText", json!({ "text": token }));
    cdp.eval("document.querySelector('#login button').click(), true");
}
