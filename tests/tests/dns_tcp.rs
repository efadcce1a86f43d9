//! DNS over TCP, learned in the kernel: real connections from the client namespace to a
//! resolver the test plays in the server namespace (a real TCP listener that writes the bytes
//! it is told to, segment by segment), with the agent's programs on the client's NIC.
//!
//! The resolver is played so that the answer stream is exactly what each attack needs: a TXT
//! record whose data is a whole framed answer for an allowed name, answers cut at every kind
//! of place, an answer too long for the kernel to walk. Forged segments are sent from a raw
//! socket with the resolver's address.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use egress_common::{
    counters,
    maps::{TcpStream as StreamState, TcpStreamKey, names},
    packet::{TCP_ACK, TCP_SYN},
};
use egress_tests::{
    Agent, TestPins, Topology,
    dnsmsg::{Rr, query, response},
    ip,
    live::{RESOLVER_V4, WEB_CGR, WEB_DENIED},
};
use hickory_proto::rr::RecordType;

/// The id of the client's query for the allowed name; every forged answer reuses it.
const CGR_ID: u16 = 0x0909;
/// The id of the client's TXT query in the attacker's own zone.
const TXT_ID: u16 = 0x0707;

struct Setup {
    topo: Topology,
    agent: Agent,
    pins: TestPins,
    _servers: egress_tests::Servers,
}

fn setup() -> Setup {
    let topo = Topology::new().unwrap();
    for addr in [RESOLVER_V4, WEB_CGR, WEB_DENIED] {
        topo.server
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", &topo.peer])
            .unwrap();
    }
    let servers = egress_tests::Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let policy = format!("resolvers: [{RESOLVER_V4}]\nallow:\n  names: [cgr.dev]\n");
    let agent = Agent::start(&topo, &pins, &policy, &[]).unwrap();
    Setup {
        topo,
        agent,
        pins,
        _servers: servers,
    }
}

impl Setup {
    fn learned(&self, addr: &str) -> bool {
        self.agent
            .datapath()
            .learned()
            .unwrap()
            .iter()
            .any(|l| l.addr == ip(addr))
    }

    fn counter(&self, c: u32) -> u64 {
        self.agent.datapath().counters().unwrap()[c as usize]
    }

    /// The answer-stream position the kernel holds for the connection from `client_port`.
    fn stream(&self, client_port: u16) -> Option<StreamState> {
        let data = MapData::from_pin(self.pins.pins.map(names::DNS_TCP)).unwrap();
        let map: BpfHashMap<_, TcpStreamKey, StreamState> =
            BpfHashMap::try_from(Map::LruHashMap(data)).unwrap();
        map.iter()
            .filter_map(Result::ok)
            .find(|(k, _)| k.client_port == client_port.to_be_bytes())
            .map(|(_, v)| v)
    }

    /// Plays one resolver connection: accepts, reads `expect` bytes of queries, then writes
    /// each of `segments` as its own segment (a pause between writes keeps them apart), then
    /// keeps the connection open for `linger`. Returns when the client has read everything.
    /// `between` runs in the test after the queries arrived and before the answers go out,
    /// with the client's port.
    fn exchange(
        &self,
        queries: Vec<u8>,
        segments: Vec<Vec<u8>>,
        between: impl FnOnce(&Self, u16),
    ) -> Vec<u8> {
        let expect = queries.len();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<u16>();
        let listener = self.topo.server.run(|| {
            TcpListener::bind(format!("{RESOLVER_V4}:53")).expect("bind the played resolver")
        });
        let server = std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().unwrap();
            conn.set_nodelay(true).unwrap();
            let mut got = vec![0; expect];
            conn.read_exact(&mut got).unwrap();
            go_tx.send(peer.port()).unwrap();
            ready_rx.recv().unwrap();
            for s in segments {
                conn.write_all(&s).unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            // Wait for the client to close, so every segment was acknowledged.
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
        });
        let client = self.topo.client.spawn(move || {
            let mut c = TcpStream::connect_timeout(
                &format!("{RESOLVER_V4}:53").parse::<SocketAddr>().unwrap(),
                Duration::from_secs(3),
            )
            .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(&queries).unwrap();
            let mut answers = Vec::new();
            c.read_to_end(&mut answers).unwrap();
            answers
        });
        let port = go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        between(self, port);
        ready_tx.send(()).unwrap();
        let answers = client.join().unwrap();
        server.join().unwrap();
        answers
    }
}

