//! Writing a policy into the maps, one generation at a time, and reading the policy in force.
//!
//! A reload writes the whole new policy into the generation not in force (configuration slot,
//! port bitmap, static CIDRs, resolvers, names), switches with one write
//! ([`Datapath::activate`]), then retires the old generation's entries. The programs read only
//! the generation in force, so neither a program run nor an agent killed at any step sees a
//! mix of two policies (see `egress_common::maps::generation`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use egress_common::maps::{
    NAME_PERMANENT, NameValue, PORT_WORDS, Rule, StaticValue, WildKey, generation, names, port_bit,
};
use ipnet::IpNet;

use super::{Datapath, Result, mapped, op, unmapped};

/// How long after a switch the old generation is retired ([`Datapath::retire_due`]).
pub(super) const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The writes that make `g`'s membership exactly `want`, given each key's current set of
/// generations (`have`): `(key, Some(set))` to write, `(key, None)` to remove (left in no
/// generation). Keys whose set does not change are left out, and each key comes once.
fn membership<K: Ord + Copy>(
    have: &BTreeMap<K, u32>,
    want: &BTreeSet<K>,
    g: u32,
) -> Vec<(K, Option<u32>)> {
    let keys: BTreeSet<K> = have.keys().chain(want).copied().collect();
    keys.into_iter()
        .filter_map(|k| {
            let bits = have.get(&k).copied().unwrap_or(0);
            let set = if want.contains(&k) {
                bits | generation::bit(g)
            } else {
                bits & !generation::bit(g)
            };
            (set != bits).then_some((k, (set != 0).then_some(set)))
        })
        .collect()
}

impl Datapath {
    /// Writes the enforced-port bitmap of `generation`.
    pub fn write_ports(&mut self, generation: u32, ports: &[u16]) -> Result<()> {
        write_bitmap(&mut self.ports, names::PORTS, generation, ports)
    }

    /// Enforced ports in force, read back from the bitmap.
    pub fn ports(&self) -> Result<Vec<u16>> {
        read_bitmap(&self.ports, names::PORTS, self.active()?)
    }

    /// Writes the TLS-port bitmap (`tls.ports`) of `generation`.
    pub fn write_tls_ports(&mut self, generation: u32, ports: &[u16]) -> Result<()> {
        write_bitmap(&mut self.tls_ports, names::TLS_PORTS, generation, ports)
    }

    /// TLS ports in force.
    pub fn tls_ports(&self) -> Result<Vec<u16>> {
        read_bitmap(&self.tls_ports, names::TLS_PORTS, self.active()?)
    }

    /// Makes the static CIDRs of `generation` exactly `cidrs` (stale ones of that generation,
    /// left by an agent killed while writing it, go too).
    pub fn write_static(&mut self, generation: u32, cidrs: &[IpNet]) -> Result<()> {
        self.statics.remove_foreign()?;
        let want: BTreeSet<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
        for (g, stale, _) in self.statics.entries()? {
            if g == generation && !want.contains(&stale) {
                self.statics.remove(g, stale)?;
            }
        }
        for (rule, net) in cidrs.iter().enumerate() {
            self.statics
                .insert(generation, net.trunc(), StaticValue::new(rule))?;
        }
        Ok(())
    }

    /// The static CIDRs in force.
    pub fn static_cidrs(&self) -> Result<Vec<IpNet>> {
        self.static_cidrs_of(self.active()?)
    }

    /// Keys of the static CIDR tries that the agent never writes (someone else's, see
    /// `StaticTries::remove_foreign`); the next policy write removes them.
    pub fn foreign_static_keys(&self) -> Result<usize> {
        self.statics.foreign()
    }

