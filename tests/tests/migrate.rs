//! Upgrades across a change of the datapath's layout, with a real earlier build: the layout-0
//! agent (`old_bin`, built from the commit in xtask/src/fixture.rs) runs first, then this
//! tree's agent takes over its pins (docs/design.md, *Layouts and upgrades*).

use std::{
    io::{Read, Write},
    os::unix::process::ExitStatusExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData, MapInfo};
use egress_common::maps::{LearnedValue, names};
use egress_tests::{
    Agent, Servers, TestPins, egress_ok_at, expire_pinned, ip, kernel_has_tcx, link_id,
    live::{
        RACE_NET, RESOLVER_V4, WEB_CGR, WEB_DENIED, World, WorldOptions, tls_exchange, tls_open,
    },
    old_bin,
};
use egress_user::layout;

/// A policy both layouts read: 8443 is enforced by address only (no TLS port), so a plain echo
/// stream can cross it.
fn policy() -> String {
    format!(
        "mode: enforce\nports: [443, 8443]\nresolvers: [{RESOLVER_V4}]\n\
         allow:\n  names: [cgr.dev, \"*.race.test\"]\n"
    )
}

const ECHO_PORT: u16 = 8443;

/// The largest gap between two echoes of the established stream that counts as flowing. A
/// dropped segment is caught apart from it (none may be sent again); the gap only catches a
/// stall. On the host the gaps are 10–20 ms; under qemu without KVM (`cargo xtask test --vm`)
/// 27–55 ms, and 205 ms (6.1) and 247 ms (6.12) at the `guard-renamed` crash point (whose
/// restart rebuilds `v1/`) with no segment sent again: scheduling on a 2-CPU emulated machine,
/// not a drop.
const STALL: Duration = Duration::from_secs(1);

/// A TCP connection to a learned address that sends 64 bytes every 10 ms and waits for their
/// echo, from before the upgrade until stopped: the largest gap between two echoes, the first
/// error, and the segments TCP sent again (a packet dropped on the way).
struct Stream {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Duration, Option<String>, u32)>,
}

/// The segments the socket sent again over its life (`tcpi_total_retrans`).
fn retransmitted(conn: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_total_retrans
}

impl Stream {
    fn open(w: &World) -> Self {
        let mut conn = w
            .topo
            .connect(WEB_CGR, ECHO_PORT, Duration::from_secs(3))
            .expect("the stream connects to the learned address");
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut echoed, mut max_gap, mut last) = (0, Duration::ZERO, Instant::now());
            let msg = [0x5au8; 64];
            let mut back = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Err(e) = conn
                    .write_all(&msg)
                    .and_then(|()| conn.read_exact(&mut back))
                {
                    return (echoed, max_gap, Some(e.to_string()), retransmitted(&conn));
                }
                echoed += 1;
                max_gap = max_gap.max(last.elapsed());
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(10));
            }
            (echoed, max_gap, None, retransmitted(&conn))
        });
        Self { stop, thread }
    }

    /// Stops the stream and asserts that every message came back, none later than `max`, and
    /// that no segment was dropped on the way (none sent again). The gap bound catches a stall;
    /// the retransmissions catch a drop even where scheduling alone makes gaps long (qemu
    /// without KVM while an agent verifies its programs).
    fn finish(self, max: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (echoed, gap, err, resent) = self.thread.join().unwrap();
        eprintln!("stream: {echoed} echoes, largest gap {gap:?}, {resent} segments sent again");
        assert_eq!(
            resent, 0,
            "segments of the established connection were dropped"
        );
        assert_eq!(
            err, None,
            "the established connection broke ({echoed} echoes)"
        );
        assert!(gap < max, "the established connection stalled for {gap:?}");
    }
}

/// `count` fresh names resolved and connected at once (`egress-race`), the first at
/// `198.19.0.0 + offset`: none may fail or wait on a dropped first SYN.
fn race(w: &World, count: u32, offset: u32) -> serde_json::Value {
    let race = Path::new(env!("CARGO_BIN_EXE_egress-race"));
    assert_eq!(RACE_NET, "198.19.0.0/16");
    let first =
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + offset);
    let out = w
        .run_in_client(
            race,
            &[&count.to_string(), "race.test", "200", &first.to_string()],
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["connected"], count, "{out}");
    assert_eq!(v["slow"], 0, "connects slower than 200 ms: {out}");
    v
}

