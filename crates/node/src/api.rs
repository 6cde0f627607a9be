//! The local HTTP + WebSocket API (axum), bound to 127.0.0.1 by the node.
//!
//! Every route is listed in [`ROUTES`], which is also what the router is built from and what
//! the checked-in OpenAPI document (`crates/node/openapi.json`, served at `/openapi.json`) is
//! tested against. `/health`, `/openapi.json` and `/v1/session` are public; everything else
//! needs `Authorization: Bearer TOKEN` (the token file `DIR/api.token`, see
//! [`crate::client::load_or_create_token`]) or a browser session cookie of the web client
//! (see [`crate::web`]: one-time login codes, same-origin checks, the `Host` check against DNS
//! rebinding, which applies to every request).
//!
//! Every error answer, including the ones axum would produce itself (malformed JSON, wrong
//! content type, bad query string, oversized body, unknown route, wrong method), is an
//! [`ErrorBody`] with a matching status. A panic in a handler becomes a 500 answer; it never
//! takes the server down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, SET_COOKIE, UPGRADE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use futures::FutureExt as _;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};

use crate::backend::{ApiError, Backend};
use crate::model::{
    AccountForgetRequest, DeliveryState, DeviceAddRequest, ErasuresQuery, ErrorBody, HandleRequest,
    MembersRequest, PolicySetRequest, SendQuery, SendRequest, StreamEvent, TailQuery,
};
use crate::web::{self, Sessions, WebOptions};

/// Largest accepted request body, in bytes (larger → 413).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The OpenAPI 3.1 document, as checked into the repository.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route: `(method, path)`, paths in axum/OpenAPI template syntax. The router is built
/// from this list and a test checks that `openapi.json` documents exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/v1/status"),
    ("GET", "/v1/conversations"),
    ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations/{id}"),
    ("POST", "/v1/conversations/{id}/members"),
    ("DELETE", "/v1/conversations/{id}/members/{member}"),
    ("POST", "/v1/conversations/{id}/leave"),
    ("POST", "/v1/conversations/{id}/forget"),
    ("POST", "/v1/conversations/{id}/messages"),
    ("GET", "/v1/conversations/{id}/messages"),
    ("GET", "/v1/conversations/{id}/deliveries"),
    ("DELETE", "/v1/conversations/{id}/messages/{message}"),
    ("GET", "/v1/conversations/{id}/erasures"),
    ("POST", "/v1/account/forget"),
    ("GET", "/v1/conversations/{id}/policy"),
    ("PUT", "/v1/conversations/{id}/policy"),
    ("GET", "/v1/conversations/{id}/held"),
    ("POST", "/v1/conversations/{id}/held/{message}/release"),
    ("POST", "/v1/conversations/{id}/verify"),
    ("POST", "/v1/handle"),
    ("GET", "/v1/devices"),
    ("POST", "/v1/devices"),
    ("DELETE", "/v1/devices/{device}"),
    ("POST", "/v1/devices/link"),
    ("GET", "/v1/devices/link/{link}"),
    ("GET", "/v1/ledger/status"),
    ("GET", "/v1/ledger/accounts/{who}"),
    ("GET", "/v1/balance"),
    ("POST", "/v1/payments"),
    ("GET", "/v1/requests"),
    ("POST", "/v1/requests/{id}/accept"),
    ("POST", "/v1/requests/{id}/decline"),
    ("GET", "/v1/stream"),
    ("POST", "/v1/shutdown"),
    ("POST", "/v1/web/login"),
    ("POST", "/v1/session"),
    ("DELETE", "/v1/session"),
];

/// Routes answered without a token.
pub const PUBLIC_ROUTES: &[&str] = &["/health", "/openapi.json", "/v1/session"];

/// Shared state of the handlers.
struct Ctx<B> {
    backend: Arc<B>,
    token: blake3::Hash,
    token_set: bool,
    /// Becomes `true` when the server shuts down (closes streams, ends long polls).
    stop: watch::Sender<bool>,
    /// Browser login codes and sessions.
    sessions: Sessions,
    /// What browsers may log in with.
    web: WebOptions,
}

