//! The TLS server-name judgment (`tls.sni`) of the real classifier, run by the kernel on crafted
//! segments (`BPF_PROG_TEST_RUN`): one-segment and split ClientHellos, retransmissions,
//! reordering, TCP Fast Open, QUIC, audit, and what is exempt. Live connections with real
//! clients are in `tls_live.rs`.

use egress_common::{
    counters,
    packet::{IPPROTO_UDP, TCP_ACK, TCP_SYN},
    tc_action::{DROP, PASS},
    testing::{ClientHello, Packet},
};
use egress_tests::{
    ALLOWED_V4, CLIENT_V4, CLIENT_V6, DENIED_V4, DENIED_V6, harness::Harness, ip, learn_by_hand,
};
use egress_user::clock;

/// The learned destinations (no static CIDR covers them).
const LEARNED: &str = DENIED_V4;
const LEARNED_V6: &str = DENIED_V6;
const PSH_ACK: u8 = 0x18;
const URG: u8 = 0x20;

fn policy(tls: &str) -> String {
    format!(
        "ports: [443, 8443]\nallow:\n  names: [cgr.dev, \"*.example.org\"]\n  cidrs: [{ALLOWED_V4}]\n{tls}"
    )
}

/// A harness with `LEARNED` and `LEARNED_V6` learned for a minute.
fn harness(tls: &str) -> Harness {
    let mut h = Harness::new(&policy(tls));
    relearn(&mut h);
    h
}

fn relearn(h: &mut Harness) {
    let until = clock::boot_ns() + 60_000_000_000;
    learn_by_hand(&mut h.dp, ip(LEARNED), until);
    learn_by_hand(&mut h.dp, ip(LEARNED_V6), until);
}

/// A TCP segment from the client's port `sport` to `dst:443`.
fn seg(dst: &str, sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let src = if ip(dst).is_ipv4() {
        CLIENT_V4
    } else {
        CLIENT_V6
    };
    let mut p = Packet::tcp(ip(src), ip(dst), 443);
    p.sport = sport;
    p.seq = seq;
    p.tcp_flags = flags;
    p.payload_bytes = Some(payload.to_vec());
    p.build()
}

/// One connection: its SYN at `isn`, then data segments placed by stream offset.
struct Conn<'a> {
    h: &'a Harness,
    dst: &'static str,
    sport: u16,
    isn: u32,
}

impl<'a> Conn<'a> {
    fn open(h: &'a Harness, dst: &'static str, sport: u16) -> Self {
        let c = Self {
            h,
            dst,
            sport,
            isn: 0xffff_ff00, // the stream wraps the sequence space early on
        };
        assert_eq!(c.syn(&[]), PASS, "the SYN to a learned address passes");
        assert_eq!(c.bare(), PASS, "the handshake's ACK passes");
        c
    }

    fn syn(&self, data: &[u8]) -> i32 {
        self.h
            .egress(&seg(self.dst, self.sport, self.isn, TCP_SYN, data))
    }

    fn bare(&self) -> i32 {
        self.h.egress(&seg(
            self.dst,
            self.sport,
            self.isn.wrapping_add(1),
            TCP_ACK,
            &[],
        ))
    }

    /// `bytes` at stream offset `at` (0 = the first byte after the SYN).
    fn data(&self, at: usize, bytes: &[u8]) -> i32 {
        self.data_flags(at, bytes, PSH_ACK)
    }

    fn data_flags(&self, at: usize, bytes: &[u8], flags: u8) -> i32 {
        let seq = self.isn.wrapping_add(1).wrapping_add(at as u32);
        self.h.egress(&seg(self.dst, self.sport, seq, flags, bytes))
    }
}

fn hello(name: &str) -> Vec<u8> {
    ClientHello::new(name).build()
}

/// A ClientHello of about 3 KB whose name comes last: split, the name is only in the last
/// segment.
fn big_hello(name: &str) -> Vec<u8> {
    let mut c = ClientHello::new(name);
    c.padding = 2600;
    c.build()
}

