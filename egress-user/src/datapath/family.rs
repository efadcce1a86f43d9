//! One abstraction for the two address families: the kernel keeps an IPv4 and an IPv6 map for
//! each kind of prefix set (their keys differ in size), userspace sees one set of prefixes
//! keyed by [`IpNet`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use egress_common::maps::{static_v4, static_v6};
use ipnet::IpNet;

use super::{Result, op};

/// The IPv4 and IPv6 static CIDR tries, whose keys start with the policy generation
/// (`egress_common::maps::static_v4`): one set of prefixes per generation.
pub(crate) struct StaticTries<V> {
    v4: LpmTrie<MapData, [u8; 5], V>,
    v6: LpmTrie<MapData, [u8; 17], V>,
    /// The maps' names, IPv4 first, for errors.
    names: [&'static str; 2],
}

impl<V: Pod> StaticTries<V> {
    pub(crate) fn new(
        v4: LpmTrie<MapData, [u8; 5], V>,
        v6: LpmTrie<MapData, [u8; 17], V>,
        names: [&'static str; 2],
    ) -> Self {
        Self { v4, v6, names }
    }

    pub(crate) fn insert(&mut self, generation: u32, net: IpNet, value: V) -> Result<()> {
        let name = self.name(net);
        match net.trunc() {
            IpNet::V4(n) => self.v4.insert(&v4_key(generation, n), value, 0),
            IpNet::V6(n) => self.v6.insert(&v6_key(generation, n), value, 0),
        }
        .map_err(op(name, "insert"))
    }

    /// Removes `net` of `generation`; `Ok(false)` if it was not there.
    pub(crate) fn remove(&mut self, generation: u32, net: IpNet) -> Result<bool> {
        let name = self.name(net);
        let removed = match net.trunc() {
            IpNet::V4(n) => self.v4.remove(&v4_key(generation, n)),
            IpNet::V6(n) => self.v6.remove(&v6_key(generation, n)),
        };
        match removed {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(op(name, "remove")(source)),
        }
    }

    /// Every prefix with its generation and value, IPv4 first; keys the agent never writes
    /// ([`Self::remove_foreign`]) are left out.
    pub(crate) fn entries(&self) -> Result<Vec<(u32, IpNet, V)>> {
        let mut out = Vec::new();
        for entry in self.v4.iter() {
            let (k, v) = entry.map_err(op(self.names[0], "iterate"))?;
            let d = k.data();
            if let Some(len) = ours(d[0], k.prefix_len()) {
                let a = Ipv4Addr::new(d[1], d[2], d[3], d[4]);
                out.push((u32::from(d[0]), net(IpAddr::V4(a), len), v));
            }
        }
        for entry in self.v6.iter() {
            let (k, v) = entry.map_err(op(self.names[1], "iterate"))?;
            let d = k.data();
            if let Some(len) = ours(d[0], k.prefix_len()) {
                let a: [u8; 16] = d[1..].try_into().expect("16 bytes");
                out.push((u32::from(d[0]), net(IpAddr::V6(Ipv6Addr::from(a)), len), v));
            }
        }
        Ok(out)
    }

    /// The keys the agent never writes: a generation byte other than 0 or 1, or a prefix
    /// shorter than the generation byte (such a key matches every address of every generation:
    /// someone else's allow-all).
    fn foreign_keys(&self) -> Result<ForeignKeys> {
        fn of<const N: usize>(
            keys: impl Iterator<Item = std::result::Result<Key<[u8; N]>, MapError>>,
            name: &'static str,
        ) -> Result<Vec<Key<[u8; N]>>> {
            let mut out = Vec::new();
            for k in keys {
                let k = k.map_err(op(name, "iterate"))?;
                if ours(k.data()[0], k.prefix_len()).is_none() {
                    out.push(k);
                }
            }
            Ok(out)
        }
        Ok((
            of(self.v4.keys(), self.names[0])?,
            of(self.v6.keys(), self.names[1])?,
        ))
    }

    /// Removes the keys the agent never writes ([`Self::foreign_keys`]); returns how many.
    pub(crate) fn remove_foreign(&mut self) -> Result<usize> {
        let (v4, v6) = self.foreign_keys()?;
        for k in &v4 {
            self.v4.remove(k).map_err(op(self.names[0], "remove"))?;
        }
        for k in &v6 {
            self.v6.remove(k).map_err(op(self.names[1], "remove"))?;
        }
        Ok(v4.len() + v6.len())
    }

    /// How many keys the agent never writes are in the tries ([`Self::foreign_keys`]).
    pub(crate) fn foreign(&self) -> Result<usize> {
        let (v4, v6) = self.foreign_keys()?;
        Ok(v4.len() + v6.len())
    }

    /// Entries of each map (both generations), by map name.
    pub(crate) fn lens(&self) -> Result<[(&'static str, usize); 2]> {
        Ok([
            (self.names[0], count(self.v4.keys(), self.names[0])?),
            (self.names[1], count(self.v6.keys(), self.names[1])?),
        ])
    }

    fn name(&self, net: IpNet) -> &'static str {
        match net {
            IpNet::V4(_) => self.names[0],
            IpNet::V6(_) => self.names[1],
        }
    }
}

/// Static trie keys the agent never writes, IPv4 and IPv6 ([`StaticTries::foreign_keys`]).
type ForeignKeys = (Vec<Key<[u8; 5]>>, Vec<Key<[u8; 17]>>);

/// The CIDR's own prefix length if a key with this generation byte and prefix length is one
/// the agent writes (generation 0 or 1, the generation byte inside the prefix).
fn ours(generation: u8, prefix_len: u32) -> Option<u32> {
    (generation <= 1).then_some(())?;
    prefix_len.checked_sub(8)
}

/// The trie key of an IPv4 CIDR of `generation`: the generation byte is part of the prefix.
fn v4_key(generation: u32, n: ipnet::Ipv4Net) -> Key<[u8; 5]> {
    Key::new(
        8 + u32::from(n.prefix_len()),
        static_v4(generation, n.network().octets()),
    )
}

fn v6_key(generation: u32, n: ipnet::Ipv6Net) -> Key<[u8; 17]> {
    Key::new(
        8 + u32::from(n.prefix_len()),
        static_v6(generation, n.network().octets()),
    )
}

/// An IPv4 and an IPv6 hash map of single addresses with the same value type.
pub(crate) struct FamilyHash<V> {
    v4: HashMap<MapData, [u8; 4], V>,
    v6: HashMap<MapData, [u8; 16], V>,
    /// The maps' names, IPv4 first, for errors.
    names: [&'static str; 2],
}

/// `BPF_NOEXIST`: insert only if the key is absent.
pub(crate) const NOEXIST: u64 = 1;

/// Inserts or replaces (`flags` 0), or only inserts ([`NOEXIST`]: `Ok(false)` if the key was
/// there).
pub(crate) fn insert<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    value: &V,
    flags: u64,
) -> std::result::Result<bool, MapError> {
    match map.insert(key, value, flags) {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(e))
            if flags == NOEXIST && e.io_error.raw_os_error() == Some(libc::EEXIST) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

impl<V: Pod> FamilyHash<V> {
    pub(crate) fn new(
        v4: HashMap<MapData, [u8; 4], V>,
        v6: HashMap<MapData, [u8; 16], V>,
        names: [&'static str; 2],
    ) -> Self {
        Self { v4, v6, names }
    }

    pub(crate) fn get(&self, addr: IpAddr) -> Result<Option<V>> {
        let found = match addr {
            IpAddr::V4(a) => self.v4.get(&a.octets(), 0),
            IpAddr::V6(a) => self.v6.get(&a.octets(), 0),
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(op(self.name(addr), "read")(source)),
        }
    }

    /// Inserts or replaces (`flags` 0), or only inserts ([`NOEXIST`]: `Ok(false)` if the key
    /// was there).
    pub(crate) fn insert(&mut self, addr: IpAddr, value: V, flags: u64) -> Result<bool> {
        let name = self.name(addr);
        match addr {
            IpAddr::V4(a) => insert(&mut self.v4, &a.octets(), &value, flags),
            IpAddr::V6(a) => insert(&mut self.v6, &a.octets(), &value, flags),
        }
        .map_err(op(name, "insert"))
    }

    /// Removes `addr` and returns the value that was removed, atomically.
    pub(crate) fn take(&mut self, addr: IpAddr) -> Result<Option<V>> {
        let name = self.name(addr);
        match addr {
            IpAddr::V4(a) => super::take::lookup_and_delete(self.v4.map(), &a.octets()),
            IpAddr::V6(a) => super::take::lookup_and_delete(self.v6.map(), &a.octets()),
        }
        .map_err(op(name, "lookup-and-delete"))
    }

    /// Every address and its value, IPv4 first.
    pub(crate) fn entries(&self) -> Result<Vec<(IpAddr, V)>> {
        let mut out = Vec::new();
        for entry in self.v4.iter() {
            let (k, v) = entry.map_err(op(self.names[0], "iterate"))?;
            out.push((IpAddr::V4(Ipv4Addr::from(k)), v));
        }
        for entry in self.v6.iter() {
            let (k, v) = entry.map_err(op(self.names[1], "iterate"))?;
            out.push((IpAddr::V6(Ipv6Addr::from(k)), v));
        }
        Ok(out)
    }

    /// Entries of each map, by map name.
    pub(crate) fn lens(&self) -> Result<[(&'static str, usize); 2]> {
        Ok([
            (self.names[0], count(self.v4.keys(), self.names[0])?),
            (self.names[1], count(self.v6.keys(), self.names[1])?),
        ])
    }

    fn name(&self, addr: IpAddr) -> &'static str {
        match addr {
            IpAddr::V4(_) => self.names[0],
            IpAddr::V6(_) => self.names[1],
        }
    }
}

/// How many keys an iteration yields; an iteration error is returned, not skipped.
pub(crate) fn count<K>(
    keys: impl Iterator<Item = std::result::Result<K, MapError>>,
    name: &'static str,
) -> Result<usize> {
    let mut n = 0;
    for k in keys {
        k.map_err(op(name, "iterate"))?;
        n += 1;
    }
    Ok(n)
}

fn net(addr: IpAddr, prefix_len: u32) -> IpNet {
    IpNet::new(addr, prefix_len as u8).expect("the kernel only holds valid prefix lengths")
}
