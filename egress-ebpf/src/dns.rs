//! DNS learning. Egress remembers each query to a trusted resolver; ingress matches the answer
//! to it (resolver, client port, transaction id, question name), walks the answer and inserts
//! the addresses of an allowed name into the learned maps before returning, so the addresses are
//! allowed before the application can read the answer. A copy goes to the agent for CNAME
//! targets, status and whatever the kernel leaves to it (DNS over TCP, more answers than it
//! walks).

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_skb_load_bytes,
    maps::LruHashMap,
    programs::TcContext,
};
use egress_common::{
    counters,
    dns::{self, Address, BUF, Question, rcode},
    maps::{
        DNS_EVENTS_BYTES, DNS_QUERIES_PER_CLIENT_PER_SEC, DNS_QUERY_TIMEOUT_NS, DnsBuf,
        DnsEventHeader, DnsPacket, DnsParsed, NS_PER_S, PendingKey, PendingValue, RateState, Rule,
        SCRATCH_EGRESS, SCRATCH_INGRESS, dns_flag, dns_kind, learn, v4_mapped, v4_of_mapped,
    },
    mode,
    packet::{
        DNS_PORT, Frame, IPPROTO_TCP, IPPROTO_UDP, IpPacket, Kind, TCP_ACK_OFF, TCP_DOFF_OFF,
        TCP_SEQ_OFF, TCP_SYN, parse_frame,
    },
};

use crate::{
    maps::{DNS_CLIENTS, DNS_EVENTS, DNS_PENDING, DNS_SCRATCH, LEARNED_BY, LEARNED_V4, LEARNED_V6},
    policy,
    skb::{Skb, count, counted, now},
};

const UDP_HLEN: usize = 8;

/// `len` (1..=BUF, checked by every caller) restated for the verifier as `((len - 1) & (BUF -
/// 1)) + 1`, a form it tracks as 1..=4096 through the helper call; a plain `len` fails with
/// "R4 invalid zero-sized read" or "R4 unbounded memory access".
#[inline(always)]
pub(crate) fn helper_len(len: usize) -> u32 {
    ((len as u32).wrapping_sub(1) & (BUF as u32 - 1)) + 1
}
const DNS_HLEN: usize = 12;

/// [`ingress_classify`]: a UDP answer from a trusted resolver, its addressing in the scratch.
pub(crate) const UDP_ANSWER: i32 = 1;
/// [`ingress_classify`]: a TCP segment from a trusted resolver's port 53, its addressing in
/// the scratch.
pub(crate) const TCP_ANSWER: i32 = 2;

/// Finds DNS answers from trusted resolvers: leaves the addressing in the ingress scratch slot
/// and returns [`UDP_ANSWER`] or [`TCP_ANSWER`]. A global function (see below).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn ingress_classify(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(cfg) = policy::config() else {
        return 0;
    };
    // With learning at the sockets, the socket programs see every answer this one would.
    if cfg.mode == mode::UNSET || cfg.learn != learn::INTERFACE {
        return 0;
    }
    let Ok(Frame::Ip(p)) = parse_frame(&Skb(&ctx)) else {
        return 0;
    };
    let t = p.transport;
    if t.kind != Kind::Ports || t.sport != DNS_PORT {
        return 0;
    }
    if !policy::resolver(cfg, &p.saddr) {
        count(counters::DNS_UNTRUSTED);
        return 0;
    }
    stash_dns(&ctx, SCRATCH_INGRESS, &p)
}

// The parsers below are global functions: the verifier checks each once, on its own, and its
// callers see only its result. Inlined, every way the header parser can finish (VLAN tags,
// IPv6 extension headers, direct or helper reads: over a hundred) would re-verify the whole
// question parser after it, past the 1M-instruction budget. Global functions may take only
// scalars (and the context), so they read the message from the scratch slot and leave what
// they found in `DnsBuf::parsed`.

/// Parses the query in scratch `slot` (`len` bytes): 0 and `parsed.{id, full}` on success.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn dns_parse_query(slot: u32, len: u32) -> i32 {
    let Some(cfg) = policy::config() else {
        return -1;
    };
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return -1;
    };
    // SAFETY: a per-CPU slot the caller filled during this same program run.
    let s = unsafe { &mut *scratch };
    match dns::query(
        &s.bytes,
        len as usize,
        cfg.hash_k0,
        cfg.hash_k1,
        &mut s.labels,
    ) {
        Ok((id, full)) => {
            s.parsed.id = id;
            s.parsed.full = full;
            0
        }
        Err(_) => -1,
    }
}

