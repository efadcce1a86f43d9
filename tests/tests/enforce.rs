//! The real agent on a veth in a network namespace, with real TCP and UDP traffic.

use std::{io::Write as _, time::Duration};

use egress_common::{
    counters,
    maps::{FlowKey, FlowValue, names},
    mode,
};
use egress_tests::{
    ALLOWED_V4, ALLOWED_V6, Agent, DENIED_V4, DENIED_V6, Servers, TestPins, Topology, echo_once,
    egress, expire_by_hand, http_get, ip, learn_by_hand, link_id, static_policy,
};
use egress_user::{clock, pins::Hook};

const CONNECT: Duration = Duration::from_millis(1500);
const UDP_WAIT: Duration = Duration::from_millis(700);

fn setup(policy: &str, extra: &[&str]) -> (Topology, Servers, TestPins, Agent) {
    let topo = Topology::new().expect("topology");
    let servers = Servers::start(&topo.server, &[443, 80]);
    let pins = TestPins::new();
    let agent = Agent::start(&topo, &pins, policy, extra).expect("agent");
    (topo, servers, pins, agent)
}

#[test]
fn static_cidr_allowed_unknown_ip_dropped_tcp_v4_v6() {
    let (topo, _s, _p, agent) = setup(&static_policy("enforce"), &[]);
    for allowed in [ALLOWED_V4, ALLOWED_V6] {
        let mut c = topo
            .connect(allowed, 443, CONNECT)
            .unwrap_or_else(|e| panic!("{allowed}: {e}"));
        echo_once(&mut c, b"hello").unwrap();
    }
    for denied in [DENIED_V4, DENIED_V6] {
        let err = topo
            .connect(denied, 443, CONNECT)
            .expect_err("denied destination connected");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{denied}: {err}");
    }
    let counts = agent.datapath().counters().unwrap();
    assert!(counts[counters::DROP_DENIED as usize] >= 2);
    assert!(counts[counters::PASS_STATIC as usize] >= 2);
}

#[test]
fn unknown_ip_dropped_udp_v4_v6() {
    let (topo, servers, _p, _agent) = setup(&static_policy("enforce"), &[]);
    assert!(topo.udp_echo(ALLOWED_V4, 443, UDP_WAIT));
    assert!(topo.udp_echo(ALLOWED_V6, 443, UDP_WAIT));
    let before = servers
        .udp_received
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(!topo.udp_echo(DENIED_V4, 443, UDP_WAIT));
    assert!(!topo.udp_echo(DENIED_V6, 443, UDP_WAIT));
    let after = servers
        .udp_received
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(before, after, "a denied datagram reached the server");
}

/// [`static_policy`] with TLS server names off: tests of the address mechanism that speak plain
/// TCP to learned addresses on 443.
fn address_only() -> String {
    format!("{}tls:\n  sni: off\n", static_policy("enforce"))
}

#[test]
fn port_80_is_untouched() {
    let (topo, _s, _p, _agent) = setup(&static_policy("enforce"), &[]);
    for denied in [DENIED_V4, DENIED_V6] {
        let mut c = topo.connect(denied, 80, CONNECT).unwrap();
        echo_once(&mut c, b"plain http").unwrap();
        assert!(topo.udp_echo(denied, 80, UDP_WAIT));
    }
}

#[test]
fn long_lived_connection_survives_its_ip_expiry() {
    // Plain TCP echo on 443: the address mechanism alone, server names off.
    let (topo, _s, _p, agent) = setup(&address_only(), &[]);
    let mut dp = agent.datapath();
    learn_by_hand(&mut dp, ip(DENIED_V4), clock::boot_ns() + 60_000_000_000);
    let mut conn = topo
        .connect(DENIED_V4, 443, CONNECT)
        .expect("learned address connects");
    echo_once(&mut conn, b"before expiry").unwrap();
    expire_by_hand(&agent.pin_dir(), ip(DENIED_V4));
    echo_once(&mut conn, b"after expiry").expect("established connection cut by expiry");
    assert!(
        topo.connect(DENIED_V4, 443, CONNECT).is_err(),
        "new connection after expiry"
    );
}

