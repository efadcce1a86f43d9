//! Migration from layout 0 to this build's layout, with no instant without a program in any
//! hook and no learned address lost. docs/design.md, *Layouts and upgrades*, explains the
//! order; docs/proposals/migration.md the research behind it.
//!
//! The steps, each recorded in the layout record before the next begins:
//! 1. `prepared`: the layout-0 pins are checked against `layouts/v0.txt`; the record says
//!    MIGRATING 0 → 1 and carries the name-hash key read from layout 0's `CONFIG`.
//! 2. `built`: `v1/` made afresh; the shared maps pinned into it; the object loaded (fresh maps
//!    created there) and the programs verified (by the agent).
//! 3. `filled`: flows and CNAME targets copied; the policy applied with the carried key.
//! 4. `guarded`: the record pinned over layout 0's `CONFIG`. The point of no return: from here
//!    a layout-0 build refuses the pins, and a restart of this build resumes instead of
//!    rebuilding.
//! 5. `swapped`: every hook holds the new program (`bpf_link_update` / filter replace).
//! 6. `settled`: an RCU grace period, so no run of an old program is in flight; flows and CNAME
//!    targets copied again (what the old programs wrote after the first copy); the old
//!    counters added to the new ones and zeroed.
//! 7. `cleaned`: layout 0's pins removed; the record says STABLE 1.
//!
//! Before `guarded`, a crash leaves the layout-0 datapath whole and in every hook (a layout-0
//! build may adopt it; this build's next start rebuilds `v1/`). From `guarded` on, each hook
//! runs the old or the new program, never none, and this build's next start finishes.

use std::{path::PathBuf, time::Instant};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use egress_common::maps::{
    Config, FLOW_CAPACITY, FlowKey, FlowValue, NAME_PERMANENT, NAMES_EXACT_CAPACITY, NameValue,
    names,
};
use thiserror::Error;

use super::{
    OnDisk, Record, RecordError,
    v0::{self, Rule},
};
use crate::{
    ebpf::{self, LayoutError},
    pins::PinDir,
};

/// The migration steps, in order, as recorded in [`Record::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Step {
    Prepared = 1,
    Built = 2,
    Filled = 3,
    Guarded = 4,
    Swapped = 5,
    Settled = 6,
}

impl Step {
    pub fn name(step: u32) -> &'static str {
        match step {
            1 => "prepared",
            2 => "built",
            3 => "filled",
            4 => "guarded",
            5 => "swapped",
            6 => "settled",
            _ => "none",
        }
    }
}

