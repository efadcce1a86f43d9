//! The egress TC classifier.
//!
//! Attached to the egress of one interface. For TCP and UDP to an enforced port it passes
//! packets of known flows, passes and records flows to allowed destinations (static CIDRs and
//! unexpired DNS-learned addresses), and drops (enforce) or reports (audit) the rest. Everything
//! else passes untouched. Verdicts and their fail-open/fail-closed reasoning are documented in
//! `docs/design.md`; each path below names which it is.
#![no_std]
#![no_main]
// aya-ebpf's map methods take `impl Borrow<K>`: a reference keeps the key where it was built,
// on the 512-byte BPF stack, instead of moving a second copy into the call.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys are passed by reference to avoid copies on the BPF stack"
)]

mod dns;
mod dns_tcp;
mod floor;
mod flow_cache;
mod maps;
mod policy;
mod skb;
mod sockets;
mod tls;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock},
    macros::{cgroup_skb, classifier},
    maps::{HashMap, LruHashMap},
    programs::{SkBuffContext, TcContext},
};
use egress_common::{
    counters,
    maps::{
        Config, DenyEvent, FLOW_TOUCH_INTERVAL_NS, FlowKey, FlowValue, LearnedValue, NS_PER_S,
        action, family, learn, reason, tls_mode, v4_of_mapped,
    },
    mode,
    packet::{
        DNS_PORT, Frame, IPPROTO_TCP, IPPROTO_UDP, IpPacket, Kind, TCP_ACK, TCP_SYN, parse_frame,
    },
    tc_action::{DROP, PASS},
};
use maps::{ADMITTED, EVENT_RATE, EVENTS, FLOWS, FLOWS_UDP, LEARNED_V4, LEARNED_V6, REVOKED};
use skb::{Skb, count, jiffies, now};

/// A program that only passes: the baseline `cargo xtask bench` measures the datapath against.
/// The agent never attaches it.
#[classifier]
pub(crate) fn empty(_ctx: TcContext) -> i32 {
    PASS
}

/// Stands for another vendor's program that takes the head of the TCX chain and returns a final
/// verdict (`TCX_PASS`, 0), so nothing after it runs: tests attach it ahead of egress to prove
/// the agent takes the head back. The agent never attaches it.
#[classifier]
pub(crate) fn final_pass(_ctx: TcContext) -> i32 {
    0
}

/// Bits of [`egress_verdict`]'s result.
const VERDICT_DROP: i32 = 1;
const VERDICT_DNS_QUERY: i32 = 2;
/// The packet goes to the TLS server-name judgment ([`tls::egress_tls`]).
const VERDICT_TLS: i32 = 4;
/// Not a TC action: what [`enforce`] returns for a packet [`tls::stash`] left for the judgment.
const JUDGE_TLS: i32 = 0x100;

/// The learning program, attached to the ingress of the same interfaces: it finds DNS answers
/// from trusted resolvers and learns their addresses before the application reads them (the
/// work is in `dns.rs`: [`dns::ingress_classify`], then [`dns::ingress_udp_answer`]).
#[classifier]
pub(crate) fn ingress(ctx: TcContext) -> i32 {
    match dns::ingress_classify(ctx.skb.skb) {
        dns::UDP_ANSWER => {
            dns::ingress_udp_answer(ctx.skb.skb);
        }
        dns::TCP_ANSWER => dns_tcp::follow(
            || dns::ingress_tcp_begin(),
            |pos| dns::ingress_tcp_piece(ctx.skb.skb, pos),
            || {
                dns::ingress_tcp_overflow();
            },
        ),
        _ => {}
    }
    // Fail-open by design: ingress enforces nothing. An answer that cannot be trusted or parsed
    // teaches nothing and still reaches its socket; blocking DNS is not this program's job.
    PASS
}

/// Learning at the sockets (`egress run --dns-cgroup`), query side: a `cgroup_skb/egress`
/// program on the node's cgroup remembers every UDP DNS query a socket sends (work in
/// `sockets.rs`). Never drops: it only watches.
#[cgroup_skb(egress)]
pub(crate) fn sock_query(ctx: SkBuffContext) -> i32 {
    match sockets::track_query(ctx.skb.skb) {
        sockets::UDP_QUERY => {
            sockets::remember_query(ctx.skb.skb);
        }
        sockets::TCP_QUERY => {
            sockets::tcp_query(ctx.skb.skb);
        }
        _ => {}
    }
    sockets::SK_PASS
}