#[test]
fn kill_9_keeps_enforcing_and_restart_adopts_the_pins() {
    let (topo, _s, _p, mut agent) = setup(&static_policy("enforce"), &[]);
    let mut dp = agent.datapath();
    learn_by_hand(&mut dp, ip(DENIED_V6), clock::boot_ns() + 600_000_000_000);
    let mut conn = topo.connect(ALLOWED_V4, 443, CONNECT).unwrap();
    let tcx = egress_tests::kernel_has_tcx();
    let before_ids = tcx.then(|| link_program_ids(&agent));

    agent.kill9();
    assert!(
        topo.connect(DENIED_V4, 443, CONNECT).is_err(),
        "enforcement gone after kill -9"
    );
    topo.connect(ALLOWED_V4, 443, CONNECT)
        .expect("allowed after kill -9");
    topo.connect(DENIED_V6, 443, CONNECT)
        .expect("learned entry gone after kill -9");
    echo_once(&mut conn, b"during").unwrap();

    agent.spawn(&[]).unwrap();
    agent.wait_ready(&topo.client).unwrap();
    let log = agent.log_text();
    // TCX: the pinned link is adopted; clsact (kernels < 6.6): our filter is replaced in place.
    let adopted = if tcx { "TcxAdopted" } else { "how=Netlink" };
    assert!(
        log.contains(adopted),
        "restart did not adopt the attachment:\n{log}"
    );
    echo_once(&mut conn, b"after restart").expect("connection cut by restart");
    topo.connect(DENIED_V6, 443, CONNECT)
        .expect("learned entry lost by restart");
    assert!(topo.connect(DENIED_V4, 443, CONNECT).is_err());
    // The restarted agent's program replaced the old one in the same link.
    match before_ids {
        Some(before) => {
            let after = link_program_ids(&agent);
            assert_eq!(before.0, after.0, "link id changed");
            assert_ne!(before.1, after.1, "program not replaced");
        }
        None => eprintln!("no TCX on this kernel: link and program ids not compared"),
    }
}

#[test]
fn a_restart_on_the_clsact_path_replaces_the_filter_in_place() {
    // The path of kernels before 6.6 (Linux 6.1), forced here on any kernel.
    let (topo, _s, _p, mut agent) = setup(&static_policy("enforce"), &["--attach", "netlink"]);
    let before = our_filters(&topo);
    assert_eq!(before.len(), 1, "one filter of ours: {before:?}");
    let mut conn = topo.connect(ALLOWED_V4, 443, CONNECT).unwrap();
    agent.kill9();
    assert!(topo.connect(DENIED_V4, 443, CONNECT).is_err());
    agent.spawn(&["--attach", "netlink"]).unwrap();
    agent.wait_ready(&topo.client).unwrap();
    // Replaced in place: still one filter of ours, at the same priority and handle, running
    // the restarted agent's program (a new program id). A second filter would leave the old
    // program in front of the new one, with the old agent's maps.
    let after = our_filters(&topo);
    assert_eq!(after.len(), 1, "filters added, not replaced: {after:?}");
    assert_eq!(
        (before[0].0, &before[0].1),
        (after[0].0, &after[0].1),
        "priority or handle changed"
    );
    assert_ne!(before[0].2, after[0].2, "the old program still runs");
    echo_once(&mut conn, b"after restart").expect("connection cut by restart");
    assert!(topo.connect(DENIED_V4, 443, CONNECT).is_err());
}

/// The BPF filters on the egress hook of the topology's interface that run a program named
/// like egress's: (priority, handle, program id), as `tc` lists them.
fn our_filters(topo: &Topology) -> Vec<(u64, String, u64)> {
    let iface = topo.iface.clone();
    let json = topo.client.run(move || {
        egress_tests::sh(&["tc", "-j", "filter", "show", "dev", &iface, "egress"]).unwrap()
    });
    let filters: serde_json::Value = serde_json::from_str(&json).expect("tc -j output");
    filters
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|f| {
            let options = f.get("options")?;
            let prog = options.get("prog")?;
            (prog.get("name")?.as_str()? == Hook::Egress.name()).then(|| {
                (
                    f["pref"].as_u64().unwrap(),
                    options["handle"].as_str().unwrap().to_owned(),
                    prog["id"].as_u64().unwrap(),
                )
            })
        })
        .collect()
}

