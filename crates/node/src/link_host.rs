//! The existing device's side of linking (`cairn device link`, `POST /v1/devices/link`): a
//! one-time code, a task that answers on its rendezvous topic (see [`crate::link`]), and the
//! `AddDevice` transaction signed with the account key once the new device proved it knows
//! the code. The new device then joins every conversation through the pending-devices loop
//! of [`crate::service`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_ledger::tx::TxBody;
use cairn_net::node::NodeEvent;
use cairn_proto::envelope::Limits;
use cairn_proto::pow::Difficulty;
use cairn_proto::{DeviceCert, Topic};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::backend::{ApiError, ApiResult};
use crate::error::NodeError;
use crate::link::{CODE_TTL, DeviceRequest, Frame, HostSession, LinkCode, LinkError, Refusal};
use crate::service::Service;
use crate::shell::ledger::submit_tx;
use crate::shell::now_ms;

/// Codes open at once, at most.
const OPEN_MAX: usize = 4;
/// Sessions remembered (open or finished), at most; the oldest finished go first.
const KEPT_MAX: usize = 32;
/// Time given to the `AddDevice` transaction.
const TX_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /v1/devices/link`: a fresh one-time code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkStartView {
    /// Session id, for `GET /v1/devices/link/{link}`.
    pub link: String,
    /// The code to type on the new device (`cairn init --link CODE`).
    pub code: String,
    /// Seconds the code stays usable.
    pub expires_in_secs: u64,
}

/// `POST /v1/devices/link?history=N`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkQuery {
    /// Last messages of each conversation to send the new device, encrypted under the link's
    /// key (0: none; at most [`crate::link_history::HISTORY_PER_CONVERSATION_MAX`]).
    #[serde(default)]
    pub history: u32,
}

/// `GET /v1/devices/link/{link}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkStatusView {
    /// Session id.
    pub link: String,
    /// `waiting` (no new device yet), `linking` (code consumed), `linked`, `failed`, `expired`.
    pub state: String,
    /// The new device, once known.
    pub device: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The link sessions of one node.
pub struct Links {
    sessions: Mutex<HashMap<String, (Instant, LinkStatusView)>>,
    limits: Limits,
    difficulty: Difficulty,
}

impl Links {
    /// Sessions for a node publishing with these admission rules.
    pub fn new(limits: Limits, difficulty: Difficulty) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), limits, difficulty }
    }

    fn set(&self, link: &str, state: &str, device: Option<String>, error: Option<String>) {
        if let Ok(mut m) = self.sessions.lock()
            && let Some((_, v)) = m.get_mut(link)
        {
            v.state = state.to_owned();
            if device.is_some() {
                v.device = device;
            }
            v.error = error;
        }
    }

    fn open(&self, link: &str) -> Result<(), NodeError> {
        let mut m = self.sessions.lock().map_err(|_| NodeError::Internal("link sessions poisoned".into()))?;
        let open = m.values().filter(|(_, v)| matches!(v.state.as_str(), "waiting" | "linking")).count();
        if open >= OPEN_MAX {
            return Err(NodeError::Conflict(format!(
                "{open} link codes are open already: use one, or wait until they expire ({} s)",
                CODE_TTL.as_secs()
            )));
        }
        while m.len() >= KEPT_MAX {
            let Some(oldest) = m
                .iter()
                .filter(|(_, (_, v))| !matches!(v.state.as_str(), "waiting" | "linking"))
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            m.remove(&oldest);
        }
        let view =
            LinkStatusView { link: link.to_owned(), state: "waiting".into(), device: None, error: None };
        m.insert(link.to_owned(), (Instant::now(), view));
        Ok(())
    }
}

