//! The web client's server side: embedded assets, the `Host` check against DNS rebinding,
//! one-time login codes and passphrase logins for a session cookie, and the cross-site checks
//! on cookie-authenticated requests and the stream.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use cairn_node::api;
use cairn_node::web::{self, WebOptions};

use crate::TOKEN;
use crate::fake::Fake;
use crate::harness::bearer;

struct Srv {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    _fake: Arc<Fake>,
}

fn start(passphrase: Option<&'static [u8]>) -> Srv {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::new());
    let mut stop = fake.stop.subscribe();
    let opts = WebOptions {
        passphrase: passphrase.map(|right| -> web::PassphraseCheck { Arc::new(move |p: &[u8]| p == right) }),
        session_file: None,
    };
    rt.spawn(api::serve_with(listener, fake.clone(), TOKEN.to_string(), opts, async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Srv { rt, addr, _fake: fake }
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn raw(s: &Srv, method: &str, path: &str, headers: &[(&str, String)], body: Option<&str>) -> Answer {
    raw_at(s.addr, method, path, headers, body)
}

/// One raw HTTP/1.1 request to `addr` (so `Host` and `Origin` can be anything).
pub(crate) fn raw_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&str>,
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {}\r\n", addr));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

fn csrf() -> (&'static str, String) {
    ("X-Cairn-Csrf", "1".into())
}

/// A session cookie `name=value` from a login answer.
fn cookie_of(a: &Answer) -> String {
    let set = a.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie in {}", a.head));
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().unwrap().to_string()
}

fn login_code(s: &Srv) -> String {
    let a = raw(s, "POST", "/v1/web/login", &[("Authorization", bearer())], None);
    assert_eq!(a.status, 200, "{}", a.body);
    let v: web::WebLogin = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v.path, format!("/#login={}", v.code));
    v.code
}

#[test]
fn the_web_client_is_served_from_the_binary() {
    let s = start(None);
    assert!(web::ASSETS.iter().any(|(p, _)| *p == "/index.html"), "web/dist is embedded");
    let a = raw(&s, "GET", "/", &[], None);
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(a.header("content-security-policy").as_deref(), Some(web::CSP));
    assert_eq!(a.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(a.body.contains("<div id=\"app\">"));
    for (path, bytes) in web::ASSETS {
        let a = raw(&s, "GET", path, &[], None);
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.body.len(), bytes.len(), "{path}");
    }
    // Not an asset: the API's JSON 404, for GET and for other methods on asset paths.
    let a = raw(&s, "GET", "/nope.js", &[], None);
    assert_eq!((a.status, a.body.contains("not_found")), (404, true));
    let a = raw(&s, "POST", "/", &[], None);
    assert_eq!(a.status, 404);
}

#[test]
fn only_loopback_host_names_are_answered() {
    let s = start(None);
    let port = s.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".into(),
    ] {
        let a = raw(&s, "GET", "/health", &[("Host", host.clone())], None);
        assert_eq!(a.status, 200, "{host}");
    }
    // A DNS-rebinding page sends its own name; so do look-alikes.
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.:{port}"),
        format!("127.0.0.1:{port}x"),
        "[::2]:80".into(),
        String::new(),
    ] {
        for path in ["/", "/health", "/v1/status"] {
            let a = raw(&s, "GET", path, &[("Host", host.clone()), ("Authorization", bearer())], None);
            assert_eq!(a.status, 421, "{host} {path}: {}", a.body);
            assert!(a.body.contains("misdirected"), "{}", a.body);
        }
    }
}

