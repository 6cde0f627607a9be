//! The new device's side of linking (`cairn init --link CODE`): a temporary mesh node that
//! meets the existing device on the code's rendezvous topic (see [`crate::link`]), proves it
//! knows the code, and comes back with the account's certificate for a fresh device key.
//! The caller writes the keystore (device key only) and may then run the node.

use std::time::Duration;

use cairn_crypto::Identity;
use cairn_net::node::{NodeConfig, NodeEvent};
use ed25519_dalek::SigningKey;

use crate::link::{Frame, JoinSession, LinkCode, LinkError, Linked};
use crate::shell::now_ms;

/// What the new device needs to link.
#[derive(Debug)]
pub struct JoinOptions {
    /// Mesh settings of the temporary node (bootstrap peers; a throw-away data directory).
    pub net: NodeConfig,
    /// The ledger's chain id (from the genesis).
    pub chain: [u8; 32],
    /// The code typed by the user.
    pub code: LinkCode,
    /// How long to wait for each answer of the existing device.
    pub wait: Duration,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The exchange failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The mesh node failed.
    #[error("mesh: {0}")]
    Mesh(String),
    /// No answer in time.
    #[error(
        "no answer from the existing device within {0} s: is `cairn device link` still waiting there, and do both nodes reach the same store nodes (--bootstrap)? A code works once and for {1} s"
    )]
    Timeout(u64, u64),
}

/// The linked identity (device key only), the account's handle, and the history brought
/// along.
pub struct Joined {
    /// The new device's identity: its own key and certificate, no account key.
    pub identity: Identity,
    /// The account's handle, if any.
    pub handle: Option<String>,
    /// The recent messages the existing device sent (checked; keep them with
    /// [`crate::link_history::import`]).
    pub history: Vec<crate::link_history::HistoryRecord>,
}

/// Runs the exchange; the temporary node is shut down before returning.
pub async fn join(opts: JoinOptions) -> Result<Joined, JoinError> {
    let limits = opts.net.admission.limits;
    let difficulty = opts.net.admission.difficulty;
    let node = cairn_net::node::start(opts.net).await.map_err(|e| JoinError::Mesh(e.to_string()))?;
    let r = exchange(&node, opts.chain, opts.code, opts.wait, &limits, difficulty).await;
    node.shutdown().await;
    r
}

/// Longest the new device waits for a store node to hold its refusal before it stops.
const REFUSAL_STORED_WAIT: Duration = Duration::from_secs(10);

/// Waits (at most `max`) until the mesh reports envelope `id` stored on enough store nodes.
async fn wait_stored(
    events: &mut tokio::sync::mpsc::Receiver<NodeEvent>,
    id: cairn_proto::Id,
    max: Duration,
) {
    let until = tokio::time::Instant::now() + max;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, events.recv()).await {
        if let NodeEvent::Status { id: got, status: cairn_net::sync::SendStatus::Stored { .. } } = ev
            && got == id
        {
            return;
        }
    }
}

async fn exchange(
    node: &cairn_net::node::NodeHandle,
    chain: [u8; 32],
    code: LinkCode,
    wait: Duration,
    limits: &cairn_proto::Limits,
    difficulty: cairn_proto::pow::Difficulty,
) -> Result<Joined, JoinError> {
    let mut events = node.take_events().ok_or_else(|| JoinError::Mesh("events taken".into()))?;
    let topic = code.topic();
    node.subscribe(topic).await.map_err(|e| JoinError::Mesh(e.to_string()))?;
    let seed = cairn_crypto::keystore::random_bytes::<32>().map_err(|e| LinkError::Crypto(e.to_string()))?;
    let device_key = SigningKey::from_bytes(&seed);
    let (mut session, start) = JoinSession::start(code, chain, device_key.clone());
    let send = |f: Frame| {
        let node = node.clone();
        let limits = *limits;
        async move {
            let env = f.envelope(topic, now_ms(), &limits, difficulty)?;
            node.publish(env).await.map_err(|e| JoinError::Mesh(e.to_string()))?;
            Ok::<(), JoinError>(())
        }
    };
    send(start).await?;
    let mut deadline = tokio::time::Instant::now() + wait;
    let mut requested = false;
    let mut linked: Option<Linked> = None;
    // History parts, sealed, by number (they may come before `Certified` from a store node).
    let mut parts: std::collections::BTreeMap<u16, Vec<u8>> = std::collections::BTreeMap::new();
    loop {
        if let Some(l) = &linked
            && parts.range(..l.history_parts).count() >= usize::from(l.history_parts)
        {
            let mut opened = Vec::with_capacity(parts.len());
            for (i, sealed) in parts.range(..l.history_parts) {
                opened.push(session.open_history(*i, sealed)?);
            }
            let history = crate::link_history::decode(&opened, limits)
                .map_err(|e| LinkError::Malformed(format!("history: {e}")))?;
            let Linked { cert, handle, .. } = linked.take().ok_or(LinkError::Unexpected)?;
            let identity = Identity::device_only(device_key, cert)
                .map_err(|_| JoinError::Link(LinkError::BadCertificate))?;
            return Ok(Joined { identity, handle, history });
        }
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Err(JoinError::Timeout(wait.as_secs(), crate::link::CODE_TTL.as_secs())),
            Ok(None) => return Err(JoinError::Mesh("the mesh node stopped".into())),
            Ok(Some(ev)) => ev,
        };
        let NodeEvent::Delivered { envelope, .. } = ev else { continue };
        let Some(frame) = Frame::of_envelope(&envelope, &topic) else { continue };
        match frame {
            Frame::Offer { answers, spake, sealed } if !requested && session.answers_me(&answers) => {
                match session.on_offer(&spake, &sealed) {
                    Ok(req) => {
                        send(req).await?;
                        requested = true;
                        // The existing device now waits for the ledger: give it that long too.
                        deadline = tokio::time::Instant::now() + wait + Duration::from_secs(30);
                    }
                    Err(e) => {
                        // Tell the existing device at once (it would otherwise wait until expiry),
                        // and stay until a store node holds the refusal: this node stops next.
                        let refusal = JoinSession::refusal(&spake);
                        if let Ok(env) = refusal.envelope(topic, now_ms(), limits, difficulty)
                            && let Ok(id) = node.publish(env).await
                        {
                            wait_stored(&mut events, id, REFUSAL_STORED_WAIT).await;
                        }
                        return Err(e.into());
                    }
                }
            }
            Frame::Certified { answers, sealed }
                if requested && linked.is_none() && session.answers_me(&answers) =>
            {
                let l = session.on_certified(&sealed)?;
                if usize::from(l.history_parts) > crate::link_history::HISTORY_PARTS_MAX {
                    return Err(LinkError::Malformed("a history of too many parts".into()).into());
                }
                // The parts follow at once; give them the same wait again.
                deadline = tokio::time::Instant::now() + wait;
                linked = Some(l);
            }
            Frame::History { answers, index, sealed }
                if session.answers_me(&answers)
                    && usize::from(index) < crate::link_history::HISTORY_PARTS_MAX
                    && linked.as_ref().is_none_or(|l| index < l.history_parts) =>
            {
                parts.entry(index).or_insert(sealed);
            }
            Frame::Refused { answers, reason } if session.answers_me(&answers) => {
                return Err(LinkError::Refused(reason).into());
            }
            _ => {}
        }
    }
}