/// Creates a code and starts answering on its topic.
pub(crate) async fn start(s: &Service, links: Arc<Links>, q: LinkQuery) -> ApiResult<LinkStartView> {
    if q.history > crate::link_history::HISTORY_PER_CONVERSATION_MAX {
        return Err(ApiError::BadRequest(format!(
            "history={} is over the {} messages per conversation a link carries",
            q.history,
            crate::link_history::HISTORY_PER_CONVERSATION_MAX
        )));
    }
    if s.shared().identity.account_key.is_none() {
        return Err(ApiError::Conflict(
            "this device does not hold the account key: run `cairn device link` on the account's first device".into(),
        ));
    }
    let code = LinkCode::random().map_err(|e| ApiError::Internal(e.to_string()))?;
    let topic = code.topic();
    let link = hex::encode(&topic.0[..8]);
    let chain = s.ledger(|c, _| Ok(c.chain())).await?;
    links.open(&link)?;
    // Events first, then the subscription: nothing delivered between them is missed.
    let events = s.net().events();
    if let Err(e) = s.net().subscribe(topic).await {
        links.set(&link, "failed", None, Some(e.to_string()));
        return Err(ApiError::Unavailable(format!("cannot follow the link topic: {e}")));
    }
    let session = HostSession::new(code.clone(), chain, s.shared().identity.account);
    tokio::spawn(run(s.clone(), links, link.clone(), topic, session, events, q.history));
    Ok(LinkStartView { link, code: code.to_text(), expires_in_secs: CODE_TTL.as_secs() })
}

/// The status of a session.
pub(crate) fn status(links: &Links, link: &str) -> ApiResult<LinkStatusView> {
    let m = links.sessions.lock().map_err(|_| ApiError::Internal("link sessions poisoned".into()))?;
    m.get(link.trim()).map(|(_, v)| v.clone()).ok_or_else(|| {
        ApiError::NotFound(format!("no link session {link} on this node (see `cairn device link`)"))
    })
}

async fn publish(s: &Service, links: &Links, topic: Topic, frame: &Frame) {
    let env = match frame.envelope(topic, now_ms(), &links.limits, links.difficulty) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("link frame: {e}");
            return;
        }
    };
    if let Err(e) = s.net().publish(env).await {
        tracing::warn!("publishing a link frame: {e}");
    }
}

/// Answers on the topic until the code expires; after the exchange, a reused code is refused.
async fn run(
    s: Service,
    links: Arc<Links>,
    link: String,
    topic: Topic,
    mut session: HostSession,
    mut events: tokio::sync::broadcast::Receiver<NodeEvent>,
    history: u32,
) {
    let deadline = tokio::time::Instant::now() + CODE_TTL;
    let mut finished = false;
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => break,
            Ok(Err(RecvError::Closed)) => return,
            Ok(Err(RecvError::Lagged(n))) => {
                tracing::warn!(
                    "link {link}: {n} mesh events missed (the new device retries by running again)"
                );
                continue;
            }
            Ok(Ok(ev)) => ev,
        };
        let NodeEvent::Delivered { envelope, .. } = ev else { continue };
        let Some(frame) = Frame::of_envelope(&envelope, &topic) else { continue };
        match frame {
            Frame::Start { spake } => match session.on_start(&spake) {
                Ok(Some(answer)) => {
                    if !finished && session.consumed() && matches!(answer, Frame::Offer { .. }) {
                        links.set(&link, "linking", None, None);
                    }
                    publish(&s, &links, topic, &answer).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("link {link}: {e}"),
            },
            Frame::Request { answers, sealed } if !finished => match session.on_request(&answers, &sealed) {
                Ok(None) => {}
                Ok(Some(req)) => {
                    finished = true;
                    let (reply, parts) = match certify(&s, req).await {
                        Ok((cert, handle)) => {
                            let parts = history_parts(&s, history).await;
                            links.set(&link, "linked", Some(cert.device.to_text()), None);
                            let n = u16::try_from(parts.len()).unwrap_or(0);
                            (session.certified(&cert, handle.as_deref(), n).ok(), parts)
                        }
                        Err(e) => {
                            links.set(&link, "failed", None, Some(e.to_string()));
                            (session.refusal(Refusal::Failed), Vec::new())
                        }
                    };
                    if let Some(f) = reply {
                        publish(&s, &links, topic, &f).await;
                    }
                    for (i, part) in parts.iter().enumerate() {
                        match session.history(i as u16, part) {
                            Ok(f) => publish(&s, &links, topic, &f).await,
                            Err(e) => tracing::warn!("link {link}: history part {i}: {e}"),
                        }
                    }
                }
                Err(e) => {
                    finished = true;
                    let reason =
                        if matches!(e, LinkError::WrongCode) { Refusal::WrongCode } else { Refusal::Failed };
                    links.set(&link, "failed", None, Some(format!("{e}; nothing was changed")));
                    if let Some(f) = session.refusal(reason) {
                        publish(&s, &links, topic, &f).await;
                    }
                }
            },
            Frame::Refused { answers, reason: Refusal::WrongCode }
                if !finished && session.answers_offer(&answers) =>
            {
                finished = true;
                links.set(
                    &link,
                    "failed",
                    None,
                    Some("a wrong code was typed on the new device; the code is used up and nothing was changed: run `cairn device link` again".into()),
                );
            }
            _ => {}
        }
    }
    if !session.consumed() {
        links.set(&link, "expired", None, Some("no new device used the code in time".into()));
    } else if !finished {
        links.set(
            &link,
            "failed",
            None,
            Some("the new device did not finish in time; nothing was changed".into()),
        );
    }
}

