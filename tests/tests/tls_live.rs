//! TLS server names end to end: nginx serving `cgr.dev` on an address `mirror.test` shares (as
//! names on one CDN front-end do), curl, openssl and a raw client in the client namespace, and
//! the real agent on its NIC. A denied name is proved denied by the server never answering.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use egress_common::{counters, testing::ClientHello};
use egress_tests::{
    Agent, TestPins, ip,
    live::{WEB_CGR, WEB_CGR_V6, World, WorldOptions, policy},
    sh, wait_for,
};

const MAX: Duration = Duration::from_secs(3);

fn start(tls: &str) -> (World, TestPins, Agent) {
    let world = World::new(WorldOptions::default()).expect("world");
    let pins = TestPins::new();
    let text = format!("{}{tls}", policy("  min_ttl: 30s\n"));
    let agent = Agent::start(&world.topo, &pins, &text, &[]).expect("agent");
    // cgr.dev's address is learned by the first connection to it.
    assert_eq!(
        world.curl("https://cgr.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    (world, pins, agent)
}

fn counter(agent: &Agent, c: u32) -> u64 {
    agent.datapath().counters().unwrap()[c as usize]
}

fn resolve_to_cgr(name: &str) -> String {
    format!("{name}:443:{WEB_CGR}")
}

fn run_egress(args: &[&str], pins: &TestPins) -> String {
    egress_tests::egress_ok_at(args, pins)
}

/// `openssl s_client` from the client namespace: whether the TLS handshake completed.
fn openssl(w: &World, args: &[&str]) -> bool {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &w.client().name,
            "timeout",
            "3",
            "openssl",
            "s_client",
            "-brief",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stderr).contains("CONNECTION ESTABLISHED")
}

/// Connects from the client namespace to `addr`, writes `pieces` one by one (each its own
/// segment: no Nagle, a pause between) and returns the first byte the server answered within
/// `wait` (22, a handshake record, for a ClientHello it takes): a TLS server answers only a
/// complete ClientHello.
fn server_answers(w: &World, addr: SocketAddr, pieces: Vec<Vec<u8>>, wait: Duration) -> Option<u8> {
    w.client().run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, MAX) else {
            return None;
        };
        s.set_nodelay(true).unwrap();
        for p in &pieces {
            if s.write_all(p).is_err() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => Some(buf[0]),
            _ => None,
        }
    })
}

/// Drops a third of the client's data segments to 443 on their way into the server namespace,
/// after egress passed them (nftables' prerouting hook: no netem on this machine).
fn lose_a_third(w: &World) {
    for rule in [
        "add table inet loss",
        "add chain inet loss pre { type filter hook prerouting priority -300 ; }",
        "add rule inet loss pre tcp dport 443 meta length gt 100 numgen random mod 3 0 drop",
    ] {
        let ok = Command::new("ip")
            .args(["netns", "exec", &w.topo.server.name, "nft", rule])
            .status()
            .expect("nft");
        assert!(ok.success(), "nft {rule}");
    }
}

/// The first byte of a TLS handshake record: the server took the ClientHello.
const HANDSHAKE: Option<u8> = Some(22);

fn cgr(port: u16) -> SocketAddr {
    SocketAddr::new(ip(WEB_CGR), port)
}

/// A ClientHello of about 3 KB whose name comes last, in three pieces.
fn pieces(name: &str) -> Vec<Vec<u8>> {
    let mut c = ClientHello::new(name);
    c.padding = 2600;
    let b = c.build();
    vec![
        b[..1000].to_vec(),
        b[1000..2000].to_vec(),
        b[2000..].to_vec(),
    ]
}

