//! Verdicts of the real classifier, run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`).

use std::net::IpAddr;

use egress_common::{
    counters,
    maps::generation,
    mode,
    packet::{IPPROTO_TCP, TCP_ACK, TCP_SYN},
    tc_action::{DROP, PASS},
    testing::Packet,
};
use egress_tests::{
    ALLOWED_V4, ALLOWED_V6, CLIENT_V4, CLIENT_V6, DENIED_V4, DENIED_V6, TestPins, expire_by_hand,
    ip, learn_by_hand,
};
use egress_user::{clock, ebpf};

struct Harness(egress_tests::harness::Harness);

impl Harness {
    fn new(policy_text: &str) -> Self {
        Self(egress_tests::harness::Harness::new(policy_text))
    }

    fn enforce() -> Self {
        Self::new(&format!(
            "ports: [443, 8443]\nallow:\n  cidrs: [{ALLOWED_V4}, \"{ALLOWED_V6}\", 203.0.113.0/24]\n"
        ))
    }

    fn run(&self, frame: &[u8]) -> i32 {
        self.0.egress(frame)
    }

    fn counter(&self, c: u32) -> u64 {
        self.0.counter(c)
    }
}

impl std::ops::Deref for Harness {
    type Target = egress_tests::harness::Harness;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn tcp(src: &str, dst: &str, port: u16) -> Packet {
    Packet::tcp(ip(src), ip(dst), port)
}

fn udp(src: &str, dst: &str, port: u16) -> Packet {
    Packet::udp(ip(src), ip(dst), port)
}

#[test]
fn static_cidr_allows_and_unknown_destination_is_dropped() {
    let h = Harness::enforce();
    assert_eq!(h.run(&tcp(CLIENT_V4, ALLOWED_V4, 443).build()), PASS);
    assert_eq!(
        h.run(&tcp(CLIENT_V4, "203.0.113.77", 443).build()),
        PASS,
        "inside a /24"
    );
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 443).build()), DROP);
    assert_eq!(
        h.run(&tcp(CLIENT_V4, DENIED_V4, 8443).build()),
        DROP,
        "second enforced port"
    );
    assert_eq!(h.counter(counters::PASS_STATIC), 2);
    assert_eq!(h.counter(counters::DROP_DENIED), 2);
}

#[test]
fn ipv6_and_udp_are_enforced() {
    let h = Harness::enforce();
    assert_eq!(h.run(&tcp(CLIENT_V6, ALLOWED_V6, 443).build()), PASS);
    assert_eq!(h.run(&tcp(CLIENT_V6, DENIED_V6, 443).build()), DROP);
    assert_eq!(h.run(&udp(CLIENT_V4, ALLOWED_V4, 443).build()), PASS);
    assert_eq!(h.run(&udp(CLIENT_V4, DENIED_V4, 443).build()), DROP);
    assert_eq!(h.run(&udp(CLIENT_V6, DENIED_V6, 443).build()), DROP);
}

#[test]
fn other_ports_protocols_and_non_ip_pass_untouched() {
    let h = Harness::enforce();
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 80).build()), PASS);
    assert_eq!(h.run(&udp(CLIENT_V6, DENIED_V6, 53).build()), PASS);
    let mut icmp = tcp(CLIENT_V4, DENIED_V4, 443);
    icmp.proto = 1;
    assert_eq!(h.run(&icmp.build()), PASS);
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(h.run(&arp), PASS);
    assert_eq!(h.counter(counters::PASS_NOT_ENFORCED), 3);
    assert_eq!(h.counter(counters::PASS_NOT_IP), 1);
}

#[test]
fn learned_entries_allow_until_they_expire() {
    let mut h = Harness::enforce();
    let now = clock::boot_ns();
    learn_by_hand(&mut h.dp, ip(DENIED_V4), now + 60_000_000_000);
    learn_by_hand(&mut h.dp, ip(DENIED_V6), now - 1);
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 443).build()), PASS);
    assert_eq!(
        h.run(&tcp(CLIENT_V6, DENIED_V6, 443).build()),
        DROP,
        "expired entry"
    );
    assert_eq!(h.counter(counters::PASS_LEARNED), 1);
}

