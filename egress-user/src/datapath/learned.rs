//! Learned addresses, why they are allowed, flows, and keeping all of it true to the policy:
//! expiry, revocation when a reload removes the rules that allowed an address, and the garbage
//! collection of flows.
//!
//! # Never losing a refresh
//! The kernel refreshes learned entries while the agent removes or shortens them. No map
//! operation compares before it deletes, so every removal here is an atomic
//! lookup-and-delete: the value that was removed comes back, and if its refresh stamp is not
//! the one the decision was made on, the kernel refreshed it in between and it is put back
//! (insert-if-absent, so a newer kernel write wins). The kernel writes entries only with map
//! updates, which the bucket lock orders against the removal. The entry is absent only for the
//! microseconds between the two calls, and only when such a race happened.
//!
//! # Why an address is allowed
//! `LEARNED_BY` holds one entry per (address, rule) with that rule's expiry; the kernel writes
//! it before the address. The rules in force are those of the name maps: permanent exact
//! names and wildcard suffixes. The address snapshot is read before the justification
//! snapshot, so every address read has its justification visible.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use aya::maps::MapError;
use egress_common::{
    maps::{FlowKey, FlowValue, LearnedByKey, LearnedValue, Rule, names},
    packet::IPPROTO_TCP,
};

use super::{
    Datapath, Result,
    family::{NOEXIST, insert},
    mapped, op,
    take::lookup_and_delete,
    unmapped,
};

/// A learned address as stored in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    pub addr: IpAddr,
    pub expires_ns: u64,
    /// New flows the entry admitted.
    pub hits: u64,
}

/// What one [`Datapath::reconcile`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Addresses removed because they expired.
    pub expired: usize,
    /// Unexpired addresses removed because no rule in force allows them any more.
    pub revoked: usize,
    /// Those addresses.
    pub revoked_addrs: Vec<IpAddr>,
    /// Addresses whose expiry was shortened to that of the rules still in force.
    pub shortened: usize,
    /// Entries the kernel refreshed while they were being removed, put back.
    pub restored: usize,
    /// Justifications removed (expired, or their rule left the policy).
    pub justifications: usize,
    /// CNAME targets removed (expired, or their chain's rule left the policy).
    pub names: usize,
    /// Addresses kept because the name that last answered with them is allowed by another
    /// rule in force.
    pub rejustified: usize,
}

impl Datapath {
    /// Allows `addr` for new flows until `expires_ns` (`CLOCK_BOOTTIME`) because of `rule`,
    /// stamped `now_ns`, as the kernel does: the justification first, then the address, whose
    /// expiry only grows.
    pub fn learn(&mut self, addr: IpAddr, rule: Rule, now_ns: u64, expires_ns: u64) -> Result<()> {
        let key = LearnedByKey {
            addr: mapped(addr),
            rule,
        };
        let old = match self.learned_by.get(&key, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => 0,
            Err(e) => return Err(op(names::LEARNED_BY, "read")(e)),
        };
        if expires_ns > old {
            self.learned_by
                .insert(key, expires_ns, 0)
                .map_err(op(names::LEARNED_BY, "insert"))?;
        }
        let old = self.learned.get(addr)?.unwrap_or_default();
        self.learned.insert(
            addr,
            LearnedValue {
                expires_ns: expires_ns.max(old.expires_ns),
                hits: old.hits,
                refreshed_ns: now_ns,
            },
            0,
        )?;
        Ok(())
    }

    pub fn learned(&self) -> Result<Vec<Learned>> {
        Ok(self
            .learned
            .entries()?
            .into_iter()
            .map(|(addr, v)| Learned {
                addr,
                expires_ns: v.expires_ns,
                hits: v.hits,
            })
            .collect())
    }

    /// Every justification: (address, rule, expiry).
    pub fn justifications(&self) -> Result<Vec<(IpAddr, Rule, u64)>> {
        self.learned_by
            .iter()
            .map(|e| {
                e.map(|(k, v)| (unmapped(k.addr), k.rule, v))
                    .map_err(op(names::LEARNED_BY, "iterate"))
            })
            .collect()
    }

