//! Adding a member to a large group: the Welcome bundle outgrows one envelope, travels as
//! chunks that each fit one, and the invitee joins from the reassembled bundle.
//!
//! `CAIRN_WELCOME_N` sets the group size (default below; kept quick for debug test builds).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Instant;

use cairn_mls::{
    CIPHERSUITE, DeviceSigner, KeyPackagePool, MemorySequencer, VerifiedKeyPackage, WelcomeAssembler,
    WelcomeBundle, verify_key_package, welcome_chunk_bytes_max, welcome_chunks,
};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::envelope::{Limits, pad, unpad};
use cairn_proto::{DeviceCert, DeviceId};
use common::{AAD, Dev, NOW, delivered};
use openmls::prelude::KeyPackage;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tls_codec::Serialize as _;

/// Default group size before the invitee joins: the issue's 5,000 (≈ 12 s in a debug test build
/// here, its dependencies optimised).
const N_DEFAULT: usize = 5000;

fn key() -> SigningKey {
    SigningKey::from_bytes(&cairn_crypto::keystore::random_bytes::<32>().unwrap())
}

/// Key packages of `n` devices that exist only as key packages (they never join).
fn virtual_packages(n: usize) -> Vec<VerifiedKeyPackage> {
    let provider = OpenMlsRustCrypto::default();
    let account = key();
    (0..n)
        .map(|_| {
            let k = key();
            let cert = DeviceCert::issue(&account, DeviceId(k.verifying_key().to_bytes()), NOW);
            let s = DeviceSigner::new(k, cert).unwrap();
            let b = KeyPackage::builder()
                .leaf_node_capabilities(cairn_mls::leaf_capabilities())
                .key_package_lifetime(cairn_mls::clock_free_lifetime())
                .build(CIPHERSUITE, &provider, &s, s.credential_with_key())
                .unwrap();
            verify_key_package(&b.key_package().tls_serialize_detached().unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn an_invitee_joins_a_large_group_from_a_chunked_welcome() {
    let n: usize = std::env::var("CAIRN_WELCOME_N").ok().and_then(|v| v.parse().ok()).unwrap_or(N_DEFAULT);
    let t = Instant::now();
    let mut seq = MemorySequencer::new();
    let mut a = Dev::new();
    let id = a.client.create(NOW).unwrap();
    a.client.add_many(&id, virtual_packages(n - 1), &mut seq, NOW).unwrap();
    let built_ms = t.elapsed().as_millis();

    // B is added to the group of n: its Welcome carries the whole tree.
    let mut b = Dev::new();
    let mut pool = KeyPackagePool::new();
    b.publish(&mut pool, 1);
    let out = a.client.add(&id, vec![pool.take(&b.device()).unwrap()], &mut seq, NOW).unwrap().unwrap();
    let welcome = out.welcome.unwrap();
    let bundle = welcome.bytes;
    let decoded = WelcomeBundle::decode(&bundle).unwrap();

    // Too large for one envelope; every chunk fits one.
    let limits = Limits::default();
    let chunk_bytes_max = welcome_chunk_bytes_max(&limits);
    assert!(pad(&bundle, &limits).is_err(), "a {}-byte bundle should not fit one envelope", bundle.len());
    let chunks = welcome_chunks(&bundle, chunk_bytes_max).unwrap();
    assert!(chunks.len() >= 2);
    let payloads: Vec<Vec<u8>> = chunks.iter().map(|c| pad(c, &limits).unwrap()).collect();
    println!(
        "N = {n} (+1 invitee): built in {built_ms} ms; bundle {} B (sealed tree {} B, MLS Welcome {} B); \
         one envelope's payload ≤ {} B; {} chunks of ≤ {chunk_bytes_max} B",
        bundle.len(),
        decoded.sealed_tree.len(),
        decoded.welcome.len(),
        limits.payload_bytes_max(),
        chunks.len(),
    );

    // The invitee reads the payloads last first, each twice, and joins from what they make.
    let mut assembler = WelcomeAssembler::new();
    let mut whole = None;
    for p in payloads.iter().rev().chain(payloads.iter()) {
        if let Some(got) = assembler.offer(unpad(p).unwrap(), NOW).unwrap() {
            assert!(whole.is_none(), "returned once");
            whole = Some(got);
        }
    }
    let whole = whole.unwrap();
    assert!(whole == bundle);
    let t = Instant::now();
    assert_eq!(b.client.join(&whole, NOW).unwrap(), id);
    println!("joined in {} ms", t.elapsed().as_millis());

    // B is a member: it reads A, A reads it.
    let ct = a.client.send(&id, b"welcome", AAD).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &ct, AAD).unwrap()).body, b"welcome");
    let ct = b.client.send(&id, b"thanks", AAD).unwrap();
    assert_eq!(delivered(a.client.receive(&id, &ct, AAD).unwrap()).body, b"thanks");
}