/// Parses the response in scratch `slot` (`len` bytes): 0 and `parsed` filled on success,
/// including whether a proper suffix of the name is an allowed wildcard. With `head` 1, the
/// `len` bytes are only the start of the message (see [`dns::question_head`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn dns_parse_answer(slot: u32, len: u32, head: u32) -> i32 {
    let Some(cfg) = policy::config() else {
        return -1;
    };
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return -1;
    };
    // SAFETY: a per-CPU slot the caller filled during this same program run.
    let s = unsafe { &mut *scratch };
    let wild = |h: u64| policy::wild_name(cfg, h);
    match dns::question_head(
        &s.bytes,
        len as usize,
        cfg.hash_k0,
        cfg.hash_k1,
        &mut s.labels,
        wild,
    ) {
        Ok(q) if head == 1 || dns::counts_fit(&q, len as usize) => {
            s.parsed = DnsParsed::new(&q);
            0
        }
        _ => -1,
    }
}

/// Leaves the addressing of a UDP DNS packet in scratch `slot`, for the separately verified
/// function that handles it next.
#[inline(always)]
pub(crate) fn stash_packet(slot: u32, p: &IpPacket) -> Option<&'static mut DnsPacket> {
    let scratch = DNS_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU map slot from a successful lookup, used only by this program run.
    let pkt = unsafe { &mut (*scratch).packet };
    pkt.saddr = p.saddr;
    pkt.daddr = p.daddr;
    pkt.payload_off = (p.l4_off + UDP_HLEN) as u32;
    pkt.seq = 0;
    pkt.ack = 0;
    pkt.msg_seq = 0;
    pkt.msg_len = 0;
    pkt.sport = p.transport.sport;
    pkt.dport = p.transport.dport;
    pkt.family = p.family;
    pkt.tcp_flags = 0;
    pkt.payload_end = 0;
    pkt._pad = [0; 4];
    Some(pkt)
}

/// [`stash_packet`] for a TCP segment: also its sequence and acknowledgment numbers and flags,
/// and the offset of its payload.
#[inline(always)]
pub(crate) fn stash_segment(ctx: &TcContext, slot: u32, p: &IpPacket) -> bool {
    let (Ok(doff), Ok(seq), Ok(ack)) = (
        ctx.load::<u8>(p.l4_off + TCP_DOFF_OFF),
        ctx.load::<[u8; 4]>(p.l4_off + TCP_SEQ_OFF),
        ctx.load::<[u8; 4]>(p.l4_off + TCP_ACK_OFF),
    ) else {
        return false;
    };
    let frame = ctx.len() as usize;
    // A header shorter than 20 bytes, or an IP packet longer than the frame: the TCP stack
    // drops it, so it is not followed either.
    if doff >> 4 < 5 || p.end > frame {
        return false;
    }
    let payload_off = p.l4_off + usize::from(doff >> 4) * 4;
    let payload_end = if p.end == 0 { frame } else { p.end };
    // A segment without payload matters only with SYN (opening) or, arriving, SYN-ACK; bare
    // ACKs are not stashed (at the sockets they may be sent from a softirq that interrupts
    // this program on the same CPU, and would overwrite the slot it is using).
    if payload_off >= payload_end && p.transport.tcp_flags & TCP_SYN == 0 {
        return false;
    }
    let Some(pkt) = stash_packet(slot, p) else {
        return false;
    };
    pkt.payload_off = payload_off as u32;
    pkt.payload_end = payload_end as u32;
    pkt.seq = u32::from_be_bytes(seq);
    pkt.ack = u32::from_be_bytes(ack);
    pkt.tcp_flags = p.transport.tcp_flags;
    true
}

