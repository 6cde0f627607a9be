//! Store append: one fsync per envelope versus group commit.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use cairn_proto::envelope::pad;
use cairn_proto::{Envelope, Limits, Topic};
use cairn_store::Store;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb"), Limits::default()).unwrap();
    let mut n = 0u64;
    let mut next = move |k: usize| -> Vec<Envelope> {
        (0..k)
            .map(|_| {
                n += 1;
                Envelope::new(
                    Topic([(n % 16) as u8; 32]),
                    n,
                    3600,
                    vec![],
                    pad(&[7u8; 1000], &Limits::default()).unwrap(),
                )
            })
            .collect()
    };
    let mut g = c.benchmark_group("store_append_1KiB");
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched(|| next(batch), |envs| store.append(&envs).unwrap(), BatchSize::SmallInput)
        });
    }
    g.finish();
    // As a store node's mailbox writer commits: quotas checked, each envelope's source kept.
    let mut g = c.benchmark_group("mailbox_append_1KiB");
    let retention = cairn_store::Retention::unbounded();
    for batch in [1usize, 8] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched(
                || next(batch),
                |envs| {
                    let sources: Vec<[u8; 32]> =
                        envs.iter().map(|e| [e.header.timestamp_ms as u8 % 4; 32]).collect();
                    store.append_with(&envs, &sources, &retention, 0).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(name = store; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(store);
