//! The relay loops against an in-process fake homeserver and fake node API (real HTTP on
//! 127.0.0.1): 429 answers are waited out with the same transaction id and order is kept; a
//! Matrix event whose relay was interrupted is not sent to Cairn twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use cairn_node::client::Client;
use cairn_node::model::{ConversationView, DeliveryView, MessageView, SendRequest, SendResult};

use super::*;

const BRIDGE: &str = "cairn1bridge";

#[derive(Default)]
struct Fake {
    /// Homeserver: `(txn id, body, answered 200)` per attempt.
    sends: Vec<(String, String, bool)>,
    /// Homeserver: 429 answers still to give.
    limit_left: u32,
    /// Node: the conversation's messages.
    messages: Vec<MessageView>,
    /// Node: POSTed messages.
    posts: u32,
}

type Shared = Arc<Mutex<Fake>>;

async fn hs_send(
    State(f): State<Shared>,
    Path((_room, _kind, txn)): Path<(String, String, String)>,
    body: axum::Json<serde_json::Value>,
) -> axum::response::Response {
    let mut f = f.lock().unwrap();
    let text = body["body"].as_str().unwrap_or_default().to_string();
    if f.limit_left > 0 {
        f.limit_left -= 1;
        f.sends.push((txn, text, false));
        let e =
            serde_json::json!({"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 150});
        return (StatusCode::TOO_MANY_REQUESTS, axum::Json(e)).into_response();
    }
    f.sends.push((txn, text, true));
    axum::Json(serde_json::json!({"event_id": "$ok"})).into_response()
}

fn msg(seq: u64, sender: &str, text: &str) -> MessageView {
    MessageView {
        seq,
        id: format!("{seq:064x}"),
        conversation: "c".into(),
        sender: sender.into(),
        device: "d".into(),
        handle: None,
        timestamp_ms: 0,
        text: text.into(),
        parents: vec![],
        after_gap: false,
    }
}

async fn node_conv(State(f): State<Shared>) -> axum::Json<ConversationView> {
    let n = f.lock().unwrap().messages.len() as u64;
    axum::Json(ConversationView {
        id: "c".into(),
        topic: "t".into(),
        epoch: 1,
        active: true,
        members: vec![],
        messages: n,
    })
}

async fn node_messages(
    State(f): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<cairn_node::model::TailQuery>,
) -> axum::Json<Vec<MessageView>> {
    let after = q.after.unwrap_or(0);
    axum::Json(f.lock().unwrap().messages.iter().filter(|m| m.seq > after).cloned().collect())
}

async fn node_send(
    State(f): State<Shared>,
    axum::Json(req): axum::Json<SendRequest>,
) -> axum::Json<SendResult> {
    let mut f = f.lock().unwrap();
    f.posts += 1;
    let seq = f.messages.len() as u64 + 1;
    f.messages.push(msg(seq, BRIDGE, &req.text));
    axum::Json(SendResult { id: format!("{seq:064x}"), delivery: DeliveryView::default() })
}

struct Harness {
    ctx: Arc<Ctx>,
    fake: Shared,
    out_wake: Receiver<()>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}", put(hs_send))
        .route("/v1/conversations/{id}", get(node_conv))
        .route("/v1/conversations/{id}/messages", get(node_messages).post(node_send))
        .with_state(fake.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let (out_wake_tx, out_wake) = std::sync::mpsc::sync_channel(1);
    let ctx = Arc::new(Ctx {
        db: Arc::new(Db::open(&dir.path().join("b.redb")).unwrap()),
        matrix: Matrix::new(&base, "as-token", "cairn"),
        names: Names::new("hs.test"),
        home: dir.path().to_path_buf(),
        node: Mutex::new(Some(Client::new(&base, "node-token", dir.path()))),
        account: BRIDGE.into(),
        stop: Arc::new(AtomicBool::new(false)),
        out_wake: out_wake_tx,
    });
    Harness { ctx, fake, out_wake, _rt: rt, _dir: dir }
}

#[test]
fn rate_limits_are_waited_out_in_order_with_the_same_transaction() {
    let h = harness();
    h.ctx.db.set_portal("c", "!r:hs.test").unwrap();
    let jobs: Vec<OutJob> =
        (0..3).map(|i| OutJob::Notice { conv: "c".into(), text: format!("n{i}") }).collect();
    assert!(h.ctx.db.queue_out(None, &jobs, None).unwrap());
    h.fake.lock().unwrap().limit_left = 2;
    let start = Instant::now();
    let ctx = h.ctx.clone();
    let wake = h.out_wake;
    let t = std::thread::spawn(move || outbound_loop(&ctx, &wake));
    while h.ctx.db.queue_lens().unwrap().1 > 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "the queue never drained");
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    h.ctx.stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let sends = h.fake.lock().unwrap().sends.clone();
    let ok: Vec<&str> = sends.iter().filter(|s| s.2).map(|s| s.1.as_str()).collect();
    assert_eq!(ok, ["n0", "n1", "n2"], "delivered in order, once each");
    assert_eq!(sends.len(), 5, "two 429s, then three successes: {sends:?}");
    assert!(sends[..3].iter().all(|s| s.0 == sends[0].0), "a retry reuses its transaction id");
    assert!(elapsed >= Duration::from_millis(300), "each 429's retry_after_ms was waited: {elapsed:?}");
}

#[test]
fn an_interrupted_relay_to_cairn_is_not_sent_twice() {
    let h = harness();
    // The bridge died after its send reached the node: the mark is there, so is the copy.
    h.fake.lock().unwrap().messages = vec![msg(1, "cairn1alice", "hi"), msg(2, BRIDGE, "hello")];
    let mark = serde_json::to_string(&Inflight { key: 7, after: 1 }).unwrap();
    h.ctx.db.set_mark(INFLIGHT, &mark).unwrap();
    send_to_cairn(&h.ctx, 7, "c", "hello", Some("$h")).unwrap();
    assert_eq!(h.fake.lock().unwrap().posts, 0, "found its own copy: not sent again");
    assert_eq!(
        h.ctx.db.related("m:$h").unwrap(),
        Some(format!("{:064x}", 2)),
        "and remembers it for a redaction"
    );
    // A new event is sent once; if the bridge dies before dropping it from the queue, the
    // retry finds the copy.
    send_to_cairn(&h.ctx, 8, "c", "world", None).unwrap();
    assert_eq!(h.fake.lock().unwrap().posts, 1);
    send_to_cairn(&h.ctx, 8, "c", "world", None).unwrap();
    assert_eq!(h.fake.lock().unwrap().posts, 1, "a retry after a crash does not send twice");
    // The same text from an earlier event (before the mark's cursor) does not count.
    h.ctx.db.set_mark(INFLIGHT, &serde_json::to_string(&Inflight { key: 9, after: 3 }).unwrap()).unwrap();
    send_to_cairn(&h.ctx, 9, "c", "world", None).unwrap();
    assert_eq!(h.fake.lock().unwrap().posts, 2, "only copies after the mark's cursor count");
}
