//! Shared builders for the proto integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use cairn_proto::ed25519::SigningKey;
use cairn_proto::{DeviceCert, DeviceId, Envelope, Id, Limits, Message, Topic};

pub struct Sender {
    pub account: SigningKey,
    pub device: SigningKey,
    pub cert: DeviceCert,
}

pub fn sender(seed: u8) -> Sender {
    let account = SigningKey::from_bytes(&[seed; 32]);
    let device = SigningKey::from_bytes(&[seed.wrapping_add(100); 32]);
    let cert =
        DeviceCert::issue(&account, DeviceId(device.verifying_key().to_bytes()), 1_000 + u64::from(seed));
    Sender { account, device, cert }
}

pub fn topic() -> Topic {
    Topic::for_conversation(&[42; 32])
}

pub fn envelope(s: &Sender, ts: u64, parents: Vec<Id>, body: &[u8]) -> Envelope {
    Message::sign(&s.device, s.cert, topic(), ts, parents, body.to_vec())
        .seal_plain(86_400, &Limits::default())
        .expect("fits")
}

pub fn entries(envs: &[Envelope]) -> Vec<(Id, Envelope)> {
    envs.iter().map(|e| (e.id(), e.clone())).collect()
}
