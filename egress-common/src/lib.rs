//! Types and constants shared by the egress eBPF programs and the `egress` agent.
//!
//! Everything both sides must agree on lives here once: map names, key and value layouts,
//! counter indices and limits. Map types are `#[repr(C)]`, have no implicit padding (checked at
//! compile time), and hold addresses and ports as big-endian byte arrays behind typed accessors,
//! so the kernel side never byte-swaps on the hot path.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod dns;
pub mod dns_tcp;
pub mod hash;
pub mod maps;
pub mod packet;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

/// A DNS name with more labels than this is not matched by the kernel (nothing is learned for
/// it), so a policy name may have at most this many. Real names rarely pass 10; each label costs
/// the verifier a pass over the hashing code. Shared by the DNS walker and the name hash.
pub const MAX_LABELS: usize = 16;

/// The most destination ports a policy may enforce.
pub const MAX_PORTS: usize = 16;

/// Policy mode as stored in [`maps::Config::mode`].
pub mod mode {
    /// The agent has not written a configuration yet: every packet passes (fail-open, because
    /// the program is only attached after the configuration is written; this state exists only
    /// between map creation and the first policy write).
    pub const UNSET: u32 = 0;
    /// Packets to enforced ports whose destination is not allowed are dropped.
    pub const ENFORCE: u32 = 1;
    /// Nothing is dropped; would-be drops are counted and reported.
    pub const AUDIT: u32 = 2;
}

/// TC actions, as the kernel defines them in `include/uapi/linux/pkt_cls.h`.
pub mod tc_action {
    /// `TC_ACT_UNSPEC`: let the next program in the chain (TCX or the next clsact filter)
    /// decide; with no further program the packet continues. This is how egress "passes" so it
    /// never short-circuits programs attached after it.
    pub const PASS: i32 = -1;
    /// `TC_ACT_SHOT`: drop the packet.
    pub const DROP: i32 = 2;
}
