//! Operating the agent: audit mode and `egress suggest`, per-name status, reload on a change of
//! the policy file (including the symlink swap of a Kubernetes ConfigMap), the default-route
//! interface, and the metrics an operator alerts on. Real agent, real traffic.

use std::{
    ffi::OsStr,
    path::Path,
    time::{Duration, Instant},
};

use egress_tests::{
    ALLOWED_V4, Agent, DENIED_V4, Servers, TestPins, Topology, egress, http_get,
    live::{PlayedResolver, RESOLVER_V4, WEB_CDN, WEB_CGR, WEB_DENIED, World, WorldOptions},
    wait_for,
};

const MAX: Duration = Duration::from_secs(3);

fn run_egress(args: &[&str], pins: &TestPins) -> String {
    egress_tests::egress_ok_at(args, pins)
}

/// The value of one Prometheus sample, e.g. `egress_reloads_total`.
fn metric(topo: &Topology, sample: &str) -> f64 {
    egress_tests::metric(&topo.client, sample)
}

#[test]
fn audit_mode_names_what_it_would_drop_and_suggest_turns_it_into_a_policy() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let policy = format!("mode: audit\nresolvers: [{RESOLVER_V4}]\nallow:\n  names: [cgr.dev]\n");
    let agent = Agent::start(&w.topo, &pins, &policy, &[]).unwrap();
    // Audit: nothing is dropped, neither a name outside the policy nor a bare address.
    assert_eq!(w.curl("https://denied.test/", &[], MAX), Some(200));
    assert_eq!(w.curl(&format!("https://{WEB_CDN}/"), &[], MAX), Some(200));
    assert_eq!(w.curl("https://cgr.dev/", &[], MAX), Some(200));
    // The log line names the destination by the name that resolved to it.
    wait_for("the audit log line", || {
        agent.log_text().lines().any(|l| {
            l.contains("audit: would drop")
                && l.contains(&format!("dst={WEB_DENIED}"))
                && l.contains("name=\"denied.test\"")
        })
    });
    assert!(metric(&w.topo, "egress_packets_total{verdict=\"audit_denied\"}") > 0.0);

    let text = run_egress(&["suggest"], &pins);
    let p = egress_user::policy::parse(&text, "suggest.yaml".as_ref()).expect(&text);
    let names: Vec<String> = p.allow.names.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["denied.test"], "{text}");
    // The allowed name is not suggested; the bare address only as a comment.
    assert!(p.allow.cidrs.is_empty());
    assert!(text.contains(&format!("# - {WEB_CDN}/32")), "{text}");

    // --reset forgets; the next suggestion is empty.
    run_egress(&["suggest", "--reset"], &pins);
    let p =
        egress_user::policy::parse(&run_egress(&["suggest"], &pins), "s.yaml".as_ref()).unwrap();
    assert!(p.allow.names.is_empty());
}

#[test]
fn enforce_mode_logs_the_name_of_a_dropped_destination() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let policy = format!("resolvers: [{RESOLVER_V4}]\nallow:\n  names: [cgr.dev]\n");
    let agent = Agent::start(&w.topo, &pins, &policy, &[]).unwrap();
    // Tried again until the line shows: on a loaded machine one curl can spend its second on
    // the lookup and never send the SYN that egress drops.
    wait_for("the drop log line", || {
        assert_eq!(
            w.curl("https://denied.test/", &[], Duration::from_secs(1)),
            None
        );
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("dropped") && l.contains("name=\"denied.test\""))
    });
    let denied = agent.datapath().denied().unwrap();
    assert!(
        denied
            .iter()
            .any(|d| d.key == "denied.test" && d.hits > 0 && !d.audit),
        "{denied:?}"
    );
}

