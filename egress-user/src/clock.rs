//! `CLOCK_BOOTTIME`, the clock of `bpf_ktime_get_boot_ns`: expiry times in the maps use it, so
//! they keep counting across suspend exactly as the kernel side does.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds of `CLOCK_BOOTTIME` now.
pub fn boot_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is always available");
    Duration::from(ts).as_nanos() as u64
}
