//! The HTTP layer against an in-memory fake [`Backend`]: authentication, error answers, body
//! limit, the WebSocket stream, garbage input, and the blocking client round trip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_node::api::{self, ROUTES};
use cairn_node::backend::{ApiError, ApiResult, Backend};
use cairn_node::client::{self, Client, ClientError};
use cairn_node::model::{
    AccountView, ConversationView, DeliveryState, DeliveryView, DeviceAddRequest, DeviceView, ErrorBody,
    LedgerStatusView, MemberView, MessageView, RunFile, SendResult, StatusView, StreamEvent, TailQuery,
    TxView, ValidatorView, VerifyView,
};
use futures::StreamExt as _;
use tokio::sync::{Notify, broadcast, watch};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// ---- the fake node --------------------------------------------------------------------------

#[derive(Default)]
struct State {
    convs: Vec<(ConversationView, Vec<MessageView>)>,
    devices: Vec<DeviceView>,
}

struct Fake {
    state: Mutex<State>,
    events: broadcast::Sender<StreamEvent>,
    arrived: Notify,
    stop: watch::Sender<bool>,
    shutdowns: AtomicUsize,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            state: Mutex::new(State {
                convs: Vec::new(),
                devices: vec![DeviceView { device: "cairndev1me".into(), this_device: true }],
            }),
            events: broadcast::channel(64).0,
            arrived: Notify::new(),
            stop: watch::channel(false).0,
            shutdowns: AtomicUsize::new(0),
        }
    }

    fn members(names: &[String]) -> ApiResult<Vec<MemberView>> {
        names
            .iter()
            .map(|m| {
                if m.starts_with("cairn1") || m.starts_with('@') {
                    Ok(MemberView {
                        account: m.clone(),
                        handle: m.strip_prefix('@').map(str::to_string),
                        devices: vec![format!("cairndev1{}", m.len())],
                    })
                } else {
                    Err(ApiError::BadRequest(format!("{m:?} is neither an account id nor an @handle")))
                }
            })
            .collect()
    }

    fn with_conv<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut (ConversationView, Vec<MessageView>)) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut st = self.state.lock().unwrap();
        match st.convs.iter_mut().find(|(c, _)| c.id == id || (id.len() >= 8 && c.id.starts_with(id))) {
            Some(c) => f(c),
            None => Err(ApiError::NotFound(format!("no conversation {id}"))),
        }
    }
}

fn delivery() -> DeliveryView {
    DeliveryView { state: DeliveryState::Stored, stored_on: 2, delivered_to: 0, members: 1 }
}

impl Backend for Fake {
    async fn status(&self) -> ApiResult<StatusView> {
        let conversations = self.state.lock().unwrap().convs.len();
        Ok(StatusView {
            account: "cairn1me".into(),
            device: "cairndev1me".into(),
            fingerprint: "12345 67890".into(),
            handle: None,
            peer_id: "12D3Koo".into(),
            p2p: vec!["/ip4/127.0.0.1/tcp/1".into()],
            peers: 3,
            store_peers: 1,
            ledger_height: Some(7),
            mailbox_backlog: 0,
            pending_sends: 0,
            conversations,
            roles: vec!["user".into()],
        })
    }

    async fn create_conversation(&self, members: Vec<String>) -> ApiResult<ConversationView> {
        let members = Fake::members(&members)?;
        let mut st = self.state.lock().unwrap();
        let id = format!("{:064x}", st.convs.len() + 0xabcdef01);
        let view =
            ConversationView { topic: format!("t{id}"), id, epoch: 1, active: true, members, messages: 0 };
        st.convs.push((view.clone(), Vec::new()));
        Ok(view)
    }

    async fn conversations(&self) -> ApiResult<Vec<ConversationView>> {
        Ok(self.state.lock().unwrap().convs.iter().map(|(c, _)| c.clone()).collect())
    }

    async fn conversation(&self, id: String) -> ApiResult<ConversationView> {
        self.with_conv(&id, |(c, _)| Ok(c.clone()))
    }