/// How a request was authenticated (a request extension set by the auth middleware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    /// `Authorization: Bearer` with the API token.
    Bearer,
    /// A web client session cookie.
    Session,
}

type St<B> = State<Arc<Ctx<B>>>;

/// The API router for `backend`, accepting `token` as bearer token.
pub fn router<B: Backend>(backend: Arc<B>, token: String) -> Router {
    build(backend, token, WebOptions::default()).0
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, closes open
/// streams and waits for in-flight requests (long polls end early with 503).
pub async fn serve<B: Backend>(
    listener: tokio::net::TcpListener,
    backend: Arc<B>,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, backend, token, WebOptions::default(), shutdown).await
}

/// [`serve`], with what browsers may log in with (e.g. the keystore passphrase).
pub async fn serve_with<B: Backend>(
    listener: tokio::net::TcpListener,
    backend: Arc<B>,
    token: String,
    web: WebOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (app, stop) = build(backend, token, web);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.send_replace(true);
        })
        .await
}

fn build<B: Backend>(backend: Arc<B>, token: String, web: WebOptions) -> (Router, watch::Sender<bool>) {
    let (stop, _) = watch::channel(false);
    if token.is_empty() {
        tracing::error!("empty API token: every authenticated request will be refused");
    }
    let ctx = Arc::new(Ctx {
        backend,
        token: blake3::hash(token.as_bytes()),
        token_set: !token.is_empty(),
        stop: stop.clone(),
        sessions: Sessions::new(web.session_file.clone()),
        web,
    });
    let mut public = Router::new();
    let mut protected = Router::new();
    for &(method, path) in ROUTES {
        let Some(handler) = handler::<B>(method, path) else {
            tracing::error!("no handler for {method} {path}");
            continue;
        };
        if PUBLIC_ROUTES.contains(&path) {
            public = public.route(path, handler);
        } else {
            protected = protected.route(path, handler);
        }
    }
    let protected = protected.route_layer(middleware::from_fn_with_state(ctx.clone(), auth::<B>));
    let app = public
        .merge(protected)
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn(web::check_host))
        .with_state(ctx);
    (app, stop)
}

