//! Reading frames, counting, and the clock.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns},
    programs::TcContext,
};
use egress_common::packet::Reader;

use crate::maps::COUNTERS;

/// Frames are read directly when the bytes are in the linear part of the skb, and through
/// `bpf_skb_load_bytes` otherwise (non-linear GSO/GRO skbs), never with `bpf_skb_pull_data`:
/// TCP hands TC cloned skbs, and pulling would copy the headers of every packet.
pub(crate) struct Skb<'a>(pub(crate) &'a TcContext);

/// The furthest header offset read. Bounding `off` lets the verifier prove the direct access
/// below; without it: "math between pkt pointer and register with unbounded min value is not
/// allowed".
const MAX_HEADER_OFFSET: usize = 1024;

impl Reader for Skb<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + N <= end {
            // SAFETY: `start + off .. start + off + N` lies inside the linear packet data,
            // checked just above against `data_end` (the verifier checks it too).
            Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
        } else {
            self.0.load::<[u8; N]>(off).ok()
        }
    }
}

#[inline(always)]
pub(crate) fn count(counter: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot from a successful lookup; TC programs do not nest on a CPU
        // (egress runs with bottom halves disabled, ingress in softirq), so nothing races us.
        unsafe { *c += 1 };
    }
}

/// This CPU's value of `counter` (a program run counts on one CPU, so two reads in one run
/// tell how many times the run counted it in between).
#[inline(always)]
pub(crate) fn counted(counter: u32) -> u64 {
    COUNTERS.get(counter).map_or(0, |c| *c)
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: the helper takes no arguments and is available to TC programs since Linux 5.8.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The kernel's tick counter: a coarse clock for the flow cache's window, far cheaper than
/// [`now`] (the verifier turns the helper into one load of `jiffies` on 64-bit JITs).
#[inline(always)]
pub(crate) fn jiffies() -> u64 {
    // SAFETY: the helper takes no arguments and is available to TC programs since Linux 5.5.
    unsafe { bpf_jiffies64() }
}
