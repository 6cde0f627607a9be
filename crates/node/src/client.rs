//! A blocking client of the local API (used by the `cairn` CLI), and the files through which
//! clients find a running node: `DIR/run/node.json` ([`RunFile`]) and `DIR/api.token`.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    AccountForgetRequest, AccountForgetView, AccountView, ConversationView, DeviceAddRequest, DeviceView,
    ErasureView, ErrorBody, HandleRequest, LedgerStatusView, MembersRequest, MessageView, PolicySetRequest,
    PolicyView, RequestView, RunFile, SendRequest, SendResult, StatusView, TailQuery, TxView, VerifyView,
};

/// Token file name inside the data directory.
pub const TOKEN_FILE: &str = "api.token";
/// Run directory name inside the data directory.
pub const RUN_DIR: &str = "run";
/// Run file name inside the run directory.
pub const RUN_FILE: &str = "node.json";

/// Timeout of ordinary requests (ledger transactions wait for finality, hence generous).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time a long poll may take beyond its `wait_ms`.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(10);
/// Connection timeout (the node is on loopback).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node runs for this data directory (no run file, dead pid, or connection refused).
    #[error("no node running for --home {home}: start one with `cairn up --home {home}` (or `cairn dev`)")]
    NoNode {
        /// The data directory, as displayed.
        home: String,
    },
    /// The node answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code (`bad_request`, `not_found`, …).
        code: String,
        /// The node's message.
        message: String,
    },
    /// The request failed in transport (timeout, reset, undecodable answer…).
    #[error("talking to the node at {api}: {detail}")]
    Transport {
        /// Base URL.
        api: String,
        /// What went wrong.
        detail: String,
    },
    /// A local file could not be read.
    #[error("{0}")]
    Io(String),
}

/// A blocking client of one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    api: String,
    token: String,
    home: PathBuf,
    agent: ureq::Agent,
}

