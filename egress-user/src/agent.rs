//! `egress run`: load (or adopt) the datapath, apply the policy, attach, then serve metrics,
//! drain events, collect garbage and reload on SIGHUP until SIGTERM/SIGINT. Stopping the agent
//! leaves enforcement in place; `egress detach` removes it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{maps::RingBuf, programs::SchedClassifier};
use egress_common::{
    hash::name_hashes,
    maps::{Config, names},
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{
    attach::{self, AttachMode},
    clock,
    datapath::Datapath,
    ebpf, events, http, learn,
    metrics::{self, AgentMetrics},
    pins::{Hook, PinDir},
    policy::{self, Mode, NamePattern, Policy},
};

/// A TCP flow idle this long is forgotten; its next non-SYN packet is judged afresh.
pub const TCP_IDLE: Duration = Duration::from_secs(3600);
/// A UDP flow (QUIC) idle this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(300);
/// Denied-destination events each CPU may send per second.
pub const EVENTS_PER_SEC: u32 = 200;
/// How often expired learned addresses and idle flows are removed.
pub const GC_INTERVAL: Duration = Duration::from_secs(5);

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub policy: PathBuf,
    pub pin_dir: PathBuf,
    pub metrics_addr: SocketAddr,
    /// Overrides the policy's mode.
    pub mode: Option<Mode>,
    pub attach: AttachMode,
}

/// The kernel configuration a policy asks for. `key` is the name-hash key already in the maps
/// (adopted state), or a fresh one.
pub fn kernel_config(policy: &Policy, mode: Option<Mode>, key: (u64, u64)) -> Config {
    Config {
        mode: mode.unwrap_or(policy.mode).as_raw(),
        events_per_sec: EVENTS_PER_SEC,
        tcp_idle_ns: TCP_IDLE.as_nanos() as u64,
        udp_idle_ns: UDP_IDLE.as_nanos() as u64,
        hash_k0: key.0,
        hash_k1: key.1,
        min_ttl_s: policy.dns.min_ttl.as_secs() as u32,
        grace_s: policy.dns.grace.as_secs() as u32,
    }
}

/// The name-hash key of these maps: kept if the maps were configured before (a restart must
/// not invalidate the name maps), otherwise 128 fresh random bits.
fn hash_key(dp: &Datapath) -> anyhow::Result<(u64, u64)> {
    let cfg = dp.config()?;
    if cfg.mode != egress_common::mode::UNSET {
        return Ok((cfg.hash_k0, cfg.hash_k1));
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom for the name-hash key")?;
    Ok((
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
    ))
}

/// The resolvers whose answers are trusted: the policy's, or the nameservers of
/// `/etc/resolv.conf`.
pub fn resolvers(policy: &Policy) -> Vec<IpAddr> {
    if let Some(r) = &policy.resolvers {
        return r.clone();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    system_resolvers(&text)
}

/// Nameserver addresses from resolv.conf text (a `%scope` suffix is dropped).
pub fn system_resolvers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.split('%').next()?.parse().ok())
        .collect()
}

