//! Builds the map page (`web/`) into `web/dist/`, which `src/web.rs` embeds.
//!
//! The page is JavaScript bundled with npm and esbuild. This script runs `npm ci` (or
//! `npm install` when there is no lockfile) and `npm run build` in `web/` when `web/dist/` is
//! missing or older than its sources. It never fails the Rust build because of the page: without
//! npm, or when npm fails, it prints a `cargo:warning` and leaves a small `web/dist/index.html`
//! that says how to build the page, so the server still builds and runs.
//!
//! Set `BEACON_SKIP_WEB_BUILD=1` to never run npm (the fallback page is written if needed).
//!
//! Standard library only: no build-dependencies.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime};

/// Marker that identifies the fallback page, so a later build replaces it with the real one.
const FALLBACK_MARKER: &str = "<meta name=\"beacon-fallback\" content=\"1\">";

/// Inputs of the page build; a change to any of them reruns this script.
const INPUTS: &[&str] = &[
    "web/src",
    "web/index.html",
    "web/build.mjs",
    "web/package.json",
    "web/package-lock.json",
];

/// A lock older than this is left over from a killed build and is taken over.
const STALE_LOCK: Duration = Duration::from_secs(15 * 60);

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    for input in INPUTS {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rerun-if-env-changed=BEACON_SKIP_WEB_BUILD");

    let web = root.join("web");
    let index = web.join("dist").join("index.html");
    if !web.join("package.json").is_file() {
        // A source tree without the page (e.g. a trimmed package): serve the fallback.
        ensure_fallback(&index, "web/package.json is missing");
        return;
    }
    if !needs_build(&root, &index) {
        return;
    }
    if env::var_os("BEACON_SKIP_WEB_BUILD").is_some_and(|v| !v.is_empty() && v != "0") {
        warn("BEACON_SKIP_WEB_BUILD is set: the map page was not built");
        ensure_fallback(&index, "BEACON_SKIP_WEB_BUILD was set");
        return;
    }

    // Two cargo invocations (say `build` and `test`) may run this at once; npm must not.
    let Some(_lock) = Lock::acquire(&web.join(".build.lock")) else {
        warn("another build of web/ did not finish in time; the map page may be out of date");
        ensure_fallback(&index, "another build of web/ held the lock");
        return;
    };
    // The other build may have done the work while we waited.
    if !needs_build(&root, &index) {
        return;
    }

    match build_page(&web) {
        Ok(()) if index.is_file() => {}
        Ok(()) => {
            warn("`npm run build` succeeded but web/dist/index.html is missing");
            ensure_fallback(&index, "the build produced no index.html");
        }
        Err(reason) => {
            warn(&format!("the map page was not built: {reason}"));
            warn("build it with: cd web && npm ci && npm run build (Node.js 20+), then rebuild");
            ensure_fallback(&index, &reason);
        }
    }
}

/// Whether `web/dist/index.html` is missing, is the fallback, or is older than an input.
fn needs_build(root: &Path, index: &Path) -> bool {
    let Ok(built) = fs::metadata(index).and_then(|m| m.modified()) else {
        return true;
    };
    if is_fallback(index) {
        return true;
    }
    INPUTS
        .iter()
        .filter_map(|input| newest_mtime(&root.join(input)))
        .any(|changed| changed > built)
}

fn is_fallback(index: &Path) -> bool {
    fs::read_to_string(index).is_ok_and(|html| html.contains(FALLBACK_MARKER))
}

/// Newest modification time of a file, or of any file below a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    let mut newest = meta.modified().ok();
    for entry in fs::read_dir(path).ok()?.flatten() {
        if let Some(t) = newest_mtime(&entry.path()) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    }
    newest
}

/// Installs the npm packages when needed, then runs the build script of `web/package.json`.
fn build_page(web: &Path) -> Result<(), String> {
    let lockfile = web.join("package-lock.json");
    // npm writes node_modules/.package-lock.json on every install: older than the lockfile
    // means the lockfile changed since.
    let installed = fs::metadata(web.join("node_modules").join(".package-lock.json"))
        .and_then(|m| m.modified())
        .ok();
    let lock_changed = match (installed, newest_mtime(&lockfile)) {
        (Some(installed), Some(lock)) => lock > installed,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if lock_changed {
        if lockfile.is_file() {
            npm(web, &["ci", "--no-audit", "--no-fund"])?;
        } else {
            npm(web, &["install", "--no-audit", "--no-fund"])?;
        }
    }
    npm(web, &["run", "build"])
}

/// Runs npm in `dir`, forwarding its output to this script's stderr (shown by `cargo -vv`).
fn npm(dir: &Path, args: &[&str]) -> Result<(), String> {
    let program = if cfg!(windows) { "npm.cmd" } else { "npm" };
    let shown = format!("npm {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => "npm was not found on PATH".to_string(),
            _ => format!("could not run `{shown}`: {e}"),
        })?;
    eprintln!("$ {shown}");
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        return Ok(());
    }
    // The last lines of npm's error output say what went wrong; show them as warnings.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("npm warn"))
        .collect();
    for line in &tail[tail.len().saturating_sub(6)..] {
        warn(&format!("  {line}"));
    }
    Err(format!("`{shown}` failed ({})", output.status))
}

/// Writes the fallback page unless a real page is already there.
fn ensure_fallback(index: &Path, reason: &str) {
    if index.is_file() && !is_fallback(index) {
        return;
    }
    let reason = reason
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{FALLBACK_MARKER}\n\
<title>Beacon · map page not built</title>\n\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:4rem auto;padding:0 1rem;color:#0f172a}}\
code,pre{{background:#f1f5f9;border-radius:4px;padding:.1rem .3rem}}pre{{padding:.8rem}}</style>\n\
</head>\n<body>\n<h1>Beacon is running</h1>\n\
<p>The live map page was not built into this binary ({reason}).</p>\n\
<p>Building it needs Node.js 20 or newer with npm. From the repository root:</p>\n\
<pre>cd web &amp;&amp; npm ci &amp;&amp; npm run build\ncd .. &amp;&amp; cargo build</pre>\n\
<p>The WebSocket API (<code>/v1/ws</code>) and the HTTP API work without the page.</p>\n\
</body>\n</html>\n"
    );
    let result = index
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::write(index, html));
    if let Err(e) = result {
        warn(&format!("could not write {}: {e}", index.display()));
    }
}

fn warn(message: &str) {
    println!("cargo:warning={message}");
}

/// An exclusive lock file, removed on drop.
struct Lock(PathBuf);

impl Lock {
    /// Takes the lock, waiting up to ten minutes for another holder to finish.
    fn acquire(path: &Path) -> Option<Lock> {
        for _ in 0..(10 * 60 * 2) {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return Some(Lock(path.to_path_buf())),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                    thread::sleep(Duration::from_millis(500));
                }
                // Read-only source tree or the like: build without the lock.
                Err(_) => return Some(Lock(PathBuf::new())),
            }
        }
        None
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}
