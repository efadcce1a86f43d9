//! Per-packet cost of the real programs through `BPF_PROG_TEST_RUN`, as ns/packet and as a ratio
//! to an empty TC program measured in the same run, with 10, 100,000 and 1,000,000 learned
//! prefixes. Prints one JSON document (the `cargo xtask bench` report is built from it).
//!
//! Usage: egress-bench packet [REPEAT] [DNS_ANSWERS] | race COUNT | iperf SECONDS ROUNDS [nft]
//!        | pps SECONDS ROUNDS | control | scrape | classic COUNT | syn RUNS | hold SECONDS

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use egress_common::{
    counters,
    maps::names,
    packet::{TCP_ACK, TCP_SYN},
    tc_action::{DROP, PASS},
    testing::{ClientHello, Packet},
};
use egress_tests::{
    ALLOWED_V4, Agent, TestPins, Topology, classic,
    dnsmsg::{Rr, query, response},
    harness::Harness,
    ip, learn_as, learn_by_hand,
    live::{World, WorldOptions, policy},
    static_policy,
};
use egress_user::{clock, datapath::Datapath, ebpf};
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "192.0.2.53";
/// The destination the flow cases use; learned before measuring.
const ALLOWED: &str = "198.51.100.7";

/// Average ns per run of `prog` on `frame`, over `repeat` runs inside the kernel, and the
/// program's return value.
fn per_run(h: &Harness, prog: &str, frame: &[u8], repeat: u32) -> (f64, i32) {
    let p: &SchedClassifier = h.program(prog).try_into().unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    };
    let run = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
    (run.duration.as_nanos() as f64, run.return_value as i32)
}

/// [`per_run`] of a case that must take one path: the verdict it must return, and the counter
/// that must rise by one per run (the path's own). A row that timed another path fails the
/// bench instead of being reported.
fn timed_path(
    h: &Harness,
    case: &str,
    prog: &str,
    frame: &[u8],
    repeat: u32,
    verdict: i32,
    counter: Option<u32>,
) -> f64 {
    let before = counter.map(|c| h.counter(c));
    let (ns, ret) = per_run(h, prog, frame, repeat);
    assert_eq!(ret, verdict, "{case}: the program returned another verdict");
    if let (Some(c), Some(before)) = (counter, before) {
        assert_eq!(
            h.counter(c) - before,
            u64::from(repeat),
            "{case}: counter {} did not count every run: another path was timed",
            counters::NAMES[c as usize]
        );
    }
    ns
}

/// Fills the learned IPv4 map with `n` addresses (10.0.0.0/8 upwards) plus [`ALLOWED`].
fn fill(h: &mut Harness, n: usize) {
    let until = clock::boot_ns() + 3_600_000_000_000;
    for i in 0..n {
        learn_by_hand(
            &mut h.dp,
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32)),
            until,
        );
    }
    learn_by_hand(&mut h.dp, ip(ALLOWED), until);
}

