//! Prometheus metrics, registered in one place (every name gets the registry's `egress_`
//! prefix; collectors name their families without it). Datapath counters are read from the kernel at
//! scrape time, so they are exact and survive agent restarts (the counter map is pinned).

use std::{
    fmt,
    sync::{Arc, Mutex, atomic::Ordering},
};

use egress_common::counters;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family as MetricFamily,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{datapath::Datapath, events::EventStats, learn::LearnStats};

/// Labels of the agent's info and attachment gauges.
pub type Labels = Vec<(String, String)>;

/// Agent-side metrics.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub gc_learned_removed: Counter,
    pub gc_flows_removed: Counter,
    pub revoked: Counter,
    pub refreshes_kept: Counter,
    /// 1 with the version, the mode in force and where answers are learned as labels.
    pub info: MetricFamily<Labels, Gauge>,
    /// Per interface and hook: 1 if the program was found attached at the last check.
    pub attached: MetricFamily<Labels, Gauge>,
    /// Per interface and hook: times the program was attached again (missing or overtaken).
    pub reattached: MetricFamily<Labels, Counter>,
    /// Per map: times the agent found a map differing from the policy and rewrote it.
    pub tamper_repairs: MetricFamily<Labels, Counter>,
    /// What `/readyz` answers: 1 ready, 0 not.
    pub ready: Gauge,
    /// How long each garbage-collection tick took (it walks the learned maps and flow tables).
    pub gc_seconds: GcSeconds,
}

/// The histogram of garbage-collection times: 1 ms to about 16 s, by factors of 4 (a tick at
/// full learned maps takes seconds; one every 5 s is due).
#[derive(Debug, Clone)]
pub struct GcSeconds(pub Histogram);

impl Default for GcSeconds {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 4.0, 8)))
    }
}

impl AgentMetrics {
    /// Counts what a reconciliation of the learned state did (at start, reloads, repairs and
    /// every garbage-collection tick).
    pub fn count_reconciled(&self, done: &crate::datapath::Reconciled) {
        self.gc_learned_removed.inc_by(done.expired as u64);
        self.revoked.inc_by(done.revoked as u64);
        self.refreshes_kept.inc_by(done.restored as u64);
    }
}

/// Derived families: (family, help, label, [(label value, counter index)]). Each datapath counter
/// is also exported raw in `egress_datapath{counter=...}`; these group them the way dashboards
/// ask (see docs/metrics.md).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, u32)],
);
const DERIVED: &[Family] = &[
    (
        "packets",
        "Packets judged on the enforced interfaces, by verdict",
        "verdict",
        &[
            ("pass_not_enforced", counters::PASS_NOT_ENFORCED),
            ("pass_not_ip", counters::PASS_NOT_IP),
            ("pass_fragment", counters::PASS_FRAGMENT),
            ("pass_flow", counters::PASS_FLOW),
            ("pass_socket", counters::PASS_SOCKET),
            ("pass_static", counters::PASS_STATIC),
            ("pass_learned", counters::PASS_LEARNED),
            ("pass_unconfigured", counters::PASS_UNCONFIGURED),
            ("drop_denied", counters::DROP_DENIED),
            ("audit_denied", counters::AUDIT_DENIED),
            ("deny_malformed", counters::DENY_MALFORMED),
        ],
    ),
    (
        "dns_answers",
        "DNS answers seen on ingress, by what the kernel did with them",
        "result",
        &[
            ("learned", counters::DNS_ANSWER_LEARNED),
            ("not_allowed", counters::DNS_NOT_ALLOWED),
            ("untrusted_source", counters::DNS_UNTRUSTED),
            ("unsolicited", counters::DNS_UNSOLICITED),
            ("malformed", counters::DNS_MALFORMED),
            ("nxdomain", counters::DNS_NXDOMAIN),
            ("servfail", counters::DNS_SERVFAIL),
            ("refused", counters::DNS_REFUSED),
            ("other_error", counters::DNS_OTHER_ERROR),
            ("nodata", counters::DNS_NODATA),
        ],
    ),
    (
        "ringbuf_lost",
        "Records lost because a ring buffer was full, by ring",
        "ring",
        &[
            ("deny_events", counters::EVENT_RINGBUF_FULL),
            ("dns_copies", counters::DNS_EVENT_LOST),
        ],
    ),
    (
        "insert_failures",
        "Kernel map inserts that failed, by map (full)",
        "map",
        &[
            ("learned", counters::DNS_LEARN_FAILED),
            ("flows", counters::FLOW_INSERT_FAILED),
        ],
    ),
];

