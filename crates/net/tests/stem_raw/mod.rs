//! A raw libp2p peer for the stem tests, speaking Cairn's protocols with its own rules: a spy
//! (gossip observer and store node that logs who pushes to it), a black hole (takes stem
//! requests and never answers), or a client (sends whatever bytes it likes on `/cairn/stem/1`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_net::node::{STEM_PROTOCOL, STORE_PROTOCOL, StemCodec, StoreCodec};
use cairn_net::receipt::StoreReceipt;
use cairn_net::shard::{shard_name, shard_of};
use cairn_net::wire::{Request, Response, StoreAck, StoreOutcome};
use cairn_proto::{Envelope, Id, Limits, Topic};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, SwarmBuilder, identify, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

/// What the raw peer does.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    /// Follows `topic`'s shard by gossip (logging the first peer each envelope came from) and
    /// serves as a store node (logging who pushes, answering with valid signed receipts).
    Spy(Topic),
    /// Accepts stem requests and never answers them.
    BlackHole,
    /// Sends stem requests on command; serves nothing.
    Client,
}

/// What the raw peer saw.
#[derive(Default)]
pub(crate) struct Log {
    /// Envelope id → the peer its first gossip copy came from.
    pub(crate) first_from: HashMap<Id, PeerId>,
    /// `(peer, envelope id)` of every envelope pushed to the spy's store.
    pub(crate) store_pushes: Vec<(PeerId, Id)>,
    /// Stem requests taken and never answered.
    pub(crate) held: usize,
}

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    identify: identify::Behaviour,
    gossipsub: Toggle<gossipsub::Behaviour>,
    store: Toggle<request_response::Behaviour<StoreCodec>>,
    stem: request_response::Behaviour<StemCodec>,
}

enum Cmd {
    Dial(Multiaddr),
    Stem(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
}

/// A running raw peer (stops when dropped).
pub(crate) struct Raw {
    pub(crate) peer_id: PeerId,
    pub(crate) log: Arc<Mutex<Log>>,
    cmds: mpsc::Sender<Cmd>,
}

fn behaviour(key: &Keypair, role: Role) -> RawBehaviour {
    let identify = identify::Behaviour::new(identify::Config::new("/cairn/id/1".into(), key.public()));
    let gossipsub = match role {
        Role::Spy(topic) => {
            let cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .max_transmit_size(Limits::default().envelope_bytes_max + 4096)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                })
                .heartbeat_interval(Duration::from_millis(500))
                .protocol_id_prefix("/cairn/meshsub")
                .build()
                .unwrap();
            let mut gs = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, cfg).unwrap();
            gs.subscribe(&IdentTopic::new(shard_name(shard_of(&topic)))).unwrap();
            Some(gs)
        }
        _ => None,
    };
    let rr = request_response::Config::default().with_request_timeout(Duration::from_secs(60));
    let store = matches!(role, Role::Spy(_)).then(|| {
        request_response::Behaviour::with_codec(
            StoreCodec::store(),
            [(STORE_PROTOCOL, ProtocolSupport::Full)],
            rr.clone(),
        )
    });
    let stem_support =
        if matches!(role, Role::BlackHole) { ProtocolSupport::Full } else { ProtocolSupport::Outbound };
    let stem = request_response::Behaviour::with_codec(
        // Larger than a node takes: the attacker can send what a node's codec must cut off.
        StemCodec { request_bytes_max: 1024 * 1024, ..StemCodec::stem(0) },
        [(STEM_PROTOCOL, stem_support)],
        rr,
    );
    RawBehaviour { identify, gossipsub: Toggle::from(gossipsub), store: Toggle::from(store), stem }
}