impl Client {
    /// Finds the node running for `home` through `home/run/node.json` and `home/api.token`.
    /// Fails with [`ClientError::NoNode`] when either is absent or the recorded process is gone.
    pub fn for_home(home: &Path) -> Result<Client, ClientError> {
        let no_node = || ClientError::NoNode { home: home.display().to_string() };
        let run = match read_run_file(home) {
            Ok(Some(run)) => run,
            Ok(None) => return Err(no_node()),
            Err(e) => return Err(ClientError::Io(e.to_string())),
        };
        if !pid_alive(run.pid) {
            return Err(no_node());
        }
        let token = match fs::read_to_string(home.join(TOKEN_FILE)) {
            Ok(t) => t.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_node()),
            Err(e) => {
                return Err(ClientError::Io(format!("reading {}: {e}", home.join(TOKEN_FILE).display())));
            }
        };
        Ok(Client::new(&run.api, &token, home))
    }

    /// A client of the API at `api` (`http://127.0.0.1:PORT`) with this token; `home` only
    /// names the data directory in error messages.
    pub fn new(api: &str, token: &str, home: &Path) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Client {
            api: api.trim_end_matches('/').to_string(),
            token: token.to_string(),
            home: home.to_path_buf(),
            agent,
        }
    }

    /// Base URL of the API.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusView, ClientError> {
        self.get("/v1/status")
    }

    /// `POST /v1/conversations`.
    pub fn create_conversation(&self, members: &[String]) -> Result<ConversationView, ClientError> {
        self.post("/v1/conversations", &MembersRequest { members: members.to_vec() })
    }

    /// `GET /v1/conversations`.
    pub fn conversations(&self) -> Result<Vec<ConversationView>, ClientError> {
        self.get("/v1/conversations")
    }

    /// `GET /v1/conversations/{id}`.
    pub fn conversation(&self, id: &str) -> Result<ConversationView, ClientError> {
        self.get(&format!("/v1/conversations/{}", seg(id)))
    }

    /// `POST /v1/conversations/{id}/members`.
    pub fn add_members(&self, id: &str, members: &[String]) -> Result<ConversationView, ClientError> {
        self.post(
            &format!("/v1/conversations/{}/members", seg(id)),
            &MembersRequest { members: members.to_vec() },
        )
    }

    /// `DELETE /v1/conversations/{id}/members/{member}`.
    pub fn remove_member(&self, id: &str, member: &str) -> Result<ConversationView, ClientError> {
        self.delete(&format!("/v1/conversations/{}/members/{}", seg(id), seg(member)))
    }

    /// `POST /v1/conversations/{id}/leave`.
    pub fn leave(&self, id: &str) -> Result<(), ClientError> {
        let req = self.agent.post(self.url(&format!("/v1/conversations/{}/leave", seg(id))));
        let resp = self.auth(req).send_empty();
        self.expect_no_body(resp)
    }

    /// `POST /v1/conversations/{id}/forget`: destroys a left conversation's keys and state.
    pub fn forget(&self, id: &str) -> Result<(), ClientError> {
        let req = self.agent.post(self.url(&format!("/v1/conversations/{}/forget", seg(id))));
        let resp = self.auth(req).send_empty();
        self.expect_no_body(resp)
    }

    /// `DELETE /v1/conversations/{id}/messages/{message}`: erases an own message everywhere.
    pub fn erase(&self, id: &str, message: &str) -> Result<SendResult, ClientError> {
        self.delete(&format!("/v1/conversations/{}/messages/{}", seg(id), seg(message)))
    }

    /// `POST /v1/conversations/{id}/messages`: answers at once with state `sent`.
    pub fn send(&self, id: &str, text: &str) -> Result<SendResult, ClientError> {
        self.send_wait(id, text, 0)
    }

    /// `POST /v1/conversations/{id}/messages?wait_ms=…`: answers when the message is delivered
    /// to every member or after `wait_ms` (capped by the node), with the latest state reached.
    pub fn send_wait(&self, id: &str, text: &str, wait_ms: u64) -> Result<SendResult, ClientError> {
        self.send_keyed(id, text, wait_ms, None)
    }

    /// `POST /v1/conversations/{id}/messages` with an `Idempotency-Key`: sending again with the
    /// same key (after a crash or a lost answer) returns the message sent the first time.
    pub fn send_once(&self, id: &str, text: &str, key: &str) -> Result<SendResult, ClientError> {
        self.send_keyed(id, text, 0, Some(key))
    }

    fn send_keyed(
        &self,
        id: &str,
        text: &str,
        wait_ms: u64,
        key: Option<&str>,
    ) -> Result<SendResult, ClientError> {
        let mut req = self.agent.post(self.url(&format!("/v1/conversations/{}/messages", seg(id))));
        if wait_ms > 0 {
            req = req.query("wait_ms", wait_ms.to_string());
        }
        if let Some(k) = key {
            req = req.header(crate::api::IDEMPOTENCY_KEY, k);
        }
        let timeout = REQUEST_TIMEOUT.saturating_add(Duration::from_millis(wait_ms));
        let req = req.config().timeout_global(Some(timeout)).build();
        self.decode(self.auth(req).send_json(&SendRequest { text: text.to_string() }))
    }

    /// `GET /v1/conversations/{id}/policy`.
    pub fn policy(&self, id: &str) -> Result<PolicyView, ClientError> {
        self.get(&format!("/v1/conversations/{}/policy", seg(id)))
    }

    /// `GET /v1/conversations/{id}/held`: what the policy kept out of the history here.
    pub fn held(&self, id: &str) -> Result<crate::model::HeldListView, ClientError> {
        self.get(&format!("/v1/conversations/{}/held", seg(id)))
    }

    /// `POST /v1/conversations/{id}/held/{message}/release`: show a held message here.
    pub fn release_held(&self, id: &str, message: &str) -> Result<MessageView, ClientError> {
        let url = self.url(&format!("/v1/conversations/{}/held/{}/release", seg(id), seg(message)));
        self.decode(self.auth(self.agent.post(url)).send_empty())
    }

    /// `PUT /v1/conversations/{id}/policy` (a commit: may take a few seconds).
    pub fn set_policy(&self, id: &str, req: &PolicySetRequest) -> Result<PolicyView, ClientError> {
        let req_b = self.agent.put(self.url(&format!("/v1/conversations/{}/policy", seg(id))));
        let req_b = req_b.config().timeout_global(Some(Duration::from_secs(120))).build();
        self.decode(self.auth(req_b).send_json(req))
    }

    /// `POST /v1/account/forget`: leaves and forgets every conversation, releases the handle
    /// and revokes every device (may take a minute: each step is a ledger transaction).
    pub fn forget_account(&self, confirm: &str) -> Result<AccountForgetView, ClientError> {
        let req = self.agent.post(self.url("/v1/account/forget"));
        let req = req.config().timeout_global(Some(Duration::from_secs(600))).build();
        self.decode(self.auth(req).send_json(&AccountForgetRequest { confirm: confirm.to_string() }))
    }

    /// `GET /v1/conversations/{id}/erasures`: erasures applied after entry `after`, oldest
    /// first.
    pub fn erasures(&self, id: &str, after: u64, limit: usize) -> Result<Vec<ErasureView>, ClientError> {
        let req = self
            .agent
            .get(self.url(&format!("/v1/conversations/{}/erasures", seg(id))))
            .query("after", after.to_string())
            .query("limit", limit.to_string());
        self.decode(self.auth(req).call())
    }

    /// `GET /v1/conversations/{id}/messages` (long poll when `query.wait_ms` is set; the
    /// request may take `wait_ms` + [`LONG_POLL_SLACK`]).
    pub fn messages(&self, id: &str, query: &TailQuery) -> Result<Vec<MessageView>, ClientError> {
        let mut req = self.agent.get(self.url(&format!("/v1/conversations/{}/messages", seg(id))));
        if let Some(a) = query.after {
            req = req.query("after", a.to_string());
        }
        if let Some(l) = query.limit {
            req = req.query("limit", l.to_string());
        }
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(w) = query.wait_ms {
            req = req.query("wait_ms", w.to_string());
            timeout = Duration::from_millis(w).saturating_add(LONG_POLL_SLACK).max(REQUEST_TIMEOUT);
        }
        let req = req.config().timeout_global(Some(timeout)).build();
        self.decode(self.auth(req).call())
    }

    /// `POST /v1/conversations/{id}/verify`.
    pub fn verify(&self, id: &str) -> Result<VerifyView, ClientError> {
        self.post_empty(&format!("/v1/conversations/{}/verify", seg(id)))
    }

    /// `POST /v1/handle`.
    pub fn claim_handle(&self, name: &str) -> Result<TxView, ClientError> {
        self.post("/v1/handle", &HandleRequest { name: name.to_string() })
    }

    /// `GET /v1/devices`.
    pub fn devices(&self) -> Result<Vec<DeviceView>, ClientError> {
        self.get("/v1/devices")
    }

    /// `POST /v1/devices`.
    pub fn add_device(&self, req: &DeviceAddRequest) -> Result<DeviceView, ClientError> {
        self.post("/v1/devices", req)
    }

    /// `DELETE /v1/devices/{device}`.
    pub fn revoke_device(&self, device: &str) -> Result<TxView, ClientError> {
        self.delete(&format!("/v1/devices/{}", seg(device)))
    }

    /// `POST /v1/devices/link?history=N`: a one-time code for linking a device on another
    /// machine, which then gets the last `history` messages of each conversation (0: none).
    pub fn link_device(&self, history: u32) -> Result<crate::link_host::LinkStartView, ClientError> {
        self.post_empty(&format!("/v1/devices/link?history={history}"))
    }

    /// `GET /v1/devices/link/{link}`.
    pub fn link_status(&self, link: &str) -> Result<crate::link_host::LinkStatusView, ClientError> {
        self.get(&format!("/v1/devices/link/{}", seg(link)))
    }

    /// `GET /v1/requests`: invitations waiting for consent.
    pub fn requests(&self) -> Result<Vec<RequestView>, ClientError> {
        self.get("/v1/requests")
    }

    /// `POST /v1/requests/{id}/accept`: joins the conversation.
    pub fn accept_request(&self, id: &str) -> Result<ConversationView, ClientError> {
        self.post(&format!("/v1/requests/{}/accept", seg(id)), &serde_json::json!({}))
    }

    /// `POST /v1/requests/{id}/decline`.
    pub fn decline_request(&self, id: &str) -> Result<(), ClientError> {
        let req = self.agent.post(self.url(&format!("/v1/requests/{}/decline", seg(id))));
        let resp = self.auth(req).send_empty();
        self.expect_no_body(resp)
    }

    /// `GET /v1/ledger/status`.
    pub fn ledger_status(&self) -> Result<LedgerStatusView, ClientError> {
        self.get("/v1/ledger/status")
    }

    /// `GET /v1/ledger/accounts/{who}` (account id or `@handle`).
    pub fn account(&self, who: &str) -> Result<AccountView, ClientError> {
        self.get(&format!("/v1/ledger/accounts/{}", seg(who)))
    }

    /// `POST /v1/shutdown`: asks the node to stop (returns once it accepted).
    pub fn shutdown(&self) -> Result<(), ClientError> {
        let resp = self.auth(self.agent.post(self.url("/v1/shutdown"))).send_empty();
        self.expect_no_body(resp)
    }

    /// `POST /v1/web/login`: a one-time login code for the web client (see [`crate::web`]).
    pub fn web_login(&self) -> Result<crate::web::WebLogin, ClientError> {
        self.post_empty("/v1/web/login")
    }

    // ---- plumbing ---------------------------------------------------------------------------

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        req.header("Authorization", format!("Bearer {}", self.token))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.decode(self.auth(self.agent.get(self.url(path))).call())
    }

    fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.decode(self.auth(self.agent.delete(self.url(path))).call())
    }

    fn post<T: DeserializeOwned, R: Serialize>(&self, path: &str, body: &R) -> Result<T, ClientError> {
        self.decode(self.auth(self.agent.post(self.url(path))).send_json(body))
    }

    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.decode(self.auth(self.agent.post(self.url(path))).send_empty())
    }

    fn transport(&self, e: ureq::Error) -> ClientError {
        let refused = match &e {
            ureq::Error::Io(io) => {
                matches!(io.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset)
            }
            ureq::Error::ConnectionFailed => true,
            _ => false,
        };
        if refused {
            ClientError::NoNode { home: self.home.display().to_string() }
        } else {
            ClientError::Transport { api: self.api.clone(), detail: e.to_string() }
        }
    }

    /// Reads a response: 2xx → the decoded body; otherwise the server's [`ErrorBody`].
    fn body(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), ClientError> {
        let mut resp = resp.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| self.transport(e))?;
        if (200..300).contains(&status) {
            return Ok((status, text));
        }
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api { status, code: b.code, message: b.error },
            Err(_) => ClientError::Api {
                status,
                code: "http".to_string(),
                message: format!("the node answered HTTP {status}: {}", text.trim()),
            },
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let (_, text) = self.body(resp)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Transport {
            api: self.api.clone(),
            detail: format!("undecodable answer ({e}): {}", text.chars().take(200).collect::<String>()),
        })
    }

    fn expect_no_body(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(), ClientError> {
        self.body(resp).map(|_| ())
    }
}

