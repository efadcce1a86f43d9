//! Fault injection with the real programs and real traffic: the agent killed while learning and
//! while reloading, the DNS ring buffer overflowing, the learned map full, a flood of spoofed
//! answers, and a reload storm. In each: nothing allowed that the policy denies, nothing allowed
//! lost, and the agent's memory bounded (its peak is printed and checked).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use egress_common::{counters, testing::Packet};
use egress_tests::{
    ALLOWED_V4, Agent, NetNs, Servers, TestPins, Topology,
    dnsmsg::{Rr, query, response},
    harness::Harness,
    http_get, ip, learn_by_hand,
    live::{RACE_FIRST, RESOLVER_V4, WEB_DENIED, WEB_R2, World, WorldOptions, policy},
};
use hickory_proto::rr::RecordType;
use nix::{sys::signal, unistd::Pid};

const MAX: Duration = Duration::from_secs(3);
/// Bound on the agent's peak resident memory (VmHWM) under every fault below, measured on the
/// agent that went through the fault (after a kill -9, the one that restarted and caught up):
/// 35.8–38.9 MiB measured on the host (Linux 6.18, debug build), the most with the ring
/// overflow (the 4 MiB DNS ring is mapped and read whole). The bound is that plus about 20 %:
/// a leak of a few MiB under a fault fails it, where the old 100 MiB bound hid 60.
const RSS_BOUND_KIB: u64 = 47 * 1024;

fn counter(agent: &Agent, index: u32) -> u64 {
    agent.datapath().counters().unwrap()[index as usize]
}

/// The agent's peak resident set (VmHWM), checked against [`RSS_BOUND_KIB`] and printed.
fn check_memory(agent: &Agent, test: &str) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().unwrap())).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let peak = kib("VmHWM:");
    eprintln!(
        "{test}: agent peak RSS {} KiB, now {} KiB",
        peak,
        kib("VmRSS:")
    );
    assert!(peak < RSS_BOUND_KIB, "{test}: peak RSS {peak} KiB");
}

fn race(w: &World, count: u32, first: &str) -> serde_json::Value {
    let out = w
        .run_in_client(
            Path::new(env!("CARGO_BIN_EXE_egress-race")),
            &[&count.to_string(), "race.test", "200", first],
        )
        .unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

fn nth(first: &str, n: u32) -> String {
    Ipv4Addr::from(u32::from(first.parse::<Ipv4Addr>().unwrap()) + n).to_string()
}

fn send(agent: &Agent, sig: signal::Signal) {
    signal::kill(Pid::from_raw(agent.pid().unwrap() as i32), sig).unwrap();
}

#[test]
fn kill_9_while_learning_loses_nothing_and_a_restart_adopts_the_pins() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let mut agent = Agent::start(&w.topo, &pins, &policy("  min_ttl: 5s\n"), &[]).unwrap();
    let first = race(&w, 500, RACE_FIRST);
    assert_eq!(first["slow"], 0, "{first}");
    check_memory(&agent, "kill -9 while learning");
    // Kill the agent while a client is resolving and connecting in a loop.
    let racing = {
        let (ns, first) = (w.client().name.clone(), nth(RACE_FIRST, 500));
        std::thread::spawn(move || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(env!("CARGO_BIN_EXE_egress-race"))
                .args(["2000", "race.test", "200", &first])
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        })
    };
    // Killed once the race is under way (its first answers learned), not before it starts.
    let learned0 = counter(&agent, counters::DNS_ANSWER_LEARNED);
    egress_tests::wait_for("the race to begin", || {
        counter(&agent, counters::DNS_ANSWER_LEARNED) >= learned0 + 20
    });
    agent.kill9();
    let during = racing.join().unwrap();
    // The kernel learns without the agent: the names resolved while it was dead still
    // connected at once.
    assert_eq!(during["connected"], 2000, "{during}");
    assert_eq!(during["slow"], 0, "{during}");
    // Everything learned is still there; the policy still denies what it denied.
    let learned = agent.datapath().learned().unwrap().len();
    assert!(learned >= 2500, "{learned} learned");
    assert_eq!(
        w.curl("https://denied.test/", &[], Duration::from_secs(1)),
        None
    );
    // A restart adopts the pins: the same entries, and learning goes on.
    agent.spawn(&[]).unwrap();
    agent.wait_ready(w.client()).unwrap();
    assert!(agent.datapath().learned().unwrap().len() >= learned);
    let after = race(&w, 200, &nth(RACE_FIRST, 2500));
    assert_eq!(after["slow"], 0, "{after}");
    assert_eq!(w.curl("https://cgr.dev/", &[], MAX), Some(200));
}

