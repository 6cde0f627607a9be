//! The web client's latency beside `cairn bench e2e`'s: sent in one browser → shown in the
//! other, as the browser tests last measured it.
//!
//! The browser tests (`cd web && npx playwright test`, Debian's Chromium driving real `cairn`
//! processes on 127.0.0.1) write their figures to `bench/web-latency.json` in the cargo target
//! directory of the `cairn` binary they ran. This bench cannot drive a browser itself (that
//! needs Node.js and Playwright), so it prints that file's figures with when and by which
//! command they were measured, or says how to measure them.

use std::path::{Path, PathBuf};

/// Largest latency file read, bytes.
const FILE_BYTES_MAX: u64 = 64 * 1024;

/// What the browser tests write.
#[derive(Debug, serde::Deserialize)]
struct WebLatency {
    /// The command that measured it.
    command: String,
    /// When, RFC 3339 (UTC).
    measured_at: String,
    /// The `cairn` binary the network ran.
    cairn_bin: String,
    /// What was timed.
    what: String,
    /// Messages timed.
    samples: u32,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Where the browser tests write their figures for this binary: `CAIRN_WEB_LATENCY`, else
/// `<target>/bench/web-latency.json` beside `<target>/<profile>/cairn`.
fn latency_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_WEB_LATENCY") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("bench").join("web-latency.json"))
}

fn read(path: &Path) -> Result<WebLatency, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(FILE_BYTES_MAX).read_to_string(&mut text).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not the browser tests' format: {e}"))
}

/// The table lines for `path` (or what to do when there are no figures).
fn lines(path: Option<&Path>) -> Vec<String> {
    let how = "build with `cargo build -p cairn`, run `cd web && npx playwright test`, then this bench again";
    let Some(path) = path else {
        return vec![format!("browser (web client): no figures ({how})")];
    };
    if !path.exists() {
        return vec![format!("browser (web client): not measured yet, no {} ({how})", path.display())];
    }
    match read(path) {
        Ok(w) => vec![
            format!("browser (web client): {}, as the browser tests last measured it", w.what),
            "samples   p50 ms   p99 ms   max ms  measured at           command".into(),
            format!(
                "{:>7}  {:>7.1}  {:>7.1}  {:>7.1}  {:<20}  {} (cairn: {})",
                w.samples, w.p50_ms, w.p99_ms, w.max_ms, w.measured_at, w.command, w.cairn_bin
            ),
        ],
        Err(e) => vec![format!("browser (web client): {} unreadable: {e} ({how})", path.display())],
    }
}

/// Prints the browser's figures (after the e2e table).
pub(crate) fn print() {
    for l in lines(latency_file().as_deref()) {
        println!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_printed_with_their_command_and_a_bad_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web-latency.json");
        assert!(lines(Some(&p))[0].contains("not measured yet"));
        std::fs::write(&p, "{").unwrap();
        assert!(lines(Some(&p))[0].contains("unreadable"));
        std::fs::write(
            &p,
            r#"{"command":"cd web && npx playwright test","measured_at":"2026-12-02T03:00:00Z",
            "cairn_bin":"target/debug/cairn","what":"sent → shown","samples":50,
            "p50_ms":136,"p99_ms":194,"max_ms":201}"#,
        )
        .unwrap();
        let l = lines(Some(&p));
        assert!(l[1].contains("p50 ms") && l[1].contains("p99 ms"), "{l:?}");
        assert!(
            l[2].contains("136.0") && l[2].contains("194.0") && l[2].contains("npx playwright test"),
            "{l:?}"
        );
    }
}