#[derive(Debug, Error)]
pub enum MigrateError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Layout(Box<LayoutError>),
    #[error(
        "the maps under {dir} were pinned by an egress build without layout versions whose maps differ from layout 0 ({source}); no migration exists from them. Nothing was changed and the pinned datapath keeps enforcing; run `egress detach --all` with that build (or this one) first (enforcement stops until this agent is ready)"
    )]
    UnknownFlat {
        dir: PathBuf,
        #[source]
        source: Box<LayoutError>,
    },
    #[error(
        "the pins under {dir} are layout {found} (newer than this build's {VERSION}): nothing was changed and the layout-{found} datapath keeps enforcing. Run an egress of layout {found} or later, or `egress detach --all` with one (enforcement stops until a new start)",
        VERSION = super::VERSION
    )]
    Newer { dir: PathBuf, found: u32 },
    #[error(
        "the pins under {dir} are layout {found}, fingerprint {have:#018x}, where this build of layout {found} has {want:#018x}: the maps changed without a new layout version. Nothing was changed; run `egress detach --all` with the build that pinned them first"
    )]
    Fingerprint {
        dir: PathBuf,
        found: u32,
        have: u64,
        want: u64,
    },
    #[error(
        "the pins under {dir} are being migrated from layout {from} to {to}, which this build (layout {VERSION}) cannot finish: run the layout-{to} build again",
        VERSION = super::VERSION
    )]
    OtherMigration { dir: PathBuf, from: u32, to: u32 },
    #[error(
        "the pinned datapath is attached to {iface}, which is not among this start's interfaces: an upgrade must replace the program in every hook (an old program left there would enforce a frozen policy). Start with --iface {iface} too, or `egress detach {iface}` first with the old build. Nothing was changed"
    )]
    Unlisted { iface: String },
    #[error(
        "the pinned datapath is attached to {iface} with both a TCX link and a clsact filter (an --attach change in the past left both): an upgrade can replace the program in only one of them. Run `egress detach {iface}` with the old build first (the interface is not enforced until this agent is ready). Nothing was changed"
    )]
    BothKinds { iface: String },
    #[error(
        "the pinned datapath is attached to {iface} with {had}, and this start would attach with {now}: an upgrade must replace the program in the same hook (the old {had} attachment would go on running the old program on maps nobody updates). Upgrade with the attachment of before (--attach {had_flag}) and change it afterwards. Nothing was changed"
    )]
    AttachKind {
        iface: String,
        had: &'static str,
        had_flag: &'static str,
        now: &'static str,
    },
    #[error("cannot read layout 0's {name} at {path}")]
    Read {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot write {name} of layout {layout} while migrating")]
    Write {
        name: &'static str,
        layout: u32,
        #[source]
        source: MapError,
    },
    #[error("cannot pin the shared map {name} at {path}")]
    Share {
        name: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::apply::ApplyError),
}

impl From<LayoutError> for MigrateError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(Box::new(e))
    }
}

type Result<T> = std::result::Result<T, MigrateError>;

/// A migration from layout 0 under way.
pub struct Migration {
    pins: PinDir,
    record: Record,
    began: Instant,
    /// Entries copied by the passes, for the log.
    copied: Copied,
}

#[derive(Debug, Default)]
struct Copied {
    flows: usize,
    cname_targets: usize,
}

