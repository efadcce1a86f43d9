//! Learning at the sockets (`cgroup_skb` programs on the node's cgroup).
//!
//! The interface programs see only what crosses the NIC. On Kubernetes most pods ask the
//! cluster DNS Service, answered by CoreDNS on another node through an overlay, or on this node
//! over a bridge: the answer never crosses this NIC as DNS. A `cgroup_skb` program on a cgroup
//! runs for every socket of every process below it, in every network namespace, on the packet
//! as its socket gets it: after decapsulation, after reassembly and after conntrack reversed
//! kube-proxy's DNAT (the pod sees the Service address as the source). The ingress hook runs in
//! `sk_filter_trim_cap`, before the datagram is queued to the socket, so the addresses are in
//! the map before the application can read the answer: the race guarantee of the interface
//! path holds for pods.
//!
//! Queries are keyed by the socket that sent them (its cookie), not by the resolver address:
//! a host socket's query is already DNATed to a CoreDNS pod when the egress hook sees it, while
//! its answer comes back from the Service address. Trust is the answer's source as the socket
//! sees it, which must be a listed resolver. Answers that arrive over loopback teach nothing: a
//! local process that can send from a resolver's address to itself could otherwise forge them.
//! See `docs/kubernetes.md`.
//!
//! Socket programs get the same `struct __sk_buff` as TC programs, with the packet starting at
//! the network header; `TcContext` is used as aya-ebpf's wrapper of it because it exposes
//! `data`/`data_end` for direct reads (`SkBuffContext` keeps them private).

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_get_socket_cookie, programs::TcContext};
use egress_common::{
    counters,
    maps::{PendingValue, SCRATCH_SOCK_ANSWER, SCRATCH_SOCK_QUERY, SockPendingKey, learn},
    mode,
    packet::{DNS_PORT, Frame, Kind, parse_ip},
};

use crate::{
    dns::{
        TCP_ANSWER, UDP_ANSWER, consume_pending, dns_parse_query, learn_udp, load_payload,
        query_budget, stash_dns, stashed_packet,
    },
    maps::SOCK_PENDING,
    policy,
    skb::{Skb, count, now},
};

/// The `cgroup_skb` verdict that lets a packet through (0 would drop it).
pub(crate) const SK_PASS: i32 = 1;

/// Every network namespace's loopback device has this index (`LOOPBACK_IFINDEX`,
/// include/net/flow.h).
const LOOPBACK_IFINDEX: u32 = 1;

/// Whether learning at the sockets is on (and the agent has configured the maps).
#[inline(always)]
fn enabled() -> bool {
    matches!(policy::config(), Some(cfg) if cfg.mode != mode::UNSET && cfg.learn == learn::SOCKETS)
}

/// The socket that sent or receives `skb` (the hook sets `skb->sk`).
#[inline(always)]
fn cookie(skb: *mut __sk_buff) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(skb.cast()) }
}

/// [`track_query`]: a UDP query, its addressing in the scratch slot.
pub(crate) const UDP_QUERY: i32 = UDP_ANSWER;
/// [`track_query`]: a TCP segment to port 53, its addressing in the scratch slot.
pub(crate) const TCP_QUERY: i32 = TCP_ANSWER;

/// Query side, step 1: finds a UDP query ([`UDP_QUERY`]) or TCP segment ([`TCP_QUERY`]) to
/// port 53 and leaves its addressing in the scratch slot. A global function, and called one after the other with step 2 from
/// the entry, never one from the other: Linux 6.1 counts the frames of a call chain together
/// ("combined stack size of 4 calls is 576. Too large").
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn track_query(skb: *mut __sk_buff) -> i32 {
    if !enabled() {
        return 0;
    }
    let ctx = TcContext::new(skb);
    let Ok(Frame::Ip(p)) = parse_ip(&Skb(&ctx)) else {
        return 0;
    };
    let t = p.transport;
    if t.kind != Kind::Ports || t.dport != DNS_PORT {
        return 0;
    }
    stash_dns(&ctx, SCRATCH_SOCK_QUERY, &p)
}