/// Learning at the sockets, answer side: a `cgroup_skb/ingress` program on the node's cgroup
/// learns an answer's addresses before it is queued to the socket that asked, in whatever
/// network namespace (pods), after decapsulation and reverse NAT. Never drops (fail-open, as
/// the interface's ingress program).
#[cgroup_skb(ingress)]
pub(crate) fn sock_answer(ctx: SkBuffContext) -> i32 {
    match sockets::classify_answer(ctx.skb.skb) {
        dns::UDP_ANSWER => {
            sockets::learn_answer(ctx.skb.skb);
        }
        dns::TCP_ANSWER => dns_tcp::follow(
            || sockets::tcp_answer_begin(ctx.skb.skb),
            |pos| sockets::tcp_answer_piece(ctx.skb.skb, pos),
            || {
                sockets::tcp_answer_overflow(ctx.skb.skb);
            },
        ),
        _ => {}
    }
    sockets::SK_PASS
}

/// The enforcing program, attached to the egress of each enforced interface.
#[classifier]
pub(crate) fn egress(ctx: TcContext) -> i32 {
    let v = egress_verdict(ctx.skb.skb);
    if v & VERDICT_TLS != 0 {
        return if tls::egress_tls(ctx.skb.skb) == tls::TLS_PASS {
            PASS
        } else {
            DROP
        };
    }
    // Remembering a DNS query never changes the verdict.
    if v & VERDICT_DNS_QUERY != 0 {
        match dns::egress_track(ctx.skb.skb) {
            dns::UDP_QUERY => {
                dns::egress_remember_query(ctx.skb.skb);
            }
            dns::TCP_QUERY => {
                dns::egress_tcp_query(ctx.skb.skb);
            }
            _ => {}
        }
    }
    if v & VERDICT_DROP != 0 { DROP } else { PASS }
}

/// The verdict, as [`VERDICT_DROP`] and [`VERDICT_DNS_QUERY`] bits. A global function so the
/// verifier checks it on its own: each function's stack frame then counts separately toward the
/// 512-byte limit ("combined stack size of 2 calls is 560. Too large" otherwise), and DNS
/// tracking is only explored once, not after every way the verdict can end.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn egress_verdict(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    // `None` cannot happen (see `policy::config`) but must be handled: fail-open, as below.
    let Some(cfg) = policy::config() else {
        return 0;
    };
    if cfg.mode == mode::UNSET {
        // Fail-open: the agent writes the configuration before it attaches the program, so
        // this is only reachable by a program attached by hand to fresh maps.
        count(counters::PASS_UNCONFIGURED);
        return 0;
    }
    let (action, dns) = match classify(&ctx, cfg) {
        Ok(verdict) => verdict,
        // Fail-closed: a frame whose headers are too short or malformed to show a destination
        // address may be anything, including traffic the policy denies.
        Err(_unparsable) => (deny(cfg, None, reason::MALFORMED), false),
    };
    let mut v = match action {
        DROP => VERDICT_DROP,
        JUDGE_TLS => VERDICT_TLS,
        _ => 0,
    };
    if dns {
        v |= VERDICT_DNS_QUERY;
    }
    v
}

#[inline(always)]
/// The TC action, and whether the packet is DNS to a resolver (UDP or TCP) to look at.
fn classify(
    ctx: &TcContext,
    cfg: &Config,
) -> Result<(i32, bool), egress_common::packet::ParseError> {
    let Frame::Ip(p) = parse_frame(&Skb(ctx))? else {
        count(counters::PASS_NOT_IP);
        return Ok((PASS, false));
    };
    let t = p.transport;
    // Queries are remembered here only when answers are learned at the interface; learning at
    // the sockets remembers them at the sockets.
    let dns = cfg.learn == learn::INTERFACE
        && t.kind == Kind::Ports
        && (t.proto == IPPROTO_UDP || t.proto == IPPROTO_TCP)
        && t.dport == DNS_PORT;
    let verdict = match t.kind {
        // Fail-open, by design: a later fragment carries no ports; the first fragment carries
        // them and gets the full verdict, and without it the datagram cannot be reassembled.
        Kind::LaterFragment => {
            count(counters::PASS_FRAGMENT);
            PASS
        }
        Kind::Other => {
            count(counters::PASS_NOT_ENFORCED);
            PASS
        }
        // Fail-closed: the ports are unknown (tiny first fragment, truncated transport header,
        // IPv6 extension headers past the walk bound), so only an allowed destination passes.
        Kind::Unparsed => match allowed(cfg, &p, now(), false) {
            // With server names enforced, a learned address needs a judged ClientHello, which
            // a packet without ports cannot be part of: only a static destination passes.
            Some(counters::PASS_LEARNED) if cfg.sni() != tls_mode::OFF => deny_as(
                cfg,
                tls_audit(cfg),
                Some((&p, 0, [0; 2])),
                reason::MALFORMED,
            ),
            Some(counter) => {
                count(counter);
                PASS
            }
            None => deny(cfg, Some((&p, 0, [0; 2])), reason::MALFORMED),
        },
        Kind::Ports => enforce(ctx, cfg, &p, t.proto, t.sport, t.dport, t.tcp_flags),
    };
    Ok((verdict, dns))
}

