//! The simulation's events: the RPCs between nodes and the timers, ordered by simulated time
//! (ties in scheduling order, so a run is deterministic).

use std::cmp::Ordering;
use std::rc::Rc;

use cairn_proto::Id;

/// How a full message came to be sent by gossip (for the byte breakdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// Published by its originator or a fluffing stem hop (flood publish).
    Origin,
    /// Eager push to a mesh peer.
    Forward,
    /// Answer to an IWANT.
    IWant,
}

/// What the bytes of an RPC are counted as, in [`super::report::Report::bytes_by_kind`].
pub(super) const KINDS: [&str; 16] = [
    "publish",
    "mesh push",
    "iwant answer",
    "ihave",
    "iwant",
    "idontwant",
    "sub/graft/prune",
    "stem",
    "store push",
    "store ack",
    "page request",
    "page",
    "ids request",
    "ids answer",
    "junk",
    "id page",
];

#[derive(Debug)]
pub(super) enum Rpc {
    Publish(u32, Via),
    IHave(Rc<Vec<u32>>),
    IWant(Vec<u32>),
    IDontWant(u32),
    /// The sender's subscription to the topic, sent as a connection opens.
    Subscribe,
    Graft,
    Prune,
    Stem(u32),
    /// A store receipt for a stemmed message, from the fluffing hop back to its originator.
    StemAnswer(u32, u32),
    Junk(usize),
    StoreReq(u32),
    StoreAck(u32),
    PageReq {
        topic: u32,
        from: u64,
        limit: u32,
    },
    Page {
        topic: u32,
        entries: Vec<(u64, u32)>,
        next: Option<u64>,
    },
    IdsReq(Vec<Id>),
    Ids(Vec<u32>),
    PageIdsReq {
        topic: u32,
        from: u64,
        limit: u32,
    },
    PageIds {
        topic: u32,
        entries: Vec<(u64, u32)>,
        next: Option<u64>,
    },
}

impl Rpc {
    /// Index of this RPC's kind in [`KINDS`].
    pub(super) fn kind(&self) -> usize {
        match self {
            Rpc::Publish(_, Via::Origin) => 0,
            Rpc::Publish(_, Via::Forward) => 1,
            Rpc::Publish(_, Via::IWant) => 2,
            Rpc::IHave(_) => 3,
            Rpc::IWant(_) => 4,
            Rpc::IDontWant(_) => 5,
            Rpc::Subscribe | Rpc::Graft | Rpc::Prune => 6,
            Rpc::Stem(_) | Rpc::StemAnswer(..) => 7,
            Rpc::StoreReq(_) => 8,
            Rpc::StoreAck(_) => 9,
            Rpc::PageReq { .. } | Rpc::PageIdsReq { .. } => 10,
            Rpc::Page { .. } => 11,
            Rpc::IdsReq(_) => 12,
            Rpc::Ids(_) => 13,
            Rpc::Junk(_) => 14,
            Rpc::PageIds { .. } => 15,
        }
    }

    pub(super) fn is_gossip(&self) -> bool {
        matches!(
            self,
            Rpc::Publish(..)
                | Rpc::IHave(_)
                | Rpc::IWant(_)
                | Rpc::IDontWant(_)
                | Rpc::Subscribe
                | Rpc::Graft
                | Rpc::Prune
                | Rpc::Junk(_)
        )
    }
}

#[derive(Debug)]
pub(super) enum Kind {
    Rpc {
        from: u32,
        to: u32,
        rpc: Rpc,
    },
    Heartbeat(u32),
    Send(u32),
    StemCheck(u32),
    /// The originator's wait for a stemmed message's receipts ends.
    StemDeadline(u32),
    Churn,
    Rejoin(u32),
    Flood(u32),
    Resync(u32),
}

#[derive(Debug)]
pub(super) struct Ev {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: the heap pops the earliest event first, ties in scheduling order.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}