/// Stashes a UDP or TCP DNS packet in `slot`: [`UDP_ANSWER`] (or [`UDP_QUERY`], the same
/// value), [`TCP_ANSWER`] (or [`TCP_QUERY`]), or 0 for anything else.
#[inline(always)]
pub(crate) fn stash_dns(ctx: &TcContext, slot: u32, p: &IpPacket) -> i32 {
    match p.transport.proto {
        IPPROTO_UDP if stash_packet(slot, p).is_some() => UDP_ANSWER,
        IPPROTO_TCP if stash_segment(ctx, slot, p) => TCP_ANSWER,
        _ => 0,
    }
}

/// The addressing a step-1 function left in scratch `slot` ([`stash_packet`]).
#[inline(always)]
pub(crate) fn stashed_packet(slot: u32) -> Option<DnsPacket> {
    let scratch = DNS_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU slot the step-1 function filled during this same program run.
    Some(unsafe { (*scratch).packet })
}

/// Copies the UDP payload at `off` (the rest of the packet) into the scratch slot `slot`;
/// `None` if the payload does not fit or cannot be read.
#[inline(always)]
pub(crate) fn load_payload(
    ctx: &TcContext,
    off: usize,
    slot: u32,
) -> Option<(&'static DnsParsed, usize)> {
    let total = ctx.len() as usize;
    if off >= total {
        return None;
    }
    load_message(ctx, off, total - off, slot)
}

/// Copies the `len`-byte DNS message at frame offset `off` into the scratch slot `slot`; `None`
/// if it does not fit or cannot be read.
#[inline(always)]
pub(crate) fn load_message(
    ctx: &TcContext,
    off: usize,
    len: usize,
    slot: u32,
) -> Option<(&'static DnsParsed, usize)> {
    // Larger messages are not walked (and not copied): EDNS answers are at most 4096 bytes,
    // and resolvers keep UDP answers under ~1232 bytes to avoid fragmentation.
    if !(DNS_HLEN..=BUF).contains(&len) {
        return None;
    }
    let scratch = DNS_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU map slot from a successful lookup, used only by this program on this
    // CPU for the duration of this run.
    let (buf, parsed) = unsafe { (&mut (*scratch).bytes, &(*scratch).parsed) };
    let n = helper_len(len);
    // SAFETY: `buf` has room for BUF > n bytes.
    let ret =
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), off as u32, buf.as_mut_ptr().cast(), n) };
    if ret != 0 {
        return None;
    }
    Some((parsed, len))
}

/// [`egress_track`]: a UDP query to a trusted resolver, its addressing in the scratch slot.
pub(crate) const UDP_QUERY: i32 = UDP_ANSWER;
/// [`egress_track`]: a TCP segment to a trusted resolver's port 53, its addressing in the
/// scratch slot.
pub(crate) const TCP_QUERY: i32 = TCP_ANSWER;

/// Egress, step 1: finds a UDP query to a trusted resolver and leaves its addressing in the
/// egress scratch slot (a global function, see above; split from step 2 so that no call chain
/// holds the header parser's frame and the DNS parser's frame at once: Linux 6.1 counts
/// "combined stack size of 3 calls is 544. Too large").
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn egress_track(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(cfg) = policy::config() else {
        return 0;
    };
    let Ok(Frame::Ip(p)) = parse_frame(&Skb(&ctx)) else {
        return 0;
    };
    if !policy::resolver(cfg, &p.daddr) {
        return 0;
    }
    stash_dns(&ctx, SCRATCH_EGRESS, &p)
}

/// Egress, step 2: parses the query [`egress_track`] found and remembers it.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn egress_remember_query(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(p) = stashed_packet(SCRATCH_EGRESS) else {
        return 0;
    };
    let Some((parsed, len)) = load_payload(&ctx, p.payload_off as usize, SCRATCH_EGRESS) else {
        return 0;
    };
    if dns_parse_query(SCRATCH_EGRESS, len as u32) != 0 {
        return 0;
    }
    let now = now();
    if !query_budget(&p.saddr, now) {
        return 0;
    }
    let key = PendingKey::new(p.saddr, p.daddr, p.sport, parsed.id, p.family, IPPROTO_UDP);
    let value = PendingValue {
        qname: parsed.full,
        sent_ns: now,
    };
    if DNS_PENDING.insert(&key, &value, 0).is_ok() {
        count(counters::DNS_QUERY_TRACKED);
    }
    0
}

