//! DNS-driven allowlisting end to end: a real resolver (dnsmasq), a real TLS server (nginx),
//! curl and the system resolver in the client namespace, and the real agent on its NIC.

use std::{net::UdpSocket, path::Path, time::Duration};

use egress_common::counters;
use egress_tests::{
    Agent, TestPins, echo_once, ip,
    live::{
        PlayedResolver, RACE_FIRST, RESOLVER_V4, RESOLVER_V6, WEB_CDN, WEB_CGR, WEB_DENIED, WEB_R2,
        WEB_R2_APEX, World, WorldOptions, inject_from, policy, tls_exchange, tls_open,
    },
};
use hickory_proto::rr::RecordType;

const MAX: Duration = Duration::from_secs(3);

fn start(opts: WorldOptions, dns: &str) -> (World, TestPins, Agent) {
    let world = World::new(opts).expect("world");
    let pins = TestPins::new();
    let agent = Agent::start(&world.topo, &pins, &policy(dns), &[]).expect("agent");
    (world, pins, agent)
}

fn learned(agent: &Agent, addr: &str) -> bool {
    agent
        .datapath()
        .learned()
        .unwrap()
        .iter()
        .any(|l| l.addr == ip(addr))
}

#[test]
fn allowed_name_works_first_time_denied_name_and_bare_ip_do_not() {
    let (w, _p, agent) = start(WorldOptions::default(), "  min_ttl: 5s\n");
    assert_eq!(
        w.curl("https://cgr.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    assert!(learned(&agent, WEB_CGR));
    assert_eq!(
        w.curl("https://denied.test/", &[], MAX),
        None,
        "a name not in the policy connected"
    );
    assert_eq!(
        w.curl(&format!("https://{WEB_DENIED}/"), &[], MAX),
        None,
        "a bare IP connected"
    );
    // An allowed name's address reached by IP: learned, but a TLS connection without a server
    // name is not admitted (`tls.sni: enforce`, the default; tls_live.rs has the rest).
    assert_eq!(w.curl(&format!("https://{WEB_CGR}/"), &[], MAX), None);
}

#[test]
fn a_cname_chain_across_zones() {
    let (w, _p, agent) = start(WorldOptions::default(), "  min_ttl: 5s\n");
    assert_eq!(
        w.curl("https://packages.wolfi.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    assert!(learned(&agent, WEB_CDN));
}

#[test]
fn wildcards_one_label_many_labels_and_not_the_apex() {
    let (w, _p, agent) = start(WorldOptions::default(), "  min_ttl: 5s\n");
    assert_eq!(
        w.curl("https://r2.cloudflarestorage.com/", &[], MAX),
        None,
        "the apex is not covered by *."
    );
    assert!(!learned(&agent, WEB_R2));
    assert!(!learned(&agent, WEB_R2_APEX));
    assert_eq!(
        w.curl("https://acct.r2.cloudflarestorage.com/", &[], MAX),
        Some(200)
    );
    assert_eq!(
        w.curl("https://a.b.c.r2.cloudflarestorage.com/", &[], MAX),
        Some(200)
    );
}

#[test]
fn aaaa_over_ipv6() {
    let (w, _p, agent) = start(
        WorldOptions {
            nameservers: vec![RESOLVER_V6],
            ..WorldOptions::default()
        },
        "  min_ttl: 5s\n",
    );
    assert_eq!(
        w.curl("https://cgr.dev/", &["-6"], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    assert!(learned(&agent, "2001:db8::10"));
}

#[test]
fn dns_over_tcp() {
    // `use-vc` makes the system resolver ask over TCP; the kernel follows the connection and
    // learns the answer, as over UDP.
    let (w, _p, agent) = start(
        WorldOptions {
            options: "use-vc",
            ..WorldOptions::default()
        },
        "  min_ttl: 5s\n",
    );
    assert_eq!(
        w.curl("https://cgr.dev/", &[], Duration::from_secs(5)),
        Some(200),
        "{}",
        agent.log_text()
    );
    assert!(learned(&agent, WEB_CGR));
    let counts = agent.datapath().counters().unwrap();
    assert!(counts[counters::DNS_TCP_SEGMENT as usize] > 0);
    assert!(
        counts[counters::DNS_ANSWER_LEARNED as usize] > 0,
        "the kernel learned nothing"
    );
}

#[test]
fn ttl_expiry_stops_new_connections_but_not_an_established_one() {
    let (w, _p, agent) = start(
        WorldOptions {
            ttl: 3,
            ..WorldOptions::default()
        },
        "  min_ttl: 1s\n  grace: 0s\n",
    );
    assert_eq!(
        w.curl("https://cgr.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    let mut conn = tls_open(&w.topo, WEB_CGR, "cgr.dev").expect("connect while learned");
    // Wait until the kernel's expiry has passed (read from the map, so a slow machine does not
    // turn this into a race), plus a little.
    let expires = agent
        .datapath()
        .learned()
        .unwrap()
        .into_iter()
        .find(|l| l.addr == ip(WEB_CGR))
        .expect("learned")
        .expires_ns;
    while egress_user::clock::boot_ns() < expires + 300_000_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.topo
            .connect(WEB_CGR, 443, Duration::from_millis(1500))
            .is_err(),
        "new connection after expiry"
    );
    // The connection, admitted by its ClientHello's name, goes on: bytes flow both ways.
    tls_exchange(&mut conn).expect("established connection cut by expiry");
    // Resolving again allows it again.
    assert_eq!(w.curl("https://cgr.dev/", &[], MAX), Some(200));
    let _ = echo_once;
}

/// Sends `payload` as a UDP datagram from `src:53` in the server namespace to the client, with a
/// raw socket, so the source can be any address (even the resolver's, whose port 53 dnsmasq owns).
fn inject(w: &World, src: &str, dst_port: u16, payload: Vec<u8>) {
    inject_from(&w.topo.server, src, dst_port, payload);
}

#[test]
fn spoofed_and_unsolicited_answers_teach_nothing() {
    let (w, _p, agent) = start(WorldOptions::default(), "  min_ttl: 5s\n");
    // A client socket waiting on a port, as a resolver client would be.
    let port = w
        .client()
        .run(|| UdpSocket::bind("0.0.0.0:40999").map(|s| (s.local_addr().unwrap().port(), s)))
        .unwrap();
    let answer = egress_tests::dnsmsg::response(
        0x4242,
        "cgr.dev.",
        RecordType::A,
        &[egress_tests::dnsmsg::Rr::Addr("cgr.dev.", WEB_DENIED, 300)],
    );
    let judged = || {
        let c = agent.datapath().counters().unwrap();
        (
            c[counters::DNS_UNTRUSTED as usize],
            c[counters::DNS_UNSOLICITED as usize],
        )
    };
    let before = judged();
    // From an address that is not a resolver.
    inject(&w, WEB_R2, port.0, answer.clone());
    // From the resolver's address, but answering no query the node sent.
    inject(&w, RESOLVER_V4, port.0, answer);
    // Judged (and refused) in the same program run that would have learned them.
    egress_tests::wait_for("both forged answers to be judged", || {
        let now = judged();
        now.0 > before.0 && now.1 > before.1
    });
    assert!(!learned(&agent, WEB_DENIED));
    assert_eq!(w.curl(&format!("https://{WEB_DENIED}/"), &[], MAX), None);
}

/// Malformed answers that reach the walker: each answers a query the client really sent (id,
/// port, question of an allowed name), so it passes every check before the walk, and its
/// answer section is cut short inside its second address. Every one is counted malformed, none
/// teaches anything, and learning goes on afterwards.
#[test]
fn a_flood_of_malformed_answers_teaches_nothing_and_stalls_nothing() {
    use egress_tests::dnsmsg::{Rr, response};
    const N: u16 = 2_000;
    let w = PlayedResolver::new("app.example");
    let count = |c: u32| w.agent.datapath().counters().unwrap()[c as usize];
    let (malformed, unsolicited) = (
        count(counters::DNS_MALFORMED),
        count(counters::DNS_UNSOLICITED),
    );
    for id in 0..N {
        w.ask(id, "app.example.");
        // A whole first record, then a second cut short: a walker that learned before it
        // validated would learn the first.
        let mut m = response(
            id,
            "app.example.",
            RecordType::A,
            &[
                Rr::Addr("app.example.", WEB_DENIED, 60),
                Rr::Addr("app.example.", "198.51.100.99", 60),
            ],
        );
        m.truncate(m.len() - 1 - usize::from(id % 3));
        w.answer(m);
    }
    assert_eq!(
        count(counters::DNS_MALFORMED) - malformed,
        u64::from(N),
        "not every malformed answer reached the walker"
    );
    assert_eq!(count(counters::DNS_UNSOLICITED) - unsolicited, 0);
    assert!(!learned(&w.agent, WEB_DENIED), "a malformed answer taught");
    // Learning goes on: a whole answer is learned.
    w.resolve(0x7777, "app.example.", WEB_DENIED);
    egress_tests::wait_for("the whole answer to be learned", || {
        learned(&w.agent, WEB_DENIED)
    });
    egress_tests::wait_for("readiness", || {
        egress_tests::http_get(&w.topo.client, "/readyz").is_some_and(|r| r.0 == 200)
    });
}

#[test]
fn the_race_resolve_then_connect_at_once_never_waits() {
    race(WorldOptions::default(), counters::DNS_ANSWER_LEARNED);
}

/// The same race over DNS over TCP (glibc's `use-vc`): each lookup opens a connection to the
/// resolver, and the answer in one segment is learned by the kernel before the socket gets it.
#[test]
fn the_race_over_tcp_never_waits_either() {
    let opts = WorldOptions {
        options: "use-vc",
        ..WorldOptions::default()
    };
    race(opts, counters::DNS_TCP_SEGMENT);
}

/// 1,000 fresh names resolved and connected at once: no first SYN dropped, none retransmitted,
/// none slower than 200 ms; `path` (a counter) must move, proving the path taken.
fn race(opts: WorldOptions, path: u32) {
    let (w, _p, agent) = start(opts, "  min_ttl: 5s\n");
    let race = Path::new(env!("CARGO_BIN_EXE_egress-race"));
    let count = |a: &Agent, c: u32| a.datapath().counters().unwrap()[c as usize];
    let (drops0, path0) = (count(&agent, counters::DROP_DENIED), count(&agent, path));
    let retrans0 = w.client().tcp_ext("TCPSynRetrans");
    let out = w
        .run_in_client(race, &["1000", "race.test", "200", RACE_FIRST])
        .unwrap();
    // What the claim says: no first SYN was dropped, so none was sent again. The timings are
    // information (a dropped SYN costs a 1 s retransmission).
    assert_eq!(
        count(&agent, counters::DROP_DENIED) - drops0,
        0,
        "the NIC dropped packets of allowed names"
    );
    assert!(
        count(&agent, path) - path0 >= 1000,
        "the answers took another path"
    );
    eprintln!("race: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["unresolved"], 0, "{out}");
    // Every name had an address of its own, so every connect was the first to its address.
    assert_eq!(v["wrong_address"], 0, "{out}");
    assert_eq!(v["connected"], 1000, "{out}");
    assert_eq!(v["failed"], 0, "{out}\n{}", agent.log_text());
    assert_eq!(v["slow"], 0, "connects slower than 200 ms: {out}");
    assert_eq!(
        w.client().tcp_ext("TCPSynRetrans") - retrans0,
        0,
        "SYNs were retransmitted"
    );
    let _ = RESOLVER_V6;
}

#[test]
fn a_chain_ending_in_a_cname_allows_the_target_for_the_follow_up_query() {
    use egress_tests::dnsmsg::{Rr, response};
    let w = PlayedResolver::new("app.example");
    let (topo, agent, port) = (&w.topo, &w.agent, w.port);
    let ask = |id: u16, name: &str| w.ask(id, name);

    // Before: an answer for the target teaches nothing.
    let not_allowed0 = agent.datapath().counters().unwrap()[counters::DNS_NOT_ALLOWED as usize];
    ask(0x1000, "edge.other.test.");
    inject_from(
        &topo.server,
        RESOLVER_V4,
        port,
        response(
            0x1000,
            "edge.other.test.",
            RecordType::A,
            &[Rr::Addr("edge.other.test.", WEB_DENIED, 60)],
        ),
    );
    egress_tests::wait_for("the answer for the target to be judged", || {
        agent.datapath().counters().unwrap()[counters::DNS_NOT_ALLOWED as usize] > not_allowed0
    });
    assert!(!learned(agent, WEB_DENIED));

    // The allowed name's answer ends in a CNAME without addresses.
    ask(0x1111, "app.example.");
    inject_from(
        &topo.server,
        RESOLVER_V4,
        port,
        response(
            0x1111,
            "app.example.",
            RecordType::A,
            &[Rr::Cname("app.example.", "edge.other.test.", 60)],
        ),
    );
    w.wait_for_cname_target();
    // The follow-up query for the target is learned by the kernel.
    ask(0x2222, "edge.other.test.");
    inject_from(
        &topo.server,
        RESOLVER_V4,
        port,
        response(
            0x2222,
            "edge.other.test.",
            RecordType::A,
            &[Rr::Addr("edge.other.test.", WEB_DENIED, 60)],
        ),
    );
    egress_tests::wait_for("the target's address to be learned", || {
        learned(agent, WEB_DENIED)
    });
    topo.connect(WEB_DENIED, 443, MAX)
        .expect("the CNAME target's address connects");
}

/// Every matched answer is copied to the agent, allowed or not (it records which name answered
/// each address). With the agent stopped, 2,000 answers for names the policy does not allow
/// arrive, then one allowed answer whose chain ends in a CNAME without addresses: the ring must
/// still hold that copy (records are sized to the message; fixed 4 KiB records held ~1,000),
/// so when the agent resumes it allows the target.
#[test]
fn a_burst_of_answers_the_agent_only_records_does_not_crowd_out_a_dangling_cname() {
    use egress_tests::dnsmsg::{Rr, response};
    let w = PlayedResolver::new("app.example");
    let pid = nix::unistd::Pid::from_raw(w.agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for i in 0..2000u16 {
        let name = format!("n{i}.denied.test.");
        w.ask(i, &name);
        w.answer(response(
            i,
            &name,
            RecordType::A,
            &[Rr::Addr(&name, WEB_DENIED, 60)],
        ));
    }
    w.ask(0x9999, "app.example.");
    w.answer(response(
        0x9999,
        "app.example.",
        RecordType::A,
        &[Rr::Cname("app.example.", "edge.other.test.", 60)],
    ));
    let counters = w.agent.datapath().counters().unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(
        counters[counters::DNS_EVENT_LOST as usize],
        0,
        "copies lost to a full ring"
    );
    assert!(
        counters[counters::DNS_NOT_ALLOWED as usize] >= 2000,
        "the burst was not matched: {counters:?}"
    );
    w.wait_for_cname_target();
}

/// The kernel wakes the agent only for the copies it must act on at once. With the agent's timed
/// read stretched to an hour: a copy of an answer the kernel learned whole stays unread (its
/// record does not appear), and the next copy the agent must act on (a chain ending in a CNAME
/// without addresses) wakes it, and it reads both. Fails if every copy woke the agent, or if
/// the urgent one did not (the default wake-up skips a ring with unread records).
#[test]
fn only_copies_the_agent_must_act_on_wake_it() {
    use egress_tests::dnsmsg::{Rr, response};
    let w = PlayedResolver::with_env(
        "app.example, whole.example",
        &[("EGRESS_TEST_DNS_READ_PERIOD_MS", "3600000")],
    );
    // Let the agent's first timed read (at start) pass.
    std::thread::sleep(Duration::from_millis(300));
    w.ask(0x0101, "whole.example.");
    w.answer(response(
        0x0101,
        "whole.example.",
        RecordType::A,
        &[Rr::Addr("whole.example.", WEB_DENIED, 60)],
    ));
    egress_tests::wait_for("the kernel to learn the address", || {
        learned(&w.agent, WEB_DENIED)
    });
    std::thread::sleep(Duration::from_millis(500));
    let recorded = || w.agent.datapath().answer_name(ip(WEB_DENIED)).is_some();
    assert!(
        !recorded(),
        "a copy of an answer the kernel learned whole woke the agent"
    );
    w.ask(0x0202, "app.example.");
    w.answer(response(
        0x0202,
        "app.example.",
        RecordType::A,
        &[Rr::Cname("app.example.", "edge.other.test.", 60)],
    ));
    w.wait_for_cname_target();
    egress_tests::wait_for("the earlier copy to be read with it", recorded);
}
