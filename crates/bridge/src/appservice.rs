//! The appservice API served to the homeserver (axum): `PUT /_matrix/app/v1/transactions/{txnId}`,
//! `GET …/users/{userId}`, `GET …/rooms/{alias}`, `POST …/ping`. Every request must carry
//! `Authorization: Bearer <hs_token>` (401 `M_UNAUTHORIZED` when missing, 403 `M_FORBIDDEN`
//! when wrong). A transaction is validated, committed durably to the inbound queue together
//! with its id (a replay queues nothing) and acknowledged; the relaying happens afterwards.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ruma::api::IncomingRequestExt as _;
use ruma::api::appservice::event::push_events::v1 as push_events;
use ruma::{RoomAliasId, UserId};

use crate::db::{Db, TxnOutcome};
use crate::mapping::{Names, parse_event};

/// Largest transaction body accepted, in bytes.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Most events accepted in one transaction.
pub const MAX_EVENTS: usize = 1_000;

/// Shared state of the handlers.
pub struct AsState {
    hs_token: blake3::Hash,
    db: Arc<Db>,
    names: Names,
    wake: std::sync::mpsc::SyncSender<()>,
}

impl std::fmt::Debug for AsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsState").field("names", &self.names).finish_non_exhaustive()
    }
}

impl AsState {
    /// State checking `hs_token`, queueing into `db`, waking the relay through `wake`.
    pub fn new(hs_token: &str, db: Arc<Db>, names: Names, wake: std::sync::mpsc::SyncSender<()>) -> AsState {
        AsState { hs_token: blake3::hash(hs_token.as_bytes()), db, names, wake }
    }
}

type St = State<Arc<AsState>>;

fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "errcode": errcode, "error": error }))).into_response()
}

/// Checks the homeserver token: `None` when it is right, else the error answer.
pub fn check_token(headers: &HeaderMap, expected: &blake3::Hash) -> Option<Response> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Some(matrix_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "missing homeserver token"));
    };
    let given = value.as_bytes().strip_prefix(b"Bearer ").unwrap_or_default();
    // Hashes compare in constant time and hide the token's length.
    if blake3::hash(given) != *expected {
        return Some(matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "wrong homeserver token"));
    }
    None
}

/// The appservice router.
pub fn router(state: Arc<AsState>) -> Router {
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
        .route("/_matrix/app/v1/users/{user_id}", get(user))
        .route("/_matrix/app/v1/rooms/{alias}", get(room))
        .route("/_matrix/app/v1/ping", post(ping))
        .fallback(unknown)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn unknown() -> Response {
    matrix_error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unknown appservice endpoint")
}

async fn transaction(State(st): St, Path(txn_id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = check_token(&headers, &st.hs_token) {
        return refused;
    }
    let mut req = ruma::exports::http::Request::new(body.as_ref());
    *req.method_mut() = Method::PUT;
    let parsed = match push_events::Request::try_from_http_request(req, &[txn_id.as_str()]) {
        Ok(p) => p,
        Err(e) => {
            return matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", &format!("not a transaction: {e}"));
        }
    };
    if parsed.events.len() > MAX_EVENTS {
        return matrix_error(StatusCode::BAD_REQUEST, "M_TOO_LARGE", "too many events in one transaction");
    }
    let mut events = Vec::with_capacity(parsed.events.len());
    for raw in &parsed.events {
        match parse_event(raw.json().get()) {
            Ok(_) => events.push(raw.json().get().to_string()),
            Err(e) => tracing::warn!("transaction {txn_id}: event skipped: {e}"),
        }
    }
    let db = st.db.clone();
    let txn = parsed.txn_id.to_string();
    let outcome = tokio::task::spawn_blocking(move || db.accept_txn(&txn, &events)).await;
    match outcome {
        Ok(Ok(TxnOutcome::Accepted(n))) => {
            tracing::debug!("transaction {txn_id}: {n} events queued");
            let _ = st.wake.try_send(());
            axum::Json(serde_json::json!({})).into_response()
        }
        Ok(Ok(TxnOutcome::Duplicate)) => {
            tracing::info!("transaction {txn_id} replayed: ignored");
            axum::Json(serde_json::json!({})).into_response()
        }
        Ok(Ok(TxnOutcome::Full)) => matrix_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_LIMIT_EXCEEDED",
            "the bridge's inbound queue is full; retry later",
        ),
        Ok(Err(e)) => matrix_error(StatusCode::BAD_REQUEST, "M_UNKNOWN", &e.to_string()),
        Err(e) => matrix_error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", &e.to_string()),
    }
}

async fn user(State(st): St, Path(user_id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = check_token(&headers, &st.hs_token) {
        return refused;
    }
    let Ok(user) = UserId::parse(user_id.as_str()) else {
        return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "not a user id");
    };
    // The bot, and puppets the bridge has assigned (it registers them itself before use).
    if user.as_str() == st.names.bot() {
        return axum::Json(serde_json::json!({})).into_response();
    }
    let db = st.db.clone();
    let key = format!("puppetuser|{user}");
    match tokio::task::spawn_blocking(move || db.mark(&key)).await {
        Ok(Ok(Some(_))) => axum::Json(serde_json::json!({})).into_response(),
        _ => matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such bridged user"),
    }
}

async fn room(State(st): St, Path(alias): Path<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = check_token(&headers, &st.hs_token) {
        return refused;
    }
    let Ok(alias) = RoomAliasId::parse(alias.as_str()) else {
        return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "not a room alias");
    };
    let Some(prefix) = st.names.alias_conv_prefix(alias.as_str()) else {
        return matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "not a Cairn portal alias");
    };
    let db = st.db.clone();
    match tokio::task::spawn_blocking(move || db.portal_by_prefix(&prefix)).await {
        // Portals are created with their alias, so the homeserver knows it already.
        Ok(Ok(Some(_))) => axum::Json(serde_json::json!({})).into_response(),
        _ => matrix_error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "no bridged Cairn conversation has this alias (the bridge account must be a member first)",
        ),
    }
}

