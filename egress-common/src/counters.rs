//! Indices of the per-CPU verdict counters (`maps::names::COUNTERS`).
//!
//! One `u64` per index and CPU; the agent sums them. Add new counters at the end of the table:
//! the array is pinned, and adopting an older pinned array with fewer slots fails loudly at
//! load time instead of miscounting. The table is the one place that gives each counter its
//! index, its name (status output and metrics) and its meaning.

/// Declares each counter's index constant and the [`NAMES`] table from one list, and checks
/// at compile time that the indices are 0, 1, 2, ... in the order written.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident = $index:literal, $label:literal; )*) => {
        $( $(#[$doc])* pub const $name: u32 = $index; )*

        /// Counter names for status output and metrics, indexed by counter number.
        pub const NAMES: [&str; COUNT as usize] = [$($label),*];

        const _: () = {
            let mut expected = 0;
            $(
                assert!($name == expected, "counter indices must be 0, 1, 2, ... in order");
                expected += 1;
            )*
            assert!(expected == COUNT);
        };
    };
}

/// Number of counter slots.
pub const COUNT: u32 = 48;

counters! {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    PASS_NOT_IP = 0, "pass_not_ip";
    /// IP, but not TCP/UDP to an enforced port: passed untouched.
    PASS_NOT_ENFORCED = 1, "pass_not_enforced";
    /// A non-first IP fragment: carries no ports; passed (see docs/design.md, "Fragments").
    PASS_FRAGMENT = 2, "pass_fragment";
    /// A packet of a known flow (flow table hit).
    PASS_FLOW = 3, "pass_flow";
    /// Destination in a static CIDR.
    PASS_STATIC = 4, "pass_static";
    /// Destination learned from DNS and not expired.
    PASS_LEARNED = 5, "pass_learned";
    /// Denied and dropped (enforce mode).
    DROP_DENIED = 6, "drop_denied";
    /// Denied, but passed because the mode is audit.
    AUDIT_DENIED = 7, "audit_denied";
    /// Headers could not be parsed (truncated, too many IPv6 extension headers, tiny first
    /// fragment) and the destination is not allowed: dropped (fail-closed), or passed in audit.
    DENY_MALFORMED = 8, "deny_malformed";
    /// The configuration slot was never written: passed (fail-open, see `mode::UNSET`).
    PASS_UNCONFIGURED = 9, "pass_unconfigured";
    /// A flow-table insert failed; the packet still gets its verdict.
    FLOW_INSERT_FAILED = 10, "flow_insert_failed";
    /// A denied-destination event reached the ring buffer.
    EVENT_SENT = 11, "event_sent";
    /// A denied-destination event was suppressed by the per-CPU rate limit.
    EVENT_RATE_LIMITED = 12, "event_rate_limited";
    /// A denied-destination event was lost because the ring buffer was full.
    EVENT_RINGBUF_FULL = 13, "event_ringbuf_full";
    /// Of the denied packets, TCP packets without SYN to an unknown flow (a subset of
    /// `DROP_DENIED`/`AUDIT_DENIED`, kept to diagnose flows cut by expiry or flow-table eviction).
    DENY_NOT_SYN = 14, "deny_not_syn";

    /// A DNS query to a trusted resolver was recorded (for matching its answer).
    DNS_QUERY_TRACKED = 15, "dns_query_tracked";
    /// A DNS answer (UDP or TCP from port 53) came from an address not in the resolver list.
    DNS_UNTRUSTED = 16, "dns_untrusted";
    /// A DNS answer from a trusted resolver matched no recent query (id, port, name): ignored.
    DNS_UNSOLICITED = 17, "dns_unsolicited";
    /// A DNS message that could not be parsed (error responses have counters of their own):
    /// taught nothing.
    DNS_MALFORMED = 18, "dns_malformed";
    /// A matched answer whose question name is not allowed: taught nothing.
    DNS_NOT_ALLOWED = 19, "dns_not_allowed";
    /// A matched answer for an allowed name: its addresses were learned.
    DNS_ANSWER_LEARNED = 20, "dns_answer_learned";
    /// Addresses inserted or refreshed by the kernel.
    DNS_ADDR_LEARNED = 21, "dns_addr_learned";
    /// Address inserts that failed (learned map full): the address stays denied.
    DNS_LEARN_FAILED = 22, "dns_learn_failed";
    /// DNS copies lost because the agent's ring buffer was full (kernel learning is unaffected).
    DNS_EVENT_LOST = 23, "dns_event_lost";
    /// Answer segments of a DNS-over-TCP connection the node opened to a trusted resolver,
    /// used in stream order (see `egress_common::dns_tcp`).
    DNS_TCP_SEGMENT = 24, "dns_tcp_segment";
    /// A matched answer with rcode NXDOMAIN (the name does not exist): taught nothing.
    DNS_NXDOMAIN = 25, "dns_nxdomain";
    /// A matched answer with rcode SERVFAIL (the resolver could not answer): taught nothing.
    DNS_SERVFAIL = 26, "dns_servfail";
    /// A matched answer with rcode REFUSED: taught nothing.
    DNS_REFUSED = 27, "dns_refused";
    /// A matched answer with another error rcode (FORMERR, NOTIMP, ...): taught nothing.
    DNS_OTHER_ERROR = 28, "dns_other_error";
    /// A matched NOERROR answer without any answer record (NODATA, e.g. AAAA of an IPv4-only
    /// name): nothing to learn.
    DNS_NODATA = 29, "dns_nodata";
    /// A TCP packet of this node's own established connection whose flow the table no longer
    /// held (evicted by other traffic) and whose address is no longer allowed: passed because
    /// the socket completed a handshake whose SYN egress passed to an allowed destination
    /// (`ADMITTED`), and the flow recorded again.
    PASS_SOCKET = 30, "pass_socket";
    /// A DNS query not remembered because its client sent more than its share per second
    /// (answers to it teach nothing).
    DNS_QUERY_RATE_LIMITED = 31, "dns_query_rate_limited";
    /// A TCP segment from a trusted resolver's port 53 on a connection the node did not open
    /// (no SYN seen), whose start it has not acknowledged, or whose stream was lost: taught
    /// nothing.
    DNS_TCP_UNOPENED = 32, "dns_tcp_unopened";
    /// A DNS-over-TCP answer segment after missing bytes (reordered, lost, or forged with a
    /// guessed sequence number): taught nothing; the stream waits for the missing bytes.
    DNS_TCP_GAP = 33, "dns_tcp_gap";
    /// A DNS-over-TCP connection whose message boundaries could no longer be followed (a
    /// length prefix split over two segments, or more messages in one segment than the kernel
    /// walks): nothing more is learned from it.
    DNS_TCP_LOST = 34, "dns_tcp_lost";

    /// A whole ClientHello naming an allowed server: the connection is admitted (`tls.sni`).
    PASS_TLS_SNI = 35, "pass_tls_sni";
    /// A segment of a ClientHello not complete yet (or a resend of bytes that passed): passed,
    /// its bytes held for the judgment.
    PASS_TLS_PREFIX = 36, "pass_tls_prefix";
    /// A segment without payload (SYN, ACK, FIN, RST) of a connection to a learned address on
    /// a TLS port not admitted yet: passed (carries nothing a server acts on).
    PASS_TLS_BARE = 37, "pass_tls_bare";
    /// A ClientHello naming a server the policy does not allow.
    DENY_TLS_SNI = 38, "deny_tls_sni";
    /// A ClientHello without `server_name` (IP-literal clients).
    DENY_TLS_NO_SNI = 39, "deny_tls_no_sni";
    /// The first payload to a TLS port is not one TLS ClientHello (another protocol, SSLv2, a
    /// ClientHello over several records).
    DENY_TLS_NOT_HELLO = 40, "deny_tls_not_hello";
    /// A malformed ClientHello, one over 8 KiB or 64 extensions, a name no DNS name equals, or
    /// a segment that cannot be judged as stream bytes (URG, IP fragment).
    DENY_TLS_MALFORMED = 41, "deny_tls_malformed";
    /// Payload of a connection to a learned address on a TLS port that egress has no state for
    /// (no SYN seen, state evicted, connection older than enforcement), not from a socket
    /// egress admitted; or a SYN or payload from a raw (`SOCK_RAW`) or packet (`AF_PACKET`)
    /// socket of this host.
    DENY_TLS_UNKNOWN = 42, "deny_tls_unknown";
    /// Later payload of a connection whose ClientHello was denied.
    DENY_TLS_DENIED_FLOW = 43, "deny_tls_denied_flow";
    /// A segment of a ClientHello after missing bytes: dropped until the bytes before it have
    /// passed (the client sends it again).
    TLS_GAP = 44, "tls_gap";
    /// UDP to a learned address on a TLS port under `tls.quic: deny`.
    DENY_QUIC = 45, "deny_quic";
    /// The held bytes of a split ClientHello were evicted before its last segment: denied.
    TLS_PARTIAL_LOST = 46, "tls_partial_lost";
    /// An admitted ClientHello carried Encrypted Client Hello: its outer name was judged.
    TLS_ECH = 47, "tls_ech";
}
