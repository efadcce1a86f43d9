//! A policy written into the maps: what the kernel is configured with for a policy, the name
//! hashes, the trusted resolvers, and the order of the writes.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, time::Duration};

use egress_common::{
    hash::name_hashes,
    maps::{Config, generation, learn, names},
};
use ipnet::IpNet;
use thiserror::Error;

use crate::{
    clock,
    datapath::{Datapath, DatapathError, Reconciled},
    policy::{Mode, NamePattern, Policy, Revoked},
};

/// A TCP flow idle this long is forgotten; its next non-SYN packet is judged afresh.
pub const TCP_IDLE: Duration = Duration::from_secs(3600);
/// A UDP flow (QUIC) idle this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(300);
/// Denied-destination events each CPU may send per second.
pub const EVENTS_PER_SEC: u32 = 200;

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("cannot read /dev/urandom for the name-hash key")]
    Random {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the policy into the maps")]
    Maps {
        #[from]
        source: DatapathError,
    },
}

/// The resolv.conf read when a policy names no resolvers.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the command line sets beside the policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overrides {
    /// Overrides the policy's mode (`egress run --mode`).
    pub mode: Option<Mode>,
    /// DNS answers are learned at the sockets (`egress run --dns-cgroup`), not at the
    /// interfaces.
    pub learn_at_sockets: bool,
    /// The resolv.conf files whose nameservers are trusted when the policy names no resolvers
    /// (`egress run --resolv-conf`, default [`SYSTEM_RESOLV_CONF`]).
    pub resolv_confs: Vec<PathBuf>,
}

impl Default for Overrides {
    fn default() -> Self {
        Self {
            mode: None,
            learn_at_sockets: false,
            resolv_confs: vec![PathBuf::from(SYSTEM_RESOLV_CONF)],
        }
    }
}

/// The kernel configuration a policy asks for. `key` is the name-hash key already in the maps
/// (adopted state), or a fresh one.
pub fn kernel_config(policy: &Policy, overrides: &Overrides, key: (u64, u64)) -> Config {
    Config {
        mode: overrides.mode.unwrap_or(policy.mode).as_raw(),
        events_per_sec: EVENTS_PER_SEC,
        tcp_idle_ns: TCP_IDLE.as_nanos() as u64,
        udp_idle_ns: UDP_IDLE.as_nanos() as u64,
        hash_k0: key.0,
        hash_k1: key.1,
        min_ttl_s: policy.dns.min_ttl.as_secs() as u32,
        grace_s: policy.dns.grace.as_secs() as u32,
        learn: if overrides.learn_at_sockets {
            learn::SOCKETS
        } else {
            learn::INTERFACE
        },
        client_query_rate: policy.dns.client_query_rate,
        tls: policy.tls.as_raw(),
        // Set by `apply_with_key`: the generation it writes.
        generation: 0,
    }
}

/// The name-hash key of these maps: kept if the maps were configured before (a restart must
/// not invalidate the name maps), otherwise 128 fresh random bits.
fn hash_key(dp: &Datapath) -> Result<(u64, u64), ApplyError> {
    key_of(&dp.config()?)
}

/// The name-hash key a configuration slot stands for: its own if a policy was ever applied
/// there, otherwise 128 fresh random bits.
pub fn key_of(cfg: &Config) -> Result<(u64, u64), ApplyError> {
    if cfg.mode != egress_common::mode::UNSET {
        return Ok((cfg.hash_k0, cfg.hash_k1));
    }
    random_key()
}

fn random_key() -> Result<(u64, u64), ApplyError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|source| ApplyError::Random { source })?;
    Ok((
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
    ))
}

/// The resolvers whose answers are trusted: the policy's, or the nameservers of the
/// `resolv_confs` files (read again at every apply, so a reload follows their changes; a
/// missing file contributes none), without repeats.
pub fn resolvers(policy: &Policy, resolv_confs: &[PathBuf]) -> Vec<IpAddr> {
    if let Some(r) = &policy.resolvers {
        return r.clone();
    }
    let mut out = Vec::new();
    for path in resolv_confs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for r in system_resolvers(&text) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// Nameserver addresses from resolv.conf text (a `%scope` suffix is dropped).
pub fn system_resolvers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

/// What applying a policy did beyond writing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The learned state made true to the new rules (revocations).
    pub reconciled: Reconciled,
    /// Established flows cut (`revoked_connections: cut`).
    pub cut: usize,
    /// What the policy maps now hold, to check them against later ([`drift`]).
    pub written: Written,
}

/// The policy maps as [`apply`] wrote them: anything else found there later was written by
/// someone else (a root process with the host's bpffs can rewrite pinned maps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub config: Config,
    pub ports: Vec<u16>,
    pub tls_ports: Vec<u16>,
    pub cidrs: BTreeSet<IpNet>,
    pub resolvers: BTreeSet<IpAddr>,
    pub exact: BTreeSet<u64>,
    pub wild: BTreeSet<u64>,
}

/// The policy maps whose content differs from what was `written` (their names).
pub fn drift(dp: &Datapath, written: &Written) -> Result<Vec<&'static str>, DatapathError> {
    let mut changed = Vec::new();
    if dp.config()? != written.config {
        changed.push(names::CONFIG);
    }
    if dp.ports()? != written.ports {
        changed.push(names::PORTS);
    }
    if dp.tls_ports()? != written.tls_ports {
        changed.push(names::TLS_PORTS);
    }
    let cidrs: BTreeSet<IpNet> = dp.static_cidrs()?.into_iter().collect();
    if cidrs != written.cidrs || dp.foreign_static_keys()? > 0 {
        changed.push(names::STATIC_V4);
    }
    // Compared in the kernel's form: `::ffff:a.b.c.d` and `a.b.c.d` are one key there.
    let canonical = |r: &BTreeSet<IpAddr>| -> BTreeSet<[u8; 16]> {
        r.iter().map(|a| crate::datapath::mapped(*a)).collect()
    };
    let resolvers: BTreeSet<IpAddr> = dp.resolvers()?.into_iter().collect();
    if canonical(&resolvers) != canonical(&written.resolvers) {
        changed.push(names::RESOLVERS);
    }
    let (exact, wild) = dp.policy_names()?;
    if exact != written.exact {
        changed.push(names::NAMES_EXACT);
    }
    if wild != written.wild {
        changed.push(names::NAMES_WILD);
    }
    Ok(changed)
}