/// Percent-encodes one path segment (ids are hex or bech32, handles may start with `@`).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether process `pid` exists. Without `/proc` (not Linux) this cannot tell and says yes;
/// the connection then decides.
fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    pid != 0 && proc.join(pid.to_string()).exists()
}

/// `home/run/node.json`, or `None` if absent.
pub fn read_run_file(home: &Path) -> io::Result<Option<RunFile>> {
    let path = home.join(RUN_DIR).join(RUN_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a run file: {e}", path.display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    }
}

/// Writes `home/run/node.json` atomically (temporary file, fsync, rename, fsync of the
/// directory); `home/run` is created with mode 0700.
pub fn write_run_file(home: &Path, run: &RunFile) -> io::Result<()> {
    let dir = home.join(RUN_DIR);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let text = serde_json::to_string_pretty(run).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{RUN_FILE}.{}.tmp", std::process::id()));
    let result = replace_file(&dir, &tmp, &dir.join(RUN_FILE), text.as_bytes());
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `tmp` (0600), fsyncs it, renames it over `dest`, fsyncs `dir`.
fn replace_file(dir: &Path, tmp: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp)?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(tmp, dest)?;
    fs::File::open(dir)?.sync_all()
}

/// Removes `home/run/node.json` (absent is fine).
pub fn remove_run_file(home: &Path) -> io::Result<()> {
    match fs::remove_file(home.join(RUN_DIR).join(RUN_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The API token of `home`: read from `home/api.token` if present, else 32 random bytes in
/// hex written there (mode 0600, create-new, so two nodes starting at once agree on one).
pub fn load_or_create_token(home: &Path) -> io::Result<String> {
    let path = home.join(TOKEN_FILE);
    for _ in 0..50 {
        match read_token(&path)? {
            Some(t) => return Ok(t),
            None if path.exists() => {
                // Another process created it and is still writing: wait a little.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            None => {}
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
        let token = hex::encode(bytes);
        match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut f) => {
                f.write_all(token.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
                return Ok(token);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("creating {}: {e}", path.display()))),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is empty or not a token; remove it and start the node again", path.display()),
    ))
}

/// A well-formed token from `path`; `None` if absent or not (yet) 64 hex digits. A token file
/// readable by others is refused.
fn read_token(path: &Path) -> io::Result<Option<String>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    };
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is readable by other users (mode {:o}); chmod 600 it", path.display(), mode & 0o777),
        ));
    }
    let t = text.trim();
    Ok((t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_token(dir.path()).expect("create");
        assert_eq!(a.len(), 64);
        let mode = fs::metadata(dir.path().join(TOKEN_FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_token(dir.path()).expect("reuse");
        assert_eq!(a, b);
    }

    #[test]
    fn token_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TOKEN_FILE);
        fs::write(&path, "ab".repeat(32)).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load_or_create_token(dir.path()).expect_err("refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn concurrent_token_creation_agrees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let h = home.clone();
                std::thread::spawn(move || load_or_create_token(&h))
            })
            .collect();
        let tokens: Vec<String> =
            handles.into_iter().map(|h| h.join().expect("thread").expect("token")).collect();
        assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
    }

    #[test]
    fn run_file_round_trip_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunFile {
            api: "http://127.0.0.1:1".into(),
            p2p: vec!["/ip4/127.0.0.1/tcp/2/p2p/x".into()],
            peer_id: "x".into(),
            pid: std::process::id(),
        };
        write_run_file(dir.path(), &run).expect("write");
        let mode = fs::metadata(dir.path().join(RUN_DIR)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(read_run_file(dir.path()).expect("read"), Some(run.clone()));
        write_run_file(dir.path(), &run).expect("overwrite");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join(RUN_DIR)).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        remove_run_file(dir.path()).expect("remove");
        assert_eq!(read_run_file(dir.path()).expect("read"), None);
        remove_run_file(dir.path()).expect("removing twice is fine");
    }

    #[test]
    fn dead_pid_means_no_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run =
            RunFile { api: "http://127.0.0.1:9".into(), p2p: vec![], peer_id: "x".into(), pid: u32::MAX };
        write_run_file(dir.path(), &run).expect("write");
        load_or_create_token(dir.path()).expect("token");
        let e = Client::for_home(dir.path()).expect_err("dead pid");
        let h = dir.path().display();
        assert_eq!(
            e.to_string(),
            format!("no node running for --home {h}: start one with `cairn up --home {h}` (or `cairn dev`)")
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(seg("@alice"), "@alice");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg("cairn1xyz"), "cairn1xyz");
    }
}
