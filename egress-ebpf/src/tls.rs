//! The TLS server-name judgment (`tls.sni`, docs/design.md *TLS server names*).
//!
//! [`crate::egress_verdict`] sends here, through [`stash`], every packet to a **learned**
//! address on a TLS port that no flow admits yet: TCP segments of connections whose ClientHello
//! is not judged yet, and UDP (QUIC). A connection enters `FLOWS` only once the complete
//! ClientHello at the start of its stream names an allowed server; until then:
//! - segments without payload pass (a SYN opens the connection's `TLS_PENDING` entry);
//! - a segment that continues the ClientHello exactly passes while the bytes so far are a
//!   proper prefix of one (a TLS server cannot act on less than a whole ClientHello), its
//!   bytes held in `TLS_PARTIAL`; the segment that completes it is judged on the held bytes and
//!   its own, and denied it is dropped with every later payload of the connection;
//! - a segment after missing bytes is dropped; a resend of bytes that passed passes.
//!
//! Every path ends in an explicit verdict: fail-closed wherever the bytes the server would
//! read cannot be judged.

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes, programs::TcContext};
use egress_common::{
    counters, dns,
    maps::{Config, FlowKey, FlowValue, TlsFlow, TlsScratch, action, quic_mode, reason, tls_state},
    packet::{IPPROTO_TCP, IPPROTO_UDP, IpPacket, TCP_ACK, TCP_DOFF_OFF, TCP_SEQ_OFF, TCP_SYN},
    tls::{self, Segment, TlsError, hello_flag},
};

use crate::{
    maps::{FLOWS, FLOWS_UDP, TLS_PARTIAL, TLS_PENDING, TLS_SCRATCH},
    policy,
    skb::{count, now},
};

/// [`egress_tls`]'s verdicts.
pub(crate) const TLS_PASS: i32 = 0;
pub(crate) const TLS_DROP: i32 = 1;

/// TCP's URG flag: urgent data leaves the receiver's byte stream, so a segment carrying it
/// cannot be judged as stream bytes.
const TCP_URG: u8 = 0x20;

