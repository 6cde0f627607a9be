#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Policy contracts: the shipped moderation policy (roles, rate limit, word filter) and echo
//! bot, verdicts that do not depend on arrival order, handshakes judged identically, and
//! hostile policies that end in `Hold` instead of hanging a node.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_contracts::policy::{
    Failure, GroupChange, HandshakeEvent, MessageEvent, POLICY_FUEL, Policy, PolicyPin, Verdict,
    policy_runtime,
};
use cairn_contracts::shipped_policy::{echo_bot, moderation};
use cairn_contracts::{Runtime, Trap, UploadError, code_hash};

const ADMIN: [u8; 32] = [1; 32];
const BOB: [u8; 32] = [2; 32];
const CAROL: [u8; 32] = [3; 32];
const GROUP: [u8; 32] = [9; 32];

fn rt() -> Arc<Runtime> {
    Arc::new(policy_runtime())
}

fn config() -> moderation::Config {
    moderation::Config {
        admins: vec![ADMIN],
        max_messages: 3,
        window_ms: 10_000,
        words: vec!["Spam".into()],
        deny_filtered: false,
    }
}

fn moderation_policy(rt: &Arc<Runtime>, c: &moderation::Config) -> Policy {
    Policy::new(rt.clone(), c.pin().unwrap(), moderation::WASM).unwrap()
}

fn msg(sender: [u8; 32], seq: u64, ts: u64, text: &str) -> MessageEvent {
    let mut id = [0u8; 32];
    id[..32].copy_from_slice(&sender);
    id[24..].copy_from_slice(&seq.to_be_bytes());
    MessageEvent {
        id,
        group: GROUP,
        epoch: 3,
        sender_account: sender,
        sender_device: sender,
        sender_seq: seq,
        ts,
        content_type: 1,
        body: text.as_bytes().to_vec(),
    }
}

fn hs(proposer: [u8; 32], change: GroupChange) -> HandshakeEvent {
    HandshakeEvent { group: GROUP, epoch: 4, proposer, change }
}

#[test]
fn roles_let_admins_add_and_remove_and_refuse_everyone_else() {
    let rt = rt();
    let p = moderation_policy(&rt, &config());
    let allowed = |ev: HandshakeEvent| p.on_handshake(&ev).decision;
    assert_eq!(allowed(hs(ADMIN, GroupChange::Remove(BOB))), Ok(()));
    assert_eq!(allowed(hs(ADMIN, GroupChange::Add(CAROL))), Ok(()));
    assert_eq!(allowed(hs(ADMIN, GroupChange::ChangePolicy([5; 32]))), Ok(()));
    assert_eq!(allowed(hs(BOB, GroupChange::Remove(ADMIN))), Err("only an admin may remove members".into()));
    assert_eq!(allowed(hs(BOB, GroupChange::Add(CAROL))), Err("only an admin may add members".into()));
    assert_eq!(
        allowed(hs(BOB, GroupChange::ChangePolicy([5; 32]))),
        Err("only an admin may change the policy".into())
    );
    // leaving and key updates are anyone's
    assert_eq!(allowed(hs(BOB, GroupChange::Remove(BOB))), Ok(()));
    assert_eq!(allowed(hs(BOB, GroupChange::Other)), Ok(()));
    // with no admins configured the roles rule is off
    let open = moderation_policy(&rt, &moderation::Config { admins: vec![], ..config() });
    assert_eq!(open.on_handshake(&hs(BOB, GroupChange::Remove(ADMIN))).decision, Ok(()));
    // every member's node refuses the same removal with the same reason and fuel
    let members: Vec<Policy> = (0..4).map(|_| moderation_policy(&rt, &config())).collect();
    let answers: Vec<_> =
        members.iter().map(|m| m.on_handshake(&hs(BOB, GroupChange::Remove(CAROL)))).collect();
    assert!(answers[0].decision.is_err());
    assert!(answers[0].fuel_used > 0);
    assert!(answers.iter().all(|a| *a == answers[0]));
}

#[test]
fn rate_limit_and_word_filter_verdicts() {
    let rt = rt();
    let mut p = moderation_policy(&rt, &config());
    let mut verdicts = Vec::new();
    for (seq, ts) in [0u64, 1_000, 2_000, 3_000, 12_000].into_iter().enumerate() {
        let j = p.on_message(msg(BOB, seq as u64, ts, "hello"));
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].failure, None);
        verdicts.push(j[0].verdict.clone());
    }
    let limited = Verdict::Deny("rate limit: at most 3 messages per 10 s".into());
    assert_eq!(verdicts, vec![Verdict::Allow, Verdict::Allow, Verdict::Allow, limited, Verdict::Allow]);
    // another sender has its own budget; a filtered word (any case) is held
    let j = p.on_message(msg(CAROL, 0, 2_500, "buy SPAM now"));
    assert_eq!(j[0].verdict, Verdict::Hold);
    assert_eq!(j[0].failure, None, "held by the filter, not by a failure");
    let mut deny = moderation_policy(&rt, &moderation::Config { deny_filtered: true, ..config() });
    assert_eq!(deny.on_message(msg(CAROL, 0, 0, "spam!"))[0].verdict, Verdict::Deny("filtered word".into()));
    // a non-text message is not filtered
    let mut m = msg(ADMIN, 0, 0, "spam");
    m.content_type = 2;
    assert_eq!(p.on_message(m)[0].verdict, Verdict::Allow);
}