fn handler<B: Backend>(method: &str, path: &str) -> Option<MethodRouter<Arc<Ctx<B>>>> {
    Some(match (method, path) {
        ("GET", "/health") => get(health),
        ("GET", "/openapi.json") => get(openapi),
        ("GET", "/metrics") => get(metrics::<B>),
        ("GET", "/v1/status") => get(status::<B>),
        ("GET", "/v1/conversations") => get(conversations::<B>),
        ("POST", "/v1/conversations") => post(create_conversation::<B>),
        ("GET", "/v1/conversations/{id}") => get(conversation::<B>),
        ("POST", "/v1/conversations/{id}/members") => post(add_members::<B>),
        ("DELETE", "/v1/conversations/{id}/members/{member}") => delete(remove_member::<B>),
        ("POST", "/v1/conversations/{id}/leave") => post(leave::<B>),
        ("POST", "/v1/conversations/{id}/forget") => post(forget::<B>),
        ("POST", "/v1/conversations/{id}/messages") => post(send::<B>),
        ("GET", "/v1/conversations/{id}/messages") => get(messages::<B>),
        ("GET", "/v1/conversations/{id}/deliveries") => {
            get(|State(ctx): St<B>, ApiPath(id): ApiPath<String>| async move {
                ok(ctx.backend.deliveries(id).await)
            })
        }
        ("DELETE", "/v1/conversations/{id}/messages/{message}") => delete(erase::<B>),
        ("GET", "/v1/conversations/{id}/policy") => get(
            |State(ctx): St<B>, ApiPath(id): ApiPath<String>| async move { ok(ctx.backend.policy(id).await) },
        ),
        ("GET", "/v1/conversations/{id}/held") => get(
            |State(ctx): St<B>, ApiPath(id): ApiPath<String>| async move { ok(ctx.backend.held(id).await) },
        ),
        ("POST", "/v1/conversations/{id}/held/{message}/release") => {
            post(|State(ctx): St<B>, ApiPath((id, message)): ApiPath<(String, String)>| async move {
                ok(ctx.backend.release_held(id, message).await)
            })
        }
        ("PUT", "/v1/conversations/{id}/policy") => put(
            |State(ctx): St<B>, ApiPath(id): ApiPath<String>, ApiJson(req): ApiJson<PolicySetRequest>| async move {
                ok(ctx.backend.set_policy(id, req).await)
            },
        ),
        ("POST", "/v1/account/forget") => {
            post(|State(ctx): St<B>, ApiJson(req): ApiJson<AccountForgetRequest>| async move {
                ok(ctx.backend.forget_account(req).await)
            })
        }
        ("GET", "/v1/conversations/{id}/erasures") => get(
            |State(ctx): St<B>, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<ErasuresQuery>| async move {
                ok(ctx.backend.erasures(id, q).await)
            },
        ),
        ("POST", "/v1/conversations/{id}/verify") => post(verify::<B>),
        ("POST", "/v1/handle") => post(claim_handle::<B>),
        ("GET", "/v1/devices") => get(devices::<B>),
        ("POST", "/v1/devices") => post(add_device::<B>),
        ("DELETE", "/v1/devices/{device}") => delete(revoke_device::<B>),
        ("POST", "/v1/devices/link") => post(link_device::<B>),
        ("GET", "/v1/devices/link/{link}") => get(link_status::<B>),
        ("GET", "/v1/ledger/status") => get(ledger_status::<B>),
        ("GET", "/v1/ledger/accounts/{who}") => get(account::<B>),
        ("GET", "/v1/balance") => {
            get(|State(ctx): St<B>| async move { crate::api_ledger::get_balance(&*ctx.backend).await })
        }
        ("POST", "/v1/payments") => {
            post(|State(ctx): St<B>, ApiJson(req): ApiJson<crate::api_ledger::PaymentRequest>| async move {
                crate::api_ledger::post_payment(&*ctx.backend, req).await
            })
        }
        ("GET", "/v1/requests") => get(requests::<B>),
        ("POST", "/v1/requests/{id}/accept") => post(accept_request::<B>),
        ("POST", "/v1/requests/{id}/decline") => post(decline_request::<B>),
        ("GET", "/v1/stream") => get(stream::<B>),
        ("POST", "/v1/shutdown") => post(shutdown::<B>),
        ("POST", "/v1/web/login") => post(web_login::<B>),
        ("POST", "/v1/session") => post(session_login::<B>),
        ("DELETE", "/v1/session") => delete(session_logout::<B>),
        _ => return None,
    })
}

// ---- errors ---------------------------------------------------------------------------------

/// An error answer: a status and an [`ErrorBody`].
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    body: ErrorBody,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Failure { status, body: ErrorBody { error: error.into(), code: code_for(status).to_string() } }
    }
}

/// The stable `code` of an error status.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::MISDIRECTED_REQUEST => "misdirected",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let status = match e {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!("API error ({}): {e}", e.code());
        }
        Failure { status, body: ErrorBody { error: e.to_string(), code: e.code().to_string() } }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Maps an axum rejection to an [`ErrorBody`]: 413 stays 413, everything else (415 for a
/// missing content type, 422 for a JSON shape error) becomes 400.
fn rejection(status: StatusCode, text: String) -> Failure {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Failure::new(status, format!("request body too large: at most {BODY_LIMIT} bytes are accepted"))
    } else if status.is_server_error() {
        Failure::new(status, text)
    } else {
        Failure::new(StatusCode::BAD_REQUEST, text)
    }
}

type ApiResult<T> = Result<T, Failure>;

// ---- extractors with JSON errors ------------------------------------------------------------

/// `Json<T>` whose rejections are [`ErrorBody`] answers.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> Failure {
    let text = match &e {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with `Content-Type: application/json`".to_string()
        }
        _ => e.body_text(),
    };
    rejection(e.status(), text)
}

/// `Path<T>` whose rejections are [`ErrorBody`] answers.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(path_rejection(e)),
        }
    }
}

