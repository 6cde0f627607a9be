//! Verification of a conversation's signed, hash-linked history.
//!
//! A history is a DAG of envelopes: each names the heads its sender had seen. [`verify`] is pure:
//! give it the envelopes in the order they are stored, and optionally a way to open payloads and
//! the anchors published on the ledger; it reports every problem it finds, in order, and never
//! panics. Concurrent branches that merge later are normal and accepted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use crate::envelope::{Envelope, Limits};
use crate::id::{Id, Topic, domain, hash};
use crate::identity::{AccountId, DeviceCert};
use crate::message::Message;

/// A head published on the ledger: the id of a chain head and how many envelopes it covers
/// (itself and all its ancestors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Anchored head id.
    pub head: Id,
    /// Number of envelopes in the head's ancestry, itself included.
    pub count: u64,
}

/// Turns a payload into the encoded inner [`Message`] (decrypting, once MLS is in place).
pub trait Opener {
    /// Opens one payload; an error string says why it could not be read.
    fn open(&mut self, envelope: &Envelope, payload: &[u8]) -> Result<Vec<u8>, String>;
}

/// Opener for unencrypted, padded payloads.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainOpener;

impl Opener for PlainOpener {
    fn open(&mut self, _: &Envelope, payload: &[u8]) -> Result<Vec<u8>, String> {
        crate::envelope::unpad(payload).map(<[u8]>::to_vec).map_err(|e| e.to_string())
    }
}

/// One thing wrong with a history. `index` is the position in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The stored id is not the hash of the header: a header byte changed.
    IdMismatch {
        /// Position.
        index: usize,
        /// Id it was stored under.
        claimed: Id,
        /// Hash of the header as found.
        actual: Id,
    },
    /// The payload does not hash to the header's payload hash: a payload byte changed.
    PayloadHashMismatch {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
    },
    /// The envelope belongs to another conversation.
    WrongTopic {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
    },
    /// The same envelope appears again (a replay).
    Replayed {
        /// Position of the repeat.
        index: usize,
        /// Envelope id.
        id: Id,
        /// Position of the first copy.
        first_index: usize,
    },
    /// An envelope appears before one of its parents.
    Reordered {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
        /// Parent stored later.
        parent: Id,
    },
    /// A referenced ancestor (or an anchored head) is missing.
    Gap {
        /// The envelope naming it (`None` for an anchor).
        child: Option<Id>,
        /// The missing id.
        missing: Id,
    },
    /// An anchor's head is present but its ancestry has another size.
    AnchorCountMismatch {
        /// Anchored head.
        head: Id,
        /// Count on the ledger.
        anchored: u64,
        /// Count found.
        found: u64,
    },
    /// The payload could not be opened or decoded.
    Unreadable {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
        /// Why.
        reason: String,
    },
    /// The inner message's certificate or signature does not verify (forged signer).
    BadSignature {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
        /// Why.
        reason: String,
    },
    /// The signed inner message disagrees with the clear header.
    HeaderMismatch {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
        /// Field that differs.
        field: &'static str,
    },
    /// Validly signed, but by an account that is not a member.
    UnknownSigner {
        /// Position.
        index: usize,
        /// Envelope id.
        id: Id,
        /// The signing account.
        account: AccountId,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IdMismatch { index, claimed, actual } => write!(
                f,
                "envelope #{index} stored as {} hashes to {}: its header was altered",
                claimed.short(),
                actual.short()
            ),
            Self::PayloadHashMismatch { index, id } => {
                write!(f, "envelope #{index} {}: payload was altered", id.short())
            }
            Self::WrongTopic { index, id } => {
                write!(f, "envelope #{index} {} belongs to another conversation", id.short())
            }
            Self::Replayed { index, id, first_index } => {
                write!(f, "envelope #{index} {} replays envelope #{first_index}", id.short())
            }
            Self::Reordered { index, id, parent } => {
                write!(f, "envelope #{index} {} comes before its parent {}", id.short(), parent.short())
            }
            Self::Gap { child: Some(c), missing } => {
                write!(f, "gap: {} names missing parent {}", c.short(), missing.short())
            }
            Self::Gap { child: None, missing } => {
                write!(f, "gap: anchored head {} is missing", missing.short())
            }
            Self::AnchorCountMismatch { head, anchored, found } => write!(
                f,
                "anchored head {} covers {anchored} envelopes on the ledger but {found} here",
                head.short()
            ),
            Self::Unreadable { index, id, reason } => {
                write!(f, "envelope #{index} {} unreadable: {reason}", id.short())
            }
            Self::BadSignature { index, id, reason } => {
                write!(f, "envelope #{index} {}: {reason}", id.short())
            }
            Self::HeaderMismatch { index, id, field } => {
                write!(f, "envelope #{index} {}: signed {field} differs from the header", id.short())
            }
            Self::UnknownSigner { index, id, account } => {
                write!(f, "envelope #{index} {} signed by non-member {account}", id.short())
            }
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Envelopes examined.
    pub envelopes: usize,
    /// Inner messages whose signatures verified.
    pub signatures_verified: usize,
    /// Envelopes whose payload was erased (structure still checked).
    pub erased: Vec<Id>,
    /// Current heads: envelopes no other envelope names as parent.
    pub heads: Vec<Id>,
    /// Every problem, in input order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True if no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What to check besides structure.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// Opens payloads to check signatures; `None` checks structure only.
    pub opener: Option<&'a mut dyn Opener>,
    /// Accounts allowed to sign; `None` accepts any validly certified account.
    pub members: Option<&'a HashSet<AccountId>>,
    /// Heads anchored on the ledger: each must be present with the anchored ancestry size.
    pub anchors: &'a [Anchor],
    /// Decoding limits for inner messages.
    pub limits: Limits,
}

