//! The node's Prometheus metrics: one registry per [`Metrics`] instance (no global recorder,
//! so several nodes in one process, as in tests, keep separate figures).
//!
//! [`Metrics::render`] produces the OpenMetrics text exposition served at `GET /metrics`
//! (content type [`CONTENT_TYPE`]); every name carries the `cairn_` prefix and counters end in
//! `_total`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Delivery latency buckets, in seconds: 1 ms … about 65 s, doubling.
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
    32.768, 65.536,
];

/// The node's metrics. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    peers: Gauge,
    envelopes_relayed: Counter<u64, AtomicU64>,
    envelopes_stored: Counter<u64, AtomicU64>,
    envelopes_refused_full: Counter<u64, AtomicU64>,
    delivery_latency: Histogram,
    ledger_height: Gauge,
    mls_epochs: Gauge,
    conversations: Gauge,
    messages_sent: Counter<u64, AtomicU64>,
    messages_received: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let peers = Gauge::default();
        let envelopes_relayed = Counter::default();
        let envelopes_stored = Counter::default();
        let envelopes_refused_full = Counter::default();
        let delivery_latency = Histogram::new(LATENCY_BUCKETS);
        let ledger_height = Gauge::default();
        let mls_epochs = Gauge::default();
        let conversations = Gauge::default();
        let messages_sent = Counter::default();
        let messages_received = Counter::default();
        registry.register("peers", "Connected P2P peers", peers.clone());
        registry.register("envelopes_relayed", "Envelopes relayed over gossip", envelopes_relayed.clone());
        registry.register(
            "envelopes_stored",
            "Envelopes stored for others (store role)",
            envelopes_stored.clone(),
        );
        registry.register(
            "envelopes_refused_full",
            "Envelopes a store refused because a byte quota was reached",
            envelopes_refused_full.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Message delivery latency (sender timestamp to receipt on this device), seconds",
            delivery_latency.clone(),
        );
        registry.register("ledger_height", "Latest finalized ledger height seen", ledger_height.clone());
        registry.register(
            "mls_epochs",
            "Sum of the MLS epochs of this device's conversations",
            mls_epochs.clone(),
        );
        registry.register("conversations", "Conversations this device is in", conversations.clone());
        registry.register("messages_sent", "Messages sent by this device", messages_sent.clone());
        registry.register("messages_received", "Messages received by this device", messages_received.clone());
        Metrics {
            registry,
            peers,
            envelopes_relayed,
            envelopes_stored,
            envelopes_refused_full,
            delivery_latency,
            ledger_height,
            mls_epochs,
            conversations,
            messages_sent,
            messages_received,
        }
    }

    /// Sets the connected peer count.
    pub fn set_peers(&self, n: usize) {
        self.peers.set(clamp_i64(n as u64));
    }

    /// Sets the relayed-envelope total from the net layer's running figure. Counters only go
    /// up: a figure below the current value (e.g. after a restart of the net layer) is ignored.
    pub fn set_envelopes_relayed(&self, total: u64) {
        raise_to(&self.envelopes_relayed, total);
    }

    /// Sets the stored-envelope total from the net layer's running figure (see
    /// [`Metrics::set_envelopes_relayed`]).
    pub fn set_envelopes_stored(&self, total: u64) {
        raise_to(&self.envelopes_stored, total);
    }

    /// Sets the quota-refused envelope total from the store's running figure (see
    /// [`Metrics::set_envelopes_relayed`]).
    pub fn set_envelopes_refused_full(&self, total: u64) {
        raise_to(&self.envelopes_refused_full, total);
    }

    /// Records one delivery latency (sender timestamp → receipt here), in seconds; negative or
    /// NaN values are ignored.
    pub fn observe_delivery_latency(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.delivery_latency.observe(seconds);
        }
    }

    /// Sets the latest finalized ledger height.
    pub fn set_ledger_height(&self, height: u64) {
        self.ledger_height.set(clamp_i64(height));
    }

    /// Sets the MLS figures: the number of conversations and the sum of their epochs.
    pub fn set_mls(&self, conversations: usize, epochs_sum: u64) {
        self.conversations.set(clamp_i64(conversations as u64));
        self.mls_epochs.set(clamp_i64(epochs_sum));
    }

    /// Counts one message sent by this device.
    pub fn inc_messages_sent(&self) {
        self.messages_sent.inc();
    }

    /// Counts one message received by this device.
    pub fn inc_messages_received(&self) {
        self.messages_received.inc();
    }

    /// The OpenMetrics text exposition of every metric (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; keep the scrape well-formed if it ever does.
            tracing::warn!("encoding metrics failed: {e}");
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn raise_to(counter: &Counter<u64, AtomicU64>, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `name value` sample lines (no labels) into a map.
    fn samples(text: &str) -> std::collections::HashMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.to_string()))
            })
            .collect()
    }

    #[test]
    fn render_names_every_metric_with_values() {
        let m = Metrics::new();
        m.set_peers(3);
        m.set_envelopes_relayed(10);
        m.set_envelopes_relayed(7); // lower figure ignored
        m.set_envelopes_stored(5);
        m.set_envelopes_refused_full(2);
        m.observe_delivery_latency(0.003);
        m.observe_delivery_latency(-1.0);
        m.observe_delivery_latency(f64::NAN);
        m.set_ledger_height(42);
        m.set_mls(2, 9);
        m.inc_messages_sent();
        m.inc_messages_received();
        m.inc_messages_received();
        let text = m.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let s = samples(&text);
        let want = [
            ("cairn_peers", "3"),
            ("cairn_envelopes_relayed_total", "10"),
            ("cairn_envelopes_stored_total", "5"),
            ("cairn_envelopes_refused_full_total", "2"),
            ("cairn_delivery_latency_seconds_count", "1"),
            ("cairn_ledger_height", "42"),
            ("cairn_mls_epochs", "9"),
            ("cairn_conversations", "2"),
            ("cairn_messages_sent_total", "1"),
            ("cairn_messages_received_total", "2"),
        ];
        for (name, value) in want {
            assert_eq!(s.get(name).map(String::as_str), Some(value), "{name} in\n{text}");
        }
        for ty in [
            "# TYPE cairn_peers gauge",
            "# TYPE cairn_envelopes_relayed counter",
            "# TYPE cairn_delivery_latency_seconds histogram",
        ] {
            assert!(text.contains(ty), "{ty} in\n{text}");
        }
        assert!(text.contains("cairn_delivery_latency_seconds_bucket{le=\"0.004\"} 1"), "{text}");
    }

    #[test]
    fn instances_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.inc_messages_sent();
        assert!(a.render().contains("cairn_messages_sent_total 1"));
        assert!(b.render().contains("cairn_messages_sent_total 0"));
    }
}