fn path_rejection(e: PathRejection) -> Failure {
    rejection(e.status(), e.body_text())
}

/// `Query<T>` whose rejections are [`ErrorBody`] answers.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> Failure {
    rejection(e.status(), e.body_text())
}

// ---- middleware -----------------------------------------------------------------------------

async fn auth<B: Backend>(State(ctx): St<B>, mut req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        if let Some(session) = web::session_cookie(req.headers()) {
            if !ctx.sessions.valid(&session) {
                return Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "your browser session has ended (logged out, expired or the node restarted): run \
                     `cairn web` for a new login link, or log in with your passphrase",
                )
                .into_response();
            }
            let websocket = req
                .headers()
                .get(UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if let Err(why) = web::same_origin(req.method(), req.headers(), websocket) {
                return Failure::new(StatusCode::FORBIDDEN, why).into_response();
            }
            req.extensions_mut().insert(AuthKind::Session);
            return next.run(req).await;
        }
        return Failure::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer TOKEN` header (the token is in the node's api.token file) \
             or a web session (run `cairn web` for a login link)",
        )
        .into_response();
    };
    let given = value.as_bytes().strip_prefix(b"Bearer ").unwrap_or_default();
    // Hash both sides: blake3::Hash equality is constant-time and hides the token's length.
    if !ctx.token_set || blake3::hash(given) != ctx.token {
        return Failure::new(StatusCode::UNAUTHORIZED, "invalid API token (see the node's api.token file)")
            .into_response();
    }
    req.extensions_mut().insert(AuthKind::Bearer);
    next.run(req).await
}

async fn catch_panic(req: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(_) => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the node hit a bug while handling this request (see its log)",
        )
        .into_response(),
    }
}

/// Unknown routes: the web client's embedded files for `GET`/`HEAD`, else a JSON 404.
async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    if (method == Method::GET || method == Method::HEAD)
        && let Some(resp) = web::asset(uri.path())
    {
        return resp;
    }
    Failure::new(StatusCode::NOT_FOUND, "no such API route (see /openapi.json)").into_response()
}

async fn method_not_allowed() -> Failure {
    Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route (see /openapi.json)")
}

// ---- handlers -------------------------------------------------------------------------------

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics<B: Backend>(State(ctx): St<B>) -> Response {
    ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], ctx.backend.metrics()).into_response()
}

async fn status<B: Backend>(State(ctx): St<B>) -> ApiResult<Response> {
    ok(ctx.backend.status().await)
}

async fn conversations<B: Backend>(State(ctx): St<B>) -> ApiResult<Response> {
    ok(ctx.backend.conversations().await)
}

async fn create_conversation<B: Backend>(
    State(ctx): St<B>,
    ApiJson(req): ApiJson<MembersRequest>,
) -> ApiResult<Response> {
    ok(ctx.backend.create_conversation(req.members).await)
}

async fn conversation<B: Backend>(State(ctx): St<B>, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    ok(ctx.backend.conversation(id).await)
}

async fn add_members<B: Backend>(
    State(ctx): St<B>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<MembersRequest>,
) -> ApiResult<Response> {
    ok(ctx.backend.add_members(id, req.members).await)
}

async fn remove_member<B: Backend>(
    State(ctx): St<B>,
    ApiPath((id, member)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    ok(ctx.backend.remove_member(id, member).await)
}

async fn erase<B: Backend>(
    State(ctx): St<B>,
    ApiPath((id, message)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<crate::model::SendResult>> {
    Ok(axum::Json(ctx.backend.erase(id, message).await?))
}

async fn forget<B: Backend>(State(ctx): St<B>, ApiPath(id): ApiPath<String>) -> ApiResult<StatusCode> {
    ctx.backend.forget(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leave<B: Backend>(State(ctx): St<B>, ApiPath(id): ApiPath<String>) -> ApiResult<StatusCode> {
    ctx.backend.leave(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Header naming a send so that a retry does not send twice (see [`crate::idempotency`]).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest a send waits for delivery (`wait_ms`).
const SEND_WAIT_MAX_MS: u64 = 60_000;

async fn send<B: Backend>(
    State(ctx): St<B>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<SendQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SendRequest>,
) -> ApiResult<Response> {
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("the Idempotency-Key header must be visible ASCII".into()))?
                .to_owned(),
        ),
    };
    // Subscribe before sending: a fast acknowledgement must not slip past.
    let mut events = ctx.backend.subscribe();
    let mut r = ctx.backend.send(id, req.text, key).await?;
    let wait = query.wait_ms.unwrap_or(0).min(SEND_WAIT_MAX_MS);
    if wait > 0 && r.delivery.state != DeliveryState::Delivered {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait);
        let mut stop = ctx.stop.subscribe();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(StreamEvent::Delivery { id, delivery, .. }) if id == r.id => {
                        r.delivery = delivery;
                        if r.delivery.state == DeliveryState::Delivered {
                            break;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                () = stopped(&mut stop) => break,
            }
        }
    }
    Ok(axum::Json(r).into_response())
}

async fn messages<B: Backend>(
    State(ctx): St<B>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<TailQuery>,
) -> ApiResult<Response> {
    let mut stop = ctx.stop.subscribe();
    tokio::select! {
        r = ctx.backend.messages(id, query) => ok(r),
        _ = stopped(&mut stop) => {
            Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"))
        }
    }
}

async fn verify<B: Backend>(State(ctx): St<B>, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    ok(ctx.backend.verify(id).await)
}

async fn claim_handle<B: Backend>(
    State(ctx): St<B>,
    ApiJson(req): ApiJson<HandleRequest>,
) -> ApiResult<Response> {
    ok(ctx.backend.claim_handle(req.name).await)
}

async fn requests<B: Backend>(State(ctx): St<B>) -> ApiResult<Response> {
    ok(ctx.backend.requests().await)
}

async fn accept_request<B: Backend>(State(ctx): St<B>, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    ok(ctx.backend.accept_request(id).await)
}

async fn decline_request<B: Backend>(
    State(ctx): St<B>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    ctx.backend.decline_request(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn devices<B: Backend>(State(ctx): St<B>) -> ApiResult<Response> {
    ok(ctx.backend.devices().await)
}

async fn add_device<B: Backend>(
    State(ctx): St<B>,
    ApiJson(req): ApiJson<DeviceAddRequest>,
) -> ApiResult<Response> {
    ok(ctx.backend.add_device(req).await)
}

async fn revoke_device<B: Backend>(
    State(ctx): St<B>,
    ApiPath(device): ApiPath<String>,
) -> ApiResult<Response> {
    ok(ctx.backend.revoke_device(device).await)
}

async fn link_device<B: Backend>(
    State(ctx): St<B>,
    ApiQuery(q): ApiQuery<crate::link_host::LinkQuery>,
) -> ApiResult<Response> {
    ok(ctx.backend.link_device(q).await)
}

async fn link_status<B: Backend>(State(ctx): St<B>, ApiPath(link): ApiPath<String>) -> ApiResult<Response> {
    ok(ctx.backend.link_status(link).await)
}

async fn ledger_status<B: Backend>(State(ctx): St<B>) -> ApiResult<Response> {
    ok(ctx.backend.ledger_status().await)
}

async fn account<B: Backend>(State(ctx): St<B>, ApiPath(who): ApiPath<String>) -> ApiResult<Response> {
    ok(ctx.backend.account(who).await)
}

async fn shutdown<B: Backend>(State(ctx): St<B>) -> Response {
    tracing::info!("shutdown requested through the API");
    ctx.backend.shutdown();
    (StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "status": "shutting_down" }))).into_response()
}

async fn stream<B: Backend>(
    State(ctx): St<B>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| rejection(e.status(), e.body_text()))?;
    // Subscribe before upgrading so no event between the answer and the first read is lost.
    let events = ctx.backend.subscribe();
    let stop = ctx.stop.subscribe();
    Ok(ws
        .max_message_size(BODY_LIMIT)
        .on_failed_upgrade(|e| tracing::debug!("stream upgrade failed: {e}"))
        .on_upgrade(move |socket| pump(socket, events, stop)))
}

/// Forwards events to one WebSocket client until it leaves, the node stops, or the event
/// source closes. A client too slow to keep up skips the events it missed (logged).
async fn pump(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<crate::model::StreamEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let text = match serde_json::to_string(&ev) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!("stream event not encodable, skipped: {e}");
                            continue;
                        }
                    };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("stream client too slow: {n} events skipped");
                    let lagged = StreamEvent::Lagged { skipped: n };
                    let Ok(text) = serde_json::to_string(&lagged) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {} // pings are answered by the socket; other input is ignored
            },
            _ = stopped(&mut stop) => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Completes when the server stops (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in a caller's `select!`.
    let _ = stop.wait_for(|s| *s).await;
}

fn ok<T: serde::Serialize>(r: Result<T, ApiError>) -> ApiResult<Response> {
    match r {
        Ok(v) => Ok(axum::Json(v).into_response()),
        Err(e) => Err(e.into()),
    }
}

// ---- web client sessions --------------------------------------------------------------------

/// `POST /v1/web/login`: a one-time login code for a browser (API token holders only).
async fn web_login<B: Backend>(
    State(ctx): St<B>,
    kind: Option<axum::Extension<AuthKind>>,
) -> ApiResult<Response> {
    if kind.map(|k| k.0) != Some(AuthKind::Bearer) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "login links are made with the API token: run `cairn web` on the node's machine",
        ));
    }
    let code = ctx.sessions.new_code().map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let path = format!("/#login={code}");
    Ok(axum::Json(web::WebLogin { code, path, expires_in_s: web::CODE_TTL.as_secs() }).into_response())
}

/// `POST /v1/session` body: a login code from `cairn web`, or the keystore passphrase.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    code: Option<String>,
    passphrase: Option<String>,
}

/// `POST /v1/session`: exchanges a login code or the passphrase for a session cookie.
async fn session_login<B: Backend>(
    State(ctx): St<B>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SessionRequest>,
) -> ApiResult<Response> {
    web::same_origin(&Method::POST, &headers, false)
        .map_err(|why| Failure::new(StatusCode::FORBIDDEN, why))?;
    let ok = match (req.code, req.passphrase) {
        (Some(code), None) => {
            if ctx.sessions.take_code(code.trim()) {
                true
            } else {
                return Err(Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "this login link was already used or has expired (links last 2 minutes): run \
                     `cairn web` again, or log in with your passphrase",
                ));
            }
        }
        (None, Some(pass)) => {
            let Some(check) = ctx.web.passphrase.clone() else {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "this node does not accept passphrase logins: run `cairn web` for a login link",
                ));
            };
            if pass.is_empty() || pass.len() > 1024 {
                false
            } else {
                let _gate = ctx.sessions.passphrase_gate.lock().await;
                let good = tokio::task::spawn_blocking(move || check(pass.as_bytes())).await.unwrap_or(false);
                if !good {
                    // Slow down guessing beyond the KDF's own cost.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                good
            }
        }
        _ => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "send either {\"code\": \"…\"} from a `cairn web` link or {\"passphrase\": \"…\"}",
            ));
        }
    };
    if !ok {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "wrong passphrase: type the passphrase of this node's keystore (the one `cairn init` asked \
             for), or run `cairn web` for a login link",
        ));
    }
    let id = ctx.sessions.new_session().map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let mut resp = axum::Json(serde_json::json!({ "status": "ok" })).into_response();
    if let Some(cookie) = web::set_cookie(&headers, Some(&id)) {
        resp.headers_mut().insert(SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// `DELETE /v1/session`: ends this browser's session and clears its cookie.
async fn session_logout<B: Backend>(State(ctx): St<B>, headers: HeaderMap) -> ApiResult<Response> {
    web::same_origin(&Method::DELETE, &headers, false)
        .map_err(|why| Failure::new(StatusCode::FORBIDDEN, why))?;
    if let Some(id) = web::session_cookie(&headers) {
        ctx.sessions.end(&id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = web::set_cookie(&headers, None) {
        resp.headers_mut().insert(SET_COOKIE, cookie);
    }
    Ok(resp)
}
