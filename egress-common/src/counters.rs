//! Indices of the per-CPU verdict counters (`maps::names::COUNTERS`).
//!
//! One `u64` per index and CPU; the agent sums them. Add new counters at the end and bump
//! [`COUNT`]: the array is pinned, and adopting an older pinned array with fewer slots fails
//! loudly at load time instead of miscounting.

/// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
pub const PASS_NOT_IP: u32 = 0;
/// IP, but not TCP/UDP to an enforced port: passed untouched.
pub const PASS_NOT_ENFORCED: u32 = 1;
/// A non-first IP fragment: carries no ports; passed (see docs/design.md, "Fragments").
pub const PASS_FRAGMENT: u32 = 2;
/// A packet of a known flow (flow table hit).
pub const PASS_FLOW: u32 = 3;
/// Destination in a static CIDR.
pub const PASS_STATIC: u32 = 4;
/// Destination learned from DNS and not expired.
pub const PASS_LEARNED: u32 = 5;
/// Denied and dropped (enforce mode).
pub const DROP_DENIED: u32 = 6;
/// Denied, but passed because the mode is audit.
pub const AUDIT_DENIED: u32 = 7;
/// Headers could not be parsed (truncated, too many IPv6 extension headers, tiny first
/// fragment) and the destination is not allowed: dropped (fail-closed), or passed in audit.
pub const DENY_MALFORMED: u32 = 8;
/// The configuration slot was never written: passed (fail-open, see `mode::UNSET`).
pub const PASS_UNCONFIGURED: u32 = 9;
/// A flow-table insert failed; the packet still gets its verdict.
pub const FLOW_INSERT_FAILED: u32 = 10;
/// A denied-destination event reached the ring buffer.
pub const EVENT_SENT: u32 = 11;
/// A denied-destination event was suppressed by the per-CPU rate limit.
pub const EVENT_RATE_LIMITED: u32 = 12;
/// A denied-destination event was lost because the ring buffer was full.
pub const EVENT_RINGBUF_FULL: u32 = 13;
/// Of the denied packets, TCP packets without SYN to an unknown flow (a subset of
/// `DROP_DENIED`/`AUDIT_DENIED`, kept to diagnose flows cut by expiry or flow-table eviction).
pub const DENY_NOT_SYN: u32 = 14;

/// A DNS query to a trusted resolver was recorded (for matching its answer).
pub const DNS_QUERY_TRACKED: u32 = 15;
/// A DNS answer (UDP or TCP from port 53) came from an address not in the resolver list.
pub const DNS_UNTRUSTED: u32 = 16;
/// A DNS answer from a trusted resolver matched no recent query (id, port, name): ignored.
pub const DNS_UNSOLICITED: u32 = 17;
/// A DNS message that could not be parsed, or an error response: taught nothing.
pub const DNS_MALFORMED: u32 = 18;
/// A matched answer whose question name is not allowed: taught nothing.
pub const DNS_NOT_ALLOWED: u32 = 19;
/// A matched answer for an allowed name: its addresses were learned.
pub const DNS_ANSWER_LEARNED: u32 = 20;
/// Addresses inserted or refreshed by the kernel.
pub const DNS_ADDR_LEARNED: u32 = 21;
/// Address inserts that failed (learned map full): the address stays denied.
pub const DNS_LEARN_FAILED: u32 = 22;
/// DNS copies lost because the agent's ring buffer was full (kernel learning is unaffected).
pub const DNS_EVENT_LOST: u32 = 23;
/// TCP segments from a trusted resolver's port 53 copied to the agent.
pub const DNS_TCP_SEGMENT: u32 = 24;

/// Number of counter slots.
pub const COUNT: u32 = 25;

/// Counter names for status output and metrics, indexed by counter number.
pub const NAMES: [&str; COUNT as usize] = [
    "pass_not_ip",
    "pass_not_enforced",
    "pass_fragment",
    "pass_flow",
    "pass_static",
    "pass_learned",
    "drop_denied",
    "audit_denied",
    "deny_malformed",
    "pass_unconfigured",
    "flow_insert_failed",
    "event_sent",
    "event_rate_limited",
    "event_ringbuf_full",
    "deny_not_syn",
    "dns_query_tracked",
    "dns_untrusted",
    "dns_unsolicited",
    "dns_malformed",
    "dns_not_allowed",
    "dns_answer_learned",
    "dns_addr_learned",
    "dns_learn_failed",
    "dns_event_lost",
    "dns_tcp_segment",
];