    /// The rules in force: the policy's exact names and wildcard suffixes in the generation in
    /// force (what the last applied policy wrote).
    pub fn rules(&self) -> Result<BTreeSet<Rule>> {
        let (exact, wild) = self.policy_names()?;
        Ok(exact
            .into_iter()
            .map(Rule::exact)
            .chain(wild.into_iter().map(Rule::wild))
            .collect())
    }

    /// Makes the learned state true to the rules in force at `now_ns`: CNAME targets and
    /// justifications that expired or whose rule left the policy go; an address goes when it
    /// expired or when no justification is left, and its expiry is shortened to the longest
    /// one left. Run after every policy write and at every garbage-collection tick (which also
    /// catches a program run that was still using a removed rule while the policy changed).
    pub fn reconcile(&mut self, now_ns: u64) -> Result<Reconciled> {
        let (rules, names) = self.reconcile_names(now_ns)?;
        let mut done = self.reconcile_learned(now_ns, &rules)?;
        done.names = names;
        Ok(done)
    }

    /// The name half of [`Self::reconcile`]: removes the CNAME targets that expired or whose
    /// rule left the policy. Returns the rules in force (for [`Self::reconcile_learned`]) and
    /// how many targets went. It writes the name maps, which the agent's learning writes too:
    /// the agent runs it under its lock.
    pub fn reconcile_names(&mut self, now_ns: u64) -> Result<(BTreeSet<Rule>, usize)> {
        let rules = self.rules()?;
        let names = self.expire_names(now_ns, &rules)?;
        Ok((rules, names))
    }

    /// The learned-address half of [`Self::reconcile`], against `rules` (the rules in force,
    /// read before). It only ever removes with lookup-and-delete and puts back what was written
    /// meanwhile, so it is safe beside concurrent learning (the kernel's and the agent's) and
    /// needs no lock: the agent runs it on a map handle of its own.
    pub fn reconcile_learned(&mut self, now_ns: u64, rules: &BTreeSet<Rule>) -> Result<Reconciled> {
        let mut done = Reconciled::default();
        // Addresses before justifications: see the module documentation.
        let learned = self.learned.entries()?;
        // Keyed by the 16-byte form: an IPv4-mapped AAAA address (learned in the IPv6 map)
        // shares its justifications with the IPv4 address.
        let mut best: HashMap<[u8; 16], u64> = HashMap::new();
        // One walk that keeps only what must go (a list of every justification would be
        // tens of MiB at full maps); removing during the walk would restart it.
        let mut stale = Vec::new();
        for entry in self.learned_by.iter() {
            let (key, expires) = entry.map_err(op(names::LEARNED_BY, "iterate"))?;
            if expires > now_ns && rules.contains(&key.rule) {
                let b = best.entry(key.addr).or_default();
                *b = (*b).max(expires);
            } else {
                stale.push(key);
            }
        }
        for key in stale {
            let (addr, rule) = (key.addr, key.rule);
            let removed: Option<u64> = lookup_and_delete(self.learned_by_map(), &key)
                .map_err(op(names::LEARNED_BY, "lookup-and-delete"))?;
            match removed {
                // Refreshed in between, by a rule still in force: put it back.
                Some(v) if v > now_ns && rules.contains(&rule) => {
                    let _ = self.learned_by.insert(key, v, NOEXIST);
                    let b = best.entry(addr).or_default();
                    *b = (*b).max(v);
                }
                Some(_) => done.justifications += 1,
                None => {}
            }
        }
        let cfg = self.config()?;
        for (addr, seen) in learned {
            let mut keep_until = best.get(&mapped(addr)).copied().unwrap_or(0);
            if seen.expires_ns > now_ns && keep_until <= now_ns {
                // About to be revoked: the kernel recorded only the rules that matched when it
                // learned. If the name that last answered with this address is allowed by a
                // rule in force now (an exact name replaced by a wildcard that covers it, or a
                // broader wildcard removed under a narrower one), it is justified by that rule.
                if let Some(rule) = self.rule_for_last_answer(addr, rules, &cfg)? {
                    let key = LearnedByKey {
                        addr: mapped(addr),
                        rule,
                    };
                    // Insert-if-absent: a justification under this rule written meanwhile (by
                    // the kernel or the agent's learning) is fresher than this snapshot's.
                    insert(&mut self.learned_by, &key, &seen.expires_ns, NOEXIST)
                        .map_err(op(names::LEARNED_BY, "insert"))?;
                    keep_until = seen.expires_ns;
                    done.rejustified += 1;
                }
            }
            if seen.expires_ns > now_ns && seen.expires_ns <= keep_until {
                continue;
            }
            let Some(removed) = self.learned.take(addr)? else {
                continue;
            };
            if removed.refreshed_ns != seen.refreshed_ns {
                // The kernel (or a learning call) wrote it after the snapshot: keep its write.
                if self.learned.insert(addr, removed, NOEXIST)? {
                    done.restored += 1;
                }
                continue;
            }
            if seen.expires_ns <= now_ns {
                done.expired += 1;
            } else if keep_until <= now_ns {
                done.revoked += 1;
                done.revoked_addrs.push(addr);
            } else {
                let shorter = LearnedValue {
                    expires_ns: keep_until,
                    ..removed
                };
                self.learned.insert(addr, shorter, NOEXIST)?;
                done.shortened += 1;
            }
        }
        Ok(done)
    }

