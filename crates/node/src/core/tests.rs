use super::*;
use crate::model::DeliveryState;

fn conv() -> ConversationId {
    ConversationId([7; 32])
}

fn id(n: u8) -> Id {
    Id([n; 32])
}

fn acc(n: u8) -> AccountId {
    AccountId([n; 32])
}

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 32])
}

fn core_with_members(others: &[u8]) -> Core {
    let mut core = Core::new(CoreConfig::default());
    let others = others.iter().map(|n| acc(*n)).collect();
    core.handle(Input::Conversation { conv: conv(), epoch: 1, active: true, others, devices: 3 }, 0);
    core
}

#[test]
fn junk_never_becomes_a_head_and_is_discarded_after_its_hold() {
    let mut core = core_with_members(&[2, 3]);
    core.handle(Input::Sent { conv: conv(), id: id(1), parents: vec![], text: true }, 0);
    let fx = core.handle(
        Input::Unreadable { conv: conv(), id: id(66), parents: vec![id(1)], why: Unreadable::Junk },
        10,
    );
    assert!(fx.is_empty());
    assert_eq!(core.parents_for(&conv()), vec![id(1)], "junk is not a parent of the next message");
    let hold = core.config().quarantine_ms;
    let fx = core.handle(Input::Tick, 10 + hold);
    assert!(fx.contains(&Effect::Discard { conv: conv(), ids: vec![id(66)] }), "{fx:?}");
    assert_eq!(core.held(&conv()), 0);
}

#[test]
fn a_full_quarantine_discards_newcomers_not_earlier_envelopes() {
    let cfg = CoreConfig { quarantine_envelopes_max: 2, ..CoreConfig::default() };
    let mut core = Core::new(cfg);
    for n in 1..=2 {
        let fx = core.handle(
            Input::Unreadable { conv: conv(), id: id(n), parents: vec![], why: Unreadable::TooOld },
            0,
        );
        assert!(fx.is_empty());
    }
    let fx =
        core.handle(Input::Unreadable { conv: conv(), id: id(3), parents: vec![], why: Unreadable::Junk }, 0);
    assert_eq!(fx, vec![Effect::Discard { conv: conv(), ids: vec![id(3)] }]);
    assert!(core.holds(&conv(), &id(1)) && core.holds(&conv(), &id(2)));
}

#[test]
fn an_accepted_message_proves_its_unreadable_ancestors() {
    let mut core = core_with_members(&[2]);
    core.handle(Input::Unreadable { conv: conv(), id: id(1), parents: vec![], why: Unreadable::TooOld }, 0);
    core.handle(
        Input::Unreadable { conv: conv(), id: id(2), parents: vec![id(1)], why: Unreadable::TooOld },
        0,
    );
    core.handle(
        Input::Accepted {
            conv: conv(),
            id: id(3),
            parents: vec![id(2)],
            from: acc(2),
            device: dev(2),
            epoch: 1,
            text: true,
        },
        1,
    );
    assert_eq!(core.held(&conv()), 0, "both are proven history");
    assert!(core.knows(&conv(), &id(1)) && core.knows(&conv(), &id(2)));
    let fx = core.handle(Input::Tick, 1 + core.config().quarantine_ms);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Discard { .. })), "nothing proven is discarded");
}

#[test]
fn future_epoch_envelopes_are_reopened_at_the_next_epoch() {
    let mut core = core_with_members(&[2]);
    core.handle(
        Input::Unreadable { conv: conv(), id: id(5), parents: vec![], why: Unreadable::FutureEpoch },
        0,
    );
    let same =
        Input::Conversation { conv: conv(), epoch: 1, active: true, others: [acc(2)].into(), devices: 2 };
    assert!(core.handle(same, 1).is_empty(), "no new epoch, nothing to retry");
    let next =
        Input::Conversation { conv: conv(), epoch: 2, active: true, others: [acc(2)].into(), devices: 2 };
    assert_eq!(core.handle(next, 2), vec![Effect::Reopen { conv: conv(), ids: vec![id(5)] }]);
}

#[test]
fn delivery_waits_for_the_other_members_at_send_time() {
    let mut core = core_with_members(&[2, 3]);
    core.handle(Input::Sent { conv: conv(), id: id(1), parents: vec![], text: true }, 0);
    let fx = core.handle(Input::StoreAcks { id: id(1), acks: 2 }, 1);
    assert!(matches!(&fx[..], [Effect::Delivery { view, .. }] if view.state == DeliveryState::Stored));
    core.handle(Input::Receipt { from: acc(2), ids: vec![id(1)] }, 2);
    let fx = core.handle(Input::Receipt { from: acc(3), ids: vec![id(1), id(9)] }, 3);
    assert_eq!(fx.len(), 1, "an unknown id changes nothing");
    assert_eq!(core.delivery(&id(1)).map(|v| (v.state, v.delivered_to)), Some((DeliveryState::Delivered, 2)));
}

