//! DNS over TCP, learned in the kernel like UDP.
//!
//! The query side (egress, or the socket's egress hook) opens a stream entry at the node's SYN
//! to a trusted resolver's port 53, keeping its initial sequence number, and remembers the
//! queries the node writes on the connection. The answer side starts the answer stream after
//! the resolver's SYN-ACK that acknowledges that SYN, then follows it in order
//! (`egress_common::dns_tcp`; why not from the node's own ACK is said there): a whole
//! message in a segment (the common case) is matched to its query and learned before the
//! segment reaches the socket, exactly like a UDP answer; an answer that spans segments is
//! matched at its first segment and its parts are copied to the agent, which joins and learns
//! them. Nothing is ever read except at a message boundary of a stream the node opened.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use egress_common::{
    counters,
    dns::BUF,
    dns_tcp::{self, Admit, Step},
    maps::{
        DnsPacket, PendingKey, PendingValue, SockPendingKey, TcpStream, TcpStreamKey, dns_flag,
        dns_kind,
    },
    packet::{IPPROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN},
};

use crate::{
    dns::{
        Judged, consume_pending, dns_parse_answer, dns_parse_query, helper_len, judge,
        learn_message, load_message, query_budget, send_copy, stashed_packet,
    },
    maps::{DNS_PENDING, DNS_SCRATCH, DNS_TCP, SOCK_PENDING},
    skb::{count, now},
};

/// Queries read from one segment the node sends (glibc writes the A and AAAA queries of a
/// lookup in one segment).
const MAX_QUERIES_PER_SEGMENT: usize = 4;
/// Pieces ([`Step`]) of one answer segment walked: the rest of a message in progress and up to
/// 15 messages, or 16 messages. A segment with more loses the stream (counted), it never skips
/// a boundary.
const MAX_STEPS: usize = 16;
/// Copies one part of a long answer may take ([`BUF`] bytes each): 64 KiB, the largest
/// aggregated segment.
const MAX_PART_CHUNKS: u32 = 16;

/// The stream key for the packet in the slot, `cookie` 0 at the interface. `outgoing`: the
/// packet goes from the client to the resolver.
#[inline(always)]
fn stream_key(p: &DnsPacket, cookie: u64, outgoing: bool) -> TcpStreamKey {
    let client_port = if outgoing { p.sport } else { p.dport };
    if cookie != 0 {
        return TcpStreamKey::socket(cookie, client_port);
    }
    if outgoing {
        TcpStreamKey::interface(p.saddr, p.daddr, client_port, p.family)
    } else {
        TcpStreamKey::interface(p.daddr, p.saddr, client_port, p.family)
    }
}

/// The query side of a segment the node sends to a resolver's port 53 (addressing in scratch
/// `slot`; `cookie`: the sending socket's at the sockets, 0 at the interface).
#[inline(always)]
pub(crate) fn outgoing_segment(ctx: &TcContext, slot: u32, cookie: u64) {
    let Some(p) = stashed_packet(slot) else {
        return;
    };
    let key = stream_key(&p, cookie, true);
    let now = now();
    if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A connection opens (or a port is reused): follow it from scratch, from the SYN-ACK
        // that acknowledges this SYN. Opening counts against the client's query budget, so one
        // client cannot flush the table; refused, an older entry of the 4-tuple goes too.
        if query_budget(&p.saddr, now) {
            let _ = DNS_TCP.insert(&key, &TcpStream::opened(now, p.seq), 0);
        } else {
            let _ = DNS_TCP.remove(&key);
        }
        return;
    }
    if DNS_TCP.get_ptr_mut(&key).is_none() {
        return;
    }
    let end = p.payload_end as usize;
    let mut pos = p.payload_off as usize;
    for _ in 0..MAX_QUERIES_PER_SEGMENT {
        // Queries are read where the segment starts (clients write whole queries); a query
        // found elsewhere could only be one this client sent on its own connection, and its
        // answer is still only read at a boundary of the answer stream.
        if pos + 2 > end {
            break;
        }
        let Ok(prefix) = ctx.load::<[u8; 2]>(pos) else {
            break;
        };
        let n = usize::from(u16::from_be_bytes(prefix));
        let start = pos + 2;
        if start + n > end {
            break;
        }
        remember_query(ctx, slot, &p, cookie, start, n, now);
        pos = start + n;
    }
}

#[inline(always)]
fn remember_query(
    ctx: &TcContext,
    slot: u32,
    p: &DnsPacket,
    cookie: u64,
    off: usize,
    len: usize,
    now: u64,
) {
    let Some((parsed, len)) = load_message(ctx, off, len, slot) else {
        return;
    };
    if dns_parse_query(slot, len as u32) != 0 || !query_budget(&p.saddr, now) {
        return;
    }
    let value = PendingValue {
        qname: parsed.full,
        sent_ns: now,
    };
    let stored = if cookie != 0 {
        let key = SockPendingKey::new(cookie, p.sport, parsed.id);
        SOCK_PENDING.insert(&key, &value, 0)
    } else {
        let key = PendingKey::new(p.saddr, p.daddr, p.sport, parsed.id, p.family, IPPROTO_TCP);
        DNS_PENDING.insert(&key, &value, 0)
    };
    if stored.is_ok() {
        count(counters::DNS_QUERY_TRACKED);
    }
}

