//! DNS learning. Egress remembers each query to a trusted resolver; ingress matches the answer
//! to it (resolver, client port, transaction id, question name), walks the answer and inserts
//! the addresses of an allowed name into the learned maps before returning, so the addresses are
//! allowed before the application can read the answer. A copy goes to the agent for CNAME
//! targets, status and whatever the kernel leaves to it (DNS over TCP, more answers than it
//! walks).

use aya_ebpf::{
    helpers::bpf_skb_load_bytes,
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use egress_common::{
    counters,
    dns::{self, Address, BUF, Question},
    maps::{
        Config, DNS_QUERY_TIMEOUT_NS, DnsEvent, LearnedValue, PendingKey, PendingValue,
        SCRATCH_EGRESS, SCRATCH_INGRESS, dns_flag, dns_kind,
    },
    mode,
    packet::{Frame, IPPROTO_TCP, IPPROTO_UDP, IpPacket, Kind, parse_frame},
    tc_action::PASS,
};

use crate::{
    maps::{
        CONFIG, DNS_EVENTS, DNS_PENDING, DNS_SCRATCH, LEARNED_V4, LEARNED_V6, NAMES_EXACT,
        NAMES_WILD, RESOLVERS,
    },
    skb::{Skb, count, count_n, now},
};

const UDP_HLEN: usize = 8;
const DNS_HLEN: usize = 12;

#[classifier]
pub(crate) fn ingress(ctx: TcContext) -> i32 {
    learn(&ctx);
    // Fail-open by design: ingress enforces nothing. An answer that cannot be trusted or parsed
    // teaches nothing and still reaches its socket; blocking DNS is not this program's job.
    PASS
}

/// Copies `len` payload bytes at `off` into the scratch slot `slot`; `None` if the payload does
/// not fit or cannot be read.
#[inline(always)]
fn load_payload(
    ctx: &TcContext,
    off: usize,
    slot: u32,
) -> Option<(&'static [u8; BUF], &'static mut dns::Labels, usize)> {
    let total = ctx.len() as usize;
    if off >= total {
        return None;
    }
    let len = total - off;
    // Larger messages are not walked (and not copied): EDNS answers are at most 4096 bytes,
    // and resolvers keep UDP answers under ~1232 bytes to avoid fragmentation.
    if !(DNS_HLEN..BUF).contains(&len) {
        return None;
    }
    let scratch = DNS_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU map slot from a successful lookup, used only by this program on this
    // CPU for the duration of this run.
    let (buf, labels) = unsafe { (&mut (*scratch).bytes, &mut (*scratch).labels) };
    // `len` is in [12, 4095] (checked above); the mask restates the bound in a form the
    // verifier tracks through the helper call, which otherwise fails with "R4 min value is
    // negative, either use unsigned or 'var &= const'".
    let n = (len as u32) & (BUF as u32 - 1);
    // SAFETY: `buf` has room for BUF > n bytes.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), off as u32, buf.as_mut_ptr().cast(), n) };
    if ret != 0 {
        return None;
    }
    Some((buf, labels, len))
}

/// Egress: remembers a query to a trusted resolver.
#[inline(always)]
pub(crate) fn track_query(ctx: &TcContext, cfg: &Config, p: &IpPacket, sport: [u8; 2]) {
    // SAFETY: a read-only lookup of a plain value.
    if unsafe { RESOLVERS.get(&p.daddr) }.is_none() {
        return;
    }
    let Some((buf, labels, len)) = load_payload(ctx, p.l4_off + UDP_HLEN, SCRATCH_EGRESS) else {
        return;
    };
    let Ok((id, qname)) = dns::query(buf, len, cfg.hash_k0, cfg.hash_k1, labels) else {
        return;
    };
    let key = PendingKey {
        resolver: p.daddr,
        client_port: sport,
        txid: id.to_be_bytes(),
        family: p.family,
        _pad: [0; 3],
    };
    if DNS_PENDING.insert(&key, &PendingValue { qname, sent_ns: now() }, 0).is_ok() {
        count(counters::DNS_QUERY_TRACKED);
    }
}

#[inline(always)]
fn learn(ctx: &TcContext) {
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    if cfg.mode == mode::UNSET {
        return;
    }
    let Ok(Frame::Ip(p)) = parse_frame(&Skb(ctx)) else {
        return;
    };
    let t = p.transport;
    if t.kind != Kind::Ports || t.sport != [0, 53] {
        return;
    }
    let (proto, dport) = (t.proto, t.dport);
    // SAFETY: a read-only lookup of a plain value.
    if unsafe { RESOLVERS.get(&p.saddr) }.is_none() {
        count(counters::DNS_UNTRUSTED);
        return;
    }
    if proto == IPPROTO_TCP {
        copy_tcp(ctx, &p, dport);
        return;
    }
    if proto != IPPROTO_UDP {
        return;
    }
    let off = p.l4_off + UDP_HLEN;
    let Some((buf, labels, len)) = load_payload(ctx, off, SCRATCH_INGRESS) else {
        count(counters::DNS_MALFORMED);
        return;
    };
    // SAFETY (closure): read-only lookups of plain values.
    let wild = |h: u64| unsafe { NAMES_WILD.get(&h) }.is_some();
    let Ok(q) = dns::question(buf, len, cfg.hash_k0, cfg.hash_k1, labels, wild) else {
        count(counters::DNS_MALFORMED);
        return;
    };
    // Anti-spoofing: only an answer to a query this node sent recently, from the resolver it
    // asked, to the port it asked from, with its id and its question, is used; and only once.
    let key = PendingKey {
        resolver: p.saddr,
        client_port: dport,
        txid: q.id.to_be_bytes(),
        family: p.family,
        _pad: [0; 3],
    };
    // SAFETY: a read-only lookup of a plain value.
    let matched = match unsafe { DNS_PENDING.get(&key) } {
        Some(v) => v.qname == q.full && now().saturating_sub(v.sent_ns) < DNS_QUERY_TIMEOUT_NS,
        None => false,
    };
    if !matched {
        count(counters::DNS_UNSOLICITED);
        return;
    }
    let _ = DNS_PENDING.remove(&key);

    let mut flags = 0;
    if name_allowed(&q) {
        flags |= dns_flag::ALLOWED;
        let now = now();
        let mut learned = 0u64;
        let mut failed = 0u64;
        match dns::answers(buf, len, &q, |addr, ttl| {
            if insert(addr, now + cfg.lifetime_ns(ttl)) {
                learned += 1;
            } else {
                failed += 1;
            }
        }) {
            Ok(walk) => {
                flags |= dns_flag::KERNEL_LEARNED;
                if walk.incomplete {
                    flags |= dns_flag::INCOMPLETE;
                }
                count(counters::DNS_ANSWER_LEARNED);
                count_n(counters::DNS_ADDR_LEARNED, learned);
                count_n(counters::DNS_LEARN_FAILED, failed);
            }
            Err(_) => {
                count(counters::DNS_MALFORMED);
                return;
            }
        }
    } else {
        count(counters::DNS_NOT_ALLOWED);
    }
    send_copy(ctx, &p, dport, dns_kind::UDP, flags, off, len, 0);
}

/// Whether the question name is allowed: one of its proper suffixes is a wildcard suffix
/// (checked while hashing), or its hash is an unexpired exact name.
#[inline(always)]
fn name_allowed(q: &Question) -> bool {
    if q.suffix_matched {
        return true;
    }
    // SAFETY: a read-only lookup of a plain value.
    matches!(unsafe { NAMES_EXACT.get(&q.full) }, Some(v) if v.expires_ns > now())
}

/// Allows `addr` until `expires_ns`, keeping a later expiry that is already there. Returns
/// whether the address is now allowed at least that long.
#[inline(always)]
fn insert(addr: Address, expires_ns: u64) -> bool {
    let value = LearnedValue { expires_ns };
    match addr {
        Address::V4(a) => {
            let key = Key::new(32, a);
            match LEARNED_V4.get(&key) {
                Some(old) if old.expires_ns >= expires_ns => true,
                _ => LEARNED_V4.insert(&key, &value, 0).is_ok(),
            }
        }
        Address::V6(a) => {
            let key = Key::new(128, a);
            match LEARNED_V6.get(&key) {
                Some(old) if old.expires_ns >= expires_ns => true,
                _ => LEARNED_V6.insert(&key, &value, 0).is_ok(),
            }
        }
    }
}

/// A TCP segment from a trusted resolver: the agent reassembles the stream and learns.
#[inline(always)]
fn copy_tcp(ctx: &TcContext, p: &IpPacket, dport: [u8; 2]) {
    let Ok(doff) = ctx.load::<u8>(p.l4_off + 12) else {
        return;
    };
    let Ok(seq) = ctx.load::<[u8; 4]>(p.l4_off + 4) else {
        return;
    };
    let off = p.l4_off + ((doff >> 4) as usize) * 4;
    let total = ctx.len() as usize;
    if off >= total {
        return; // no payload (a bare ACK, SYN-ACK or FIN)
    }
    let len = total - off;
    if len >= BUF {
        count(counters::DNS_MALFORMED);
        return;
    }
    count(counters::DNS_TCP_SEGMENT);
    send_copy(ctx, p, dport, dns_kind::TCP, 0, off, len, u32::from_be_bytes(seq));
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one call site per kind; a struct would only rename them")]
fn send_copy(ctx: &TcContext, p: &IpPacket, dport: [u8; 2], kind: u8, flags: u8, off: usize, len: usize, tcp_seq: u32) {
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        count(counters::DNS_EVENT_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // `len` is below BUF (checked by both callers); the mask restates it for the verifier.
    let n = (len as u32) & (BUF as u32 - 1);
    // SAFETY: `ev` points to a reserved, exclusively owned ring buffer record of DnsEvent size;
    // the payload has room for BUF > n bytes.
    let ok = unsafe {
        let h = &mut (*ev).header;
        h.ts_ns = now();
        h.resolver = p.saddr;
        h.client = p.daddr;
        h.tcp_seq = tcp_seq;
        h.len = n as u16;
        h.client_port = dport;
        h.kind = kind;
        h.flags = flags;
        h.family = p.family;
        h._pad = [0; 5];
        n > 0 && bpf_skb_load_bytes(ctx.skb.skb.cast(), off as u32, (*ev).payload.as_mut_ptr().cast(), n) == 0
    };
    if ok {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}