/// `dp` is the scrape's own handle on the maps (not the agent's: a scrape must not hold the
/// lock that DNS learning needs).
pub fn registry(
    dp: Arc<Mutex<Datapath>>,
    agent: &AgentMetrics,
    events: Arc<EventStats>,
    learn: Arc<LearnStats>,
) -> Registry {
    let mut r = Registry::with_prefix("egress");
    r.register("reloads", "Policy reloads applied", agent.reloads.clone());
    r.register(
        "reload_failures",
        "Policy reloads rejected (the previous policy stays)",
        agent.reload_failures.clone(),
    );
    r.register(
        "gc_learned_removed",
        "Expired learned addresses removed by garbage collection",
        agent.gc_learned_removed.clone(),
    );
    r.register(
        "learned_revoked",
        "Unexpired learned addresses revoked because no rule in force allows them any more",
        agent.revoked.clone(),
    );
    r.register(
        "learned_refreshes_kept",
        "Learned entries the kernel refreshed while garbage collection removed them, put back",
        agent.refreshes_kept.clone(),
    );
    r.register(
        "gc_duration_seconds",
        "Time each garbage collection took (walks the learned maps and flow tables; one is due every 5 s)",
        agent.gc_seconds.0.clone(),
    );
    r.register(
        "gc_flows_removed",
        "Idle flows removed by garbage collection",
        agent.gc_flows_removed.clone(),
    );
    r.register(
        "info",
        "The agent's version, the mode in force and where DNS answers are learned (value 1)",
        agent.info.clone(),
    );
    r.register(
        "reattached",
        "Times egress was attached again to an interface's hook after it was found missing (interface re-created, link released) or behind another program",
        agent.reattached.clone(),
    );
    r.register(
        "tamper_repairs",
        "Times a policy map (config, ports, static CIDRs, resolvers, names) was found changed by someone else and rewritten from the policy",
        agent.tamper_repairs.clone(),
    );
    r.register(
        "attached",
        "Whether egress was found attached to an interface's hook at the last check (every 5 s)",
        agent.attached.clone(),
    );
    r.register(
        "ready",
        "What /readyz answers: 1 when attached everywhere, the policy file in force and every loop alive",
        agent.ready.clone(),
    );
    r.register_collector(Box::new(DatapathCollector { dp, events, learn }));
    r
}

#[derive(Debug)]
struct DatapathCollector {
    dp: Arc<Mutex<Datapath>>,
    events: Arc<EventStats>,
    learn: Arc<LearnStats>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (counts, fill) = {
            let dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
            (dp.counters(), dp.fill())
        };
        // A map that cannot be read is left out of this scrape rather than exported as zeros,
        // which Prometheus would read as a counter reset; the gap itself is what to alert on.
        let counts = counts
            .inspect_err(|e| tracing::warn!(error = %e, "scrape: cannot read the counters"))
            .ok();
        let fill = fill
            .inspect_err(|e| tracing::warn!(error = %e, "scrape: cannot count map entries"))
            .unwrap_or_default();
        let entries = |names: &[&str]| -> usize {
            fill.iter()
                .filter(|(n, _, _)| names.contains(n))
                .map(|(_, e, _)| e)
                .sum()
        };
        use egress_common::maps::names as map;
        let learned = entries(&[map::LEARNED_V4, map::LEARNED_V6]);
        let statics = entries(&[map::STATIC_V4, map::STATIC_V6]);
        let flows = entries(&[map::FLOWS, map::FLOWS_UDP]);
        if let Some(counts) = counts {
            let mut family = encoder.encode_descriptor(
                "datapath",
                "Datapath decisions and events, by counter (see docs/design.md)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (name, value) in counters::NAMES.iter().zip(counts) {
                let labels = [("counter", *name)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
            for (family, help, label, members) in DERIVED {
                let mut f = encoder.encode_descriptor(
                    family,
                    help,
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (value, index) in *members {
                    ConstCounter::new(counts[*index as usize])
                        .encode(f.encode_family(&[(*label, *value)])?)?;
                }
            }
        }
        // Empty when the maps could not be counted: the gauges are left out too.
        if !fill.is_empty() {
            for (name, help, value) in [
                (
                    "learned_entries",
                    "Learned addresses in the kernel maps",
                    learned,
                ),
                ("static_entries", "Static CIDRs in the kernel maps", statics),
                ("flows", "Entries in the flow tables (TCP and UDP)", flows),
            ] {
                let gauge = ConstGauge::new(value as i64);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        let mut fr = encoder.encode_descriptor(
            "map_fill_ratio",
            "Entries over capacity of each map that can fill up (1.0: inserts fail or, for flows, evict)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, n, capacity) in &fill {
            ConstGauge::new(*n as f64 / f64::from(*capacity))
                .encode(fr.encode_family(&[("map", name.to_ascii_lowercase())])?)?;
        }
        let mut ag = encoder.encode_descriptor(
            "agent_dns",
            "The agent's side of DNS learning, by event (see docs/metrics.md)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, value) in [
            ("copies", &self.learn.copies),
            ("cname_targets_allowed", &self.learn.cname_targets),
            ("addresses_learned", &self.learn.addresses),
            ("tcp_answers", &self.learn.tcp_answers),
            ("unparsable", &self.learn.unparsable),
            ("insert_failures", &self.learn.insert_failures),
            ("record_failures", &self.learn.record_failures),
        ] {
            ConstCounter::new(value.load(Ordering::Relaxed))
                .encode(ag.encode_family(&[("event", event)])?)?;
        }
        let mut ev = encoder.encode_descriptor(
            "deny_events_received",
            "Denied-destination events received by the agent, by action",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (action, value) in [
            ("dropped", self.events.dropped.load(Ordering::Relaxed)),
            ("audited", self.events.audited.load(Ordering::Relaxed)),
            ("unrecorded", self.events.unrecorded.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(value).encode(ev.encode_family(&[("action", action)])?)?;
        }
        Ok(())
    }
}