/// Whether the answer with question `q` in the packet of scratch `slot` answers a query the
/// node sent on this connection (consumed if so).
#[inline(always)]
fn answers_query(p: &DnsPacket, cookie: u64, id: u16, q: &egress_common::maps::DnsParsed) -> bool {
    if cookie != 0 {
        consume_pending(&SOCK_PENDING, &SockPendingKey::new(cookie, p.dport, id), q)
    } else {
        let key = PendingKey::new(p.daddr, p.saddr, p.dport, id, p.family, IPPROTO_TCP);
        consume_pending(&DNS_PENDING, &key, q)
    }
}

/// [`begin`] and [`piece`]: the segment is done with (or not followed).
pub(crate) const STOP: i64 = -1;

/// The answer side of a segment from a trusted resolver's port 53 (addressing in scratch
/// `slot`; `cookie`: the receiving socket's at the sockets, 0 at the interface), first step:
/// whether it continues the stream. The payload offset to walk from, or [`STOP`].
///
/// The walk is driven piece by piece from the program's entry ([`follow`]), each piece in a
/// separately verified function: inlined, the pieces' learning, vouching and copying multiply
/// past the verifier's budget ("BPF program is too large. Processed 1000001 insn"), and one
/// more function level would add a frame to the chain that Linux 6.1 limits to 512 bytes.
#[inline(always)]
pub(crate) fn begin(slot: u32, cookie: u64) -> i64 {
    let Some(p) = stashed_packet(slot) else {
        return STOP;
    };
    let key = stream_key(&p, cookie, false);
    if p.tcp_flags & TCP_RST != 0 {
        return STOP;
    }
    if p.tcp_flags & TCP_SYN != 0 {
        // The resolver's SYN-ACK: the answer stream starts after it if it acknowledges the
        // node's SYN. Data it carries is not read (the next segment then leaves a gap).
        if p.tcp_flags & TCP_ACK != 0
            && let Some(s) = DNS_TCP.get_ptr_mut(&key)
        {
            // SAFETY: a value pointer from a successful lookup, valid for this program run.
            unsafe { (*s).syn_acked(p.seq, p.ack) };
        }
        return STOP;
    }
    let (off, end) = (p.payload_off, p.payload_end);
    if off >= end {
        return STOP; // no payload: a bare ACK, a FIN
    }
    let Some(s) = DNS_TCP.get_ptr_mut(&key) else {
        count(counters::DNS_TCP_UNOPENED);
        return STOP;
    };
    // SAFETY: a value pointer from a successful lookup, valid for this program run (RCU).
    match dns_tcp::admit(unsafe { &*s }, p.seq, end - off) {
        Admit::InOrder(pos) => {
            count(counters::DNS_TCP_SEGMENT);
            i64::from(pos)
        }
        Admit::Old => STOP,
        Admit::Gap => {
            count(counters::DNS_TCP_GAP);
            STOP
        }
        Admit::NotOpen => {
            count(counters::DNS_TCP_UNOPENED);
            STOP
        }
    }
}

/// The next piece of the segment [`begin`] admitted, from payload offset `pos`: learns a whole
/// answer, vouches for one that starts, copies parts of a vouched one. The next offset, or
/// [`STOP`] when the segment is done with.
#[inline(always)]
pub(crate) fn piece(ctx: &TcContext, slot: u32, cookie: u64, pos: u32) -> i64 {
    let Some(p) = stashed_packet(slot) else {
        return STOP;
    };
    let (off, len) = (p.payload_off, p.payload_end.wrapping_sub(p.payload_off));
    let Some(s) = DNS_TCP.get_ptr_mut(&stream_key(&p, cookie, false)) else {
        return STOP;
    };
    // SAFETY: a value pointer from a successful lookup; LRU values stay valid for the program
    // run (RCU). Segments of one connection arrive on one CPU at a time in practice; a racing
    // run on another CPU could at worst make both see one segment, and the second finds its
    // query already consumed.
    let s = unsafe { &mut *s };
    let mut pos = pos;
    let step = dns_tcp::step(s, p.seq, len, &mut pos, BUF as u32, |at| {
        ctx.load::<[u8; 2]>((off + at) as usize)
            .ok()
            .map(u16::from_be_bytes)
    });
    match step {
        Step::Done => {
            dns_tcp::finish(s, p.seq, len);
            return STOP;
        }
        Step::Lost => {
            count(counters::DNS_TCP_LOST);
            return STOP;
        }
        Step::Part { off: at, len: n } => {
            if s.vouched != 0 {
                copy_part(ctx, slot, s, off + at, n, p.seq.wrapping_add(at));
            }
        }
        Step::Whole { off: at, len: n } => {
            learn_message(ctx, slot, (off + at) as usize, n as usize, |q| {
                answers_query(&p, cookie, q.id, q)
            });
        }
        Step::Starts {
            off: at,
            here,
            len: _,
        } => {
            let vouched = vouch(ctx, slot, &p, cookie, off + at, here);
            s.vouched = u8::from(vouched);
            if vouched {
                copy_part(ctx, slot, s, off + at, here, p.seq.wrapping_add(at));
            }
        }
    }
    i64::from(pos)
}

