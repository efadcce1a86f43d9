//! `egress run`: the [`Agent`]. It loads (or adopts) the datapath, applies the policy, attaches,
//! then serves metrics, drains events, collects garbage and reloads on SIGHUP or a change of the
//! policy file until SIGTERM/SIGINT. Stopping the agent leaves enforcement in place; `egress
//! detach` removes it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use aya::{
    EbpfError,
    maps::{MapError, RingBuf},
    programs::{ProgramError, SchedClassifier},
};
use egress_common::maps::names;
use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    apply::{ApplyError, Overrides, apply, apply_with_key},
    attach::{self, AttachError, AttachMode},
    clock,
    datapath::Datapath,
    ebpf, events,
    http::{self, HttpError, HttpState},
    layout, learn,
    metrics::{self, AgentMetrics},
    pins::{Hook, PinDir, PinError},
    policy::{self, Mode, Policy, PolicyError},
    routes::{self, RoutesError},
    sockets::{self, SocketsError},
    watch::{PolicyWatch, WatchError},
};

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
    /// Learn DNS answers at the sockets of every process in this cgroup v2 (see
    /// `sockets.rs`) instead of at the interfaces.
    pub dns_cgroup: Option<PathBuf>,
    /// The resolv.conf files trusted when the policy names no resolvers.
    pub resolv_confs: Vec<PathBuf>,
}

/// The agent needs these capabilities; errors that may come from missing ones say so.
const CAPS: &str = "the agent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";

/// What can stop the agent from starting or running. Boxed: the kernel's error types are large,
/// and a `Result` carries its error inline.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct AgentError(Box<AgentErrorKind>);

impl<E> From<E> for AgentError
where
    AgentErrorKind: From<E>,
{
    fn from(e: E) -> Self {
        Self(Box::new(AgentErrorKind::from(e)))
    }
}

impl AgentError {
    pub fn kind(&self) -> &AgentErrorKind {
        &self.0
    }
}

#[derive(Debug, Error)]
pub enum AgentErrorKind {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error("interface {iface:?} does not exist or cannot be inspected")]
    Interface {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "interface {iface:?} has link type {hw_type}, not Ethernet; egress only supports Ethernet-framed interfaces"
    )]
    NotEthernet { iface: String, hw_type: u16 },
    #[error(
        "{CAPS}; it runs without {missing} (add it to the container's securityContext.capabilities, or to the unit's AmbientCapabilities)"
    )]
    Capabilities { missing: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    Layout(#[from] ebpf::LayoutError),
    #[error(transparent)]
    Migrate(#[from] layout::migrate::MigrateError),
    #[error("cannot load the eBPF object with maps pinned under {pin_dir} ({CAPS})")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: EbpfError,
    },
    #[error("ring buffer {name} is missing from the eBPF object or has another type")]
    Ring {
        name: &'static str,
        #[source]
        source: Option<MapError>,
    },
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error("cannot apply the policy to the maps")]
    Apply {
        #[source]
        source: ApplyError,
    },
    #[error("program {name} is missing from the eBPF object or is not a classifier")]
    Program {
        name: &'static str,
        #[source]
        source: Option<ProgramError>,
    },
    #[error("the kernel rejected the {name} program ({CAPS})")]
    Verifier {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Sockets(#[from] SocketsError),
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] WatchError),
}

type Result<T> = std::result::Result<T, AgentError>;

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    Agent::start(opts).await?.run().await
}

