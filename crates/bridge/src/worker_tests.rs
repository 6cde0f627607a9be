//! The relay loops against an in-process fake homeserver and fake node API (real HTTP on
//! 127.0.0.1): 429 answers are waited out with the same transaction id and order is kept; a
//! Matrix event's relay names the event, so a retry is not sent to Cairn twice; erasures made
//! while the bridge was away are queued once, in order.
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
use cairn_node::model::{ConversationView, DeliveryView, ErasureView, MessageView, SendRequest, SendResult};

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
    /// Node: the `Idempotency-Key` of each POST.
    keys: Vec<Option<String>>,
    /// Node: the message each key sent.
    by_key: std::collections::HashMap<String, String>,
    /// Node: the conversation's erasure log.
    erasures: Vec<ErasureView>,
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
        verdict: None,
        labels: Vec::new(),
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
    headers: axum::http::HeaderMap,
    axum::Json(req): axum::Json<SendRequest>,
) -> axum::Json<SendResult> {
    let mut f = f.lock().unwrap();
    let key = headers.get("idempotency-key").map(|v| v.to_str().unwrap().to_string());
    f.keys.push(key.clone());
    // Like the node: a key seen before answers with its message.
    if let Some(id) = key.as_ref().and_then(|k| f.by_key.get(k)) {
        return axum::Json(SendResult { id: id.clone(), delivery: DeliveryView::default() });
    }
    let seq = f.messages.len() as u64 + 1;
    f.messages.push(msg(seq, BRIDGE, &req.text));
    let id = format!("{seq:064x}");
    if let Some(k) = key {
        f.by_key.insert(k, id.clone());
    }
    axum::Json(SendResult { id, delivery: DeliveryView::default() })
}

async fn node_erasures(
    State(f): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<cairn_node::model::ErasuresQuery>,
) -> axum::Json<Vec<ErasureView>> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000);
    axum::Json(f.lock().unwrap().erasures.iter().filter(|e| e.n > after).take(limit).cloned().collect())
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
        .route("/v1/conversations/{id}/erasures", get(node_erasures))
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
fn a_relay_to_cairn_names_its_event_so_a_retry_is_not_sent_twice() {
    let h = harness();
    // The bridge died after its send reached the node, before the queue entry was dropped:
    // the retry carries the same idempotency key, which the node answers with the first copy.
    send_to_cairn(&h.ctx, 7, "c", "hello", "$h", true).unwrap();
    send_to_cairn(&h.ctx, 7, "c", "hello", "$h", true).unwrap();
    // Another event with the same text is another message.
    send_to_cairn(&h.ctx, 8, "c", "hello", "$i", false).unwrap();
    let f = h.fake.lock().unwrap();
    assert_eq!(f.keys.len(), 3, "every send names its event: {:?}", f.keys);
    assert_eq!(f.keys[0], f.keys[1], "a retry reuses the key");
    assert_ne!(f.keys[0], f.keys[2], "two events, two keys, even with the same text");
    assert_eq!(f.keys[0].as_deref(), Some(idempotency_key("$h").as_str()));
    drop(f);
    assert_eq!(
        h.ctx.db.related("m:$h").unwrap(),
        Some(format!("{:064x}", 1)),
        "the copy is remembered for a redaction, the same one after the retry"
    );
}

#[test]
fn erasures_made_while_the_bridge_was_away_are_queued_once_in_order() {
    let h = harness();
    let erased = |n: u64| ErasureView { n, id: format!("{n:064x}") };
    h.fake.lock().unwrap().erasures = vec![erased(1), erased(2)];
    assert!(!poll_erasures(&h.ctx, "c").unwrap(), "less than a batch: nothing more waits");
    let redactions = |h: &Harness| {
        let mut out = Vec::new();
        while let Some((key, job)) = h.ctx.db.next_out().unwrap() {
            h.ctx.db.done_out(key).unwrap();
            if let Some(OutJob::Redact { envelope, .. }) = job {
                out.push(envelope);
            }
        }
        out
    };
    assert_eq!(redactions(&h), [format!("{:064x}", 1), format!("{:064x}", 2)]);
    // The cursor moved with the queue: polling again queues nothing; a later erasure once.
    assert!(!poll_erasures(&h.ctx, "c").unwrap());
    assert!(redactions(&h).is_empty());
    h.fake.lock().unwrap().erasures.push(erased(3));
    poll_erasures(&h.ctx, "c").unwrap();
    assert_eq!(redactions(&h), [format!("{:064x}", 3)]);
}
