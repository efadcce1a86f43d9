//! Measures kernel DNS learning with the real programs through `BPF_PROG_TEST_RUN`: for N fresh
//! names, a query through egress, then its answer through ingress. The ingress run time is the
//! time from the answer reaching TC to its address being in the map (the insert happens inside
//! the run). Prints one JSON line with percentiles, the rate, and how many addresses were not
//! learned (loss). The copies for the agent are read from `DNS_EVENTS` after each answer,
//! untimed, as the agent keeps up with them: a ring nobody reads fills, and past a quarter full
//! every copy forces a wake-up (see `ring_flags` in `egress-ebpf/src/dns.rs`), which no running
//! agent lets happen.
//!
//! Usage: dns-bench [COUNT] [ADDRESSES_PER_ANSWER]

use std::{net::Ipv4Addr, time::Instant};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use egress_common::{counters, testing::Packet};
use egress_tests::{
    dnsmsg::{Rr, query, response},
    harness::Harness,
    ip,
};
use hickory_proto::rr::RecordType;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let per_answer: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    // One client sends every query, far faster than a real one: the per-client bound on
    // remembered queries would turn most answers into unsolicited ones, so it is lifted here.
    let h = Harness::new(
        "resolvers: [192.0.2.53]\nallow:\n  names: [\"*.bench.test\"]\ndns:\n  client_query_rate: 4000000000\n",
    );
    let (client, resolver) = (ip("192.0.2.10"), ip("192.0.2.53"));
    let mut ingress_ns = Vec::with_capacity(count);
    let mut wall = std::time::Duration::ZERO;
    let mut expected = 0usize;
    let mut ring = {
        use aya::maps::{Map, MapData, RingBuf};
        let data = MapData::from_pin(h.pins().map(egress_common::maps::names::DNS_EVENTS))
            .expect("DNS_EVENTS pin");
        RingBuf::try_from(Map::RingBuf(data)).expect("DNS_EVENTS")
    };
    for i in 0..count {
        let name = format!("n{i}.bench.test.");
        let id = (i % 65_536) as u16;
        let port = 20_000 + (i % 40_000) as u16;
        let addrs: Vec<String> = (0..per_answer)
            .map(|k| Ipv4Addr::from(0x0a00_0000u32 + (i * per_answer + k) as u32).to_string())
            .collect();
        let rrs: Vec<Rr<'_>> = addrs.iter().map(|a| Rr::Addr(&name, a, 300)).collect();
        expected += per_answer;
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
        let t = Instant::now();
        let d = run_ingress(&h, &a);
        wall += t.elapsed();
        ingress_ns.push(d);
        while ring.next().is_some() {}
    }
    ingress_ns.sort_unstable();
    let pct = |p: f64| ingress_ns[((ingress_ns.len() - 1) as f64 * p) as usize];
    let mean = ingress_ns.iter().sum::<u64>() as f64 / ingress_ns.len() as f64;
    let learned = h.counter(counters::DNS_ADDR_LEARNED) as usize;
    // The distribution, for the report's CDF: every percentile, 0 to 100.
    let cdf: Vec<String> = (0..=100)
        .map(|p| pct(f64::from(p) / 100.0).to_string())
        .collect();
    println!(
        "{{\"learn_cdf_ns\":[{}],\"answers\":{count},\"addresses_per_answer\":{per_answer},\"learn_p50_ns\":{},\"learn_p99_ns\":{},\"learn_mean_ns\":{mean:.0},\"answers_per_s_program\":{:.0},\"answers_per_s_with_syscall\":{:.0},\"addresses_learned\":{learned},\"addresses_lost\":{},\"learn_failed\":{}}}",
        cdf.join(","),
        pct(0.5),
        pct(0.99),
        1e9 / mean,
        count as f64 / wall.as_secs_f64(),
        expected - learned.min(expected),
        h.counter(counters::DNS_LEARN_FAILED),
    );
    assert_eq!(
        h.counter(counters::DNS_EVENT_LOST),
        0,
        "copies for the agent were lost although they were read"
    );
    // The timed path is "an answer learned": a run that learned less timed something else.
    assert_eq!(
        learned,
        expected,
        "{} of {expected} addresses were not learned: the rows above did not time learning",
        expected - learned.min(expected)
    );
}

fn run_ingress(h: &Harness, frame: &[u8]) -> u64 {
    let prog: &SchedClassifier = h.program("ingress").try_into().unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    prog.test_run(opts).unwrap().duration.as_nanos() as u64
}
