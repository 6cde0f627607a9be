//! Serving as a store node: answers to `/cairn/store/1` requests. Store requests are checked
//! here and committed by the mailbox writer (answered once durable); page and id requests are
//! read from the mailbox and cut to the response frame limit.

use std::sync::mpsc::TrySendError;

use cairn_proto::{Envelope, Id, Topic, pow};
use cairn_store::Store;
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tracing::debug;

use super::actor::Node;
use super::now_ms;
use super::writer::MailboxJob;
use crate::wire::{RESPONSE_BYTES_MAX, Request, Response, StoreOutcome};

/// Bytes reserved for a response's framing and header when filling it with envelopes.
const RESPONSE_OVERHEAD_BYTES: usize = 64;

impl Node {
    pub(super) fn on_store_request(
        &mut self,
        peer: PeerId,
        request: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let limits = self.config.admission.limits;
        let Some(mailbox) = self.mailbox.clone() else {
            self.respond(channel, Response::Error("not a store node".into()));
            return;
        };
        let resp = match Request::decode(&request, &limits) {
            Err(e) => {
                debug!(%peer, "bad store request: {e}");
                Response::Error(format!("bad request: {e}"))
            }
            Ok(Request::Store(env)) => match self.admit_for_storage(env, channel) {
                Some((channel, resp)) => {
                    self.respond(channel, resp);
                    return;
                }
                None => return, // answered by the mailbox writer once committed
            },
            Ok(Request::Page { topic, from, limit }) => page(&mailbox, &topic, from, limit),
            Ok(Request::Ids(ids)) => by_ids(&mailbox, ids),
        };
        self.respond(channel, resp);
    }

    fn respond(&mut self, channel: ResponseChannel<Vec<u8>>, resp: Response) {
        let _ = self.swarm.behaviour_mut().store.send_response(channel, resp.encode());
    }

    /// Checks an envelope offered for storage and queues it for the mailbox writer; returns
    /// an immediate answer when it is refused or the queue is full (`MAILBOX_JOBS_MAX`).
    fn admit_for_storage(
        &mut self,
        env: Envelope,
        channel: ResponseChannel<Vec<u8>>,
    ) -> Option<(ResponseChannel<Vec<u8>>, Response)> {
        let h = &env.header;
        let a = &self.config.admission;
        if env.payload.is_none()
            || !pow::check(h, a.difficulty)
            || h.timestamp_ms > now_ms() + a.future_skew_ms_max
            || h.ttl_secs > a.ttl_secs_max
        {
            return Some((channel, Response::Stored(env.id(), StoreOutcome::Refused)));
        }
        let Some(tx) = &self.mailbox_jobs else {
            return Some((channel, Response::Error("store is shutting down".into())));
        };
        match tx.try_send(MailboxJob { channel, envelope: env }) {
            Ok(()) => None,
            Err(TrySendError::Full(j)) => {
                self.counters.requests_shed += 1;
                Some((j.channel, Response::Error("store node busy; retry later".into())))
            }
            Err(TrySendError::Disconnected(j)) => {
                Some((j.channel, Response::Error("store is shutting down".into())))
            }
        }
    }
}

/// A page of `topic` from `from`, cut to the response limit (the cursor resumes after the cut).
fn page(mailbox: &Store, topic: &Topic, from: u64, limit: u32) -> Response {
    match mailbox.page(topic, from, limit as usize) {
        Ok(mut page) => {
            let mut bytes = RESPONSE_OVERHEAD_BYTES;
            let mut keep = 0;
            for (_, e) in &page.entries {
                bytes += 16 + e.encode().len();
                if bytes > RESPONSE_BYTES_MAX {
                    break;
                }
                keep += 1;
            }
            if keep < page.entries.len() {
                page.next = Some(page.entries[keep].0);
                page.entries.truncate(keep);
            }
            Response::Page { entries: page.entries, next: page.next }
        }
        Err(e) => Response::Error(e.to_string()),
    }
}

/// The envelopes found among `ids` (at most `IDS_PER_REQUEST_MAX`, checked by the decoder),
/// as many as fit the response limit.
fn by_ids(mailbox: &Store, ids: Vec<Id>) -> Response {
    let mut found = Vec::new();
    let mut bytes = RESPONSE_OVERHEAD_BYTES;
    for id in ids {
        if let Ok(Some(e)) = mailbox.get(&id) {
            bytes += 8 + e.encode().len();
            if bytes > RESPONSE_BYTES_MAX {
                break;
            }
            found.push(e);
        }
    }
    Response::Envelopes(found)
}