#[test]
fn a_whole_client_hello_naming_an_allowed_server_admits_the_connection() {
    let h = harness("");
    let c = Conn::open(&h, LEARNED, 40_001);
    let ch = hello("cgr.dev");
    assert_eq!(c.data(0, &ch), PASS);
    assert_eq!(h.counter(counters::PASS_TLS_SNI), 1);
    // The rest of the connection takes the flow table, whatever it carries.
    assert_eq!(c.data(ch.len(), b"application data"), PASS);
    assert_eq!(h.counter(counters::PASS_FLOW), 1);
    // Case, a trailing dot, a wildcard's subdomain, IPv6.
    for (i, name) in ["CGR.Dev.", "a.example.org", "x.y.example.org"]
        .iter()
        .enumerate()
    {
        let c = Conn::open(&h, LEARNED, 40_100 + i as u16);
        assert_eq!(c.data(0, &hello(name)), PASS, "{name}");
    }
    let c6 = Conn::open(&h, LEARNED_V6, 40_200);
    assert_eq!(c6.data(0, &hello("cgr.dev")), PASS, "IPv6");
    assert_eq!(h.counter(counters::PASS_TLS_SNI), 5);
    // Each flow remembers the policy name, or the wildcard's suffix, that admitted it.
    let cfg = h.dp.config().unwrap();
    let hash = |n: &str| egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, n).0;
    let mut rules: Vec<u64> = h.dp.flows().unwrap().iter().map(|(_, v)| v.rule).collect();
    rules.sort_unstable();
    let mut want = vec![hash("cgr.dev"), hash("cgr.dev"), hash("cgr.dev")];
    want.extend([hash("example.org"), hash("example.org")]);
    want.sort_unstable();
    assert_eq!(rules, want);
}

#[test]
fn a_server_name_the_policy_does_not_allow_is_dropped_with_everything_after_it() {
    let h = harness("");
    for (i, name) in [
        "mirror.test",
        "example.org",
        "cgr.dev.evil.test",
        "evil-cgr.dev",
    ]
    .iter()
    .enumerate()
    {
        let c = Conn::open(&h, LEARNED, 41_000 + i as u16);
        let ch = hello(name);
        assert_eq!(c.data(0, &ch), DROP, "{name}");
        // The retransmission, and anything later on the connection.
        assert_eq!(c.data(0, &ch), DROP, "{name} resent");
        assert_eq!(
            c.data(ch.len(), b"GET / HTTP/1.1\r\n\r\n"),
            DROP,
            "{name} later data"
        );
    }
    assert_eq!(h.counter(counters::DENY_TLS_SNI), 4);
    assert_eq!(h.counter(counters::DENY_TLS_DENIED_FLOW), 8);
    assert_eq!(h.counter(counters::PASS_TLS_SNI), 0);
    let c6 = Conn::open(&h, LEARNED_V6, 41_100);
    assert_eq!(c6.data(0, &hello("mirror.test")), DROP, "IPv6");
}

#[test]
fn no_server_name_plain_bytes_and_malformed_hellos_are_dropped() {
    let h = harness("");
    let mut none = ClientHello::new("x");
    none.sni = None;
    let mut cut = hello("cgr.dev");
    let n = cut.len();
    cut[n - 12] ^= 0xff; // the name list's length no longer adds up
    let cases: [(&str, Vec<u8>, u32); 5] = [
        ("no server_name", none.build(), counters::DENY_TLS_NO_SNI),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: cgr.dev\r\n\r\n".to_vec(),
            counters::DENY_TLS_NOT_HELLO,
        ),
        (
            "SSH",
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
            counters::DENY_TLS_NOT_HELLO,
        ),
        ("broken name list", cut, counters::DENY_TLS_MALFORMED),
        (
            "empty label",
            hello("cgr..dev"),
            counters::DENY_TLS_MALFORMED,
        ),
    ];
    for (i, (what, bytes, counter)) in cases.iter().enumerate() {
        let c = Conn::open(&h, LEARNED, 42_000 + i as u16);
        assert_eq!(c.data(0, bytes), DROP, "{what}");
        let so_far = cases[..=i].iter().filter(|c| c.2 == *counter).count();
        assert_eq!(h.counter(*counter), so_far as u64, "{what}");
    }
}