/// Whether `client` may have one more query remembered this second (at most
/// `Config::client_query_rate`, by default [`DNS_QUERIES_PER_CLIENT_PER_SEC`]): the pending maps are LRU, and without a bound one
/// client's flood would evict every other client's pending queries, whose answers would then
/// teach nothing. A plain read-modify-write shared by all CPUs: concurrent queries of one
/// client can both be counted as one (the bound is approximate, never lower).
#[inline(always)]
pub(crate) fn query_budget(client: &[u8; 16], now: u64) -> bool {
    let Some(state) = DNS_CLIENTS.get_ptr_mut(client) else {
        let fresh = RateState {
            window_start_ns: now,
            sent: 1,
        };
        // A full LRU evicts the least recent client: the bound holds for active clients.
        let _ = DNS_CLIENTS.insert(client, &fresh, 0);
        return true;
    };
    // SAFETY: a value pointer from a successful lookup, valid for this program run; a racing
    // update only affects the count.
    let state = unsafe { &mut *state };
    if now.saturating_sub(state.window_start_ns) >= NS_PER_S {
        state.window_start_ns = now;
        state.sent = 0;
    }
    let limit = policy::config().map_or(DNS_QUERIES_PER_CLIENT_PER_SEC, |c| c.client_query_rate);
    if state.sent >= u64::from(limit) {
        count(counters::DNS_QUERY_RATE_LIMITED);
        return false;
    }
    state.sent += 1;
    true
}

/// Matches, walks and learns the UDP answer whose addressing [`ingress_classify`] left in the
/// scratch slot (a global function, see below).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn ingress_udp_answer(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(pkt) = stashed_packet(SCRATCH_INGRESS) else {
        return 0;
    };
    // Anti-spoofing: only an answer to a query this node sent recently, from the resolver it
    // asked, to the port it asked from, with its id and its question, is used; and only once.
    learn_udp(&ctx, &pkt, SCRATCH_INGRESS, |q| {
        consume_pending(
            &DNS_PENDING,
            &PendingKey::new(
                pkt.daddr,
                pkt.saddr,
                pkt.dport,
                q.id,
                pkt.family,
                IPPROTO_UDP,
            ),
            q,
        )
    });
    0
}

/// DNS over TCP at the interface, answer side (see `dns_tcp.rs`): whether the segment whose
/// addressing [`ingress_classify`] left continues its stream (global functions, as above).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn ingress_tcp_begin() -> i64 {
    crate::dns_tcp::begin(SCRATCH_INGRESS, 0)
}

/// The segment's next piece.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn ingress_tcp_piece(skb: *mut __sk_buff, pos: u32) -> i64 {
    crate::dns_tcp::piece(&TcContext::new(skb), SCRATCH_INGRESS, 0, pos)
}

/// The segment had more pieces than walked.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn ingress_tcp_overflow() -> i32 {
    crate::dns_tcp::overflow(SCRATCH_INGRESS, 0);
    0
}

/// Egress, step 2 for TCP: opens, starts or reads queries of the node's DNS-over-TCP
/// connection whose segment [`egress_track`] found.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn egress_tcp_query(skb: *mut __sk_buff) -> i32 {
    crate::dns_tcp::outgoing_segment(&TcContext::new(skb), SCRATCH_EGRESS, 0);
    0
}

/// Whether `map` holds a query under `key` for `q`'s question, sent less than
/// [`DNS_QUERY_TIMEOUT_NS`] ago; a matched entry is removed, so an answer is used once.
#[inline(always)]
pub(crate) fn consume_pending<K>(
    map: &LruHashMap<K, PendingValue>,
    key: &K,
    q: &DnsParsed,
) -> bool {
    // SAFETY: a read-only lookup of a plain value.
    let matched = match unsafe { map.get(key) } {
        Some(v) => v.qname == q.full && now().saturating_sub(v.sent_ns) < DNS_QUERY_TIMEOUT_NS,
        None => false,
    };
    if matched {
        let _ = map.remove(key);
    }
    matched
}

/// Learns from the UDP answer whose addressing is in scratch `slot`, if `matched` finds the
/// query it answers (and consumes it).
#[inline(always)]
pub(crate) fn learn_udp(
    ctx: &TcContext,
    p: &DnsPacket,
    slot: u32,
    matched: impl FnOnce(&DnsParsed) -> bool,
) {
    let off = p.payload_off as usize;
    let total = ctx.len() as usize;
    if off >= total {
        count(counters::DNS_MALFORMED);
        return;
    }
    learn_message(ctx, slot, off, total - off, matched);
}