fn dns_answer_cost(h: &Harness, addresses: usize, answers: usize) -> (f64, f64) {
    // One query and answer per name, so every answer matches a fresh query; repeat=1 per run,
    // and the empty program measured the same way for the ratio.
    let (client, resolver) = (ip(CLIENT), ip(RESOLVER));
    let mut total = 0.0;
    let mut baseline = 0.0;
    let counts = || {
        [
            counters::DNS_QUERY_TRACKED,
            counters::DNS_ANSWER_LEARNED,
            counters::DNS_ADDR_LEARNED,
            counters::DNS_LEARN_FAILED,
        ]
        .map(|c| h.counter(c))
    };
    let before = counts();
    for i in 0..answers {
        let name = format!("a{addresses}x{i}.bench.test.");
        let id = (i % 65_536) as u16;
        let port = 20_000 + (i % 40_000) as u16;
        // Fresh addresses for every answer (172.16.0.0/12 and up, apart from the filled ones
        // in 10.0.0.0/8): each answer inserts, as one for a name never seen does.
        let addrs: Vec<String> = (0..addresses)
            .map(|k| {
                Ipv4Addr::from(0xac10_0000u32 + (addresses * answers + i * addresses + k) as u32)
                    .to_string()
            })
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
        assert_eq!(h.egress(&q), PASS);
        total += per_run(h, "ingress", &a, 1).0;
        baseline += per_run(h, "empty", &a, 1).0;
    }
    // The row is "an answer matched and all its addresses inserted": anything else timed
    // another path.
    let after = counts();
    let n = answers as u64;
    assert_eq!(after[0] - before[0], n, "not every query was remembered");
    assert_eq!(
        after[1] - before[1],
        n,
        "not every timed answer was learned"
    );
    assert_eq!(
        after[2] - before[2],
        n * addresses as u64,
        "not every address was learned"
    );
    assert_eq!(
        after[3], before[3],
        "inserts failed: the learned map is full"
    );
    (total / answers as f64, baseline / answers as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let out = match args.get(1).map(String::as_str) {
        Some("race") => race(arg(2, 10_000)),
        Some("iperf") => iperf(
            arg(2, 5),
            arg(3, 3),
            match args.get(4).map(String::as_str) {
                Some("nft") => Enforcer::Nft,
                _ => Enforcer::Egress,
            },
        ),
        Some("classic") => side_by_side(arg(2, 10_000)),
        Some("pps") => pps(arg(2, 3), arg(3, 3)),
        Some("control") => control(),
        Some("scrape") => scrape(arg(2, SCRAPE_LEARNED as u64) as u32),
        Some("hold") => hold(arg(2, 20)),
        Some("syn") => {
            // New connections' SYNs alone, for a profile (`perf record`): RUNS a setup.
            let runs = arg(2, 20_000) as usize;
            let mut rows = Vec::new();
            rows.extend(new_syns_in("", "new allowed SYN", 10, runs));
            rows.extend(new_syns_in(
                SNI_OFF,
                "new allowed SYN, tls.sni off",
                10,
                runs,
            ));
            Value::Array(rows)
        }
        _ => packet(arg(2, 1_000_000) as u32, arg(3, 20_000) as usize),
    };
    println!("{out}");
}

/// Resolve-then-connect over `count` fresh names through dnsmasq, with the agent enforcing.
fn race(count: u64) -> Value {
    let world = World::new(WorldOptions::default()).expect("world");
    let pins = TestPins::new();
    let agent = Agent::start(&world.topo, &pins, &policy("  min_ttl: 5s\n"), &[]).expect("agent");
    let race = std::env::current_exe()
        .unwrap()
        .with_file_name("egress-race");
    let out = world
        .run_in_client(
            &race,
            &[
                &count.to_string(),
                "race.test",
                "200",
                egress_tests::live::RACE_FIRST,
            ],
        )
        .expect("race");
    let race: Value = serde_json::from_str(out.trim()).expect("race JSON");
    assert_learned_path(&agent, &race);
    race
}

/// The race's connects went through egress's learned path: each connected name's first SYN
/// was admitted by an address the kernel learned.
fn assert_learned_path(agent: &Agent, race: &Value) {
    let c = agent.datapath().counters().expect("counters");
    let connected = race["connected"].as_u64().expect("race JSON: connected");
    assert!(
        c[counters::PASS_LEARNED as usize] >= connected,
        "{} connects, {} admitted by learned addresses: the race took another path",
        connected,
        c[counters::PASS_LEARNED as usize]
    );
}

#[derive(Clone, Copy)]
enum Enforcer {
    /// The egress agent, the destination in a static CIDR.
    Egress,
    /// The classic nftables ruleset, the destination in its set.
    Nft,
}

/// iperf3 to port 443 over the veth, in rounds of one run without and one with enforcement
/// (the egress agent, or the classic nftables ruleset), the order within a round alternating so
/// that neither side always runs first.
fn iperf(seconds: u64, rounds: u64, enforcer: Enforcer) -> Value {
    let topo = Topology::new().expect("topology");
    let mut runs = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for (position, with_agent) in order.into_iter().enumerate() {
            let pins = TestPins::new();
            let setup = match (with_agent, &enforcer) {
                (false, _) => Setup::None,
                (true, Enforcer::Egress) => Setup::Egress,
                (true, Enforcer::Nft) => Setup::Nftables,
            };
            let (agent, rules, mut server) = prepare(&topo, &pins, setup);
            let (v, bpf) = iperf_client(&topo, &[], seconds, &mut server);
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .expect("iperf3 measured nothing");
            assert!(bps > 0.0, "iperf3 moved no data");
            // The run with egress went through it: the connection was admitted by the static
            // CIDR and its data packets passed as a known flow.
            if let Some(agent) = &agent {
                let c = agent.datapath().counters().expect("counters");
                assert!(
                    c[counters::PASS_STATIC as usize] > 0,
                    "egress never judged the connection"
                );
                assert!(
                    c[counters::PASS_FLOW as usize] > 0,
                    "egress passed no data packet"
                );
            }
            if let Some(rules) = &rules {
                assert_eq!(
                    rules.allowed4().expect("set"),
                    1,
                    "the nftables set lost its element"
                );
            }
            runs.push(json!({"round": round, "position": position, "agent": with_agent, "gbit_per_s": bps / 1e9, "bpf": bpf}));
            drop(agent);
            drop(rules);
        }
    }
    let mean = |with: bool| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r["agent"] == with)
            .filter_map(|r| r["gbit_per_s"].as_f64())
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (without, with) = (mean(false), mean(true));
    // Each round's two runs are back to back, so their ratio cancels the slow drifts of a
    // shared VM; the median of those ratios ignores the odd run that lost its CPU.
    let mut paired: Vec<f64> = (0..rounds)
        .filter_map(|round| {
            let of = |with: bool| {
                runs.iter()
                    .find(|r| r["round"] == round && r["agent"] == with)
                    .and_then(|r| r["gbit_per_s"].as_f64())
            };
            Some(of(true)? / of(false)?)
        })
        .collect();
    paired.sort_by(f64::total_cmp);
    let median = match paired.len() {
        0 => 0.0,
        n if n % 2 == 1 => paired[n / 2],
        n => (paired[n / 2 - 1] + paired[n / 2]) / 2.0,
    };
    json!({"runs": runs, "without_gbit_per_s": without, "with_gbit_per_s": with, "ratio": with / without, "median_paired_ratio": median, "paired_ratios": paired, "seconds": seconds, "rounds": rounds})
}

/// The kernel's own accounting of the egress programs during a run (`kernel.bpf_stats_enabled`):
/// run time and run count of every loaded program named `egress` or `ingress`, before and after.
struct BpfStats(std::collections::HashMap<u32, (u64, u64)>, Instant);

impl BpfStats {
    fn programs() -> std::collections::HashMap<u32, (u64, u64)> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| matches!(p.name_as_str(), Some("egress" | "ingress")))
            .map(|p| (p.id(), (p.run_time().as_nanos() as u64, p.run_count())))
            .collect()
    }

    fn start() -> Self {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("bpf_stats_enabled");
        Self(Self::programs(), Instant::now())
    }

    /// The programs' time per run, their runs per second and their share of one CPU over the
    /// run (`seconds` as the transfer's own length; the wall time measured is reported too).
    fn finish(self, seconds: u64) -> Value {
        let after = Self::programs();
        let wall = self.1.elapsed().as_secs_f64();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").expect("bpf_stats_enabled");
        let (mut ns, mut runs) = (0u64, 0u64);
        for (id, (t, n)) in after {
            let (t0, n0) = self.0.get(&id).copied().unwrap_or((0, 0));
            ns += t.saturating_sub(t0);
            runs += n.saturating_sub(n0);
        }
        json!({
            "run_ns": ns,
            "runs": runs,
            "ns_per_run": if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
            "cpu_share": ns as f64 / 1e9 / seconds as f64,
            "wall_s": wall,
        })
    }
}

/// What enforces during a throughput run.
#[derive(Clone, Copy)]
enum Setup {
    None,
    Egress,
    Nftables,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Egress => "egress",
            Setup::Nftables => "nftables",
        }
    }
}