    async fn add_members(&self, id: String, members: Vec<String>) -> ApiResult<ConversationView> {
        let more = Fake::members(&members)?;
        self.with_conv(&id, |(c, _)| {
            c.members.extend(more);
            c.epoch += 1;
            Ok(c.clone())
        })
    }

    async fn remove_member(&self, id: String, member: String) -> ApiResult<ConversationView> {
        self.with_conv(&id, |(c, _)| {
            let before = c.members.len();
            c.members.retain(|m| m.account != member);
            if c.members.len() == before {
                return Err(ApiError::NotFound(format!("{member} is not a member")));
            }
            c.epoch += 1;
            Ok(c.clone())
        })
    }

    async fn leave(&self, id: String) -> ApiResult<()> {
        self.with_conv(&id, |(c, _)| {
            if !c.active {
                return Err(ApiError::Conflict("already left".into()));
            }
            c.active = false;
            Ok(())
        })
    }

    async fn send(&self, id: String, text: String) -> ApiResult<SendResult> {
        let msg = self.with_conv(&id, |(c, msgs)| {
            let seq = msgs.len() as u64 + 1;
            let m = MessageView {
                seq,
                id: format!("{seq:064x}"),
                conversation: c.id.clone(),
                sender: "cairn1me".into(),
                device: "cairndev1me".into(),
                handle: None,
                timestamp_ms: 1,
                text,
                parents: msgs.last().map(|p| vec![p.id.clone()]).unwrap_or_default(),
                after_gap: false,
            };
            msgs.push(m.clone());
            c.messages = seq;
            Ok(m)
        })?;
        self.arrived.notify_waiters();
        let _ = self.events.send(StreamEvent::Message(msg.clone()));
        // The other member's receipt arrives a little later.
        let events = self.events.clone();
        let (id, conversation) = (msg.id.clone(), msg.conversation.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let delivery = DeliveryView { state: DeliveryState::Delivered, delivered_to: 1, ..delivery() };
            let _ = events.send(StreamEvent::Delivery { id, conversation, delivery });
        });
        Ok(SendResult { id: msg.id, delivery: delivery() })
    }

    async fn messages(&self, id: String, query: TailQuery) -> ApiResult<Vec<MessageView>> {
        let deadline = Instant::now() + Duration::from_millis(query.wait_ms.unwrap_or(0).min(3_000));
        loop {
            let arrived = self.arrived.notified();
            let page = self.with_conv(&id, |(_, msgs)| {
                Ok(msgs
                    .iter()
                    .filter(|m| m.seq > query.after.unwrap_or(0))
                    .take(query.limit.unwrap_or(100).min(100))
                    .cloned()
                    .collect::<Vec<_>>())
            })?;
            let now = Instant::now();
            if !page.is_empty() || now >= deadline {
                return Ok(page);
            }
            let _ = tokio::time::timeout(deadline - now, arrived).await;
        }
    }

    async fn verify(&self, id: String) -> ApiResult<VerifyView> {
        self.with_conv(&id, |(_, msgs)| {
            Ok(VerifyView {
                intact: true,
                envelopes: msgs.len(),
                signatures_verified: msgs.len(),
                anchors: 0,
                erased: 0,
                first_problem: None,
                problems: 0,
            })
        })
    }

    async fn claim_handle(&self, name: String) -> ApiResult<TxView> {
        if name.trim_start_matches('@') == "taken" {
            return Err(ApiError::Conflict("handle @taken belongs to another account".into()));
        }
        Ok(TxView { tx: "aa".into(), height: 8 })
    }

    async fn devices(&self) -> ApiResult<Vec<DeviceView>> {
        Ok(self.state.lock().unwrap().devices.clone())
    }

    async fn add_device(&self, req: DeviceAddRequest) -> ApiResult<DeviceView> {
        if req.passphrase.is_empty() {
            return Err(ApiError::BadRequest("empty passphrase".into()));
        }
        let d = DeviceView { device: format!("cairndev1{}", req.home.len()), this_device: false };
        self.state.lock().unwrap().devices.push(d.clone());
        Ok(d)
    }

    async fn revoke_device(&self, device: String) -> ApiResult<TxView> {
        let mut st = self.state.lock().unwrap();
        let before = st.devices.len();
        st.devices.retain(|d| d.device != device);
        if st.devices.len() == before {
            return Err(ApiError::NotFound(format!("no device {device}")));
        }
        Ok(TxView { tx: "bb".into(), height: 9 })
    }

    async fn ledger_status(&self) -> ApiResult<LedgerStatusView> {
        Ok(LedgerStatusView {
            chain: "cc".into(),
            validators: vec![ValidatorView {
                rpc: "127.0.0.1:1".into(),
                height: Some(9),
                state_root: Some("dd".into()),
                error: None,
            }],
        })
    }

    async fn account(&self, who: String) -> ApiResult<AccountView> {
        if who == "@nobody" {
            return Err(ApiError::NotFound("no account @nobody".into()));
        }
        if who == "@down" {
            return Err(ApiError::Unavailable("no validator answered".into()));
        }
        Ok(AccountView { account: who, handle: None, devices: vec![], height: 9, proof_verified: true })
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.events.subscribe()
    }

    fn metrics(&self) -> String {
        let m = cairn_node::metrics::Metrics::new();
        m.set_peers(3);
        m.render()
    }

    fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        self.stop.send_replace(true);
    }
}