#[test]
fn another_name_on_an_allowed_address_is_dropped_by_its_server_name() {
    let (w, pins, agent) = start("");
    // The shared address answers for cgr.dev, by name or by address with the name.
    let cgr = resolve_to_cgr("cgr.dev");
    assert_eq!(
        w.curl("https://cgr.dev/", &["--resolve", &cgr], MAX),
        Some(200)
    );
    assert_eq!(
        w.curl("https://CGR.DEV./", &[], MAX),
        Some(200),
        "case and trailing dot"
    );
    assert!(openssl(
        &w,
        &[
            "-connect",
            &format!("{WEB_CGR}:443"),
            "-servername",
            "cgr.dev"
        ]
    ));
    // mirror.test shares the address: by DNS, by --resolve, by openssl.
    let mirror = resolve_to_cgr("mirror.test");
    assert_eq!(
        w.curl("https://mirror.test/", &[], MAX),
        None,
        "mirror.test by DNS"
    );
    assert_eq!(
        w.curl("https://mirror.test/", &["--resolve", &mirror], MAX),
        None
    );
    assert!(!openssl(
        &w,
        &[
            "-connect",
            &format!("{WEB_CGR}:443"),
            "-servername",
            "mirror.test"
        ]
    ));
    // No server name at all: an IP literal, or openssl told to send none.
    assert_eq!(
        w.curl(&format!("https://{WEB_CGR}/"), &[], MAX),
        None,
        "a bare address"
    );
    assert!(!openssl(
        &w,
        &["-connect", &format!("{WEB_CGR}:443"), "-noservername"]
    ));
    assert!(counter(&agent, counters::DENY_TLS_SNI) >= 3);
    assert!(counter(&agent, counters::DENY_TLS_NO_SNI) >= 2);
    assert!(counter(&agent, counters::PASS_TLS_SNI) >= 4);
    // IPv6: the same address family rules.
    let cgr6 = format!("cgr.dev:443:[{WEB_CGR_V6}]");
    let mirror6 = format!("mirror.test:443:[{WEB_CGR_V6}]");
    assert_eq!(
        w.curl("https://cgr.dev/", &["-6"], MAX),
        Some(200),
        "cgr.dev over IPv6"
    );
    assert_eq!(
        w.curl("https://cgr.dev/", &["--resolve", &cgr6], MAX),
        Some(200)
    );
    assert_eq!(
        w.curl("https://mirror.test/", &["--resolve", &mirror6], MAX),
        None
    );

    // The operator sees the name: in the log, in status, in suggest.
    wait_for("the log line naming mirror.test", || {
        agent.log_text().lines().any(|l| {
            l.contains("dropped")
                && l.contains("sni=\"mirror.test\"")
                && l.contains("reason=\"sni-not-allowed\"")
        })
    });
    let status = run_egress(&["status"], &pins);
    assert!(
        status.contains("tls:        sni enforce, quic deny, ports 443"),
        "{status}"
    );
    assert!(
        status.contains("denied TLS server names:\n  mirror.test"),
        "{status}"
    );
    assert!(
        status.contains("admitted by TLS server name: cgr.dev "),
        "{status}"
    );
    let suggested = run_egress(&["suggest"], &pins);
    assert!(
        suggested.contains("\"mirror.test\"  # ") && suggested.contains("TLS server name"),
        "{suggested}"
    );
    // The refusals without a name (a bare address, -noservername) are recorded under the
    // address, not under cgr.dev, which is allowed already.
    assert!(!suggested.contains("\"cgr.dev\""), "{suggested}");
    assert!(suggested.contains(&format!("{WEB_CGR}/32")), "{suggested}");
}

#[test]
fn plain_bytes_to_a_learned_address_on_443_never_reach_the_server() {
    let (w, _pins, agent) = start("");
    let http = b"GET / HTTP/1.1\r\nHost: cgr.dev\r\n\r\n".to_vec();
    // nginx answers plain HTTP on its TLS port with a 400: unless the bytes never arrive.
    assert_eq!(server_answers(&w, cgr(443), vec![http.clone()], MAX), None);
    assert!(counter(&agent, counters::DENY_TLS_NOT_HELLO) >= 1);
    // With server names off, the same bytes reach it (the test can fail).
    agent.set_policy(
        &w.topo.client,
        &format!("{}tls:\n  sni: off\n", policy("  min_ttl: 30s\n")),
    );
    assert_eq!(server_answers(&w, cgr(443), vec![http], MAX), Some(b'H'));
}

#[test]
fn a_client_hello_in_pieces_is_judged_when_it_completes() {
    let (w, _pins, agent) = start("");
    let before = counter(&agent, counters::PASS_TLS_PREFIX);
    assert_eq!(
        server_answers(&w, cgr(443), pieces("cgr.dev"), MAX),
        HANDSHAKE,
        "{}",
        agent.log_text()
    );
    assert!(
        counter(&agent, counters::PASS_TLS_PREFIX) >= before + 2,
        "the pieces were separate segments"
    );
    assert_eq!(
        server_answers(&w, cgr(443), pieces("mirror.test"), MAX),
        None
    );
    // A whole ClientHello in one write, for the record.
    let whole = |name| vec![ClientHello::new(name).build()];
    assert_eq!(
        server_answers(&w, cgr(443), whole("cgr.dev"), MAX),
        HANDSHAKE
    );
    assert_eq!(
        server_answers(&w, cgr(443), whole("mirror.test"), MAX),
        None
    );
    // Pieces lost after egress passed them come back as resends, alone or merged: an allowed
    // ClientHello still completes, a denied one still never does.
    lose_a_third(&w);
    for i in 0..5 {
        let slow = Duration::from_secs(15);
        let allowed = server_answers(&w, cgr(443), pieces("cgr.dev"), slow);
        assert_eq!(allowed, HANDSHAKE, "allowed #{i}");
        let denied = server_answers(&w, cgr(443), pieces("mirror.test"), MAX);
        assert_eq!(denied, None, "denied #{i}");
    }
}