#[test]
fn a_known_flow_keeps_passing_after_its_address_expires() {
    // By address alone (`tls_verdicts.rs` has flows admitted by their server name).
    let mut h = Harness::new(&format!(
        "ports: [443, 8443]\nallow:\n  cidrs: [{ALLOWED_V4}, \"{ALLOWED_V6}\"]\ntls:\n  sni: off\n"
    ));
    learn_by_hand(&mut h.dp, ip(DENIED_V4), clock::boot_ns() + 60_000_000_000);
    let syn = tcp(CLIENT_V4, DENIED_V4, 443);
    assert_eq!(h.run(&syn.build()), PASS);
    expire_by_hand(h.pins(), ip(DENIED_V4));
    let mut ack = syn.clone();
    ack.tcp_flags = TCP_ACK;
    assert_eq!(
        h.run(&ack.build()),
        PASS,
        "established flow survives expiry"
    );
    assert_eq!(h.counter(counters::PASS_FLOW), 1);
    // A new connection (SYN) to the expired address is judged afresh, even on the same 5-tuple.
    assert_eq!(h.run(&syn.build()), DROP);
    // A mid-stream packet of a flow the table does not know is dropped.
    let mut other = ack.clone();
    other.sport = 40_001;
    assert_eq!(h.run(&other.build()), DROP);
    assert_eq!(h.counter(counters::DENY_NOT_SYN), 1);
    // UDP flows behave the same.
    learn_by_hand(&mut h.dp, ip(DENIED_V6), clock::boot_ns() + 60_000_000_000);
    let quic = udp(CLIENT_V6, DENIED_V6, 443);
    assert_eq!(h.run(&quic.build()), PASS);
    expire_by_hand(h.pins(), ip(DENIED_V6));
    assert_eq!(h.run(&quic.build()), PASS);
    assert_eq!(h.counter(counters::PASS_FLOW), 2);
    // Without its flow, the expired address is denied.
    let mut new_flow = quic.clone();
    new_flow.sport = 40_002;
    assert_eq!(h.run(&new_flow.build()), DROP);
}

/// The per-CPU cache of the last known flow (`FLOW_CACHE`) holds a flow after its packets pass,
/// and never passes a flow the table lost: one the agent cut (its epoch change), within the
/// cache's window of 2 jiffies. `tls_verdicts.rs` has the SYN that reopens a tuple.
#[test]
fn the_flow_cache_holds_the_last_flow_and_never_a_removed_one() {
    egress_tests::harness::pin_to_cpu(0);
    let mut h = Harness::new(&format!(
        "ports: [443]\nallow:\n  cidrs: [{ALLOWED_V4}]\nrevoked_connections: cut\ntls:\n  sni: off\n"
    ));
    let flow = |h: &mut Harness, port: u16| {
        learn_by_hand(&mut h.dp, ip(DENIED_V4), clock::boot_ns() + 60_000_000_000);
        let mut syn = tcp(CLIENT_V4, DENIED_V4, 443);
        syn.sport = port;
        assert_eq!(h.run(&syn.build()), PASS);
        let mut ack = syn;
        ack.tcp_flags = TCP_ACK;
        let ack = ack.build();
        // The first ACK finds the flow in the table and caches it; the second passes from the
        // cache (the same counter).
        assert_eq!(h.run(&ack), PASS);
        assert_eq!(h.run(&ack), PASS);
        ack
    };
    let before = h.counter(counters::PASS_FLOW);
    let ack = flow(&mut h, 40_100);
    assert_eq!(h.counter(counters::PASS_FLOW) - before, 2);
    let key = egress_tests::harness::tcp_flow_key(CLIENT_V4, DENIED_V4, 40_100, 443);
    assert_eq!(h.cached_flow(0), Some(key.words()), "CPU 0 caches the flow");
    // The agent cuts it (its address expired and a reload revoked it): the next packet, well
    // inside the window, is judged afresh and dropped. Repeated, so a cut that happens to land
    // after the window cannot hide a cache that outlives it.
    for round in 0..20u16 {
        let ack = if round == 0 {
            ack.clone()
        } else {
            flow(&mut h, 40_100 + round)
        };
        expire_by_hand(h.pins(), ip(DENIED_V4));
        let cut =
            h.dp.cut_flows(clock::boot_ns(), &[ip(DENIED_V4)], &[])
                .expect("cut");
        assert_eq!(cut, 1, "round {round}: the flow was cut");
        assert_eq!(
            h.run(&ack),
            DROP,
            "round {round}: a cut flow passed from the cache"
        );
    }
}