    /// The rule in force that allows the question name last recorded for `addr` (`ANSWERS`):
    /// the name itself as an exact name, or the shortest of its proper suffixes as a wildcard.
    fn rule_for_last_answer(
        &self,
        addr: IpAddr,
        rules: &BTreeSet<Rule>,
        cfg: &egress_common::maps::Config,
    ) -> Result<Option<Rule>> {
        let Ok(answer) = self.answers.get(&mapped(addr), 0) else {
            return Ok(None);
        };
        let len = usize::from(answer.len).min(answer.name.len());
        let Ok(name) = std::str::from_utf8(&answer.name[..len]) else {
            return Ok(None);
        };
        if answer.allowed == 0 || name.is_empty() {
            return Ok(None);
        }
        let (full, suffixes) = egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, name);
        let exact = Rule::exact(full);
        if rules.contains(&exact) {
            return Ok(Some(exact));
        }
        // Shortest first, as the kernel offers them.
        Ok(suffixes
            .as_slice()
            .iter()
            .rev()
            .map(|&h| Rule::wild(h))
            .find(|r| rules.contains(r)))
    }

    /// Retires an old policy generation that is due ([`Self::retire_due`]), runs
    /// [`Self::reconcile`], then removes flows idle for longer than their timeout. Returns
    /// what the reconciliation did and how many flows went.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Result<(Reconciled, usize)> {
        let (rules, names) = self.collect_names(now_ns)?;
        let (mut done, flows) = self.collect_learned(now_ns, &rules)?;
        done.names = names;
        Ok((done, flows))
    }

    /// The part of garbage collection that writes the policy and name maps, which the agent's
    /// learning also writes (CNAME targets): retires a due policy generation and removes the
    /// CNAME targets that expired or whose rule left the policy. Small (names, not addresses).
    /// Returns the rules in force and how many targets went.
    pub fn collect_names(&mut self, now_ns: u64) -> Result<(BTreeSet<Rule>, usize)> {
        self.retire_due()?;
        self.reconcile_names(now_ns)
    }

    /// The part of garbage collection that walks the learned maps and the flow tables (time
    /// proportional to their entries: seconds when they are full): [`Self::reconcile_learned`]
    /// against `rules`, then the idle flows. Safe beside concurrent learning, like
    /// [`Self::reconcile_learned`]. Returns what the reconciliation did and how many flows went.
    pub fn collect_learned(
        &mut self,
        now_ns: u64,
        rules: &BTreeSet<Rule>,
    ) -> Result<(Reconciled, usize)> {
        let done = self.reconcile_learned(now_ns, rules)?;
        let cfg = self.config()?;
        self.expire_revoked(now_ns.saturating_sub(cfg.tcp_idle_ns))?;
        let mut stale = Vec::new();
        for (k, v) in self.flows()? {
            let idle = if k.proto == IPPROTO_TCP {
                cfg.tcp_idle_ns
            } else {
                cfg.udp_idle_ns
            };
            if now_ns.saturating_sub(v.last_seen_ns) >= idle {
                stale.push(k);
            }
        }
        let flows = self.forget_flows(&stale)?;
        Ok((done, flows))
    }

    /// Removes the flows to destinations a policy change revoked (`revoked`: learned addresses
    /// no rule allows any more; `removed`: static CIDRs the policy dropped) that nothing allows
    /// now (neither a static CIDR nor an unexpired learned address), and records those
    /// destinations in `REVOKED` so the kernel does not pass their connections on the socket's
    /// word: their next packet is judged afresh and, not being a SYN, dropped. Connections to
    /// addresses whose TTL merely ran out are left alone, as without a policy change. The
    /// policy's `revoked_connections: cut`. Returns how many flows went.
    pub fn cut_flows(
        &mut self,
        now_ns: u64,
        revoked: &[IpAddr],
        removed: &[ipnet::IpNet],
    ) -> Result<usize> {
        if revoked.is_empty() && removed.is_empty() {
            return Ok(0);
        }
        let statics = self.static_cidrs()?;
        // Every revoked address, with a flow or not: a connection whose flow was already lost
        // must not pass on its socket's word either.
        for &addr in revoked {
            if !statics.iter().any(|n| n.contains(&addr)) {
                self.revoked
                    .insert(mapped(addr), now_ns, 0)
                    .map_err(op(names::REVOKED, "insert"))?;
            }
        }
        let revoked: std::collections::HashSet<&IpAddr> = revoked.iter().collect();
        let mut cut = Vec::new();
        for (k, _) in self.flows()? {
            let dst = unmapped(k.daddr);
            if !revoked.contains(&dst) && !removed.iter().any(|n| n.contains(&dst)) {
                continue;
            }
            if statics.iter().any(|n| n.contains(&dst)) {
                continue;
            }
            if self
                .learned
                .get(dst)?
                .is_some_and(|v| v.expires_ns > now_ns)
            {
                continue;
            }
            self.revoked
                .insert(k.daddr, now_ns, 0)
                .map_err(op(names::REVOKED, "insert"))?;
            cut.push(k);
        }
        self.forget_flows(&cut)
    }

    /// Every flow, TCP and UDP.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let tcp = self
            .flows
            .iter()
            .map(|e| e.map_err(op(names::FLOWS, "iterate")));
        let udp = self
            .flows_udp
            .iter()
            .map(|e| e.map_err(op(names::FLOWS_UDP, "iterate")));
        tcp.chain(udp).collect()
    }

    /// Removes flows from their tables and returns how many were there (a flow already gone,
    /// by LRU eviction or a racing collection, is not counted). If any was, changes the flow
    /// epoch afterwards, so that no CPU passes a removed flow from its cache
    /// (`egress_common::maps::FlowCache`). The new epoch is the `CLOCK_BOOTTIME` time read after
    /// the removal, as the programs write it: a value never written before, so no write, however
    /// late, brings back an epoch an entry carries (see `flow_cache.rs` in `egress-ebpf`). One
    /// store, no read-modify-write to race with the programs or with the agent's other map
    /// handle.
    fn forget_flows(&mut self, keys: &[FlowKey]) -> Result<usize> {
        let removed = keys
            .iter()
            .filter(|k| {
                if k.proto == IPPROTO_TCP {
                    self.flows.remove(k).is_ok()
                } else {
                    self.flows_udp.remove(k).is_ok()
                }
            })
            .count();
        if removed > 0 {
            self.flow_epoch
                .set(0, crate::clock::boot_ns(), 0)
                .map_err(op(names::FLOW_EPOCH, "write"))?;
        }
        Ok(removed)
    }

    /// Forgets the `REVOKED` destinations recorded before `before_ns` (a cut connection idle
    /// that long is gone from the flow tables anyway).
    pub(crate) fn expire_revoked(&mut self, before_ns: u64) -> Result<usize> {
        let old: Vec<[u8; 16]> = self
            .revoked
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, at)| *at < before_ns)
            .map(|(k, _)| k)
            .collect();
        Ok(old
            .iter()
            .filter(|k| self.revoked.remove(k).is_ok())
            .count())
    }

    fn learned_by_map(&self) -> &aya::maps::MapData {
        use aya::maps::IterableMap;
        self.learned_by.map()
    }
}