#[test]
fn curl_with_a_small_mtu_and_lost_segments_is_judged_the_same() {
    // Local TCP hands TC one skb per write whatever the MTU (TCP always builds GSO packets;
    // they are cut after the hook): a ClientHello written at once is judged whole. Resends are
    // cut to the MSS before the hook (`__tcp_retransmit_skb`): with a small MTU and losses
    // after egress, a ClientHello's resends come back in MSS-sized pieces, after its verdict.
    let (w, _pins, agent) = start("");
    let iface = &w.topo.iface;
    let client = &w.client().name;
    // (IPv6 needs 1280: this link is IPv4 only now.)
    sh(&[
        "ip", "netns", "exec", client, "ip", "link", "set", iface, "mtu", "200",
    ])
    .unwrap();
    sh(&[
        "ip", "netns", "exec", client, "ethtool", "-K", iface, "tso", "off", "gso", "off",
    ])
    .unwrap();
    let server = &w.topo.server.name;
    sh(&[
        "ip",
        "netns",
        "exec",
        server,
        "ip",
        "link",
        "set",
        &w.topo.peer,
        "mtu",
        "200",
    ])
    .unwrap();
    assert_eq!(
        w.curl("https://cgr.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    let mirror = resolve_to_cgr("mirror.test");
    assert_eq!(
        w.curl("https://mirror.test/", &["--resolve", &mirror], MAX),
        None
    );
    // The server's side loses a third of the client's data segments after egress passed them:
    // the client resends them (whole, or merged with the next), and egress sees the resends.
    lose_a_third(&w);
    let slow = Duration::from_secs(20);
    for i in 0..8 {
        assert_eq!(
            w.curl("https://cgr.dev/", &[], slow),
            Some(200),
            "allowed #{i}: {}",
            agent.log_text()
        );
        assert_eq!(
            w.curl("https://mirror.test/", &["--resolve", &mirror], MAX),
            None,
            "denied #{i}"
        );
    }
    assert!(counter(&agent, counters::PASS_TLS_SNI) >= 9);
    // An admitted connection's resends take its flow; a denied one's are dropped.
    assert!(
        counter(&agent, counters::DENY_TLS_DENIED_FLOW) > 0,
        "resends of denied ClientHellos"
    );
}

#[test]
fn tcp_fast_open_data_in_the_syn_is_judged() {
    let (w, _pins, agent) = start("");
    for ns in [&w.client().name, &w.topo.server.name] {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_fastopen=3",
        ])
        .unwrap();
    }
    let tfo = ["--tcp-fastopen"];
    // The first connection fetches a cookie; the next ones carry the ClientHello in their SYN.
    assert_eq!(w.curl("https://cgr.dev/", &tfo, MAX), Some(200));
    let active = w.client().tcp_ext("TCPFastOpenActive");
    assert_eq!(
        w.curl("https://cgr.dev/", &tfo, MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    assert!(
        w.client().tcp_ext("TCPFastOpenActive") > active,
        "the SYN carried data"
    );
    let mirror = resolve_to_cgr("mirror.test");
    assert_eq!(
        w.curl(
            "https://mirror.test/",
            &["--tcp-fastopen", "--resolve", &mirror],
            MAX
        ),
        None
    );
    assert!(counter(&agent, counters::DENY_TLS_SNI) >= 1);
}

#[test]
fn audit_passes_a_denied_name_and_says_so() {
    let (w, _pins, agent) = start("tls:\n  sni: audit\n");
    let mirror = resolve_to_cgr("mirror.test");
    assert_eq!(
        w.curl("https://mirror.test/", &["--resolve", &mirror], MAX),
        Some(200)
    );
    wait_for("the audit line naming mirror.test", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("audit: would drop") && l.contains("sni=\"mirror.test\""))
    });
}

#[test]
fn quic_to_a_learned_address_is_denied_unless_the_policy_says_address() {
    let (w, _pins, agent) = start("");
    // A UDP echo on the shared address's 443, standing for a QUIC server.
    let server = w.topo.server.spawn(|| {
        let s = UdpSocket::bind((ip(WEB_CGR), 443)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    let echo = |w: &World| {
        w.client().run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            (0..3).any(|_| {
                s.send_to(&[0xc0; 1200], (ip(WEB_CGR), 443)).unwrap();
                let mut buf = [0u8; 1500];
                s.recv_from(&mut buf).is_ok()
            })
        })
    };
    assert!(!echo(&w), "QUIC denied by default");
    assert!(counter(&agent, counters::DENY_QUIC) >= 1);
    agent.set_policy(
        &w.topo.client,
        &format!("{}tls:\n  quic: address\n", policy("  min_ttl: 30s\n")),
    );
    assert!(echo(&w), "quic: address");
    drop(server);
}