/// The segment had more pieces than [`MAX_STEPS`]: the next boundary is unknown from here on.
#[inline(always)]
pub(crate) fn overflow(slot: u32, cookie: u64) {
    let Some(p) = stashed_packet(slot) else {
        return;
    };
    if let Some(s) = DNS_TCP.get_ptr_mut(&stream_key(&p, cookie, false)) {
        // SAFETY: as in `piece`.
        unsafe { (*s).state = dns_tcp::state::LOST };
        count(counters::DNS_TCP_LOST);
    }
}

/// Follows an answer segment from a program's entry: `begin`, then up to [`MAX_STEPS`]
/// `piece`s, then `overflow` if pieces remain (each a global function of the program).
#[inline(always)]
pub(crate) fn follow(
    begin: impl FnOnce() -> i64,
    piece: impl Fn(u32) -> i64,
    overflow: impl FnOnce(),
) {
    let mut pos = begin();
    // One call more than pieces: the last finds the segment's end.
    for _ in 0..MAX_STEPS + 1 {
        if pos < 0 {
            return;
        }
        pos = piece(pos as u32);
    }
    if pos >= 0 {
        overflow();
    }
}

/// Whether the answer that starts at frame offset `off` with `here` bytes in this segment
/// answers a query of this connection for an allowed name: then its parts go to the agent.
/// Its question must be within these bytes.
#[inline(always)]
fn vouch(ctx: &TcContext, slot: u32, p: &DnsPacket, cookie: u64, off: u32, here: u32) -> bool {
    let n = (here as usize).min(BUF);
    let Some((parsed, n)) = load_message(ctx, off as usize, n, slot) else {
        count(counters::DNS_MALFORMED);
        return false;
    };
    if dns_parse_answer(slot, n as u32, 1) != 0 {
        count(counters::DNS_MALFORMED);
        return false;
    }
    let q = *parsed;
    judge(&q, slot, |q| answers_query(p, cookie, q.id, q)) == Judged::Allowed
}

/// Copies `len` bytes at frame offset `off` (sequence number `seq`) of the message in
/// progress `s` to the agent ([`dns_tcp_copy`]).
#[inline(always)]
fn copy_part(ctx: &TcContext, slot: u32, s: &TcpStream, off: u32, len: u32, seq: u32) {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: the per-CPU slot this program run uses.
    unsafe {
        (*scratch).packet.msg_seq = s.msg_seq;
        (*scratch).packet.msg_len = s.msg_len;
    }
    dns_tcp_copy(ctx.skb.skb, slot, off, len, seq);
}

/// Copies `len` bytes at frame offset `off` (sequence number `seq`) to the agent in parts of
/// at most [`BUF`] bytes ([`dns_tcp_chunk`]).
#[inline(always)]
fn dns_tcp_copy(skb: *mut aya_ebpf::bindings::__sk_buff, slot: u32, off: u32, len: u32, seq: u32) {
    let mut done = 0;
    for _ in 0..MAX_PART_CHUNKS {
        if done >= len {
            return;
        }
        let n = (len - done).min(BUF as u32);
        if dns_tcp_chunk(skb, slot, off + done, n, seq.wrapping_add(done)) != 0 {
            return;
        }
        done += n;
    }
}

/// Copies `n` (1..=[`BUF`]) bytes at frame offset `off` (sequence number `seq`) to the agent,
/// as a part of the message in progress whose start and length are in the slot's packet. A
/// global function: inlined, each of the up to 16 parts of a copy would be verified again
/// (16 parts cost 400,000 of the verifier's 1,000,000 instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn dns_tcp_chunk(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    slot: u32,
    off: u32,
    n: u32,
    seq: u32,
) -> i32 {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return -1;
    };
    if n == 0 || n as usize > BUF {
        return -1;
    }
    // SAFETY: `bytes` has room for BUF >= n bytes; `helper_len` restates n for the verifier.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            skb.cast(),
            off,
            (*scratch).bytes.as_mut_ptr().cast(),
            helper_len(n as usize),
        ) == 0
    };
    if !loaded {
        return -1;
    }
    send_copy(slot, dns_kind::TCP_PART, dns_flag::ALLOWED, n as usize, seq);
    0
}
