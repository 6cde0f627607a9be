//! The ledger RPC channel's own cost (issue 12 §3), without TCP: one Noise `NX` handshake
//! (client hello, validator reply with its identity signature, client check: what each new
//! connection costs, both sides on one core), and one frame sealed by one side and opened by
//! the other (a 200-byte request, a 1 MiB block answer). `cairn ledger bench` measures the
//! whole path.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use cairn_ledger::rpc::noise::{RpcIdentity, Session, answer_hello, hello};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CHAIN: [u8; 32] = [0xBE; 32];

fn pair(id: &RpcIdentity) -> (Session, Session) {
    let (pending, msg) = hello(&CHAIN).unwrap();
    let (reply, server) = answer_hello(id, &msg).unwrap();
    (pending.finish(&reply, &id.public_key()).unwrap(), server)
}

/// Opens a buffer of whole wire messages as one frame.
fn open_frame(s: &mut Session, mut wire: &[u8]) -> Vec<u8> {
    let mut next = || {
        let n = u16::from_be_bytes([wire[0], wire[1]]) as usize;
        let (msg, rest) = wire[2..].split_at(n);
        wire = rest;
        msg
    };
    let (len, mut body) = s.open_first(next()).unwrap();
    while body.len() < len {
        body.extend(s.open(next()).unwrap());
    }
    body
}

fn benches(c: &mut Criterion) {
    let id = RpcIdentity::from_seed([7; 32], CHAIN).unwrap();
    let mut g = c.benchmark_group("ledger_rpc_channel");
    g.sample_size(50);
    g.bench_function("handshake (both sides)", |b| b.iter(|| pair(&id)));
    for (name, len) in [("200 B request", 200usize), ("1 MiB answer", 1 << 20)] {
        let body = vec![0x5A; len];
        let (mut client, mut server) = pair(&id);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("seal + open, {name}"), |b| {
            b.iter(|| {
                let wire = client.seal_frame(&body).unwrap();
                assert_eq!(open_frame(&mut server, &wire).len(), len);
            })
        });
    }
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
