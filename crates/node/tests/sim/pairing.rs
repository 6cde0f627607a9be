//! Regression test (commit 143e1be): messages released from the future-epoch buffer by one
//! sync are each stored under the envelope they were decrypted from, even when their headers
//! are equal (`cairn_mls::Delivered::wire` pairs them; the header alone cannot).

use cairn_mls::ConversationId;
use cairn_node::db::Stored;
use cairn_node::engine::{Arrival, Commit, KIND_TEXT};
use cairn_proto::Id;

use crate::world::{Faults, World};

fn rows(w: &mut World, u: usize, conv: ConversationId) -> Vec<Stored> {
    w.engine(u).db().messages(&conv.0, 0, 100).expect("messages")
}

/// Two members send with equal timestamps and equal parents into an epoch two receivers have
/// not reached. Each receiver gets both envelopes in one burst (in opposite orders, so one of
/// them gets them in the opposite of the order its quarantine lists them), holds both as
/// future-epoch, and the one sync that burst causes releases both. Each must be stored under
/// its own envelope id with its own text and sender: paired by the header, the receiver whose
/// arrival order differs from the id order stored each text under the other's envelope.
#[test]
fn messages_released_together_keep_their_own_envelopes() {
    let mut w = World::new(77, 6, Faults { loss: 0, dup: 0, delay_ms_max: 5 });
    let kps = (1..5).map(|u| w.key_package(u)).collect();
    let (now, mut seq) = (w.now_ms, w.seq.clone());
    let (conv, state) = w.engine(0).create(kps, &mut seq, now).expect("create");
    assert_eq!(state, Commit::Done);
    w.drain(0);
    let until = w.now_ms + 1_500;
    w.run_until(until, 100);
    // A message everyone reads: the parent both senders will name.
    let (now, mut seq) = (w.now_ms, w.seq.clone());
    let first = w.engine(0).send_text(conv, "first", &mut seq, now).expect("send");
    let first = Id::from_hex(&first.id).expect("hex id");
    w.drain(0);
    let until = w.now_ms + 1_500;
    w.run_until(until, 100);
    for u in 1..5 {
        assert_eq!(rows(&mut w, u, conv).len(), 1, "user {u} read the first message");
    }

    // From here the network loses everything and no one ticks: the test hands each envelope.
    w.faults = Faults { loss: 1_000, dup: 0, delay_ms_max: 1 };
    let kp = w.key_package(5);
    let (now, mut seq) = (w.now_ms, w.seq.clone());
    let state = w.engine(0).add(conv, vec![kp], &mut seq, now).expect("add");
    assert_eq!(state, Commit::Done);
    w.drain(0);
    let epoch = w.engine(0).mls().epoch(&conv).expect("epoch");
    let mut sent = Vec::new();
    for u in [1, 2] {
        w.engine(u).sync(&conv, &mut seq, now);
        w.drain(u);
        assert_eq!(w.engine(u).mls().epoch(&conv).expect("epoch"), epoch, "sender {u} is in the new epoch");
        let text = format!("from user {u}");
        let r = w.engine(u).send_text(conv, &text, &mut seq, now).expect("send");
        w.drain(u);
        let id = Id::from_hex(&r.id).expect("hex id");
        let env = w.published.iter().find(|e| e.id() == id).cloned().expect("published");
        sent.push((u, text, Arrival { id, envelope: env, after_gap: false }));
    }
    let (a, b) = (&sent[0].2.envelope.header, &sent[1].2.envelope.header);
    assert_eq!((a.topic, a.timestamp_ms, &a.parents), (b.topic, b.timestamp_ms, &b.parents), "equal headers");
    assert_eq!(a.parents, vec![first]);
    assert_ne!(sent[0].2.id, sent[1].2.id);

    for (r, order) in [(3, [0, 1]), (4, [1, 0])] {
        assert!(w.engine(r).mls().epoch(&conv).expect("epoch") < epoch, "receiver {r} is behind");
        let burst = order.iter().map(|&i| sent[i].2.clone()).collect();
        w.receive(r, burst);
        assert_eq!(w.engine(r).mls().epoch(&conv).expect("epoch"), epoch, "receiver {r} synced");
        let stored = rows(&mut w, r, conv);
        assert_eq!(stored.len(), 3, "receiver {r} stored both messages");
        for (u, text, arrival) in &sent {
            let row = stored.iter().find(|m| m.id == arrival.id).expect("stored under its envelope id");
            let body = row.message.body.split_first();
            assert_eq!(
                body,
                Some((&KIND_TEXT, text.as_bytes())),
                "receiver {r}: text under {}",
                arrival.id.short()
            );
            assert_eq!(
                row.message.sender.account,
                w.users[*u].id.account(),
                "receiver {r}: sender of {text}"
            );
        }
    }
}