#[test]
fn a_split_client_hello_passes_its_prefix_and_is_judged_on_the_segment_that_completes_it() {
    let h = harness("");
    for (i, (name, verdict)) in [("registry.example.org", PASS), ("mirror.test", DROP)]
        .into_iter()
        .enumerate()
    {
        let ch = big_hello(name);
        let c = Conn::open(&h, LEARNED, 43_000 + i as u16);
        assert_eq!(
            c.data(0, &ch[..1400]),
            PASS,
            "{name}: first segment, a proper prefix"
        );
        assert_eq!(
            c.data(1400, &ch[1400..2600]),
            PASS,
            "{name}: second, still a prefix"
        );
        assert_eq!(
            c.data(2600, &ch[2600..]),
            verdict,
            "{name}: the last one is judged"
        );
        // After the verdict, a resend of the whole ClientHello gets the same answer.
        assert_eq!(c.data(0, &ch), verdict, "{name}: resent whole");
    }
    assert_eq!(h.counter(counters::PASS_TLS_PREFIX), 4);
    assert_eq!(h.counter(counters::DENY_TLS_SNI), 1);
    assert_eq!(h.counter(counters::PASS_TLS_SNI), 1);
}

#[test]
fn reordered_resent_and_overlapping_segments_never_let_a_denied_client_hello_complete() {
    let h = harness("");
    let ch = big_hello("mirror.test");
    let c = Conn::open(&h, LEARNED, 44_000);
    // The segment with the name first: bytes are missing before it.
    assert_eq!(c.data(1400, &ch[1400..]), DROP, "a gap");
    assert_eq!(h.counter(counters::TLS_GAP), 1);
    assert_eq!(c.data(0, &ch[..1400]), PASS, "the first segment");
    assert_eq!(
        c.data(0, &ch[..1000]),
        PASS,
        "a resend of bytes that passed"
    );
    // Overlapping what passed and bringing the rest: judged, denied.
    assert_eq!(c.data(1000, &ch[1000..]), DROP, "the overlap completes it");
    assert_eq!(c.data(1400, &ch[1400..]), DROP, "the missing part, again");
    assert_eq!(c.data(0, &ch), DROP, "collapsed into one retransmission");
    // A segment before the stream start, and one far ahead.
    let c2 = Conn::open(&h, LEARNED, 44_001);
    let seq_before = c2.isn; // the SYN's own sequence number
    assert_eq!(
        h.egress(&seg(LEARNED, 44_001, seq_before, PSH_ACK, &ch)),
        DROP,
        "data at the SYN's sequence number"
    );
    assert_eq!(c2.data(70_000, &ch), DROP, "far ahead");
    assert_eq!(c2.data(0, &hello("cgr.dev")), PASS, "then the real stream");
}

#[test]
fn a_new_syn_on_an_admitted_tuple_is_judged_again_and_a_resent_one_is_not() {
    // One CPU, so the admitted flow is in the flow cache the reused tuple's segments look at:
    // the SYN that reopens the tuple must empty it (`FLOW_EPOCH`), within its window.
    egress_tests::harness::pin_to_cpu(0);
    let h = harness("");
    let c = Conn::open(&h, LEARNED, 45_000);
    let ch = hello("cgr.dev");
    assert_eq!(c.data(0, &ch), PASS);
    // The same SYN again (its ISN): the admitted connection goes on.
    assert_eq!(c.syn(&[]), PASS);
    assert_eq!(
        c.data(ch.len(), b"more"),
        PASS,
        "a retransmitted SYN keeps the admission"
    );
    assert!(h.cached_flow(0).is_some(), "the admitted flow is cached");
    // The same 5-tuple reused with another initial sequence number: judged again.
    let again = Conn { isn: 77, ..c };
    assert_eq!(again.syn(&[]), PASS);
    assert_eq!(again.data(0, &hello("mirror.test")), DROP);
    assert_eq!(again.data(4000, b"more"), DROP);
}