/// Starts what `setup` needs in `topo` (the agent, or the nftables ruleset with the destination
/// in its set) and a one-shot iperf3 server on the allowed destination's port 443.
fn prepare(
    topo: &Topology,
    pins: &TestPins,
    setup: Setup,
) -> (Option<Agent>, Option<classic::Rules>, std::process::Child) {
    let agent = matches!(setup, Setup::Egress)
        .then(|| Agent::start(topo, pins, &static_policy("enforce"), &[]).expect("agent"));
    let rules = matches!(setup, Setup::Nftables).then(|| {
        let r = classic::Rules::install(&topo.client).expect("nftables");
        r.allow(ALLOWED_V4).expect("nft add element");
        r
    });
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.server.name,
            "iperf3",
            "-s",
            "-1",
            "-p",
            "443",
            "-B",
            ALLOWED_V4,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(std::time::Duration::from_millis(300));
    (agent, rules, server)
}

/// Runs the iperf3 client (`extra` options) in the client namespace against `server` for
/// `seconds`, with the kernel's BPF statistics on: its JSON report and the programs' cost.
fn iperf_client(
    topo: &Topology,
    extra: &[&str],
    seconds: u64,
    server: &mut std::process::Child,
) -> (Value, Value) {
    let secs = seconds.to_string();
    let mut args = vec!["ip", "netns", "exec", &topo.client.name, "iperf3", "-J"];
    args.extend_from_slice(extra);
    args.extend(["-c", ALLOWED_V4, "-p", "443", "-t", &secs]);
    let stats = BpfStats::start();
    let out = egress_tests::sh(&args).expect("iperf3 client");
    let bpf = stats.finish(seconds);
    let _ = server.wait();
    let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    assert!(v["error"].is_null(), "iperf3 failed: {}", v["error"]);
    (v, bpf)
}

/// Small packets: 64-byte UDP datagrams to port 443 of an allowed destination at the highest
/// rate iperf3 sustains here, `seconds` per run, received packets per second with no
/// enforcement, with egress and with the nftables ruleset of the side-by-side, in each round.
fn pps(seconds: u64, rounds: u64) -> Value {
    let topo = Topology::new().expect("topology");
    let mut runs = Vec::new();
    for round in 0..rounds {
        for setup in [Setup::None, Setup::Egress, Setup::Nftables] {
            let pins = TestPins::new();
            let (agent, rules, mut server) = prepare(&topo, &pins, setup);
            let (v, bpf) =
                iperf_client(&topo, &["-u", "-l", "64", "-b", "0"], seconds, &mut server);
            let sum = &v["end"]["sum"];
            let sent = sum["packets"].as_f64().unwrap_or(0.0);
            let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
            let received_pps = (sent - lost) / seconds as f64;
            assert!(received_pps > 0.0, "no datagram arrived ({})", setup.name());
            if let Some(agent) = &agent {
                let c = agent.datapath().counters().expect("counters");
                assert!(
                    c[counters::PASS_FLOW as usize] > 0,
                    "egress passed no datagram as a flow"
                );
            }
            runs.push(json!({"round": round, "setup": setup.name(), "sent_pps": sent / seconds as f64, "received_pps": received_pps, "bpf": bpf}));
            drop(agent);
            drop(rules);
        }
    }
    let median = |setup: &str| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|r| r["setup"] == setup)
            .filter_map(|r| r["received_pps"].as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (none, egress, nft) = (median("none"), median("egress"), median("nftables"));
    json!({"runs": runs, "seconds": seconds, "rounds": rounds, "median_pps": {"none": none, "egress": egress, "nftables": nft}, "egress_ratio": egress / none, "nftables_ratio": nft / none})
}

/// Learned addresses in the agent whose memory the control case measures.
const CONTROL_LEARNED: u32 = 100_000;

/// Policy compile and apply time for 10,000 names and 10,000 CIDRs, a reload of a changed
/// policy, and the agent's resident memory with 100,000 learned addresses.
/// A policy of `names` names and 10,000 CIDRs; `salt` shifts every CIDR and the last `shifted`
/// names.
fn big_policy(salt: u32, names: u32, shifted: u32) -> String {
    {
        let mut p = String::from("resolvers: [192.0.2.53]\nallow:\n  names:\n");
        for i in 0..names {
            let s = if i >= names - shifted { salt } else { 0 };
            p.push_str(&format!("    - n{}.svc{}.example.com\n", i, (i + s) % 97));
        }
        p.push_str("  cidrs:\n");
        for i in 0..10_000u32 {
            let j = i + salt;
            p.push_str(&format!("    - 10.{}.{}.0/24\n", (j >> 8) & 0xff, j & 0xff));
        }
        p
    }
}

/// Parse, first load and a reload changing every CIDR and `changed` of the names, of a policy
/// of `names` names: `(parse_s, load_s, reload_s)`. (A reload writes the new policy beside the
/// one in force, so their names together must fit `NAMES_EXACT`, 131,072.)
fn policy_times(names: u32, changed: u32) -> (f64, f64, f64) {
    let (first, changed) = (
        big_policy(0, names, changed),
        big_policy(1_000, names, changed),
    );
    let pins = TestPins::new();
    let mut ebpf = ebpf::load(&pins.pins).expect("load");
    let mut dp = Datapath::from_ebpf(&mut ebpf).expect("maps");
    let t = Instant::now();
    let p1 = egress_user::policy::parse(&first, "big.yaml".as_ref()).expect("policy");
    let parse_s = t.elapsed().as_secs_f64();
    egress_user::apply::apply(&mut dp, &p1, &Default::default()).expect("apply");
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let p2 = egress_user::policy::parse(&changed, "big.yaml".as_ref()).expect("policy");
    egress_user::apply::apply(&mut dp, &p2, &Default::default()).expect("reload");
    let reload_s = t.elapsed().as_secs_f64();
    drop(dp);
    drop(ebpf);
    (parse_s, load_s, reload_s)
}