/// The parts of the last `n` messages of every conversation (none when `n` is 0, or when
/// they cannot be read: the link itself does not fail for it).
async fn history_parts(s: &Service, n: u32) -> Vec<Vec<u8>> {
    if n == 0 {
        return Vec::new();
    }
    let shared = s.shared().clone();
    // Active conversations only: the new device joins those (and can place their envelopes).
    let convs: Vec<[u8; 32]> = match shared.convs.lock() {
        Ok(m) => m.iter().filter(|(_, v)| v.active).map(|(id, _)| id.0).collect(),
        Err(_) => return Vec::new(),
    };
    let r = tokio::task::spawn_blocking(move || crate::link_history::collect(&shared.db, &convs, n)).await;
    match r {
        Ok(Ok(records)) => {
            let parts = crate::link_history::parts(&records);
            if parts.len() > crate::link_history::HISTORY_PARTS_MAX {
                tracing::warn!("link history over its bound: not sent");
                return Vec::new();
            }
            parts
        }
        Ok(Err(e)) => {
            tracing::warn!("link history not sent: {e}");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("link history not sent: {e}");
            Vec::new()
        }
    }
}

/// Signs the new device's certificate, submits `AddDevice` and marks the device pending (it
/// then joins every conversation once its key packages are out).
async fn certify(s: &Service, req: DeviceRequest) -> ApiResult<(DeviceCert, Option<String>)> {
    s.ledger(move |c, shared| {
        let k = &shared.identity;
        let key = k
            .account_key
            .as_ref()
            .ok_or_else(|| NodeError::Conflict(cairn_crypto::KeystoreError::NoAccountKey.to_string()))?;
        let cert = DeviceCert::issue(key, req.device, now_ms());
        let body = TxBody::AddDevice { cert, device_signature: req.device_signature };
        submit_tx(c, k.account, key, body, TX_TIMEOUT)?;
        shared.db.set_pending_device(&req.device.0, true, now_ms())?;
        let handle = shared.handle.lock().ok().and_then(|h| h.clone());
        Ok((cert, handle))
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn open_codes_and_remembered_sessions_are_bounded() {
        let links = Links::new(Limits::default(), Difficulty::default());
        for i in 0..OPEN_MAX {
            links.open(&format!("s{i}")).unwrap();
        }
        assert!(matches!(links.open("one more"), Err(NodeError::Conflict(_))), "a fifth open code");
        links.set("s0", "linked", Some("dev".into()), None);
        links.open("s-next").unwrap();
        let v = status(&links, "s0").unwrap();
        assert_eq!((v.state.as_str(), v.device.as_deref()), ("linked", Some("dev")));
        assert!(status(&links, "nope").is_err());
        links.set("s-next", "expired", None, None);
        // Finished sessions make room for new ones; the map never outgrows its bound.
        for i in 0..3 * KEPT_MAX {
            let name = format!("f{i}");
            links.open(&name).unwrap();
            links.set(&name, "failed", None, Some("x".into()));
        }
        assert!(links.sessions.lock().unwrap().len() <= KEPT_MAX);
        assert_eq!(status(&links, "s1").unwrap().state, "waiting", "an open session was dropped");
    }
}