/// Writes a policy into the maps. Additions go in before removals and the mode and ports come
/// last, so what both the old and the new policy allow is never denied in between.
pub fn apply(dp: &mut Datapath, policy: &Policy, mode: Option<Mode>) -> anyhow::Result<()> {
    let key = hash_key(dp)?;
    let mut exact = BTreeSet::new();
    let mut wild = BTreeSet::new();
    for name in &policy.allow.names {
        match name {
            NamePattern::Exact(n) => exact.insert(name_hashes(key.0, key.1, n).0),
            NamePattern::Wildcard(suffix) => wild.insert(name_hashes(key.0, key.1, suffix).0),
        };
    }
    let resolvers = resolvers(policy);
    if !policy.allow.names.is_empty() {
        if resolvers.is_empty() {
            tracing::warn!("no resolvers: set `resolvers:` in the policy; no name will be learned");
        }
        for r in resolvers.iter().filter(|r| r.is_loopback()) {
            tracing::warn!(resolver = %r, "a loopback resolver's answers never cross the interface; list the upstream servers the local stub forwards to in `resolvers:`");
        }
    }
    dp.sync_static(&policy.allow.cidrs)?;
    dp.sync_resolvers(&resolvers)?;
    dp.sync_names(&exact, &wild)?;
    dp.set_ports(&policy.ports)?;
    dp.set_config(&kernel_config(policy, mode, key))?;
    Ok(())
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        ifaces,
        policy: policy_path,
        pin_dir,
        metrics_addr,
        mode,
        attach: attach_mode,
    } = opts;
    // Everything that can be checked is checked before the kernel is touched.
    let policy_text = policy::read(&policy_path)?;
    let policy = policy::parse(&policy_text, &policy_path)?;
    let ifaces = if ifaces.is_empty() {
        let found = crate::routes::default_route_interfaces()?;
        tracing::info!(ifaces = ?found, "no --iface given: enforcing on the interfaces of the default routes");
        found
    } else {
        ifaces
    };
    for iface in &ifaces {
        check_ethernet(iface)?;
    }
    let listener = http::bind(metrics_addr).await?;
    let pins = PinDir::new(&pin_dir);
    pins.ensure()?;

    let mut ebpf = ebpf::load(&pins).with_context(|| {
        format!(
            "cannot load the eBPF object with maps pinned under {} (the agent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
            pin_dir.display()
        )
    })?;
    let ring = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("EVENTS map missing")?)?;
    let dns_ring = RingBuf::try_from(
        ebpf.take_map(names::DNS_EVENTS)
            .context("DNS_EVENTS map missing")?,
    )?;
    let mut dp = Datapath::from_ebpf(&mut ebpf)?;
    apply(&mut dp, &policy, mode).context("cannot apply the policy to the maps")?;

    // Ingress (learning) first, so names are learned from the moment egress enforces.
    for hook in Hook::ALL {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(hook.name())
            .with_context(|| format!("program {} missing from the eBPF object", hook.name()))?
            .try_into()?;
        prog.load()
            .with_context(|| {
                format!(
                    "the kernel rejected the {} program (the agent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
                    hook.name()
                )
            })?;
        for iface in &ifaces {
            let how = attach::attach(prog, hook, iface, &pins, attach_mode)?;
            tracing::info!(iface, hook = hook.name(), ?how, "attached");
        }
        // The program pin is informational (links hold the program); replace it with ours.
        let prog_pin = pins.program(hook);
        let _ = std::fs::remove_file(&prog_pin);
        if let Err(e) = prog.pin(&prog_pin) {
            tracing::warn!(error = %e, path = %prog_pin.display(), "cannot pin the program");
        }
    }
    tracing::info!(
        mode = ?mode.unwrap_or(policy.mode),
        ports = ?policy.ports,
        cidrs = policy.allow.cidrs.len(),
        names = policy.allow.names.len(),
        pin_dir = %pin_dir.display(),
        "policy applied"
    );

    let dp = Arc::new(Mutex::new(dp));
    let agent_metrics = AgentMetrics::default();
    let event_stats = Arc::new(events::EventStats::default());
    let learn_stats = Arc::new(learn::LearnStats::default());
    let state = Arc::new(http::HttpState {
        registry: metrics::registry(
            dp.clone(),
            &agent_metrics,
            event_stats.clone(),
            learn_stats.clone(),
        ),
        ready: false.into(),
    });
    let cancel = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, state.clone(), cancel.clone()));
    let drain = {
        let (stats, dp, cancel) = (event_stats.clone(), dp.clone(), cancel.clone());
        tokio::spawn(async move { events::drain(ring, &stats, dp, cancel).await })
    };
    let learner = Arc::new(Mutex::new(learn::Learner::new(policy.allow.names.clone())));
    let learning = {
        let (dp, learner, stats, cancel) = (
            dp.clone(),
            learner.clone(),
            learn_stats.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            events::drain_ring(dns_ring, cancel, |item| {
                let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
                let mut learner = learner.lock().unwrap_or_else(|p| p.into_inner());
                learner.handle(item, &mut dp, &stats);
            })
            .await
        })
    };
    state.ready.store(true, Ordering::Release);
    tracing::info!(%metrics_addr, "ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let mut watch = crate::watch::PolicyWatch::new(&policy_path)?;
    let mut last_text = Some(policy_text);
    let mut current = policy;
    let mut learn_failed_seen = 0u64;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reload(&policy_path, None, &mut last_text, &mut current, mode, &dp, &learner, &agent_metrics);
            }
            _ = watch.changed() => {
                let text = std::fs::read_to_string(&policy_path).ok();
                if text.is_some() && text != last_text {
                    reload(&policy_path, text, &mut last_text, &mut current, mode, &dp, &learner, &agent_metrics);
                }
            }
            _ = gc.tick() => {
                let mut guard = dp.lock().unwrap_or_else(|p| p.into_inner());
                match guard.collect_garbage(clock::boot_ns()) {
                    Ok((learned, flows)) => {
                        agent_metrics.gc_learned_removed.inc_by(learned as u64);
                        agent_metrics.gc_flows_removed.inc_by(flows as u64);
                    }
                    Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                }
                // A full learned map fails inserts in the kernel: those addresses stay denied.
                if let Ok(c) = guard.counters() {
                    let failed = c[egress_common::counters::DNS_LEARN_FAILED as usize];
                    if failed > learn_failed_seen {
                        tracing::warn!(
                            failed = failed - learn_failed_seen,
                            capacity = egress_common::maps::LEARNED_CAPACITY,
                            "learned-address map full: new addresses stay denied until garbage collection frees room"
                        );
                        learn_failed_seen = failed;
                    }
                }
            }
        }
    }
    tracing::info!("stopping; enforcement stays in place (use `egress detach` to remove it)");
    cancel.cancel();
    let _ = server.await;
    let _ = drain.await;
    let _ = learning.await;
    Ok(())
}

