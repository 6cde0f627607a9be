//! The web client the node serves on its API address: the embedded assets of `web/dist`,
//! browser sessions, and the checks that keep a browser's ambient credentials safe.
//!
//! - **Assets**: `web/dist` is embedded at build time (`build.rs`), so a fresh `cargo build`
//!   needs no npm. `GET /` is `index.html`; other asset paths are served as built; any other
//!   path keeps the API's JSON 404.
//! - **Login**: `cairn web` asks the node (with the bearer token) for a one-time login code
//!   (`POST /v1/web/login`) and prints `http://127.0.0.1:PORT/#login=CODE`. The page exchanges
//!   the code (or the keystore passphrase) at `POST /v1/session` for a random session id in an
//!   `HttpOnly; SameSite=Strict` cookie: the long-lived API token never reaches the browser.
//! - **DNS rebinding**: every request must name a loopback host (`127.0.0.1`, `localhost`,
//!   `[::1]`) in `Host`; a page on `evil.example` that re-resolved to 127.0.0.1 sends its own
//!   name and is refused (421).
//! - **Cross-site requests**: a cookie-authenticated request that changes state must carry
//!   `X-Cairn-Csrf: 1` (a custom header, so a cross-origin page needs a CORS preflight, which
//!   this server never grants) and, when the browser sends `Origin`, it must be this origin.
//!   The WebSocket stream, where browsers cannot add headers, needs `Origin` to be this origin.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The embedded files of `web/dist`: `(path, bytes)`, paths starting with `/`.
pub const ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The header a cookie-authenticated state-changing request must carry (value `1`).
pub const CSRF_HEADER: &str = "x-cairn-csrf";

/// How long a login code from `cairn web` stays valid.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Login codes kept at once (the oldest is dropped for a new one).
pub const MAX_CODES: usize = 8;
/// Browser sessions kept at once (the oldest is logged out for a new one).
pub const MAX_SESSIONS: usize = 32;

/// Checks a keystore passphrase (true: it opens this node's keystore). Runs on a blocking
/// thread: it derives a key with the keystore's KDF.
pub type PassphraseCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// What the web client may use beyond the API token.
#[derive(Clone, Default)]
pub struct WebOptions {
    /// Lets a browser log in with the keystore passphrase (None: login links only).
    pub passphrase: Option<PassphraseCheck>,
    /// Keeps browser sessions (their hashes and expiry times, 0600) across node restarts
    /// (None: in memory only).
    pub session_file: Option<PathBuf>,
}

impl std::fmt::Debug for WebOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebOptions")
            .field("passphrase", &self.passphrase.is_some())
            .field("session_file", &self.session_file)
            .finish()
    }
}

/// `POST /v1/web/login` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WebLogin {
    /// One-time code (64 hex digits), valid for [`CODE_TTL`].
    pub code: String,
    /// Path to open on the API address: `/#login=CODE` (a fragment: never sent to a server).
    pub path: String,
    /// Seconds the code stays valid.
    pub expires_in_s: u64,
}

/// One-time login codes and live sessions, both kept only as BLAKE3 hashes, bounded.
#[derive(Default)]
pub(crate) struct Sessions {
    inner: Mutex<SessionState>,
    /// One passphrase check at a time (each costs a KDF run).
    pub(crate) passphrase_gate: tokio::sync::Mutex<()>,
    /// Where sessions are kept across restarts.
    file: Option<PathBuf>,
}

