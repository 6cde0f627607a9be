//! The fault campaign (issue 17 §3): real `cairn` processes in network namespaces this run
//! creates, under partitions, packet loss, delay, clock skew and SIGKILL/restart, and a checker
//! of what must hold once the faults heal.
//!
//! - [`scenario`]: the faults of one scenario, drawn from a seed (pure).
//! - [`check`]: the checker over what the run observed (pure).
//! - [`stats`]: percentiles and the campaign table (pure).
//! - [`netns`]: the namespaces, veth pairs, bridge and iptables rules, removed on drop.
//! - [`proxy`]: the user-space delay proxy (and API relay) that runs inside each namespace.
//! - [`cluster`]: validators, store nodes and users as processes in the namespaces.

pub(crate) mod check;
pub(crate) mod cluster;
pub(crate) mod netns;
pub(crate) mod proxy;
pub(crate) mod scenario;
pub(crate) mod stats;