/// Connections from the client to [`ALLOWED_V4`]:443, back to back with `pause` between them,
/// until [`ConnectLoop::finish`]: (connected, failed).
struct ConnectLoop {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 2]>,
    thread: std::thread::JoinHandle<()>,
}

impl ConnectLoop {
    fn start(topo: &Topology, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let addr: SocketAddr = format!("{ALLOWED_V4}:443").parse().unwrap();
        let thread = topo.client.spawn({
            let (stop, counts) = (stop.clone(), counts.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    // A timeout long enough to outlast a SYN retransmission: the test echo
                    // server's accept queue overflows at this rate now and then (seen: 8 of
                    // 1,600 at 500 ms, with no egress drop counted). Egress drops are checked
                    // by counter.
                    let ok = std::net::TcpStream::connect_timeout(&addr, MAX).is_ok();
                    counts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(pause);
                }
            }
        });
        Self {
            stop,
            counts,
            thread,
        }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

/// One of three policies for the mid-reload kill: apart from one CIDR all share (the address
/// the test connects to throughout), every part differs (mode or ports, resolvers, CIDRs, exact
/// and wildcard names), so a mix of two shows in some part. Large enough that writing one
/// takes the agent tens of milliseconds, so kills land inside it. Three, in turn: the
/// generation a reload writes then never already holds the policy it is given.
struct Whole {
    text: String,
    mode: u32,
    ports: Vec<u16>,
    resolvers: BTreeSet<std::net::IpAddr>,
    cidrs: BTreeSet<ipnet::IpNet>,
    exact: Vec<String>,
    wild: Vec<String>,
}

impl Whole {
    const SIZE: u32 = 2_000;

    fn new(which: u8) -> Self {
        let (mode, ports) = match which {
            0 => ("enforce", vec![443]),
            1 => ("audit", vec![443, 8443]),
            _ => ("enforce", vec![443, 9443]),
        };
        let resolver: std::net::IpAddr = format!("192.0.2.{}", 53 + which).parse().unwrap();
        let mut cidrs: BTreeSet<ipnet::IpNet> = (0..Self::SIZE)
            .map(|i| {
                format!("10.{}.{}.{}/32", 100 + which, i / 250, i % 250)
                    .parse()
                    .unwrap()
            })
            .collect();
        cidrs.insert(format!("{ALLOWED_V4}/32").parse().unwrap());
        let exact: Vec<String> = (0..Self::SIZE)
            .map(|i| format!("n{i}.p{which}.example"))
            .collect();
        let wild: Vec<String> = (0..Self::SIZE / 10)
            .map(|i| format!("w{i}.p{which}.example"))
            .collect();
        let list = |v: Vec<String>| v.join(", ");
        let text = format!(
            "mode: {mode}\nports: {ports:?}\nresolvers: [{resolver}]\nallow:\n  cidrs: [{}]\n  names: [{}, {}]\n",
            list(cidrs.iter().map(|c| c.to_string()).collect()),
            list(exact.clone()),
            list(wild.iter().map(|w| format!("\"*.{w}\"")).collect()),
        );
        Self {
            text,
            mode: if mode == "audit" {
                egress_common::mode::AUDIT
            } else {
                egress_common::mode::ENFORCE
            },
            ports,
            resolvers: [resolver].into(),
            cidrs,
            exact,
            wild,
        }
    }

    /// Whether the policy in force in the pinned maps is exactly this one.
    fn in_force(&self, dp: &egress_user::datapath::Datapath) -> bool {
        let cfg = dp.config().unwrap();
        let hash = |n: &str| egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, n).0;
        let (exact, wild) = dp.policy_names().unwrap();
        // The slot in force names its own generation: the programs read the rest by it.
        cfg.generation == dp.active().unwrap()
            && cfg.mode == self.mode
            && dp.ports().unwrap() == self.ports
            && dp.resolvers().unwrap().into_iter().collect::<BTreeSet<_>>() == self.resolvers
            && dp
                .static_cidrs()
                .unwrap()
                .into_iter()
                .collect::<BTreeSet<_>>()
                == self.cidrs
            && exact == self.exact.iter().map(|n| hash(n)).collect()
            && wild == self.wild.iter().map(|n| hash(n)).collect()
    }