    /// The static CIDRs of `generation`, in force or not (a reload being written, or one an
    /// agent was killed while writing).
    pub fn static_cidrs_of(&self, generation: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .statics
            .entries()?
            .into_iter()
            .filter(|(g, _, _)| *g == generation)
            .map(|(_, net, _)| net)
            .collect())
    }

    /// Makes the resolvers trusted by `generation` exactly `resolvers`.
    pub fn write_resolvers(&mut self, generation: u32, resolvers: &[IpAddr]) -> Result<()> {
        let want: BTreeSet<[u8; 16]> = resolvers.iter().map(|a| mapped(*a)).collect();
        let mut have: BTreeMap<[u8; 16], u32> = BTreeMap::new();
        for e in self.resolvers.iter() {
            let (k, v) = e.map_err(op(names::RESOLVERS, "iterate"))?;
            have.insert(k, v);
        }
        for (key, set) in membership(&have, &want, generation) {
            match set {
                Some(b) => self
                    .resolvers
                    .insert(key, b, 0)
                    .map_err(op(names::RESOLVERS, "insert"))?,
                None => self
                    .resolvers
                    .remove(&key)
                    .map_err(op(names::RESOLVERS, "remove"))?,
            }
        }
        Ok(())
    }

    /// The trusted resolvers in force.
    pub fn resolvers(&self) -> Result<Vec<IpAddr>> {
        let bit = generation::bit(self.active()?);
        let mut out = Vec::new();
        for e in self.resolvers.iter() {
            let (k, v) = e.map_err(op(names::RESOLVERS, "iterate"))?;
            if v & bit != 0 {
                out.push(unmapped(k));
            }
        }
        Ok(out)
    }

    /// Makes the policy names of `generation` exactly `exact` and `wild` (hashes). Names
    /// learned as CNAME targets (with an expiry, in every generation) are left to
    /// [`Self::reconcile`], which removes those of removed rules; a CNAME target that becomes a
    /// policy name is a policy name from then on.
    pub fn write_names(
        &mut self,
        generation: u32,
        exact: &BTreeSet<u64>,
        wild: &BTreeSet<u64>,
    ) -> Result<()> {
        let permanent = self
            .exact_names()?
            .into_iter()
            .filter(|(_, v)| v.expires_ns == NAME_PERMANENT)
            .map(|(h, v)| (h, v.generations));
        let have: BTreeMap<u64, u32> = permanent.collect();
        for (h, set) in membership(&have, exact, generation) {
            match set {
                Some(b) => self
                    .names_exact
                    .insert(h, policy_name(Rule::exact(h), b), 0)
                    .map_err(op(names::NAMES_EXACT, "insert"))?,
                None => self
                    .names_exact
                    .remove(&h)
                    .map_err(op(names::NAMES_EXACT, "remove"))?,
            }
        }
        // Wildcards carry the generation in the key: this generation's exactly `wild`, and
        // keys of no generation (someone else's) go.
        let mut stale = Vec::new();
        let mut have = BTreeSet::new();
        for k in self.names_wild.keys() {
            let k = k.map_err(op(names::NAMES_WILD, "iterate"))?;
            if k.generation > 1 || (k.generation == generation && !wild.contains(&k.hash)) {
                stale.push(k);
            } else if k.generation == generation {
                have.insert(k.hash);
            }
        }
        for &h in wild.difference(&have) {
            self.names_wild
                .insert(WildKey::new(h, generation), 1, 0)
                .map_err(op(names::NAMES_WILD, "insert"))?;
        }
        for k in stale {
            self.names_wild
                .remove(&k)
                .map_err(op(names::NAMES_WILD, "remove"))?;
        }
        Ok(())
    }

    /// Retires the generation the last switch put out of force, once [`RETIRE_AFTER`] has
    /// passed: a program run that read the old configuration just before the switch may still
    /// be looking up its entries (microseconds; a preempted CPU, longer). Called at every
    /// garbage collection. Nothing depends on it but tidiness: the next reload makes the
    /// generation it writes exact whatever is left there.
    pub fn retire_due(&mut self) -> Result<()> {
        if let Some((g, at)) = self.retiring
            && at.elapsed() >= RETIRE_AFTER
        {
            self.retiring = None;
            if g != self.active()? {
                self.retire(g)?;
            }
        }
        Ok(())
    }

    /// Removes `generation` from the policy maps after the other one was put in force: its
    /// static CIDRs, and its membership of resolvers and policy names (entries left in no
    /// generation go). Its configuration slot and port bitmap stay until the next reload
    /// overwrites them; nothing reads them meanwhile.
    pub fn retire(&mut self, generation: u32) -> Result<()> {
        for (g, net, _) in self.statics.entries()? {
            if g == generation {
                self.statics.remove(g, net)?;
            }
        }
        self.write_resolvers(generation, &[])?;
        self.write_names(generation, &BTreeSet::new(), &BTreeSet::new())
    }

    pub(crate) fn exact_names(&self) -> Result<Vec<(u64, NameValue)>> {
        self.names_exact
            .iter()
            .map(|e| e.map_err(op(names::NAMES_EXACT, "iterate")))
            .collect()
    }

    /// Allows an exact name (a CNAME target) until `expires_ns` in every generation, standing
    /// for `rule` (the rule of the question whose chain ended at it); a policy name in force or
    /// a later expiry already there is kept. Only the agent writes CNAME targets, under its
    /// datapath lock, so this read and write race with nothing but a policy write, which takes
    /// the same lock.
    pub fn allow_name_until(&mut self, hash: u64, expires_ns: u64, rule: Rule) -> Result<()> {
        let in_force = generation::bit(self.active()?);
        if let Ok(old) = self.names_exact.get(&hash, 0) {
            let policy_name = old.expires_ns == NAME_PERMANENT;
            if (policy_name && old.generations & in_force != 0)
                || (!policy_name && old.expires_ns >= expires_ns)
            {
                return Ok(());
            }
        }
        let target = NameValue {
            expires_ns,
            rule,
            generations: generation::ALL,
            _pad: 0,
        };
        self.names_exact
            .insert(hash, target, 0)
            .map_err(op(names::NAMES_EXACT, "insert"))
    }

    /// Removes the CNAME-target names that expired or whose chain's rule is not in `rules`
    /// (policy names never expire). Without this the pinned map only grows, until inserts fail
    /// and reloads that add names fail with them.
    pub(crate) fn expire_names(&mut self, now_ns: u64, rules: &BTreeSet<Rule>) -> Result<usize> {
        let stale: Vec<u64> = self
            .exact_names()?
            .into_iter()
            .filter(|(_, v)| {
                v.expires_ns != NAME_PERMANENT
                    && (v.expires_ns <= now_ns || !rules.contains(&v.rule))
            })
            .map(|(h, _)| h)
            .collect();
        let mut removed = 0;
        for h in stale {
            if self.names_exact.remove(&h).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The policy's part of the name maps in force: the permanent exact-name hashes and the
    /// wildcard suffix hashes.
    pub fn policy_names(&self) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
        let active = self.active()?;
        let bit = generation::bit(active);
        let exact = self
            .exact_names()?
            .into_iter()
            .filter(|(_, v)| v.expires_ns == NAME_PERMANENT && v.generations & bit != 0)
            .map(|(h, _)| h)
            .collect();
        Ok((exact, self.wild_names(active)?))
    }

    /// The wildcard suffix hashes of `generation`.
    fn wild_names(&self, generation: u32) -> Result<BTreeSet<u64>> {
        let mut wild = BTreeSet::new();
        for k in self.names_wild.keys() {
            let k = k.map_err(op(names::NAMES_WILD, "iterate"))?;
            if k.generation == generation {
                wild.insert(k.hash);
            }
        }
        Ok(wild)
    }

    /// The exact-name entry of a hash, if there is one: until when it is allowed, and for
    /// which rule.
    pub fn exact_name(&self, hash: u64) -> Option<NameValue> {
        self.names_exact.get(&hash, 0).ok()
    }

    /// Entries of the name maps in force: (exact permanent, exact expiring, wildcard).
    pub fn name_counts(&self) -> Result<(usize, usize, usize)> {
        let active = self.active()?;
        let bit = generation::bit(active);
        let (mut permanent, mut expiring) = (0, 0);
        for (_, v) in self.exact_names()? {
            if v.expires_ns != NAME_PERMANENT {
                expiring += 1;
            } else if v.generations & bit != 0 {
                permanent += 1;
            }
        }
        Ok((permanent, expiring, self.wild_names(active)?.len()))
    }
}

