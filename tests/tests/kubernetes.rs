//! Learning the pods' answers on Kubernetes, in a cluster made of namespaces
//! (`egress_tests::cluster`): two nodes, pods on bridges, a CoreDNS stand-in behind the cluster
//! DNS Service address, kube-proxy's DNAT and masquerade in nftables, a VXLAN overlay or native
//! routes. Each node runs the real agent, enforcing on its NIC and learning at the sockets of
//! its cgroup (`--dns-cgroup`), as the DaemonSet does on a node's root cgroup.
//!
//! The race measure: 1,000 fresh names resolved by a pod through the Service and connected to
//! at once; every name has an address of its own, so a connect is only fast if the address was
//! learned before the pod read the answer. A dropped first SYN costs a 1 s retransmission.

use std::{path::Path, time::Duration};

use egress_common::counters;
use egress_tests::{
    Agent, TestPins,
    cluster::{
        CLUSTER_DNS, Cluster, ClusterOptions, NODELOCAL_DNS, Overlay, WEB_ALLOWED, WEB_DENIED,
    },
    live::RACE_FIRST,
};

const MAX: Duration = Duration::from_secs(3);
const NAMES: &[&str] = &["cgr.dev", "*.race.test"];

/// The agents of both nodes, learning at their node's cgroup.
fn agents(c: &Cluster, pins: &[TestPins; 2], extra_resolvers: &[&str]) -> Vec<Agent> {
    (0..2)
        .map(|n| {
            let cgroup = c.cgroup_arg(n).to_str().unwrap().to_owned();
            Agent::start_in(
                &c.nodes[n].ns,
                c.nodes[n].iface,
                &pins[n],
                &Cluster::policy(NAMES, extra_resolvers),
                &["--dns-cgroup", &cgroup],
            )
            .unwrap_or_else(|e| panic!("agent on node {n}: {e:#}\n{}", c.logs()))
        })
        .collect()
}

fn drops(agent: &Agent) -> u64 {
    agent.datapath().counters().unwrap()[counters::DROP_DENIED as usize]
}

fn learned(agent: &Agent, addr: &str) -> bool {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    agent
        .datapath()
        .learned()
        .unwrap()
        .iter()
        .any(|l| l.addr == addr)
}

/// Resolves and connects `count` fresh race names from `run`'s context (in namespace `ns`);
/// checks that nothing was dropped on the NIC, no SYN was sent again and no connect waited.
fn race(
    c: &Cluster,
    agent: &Agent,
    ns: &egress_tests::NetNs,
    count: u32,
    run: impl Fn(&[&str]) -> std::process::Output,
) {
    let before = drops(agent);
    let retrans = ns.tcp_ext("TCPSynRetrans");
    let bin = Path::new(env!("CARGO_BIN_EXE_egress-race"))
        .to_str()
        .unwrap();
    let n = count.to_string();
    let out = run(&[bin, &n, "race.test", "200", RACE_FIRST]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("race: {text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "race output {text:?} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        )
    });
    assert_eq!(v["connected"], count, "{text}\n{}", agent.log_text());
    assert_eq!(
        v["slow"], 0,
        "connects waited on a dropped first SYN: {text}"
    );
    assert_eq!(
        drops(agent) - before,
        0,
        "the NIC dropped packets of allowed names"
    );
    assert_eq!(
        ns.tcp_ext("TCPSynRetrans") - retrans,
        0,
        "SYNs were sent again"
    );
}

#[test]
fn a_pod_on_a_node_without_coredns_learns_through_the_service_over_vxlan() {
    let c = Cluster::new(ClusterOptions::default()).unwrap();
    let pod = &c.pods[0];
    // Information for the resolution latency egress adds: the same race with no agent yet.
    let bin = Path::new(env!("CARGO_BIN_EXE_egress-race"))
        .to_str()
        .unwrap();
    let base = c
        .run_in_pod(pod, &[bin, "300", "race.test", "200", "198.19.200.1"])
        .unwrap();
    eprintln!(
        "race without egress: {}",
        String::from_utf8_lossy(&base.stdout).trim()
    );
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[]);
    assert_ne!(pod.node, c.coredns().node, "CoreDNS is on the other node");
    assert_eq!(
        c.curl(pod, "https://cgr.dev/", MAX),
        Some(200),
        "{}",
        agents[0].log_text()
    );
    assert!(learned(&agents[0], WEB_ALLOWED));
    // A name the policy does not allow stays dropped, and was not learned.
    assert_eq!(
        c.curl(pod, "https://denied.test/", Duration::from_secs(2)),
        None
    );
    assert!(!learned(&agents[0], WEB_DENIED));
    race(&c, &agents[0], &pod.ns, 1000, |cmd| {
        c.run_in_pod(pod, cmd).unwrap()
    });
}