    /// How many of this policy's CIDRs generation `g` holds, in force or not.
    fn written_in(&self, dp: &egress_user::datapath::Datapath, g: u32) -> usize {
        let held: BTreeSet<ipnet::IpNet> = dp.static_cidrs_of(g).unwrap().into_iter().collect();
        let shared: ipnet::IpNet = format!("{ALLOWED_V4}/32").parse().unwrap();
        self.cidrs
            .iter()
            .filter(|c| **c != shared && held.contains(c))
            .count()
    }
}

#[test]
fn kill_9_in_the_middle_of_a_reload_keeps_one_whole_policy() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let policies = [Whole::new(0), Whole::new(1), Whole::new(2)];
    let mut agent = Agent::start(&topo, &pins, &policies[0].text, &[]).unwrap();
    assert!(policies[0].in_force(&agent.datapath()));
    let drops0 = counter(&agent, counters::DROP_DENIED);
    // Connections to the address every policy allows, back to back, through every kill.
    let traffic = ConnectLoop::start(&topo, Duration::from_millis(5));
    // How long a whole reload takes here, from the signal to the reload counted: the kills
    // below are spread over that window and a little past it.
    std::fs::write(&agent.policy, &policies[1].text).unwrap();
    let reloads = || egress_tests::metric(&topo.client, "egress_reloads_total");
    let before = reloads();
    let start = Instant::now();
    send(&agent, signal::Signal::SIGHUP);
    while reloads() == before {
        assert!(start.elapsed() < Duration::from_secs(60), "no reload");
        std::thread::sleep(Duration::from_millis(2));
    }
    let window = start.elapsed();
    assert!(policies[1].in_force(&agent.datapath()));
    eprintln!("a whole reload takes {window:?}");
    // The first CIDR of each policy (not the shared one), as the static trie keys it in the generation not in
    // force: it appears when a reload starts writing (its first write), long after the signal
    // (the policy is read and checked first).
    let statics = aya::maps::LpmTrie::<_, [u8; 5], egress_common::maps::StaticValue>::try_from(
        aya::maps::Map::LpmTrie(
            aya::maps::MapData::from_pin(pins.pins.map(egress_common::maps::names::STATIC_V4))
                .unwrap(),
        ),
    )
    .unwrap();
    let first_written = |which: usize, g: u32| {
        let shared: ipnet::IpNet = format!("{ALLOWED_V4}/32").parse().unwrap();
        let Some(ipnet::IpNet::V4(first)) = policies[which].cidrs.iter().find(|c| **c != shared)
        else {
            unreachable!()
        };
        let data = egress_common::maps::static_v4(g, first.network().octets());
        statics
            .get(&aya::maps::lpm_trie::Key::new(40, data), 0)
            .is_ok()
    };
    // Kills alternate: at delays spread over the whole reload (reading, checking, writing,
    // switching), and at delays spread over the write once it is seen to begin. Each kill costs
    // a restart (the programs verified again: seconds under emulation), so the kills stop at
    // 16 or after 150 s, whichever is first, but not before 6.
    const KILLS: u32 = 16;
    let budget = Instant::now() + Duration::from_secs(150);
    let (mut kills, mut old, mut new, mut inside) = (0, 0, 0, 0);
    let mut current = 1;
    while kills < KILLS && (kills < 6 || Instant::now() < budget) {
        let k = kills;
        kills += 1;
        let next = (current + 1) % policies.len();
        std::fs::write(&agent.policy, &policies[next].text).unwrap();
        let other = egress_common::maps::generation::other(agent.datapath().active().unwrap());
        // The generation about to be written holds none of the next policy yet.
        assert_eq!(policies[next].written_in(&agent.datapath(), other), 0);
        let signalled = Instant::now();
        send(&agent, signal::Signal::SIGHUP);
        let delay = if k % 2 == 0 {
            window * 5 * k / (4 * KILLS)
        } else {
            while !first_written(next, other) && signalled.elapsed() < window * 2 {
                std::thread::sleep(Duration::from_micros(200));
            }
            window * k / (8 * KILLS)
        };
        std::thread::sleep(delay);
        agent.kill9();
        let dp = agent.datapath();
        let seen = signalled.elapsed();
        if policies[current].in_force(&dp) {
            // Killed while writing the new policy: some of it is in the maps, not in force.
            let written = policies[next].written_in(&dp, other);
            eprintln!(
                "kill {k} at {seen:?} (delay {delay:?}): old in force, {written} new CIDRs written"
            );
            old += 1;
            inside += usize::from(written > 0);
        } else {
            assert!(
                policies[next].in_force(&dp),
                "kill {k} ({delay:?} after {}): the maps hold neither the old nor the new policy whole",
                if k % 2 == 0 {
                    "the signal"
                } else {
                    "the write began"
                }
            );
            eprintln!("kill {k} at {seen:?} (delay {delay:?}): new in force");
            new += 1;
        }
        // A restart applies the file as it is now.
        agent.spawn(&[]).unwrap();
        agent.wait_ready(&topo.client).unwrap();
        assert!(policies[next].in_force(&agent.datapath()));
        current = next;
    }
    let (ok, failed) = traffic.finish();
    eprintln!(
        "{kills} kills: old policy whole {old} ({inside} inside the write), new whole {new}; {ok} connects to the shared address, {failed} failed"
    );
    assert!(
        inside > 0,
        "no kill landed inside a reload's write; the test proves nothing"
    );
    // What every policy allows was never denied, through reloads, kills and restarts.
    assert_eq!(counter(&agent, counters::DROP_DENIED) - drops0, 0);
    assert_eq!(failed, 0);
    assert!(ok > 0);
    check_memory(&agent, "kill -9 during a reload");
}