#[test]
fn status_shows_each_name_with_its_addresses_time_left_and_hits() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let policy = format!("resolvers: [{RESOLVER_V4}]\nallow:\n  names: [cgr.dev]\n");
    let _agent = Agent::start(&w.topo, &pins, &policy, &[]).unwrap();
    for _ in 0..3 {
        assert_eq!(w.curl("https://cgr.dev/", &["-4"], MAX), Some(200));
    }
    let v: serde_json::Value =
        serde_json::from_str(&run_egress(&["status", "--json"], &pins)).unwrap();
    let by_name = v["learned_by_name"].as_array().unwrap();
    let cgr = by_name
        .iter()
        .find(|n| n["name"] == "cgr.dev")
        .unwrap_or_else(|| panic!("no cgr.dev in {v:#}"));
    let addr = cgr["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["addr"] == WEB_CGR)
        .unwrap_or_else(|| panic!("no {WEB_CGR} under cgr.dev: {v:#}"));
    // Three connections, each a new flow judged against the learned entry.
    assert_eq!(addr["hits"], 3, "{v:#}");
    let left = addr["expires_in_s"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 60.0 + 30.0, "{left}");
    let text = run_egress(&["status"], &pins);
    assert!(text.contains("cgr.dev  (3 hits)"), "{text}");
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_changed_policy_file_is_reloaded_and_a_bad_one_keeps_the_old() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let first = format!("allow:\n  cidrs: [{ALLOWED_V4}]\n");
    let agent = Agent::start(&topo, &pins, &first, &[]).unwrap();
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(500))
            .is_err()
    );

    write_atomically(
        &agent.policy,
        &format!("allow:\n  cidrs: [{ALLOWED_V4}, {DENIED_V4}]\n"),
    );
    wait_for("the reload", || {
        topo.connect(DENIED_V4, 443, Duration::from_millis(300))
            .is_ok()
    });
    assert_eq!(metric(&topo, "egress_reloads_total"), 1.0);

    // A bad policy: counted, logged with file:line:column, the previous one stays.
    // (A plain write truncates first: the agent may also see, and reject, the empty file.)
    std::fs::write(&agent.policy, "allow:\n  cidrs: [10.0.0.1/8]\n").unwrap();
    wait_for("the rejected reload, located", || {
        agent.log_text().contains("policy.yaml:2:")
    });
    assert!(metric(&topo, "egress_reload_failures_total") >= 1.0);
    assert!(topo.connect(DENIED_V4, 443, MAX).is_ok());
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
}

#[test]
fn a_configmap_symlink_swap_is_reloaded() {
    // The layout kubelet makes for a mounted ConfigMap: policy.yaml -> ..data/policy.yaml,
    // ..data -> ..<timestamp>/; an update writes a new timestamped directory and renames a new
    // ..data symlink over the old one.
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("policy.yaml"), text).unwrap();
    };
    version(
        "..2026_11_22_1",
        &format!("allow:\n  cidrs: [{ALLOWED_V4}]\n"),
    );
    std::os::unix::fs::symlink("..2026_11_22_1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", d.join("policy.yaml")).unwrap();

    let mut agent = Agent::start(&topo, &pins, "allow: {}\n", &[]).unwrap();
    agent.kill9();
    agent.policy = d.join("policy.yaml");
    agent.spawn(&[]).unwrap();
    agent.wait_ready(&topo.client).unwrap();
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(500))
            .is_err()
    );

    version(
        "..2026_11_22_2",
        &format!("allow:\n  cidrs: [{ALLOWED_V4}, {DENIED_V4}]\n"),
    );
    std::os::unix::fs::symlink("..2026_11_22_2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_11_22_1")).unwrap();
    wait_for("the reload after the symlink swap", || {
        topo.connect(DENIED_V4, 443, Duration::from_millis(300))
            .is_ok()
    });
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
}

#[test]
fn without_iface_the_agent_enforces_on_the_default_route_interface() {
    let topo = Topology::new().unwrap();
    topo.client
        .ip(&["route", "add", "default", "via", ALLOWED_V4])
        .unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let policy = format!("allow:\n  cidrs: [{ALLOWED_V4}]\n");
    let agent = Agent::start_on_default_route(&topo, &pins, &policy).unwrap();
    let log = agent.log_text();
    assert!(
        log.contains("interfaces of the default routes") && log.contains(&topo.iface),
        "{log}"
    );
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(700))
            .is_err()
    );
}

#[test]
fn without_iface_and_without_a_default_route_the_agent_refuses_to_start() {
    let topo = Topology::new().unwrap();
    let pins = TestPins::new();
    let err = Agent::start_on_default_route(&topo, &pins, "allow: {}\n")
        .err()
        .expect("started without an interface");
    assert!(err.to_string().contains("no default route"), "{err:#}");
}