/// The name-map value of a policy name in the generations `bits`.
fn policy_name(rule: Rule, generations: u32) -> NameValue {
    NameValue {
        expires_ns: NAME_PERMANENT,
        rule,
        generations,
        _pad: 0,
    }
}

/// Makes `generation`'s half of a port bitmap (`PORTS`, `TLS_PORTS`) hold exactly `ports`.
fn write_bitmap(
    map: &mut aya::maps::Array<aya::maps::MapData, u32>,
    name: &'static str,
    generation: u32,
    ports: &[u16],
) -> Result<()> {
    let mut words = vec![0u32; PORT_WORDS as usize];
    for &port in ports {
        let (word, bit) = port_bit(port);
        words[word as usize] |= bit;
    }
    let base = (generation & 1) * PORT_WORDS;
    for (i, want) in words.into_iter().enumerate() {
        let i = base + i as u32;
        let have = map.get(&i, 0).map_err(op(name, "read"))?;
        if have != want {
            map.set(i, want, 0).map_err(op(name, "write"))?;
        }
    }
    Ok(())
}

/// The ports of generation `g`'s half of a port bitmap.
fn read_bitmap(
    map: &aya::maps::Array<aya::maps::MapData, u32>,
    name: &'static str,
    g: u32,
) -> Result<Vec<u16>> {
    let base = g * PORT_WORDS;
    let mut ports = Vec::new();
    for i in 0..PORT_WORDS {
        let w = map.get(&(base + i), 0).map_err(op(name, "read"))?;
        for bit in 0..32 {
            if w & (1 << bit) != 0 {
                ports.push((i * 32 + bit) as u16);
            }
        }
    }
    Ok(ports)
}