/// The spy store's answer: stored, with a receipt signed by its key, for each envelope.
fn store_answer(key: &Keypair, req: &[u8]) -> (Vec<Id>, Response) {
    let now = super::common::now_ms();
    let envs: Vec<Envelope> = match Request::decode(req, &Limits::default()) {
        Ok(Request::Store(e) | Request::StoreRelayed(e)) => vec![e],
        Ok(Request::StoreMany(es) | Request::StoreRelayedMany(es)) => es,
        Ok(Request::Page { .. }) => return (vec![], Response::Page { entries: vec![], next: None }),
        Ok(Request::Ids(_)) => return (vec![], Response::Envelopes(vec![])),
        _ => return (vec![], Response::Error("no".into())),
    };
    let acks = envs
        .iter()
        .map(|e| StoreAck {
            id: e.id(),
            outcome: StoreOutcome::Stored,
            receipt: Some(StoreReceipt::sign(key, e.id(), now, now + 3_600_000).unwrap()),
        })
        .collect();
    (envs.iter().map(Envelope::id).collect(), Response::Stored(acks))
}

impl Raw {
    /// Starts a raw peer listening on 127.0.0.1.
    pub(crate) async fn start(role: Role) -> Self {
        let key = Keypair::generate_ed25519();
        let signer = key.clone();
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|k| behaviour(k, role))
            .unwrap()
            .with_swarm_config(|s| s.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        let peer_id = *swarm.local_peer_id();
        let log = Arc::new(Mutex::new(Log::default()));
        let (cmds, mut rx) = mpsc::channel::<Cmd>(64);
        let task_log = log.clone();
        tokio::spawn(async move {
            let mut held: Vec<ResponseChannel<Vec<u8>>> = Vec::new();
            let mut waiting: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>> =
                HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        None => break,
                        Some(Cmd::Dial(a)) => { let _ = swarm.dial(a); }
                        Some(Cmd::Stem(to, bytes, reply)) => {
                            let rid = swarm.behaviour_mut().stem.send_request(&to, bytes);
                            waiting.insert(rid, reply);
                        }
                    },
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                            propagation_source, message, ..
                        })) => {
                            if let Ok(e) = Envelope::decode(&message.data, &Limits::default()) {
                                task_log.lock().unwrap().first_from.entry(e.id()).or_insert(propagation_source);
                            }
                        }
                        SwarmEvent::Behaviour(RawBehaviourEvent::Store(request_response::Event::Message {
                            peer, message: request_response::Message::Request { request, channel, .. }, ..
                        })) => {
                            let (ids, resp) = store_answer(&signer, &request);
                            task_log.lock().unwrap().store_pushes.extend(ids.into_iter().map(|i| (peer, i)));
                            if let Some(s) = swarm.behaviour_mut().store.as_mut() {
                                let _ = s.send_response(channel, resp.encode());
                            }
                        }
                        SwarmEvent::Behaviour(RawBehaviourEvent::Stem(ev)) => match ev {
                            request_response::Event::Message { message, .. } => match message {
                                request_response::Message::Request { channel, .. } => {
                                    held.push(channel);
                                    task_log.lock().unwrap().held = held.len();
                                }
                                request_response::Message::Response { request_id, response } => {
                                    if let Some(r) = waiting.remove(&request_id) {
                                        let _ = r.send(Ok(response));
                                    }
                                }
                            },
                            request_response::Event::OutboundFailure { request_id, error, .. } => {
                                if let Some(r) = waiting.remove(&request_id) {
                                    let _ = r.send(Err(error.to_string()));
                                }
                            }
                            _ => {}
                        },
                        _ => {}
                    },
                }
            }
        });
        Self { peer_id, log, cmds }
    }

    /// Dials a node.
    pub(crate) async fn dial(&self, addr: &Multiaddr) {
        self.cmds.send(Cmd::Dial(addr.clone())).await.unwrap();
    }

    /// Sends `bytes` as a stem request to `to`; the answer's bytes, or the failure.
    pub(crate) async fn stem(&self, to: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Stem(to, bytes, tx)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), rx).await.expect("stem answer within 30 s").unwrap()
    }
}
