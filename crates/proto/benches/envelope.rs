//! Envelope encode / decode / verify against a bare Ed25519 verify.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use cairn_proto::ed25519::{Signer, SigningKey};
use cairn_proto::history::{PlainOpener, VerifyOptions, verify};
use cairn_proto::{DeviceCert, DeviceId, Envelope, Limits, Message, Topic};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn sample(body_len: usize) -> Envelope {
    let account = SigningKey::from_bytes(&[1; 32]);
    let device = SigningKey::from_bytes(&[2; 32]);
    let cert = DeviceCert::issue(&account, DeviceId(device.verifying_key().to_bytes()), 1);
    Message::sign(&device, cert, Topic([7; 32]), 5, vec![], vec![b'x'; body_len])
        .seal_plain(86_400, &Limits::default())
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let limits = Limits::default();
    let env = sample(1000);
    let bytes = env.encode();
    let topic = env.header.topic;
    let mut g = c.benchmark_group("envelope_1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&env).encode()));
    g.bench_function("decode", |b| b.iter(|| Envelope::decode(black_box(&bytes), &limits).unwrap()));
    g.bench_function("id", |b| b.iter(|| black_box(&env).id()));
    let entries = vec![(env.id(), env.clone())];
    g.bench_function("verify_full_cold", |b| {
        b.iter(|| {
            let mut o = PlainOpener;
            let r = verify(
                &topic,
                black_box(&entries),
                VerifyOptions { opener: Some(&mut o), ..VerifyOptions::default() },
            );
            assert!(r.is_intact());
        })
    });
    // A 100-envelope chain from one device: the certificate is verified once per history.
    let account = SigningKey::from_bytes(&[1; 32]);
    let device = SigningKey::from_bytes(&[2; 32]);
    let cert = DeviceCert::issue(&account, DeviceId(device.verifying_key().to_bytes()), 1);
    let mut chain: Vec<(cairn_proto::Id, Envelope)> = Vec::new();
    for i in 0..100u64 {
        let parents = chain.last().map(|(id, _)| vec![*id]).unwrap_or_default();
        let e = Message::sign(&device, cert, topic, i, parents, vec![b'x'; 1000])
            .seal_plain(86_400, &limits)
            .unwrap();
        chain.push((e.id(), e));
    }
    g.throughput(Throughput::Elements(100));
    g.bench_function("verify_history_100", |b| {
        b.iter(|| {
            let mut o = PlainOpener;
            let r = verify(
                &topic,
                black_box(&chain),
                VerifyOptions { opener: Some(&mut o), ..VerifyOptions::default() },
            );
            assert!(r.is_intact());
        })
    });
    g.throughput(Throughput::Elements(1));
    let key = SigningKey::from_bytes(&[3; 32]);
    let msg = [0u8; 64];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    g.bench_function("bare_ed25519_verify", |b| b.iter(|| vk.verify_strict(black_box(&msg), &sig).unwrap()));
    g.finish();
}

criterion_group!(name = envelope; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(envelope);