fn control() -> Value {
    let (parse_s, load_s, reload_s) = policy_times(10_000, 10_000);
    // Scale: ten times the names, 100,000; the reload changes 10,000 of them, as many as the
    // 10,000-name reload (old and new together must fit NAMES_EXACT's 131,072).
    let (big_parse_s, big_load_s, big_reload_s) = policy_times(100_000, 10_000);

    // The real agent's memory with 100,000 learned addresses.
    let topo = Topology::new().expect("topology");
    let apins = TestPins::new();
    let agent = Agent::start(&topo, &apins, &static_policy("enforce"), &[]).expect("agent");
    let mut adp = agent.datapath();
    let until = clock::boot_ns() + 3_600_000_000_000;
    for i in 0..CONTROL_LEARNED {
        learn_by_hand(&mut adp, IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), until);
    }
    assert!(adp.learned().expect("learned").len() >= CONTROL_LEARNED as usize);
    // Let garbage collection walk them once (every 5 s) and a metrics scrape read the maps.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let _ = egress_tests::http_get(&topo.client, "/metrics");
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().unwrap()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    assert!(rss_kib > 0, "no VmRSS for the agent");
    // The operator's commands at that size, as a separate process reads the pins.
    let timed = |args: &[&str]| {
        let t = Instant::now();
        let _ = egress_tests::egress_ok_at(args, &apins);
        t.elapsed().as_secs_f64()
    };
    let status_s = timed(&["status"]);
    let suggest_s = timed(&["suggest"]);
    json!({"names": 10_000, "cidrs": 10_000, "parse_s": parse_s, "load_s": load_s, "reload_s": reload_s, "learned_addresses": CONTROL_LEARNED, "agent_rss_kib": rss_kib,
           "scale": {"names": 100_000, "changed_names": 10_000, "parse_s": big_parse_s, "load_s": big_load_s, "reload_s": big_reload_s},
           "status_s": status_s, "suggest_s": suggest_s})
}

/// Learned addresses per family for the scrape case: near the learned maps' capacity
/// (`LEARNED_CAPACITY`, 262,144 each). Every address is learned under two names, so the
/// justification map (`LEARNED_BY`, 1,048,576) is near full too: a scrape walks about two
/// million keys, the most the maps can hold.
const SCRAPE_LEARNED: u32 = 250_000;
/// The second name every address of the scrape case is learned under.
const SCRAPE_SECOND_NAME: &str = "learned-by-hand-2.test";
/// CNAME targets timed per phase of the scrape case, one every 100 ms, so each phase spans
/// more than one garbage collection (every 5 s).
const SCRAPE_SAMPLES: u32 = 80;

/// The kernel memory a pinned map is charged for (`memlock` of its fdinfo; since Linux 6.5 the
/// map's real usage, so a map allocated as used grows with its entries).
fn memlock(pins: &egress_user::pins::PinDir, name: &str) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let map = aya::maps::MapData::from_pin(pins.map(name)).expect("pinned map");
    let fd = map.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .expect("fdinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("memlock:")
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("memlock in fdinfo")
}

/// A `/proc/PID/status` memory field in KiB: `VmRSS` (now) or `VmHWM` (the peak).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("{field} of the agent"))
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Microsecond percentiles of a set of durations.
fn percentiles_us(mut d: Vec<std::time::Duration>) -> Value {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    json!({"n": d.len(), "p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0)})
}

/// A scrape at a million learned addresses: how long it takes, and whether the agent's own
/// learning (a chain ending in a CNAME without addresses: the agent allows the target) waits
/// for it. The learning latency is timed from the answer's injection to the target in the map,
/// once with no scrape running and once with scrapes back to back; both phases span garbage
/// collections. Also the kernel memory and the agent's memory per learned address.
fn scrape(learned: u32) -> Value {
    use egress_tests::live::PlayedResolver;
    let w = PlayedResolver::new(&format!(
        "\"*.app.example\", {}, {SCRAPE_SECOND_NAME}",
        egress_tests::BY_HAND
    ));
    let pins = w.agent.pin_dir();
    let learned_maps = [names::LEARNED_V4, names::LEARNED_V6, names::LEARNED_BY];
    let kernel = || -> u64 { learned_maps.iter().map(|m| memlock(&pins, m)).sum() };
    let mem0 = kernel();
    let all_maps = || -> u64 { names::ALL.iter().map(|m| memlock(&pins, m)).sum() };
    let all0 = all_maps();
    let by_map: serde_json::Map<String, Value> = names::ALL
        .iter()
        .map(|m| ((*m).to_owned(), json!(memlock(&pins, m) / 1024)))
        .collect();
    let rss0 = rss_kib(w.agent.pid().unwrap());
    let mut dp = w.agent.datapath();
    let until = clock::boot_ns() + 3_600_000_000_000;
    let t = Instant::now();
    for i in 0..learned {
        for addr in [
            IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)),
            IpAddr::V6(std::net::Ipv6Addr::from(
                0x2001_0db8_00ee_u128 << 80 | u128::from(i),
            )),
        ] {
            learn_by_hand(&mut dp, addr, until);
            learn_as(&mut dp, SCRAPE_SECOND_NAME, addr, until);
        }
    }
    let fill_s = t.elapsed().as_secs_f64();
    let mem1 = kernel();
    let all1 = all_maps();
    let addresses = 2 * learned;
    let scrape_once = || {
        let t = Instant::now();
        let (code, body) =
            egress_tests::http_get(&w.topo.client, "/metrics").expect("the scrape answered");
        let took = t.elapsed();
        assert_eq!(code, 200, "scrape failed: {body}");
        let entries: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("egress_learned_entries "))
            .and_then(|v| v.trim().parse().ok())
            .expect("egress_learned_entries in the scrape");
        assert!(
            entries >= u64::from(addresses),
            "the scrape counted {entries} learned addresses, not {addresses}"
        );
        took
    };
    let alone: Vec<_> = (0..5).map(|_| scrape_once()).collect();
    // One phase: SCRAPE_SAMPLES dangling CNAMEs, each timed until the agent allows its target.
    let mut next = 0u32;
    let mut phase = |w: &PlayedResolver, dp: &Datapath| {
        let mut lat = Vec::new();
        for _ in 0..SCRAPE_SAMPLES {
            next += 1;
            let (id, name) = (next as u16, format!("a{next}.app.example."));
            let target = format!("t{next}.edge.test.");
            let before = dp.name_counts().expect("names").1;
            w.ask(id, &name);
            let t = Instant::now();
            w.answer(response(
                id,
                &name,
                RecordType::A,
                &[Rr::Cname(&name, &target, 60)],
            ));
            while dp.name_counts().expect("names").1 == before {
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(30),
                    "the agent did not allow {target}"
                );
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            lat.push(t.elapsed());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        lat
    };
    let quiet = phase(&w, &dp);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (busy, during) = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut took = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                took.push(scrape_once());
            }
            took
        });
        let busy = phase(&w, &dp);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (busy, scraper.join().expect("scraper"))
    });
    // Reloads back to back (SIGHUP every 500 ms): each revokes by walking the learned maps.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pid = nix::unistd::Pid::from_raw(w.agent.pid().unwrap() as i32);
    let reloads0 = egress_tests::metric(&w.topo.client, "egress_reloads_total");
    let reloading = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
        let lat = phase(&w, &dp);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        lat
    });
    let reloads = egress_tests::metric(&w.topo.client, "egress_reloads_total") - reloads0;
    assert!(reloads >= 2.0, "the reloads did not happen");
    let rss1 = rss_kib(w.agent.pid().unwrap());
    let sample = |name: &str| -> f64 { egress_tests::metric(&w.topo.client, name) };
    let (gc_sum, gc_count) = (
        sample("egress_gc_duration_seconds_sum"),
        sample("egress_gc_duration_seconds_count"),
    );
    assert!(
        gc_count >= 2.0,
        "no garbage collection ran during the phases"
    );
    json!({
        "gc_ticks": gc_count,
        "gc_mean_s": gc_sum / gc_count,
        "learned_addresses": addresses,
        "justifications": 2 * addresses,
        "fill_s": fill_s,
        "scrape_alone": percentiles_us(alone),
        "scrapes_during": percentiles_us(during),
        "learn_quiet": percentiles_us(quiet),
        "learn_scraping": percentiles_us(busy),
        "learn_reloading": percentiles_us(reloading),
        "reloads": reloads,
        "kernel_bytes_per_address": (mem1 - mem0) as f64 / f64::from(addresses),
        "kernel_mib_at_start": all0 as f64 / 1048576.0,
        "kernel_mib_full": all1 as f64 / 1048576.0,
        "kernel_kib_by_map_at_start": by_map,
        "agent_rss_kib_before": rss0,
        "agent_rss_kib_after": rss1,
        "agent_peak_kib": status_kib(w.agent.pid().unwrap(), "VmHWM"),
    })
}