/// Debug builds only: `EGRESS_TEST_FAIL=migrate:<point>` kills the agent with SIGKILL at that
/// point, so the tests can show that a crash at any step leaves a datapath enforcing.
fn fail(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("EGRESS_TEST_FAIL").is_ok_and(|v| v.strip_prefix("migrate:") == Some(point)) {
        tracing::warn!(point, "EGRESS_TEST_FAIL: killing the agent");
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Reads what is pinned and prepares the pin directory for this build's load: a first start
/// records the layout; layout 0 (or a migration stopped before `guarded`) begins a migration;
/// one stopped at `guarded` or later resumes. Everything that refuses does so before any change.
/// `None`: nothing to migrate, this build's layout (or nothing) is pinned.
pub fn prepare(pins: &PinDir) -> Result<Option<Migration>> {
    let ours = super::current_fingerprint()?;
    let dir = pins.root().to_owned();
    let guarded = super::guarded(pins);
    let r = match super::detect(pins)? {
        OnDisk::Empty => return fresh(pins, ours),
        OnDisk::Flat => return begin(pins, ours, guarded, None),
        OnDisk::Recorded(r) => r,
    };
    if !guarded && pins.flat_map(names::CONFIG).exists() {
        // A layout-0 build runs on these pins again: its own `CONFIG` where the guard was (it
        // detached and started afresh after a roll back, or took over a start that was killed
        // before the guard). Its flat maps are the live datapath; whatever `v1/` holds is
        // stale: migrate them afresh, with its key.
        tracing::warn!(
            state = r.state,
            step = Step::name(r.step),
            "a layout-0 build has pinned its maps again beside a layout record; migrating them afresh"
        );
        return begin(pins, ours, guarded, Some(r));
    }
    if r.state == super::state::MIGRATING && r.step < Step::Guarded as u32 && !guarded {
        // The old datapath went (detached) before the point of no return: nothing is left to
        // migrate, and `v1/` was never in force.
        tracing::warn!("layout 0's maps are gone: starting afresh");
        clear_dir(&pins.maps_dir())?;
        return fresh(pins, ours);
    }
    if r.state == super::state::STABLE {
        if r.version > super::VERSION {
            return Err(MigrateError::Newer {
                dir,
                found: r.version,
            });
        }
        if r.version < super::VERSION {
            // A layout ≥ 1 older than this build: no such layout exists yet.
            return Err(MigrateError::OtherMigration {
                dir,
                from: r.version,
                to: super::VERSION,
            });
        }
        if r.fingerprint != ours {
            return Err(MigrateError::Fingerprint {
                dir,
                found: r.version,
                have: r.fingerprint,
                want: ours,
            });
        }
        if !guarded {
            super::guard(pins)?;
        }
        return Ok(None);
    }
    if r.target > super::VERSION {
        return Err(MigrateError::Newer {
            dir,
            found: r.target,
        });
    }
    if r.version != 0 || r.target != super::VERSION || r.target_fingerprint != ours {
        return Err(MigrateError::OtherMigration {
            dir,
            from: r.version,
            to: r.target,
        });
    }
    if r.step < Step::Guarded as u32 {
        return begin(pins, ours, guarded, Some(r));
    }
    tracing::info!(
        step = Step::name(r.step),
        "resuming the migration from layout 0 to {} (a previous start stopped after the point of no return)",
        super::VERSION
    );
    Ok(Some(Migration::new(pins, r)))
}

/// A first start: this build's layout recorded, and guarded.
fn fresh(pins: &PinDir, ours: u64) -> Result<Option<Migration>> {
    super::write(pins, &super::stable(ours, (0, 0)))?;
    super::guard(pins)?;
    Ok(None)
}

/// Steps 1 and the first half of 2: check layout 0, record the migration, make `v1/` afresh
/// with the shared maps pinned into it. `prior` is the record found, if any: once the guard
/// was renamed over layout 0's `CONFIG` (`guarded`) the key is only there, and a migration it
/// records as under way keeps its start time (its apply may have cut flows already).
fn begin(
    pins: &PinDir,
    ours: u64,
    guarded: bool,
    prior: Option<Record>,
) -> Result<Option<Migration>> {
    let mut old = v0::defs();
    if guarded {
        old.remove(names::CONFIG);
    }
    ebpf::check_dir(pins.root(), &old).map_err(|source| MigrateError::UnknownFlat {
        dir: pins.root().to_owned(),
        source: Box::new(source),
    })?;
    let new = ebpf::object_defs()?;
    for (name, def) in &old {
        if v0::rule(name) == Some(Rule::Share) && new.get(name) != Some(def) {
            // Guarded by a unit test; checked again so a broken build cannot corrupt state.
            return Err(MigrateError::from(LayoutError::Mismatch {
                name: name.clone(),
                path: pins.flat_map(name),
                have: def.to_string(),
                want: new
                    .get(name)
                    .map_or("no such map".into(), |d| d.to_string()),
            }));
        }
    }
    // Layout 0's `CONFIG` holds the key until the guard replaced it; from then on only the
    // record does.
    let key = match prior {
        Some(r) if guarded => (r.hash_k0, r.hash_k1),
        _ => old_key(pins)?,
    };
    let record = Record {
        version: 0,
        target: super::VERSION,
        fingerprint: super::fingerprint(super::TEXTS[0]),
        state: super::state::MIGRATING,
        step: Step::Prepared as u32,
        hash_k0: key.0,
        hash_k1: key.1,
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        began_ns: prior
            .filter(|r| r.state == super::state::MIGRATING)
            .map_or_else(crate::clock::boot_ns, |r| r.began_ns),
        ..super::stable(ours, key)
    };
    super::write(pins, &record)?;
    tracing::info!(
        shared = old
            .keys()
            .filter(|n| v0::rule(n) == Some(Rule::Share))
            .count(),
        fresh = new.len()
            - old
                .keys()
                .filter(|n| v0::rule(n) == Some(Rule::Share))
                .count(),
        "migrating pinned maps from layout 0 to {}",
        super::VERSION
    );
    fail("prepared");
    // A `v1/` left by a start that stopped before `guarded` may hold maps the layout-0 agent
    // has moved on from since (flows it removed): built again from scratch.
    clear_dir(&pins.maps_dir())?;
    for name in old.keys().filter(|n| v0::rule(n) == Some(Rule::Share)) {
        let data = MapData::from_pin(pins.flat_map(name)).map_err(|source| MigrateError::Read {
            name: "a shared map",
            path: pins.flat_map(name),
            source,
        })?;
        data.pin(pins.map(name))
            .map_err(|source| MigrateError::Share {
                name: name.clone(),
                path: pins.map(name),
                source,
            })?;
    }
    Ok(Some(Migration::new(pins, record)))
}

/// Empties and removes `dir` (pins only; bpffs holds nothing else) and makes it again.
fn clear_dir(dir: &std::path::Path) -> Result<()> {
    let io = |source| MigrateError::Io {
        path: dir.to_owned(),
        source,
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path()).map_err(io)?;
        }
    }
    std::fs::create_dir_all(dir).map_err(io)
}