/// The LRU evicts a flow without changing `FLOW_EPOCH`, and a CPU may still cache it: the SYN
/// that reopens its tuple changes the epoch anyway, so the new connection's ClientHello is
/// judged, not passed from the cache as the old connection's.
#[test]
fn a_reopened_tuple_whose_flow_was_evicted_is_judged_again() {
    egress_tests::harness::pin_to_cpu(0);
    let h = harness("");
    let c = Conn::open(&h, LEARNED, 45_100);
    let ch = hello("cgr.dev");
    assert_eq!(c.data(0, &ch), PASS);
    assert_eq!(c.data(ch.len(), b"more"), PASS);
    let key = egress_tests::harness::tcp_flow_key(CLIENT_V4, LEARNED, 45_100, 443);
    assert_eq!(h.cached_flow(0), Some(key.words()), "the flow is cached");
    h.evict_flow(&key);
    let again = Conn { isn: 77, ..c };
    assert_eq!(again.syn(&[]), PASS);
    assert_eq!(
        again.data(0, &hello("mirror.test")),
        DROP,
        "the reopened tuple's ClientHello passed from the cache"
    );
}

#[test]
fn payload_on_a_connection_egress_never_saw_open_is_dropped() {
    let h = harness("");
    assert_eq!(
        h.egress(&seg(LEARNED, 46_000, 5000, PSH_ACK, &hello("cgr.dev"))),
        DROP
    );
    assert_eq!(h.counter(counters::DENY_TLS_UNKNOWN), 1);
    // Without payload it passes (nothing a server acts on).
    assert_eq!(h.egress(&seg(LEARNED, 46_000, 5000, TCP_ACK, &[])), PASS);
    assert_eq!(h.counter(counters::PASS_TLS_BARE), 1);
}

#[test]
fn tcp_fast_open_data_is_the_client_hello() {
    let h = harness("");
    let allowed = Conn {
        h: &h,
        dst: LEARNED,
        sport: 47_000,
        isn: 1,
    };
    assert_eq!(allowed.syn(&hello("cgr.dev")), PASS);
    assert_eq!(allowed.data(hello("cgr.dev").len(), b"data"), PASS);
    let denied = Conn {
        sport: 47_001,
        ..allowed
    };
    assert_eq!(denied.syn(&hello("mirror.test")), DROP);
    // The client falls back to a plain SYN and sends the ClientHello after the handshake.
    let fallback = Conn { isn: 9, ..denied };
    assert_eq!(fallback.syn(&[]), PASS);
    assert_eq!(fallback.data(0, &hello("mirror.test")), DROP);
    // A SYN carrying only the start of a ClientHello.
    let partial = Conn {
        sport: 47_002,
        isn: 20,
        ..allowed
    };
    let ch = big_hello("cgr.dev");
    assert_eq!(partial.syn(&ch[..1000]), PASS);
    assert_eq!(partial.data(1000, &ch[1000..]), PASS);
    assert_eq!(h.counter(counters::PASS_TLS_SNI), 2);
    // The SYN-ACK of an admitted SYN with data is late: Linux resends the SYN, without the
    // data, with the same ISN; the server acknowledged the data, so the next bytes follow it.
    let late = Conn {
        sport: 47_003,
        isn: 40,
        ..allowed
    };
    let small = hello("cgr.dev");
    assert_eq!(late.syn(&small), PASS);
    assert_eq!(late.syn(&[]), PASS, "the resent SYN");
    assert_eq!(
        late.data(small.len(), b"GET /"),
        PASS,
        "the connection goes on"
    );
}

#[test]
fn urgent_data_cannot_be_judged_and_is_dropped() {
    let h = harness("");
    let c = Conn::open(&h, LEARNED, 48_000);
    assert_eq!(c.data_flags(0, &hello("cgr.dev"), PSH_ACK | URG), DROP);
    assert_eq!(h.counter(counters::DENY_TLS_MALFORMED), 1);
}

#[test]
fn static_cidrs_and_other_ports_are_judged_by_address_alone() {
    let h = harness("");
    let c = Conn::open(&h, ALLOWED_V4, 49_000);
    assert_eq!(c.data(0, b"no TLS at all"), PASS, "static CIDR");
    // 8443 is enforced but not a TLS port (tls.ports defaults to 443).
    let mut p = Packet::tcp(ip(CLIENT_V4), ip(LEARNED), 8443);
    assert_eq!(h.egress(&p.build()), PASS);
    p.tcp_flags = PSH_ACK;
    p.seq = 2;
    p.payload_bytes = Some(b"plain".to_vec());
    assert_eq!(h.egress(&p.build()), PASS);
    assert_eq!(h.counter(counters::DENY_TLS_NOT_HELLO), 0);
    // Listed in tls.ports, it is judged.
    let h = harness("tls:\n  ports: [443, 8443]\n");
    let mut syn = Packet::tcp(ip(CLIENT_V4), ip(LEARNED), 8443);
    assert_eq!(h.egress(&syn.build()), PASS);
    syn.tcp_flags = PSH_ACK;
    syn.seq = 2;
    syn.payload_bytes = Some(b"plain".to_vec());
    assert_eq!(h.egress(&syn.build()), DROP);
}