/// Query side, step 2 for TCP: opens, starts or reads queries of the socket's DNS-over-TCP
/// connection (see `dns_tcp.rs`).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tcp_query(skb: *mut __sk_buff) -> i32 {
    let sock = cookie(skb);
    if sock != 0 {
        crate::dns_tcp::outgoing_segment(&TcContext::new(skb), SCRATCH_SOCK_QUERY, sock);
    }
    0
}

/// Answer side for TCP (see `dns_tcp.rs`): whether the segment continues the socket's
/// DNS-over-TCP answer stream.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tcp_answer_begin(skb: *mut __sk_buff) -> i64 {
    match cookie(skb) {
        0 => crate::dns_tcp::STOP,
        sock => crate::dns_tcp::begin(SCRATCH_SOCK_ANSWER, sock),
    }
}

/// The segment's next piece.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tcp_answer_piece(skb: *mut __sk_buff, pos: u32) -> i64 {
    match cookie(skb) {
        0 => crate::dns_tcp::STOP,
        sock => crate::dns_tcp::piece(&TcContext::new(skb), SCRATCH_SOCK_ANSWER, sock, pos),
    }
}

/// The segment had more pieces than walked.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tcp_answer_overflow(skb: *mut __sk_buff) -> i32 {
    let sock = cookie(skb);
    if sock != 0 {
        crate::dns_tcp::overflow(SCRATCH_SOCK_ANSWER, sock);
    }
    0
}

/// Query side, step 2: parses the query [`track_query`] found and remembers it under
/// (socket, client port, id).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn remember_query(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(p) = stashed_packet(SCRATCH_SOCK_QUERY) else {
        return 0;
    };
    let Some((parsed, len)) = load_payload(&ctx, p.payload_off as usize, SCRATCH_SOCK_QUERY) else {
        return 0;
    };
    if dns_parse_query(SCRATCH_SOCK_QUERY, len as u32) != 0 {
        return 0;
    }
    let now = now();
    if !query_budget(&p.saddr, now) {
        return 0;
    }
    let key = SockPendingKey::new(cookie(skb), p.sport, parsed.id);
    let value = PendingValue {
        qname: parsed.full,
        sent_ns: now,
    };
    if SOCK_PENDING.insert(&key, &value, 0).is_ok() {
        count(counters::DNS_QUERY_TRACKED);
    }
    0
}

/// Answer side, step 1: a UDP answer ([`UDP_ANSWER`]) or TCP segment ([`TCP_ANSWER`]) from a
/// trusted resolver, not over loopback, its addressing left in the scratch slot.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn classify_answer(skb: *mut __sk_buff) -> i32 {
    let Some(cfg) = policy::config() else {
        return 0;
    };
    if cfg.mode == mode::UNSET || cfg.learn != learn::SOCKETS {
        return 0;
    }
    let ctx = TcContext::new(skb);
    let Ok(Frame::Ip(p)) = parse_ip(&Skb(&ctx)) else {
        return 0;
    };
    let t = p.transport;
    if t.kind != Kind::Ports || t.sport != DNS_PORT {
        return 0;
    }
    let trusted = policy::resolver(cfg, &p.saddr);
    // SAFETY: `skb` is the program's context; `ingress_ifindex` is a plain field.
    let loopback = unsafe { (*skb).ingress_ifindex } == LOOPBACK_IFINDEX;
    if !trusted || loopback {
        count(counters::DNS_UNTRUSTED);
        return 0;
    }
    stash_dns(&ctx, SCRATCH_SOCK_ANSWER, &p)
}

/// Answer side, step 2: matches the answer to the query its socket sent, then learns as at the
/// interface.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn learn_answer(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(pkt) = stashed_packet(SCRATCH_SOCK_ANSWER) else {
        return 0;
    };
    let sock = cookie(skb);
    learn_udp(&ctx, &pkt, SCRATCH_SOCK_ANSWER, |q| {
        consume_pending(
            &SOCK_PENDING,
            &SockPendingKey::new(sock, pkt.dport, q.id),
            q,
        )
    });
    0
}
