//! The simulation's events: the RPCs between nodes and the timers, ordered by simulated time
//! (ties in scheduling order, so a run is deterministic).

use std::cmp::Ordering;
use std::rc::Rc;

use cairn_proto::Id;

#[derive(Debug)]
pub(super) enum Rpc {
    Publish(u32),
    IHave(Rc<Vec<u32>>),
    IWant(Vec<u32>),
    IDontWant(u32),
    Graft,
    Prune,
    Stem(u32),
    Junk(usize),
    StoreReq(u32),
    StoreAck(u32),
    PageReq { topic: u32, from: u64, limit: u32 },
    Page { topic: u32, entries: Vec<(u64, u32)>, next: Option<u64> },
    IdsReq(Vec<Id>),
    Ids(Vec<u32>),
}

impl Rpc {
    pub(super) fn is_gossip(&self) -> bool {
        matches!(
            self,
            Rpc::Publish(_)
                | Rpc::IHave(_)
                | Rpc::IWant(_)
                | Rpc::IDontWant(_)
                | Rpc::Graft
                | Rpc::Prune
                | Rpc::Junk(_)
        )
    }
}

#[derive(Debug)]
pub(super) enum Kind {
    Rpc { from: u32, to: u32, rpc: Rpc },
    Heartbeat(u32),
    Send(u32),
    StemCheck(u32),
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