/// The running agent and everything it owns.
pub struct Agent {
    policy_path: PathBuf,
    /// What the command line sets beside the policy (mode, where to learn).
    overrides: Overrides,
    /// The policy in force, and the text it was read from (a file change to the same text is
    /// not a reload).
    policy: Policy,
    policy_text: Option<String>,
    dp: Arc<Mutex<Datapath>>,
    /// Garbage collection's own handle on the maps, for the walks of the learned maps and
    /// flow tables: seconds when they are full, during which the lock on `dp` (which DNS
    /// learning and the event drain need) is not held.
    gc_dp: Datapath,
    learner: Arc<Mutex<learn::Learner>>,
    metrics: AgentMetrics,
    http: Arc<HttpState>,
    /// The background loops (metrics server, event drain, DNS learning), by name.
    tasks: JoinSet<(&'static str, std::io::Result<()>)>,
    cancel: CancellationToken,
    /// `DNS_LEARN_FAILED` at the last GC tick, to warn once per increase.
    learn_failed_seen: u64,
    /// Where and how the programs were attached, and the interface's index then (for the
    /// attachment check).
    attachments: Vec<(String, Hook, attach::Attached, u32)>,
    pins: PinDir,
    /// What `/readyz` and `/healthz` are made of.
    health: Health,
    /// The loaded programs, to attach again what was detached or overtaken.
    ebpf: aya::Ebpf,
    /// The pin directory's lock, held while the agent runs.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// What the policy maps hold since the last apply, to find and undo others' writes.
    written: crate::apply::Written,
}

/// The parts of the agent's readiness.
#[derive(Clone, Copy, Debug)]
struct Health {
    /// Every background loop is running.
    tasks: bool,
    /// The policy in force is the file's: the last reload succeeded.
    policy: bool,
    /// The programs were found attached on every interface at the last check.
    attached: bool,
}

impl Agent {
    /// Checks everything that can be checked before touching the kernel, then loads (or
    /// adopts) the maps, applies the policy, attaches the programs and starts the loops.
    pub async fn start(opts: RunOptions) -> Result<Self> {
        let RunOptions {
            ifaces,
            policy: policy_path,
            pin_dir,
            metrics_addr,
            mode,
            attach: attach_mode,
            dns_cgroup,
            resolv_confs,
        } = opts;
        let overrides = Overrides {
            mode,
            learn_at_sockets: dns_cgroup.is_some(),
            resolv_confs,
        };
        let policy_text = policy::read(&policy_path)?;
        let policy = policy::parse(&policy_text, &policy_path)?;
        warn_broad(&policy);
        let ifaces = if ifaces.is_empty() {
            let found = routes::default_route_interfaces()?;
            tracing::info!(ifaces = ?found, "no --iface given: enforcing on the interfaces of the default routes");
            found
        } else {
            ifaces
        };
        for iface in &ifaces {
            check_ethernet(iface)?;
        }
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(AgentErrorKind::Capabilities {
                missing: missing.join(" and "),
            }
            .into());
        }
        let pins = PinDir::new(&pin_dir);
        pins.ensure()?;
        // One agent per pin directory: taken before the metrics port and the pins, held until
        // the process ends.
        let lock = pins.lock()?;
        let listener = http::bind(metrics_addr).await?;

        // What is pinned decides: a first start, a restart, or an upgrade from an older layout
        // (docs/design.md, *Layouts and upgrades*). Every refusal comes before any change.
        let mut migration = layout::migrate::prepare(&pins)?;
        ebpf::check_pinned(&pins)?;
        let mut ebpf = ebpf::load(&pins).map_err(|source| AgentErrorKind::Load {
            pin_dir: pin_dir.clone(),
            source,
        })?;
        // Both classifiers verified before anything in force changes (an upgrade's point of no
        // return comes after this).
        for hook in Hook::ALL {
            let name = hook.name();
            let prog = classifier(&mut ebpf, hook)?;
            prog.load()
                .map_err(|source| AgentErrorKind::Verifier { name, source })?;
        }
        let cgroup = match &dns_cgroup {
            Some(path) => Some((path, sockets::verify(&mut ebpf, path)?)),
            None => None,
        };
        let ring = |ebpf: &mut aya::Ebpf, name: &'static str| {
            let map = ebpf
                .take_map(name)
                .ok_or(AgentErrorKind::Ring { name, source: None })?;
            let ring = RingBuf::try_from(map).map_err(|source| AgentErrorKind::Ring {
                name,
                source: Some(source),
            })?;
            Ok::<_, AgentError>(ring)
        };
        let events_ring = ring(&mut ebpf, names::EVENTS)?;
        let dns_ring = ring(&mut ebpf, names::DNS_EVENTS)?;
        let mut dp = Datapath::from_ebpf(&mut ebpf)?;
        let applied = match migration.as_mut() {
            None => apply(&mut dp, &policy, &overrides),
            Some(m) => {
                m.built(
                    &dp.recorded_attachments(&pins)?,
                    &ifaces,
                    attach_mode.record(),
                )?;
                m.fill()?;
                // The carried key: a fresh one would change every rule hash and revoke every
                // learned address.
                let applied = apply_with_key(&mut dp, &policy, &overrides, m.key());
                if applied.is_ok() {
                    m.guard()?;
                }
                applied
            }
        }
        .map_err(|source| AgentErrorKind::Apply { source })?;
        if applied.reconciled.revoked > 0 {
            tracing::info!(
                revoked = applied.reconciled.revoked,
                "learned addresses that no rule of this policy allows were revoked"
            );
        }