/// Leaves what [`egress_tls`] needs of the packet in the scratch; `false` if its TCP header
/// cannot be read (the caller then denies it: fail-closed).
#[inline(always)]
pub(crate) fn stash(ctx: &TcContext, key: &FlowKey, p: &IpPacket, tcp_flags: u8) -> bool {
    let Some(s) = TLS_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU slot, used only by this program run (TC programs do not nest on a
    // CPU).
    let seg = unsafe { &mut (*s).seg };
    seg.key = *key;
    seg.tcp_flags = tcp_flags;
    seg.seq = 0;
    seg.payload_off = 0;
    seg.payload_len = 0;
    seg.unjudgeable = u8::from(p.more_fragments);
    if key.proto != IPPROTO_TCP {
        return true;
    }
    let (Ok(doff), Ok(seq)) = (
        ctx.load::<u8>(p.l4_off + TCP_DOFF_OFF),
        ctx.load::<[u8; 4]>(p.l4_off + TCP_SEQ_OFF),
    ) else {
        return false;
    };
    let frame = ctx.len() as usize;
    // A header shorter than 20 bytes, or an IP packet longer than the frame: no stack takes
    // it as stream bytes, and it is not judged.
    if doff >> 4 < 5 || p.end > frame {
        return false;
    }
    let off = p.l4_off + usize::from(doff >> 4) * 4;
    let end = if p.end == 0 { frame } else { p.end };
    seg.seq = u32::from_be_bytes(seq);
    seg.payload_off = off as u32;
    seg.payload_len = end.saturating_sub(off) as u32;
    seg.unjudgeable |= u8::from(tcp_flags & TCP_URG != 0);
    true
}

/// Judges the packet [`stash`] left: [`TLS_PASS`] or [`TLS_DROP`]. A global function, verified
/// once on its own frame (the verdict's frame and this one count separately toward the
/// 512-byte stack limit).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn egress_tls(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    // Fail-closed: cannot happen (the arrays have their slots), and without the configuration
    // or the scratch nothing can be judged.
    let (Some(cfg), Some(s)) = (policy::config(), TLS_SCRATCH.get_ptr_mut(0)) else {
        return TLS_DROP;
    };
    // SAFETY: as in `stash`.
    let s = unsafe { &mut *s };
    let key = s.seg.key;
    let now = now();
    if key.proto == IPPROTO_UDP {
        if cfg.quic() == quic_mode::DENY {
            return refuse(cfg, s, reason::QUIC, counters::DENY_QUIC, now);
        }
        // `tls.quic: address`: judged by the address alone, as without `tls` (the datagram
        // passes even if the flow cannot be recorded, as in `enforce`).
        crate::record_flow(&FLOWS_UDP, &key, &FlowValue::by_address(now));
        count(counters::PASS_LEARNED);
        return TLS_PASS;
    }
    let flags = s.seg.tcp_flags;
    let syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if s.seg.unjudgeable != 0 {
        // Fail-closed: an IP first fragment's payload is not the whole segment (the rest follows
        // in fragments that carry no ports), and urgent data leaves the receiver's stream; even
        // a "bare" first fragment may be the header of a segment whose bytes come after.
        return unjudgeable(cfg, s, &key, now);
    }
    if !syn && s.seg.payload_len == 0 {
        // ACK, FIN, RST: they carry no byte a server acts on (fail-open by design: dropping
        // them would only stall the handshake egress needs to see the ClientHello, or keep a
        // server's side of a refused connection open; the kernel sends its own resets and
        // time-wait ACKs from a raw control socket, so this comes before the check below).
        count(counters::PASS_TLS_BARE);
        return TLS_PASS;
    }
    if raw_socket(&ctx) {
        // A raw or packet socket of this host: it could drive the state with SYNs and payload
        // its own TCP stack never sends (fail-closed).
        return refuse(cfg, s, reason::TLS_UNKNOWN, counters::DENY_TLS_UNKNOWN, now);
    }
    let mut seq = s.seg.seq;
    if syn {
        if open(&key, seq, now) {
            // A socket reused for a new connection (`connect(AF_UNSPEC)` keeps its cookie) is
            // admitted again only by this connection's ClientHello.
            crate::forget_socket(&ctx);
        }
        count(counters::PASS_LEARNED);
        if s.seg.payload_len == 0 {
            return TLS_PASS;
        }
        // TCP Fast Open: the SYN's data is the stream's first bytes (sequence number ISN + 1).
        seq = seq.wrapping_add(1);
    }
    // SAFETY: a read-only lookup; the value is copied at once. LRU entries are reused without a
    // grace period, so this judgment works on its copy and writes back only to an entry that
    // still has the connection's ISN ([`save`]).
    let Some(mut f) = (unsafe { TLS_PENDING.get(&key) }).copied() else {
        // Payload on a connection egress never saw open (state evicted, connection older than
        // enforcement, crafted): only a socket of this node admitted earlier goes on (fail-open
        // for that socket, as in `enforce`: its SYN or ClientHello was judged); anything else
        // is refused (fail-closed).
        if crate::socket_admitted(&ctx, cfg, &key.daddr) {
            let _ = FLOWS.insert(&key, &FlowValue::by_address(now), 0);
            count(counters::PASS_SOCKET);
            return TLS_PASS;
        }
        return refuse(cfg, s, reason::TLS_UNKNOWN, counters::DENY_TLS_UNKNOWN, now);
    };
    let f = &mut f;
    match f.state {
        tls_state::DENIED if crate::tls_audit(cfg) => {
            // Denied before a reload to audit: audit drops nothing.
            count(counters::AUDIT_DENIED);
            return TLS_PASS;
        }
        tls_state::DENIED => {
            // Fail-closed: nothing more of a denied connection passes.
            count(counters::DENY_TLS_DENIED_FLOW);
            count(counters::DROP_DENIED);
            return TLS_DROP;
        }
        tls_state::ADMITTED => {
            // Admitted by its server name, but its flow is gone (evicted, or removed by a
            // retransmitted SYN of a TCP Fast Open connection): recorded again, passed.
            crate::record_flow(&FLOWS, &key, &FlowValue::by_rule(now, f.rule));
            count(counters::PASS_TLS_SNI);
            return TLS_PASS;
        }
        _ => {}
    }
    let skip = match tls::admit(f.base, f.next, seq, s.seg.payload_len) {
        Segment::Gap => {
            count(counters::TLS_GAP);
            if crate::tls_audit(cfg) {
                // Audit lets through what it cannot judge rather than stall it: the flow, not
                // the socket (nothing judged it).
                let _ = TLS_PARTIAL.remove(&key);
                f.state = tls_state::ADMITTED;
                save(&key, f);
                let _ = FLOWS.insert(&key, &FlowValue::by_address(now), 0);
                return TLS_PASS;
            }
            // Fail-closed until the missing bytes have passed: the client sends this again.
            return TLS_DROP;
        }
        Segment::Resent => {
            // Only bytes that passed already, resent (fail-open on their content: see
            // threat-model.md 3.14, rewritten resends).
            count(counters::PASS_TLS_PREFIX);
            return TLS_PASS;
        }
        Segment::New { skip } => skip,
    };
    let held = f.next.wrapping_sub(f.base) as usize;
    if held > 0 && !restore(&key, s, held) {
        count(counters::TLS_PARTIAL_LOST);
        return malformed(cfg, s, f, now);
    }
    let fresh = (s.seg.payload_len - skip) as usize;
    let n = fresh.min(tls::BUF - held);
    if n == 0 || !load(&ctx, s, s.seg.payload_off + skip, held, n) {
        return malformed(cfg, s, f, now);
    }
    let total = held + n;
    match tls_parse(total as u32) {
        PARSE_OK => {}
        // A proper prefix, and all of the segment's new bytes are held: it passes.
        PARSE_INCOMPLETE if n == fresh => {
            s.held.len = total as u32;
            if TLS_PARTIAL.insert(&key, &s.held, 0).is_err() {
                count(counters::TLS_PARTIAL_LOST);
                return malformed(cfg, s, f, now);
            }
            f.next = f.base.wrapping_add(total as u32);
            f.state = tls_state::PARTIAL;
            save(&key, f);
            count(counters::PASS_TLS_PREFIX);
            return TLS_PASS;
        }
        PARSE_NOT_HELLO => {
            return deny(
                cfg,
                s,
                f,
                reason::TLS_NOT_HELLO,
                counters::DENY_TLS_NOT_HELLO,
                now,
            );
        }
        PARSE_NO_SNI => {
            return deny(
                cfg,
                s,
                f,
                reason::TLS_NO_SNI,
                counters::DENY_TLS_NO_SNI,
                now,
            );
        }
        _ => {
            return malformed(cfg, s, f, now);
        }
    }
    match tls_name() {
        NAME_ALLOWED => {
            if s.hello.flags & hello_flag::ECH != 0 {
                count(counters::TLS_ECH);
            }
            if held > 0 {
                let _ = TLS_PARTIAL.remove(&key);
            }
            f.rule = s.admitted_by;
            admit(&ctx, &key, f, now);
            count(counters::PASS_TLS_SNI);
            TLS_PASS
        }
        NAME_DENIED => deny(cfg, s, f, reason::TLS_SNI, counters::DENY_TLS_SNI, now),
        _ => malformed(cfg, s, f, now),
    }
}