#[test]
fn metrics_cover_verdicts_dns_results_fill_ratios_and_ring_losses() {
    let w = World::new(WorldOptions::default()).unwrap();
    let pins = TestPins::new();
    let policy = format!("resolvers: [{RESOLVER_V4}]\nallow:\n  names: [cgr.dev]\n");
    let _agent = Agent::start(&w.topo, &pins, &policy, &[]).unwrap();
    assert_eq!(w.curl("https://cgr.dev/", &["-4"], MAX), Some(200));
    assert_eq!(
        w.curl("https://denied.test/", &["-4"], Duration::from_secs(1)),
        None
    );
    let m = |s: &str| metric(&w.topo, s);
    assert!(m("egress_packets_total{verdict=\"pass_learned\"}") >= 1.0);
    assert!(m("egress_packets_total{verdict=\"drop_denied\"}") >= 1.0);
    assert!(m("egress_dns_answers_total{result=\"learned\"}") >= 1.0);
    assert!(m("egress_dns_answers_total{result=\"not_allowed\"}") >= 1.0);
    assert_eq!(
        m("egress_dns_answers_total{result=\"untrusted_source\"}"),
        0.0
    );
    let fill = m("egress_map_fill_ratio{map=\"learned_v4\"}");
    assert!(fill > 0.0 && fill < 0.001, "{fill}");
    assert_eq!(m("egress_ringbuf_lost_total{ring=\"dns_copies\"}"), 0.0);
    assert_eq!(m("egress_reload_failures_total"), 0.0);
}

/// `egress_info` names the version and the mode in force, and follows a reload.
#[test]
fn info_names_the_version_and_the_mode_in_force_and_follows_a_reload() {
    let topo = Topology::new().unwrap();
    let pins = TestPins::new();
    let agent = Agent::start(
        &topo,
        &pins,
        &format!("allow:\n  cidrs: [{ALLOWED_V4}]\n"),
        &[],
    )
    .unwrap();
    let info = |mode: &str| {
        format!(
            "egress_info{{version=\"{}\",mode=\"{mode}\",learn_at=\"interfaces\"}}",
            env!("CARGO_PKG_VERSION")
        )
    };
    assert_eq!(metric(&topo, &info("enforce")), 1.0);
    assert_eq!(metric(&topo, "egress_ready"), 1.0);
    write_atomically(
        &agent.policy,
        &format!("mode: audit\nallow:\n  cidrs: [{ALLOWED_V4}]\n"),
    );
    // The sample itself is waited for: the reload counter rises before the info is rewritten.
    wait_for("the reloaded mode in egress_info", || {
        http_get(&topo.client, "/metrics")
            .is_some_and(|(_, body)| body.lines().any(|l| l == format!("{} 1", info("audit"))))
    });
    let (_, body) = http_get(&topo.client, "/metrics").unwrap();
    assert!(
        !body.contains(&info("enforce")),
        "the mode no longer in force is still reported:\n{body}"
    );
}

/// `/healthz` and `/readyz` mean something: a loop of the agent that dies turns both to 503 and
/// `egress_ready` to 0, while the kernel goes on enforcing and learning. The debug build's
/// `EGRESS_TEST_FAIL=dns-learning` makes the DNS learning loop panic at its first copy.
#[test]
fn a_dead_loop_turns_healthz_and_readyz_to_503_and_the_kernel_goes_on_enforcing() {
    let w = PlayedResolver::with_env("app.example", &[("EGRESS_TEST_FAIL", "dns-learning")]);
    let code = |path: &str| http_get(&w.topo.client, path).map(|(c, _)| c);
    assert_eq!(code("/healthz"), Some(200));
    assert_eq!(code("/readyz"), Some(200));
    // An allowed answer: the kernel learns it, and its copy kills the agent's DNS loop.
    w.resolve(0x4242, "app.example.", WEB_DENIED);
    wait_for("/healthz to report the dead loop", || {
        code("/healthz") == Some(503)
    });
    assert_eq!(code("/readyz"), Some(503));
    assert_eq!(metric(&w.topo, "egress_ready"), 0.0);
    wait_for("the log to name the dead loop", || {
        w.agent.log_text().contains("task panicked")
    });
    // The kernel goes on: it learns an answer that arrives after the loop died, the addresses
    // it learned connect, and a denied one does not.
    w.resolve(0x4343, "app.example.", ALLOWED_V4);
    assert!(w.topo.connect(ALLOWED_V4, 443, MAX).is_ok());
    assert!(w.topo.connect(WEB_DENIED, 443, MAX).is_ok());
    assert!(
        w.topo
            .connect(DENIED_V4, 443, Duration::from_millis(500))
            .is_err()
    );
}