#[inline(always)]
fn enforce(
    ctx: &TcContext,
    cfg: &Config,
    p: &IpPacket,
    proto: u8,
    sport: [u8; 2],
    dport: [u8; 2],
    tcp_flags: u8,
) -> i32 {
    if !policy::port_enforced(cfg, u16::from_be_bytes(dport)) {
        count(counters::PASS_NOT_ENFORCED);
        return PASS;
    }
    let key = FlowKey::new(p.saddr, p.daddr, sport, dport, proto, p.family);
    let tcp = proto == IPPROTO_TCP;
    let syn = tcp && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A SYN opens a new connection: it is always judged by the allow maps, so a reused
    // 5-tuple cannot ride on an old flow to an expired address. Any other packet first tries
    // the flow this CPU passed last, found in the flow table a jiffy or two ago: it passes with
    // neither the lookup nor the clock (see `flow_cache`).
    let cached = if syn {
        None
    } else {
        let (slot, tick, epoch) = (flow_cache::slot(), jiffies(), flow_cache::epoch());
        if slot.is_some_and(|c| flow_cache::hit(c, &key, tick, epoch)) {
            count(counters::PASS_FLOW);
            return PASS;
        }
        Some((slot, tick, epoch))
    };
    let now = now();
    let flows = if tcp { &FLOWS } else { &FLOWS_UDP };
    if let Some((slot, tick, epoch)) = cached
        && let Some(flow) = flows.get_ptr_mut(&key)
    {
        let idle = if tcp {
            cfg.tcp_idle_ns
        } else {
            cfg.udp_idle_ns
        };
        // SAFETY: the pointer comes from a successful lookup; LRU hash values stay valid for
        // the program run (RCU), and a racing update only affects a timestamp.
        let last = unsafe { (*flow).last_seen_ns };
        let age = now.saturating_sub(last);
        if age < idle {
            if age > FLOW_TOUCH_INTERVAL_NS {
                // SAFETY: as above.
                unsafe { (*flow).last_seen_ns = now };
            }
            if let Some(c) = slot {
                flow_cache::remember(c, &key, tick, epoch);
            }
            count(counters::PASS_FLOW);
            return PASS;
        }
    }
    let counter = match allowed(cfg, p, now, syn || !tcp) {
        // A connection to a learned address on a TLS port is admitted by its ClientHello's
        // server name, not by its SYN (learned hits count the SYN, or each UDP flow). The TLS
        // ports are looked up only for such a destination.
        Some(counters::PASS_LEARNED)
            if cfg.sni() != tls_mode::OFF && policy::tls_port(cfg, u16::from_be_bytes(dport)) =>
        {
            if tls::stash(ctx, &key, p, tcp_flags) {
                return JUDGE_TLS;
            }
            // Fail-closed: a TCP header that cannot be read cannot be judged.
            return deny_as(
                cfg,
                tls_audit(cfg),
                Some((p, proto, dport)),
                reason::MALFORMED,
            );
        }
        Some(counter) => {
            if syn {
                admit_socket(ctx, now);
            }
            counter
        }
        // Fail-open for this node's own established connections whose SYN egress passed to an
        // allowed destination (`ADMITTED`): their flow was lost (evicted by other traffic) and
        // the address expired meanwhile; dropping them would let one workload cut another's
        // connections. Not for connections opened before egress, in audit mode, or to a
        // destination a reload revoked with `revoked_connections: cut`.
        None if tcp && !syn && socket_admitted(ctx, cfg, &p.daddr) => counters::PASS_SOCKET,
        None => {
            if tcp && !syn {
                count(counters::DENY_NOT_SYN);
            }
            return deny(cfg, Some((p, proto, dport)), reason::NOT_ALLOWED);
        }
    };
    // The packet passes even if the flow cannot be recorded: its destination is allowed now.
    record_flow(flows, &key, &FlowValue::by_address(now));
    count(counter);
    PASS
}