/// A DNS message behind its two-byte length, as on a TCP connection.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut v = (msg.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

/// The client's two queries on one connection: TXT in the attacker's zone, A of the allowed
/// name (so a query with [`CGR_ID`] for `cgr.dev` is pending on this very connection).
fn both_queries() -> Vec<u8> {
    let mut q = framed(&query(TXT_ID, "evil.test.", RecordType::TXT));
    q.extend(framed(&query(CGR_ID, "cgr.dev.", RecordType::A)));
    q
}

/// A forged answer for the pending query: `cgr.dev` is `WEB_DENIED`.
fn fake() -> Vec<u8> {
    response(
        CGR_ID,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", WEB_DENIED, 86_400)],
    )
}

/// The TXT answer whose data is `embedded`, framed.
fn txt_answer(embedded: &[u8]) -> Vec<u8> {
    framed(&response(
        TXT_ID,
        "evil.test.",
        RecordType::TXT,
        &[Rr::Txt("evil.test.", embedded, 60)],
    ))
}

/// The answer stream of the TXT attack: the TXT answer embedding a framed fake answer, then
/// the real answer for `cgr.dev`; with the TXT answer's length and the offset of the embedded
/// answer's prefix.
fn txt_then_real_answer() -> (Vec<u8>, usize, usize) {
    let txt = txt_answer(&framed(&fake()));
    let fake_at = txt
        .windows(2)
        .position(|w| w == (fake().len() as u16).to_be_bytes())
        .expect("the embedded prefix");
    let txt_len = txt.len();
    let mut stream = txt;
    stream.extend(real_answer());
    (stream, txt_len, fake_at)
}

fn real_answer() -> Vec<u8> {
    framed(&response(
        CGR_ID,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", WEB_CGR, 60)],
    ))
}

#[test]
fn an_answer_in_one_segment_is_learned_by_the_kernel() {
    let s = setup();
    let learned0 = s.counter(counters::DNS_ANSWER_LEARNED);
    let q = framed(&query(CGR_ID, "cgr.dev.", RecordType::A));
    let got = s.exchange(q, vec![real_answer()], |_, _| {});
    assert_eq!(got, real_answer());
    assert!(s.learned(WEB_CGR), "{}", s.agent.log_text());
    let c = s.agent.datapath().counters().unwrap();
    let nz: Vec<_> = counters::NAMES
        .iter()
        .zip(c)
        .filter(|(_, v)| *v != 0)
        .collect();
    assert_eq!(
        s.counter(counters::DNS_ANSWER_LEARNED) - learned0,
        1,
        "{nz:?}"
    );
}