        // Learning before enforcement: the socket programs first (or the links of a previous
        // run that learned there removed), then the interfaces.
        match &cgroup {
            Some((path, dir)) => sockets::attach(&mut ebpf, dir, path, &pins)?,
            None => sockets::detach(&pins)?,
        }

        // Ingress (learning) first, so names are learned from the moment egress enforces.
        let mut attachments = Vec::new();
        for hook in Hook::ALL {
            let name = hook.name();
            let prog = classifier(&mut ebpf, hook)?;
            for iface in &ifaces {
                let how = attach::attach(prog, hook, iface, &pins, attach_mode)?;
                tracing::info!(iface, hook = name, ?how, "attached");
                dp.record_attached(iface, how.record())?;
                let index = attach::ifindex(iface).unwrap_or(0);
                attachments.push((iface.clone(), hook, how, index));
                if let Some(m) = &migration {
                    m.swapped_one(attachments.len());
                }
            }
            // The program pin is informational (links hold the program); replace it with ours.
            let prog_pin = pins.program(hook);
            let _ = std::fs::remove_file(&prog_pin);
            if let Err(e) = prog.pin(&prog_pin) {
                tracing::warn!(error = %e, path = %prog_pin.display(), "cannot pin the program");
            }
        }
        if let Some(m) = migration.take() {
            m.finish()?;
        }
        tracing::info!(
            mode = ?mode.unwrap_or(policy.mode),
            learn_at = if dns_cgroup.is_some() { "sockets" } else { "interfaces" },
            ports = ?policy.ports,
            cidrs = policy.allow.cidrs.len(),
            names = policy.allow.names.len(),
            pin_dir = %pin_dir.display(),
            "policy applied"
        );