/// Learned-map room in the per-packet harness: the largest fill, plus a fresh address for every
/// address of every timed answer (1 + 8 + 32 per answer, 20,000 answers by default).
const LEARNED_ROOM: u32 = 2_000_000;

/// Policy text that turns the server-name judgment off.
const SNI_OFF: &str = "tls:\n  sni: off\n";

/// The per-packet harness's policy: `*.bench.test` allowed, `extra` appended.
fn packet_harness(extra: &str) -> Harness {
    Harness::with_capacities(
        // One client, far faster than a real one: the per-client query bound is lifted.
        &format!(
            "resolvers: [{RESOLVER}]\nallow:\n  names: [\"*.bench.test\"]\ndns:\n  client_query_rate: 4000000000\n{extra}"
        ),
        &[
            (names::LEARNED_V4, LEARNED_ROOM),
            (names::LEARNED_V6, LEARNED_ROOM),
            (names::LEARNED_BY, 2 * LEARNED_ROOM),
        ],
    )
}

fn packet(repeat: u32, dns_answers: usize) -> Value {
    let mut rows = Vec::new();
    for prefixes in [10usize, 100_000, 1_000_000] {
        let mut h = packet_harness("");
        fill(&mut h, prefixes);
        for prog in ebpf::FLOOR_PROGRAMS {
            h.load_classifier(prog);
        }
        let (client, dst) = (ip(CLIENT), ip(ALLOWED));
        let syn = Packet::tcp(client, dst, 443).build();
        let denied = Packet::tcp(client, ip("198.51.100.99"), 443).build();
        let other_port = Packet::tcp(client, ip("198.51.100.99"), 80).build();
        let ack = open_known_flow(&h, 40_000);
        let empty = timed_path(&h, "empty", "empty", &ack, repeat, PASS, None);
        // The floor: the same ACK through the path cut short after the parse, and after the
        // parse and one flow-table lookup (`egress-ebpf/src/floor.rs`).
        for (name, prog) in [
            ("floor: header parse only", ebpf::FLOOR_PROGRAMS[0]),
            (
                "floor: parse + one flow-table lookup",
                ebpf::FLOOR_PROGRAMS[1],
            ),
        ] {
            let ns = timed_path(&h, name, prog, &ack, repeat, PASS, None);
            rows.push(json!({"case": name, "learned_prefixes": prefixes, "ns_per_packet": ns, "empty_ns": empty, "ratio_to_empty": ns / empty, "repeat": repeat}));
        }
        rows.push(known_flow_cache_miss(&h, prefixes, dns_answers));
        let mut case = |name: &str, frame: &[u8], verdict: i32, counter: u32| {
            let ns = timed_path(&h, name, "egress", frame, repeat, verdict, Some(counter));
            rows.push(json!({"case": name, "learned_prefixes": prefixes, "ns_per_packet": ns, "empty_ns": empty, "ratio_to_empty": ns / empty, "repeat": repeat, "counter": counters::NAMES[counter as usize]}));
        };
        case("known flow (ACK)", &ack, PASS, counters::PASS_FLOW);
        case(
            "the same connection's SYN resent",
            &syn,
            PASS,
            counters::PASS_LEARNED,
        );
        case("denied SYN", &denied, DROP, counters::DROP_DENIED);
        case(
            "non-enforced port",
            &other_port,
            PASS,
            counters::PASS_NOT_ENFORCED,
        );
        if prefixes == 10 {
            rows.extend(tls_rows(&h, repeat, dns_answers.min(5_000)));
            rows.push(known_flow_without_sni(repeat, empty));
        }
        rows.extend(new_syns(&h, "new allowed SYN", prefixes, dns_answers));
        if prefixes == 1_000_000 {
            // The same SYNs without the server-name judgment's state: what the TLS part of a
            // new connection costs, in the same run.
            rows.extend(new_syns_in(
                SNI_OFF,
                "new allowed SYN, tls.sni off",
                prefixes,
                dns_answers,
            ));
        }
        for addresses in [1usize, 8, 32] {
            let (ns, base) = dns_answer_cost(&h, addresses, dns_answers);
            rows.push(json!({"case": format!("DNS answer, {addresses} address(es)"), "learned_prefixes": prefixes, "ns_per_packet": ns, "empty_ns": base, "ratio_to_empty": ns / base, "repeat": 1, "runs": dns_answers}));
        }
    }
    Value::Array(rows)
}