/// Re-reads the policy (or takes `text`, already read) and applies the difference. A policy
/// that does not parse, or that the maps refuse, leaves the previous one in force: the error is
/// logged with its file:line:column and counted in `egress_reload_failures`.
#[expect(
    clippy::too_many_arguments,
    reason = "the agent's state, passed apart to keep locks short"
)]
fn reload(
    path: &std::path::Path,
    text: Option<String>,
    last_text: &mut Option<String>,
    current: &mut Policy,
    mode: Option<Mode>,
    dp: &Mutex<Datapath>,
    learner: &Mutex<learn::Learner>,
    metrics: &AgentMetrics,
) {
    let text = match text.map_or_else(|| policy::read(path), Ok) {
        Ok(t) => t,
        Err(e) => {
            metrics.reload_failures.inc();
            tracing::error!(error = %format!("{e:#}"), "policy reload failed; the previous policy stays in force");
            return;
        }
    };
    *last_text = Some(text.clone());
    let new = match policy::parse(&text, path) {
        Ok(p) => p,
        Err(e) => {
            metrics.reload_failures.inc();
            tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
            return;
        }
    };
    let mut guard = dp.lock().unwrap_or_else(|p| p.into_inner());
    match apply(&mut guard, &new, mode) {
        Ok(()) => {
            metrics.reloads.inc();
            learner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_names(new.allow.names.clone());
            tracing::info!(path = %path.display(), "policy reloaded");
            *current = new;
        }
        Err(e) => {
            metrics.reload_failures.inc();
            tracing::error!(error = %format!("{e:#}"), "cannot apply the reloaded policy; restoring the previous one");
            let _ = apply(&mut guard, current, mode);
        }
    }
}

/// The classifier parses Ethernet frames; any other link type (tun, WireGuard, ...) is refused
/// rather than enforced wrongly.
fn check_ethernet(iface: &str) -> anyhow::Result<()> {
    const ARPHRD_ETHER: u16 = 1;
    let hw_type = hardware_type(iface)
        .with_context(|| format!("interface {iface:?} does not exist or cannot be inspected"))?;
    if hw_type != ARPHRD_ETHER {
        bail!(
            "interface {iface:?} has link type {hw_type}, not Ethernet; egress only supports Ethernet-framed interfaces"
        );
    }
    Ok(())
}

fn hardware_type(iface: &str) -> std::io::Result<u16> {
    use std::os::fd::AsRawFd as _;
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: `ifreq` is plain data; zeroed is a valid starting value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes `ifr_ifru.ifru_hwaddr` of our `ifreq`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the hwaddr member of the union is the one written.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}
