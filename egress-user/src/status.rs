//! `egress status`: what the pinned maps hold, readable with or without a running agent.

use std::{fmt::Write as _, net::IpAddr, path::PathBuf};

use egress_common::{counters, mode};
use ipnet::IpNet;
use serde::Serialize;
use thiserror::Error;

use crate::{
    clock,
    datapath::{Datapath, DatapathError},
    pins::PinDir,
};

#[derive(Debug, Error)]
pub enum StatusError {
    #[error(transparent)]
    Layout(#[from] crate::ebpf::LayoutError),
    #[error("no egress state under {path}")]
    NoState {
        path: PathBuf,
        #[source]
        source: Box<DatapathError>,
    },
    #[error("cannot read the egress state under {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: Box<DatapathError>,
    },
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub layout: LayoutStatus,
    pub mode: &'static str,
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    pub tls: TlsStatus,
    pub resolvers: Vec<IpAddr>,
    /// Entries of the name maps: policy names, CNAME targets (expiring), wildcard suffixes.
    pub names: NameCounts,
    pub static_cidrs: Vec<IpNet>,
    /// Learned addresses grouped by the question name that last answered them (from the
    /// agent's answer record; `null` for addresses it has no name for).
    pub learned_by_name: Vec<NameStatus>,
    pub learned: Vec<LearnedStatus>,
    pub flows: usize,
    /// Flows admitted by a TLS server name, by the policy name or wildcard that matched (as far
    /// as the answers on record name it), most first.
    pub flows_by_name: Vec<(String, usize)>,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
}

/// The `tls:` settings in force, and the server names denied most.
#[derive(Debug, Serialize)]
pub struct TlsStatus {
    pub sni: &'static str,
    pub quic: &'static str,
    pub ports: Vec<u16>,
    /// Denied ClientHellos' server names, most denied first (at most 20).
    pub denied_names: Vec<(String, u64)>,
}

/// The datapath's layout (docs/design.md, *Layouts and upgrades*).
#[derive(Debug, Serialize)]
pub struct LayoutStatus {
    /// The layout in force (the source while migrating).
    pub version: u32,
    pub fingerprint: String,
    /// `stable` or `migrating`.
    pub state: &'static str,
    /// While migrating: the target layout, the last step done and when it began.
    pub target: u32,
    pub step: &'static str,
    pub started_unix_s: u64,
}

