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
}

criterion_group!(name = store; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(store);