/// A small deterministic shuffle (xorshift), so the test needs no RNG crate.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[test]
fn verdicts_do_not_depend_on_arrival_order() {
    let rt = rt();
    let mut all = Vec::new();
    for (s, sender) in [ADMIN, BOB, CAROL].into_iter().enumerate() {
        for seq in 0..8u64 {
            let text = if (seq + s as u64).is_multiple_of(5) { "spam here" } else { "hi" };
            all.push(msg(sender, seq, seq * 2_000 + s as u64, text));
        }
    }
    let judge = |order: &[MessageEvent]| -> BTreeMap<[u8; 32], (Verdict, u64)> {
        let mut p = moderation_policy(&rt, &config());
        let mut out = BTreeMap::new();
        for ev in order {
            for j in p.on_message(ev.clone()) {
                assert_eq!(j.failure, None);
                assert!(out.insert(j.id, (j.verdict, j.fuel_used)).is_none(), "judged twice");
            }
        }
        assert_eq!(p.waiting(), 0);
        out
    };
    let reference = judge(&all);
    assert_eq!(reference.len(), all.len());
    let count = |v: &Verdict| reference.values().filter(|(x, _)| x == v).count();
    assert!(count(&Verdict::Hold) >= 2, "the filter held messages");
    assert!(reference.values().any(|(v, _)| matches!(v, Verdict::Deny(_))), "the rate limit denied some");
    assert!(count(&Verdict::Allow) >= 10);
    for seed in 1..=40u64 {
        let mut order = all.clone();
        shuffle(&mut order, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        assert_eq!(judge(&order), reference, "arrival order {seed} changed a verdict or its fuel");
    }
}

#[test]
fn early_messages_wait_for_their_sender_and_replays_are_held() {
    let rt = rt();
    let mut p = moderation_policy(&rt, &config());
    assert!(p.on_message(msg(BOB, 2, 2, "c")).is_empty());
    assert!(p.on_message(msg(BOB, 1, 1, "b")).is_empty());
    assert_eq!(p.waiting(), 2);
    let released: Vec<u64> = p
        .on_message(msg(BOB, 0, 0, "a"))
        .iter()
        .map(|j| u64::from_be_bytes(j.id[24..].try_into().unwrap()))
        .collect();
    assert_eq!(released, vec![0, 1, 2]);
    let again = p.on_message(msg(BOB, 1, 1, "other"));
    assert_eq!(again[0].verdict, Verdict::Hold);
    assert_eq!(again[0].failure, Some(Failure::Replayed));
}

#[test]
fn echo_bot_replies_to_commands() {
    let rt = rt();
    let mut p = Policy::new(rt, echo_bot::pin(), echo_bot::WASM).unwrap();
    assert_eq!(
        p.on_message(msg(BOB, 0, 0, "!help"))[0].verdict,
        Verdict::Reply(b"commands: !help, !echo TEXT".to_vec())
    );
    assert_eq!(p.on_message(msg(BOB, 1, 0, "!echo ping"))[0].verdict, Verdict::Reply(b"ping".to_vec()));
    assert_eq!(p.on_message(msg(BOB, 2, 0, "hello"))[0].verdict, Verdict::Allow);
}

fn wat(body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "cairn" "state_set" (func $state_set (param i32 i32 i32 i32)))
          (import "cairn" "output_write" (func $output_write (param i32 i32)))
          (memory (export "memory") 1 16)
          (global (export "cairn_abi_v1") i32 (i32.const 1))
          {body})"#
    );
    wat::parse_str(&text).unwrap()
}

fn load(code: &[u8]) -> Result<Policy, UploadError> {
    Policy::new(rt(), PolicyPin { code_hash: code_hash(code), config: vec![] }, code)
}