#[test]
fn ipv4_fragments() {
    let h = Harness::enforce();
    let mut first = udp(CLIENT_V4, DENIED_V4, 443);
    first.more_fragments = true;
    assert_eq!(
        h.run(&first.build()),
        DROP,
        "first fragment carries the ports"
    );
    let mut later = first.clone();
    later.frag_offset = 185;
    assert_eq!(
        h.run(&later.build()),
        PASS,
        "later fragments pass (no ports)"
    );
    assert_eq!(h.counter(counters::PASS_FRAGMENT), 1);
    let mut tiny = tcp(CLIENT_V4, DENIED_V4, 443);
    tiny.more_fragments = true;
    tiny.transport_len = Some(8);
    assert_eq!(
        h.run(&tiny.build()),
        DROP,
        "tiny first fragment: fail-closed"
    );
    let mut tiny_allowed = tiny.clone();
    tiny_allowed.dst = ip(ALLOWED_V4);
    assert_eq!(
        h.run(&tiny_allowed.build()),
        PASS,
        "tiny fragment to an allowed address"
    );
    assert_eq!(h.counter(counters::DENY_MALFORMED), 1);
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    let h = Harness::enforce();
    let mut p = tcp(CLIENT_V6, DENIED_V6, 443);
    p.v6_ext = vec![0, 60, 43];
    assert_eq!(
        h.run(&p.build()),
        DROP,
        "walked past hop-by-hop, dest-opts, routing"
    );
    p.dst = ip(ALLOWED_V6);
    assert_eq!(h.run(&p.build()), PASS);
    let mut deep = tcp(CLIENT_V6, DENIED_V6, 443);
    deep.v6_ext = vec![60; 9];
    assert_eq!(
        h.run(&deep.build()),
        DROP,
        "past the walk bound: fail-closed"
    );
    deep.dst = ip(ALLOWED_V6);
    assert_eq!(h.run(&deep.build()), PASS);
    let mut frag = udp(CLIENT_V6, DENIED_V6, 443);
    frag.v6_ext = vec![44];
    frag.more_fragments = true;
    assert_eq!(h.run(&frag.build()), DROP);
    frag.frag_offset = 100;
    assert_eq!(h.run(&frag.build()), PASS);
}

#[test]
fn vlan_tags() {
    let h = Harness::enforce();
    for tags in 1..=2 {
        let mut p = tcp(CLIENT_V4, DENIED_V4, 443);
        p.vlan_tags = tags;
        assert_eq!(h.run(&p.build()), DROP, "{tags} tags");
        p.dst = ip(ALLOWED_V4);
        assert_eq!(h.run(&p.build()), PASS, "{tags} tags");
    }
    let mut p = tcp(CLIENT_V4, ALLOWED_V4, 443);
    p.vlan_tags = 3;
    assert_eq!(
        h.run(&p.build()),
        DROP,
        "three tags: unparsable, fail-closed"
    );
}

#[test]
fn truncated_and_malformed_headers_fail_closed() {
    let h = Harness::enforce();
    // BPF_PROG_TEST_RUN itself rejects an untagged IP frame shorter than its IP header, so the
    // cut-short frames carry a VLAN tag: the kernel then leaves the parsing to us.
    let mut tagged = tcp(CLIENT_V4, ALLOWED_V4, 443);
    tagged.vlan_tags = 1;
    let full = tagged.build();
    assert_eq!(h.run(&full[..18 + 12]), DROP, "IPv4 header cut short");
    let mut bad = tcp(CLIENT_V4, ALLOWED_V4, 443).build();
    bad[14] = 0x43;
    assert_eq!(h.run(&bad), DROP, "IHL below 5");
    let mut tagged6 = tcp(CLIENT_V6, ALLOWED_V6, 443);
    tagged6.vlan_tags = 1;
    assert_eq!(
        h.run(&tagged6.build()[..18 + 30]),
        DROP,
        "IPv6 header cut short"
    );
    assert_eq!(h.counter(counters::DENY_MALFORMED), 3);
}

#[test]
fn audit_mode_passes_what_enforce_drops_and_counts_it() {
    let h = Harness::new(&format!("mode: audit\nallow:\n  cidrs: [{ALLOWED_V4}]\n"));
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 443).build()), PASS);
    let mut tiny = tcp(CLIENT_V4, DENIED_V4, 443);
    tiny.transport_len = Some(4);
    assert_eq!(h.run(&tiny.build()), PASS);
    assert_eq!(h.counter(counters::AUDIT_DENIED), 2);
    assert_eq!(h.counter(counters::DROP_DENIED), 0);
    assert_eq!(h.counter(counters::EVENT_SENT), 2);
}

