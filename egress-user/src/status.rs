//! `egress status`: what the pinned maps hold, readable with or without a running agent.

use std::{fmt::Write as _, net::IpAddr};

use egress_common::{counters, mode};
use ipnet::IpNet;
use serde::Serialize;

use crate::{clock, datapath::Datapath, pins::PinDir};

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub mode: &'static str,
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    pub resolvers: Vec<IpAddr>,
    /// Entries of the name maps: policy names, CNAME targets (expiring), wildcard suffixes.
    pub names: NameCounts,
    pub static_cidrs: Vec<IpNet>,
    pub learned: Vec<LearnedStatus>,
    pub flows: usize,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct NameCounts {
    pub exact: usize,
    pub cname_targets: usize,
    pub wildcard_suffixes: usize,
}

#[derive(Debug, Serialize)]
pub struct LearnedStatus {
    pub addr: IpAddr,
    /// Seconds until the address stops admitting new flows (negative: expired, awaiting GC).
    pub expires_in_s: f64,
}

pub fn collect(pins: &PinDir) -> anyhow::Result<Status> {
    use anyhow::Context as _;
    let dp = Datapath::open_pinned(pins)
        .with_context(|| format!("no egress state under {}", pins.root().display()))?;
    let cfg = dp.config()?;
    let now = clock::boot_ns();
    let mut learned: Vec<LearnedStatus> = dp
        .learned()?
        .into_iter()
        .map(|l| LearnedStatus {
            addr: l.addr,
            expires_in_s: (l.expires_ns as f64 - now as f64) / 1e9,
        })
        .collect();
    learned.sort_by_key(|a| a.addr);
    let mut static_cidrs = dp.static_cidrs()?;
    static_cidrs.sort();
    let counts = dp.counters()?;
    Ok(Status {
        pin_dir: pins.root().display().to_string(),
        mode: match cfg.mode {
            mode::ENFORCE => "enforce",
            mode::AUDIT => "audit",
            _ => "unset",
        },
        interfaces: pins.linked_interfaces(),
        ports: dp.ports()?,
        resolvers: {
            let mut r = dp.resolvers();
            r.sort();
            r
        },
        names: {
            let (exact, cname_targets, wildcard_suffixes) = dp.name_counts();
            NameCounts {
                exact,
                cname_targets,
                wildcard_suffixes,
            }
        },
        static_cidrs,
        learned,
        flows: dp.flows().len(),
        counters: counters::NAMES.iter().copied().zip(counts).collect(),
    })
}

pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "pin dir:    {}", s.pin_dir);
    let _ = writeln!(o, "mode:       {}", s.mode);
    let _ = writeln!(
        o,
        "interfaces: {}",
        if s.interfaces.is_empty() {
            "(none via TCX link pins)".into()
        } else {
            s.interfaces.join(", ")
        }
    );
    let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
    let _ = writeln!(o, "ports:      {}", ports.join(", "));
    let resolvers: Vec<String> = s.resolvers.iter().map(IpAddr::to_string).collect();
    let _ = writeln!(o, "resolvers:  {}", resolvers.join(", "));
    let _ = writeln!(
        o,
        "names:      {} exact, {} wildcard suffixes, {} CNAME targets (expiring)",
        s.names.exact, s.names.wildcard_suffixes, s.names.cname_targets
    );
    let _ = writeln!(o, "flows:      {}", s.flows);
    let _ = writeln!(o, "static CIDRs ({}):", s.static_cidrs.len());
    for c in &s.static_cidrs {
        let _ = writeln!(o, "  {c}");
    }
    let _ = writeln!(o, "learned addresses ({}):", s.learned.len());
    for l in &s.learned {
        let left = if l.expires_in_s >= 0.0 {
            format!("{:.0}s left", l.expires_in_s)
        } else {
            "expired".into()
        };
        let _ = writeln!(o, "  {:<40} {left}", l.addr);
    }
    let _ = writeln!(o, "counters:");
    for (name, v) in &s.counters {
        let _ = writeln!(o, "  {name:<20} {v}");
    }
    o
}