/// Learns from the `len`-byte answer at frame offset `off` (a UDP payload, or a whole message
/// in a TCP segment) of the packet whose addressing is in scratch `slot`, if `matched` finds
/// the query it answers (and consumes it); copies it to the agent.
#[inline(always)]
pub(crate) fn learn_message(
    ctx: &TcContext,
    slot: u32,
    off: usize,
    len: usize,
    matched: impl FnOnce(&DnsParsed) -> bool,
) {
    let Some((parsed, len)) = load_message(ctx, off, len, slot) else {
        count(counters::DNS_MALFORMED);
        return;
    };
    if dns_parse_answer(slot, len as u32, 0) != 0 {
        count(counters::DNS_MALFORMED);
        return;
    }
    let q = *parsed;
    let mut flags = 0;
    match judge(&q, slot, matched) {
        Judged::Ignore => return,
        Judged::NotAllowed => {}
        Judged::Allowed => {
            flags |= dns_flag::ALLOWED;
            let walked = ingress_learn_answers(slot, len as u32, q.end, u32::from(q.ancount));
            if walked < 0 {
                count(counters::DNS_MALFORMED);
                return;
            }
            flags |= dns_flag::KERNEL_LEARNED;
            if walked & WALK_INCOMPLETE != 0 {
                flags |= dns_flag::INCOMPLETE;
            }
            if walked & WALK_NO_ADDRESS != 0 {
                flags |= dns_flag::NO_ADDRESS;
            }
        }
    }
    send_copy(slot, dns_kind::MESSAGE, flags, len, 0);
}

/// What [`judge`] makes of a parsed answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Not an answer to a query of this node, or one without addresses: no copy either.
    Ignore,
    /// A matched answer whose name is not allowed: recorded by the agent, nothing learned.
    NotAllowed,
    /// A matched answer whose name is allowed; the rules that allow it are in the slot.
    Allowed,
}

/// Matches a parsed answer to its query and says what it teaches, counting why not.
#[inline(always)]
pub(crate) fn judge(q: &DnsParsed, slot: u32, matched: impl FnOnce(&DnsParsed) -> bool) -> Judged {
    if !matched(q) {
        count(counters::DNS_UNSOLICITED);
        return Judged::Ignore;
    }
    // Well-formed answers without addresses are counted by what they say, not as malformed:
    // an NXDOMAIN is a typo or a probe, a SERVFAIL a resolver in trouble.
    if q.rcode != rcode::NOERROR {
        count(match q.rcode {
            rcode::NXDOMAIN => counters::DNS_NXDOMAIN,
            rcode::SERVFAIL => counters::DNS_SERVFAIL,
            rcode::REFUSED => counters::DNS_REFUSED,
            _ => counters::DNS_OTHER_ERROR,
        });
        return Judged::Ignore;
    }
    if q.ancount == 0 {
        count(counters::DNS_NODATA);
        return Judged::Ignore;
    }
    if allowing_rules(q, slot) {
        Judged::Allowed
    } else {
        count(counters::DNS_NOT_ALLOWED);
        Judged::NotAllowed
    }
}

/// Skips the owner name at `off` of the message in scratch `slot`: the offset after it, or
/// negative. A global function: its many exits (each label, pointer, error) would otherwise
/// multiply with every record the walk goes on to.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn dns_skip_name(slot: u32, len: u32, off: u32) -> i64 {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return -1;
    };
    // SAFETY: the per-CPU slot `learn` filled during this same program run.
    let buf = unsafe { &(*scratch).bytes };
    match dns::skip_name(buf, (len as usize).min(BUF), off as usize) {
        Ok(next) => next as i64,
        Err(_) => -1,
    }
}

/// Set in [`ingress_learn_answers`]' result when the answer has more records than it walks.
const WALK_INCOMPLETE: i64 = 1;
/// Set in [`ingress_learn_answers`]' result when the walk learned no address.
const WALK_NO_ADDRESS: i64 = 2;