// ---- a served router ------------------------------------------------------------------------

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    fake: Arc<Fake>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start() -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::new());
    let mut stop = fake.stop.subscribe();
    let task = rt.spawn(api::serve(listener, fake.clone(), TOKEN.to_string(), async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Server { rt, addr, fake, task }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// Sends one request; returns status and body text.
fn request(
    s: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String) {
    let mut req = ureq::http::Request::builder().method(method).uri(s.url(path));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some((ct, _)) = body {
        req = req.header("Content-Type", ct);
    }
    let req = req.body(body.map(|(_, b)| b.to_vec()).unwrap_or_default()).unwrap();
    let mut resp = agent().run(req).unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn error_body(text: &str) -> ErrorBody {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"))
}

/// A concrete path for a route template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000")
        .replace("{member}", "cairn1x")
        .replace("{device}", "cairndev1x")
        .replace("{who}", "cairn1x")
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn every_protected_route_needs_the_token() {
    let s = start();
    let wrong = format!("Bearer {}", "f".repeat(64));
    for &(method, path) in ROUTES {
        let p = concrete(path);
        if api::PUBLIC_ROUTES.contains(&path) {
            let (status, _) = request(&s, method, &p, None, None);
            assert_eq!(status, 200, "{method} {path} is public");
            continue;
        }
        for auth in [None, Some(wrong.as_str()), Some(TOKEN), Some("Bearer "), Some("Basic Zm9vOmJhcg==")] {
            let body = (method == "POST").then_some((
                "application/json",
                br#"{"members":[],"text":"x","name":"x","home":"x","passphrase":"x"}"#.as_slice(),
            ));
            let (status, text) = request(&s, method, &p, auth, body);
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {text}");
            let e = error_body(&text);
            assert_eq!(e.code, "unauthorized");
            assert!(e.error.contains("token"), "{}", e.error);
        }
    }
    assert_eq!(s.fake.shutdowns.load(Ordering::SeqCst), 0, "unauthenticated shutdown refused");
}

#[test]
fn every_listed_route_is_served() {
    let s = start();
    for &(method, path) in ROUTES {
        if path == "/v1/shutdown" {
            continue; // checked by the client round trip
        }
        let body = (method == "POST").then_some((
            "application/json",
            br#"{"members":["cairn1a"],"text":"x","name":"x","home":"x","passphrase":"x"}"#.as_slice(),
        ));
        let (status, text) = request(&s, method, &concrete(path), Some(&bearer()), body);
        assert_ne!(status, 405, "{method} {path}: {text}");
        if status == 404 {
            assert!(!error_body(&text).error.contains("no such API route"), "{method} {path} is not routed");
        }
    }
    // The stream route exists but needs a WebSocket upgrade.
    let (status, text) = request(&s, "GET", "/v1/stream", Some(&bearer()), None);
    assert_eq!(status, 400, "{text}");
    assert_eq!(error_body(&text).code, "bad_request");
}

#[test]
fn public_routes_answer() {
    let s = start();
    let (status, text) = request(&s, "GET", "/health", None, None);
    assert_eq!((status, text.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, text) = request(&s, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let (status, text) = request(&s, "GET", "/metrics", Some(&bearer()), None);
    assert_eq!(status, 200);
    assert!(text.contains("cairn_peers 3"), "{text}");
}

#[test]
fn malformed_requests_get_400_with_a_message() {
    let s = start();
    let a = bearer();
    let auth = Some(a.as_str());
    let json = "application/json";
    let (status, text) = request(&s, "POST", "/v1/conversations", auth, Some((json, b"{\"members\": [")));
    assert_eq!(status, 400, "{text}");
    let e = error_body(&text);
    assert_eq!(e.code, "bad_request");
    assert!(e.error.to_lowercase().contains("json"), "{}", e.error);

    let conv =
        Client::new(&s.url(""), TOKEN, Path::new("/x")).create_conversation(&["cairn1a".into()]).unwrap();
    let path = format!("/v1/conversations/{}/messages", conv.id);
    let (status, text) = request(&s, "POST", &path, auth, Some((json, b"{\"txt\":\"hi\"}")));
    assert_eq!(status, 400, "{text}");
    assert!(error_body(&text).error.contains("missing field `text`"), "{text}");

    let (status, text) = request(&s, "POST", &path, auth, Some((json, b"{\"text\":5}")));
    assert_eq!(status, 400, "{text}");
    assert!(error_body(&text).error.contains("invalid type"), "{text}");

    let (status, text) = request(&s, "POST", &path, auth, Some(("text/plain", b"{\"text\":\"hi\"}")));
    assert_eq!(status, 400, "{text}");
    assert!(error_body(&text).error.contains("Content-Type: application/json"), "{text}");

    let (status, text) = request(&s, "POST", &path, auth, None);
    assert_eq!(status, 400, "no body at all: {text}");

    let (status, text) = request(&s, "GET", &format!("{path}?after=abc"), auth, None);
    assert_eq!(status, 400, "{text}");
    assert!(error_body(&text).error.contains("after"), "{text}");

    let (status, text) = request(&s, "GET", &format!("{path}?limit=-1"), auth, None);
    assert_eq!(status, 400, "{text}");

    let (status, text) = request(&s, "GET", "/v1/conversations/%FF%FE", auth, None);
    assert_eq!(status, 400, "invalid UTF-8 in the path: {text}");
    assert_eq!(error_body(&text).code, "bad_request");
}

#[test]
fn send_answers_at_once_or_after_delivery_when_asked_to_wait() {
    let s = start();
    let c = Client::new(&s.url(""), TOKEN, Path::new("/x"));
    let conv = c.create_conversation(&["cairn1a".into()]).unwrap();
    let at_once = c.send(&conv.id, "one").unwrap();
    assert_eq!(at_once.delivery.state, DeliveryState::Stored);
    // Waiting less than the receipt takes: the latest state reached, after about the wait.
    let t = Instant::now();
    let short = c.send_wait(&conv.id, "two", 50).unwrap();
    assert_eq!(short.delivery.state, DeliveryState::Stored);
    assert!(t.elapsed() >= Duration::from_millis(50), "{:?}", t.elapsed());
    // Waiting long enough: answered as soon as this message (not the earlier ones) is delivered.
    let t = Instant::now();
    let long = c.send_wait(&conv.id, "three", 20_000).unwrap();
    assert_eq!(long.delivery.state, DeliveryState::Delivered);
    assert_eq!((long.delivery.delivered_to, long.delivery.members), (1, 1));
    assert!(t.elapsed() < Duration::from_secs(10), "answered at delivery, not at the end of the wait");
    let a = bearer();
    let path = format!("/v1/conversations/{}/messages?wait_ms=soon", conv.id);
    let (status, text) =
        request(&s, "POST", &path, Some(&a), Some(("application/json", b"{\"text\":\"x\"}")));
    assert_eq!(status, 400, "{text}");
}

#[test]
fn backend_errors_map_to_statuses() {
    let s = start();
    let a = bearer();
    let auth = Some(a.as_str());
    let (status, text) = request(&s, "GET", "/v1/conversations/deadbeefdead", auth, None);
    assert_eq!(status, 404, "{text}");
    assert_eq!(
        error_body(&text),
        ErrorBody { error: "no conversation deadbeefdead".into(), code: "not_found".into() }
    );
    let (status, text) =
        request(&s, "POST", "/v1/handle", auth, Some(("application/json", br#"{"name":"@taken"}"#)));
    assert_eq!((status, error_body(&text).code.as_str()), (409, "conflict"));
    let (status, text) = request(&s, "GET", "/v1/ledger/accounts/@down", auth, None);
    assert_eq!((status, error_body(&text).code.as_str()), (503, "unavailable"));
    let (status, text) =
        request(&s, "POST", "/v1/conversations", auth, Some(("application/json", br#"{"members":["bob"]}"#)));
    assert_eq!((status, error_body(&text).code.as_str()), (400, "bad_request"));
}

#[test]
fn oversized_bodies_get_413() {
    let s = start();
    let mut body = b"{\"members\":[\"".to_vec();
    body.extend(std::iter::repeat_n(b'a', api::BODY_LIMIT + 10));
    body.extend(b"\"]}");
    let (status, text) =
        request(&s, "POST", "/v1/conversations", Some(&bearer()), Some(("application/json", &body)));
    assert_eq!(status, 413, "{text}");
    let e = error_body(&text);
    assert_eq!(e.code, "payload_too_large");
    assert!(e.error.contains("65536"), "{}", e.error);
    // Just under the limit is accepted (and refused by the backend for its content).
    let mut body = b"{\"members\":[\"".to_vec();
    body.extend(std::iter::repeat_n(b'a', api::BODY_LIMIT - 100));
    body.extend(b"\"]}");
    let (status, _) =
        request(&s, "POST", "/v1/conversations", Some(&bearer()), Some(("application/json", &body)));
    assert_eq!(status, 400);
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let s = start();
    for (method, path) in
        [("GET", "/nope"), ("GET", "/v1"), ("POST", "/v2/status"), ("GET", "/v1/conversations/a/b/c")]
    {
        for auth in [None, Some(bearer())] {
            let (status, text) = request(&s, method, path, auth.as_deref(), None);
            assert_eq!(status, 404, "{method} {path}: {text}");
            assert_eq!(error_body(&text).code, "not_found");
        }
    }
    let (status, text) = request(&s, "PUT", "/health", None, None);
    assert_eq!(status, 405, "{text}");
    assert_eq!(error_body(&text).code, "method_not_allowed");
    let (status, text) = request(&s, "PATCH", "/v1/status", Some(&bearer()), None);
    assert_eq!(status, 405, "{text}");
    assert_eq!(error_body(&text).code, "method_not_allowed");
}

#[test]
fn a_send_appears_on_the_stream() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let s = start();
    let client = Client::new(&s.url(""), TOKEN, Path::new("/x"));
    let conv = client.create_conversation(&["@bob".into()]).unwrap();
    let ws_url = format!("ws://{}/v1/stream", s.addr);
    s.rt.block_on(async {
        // Without the token the upgrade is refused.
        let refused = tokio_tungstenite::connect_async(ws_url.as_str()).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Authorization", bearer().parse().unwrap());
        let (mut ws, _) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
                .await
                .unwrap()
                .unwrap();
        let (id, conv_id, addr) = (conv.id.clone(), conv.id.clone(), s.addr);
        let sent = tokio::task::spawn_blocking(move || {
            Client::new(&format!("http://{addr}"), TOKEN, Path::new("/x")).send(&id, "hello stream").unwrap()
        })
        .await
        .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break t,
                    Some(Ok(_)) => continue,
                    other => panic!("stream ended: {other:?}"),
                }
            }
        })
        .await
        .expect("no stream event within 10 s");
        let ev: StreamEvent = serde_json::from_str(frame.as_str()).unwrap();
        match ev {
            StreamEvent::Message(m) => {
                assert_eq!(m.id, sent.id);
                assert_eq!(m.text, "hello stream");
                assert_eq!(m.conversation, conv_id);
            }
            other => panic!("unexpected event {other:?}"),
        }
    });
}

#[test]
fn a_lagging_stream_client_skips_and_keeps_receiving() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let s = start();
    let client = Client::new(&s.url(""), TOKEN, Path::new("/x"));
    let conv = client.create_conversation(&["@bob".into()]).unwrap();
    let fake = s.fake.clone();
    let ws_url = format!("ws://{}/v1/stream", s.addr);
    s.rt.block_on(async {
        let mut req = ws_url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Authorization", bearer().parse().unwrap());
        let (mut ws, _) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
                .await
                .unwrap()
                .unwrap();
        // Far more events than the channel holds (64), published at once: the server-side
        // receiver lags; it must skip and go on, not close the stream.
        for i in 0..1000 {
            fake.send(conv.id.clone(), format!("m{i}")).await.unwrap();
        }
        let mut skipped = 0;
        let last = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).unwrap() {
                        StreamEvent::Message(m) if m.text == "m999" => break m.seq,
                        StreamEvent::Lagged { skipped: n } => skipped += n,
                        _ => {}
                    },
                    Some(Ok(_)) => continue,
                    other => panic!("stream ended: {other:?}"),
                }
            }
        })
        .await
        .expect("the last event arrives");
        assert_eq!(last, 1000);
        assert!(skipped > 0, "the client is told how many events it missed, so it can re-read");
    });
}

