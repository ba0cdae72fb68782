//! `GET /`: the status page. One self-contained HTML document (its CSS and script are compiled
//! in; nothing is loaded from elsewhere), rendered here from the JSON of `GET /status` so that
//! it reads without JavaScript (and then reloads itself through a `<noscript>` refresh); its
//! script fetches `/status` (and `/buckets` per limit) every few seconds and renders the same
//! markup again, with the traffic chart. With an admin token configured, a request without it
//! gets a small login form (401) whose script keeps the token in the tab's `sessionStorage`
//! and sends it as `Authorization: Bearer` on its fetches.

use super::bytes_response;
use http::Response;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::OnceLock;

const TEMPLATE: &str = include_str!("status_page.html");
const STYLE: &str = include_str!("status_page.css");
const SCRIPT: &str = include_str!("status_page.js");

/// Seconds between reloads of the page without JavaScript (the script refreshes on its own).
const NOSCRIPT_REFRESH_SECONDS: u32 = 5;

/// The page with the state in `status` (the `/status` JSON) and, per limit name, the answer
/// of `/buckets?by=rejected` when there is one (a limit without shows "no data").
pub(super) fn page(status: &Value, tops: &HashMap<String, Value>) -> Response<Vec<u8>> {
    let node = text(&status["node"]["id"]);
    let refresh = format!(
        "<noscript><meta http-equiv=\"refresh\" content=\"{NOSCRIPT_REFRESH_SECONDS}\"></noscript>"
    );
    let updated = format!(
        "Rendered by the node at {}",
        utc(status["now_ms"].as_u64().unwrap_or(0))
    );
    let main = render_main(status, tops);
    let html = fill(&[
        ("title", format!("tollgate {} status", esc(&node))),
        ("refresh", refresh),
        ("view", "status".into()),
        ("node", esc(&node)),
        ("updated", esc(&updated)),
        ("main", main),
    ]);
    html_response(200, html)
}

/// The 401 answer to `GET /` without the admin token: a form that asks for it.
pub(super) fn login() -> Response<Vec<u8>> {
    let html = fill(&[
        ("title", "tollgate status: admin token required".into()),
        ("refresh", String::new()),
        ("view", "login".into()),
        ("node", String::new()),
        ("updated", String::new()),
        ("main", LOGIN.into()),
    ]);
    html_response(401, html)
}

const LOGIN: &str = r#"<section aria-labelledby="h-login">
<h2 id="h-login">Admin token required</h2>
<p>This admin listener has a token (<code>admin.token</code>). The page keeps it in this tab's
session storage and sends it as <code>Authorization: Bearer</code> with each of its requests.</p>
<form id="login" class="login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Show status</button>
</form>
<p id="login-error" class="alert" role="alert" hidden></p>
<noscript><p class="warn">JavaScript is off, so this page cannot send the token. Without it,
<code>curl -H 'Authorization: Bearer TOKEN'</code> on this address shows the page, and on
<code>/status</code> its data as JSON.</p></noscript>
</section>"#;

fn html_response(status: u16, html: String) -> Response<Vec<u8>> {
    let mut headers = vec![
        ("content-security-policy", csp().to_string()),
        ("cache-control", "no-store".to_string()),
        ("x-content-type-options", "nosniff".to_string()),
        ("referrer-policy", "no-referrer".to_string()),
    ];
    if status == 401 {
        headers.push(("www-authenticate", "Bearer".to_string()));
    }
    bytes_response(
        status,
        "text/html; charset=utf-8",
        html.into_bytes(),
        &headers,
    )
}

/// Only the page's own script and style run, it talks to this listener only, and nothing
/// frames it.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |s: &str| base64(&Sha256::digest(s.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
            hash(SCRIPT),
            hash(STYLE)
        )
    })
}

