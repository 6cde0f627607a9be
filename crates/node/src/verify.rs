//! `verify`: every signature, hash link and the ledger anchor of a conversation's local
//! history, checked against the plaintexts this device kept.

use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::LedgerClient;
use cairn_ledger::state::{AnchorRecord, StateKey};
use cairn_mls::ConversationId;
use cairn_proto::history::{Opener, Problem};
use cairn_proto::{Anchor, Envelope, Id, VerifyOptions};

use crate::db::NodeDb;
use crate::error::NodeError;
use crate::model::VerifyView;
use crate::shell::Shared;
use crate::shell::ledger::{read_retry, unavailable};

/// Envelopes of one history verified at most (a history longer than this is refused with a
/// clear error rather than read into memory whole).
pub const VERIFY_ENVELOPES_MAX: usize = 1_000_000;

/// Opens payloads from the plaintexts kept at receipt.
struct KeptOpener<'a> {
    db: &'a NodeDb,
}

impl Opener for KeptOpener<'_> {
    fn open(&mut self, envelope: &Envelope, _payload: &[u8]) -> Result<Vec<u8>, String> {
        match self.db.plain(&envelope.id()) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err("not readable on this device".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn describe(p: &Problem, entries: &[(Id, Envelope)]) -> String {
    let name = |i: usize| entries.get(i).map(|(id, _)| id.to_hex()).unwrap_or_else(|| format!("#{i}"));
    match p {
        Problem::IdMismatch { index, .. } => {
            format!("envelope {}: id does not match its header", name(*index))
        }
        other => format!("{other:?}"),
    }
}

/// Verifies `conv`'s local history (blocking: ledger proof and disk reads).
pub fn verify(genesis: &Genesis, shared: &Shared, conv: ConversationId) -> Result<VerifyView, NodeError> {
    let topic = conv.topic();
    let mut client = LedgerClient::new(genesis).map_err(unavailable)?;
    let anchor = read_retry(|| client.prove(&StateKey::Anchor(topic)))
        .map_err(unavailable)?
        .map(|b| AnchorRecord::decode(&b).map_err(|e| NodeError::Internal(e.to_string())))
        .transpose()?;
    let history = shared.net.history();
    let mut entries: Vec<(Id, Envelope)> = Vec::new();
    let mut from = 0;
    loop {
        let page = history.page(&topic, from, 256).map_err(|e| NodeError::Storage(e.to_string()))?;
        for (_, mut env) in page.entries {
            let id = env.id();
            // Envelopes from before this device joined: structure only.
            if !shared.db.has_plain(&id)? {
                env.erase();
            }
            entries.push((id, env));
        }
        if entries.len() > VERIFY_ENVELOPES_MAX {
            return Err(NodeError::BadRequest(format!(
                "the history holds over {VERIFY_ENVELOPES_MAX} envelopes: too long to verify at once"
            )));
        }
        match page.next {
            Some(n) => from = n,
            None => break,
        }
    }
    // A salted conversation anchors keyed hashes of heads: map each back to its local id. One
    // that names no local envelope is checked as it is (and reported missing).
    let salt = shared.db.anchor_salt(&conv.0)?;
    let local: Vec<Id> =
        if salt.is_some() { entries.iter().map(|(id, _)| *id).collect() } else { Vec::new() };
    let anchors: Vec<Anchor> = anchor
        .iter()
        .map(|a| {
            let head = match &salt {
                Some(_) => crate::anchor_salts::unsalt(salt.as_ref(), &a.head, &local).unwrap_or(a.head),
                None => a.head,
            };
            Anchor { head, count: a.count }
        })
        .collect();
    let mut opener = KeptOpener { db: &shared.db };
    let report = cairn_proto::verify(
        &topic,
        &entries,
        VerifyOptions {
            opener: Some(&mut opener),
            members: None,
            anchors: &anchors,
            limits: *shared.db.limits(),
        },
    );
    Ok(VerifyView {
        intact: report.is_intact(),
        envelopes: report.envelopes,
        signatures_verified: report.signatures_verified,
        anchors: anchors.len(),
        erased: report.erased.len(),
        first_problem: report.problems.first().map(|p| describe(p, &entries)),
        problems: report.problems.len(),
    })
}
