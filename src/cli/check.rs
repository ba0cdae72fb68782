//! `tollgate check`: load and validate a config, and print a summary or every error.

use crate::app::node::Runtime;
use crate::config::{Config, ConfigErrors};
use std::path::Path;
use std::process::ExitCode;

/// `tollgate check -c FILE`: exit 0 with a one-line summary, or 2 with every error.
pub fn command(path: &Path) -> ExitCode {
    match load(path) {
        Ok(rt) => {
            println!("{}", rt.config.summary());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Loads and compiles a config, printing every error as `FILE:LINE:COL: path: message`.
pub fn load(path: &Path) -> Result<Runtime, ExitCode> {
    Config::load(path)
        .and_then(Runtime::build)
        .map_err(|e| report(path, e))
}

/// Prints config errors; the exit code of `check`.
pub fn report(path: &Path, errors: ConfigErrors) -> ExitCode {
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