/// The TXT answer carries a whole framed answer for the pending query. Wherever the segments
/// cut the stream, including exactly at the embedded prefix (where a parser that resynchronises
/// at a segment would start), nothing but the true answers is read: the fake address is never
/// learned, and the real answer after the TXT answer still is.
#[test]
fn an_answer_embedded_in_a_txt_record_teaches_nothing_wherever_the_segments_cut() {
    let s = setup();
    let (stream, txt_len, fake_at) = txt_then_real_answer();
    let cuts: Vec<Vec<usize>> = vec![
        vec![],        // one segment
        vec![fake_at], // a segment starts at the embedded answer
        vec![1],       // the TXT answer's prefix split
        vec![20, fake_at, fake_at + 2],
        vec![txt_len], // the real answer in a segment of its own
        (1..stream.len()).step_by(97).collect(),
    ];
    for cut in cuts {
        let mut segments = Vec::new();
        let mut from = 0;
        for &c in cut.iter().chain(std::iter::once(&stream.len())) {
            segments.push(stream[from..c].to_vec());
            from = c;
        }
        let got = s.exchange(both_queries(), segments, |_, _| {});
        assert_eq!(got, stream);
        assert!(
            !s.learned(WEB_DENIED),
            "cut at {cut:?}: the embedded answer taught {WEB_DENIED}"
        );
    }
    // Cuts that keep every prefix whole let the kernel follow the stream to the real answer.
    assert!(s.learned(WEB_CGR), "{}", s.agent.log_text());
}

/// A TXT answer longer than the kernel walks (6,000 bytes, sent in one write: the veth may pass
/// it as one aggregated segment) is skipped by its length, never read inside; the real answer
/// after it is learned.
#[test]
fn a_long_txt_answer_is_skipped_by_its_length() {
    let s = setup();
    let mut data = Vec::new();
    while data.len() < 6_000 {
        data.extend(framed(&fake()));
    }
    let mut stream = txt_answer(&data);
    stream.extend(real_answer());
    let got = s.exchange(both_queries(), vec![stream.clone()], |_, _| {});
    assert_eq!(got.len(), stream.len());
    assert!(!s.learned(WEB_DENIED), "the long TXT answer taught");
    assert!(s.learned(WEB_CGR), "{}", s.agent.log_text());
}

/// A long answer for an allowed name (300 addresses, about 5 KB, over several segments) is
/// matched by the kernel at its first segment and learned by the agent from its parts.
#[test]
fn a_long_answer_over_several_segments_is_learned() {
    let s = setup();
    let addrs: Vec<String> = (0..300)
        .map(|i| format!("203.0.{}.{}", 113 + i / 250, 1 + i % 250))
        .collect();
    let rrs: Vec<Rr<'_>> = addrs.iter().map(|a| Rr::Addr("cgr.dev.", a, 300)).collect();
    let long = framed(&response(CGR_ID, "cgr.dev.", RecordType::A, &rrs));
    assert!(long.len() > 4_096);
    let segments: Vec<Vec<u8>> = long.chunks(1_000).map(<[u8]>::to_vec).collect();
    let q = framed(&query(CGR_ID, "cgr.dev.", RecordType::A));
    s.exchange(q, segments, |_, _| {});
    egress_tests::wait_for("the agent to learn the long answer", || {
        s.learned(&addrs[0]) && s.learned(&addrs[299])
    });
}

/// A forged segment from the resolver's address, with a framed answer for a pending query of
/// the connection, but at a sequence number past the stream's position (an off-path guess):
/// counted as a gap, nothing learned; the real answer is then learned.
#[test]
fn a_forged_segment_past_the_stream_teaches_nothing() {
    let s = setup();
    let gaps0 = s.counter(counters::DNS_TCP_GAP);
    let q = framed(&query(CGR_ID, "cgr.dev.", RecordType::A));
    s.exchange(q, vec![real_answer()], |s, port| {
        let at = s.stream(port).expect("the kernel follows the connection");
        inject_tcp(s, port, at.next.wrapping_add(1_000), &framed(&fake()));
        egress_tests::wait_for("the forged segment to be judged", || {
            s.counter(counters::DNS_TCP_GAP) > gaps0
        });
        assert!(!s.learned(WEB_DENIED), "the forged segment taught");
    });
    assert_eq!(s.counter(counters::DNS_TCP_GAP) - gaps0, 1);
    assert!(!s.learned(WEB_DENIED));
    assert!(s.learned(WEB_CGR));
}

