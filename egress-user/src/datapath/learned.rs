//! Learned addresses, flows, and the garbage collection of both.

use std::net::IpAddr;

use egress_common::{
    maps::{FlowKey, FlowValue, LearnedValue, names},
    packet::IPPROTO_TCP,
};

use super::{Datapath, Result, family::host, op};

/// A learned address as stored in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    pub addr: IpAddr,
    pub expires_ns: u64,
    /// New flows the entry admitted.
    pub hits: u64,
}

impl Datapath {
    /// Allows `addr` for new flows until `expires_ns` (`CLOCK_BOOTTIME`). An entry that already
    /// lives longer keeps its expiry: a short answer never cuts a longer allowance.
    pub fn learn(&mut self, addr: IpAddr, expires_ns: u64) -> Result<()> {
        let net = host(addr);
        let old = self.learned.get(net)?.unwrap_or_default();
        self.learned.insert(
            net,
            LearnedValue {
                expires_ns: expires_ns.max(old.expires_ns),
                hits: old.hits,
            },
        )
    }

    pub fn learned(&self) -> Result<Vec<Learned>> {
        Ok(self
            .learned
            .entries()?
            .into_iter()
            .map(|(net, v)| Learned {
                addr: net.addr(),
                expires_ns: v.expires_ns,
                hits: v.hits,
            })
            .collect())
    }

    /// Removes learned addresses and CNAME-target names that expired before `now_ns` (the
    /// kernel already ignores them; this frees room) and flows idle for longer than their
    /// timeout. Returns how many addresses and flows went.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Result<(usize, usize)> {
        self.expire_names(now_ns)?;
        let mut learned = 0;
        for l in self.learned()? {
            // A concurrent refresh may have re-inserted it, or it is gone already.
            if l.expires_ns <= now_ns && self.learned.remove(host(l.addr))? {
                learned += 1;
            }
        }
        let cfg = self.config()?;
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
        // A flow already gone (LRU eviction, a racing collection) is not counted.
        let flows = stale
            .iter()
            .filter(|k| self.flows.remove(k).is_ok())
            .count();
        Ok((learned, flows))
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        self.flows
            .iter()
            .map(|e| e.map_err(op(names::FLOWS, "iterate")))
            .collect()
    }
}