/// The name-hash key of layout 0's policy in force (its `CONFIG` slot named by `ACTIVE`), or a
/// fresh one if no policy was ever applied there.
fn old_key(pins: &PinDir) -> Result<(u64, u64)> {
    let open = |name: &'static str| {
        let path = pins.flat_map(name);
        MapData::from_pin(&path)
            .map(Map::Array)
            .map_err(|source| MigrateError::Read { name, path, source })
    };
    let read = |name, source| MigrateError::Read {
        name,
        path: pins.flat_map(name),
        source,
    };
    let active: aya::maps::Array<MapData, u32> =
        aya::maps::Array::try_from(open(names::ACTIVE)?).map_err(|e| read(names::ACTIVE, e))?;
    let config: aya::maps::Array<MapData, Config> =
        aya::maps::Array::try_from(open(names::CONFIG)?).map_err(|e| read(names::CONFIG, e))?;
    let slot = active.get(&0, 0).map_err(|e| read(names::ACTIVE, e))?;
    let cfg = config.get(&slot, 0).map_err(|e| read(names::CONFIG, e))?;
    Ok(crate::apply::key_of(&cfg)?)
}

impl Migration {
    fn new(pins: &PinDir, record: Record) -> Self {
        Self {
            pins: pins.clone(),
            record,
            began: Instant::now(),
            copied: Copied::default(),
        }
    }

    /// The name-hash key of the maps being migrated: the policy must be applied with it.
    pub fn key(&self) -> (u64, u64) {
        (self.record.hash_k0, self.record.hash_k1)
    }

    fn record_step(&mut self, step: Step) -> Result<()> {
        if self.record.step < step as u32 {
            self.record.step = step as u32;
            super::write(&self.pins, &self.record)?;
        }
        Ok(())
    }

    /// Step 2 done: the object is loaded and its programs verified. Refuses if layout 0 is
    /// attached somewhere this start will not attach, or by another kind of attachment than
    /// `kind` (an old program left in a hook would enforce a frozen policy on maps nobody
    /// updates). `recorded`: every interface with its attachment kinds (`attached` bits).
    pub fn built(
        &mut self,
        recorded: &[(String, u32)],
        ifaces: &[String],
        kind: u32,
    ) -> Result<()> {
        use egress_common::maps::attached::{CLSACT, TCX};
        // The attachment of `bits` (one kind), as the error says it and as `--attach` names it.
        let text = |bits: u32| {
            if bits & TCX != 0 {
                ("a TCX link", "tcx")
            } else {
                ("a clsact filter", "netlink")
            }
        };
        for (iface, had) in recorded {
            if !ifaces.contains(iface) {
                return Err(MigrateError::Unlisted {
                    iface: iface.clone(),
                });
            }
            if had & TCX != 0 && had & CLSACT != 0 {
                return Err(MigrateError::BothKinds {
                    iface: iface.clone(),
                });
            }
            let other = had & (TCX | CLSACT) & !kind;
            if other != 0 {
                let (had, had_flag) = text(other);
                return Err(MigrateError::AttachKind {
                    iface: iface.clone(),
                    had,
                    had_flag,
                    now: text(kind).0,
                });
            }
        }
        self.record_step(Step::Built)?;
        fail("built");
        Ok(())
    }