/// Verifies a conversation's history: `entries` are `(stored id, envelope)` in stored order.
pub fn verify(topic: &Topic, entries: &[(Id, Envelope)], mut opts: VerifyOptions<'_>) -> Report {
    let mut report = Report { envelopes: entries.len(), ..Report::default() };
    let mut first_at: HashMap<Id, usize> = HashMap::with_capacity(entries.len());
    let ids: Vec<Id> = entries.iter().map(|(_, e)| e.id()).collect();
    for (i, id) in ids.iter().enumerate() {
        first_at.entry(*id).or_insert(i);
    }
    let mut named_as_parent: HashSet<Id> = HashSet::new();
    let mut certs_ok: HashSet<DeviceCert> = HashSet::new();
    for (i, ((claimed, env), id)) in entries.iter().zip(&ids).enumerate() {
        let id = *id;
        if *claimed != id {
            report.problems.push(Problem::IdMismatch { index: i, claimed: *claimed, actual: id });
        }
        if let Some(&first) = first_at.get(&id)
            && first != i
        {
            report.problems.push(Problem::Replayed { index: i, id, first_index: first });
            continue;
        }
        if env.header.topic != *topic {
            report.problems.push(Problem::WrongTopic { index: i, id });
        }
        for p in &env.header.parents {
            named_as_parent.insert(*p);
            match first_at.get(p) {
                None => report.problems.push(Problem::Gap { child: Some(id), missing: *p }),
                Some(&at) if at > i => {
                    report.problems.push(Problem::Reordered { index: i, id, parent: *p });
                }
                Some(_) => {}
            }
        }
        check_payload(i, id, env, &mut opts, &mut certs_ok, &mut report);
    }
    let mut heads: BTreeSet<Id> = BTreeSet::new();
    for id in first_at.keys() {
        if !named_as_parent.contains(id) {
            heads.insert(*id);
        }
    }
    report.heads = heads.into_iter().collect();
    check_anchors(entries, &ids, &first_at, opts.anchors, &mut report);
    report
}

fn check_payload(
    i: usize,
    id: Id,
    env: &Envelope,
    opts: &mut VerifyOptions<'_>,
    certs_ok: &mut HashSet<DeviceCert>,
    report: &mut Report,
) {
    let Some(payload) = &env.payload else {
        report.erased.push(id);
        return;
    };
    if payload.len() != env.header.payload_len as usize
        || hash(domain::PAYLOAD, payload) != env.header.payload_hash
    {
        report.problems.push(Problem::PayloadHashMismatch { index: i, id });
        return;
    }
    let Some(opener) = opts.opener.as_deref_mut() else { return };
    let inner = match opener.open(env, payload) {
        Ok(b) => b,
        Err(reason) => {
            report.problems.push(Problem::Unreadable { index: i, id, reason });
            return;
        }
    };
    let msg = match Message::decode(&inner, &opts.limits) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(Problem::Unreadable { index: i, id, reason: e.to_string() });
            return;
        }
    };
    // A device certificate recurs on every message of that device: verify it once. The cache
    // holds whole certificates (every field compared), so a look-alike misses.
    let cert_known = certs_ok.contains(&msg.sender);
    let checked = if cert_known { msg.verify_signature_only() } else { msg.verify() };
    if checked.is_ok() && !cert_known {
        certs_ok.insert(msg.sender);
    }
    if let Err(e) = checked {
        report.problems.push(Problem::BadSignature { index: i, id, reason: e.to_string() });
        return;
    }
    if let Some(field) = msg.header_mismatch(&env.header) {
        report.problems.push(Problem::HeaderMismatch { index: i, id, field });
        return;
    }
    if let Some(members) = opts.members
        && !members.contains(&msg.sender.account)
    {
        report.problems.push(Problem::UnknownSigner { index: i, id, account: msg.sender.account });
        return;
    }
    report.signatures_verified += 1;
}

fn check_anchors(
    entries: &[(Id, Envelope)],
    ids: &[Id],
    first_at: &HashMap<Id, usize>,
    anchors: &[Anchor],
    report: &mut Report,
) {
    for anchor in anchors {
        if !first_at.contains_key(&anchor.head) {
            report.problems.push(Problem::Gap { child: None, missing: anchor.head });
            continue;
        }
        // Count the anchored head's ancestry that is present (bounded by the input size).
        let mut seen: HashSet<Id> = HashSet::new();
        let mut stack = vec![anchor.head];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(&at) = first_at.get(&id) {
                debug_assert_eq!(ids[at], id);
                stack.extend(entries[at].1.header.parents.iter().copied());
            }
        }
        let found = seen.iter().filter(|id| first_at.contains_key(id)).count() as u64;
        if found != anchor.count {
            report.problems.push(Problem::AnchorCountMismatch {
                head: anchor.head,
                anchored: anchor.count,
                found,
            });
        }
    }
}
