//! Programs that only `cargo xtask bench` runs, never the agent: the known-flow path cut short
//! after each of its steps, so the report can say what each step costs and where the floor of
//! any flow-table design lies (`bench/REPORT.md`, *Per-packet cost*). Each returns a verdict
//! that depends on what it computed, so the compiler cannot drop the work.

use aya_ebpf::{macros::classifier, programs::TcContext};
use egress_common::{
    maps::FlowKey,
    packet::{Frame, Kind, parse_frame},
    tc_action::{DROP, PASS},
};

use crate::{maps::FLOWS, skb::Skb};

/// The header parse alone: passes a TCP or UDP packet with ports, drops anything else.
#[classifier]
pub(crate) fn floor_parse(ctx: TcContext) -> i32 {
    match parse_frame(&Skb(&ctx)) {
        Ok(Frame::Ip(p)) if p.transport.kind == Kind::Ports => PASS,
        _ => DROP,
    }
}

/// The parse and one lookup of the packet's 5-tuple in `FLOWS`: what a known flow costs with
/// a flow table and nothing else (no port bitmap, clock, counter or cache). Passes a packet of
/// a known flow, drops anything else.
#[classifier]
pub(crate) fn floor_lookup(ctx: TcContext) -> i32 {
    let Ok(Frame::Ip(p)) = parse_frame(&Skb(&ctx)) else {
        return DROP;
    };
    let t = p.transport;
    let key = FlowKey::new(p.saddr, p.daddr, t.sport, t.dport, t.proto, p.family);
    // SAFETY: a read-only lookup; the value is not read.
    if unsafe { FLOWS.get(&key) }.is_some() {
        PASS
    } else {
        DROP
    }
}
