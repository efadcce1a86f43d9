//! Map names, sizes, and the key/value layouts of every map the datapath and the agent share.
//!
//! The eBPF statics in `egress-ebpf` carry exactly the names in [`names`] (the kernel keeps 15
//! characters plus NUL); the agent reaches maps only through these constants, and an integration
//! test checks that every name exists in the loaded object.

use core::mem::size_of;

/// Names of the maps, which are also their pin file names under the pin directory.
pub mod names {
    /// `Array<Config>`, one slot: mode and timeouts.
    pub const CONFIG: &str = "CONFIG";
    /// `Array<u32>`: bitmap of enforced destination ports.
    pub const PORTS: &str = "PORTS";
    /// `LpmTrie<[u8; 4], StaticValue>`: static IPv4 CIDRs from the policy.
    pub const STATIC_V4: &str = "STATIC_V4";
    /// `LpmTrie<[u8; 16], StaticValue>`: static IPv6 CIDRs from the policy.
    pub const STATIC_V6: &str = "STATIC_V6";
    /// `LpmTrie<[u8; 4], LearnedValue>`: IPv4 addresses learned from DNS, with expiry.
    pub const LEARNED_V4: &str = "LEARNED_V4";
    /// `LpmTrie<[u8; 16], LearnedValue>`: IPv6 addresses learned from DNS, with expiry.
    pub const LEARNED_V6: &str = "LEARNED_V6";
    /// `LruHashMap<FlowKey, FlowValue>`: allowed flows.
    pub const FLOWS: &str = "FLOWS";
    /// `PerCpuArray<u64>`: verdict counters, see [`crate::counters`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<RateState>`: per-CPU rate limit of denied-destination events.
    pub const EVENT_RATE: &str = "EVENT_RATE";
    /// `RingBuf` of [`super::DenyEvent`].
    pub const EVENTS: &str = "EVENTS";

    /// Every map, for pinning, status and cleanup.
    pub const ALL: [&str; 10] = [
        CONFIG, PORTS, STATIC_V4, STATIC_V6, LEARNED_V4, LEARNED_V6, FLOWS, COUNTERS, EVENT_RATE,
        EVENTS,
    ];
}

/// Capacity of each static CIDR map (per family).
pub const STATIC_CAPACITY: u32 = 16_384;
/// Capacity of each learned-address map (per family).
pub const LEARNED_CAPACITY: u32 = 262_144;
/// Capacity of the flow table (LRU: the least recently used flow is evicted when full).
pub const FLOW_CAPACITY: u32 = 131_072;
/// Size of the denied-destination ring buffer in bytes (a power of two, multiple of the page).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Words in the enforced-port bitmap (65,536 ports / 32 bits).
pub const PORT_WORDS: u32 = 65_536 / 32;

/// Index of the word and the bit of `port` in the [`names::PORTS`] bitmap.
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u32) {
    ((port as u32) >> 5, 1 << (port as u32 & 31))
}

/// Mode and timeouts, written by the agent into the single slot of [`names::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`crate::mode`].
    pub mode: u32,
    /// Denied-destination events each CPU may emit per second; the rest are counted only.
    pub events_per_sec: u32,
    /// A TCP flow idle for longer is forgotten (its next packet is evaluated as new).
    pub tcp_idle_ns: u64,
    /// A UDP flow idle for longer is forgotten.
    pub udp_idle_ns: u64,
}

/// Value of the static CIDR maps. The index of the CIDR in the normalized policy, for status.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaticValue {
    pub rule: u32,
}

/// Value of the learned-address maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedValue {
    /// `CLOCK_BOOTTIME` in ns after which the address admits no new flow. The kernel checks it on
    /// every lookup, so expiry holds even while the agent is down.
    pub expires_ns: u64,
}

/// Address family tags used in keys and events.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// A 5-tuple of the flow table. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one
/// layout serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `CLOCK_BOOTTIME` ns of the last packet (refreshed at most once per
    /// [`FLOW_TOUCH_INTERVAL_NS`] to keep the known-flow path read-mostly).
    pub last_seen_ns: u64,
}

/// How stale `FlowValue::last_seen_ns` may get before a packet refreshes it.
pub const FLOW_TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Per-CPU state of the event rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub window_start_ns: u64,
    pub sent: u64,
}

/// What the datapath did with a denied packet, in [`DenyEvent::action`].
pub mod action {
    pub const DROPPED: u8 = 1;
    pub const AUDITED: u8 = 2;
}

/// Why a packet was denied, in [`DenyEvent::reason`].
pub mod reason {
    /// Destination not in any allow map (or its learned entry expired).
    pub const NOT_ALLOWED: u8 = 1;
    /// Headers could not be parsed and the destination is not allowed.
    pub const MALFORMED: u8 = 2;
}

/// A denied destination, sent to the agent through [`names::EVENTS`] (rate-limited).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// `CLOCK_BOOTTIME` ns.
    pub ts_ns: u64,
    /// Destination, IPv4-mapped for IPv4.
    pub daddr: [u8; 16],
    /// Destination port, big-endian (0 when unknown).
    pub dport: [u8; 2],
    pub family: u8,
    pub proto: u8,
    /// One of [`action`].
    pub action: u8,
    /// One of [`reason`].
    pub reason: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    pub const fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }
    pub const fn sport(&self) -> u16 {
        u16::from_be_bytes(self.sport)
    }
}

impl DenyEvent {
    pub const fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped address.
#[inline(always)]
pub const fn v4_of_mapped(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

// No implicit padding: sizes equal the sum of the fields.
const _: () = assert!(size_of::<Config>() == 24);
const _: () = assert!(size_of::<StaticValue>() == 4);
const _: () = assert!(size_of::<LearnedValue>() == 8);
const _: () = assert!(size_of::<FlowKey>() == 16 + 16 + 2 + 2 + 1 + 1 + 2);
const _: () = assert!(size_of::<FlowValue>() == 8);
const _: () = assert!(size_of::<RateState>() == 16);
const _: () = assert!(size_of::<DenyEvent>() == 8 + 16 + 2 + 1 + 1 + 1 + 1 + 2);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has
    // no padding (asserted above), so every bit pattern is valid and no byte is uninitialized.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StaticValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LearnedValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in names::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }

    #[test]
    fn port_bits_cover_every_port_once() {
        let mut seen = std::collections::HashSet::new();
        for port in 0..=u16::MAX {
            let (word, bit) = port_bit(port);
            assert!(word < PORT_WORDS);
            assert_eq!(bit.count_ones(), 1);
            assert!(seen.insert((word, bit)));
        }
    }

    #[test]
    fn v4_mapping_round_trips() {
        let a = [192, 0, 2, 7];
        let m = v4_mapped(a);
        assert_eq!(std::net::Ipv6Addr::from(m).to_ipv4_mapped(), Some(a.into()));
        assert_eq!(v4_of_mapped(&m), a);
    }
}