/// Records a flow that passes now. The packet passes even if the table refuses the entry
/// (counted: `FLOW_INSERT_FAILED`); its next packet is judged again.
#[inline(always)]
pub(crate) fn record_flow(
    flows: &LruHashMap<FlowKey, FlowValue>,
    key: &FlowKey,
    value: &FlowValue,
) {
    if flows.insert(key, value, 0).is_err() {
        count(counters::FLOW_INSERT_FAILED);
    }
}

/// Fail-open for this node's own established connection whose SYN (or ClientHello) egress
/// passed (`ADMITTED`): its state was lost (flow evicted by other traffic, address expired
/// meanwhile); dropping it would let one workload cut another's connections. Not in audit
/// mode, and not to a destination a reload revoked with `revoked_connections: cut`.
#[inline(always)]
pub(crate) fn socket_admitted(ctx: &TcContext, cfg: &Config, daddr: &[u8; 16]) -> bool {
    cfg.mode == mode::ENFORCE && local_established(ctx) && admitted(ctx) && !revoked(daddr)
}

/// `TCP_ESTABLISHED` .. `TCP_CLOSING` without `SYN_SENT`, `SYN_RECV`, `TIME_WAIT`, `CLOSE` and
/// `LISTEN` (`include/net/tcp_states.h`): states a socket reaches only after a handshake.
const HANDSHAKE_DONE: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);

/// Whether the packet comes from a local TCP socket that completed a handshake. Forwarded
/// traffic (pods behind a bridge or veth) carries no socket here.
#[inline(always)]
pub(crate) fn local_established(ctx: &TcContext) -> bool {
    let Some(full) = full_socket(ctx) else {
        return false;
    };
    // SAFETY: a full socket the helper returned; its fields are readable.
    let (protocol, state) = unsafe { ((*full).protocol, (*full).state) };
    protocol == u32::from(IPPROTO_TCP) && state < 32 && HANDSHAKE_DONE & (1 << state) != 0
}

/// The packet's full socket: `None` for forwarded traffic (no socket) and for request and
/// time-wait sockets (the kernel's own TCP).
#[inline(always)]
pub(crate) fn full_socket(ctx: &TcContext) -> Option<*mut aya_ebpf::bindings::bpf_sock> {
    // SAFETY: reading the context's `sk` field, which the verifier types as a nullable socket
    // pointer; it is only passed to the helper below after the null check.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket pointer from the context ("R1 type=sock_common_or_null
    // expected=sock_common" without the check above).
    let full = unsafe { bpf_sk_fullsock(sk) };
    (!full.is_null()).then_some(full)
}

/// Records the sending socket of an allowed SYN (local traffic only: forwarded packets carry no
/// socket, and their cookie is 0).
#[inline(always)]
pub(crate) fn admit_socket(ctx: &TcContext, now: u64) {
    // SAFETY: reading the context's `sk` field (a nullable socket pointer) only to test it.
    if unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }.is_null() {
        // Forwarded traffic (pods): no socket, no helper call on its SYN path.
        return;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if cookie != 0 {
        let _ = ADMITTED.insert(&cookie, &now, 0);
    }
}

/// Forgets the packet's socket in `ADMITTED` (a local SYN on a TLS port: the connection is
/// admitted by its ClientHello, not by what the socket did before).
#[inline(always)]
pub(crate) fn forget_socket(ctx: &TcContext) {
    // SAFETY: reading the context's `sk` field (a nullable socket pointer) only to test it.
    if unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }.is_null() {
        return;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if cookie != 0 {
        forget(&ADMITTED, &cookie);
    }
}

/// Removes `key` from `map` if it is there. A delete takes the bucket's lock before it looks
/// (`htab_lru_map_delete_elem`, kernel/bpf/hashtab.c) even for a key that is absent, as a new
/// connection's tuple or socket cookie usually is; a lookup takes no lock. A racing insert of
/// the key is no more possible than after an unconditional delete (it may land just after the
/// delete as well as between the lookup and the skipped delete).
#[inline(always)]
pub(crate) fn forget<K, V>(map: &LruHashMap<K, V>, key: &K) {
    if map.get_ptr(key).is_some() {
        let _ = map.remove(key);
    }
}

/// Whether the packet's socket sent a SYN egress passed ([`admit_socket`]).
#[inline(always)]
pub(crate) fn admitted(ctx: &TcContext) -> bool {
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: a read-only lookup of a plain value.
    cookie != 0 && unsafe { ADMITTED.get(&cookie) }.is_some()
}

/// Whether a reload cut the connections to `daddr` (`revoked_connections: cut`).
#[inline(always)]
pub(crate) fn revoked(daddr: &[u8; 16]) -> bool {
    // SAFETY: a read-only lookup of a plain value.
    unsafe { REVOKED.get(daddr) }.is_some()
}

