//! The seeded network simulation at a small size: every honest message reaches every honest
//! node through churn and hostile nodes, the stem phase hides senders from first-spy
//! estimation better than plain gossip, and a run is reproduced exactly from its seed.
//!
//! A failing seed is printed; rerun just it with `NET_SIM_SEED=<seed> cargo nextest run -p
//! cairn-net --test net_sim`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_net::sim::{self, Report, SimConfig};
use cairn_net::stem::StemConfig;

fn seeds() -> Vec<u64> {
    match std::env::var("NET_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("NET_SIM_SEED is a number")],
        Err(_) => vec![11, 12],
    }
}

fn small(seed: u64, stem: bool) -> SimConfig {
    SimConfig {
        seed,
        nodes: 200,
        stores: 20,
        messages: 100,
        conversations: 8,
        send_ms: 20_000,
        stem: stem.then(StemConfig::default),
        ..SimConfig::default()
    }
}

fn check_delivery(r: &Report) {
    assert_eq!(
        r.deliveries,
        r.deliveries_expected,
        "seed {} (stem {}): missed (message, node) {:?}; rerun with NET_SIM_SEED={}\n{}",
        r.seed,
        r.stem,
        r.missed,
        r.seed,
        sim::table(std::slice::from_ref(r))
    );
    assert!(r.messages > 90, "seed {}: messages were sent ({})", r.seed, r.messages);
    assert!(r.rejected > 0, "seed {}: the flooders' junk met admission and was rejected", r.seed);
}

#[test]
fn honest_messages_reach_every_honest_node_and_the_stem_hides_senders() {
    for seed in seeds() {
        let off = sim::run(&small(seed, false));
        let on = sim::run(&small(seed, true));
        check_delivery(&off);
        check_delivery(&on);
        assert!(
            off.deliveries_by_gossip < off.deliveries,
            "seed {seed}: churned nodes caught up from stores"
        );
        assert!(
            on.spy_precision() < 0.8 * off.spy_precision(),
            "seed {seed}: first-spy precision with stem {:.3} not well below without {:.3}; rerun with NET_SIM_SEED={seed}\n{}",
            on.spy_precision(),
            off.spy_precision(),
            sim::table(&[off.clone(), on.clone()])
        );
        assert!(on.bytes_stem > 0 && off.bytes_stem == 0, "seed {seed}");
    }
}

#[test]
fn anti_entropy_by_ids_delivers_everything_with_fewer_bytes_than_whole_pages() {
    // By ids is the default (the node's `Sync` runs it); whole pages are what it falls back to.
    for seed in seeds() {
        let pages = sim::run(&SimConfig { resync_by_ids: false, ..small(seed, true) });
        let ids = sim::run(&small(seed, true));
        assert!(ids.deliveries_by_gossip < ids.deliveries, "seed {seed}: some came by ids");
        check_delivery(&pages);
        check_delivery(&ids);
        let page_bytes =
            |r: &Report| r.bytes_by_kind.iter().find(|(k, _)| *k == "page").map_or(0, |(_, b)| *b);
        assert_eq!(page_bytes(&ids), 0, "seed {seed}: no whole-envelope page");
        assert!(
            ids.bytes_per_delivered() + 1.0 < pages.bytes_per_delivered(),
            "seed {seed}: by ids {:.2} B/B, whole pages {:.2}\n{}",
            ids.bytes_per_delivered(),
            pages.bytes_per_delivered(),
            sim::table(&[pages.clone(), ids.clone()])
        );
    }
}