    /// Step 3, first half: the first copy of flows and CNAME targets (before the policy is
    /// applied, so its reconciliation judges the copied targets too).
    pub fn fill(&mut self) -> Result<()> {
        self.copy()
    }

    /// Step 3, second half (the policy was applied), and step 4: the guard.
    pub fn guard(&mut self) -> Result<()> {
        self.record_step(Step::Filled)?;
        fail("filled");
        if !super::guarded(&self.pins) {
            super::guard(&self.pins)?;
        }
        fail("guard-renamed");
        self.record_step(Step::Guarded)?;
        fail("guarded");
        Ok(())
    }

    /// A hook was swapped to the new program (failpoint `swap-1` after the first).
    pub fn swapped_one(&self, n: usize) {
        if n == 1 {
            fail("swap-1");
        }
    }

    /// Steps 5 to 7: every hook swapped; the grace period, the second copy and the counters;
    /// layout 0's pins removed.
    pub fn finish(mut self) -> Result<()> {
        self.record_step(Step::Swapped)?;
        fail("swapped");
        let grace = grace_period();
        self.copy()?;
        self.counters()?;
        self.record_step(Step::Settled)?;
        fail("settled");
        let mut removed = 0;
        for name in v0::defs().keys() {
            if name == names::CONFIG {
                continue; // the guard
            }
            if std::fs::remove_file(self.pins.flat_map(name)).is_ok() {
                removed += 1;
                if removed == 1 {
                    fail("cleanup-1");
                }
            }
        }
        let fingerprint = self.record.target_fingerprint;
        super::write(
            &self.pins,
            &super::stable(fingerprint, (self.record.hash_k0, self.record.hash_k1)),
        )?;
        tracing::info!(
            seconds = self.began.elapsed().as_secs_f64(),
            grace_ms = grace.as_secs_f64() * 1e3,
            flows = self.copied.flows,
            cname_targets = self.copied.cname_targets,
            "migrated from layout 0 to {}",
            super::VERSION
        );
        fail("cleaned");
        Ok(())
    }

    /// Copies layout 0's flows and CNAME targets into this layout's maps, keeping an entry
    /// already there (written by a new program, so newer). Layout 0's maps may be gone (a
    /// resume after `settled`): nothing to copy then.
    fn copy(&mut self) -> Result<()> {
        for name in [names::FLOWS, names::FLOWS_UDP] {
            let Some(old) = self.open_old::<HashMap<MapData, FlowKey, v0::FlowValue>>(name)? else {
                continue;
            };
            let mut new: HashMap<MapData, FlowKey, FlowValue> = self.open_new(name)?;
            // Shared: the destinations this start's apply cut, which layout 0's table still
            // holds flows to.
            let revoked: HashMap<MapData, [u8; 16], u64> = self.open_new(names::REVOKED)?;
            for (key, v) in snapshot(&old, FLOW_CAPACITY) {
                if revoked
                    .get(&key.daddr, 0)
                    .is_ok_and(|at| at >= self.record.began_ns)
                {
                    continue;
                }
                let value = FlowValue::by_address(v.last_seen_ns);
                if insert_new(&mut new, &key, &value, name)? {
                    self.copied.flows += 1;
                }
            }
        }
        if let Some(old) = self.open_old::<HashMap<MapData, u64, NameValue>>(names::NAMES_EXACT)? {
            let mut new: HashMap<MapData, u64, NameValue> = self.open_new(names::NAMES_EXACT)?;
            for (key, v) in snapshot(&old, NAMES_EXACT_CAPACITY) {
                if v.expires_ns != NAME_PERMANENT
                    && insert_new(&mut new, &key, &v, names::NAMES_EXACT)?
                {
                    self.copied.cname_targets += 1;
                }
            }
        }
        Ok(())
    }