/// Runs `egress run` in the client namespace with only `caps` in its bounding set (as uid 0, so
/// the permitted set is exactly `caps`): the DaemonSet's capability list, proven here.
fn run_with_caps(
    topo: &Topology,
    pins: &TestPins,
    policy: &Path,
    caps: &str,
) -> std::process::Child {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.client.name))
        .args([
            "setpriv",
            "--bounding-set",
            &format!("-all,{caps}"),
            "--inh-caps",
            "-all",
            "--",
        ])
        .arg(egress_tests::egress_bin())
        .args([
            "run",
            "--iface",
            &topo.iface,
            "--metrics-addr",
            "127.0.0.1:9090",
            "--policy",
        ])
        .arg(policy)
        .arg("--pin-dir")
        .arg(pins.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn bpf_net_admin_and_perfmon_are_the_capabilities_it_needs() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, format!("allow:\n  cidrs: [{ALLOWED_V4}]\n")).unwrap();
    // Without any one of the three, it refuses to start (and says why).
    for (caps, missing) in [
        ("+bpf,+net_admin", "CAP_PERFMON"),
        ("+bpf,+perfmon", "CAP_NET_ADMIN"),
        ("+net_admin,+perfmon", "CAP_BPF"),
    ] {
        let pins = TestPins::new();
        let out = run_with_caps(&topo, &pins, &policy, caps)
            .wait_with_output()
            .unwrap();
        assert!(!out.status.success(), "started with only {caps}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("runs without {missing}")),
            "{caps}: {err}"
        );
    }
    // With exactly the three, it starts and enforces.
    let pins = TestPins::new();
    let mut child = run_with_caps(&topo, &pins, &policy, "+bpf,+net_admin,+perfmon");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&topo.client, "/readyz").is_none_or(|(c, _)| c != 200) {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("not ready with three capabilities ({exited:?}): {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(700))
            .is_err()
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = egress(
        Some(&topo.client),
        &[
            OsStr::new("detach"),
            OsStr::new("--iface"),
            OsStr::new(&topo.iface),
            OsStr::new("--pin-dir"),
            pins.path().as_os_str(),
        ],
    );
}

#[test]
fn check_prints_the_resolvers_the_agent_will_use_when_the_policy_names_none() {
    let ns = egress_tests::NetNs::new(egress_tests::unique("chk")).unwrap();
    // `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
    let etc = Path::new("/etc/netns").join(&ns.name);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("resolv.conf"),
        "search example.test\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "allow:\n  names: [cgr.dev]\n").unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(egress_tests::egress_bin())
        .arg("check")
        .arg(&policy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&etc);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("# resolvers: not in"), "{text}");
    assert!(!text.contains("null"), "{text}");
    let resolvers: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("resolvers:"))
        .skip(1)
        .map(|l| l.trim().replace('"', ""))
        .take_while(|l| l.starts_with("- "))
        .collect();
    assert_eq!(resolvers, ["- 192.0.2.53", "- fe80::1"], "{text}");
}

