//! Typed access to every map of the datapath. Userspace touches maps only through [`Datapath`].

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use egress_common::{
    counters,
    maps::{
        AnswerValue, Config, DeniedValue, FlowKey, FlowValue, LearnedValue, NAME_PERMANENT,
        NameKey, NameValue, PORT_WORDS, StaticValue, names, port_bit, v4_mapped,
    },
};
use ipnet::IpNet;
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

/// A learned address as stored in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    pub addr: IpAddr,
    pub expires_ns: u64,
    /// New flows the entry admitted.
    pub hits: u64,
}

/// The datapath's maps, typed.
pub struct Datapath {
    config: Array<MapData, Config>,
    ports: Array<MapData, u32>,
    static_v4: LpmTrie<MapData, [u8; 4], StaticValue>,
    static_v6: LpmTrie<MapData, [u8; 16], StaticValue>,
    learned_v4: LpmTrie<MapData, [u8; 4], LearnedValue>,
    learned_v6: LpmTrie<MapData, [u8; 16], LearnedValue>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    counters: PerCpuArray<MapData, u64>,
    resolvers: HashMap<MapData, [u8; 16], u32>,
    names_exact: HashMap<MapData, u64, NameValue>,
    names_wild: HashMap<MapData, u64, NameValue>,
    // The agent's records; their methods are in `records.rs`.
    pub(crate) answers: HashMap<MapData, [u8; 16], AnswerValue>,
    pub(crate) denied: HashMap<MapData, NameKey, DeniedValue>,
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
        Ok(Self {
            config: typed(get, names::CONFIG)?,
            ports: typed(get, names::PORTS)?,
            static_v4: typed(get, names::STATIC_V4)?,
            static_v6: typed(get, names::STATIC_V6)?,
            learned_v4: typed(get, names::LEARNED_V4)?,
            learned_v6: typed(get, names::LEARNED_V6)?,
            flows: typed(get, names::FLOWS)?,
            counters: typed(get, names::COUNTERS)?,
            resolvers: typed(get, names::RESOLVERS)?,
            names_exact: typed(get, names::NAMES_EXACT)?,
            names_wild: typed(get, names::NAMES_WILD)?,
            answers: typed(get, names::ANSWERS)?,
            denied: typed(get, names::DENIED)?,
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(op(names::CONFIG, "read"))
    }

    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(op(names::CONFIG, "write"))
    }

