//! Contract calls on the runtime: compile, and one call of each shipped contract (fresh instance
//! per call, as the ledger runs them) beside a bare Ed25519 verify. Prints the fuel each call
//! uses.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use cairn_contracts::shipped::{consent, escrow};
use cairn_contracts::{Context, Entry, FuelSchedule, Limits, Runtime, StateView};
use cairn_proto::ed25519::{Signer as _, SigningKey, Verifier as _};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[derive(Default)]
struct World {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    devices: Vec<([u8; 32], [u8; 32])>,
}

impl StateView for World {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn balance(&self, _: &[u8; 32]) -> u64 {
        1_000_000
    }
    fn device_active(&self, a: &[u8; 32], d: &[u8; 32]) -> bool {
        self.devices.contains(&(*a, *d))
    }
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new(Limits::LEDGER, FuelSchedule::default());
    let esc = rt.compile(escrow::WASM).unwrap();
    let con = rt.compile(consent::WASM).unwrap();
    let ctx = Context { caller: [1; 32], contract: [9; 32], funds: 500, block_height: 10, block_time_ms: 0 };
    let id = [7; 32];
    let bob = [2; 32];
    let device = SigningKey::from_bytes(&[3; 32]);
    let dev = device.verifying_key().to_bytes();
    let mut world = World::default();
    world.devices.push((bob, dev));
    let open = escrow::open(&id, &bob, 100);
    // an open escrow, for the release call
    let fx = rt.call(&esc, Entry::Execute, &ctx, &open, &world, 10_000_000).result.unwrap();
    let mut opened = World { kv: BTreeMap::new(), devices: world.devices.clone() };
    for (k, v) in fx.writes {
        opened.kv.insert(k, v.unwrap());
    }
    let sig = device.sign(&escrow::receipt_message(&id));
    let release = escrow::release(&id, &dev, &sig.to_bytes());
    let grant = consent::grant(&bob, 100, b"blake3:ab12/records");
    let query = consent::query(&[1; 32], &bob, b"blake3:ab12/records");
    for (name, compiled, entry, msg, state) in [
        ("escrow open", &esc, Entry::Execute, &open, &world),
        ("escrow release", &esc, Entry::Execute, &release, &opened),
        ("consent grant", &con, Entry::Execute, &grant, &world),
        ("consent query", &con, Entry::Query, &query, &world),
    ] {
        let r = rt.call(compiled, entry, &ctx, msg, state, 10_000_000);
        assert!(r.result.is_ok(), "{name}: {:?}", r.result);
        println!("fuel per call: {name}: {}", r.fuel_used);
    }

    let mut g = c.benchmark_group("contracts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("compile escrow (validate + wasmi)", |b| {
        b.iter(|| rt.compile(black_box(escrow::WASM)).unwrap())
    });
    g.bench_function("escrow open (fresh instance)", |b| {
        b.iter(|| rt.call(&esc, Entry::Execute, &ctx, black_box(&open), &world, 10_000_000))
    });
    g.bench_function("escrow release (device verify)", |b| {
        b.iter(|| rt.call(&esc, Entry::Execute, &ctx, black_box(&release), &opened, 10_000_000))
    });
    g.bench_function("consent query", |b| {
        b.iter(|| rt.call(&con, Entry::Query, &ctx, black_box(&query), &world, 10_000_000))
    });
    let msg = escrow::receipt_message(&id);
    let vk = device.verifying_key();
    g.bench_function("bare ed25519 verify", |b| b.iter(|| vk.verify(black_box(&msg), &sig).unwrap()));
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