#[test]
fn a_full_dns_ring_is_counted_and_the_kernel_still_learns_everything() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let agent = Agent::start(&w.topo, &pins, &policy("  min_ttl: 5s\n"), &[]).unwrap();
    // The agent stops draining. Each copy is sized to its answer (about 128 bytes of the ring
    // here: header, ~60-byte message, ring header), so 40,000 answers overflow the 4 MiB ring.
    const ANSWERS: u32 = 40_000;
    send(&agent, signal::Signal::SIGSTOP);
    let r = race(&w, ANSWERS, RACE_FIRST);
    let lost = counter(&agent, counters::DNS_EVENT_LOST);
    send(&agent, signal::Signal::SIGCONT);
    assert!(lost > 0, "the ring never filled");
    // The race guarantee holds for what the kernel learns itself: every connect was fast.
    assert_eq!(
        r["connected"],
        ANSWERS,
        "{r} {:?}",
        agent.datapath().counters().unwrap()
    );
    assert_eq!(r["slow"], 0, "{r}");
    assert!(agent.datapath().learned().unwrap().len() >= ANSWERS as usize);
    // Draining tens of thousands of copies takes a while under emulation: wait for the
    // condition, not a fixed time.
    egress_tests::wait_for("the agent to answer ready after the overflow", || {
        http_get(w.client(), "/readyz").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(w.curl("https://cgr.dev/", &[], MAX), Some(200));
    eprintln!("ring overflow: {lost} copies lost of {ANSWERS}, 0 slow connects");
    check_memory(&agent, "ring overflow");
}

#[test]
fn a_full_learned_map_fails_cleanly_and_learns_again_after_garbage_collection() {
    const CAPACITY: u32 = 8;
    let resolver = "192.0.2.53";
    let client = "192.0.2.10";
    let mut h = Harness::with_learned_capacity(
        &format!("resolvers: [{resolver}]\nallow:\n  names: [\"*.full.test\"]\n"),
        Some(CAPACITY),
    );
    // Fill the map with entries that expire at once.
    let soon = egress_user::clock::boot_ns() + 1_000_000;
    for i in 0..CAPACITY {
        learn_by_hand(&mut h.dp, ip(&format!("10.0.0.{i}")), soon);
    }
    std::thread::sleep(Duration::from_millis(5));
    let answer = |h: &Harness, id: u16, name: &str, addr: &str| {
        let q = Packet::udp_with(
            ip(client),
            40_000,
            ip(resolver),
            53,
            query(id, name, RecordType::A),
        )
        .build();
        h.egress(&q);
        let a = Packet::udp_with(
            ip(resolver),
            53,
            ip(client),
            40_000,
            response(id, name, RecordType::A, &[Rr::Addr(name, addr, 300)]),
        )
        .build();
        h.ingress(&a);
    };
    let syn = |h: &Harness, dst: &str| h.egress(&Packet::tcp(ip(client), ip(dst), 443).build());
    answer(&h, 1, "a.full.test.", "198.51.100.1");
    let failed = h.dp.counters().unwrap()[counters::DNS_LEARN_FAILED as usize];
    assert_eq!(failed, 1, "the insert into the full map was not counted");
    assert_eq!(
        syn(&h, "198.51.100.1"),
        egress_common::tc_action::DROP,
        "an address that could not be learned was allowed"
    );
    // Garbage collection frees the expired entries; the same answer is learned now.
    let (done, _) = h.dp.collect_garbage(egress_user::clock::boot_ns()).unwrap();
    assert_eq!(done.expired, CAPACITY as usize);
    answer(&h, 2, "a.full.test.", "198.51.100.1");
    assert_eq!(syn(&h, "198.51.100.1"), egress_common::tc_action::PASS);
}

/// Sends `count` UDP datagrams from `src:53` to the client with one raw socket (fast enough for
/// 100,000 over the veth in a couple of seconds), `payload(i)` each.
fn flood(server: &NetNs, src: &str, count: u32, payload: impl Fn(u32) -> Vec<u8> + Send + 'static) {
    let src = src.to_owned();
    server.run(move || {
        let s = egress_tests::raw::socket(&src, socket2::Protocol::UDP);
        let dst: SocketAddr = format!("{}:0", egress_tests::CLIENT_V4).parse().unwrap();
        for i in 0..count {
            let body = payload(i);
            let mut udp = Vec::with_capacity(8 + body.len());
            udp.extend_from_slice(&53u16.to_be_bytes());
            udp.extend_from_slice(&(40_000 + (i % 1000) as u16).to_be_bytes());
            udp.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&body);
            // A full socket buffer is retried: every datagram must leave.
            while s.send_to(&udp, &dst.into()).is_err() {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    });
}

/// Packets the client's interface dropped on receipt (`rx_dropped`: its backlog was full).
fn rx_dropped(topo: &Topology) -> u64 {
    let iface = topo.iface.clone();
    let json = topo
        .client
        .run(move || egress_tests::sh(&["ip", "-j", "-s", "link", "show", "dev", &iface]).unwrap());
    let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    v[0]["stats64"]["rx"]["dropped"]
        .as_u64()
        .expect("rx dropped")
}

#[test]
fn a_hundred_thousand_spoofed_answers_teach_nothing() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let agent = Agent::start(&w.topo, &pins, &policy("  min_ttl: 5s\n"), &[]).unwrap();
    let spoof = |i: u32| {
        response(
            i as u16,
            "cgr.dev.",
            RecordType::A,
            &[Rr::Addr("cgr.dev.", WEB_DENIED, 300)],
        )
    };
    let (untrusted0, unsolicited0) = (
        counter(&agent, counters::DNS_UNTRUSTED),
        counter(&agent, counters::DNS_UNSOLICITED),
    );
    const SENT: u64 = 50_000;
    let t = Instant::now();
    // From an address that is not a resolver, then from the resolver's own address answering
    // nothing the node asked. What the veth could not take (its backlog full) never reached
    // the program: counted by the interface as dropped, and subtracted.
    let dropped0 = rx_dropped(&w.topo);
    flood(&w.topo.server, WEB_R2, SENT as u32, spoof);
    let dropped1 = rx_dropped(&w.topo);
    flood(&w.topo.server, RESOLVER_V4, SENT as u32, spoof);
    let dropped2 = rx_dropped(&w.topo);
    let (lost_untrusted, lost_unsolicited) = (dropped1 - dropped0, dropped2 - dropped1);
    eprintln!(
        "100,000 spoofed answers sent in {:?}; {lost_untrusted} + {lost_unsolicited} dropped by the veth",
        t.elapsed()
    );
    assert!(
        lost_untrusted + lost_unsolicited < SENT / 10,
        "most of the flood never arrived; the test proves little"
    );
    let (untrusted, unsolicited) = (SENT - lost_untrusted, SENT - lost_unsolicited);
    // The last packets may still be in the receive backlog when the sender is done.
    egress_tests::wait_for("every arrived answer to be judged", || {
        counter(&agent, counters::DNS_UNTRUSTED) - untrusted0 >= untrusted
            && counter(&agent, counters::DNS_UNSOLICITED) - unsolicited0 >= unsolicited
    });
    assert_eq!(
        counter(&agent, counters::DNS_UNTRUSTED) - untrusted0,
        untrusted
    );
    assert_eq!(
        counter(&agent, counters::DNS_UNSOLICITED) - unsolicited0,
        unsolicited
    );
    assert!(agent.datapath().learned().unwrap().is_empty());
    assert_eq!(
        w.curl(
            &format!("https://{WEB_DENIED}/"),
            &[],
            Duration::from_secs(1)
        ),
        None
    );
    // Real answers still teach.
    assert_eq!(w.curl("https://cgr.dev/", &[], MAX), Some(200));
    check_memory(&agent, "100,000 spoofed answers");
}

#[test]
fn a_reload_storm_never_drops_allowed_traffic_and_ends_on_the_last_valid_policy() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let valid = |i: u32| format!("allow:\n  cidrs: [{ALLOWED_V4}, 203.0.113.{i}/32]\n");
    let invalid = [
        "allow:\n  cidrs: [10.0.0.1/8]\n",
        "allow:\n  names: [\"a.*.com\"]\n",
        "ports: [0]\n",
        "mode: lenient\n",
        "allow: [\n",
        "allow:\n  presets: [nope]\n",
    ];
    let agent = Agent::start(&topo, &pins, &valid(0), &[]).unwrap();
    let drops0 = counter(&agent, counters::DROP_DENIED);
    // Connections to the allowed address, back to back, for the whole storm.
    let traffic = ConnectLoop::start(&topo, Duration::from_millis(1));
    let value = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    let sample = |name: &str| {
        let (_, metrics) = http_get(&topo.client, "/metrics").unwrap_or_default();
        value(&metrics, name).unwrap_or(0.0)
    };
    // Reloads plus rejected reloads, from one scrape; `None` if the scrape failed.
    let attempts = || {
        let (_, m) = http_get(&topo.client, "/metrics")?;
        Some(value(&m, "egress_reloads_total")? + value(&m, "egress_reload_failures_total")?)
    };
    let t = Instant::now();
    for i in 1..=100u32 {
        let text = if i % 2 == 0 {
            valid(i)
        } else {
            invalid[(i as usize / 2) % invalid.len()].to_owned()
        };
        let scrape_deadline = Instant::now() + Duration::from_secs(30);
        let before = loop {
            if let Some(n) = attempts() {
                break n;
            }
            assert!(
                Instant::now() < scrape_deadline,
                "no metrics before change {i}:\n{}",
                agent.log_text()
            );
        };
        std::fs::write(&agent.policy, text).unwrap();
        send(&agent, signal::Signal::SIGHUP);
        // The next change follows as soon as the agent has taken this one up (a reload or a
        // rejected reload counted), however fast or slow the machine: every change is seen,
        // and the storm is as dense as the agent can take.
        let deadline = Instant::now() + Duration::from_secs(30);
        while attempts().is_none_or(|n| n <= before) {
            assert!(
                Instant::now() < deadline,
                "change {i} was never taken up:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let storm = t.elapsed();
    let (ok, failed) = traffic.finish();
    eprintln!("reload storm: 100 changes in {storm:?}; {ok} connects, {failed} failed");
    assert_eq!(
        counter(&agent, counters::DROP_DENIED) - drops0,
        0,
        "egress dropped packets to the allowed address during the storm"
    );
    assert_eq!(failed, 0, "allowed connections failed during the storm");
    assert!(ok > 100);
    // The last file (i = 100) is valid: it is in force, and the one before the last valid
    // one is not.
    let statics = agent.datapath().static_cidrs().unwrap();
    let has = |s: &str| statics.iter().any(|c| c.to_string() == s);
    assert!(has("203.0.113.100/32"), "{statics:?}");
    assert!(!has("203.0.113.98/32"), "{statics:?}");
    // Each of the 50 valid and 50 invalid changes was taken up at least once (a file change
    // and its SIGHUP may each trigger one).
    assert!(sample("egress_reloads_total") >= 50.0);
    assert!(sample("egress_reload_failures_total") >= 50.0);
    check_memory(&agent, "reload storm");
}
