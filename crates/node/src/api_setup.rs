//! The API of a node started without an account ("setup mode"): the web client can create
//! one.
//!
//! `cairn up` on a data directory without a keystore serves this instead of the full API and
//! prints `http://127.0.0.1:PORT/#setup=CODE`. The page posts the passphrase (and optionally a
//! handle) with that one-time code to `POST /v1/setup`; the node creates the keystore, gives
//! the browser a session cookie (kept in the session file, so the full API started right after
//! accepts it), stops this server and starts the node on the same address.
//!
//! Protections are the web client's: loopback `Host` only (DNS rebinding), own `Origin` and
//! `X-Cairn-Csrf: 1` on the POST (cross-site requests), and the one-time code, which only the
//! person who started the node sees, so another local user or page cannot take the account
//! first. Wrong codes are slowed down. Every other `/v1/*` route answers 503 `setup_required`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::model::ErrorBody;
use crate::web::{self, Sessions};

/// Creates the account: `(passphrase, normalized handle)` → the new account id (text), or why
/// not. Runs on a blocking thread (it derives the keystore key).
pub type CreateAccount = Arc<dyn Fn(&[u8], Option<&str>) -> Result<String, String> + Send + Sync>;

/// Shortest passphrase accepted for a new keystore.
pub const PASSPHRASE_MIN: usize = 8;
/// Longest passphrase accepted.
pub const PASSPHRASE_MAX: usize = 1024;

/// What the setup server needs.
#[derive(Clone)]
pub struct SetupOptions {
    /// Creates the keystore (and records the handle to claim).
    pub create: CreateAccount,
    /// Where browser sessions are kept (the full API reads the same file).
    pub session_file: Option<PathBuf>,
}

impl std::fmt::Debug for SetupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupOptions").field("session_file", &self.session_file).finish()
    }
}

/// `POST /v1/setup` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SetupDone {
    /// The new account id.
    pub account: String,
    /// The handle the node will claim once the account is registered.
    pub handle: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupRequest {
    code: String,
    passphrase: String,
    #[serde(default)]
    handle: Option<String>,
}

struct SetupCtx {
    code: blake3::Hash,
    /// Spent once an account was created (the server then stops).
    done: Mutex<bool>,
    /// One creation attempt at a time (each costs a KDF run).
    gate: tokio::sync::Mutex<()>,
    create: CreateAccount,
    sessions: Sessions,
    finished: Arc<Notify>,
}

fn fail(status: StatusCode, code: &str, error: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody { error: error.into(), code: code.to_string() })).into_response()
}

/// A new one-time setup code (64 hex digits).
pub fn new_code() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The setup router for `code`, and what is notified once an account was created.
pub fn router(code: &str, opts: SetupOptions) -> (Router, Arc<Notify>) {
    let finished = Arc::new(Notify::new());
    let ctx = Arc::new(SetupCtx {
        code: blake3::hash(code.as_bytes()),
        done: Mutex::new(false),
        gate: tokio::sync::Mutex::new(()),
        create: opts.create,
        sessions: Sessions::new(opts.session_file),
        finished: finished.clone(),
    });
    let app = Router::new()
        .route("/health", get(|| async { axum::Json(serde_json::json!({ "status": "setup" })) }))
        .route("/v1/setup", post(setup))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(crate::api::BODY_LIMIT))
        .layer(middleware::from_fn(web::check_host))
        .with_state(ctx);
    (app, finished)
}

/// Serves the setup API on `listener` until an account is created (`Ok(true)`) or `shutdown`
/// completes first (`Ok(false)`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    code: &str,
    opts: SetupOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let (app, finished) = router(code, opts);
    let created = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = created.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = finished.notified() => flag.store(true, std::sync::atomic::Ordering::Release),
                () = shutdown => {}
            }
        })
        .await?;
    Ok(created.load(std::sync::atomic::Ordering::Acquire))
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    if (method == Method::GET || method == Method::HEAD)
        && let Some(resp) = web::asset(uri.path())
    {
        return resp;
    }
    if uri.path().starts_with("/v1/") {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "setup_required",
            "this node has no account yet: create one in the web client with the setup link `cairn up` \
             printed, or stop the node and run `cairn init`",
        );
    }
    fail(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route: this node is waiting for its account to be created",
    )
}

async fn setup(State(ctx): State<Arc<SetupCtx>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = web::same_origin(&Method::POST, &headers, false) {
        return fail(StatusCode::FORBIDDEN, "forbidden", why);
    }
    let req: SetupRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("send {{\"code\": \"…\", \"passphrase\": \"…\", \"handle\": \"…\" (optional)}}: {e}"),
            );
        }
    };
    let pass_chars = req.passphrase.chars().count();
    if pass_chars < PASSPHRASE_MIN || req.passphrase.len() > PASSPHRASE_MAX {
        return fail(
            StatusCode::BAD_REQUEST,
            "weak_passphrase",
            format!(
                "choose a passphrase of at least {PASSPHRASE_MIN} characters (at most {PASSPHRASE_MAX} bytes): \
                 it protects your identity key"
            ),
        );
    }
    let handle =
        match req.handle.as_deref().map(|h| h.trim().trim_start_matches('@')).filter(|h| !h.is_empty()) {
            None => None,
            Some(raw) => match cairn_ledger::tx::normalize_handle(raw) {
                Ok(h) => Some(h),
                Err(e) => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "bad_handle",
                        format!("@{raw}: {e}; choose another handle"),
                    );
                }
            },
        };
    let _gate = ctx.gate.lock().await;
    if *ctx.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
        return fail(
            StatusCode::CONFLICT,
            "conflict",
            "an account was already created on this node: reload the page and unlock it with its passphrase",
        );
    }
    if blake3::hash(req.code.trim().as_bytes()) != ctx.code {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        return fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong setup code: open the exact link `cairn up` printed when it started",
        );
    }
    let create = ctx.create.clone();
    let pass = req.passphrase;
    let wanted = handle.clone();
    let created = tokio::task::spawn_blocking(move || create(pass.as_bytes(), wanted.as_deref())).await;
    let account = match created {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the account could not be created: {e}; check the data directory, then retry"),
            );
        }
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("account creation failed: {e}"),
            );
        }
    };
    *ctx.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    let session = match ctx.sessions.new_session() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no web session after setup: {e}");
            None
        }
    };
    let mut resp = (StatusCode::CREATED, axum::Json(SetupDone { account, handle })).into_response();
    if let Some(cookie) = session.and_then(|s| web::set_cookie(&headers, Some(&s))) {
        resp.headers_mut().insert(SET_COOKIE, cookie);
    }
    ctx.finished.notify_one();
    resp
}
