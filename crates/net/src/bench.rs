//! `cairn bench relay` / `mailbox`: N real nodes on 127.0.0.1, 1 KiB envelopes published at a
//! fixed rate, at saturation, and at the fixed rate beside a flooder publishing ten times as
//! many valid envelopes on the same gossip shard; prints a table. A benchmark, not a test: figures are medians
//! and percentiles of one run on a shared machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_proto::envelope::pad;
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Limits, Topic};

use crate::node::{NodeConfig, NodeError, NodeEvent, NodeHandle, start};
use crate::shard::shard_of;
use crate::sync::SendStatus;

/// Publications awaited at once, at most (below the node's own-publication lane of 256).
const PUBLISH_IN_FLIGHT_MAX: usize = 128;

/// Bench parameters.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Nodes (the first three are store nodes).
    pub nodes: usize,
    /// Envelopes per phase.
    pub messages: usize,
    /// Fixed-rate phase, envelopes per second.
    pub rate_per_sec: u32,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self { nodes: 10, messages: 500, rate_per_sec: 200 }
    }
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    /// Phase name.
    pub name: String,
    /// Deliveries per second over all receivers.
    pub delivered_per_sec: f64,
    /// Send → deliver latency, p50, ms.
    pub latency_p50_ms: f64,
    /// Send → deliver latency, p99, ms.
    pub latency_p99_ms: f64,
    /// Durable ack (≥ 2 store nodes) latency, p99, ms.
    pub ack_p99_ms: f64,
    /// Share of expected deliveries that happened.
    pub delivered_ratio: f64,
    /// Duplicates dropped by admission per accepted envelope.
    pub duplicate_ratio: f64,
    /// Loopback bytes sent per byte published (all loopback traffic of the machine).
    pub bytes_per_byte: f64,
    /// Store ingest, envelopes per second per store node.
    pub store_ingest_per_sec: f64,
    /// Mailbox fsyncs per 1,000 envelopes stored.
    pub fsyncs_per_1000: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn lo_tx_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    s.lines()
        .find(|l| l.trim_start().starts_with("lo:"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or(0)
}

fn envelope(topic: Topic, i: usize) -> Envelope {
    let body = vec![b'x'; 1000];
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut e = Envelope::new(
        topic,
        ts + i as u64 % 7,
        86_400,
        vec![],
        pad(&body, &Limits::default()).unwrap_or_default(),
    );
    e.header.pow_nonce = (i as u64) << 32;
    let _ = pow::mine(&mut e.header, Difficulty::default(), 1 << 30);
    e
}

/// Runs the bench; `progress` receives one line per step.
pub async fn run(cfg: BenchConfig, mut progress: impl FnMut(&str)) -> Result<Vec<PhaseResult>, NodeError> {
    let dir = std::env::temp_dir().join(format!("cairn-bench-{}", std::process::id()));
    let topic = Topic::for_conversation(&[0xbe; 32]);
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..cfg.nodes.max(4) {
        let mut c = NodeConfig::new(dir.join(format!("n{i}")));
        c.serve_store = i < 3;
        c.tick_ms = 100;
        c.score.ip_colocation_weight = 0.0;
        if let Some(first) = nodes.first() {
            c.bootstrap = vec![first.listen_addrs[0].clone()];
        }
        nodes.push(start(c).await?);
    }
    progress(&format!("{} nodes started (3 store nodes)", nodes.len()));
    for n in &nodes {
        n.subscribe(topic).await?;
    }
    // The flooder: another conversation on the same shard, valid mined envelopes, default limits
    // everywhere else. Honest nodes relay its flood (it is valid) and must not lose honest mail.
    let flood_topic = (0u8..=255)
        .map(|b| Topic::for_conversation(&[b; 32]))
        .find(|t| shard_of(t) == shard_of(&topic) && *t != topic)
        .unwrap_or(topic);
    let flooder = {
        let mut c = NodeConfig::new(dir.join("flooder"));
        c.bootstrap = vec![nodes[0].listen_addrs[0].clone()];
        let f = start(c).await?;
        f.subscribe(flood_topic).await?;
        f
    };
    let publisher = nodes[nodes.len() - 1].clone();
    for _ in 0..300 {
        let s = publisher.status().await?;
        if s.store_peers >= 3 && s.peers >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    progress("mesh formed; mining envelopes");
    let mut results = Vec::new();
    let phases = [
        ("fixed rate", Some(cfg.rate_per_sec), false),
        ("saturation", None, false),
        ("10x flood", Some(cfg.rate_per_sec), true),
    ];
    for (phase, rate, flood) in phases {
        let envs: Vec<Envelope> =
            (0..cfg.messages).map(|i| envelope(topic, i + results.len() * cfg.messages)).collect();
        let mut flood_frames = if flood {
            (0..cfg.messages * 10).map(|i| envelope(flood_topic, i).encode()).collect::<Vec<_>>().into_iter()
        } else {
            Vec::new().into_iter()
        };
        let receivers: Vec<NodeHandle> = nodes[..nodes.len() - 1].to_vec();
        let wanted: std::collections::HashSet<Id> = envs.iter().map(Envelope::id).collect();
        // Listeners stamp each event when it arrives (not when the bench gets round to it).
        let mut listeners = Vec::new();
        for n in &receivers {
            let mut rx = n.events();
            let want = wanted.clone();
            listeners.push(tokio::spawn(async move {
                let mut got: Vec<(Id, Instant)> = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
                while got.len() < want.len() {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Ok(NodeEvent::Delivered { id, .. })) if want.contains(&id) => {
                            got.push((id, Instant::now()))
                        }
                        Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                        _ => break,
                    }
                }
                got
            }));
        }
        let mut own = publisher.events();
        let want = wanted.clone();
        let ack_listener = tokio::spawn(async move {
            let mut got: Vec<(Id, Instant)> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while got.len() < want.len() {
                match tokio::time::timeout_at(deadline, own.recv()).await {
                    Ok(Ok(NodeEvent::Status { id, status: SendStatus::Stored { .. } }))
                        if want.contains(&id) =>
                    {
                        got.push((id, Instant::now()));
                    }
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    _ => break,
                }
            }
            got
        });
        let before: Vec<_> = futures::future::join_all(nodes.iter().take(3).map(|n| n.status())).await;
        let lo0 = lo_tx_bytes();
        let t0 = Instant::now();
        let mut sent_at: HashMap<Id, Instant> = HashMap::new();
        let mut inflight = Vec::with_capacity(cfg.messages);
        for (i, e) in envs.into_iter().enumerate() {
            if let Some(r) = rate {
                let due = t0 + Duration::from_secs_f64(i as f64 / f64::from(r.max(1)));
                tokio::time::sleep_until(due.into()).await;
            }
            // Publications are pipelined (each waits for its local commit, not for the others),
            // at most PUBLISH_IN_FLIGHT_MAX at once: the node refuses more than its own lane holds.
            while inflight.len() >= PUBLISH_IN_FLIGHT_MAX {
                let t: tokio::task::JoinHandle<Result<Id, NodeError>> = inflight.remove(0);
                t.await.map_err(|e| NodeError::Setup(e.to_string()))??;
            }
            let id = e.id();
            sent_at.insert(id, Instant::now());
            let p = publisher.clone();
            inflight.push(tokio::spawn(async move { p.publish(e).await }));
            for frame in flood_frames.by_ref().take(10) {
                flooder.publish_raw(shard_of(&flood_topic), frame).await?;
            }
        }
        for t in inflight {
            t.await.map_err(|e| NodeError::Setup(e.to_string()))??;
        }
        progress(&format!("{phase}: {} published in {:.2}s", cfg.messages, t0.elapsed().as_secs_f64()));
        let expected = cfg.messages * receivers.len();
        let mut latencies = Vec::with_capacity(expected);
        let mut last = t0;
        for l in listeners {
            for (id, at) in l.await.map_err(|e| NodeError::Setup(e.to_string()))? {
                if let Some(t) = sent_at.get(&id) {
                    latencies.push(at.duration_since(*t).as_secs_f64() * 1e3);
                    last = last.max(at);
                }
            }
        }
        let mut acks = Vec::new();
        for (id, at) in ack_listener.await.map_err(|e| NodeError::Setup(e.to_string()))? {
            if let Some(t) = sent_at.get(&id) {
                acks.push(at.duration_since(*t).as_secs_f64() * 1e3);
            }
        }
        let elapsed = last.duration_since(t0).as_secs_f64().max(1e-3);
        let lo1 = lo_tx_bytes();
        let after: Vec<_> = futures::future::join_all(nodes.iter().take(3).map(|n| n.status())).await;
        let mut stored = 0u64;
        let mut commits = 0u64;
        for (b, a) in before.iter().zip(&after) {
            if let (Ok(b), Ok(a)) = (b, a) {
                stored += a.store_envelopes - b.store_envelopes;
                commits += a.store_commits - b.store_commits;
            }
        }
        let (mut relayed, mut ignored) = (0u64, 0u64);
        for n in &receivers {
            let s = n.status().await?;
            relayed += s.relayed;
            ignored += s.ignored;
        }
        results.push(PhaseResult {
            name: phase.to_string(),
            delivered_per_sec: latencies.len() as f64 / elapsed,
            latency_p50_ms: pct(&mut latencies.clone(), 0.5),
            latency_p99_ms: pct(&mut latencies.clone(), 0.99),
            ack_p99_ms: pct(&mut acks, 0.99),
            delivered_ratio: latencies.len() as f64 / expected as f64,
            duplicate_ratio: ignored as f64 / relayed.max(1) as f64,
            bytes_per_byte: (lo1 - lo0) as f64 / (cfg.messages as f64 * 1024.0),
            store_ingest_per_sec: stored as f64 / 3.0 / elapsed,
            fsyncs_per_1000: commits as f64 * 1000.0 / stored.max(1) as f64,
        });
        progress(&format!("{phase}: done"));
    }
    for n in nodes.iter().chain([&flooder]) {
        n.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

/// Formats results as a table.
pub fn table(cfg: &BenchConfig, r: &[PhaseResult]) -> String {
    let mut s = format!(
        "relay + mailbox bench: {} nodes on 127.0.0.1, {} x 1 KiB envelopes per phase, fixed rate {}/s\n",
        cfg.nodes, cfg.messages, cfg.rate_per_sec
    );
    s.push_str("phase        deliv msg/s  p50 ms  p99 ms  ack p99 ms  delivered  dup ratio  bytes/byte  store msg/s  fsync/1000\n");
    for p in r {
        s.push_str(&format!(
            "{:<12} {:>11.0} {:>7.1} {:>7.1} {:>11.1} {:>9.1}% {:>10.3} {:>11.1} {:>12.0} {:>11.1}\n",
            p.name,
            p.delivered_per_sec,
            p.latency_p50_ms,
            p.latency_p99_ms,
            p.ack_p99_ms,
            p.delivered_ratio * 100.0,
            p.duplicate_ratio,
            p.bytes_per_byte,
            p.store_ingest_per_sec,
            p.fsyncs_per_1000
        ));
    }
    s.push_str("(fsync/1000 = 1000 means one fsync per envelope; lower is group commit. bytes/byte counts all loopback traffic.)\n");
    s
}
