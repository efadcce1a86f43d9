//! The per-CPU cache of the last known flow (see `egress_common::maps::FlowCache`).
//!
//! Only the known-flow path uses it, and only for packets that are not a SYN: an entry is written
//! after a flow-table hit that passed, and read before the next lookup. It never admits anything
//! the flow table did not admit within the last [`FLOW_CACHE_JIFFIES`] and the same
//! [`FLOW_EPOCH`] (whoever removes a flow changes the epoch after the removal).
//!
//! On weakly ordered CPUs (arm64) the epoch load and the flow-table walk are plain loads the CPU
//! may reorder, so a lookup racing a removal may stamp the new epoch and the flow may pass for
//! the window: the bound there is [`FLOW_CACHE_JIFFIES`], not the epoch (BPF has load-acquire
//! only since Linux 6.15). x86 does not reorder loads with loads.

use egress_common::maps::{FLOW_CACHE_JIFFIES, FlowCache, FlowKey};

use crate::{
    maps::{FLOW_CACHE, FLOW_EPOCH},
    skb::now,
};

/// The flow epoch now. Read before the flow-table lookup whose result [`remember`] stamps.
#[inline(always)]
pub(crate) fn epoch() -> u64 {
    FLOW_EPOCH.get(0).map_or(0, |e| *e)
}

/// This CPU's cache slot: looked up once per packet, for [`hit`] and then [`remember`].
#[inline(always)]
pub(crate) fn slot() -> Option<*mut FlowCache> {
    FLOW_CACHE.get_ptr_mut(0)
}

/// Whether `key` is the flow this CPU's cache `slot` holds, found in the flow table less than
/// [`FLOW_CACHE_JIFFIES`] before `tick` and in epoch `epoch`.
#[inline(always)]
pub(crate) fn hit(slot: *mut FlowCache, key: &FlowKey, tick: u64, epoch: u64) -> bool {
    let w = key.words();
    // SAFETY: this CPU's slot, from a successful lookup ([`slot`]); only this program writes
    // it, and TC programs do not nest on a CPU.
    let c = unsafe { &*slot };
    // One branch for the five words: the comparison is the whole cost of a hit.
    let differ = (c.key[0] ^ w[0])
        | (c.key[1] ^ w[1])
        | (c.key[2] ^ w[2])
        | (c.key[3] ^ w[3])
        | (c.key[4] ^ w[4])
        | (c.epoch ^ epoch);
    // An empty slot (`tick == 0`: jiffies start far above it) and a slot from the future
    // (jiffies do not go back) both wrap to a huge age.
    differ == 0 && tick.wrapping_sub(c.tick) < FLOW_CACHE_JIFFIES
}

/// Remembers `key` in `slot` as found in the flow table at `tick`, by a lookup that started in
/// `epoch`.
#[inline(always)]
pub(crate) fn remember(slot: *mut FlowCache, key: &FlowKey, tick: u64, epoch: u64) {
    // SAFETY: as in `hit`. Only this CPU uses the slot and TC programs do not nest on a CPU,
    // so nothing reads it half-written.
    unsafe {
        (*slot).key = key.words();
        (*slot).epoch = epoch;
        (*slot).tick = tick;
    }
}

/// Changes the epoch after a flow was removed, so that no CPU passes it from its cache. The new
/// epoch is the `CLOCK_BOOTTIME` time, read after the removal, as the agent does: a value no
/// earlier writer wrote (the clock is monotonic across CPUs, and every entry stamped with an
/// epoch was stamped after that epoch was written, hence after the clock read of its writer),
/// so no write, however late or out of order, can bring back an epoch an entry carries. A plain
/// store: there is no read-modify-write to race.
#[inline(always)]
pub(crate) fn removed() {
    if let Some(e) = FLOW_EPOCH.get_ptr_mut(0) {
        // SAFETY: the array's only slot, from a successful lookup; an aligned 8-byte store.
        unsafe { *e = now() };
    }
}