/// Answers live an hour: the tests check that what layout 0 learned is still allowed after the
/// migration without resolving again, and under qemu without KVM a crash point's old agent,
/// stream and new agent can outlast a 60 s TTL plus the grace (6.1, four migrations at once:
/// "the learned address is no longer allowed" at `built`). Expiry across the upgrade is tested
/// by expiring on purpose (`expire_pinned`).
fn world() -> (World, Servers) {
    let w = World::new(WorldOptions {
        ttl: 3600,
        ..WorldOptions::default()
    })
    .expect("world");
    let servers = Servers::start(&w.topo.server, &[ECHO_PORT]);
    (w, servers)
}

/// The layout-0 agent, ready, with `cgr.dev` learned through the real resolver.
fn old_agent(w: &World, pins: &TestPins) -> Agent {
    let mut agent = Agent::unstarted_on(&w.topo, pins, &policy()).unwrap();
    agent.set_bin(Some(old_bin()));
    agent.spawn(&[]).unwrap();
    agent.wait_ready(&w.topo.client).unwrap();
    assert!(
        w.curl("https://cgr.dev/", &[], Duration::from_secs(5))
            .is_some(),
        "the layout-0 agent did not learn cgr.dev: {}",
        agent.log_text()
    );
    agent
}

/// The layout-0 agent after it ran and stopped, set to start this tree's build next, and an
/// established stream opened while it enforced.
fn stopped_with_stream(w: &World, pins: &TestPins) -> (Agent, Stream) {
    let mut agent = old_agent(w, pins);
    let stream = Stream::open(w);
    assert!(agent.terminate().unwrap().success());
    agent.set_bin(None);
    (agent, stream)
}

/// A denied destination is dropped and a learned one (`allowed`) connects.
fn enforcing_with(w: &World, allowed: &str) {
    assert!(
        w.topo
            .connect(WEB_DENIED, 443, Duration::from_millis(800))
            .is_err(),
        "a denied destination was reached: no program enforces"
    );
    w.topo
        .connect(allowed, ECHO_PORT, Duration::from_secs(3))
        .expect("the learned address is no longer allowed");
}

fn enforcing(w: &World) {
    enforcing_with(w, WEB_CGR);
}

/// The address of the race name at `offset` (see [`race`]).
fn race_addr(offset: u32) -> String {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + offset).to_string()
}

/// Empties the map of sockets admitted by their first packet.
fn forget_admitted(path: &Path) {
    let data = MapData::from_pin(path).unwrap();
    let mut map: HashMap<MapData, u64, u64> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
    let keys: Vec<u64> = map.keys().filter_map(Result::ok).collect();
    assert!(!keys.is_empty(), "no admitted socket");
    for k in keys {
        map.remove(&k).unwrap();
    }
}

fn learned_v4(path: &Path, addr: &str) -> Option<LearnedValue> {
    let data = MapData::from_pin(path).ok()?;
    let map: HashMap<MapData, [u8; 4], LearnedValue> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    let std::net::IpAddr::V4(a) = ip(addr) else {
        unreachable!()
    };
    map.get(&a.octets(), 0).ok()
}

fn status(pins: &TestPins) -> serde_json::Value {
    serde_json::from_str(&egress_ok_at(&["status", "--json"], pins)).unwrap()
}

/// Layout 0's maps no longer pinned, the guard in place, the record stable at this layout.
fn migrated(pins: &TestPins) {
    for name in layout::v0::defs().keys() {
        if name != names::CONFIG {
            assert!(
                !pins.pins.flat_map(name).exists(),
                "layout 0's {name} still pinned"
            );
        }
    }
    let s = status(pins);
    assert_eq!(s["layout"]["version"], layout::VERSION, "{s}");
    assert_eq!(s["layout"]["state"], "stable", "{s}");
    assert!(layout::guarded(&pins.pins), "no guard");
}

/// The layout-0 build, started on pins this build has taken over, refuses and changes nothing.
fn old_refuses(w: &World, agent: &mut Agent, allowed: &str) {
    agent.set_bin(Some(old_bin()));
    agent.set_env(&[]);
    agent.spawn(&[]).unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(60))
        .expect("the layout-0 agent ran on newer pins");
    assert!(!status.success());
    let log = agent.log_text();
    assert!(
        log.contains("map CONFIG pinned at") && log.contains("another egress version"),
        "{log}"
    );
    enforcing_with(w, allowed);
}

