//! The simulated links: each pair's latency (independent per pair, or from distance on a
//! torus), and dialing and connecting peers (the near-peer policy's steady state).

use super::World;
use crate::sim::event::Rpc;
use crate::sim::rng::mix;

impl World {
    /// The fixed latency of the link between `a` and `b`, ms.
    pub(super) fn latency(&self, a: u32, b: u32) -> u64 {
        let (x, y) = (u64::from(a.min(b)), u64::from(a.max(b)));
        let (lo, hi) = (self.cfg.latency_ms_min, self.cfg.latency_ms_max.max(self.cfg.latency_ms_min));
        if self.cfg.geometric {
            let (p, q) = (self.point(a), self.point(b));
            let axis = |u: f64, v: f64| {
                let d = (u - v).abs();
                d.min(1.0 - d)
            };
            let dist = (axis(p.0, q.0).powi(2) + axis(p.1, q.1).powi(2)).sqrt();
            return lo + ((hi - lo) as f64 * dist / std::f64::consts::FRAC_1_SQRT_2).round() as u64;
        }
        lo + mix(self.cfg.seed ^ (x << 32) ^ y) % (hi - lo + 1)
    }

    /// A node's seeded point on the unit torus (`SimConfig::geometric`).
    fn point(&self, n: u32) -> (f64, f64) {
        let unit = |z: u64| (z >> 11) as f64 / (1u64 << 53) as f64;
        let h = mix(self.cfg.seed.rotate_left(17) ^ u64::from(n));
        (unit(h), unit(mix(h)))
    }

    /// Dials `dial` peers: `near_dials` of them the nearest of `near_probe` random candidates.
    pub(super) fn dial_all(&mut self, i: u32) {
        let n = self.nodes.len() as u64;
        for d in 0..self.cfg.dial {
            let mut j = self.rng.below(n) as u32;
            if d < self.cfg.near_dials {
                for _ in 1..self.cfg.near_probe {
                    let c = self.rng.below(n) as u32;
                    let taken =
                        c == i || self.nodes[i as usize].peers.contains(&c) || !self.nodes[c as usize].online;
                    if !taken && self.latency(i, c) < self.latency(i, j) {
                        j = c;
                    }
                }
            }
            self.connect(i, j);
        }
    }

    /// Connects `a` to `b` (dialed by `a`), each sending its subscription.
    pub(super) fn connect(&mut self, a: u32, b: u32) {
        if a == b || !self.nodes[b as usize].online || self.nodes[a as usize].peers.contains(&b) {
            return;
        }
        self.nodes[a as usize].peers.push(b);
        self.nodes[a as usize].outbound.insert(b);
        self.nodes[b as usize].peers.push(a);
        self.send(a, b, Rpc::Subscribe);
        self.send(b, a, Rpc::Subscribe);
    }
}