#[test]
fn hostile_policies_run_out_of_fuel_and_hold() {
    let spin = wat(
        r#"(func (export "on_message") (loop $l (br $l))) (func (export "on_handshake") (loop $l (br $l)))"#,
    );
    let mut p = load(&spin).unwrap();
    let j = p.on_message(msg(BOB, 0, 0, "x"));
    assert_eq!(j[0].verdict, Verdict::Hold);
    assert_eq!(j[0].failure, Some(Failure::Trap(Trap::OutOfFuel)));
    assert_eq!(j[0].fuel_used, POLICY_FUEL);
    // the sender's next message is judged (and held) too: nothing is stuck
    assert_eq!(p.on_message(msg(BOB, 1, 0, "y"))[0].failure, Some(Failure::Trap(Trap::OutOfFuel)));
    let h = p.on_handshake(&hs(ADMIN, GroupChange::Remove(BOB)));
    assert!(h.decision.unwrap_err().contains("out of fuel"));
    // a memory bomb: grows to the 16-page cap, then spins
    let bomb = wat(r#"(func (export "on_message") (loop $l (drop (memory.grow (i32.const 1))) (br $l)))
           (func (export "on_handshake"))"#);
    let j = load(&bomb).unwrap().on_message(msg(BOB, 0, 0, "x"));
    assert_eq!(
        (j[0].verdict.clone(), j[0].failure.clone()),
        (Verdict::Hold, Some(Failure::Trap(Trap::OutOfFuel)))
    );
    // more than 16 pages is refused when the policy is loaded, naming the rule
    let text = r#"(module (memory (export "memory") 1 64) (global (export "cairn_abi_v1") i32 (i32.const 1))
        (func (export "on_message")))"#;
    let err = load(&wat::parse_str(text).unwrap()).unwrap_err();
    assert!(err.to_string().contains("16"), "{err}");
    // a garbage verdict and a state flood are held, and the flood keeps nothing
    let silent = wat(r#"(func (export "on_message")) (func (export "on_handshake"))"#);
    assert_eq!(load(&silent).unwrap().on_message(msg(BOB, 0, 0, "x"))[0].verdict, Verdict::Allow);
    let garbage = wat(r#"(func (export "on_message") (i32.store8 (i32.const 0) (i32.const 9))
             (call $output_write (i32.const 0) (i32.const 1)))
           (func (export "on_handshake") (i32.store8 (i32.const 0) (i32.const 3))
             (call $output_write (i32.const 0) (i32.const 1)))"#);
    let mut g = load(&garbage).unwrap();
    let j = g.on_message(msg(BOB, 0, 0, "x"));
    assert_eq!(j[0].verdict, Verdict::Hold);
    assert!(matches!(j[0].failure, Some(Failure::BadVerdict(_))));
    // a handshake answered with anything but Allow / Deny is refused
    assert!(g.on_handshake(&hs(ADMIN, GroupChange::Other)).decision.is_err());
    let flood = wat(r#"(func (export "on_message") (local $i i32)
             (loop $l
               (i32.store (i32.const 0) (local.get $i))
               (call $state_set (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 4))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 65)))))
           (func (export "on_handshake"))"#);
    let j = load(&flood).unwrap().on_message(msg(BOB, 0, 0, "x"));
    assert_eq!(j[0].verdict, Verdict::Hold);
    assert!(matches!(j[0].failure, Some(Failure::Trap(Trap::Limit(_)))), "{:?}", j[0].failure);
}

#[test]
fn a_policy_must_match_its_pin() {
    let wrong = PolicyPin { code_hash: [0; 32], config: vec![] };
    assert!(Policy::new(rt(), wrong, moderation::WASM).is_err());
}

mod decoders {
    use cairn_contracts::policy::{PolicyPin, Verdict};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Garbage from a policy or a group context never panics a decoder, and whatever
        /// decodes re-encodes to the same bytes (one encoding per value).
        #[test]
        fn garbage_decodes_to_an_error_or_a_canonical_value(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(v) = Verdict::decode(&bytes)
                && !bytes.is_empty()
            {
                prop_assert_eq!(v.encode(), bytes.clone());
            }
            if let Ok(p) = PolicyPin::decode(&bytes) {
                prop_assert_eq!(p.encode(), bytes);
            }
        }

        #[test]
        fn verdicts_round_trip(reason in "[a-z ]{0,40}", tags in proptest::collection::vec("[a-z]{1,10}", 0..8),
                               body in proptest::collection::vec(any::<u8>(), 0..100), who in any::<[u8; 32]>()) {
            for v in [Verdict::Deny(reason.clone()), Verdict::Label(tags.clone()), Verdict::Reply(body.clone()),
                      Verdict::ProposeRemove(who)] {
                prop_assert_eq!(Verdict::decode(&v.encode()).unwrap(), v);
            }
        }
    }
}

#[test]
fn each_device_of_an_account_has_its_own_order_and_state() {
    let rt = rt();
    let mut p = moderation_policy(&rt, &moderation::Config { max_messages: 1, ..config() });
    let phone = msg(BOB, 0, 0, "from the phone");
    let mut laptop = msg(BOB, 0, 0, "from the laptop");
    laptop.sender_device = [8; 32];
    laptop.id[0] = 0xff;
    assert_eq!(p.on_message(phone)[0].verdict, Verdict::Allow);
    // seq 0 again, but of another device: judged at once, with a fresh rate-limit window
    let j = p.on_message(laptop);
    assert_eq!((j[0].verdict.clone(), j[0].failure.clone()), (Verdict::Allow, None));
    assert!(matches!(p.on_message(msg(BOB, 1, 1, "again"))[0].verdict, Verdict::Deny(_)));
}