#[test]
fn quic_to_a_learned_address_is_denied_unless_the_policy_says_address() {
    let quic = |h: &Harness, dst: &str| {
        let mut p = Packet::udp(ip(CLIENT_V4), ip(dst), 443);
        p.payload = 1200;
        assert_eq!(p.proto, IPPROTO_UDP);
        h.egress(&p.build())
    };
    let h = harness("");
    assert_eq!(quic(&h, LEARNED), DROP);
    assert_eq!(quic(&h, ALLOWED_V4), PASS, "a static CIDR");
    assert_eq!(h.counter(counters::DENY_QUIC), 1);
    let h = harness("tls:\n  quic: address\n");
    assert_eq!(quic(&h, LEARNED), PASS);
    assert_eq!(quic(&h, LEARNED), PASS, "then the flow");
}

#[test]
fn audit_passes_and_counts_what_enforce_would_drop() {
    for tls in ["tls:\n  sni: audit\n", "mode: audit\n"] {
        let h = harness(tls);
        let c = Conn::open(&h, LEARNED, 50_000);
        let ch = hello("mirror.test");
        assert_eq!(c.data(0, &ch), PASS, "{tls}");
        assert_eq!(c.data(ch.len(), b"data"), PASS, "{tls}: the flow goes on");
        assert_eq!(h.counter(counters::DENY_TLS_SNI), 1, "{tls}");
        assert_eq!(h.counter(counters::AUDIT_DENIED), 1, "{tls}");
        assert_eq!(h.counter(counters::DROP_DENIED), 0, "{tls}");
    }
}

#[test]
fn with_sni_off_a_learned_address_is_judged_by_address_and_a_reload_switches() {
    let mut h = harness("tls:\n  sni: off\n");
    let c = Conn::open(&h, LEARNED, 51_000);
    assert_eq!(c.data(0, b"anything"), PASS);
    // Turned on: a new connection must name an allowed server. (A reload revokes addresses
    // no answer justifies, as these learned by hand: learned again.)
    h.reapply(&policy(""));
    relearn(&mut h);
    let c = Conn::open(&h, LEARNED, 51_001);
    assert_eq!(c.data(0, b"anything"), DROP);
    // Turned off again while a connection waits for its ClientHello: it goes by address.
    let isn = Conn::open(&h, LEARNED, 51_002).isn;
    h.reapply(&policy("tls:\n  sni: off\n"));
    relearn(&mut h);
    let waiting = Conn {
        h: &h,
        dst: LEARNED,
        sport: 51_002,
        isn,
    };
    assert_eq!(waiting.data(0, b"anything"), PASS);
}

#[test]
fn evicted_held_bytes_fail_closed() {
    let mut h =
        Harness::with_capacities(&policy(""), &[(egress_common::maps::names::TLS_PARTIAL, 2)]);
    learn_by_hand(&mut h.dp, ip(LEARNED), clock::boot_ns() + 60_000_000_000);
    let ch = big_hello("cgr.dev");
    let victim = Conn::open(&h, LEARNED, 52_000);
    assert_eq!(victim.data(0, &ch[..1400]), PASS);
    // Two newer split ClientHellos push the victim's held bytes out of the LRU.
    for sport in [52_001, 52_002, 52_003] {
        let c = Conn::open(&h, LEARNED, sport);
        assert_eq!(c.data(0, &ch[..1400]), PASS);
    }
    assert_eq!(
        victim.data(1400, &ch[1400..]),
        DROP,
        "judged without its first bytes: never"
    );
    assert_eq!(h.counter(counters::TLS_PARTIAL_LOST), 1);
}

