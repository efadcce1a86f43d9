//! Writing a policy into the maps: enforced ports, static CIDRs, trusted resolvers and the
//! name maps. Every `sync_*` inserts additions before it removes what is stale, so what both
//! the old and the new policy allow is never denied in between.

use std::{collections::BTreeSet, net::IpAddr};

use egress_common::maps::{
    NAME_PERMANENT, NameValue, PORT_WORDS, Rule, StaticValue, names, port_bit,
};
use ipnet::IpNet;

use super::{Datapath, Result, count, mapped, op, unmapped};

impl Datapath {
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

    /// Makes the static CIDR maps hold exactly `cidrs` (additions first).
    pub fn sync_static(&mut self, cidrs: &[IpNet]) -> Result<()> {
        let want: BTreeSet<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
        let have: BTreeSet<IpNet> = self.static_cidrs()?.into_iter().collect();
        for (rule, net) in cidrs.iter().enumerate() {
            self.statics.insert(net.trunc(), StaticValue::new(rule))?;
        }
        for stale in have.difference(&want) {
            self.statics.remove(*stale)?;
        }
        Ok(())
    }

    pub fn static_cidrs(&self) -> Result<Vec<IpNet>> {
        Ok(self
            .statics
            .entries()?
            .into_iter()
            .map(|(net, _)| net)
            .collect())
    }

    /// Makes the resolver map hold exactly `resolvers` (additions first).
    pub fn sync_resolvers(&mut self, resolvers: &[IpAddr]) -> Result<()> {
        let want: BTreeSet<[u8; 16]> = resolvers.iter().map(|a| mapped(*a)).collect();
        for key in &want {
            self.resolvers
                .insert(key, 1, 0)
                .map_err(op(names::RESOLVERS, "insert"))?;
        }
        let have = self.resolver_keys()?;
        for key in have.iter().filter(|k| !want.contains(*k)) {
            self.resolvers
                .remove(key)
                .map_err(op(names::RESOLVERS, "remove"))?;
        }
        Ok(())
    }

    pub fn resolvers(&self) -> Result<Vec<IpAddr>> {
        Ok(self.resolver_keys()?.into_iter().map(unmapped).collect())
    }

    fn resolver_keys(&self) -> Result<Vec<[u8; 16]>> {
        self.resolvers
            .keys()
            .map(|k| k.map_err(op(names::RESOLVERS, "iterate")))
            .collect()
    }

    /// Makes the policy part of the name maps hold exactly `exact` and `wild` (hashes). Names
    /// learned as CNAME targets (with an expiry) are left to [`Self::reconcile`], which removes
    /// those of removed rules; additions go first.
    pub fn sync_names(&mut self, exact: &BTreeSet<u64>, wild: &BTreeSet<u64>) -> Result<()> {
        for &h in exact {
            let permanent = NameValue {
                expires_ns: NAME_PERMANENT,
                rule: Rule::exact(h),
            };
            self.names_exact
                .insert(h, permanent, 0)
                .map_err(op(names::NAMES_EXACT, "insert"))?;
        }
        for &h in wild {
            let permanent = NameValue {
                expires_ns: NAME_PERMANENT,
                rule: Rule::wild(h),
            };
            self.names_wild
                .insert(h, permanent, 0)
                .map_err(op(names::NAMES_WILD, "insert"))?;
        }
        let stale: Vec<u64> = self
            .exact_names()?
            .into_iter()
            .filter(|(h, v)| v.expires_ns == NAME_PERMANENT && !exact.contains(h))
            .map(|(h, _)| h)
            .collect();
        for h in stale {
            self.names_exact
                .remove(&h)
                .map_err(op(names::NAMES_EXACT, "remove"))?;
        }
        let mut stale = Vec::new();
        for h in self.names_wild.keys() {
            let h = h.map_err(op(names::NAMES_WILD, "iterate"))?;
            if !wild.contains(&h) {
                stale.push(h);
            }
        }
        for h in stale {
            self.names_wild
                .remove(&h)
                .map_err(op(names::NAMES_WILD, "remove"))?;
        }
        Ok(())
    }

    pub(crate) fn exact_names(&self) -> Result<Vec<(u64, NameValue)>> {
        self.names_exact
            .iter()
            .map(|e| e.map_err(op(names::NAMES_EXACT, "iterate")))
            .collect()
    }

    /// Allows an exact name (a CNAME target) until `expires_ns`, standing for `rule` (the rule
    /// of the question whose chain ended at it); a policy name or a later expiry already there
    /// is kept. Only the agent writes CNAME targets, under its datapath lock, so this read and
    /// write race with nothing but a policy write, which takes the same lock.
    pub fn allow_name_until(&mut self, hash: u64, expires_ns: u64, rule: Rule) -> Result<()> {
        let old = self
            .names_exact
            .get(&hash, 0)
            .map(|v| v.expires_ns)
            .unwrap_or(0);
        if old >= expires_ns {
            return Ok(());
        }
        self.names_exact
            .insert(hash, NameValue { expires_ns, rule }, 0)
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

    /// The policy's part of the name maps: the permanent exact-name hashes and the wildcard
    /// suffix hashes.
    pub fn policy_names(&self) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
        let exact = self
            .exact_names()?
            .into_iter()
            .filter(|(_, v)| v.expires_ns == NAME_PERMANENT)
            .map(|(h, _)| h)
            .collect();
        let mut wild = BTreeSet::new();
        for h in self.names_wild.keys() {
            wild.insert(h.map_err(op(names::NAMES_WILD, "iterate"))?);
        }
        Ok((exact, wild))
    }

    /// The exact-name entry of a hash, if there is one: until when it is allowed, and for
    /// which rule.
    pub fn exact_name(&self, hash: u64) -> Option<NameValue> {
        self.names_exact.get(&hash, 0).ok()
    }

    /// Entries of the name maps: (exact permanent, exact expiring, wildcard).
    pub fn name_counts(&self) -> Result<(usize, usize, usize)> {
        let (mut permanent, mut expiring) = (0, 0);
        for (_, v) in self.exact_names()? {
            if v.expires_ns == NAME_PERMANENT {
                permanent += 1;
            } else {
                expiring += 1;
            }
        }
        let wild = count(self.names_wild.keys(), names::NAMES_WILD)?;
        Ok((permanent, expiring, wild))
    }
}