/// A SYN: a connection (re)opens; whether it is a new one. A new initial sequence number, or a
/// denied connection's tuple, starts afresh: the tuple's admitted flow is removed so a reused
/// tuple cannot ride it past the judgment. A retransmitted SYN (same ISN) keeps the state, an
/// admitted one included (TCP Fast Open resends its SYN, without the data, when the SYN-ACK is
/// late).
#[inline(always)]
fn open(key: &FlowKey, isn: u32, now: u64) -> bool {
    // SAFETY: a read-only lookup of a plain value.
    if let Some(f) = unsafe { TLS_PENDING.get(key) }
        && f.isn == isn
        && f.state != tls_state::DENIED
    {
        return false;
    }
    let base = isn.wrapping_add(1);
    let flow = TlsFlow {
        opened_ns: now,
        isn,
        base,
        next: base,
        state: tls_state::AWAIT,
        ..TlsFlow::default()
    };
    // A failed insert leaves no state: the connection's payload is then refused
    // (`deny_tls_unknown`), fail-closed.
    let _ = TLS_PENDING.insert(key, &flow, 0);
    // The tuple's old flow goes, and with it any CPU's cached copy: the new connection's
    // payload must reach the judgment, not pass as the old connection's. The epoch changes
    // even if the table no longer held the flow: LRU eviction removes flows without changing
    // it, and a CPU may still cache the evicted one.
    crate::forget(&FLOWS, key);
    crate::flow_cache::removed();
    crate::forget(&TLS_PARTIAL, key);
    true
}