/// Writes a policy into the maps: whole, into the generation not in force, then put in force
/// with one write, so the programs (and the maps, if the agent is killed at any step) hold the
/// old policy or the new one, never a mix. Then what only removed rules allowed is revoked at
/// once (not at its TTL), and with `revoked_connections: cut` the flows to destinations no
/// longer allowed are forgotten.
pub fn apply(
    dp: &mut Datapath,
    policy: &Policy,
    overrides: &Overrides,
) -> Result<Applied, ApplyError> {
    let key = hash_key(dp)?;
    apply_with_key(dp, policy, overrides, key)
}

/// [`apply`] with the name-hash key the agent knows is in force (its own record of what it
/// wrote), not the one in `CONFIG`: a reload or a repair after someone rewrote `CONFIG` must
/// not adopt their key (every rule hash would change and every learned address be revoked).
pub fn apply_with_key(
    dp: &mut Datapath,
    policy: &Policy,
    overrides: &Overrides,
    key: (u64, u64),
) -> Result<Applied, ApplyError> {
    let switched = switch(dp, policy, overrides, key)?;
    let now = clock::boot_ns();
    let (rules, names) = dp.reconcile_names(now)?;
    settle(dp, switched, &rules, names, now)
}

/// What [`switch`] leaves to [`settle`].
#[derive(Debug)]
pub struct Switched {
    written: Written,
    /// Static CIDRs the previous policy had and this one has not.
    removed_cidrs: Vec<IpNet>,
    revoked_connections: Revoked,
}

/// The first half of [`apply_with_key`]: writes the policy into the generation not in force and
/// puts it in force with one write. What only removed rules allowed is still allowed until
/// [`settle`].
pub fn switch(
    dp: &mut Datapath,
    policy: &Policy,
    overrides: &Overrides,
    key: (u64, u64),
) -> Result<Switched, ApplyError> {
    let mut exact = BTreeSet::new();
    let mut wild = BTreeSet::new();
    for name in &policy.allow.names {
        match name {
            NamePattern::Exact(n) => exact.insert(name_hashes(key.0, key.1, n).0),
            NamePattern::Wildcard(suffix) => wild.insert(name_hashes(key.0, key.1, suffix).0),
        };
    }
    let resolvers = resolvers(policy, &overrides.resolv_confs);
    if !policy.allow.names.is_empty() {
        if resolvers.is_empty() {
            tracing::warn!("no resolvers: set `resolvers:` in the policy; no name will be learned");
        }
        for r in resolvers.iter().filter(|r| r.is_loopback()) {
            tracing::warn!(resolver = %r, "a loopback resolver's answers never cross the interface; list the upstream servers the local stub forwards to in `resolvers:`");
        }
    }
    // The new policy goes into the generation not in force, whole, before one write switches
    // to it (see `egress_common::maps::generation`).
    let target = generation::other(dp.active()?);
    let config = Config {
        generation: target,
        ..kernel_config(policy, overrides, key)
    };
    let new_cidrs: BTreeSet<IpNet> = policy.allow.cidrs.iter().map(IpNet::trunc).collect();
    let removed_cidrs: Vec<IpNet> = dp
        .static_cidrs()?
        .into_iter()
        .filter(|n| !new_cidrs.contains(n))
        .collect();
    dp.write_static(target, &policy.allow.cidrs)?;
    dp.write_resolvers(target, &resolvers)?;
    dp.write_names(target, &exact, &wild)?;
    dp.write_ports(target, &policy.ports)?;
    dp.write_tls_ports(target, &policy.tls.ports)?;
    dp.write_config(&config)?;
    dp.activate(target)?;
    // The old generation is retired later (`Datapath::retire_due`), not now: a program run
    // that read the old configuration just before the switch still looks up its entries.
    let mut ports = policy.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let written = Written {
        config,
        ports,
        tls_ports: policy.tls.ports.clone(),
        cidrs: new_cidrs,
        resolvers: resolvers.iter().copied().collect(),
        exact,
        wild,
    };
    Ok(Switched {
        written,
        removed_cidrs,
        revoked_connections: policy.revoked_connections,
    })
}

/// The second half of [`apply_with_key`], after the name half of the reconciliation
/// (`Datapath::reconcile_names`, which gave `rules` and `names`): revokes and shortens the
/// learned addresses to what the rules in force allow and, with `revoked_connections: cut`,
/// forgets the flows to destinations no longer allowed. It walks the learned maps and flow
/// tables only, so the agent runs it on a handle of its own without its lock.
pub fn settle(
    dp: &mut Datapath,
    switched: Switched,
    rules: &BTreeSet<egress_common::maps::Rule>,
    names: usize,
    now: u64,
) -> Result<Applied, ApplyError> {
    let mut reconciled = dp.reconcile_learned(now, rules)?;
    reconciled.names = names;
    let cut = match switched.revoked_connections {
        Revoked::Keep => 0,
        Revoked::Cut => dp.cut_flows(now, &reconciled.revoked_addrs, &switched.removed_cidrs)?,
    };
    Ok(Applied {
        reconciled,
        cut,
        written: switched.written,
    })
}
