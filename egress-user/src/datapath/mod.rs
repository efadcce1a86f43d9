//! Typed access to every map of the datapath. Userspace touches maps only through [`Datapath`].
//!
//! - this module: opening the maps (from a fresh object or from the pins), the configuration
//!   slot, the counters and the fill of every bounded map;
//! - [`family`]: one IPv4 + IPv6 map pair seen as one prefix set keyed by `IpNet`;
//! - `policy`: writing a policy into the maps, one generation at a time (configuration, static
//!   CIDRs, resolvers, names, ports), and reading the one in force;
//! - `learned`: learned addresses, flows and garbage collection;
//! - `crate::records`: the agent's records (`ANSWERS`, `DENIED`).

mod family;
pub(crate) use family::{NOEXIST, insert};
mod learned;
mod policy;
mod take;

use std::net::{IpAddr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
};
use egress_common::{
    counters,
    maps::{
        AnswerValue, Config, DeniedValue, FlowKey, FlowValue, IFACE_BYTES, LearnedByKey,
        LearnedValue, NameKey, NameValue, StaticValue, WildKey, names, v4_mapped,
    },
};
pub(crate) use family::count;
use family::{FamilyHash, StaticTries};
pub use learned::{Learned, Reconciled};
use thiserror::Error;

use crate::pins::PinDir;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error(
        "cannot open pinned map {name} (is an agent or a previous run's pin directory there? `egress status` needs the agent to have run once)"
    )]
    Pin {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "map {name} has an unexpected type or layout (pinned by another egress version? run `egress detach` first)"
    )]
    Layout {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {name}: {op} failed")]
    Op {
        name: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// The datapath's maps, typed.
pub struct Datapath {
    active: Array<MapData, u32>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u32>,
    tls_ports: Array<MapData, u32>,
    statics: StaticTries<StaticValue>,
    learned: FamilyHash<LearnedValue>,
    learned_by: HashMap<MapData, LearnedByKey, u64>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    flows_udp: HashMap<MapData, FlowKey, FlowValue>,
    flow_epoch: Array<MapData, u64>,
    revoked: HashMap<MapData, [u8; 16], u64>,
    counters: PerCpuArray<MapData, u64>,
    resolvers: HashMap<MapData, [u8; 16], u32>,
    names_exact: HashMap<MapData, u64, NameValue>,
    names_wild: HashMap<MapData, WildKey, u32>,
    // The agent's records; their methods are in `records.rs`.
    pub(crate) answers: HashMap<MapData, [u8; 16], AnswerValue>,
    pub(crate) denied: HashMap<MapData, NameKey, DeniedValue>,
    pub(crate) attached: HashMap<MapData, [u8; IFACE_BYTES], u32>,
    /// The generation put out of force by the last switch, and when: retired by
    /// [`Self::retire_due`] once no program run can still be reading it.
    retiring: Option<(u32, std::time::Instant)>,
}

impl Datapath {
    /// Takes the maps out of a freshly loaded object (the agent).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::Missing { name });
        Self::build(&mut take)
    }

    /// Opens the maps pinned under `pins` (status, tests, a second process).
    pub fn open_pinned(pins: &PinDir) -> Result<Self> {
        let mut open = |name: &'static str| {
            let data = MapData::from_pin(pins.map(name))
                .map_err(|source| DatapathError::Pin { name, source })?;
            Map::from_map_data(data).map_err(|source| DatapathError::Pin { name, source })
        };
        Self::build(&mut open)
    }

    fn build(get: &mut dyn FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            get: &mut dyn FnMut(&'static str) -> Result<Map>,
            name: &'static str,
        ) -> Result<T> {
            T::try_from(get(name)?).map_err(|source| DatapathError::Layout { name, source })
        }
        fn lpm<V: aya::Pod>(
            get: &mut dyn FnMut(&'static str) -> Result<Map>,
            names: [&'static str; 2],
        ) -> Result<StaticTries<V>> {
            let v4: LpmTrie<MapData, [u8; 5], V> = typed(get, names[0])?;
            let v6: LpmTrie<MapData, [u8; 17], V> = typed(get, names[1])?;
            Ok(StaticTries::new(v4, v6, names))
        }
        Ok(Self {
            active: typed(get, names::ACTIVE)?,
            config: typed(get, names::CONFIG)?,
            ports: typed(get, names::PORTS)?,
            tls_ports: typed(get, names::TLS_PORTS)?,
            statics: lpm(get, [names::STATIC_V4, names::STATIC_V6])?,
            learned: FamilyHash::new(
                typed(get, names::LEARNED_V4)?,
                typed(get, names::LEARNED_V6)?,
                [names::LEARNED_V4, names::LEARNED_V6],
            ),
            learned_by: typed(get, names::LEARNED_BY)?,
            flows: typed(get, names::FLOWS)?,
            flows_udp: typed(get, names::FLOWS_UDP)?,
            flow_epoch: typed(get, names::FLOW_EPOCH)?,
            revoked: typed(get, names::REVOKED)?,
            counters: typed(get, names::COUNTERS)?,
            resolvers: typed(get, names::RESOLVERS)?,
            names_exact: typed(get, names::NAMES_EXACT)?,
            names_wild: typed(get, names::NAMES_WILD)?,
            answers: typed(get, names::ANSWERS)?,
            denied: typed(get, names::DENIED)?,
            attached: typed(get, names::ATTACHED)?,
            retiring: None,
        })
    }

    /// The policy generation in force (`egress_common::maps::generation`).
    pub fn active(&self) -> Result<u32> {
        Ok(self.active.get(&0, 0).map_err(op(names::ACTIVE, "read"))? & 1)
    }

    /// Puts the policy of `generation` in force: the one write that switches every program
    /// from the old policy to the new one.
    pub fn activate(&mut self, generation: u32) -> Result<()> {
        self.active
            .set(0, generation & 1, 0)
            .map_err(op(names::ACTIVE, "write"))?;
        self.retiring = Some((
            egress_common::maps::generation::other(generation),
            std::time::Instant::now(),
        ));
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> Result<Config> {
        self.config
            .get(&self.active()?, 0)
            .map_err(op(names::CONFIG, "read"))
    }

    /// Writes the configuration slot of `config.generation`.
    pub fn write_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(config.generation & 1, config, 0)
            .map_err(op(names::CONFIG, "write"))
    }

    /// Entries and capacity of each map that can fill up, by map name.
    pub fn fill(&self) -> Result<Vec<(&'static str, usize, u32)>> {
        use egress_common::maps::{
            ANSWERS_CAPACITY, DENIED_CAPACITY, FLOW_CAPACITY, LEARNED_BY_CAPACITY,
            LEARNED_CAPACITY, NAMES_EXACT_CAPACITY, NAMES_WILD_CAPACITY, STATIC_MAP_CAPACITY,
        };
        let mut out = Vec::new();
        for (name, n) in self.learned.lens()? {
            out.push((name, n, LEARNED_CAPACITY));
        }
        out.push((
            names::LEARNED_BY,
            count(self.learned_by.keys(), names::LEARNED_BY)?,
            LEARNED_BY_CAPACITY,
        ));
        for (name, n) in self.statics.lens()? {
            out.push((name, n, STATIC_MAP_CAPACITY));
        }
        out.push((
            names::FLOWS,
            count(self.flows.keys(), names::FLOWS)?,
            FLOW_CAPACITY,
        ));
        out.push((
            names::FLOWS_UDP,
            count(self.flows_udp.keys(), names::FLOWS_UDP)?,
            FLOW_CAPACITY,
        ));
        out.push((
            names::NAMES_EXACT,
            count(self.names_exact.keys(), names::NAMES_EXACT)?,
            NAMES_EXACT_CAPACITY,
        ));
        out.push((
            names::NAMES_WILD,
            count(self.names_wild.keys(), names::NAMES_WILD)?,
            NAMES_WILD_CAPACITY,
        ));
        out.push((
            names::ANSWERS,
            count(self.answers.keys(), names::ANSWERS)?,
            ANSWERS_CAPACITY,
        ));
        out.push((
            names::DENIED,
            count(self.denied.keys(), names::DENIED)?,
            DENIED_CAPACITY,
        ));
        Ok(out)
    }

    /// Every counter summed over CPUs, indexed as in `egress_common::counters`.
    pub fn counters(&self) -> Result<[u64; counters::COUNT as usize]> {
        let mut out = [0u64; counters::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(op(names::COUNTERS, "read"))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").finish_non_exhaustive()
    }
}

pub(crate) fn op(name: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Op { name, op, source }
}

/// The 16-byte key form of an address (IPv4-mapped for IPv4).
pub fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

pub(crate) fn unmapped(key: [u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(key);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}