/// xorshift64*: a tiny seeded generator, so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

#[test]
fn garbage_never_kills_the_server() {
    let s = start();
    let conv = Client::new(&s.url(""), TOKEN, Path::new("/x")).create_conversation(&["@bob".into()]).unwrap();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let methods =
        ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "G\0T", "é"];
    let bearer = bearer();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let raw: Vec<u8> = match rng.below(4) {
            0 => {
                let n = rng.below(2048);
                rng.bytes(n)
            }
            _ => {
                let method = rng.pick(&methods);
                let mut path = concrete(ROUTES[rng.below(ROUTES.len())].1)
                    .replace("00000000", if rng.below(2) == 0 { &conv.id } else { "zz%zz" });
                match rng.below(5) {
                    0 => {
                        path.push_str(&String::from_utf8_lossy(&rng.bytes(8)).replace(['\r', '\n', ' '], ""))
                    }
                    1 => path.push_str("?after=-1&limit=99999999999999999999999&wait_ms=50"),
                    2 => path = format!("/{}", hex(&rng.bytes(6))),
                    _ => {}
                }
                let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                if rng.below(3) > 0 {
                    head.push_str(&format!("Authorization: {bearer}\r\n"));
                }
                let body: Vec<u8> = match rng.below(5) {
                    0 => {
                        let n = rng.below(4096);
                        rng.bytes(n)
                    }
                    1 => br#"{"members":["@a"],"text":"t","name":"n","home":"/tmp/x","passphrase":"p"}"#
                        .to_vec(),
                    2 => br#"{"members":[1,2,{}]"#.to_vec(),
                    3 => vec![b'['; 3000],
                    _ => Vec::new(),
                };
                if rng.below(2) == 0 {
                    head.push_str("Content-Type: application/json\r\n");
                }
                match rng.below(6) {
                    0 => head.push_str(&format!("Content-Length: {}\r\n", rng.next())),
                    1 => head.push_str("Transfer-Encoding: chunked\r\n"),
                    2 => head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
                    _ => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
                }
                if rng.below(8) == 0 {
                    head.push_str(&format!("X-Junk: {}\r\n", hex(&rng.bytes(200))));
                }
                head.push_str("\r\n");
                let mut raw = head.into_bytes();
                raw.extend(body);
                raw
            }
        };
        let mut conn = TcpStream::connect(s.addr).unwrap_or_else(|e| panic!("request {i}: connect: {e}"));
        conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = conn.write_all(&raw);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut answer = [0u8; 64];
        let n = conn.read(&mut answer).unwrap_or(0);
        let line = String::from_utf8_lossy(&answer[..n]);
        let status = line.split(' ').nth(1).unwrap_or("none").to_string();
        *statuses.entry(status).or_default() += 1;
    }
    let (status, text) = request(&s, "GET", "/health", None, None);
    assert_eq!((status, text.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(!s.task.is_finished(), "the server is still serving");
    assert!(statuses.len() > 3, "the garbage reached several kinds of answer: {statuses:?}");
    // And a real client still works.
    let st = Client::new(&s.url(""), TOKEN, Path::new("/x")).status().unwrap();
    assert_eq!(st.peers, 3);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn client_round_trip_through_the_run_file() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display().to_string();
    let no_node =
        format!("no node running for --home {h}: start one with `cairn up --home {h}` (or `cairn dev`)");
    assert_eq!(Client::for_home(home.path()).unwrap_err().to_string(), no_node, "no run file");

    let s = start();
    let token = client::load_or_create_token(home.path()).unwrap();
    assert_ne!(token, TOKEN, "a fresh token is random");
    // This server uses TOKEN; write it as the home's token file for the client.
    std::fs::remove_file(home.path().join(client::TOKEN_FILE)).unwrap();
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(home.path().join(client::TOKEN_FILE))
            .unwrap();
        f.write_all(TOKEN.as_bytes()).unwrap();
    }
    let run = RunFile { api: s.url(""), p2p: vec![], peer_id: "12D3Koo".into(), pid: std::process::id() };
    client::write_run_file(home.path(), &run).unwrap();
    let c = Client::for_home(home.path()).unwrap();

    let st = c.status().unwrap();
    assert_eq!((st.account.as_str(), st.ledger_height), ("cairn1me", Some(7)));
    let conv = c.create_conversation(&["cairn1bob".into(), "@carol".into()]).unwrap();
    assert_eq!(conv.members.len(), 2);
    assert_eq!(c.conversations().unwrap(), vec![conv.clone()]);
    assert_eq!(c.conversation(&conv.id[..8]).unwrap().id, conv.id, "unique prefix");
    let more = c.add_members(&conv.id, &["@dave".into()]).unwrap();
    assert_eq!((more.members.len(), more.epoch), (3, 2));
    let less = c.remove_member(&conv.id, "@dave").unwrap();
    assert_eq!(less.members.len(), 2);
    let sent = c.send(&conv.id, "hi / there?&").unwrap();
    assert_eq!(sent.delivery.stored_on, 2);
    let msgs = c.messages(&conv.id, &TailQuery { after: None, limit: None, wait_ms: None }).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text, "hi / there?&");
    // Long poll: nothing after seq 1 yet; a send from another thread releases it.
    let (c2, id2) = (c.clone(), conv.id.clone());
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.send(&id2, "second").unwrap()
    });
    let t0 = Instant::now();
    let polled =
        c.messages(&conv.id, &TailQuery { after: Some(1), limit: Some(10), wait_ms: Some(2_500) }).unwrap();
    sender.join().unwrap();
    assert_eq!(polled.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["second"]);
    assert!(t0.elapsed() < Duration::from_millis(2_400), "released by the send, not the timeout");
    let v = c.verify(&conv.id).unwrap();
    assert!(v.intact);
    assert_eq!(v.envelopes, 2);
    assert_eq!(c.claim_handle("alice").unwrap().height, 8);
    let d = c.add_device(&DeviceAddRequest { home: "/tmp/other".into(), passphrase: "pw".into() }).unwrap();
    assert_eq!(c.devices().unwrap().len(), 2);
    assert_eq!(c.revoke_device(&d.device).unwrap().height, 9);
    assert_eq!(c.ledger_status().unwrap().validators[0].height, Some(9));
    assert!(c.account("@alice").unwrap().proof_verified);
    c.leave(&conv.id).unwrap();
    assert!(!c.conversation(&conv.id).unwrap().active);

    // Server errors carry the server's message.
    match c.leave(&conv.id).unwrap_err() {
        ClientError::Api { status, code, message } => {
            assert_eq!((status, code.as_str(), message.as_str()), (409, "conflict", "already left"));
        }
        e => panic!("unexpected {e:?}"),
    }
    let e = c.account("@nobody").unwrap_err();
    assert_eq!(e.to_string(), "no account @nobody");
    let e = c.claim_handle("taken").unwrap_err();
    assert_eq!(e.to_string(), "handle @taken belongs to another account");

    // Shutdown: accepted, and the server (whose shutdown future the fake completes) stops.
    c.shutdown().unwrap();
    assert_eq!(s.fake.shutdowns.load(Ordering::SeqCst), 1);
    let task = s.task;
    let served = s.rt.block_on(async move { tokio::time::timeout(Duration::from_secs(10), task).await });
    served.expect("server stopped within 10 s").unwrap().unwrap();
    // Now the port refuses: the client says no node runs.
    assert_eq!(c.status().unwrap_err().to_string(), no_node);

    client::remove_run_file(home.path()).unwrap();
    assert_eq!(Client::for_home(home.path()).unwrap_err().to_string(), no_node);
}