#[test]
fn unconfigured_maps_fail_open() {
    let mut h = Harness::enforce();
    let mut cfg = h.dp.config().unwrap();
    cfg.mode = mode::UNSET;
    h.dp.write_config(&cfg).unwrap();
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 443).build()), PASS);
    assert_eq!(h.counter(counters::PASS_UNCONFIGURED), 1);
}

#[test]
fn events_are_rate_limited_per_cpu() {
    let mut h = Harness::enforce();
    let mut cfg = h.dp.config().unwrap();
    cfg.events_per_sec = 5;
    h.dp.write_config(&cfg).unwrap();
    let frame = tcp(CLIENT_V4, DENIED_V4, 443).build();
    // BPF_PROG_TEST_RUN runs the program on the calling thread's CPU: pinned to one CPU (this
    // test's own thread), every run shares that CPU's budget of 5 per second.
    let runs_on = |cpu: usize| {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin the test");
        for _ in 0..20 {
            assert_eq!(h.run(&frame), DROP);
        }
    };
    runs_on(0);
    assert_eq!(h.counter(counters::EVENT_SENT), 5);
    assert_eq!(h.counter(counters::EVENT_RATE_LIMITED), 15);
    // The budget is per CPU: runs on another CPU have a budget of their own.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        runs_on(1);
        assert_eq!(h.counter(counters::EVENT_SENT), 10);
        assert_eq!(h.counter(counters::EVENT_RATE_LIMITED), 30);
    }
}

#[test]
fn syn_ack_to_an_enforced_port_is_not_a_syn() {
    let h = Harness::enforce();
    let mut p = tcp(CLIENT_V4, DENIED_V4, 443);
    p.tcp_flags = TCP_SYN | TCP_ACK;
    assert_eq!(p.proto, IPPROTO_TCP);
    assert_eq!(h.run(&p.build()), DROP);
    assert_eq!(h.counter(counters::DENY_NOT_SYN), 1);
}

#[test]
fn every_map_name_exists_in_the_object() {
    let pins = TestPins::new();
    let ebpf = ebpf::load(&pins.pins).unwrap();
    for name in egress_common::maps::names::ALL {
        assert!(ebpf.map(name).is_some(), "{name} missing");
        assert!(pins.pins.map(name).exists(), "{name} not pinned");
    }
    let _ = IpAddr::from([0u8; 4]);
}

#[test]
fn the_policy_not_in_force_never_decides_until_it_is_switched_to() {
    let mut h = Harness::enforce();
    let other = generation::other(h.dp.active().unwrap());
    // A whole other policy written beside the one in force, as a reload writes it (or leaves
    // it, killed before the switch): audit mode, only port 80, the denied addresses allowed.
    let mut cfg = h.dp.config().unwrap();
    cfg.generation = other;
    cfg.mode = mode::AUDIT;
    h.dp.write_config(&cfg).unwrap();
    h.dp.write_ports(other, &[80]).unwrap();
    h.dp.write_static(
        other,
        &[
            format!("{DENIED_V4}/32").parse().unwrap(),
            format!("{DENIED_V6}/128").parse().unwrap(),
        ],
    )
    .unwrap();
    // Not in force: its CIDRs, ports and mode count for nothing.
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 443).build()), DROP);
    assert_eq!(h.run(&tcp(CLIENT_V6, DENIED_V6, 443).build()), DROP);
    assert_eq!(h.run(&tcp(CLIENT_V4, ALLOWED_V4, 443).build()), PASS);
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 80).build()), PASS);
    assert_eq!(h.counter(counters::DROP_DENIED), 2);
    assert_eq!(h.counter(counters::PASS_STATIC), 1);
    assert_eq!(h.counter(counters::PASS_NOT_ENFORCED), 1);
    assert_eq!(h.counter(counters::AUDIT_DENIED), 0);
    // One write puts all of it in force.
    h.dp.activate(other).unwrap();
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 443).build()), PASS);
    assert_eq!(h.counter(counters::PASS_NOT_ENFORCED), 2);
    assert_eq!(h.run(&tcp(CLIENT_V4, DENIED_V4, 80).build()), PASS);
    assert_eq!(h.run(&tcp(CLIENT_V6, DENIED_V6, 80).build()), PASS);
    assert_eq!(h.counter(counters::PASS_STATIC), 3);
    // The old policy's CIDR is not in the new one: audited, not dropped.
    assert_eq!(h.run(&tcp(CLIENT_V4, ALLOWED_V4, 80).build()), PASS);
    assert_eq!(h.counter(counters::AUDIT_DENIED), 1);
    assert_eq!(h.counter(counters::DROP_DENIED), 2);
}