/// Writes the judgment's copy `f` back to the connection's entry, if the entry is still this
/// connection's (same ISN): between the lookup and now, the tuple may have reopened, or the
/// LRU may have handed the slot to another connection.
#[inline(always)]
fn save(key: &FlowKey, f: &TlsFlow) {
    if let Some(p) = TLS_PENDING.get_ptr_mut(key) {
        // SAFETY: a value pointer from the lookup just above; only plain fields are written.
        unsafe {
            if (*p).isn == f.isn {
                (*p).next = f.next;
                (*p).state = f.state;
                (*p).reason = f.reason;
                (*p).rule = f.rule;
            }
        }
    }
}

/// The connection is admitted: its flow is recorded (with the rule that admitted it) and its
/// socket (local traffic) too, so it survives the loss of its flow as other admitted
/// connections do; its entry stays, marked admitted, for a retransmitted SYN and a lost flow.
#[inline(always)]
fn admit(ctx: &TcContext, key: &FlowKey, f: &mut TlsFlow, now: u64) {
    // The packet passes even if the flow cannot be recorded (its name is allowed): the entry
    // below admits the rest.
    crate::record_flow(&FLOWS, key, &FlowValue::by_rule(now, f.rule));
    f.state = tls_state::ADMITTED;
    save(key, f);
    crate::admit_socket(ctx, now);
}

/// Denies the connection's ClientHello: the connection is marked so nothing more of it passes,
/// counted and reported. In audit, reported and admitted instead.
#[inline(always)]
fn deny(cfg: &Config, s: &mut TlsScratch, f: &mut TlsFlow, why: u8, counter: u32, now: u64) -> i32 {
    let key = s.seg.key;
    let _ = TLS_PARTIAL.remove(&key);
    if why != reason::TLS_SNI {
        s.event.name_len = 0;
    }
    count(counter);
    if crate::tls_audit(cfg) {
        report(cfg, s, why, action::AUDITED, now);
        count(counters::AUDIT_DENIED);
        f.state = tls_state::ADMITTED;
        f.rule = 0;
        save(&key, f);
        let _ = FLOWS.insert(&key, &FlowValue::by_address(now), 0);
        return TLS_PASS;
    }
    // Fail-closed from here on: the entry's DENIED drops the connection's later payload.
    f.state = tls_state::DENIED;
    f.reason = why;
    save(&key, f);
    report(cfg, s, why, action::DROPPED, now);
    count(counters::DROP_DENIED);
    TLS_DROP
}

/// [`deny`] for a ClientHello, or a segment of one, that cannot be judged.
#[inline(always)]
fn malformed(cfg: &Config, s: &mut TlsScratch, f: &mut TlsFlow, now: u64) -> i32 {
    deny(
        cfg,
        s,
        f,
        reason::TLS_MALFORMED,
        counters::DENY_TLS_MALFORMED,
        now,
    )
}

/// A segment that cannot be judged (IP first fragment, urgent data): its connection, if egress
/// follows it, is denied; otherwise the packet is refused.
#[inline(always)]
fn unjudgeable(cfg: &Config, s: &mut TlsScratch, key: &FlowKey, now: u64) -> i32 {
    // SAFETY: a read-only lookup; the value is copied at once (see `egress_tls`).
    match (unsafe { TLS_PENDING.get(key) }).copied() {
        Some(mut f) if f.state != tls_state::ADMITTED => malformed(cfg, s, &mut f, now),
        _ => refuse(
            cfg,
            s,
            reason::TLS_MALFORMED,
            counters::DENY_TLS_MALFORMED,
            now,
        ),
    }
}