/// Opens the flow the known-flow case hits (its SYN, then a ClientHello naming an allowed
/// server: `tls.sni: enforce`, the default) and returns the ACK that hits it.
fn open_known_flow(h: &Harness, sport: u16) -> Vec<u8> {
    let mut syn = Packet::tcp(ip(CLIENT), ip(ALLOWED), 443);
    syn.sport = sport;
    assert_eq!(h.egress(&syn.build()), PASS);
    let mut hello = syn.clone();
    hello.tcp_flags = TCP_ACK;
    hello.seq = 2;
    hello.payload_bytes = Some(ClientHello::new("flow.bench.test").build());
    assert_eq!(h.egress(&hello.build()), PASS);
    let mut ack = syn;
    ack.tcp_flags = TCP_ACK;
    ack.build()
}

/// One run of `egress` on each of `frames` (`repeat` 1), and of the empty program run the same
/// way on each: the row of `case`. Every run must pass and count `counter` once.
fn one_run_each<'a>(
    h: &Harness,
    case: &str,
    prefixes: usize,
    frames: impl Iterator<Item = &'a Vec<u8>>,
    counter: u32,
) -> Value {
    let before = h.counter(counter);
    let (mut total, mut base, mut runs) = (0.0, 0.0, 0u32);
    for frame in frames {
        let (ns, ret) = per_run(h, "egress", frame, 1);
        assert_eq!(ret, PASS, "{case}: another verdict");
        total += ns;
        base += per_run(h, "empty", frame, 1).0;
        runs += 1;
    }
    assert_eq!(
        h.counter(counter) - before,
        u64::from(runs),
        "{case}: another path was timed"
    );
    let (ns, empty) = (total / f64::from(runs), base / f64::from(runs));
    json!({"case": case, "learned_prefixes": prefixes, "ns_per_packet": ns, "empty_ns": empty, "ratio_to_empty": ns / empty, "repeat": 1, "runs": runs, "counter": counters::NAMES[counter as usize]})
}

/// The known-flow case run for `seconds`, the programs loaded all along: the subject of a
/// profile by source line (`perf record` samples mapped through the program's JIT line info;
/// docs/design.md, *Where a known flow's time goes*).
fn hold(seconds: u64) -> Value {
    let mut h = packet_harness("");
    fill(&mut h, 10);
    let ack = open_known_flow(&h, 40_000);
    eprintln!("egress-bench: the known-flow case runs for {seconds} s");
    let (start, mut ns, mut rounds) = (Instant::now(), 0.0, 0u32);
    while start.elapsed().as_secs() < seconds {
        ns += timed_path(
            &h,
            "known flow (ACK)",
            "egress",
            &ack,
            1_000_000,
            PASS,
            Some(counters::PASS_FLOW),
        );
        rounds += 1;
    }
    json!({"case": "known flow (ACK)", "seconds": seconds, "ns_per_packet": ns / f64::from(rounds), "repeat": 1_000_000, "rounds": rounds})
}

/// `runs` SYNs to an allowed destination on 443, each opening a connection of its own (a new
/// source port each run: a repeated frame would time the same connection's SYN resent, which
/// finds its state and does less), one run each (`repeat` 1, as the DNS rows, against the
/// empty program run the same way); then each SYN a second time, one run each: what a run costs
/// with caches as cold but no new state, so the difference is the new connection's state.
fn new_syns(h: &Harness, case: &str, prefixes: usize, runs: usize) -> [Value; 2] {
    // Source ports of their own (the other cases use 40,000 to 41,001 and from 10,001 up), one
    // per run: more runs would reopen tuples, and `TLS_PENDING` (65,536 entries) would evict.
    const FIRST_PORT: u16 = 45_000;
    assert!(
        runs <= usize::from(u16::MAX - FIRST_PORT),
        "{case}: at most {} new connections",
        u16::MAX - FIRST_PORT
    );
    let (client, dst) = (ip(CLIENT), ip(ALLOWED));
    let syns: Vec<Vec<u8>> = (0..runs)
        .map(|i| {
            let mut syn = Packet::tcp(client, dst, 443);
            syn.sport = FIRST_PORT + i as u16;
            syn.seq = 1_000 + i as u32;
            syn.build()
        })
        .collect();
    let row = |case: &str| one_run_each(h, case, prefixes, syns.iter(), counters::PASS_LEARNED);
    let new = row(case);
    [
        new,
        row(&format!("{case}: each SYN a second time, one run each")),
    ]
}

/// [`new_syns`] in a harness of its own (`extra` policy text), filled with `prefixes`.
fn new_syns_in(extra: &str, case: &str, prefixes: usize, runs: usize) -> [Value; 2] {
    let mut h = packet_harness(extra);
    fill(&mut h, prefixes);
    new_syns(&h, case, prefixes, runs)
}