/// Standard base64 with padding (for the CSP hashes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The template with each `{{name}}` replaced, in one pass (a value is never scanned again);
/// `{{style}}` and `{{script}}` are the compiled-in assets.
fn fill(vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(TEMPLATE.len() + STYLE.len() + SCRIPT.len() + 8192);
    let mut rest = TEMPLATE;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find("}}") else {
            break;
        };
        let name = &rest[at + 2..at + end];
        match name {
            "style" => out.push_str(STYLE),
            "script" => out.push_str(SCRIPT),
            _ => out.push_str(vars.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v)),
        }
        rest = &rest[at + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as text: strings without quotes, null as an empty string.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// A rate with one decimal.
fn rate(v: &Value) -> String {
    format!("{:.1}", v.as_f64().unwrap_or(0.0))
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS UTC` (the proleptic Gregorian calendar).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

/// Seconds as `2d 3h 4m 5s` (leading zero units left out).
fn duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 || !out.is_empty() {
            let _ = write!(out, "{n}{unit} ");
        }
    }
    let _ = write!(out, "{}s", secs % 60);
    out
}

/// `<dt>`/`<dd>` pairs (values already escaped).
fn facts(items: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (name, value) in items {
        let _ = write!(out, "<div><dt>{name}</dt><dd>{value}</dd></div>");
    }
    out.push_str("</dl>");
    out
}

fn render_main(s: &Value, tops: &HashMap<String, Value>) -> String {
    [
        alerts(s),
        node_section(s),
        redis_section(&s["redis"]),
        limits_section(s),
        traffic_section(s),
        top_section(s, tops),
    ]
    .concat()
}

fn alerts(s: &Value) -> String {
    let mut out = String::new();
    if s["redis"]["duplicate_node_id"].as_bool() == Some(true) {
        let _ = write!(
            out,
            "<p class=\"alert\"><strong>Duplicate node id:</strong> another live node writes the fields of node <code>{}</code>, so the shared buckets under-count. Give every node its own <code>node_id</code>.</p>",
            esc(&text(&s["node"]["id"]))
        );
    }
    let drifting: Vec<String> = limits_of(s)
        .filter(|l| l["drift"].as_bool() == Some(true))
        .map(|l| format!("<code>{}</code>", esc(&text(&l["name"]))))
        .collect();
    if !drifting.is_empty() {
        let _ = write!(
            out,
            "<p class=\"alert\"><strong>Config drift:</strong> nodes disagree on the capacity or rate of {}. Deploy one config everywhere.</p>",
            drifting.join(", ")
        );
    }
    if s["redis"]["connected"].as_bool() == Some(false) {
        out.push_str("<p class=\"warn\"><strong>Redis unreachable:</strong> this node limits from its last view and its share; what it admits is pushed when Redis is back.</p>");
    }
    out
}

fn limits_of(s: &Value) -> impl Iterator<Item = &Value> {
    s["limits"].as_array().into_iter().flatten()
}

fn node_section(s: &Value) -> String {
    let n = &s["node"];
    let loaded = format!(
        "{} ({} reloads, {} failed)",
        utc(n["config_loaded_at_ms"].as_u64().unwrap_or(0)),
        text(&n["reloads"]["success"]),
        text(&n["reloads"]["failure"])
    );
    let items = [
        ("Node id", format!("<code>{}</code>", esc(&text(&n["id"])))),
        ("Version", esc(&text(&n["version"]))),
        (
            "Uptime",
            duration(n["uptime_seconds"].as_u64().unwrap_or(0)),
        ),
        ("Started", utc(n["started_at_ms"].as_u64().unwrap_or(0))),
        (
            "Config file",
            format!("<code>{}</code>", esc(&text(&n["config_file"]))),
        ),
        ("Config loaded", esc(&loaded)),
    ];
    format!(
        "<section aria-labelledby=\"h-node\"><h2 id=\"h-node\">This node</h2>{}</section>",
        facts(&items)
    )
}

fn redis_section(r: &Value) -> String {
    let head = "<section aria-labelledby=\"h-redis\"><h2 id=\"h-redis\">Redis</h2>";
    if r.is_null() {
        return format!("{head}<p>Standalone: no Redis configured. Buckets live in this process only.</p></section>");
    }
    let connected = if r["connected"].as_bool() == Some(true) {
        "<span class=\"ok\">connected</span>"
    } else {
        "<span class=\"bad\">disconnected</span>"
    };
    let round = match r["sync_round_seconds"].as_f64() {
        Some(s) => format!("{:.1} ms (mean, last 10 s)", s * 1000.0),
        None => "no round in the last 10 s".into(),
    };
    let twin = if r["duplicate_node_id"].as_bool() == Some(true) {
        "<span class=\"bad\">yes</span>"
    } else {
        "no"
    };
    let items = [
        ("Connection", connected.to_string()),
        (
            "Last good sync",
            format!("{:.1} s ago", r["sync_lag_seconds"].as_f64().unwrap_or(0.0)),
        ),
        ("Sync round trip", round),
        (
            "Sync rounds / errors",
            format!("{} / {}", text(&r["sync_rounds"]), text(&r["sync_errors"])),
        ),
        ("Live nodes", text(&r["live_nodes"])),
        ("Duplicate node id", twin.to_string()),
        (
            "Clock offset",
            format!(
                "{:.1} ms",
                r["clock_offset_seconds"].as_f64().unwrap_or(0.0) * 1000.0
            ),
        ),
    ];
    format!("{head}{}</section>", facts(&items))
}

const LIMIT_COLUMNS: [&str; 13] = [
    "Limit",
    "Kind",
    "Capacity",
    "Refill/s",
    "Shadow",
    "Burst guard",
    "Overrides",
    "Active buckets",
    "Fewest tokens",
    "Admitted/s",
    "Rejected/s",
    "Rejected (total)",
    "Drift",
];

fn limits_section(s: &Value) -> String {
    let mut out = String::from(
        "<section aria-labelledby=\"h-limits\"><h2 id=\"h-limits\">Limits</h2><div class=\"scroll\" role=\"region\" aria-labelledby=\"h-limits\" tabindex=\"0\"><table id=\"limits\"><caption>Every limit of the running config; rates over the last 10 s, admitted in tokens taken</caption><thead><tr>",
    );
    for c in LIMIT_COLUMNS {
        let _ = write!(out, "<th scope=\"col\">{c}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for l in limits_of(s) {
        out.push_str(&limit_row(l));
    }
    out.push_str("</tbody></table></div></section>");
    out
}

fn limit_row(l: &Value) -> String {
    let name = esc(&text(&l["name"]));
    let drift = l["drift"].as_bool() == Some(true);
    let cells = [
        ("kind", text(&l["kind"])),
        ("capacity", text(&l["capacity"])),
        ("refill_per_second", text(&l["refill_per_second"])),
        ("shadow", yes_no(&l["shadow"]).into()),
        ("burst_guard", yes_no(&l["burst_guard"]).into()),
        ("overrides", text(&l["overrides"])),
        ("buckets_active", text(&l["buckets_active"])),
        ("tokens_min", text(&l["tokens_min"])),
        ("admitted_per_second", rate(&l["admitted_per_second"])),
        ("rejected_per_second", rate(&l["rejected_per_second"])),
        ("rejected_total", text(&l["rejected_total"])),
        (
            "drift",
            if drift {
                "<strong>drift</strong>"
            } else {
                "no"
            }
            .into(),
        ),
    ];
    let class = if drift { " class=\"alert\"" } else { "" };
    let mut out = format!("<tr data-limit=\"{name}\"{class}><th scope=\"row\">{name}</th>");
    for (field, value) in cells {
        let _ = write!(out, "<td data-field=\"{field}\">{value}</td>");
    }
    out.push_str("</tr>");
    out
}

fn traffic_section(s: &Value) -> String {
    let points = s["history"]["points"].as_array().map_or(0, Vec::len);
    let (admitted, rejected) = match s["history"]["points"].as_array().and_then(|p| p.last()) {
        Some(p) => (
            rate(&p["admitted_per_second"]),
            rate(&p["rejected_per_second"]),
        ),
        None => ("0.0".into(), "0.0".into()),
    };
    format!(
        "<section aria-labelledby=\"h-traffic\"><h2 id=\"h-traffic\">Traffic</h2><figure><div id=\"chart\" class=\"chart\"><p>The chart is drawn by the page's script. Now: {admitted} admitted/s, {rejected} rejected/s.</p></div><figcaption>Requests admitted and rejected per second on this node, {points} points, one every {} s. Since the start: <span id=\"total-admitted\">{}</span> admitted, <span id=\"total-rejected\">{}</span> rejected.</figcaption></figure></section>",
        s["history"]["interval_ms"].as_u64().unwrap_or(0) / 1000,
        text(&s["totals"]["admitted"]),
        text(&s["totals"]["rejected"]),
    )
}

fn top_section(s: &Value, tops: &HashMap<String, Value>) -> String {
    let mut out = String::from(
        "<section aria-labelledby=\"h-top\"><h2 id=\"h-top\">Keys rejected most</h2><p class=\"muted\">Per limit, the five keys with the most rejections in the last minute, as fingerprints (as in the access log).</p>",
    );
    for l in limits_of(s) {
        let name = text(&l["name"]);
        let _ = write!(
            out,
            "<h3>{0}</h3><div class=\"top\" data-top=\"{0}\">{1}</div>",
            esc(&name),
            top_table(&name, tops.get(&name))
        );
    }
    out.push_str("</section>");
    out
}

/// The keys of one limit from its `/buckets` answer; "no data" without one.
fn top_table(limit: &str, answer: Option<&Value>) -> String {
    let Some(buckets) = answer.and_then(|a| a["buckets"].as_array()) else {
        return "<p class=\"muted\">no data</p>".into();
    };
    if buckets.is_empty() {
        return "<p class=\"muted\">No key rejected in the last minute.</p>".into();
    }
    let mut out = format!(
        "<div class=\"scroll\" role=\"region\" tabindex=\"0\" aria-label=\"Keys rejected most: {0}\"><table><caption>Keys of {0} rejected most in the last minute</caption><thead><tr><th scope=\"col\">Key</th><th scope=\"col\">Rejected (last minute)</th><th scope=\"col\">Tokens</th><th scope=\"col\">Capacity</th></tr></thead><tbody>",
        esc(limit)
    );
    for b in buckets {
        let _ = write!(
            out,
            "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&text(&b["key"])),
            text(&b["rejected_last_minute"]),
            text(&b["tokens"]),
            text(&b["capacity"])
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn helpers_escape_format_and_encode() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(90_061), "1d 1h 1m 1s");
        assert_eq!(duration(3_600), "1h 0m 0s");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_page_renders_the_state_and_escapes_names() {
        let s = json!({
            "now_ms": 0,
            "node": {"id": "<n>", "version": "1", "uptime_seconds": 5, "config_file": "c.json",
                     "reloads": {"success": 0, "failure": 0}},
            "redis": {"connected": false, "duplicate_node_id": true, "live_nodes": 2},
            "limits": [{"name": "per-<ip>", "capacity": 10, "drift": true, "rejected_total": 3}],
            "totals": {"admitted": 1, "rejected": 3},
            "history": {"interval_ms": 2000, "points": []},
        });
        let tops = [(
            "per-<ip>".to_string(),
            json!({"buckets": [
            {"key": "00ff", "tokens": 0, "capacity": 10, "rejected_last_minute": 3}]}),
        )];
        let r = page(&s, &tops.into_iter().collect());
        assert_eq!(r.status(), 200);
        let html = String::from_utf8(r.into_body()).expect("utf-8");
        assert!(html.contains("<th scope=\"row\">per-&lt;ip&gt;</th>"));
        assert!(html.contains("<td data-field=\"rejected_total\">3</td>"));
        assert!(html.contains("Duplicate node id:") && html.contains("Config drift:"));
        assert!(html.contains("<code>00ff</code>"));
        assert!(html.contains("<noscript><meta http-equiv=\"refresh\""));
        assert!(!html.contains("<n>") && !html.contains("{{"));
        let none = page(&s, &HashMap::new());
        assert!(String::from_utf8_lossy(none.body()).contains("no data"));
    }

    #[test]
    fn the_login_form_is_a_401_with_the_script_allowed_by_hash() {
        let r = login();
        assert_eq!(r.status(), 401);
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("ascii");
        assert!(csp.contains(&format!("'sha256-{}'", base64(&Sha256::digest(SCRIPT)))));
        let html = String::from_utf8_lossy(r.body()).into_owned();
        assert!(html.contains("<label for=\"token\">") && !html.contains("http-equiv"));
        assert!(html.contains(SCRIPT) && html.contains(STYLE));
    }
}