/// The counter to bump if the destination is allowed now under `cfg`'s policy, `None` if it is
/// not. `opens` counts the packet on the learned entry (a new flow: a SYN, or a UDP datagram).
#[inline(always)]
fn allowed(cfg: &Config, p: &IpPacket, now: u64, opens: bool) -> Option<u32> {
    if p.family == family::V4 {
        let a = v4_of_mapped(&p.daddr);
        if policy::static_v4_allows(cfg, a) {
            return Some(counters::PASS_STATIC);
        }
        learned_in(&LEARNED_V4, &a, now, opens)
    } else {
        if policy::static_v6_allows(cfg, p.daddr) {
            return Some(counters::PASS_STATIC);
        }
        learned_in(&LEARNED_V6, &p.daddr, now, opens)
    }
}

/// [`allowed`] for one family's learned map: an unexpired learned address.
#[inline(always)]
fn learned_in<K>(
    learned: &HashMap<K, LearnedValue>,
    addr: &K,
    now: u64,
    opens: bool,
) -> Option<u32> {
    match learned.get_ptr_mut(addr) {
        // SAFETY: a non-null value pointer from the lookup.
        Some(v) if unsafe { (*v).expires_ns } > now => {
            if opens {
                hit(v);
            }
            Some(counters::PASS_LEARNED)
        }
        _ => None,
    }
}

/// Counts a flow admitted by a learned entry on the entry itself (`egress status` shows it).
/// A plain increment, not an atomic one (`core` offers no atomic read-modify-write on the BPF
/// target): two CPUs admitting flows to one address at the same instant can lose a count, so
/// hits are a close approximation, documented as such.
#[inline(always)]
fn hit(v: *mut LearnedValue) {
    // SAFETY: `v` is a non-null pointer into a map value the lookup returned (writable,
    // 8-byte aligned); the kernel keeps it valid for the rest of this program run.
    unsafe { (*v).hits = (*v).hits.wrapping_add(1) };
}

/// Counts, reports (rate-limited) and returns the verdict for a denied packet.
#[inline(always)]
fn deny(cfg: &Config, what: Option<(&IpPacket, u8, [u8; 2])>, why: u8) -> i32 {
    // Any mode other than audit enforces (fail-closed on a corrupted configuration).
    deny_as(cfg, cfg.mode == mode::AUDIT, what, why)
}

/// Whether what the TLS judgment would drop passes (`mode: audit` or `tls.sni: audit`).
#[inline(always)]
pub(crate) fn tls_audit(cfg: &Config) -> bool {
    cfg.mode == mode::AUDIT || cfg.sni() == tls_mode::AUDIT
}

/// [`deny`], audited (passed and reported) if `audit`.
#[inline(always)]
fn deny_as(cfg: &Config, audit: bool, what: Option<(&IpPacket, u8, [u8; 2])>, why: u8) -> i32 {
    count(if audit {
        counters::AUDIT_DENIED
    } else {
        counters::DROP_DENIED
    });
    if why == reason::MALFORMED {
        count(counters::DENY_MALFORMED);
    }
    let mut event = DenyEvent {
        ts_ns: now(),
        action: if audit {
            action::AUDITED
        } else {
            action::DROPPED
        },
        reason: why,
        ..DenyEvent::default()
    };
    if let Some((p, proto, dport)) = what {
        event.daddr = p.daddr;
        event.family = p.family;
        event.proto = proto;
        event.dport = dport;
    }
    report(cfg, event.ts_ns, &event);
    if audit { PASS } else { DROP }
}

/// Sends `event` (a [`DenyEvent`], or a record that starts with one) to the agent, under the
/// per-CPU rate limit.
#[inline(always)]
pub(crate) fn report<T>(cfg: &Config, ts_ns: u64, event: &T) {
    let Some(state) = EVENT_RATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot from a successful lookup; no other program run touches it while
    // this one runs on this CPU (TC programs do not nest on a CPU).
    let state = unsafe { &mut *state };
    if ts_ns.saturating_sub(state.window_start_ns) >= NS_PER_S {
        state.window_start_ns = ts_ns;
        state.sent = 0;
    }
    if state.sent >= u64::from(cfg.events_per_sec) {
        count(counters::EVENT_RATE_LIMITED);
        return;
    }
    state.sent += 1;
    match EVENTS.output::<T>(event, 0) {
        Ok(()) => count(counters::EVENT_SENT),
        Err(_) => count(counters::EVENT_RINGBUF_FULL),
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // An infinite loop makes any reachable panic a verifier rejection ("infinite loop
    // detected") instead of undefined behaviour.
    loop {}
}