/// A known flow the CPU's flow cache does not hold: two flows' ACKs in turn, one run each
/// (`repeat` 1, as the DNS rows, against the empty program run the same way), so every run
/// misses the cache and takes the flow table.
fn known_flow_cache_miss(h: &Harness, prefixes: usize, runs: usize) -> Value {
    let acks = [open_known_flow(h, 41_000), open_known_flow(h, 41_001)];
    one_run_each(
        h,
        "known flow (ACK), flow cache miss",
        prefixes,
        acks.iter().cycle().take(runs),
        counters::PASS_FLOW,
    )
}

/// The TLS server-name judgment: a new connection's ClientHello (517 B, 1.9 KB with the name
/// last, denied, in two segments), each on a connection of its own opened by an untimed SYN,
/// `runs` connections per case; and QUIC denied (stateless, `repeat` runs).
fn tls_rows(h: &Harness, repeat: u32, runs: usize) -> Vec<Value> {
    let (client, dst) = (ip(CLIENT), ip(ALLOWED));
    let hello = |name: &str, padding: usize| {
        let mut c = ClientHello::new(name);
        c.padding = padding;
        c.build()
    };
    // 517 bytes, as curl's; about 1.9 KB with the name after a post-quantum-sized block.
    let small = hello("cgr.bench.test", 517 - hello("cgr.bench.test", 0).len() - 4);
    let large = hello(
        "registry.bench.test",
        1900 - hello("registry.bench.test", 0).len() - 4,
    );
    let denied = hello(
        "mirror.other.test",
        517 - hello("mirror.other.test", 0).len() - 4,
    );
    let mut sport = 10_000u16;
    let mut rows = Vec::new();
    // Each case: (name, segments of the ClientHello, verdict of the last, its counter).
    let cases: [(&str, Vec<&[u8]>, i32, u32); 4] = [
        (
            "TLS ClientHello 517 B, allowed",
            vec![&small],
            PASS,
            counters::PASS_TLS_SNI,
        ),
        (
            "TLS ClientHello 1.9 KB, name last, allowed",
            vec![&large],
            PASS,
            counters::PASS_TLS_SNI,
        ),
        (
            "TLS ClientHello 517 B, denied",
            vec![&denied],
            DROP,
            counters::DENY_TLS_SNI,
        ),
        (
            "TLS ClientHello 1.9 KB in two segments (both timed)",
            vec![&large[..1200], &large[1200..]],
            PASS,
            counters::PASS_TLS_SNI,
        ),
    ];
    for (case, segments, verdict, counter) in cases {
        let before = h.counter(counter);
        let (mut total, mut baseline) = (0.0, 0.0);
        for _ in 0..runs {
            sport = sport.wrapping_add(1).max(10_000);
            let mut p = Packet::tcp(client, dst, 443);
            p.sport = sport;
            p.seq = 1000;
            p.tcp_flags = TCP_SYN;
            assert_eq!(h.egress(&p.build()), PASS, "{case}: SYN");
            let mut at = 1001u32;
            for (i, seg) in segments.iter().enumerate() {
                p.tcp_flags = TCP_ACK;
                p.seq = at;
                p.payload_bytes = Some(seg.to_vec());
                let frame = p.build();
                let (ns, ret) = per_run(h, "egress", &frame, 1);
                let last = i + 1 == segments.len();
                assert_eq!(ret, if last { verdict } else { PASS }, "{case}");
                total += ns;
                baseline += per_run(h, "empty", &frame, 1).0;
                at += seg.len() as u32;
            }
        }
        assert_eq!(
            h.counter(counter) - before,
            runs as u64,
            "{case}: another path was timed"
        );
        let (ns, base) = (total / runs as f64, baseline / runs as f64);
        rows.push(json!({"case": case, "learned_prefixes": 10, "ns_per_packet": ns, "empty_ns": base, "ratio_to_empty": ns / base, "repeat": 1, "runs": runs}));
    }
    let mut quic = Packet::udp(client, dst, 443);
    quic.payload = 1200;
    let quic = quic.build();
    let empty = timed_path(h, "empty", "empty", &quic, repeat, PASS, None);
    let ns = timed_path(
        h,
        "QUIC denied",
        "egress",
        &quic,
        repeat,
        DROP,
        Some(counters::DENY_QUIC),
    );
    rows.push(json!({"case": "QUIC to a learned address, denied", "learned_prefixes": 10, "ns_per_packet": ns, "empty_ns": empty, "ratio_to_empty": ns / empty, "repeat": repeat, "counter": "deny_quic"}));
    rows
}

/// The known-flow case with server names off, in the same run: the judgment happens once per
/// connection, so the known-flow path must cost the same either way (`empty` is the enforce
/// harness's empty-program time on the same frame).
fn known_flow_without_sni(repeat: u32, empty: f64) -> Value {
    let mut h = Harness::new("allow:\n  names: [\"*.bench.test\"]\ntls:\n  sni: off\n");
    learn_by_hand(&mut h.dp, ip(ALLOWED), clock::boot_ns() + 3_600_000_000_000);
    let (client, dst) = (ip(CLIENT), ip(ALLOWED));
    assert_eq!(h.egress(&Packet::tcp(client, dst, 443).build()), PASS);
    let mut ack = Packet::tcp(client, dst, 443);
    ack.tcp_flags = TCP_ACK;
    let ack = ack.build();
    let empty_here = timed_path(&h, "empty", "empty", &ack, repeat, PASS, None);
    let case = "known flow (ACK), tls.sni off";
    let ns = timed_path(
        &h,
        case,
        "egress",
        &ack,
        repeat,
        PASS,
        Some(counters::PASS_FLOW),
    );
    json!({"case": case, "learned_prefixes": 10, "ns_per_packet": ns, "empty_ns": empty_here, "ratio_to_empty": ns / empty_here, "repeat": repeat, "counter": "pass_flow", "enforce_empty_ns": empty})
}