#[test]
fn a_login_code_works_once_and_the_cookie_is_guarded_against_cross_site_use() {
    let s = start(None);
    let code = login_code(&s);
    // The exchange itself needs the custom header (no cross-site form can send it).
    let body = format!(r#"{{"code":"{code}"}}"#);
    let a = raw(&s, "POST", "/v1/session", &[], Some(&body));
    assert_eq!(a.status, 403, "{}", a.body);
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(&body));
    assert_eq!(a.status, 200, "{}", a.body);
    let cookie = cookie_of(&a);
    assert!(cookie.starts_with(&format!("cairn_session_{}=", s.addr.port())), "{cookie}");
    // Spent.
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(&body));
    assert_eq!(a.status, 401);
    assert!(a.body.contains("cairn web"), "says what to do next: {}", a.body);
    // A made-up code never works.
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(&format!(r#"{{"code":"{}"}}"#, "0".repeat(64))));
    assert_eq!(a.status, 401);

    let c = ("Cookie", cookie.clone());
    assert_eq!(raw(&s, "GET", "/v1/status", std::slice::from_ref(&c), None).status, 200);
    let members = r#"{"members":["@bob"]}"#;
    // State changes with the cookie: custom header needed, foreign origins refused.
    let a = raw(&s, "POST", "/v1/conversations", std::slice::from_ref(&c), Some(members));
    assert_eq!(a.status, 403, "{}", a.body);
    let evil = ("Origin", "http://evil.example".to_string());
    let a = raw(&s, "POST", "/v1/conversations", &[c.clone(), csrf(), evil.clone()], Some(members));
    assert_eq!(a.status, 403);
    let other_port = ("Origin", "http://127.0.0.1:1".to_string());
    let a = raw(&s, "POST", "/v1/conversations", &[c.clone(), csrf(), other_port], Some(members));
    assert_eq!(a.status, 403, "another local port is another origin");
    let own = ("Origin", format!("http://{}", s.addr));
    let a = raw(&s, "POST", "/v1/conversations", &[c.clone(), csrf(), own], Some(members));
    assert_eq!(a.status, 200, "{}", a.body);
    // A cookie cannot mint login codes: only the token can.
    assert_eq!(raw(&s, "POST", "/v1/web/login", &[c.clone(), csrf()], None).status, 403);
    // Logging out ends the session.
    let a = raw(&s, "DELETE", "/v1/session", &[c.clone(), csrf()], None);
    assert_eq!(a.status, 204);
    assert!(a.header("set-cookie").unwrap().contains("Max-Age=0"));
    let a = raw(&s, "GET", "/v1/status", &[c], None);
    assert_eq!(a.status, 401);
    assert!(a.body.contains("cairn web"), "{}", a.body);
    // A cookie for another port's node is not this node's.
    let a =
        raw(&s, "GET", "/v1/status", &[("Cookie", cookie.replace(&s.addr.port().to_string(), "1"))], None);
    assert_eq!(a.status, 401);
}

#[test]
fn the_passphrase_logs_in_and_a_wrong_one_is_refused() {
    let s = start(Some(b"right horse"));
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(r#"{"passphrase":"wrong"}"#));
    assert_eq!(a.status, 401);
    assert!(a.body.contains("wrong passphrase"), "{}", a.body);
    assert!(a.header("set-cookie").is_none());
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(r#"{"passphrase":"right horse"}"#));
    assert_eq!(a.status, 200, "{}", a.body);
    let cookie = cookie_of(&a);
    assert_eq!(raw(&s, "GET", "/v1/conversations", &[("Cookie", cookie)], None).status, 200);
    // Neither or both: a clear 400.
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(r#"{}"#));
    assert_eq!(a.status, 400);
    // Without a checker (a node that did not enable it) the passphrase is not accepted.
    let s = start(None);
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(r#"{"passphrase":"right horse"}"#));
    assert_eq!(a.status, 400);
    assert!(a.body.contains("cairn web"), "{}", a.body);
}

#[test]
fn the_stream_takes_a_cookie_only_from_its_own_origin() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let s = start(None);
    let code = login_code(&s);
    let a = raw(&s, "POST", "/v1/session", &[csrf()], Some(&format!(r#"{{"code":"{code}"}}"#)));
    let cookie = cookie_of(&a);
    let url = format!("ws://{}/v1/stream", s.addr);
    s.rt.block_on(async {
        for origin in [None, Some("http://evil.example".to_string())] {
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut().insert("Cookie", cookie.parse().unwrap());
            if let Some(o) = &origin {
                req.headers_mut().insert("Origin", o.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(req).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status(), 403, "{origin:?}")
                }
                other => panic!("expected 403 for {origin:?}, got {other:?}"),
            }
        }
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("Cookie", cookie.parse().unwrap());
        req.headers_mut().insert("Origin", format!("http://{}", s.addr).parse().unwrap());
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
            .await
            .unwrap()
            .unwrap();
        drop(ws);
    });
}

#[test]
fn login_codes_and_sessions_are_bounded() {
    let s = start(None);
    let codes: Vec<String> = (0..web::MAX_CODES + 3).map(|_| login_code(&s)).collect();
    // The oldest codes were dropped for new ones; the newest still work.
    let try_code =
        |c: &str| raw(&s, "POST", "/v1/session", &[csrf()], Some(&format!(r#"{{"code":"{c}"}}"#))).status;
    assert_eq!(try_code(&codes[0]), 401);
    assert_eq!(try_code(codes.last().unwrap()), 200);
}