        let dp = Arc::new(Mutex::new(dp));
        let metrics = AgentMetrics::default();
        // What the first apply revoked (a restart with a narrower policy) counts too.
        metrics.count_reconciled(&applied.reconciled);
        let event_stats = Arc::new(events::EventStats::default());
        let learn_stats = Arc::new(learn::LearnStats::default());
        // The scrape reads the maps through handles of its own, opened from the pins: walking
        // every bounded map takes time proportional to its entries, and holding the agent's
        // datapath lock meanwhile would stall DNS learning and the event drain.
        let scrape_dp = Arc::new(Mutex::new(Datapath::open_pinned(&pins)?));
        let gc_dp = Datapath::open_pinned(&pins)?;
        let http = Arc::new(HttpState {
            registry: metrics::registry(
                scrape_dp,
                &metrics,
                event_stats.clone(),
                learn_stats.clone(),
            ),
            ready: false.into(),
            healthy: true.into(),
            scrapes: http::ScrapeQueue::default(),
        });
        let learner = Arc::new(Mutex::new(learn::Learner::new(policy.allow.names.clone())));
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        {
            let (http, cancel) = (http.clone(), cancel.clone());
            tasks.spawn(
                async move { ("metrics server", http::serve(listener, http, cancel).await) },
            );
        }
        {
            let (stats, dp, cancel) = (event_stats, dp.clone(), cancel.clone());
            tasks.spawn(async move {
                (
                    "denied-event drain",
                    events::drain(events_ring, &stats, dp, cancel).await,
                )
            });
        }
        {
            let (dp, learner, stats, cancel) =
                (dp.clone(), learner.clone(), learn_stats, cancel.clone());
            // Debug builds only: `EGRESS_TEST_FAIL=dns-learning` makes this loop panic at its
            // first copy, so the tests can prove that a dead loop turns /healthz and /readyz
            // to 503 while the kernel goes on enforcing. Release builds have no such switch.
            #[cfg(debug_assertions)]
            let fail = std::env::var("EGRESS_TEST_FAIL").is_ok_and(|v| v == "dns-learning");
            // Debug builds only: `EGRESS_TEST_DNS_READ_PERIOD_MS` stretches the timed read, so
            // the tests can tell the copies the kernel wakes the agent for from the others.
            #[cfg(debug_assertions)]
            let period = std::env::var("EGRESS_TEST_DNS_READ_PERIOD_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(events::DNS_READ_PERIOD, Duration::from_millis);
            #[cfg(not(debug_assertions))]
            let period = events::DNS_READ_PERIOD;
            tasks.spawn(async move {
                let drained = events::drain_ring(dns_ring, cancel, Some(period), |item| {
                    #[cfg(debug_assertions)]
                    assert!(!fail, "EGRESS_TEST_FAIL=dns-learning");
                    let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
                    let mut learner = learner.lock().unwrap_or_else(|p| p.into_inner());
                    learner.handle(item, &mut dp, &stats);
                })
                .await;
                ("DNS learning", drained)
            });
        }
        tracing::info!(%metrics_addr, "serving metrics and health");
        let agent = Self {
            policy_path,
            overrides,
            policy,
            policy_text: Some(policy_text),
            dp,
            gc_dp,
            learner,
            metrics,
            http,
            tasks,
            cancel,
            learn_failed_seen: 0,
            attachments,
            pins,
            health: Health {
                tasks: true,
                policy: true,
                attached: true,
            },
            ebpf,
            _lock: lock,
            written: applied.written,
        };
        // Not ready yet: `run` publishes readiness once it watches the policy file and handles
        // SIGHUP (before that, a SIGHUP would kill the process and a change would be missed).
        agent.publish_info();
        Ok(agent)
    }