#[test]
fn receipts_go_to_each_sender_per_epoch_paced_and_forced_when_too_many_are_owed() {
    let cfg = CoreConfig { receipts_due_max: 3, ..CoreConfig::default() };
    let every = cfg.receipt_every_ms;
    let mut core = Core::new(cfg);
    let others: BTreeSet<AccountId> = (2..=10).map(acc).collect();
    core.handle(Input::Conversation { conv: conv(), epoch: 1, active: true, others, devices: 10 }, 0);
    let accept = |n: u8, from: u8, epoch: u64| Input::Accepted {
        conv: conv(),
        id: id(n),
        parents: vec![],
        from: acc(from),
        device: dev(from),
        epoch,
        text: true,
    };
    core.handle(accept(1, 2, 1), 1_000);
    core.handle(accept(2, 3, 1), 1_000);
    let fx = core.handle(Input::Tick, 1_000);
    assert_eq!(
        fx,
        vec![
            Effect::SendReceipt { conv: conv(), to: dev(2), epoch: 1, ids: vec![id(1)] },
            Effect::SendReceipt { conv: conv(), to: dev(3), epoch: 1, ids: vec![id(2)] },
        ],
        "one receipt per sender, nothing to the others"
    );
    core.handle(accept(4, 2, 2), 1_050);
    assert!(
        core.handle(Input::Tick, 1_000 + every - 1).iter().all(|e| !matches!(e, Effect::SendReceipt { .. }))
    );
    assert_eq!(core.receipts_due(&conv()), 1);
    let fx = core.handle(Input::Tick, 1_000 + every);
    assert_eq!(fx, vec![Effect::SendReceipt { conv: conv(), to: dev(2), epoch: 2, ids: vec![id(4)] }]);
    // Three owed at once: out without waiting for the pace.
    core.handle(accept(5, 2, 2), 1_000 + every + 1);
    core.handle(accept(6, 2, 2), 1_000 + every + 2);
    let fx = core.handle(accept(7, 2, 2), 1_000 + every + 3);
    assert_eq!(
        fx,
        vec![Effect::SendReceipt { conv: conv(), to: dev(2), epoch: 2, ids: vec![id(5), id(6), id(7)] }]
    );
}

#[test]
fn anchors_are_spaced_have_deadlines_and_only_grow() {
    let mut core = core_with_members(&[2]);
    core.handle(Input::Sent { conv: conv(), id: id(1), parents: vec![], text: false }, 0);
    let every = core.config().anchor_every_ms;
    let fx = core.handle(Input::Tick, every);
    let Some(Effect::Anchor { count, deadline_ms, .. }) =
        fx.into_iter().find(|e| matches!(e, Effect::Anchor { .. }))
    else {
        panic!("anchor due");
    };
    assert_eq!(count, 1);
    // In flight: no second submission before its deadline, even when due again.
    assert!(core.handle(Input::Tick, 2 * every).iter().all(|e| !matches!(e, Effect::Anchor { .. })));
    core.handle(Input::AnchorDone { conv: conv(), count, ok: true }, deadline_ms - 1);
    // Nothing new: nothing to anchor.
    assert!(core.handle(Input::Tick, 4 * every).iter().all(|e| !matches!(e, Effect::Anchor { .. })));
    core.handle(Input::Sent { conv: conv(), id: id(2), parents: vec![id(1)], text: false }, 4 * every);
    let fx = core.handle(Input::Tick, 5 * every);
    assert!(fx.iter().any(|e| matches!(e, Effect::Anchor { count: 2, head, .. } if *head == id(2))));
}

#[test]
fn a_new_ledger_height_syncs_active_conversations_once() {
    let mut core = core_with_members(&[2]);
    assert_eq!(core.handle(Input::Ledger { height: 5 }, 0), vec![Effect::SyncLedger { conv: conv() }]);
    assert!(core.handle(Input::Ledger { height: 5 }, 1).is_empty());
}

#[test]
fn an_unreadable_envelope_already_named_as_a_parent_is_history_at_once() {
    // After a restart the chain is read back before the local history: a child restored
    // from the chain rows names 1, which then arrives again and does not open (from before
    // this device joined). It is proven history, not junk held until it is discarded.
    let mut core = core_with_members(&[2]);
    core.restore_link(conv(), id(2), &[id(1)]);
    let fx = core.handle(
        Input::Unreadable { conv: conv(), id: id(1), parents: vec![id(0)], why: Unreadable::TooOld },
        0,
    );
    assert!(fx.is_empty());
    assert!(core.knows(&conv(), &id(1)) && core.held(&conv()) == 0);
    assert_eq!(core.take_proven(), vec![(conv(), id(1))], "the engine records it");
    assert!(core.take_proven().is_empty());
    // One in a future epoch is held to be read later, named or not.
    core.restore_link(conv(), id(4), &[id(3)]);
    core.handle(
        Input::Unreadable { conv: conv(), id: id(3), parents: vec![], why: Unreadable::FutureEpoch },
        0,
    );
    assert!(core.holds(&conv(), &id(3)) && !core.knows(&conv(), &id(3)));
    // The ancestors that the usual path proves are recorded too.
    core.handle(Input::Unreadable { conv: conv(), id: id(5), parents: vec![], why: Unreadable::TooOld }, 0);
    let accept = Input::Accepted {
        conv: conv(),
        id: id(6),
        parents: vec![id(5)],
        from: acc(2),
        device: dev(2),
        epoch: 1,
        text: false,
    };
    core.handle(accept, 0);
    assert_eq!(core.take_proven(), vec![(conv(), id(5))]);
}