#[test]
fn ip_first_fragments_cannot_be_judged() {
    let h = harness("");
    let c = Conn::open(&h, LEARNED, 53_000);
    let mut p = Packet::tcp(ip(CLIENT_V4), ip(LEARNED), 443);
    p.sport = 53_000;
    p.seq = c.isn.wrapping_add(1);
    p.tcp_flags = PSH_ACK;
    p.more_fragments = true;
    p.payload_bytes = Some(hello("cgr.dev"));
    assert_eq!(h.egress(&p.build()), DROP);
    let c6 = Conn::open(&h, LEARNED_V6, 53_001);
    let mut p6 = Packet::tcp(ip(CLIENT_V6), ip(LEARNED_V6), 443);
    p6.sport = 53_001;
    p6.seq = c6.isn.wrapping_add(1);
    p6.tcp_flags = PSH_ACK;
    p6.v6_ext = vec![44];
    p6.more_fragments = true;
    p6.payload_bytes = Some(hello("cgr.dev"));
    assert_eq!(h.egress(&p6.build()), DROP);
    assert_eq!(h.counter(counters::DENY_TLS_MALFORMED), 2);
    // A first fragment holding only the TCP header: its payload comes in later fragments.
    let c3 = Conn::open(&h, LEARNED, 53_002);
    let mut bare = Packet::tcp(ip(CLIENT_V4), ip(LEARNED), 443);
    bare.sport = 53_002;
    bare.seq = c3.isn.wrapping_add(1);
    bare.tcp_flags = PSH_ACK;
    bare.more_fragments = true;
    bare.payload_bytes = Some(Vec::new());
    assert_eq!(h.egress(&bare.build()), DROP, "a bare first fragment");
}

#[test]
fn a_reload_to_audit_lets_a_denied_connection_through() {
    let mut h = harness("");
    let ch = hello("mirror.test");
    let isn = {
        let c = Conn::open(&h, LEARNED, 54_000);
        assert_eq!(c.data(0, &ch), DROP);
        c.isn
    };
    h.reapply(&policy("tls:\n  sni: audit\n"));
    relearn(&mut h);
    let c = Conn {
        h: &h,
        dst: LEARNED,
        sport: 54_000,
        isn,
    };
    assert_eq!(
        c.data(0, &ch),
        PASS,
        "audit drops nothing, a connection denied before included"
    );
}

#[test]
fn a_packet_without_ports_to_a_learned_address_passes_only_by_static_cidr_or_audit() {
    let tiny = |dst: &str| {
        // A first fragment too short for the TCP header: the ports are unknown.
        let mut p = Packet::tcp(ip(CLIENT_V4), ip(dst), 443);
        p.transport_len = Some(8);
        p.more_fragments = true;
        p.build()
    };
    let h = harness("");
    assert_eq!(
        h.egress(&tiny(LEARNED)),
        DROP,
        "learned: it cannot carry a judged ClientHello"
    );
    assert_eq!(h.egress(&tiny(ALLOWED_V4)), PASS, "static");
    let h = harness("tls:\n  sni: audit\n");
    assert_eq!(
        h.egress(&tiny(LEARNED)),
        PASS,
        "tls.sni: audit reports it and lets it through"
    );
    assert_eq!(h.counter(counters::AUDIT_DENIED), 1);
    let h = harness("tls:\n  sni: off\n");
    assert_eq!(h.egress(&tiny(LEARNED)), PASS, "by address");
}

#[test]
fn an_admitted_connection_whose_flow_was_evicted_is_recorded_again() {
    let mut h = Harness::with_capacities(&policy(""), &[(egress_common::maps::names::FLOWS, 2)]);
    relearn(&mut h);
    let ch = hello("cgr.dev");
    let first = Conn::open(&h, LEARNED, 55_000);
    assert_eq!(first.data(0, &ch), PASS);
    // Newer connections push its flow out of a two-entry flow table.
    for sport in [55_001, 55_002, 55_003] {
        assert_eq!(Conn::open(&h, LEARNED, sport).data(0, &ch), PASS);
    }
    let before = h.counter(counters::PASS_TLS_SNI);
    assert_eq!(
        first.data(ch.len(), b"more"),
        PASS,
        "forwarded traffic: no socket to fall back on"
    );
    assert_eq!(
        h.counter(counters::PASS_TLS_SNI),
        before + 1,
        "recorded again from its entry"
    );
    assert_eq!(first.data(ch.len() + 4, b"and more"), PASS);
}