/// The upgrade in full while traffic runs: an established connection keeps flowing (its
/// largest gap under 200 ms), an admitted TLS connection keeps passing, 1,000 fresh names
/// resolved and connected across it wait on no dropped SYN, learned addresses stay allowed in
/// the very same map with their expiry, and the layout-0 build refuses the result.
#[test]
fn an_upgrade_from_layout_0_keeps_connections_learned_addresses_and_enforcement() {
    let (w, _servers) = world();
    let pins = TestPins::new();
    let mut agent = old_agent(&w, &pins);
    let map_before = MapInfo::from_pin(pins.pins.flat_map(names::LEARNED_V4))
        .unwrap()
        .id();
    let link = pins
        .pins
        .link(egress_user::pins::Hook::Egress, &w.topo.iface);
    let link_before = kernel_has_tcx().then(|| link_id(&link));
    let mut tls = tls_open(&w.topo, WEB_CGR, "cgr.dev").expect("TLS to cgr.dev");
    // Addresses learned for a wildcard rule, to find again after the upgrade.
    race(&w, 20, 59_001);
    let wildcard_learned = |path: &Path| {
        (1..=20u32)
            .filter(|i| learned_v4(path, &race_addr(59_000 + i)).is_some())
            .count()
    };
    assert_eq!(wildcard_learned(&pins.pins.flat_map(names::LEARNED_V4)), 20);
    let learned_before = learned_v4(&pins.pins.flat_map(names::LEARNED_V4), &race_addr(59_001))
        .expect("a race name learned");
    let stream = Stream::open(&w);

    // Resolve-then-connect across the upgrade: rounds of 100 fresh names, one after the other,
    // from before the old agent stops until after the new one is ready (at least 1,000).
    let ready = AtomicBool::new(false);
    let rounds = std::thread::scope(|s| {
        let racer = s.spawn(|| {
            let (mut before, mut after, mut names) = (0, 0, 0);
            for round in 0..600 {
                let done = ready.load(Ordering::Relaxed);
                if done && after >= 2 && names >= 1000 {
                    break;
                }
                race(&w, 100, 1 + 100 * round);
                names += 100;
                if done {
                    after += 1;
                } else {
                    before += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (before, after, names)
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(agent.terminate().unwrap().success());
        // The stream's address expires while no agent runs: from now on only its flow lets
        // it pass (connections outlive the TTL of the answer that allowed them).
        expire_pinned(|name| pins.pins.flat_map(name), ip(WEB_CGR));
        // And it loses its socket's admission, as a pod's connection forwarded by the node
        // never had one: only the copied flow can carry it across.
        forget_admitted(&pins.pins.flat_map(names::ADMITTED));
        agent.set_bin(None);
        agent.spawn(&[]).unwrap();
        agent.wait_ready(&w.topo.client).unwrap();
        ready.store(true, Ordering::Relaxed);
        racer.join().unwrap()
    });
    eprintln!("race rounds before ready, after, names: {rounds:?}");
    assert!(
        rounds.0 >= 2 && rounds.1 >= 2,
        "the race did not cover the upgrade: {rounds:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    stream.finish(STALL);
    tls_exchange(&mut tls).expect("the TLS connection admitted before the upgrade was cut");

    let log = agent.log_text();
    assert!(log.contains("migrated from layout 0 to 1"), "{log}");
    // The same policy: nothing may be revoked (a name-hash key not carried over revokes every
    // learned address).
    assert!(!log.contains("were revoked"), "{log}");
    migrated(&pins);
    // The same kernel map, the same entries: nothing re-resolved, nothing copied.
    let v1 = pins.pins.map(names::LEARNED_V4);
    assert_eq!(MapInfo::from_pin(&v1).unwrap().id(), map_before);
    let first = race_addr(59_001);
    assert_eq!(
        learned_v4(&v1, &first).map(|l| l.expires_ns),
        Some(learned_before.expires_ns)
    );
    assert_eq!(
        wildcard_learned(&v1),
        20,
        "addresses learned for *.race.test were lost"
    );
    if let Some(before) = link_before {
        assert_eq!(
            link_id(&link),
            before,
            "the TCX link was replaced, not updated"
        );
    }
    enforcing_with(&w, &race_addr(59_001));
    race(&w, 20, 60_001);

    // Downgrade: refused, the datapath untouched.
    agent.kill9();
    old_refuses(&w, &mut agent, &race_addr(59_001));
    race(&w, 20, 60_101);

    // Roll back the hard way: the layout-0 build's own `detach --all` (it cannot remove the
    // directory: `LAYOUT` and `v1/` are not its) and its start afresh, learning again. This
    // build then migrates those new flat maps, not the stale `v1/`.
    let detach = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", w.topo.client.name))
        .arg(old_bin())
        .args(["detach", "--all", "--pin-dir"])
        .arg(pins.path())
        .output()
        .unwrap();
    assert!(
        !pins.pins.guard().exists(),
        "{}",
        String::from_utf8_lossy(&detach.stderr)
    );
    let mut old = old_agent(&w, &pins);
    race(&w, 20, 60_201);
    assert!(old.terminate().unwrap().success());
    old.set_bin(None);
    old.spawn(&[]).unwrap();
    old.wait_ready(&w.topo.client).unwrap();
    assert!(
        old.log_text().contains("migrating them afresh"),
        "{}",
        old.log_text()
    );
    migrated(&pins);
    assert!(
        learned_v4(&pins.pins.map(names::LEARNED_V4), &race_addr(60_201)).is_some(),
        "what the layout-0 build learned after the roll back was lost"
    );
    enforcing(&w);
}

/// A `kill -9` at each step of the migration: with no agent running the node still enforces
/// (a denied destination is dropped), learns (fresh names connect at once) and keeps the
/// established connection; the layout-0 build takes the pins back before the point of no
/// return and refuses them after it; this build's next start finishes the migration.
#[test]
fn a_crash_at_any_migration_step_leaves_a_datapath_enforcing_and_the_next_start_finishes() {
    const POINTS: [(&str, bool); 10] = [
        ("prepared", false),
        ("built", false),
        ("filled", false),
        // The guard renamed over layout 0's `CONFIG`, the record not yet told.
        ("guard-renamed", true),
        ("guarded", true),
        ("swap-1", true),
        ("swapped", true),
        ("settled", true),
        ("cleanup-1", true),
        ("cleaned", true),
    ];
    for (i, (point, past_return)) in POINTS.into_iter().enumerate() {
        eprintln!("crash point {point}");
        let (w, _servers) = world();
        let pins = TestPins::new();
        let (mut agent, stream) = stopped_with_stream(&w, &pins);
        let fail = format!("migrate:{point}");
        agent.set_env(&[("EGRESS_TEST_FAIL", &fail)]);
        agent.spawn(&[]).unwrap();
        let status = agent
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{point}: the agent did not stop: {}", agent.log_text()));
        assert_eq!(status.signal(), Some(9), "{point}: {}", agent.log_text());

        // No agent: enforcing and learning, by whichever programs are in the hooks.
        enforcing(&w);
        let third = 61_000 + 100 * i as u32;
        race(&w, 20, third);

        if past_return {
            old_refuses(&w, &mut agent, WEB_CGR);
        } else {
            agent.set_bin(Some(old_bin()));
            agent.set_env(&[]);
            agent.spawn(&[]).unwrap();
            agent
                .wait_ready(&w.topo.client)
                .unwrap_or_else(|e| panic!("{point}: the layout-0 agent did not take back: {e}"));
            race(&w, 20, third + 30);
            assert!(agent.terminate().unwrap().success());
        }

        agent.set_bin(None);
        agent.set_env(&[]);
        agent.spawn(&[]).unwrap();
        agent
            .wait_ready(&w.topo.client)
            .unwrap_or_else(|e| panic!("{point}: the next start did not finish: {e}"));
        migrated(&pins);
        race(&w, 20, third + 60);
        enforcing(&w);
        stream.finish(STALL);
    }
}

/// The time an upgrade takes at 100,000 learned addresses (each with its justification) and
/// 100,000 TCP flows, written into the layout-0 pins while no agent runs. A measurement for
/// the record (docs/design.md, *Layouts and upgrades*), not a check: run by hand with
/// `cargo test -p egress-tests --test migrate -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn migration_time_at_100k_learned_addresses_and_100k_flows() {
    use egress_common::maps::{Config, FlowKey, LearnedByKey, Rule};
    const N: u32 = 100_000;
    let (w, _servers) = world();
    let pins = TestPins::new();
    let mut agent = old_agent(&w, &pins);
    assert!(agent.terminate().unwrap().success());
    let open = |name: &str| MapData::from_pin(pins.pins.flat_map(name)).unwrap();
    let active: aya::maps::Array<MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(open(names::ACTIVE))).unwrap();
    let config: aya::maps::Array<MapData, Config> =
        aya::maps::Array::try_from(aya::maps::Map::Array(open(names::CONFIG))).unwrap();
    let cfg = config.get(&active.get(&0, 0).unwrap(), 0).unwrap();
    let rule =
        Rule::wild(egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, "race.test").0);
    let now = egress_user::clock::boot_ns();
    let until = now + 3_600_000_000_000;
    let mut learned: HashMap<MapData, [u8; 4], LearnedValue> =
        HashMap::try_from(aya::maps::Map::HashMap(open(names::LEARNED_V4))).unwrap();
    let mut by: HashMap<MapData, LearnedByKey, u64> =
        HashMap::try_from(aya::maps::Map::HashMap(open(names::LEARNED_BY))).unwrap();
    let mut flows: HashMap<MapData, FlowKey, layout::v0::FlowValue> =
        HashMap::try_from(aya::maps::Map::LruHashMap(open(names::FLOWS))).unwrap();
    let base = u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0));
    for i in 1..=N {
        let a = std::net::Ipv4Addr::from(base + i);
        let value = LearnedValue {
            expires_ns: until,
            refreshed_ns: now,
            ..LearnedValue::default()
        };
        learned.insert(a.octets(), value, 0).unwrap();
        let key = LearnedByKey {
            addr: a.to_ipv6_mapped().octets(),
            rule,
        };
        by.insert(key, until, 0).unwrap();
        let fk = FlowKey {
            saddr: std::net::Ipv4Addr::new(198, 18, 0, 2)
                .to_ipv6_mapped()
                .octets(),
            daddr: a.to_ipv6_mapped().octets(),
            sport: ((i % 60_000) as u16 + 1024).to_be_bytes(),
            dport: 443u16.to_be_bytes(),
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        flows
            .insert(fk, layout::v0::FlowValue { last_seen_ns: now }, 0)
            .unwrap();
    }
    let t = Instant::now();
    agent.set_bin(None);
    agent.spawn(&[]).unwrap();
    agent.wait_ready(&w.topo.client).unwrap();
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("migrated from layout 0 to 1"))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("start to ready {:?}; {line}", t.elapsed());
    assert!(!log.contains("were revoked"), "{log}");
    let flows = status(&pins)["flows"].as_u64().unwrap();
    assert!(flows >= u64::from(N), "{flows} flows after the upgrade");
}