/// Walks the answer section of the message in scratch `slot` and learns its addresses;
/// negative if the section is malformed (nothing learned). A global function so the verifier
/// checks the walk once, not once per way the question parser can exit.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn ingress_learn_answers(slot: u32, len: u32, end: u32, ancount: u32) -> i64 {
    let Some(cfg) = policy::config() else {
        return -1;
    };
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return -1;
    };
    // SAFETY: the per-CPU slot `learn` filled during this same program run; the walk reads the
    // message, the sink writes only the address field.
    let (buf, addr_slot) = unsafe { (&(*scratch).bytes, &mut (*scratch).by_key.addr) };
    let q = Question {
        id: 0,
        full: 0,
        suffix_matched: false,
        suffix: 0,
        rcode: rcode::NOERROR,
        ancount: ancount as u16,
        end: end as usize,
    };
    let now = now();
    let learned_before = counted(counters::DNS_ADDR_LEARNED);
    let len = (len as usize).min(BUF);
    let skip = |off: usize| {
        let r = dns_skip_name(slot, len as u32, off as u32);
        if r < 0 { None } else { Some(r as usize) }
    };
    match dns::answers(buf, len, &q, skip, |addr, ttl| {
        // Counted in the map, not in locals: see `dns::Walk`.
        let v4 = match addr {
            Address::V4(a) => {
                *addr_slot = v4_mapped(a);
                1
            }
            Address::V6(a) => {
                *addr_slot = a;
                0
            }
        };
        count(
            if dns_learn_address(slot, v4, now, now + cfg.lifetime_ns(ttl)) == 0 {
                counters::DNS_ADDR_LEARNED
            } else {
                counters::DNS_LEARN_FAILED
            },
        );
    }) {
        Ok(walk) => {
            count(counters::DNS_ANSWER_LEARNED);
            let none = counted(counters::DNS_ADDR_LEARNED) == learned_before;
            (if walk.incomplete { WALK_INCOMPLETE } else { 0 })
                | (if none { WALK_NO_ADDRESS } else { 0 })
        }
        Err(_) => -1,
    }
}

/// Whether the question name is allowed, leaving the rules that allow it in the scratch slot
/// for the walk: its hash as an unexpired exact name (a policy name, or a CNAME target standing
/// for the rule of its chain's question), and the wildcard suffix found while hashing. Both are
/// kept when both match, so removing one of them from the policy leaves the other's addresses.
#[inline(always)]
fn allowing_rules(q: &DnsParsed, slot: u32) -> bool {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: the per-CPU slot this program run uses.
    let rules = unsafe { &mut (*scratch).rules };
    rules[0] = Rule::NONE;
    rules[1] = Rule::NONE;
    rules[0] = policy::exact_rule(q.full, policy::active(), now());
    if q.suffix_matched != 0 {
        rules[1] = Rule::wild(q.suffix);
    }
    rules[0].is_some() || rules[1].is_some()
}

/// Allows the address in scratch `slot` (IPv4 if `v4` is 1) until `expires_ns` for the rules in
/// the slot: first each rule's justification (`LEARNED_BY`), then the address, whose expiry
/// only grows and whose refresh stamp is set to `now` on every write. 0 if all of it was
/// written; an address whose justification cannot be recorded is not learned (fail-closed: a
/// reload could not tell whether to keep it). A global function: inlined into the walk, its
/// map calls would be verified once per record and type ("BPF program is too large.
/// Processed 1000001 insn").
///
/// Every write is a map update, never a store into a looked-up value: the agent removes
/// entries with an atomic lookup-and-delete and puts back any whose stamp changed since it
/// decided, which only works if a refresh and a removal are ordered by the map's lock.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn dns_learn_address(slot: u32, v4: u32, now: u64, expires_ns: u64) -> i32 {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return -1;
    };
    // SAFETY: the per-CPU slot the walk filled during this same program run; nothing else
    // uses it meanwhile.
    let s = unsafe { &mut *scratch };
    if !justify(s, 0, expires_ns) || !justify(s, 1, expires_ns) {
        return -1;
    }
    let old_v4;
    let old = if v4 == 1 {
        old_v4 = v4_of_mapped(&s.by_key.addr);
        // SAFETY: a read-only lookup of a plain value.
        unsafe { LEARNED_V4.get(&old_v4) }
    } else {
        old_v4 = [0; 4];
        // SAFETY: as above.
        unsafe { LEARNED_V6.get(&s.by_key.addr) }
    };
    let (old_expires, hits) = old.map_or((0, 0), |o| (o.expires_ns, o.hits));
    s.learned.expires_ns = expires_ns.max(old_expires);
    s.learned.hits = hits;
    s.learned.refreshed_ns = now;
    let written = if v4 == 1 {
        LEARNED_V4.insert(&old_v4, &s.learned, 0)
    } else {
        LEARNED_V6.insert(&s.by_key.addr, &s.learned, 0)
    };
    if written.is_ok() { 0 } else { -1 }
}