/// Denies a packet of a connection with no judgment state (QUIC, unknown connections, raw
/// sockets): counted and reported; passed in audit.
#[inline(always)]
fn refuse(cfg: &Config, s: &mut TlsScratch, why: u8, counter: u32, now: u64) -> i32 {
    s.event.name_len = 0;
    count(counter);
    if crate::tls_audit(cfg) {
        report(cfg, s, why, action::AUDITED, now);
        count(counters::AUDIT_DENIED);
        return TLS_PASS;
    }
    report(cfg, s, why, action::DROPPED, now);
    count(counters::DROP_DENIED);
    TLS_DROP
}

#[inline(always)]
fn report(cfg: &Config, s: &mut TlsScratch, why: u8, act: u8, now: u64) {
    let key = s.seg.key;
    let e = &mut s.event.event;
    e.ts_ns = now;
    e.daddr = key.daddr;
    e.dport = key.dport;
    e.family = key.family;
    e.proto = key.proto;
    e.action = act;
    e.reason = why;
    e._pad = [0; 2];
    crate::report(cfg, e.ts_ns, &s.event);
}

/// Copies the held bytes of the connection's ClientHello into the scratch; `false` if they are
/// gone (evicted) or do not match the state.
#[inline(always)]
fn restore(key: &FlowKey, s: &mut TlsScratch, held: usize) -> bool {
    let Some(p) = TLS_PARTIAL.get_ptr(key) else {
        return false;
    };
    // SAFETY: a value pointer from the lookup, valid for this program run.
    let p = unsafe { &*p };
    if p.len as usize != held || held > tls::BUF {
        return false;
    }
    // Whole words, a constant bound: a byte loop would be 8 times the verifier's work.
    const WORDS: usize = tls::BUF / 8;
    let words = held.div_ceil(8);
    let mut w = 0;
    while w < WORDS {
        if w >= words {
            break;
        }
        // The mask bounds the offset for the verifier, which otherwise refuses the map value
        // access ("R1 unbounded memory access, make sure to bounds check any such access").
        let at = (w * 8) & (tls::BUF - 8);
        // SAFETY: `at + 8 <= BUF` in both buffers (masked just above); unaligned reads and
        // writes of plain bytes.
        unsafe {
            let v = core::ptr::read_unaligned(p.bytes.as_ptr().add(at).cast::<u64>());
            core::ptr::write_unaligned(s.held.bytes.as_mut_ptr().add(at).cast::<u64>(), v);
        }
        w += 1;
    }
    true
}

/// Loads `n` (1..=BUF) payload bytes from frame offset `off` behind the `held` bytes.
#[inline(always)]
fn load(ctx: &TcContext, s: &mut TlsScratch, off: u32, held: usize, n: usize) -> bool {
    // The length restated so the verifier sees 1..=BUF ("R4 invalid zero-sized read" or
    // "invalid access to map value" without it), and the offset masked below BUF: together
    // inside `held.bytes` and the `tail` behind it.
    let len = ((n as u32).wrapping_sub(1) & (tls::BUF as u32 - 1)) + 1;
    // SAFETY: `held & (BUF - 1) + len <= 2 * BUF`, inside `held.bytes` followed by `tail`
    // (asserted contiguous in egress-common).
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            off,
            s.held.bytes.as_mut_ptr().add(held & (tls::BUF - 1)).cast(),
            len,
        )
    };
    ret == 0
}

/// [`tls_parse`] results.
const PARSE_OK: i32 = 0;
const PARSE_INCOMPLETE: i32 = 1;
const PARSE_NOT_HELLO: i32 = 2;
const PARSE_NO_SNI: i32 = 3;
const PARSE_MALFORMED: i32 = 4;

