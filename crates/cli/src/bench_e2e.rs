//! `cairn bench e2e`: end-to-end encrypted send → deliver through the whole stack (MLS
//! encrypt, envelope + proof of work, gossip relay, mailbox store acks, MLS decrypt, local
//! store) among real node services in this process, with a real validator process ordering
//! the group's commits. With `light`, the user nodes are light clients (issue 17 §2) served by
//! the store nodes: one stream per service node instead of a gossip mesh per user.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cairn_ledger::genesis::Genesis;
use cairn_net::node::{NodeConfig, NodeHandle, NodeStatus};
use cairn_node::backend::Backend;
use cairn_node::model::StreamEvent;
use cairn_node::service::{Service, ServiceConfig};
use tokio::sync::Mutex;

use crate::node_cmd::{Children, local_chain, spawn_validator};

/// One row of the table.
struct Row {
    members: usize,
    deliveries: usize,
    expected: usize,
    p50_ms: f64,
    p99_ms: f64,
    ack_p50_ms: f64,
    msgs_per_s: f64,
    deliveries_per_s: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn wait<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the bench for each group size and prints the table.
pub(crate) fn run(sizes: &[usize], messages: usize, rate: f64, window: usize, light: bool) -> Result<()> {
    let max = sizes.iter().copied().max().unwrap_or(2).max(2);
    let dir = tempfile::tempdir()?;
    let chain = dir.path().join("chain");
    let gpath = local_chain(&chain, 1, "bench")?;
    let mut children = Children(Vec::new());
    children.0.push(("validator".into(), spawn_validator(&chain, 0, &dir.path().join("logs"))?));
    let genesis = Genesis::load(&gpath)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rows = rt.block_on(bench(dir.path(), genesis, max, sizes, messages, rate, window, light))?;
    drop(children);
    let offered = if rate > 0.0 { format!("offered at {rate} msg/s") } else { "sent back to back".into() };
    let offered = format!("{offered}, {window} in flight");
    let users = if light { "light user nodes served by the store nodes" } else { "user nodes" };
    println!(
        "end-to-end encrypted messaging ({messages} × 1 line of text per group, {offered}; 1 sender; \
         {max} {users}, 3 store nodes and 1 validator on this machine)"
    );
    println!("members  delivered          p50 ms   p99 ms  ack p50 ms  sent msg/s  deliveries/s");
    for r in rows {
        println!(
            "{:>7}  {:>6}/{:<6}  {:>9.1} {:>8.1}  {:>10.1}  {:>10.1}  {:>12.1}",
            r.members,
            r.deliveries,
            r.expected,
            r.p50_ms,
            r.p99_ms,
            r.ack_p50_ms,
            r.msgs_per_s,
            r.deliveries_per_s
        );
    }
    // The web client's figure beside these (measured by the browser tests).
    crate::bench_web::print();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn bench(
    dir: &Path,
    genesis: Genesis,
    max: usize,
    sizes: &[usize],
    messages: usize,
    rate: f64,
    window: usize,
    light: bool,
) -> Result<Vec<Row>> {
    // Store nodes.
    let mut stores = Vec::new();
    let mut boot = Vec::new();
    for i in 0..3 {
        let mut cfg = NodeConfig::new(dir.join(format!("store-{i}")));
        cfg.serve_store = true;
        cfg.bootstrap.clone_from(&boot);
        let n = cairn_net::node::start(cfg).await?;
        boot.extend(n.listen_addrs.iter().filter(|a| a.to_string().contains("/tcp/")).cloned());
        stores.push(n);
    }
    // Users.
    eprintln!("[bench] starting {max} user nodes …");
    let mut users: Vec<Arc<Service>> = Vec::new();
    for i in 0..max {
        let identity = cairn_crypto::Identity::generate(crate::home::now_ms())?;
        let mut cfg = ServiceConfig::new(dir.join(format!("user-{i}")), genesis.clone());
        cfg.net.bootstrap.clone_from(&boot);
        if light {
            cfg.net.light = Some(cairn_net::light::LightConfig::default());
        }
        // the bench's users invite each other without asking for consent
        cfg.invitations = cairn_node::engine::Invitations::Everyone;
        users.push(Arc::new(Service::start(cfg, identity).await?));
    }
    for (i, u) in users.iter().enumerate() {
        wait(&format!("user {i} registered"), Duration::from_secs(300), async || {
            u.devices().await.ok().filter(|d| !d.is_empty())
        })
        .await?;
    }
    eprintln!("[bench] {max} users registered");
    let mut rows = Vec::new();
    for &n in sizes {
        let n = n.clamp(2, max);
        let group = &users[..n];
        let members: Vec<String> = {
            let mut v = Vec::new();
            for u in &group[1..] {
                v.push(u.status().await.map_err(|e| anyhow::anyhow!("{e}"))?.account);
            }
            v
        };
        let t = Instant::now();
        let conv = group[0].create_conversation(members).await.map_err(|e| anyhow::anyhow!("{e}"))?.id;
        for (i, u) in group.iter().enumerate().skip(1) {
            let id = conv.clone();
            wait(&format!("member {i} to join"), Duration::from_secs(300), async || {
                u.conversations().await.ok()?.into_iter().find(|c| c.id == id && c.active)
            })
            .await?;
        }
        // Let the joiners' scheduled key updates settle (every member on one epoch, still).
        let mut last: Option<Vec<u64>> = None;
        let mut stable_since = Instant::now();
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(180) {
            let mut epochs = Vec::new();
            for u in group {
                epochs.push(u.conversation(conv.clone()).await.map(|c| c.epoch).unwrap_or(0));
            }
            let same = epochs.iter().all(|e| *e == epochs[0]);
            if Some(&epochs) != last.as_ref() || !same {
                stable_since = Instant::now();
                last = Some(epochs);
            } else if stable_since.elapsed() > Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        eprintln!("[bench] group of {n} ready in {:.1} s", t.elapsed().as_secs_f64());
        // Receivers record arrival times.
        let arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::new(Mutex::new(HashMap::new()));
        let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = Vec::new();
        for u in &group[1..] {
            let mut rx = u.subscribe();
            let arrivals = arrivals.clone();
            let conv = conv.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let ev = match rx.recv().await {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                            eprintln!("[bench] a receiver's event stream skipped {k} events: deliveries undercounted");
                            continue;
                        }
                        Err(_) => break,
                    };
                    if let StreamEvent::Message(m) = ev
                        && m.conversation == conv
                    {
                        arrivals.lock().await.entry(m.id).or_default().push(Instant::now());
                    }
                }
            }));
        }
        {
            let mut rx = group[0].subscribe();
            let acks = acks.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    // Receipts make many Delivery events: a lag skips some, it must not end
                    // the listener (it did, and the stored-ack column lost its later samples).
                    let ev = match rx.recv().await {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    };
                    if let StreamEvent::Delivery { id, delivery, .. } = ev
                        && delivery.stored_on >= 2
                    {
                        acks.lock().await.entry(id).or_insert_with(Instant::now);
                    }
                }
            }));
        }
        let before = statuses(&stores, group).await;
        let mut sent: Vec<(String, Instant)> = Vec::new();
        let start = Instant::now();
        let mut in_flight = tokio::task::JoinSet::new();
        for i in 0..messages {
            if rate > 0.0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            while in_flight.len() >= window.max(1) {
                if let Some(done) = in_flight.join_next().await {
                    sent.push(done??);
                }
            }
            let (sender, conv) = (group[0].clone(), conv.clone());
            in_flight.spawn(async move {
                let at = Instant::now();
                let r = sender
                    .send(conv, format!("bench message {i}"), None)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::Ok((r.id, at))
            });
            if (i + 1) % 50 == 0 || i + 1 == messages {
                let got: usize = arrivals.lock().await.values().map(Vec::len).sum();
                eprintln!(
                    "[bench] group of {n}: sent {}/{messages} in {:.1} s; {got} deliveries so far",
                    i + 1,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        while let Some(done) = in_flight.join_next().await {
            sent.push(done??);
        }
        let send_secs = start.elapsed().as_secs_f64();
        let expected = messages * (n - 1);
        let mut shown = Instant::now();
        let _ = wait("deliveries", Duration::from_secs(60 + messages as u64), async || {
            let got: usize = arrivals.lock().await.values().map(Vec::len).sum();
            if shown.elapsed() >= Duration::from_secs(5) && got < expected {
                shown = Instant::now();
                eprintln!("[bench] group of {n}: all sent; {got}/{expected} deliveries so far");
            }
            (got >= expected).then_some(())
        })
        .await;
        let last_arrival =
            arrivals.lock().await.values().flatten().max().copied().unwrap_or_else(Instant::now);
        let total_secs = last_arrival.duration_since(start).as_secs_f64().max(1e-6);
        let arr = arrivals.lock().await.clone();
        let ack = acks.lock().await.clone();
        let mut lat = Vec::new();
        let mut ack_lat = Vec::new();
        for (id, at) in &sent {
            for t in arr.get(id).into_iter().flatten() {
                lat.push(t.duration_since(*at).as_secs_f64() * 1e3);
            }
            if let Some(t) = ack.get(id) {
                ack_lat.push(t.duration_since(*at).as_secs_f64() * 1e3);
            }
        }
        for t in tasks {
            t.abort();
        }
        let deliveries = lat.len();
        rows.push(Row {
            members: n,
            deliveries,
            expected,
            p50_ms: pct(&mut lat, 0.5),
            p99_ms: pct(&mut lat, 0.99),
            ack_p50_ms: pct(&mut ack_lat, 0.5),
            msgs_per_s: messages as f64 / send_secs.max(1e-6),
            deliveries_per_s: deliveries as f64 / total_secs,
        });
        eprintln!("[bench] group of {n}: {deliveries}/{expected} deliveries");
        let after = statuses(&stores, group).await;
        print_counters(&before, &after, messages);
        for (name, st) in after.iter().filter(|(name, _)| name.starts_with("member")) {
            let s = &st.stem;
            eprintln!(
                "[bench] {name} stem: {} relayed ({} fluffed), {} refused; own: {} fallbacks, \
                 {} direct while its successor refused",
                s.relayed, s.fluffed, s.refused, s.fallbacks, s.backed_off
            );
        }
    }
    for u in &users {
        u.close().await;
    }
    for s in &stores {
        s.shutdown().await;
    }
    Ok(rows)
}

/// Each node's status (stores, then members), named; a node that does not answer is left out.
async fn statuses(stores: &[NodeHandle], group: &[Arc<Service>]) -> Vec<(String, NodeStatus)> {
    let mut out = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        if let Ok(st) = s.status().await {
            out.push((format!("store {i}"), st));
        }
    }
    for (i, u) in group.iter().enumerate() {
        if let Ok(st) = u.net().status().await {
            out.push((format!("member {i}"), st));
        }
    }
    out
}

/// What each node did per message sent during the run: store commits, envelopes stored,
/// socket writes and bytes out (the difference of two [`statuses`]).
fn print_counters(before: &[(String, NodeStatus)], after: &[(String, NodeStatus)], messages: usize) {
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / messages.max(1) as f64;
    for (name, b) in after {
        // a node that did not answer one of the two snapshots is left out
        let Some((_, a)) = before.iter().find(|(n, _)| n == name) else { continue };
        eprintln!(
            "[bench] {name} per message: {:.2} store commits, {:.2} envelopes stored, {:.1} socket writes, \
             {:.0} bytes out",
            per(a.store_commits, b.store_commits),
            per(a.store_envelopes, b.store_envelopes),
            per(a.traffic.writes, b.traffic.writes),
            per(a.traffic.bytes_out, b.traffic.bytes_out),
        );
    }
}
