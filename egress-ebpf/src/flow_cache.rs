//! The per-CPU cache of the last known flow (see `egress_common::maps::FlowCache`).
//!
//! Only the known-flow path uses it, and only for packets that are not a SYN: an entry is written
//! after a flow-table hit that passed, and read before the next lookup. It never admits anything
//! the flow table did not admit within the last [`FLOW_CACHE_JIFFIES`] and the same
//! [`FLOW_EPOCH`] (whoever removes a flow changes the epoch after the removal).

use egress_common::maps::{FLOW_CACHE_JIFFIES, FlowKey};

use crate::maps::{FLOW_CACHE, FLOW_EPOCH};

/// The flow epoch now. Read before the flow-table lookup whose result [`remember`] stamps.
#[inline(always)]
pub(crate) fn epoch() -> u64 {
    FLOW_EPOCH.get(0).map_or(0, |e| *e)
}

/// Whether `key` is the flow this CPU's cache holds, found in the flow table less than
/// [`FLOW_CACHE_JIFFIES`] before `tick` and in epoch `epoch`.
#[inline(always)]
pub(crate) fn hit(key: &FlowKey, tick: u64, epoch: u64) -> bool {
    let Some(c) = FLOW_CACHE.get_ptr(0) else {
        return false;
    };
    let w = key.words();
    // SAFETY: this CPU's slot, from a successful lookup; only this program writes it, and TC
    // programs do not nest on a CPU.
    let c = unsafe { &*c };
    // One branch for the five words: the comparison is the whole cost of a hit.
    let differ = (c.key[0] ^ w[0])
        | (c.key[1] ^ w[1])
        | (c.key[2] ^ w[2])
        | (c.key[3] ^ w[3])
        | (c.key[4] ^ w[4])
        | (c.epoch ^ epoch);
    // `tick == 0` is an empty slot; a slot from the future (jiffies do not go back) is not used.
    differ == 0 && c.tick != 0 && tick >= c.tick && tick - c.tick < FLOW_CACHE_JIFFIES
}

/// Remembers `key` as found in the flow table at `tick`, by a lookup that started in `epoch`.
#[inline(always)]
pub(crate) fn remember(key: &FlowKey, tick: u64, epoch: u64) {
    let Some(c) = FLOW_CACHE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `hit`. The slot is emptied before the key changes and stamped after, so
    // even a reader in the middle (none can run on this CPU meanwhile) never pairs a fresh
    // stamp with a half-written key.
    unsafe {
        (*c).tick = 0;
        (*c).key = key.words();
        (*c).epoch = epoch;
        (*c).tick = tick;
    }
}

/// Changes the epoch after a flow was removed, so that no CPU passes it from its cache. A plain
/// increment (`core` offers no atomic read-modify-write on the BPF target): two removals at the
/// same instant may both write the same value, which still differs from every epoch stamped
/// before either removal, and that is all the cache needs.
#[inline(always)]
pub(crate) fn removed() {
    if let Some(e) = FLOW_EPOCH.get_ptr_mut(0) {
        // SAFETY: the array's only slot, from a successful lookup; an aligned 8-byte store.
        unsafe { *e = (*e).wrapping_add(1) };
    }
}