/// Reads the ClientHello in the scratch (`len` bytes) into `TlsScratch::hello`. A global
/// function: the extension walk is verified once, not once per way the judgment reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tls_parse(len: u32) -> i32 {
    let Some(s) = TLS_SCRATCH.get_ptr_mut(0) else {
        return PARSE_MALFORMED;
    };
    // SAFETY: as in `stash`.
    let s = unsafe { &mut *s };
    match tls::client_hello(&s.held.bytes, len as usize, &mut s.hello) {
        Ok(()) => PARSE_OK,
        Err(TlsError::Incomplete) => PARSE_INCOMPLETE,
        Err(TlsError::NotHello) => PARSE_NOT_HELLO,
        Err(TlsError::NoSni) => PARSE_NO_SNI,
        Err(TlsError::Malformed | TlsError::TooLong) => PARSE_MALFORMED,
    }
}

/// [`tls_name`] results.
const NAME_ALLOWED: i32 = 1;
const NAME_DENIED: i32 = 0;

/// Whether the server name [`tls_parse`] found is allowed: a name of the policy, or below one
/// of its wildcards, by the DNS question's own hasher and rules; -1 for a name no DNS name
/// equals. The name is also copied into the deny record.
#[inline(always)]
fn tls_name() -> i32 {
    let wire = tls_wire();
    if wire <= 0 {
        return -1;
    }
    tls_hash(wire as u32)
}

/// Writes the server name in DNS wire form into the scratch: its wire length, or -1. A global
/// function: the conversion loop ends after any of 255 bytes, and without its own frame the
/// verifier would check the hashing after each of those ends.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tls_wire() -> i32 {
    let Some(s) = TLS_SCRATCH.get_ptr_mut(0) else {
        return -1;
    };
    // SAFETY: as in `stash`.
    let s = unsafe { &mut *s };
    match tls::sni_to_wire(
        &s.held.bytes,
        s.hello.sni_off as usize,
        s.hello.sni_len as usize,
        &mut s.wire,
        &mut s.event.name,
    ) {
        Some(wire) => {
            s.event.name_len = (wire - 2) as u16;
            wire as i32
        }
        None => -1,
    }
}

/// Hashes the wire name [`tls_wire`] wrote (`wire` bytes) and looks it up: [`NAME_ALLOWED`],
/// [`NAME_DENIED`], or -1. A global function (as above).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn tls_hash(wire: u32) -> i32 {
    let (Some(cfg), Some(s)) = (policy::config(), TLS_SCRATCH.get_ptr_mut(0)) else {
        return -1;
    };
    // SAFETY: as in `stash`.
    let s = unsafe { &mut *s };
    match dns::name(
        &s.wire,
        // A global function's scalar argument is unbounded to the verifier; the mask bounds the
        // name's end inside the 4 KiB buffer (a wire name is at most 257 bytes) so the parser's
        // offsets stay provably inside the map value ("invalid access to map value").
        (wire & 511) as usize,
        cfg.hash_k0,
        cfg.hash_k1,
        &mut s.labels,
        |h| policy::wild_name(cfg, h),
    ) {
        Ok(q) if q.suffix_matched => {
            s.admitted_by = q.suffix;
            NAME_ALLOWED
        }
        Ok(q) if policy::policy_name(cfg, q.full) => {
            s.admitted_by = q.full;
            NAME_ALLOWED
        }
        Ok(_) => NAME_DENIED,
        Err(_) => -1,
    }
}

/// Whether the packet comes from a raw or packet socket of this host (`SOCK_RAW`, or any
/// `AF_PACKET` socket), which could drive the judgment with segments its own TCP stack never
/// sends. Forwarded traffic carries no socket; `BPF_PROG_TEST_RUN` a dummy one of neither kind.
#[inline(always)]
fn raw_socket(ctx: &TcContext) -> bool {
    let Some(full) = crate::full_socket(ctx) else {
        return false;
    };
    // SAFETY: a full socket the helper returned.
    let (family, kind) = unsafe { ((*full).family, (*full).type_) };
    // include/linux/socket.h and include/linux/net.h.
    const AF_PACKET: u32 = 17;
    const SOCK_RAW: u32 = 3;
    family == AF_PACKET || kind == SOCK_RAW
}
