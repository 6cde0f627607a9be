//! A served router over the fake node, and requests to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_node::api;
use cairn_node::model::ErrorBody;

use crate::TOKEN;
use crate::fake::Fake;

pub(crate) struct Server {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) addr: SocketAddr,
    pub(crate) fake: Arc<Fake>,
    pub(crate) task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub(crate) fn start() -> Server {
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
    pub(crate) fn url(&self, path: &str) -> String {
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
pub(crate) fn request(
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

pub(crate) fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

pub(crate) fn error_body(text: &str) -> ErrorBody {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"))
}

/// A concrete path for a route template.
pub(crate) fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000")
        .replace("{member}", "cairn1x")
        .replace("{device}", "cairndev1x")
        .replace("{who}", "cairn1x")
}