#[test]
fn a_pod_on_the_node_of_coredns_learns_through_the_service() {
    let c = Cluster::new(ClusterOptions {
        coredns_node: 0,
        ..ClusterOptions::default()
    })
    .unwrap();
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[]);
    let pod = &c.pods[0];
    assert_eq!(pod.node, c.coredns().node);
    race(&c, &agents[0], &pod.ns, 1000, |cmd| {
        c.run_in_pod(pod, cmd).unwrap()
    });
}

/// A pod whose resolver asks over TCP (glibc's `use-vc`) through the Service, answered by
/// CoreDNS on the other node: the socket programs follow each connection (by socket cookie,
/// across the Service's DNAT) and learn every answer before the pod reads it.
#[test]
fn a_pod_asking_over_tcp_through_the_service_never_waits() {
    let mut c = Cluster::new(ClusterOptions::default()).unwrap();
    c.set_resolv_conf(
        0,
        &format!("nameserver {CLUSTER_DNS}\noptions use-vc timeout:2\n"),
    )
    .unwrap();
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[]);
    let pod = &c.pods[0];
    assert_ne!(pod.node, c.coredns().node, "CoreDNS is on the other node");
    let segments = |a: &Agent| a.datapath().counters().unwrap()[counters::DNS_TCP_SEGMENT as usize];
    let before = segments(&agents[0]);
    race(&c, &agents[0], &pod.ns, 300, |cmd| {
        c.run_in_pod(pod, cmd).unwrap()
    });
    assert!(
        segments(&agents[0]) - before >= 300,
        "the answers did not come over TCP"
    );
}

#[test]
fn native_routing_instead_of_an_overlay() {
    let c = Cluster::new(ClusterOptions {
        overlay: Overlay::Native,
        ..ClusterOptions::default()
    })
    .unwrap();
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[]);
    race(&c, &agents[0], &c.pods[0].ns, 1000, |cmd| {
        c.run_in_pod(&c.pods[0], cmd).unwrap()
    });
}

#[test]
fn a_nodelocal_dns_cache_and_its_pods() {
    let c = Cluster::new(ClusterOptions {
        nodelocal: true,
        ..ClusterOptions::default()
    })
    .unwrap();
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[NODELOCAL_DNS]);
    race(&c, &agents[0], &c.pods[0].ns, 1000, |cmd| {
        c.run_in_pod(&c.pods[0], cmd).unwrap()
    });
}

#[test]
fn a_host_network_process_asking_the_service() {
    let c = Cluster::new(ClusterOptions::default()).unwrap();
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[]);
    // The node's own resolv.conf names the Service too: its query is DNATed to the CoreDNS pod
    // before the socket program sees it, its answer comes back from the Service address.
    race(&c, &agents[0], &c.nodes[0].ns, 300, |cmd| {
        c.run_on_node(0, cmd).unwrap()
    });
}

#[test]
fn a_pod_that_answers_dns_itself_teaches_nothing() {
    let mut c = Cluster::new(ClusterOptions::default()).unwrap();
    let pins = [TestPins::new(), TestPins::new()];
    let agents = agents(&c, &pins, &[]);
    // A resolver in pod 1 claims an allowed name is at the denied server's address.
    let fake = c.pods[1].addr.clone();
    let conf = std::env::temp_dir().join(egress_tests::unique("fake-dns"));
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={fake}\nport=53\nuser=root\n\
             address=/cgr.dev/{WEB_DENIED}\n"
        ),
    )
    .unwrap();
    let pid = conf.with_extension("pid");
    c.spawn_in_pod(
        1,
        "fake-dns",
        &[
            "dnsmasq",
            "--keep-in-foreground",
            &format!("--pid-file={}", pid.display()),
            &format!("--conf-file={}", conf.display()),
        ],
    )
    .unwrap();
    // dnsmasq writes its pid file once its sockets are bound.
    egress_tests::wait_for("the fake resolver", || pid.exists());
    c.set_resolver(0, &fake).unwrap();
    let untrusted = |a: &Agent| a.datapath().counters().unwrap()[counters::DNS_UNTRUSTED as usize];
    let before = untrusted(&agents[0]);
    // The pod reads the fake answer, but its address is not learned: the connect is dropped.
    assert_eq!(
        c.curl(&c.pods[0], "https://cgr.dev/", Duration::from_secs(2)),
        None
    );
    assert!(!learned(&agents[0], WEB_DENIED));
    assert!(
        untrusted(&agents[0]) > before,
        "the fake answer was seen and not trusted"
    );
    // The real resolver still teaches.
    c.set_resolver(0, CLUSTER_DNS).unwrap();
    assert_eq!(c.curl(&c.pods[0], "https://cgr.dev/", MAX), Some(200));
    let _ = std::fs::remove_file(conf);
}
