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
