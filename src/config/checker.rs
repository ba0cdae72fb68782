//! The error collector shared by the checks of [`super::validate`] and [`super::routes`]:
//! each check records its error at the value's position and goes on, so that one run reports
//! every problem.

use super::spans::Spans;
use super::ConfigError;

/// The longest route or limit name.
pub(super) const MAX_NAME_LEN: usize = 64;

pub(super) struct Checker<'a> {
    source: &'a str,
    spans: &'a Spans,
    errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// No errors yet; `source` names the file in errors, `spans` locates the values.
    pub(super) fn new(source: &'a str, spans: &'a Spans) -> Self {
        Checker {
            source,
            spans,
            errors: Vec::new(),
        }
    }

    /// The positions of the values in the file.
    pub(super) fn spans(&self) -> &'a Spans {
        self.spans
    }
}

impl Checker<'_> {
    pub(super) fn push(&mut self, path: &str, pos: Option<(usize, usize)>, message: String) {
        self.errors.push(ConfigError {
            file: self.source.to_string(),
            line: pos.map(|p| p.0),
            col: pos.map(|p| p.1),
            path: path.to_string(),
            message,
        });
    }

    /// An error found elsewhere (another file), placed already.
    pub(super) fn push_error(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    /// An error at the value written at `path`.
    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, self.spans.value(path), message.into());
    }

    /// An error about the key naming the value at `path` (map entries named by the user).
    pub(super) fn err_key(&mut self, path: &str, message: impl Into<String>) {
        self.push(path, self.spans.key(path), message.into());
    }

    /// `Some(value)`, or records `Err(message)` at `path`.
    pub(super) fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.err(path, m)).ok()
    }

    /// How many errors have been recorded so far.
    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The errors recorded, in the order they were found.
    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

/// A serde_json error (syntax, type, unknown or missing key) with its position and path (the
/// config file's, or an overrides file's).
pub(super) fn serde_error(e: &serde_json::Error, source: &str, spans: &Spans) -> ConfigError {
    let text = e.to_string();
    let mut message = match text.rfind(" at line ") {
        Some(i) if e.line() > 0 => text[..i].to_string(),
        _ => text,
    };
    // "expected struct RawTls" names our types, not the file's: say "an object".
    const RAW: &str = "expected struct Raw";
    if let Some(i) = message.find(RAW) {
        let rest = &message[i + RAW.len()..];
        let end = i
            + RAW.len()
            + rest
                .find(|ch: char| !ch.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
        message.replace_range(i..end, "expected an object");
    }
    if e.line() == 0 {
        return ConfigError {
            file: source.to_string(),
            line: None,
            col: None,
            path: String::new(),
            message,
        };
    }
    let mut at = (e.line(), e.column().max(1));
    let path = spans.innermost(at.0, at.1).unwrap_or("").to_string();
    // A value that parsed but does not fit: point at its start (at the key if it is unknown),
    // like the checks after parsing do. Syntax errors keep the parser's position.
    if e.is_data() {
        let found = if message.starts_with("unknown field") {
            spans.key(&path)
        } else {
            spans.value(&path)
        };
        at = found.unwrap_or(at);
    }
    ConfigError {
        file: source.to_string(),
        line: Some(at.0),
        col: Some(at.1),
        path,
        message,
    }
}

/// A serde_json error in the config file itself: a syntax error (or an empty file) also says
/// how to mend it; type errors and unknown or missing keys already name the value.
pub(super) fn config_syntax_error(
    e: &serde_json::Error,
    text: &str,
    source: &str,
    spans: &Spans,
) -> ConfigError {
    let mut err = serde_error(e, source, spans);
    if !(e.is_syntax() || e.is_eof()) {
        return err;
    }
    let fix = if text.trim().is_empty() {
        "the file is empty: a config is one JSON object (see docs/configuration.md)"
    } else if !text.trim_start().starts_with(['{', '[']) {
        "the file is not JSON: a config is one JSON object, { ... } (see docs/configuration.md)"
    } else {
        "not valid JSON: fix it at this line and column"
    };
    err.message = format!("{}; {fix}", err.message);
    err
}