#[test]
fn an_agent_refuses_pinned_maps_of_another_layout_naming_the_map_and_keeps_them_enforcing() {
    use egress_common::{counters, maps::names};
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let mut agent =
        Agent::start(&topo, &pins, &egress_tests::static_policy("enforce"), &[]).unwrap();
    agent.kill9();
    // What another version would have pinned: a counter array of another size. The program
    // attached keeps its own array; only a new agent would adopt this one.
    let pin = pins.pins.map(names::COUNTERS);
    std::fs::remove_file(&pin).unwrap();
    aya::maps::PerCpuArray::<aya::maps::MapData, u64>::create(counters::COUNT - 5, 0)
        .unwrap()
        .pin(&pin)
        .unwrap();
    agent.spawn(&[]).unwrap();
    let err = agent
        .wait_ready(&topo.client)
        .expect_err("an agent adopted a map of another layout")
        .to_string();
    assert!(err.contains("map COUNTERS pinned at"), "{err}");
    assert!(err.contains("another egress version"), "{err}");
    assert!(
        err.contains(&format!("{} entries", counters::COUNT - 5)),
        "{err}"
    );
    // Nothing was changed: the pinned datapath still enforces.
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_secs(1))
            .is_err()
    );
}

/// Sizes alone do not make a layout: a pinned map of the right sizes but another type or other
/// flags (a preallocated hash map where the object asks for one allocated as used; a plain
/// array where it asks for a per-CPU one) is refused too, naming the map and both definitions,
/// and the pinned datapath keeps enforcing.
#[test]
fn an_agent_refuses_pinned_maps_of_another_type_or_flags() {
    use egress_common::{
        counters,
        maps::{NAMES_WILD_CAPACITY, WildKey, names},
    };
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let mut agent =
        Agent::start(&topo, &pins, &egress_tests::static_policy("enforce"), &[]).unwrap();
    let mut refused = |what: &str| {
        agent.kill9();
        agent.spawn(&[]).unwrap();
        let err = agent
            .wait_ready(&topo.client)
            .expect_err("an agent adopted a map of another layout")
            .to_string();
        assert!(err.contains("another egress version"), "{what}: {err}");
        err
    };
    // Flags: the same key, value and entries, preallocated.
    let pin = pins.pins.map(names::NAMES_WILD);
    std::fs::remove_file(&pin).unwrap();
    aya::maps::HashMap::<aya::maps::MapData, [u8; size_of::<WildKey>()], u32>::create(
        NAMES_WILD_CAPACITY,
        0,
    )
    .unwrap()
    .pin(&pin)
    .unwrap();
    let err = refused("flags");
    assert!(err.contains("map NAMES_WILD pinned at"), "{err}");
    assert!(err.contains("flags 0x0,"), "{err}");
    assert!(err.contains("flags 0x1,"), "{err}");
    // Type: a plain array of the counters' size where a per-CPU one is wanted (checked first:
    // maps are checked by name).
    let pin = pins.pins.map(names::COUNTERS);
    std::fs::remove_file(&pin).unwrap();
    aya::maps::Array::<aya::maps::MapData, u64>::create(counters::COUNT, 0)
        .unwrap()
        .pin(&pin)
        .unwrap();
    let err = refused("type");
    assert!(err.contains("map COUNTERS pinned at"), "{err}");
    assert!(err.contains("type Array,"), "{err}");
    assert!(err.contains("type PerCpuArray,"), "{err}");
    // Nothing was changed: the pinned datapath still enforces.
    assert!(topo.connect(ALLOWED_V4, 443, MAX).is_ok());
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_secs(1))
            .is_err()
    );
}

/// One agent per pin directory: a second `egress run` on the same pins exits at once, naming the
/// lock, and the first goes on enforcing.
#[test]
fn a_second_agent_on_the_same_pin_directory_is_refused() {
    let topo = Topology::new().unwrap();
    let _servers = Servers::start(&topo.server, &[443]);
    let pins = TestPins::new();
    let mut first =
        Agent::start(&topo, &pins, &egress_tests::static_policy("enforce"), &[]).unwrap();
    // Bounded: a second agent that ran would never exit on its own (`timeout` ends it: 124).
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.client.name))
        .arg(egress_tests::egress_bin())
        .args(["run", "--iface", &topo.iface, "--policy"])
        .arg(&first.policy)
        .arg("--pin-dir")
        .arg(pins.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(124), "the second agent ran: {err}");
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("another egress agent runs with the pin directory"),
        "{err}"
    );
    assert!(
        topo.connect(DENIED_V4, 443, Duration::from_millis(800))
            .is_err()
    );
    assert!(
        first.wait_exit(Duration::from_millis(100)).is_none(),
        "the first agent stopped"
    );
}