    /// Adds layout 0's counters into this layout's (same indices) and zeroes them, so a rerun
    /// adds nothing. A kill between the two writes of one counter counts it twice (accepted:
    /// one system call apart).
    fn counters(&mut self) -> Result<()> {
        let Some(mut old) = self.open_old::<PerCpuArray<MapData, u64>>(names::COUNTERS)? else {
            return Ok(());
        };
        let mut new: PerCpuArray<MapData, u64> = self.open_new(names::COUNTERS)?;
        let w = |layout, source| MigrateError::Write {
            name: names::COUNTERS,
            layout,
            source,
        };
        for i in 0..v0::COUNTERS {
            let before = old.get(&i, 0).map_err(|e| w(0, e))?;
            if before.iter().all(|v| *v == 0) {
                continue;
            }
            let now = new.get(&i, 0).map_err(|e| w(1, e))?;
            let sum: Vec<u64> = now
                .iter()
                .zip(before.iter())
                .map(|(a, b)| a.wrapping_add(*b))
                .collect();
            let zero = vec![0u64; sum.len()];
            new.set(
                i,
                PerCpuValues::try_from(sum).map_err(|e| w(1, e.into()))?,
                0,
            )
            .map_err(|e| w(1, e))?;
            old.set(
                i,
                PerCpuValues::try_from(zero).map_err(|e| w(0, e.into()))?,
                0,
            )
            .map_err(|e| w(0, e))?;
        }
        Ok(())
    }

    fn open_old<T: TryFrom<Map, Error = MapError>>(&self, name: &'static str) -> Result<Option<T>> {
        let path = self.pins.flat_map(name);
        if !path.exists() {
            return Ok(None);
        }
        let err = |source| MigrateError::Read {
            name,
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(err)?;
        T::try_from(Map::from_map_data(data).map_err(err)?)
            .map(Some)
            .map_err(err)
    }

    fn open_new<T: TryFrom<Map, Error = MapError>>(&self, name: &'static str) -> Result<T> {
        let err = |source| MigrateError::Write {
            name,
            layout: super::VERSION,
            source,
        };
        let data = MapData::from_pin(self.pins.map(name)).map_err(err)?;
        T::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
    }
}

/// The entries of a hash map the old programs may still be writing. A key walk of a churning
/// table restarts from the first bucket when its current key vanished, so the walk is bounded by
/// twice the map's capacity; an entry missed here is copied by the pass after the swap.
fn snapshot<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>, capacity: u32) -> Vec<(K, V)> {
    map.iter()
        .take(2 * capacity as usize)
        .filter_map(|r| r.ok())
        .collect()
}

/// Inserts unless the key is there (`BPF_NOEXIST`): true if inserted.
fn insert_new<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    value: &V,
    name: &'static str,
) -> Result<bool> {
    crate::datapath::insert(map, key, value, crate::datapath::NOEXIST).map_err(|source| {
        MigrateError::Write {
            name,
            layout: super::VERSION,
            source,
        }
    })
}

/// Waits until no run of a program swapped out can still be in flight: TC and cgroup programs
/// run under RCU, and `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`
/// (kernel/sched/membarrier.c). Where it is refused (`nohz_full`), 100 ms, which is orders of
/// magnitude beyond a program run.
fn grace_period() -> std::time::Duration {
    let t = Instant::now();
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier(2) takes two integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    t.elapsed()
}
