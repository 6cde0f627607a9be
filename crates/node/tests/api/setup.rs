//! A node without an account ("setup mode"): the web client creates it with the one-time
//! setup code; other routes say setup is required; the usual request protections hold.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_node::api_setup::{self, SetupOptions};

type Calls = Arc<Mutex<Vec<(Vec<u8>, Option<String>)>>>;

struct Srv {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    code: String,
    calls: Calls,
    done: tokio::task::JoinHandle<std::io::Result<bool>>,
}

fn start(session_file: Option<std::path::PathBuf>) -> Srv {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let code = api_setup::new_code().unwrap();
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let opts = SetupOptions {
        create: Arc::new(move |p: &[u8], h: Option<&str>| {
            c.lock().unwrap().push((p.to_vec(), h.map(str::to_string)));
            Ok("cairn1new".to_string())
        }),
        session_file,
    };
    let code2 = code.clone();
    let done =
        rt.spawn(async move { api_setup::serve(listener, &code2, opts, std::future::pending()).await });
    Srv { rt, addr, code, calls, done }
}

fn raw(
    s: &Srv,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&str>,
) -> (u16, String, String) {
    let a = crate::web::raw_at(s.addr, method, path, headers, body);
    (a.status, a.head, a.body)
}

fn own(s: &Srv) -> Vec<(&'static str, String)> {
    vec![("Origin", format!("http://{}", s.addr)), ("X-Cairn-Csrf", "1".into())]
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_page_creates_the_account_once_with_the_setup_code() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("web-sessions");
    let s = start(Some(sessions.clone()));
    // The page and the "setup required" answer of every other API route.
    let (status, head, body) = raw(&s, "GET", "/", &[], None);
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("<div id=\"app\""), "index.html: {body}");
    let (status, _, body) = raw(&s, "GET", "/v1/status", &[], None);
    assert_eq!((status, code_of(&body).as_str()), (503, "setup_required"), "{body}");
    // DNS rebinding: a foreign Host is refused.
    let (status, _, _) = raw(&s, "GET", "/", &[("Host", "evil.example".into())], None);
    assert_eq!(status, 421);

    let good = format!(r#"{{"code":"{}","passphrase":"correct horse","handle":"@Alice"}}"#, s.code);
    // Cross-site: no CSRF header, or another origin.
    let (status, _, body) =
        raw(&s, "POST", "/v1/setup", &[("Origin", format!("http://{}", s.addr))], Some(&good));
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = raw(
        &s,
        "POST",
        "/v1/setup",
        &[("Origin", "http://evil.example".into()), ("X-Cairn-Csrf", "1".into())],
        Some(&good),
    );
    assert_eq!(status, 403, "{body}");
    // Wrong code, weak passphrase, bad handle, garbage: refused with what to do.
    let wrong = format!(r#"{{"code":"{}","passphrase":"correct horse"}}"#, "0".repeat(64));
    let (status, _, body) = raw(&s, "POST", "/v1/setup", &own(&s), Some(&wrong));
    assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"), "{body}");
    let weak = format!(r#"{{"code":"{}","passphrase":"short"}}"#, s.code);
    let (status, _, body) = raw(&s, "POST", "/v1/setup", &own(&s), Some(&weak));
    assert_eq!((status, code_of(&body).as_str()), (400, "weak_passphrase"), "{body}");
    let bad = format!(r#"{{"code":"{}","passphrase":"correct horse","handle":"no spaces allowed"}}"#, s.code);
    let (status, _, body) = raw(&s, "POST", "/v1/setup", &own(&s), Some(&bad));
    assert_eq!((status, code_of(&body).as_str()), (400, "bad_handle"), "{body}");
    let (status, _, body) = raw(&s, "POST", "/v1/setup", &own(&s), Some("{\"code\": [1,2"));
    assert_eq!(status, 400, "{body}");
    assert!(s.calls.lock().unwrap().is_empty(), "nothing created by refused requests");

    // The right request: created once, with the normalized handle, and a session cookie kept
    // in the session file the full API reads.
    let (status, head, body) = raw(&s, "POST", "/v1/setup", &own(&s), Some(&good));
    assert_eq!(status, 201, "{head}\n{body}");
    let done: api_setup::SetupDone = serde_json::from_str(&body).unwrap();
    assert_eq!(done.account, "cairn1new");
    assert_eq!(done.handle.as_deref(), Some("alice"));
    let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("a cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let id = cookie.split_once('=').unwrap().1.split(';').next().unwrap().to_string();
    assert_eq!(id.len(), 64);
    let file = std::fs::read_to_string(&sessions).unwrap();
    assert!(!file.contains(&id) && file.contains(blake3::hash(id.as_bytes()).to_hex().as_str()), "hash kept");
    assert_eq!(*s.calls.lock().unwrap(), vec![(b"correct horse".to_vec(), Some("alice".to_string()))]);
    // The server stops, saying an account was created.
    let created = s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), s.done).await });
    assert!(created.unwrap().unwrap().unwrap(), "serve() reports the creation");
}
