//! The source layout's rules (see `src/lib.rs` and `docs/design.md`), read from the sources:
//! - `limit/` (the pure core) and `request/` use nothing from the adapters (`http/`, `shared/`,
//!   `admin/`, `app/`, `cli/`) nor pingora, redis or tokio; `limit/` uses neither the config
//!   nor the request layer either;
//! - no two files of `src/` use each other, directly or through others (no import cycle);
//! - no file of `src/` is over 500 lines, and no function outside tests over 80.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src/`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(src()).expect("under src").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A file's text without its `#[cfg(test)]` module (tests may use anything) and comments.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(src().join(path)).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of a file: `limit/store.rs` -> `limit::store`, `admin/mod.rs` -> `admin`.
fn module_of(path: &Path) -> String {
    let s = path.to_string_lossy().trim_end_matches(".rs").to_string();
    let s = s.trim_end_matches("/mod").trim_end_matches("lib");
    s.trim_end_matches('/').replace('/', "::")
}

/// The `crate::a::b` paths a file's code names, resolved to the files that hold them, and the
/// paths that `super::x` names from a file in a folder.
fn uses_of(path: &Path, modules: &BTreeMap<String, PathBuf>) -> BTreeSet<PathBuf> {
    let code = code_of(path);
    let module = module_of(path);
    let parent = match path.file_name().and_then(|f| f.to_str()) {
        Some("mod.rs") => module.rsplit_once("::").map_or("", |(p, _)| p).to_string(),
        _ => module.rsplit_once("::").map_or("", |(p, _)| p).to_string(),
    };
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent)] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut parts: Vec<&str> = rest[..end].split("::").filter(|p| !p.is_empty()).collect();
            // The longest prefix of the path that names a module file.
            while !parts.is_empty() {
                let name = if base.is_empty() {
                    parts.join("::")
                } else {
                    format!("{base}::{}", parts.join("::"))
                };
                if let Some(file) = modules.get(&name) {
                    if file != path {
                        out.insert(file.clone());
                    }
                    break;
                }
                parts.pop();
            }
        }
    }
    out
}

fn library_files() -> Vec<PathBuf> {
    rust_files(&src())
        .into_iter()
        .filter(|p| !p.starts_with("bin") && p != Path::new("main.rs"))
        .collect()
}

#[test]
fn the_core_layers_use_no_adapter_and_no_io_crate() {
    let mut found = Vec::new();
    for file in library_files() {
        let layer = file.iter().next().and_then(|c| c.to_str()).unwrap_or("");
        let mut banned: Vec<&str> = match layer {
            "limit" | "request" => vec![
                "crate::http",
                "crate::shared",
                "crate::admin",
                "crate::app",
                "crate::cli",
                "pingora",
                "redis::",
                "tokio",
                "async_trait",
            ],
            _ => continue,
        };
        if layer == "limit" {
            banned.extend(["crate::config", "crate::request"]);
        }
        let code = code_of(&file);
        for b in banned {
            if code.contains(b) {
                found.push(format!("{}: uses {b}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "layer rule broken:\n{}", found.join("\n"));
}

#[test]
fn no_file_uses_a_file_that_uses_it() {
    let files = library_files();
    let modules: BTreeMap<String, PathBuf> =
        files.iter().map(|f| (module_of(f), f.clone())).collect();
    let graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = files
        .iter()
        .map(|f| (f.clone(), uses_of(f, &modules)))
        .collect();
    // A module file that only declares its children (`pub mod x;`) is not a use of them.
    let mut cycles = Vec::new();
    for start in &files {
        // Depth-first from each file: a path back to it is a cycle.
        let mut stack: Vec<(PathBuf, Vec<PathBuf>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> =
                        trail.iter().map(|p| p.display().to_string()).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), start.display()));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn files_and_functions_stay_short() {
    const MAX_FILE_LINES: usize = 500;
    const MAX_FN_LINES: usize = 80;
    let mut long = Vec::new();
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(src().join(&file)).expect("read source");
        let code_lines = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => text[..at].lines().count(),
            None => text.lines().count(),
        };
        if code_lines > MAX_FILE_LINES {
            long.push(format!("{}: {code_lines} lines", file.display()));
        }
        for (name, lines) in function_lengths(&code_of(&file)) {
            if lines > MAX_FN_LINES {
                long.push(format!("{}: fn {name}: {lines} lines", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

/// Each `fn` in the code (rustfmt's layout: the body closes with a `}` at the indentation of
/// the `fn` line), with its length in lines.
fn function_lengths(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let at = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "async fn ",
        ]
        .iter()
        .chain(&["pub async fn ", "const fn ", "pub const fn "])
        .find(|p| trimmed.starts_with(**p));
        let Some(prefix) = at else { continue };
        let name: String = trimmed[prefix.len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = " ".repeat(indent) + "}";
        if let Some(end) = lines[i..].iter().position(|l| *l == close) {
            out.push((name, end + 1));
        }
    }
    out
}