    /// The agent's loop: signals, policy-file changes, garbage collection and the background
    /// tasks, until SIGTERM or SIGINT.
    pub async fn run(mut self) -> Result<()> {
        let handler = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| {
                AgentError::from(AgentErrorKind::Signal {
                    signal: name,
                    source,
                })
            })
        };
        let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
        let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
        let mut hup = handler(SignalKind::hangup(), "SIGHUP")?;
        let mut gc = tokio::time::interval(GC_INTERVAL);
        let mut watch = PolicyWatch::new(&self.policy_path)?;
        // A change between the first read and the watch: take it up now.
        let text = std::fs::read_to_string(&self.policy_path).ok();
        if text.is_some() && text != self.policy_text {
            self.reload(text);
        }
        self.publish_health();
        tracing::info!("ready");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => tokio::task::block_in_place(|| self.reload(None)),
                _ = watch.changed() => {
                    let text = std::fs::read_to_string(&self.policy_path).ok();
                    if text.is_some() && text != self.policy_text {
                        tokio::task::block_in_place(|| self.reload(text));
                    }
                }
                // Garbage collection walks every learned entry (seconds at a million under
                // emulation): off the async workers, so the metrics and health endpoints stay
                // responsive meanwhile.
                _ = gc.tick() => tokio::task::block_in_place(|| self.gc_tick()),
                Some(ended) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.task_ended(ended);
                }
            }
        }
        tracing::info!("stopping; enforcement stays in place (use `egress detach` to remove it)");
        self.cancel.cancel();
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = ended {
                tracing::warn!(task = name, error = %e, "task failed while stopping");
            }
        }
        Ok(())
    }

    /// A background loop ended before the agent was told to stop: the agent no longer does
    /// all its work (no metrics, no deny records or no agent-side learning), so it is no
    /// longer ready. Enforcement in the kernel goes on.
    fn task_ended(
        &mut self,
        ended: std::result::Result<(&'static str, std::io::Result<()>), tokio::task::JoinError>,
    ) {
        self.health.tasks = false;
        self.publish_health();
        match ended {
            Ok((name, Ok(()))) => {
                tracing::error!(task = name, "task stopped unexpectedly; /readyz now fails");
            }
            Ok((name, Err(e))) => {
                tracing::error!(task = name, error = %e, "task failed; /readyz now fails");
            }
            Err(e) => tracing::error!(error = %e, "task panicked; /readyz now fails"),
        }
    }

    /// Re-reads the policy (or takes `text`, already read) and applies it. A policy that does
    /// not parse, or that the maps refuse, leaves the previous one in force: the error is
    /// logged with its file:line:column and counted in `egress_reload_failures`.
    pub fn reload(&mut self, text: Option<String>) {
        let path = self.policy_path.as_path();
        let text = match text.map_or_else(|| policy::read(path), Ok) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
                self.set_policy_current(false);
                return;
            }
        };
        self.policy_text = Some(text.clone());
        let new = match policy::parse(&text, path) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                self.set_policy_current(false);
                return;
            }
        };
        // Under the lock (DNS learning writes the name maps too): the policy is written and put
        // in force, the CNAME targets of removed rules go, and the learner takes the new names,
        // so the copies it drains afterwards are judged by the rules in force (its wildcards are
        // its own list), never by a removed one while the walk runs. The walk of the learned
        // maps that revokes what only removed rules allowed (seconds at full maps) runs on
        // garbage collection's handle without the lock, as at every tick.
        let now = clock::boot_ns();
        let switched = {
            let mut dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
            crate::apply::switch(&mut dp, &new, &self.overrides, self.key()).and_then(|sw| {
                let (rules, names) = dp.reconcile_names(now)?;
                self.learner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_names(new.allow.names.clone());
                Ok((sw, rules, names))
            })
        };
        let settled = switched.and_then(|(sw, rules, names)| {
            crate::apply::settle(&mut self.gc_dp, sw, &rules, names, now)
        });
        let applied = match settled {
            Ok(applied) => {
                self.metrics.reloads.inc();
                self.written = applied.written.clone();
                self.count_reconciled(&applied.reconciled);
                if applied.reconciled.revoked > 0 || applied.cut > 0 {
                    tracing::info!(
                        revoked = applied.reconciled.revoked,
                        shortened = applied.reconciled.shortened,
                        flows_cut = applied.cut,
                        "addresses only removed rules allowed are no longer allowed"
                    );
                }
                warn_broad(&new);
                tracing::info!(path = %path.display(), "policy reloaded");
                self.policy = new;
                true
            }
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(error = %error_chain(&e), "cannot apply the reloaded policy; restoring the previous one");
                // A failure before the switch left the previous policy in force, whole; this
                // makes it so after a failure past it too (revocation, flow cuts).
                let mut dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
                match apply_with_key(&mut dp, &self.policy, &self.overrides, self.key()) {
                    Ok(restored) => self.written = restored.written,
                    Err(e) => {
                        tracing::error!(error = %error_chain(&e), "cannot restore the previous policy")
                    }
                }
                self.learner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_names(self.policy.allow.names.clone());
                false
            }
        };
        self.set_policy_current(applied);
        self.publish_info();
    }

    /// Records whether the policy in force is the file's.
    fn set_policy_current(&mut self, current: bool) {
        if current != self.health.policy {
            if current {
                tracing::info!("the policy file is in force again; ready");
            } else {
                tracing::warn!(
                    "the policy file is not in force (see the error above); /readyz fails until a valid one is loaded"
                );
            }
        }
        self.health.policy = current;
        self.publish_health();
    }

    /// Publishes the health parts to `/healthz`, `/readyz` and `egress_ready`.
    fn publish_health(&self) {
        let Health {
            tasks,
            policy,
            attached,
        } = self.health;
        let ready = tasks && policy && attached;
        self.http.healthy.store(tasks, Ordering::Release);
        self.http.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    /// `egress_info`: one series with the version, the mode in force and where answers are
    /// learned.
    fn publish_info(&self) {
        self.metrics.info.clear();
        let mode = self.overrides.mode.unwrap_or(self.policy.mode);
        self.metrics
            .info
            .get_or_create(&vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("mode".to_owned(), format!("{mode:?}").to_ascii_lowercase()),
                (
                    "learn_at".to_owned(),
                    if self.overrides.learn_at_sockets {
                        "sockets"
                    } else {
                        "interfaces"
                    }
                    .to_owned(),
                ),
            ])
            .set(1);
    }

    /// Checks that the programs are still attached on every interface (another program can
    /// take the chain, an interface can be deleted and re-created).
    /// Checks every attachment; one that is missing (interface re-created, link released) or
    /// behind another program in the TCX chain is attached again at the head, logged and
    /// counted (`egress_reattached_total`). `/readyz` fails while one cannot be repaired.
    fn check_attachments(&mut self) {
        let mut all = true;
        for (iface, hook, how, index) in &mut self.attachments {
            let presence = attach::presence(*hook, iface, *how, *index, &self.pins);
            let mut found = presence == attach::Presence::First;
            if !found {
                let what = if presence == attach::Presence::Behind {
                    "another program runs before egress on this hook; attaching egress again at the head"
                } else {
                    "egress is no longer attached to this hook (interface gone or re-created, or link released); attaching it again"
                };
                tracing::error!(iface = %iface, hook = hook.name(), ?presence, "{what}");
                let repaired = self
                    .ebpf
                    .program_mut(hook.name())
                    .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
                    .ok_or(AttachError::NoInterface {
                        iface: iface.clone(),
                    })
                    .and_then(|prog| attach::reattach(prog, *hook, iface, &self.pins, *how));
                match repaired {
                    Ok(new_how) => {
                        *how = new_how;
                        *index = attach::ifindex(iface).unwrap_or(0);
                        found = true;
                        self.metrics
                            .reattached
                            .get_or_create(&vec![
                                ("iface".to_owned(), iface.clone()),
                                ("hook".to_owned(), hook.name().to_owned()),
                            ])
                            .inc();
                        tracing::warn!(iface = %iface, hook = hook.name(), "attached again");
                    }
                    Err(e) => tracing::error!(
                        iface = %iface,
                        hook = hook.name(),
                        error = %error_chain(&e),
                        "cannot attach again; /readyz fails until it can"
                    ),
                }
            }
            all &= found;
            self.metrics
                .attached
                .get_or_create(&vec![
                    ("iface".to_owned(), iface.clone()),
                    ("hook".to_owned(), hook.name().to_owned()),
                ])
                .set(i64::from(found));
        }
        self.health.attached = all;
        self.publish_health();
    }

    /// Rewrites the policy maps from the policy in force if anyone else changed them (a root
    /// process with the host's bpffs can write pinned maps: set audit mode, add 0.0.0.0/0),
    /// logging and counting which.
    /// Returns what the maps hold after a repair.
    fn repair_tampering(&self, dp: &mut Datapath) -> Option<crate::apply::Written> {
        let changed = match crate::apply::drift(dp, &self.written) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot check the policy maps");
                return None;
            }
        };
        if changed.is_empty() {
            return None;
        }
        tracing::error!(maps = ?changed, "policy maps changed by someone other than the agent; rewriting them from the policy");
        for map in &changed {
            self.metrics
                .tamper_repairs
                .get_or_create(&vec![("map".to_owned(), (*map).to_owned())])
                .inc();
        }
        match apply_with_key(dp, &self.policy, &self.overrides, self.key()) {
            Ok(applied) => {
                self.count_reconciled(&applied.reconciled);
                Some(applied.written)
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "cannot rewrite the policy maps");
                None
            }
        }
    }

    /// The name-hash key in force: the one the agent wrote (never re-read from `CONFIG`, which
    /// anyone with the host's bpffs can rewrite).
    fn key(&self) -> (u64, u64) {
        (self.written.config.hash_k0, self.written.config.hash_k1)
    }

    /// Counts what a reconciliation of the learned state did.
    fn count_reconciled(&self, done: &crate::datapath::Reconciled) {
        self.metrics.count_reconciled(done);
    }

    /// Removes expired learned addresses and idle flows; warns when the learned map was full.
    pub fn gc_tick(&mut self) {
        let started = std::time::Instant::now();
        let now = clock::boot_ns();
        // The name maps under the lock (DNS learning writes CNAME targets there); the walks of
        // the learned maps and flow tables on garbage collection's own handle, without it.
        let names = self
            .dp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .collect_names(now);
        let collected = names.and_then(|(rules, names)| {
            let (mut done, flows) = self.gc_dp.collect_learned(now, &rules)?;
            done.names = names;
            Ok((done, flows))
        });
        match collected {
            Ok((done, flows)) => {
                self.count_reconciled(&done);
                self.metrics.gc_flows_removed.inc_by(flows as u64);
            }
            Err(e) => tracing::warn!(error = %error_chain(&e), "garbage collection failed"),
        }
        self.metrics
            .gc_seconds
            .0
            .observe(started.elapsed().as_secs_f64());
        let mut dp = self.dp.lock().unwrap_or_else(|p| p.into_inner());
        let repaired = self.repair_tampering(&mut dp);
        // A full learned map fails inserts in the kernel: those addresses stay denied.
        match dp.counters() {
            Ok(c) => {
                let failed = c[egress_common::counters::DNS_LEARN_FAILED as usize];
                if failed > self.learn_failed_seen {
                    tracing::warn!(
                        failed = failed - self.learn_failed_seen,
                        capacity = egress_common::maps::LEARNED_CAPACITY,
                        "learned-address or justification map full (LEARNED_V4/_V6 or LEARNED_BY, see egress_map_fill_ratio): new addresses stay denied until garbage collection frees room"
                    );
                    self.learn_failed_seen = failed;
                }
            }
            Err(e) => tracing::warn!(error = %error_chain(&e), "cannot read the counters"),
        }
        drop(dp);
        if let Some(written) = repaired {
            self.written = written;
        }
        self.check_attachments();
    }
}