#[test]
fn near_peers_cut_the_time_to_reach_every_node_and_deliver_everything() {
    // The node's nearness policy (steady state) against connections kept as discovered.
    for seed in seeds() {
        let near = sim::run(&small(seed, false));
        let random = sim::run(&SimConfig { near_dials: 0, ..small(seed, false) });
        check_delivery(&near);
        check_delivery(&random);
        let flood_p50 = |r: &Report| sim::report::percentile(&r.flood_bound_ms, 0.5);
        assert!(
            flood_p50(&near) * 10 < flood_p50(&random) * 7
                && near.reach_ms(0.5) * 10 < random.reach_ms(0.5) * 8,
            "seed {seed}: near peers should shorten the paths (flood bound p50 {} vs {} ms) and the reach \
             (p50 {} vs {} ms); rerun with NET_SIM_SEED={seed}\n{}",
            flood_p50(&near),
            flood_p50(&random),
            near.reach_ms(0.5),
            random.reach_ms(0.5),
            sim::table(&[random.clone(), near.clone()])
        );
    }
}

#[test]
fn a_run_is_reproduced_exactly_from_its_seed() {
    let seed = seeds()[0];
    let cfg = SimConfig { messages: 20, ..small(seed, true) };
    let a = sim::run(&cfg);
    let b = sim::run(&cfg);
    assert_eq!(a, b, "seed {seed}: two runs of the same seed differ");
    let c = sim::run(&SimConfig { seed: seed + 1, ..cfg });
    assert_ne!(a.events, c.events, "another seed gives another run");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The full-size run of `cairn bench net-sim` without building the CLI: `cargo test --release
/// -p cairn-net --test net_sim -- --ignored --nocapture full_size` (NET_SIM_SEED, NET_SIM_NODES,
/// NET_SIM_MESSAGES, NET_SIM_RESYNC_MS, NET_SIM_BY_IDS (true/false), NET_SIM_MESH_N,
/// NET_SIM_HEARTBEAT_MS, NET_SIM_DIAL, NET_SIM_DEGREE_MIN, NET_SIM_NEAR_DIALS (0: every dial
/// random), NET_SIM_NEAR_PROBE and NET_SIM_GEOMETRIC (true: latency from distance on a torus)
/// override the defaults;
/// NET_SIM_STEM=off or on runs one of the two). It prints the
/// table and asserts nothing but that it ran.
#[test]
#[ignore = "full size: minutes in release; run by hand"]
fn full_size() {
    let d = SimConfig::default();
    let mut base = SimConfig {
        seed: env_or("NET_SIM_SEED", d.seed),
        nodes: env_or("NET_SIM_NODES", d.nodes),
        messages: env_or("NET_SIM_MESSAGES", d.messages),
        resync_ms: env_or("NET_SIM_RESYNC_MS", d.resync_ms),
        resync_by_ids: env_or("NET_SIM_BY_IDS", d.resync_by_ids),
        dial: env_or("NET_SIM_DIAL", d.dial),
        degree_min: env_or("NET_SIM_DEGREE_MIN", d.degree_min),
        near_dials: env_or("NET_SIM_NEAR_DIALS", d.near_dials),
        near_probe: env_or("NET_SIM_NEAR_PROBE", d.near_probe),
        geometric: env_or("NET_SIM_GEOMETRIC", d.geometric),
        ..d
    };
    base.gossip.heartbeat_ms = env_or("NET_SIM_HEARTBEAT_MS", d.gossip.heartbeat_ms);
    let mesh_n = env_or("NET_SIM_MESH_N", d.gossip.mesh_n);
    if mesh_n != d.gossip.mesh_n {
        base.gossip.mesh_n = mesh_n;
        base.gossip.mesh_n_low = mesh_n - 1;
        base.gossip.mesh_n_high = 2 * mesh_n;
    }
    let with_stem = SimConfig { stem: Some(StemConfig::default()), ..base };
    let reports = match std::env::var("NET_SIM_STEM").as_deref() {
        Ok("off") => vec![sim::run(&base)],
        Ok("on") => vec![sim::run(&with_stem)],
        _ => std::thread::scope(|s| {
            let off = s.spawn(|| sim::run(&base));
            let on = sim::run(&with_stem);
            vec![off.join().unwrap(), on]
        }),
    };
    println!("{base:?}\n{}", sim::table(&reports));
    assert!(reports.iter().all(|r| r.messages > 0));
}
