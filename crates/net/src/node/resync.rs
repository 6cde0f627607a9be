//! Reading from store nodes: page requests leave as pages of ids or of whole envelopes, as
//! [`crate::sync::Sync::page_ids_limit`] decides, and their answers (and those of fetches by
//! id) go back to the state machine. The decisions are all in `sync/by_ids.rs`.

use cairn_proto::Topic;
use cairn_proto::codec::DecodeError;
use libp2p::PeerId;
use tracing::debug;

use super::actor::{Node, Outbound};
use super::now_ms;
use crate::sync::Input;
use crate::wire::{Request, Response};

/// What anti-entropy read from store nodes, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResyncStatus {
    /// Pages of ids answered.
    pub id_pages: u64,
    /// Ids listed in them.
    pub ids_listed: u64,
    /// Pages of ids refused (an error answer, or one that does not decode): the store node is
    /// paged whole envelopes for a while.
    pub id_pages_refused: u64,
    /// Pages of whole envelopes answered.
    pub whole_pages: u64,
    /// Envelopes in them.
    pub envelopes_paged: u64,
    /// Envelopes received in answers to fetches by id (listed ids and missing ancestors).
    pub envelopes_fetched: u64,
    /// Bytes of those answers.
    pub fetched_bytes: u64,
}

impl Node {
    /// Sends a page request to a store node: a page of ids, or of whole envelopes.
    pub(super) fn request_page(&mut self, to: PeerId, topic: Topic, from: u64, limit: u32) {
        match self.sync.page_ids_limit(&topic, &to) {
            Some(ids) => {
                let _ =
                    self.request(to, Request::PageIds { topic, from, limit: ids }, Outbound::PageIds(topic));
            }
            None => {
                let _ = self.request(to, Request::Page { topic, from, limit }, Outbound::Page(topic));
            }
        }
    }

    /// An answer to a page (of ids or envelopes) or a fetch by id, decoded with the same limits
    /// as gossip (peer input). Other kinds are not read here.
    pub(super) fn on_read_answer(&mut self, from: PeerId, kind: Outbound, response: &[u8]) {
        let decoded = Response::decode(response, &self.config.admission.limits);
        let r = &mut self.resync;
        let input = match (decoded, kind) {
            (Ok(Response::PageIds { entries, next }), Outbound::PageIds(topic)) => {
                r.id_pages += 1;
                r.ids_listed += entries.len() as u64;
                Input::PageIds { topic, from, entries, next }
            }
            (other, Outbound::PageIds(topic)) => {
                r.id_pages_refused += 1;
                debug!(%from, "page of ids refused: {:?}", refusal(&other));
                Input::PageIdsRefused { topic, from }
            }
            (Ok(Response::Page { entries, next }), Outbound::Page(topic)) => {
                r.whole_pages += 1;
                r.envelopes_paged += entries.len() as u64;
                Input::Page { topic, from, entries, next }
            }
            (Ok(Response::Envelopes(envelopes)), Outbound::Ids) => {
                r.envelopes_fetched += envelopes.len() as u64;
                r.fetched_bytes += response.len() as u64;
                Input::Envelopes { from, envelopes }
            }
            (other, _) => {
                debug!(%from, "unusable store response: {:?}", other.map(|_| ()));
                return;
            }
        };
        let outs = self.sync.handle(input, now_ms());
        self.apply(outs);
    }
}

/// Why a page of ids was refused, for the log.
fn refusal(answer: &Result<Response, DecodeError>) -> String {
    match answer {
        Ok(Response::Error(m)) => m.clone(),
        Ok(_) => "an answer of another kind".into(),
        Err(e) => e.to_string(),
    }
}