async fn ping(State(st): St, headers: HeaderMap) -> Response {
    if let Some(refused) = check_token(&headers, &st.hs_token) {
        return refused;
    }
    axum::Json(serde_json::json!({})).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower_like::call;

    /// Runs one request through the router (no socket).
    mod tower_like {
        use axum::Router;
        use axum::body::Body;
        use axum::http::Request;

        pub(super) async fn call(app: &Router, req: Request<Body>) -> (u16, serde_json::Value) {
            use tower::ServiceExt as _;
            let resp = app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
            (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        }
    }

    fn setup() -> (Router, Arc<Db>, tempfile::TempDir, std::sync::mpsc::Receiver<()>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("b.redb")).unwrap());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let st =
            Arc::new(AsState::new("hs-secret-token-0123456789abcdef", db.clone(), Names::new("hs.test"), tx));
        (router(st), db, dir, rx)
    }

    fn txn(id: &str, token: Option<&str>, body: serde_json::Value) -> Request<Body> {
        let mut b = Request::builder().method("PUT").uri(format!("/_matrix/app/v1/transactions/{id}"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
    }

    fn event(body: &str) -> serde_json::Value {
        serde_json::json!({"type": "m.room.message", "room_id": "!r:hs.test", "sender": "@bob:hs.test",
            "event_id": format!("$e{body}"), "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body}})
    }

    #[test]
    fn tokens_are_checked_401_missing_403_wrong() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (app, db, _dir, _rx) = setup();
            let body = serde_json::json!({"events": [event("a")]});
            let (s, j) = call(&app, txn("1", None, body.clone())).await;
            assert_eq!((s, j["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")));
            let (s, j) = call(&app, txn("1", Some("wrong"), body.clone())).await;
            assert_eq!((s, j["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
            assert_eq!(db.queue_lens().unwrap(), (0, 0), "refused transactions queue nothing");
            for path in ["/_matrix/app/v1/users/@x:hs.test", "/_matrix/app/v1/rooms/%23x:hs.test"] {
                let req = Request::builder().uri(path).body(Body::empty()).unwrap();
                assert_eq!(call(&app, req).await.0, 401);
                let req = Request::builder()
                    .uri(path)
                    .header("authorization", "Bearer nope")
                    .body(Body::empty())
                    .unwrap();
                assert_eq!(call(&app, req).await.0, 403);
            }
            let req =
                Request::builder().method("POST").uri("/_matrix/app/v1/ping").body(Body::from("{}")).unwrap();
            assert_eq!(call(&app, req).await.0, 401);
        });
    }

    #[test]
    fn transactions_are_queued_once_and_garbage_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (app, db, _dir, rx) = setup();
            let tok = Some("hs-secret-token-0123456789abcdef");
            let body = serde_json::json!({"events": [event("a"), {"type": "junk"}, event("b")]});
            assert_eq!(call(&app, txn("t1", tok, body.clone())).await.0, 200);
            assert!(rx.try_recv().is_ok(), "the relay is woken");
            assert_eq!(call(&app, txn("t1", tok, body)).await.0, 200, "a replay is acknowledged");
            assert_eq!(db.queue_lens().unwrap().0, 2, "queued once, malformed event skipped");
            let (s, _) = call(&app, txn("t2", tok, serde_json::json!({"events": "nope"}))).await;
            assert_eq!(s, 400);
            let raw = Request::builder()
                .method("PUT")
                .uri("/_matrix/app/v1/transactions/t3")
                .header("authorization", "Bearer hs-secret-token-0123456789abcdef")
                .body(Body::from(vec![0xffu8; 100]))
                .unwrap();
            assert_eq!(call(&app, raw).await.0, 400);
            let req = Request::builder()
                .method("POST")
                .uri("/_matrix/app/v1/ping")
                .header("authorization", "Bearer hs-secret-token-0123456789abcdef")
                .body(Body::from("{}"))
                .unwrap();
            assert_eq!(call(&app, req).await.0, 200);
            let req = Request::builder()
                .uri("/_matrix/app/v1/rooms/%23cairn_0123456789abcdef:hs.test")
                .header("authorization", "Bearer hs-secret-token-0123456789abcdef")
                .body(Body::empty())
                .unwrap();
            assert_eq!(call(&app, req).await.0, 404);
            let user = |id: &str| {
                Request::builder()
                    .uri(format!("/_matrix/app/v1/users/{id}"))
                    .header("authorization", "Bearer hs-secret-token-0123456789abcdef")
                    .body(Body::empty())
                    .unwrap()
            };
            assert_eq!(call(&app, user("@cairn_alice:hs.test")).await.0, 404);
            db.set_mark("puppetuser|@cairn_alice:hs.test", "cairn1a").unwrap();
            assert_eq!(call(&app, user("@cairn_alice:hs.test")).await.0, 200);
            assert_eq!(call(&app, user("@cairn_bot:hs.test")).await.0, 200);
            assert_eq!(call(&app, user("not-a-user")).await.0, 400);
            db.set_portal("0123456789abcdef00", "!r:hs.test").unwrap();
            let req = Request::builder()
                .uri("/_matrix/app/v1/rooms/%23cairn_0123456789abcdef:hs.test")
                .header("authorization", "Bearer hs-secret-token-0123456789abcdef")
                .body(Body::empty())
                .unwrap();
            assert_eq!(call(&app, req).await.0, 200);
        });
    }
}
