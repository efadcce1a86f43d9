//! Prometheus metrics, registered in one place. Datapath counters are read from the kernel at
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
        gauge::ConstGauge,
    },
    registry::Registry,
};

use crate::{datapath::Datapath, events::EventStats};

/// Agent-side counters.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub gc_learned_removed: Counter,
    pub gc_flows_removed: Counter,
}

pub fn registry(
    dp: Arc<Mutex<Datapath>>,
    agent: &AgentMetrics,
    events: Arc<EventStats>,
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
        "gc_flows_removed",
        "Idle flows removed by garbage collection",
        agent.gc_flows_removed.clone(),
    );
    r.register_collector(Box::new(DatapathCollector { dp, events }));
    r
}

#[derive(Debug)]
struct DatapathCollector {
    dp: Arc<Mutex<Datapath>>,
    events: Arc<EventStats>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (counts, learned, statics, flows) = {
            let dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
            (
                dp.counters().unwrap_or([0; counters::COUNT as usize]),
                dp.learned().map(|l| l.len()).unwrap_or(0),
                dp.static_cidrs().map(|s| s.len()).unwrap_or(0),
                dp.flows().len(),
            )
        };
        let mut family = encoder.encode_descriptor(
            "egress_datapath",
            "Datapath decisions and events, by counter (see docs/design.md)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, value) in counters::NAMES.iter().zip(counts) {
            let labels = [("counter", *name)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "egress_learned_entries",
                "Learned addresses in the kernel maps",
                learned,
            ),
            (
                "egress_static_entries",
                "Static CIDRs in the kernel maps",
                statics,
            ),
            ("egress_flows", "Entries in the flow table", flows),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let mut ev = encoder.encode_descriptor(
            "egress_deny_events_received",
            "Denied-destination events received by the agent, by action",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (action, value) in [
            ("dropped", self.events.dropped.load(Ordering::Relaxed)),
            ("audited", self.events.audited.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(value).encode(ev.encode_family(&[("action", action)])?)?;
        }
        Ok(())
    }
}