impl LayoutStatus {
    fn read(pins: &PinDir) -> Self {
        match crate::layout::read(pins) {
            Ok(r) => Self {
                version: r.version,
                fingerprint: format!("{:016x}", r.fingerprint),
                state: if r.state == crate::layout::state::MIGRATING {
                    "migrating"
                } else {
                    "stable"
                },
                target: r.target,
                step: crate::layout::migrate::Step::name(r.step),
                started_unix_s: r.started_unix_s,
            },
            Err(_) => Self {
                version: crate::layout::VERSION,
                fingerprint: "(no record)".into(),
                state: "unrecorded",
                target: crate::layout::VERSION,
                step: "none",
                started_unix_s: 0,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NameCounts {
    pub exact: usize,
    pub cname_targets: usize,
    pub wildcard_suffixes: usize,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct LearnedStatus {
    pub addr: IpAddr,
    /// Seconds until the address stops admitting new flows (negative: expired, awaiting GC).
    pub expires_in_s: f64,
    /// New flows the address admitted (approximate: see docs/metrics.md).
    pub hits: u64,
}

#[derive(Debug, Serialize)]
pub struct NameStatus {
    pub name: Option<String>,
    /// Sum of the addresses' hits.
    pub hits: u64,
    pub addresses: Vec<LearnedStatus>,
}

pub fn collect(pins: &PinDir) -> Result<Status, StatusError> {
    crate::ebpf::check_pinned(pins)?;
    let dp = Datapath::open_pinned(pins).map_err(|source| StatusError::NoState {
        path: pins.root().to_owned(),
        source: Box::new(source),
    })?;
    let read = |source: DatapathError| StatusError::Read {
        path: pins.root().to_owned(),
        source: Box::new(source),
    };
    let cfg = dp.config().map_err(read)?;
    let now = clock::boot_ns();
    let mut learned: Vec<LearnedStatus> = dp
        .learned()
        .map_err(read)?
        .into_iter()
        .map(|l| LearnedStatus {
            addr: l.addr,
            expires_in_s: (l.expires_ns as f64 - now as f64) / 1e9,
            hits: l.hits,
        })
        .collect();
    learned.sort_by_key(|a| a.addr);
    let named: std::collections::HashMap<IpAddr, String> = dp
        .answers()
        .map_err(read)?
        .into_iter()
        .map(|a| (a.addr, a.name))
        .collect();
    let mut groups: std::collections::BTreeMap<Option<String>, Vec<LearnedStatus>> =
        std::collections::BTreeMap::new();
    for l in &learned {
        groups
            .entry(named.get(&l.addr).cloned())
            .or_default()
            .push(*l);
    }
    let learned_by_name = groups
        .into_iter()
        .map(|(name, addresses)| NameStatus {
            name,
            hits: addresses.iter().map(|a| a.hits).sum(),
            addresses,
        })
        .collect();
    let mut static_cidrs = dp.static_cidrs().map_err(read)?;
    static_cidrs.sort();
    let counts = dp.counters().map_err(read)?;
    // Walked once: the count and the flows by admitting name come from the same pass.
    let flows = dp.flows().map_err(read)?;
    Ok(Status {
        pin_dir: pins.root().display().to_string(),
        layout: LayoutStatus::read(pins),
        mode: match cfg.mode {
            mode::ENFORCE => "enforce",
            mode::AUDIT => "audit",
            _ => "unset",
        },
        interfaces: dp.recorded_interfaces(pins).map_err(read)?,
        ports: dp.ports().map_err(read)?,
        tls: TlsStatus {
            sni: match cfg.sni() {
                egress_common::maps::tls_mode::ENFORCE => "enforce",
                egress_common::maps::tls_mode::AUDIT => "audit",
                _ => "off",
            },
            quic: match cfg.quic() {
                egress_common::maps::quic_mode::DENY => "deny",
                _ => "address",
            },
            ports: dp.tls_ports().map_err(read)?,
            denied_names: {
                let mut d: Vec<(String, u64)> = dp
                    .denied()
                    .map_err(read)?
                    .into_iter()
                    .filter(|d| d.tls)
                    .map(|d| (d.key, d.hits))
                    .collect();
                d.sort_by_key(|(k, hits)| (std::cmp::Reverse(*hits), k.clone()));
                d.truncate(20);
                d
            },
        },
        resolvers: {
            let mut r = dp.resolvers().map_err(read)?;
            r.sort();
            r
        },
        names: {
            let (exact, cname_targets, wildcard_suffixes) = dp.name_counts().map_err(read)?;
            NameCounts {
                exact,
                cname_targets,
                wildcard_suffixes,
            }
        },
        static_cidrs,
        learned_by_name,
        learned,
        flows: flows.len(),
        flows_by_name: flows_by_name(&dp, &cfg, &flows).map_err(read)?,
        counters: counters::NAMES.iter().copied().zip(counts).collect(),
    })
}

pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "pin dir:    {}", s.pin_dir);
    let l = &s.layout;
    let _ = match l.state {
        "migrating" => writeln!(
            o,
            "layout:     migrating {} -> {}, last step {}, began at {} (unix s)",
            l.version, l.target, l.step, l.started_unix_s
        ),
        _ => writeln!(
            o,
            "layout:     {} (fingerprint {}, maps under {}/v{})",
            l.version, l.fingerprint, s.pin_dir, l.version
        ),
    };
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
    let tls_ports: Vec<String> = s.tls.ports.iter().map(u16::to_string).collect();
    let _ = writeln!(
        o,
        "tls:        sni {}, quic {}, ports {}",
        s.tls.sni,
        s.tls.quic,
        if tls_ports.is_empty() {
            "(none)".to_owned()
        } else {
            tls_ports.join(", ")
        }
    );
    if !s.tls.denied_names.is_empty() {
        let _ = writeln!(o, "denied TLS server names:");
        for (name, hits) in &s.tls.denied_names {
            let _ = writeln!(o, "  {name}  ({hits} denied)");
        }
    }
    let resolvers: Vec<String> = s.resolvers.iter().map(IpAddr::to_string).collect();
    let _ = writeln!(o, "resolvers:  {}", resolvers.join(", "));
    let _ = writeln!(
        o,
        "names:      {} exact, {} wildcard suffixes, {} CNAME targets (expiring)",
        s.names.exact, s.names.wildcard_suffixes, s.names.cname_targets
    );
    let _ = writeln!(o, "flows:      {}", s.flows);
    if !s.flows_by_name.is_empty() {
        let by: Vec<String> = s
            .flows_by_name
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        let _ = writeln!(o, "  admitted by TLS server name: {}", by.join(", "));
    }
    let _ = writeln!(o, "static CIDRs ({}):", s.static_cidrs.len());
    for c in &s.static_cidrs {
        let _ = writeln!(o, "  {c}");
    }
    let _ = writeln!(
        o,
        "learned addresses ({}), by the name that last answered them:",
        s.learned.len()
    );
    for n in &s.learned_by_name {
        let _ = writeln!(
            o,
            "  {}  ({} hits)",
            n.name.as_deref().unwrap_or("(no name recorded)"),
            n.hits
        );
        for l in &n.addresses {
            let left = if l.expires_in_s >= 0.0 {
                format!("{:.0}s left", l.expires_in_s)
            } else {
                "expired".into()
            };
            let _ = writeln!(o, "    {:<40} {left:>12}  {} hits", l.addr, l.hits);
        }
    }
    let _ = writeln!(o, "counters:");
    for (name, v) in &s.counters {
        let _ = writeln!(o, "  {name:<20} {v}");
    }
    o
}

/// Counts the flows admitted by a TLS server name under the policy name or wildcard that
/// admitted them (`FlowValue::rule`). The kernel keeps only the rule's hash: it is named from
/// the answers on record (each answered name and its suffixes, hashed with the maps' key), and
/// shown as its hash when no answer names it.
fn flows_by_name(
    dp: &Datapath,
    cfg: &egress_common::maps::Config,
    flows: &[(egress_common::maps::FlowKey, egress_common::maps::FlowValue)],
) -> Result<Vec<(String, usize)>, DatapathError> {
    let mut counts: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for (_, v) in flows {
        if v.rule != 0 {
            *counts.entry(v.rule).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let mut names: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    for a in dp.answers()? {
        let lower = crate::learn::normalize(&a.name);
        let (full, suffixes) = egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, &lower);
        names.entry(full).or_insert_with(|| lower.clone());
        let labels: Vec<&str> = lower.split('.').collect();
        for (i, h) in suffixes.as_slice().iter().enumerate() {
            names
                .entry(*h)
                .or_insert_with(|| format!("*.{}", labels[i + 1..].join(".")));
        }
    }
    let mut out: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(h, n)| {
            (
                names
                    .get(&h)
                    .cloned()
                    .unwrap_or_else(|| format!("{h:#018x}")),
                n,
            )
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}