    /// Replaces the enforced-port bitmap. Words are written one by one: a port being added is
    /// enforced a moment later, never a moment earlier, and unchanged words are not touched.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut words = vec![0u32; PORT_WORDS as usize];
        for &port in ports {
            let (word, bit) = port_bit(port);
            words[word as usize] |= bit;
        }
        for (i, want) in words.into_iter().enumerate() {
            let i = i as u32;
            let have = self.ports.get(&i, 0).map_err(op(names::PORTS, "read"))?;
            if have != want {
                self.ports
                    .set(i, want, 0)
                    .map_err(op(names::PORTS, "write"))?;
            }
        }
        Ok(())
    }

    /// Enforced ports, read back from the bitmap.
    pub fn ports(&self) -> Result<Vec<u16>> {
        let mut ports = Vec::new();
        for i in 0..PORT_WORDS {
            let w = self.ports.get(&i, 0).map_err(op(names::PORTS, "read"))?;
            for bit in 0..32 {
                if w & (1 << bit) != 0 {
                    ports.push((i * 32 + bit) as u16);
                }
            }
        }
        Ok(ports)
    }

    /// Makes the static CIDR maps hold exactly `cidrs`: new prefixes are inserted before stale
    /// ones are removed, so a prefix in both the old and the new policy never disappears.
    pub fn sync_static(&mut self, cidrs: &[IpNet]) -> Result<()> {
        let want: BTreeSet<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
        let have: BTreeSet<IpNet> = self.static_cidrs()?.into_iter().collect();
        for (rule, net) in cidrs.iter().enumerate() {
            let value = StaticValue { rule: rule as u32 };
            match net.trunc() {
                IpNet::V4(n) => self
                    .static_v4
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                        value,
                        0,
                    )
                    .map_err(op(names::STATIC_V4, "insert"))?,
                IpNet::V6(n) => self
                    .static_v6
                    .insert(
                        &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                        value,
                        0,
                    )
                    .map_err(op(names::STATIC_V6, "insert"))?,
            }
        }
        for stale in have.difference(&want) {
            match stale {
                IpNet::V4(n) => self
                    .static_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets()))
                    .map_err(op(names::STATIC_V4, "remove"))?,
                IpNet::V6(n) => self
                    .static_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets()))
                    .map_err(op(names::STATIC_V6, "remove"))?,
            }
        }
        Ok(())
    }

    pub fn static_cidrs(&self) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for key in self.static_v4.keys() {
            let key = key.map_err(op(names::STATIC_V4, "iterate"))?;
            out.push(net(
                IpAddr::V4(Ipv4Addr::from(key.data())),
                key.prefix_len(),
            ));
        }
        for key in self.static_v6.keys() {
            let key = key.map_err(op(names::STATIC_V6, "iterate"))?;
            out.push(net(
                IpAddr::V6(Ipv6Addr::from(key.data())),
                key.prefix_len(),
            ));
        }
        Ok(out)
    }

    /// Allows `addr` for new flows until `expires_ns` (`CLOCK_BOOTTIME`). An entry that already
    /// lives longer keeps its expiry: a short answer never cuts a longer allowance.
    pub fn learn(&mut self, addr: IpAddr, expires_ns: u64) -> Result<()> {
        match addr {
            IpAddr::V4(a) => {
                let key = Key::new(32, a.octets());
                let old = self.learned_v4.get(&key, 0).unwrap_or_default();
                let value = LearnedValue {
                    expires_ns: expires_ns.max(old.expires_ns),
                    hits: old.hits,
                };
                self.learned_v4
                    .insert(&key, value, 0)
                    .map_err(op(names::LEARNED_V4, "insert"))
            }
            IpAddr::V6(a) => {
                let key = Key::new(128, a.octets());
                let old = self.learned_v6.get(&key, 0).unwrap_or_default();
                let value = LearnedValue {
                    expires_ns: expires_ns.max(old.expires_ns),
                    hits: old.hits,
                };
                self.learned_v6
                    .insert(&key, value, 0)
                    .map_err(op(names::LEARNED_V6, "insert"))
            }
        }
    }

    pub fn learned(&self) -> Result<Vec<Learned>> {
        let mut out = Vec::new();
        for entry in self.learned_v4.iter() {
            let (key, value) = entry.map_err(op(names::LEARNED_V4, "iterate"))?;
            out.push(Learned {
                addr: IpAddr::V4(Ipv4Addr::from(key.data())),
                expires_ns: value.expires_ns,
                hits: value.hits,
            });
        }
        for entry in self.learned_v6.iter() {
            let (key, value) = entry.map_err(op(names::LEARNED_V6, "iterate"))?;
            out.push(Learned {
                addr: IpAddr::V6(Ipv6Addr::from(key.data())),
                expires_ns: value.expires_ns,
                hits: value.hits,
            });
        }
        Ok(out)
    }

    /// Removes learned addresses that expired before `now_ns` (the kernel already ignores them;
    /// this frees room) and flows idle for longer than their timeout. Returns how many of each.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Result<(usize, usize)> {
        let mut learned = 0;
        for l in self.learned()? {
            if l.expires_ns <= now_ns {
                let removed = match l.addr {
                    IpAddr::V4(a) => self.learned_v4.remove(&Key::new(32, a.octets())),
                    IpAddr::V6(a) => self.learned_v6.remove(&Key::new(128, a.octets())),
                };
                // A concurrent refresh may have re-inserted it, or it is gone already.
                if removed.is_ok() {
                    learned += 1;
                }
            }
        }
        let cfg = self.config()?;
        let stale: Vec<FlowKey> = self
            .flows
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(k, v)| {
                let idle = if k.proto == egress_common::packet::IPPROTO_TCP {
                    cfg.tcp_idle_ns
                } else {
                    cfg.udp_idle_ns
                };
                now_ns.saturating_sub(v.last_seen_ns) >= idle
            })
            .map(|(k, _)| k)
            .collect();
        let flows = stale
            .iter()
            .filter(|k| self.flows.remove(k).is_ok())
            .count();
        Ok((learned, flows))
    }

    /// Makes the resolver map hold exactly `resolvers` (additions first).
    pub fn sync_resolvers(&mut self, resolvers: &[IpAddr]) -> Result<()> {
        let want: BTreeSet<[u8; 16]> = resolvers.iter().map(|a| mapped(*a)).collect();
        for key in &want {
            self.resolvers
                .insert(key, 1, 0)
                .map_err(op(names::RESOLVERS, "insert"))?;
        }
        let have: Vec<[u8; 16]> = self.resolvers.keys().filter_map(|k| k.ok()).collect();
        for key in have.iter().filter(|k| !want.contains(*k)) {
            self.resolvers
                .remove(key)
                .map_err(op(names::RESOLVERS, "remove"))?;
        }
        Ok(())
    }

    pub fn resolvers(&self) -> Vec<IpAddr> {
        self.resolvers
            .keys()
            .filter_map(|k| k.ok())
            .map(unmapped)
            .collect()
    }

    /// Makes the policy part of the name maps hold exactly `exact` and `wild` (hashes). Names
    /// learned as CNAME targets (with an expiry) are left alone; additions go first.
    pub fn sync_names(&mut self, exact: &BTreeSet<u64>, wild: &BTreeSet<u64>) -> Result<()> {
        let permanent = NameValue {
            expires_ns: NAME_PERMANENT,
        };
        for h in exact {
            self.names_exact
                .insert(h, permanent, 0)
                .map_err(op(names::NAMES_EXACT, "insert"))?;
        }
        for h in wild {
            self.names_wild
                .insert(h, permanent, 0)
                .map_err(op(names::NAMES_WILD, "insert"))?;
        }
        let stale: Vec<u64> = self
            .names_exact
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(h, v)| v.expires_ns == NAME_PERMANENT && !exact.contains(h))
            .map(|(h, _)| h)
            .collect();
        for h in stale {
            self.names_exact
                .remove(&h)
                .map_err(op(names::NAMES_EXACT, "remove"))?;
        }
        let stale: Vec<u64> = self
            .names_wild
            .keys()
            .filter_map(|k| k.ok())
            .filter(|h| !wild.contains(h))
            .collect();
        for h in stale {
            self.names_wild
                .remove(&h)
                .map_err(op(names::NAMES_WILD, "remove"))?;
        }
        Ok(())
    }

    /// Allows an exact name (a CNAME target) until `expires_ns`; a policy name or a later
    /// expiry already there is kept.
    pub fn allow_name_until(&mut self, hash: u64, expires_ns: u64) -> Result<()> {
        let old = self
            .names_exact
            .get(&hash, 0)
            .map(|v| v.expires_ns)
            .unwrap_or(0);
        if old >= expires_ns {
            return Ok(());
        }
        self.names_exact
            .insert(hash, NameValue { expires_ns }, 0)
            .map_err(op(names::NAMES_EXACT, "insert"))
    }

    /// Until when an exact name hash is allowed, if it is.
    pub fn name_allowed_until(&self, hash: u64) -> Option<u64> {
        self.names_exact.get(&hash, 0).ok().map(|v| v.expires_ns)
    }

    /// Entries of the name maps: (exact permanent, exact expiring, wildcard).
    pub fn name_counts(&self) -> (usize, usize, usize) {
        let (mut permanent, mut expiring) = (0, 0);
        for (_, v) in self.names_exact.iter().filter_map(|e| e.ok()) {
            if v.expires_ns == NAME_PERMANENT {
                permanent += 1;
            } else {
                expiring += 1;
            }
        }
        (permanent, expiring, self.names_wild.keys().count())
    }

    /// Entries and capacity of each map that can fill up, by map name.
    pub fn fill(&self) -> Vec<(&'static str, usize, u32)> {
        use egress_common::maps::{
            ANSWERS_CAPACITY, DENIED_CAPACITY, FLOW_CAPACITY, LEARNED_CAPACITY,
            NAMES_EXACT_CAPACITY, NAMES_WILD_CAPACITY, STATIC_CAPACITY,
        };
        vec![
            (
                names::LEARNED_V4,
                self.learned_v4.keys().count(),
                LEARNED_CAPACITY,
            ),
            (
                names::LEARNED_V6,
                self.learned_v6.keys().count(),
                LEARNED_CAPACITY,
            ),
            (
                names::STATIC_V4,
                self.static_v4.keys().count(),
                STATIC_CAPACITY,
            ),
            (
                names::STATIC_V6,
                self.static_v6.keys().count(),
                STATIC_CAPACITY,
            ),
            (names::FLOWS, self.flows.keys().count(), FLOW_CAPACITY),
            (
                names::NAMES_EXACT,
                self.names_exact.keys().count(),
                NAMES_EXACT_CAPACITY,
            ),
            (
                names::NAMES_WILD,
                self.names_wild.keys().count(),
                NAMES_WILD_CAPACITY,
            ),
            (
                names::ANSWERS,
                self.answers.keys().count(),
                ANSWERS_CAPACITY,
            ),
            (names::DENIED, self.denied.keys().count(), DENIED_CAPACITY),
        ]
    }

    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().filter_map(|e| e.ok()).collect()
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

fn net(addr: IpAddr, prefix_len: u32) -> IpNet {
    IpNet::new(addr, prefix_len as u8).expect("the kernel only holds valid prefix lengths")
}