/// Runs the resolve-then-connect race in `world` and returns its JSON.
fn race_in(world: &World, count: u64, first: &str) -> Value {
    let race = std::env::current_exe()
        .unwrap()
        .with_file_name("egress-race");
    let out = world
        .run_in_client(&race, &[&count.to_string(), "race.test", "200", first])
        .expect("race");
    serde_json::from_str(out.trim()).expect("race JSON")
}

/// The same topology and traffic with egress and with the classic dnsmasq `--nftset` +
/// nftables setup: the race over `count` fresh names (first-connect latency, slow connects,
/// dropped first packets, resolve latency), then the behaviour after the TTL has expired.
fn side_by_side(count: u64) -> Value {
    let first = egress_tests::live::RACE_FIRST;
    let mut rows = Vec::new();
    let local = || WorldOptions {
        nameservers: vec!["127.0.0.1"],
        ..WorldOptions::default()
    };
    // No enforcement, the resolver queried directly (over UDP, and over TCP with glibc's
    // `use-vc`): the baselines for both.
    for (label, options) in [
        ("none (resolver queried directly)", ""),
        ("none, DNS over TCP", "use-vc"),
    ] {
        let w = World::new(WorldOptions {
            options,
            ..WorldOptions::default()
        })
        .expect("world");
        rows.push(json!({"setup": label, "race": race_in(&w, count, first)}));
    }
    // egress: UDP and DNS over TCP, both learned in the kernel.
    for (label, options) in [("egress", ""), ("egress, DNS over TCP", "use-vc")] {
        let w = World::new(WorldOptions {
            options,
            ..WorldOptions::default()
        })
        .expect("world");
        let pins = TestPins::new();
        let agent = Agent::start(&w.topo, &pins, &policy("  min_ttl: 5s\n"), &[]).expect("agent");
        let race = race_in(&w, count, first);
        assert_learned_path(&agent, &race);
        let c = agent.datapath().counters().expect("counters");
        let learned = agent.datapath().learned().expect("learned").len();
        rows.push(json!({"setup": label, "race": race, "dropped": c[counters::DROP_DENIED as usize], "allowed_addresses": learned}));
    }
    // A plain local dnsmasq forwarder (the extra hop the classic setup adds, without sets).
    {
        let w = World::new(local()).expect("world");
        let _fwd = classic::Forwarder::start(w.client(), egress_tests::live::RESOLVER_V4, &[])
            .expect("forwarder");
        rows.push(json!({"setup": "dnsmasq forwarder only (no sets, no rules)", "race": race_in(&w, count, first)}));
    }
    // The classic setup, asked over UDP and over TCP.
    for (label, options) in [
        ("dnsmasq --nftset + nftables", ""),
        ("dnsmasq --nftset + nftables, DNS over TCP", "use-vc"),
    ] {
        let w = World::new(WorldOptions { options, ..local() }).expect("world");
        let rules = classic::Rules::install(w.client()).expect("nftables");
        let _fwd = classic::Forwarder::start(
            w.client(),
            egress_tests::live::RESOLVER_V4,
            &["race.test", "cgr.dev"],
        )
        .expect("forwarder");
        let race = race_in(&w, count, first);
        let allowed = rules.allowed4().expect("set");
        // The race went through the set: dnsmasq added the answered addresses.
        assert!(
            allowed as u64 >= race["connected"].as_u64().unwrap_or(0),
            "the nftables set holds {allowed} addresses: the race took another path"
        );
        rows.push(json!({"setup": label, "race": race, "dropped": rules.dropped().expect("counter"), "allowed_addresses": allowed}));
    }
    json!({"count": count, "rows": rows, "expiry": [expiry(false), expiry(true)], "set_timeout": classic::SET_TIMEOUT})
}

/// How long past the TTL the expiry case waits before trying the address again.
const WAIT_AFTER_TTL_MS: u64 = 1_500;

/// With records of a 2 s TTL: resolve a name, open a connection, wait until the TTL has passed,
/// then try a new connection to the same address (without resolving again) and use the old one.
fn expiry(classic_setup: bool) -> Value {
    use std::io::{Read, Write};
    const TTL: u32 = 2;
    let w = World::new(WorldOptions {
        ttl: TTL,
        nameservers: if classic_setup {
            vec!["127.0.0.1"]
        } else {
            vec![egress_tests::live::RESOLVER_V4]
        },
        ..WorldOptions::default()
    })
    .expect("world");
    let pins = TestPins::new();
    let mut _agent = None;
    let mut _classic = None;
    if classic_setup {
        let rules = classic::Rules::install(w.client()).expect("nftables");
        let fwd =
            classic::Forwarder::start(w.client(), egress_tests::live::RESOLVER_V4, &["race.test"])
                .expect("forwarder");
        _classic = Some((rules, fwd));
    } else {
        _agent = Some(
            Agent::start(&w.topo, &pins, &policy("  min_ttl: 1s\n  grace: 0s\n"), &[])
                .expect("agent"),
        );
    }
    let addr = "198.19.200.1";
    let first = race_in(&w, 1, addr);
    assert_eq!(
        first["connected"], 1,
        "the name did not connect before its TTL ran out"
    );
    let timeout = std::time::Duration::from_millis(1500);
    let mut conn = w
        .topo
        .connect(addr, 443, timeout)
        .expect("connect after resolve");
    std::thread::sleep(std::time::Duration::from_millis(
        u64::from(TTL) * 1000 + WAIT_AFTER_TTL_MS,
    ));
    let new_after = w.topo.connect(addr, 443, timeout).is_ok();
    let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
    conn.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 64];
    let old_after = matches!(conn.read(&mut buf), Ok(n) if n > 0);
    json!({
        "setup": if classic_setup { "dnsmasq --nftset + nftables" } else { "egress (min_ttl 1s, grace 0s)" },
        "ttl_s": TTL,
        "wait_after_ttl_s": WAIT_AFTER_TTL_MS as f64 / 1000.0,
        "new_connection_after_ttl": new_after,
        "established_connection_after_ttl": old_after,
    })
}
