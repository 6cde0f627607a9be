//! Policy verdicts per second on one core: the shipped moderation policy with its rate limit
//! on (roles and filter too), one verdict per received message (a fresh wasmi instance per
//! call, per-sender state), and a handshake judgement. Prints the fuel per call.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use cairn_contracts::policy::{GroupChange, HandshakeEvent, MessageEvent, Policy, policy_runtime};
use cairn_contracts::shipped_policy::moderation;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let rt = Arc::new(policy_runtime());
    let rate_only = moderation::Config { max_messages: 1_000_000, window_ms: 60_000, ..Default::default() };
    let full = moderation::Config {
        admins: vec![[1; 32]],
        words: vec!["spam".into(), "scam".into(), "phish".into()],
        ..rate_only.clone()
    };
    for (name, cfg) in [("rate limit", &rate_only), ("roles + rate limit + 3-word filter", &full)] {
        let mut p = Policy::new(rt.clone(), cfg.pin().unwrap(), moderation::WASM).unwrap();
        let mut seq = 0u64;
        let ev = |seq: u64| MessageEvent {
            id: [0; 32],
            group: [9; 32],
            epoch: 1,
            sender_account: [2; 32],
            sender_device: [2; 32],
            sender_seq: seq,
            ts: seq,
            content_type: 1,
            body: b"a message of an ordinary length, with nothing to filter in it".to_vec(),
        };
        let j = p.on_message(ev(seq));
        seq += 1;
        println!("policy {name}: {} fuel per verdict ({:?})", j[0].fuel_used, j[0].verdict);
        let mut g = c.benchmark_group("policy");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("verdict: {name}"), |b| {
            b.iter(|| {
                let j = p.on_message(ev(seq));
                seq += 1;
                black_box(j)
            })
        });
        g.finish();
    }
    let p = Policy::new(rt, full.pin().unwrap(), moderation::WASM).unwrap();
    let hs =
        HandshakeEvent { group: [9; 32], epoch: 2, proposer: [2; 32], change: GroupChange::Remove([3; 32]) };
    println!("policy handshake (non-admin removal): {} fuel", p.on_handshake(&hs).fuel_used);
    c.bench_function("policy/handshake: non-admin removal", |b| b.iter(|| black_box(p.on_handshake(&hs))));
}

criterion_group!(group, benches);
criterion_main!(group);
