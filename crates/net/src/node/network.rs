//! What the swarm reports to the actor: gossip (admitted through [`crate::validate`]),
//! identify and discovery, connections, and the answers to our store requests.

use std::collections::HashMap;

use cairn_proto::Id;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, identify, kad, ping};
use tracing::debug;

use super::actor::{Node, Outbound, peer_key};
use super::behaviour::{BehaviourEvent, KAD_PROTOCOL};
use super::{STORE_PROTOCOL, now_ms};
use crate::receipt::StoreReceipt;
use crate::sync::Input;
use crate::validate::Verdict;
use crate::wire::{EraseOutcome, Response, StoreOutcome};

impl Node {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message.topic, message.data),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.on_identify(peer_id, info);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })) => {
                let connected = self.swarm.connected_peers().count() as u32;
                if !self.swarm.is_connected(&peer)
                    && connected < self.dial_ceiling()
                    && self.near_may_dial(&peer)
                {
                    let _ = self.swarm.dial(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Store(ev)) => self.on_store_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Stem(ev)) => self.on_stem_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(ev)) => self.on_mdns(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                self.near_rtt(peer, rtt.as_millis().try_into().unwrap_or(u64::MAX));
            }
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                self.light_peer_ip(peer_id, Some(endpoint.get_remote_address()));
                let dialled = match endpoint {
                    ConnectedPoint::Dialer { address, .. } => Some(address),
                    ConnectedPoint::Listener { .. } => None,
                };
                if num_established.get() == 1 {
                    self.near_connected(peer_id, dialled.is_some());
                }
                self.book_connected(peer_id, dialled);
                // Bootstrap while joining (first few peers); afterwards kad's periodic bootstrap
                // suffices — one per connection made every node of a 100-node mesh flood the
                // others' kad handlers.
                if num_established.get() == 1
                    && (self.swarm.behaviour().kad.mode() == kad::Mode::Server || self.light.is_some())
                    && self.swarm.connected_peers().count() <= 3
                {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                debug!(%peer_id, "connected");
            }
            SwarmEvent::NewListenAddr { listener_id, .. } => self.relayed_addr(listener_id),
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                let why = match &reason {
                    Ok(()) => "closed".to_owned(),
                    Err(e) => e.to_string(),
                };
                self.relayed_closed(listener_id, &why);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.book_disconnected(&peer_id);
                self.stem_gone(&peer_id);
                self.near_gone(&peer_id);
                self.light_candidate(peer_id, false);
                self.light_peer_ip(peer_id, None);
                if self.store_peers.remove(&peer_id).is_some() {
                    self.retarget();
                }
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, peer_id: PeerId, info: identify::Info) {
        self.book_learned(&peer_id, &info.listen_addrs);
        self.stem_learned(peer_id, &info.protocols);
        if self.swarm.is_connected(&peer_id) {
            self.light_candidate(peer_id, info.protocols.contains(&super::LIGHT_PROTOCOL));
        }
        if info.protocols.contains(&KAD_PROTOCOL) {
            for a in info.listen_addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
            }
        }
        // Bounded by the connection cap: only connected peers are kept (see `store_peers`).
        if info.protocols.contains(&STORE_PROTOCOL)
            && !self.store_peers.contains_key(&peer_id)
            && self.store_peers.len() < self.config.connections_max as usize
            && self.swarm.is_connected(&peer_id)
        {
            self.store_peers.insert(peer_id, peer_key(&peer_id));
            self.retarget();
        }
    }

    fn on_gossip(&mut self, source: PeerId, mid: gossipsub::MessageId, topic: TopicHash, data: Vec<u8>) {
        let verdict = self.admission.check(&source, &data, now_ms());
        let (acceptance, deliver) = match verdict {
            Verdict::Accept(env, id) => {
                self.counters.relayed += 1;
                self.light_feed(id, &env.header.topic, &data);
                (MessageAcceptance::Accept, Some(env))
            }
            Verdict::Reject(reason) => {
                self.counters.rejected += 1;
                debug!(%source, ?reason, %topic, "rejected envelope");
                (MessageAcceptance::Reject, None)
            }
            Verdict::Ignore(_) => {
                self.counters.ignored += 1;
                (MessageAcceptance::Ignore, None)
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&mid, &source, acceptance);
        if let Some(env) = deliver
            && self.subscribed.contains(&env.header.topic)
        {
            let outs = self.sync.handle(Input::Gossip { envelope: *env }, now_ms());
            self.apply(outs);
        }
    }

    fn on_store_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_store_request(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_store_response(request_id, &response);
                }
            },
            request_response::Event::OutboundFailure { request_id, peer, error, .. } => {
                debug!(%peer, %error, "store request failed");
                let ids = match self.outbound.remove(&request_id) {
                    Some((from, Outbound::Store(ids))) => ids.into_iter().map(|id| (from, id)).collect(),
                    Some((from, Outbound::StemStore(ids))) => {
                        for id in ids {
                            self.on_stem_store_answer(from, id, None);
                        }
                        vec![]
                    }
                    _ => vec![],
                };
                for (from, id) in ids {
                    let outs = self.sync.handle(Input::StoreFailed { id, from }, now_ms());
                    self.apply(outs);
                }
            }
            _ => {}
        }
    }

    /// An answer from a store node, decoded with the same limits as gossip (peer input).
    fn on_store_response(&mut self, request_id: OutboundRequestId, response: &[u8]) {
        let Some((from, kind)) = self.outbound.remove(&request_id) else { return };
        let limits = self.config.admission.limits;
        if let Outbound::Store(ids) = kind {
            self.on_store_acks(from, ids, Response::decode(response, &limits).ok());
            return;
        }
        if let Outbound::StemStore(ids) = kind {
            let answer = Response::decode(response, &limits).ok();
            for id in ids {
                self.on_stem_store_answer(from, id, answer.as_ref());
            }
            return;
        }
        if let Outbound::Erase(id) = kind {
            match Response::decode(response, &limits) {
                Ok(Response::Erased { id: got, outcome: EraseOutcome::Erased }) if got == id => {
                    self.counters.erasures_confirmed += 1;
                }
                other => debug!(%from, "erase of {} not confirmed: {:?}", id.short(), other),
            }
            return;
        }
        self.on_read_answer(from, kind, response); // pages and fetches by id: `resync.rs`
    }

    /// A store node's answer to our store request: each id counts as acknowledged only with
    /// a stored or duplicate outcome and a receipt that store node signed for that id; the
    /// receipt is kept in the local history (`receipt/<id>/<store>`).
    fn on_store_acks(&mut self, from: PeerId, ids: Vec<Id>, response: Option<Response>) {
        let mut valid: HashMap<Id, StoreReceipt> = HashMap::new();
        let mut full: Vec<Id> = Vec::new();
        if let Some(Response::Stored(acks)) = response {
            for a in acks {
                match (a.outcome, a.receipt) {
                    (StoreOutcome::Full, _) => full.push(a.id),
                    (StoreOutcome::NeedsWork { base_bits }, _) => {
                        // the price of this store now: the application mines for it
                        // (`work_bits`); meanwhile the send tries the other stores
                        let max = self.config.connections_max as usize;
                        self.demands.record(from, u32::from(base_bits), now_ms(), max);
                        full.push(a.id);
                    }
                    (StoreOutcome::Stored | StoreOutcome::Duplicate, Some(r)) if r.id == a.id => {
                        match r.verify(&from) {
                            Ok(()) => {
                                valid.insert(a.id, r);
                            }
                            Err(e) => debug!(%from, "store receipt refused: {e}"),
                        }
                    }
                    _ => {}
                }
            }
        }
        if !full.is_empty() {
            self.store_full(from, &full);
        }
        for id in ids {
            let input = match valid.remove(&id) {
                Some(r) => {
                    self.keep_receipt(&from, r);
                    Input::StoreAck { id, from }
                }
                None => Input::StoreFailed { id, from },
            };
            let outs = self.sync.handle(input, now_ms());
            self.apply(outs);
        }
    }
}