#[derive(Default)]
struct SessionState {
    codes: VecDeque<(blake3::Hash, Instant)>,
    /// Session hashes and their expiry (Unix ms: they outlive the process).
    sessions: VecDeque<(blake3::Hash, u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Largest session file read (one line per session; anything longer is not ours).
const SESSION_FILE_MAX: u64 = 64 * 1024;

/// Parses a session file: `HASH_HEX EXPIRY_MS` lines; malformed or expired lines are skipped,
/// at most [`MAX_SESSIONS`] (the last ones) kept.
fn parse_sessions(text: &str, now: u64) -> VecDeque<(blake3::Hash, u64)> {
    let mut out = VecDeque::new();
    for line in text.lines() {
        let Some((h, t)) = line.trim().split_once(' ') else { continue };
        let (Ok(h), Ok(t)) = (blake3::Hash::from_hex(h), t.parse::<u64>()) else { continue };
        if t > now && t <= now.saturating_add(SESSION_TTL.as_millis() as u64) {
            out.push_back((h, t));
        }
    }
    while out.len() > MAX_SESSIONS {
        out.pop_front();
    }
    out
}

fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

fn push_bounded<T: PartialOrd + Copy>(
    q: &mut VecDeque<(blake3::Hash, T)>,
    h: blake3::Hash,
    until: T,
    now: T,
    max: usize,
) {
    q.retain(|(_, t)| *t > now);
    while q.len() >= max {
        q.pop_front();
    }
    q.push_back((h, until));
}

impl Sessions {
    /// Sessions kept in `file` (read now if it exists; unreadable or malformed content starts
    /// empty, logged), or in memory only.
    pub(crate) fn new(file: Option<PathBuf>) -> Sessions {
        let mut state = SessionState::default();
        if let Some(path) = &file {
            match std::fs::File::open(path) {
                Ok(f) => {
                    use std::io::Read as _;
                    let mut text = String::new();
                    match f.take(SESSION_FILE_MAX).read_to_string(&mut text) {
                        Ok(_) => state.sessions = parse_sessions(&text, now_ms()),
                        Err(e) => {
                            tracing::warn!("web sessions in {}: {e}; starting with none", path.display())
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("web sessions in {}: {e}; starting with none", path.display()),
            }
        }
        Sessions { inner: Mutex::new(state), passphrase_gate: tokio::sync::Mutex::new(()), file }
    }

    /// Writes the sessions to the file (atomically, 0600). A failure is logged: the sessions
    /// still work until the node restarts.
    fn save(&self, sessions: &VecDeque<(blake3::Hash, u64)>) {
        let Some(path) = &self.file else { return };
        let text: String = sessions.iter().map(|(h, t)| format!("{} {t}\n", h.to_hex())).collect();
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!("saving web sessions to {}: {e}", path.display());
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new one-time login code.
    pub(crate) fn new_code(&self) -> Result<String, String> {
        let code = random_hex()?;
        push_bounded(
            &mut self.state().codes,
            blake3::hash(code.as_bytes()),
            Instant::now() + CODE_TTL,
            Instant::now(),
            MAX_CODES,
        );
        Ok(code)
    }

    /// Spends a login code: true once, if it was issued and has not expired.
    pub(crate) fn take_code(&self, code: &str) -> bool {
        let h = blake3::hash(code.as_bytes());
        let now = Instant::now();
        let mut st = self.state();
        let live = st.codes.iter().any(|(c, t)| *c == h && *t > now);
        st.codes.retain(|(c, t)| *t > now && *c != h);
        live
    }

    /// A new session id.
    pub(crate) fn new_session(&self) -> Result<String, String> {
        let id = random_hex()?;
        let now = now_ms();
        let mut st = self.state();
        push_bounded(
            &mut st.sessions,
            blake3::hash(id.as_bytes()),
            now.saturating_add(SESSION_TTL.as_millis() as u64),
            now,
            MAX_SESSIONS,
        );
        self.save(&st.sessions);
        Ok(id)
    }

    /// Whether `id` is a live session.
    pub(crate) fn valid(&self, id: &str) -> bool {
        let h = blake3::hash(id.as_bytes());
        let now = now_ms();
        self.state().sessions.iter().any(|(s, t)| *s == h && *t > now)
    }

    /// Ends a session.
    pub(crate) fn end(&self, id: &str) {
        let h = blake3::hash(id.as_bytes());
        let mut st = self.state();
        st.sessions.retain(|(s, _)| *s != h);
        self.save(&st.sessions);
    }
}

// ---- request checks -------------------------------------------------------------------------

/// Whether `host` (a `Host` header value, with or without port) names this machine's loopback.
pub fn allowed_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((inner, port)) => {
                inner == "::1" && (port.is_empty() || port.strip_prefix(':').is_some_and(valid_port))
            }
            None => false,
        };
    }
    let name = match host.split_once(':') {
        Some((name, port)) if valid_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1"
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The request's `Host`, if present and valid UTF-8.
fn host_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(HOST).and_then(|h| h.to_str().ok())
}

/// Middleware: refuses requests whose `Host` (or absolute URI authority) is not loopback.
pub(crate) async fn check_host(req: Request, next: Next) -> Response {
    let host_ok = host_of(req.headers()).is_some_and(allowed_host);
    let authority_ok = req.uri().authority().is_none_or(|a| allowed_host(a.as_str()));
    if !host_ok || !authority_ok {
        return crate::api::Failure::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this node only answers requests addressed to 127.0.0.1, localhost or [::1]; open the \
             address `cairn web` prints",
        )
        .into_response();
    }
    next.run(req).await
}

/// The session cookie's name for this request: one per port, so two nodes on one machine keep
/// separate sessions in one browser.
pub(crate) fn cookie_name(headers: &HeaderMap) -> String {
    let port = host_of(headers)
        .and_then(|h| h.rsplit_once(':'))
        .map(|(_, p)| p)
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("80");
    format!("cairn_session_{port}")
}

/// The session id in the request's cookies, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(headers);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A `Set-Cookie` value carrying `id` (or clearing the cookie when `id` is None).
pub(crate) fn set_cookie(headers: &HeaderMap, id: Option<&str>) -> Option<HeaderValue> {
    let name = cookie_name(headers);
    let v = match id {
        Some(id) => {
            format!("{name}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs())
        }
        None => format!("{name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    };
    HeaderValue::from_str(&v).ok()
}

/// Whether `Origin` is this server's own origin (`http://` + the request's `Host`).
fn origin_is_self(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(ORIGIN)?.to_str().ok()?;
    let host = host_of(headers)?;
    Some(origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(host)))
}

/// Cross-site checks of a cookie-authenticated (or cookie-issuing) request; `Err` says why it
/// is refused.
pub(crate) fn same_origin(method: &Method, headers: &HeaderMap, websocket: bool) -> Result<(), &'static str> {
    if websocket {
        // Browsers always send Origin on WebSocket handshakes and cannot add headers.
        return match origin_is_self(headers) {
            Some(true) => Ok(()),
            _ => Err("the live stream only accepts this page's own origin; reload the page from the \
                      address `cairn web` prints"),
        };
    }
    if origin_is_self(headers) == Some(false) {
        return Err("cross-origin request refused: use the web client served by this node");
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err("missing `X-Cairn-Csrf: 1` header: requests with a session cookie that change \
                    something must carry it (the web client does)");
    }
    Ok(())
}

// ---- assets ---------------------------------------------------------------------------------

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "webmanifest") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The Content-Security-Policy of the served pages: only this origin's scripts, styles and
/// connections (the stream's `ws:` is same-origin), no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

/// The embedded file answering `GET path`, if any (`/` is `index.html`).
pub(crate) fn asset(path: &str) -> Option<Response> {
    let path = if path == "/" { "/index.html" } else { path };
    let (_, bytes) = ASSETS.iter().find(|(p, _)| *p == path)?;
    let cache = if path.starts_with("/assets/") {
        "public, max-age=31536000, immutable" // content-hashed names
    } else {
        "no-cache"
    };
    let mut resp = ([(CONTENT_TYPE, content_type(path)), (CACHE_CONTROL, cache)], *bytes).into_response();
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in ["127.0.0.1", "127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]", "[::1]:65535"] {
            assert!(allowed_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.",
            "127.0.0.2:80",
            "127.0.0.1:",
            "127.0.0.1:80:80",
            "127.0.0.1:123456",
            "127.0.0.1:8o",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[::2]:80",
            "0.0.0.0:80",
        ] {
            assert!(!allowed_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_per_port_and_well_formed() {
        let id = "ab".repeat(32);
        let h =
            headers(&[("host", "127.0.0.1:4000"), ("cookie", &format!("a=b; cairn_session_4000={id}; c=d"))]);
        assert_eq!(session_cookie(&h).as_deref(), Some(id.as_str()));
        // Another port's cookie, a short or non-hex value: none.
        let h = headers(&[("host", "127.0.0.1:4001"), ("cookie", &format!("cairn_session_4000={id}"))]);
        assert_eq!(session_cookie(&h), None);
        let h = headers(&[("host", "127.0.0.1:4000"), ("cookie", "cairn_session_4000=abc")]);
        assert_eq!(session_cookie(&h), None);
        let h = headers(&[
            ("host", "127.0.0.1:4000"),
            ("cookie", &format!("cairn_session_4000={}", "zz".repeat(32))),
        ]);
        assert_eq!(session_cookie(&h), None);
        let set = set_cookie(&headers(&[("host", "127.0.0.1:4000")]), Some(&id)).unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with(&format!("cairn_session_4000={id};")), "{set}");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
            "{set}"
        );
    }

    #[test]
    fn cookie_requests_need_the_header_and_their_own_origin() {
        let own = [("host", "127.0.0.1:4000"), ("origin", "http://127.0.0.1:4000")];
        assert!(same_origin(&Method::GET, &headers(&[("host", "127.0.0.1:4000")]), false).is_ok());
        assert!(same_origin(&Method::POST, &headers(&own), false).is_err(), "no X-Cairn-Csrf");
        let mut h = headers(&own);
        h.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(same_origin(&Method::POST, &h, false).is_ok());
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:4001"));
        assert!(same_origin(&Method::POST, &h, false).is_err(), "another port is another origin");
        assert!(same_origin(&Method::GET, &h, false).is_err(), "a foreign Origin is refused even on reads");
        // The stream: its own Origin only, and a missing one is refused.
        assert!(same_origin(&Method::GET, &headers(&own), true).is_ok());
        assert!(same_origin(&Method::GET, &headers(&[("host", "127.0.0.1:4000")]), true).is_err());
        let h = headers(&[("host", "127.0.0.1:4000"), ("origin", "null")]);
        assert!(same_origin(&Method::GET, &h, true).is_err());
    }

    #[test]
    fn sessions_survive_a_restart_through_their_file_and_garbage_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-sessions");
        let s = Sessions::new(Some(path.clone()));
        let a = s.new_session().unwrap();
        let b = s.new_session().unwrap();
        s.end(&b);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a) && !text.contains(&b), "only hashes are written");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Sessions::new(Some(path.clone()));
        assert!(again.valid(&a) && !again.valid(&b));
        // Garbage, expired and far-future lines are skipped; good ones kept.
        let now = now_ms();
        let good = blake3::hash(b"x");
        let text = format!(
            "nonsense\n{} {}\n{} 1\n{} {}\nzz {}\n",
            good.to_hex(),
            now + 1000,
            blake3::hash(b"old").to_hex(),
            blake3::hash(b"far").to_hex(),
            u64::MAX,
            now + 1000
        );
        let parsed = parse_sessions(&text, now);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, good);
        let many: String =
            (0..100).map(|i| format!("{} {}\n", blake3::hash(&[i]).to_hex(), now + 1000)).collect();
        assert_eq!(parse_sessions(&many, now).len(), MAX_SESSIONS);
    }

    #[test]
    fn codes_are_single_use_and_sessions_bounded() {
        let s = Sessions::default();
        let code = s.new_code().unwrap();
        assert!(!s.take_code("not it"));
        assert!(s.take_code(&code));
        assert!(!s.take_code(&code), "single use");
        let first = s.new_session().unwrap();
        assert!(s.valid(&first));
        for _ in 0..MAX_SESSIONS {
            s.new_session().unwrap();
        }
        assert!(!s.valid(&first), "the oldest session makes room for a new one");
        let last = s.new_session().unwrap();
        s.end(&last);
        assert!(!s.valid(&last));
    }
}