#[test]
fn wrong_token_from_the_client_is_reported() {
    let s = start();
    let c = Client::new(&s.url(""), "nope", Path::new("/x"));
    match c.status().unwrap_err() {
        ClientError::Api { status: 401, code, .. } => assert_eq!(code, "unauthorized"),
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(routed.len(), ROUTES.len(), "no duplicates in ROUTES");
    assert_eq!(documented, routed);
}

#[test]
fn openapi_references_resolve_and_schemas_match_the_model() {
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).unwrap();
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
    }
    // The documented required fields are exactly the model's fields (serialize a value of
    // each model type and compare key sets).
    let status = StatusView {
        account: String::new(),
        device: String::new(),
        fingerprint: String::new(),
        handle: None,
        peer_id: String::new(),
        p2p: vec![],
        peers: 0,
        store_peers: 0,
        ledger_height: None,
        mailbox_backlog: 0,
        pending_sends: 0,
        conversations: 0,
        roles: vec![],
    };
    let samples: Vec<(&str, serde_json::Value)> = vec![
        ("StatusView", serde_json::to_value(&status).unwrap()),
        ("DeliveryView", serde_json::to_value(delivery()).unwrap()),
        ("SendResult", serde_json::to_value(SendResult { id: String::new(), delivery: delivery() }).unwrap()),
        (
            "VerifyView",
            serde_json::to_value(VerifyView {
                intact: true,
                envelopes: 0,
                signatures_verified: 0,
                anchors: 0,
                erased: 0,
                first_problem: None,
                problems: 0,
            })
            .unwrap(),
        ),
        (
            "AccountView",
            serde_json::to_value(AccountView {
                account: String::new(),
                handle: None,
                devices: vec![],
                height: 0,
                proof_verified: false,
            })
            .unwrap(),
        ),
        (
            "MessageView",
            serde_json::to_value(MessageView {
                seq: 0,
                id: String::new(),
                conversation: String::new(),
                sender: String::new(),
                device: String::new(),
                handle: None,
                timestamp_ms: 0,
                text: String::new(),
                parents: vec![],
                after_gap: false,
            })
            .unwrap(),
        ),
        ("ErrorBody", serde_json::to_value(ErrorBody { error: String::new(), code: String::new() }).unwrap()),
    ];
    for (name, value) in samples {
        let obj = value.as_object().unwrap();
        let schema = &doc["components"]["schemas"][name];
        let mut required: Vec<String> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let mut props: Vec<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
        let mut fields: Vec<String> = obj.keys().cloned().collect();
        required.sort();
        props.sort();
        fields.sort();
        assert_eq!(required, fields, "{name} required");
        assert_eq!(props, fields, "{name} properties");
    }
}
