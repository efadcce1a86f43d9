//! Per-packet cost of the real programs through `BPF_PROG_TEST_RUN`, as ns/packet and as a ratio
//! to an empty TC program measured in the same run, with 10, 100,000 and 1,000,000 learned
//! prefixes. Prints one JSON document (the `cargo xtask bench` report is built from it).
//!
//! Usage: egress-bench [REPEAT] [DNS_ANSWERS]

use std::net::{IpAddr, Ipv4Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use egress_common::{packet::TCP_ACK, testing::Packet};
use egress_tests::{
    dnsmsg::{Rr, query, response},
    harness::Harness,
    ip,
};
use egress_user::clock;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "192.0.2.53";
/// The destination the flow cases use; learned before measuring.
const ALLOWED: &str = "198.51.100.7";

/// Average ns per run of `prog` on `frame`, over `repeat` runs inside the kernel.
fn per_run(h: &Harness, prog: &str, frame: &[u8], repeat: u32) -> f64 {
    let p: &SchedClassifier = h.program(prog).try_into().unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    };
    p.test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .duration
        .as_nanos() as f64
}

/// Fills the learned IPv4 map with `n` addresses (10.0.0.0/8 upwards) plus [`ALLOWED`].
fn fill(h: &mut Harness, n: usize) {
    let until = clock::boot_ns() + 3_600_000_000_000;
    for i in 0..n {
        h.dp.learn(IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32)), until)
            .unwrap();
    }
    h.dp.learn(ip(ALLOWED), until).unwrap();
}

fn dns_answer_cost(h: &Harness, addresses: usize, answers: usize) -> (f64, f64) {
    // One query and answer per name, so every answer matches a fresh query; repeat=1 per run,
    // and the empty program measured the same way for the ratio.
    let (client, resolver) = (ip(CLIENT), ip(RESOLVER));
    let mut total = 0.0;
    let mut baseline = 0.0;
    for i in 0..answers {
        let name = format!("a{addresses}x{i}.bench.test.");
        let id = (i % 65_536) as u16;
        let port = 20_000 + (i % 40_000) as u16;
        let addrs: Vec<String> = (0..addresses)
            .map(|k| format!("203.0.113.{}", k % 250))
            .collect();
        let rrs: Vec<Rr<'_>> = addrs.iter().map(|a| Rr::Addr(&name, a, 300)).collect();
        let q =
            Packet::udp_with(client, port, resolver, 53, query(id, &name, RecordType::A)).build();
        let a = Packet::udp_with(
            resolver,
            53,
            client,
            port,
            response(id, &name, RecordType::A, &rrs),
        )
        .build();
        h.egress(&q);
        total += per_run(h, "ingress", &a, 1);
        baseline += per_run(h, "empty", &a, 1);
    }
    (total / answers as f64, baseline / answers as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeat: u32 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dns_answers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mut rows = Vec::new();
    for prefixes in [10usize, 100_000, 1_000_000] {
        let mut h = Harness::with_learned_capacity(
            &format!("resolvers: [{RESOLVER}]\nallow:\n  names: [\"*.bench.test\"]\n"),
            Some(1_100_000),
        );
        fill(&mut h, prefixes);
        let (client, dst) = (ip(CLIENT), ip(ALLOWED));
        let syn = Packet::tcp(client, dst, 443).build();
        let mut ack = Packet::tcp(client, dst, 443);
        ack.tcp_flags = TCP_ACK;
        let ack = ack.build();
        let denied = Packet::tcp(client, ip("198.51.100.99"), 443).build();
        let other_port = Packet::tcp(client, ip("198.51.100.99"), 80).build();
        h.egress(&syn); // creates the flow the ACK case hits
        let empty = per_run(&h, "empty", &ack, repeat);
        let mut case = |name: &str, prog: &str, frame: &[u8]| {
            let ns = per_run(&h, prog, frame, repeat);
            rows.push(json!({"case": name, "learned_prefixes": prefixes, "ns_per_packet": ns, "empty_ns": empty, "ratio_to_empty": ns / empty, "repeat": repeat}));
        };
        case("known flow (ACK)", "egress", &ack);
        case("new allowed SYN", "egress", &syn);
        case("denied SYN", "egress", &denied);
        case("non-enforced port", "egress", &other_port);
        for addresses in [1usize, 8, 32] {
            let (ns, base) = dns_answer_cost(&h, addresses, dns_answers);
            rows.push(json!({"case": format!("DNS answer, {addresses} address(es)"), "learned_prefixes": prefixes, "ns_per_packet": ns, "empty_ns": base, "ratio_to_empty": ns / base, "repeat": 1, "runs": dns_answers}));
        }
    }
    println!("{}", Value::Array(rows));
}