/// Records that rule `i` of the slot's rules allows the slot's address until `expires_ns` (a
/// later expiry already there is kept). The key is built in the slot (see `DnsBuf::by_key`).
#[inline(always)]
fn justify(s: &mut DnsBuf, i: usize, expires_ns: u64) -> bool {
    let rule = s.rules[i & 1];
    if !rule.is_some() {
        return true;
    }
    s.by_key.rule = rule;
    // SAFETY: a read-only lookup of a plain value.
    match unsafe { LEARNED_BY.get(&s.by_key) } {
        Some(&old) if old >= expires_ns => true,
        _ => LEARNED_BY.insert(&s.by_key, &expires_ns, 0).is_ok(),
    }
}

/// Sends the agent a copy of the `len` message bytes already in scratch `slot`, behind a header
/// written just before them in the slot, as one record of exactly that size: a 100-byte answer
/// takes about 160 bytes of the ring, not a fixed 4 KiB, so a burst of answers the agent only
/// records cannot crowd out the copies it needs (dangling CNAME targets, long answers). The
/// addressing (and, for a part of a TCP answer, the answer's start and length) comes from the
/// slot's packet; `tcp_seq` is the sequence number of a part's first byte.
#[inline(always)]
pub(crate) fn send_copy(slot: u32, kind: u8, flags: u8, len: usize, tcp_seq: u32) {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(slot) else {
        return;
    };
    let n = helper_len(len);
    // SAFETY: a per-CPU slot this program run uses; the header field precedes the message
    // bytes in the slot (`DnsBuf` is `repr(C)`, header first), so header and message are one
    // contiguous region of `size_of::<DnsEventHeader>() + n` bytes inside the map value.
    let record = unsafe {
        let p = &(*scratch).packet;
        let h = &mut (*scratch).header;
        h.ts_ns = now();
        h.resolver = p.saddr;
        h.client = p.daddr;
        // A part carries its answer's start and length; a whole message none (the slot may
        // still hold those of a part copied earlier in the same segment).
        let part = kind == dns_kind::TCP_PART;
        h.tcp_seq = tcp_seq;
        h.msg_seq = if part { p.msg_seq } else { 0 };
        h.len = n as u16;
        h.msg_len = if part { p.msg_len } else { 0 };
        h.client_port = p.dport;
        h.kind = kind;
        h.flags = flags;
        h.family = p.family;
        h._pad = [0; 7];
        core::slice::from_raw_parts(
            core::ptr::from_ref(h).cast::<u8>(),
            size_of::<DnsEventHeader>() + n as usize,
        )
    };
    if DNS_EVENTS
        .output::<[u8]>(record, ring_flags(dns_flag::urgent(kind, flags)))
        .is_err()
    {
        count(counters::DNS_EVENT_LOST);
    }
}

/// Past this much unread data in `DNS_EVENTS`, every copy wakes the agent, urgent or not, so
/// that the ring drains long before it could fill (a quarter: 1 MiB, some 6,000 copies).
const WAKE_ABOVE_BYTES: u64 = DNS_EVENTS_BYTES as u64 / 4;

/// How a copy commits to the ring. An urgent copy forces the wake-up: the default would wake
/// the agent only if it had read everything before, and a non-urgent copy may wait unread. A
/// non-urgent one wakes nobody (`BPF_RB_NO_WAKEUP`: no irq_work, no scheduler wake-up inside
/// the answer's path to the application); the agent reads it at its next timed read (see
/// `egress-user/src/events.rs`, `DNS_READ_PERIOD`) or with the next urgent copy.
#[inline(always)]
fn ring_flags(urgent: bool) -> u64 {
    if urgent || DNS_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > WAKE_ABOVE_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}