/// An upgrade that would attach by another kind than layout 0 did (a TCX link for a clsact
/// filter, or the reverse) is refused before the point of no return: the old attachment would
/// go on running the old program on maps nobody updates. The old build then takes its pins
/// back, and the established connection never stopped.
#[test]
fn an_upgrade_that_would_change_the_attachment_kind_is_refused() {
    let (w, _servers) = world();
    let pins = TestPins::new();
    let (mut agent, stream) = stopped_with_stream(&w, &pins);
    let other = if kernel_has_tcx() { "netlink" } else { "tcx" };
    agent.spawn(&["--attach", other]).unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(60))
        .expect("the agent ran with another attachment kind");
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains("and this start would attach with"), "{log}");
    enforcing(&w);
    agent.set_bin(Some(old_bin()));
    agent.spawn(&[]).unwrap();
    agent.wait_ready(&w.topo.client).unwrap();
    stream.finish(STALL);
}

/// A narrower policy with `revoked_connections: cut` given together with the upgrade cuts the
/// connections it revokes, and they stay cut: the copy of layout 0's flows after the swap does
/// not bring back the flows the new policy cut.
#[test]
fn a_narrower_policy_with_cut_given_with_the_upgrade_stays_cut() {
    let (w, _servers) = world();
    let pins = TestPins::new();
    let mut agent = old_agent(&w, &pins);
    let mut conn = w
        .topo
        .connect(WEB_CGR, ECHO_PORT, Duration::from_secs(3))
        .unwrap();
    egress_tests::echo_once(&mut conn, b"before").expect("the connection to cgr.dev");
    assert!(agent.terminate().unwrap().success());
    agent.write_policy(&format!(
        "mode: enforce\nports: [443, 8443]\nresolvers: [{RESOLVER_V4}]\n\
         revoked_connections: cut\nallow:\n  names: [\"*.race.test\"]\n"
    ));
    agent.set_bin(None);
    agent.spawn(&[]).unwrap();
    agent.wait_ready(&w.topo.client).unwrap();
    let log = agent.log_text();
    assert!(log.contains("were revoked"), "{log}");
    let cgr = egress_user::datapath::mapped(ip(WEB_CGR));
    let flows = agent.datapath().flows().unwrap();
    assert!(
        !flows.iter().any(|(k, _)| k.daddr == cgr),
        "a flow to the revoked cgr.dev is back"
    );
    assert!(
        egress_tests::echo_once(&mut conn, b"after").is_err(),
        "the revoked connection still passes"
    );
}