/// One forged segment from the resolver's address, with no connection at all (no handshake),
/// answering a query the client really sent over UDP with that id: nothing learned, counted.
#[test]
fn a_forged_segment_without_a_handshake_teaches_nothing() {
    let s = setup();
    let unopened0 = s.counter(counters::DNS_TCP_UNOPENED);
    let sock = s
        .topo
        .client
        .run(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    let port = sock.local_addr().unwrap().port();
    sock.send_to(
        &query(CGR_ID, "cgr.dev.", RecordType::A),
        format!("{RESOLVER_V4}:53").parse::<SocketAddr>().unwrap(),
    )
    .unwrap();
    for seq in [0, 1, 0x8000_0000] {
        inject_tcp(&s, port, seq, &framed(&fake()));
    }
    egress_tests::wait_for("the forged segments to be judged", || {
        s.counter(counters::DNS_TCP_UNOPENED) - unopened0 >= 3
    });
    assert!(!s.learned(WEB_DENIED), "a forged segment taught");
    assert_eq!(s.counter(counters::DNS_TCP_UNOPENED) - unopened0, 3);
}

/// A workload on the node that can send raw packets (a pod with `CAP_NET_RAW` behind an
/// interface) forges, on the 4-tuple of its own live connection, a SYN and then an ACK whose
/// acknowledgment number points at the framed fake answer inside the TXT record it is about to
/// receive. Were the stream's start taken from "the node's" acknowledgment, the kernel would
/// start reading there and learn the fake; it is taken from the resolver's SYN-ACK to the
/// node's SYN, which a forged SYN on a live connection never gets: nothing is learned from the
/// connection.
#[test]
fn a_forged_syn_and_ack_from_the_node_cannot_move_the_stream_start() {
    let s = setup();
    let (stream, _, fake_at) = txt_then_real_answer();
    s.exchange(both_queries(), vec![stream], |s, port| {
        let at = s.stream(port).expect("the kernel follows the connection");
        let forge = |flags, seq, ack, payload: &[u8]| {
            let (client, resolver) = (egress_tests::CLIENT_V4, RESOLVER_V4);
            raw_tcp(
                &s.topo.client,
                client,
                resolver,
                port,
                53,
                flags,
                seq,
                ack,
                payload,
            );
        };
        forge(TCP_SYN, 12_345, 0, &[]);
        // With a byte of data: bare ACKs are not even looked at.
        forge(TCP_ACK, 12_346, at.next.wrapping_add(fake_at as u32), &[0]);
    });
    assert!(
        !s.learned(WEB_DENIED),
        "the forged start taught the embedded answer"
    );
}

/// Sends a TCP segment (ACK|PSH) from the resolver's address and port 53 to the client's
/// `port`, with sequence number `seq`, through a raw socket in the server namespace.
fn inject_tcp(s: &Setup, port: u16, seq: u32, payload: &[u8]) {
    let client = egress_tests::CLIENT_V4;
    raw_tcp(
        &s.topo.server,
        RESOLVER_V4,
        client,
        53,
        port,
        TCP_ACK | TCP_PSH,
        seq,
        0,
        payload,
    );
}

const TCP_PSH: u8 = 0x08;

/// Sends one TCP segment with these fields through a raw socket in `ns` (the kernel adds the
/// IP header; the TCP checksum is left 0: the programs look before the stack checks it, and
/// the stack then drops the segment).
#[expect(clippy::too_many_arguments, reason = "one field per TCP header field")]
fn raw_tcp(
    ns: &egress_tests::NetNs,
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) {
    let (src, dst, payload) = (src.to_owned(), dst.to_owned(), payload.to_vec());
    ns.run(move || {
        let sock = egress_tests::raw::socket(&src, socket2::Protocol::TCP);
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&dport.to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.extend_from_slice(&[5 << 4, flags]); // 20-byte header
        tcp.extend_from_slice(&65_535u16.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&payload);
        egress_tests::raw::send(&sock, &dst, &tcp);
    });
}