/// Logs the policy's patterns that allow more than they seem (`warnings.rs`).
/// The classifier of `hook` in the loaded object.
fn classifier(ebpf: &mut aya::Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    let name = hook.name();
    ebpf.program_mut(name)
        .ok_or(AgentErrorKind::Program { name, source: None })?
        .try_into()
        .map_err(|source| {
            AgentErrorKind::Program {
                name,
                source: Some(source),
            }
            .into()
        })
}

fn warn_broad(policy: &Policy) {
    for w in crate::warnings::policy(policy) {
        tracing::warn!("{w}");
    }
}

/// An error and its sources on one line, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Capabilities the agent needs that this process does not have in its effective set
/// (`CapEff` of /proc/self/status; numbers from include/uapi/linux/capability.h).
/// `CAP_SYS_ADMIN` stands in for `CAP_BPF` and `CAP_PERFMON`, as the kernel lets it.
fn missing_capabilities() -> Vec<&'static str> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        // Unknown: let the kernel say no, with the generic hint.
        return Vec::new();
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// The classifier parses Ethernet frames; any other link type (tun, WireGuard, ...) is refused
/// rather than enforced wrongly.
fn check_ethernet(iface: &str) -> Result<()> {
    const ARPHRD_ETHER: u16 = 1;
    let hw_type = hardware_type(iface).map_err(|source| AgentErrorKind::Interface {
        iface: iface.to_owned(),
        source,
    })?;
    if hw_type != ARPHRD_ETHER {
        return Err(AgentErrorKind::NotEthernet {
            iface: iface.to_owned(),
            hw_type,
        }
        .into());
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