/// (link id, program id) of the pinned TCX link.
fn link_program_ids(agent: &Agent) -> (u32, u32) {
    let iface = egress_user::pins::PinDir::new(&agent.pins)
        .linked_interfaces()
        .pop()
        .expect("a pinned link");
    let link = aya::programs::links::PinnedLink::from_pin(
        egress_user::pins::PinDir::new(&agent.pins).link(Hook::Egress, &iface),
    )
    .unwrap();
    let fd: aya::programs::links::FdLink = link.into();
    let info = fd.info().unwrap();
    (info.id(), info.program_id())
}

#[test]
fn sigterm_stops_the_agent_but_leaves_enforcement() {
    let (topo, _s, _p, mut agent) = setup(&static_policy("enforce"), &[]);
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{status}");
    assert!(topo.connect(DENIED_V4, 443, CONNECT).is_err());
    topo.connect(ALLOWED_V4, 443, CONNECT).unwrap();
}

#[test]
fn audit_mode_drops_nothing_and_reports() {
    let (topo, _s, _p, agent) = setup(&static_policy("audit"), &[]);
    let mut c = topo
        .connect(DENIED_V4, 443, CONNECT)
        .expect("audit mode dropped");
    echo_once(&mut c, b"audited").unwrap();
    assert!(topo.udp_echo(DENIED_V6, 443, UDP_WAIT));
    let counts = agent.datapath().counters().unwrap();
    assert!(counts[counters::AUDIT_DENIED as usize] >= 2);
    assert_eq!(counts[counters::DROP_DENIED as usize], 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = agent.log_text();
        if log.contains("audit: would drop") && log.contains(DENIED_V4) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit report in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, metrics) = http_get(&topo.client, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("egress_datapath_total{counter=\"audit_denied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("egress_deny_events_received_total{action=\"audited\"}"),
        "{metrics}"
    );
}

#[test]
fn mode_flag_overrides_the_policy() {
    let (topo, _s, _p, _agent) = setup(&static_policy("enforce"), &["--mode", "audit"]);
    topo.connect(DENIED_V4, 443, CONNECT)
        .expect("--mode audit still dropped");
}

#[test]
fn bulk_transfer_on_an_allowed_flow_gso_packets_pass() {
    let (topo, _s, _p, _agent) = setup(&static_policy("enforce"), &[]);
    let mut c = topo.connect(ALLOWED_V4, 443, CONNECT).unwrap();
    // 4 MiB through an echo server: the veth hands TC GSO super-packets of up to 64 KiB.
    let chunk = vec![0x5au8; 64 * 1024];
    let reader = {
        let mut r = c.try_clone().unwrap();
        std::thread::spawn(move || {
            r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while total < 4 * 1024 * 1024 {
                match std::io::Read::read(&mut r, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            total
        })
    };
    for _ in 0..64 {
        c.write_all(&chunk).unwrap();
    }
    assert_eq!(reader.join().unwrap(), 4 * 1024 * 1024);
}

#[test]
fn netlink_attach_enforces_and_keeps_other_filters() {
    let topo = Topology::new().unwrap();
    let _s = Servers::start(&topo.server, &[443]);
    // Someone else's clsact filter on the same hook, which must survive us.
    topo.client.run({
        let iface = topo.iface.clone();
        move || {
            egress_tests::sh(&["tc", "qdisc", "add", "dev", &iface, "clsact"]).unwrap();
            // A classic-BPF filter that never matches (this kernel has no matchall/gact).
            egress_tests::sh(&[
                "tc",
                "filter",
                "add",
                "dev",
                &iface,
                "egress",
                "prio",
                "100",
                "bpf",
                "bytecode",
                "1,6 0 0 0",
            ])
            .unwrap();
        }
    });
    let pins = TestPins::new();
    let agent = Agent::start(
        &topo,
        &pins,
        &static_policy("enforce"),
        &["--attach", "netlink"],
    )
    .unwrap();
    assert!(topo.connect(DENIED_V4, 443, CONNECT).is_err());
    topo.connect(ALLOWED_V4, 443, CONNECT).unwrap();
    drop(agent);
    let filters = topo.client.run({
        let iface = topo.iface.clone();
        move || egress_tests::sh(&["tc", "filter", "show", "dev", &iface, "egress"]).unwrap()
    });
    assert!(
        filters.contains("bytecode '1,6 0 0 0'"),
        "foreign filter removed: {filters}"
    );
    assert!(
        !filters.contains("0xe9e5"),
        "our filter left after detach: {filters}"
    );
    topo.connect(DENIED_V4, 443, CONNECT)
        .expect("detach did not remove enforcement");
}

#[test]
fn detach_removes_everything() {
    let (topo, _s, pins, mut agent) = setup(&static_policy("enforce"), &[]);
    agent.kill9();
    // In the namespace, where the interface (and a clsact filter on older kernels) lives.
    let out = egress(
        Some(&topo.client),
        &[
            "detach".as_ref(),
            "--iface".as_ref(),
            topo.iface.as_ref(),
            "--pin-dir".as_ref(),
            pins.path().as_ref(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.path().exists(), "pin dir left behind");
    topo.connect(DENIED_V4, 443, CONNECT)
        .expect("still enforcing after detach");
}

#[test]
fn status_reads_the_pins_without_an_agent() {
    let (topo, _s, pins, mut agent) = setup(&static_policy("enforce"), &[]);
    let _ = topo.connect(DENIED_V4, 443, Duration::from_millis(300));
    agent.kill9();
    let out = egress(
        None,
        &[
            "status".as_ref(),
            "--json".as_ref(),
            "--pin-dir".as_ref(),
            pins.path().as_ref(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["mode"], "enforce");
    assert_eq!(s["ports"], serde_json::json!([443]));
    if egress_tests::kernel_has_tcx() {
        assert_eq!(s["interfaces"], serde_json::json!([topo.iface]));
    }
    assert!(s["counters"]["drop_denied"].as_u64().unwrap() >= 1);
    assert_eq!(s["static_cidrs"].as_array().unwrap().len(), 2);
}

#[test]
fn health_and_readiness_endpoints() {
    let (topo, _s, _p, _agent) = setup(&static_policy("enforce"), &[]);
    assert_eq!(http_get(&topo.client, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&topo.client, "/readyz").unwrap().0, 200);
}

/// Polls `/readyz` until it answers `code` (the agent re-checks every 5 s).
fn wait_readyz(topo: &Topology, code: u16) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if http_get(&topo.client, "/readyz").is_some_and(|(c, _)| c == code) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn readiness_fails_while_the_policy_file_is_not_in_force_and_returns_with_a_good_one() {
    let (topo, _s, _p, agent) = setup(&static_policy("enforce"), &[]);
    std::fs::write(&agent.policy, "allow:\n  cidrs: [10.0.0.1/8]\n").unwrap();
    assert!(wait_readyz(&topo, 503), "{}", agent.log_text());
    // Still alive, still enforcing the previous policy.
    assert_eq!(http_get(&topo.client, "/healthz").unwrap().0, 200);
    let (_, metrics) = http_get(&topo.client, "/metrics").unwrap();
    assert!(metrics.contains("egress_ready 0"), "{metrics}");
    std::fs::write(&agent.policy, static_policy("enforce") + "# fixed\n").unwrap();
    assert!(wait_readyz(&topo, 200), "{}", agent.log_text());
}

#[test]
fn a_released_link_is_attached_again_and_readiness_fails_while_the_interface_is_gone() {
    let (topo, _s, pins, agent) = setup(&static_policy("enforce"), &[]);
    let link = pins
        .path()
        .join(format!("link_{}_{}", Hook::Egress.name(), topo.iface));
    if link.exists() {
        // Another tool (or a mistake) removes the attachment: with no pin and no agent handle
        // left, the kernel releases the link. The agent attaches again at its next check.
        // The link's kernel id shows both, whatever the agent's timing (probing with
        // connections raced the agent's check, which can repair the hook within milliseconds;
        // the chain's revision restarts when the chain empties).
        let before = link_id(&link);
        std::fs::remove_file(&link).unwrap();
        egress_tests::wait_for("the removed link to be attached again", || {
            reattached(&topo) >= 1.0
        });
        let after = link_id(&link);
        assert_ne!(before, after, "the same link is pinned: never released");
        assert!(
            aya::programs::loaded_links().all(|l| l.map(|l| l.id()).ok() != Some(before)),
            "the removed link {before} was not released"
        );
        let (_, programs) = tcx_chain(&topo);
        assert_eq!(programs, vec![Hook::Egress.name().to_owned()]);
        wait_until_enforced(&topo, &agent, "the released link to be attached again");
        assert!(link.exists());
    } else {
        eprintln!("no TCX link on this kernel: only the interface part runs");
    }
    // While the interface is gone there is nothing to attach to: not ready.
    topo.client.ip(&["link", "del", &topo.iface]).unwrap();
    assert!(wait_readyz(&topo, 503), "{}", agent.log_text());
    let (_, metrics) = http_get(&topo.client, "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "egress_attached{{iface=\"{}\",hook=\"egress\"}} 0",
            topo.iface
        )),
        "{metrics}"
    );
    topo.wire().unwrap();
    assert!(wait_readyz(&topo, 200), "{}", agent.log_text());
    wait_until_enforced(&topo, &agent, "egress on the interface created again");
    assert!(reattached(&topo) >= 1.0);
}

#[test]
fn a_bad_policy_changes_nothing() {
    let topo = Topology::new().unwrap();
    let pins_dir = format!("/sys/fs/bpf/egress-test-bad-{}", egress_tests::unique(""));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.yaml");
    std::fs::write(&policy, "allow:\n  cidrs: [10.0.0.1/8]\n").unwrap();
    let out = egress(
        Some(&topo.client),
        &[
            "run".as_ref(),
            "--iface".as_ref(),
            topo.iface.as_ref(),
            "--pin-dir".as_ref(),
            pins_dir.as_ref(),
            "--policy".as_ref(),
            policy.as_ref(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:2:"), "{err}");
    assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
    assert!(
        !std::path::Path::new(&pins_dir).exists(),
        "pins created for a bad policy"
    );
}

#[test]
fn a_pin_dir_outside_bpffs_is_an_error() {
    let topo = Topology::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, static_policy("enforce")).unwrap();
    let pins = dir.path().join("pins");
    let out = egress(
        Some(&topo.client),
        &[
            "run".as_ref(),
            "--iface".as_ref(),
            topo.iface.as_ref(),
            "--policy".as_ref(),
            policy.as_ref(),
            "--pin-dir".as_ref(),
            pins.as_ref(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a BPF filesystem"), "{err}");
}

#[test]
fn a_missing_interface_is_an_error() {
    let topo = Topology::new().unwrap();
    let pins = TestPins::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, static_policy("enforce")).unwrap();
    let out = egress(
        Some(&topo.client),
        &[
            "run".as_ref(),
            "--iface".as_ref(),
            "nosuch0".as_ref(),
            "--policy".as_ref(),
            policy.as_ref(),
            "--pin-dir".as_ref(),
            pins.path().as_ref(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"nosuch0\" does not exist"), "{err}");
}

/// Runs `egress ARGS --pin-dir PINS` in the client namespace; panics on failure.
fn egress_ok(topo: &Topology, pins: &TestPins, args: &[&str]) -> String {
    let mut full: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    full.extend(["--pin-dir".as_ref(), pins.path().as_os_str()]);
    let out = egress(Some(&topo.client), &full);
    assert!(
        out.status.success(),
        "egress {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_interfaces(topo: &Topology, pins: &TestPins) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&egress_ok(topo, pins, &["status", "--json"])).unwrap();
    serde_json::from_value(json["interfaces"].clone()).unwrap()
}

#[test]
fn detaching_one_clsact_interface_keeps_the_others_and_the_pins_and_detach_all_removes_all() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    // A second enforced interface in the client namespace.
    topo.client
        .ip(&[
            "link", "add", "second0", "type", "veth", "peer", "name", "second1",
        ])
        .unwrap();
    for l in ["second0", "second1"] {
        topo.client.ip(&["link", "set", l, "up"]).unwrap();
    }
    let pins = TestPins::new();
    // clsact filters, as on kernels before 6.6: nothing is pinned per interface.
    let mut agent = Agent::start(
        &topo,
        &pins,
        &static_policy("enforce"),
        &["--attach", "netlink", "--iface", "second0"],
    )
    .unwrap();
    agent.kill9();
    let mut both = vec![topo.iface.clone(), "second0".to_owned()];
    both.sort();
    assert_eq!(status_interfaces(&topo, &pins), both);
    egress_ok(&topo, &pins, &["detach", "--iface", "second0"]);
    assert!(
        pins.path().exists(),
        "the other interface's maps were unpinned"
    );
    assert_eq!(
        status_interfaces(&topo, &pins),
        std::slice::from_ref(&topo.iface)
    );
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(800))
            .is_err(),
        "the other interface stopped enforcing"
    );
    assert!(topo.connect(ALLOWED_V4, 443, CONNECT).is_ok());
    egress_ok(&topo, &pins, &["detach", "--all"]);
    assert!(!pins.path().exists(), "pin dir left behind");
    topo.connect(DENIED_V4, 443, CONNECT)
        .expect("still enforcing after detach --all");
}

#[test]
fn without_an_attachment_record_detach_keeps_the_pins_and_detach_all_still_finds_clsact_filters() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let mut agent = Agent::start(
        &topo,
        &pins,
        &static_policy("enforce"),
        &["--attach", "netlink"],
    )
    .unwrap();
    agent.kill9();
    // Pins as an older egress left them: no record of where clsact filters are.
    std::fs::remove_file(pins.pins.map(names::ATTACHED)).unwrap();
    egress_ok(&topo, &pins, &["detach", "--iface", "nonexistent0"]);
    assert!(
        pins.path().exists(),
        "pins removed while a filter may enforce"
    );
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(800))
            .is_err()
    );
    egress_ok(&topo, &pins, &["detach", "--all"]);
    assert!(!pins.path().exists(), "pin dir left behind");
    topo.connect(DENIED_V4, 443, CONNECT)
        .expect("still enforcing after detach --all");
}

/// The revision of the TCX egress chain of the topology's interface and the names of the
/// programs in it, in order.
fn tcx_chain(topo: &Topology) -> (u64, Vec<String>) {
    let iface = topo.iface.clone();
    topo.client.run(move || {
        let (revision, programs) =
            aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Egress)
                .unwrap();
        let names = programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect();
        (revision, names)
    })
}

/// `egress_reattached_total` for the egress hook of the topology's interface.
fn reattached(topo: &Topology) -> f64 {
    let sample = format!(
        "egress_reattached_total{{iface=\"{}\",hook=\"egress\"}} ",
        topo.iface
    );
    // The labelled sample appears with the first repair.
    let (_, body) = http_get(&topo.client, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&sample)?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (generously, the agent checks every 5 s) until a connection to `DENIED_V4` is refused
/// again.
fn wait_until_enforced(topo: &Topology, agent: &Agent, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while topo.connect(DENIED_V4, 443, CONNECT).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        topo.connect(ALLOWED_V4, 443, CONNECT).is_ok(),
        "{}",
        agent.log_text()
    );
}

#[test]
fn policy_maps_rewritten_by_someone_else_are_restored_from_the_policy() {
    let (topo, _s, _p, agent) = setup(&static_policy("enforce"), &[]);
    let mut dp = agent.datapath();
    let repairs = |map: &str| {
        egress_tests::metric(
            &topo.client,
            &format!("egress_tamper_repairs_total{{map=\"{map}\"}}"),
        )
    };
    // What a root process with the host's bpffs could do: audit mode, and allow everything.
    // One map at a time: the repair of one rewrites the whole policy into the other generation,
    // which would put a second change out of force before any check saw it (seen under qemu).
    let mut cfg = dp.config().unwrap();
    cfg.mode = mode::AUDIT;
    dp.write_config(&cfg).unwrap();
    assert!(
        topo.connect(DENIED_V4, 443, CONNECT).is_ok(),
        "the tampering had no effect; the test proves nothing"
    );
    wait_until_enforced(&topo, &agent, "the configuration to be restored");
    assert_eq!(dp.config().unwrap().mode, mode::ENFORCE);
    let active = dp.active().unwrap();
    dp.write_static(active, &["0.0.0.0/0".parse().unwrap()])
        .unwrap();
    assert!(
        topo.connect(DENIED_V4, 443, CONNECT).is_ok(),
        "the tampering had no effect; the test proves nothing"
    );
    wait_until_enforced(&topo, &agent, "the static CIDRs to be restored");
    // A key the agent never writes: prefix 0 covers the generation byte too, so it matches
    // every address under every generation.
    let mut trie = aya::maps::LpmTrie::<_, [u8; 5], egress_common::maps::StaticValue>::try_from(
        aya::maps::Map::LpmTrie(
            aya::maps::MapData::from_pin(agent.pin_dir().map(names::STATIC_V4)).unwrap(),
        ),
    )
    .unwrap();
    trie.insert(
        &aya::maps::lpm_trie::Key::new(0, [0; 5]),
        egress_common::maps::StaticValue::default(),
        0,
    )
    .unwrap();
    assert!(
        topo.connect(DENIED_V4, 443, CONNECT).is_ok(),
        "the foreign key had no effect; the test proves nothing"
    );
    wait_until_enforced(&topo, &agent, "the foreign key to be removed");
    assert_eq!(dp.foreign_static_keys().unwrap(), 0);
    for map in ["CONFIG", "STATIC_V4"] {
        assert!(repairs(map) >= 1.0, "{map} not counted");
    }
}

#[test]
fn a_program_that_takes_the_head_of_the_chain_is_overtaken_again() {
    if !egress_tests::kernel_has_tcx() {
        eprintln!("skipped: TCX needs Linux 6.6");
        return;
    }
    let (topo, _s, _p, agent) = setup(&static_policy("enforce"), &[]);
    // Another vendor's program at the head of the TCX chain, returning a final verdict.
    let pins = TestPins::new();
    let mut ebpf = egress_user::ebpf::loader(&pins.pins)
        .load(egress_user::ebpf::OBJECT)
        .unwrap();
    let prog: &mut aya::programs::SchedClassifier = ebpf
        .program_mut(egress_user::ebpf::FINAL_PASS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    let iface = topo.iface.clone();
    let link = topo.client.run(move || {
        let mut ebpf = ebpf;
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(egress_user::ebpf::FINAL_PASS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let id = prog
            .attach_with_options(
                &iface,
                aya::programs::TcAttachType::Egress,
                aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::first()),
            )
            .unwrap();
        let link = prog.take_link(id).unwrap();
        (ebpf, link)
    });
    assert!(
        topo.connect(DENIED_V4, 443, CONNECT).is_ok(),
        "the program ahead did not bypass egress; the test proves nothing"
    );
    wait_until_enforced(&topo, &agent, "egress back at the head of the chain");
    assert!(reattached(&topo) >= 1.0);
    drop(link);
}

/// Sends `count` crafted packets of `proto` (TCP SYNs or UDP datagrams) from the client
/// namespace to `dst:443`, each a new flow (source ports 1024-61023 of source addresses
/// 198.18.0.100 and up), with one raw socket: what a workload with CAP_NET_RAW (as many pods
/// have) can do to fill the flow tables.
fn flood_flows(topo: &Topology, proto: u8, dst: &str, count: u32) {
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    topo.client.run(move || {
        // IPPROTO_RAW: the packets carry their own IP header (the kernel fills in the length
        // and checksum).
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(255)),
        )
        .unwrap();
        let to = std::net::SocketAddr::new(dst.into(), 0);
        for i in 0..count {
            let src = std::net::Ipv4Addr::new(198, 18, 0, 100 + (i / 60_000) as u8);
            let sport = (1024 + i % 60_000) as u16;
            let mut pkt = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
            pkt.extend_from_slice(&src.octets());
            pkt.extend_from_slice(&dst.octets());
            pkt.extend_from_slice(&sport.to_be_bytes());
            pkt.extend_from_slice(&443u16.to_be_bytes());
            if proto == 6 {
                pkt.extend_from_slice(&i.to_be_bytes());
                pkt.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            } else {
                pkt.extend_from_slice(&[0, 8, 0, 0]);
            }
            let len = pkt.len() as u16;
            pkt[2..4].copy_from_slice(&len.to_be_bytes());
            let _ = s.send_to(&pkt, &to.into());
        }
    });
}

#[test]
fn another_workloads_flood_of_flows_cannot_cut_an_established_connection() {
    // Plain TCP echo on 443: the address mechanism alone, server names off.
    let (topo, _s, pins, agent) = setup(&address_only(), &[]);
    let mut dp = agent.datapath();
    learn_by_hand(&mut dp, ip(DENIED_V4), clock::boot_ns() + 60_000_000_000);
    let mut conn = topo.connect(DENIED_V4, 443, CONNECT).unwrap();
    echo_once(&mut conn, b"before").unwrap();
    // The address expires: only the flow keeps the connection going.
    expire_by_hand(&agent.pin_dir(), ip(DENIED_V4));
    assert!(topo.connect(DENIED_V4, 443, CONNECT).is_err());
    // New UDP and TCP flows to an allowed destination: more than either table holds.
    flood_flows(&topo, 17, ALLOWED_V4, 140_000);
    flood_flows(&topo, 6, ALLOWED_V4, 140_000);
    let fill = dp.fill().unwrap();
    for table in ["FLOWS", "FLOWS_UDP"] {
        let (_, n, cap) = fill.iter().find(|(m, ..)| *m == table).unwrap();
        assert!(
            *n as f64 >= 0.99 * f64::from(*cap),
            "{table} not full: {fill:?}"
        );
    }
    // Which entries an LRU table evicts depends on their access history (recently used ones
    // survive the first passes), so the connection's flow is evicted here by hand, as a
    // longer flood would.
    let mut flows: aya::maps::HashMap<_, FlowKey, FlowValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
            aya::maps::MapData::from_pin(pins.pins.map(names::FLOWS)).unwrap(),
        ))
        .unwrap();
    let mapped =
        egress_common::maps::v4_mapped(DENIED_V4.parse::<std::net::Ipv4Addr>().unwrap().octets());
    let ours: Vec<FlowKey> = dp
        .flows()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.daddr == mapped)
        .map(|(k, _)| k)
        .collect();
    assert!(!ours.is_empty(), "the connection had no flow");
    for k in &ours {
        flows.remove(k).unwrap();
    }
    let before = dp.counters().unwrap()[counters::PASS_SOCKET as usize];
    echo_once(&mut conn, b"after the flood")
        .expect("losing its flow cut an established connection");
    assert!(dp.counters().unwrap()[counters::PASS_SOCKET as usize] > before);
}

/// The socket fallback (`pass_socket`) is for connections whose SYN egress passed: one opened
/// before the agent attached, to a destination the policy does not allow, is cut.
#[test]
fn a_connection_opened_before_enforcement_to_a_denied_destination_is_cut() {
    let topo = Topology::new().expect("topology");
    let _servers = Servers::start(&topo.server, &[443]);
    let mut before = topo.connect(DENIED_V4, 443, CONNECT).unwrap();
    echo_once(&mut before, b"before egress").unwrap();
    let pins = TestPins::new();
    let agent = Agent::start(&topo, &pins, &static_policy("enforce"), &[]).expect("agent");
    assert!(
        echo_once(&mut before, b"after egress").is_err(),
        "a connection egress never admitted passed on its socket's word: {}",
        agent.log_text()
    );
    assert_eq!(
        agent.datapath().counters().unwrap()[counters::PASS_SOCKET as usize],
        0
    );
}
