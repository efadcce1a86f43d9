//! A Kubernetes cluster in network namespaces, since no Kubernetes runs here: two "nodes"
//! joined by an underlay and a flannel-style VXLAN overlay (or native routes), "pods" on a
//! bridge per node, a CoreDNS stand-in (dnsmasq) as a pod behind the cluster DNS Service
//! address that nftables rewrites as kube-proxy does, masquerade for pod egress, and beyond the
//! nodes' NICs an "internet" namespace with the upstream resolver and the HTTPS servers.
//!
//! ```text
//!  inet: br0 198.18.50.1/24, upstream dnsmasq 198.18.50.53, nginx :443 on 198.18.60.0/24 and
//!        198.19.0.0/16 (the race names)
//!    │ eth0 of each node: 198.18.50.11, 198.18.50.12 (the NIC egress enforces)
//!  n1, n2: cni0 10.244.N.1/24 (bridge, br_netfilter on), flannel.1 10.244.N.0/32 (VXLAN 8472)
//!          nft: 10.96.0.10:53 -> the CoreDNS pod (prerouting + output), masquerade pod -> world
//!  pods:   eth0 10.244.N.x/24 via 10.244.N.1, resolv.conf "nameserver 10.96.0.10"
//! ```
//!
//! The kernel is shared, so "each node" is also a cgroup of its own: every process of a node
//! and its pods (clients, the CoreDNS stand-in) runs in it, and the node's agent learns at the
//! sockets of that cgroup (`--dns-cgroup`), as the DaemonSet learns at the node's root cgroup.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, sh, unique};

/// The cluster DNS Service address (what pods ask).
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// The upstream resolver beyond the nodes (what CoreDNS and the nodes ask).
pub const UPSTREAM_DNS: &str = "198.18.50.53";
/// An allowed name's address, and a denied name's (served by the internet's nginx).
pub const WEB_ALLOWED: &str = "198.18.60.10";
pub const WEB_DENIED: &str = "198.18.60.13";
/// A NodeLocal DNSCache's listen address (on a dummy interface of each node).
pub const NODELOCAL_DNS: &str = "169.254.20.10";
const POD_CIDR: &str = "10.244.0.0/16";

/// How the nodes reach each other's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// flannel's VXLAN backend: pod traffic between nodes is UDP to port 8472 on the underlay.
    Vxlan,
    /// Routes to the other node's pod CIDR via its underlay address (Calico/flannel host-gw).
    Native,
}

pub struct ClusterOptions {
    pub overlay: Overlay,
    /// The node (0 or 1) whose bridge the CoreDNS pod is on.
    pub coredns_node: usize,
    /// A NodeLocal DNSCache stand-in on every node, listening on [`NODELOCAL_DNS`] and the
    /// Service address and forwarding to the upstream; pods ask it (as the DaemonSet's iptables
    /// rules make them).
    pub nodelocal: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            overlay: Overlay::Vxlan,
            coredns_node: 1,
            nodelocal: false,
        }
    }
}

/// One node: its namespace, its cgroup, its pods.
pub struct Node {
    pub ns: NetNs,
    /// The node's cgroup v2 directory.
    pub cgroup: PathBuf,
    /// The NIC (enforced), in `ns`.
    pub iface: &'static str,
    pub underlay: String,
}

pub struct Pod {
    pub ns: NetNs,
    pub addr: String,
    /// Index of the node it runs on.
    pub node: usize,
}

pub struct Cluster {
    pub inet: NetNs,
    pub nodes: Vec<Node>,
    /// A client pod on each node: `pods[n]` runs on node `n`.
    pub pods: Vec<Pod>,
    /// The CoreDNS stand-in's pod (set once the nodes exist).
    coredns: Option<Pod>,
    cgroup_root: PathBuf,
    children: Vec<Child>,
    dir: tempfile::TempDir,
    etc: Vec<PathBuf>,
}

/// The mounted cgroup v2 hierarchy (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones); one is mounted if there is none.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // "... mount_point options ... - fstype source super_options"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(dash + 1) == Some(&"cgroup2")
            && let Some(point) = fields.get(4)
        {
            return Ok(PathBuf::from(point));
        }
    }
    let point = PathBuf::from("/run/egress-test-cgroup2");
    std::fs::create_dir_all(&point)?;
    sh(&["mount", "-t", "cgroup2", "none", point.to_str().unwrap()])?;
    Ok(point)
}

impl Cluster {
    pub fn new(opts: ClusterOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let cgroup_root = cgroup2_mount()?.join(unique("egress-cluster"));
        std::fs::create_dir_all(&cgroup_root)?;
        let inet = NetNs::new(unique("inet"))?;
        let mut cluster = Self {
            inet,
            nodes: Vec::new(),
            pods: Vec::new(),
            coredns: None,
            cgroup_root,
            children: Vec::new(),
            dir,
            etc: Vec::new(),
        };
        cluster.build_internet()?;
        for n in 0..2 {
            cluster.build_node(n, &opts)?;
        }
        for n in 0..2 {
            cluster.build_overlay(n, opts.overlay)?;
        }
        for n in 0..2 {
            let pod = Pod {
                ns: NetNs::new(unique(&format!("pod{n}")))?,
                addr: format!("10.244.{}.2", n + 1),
                node: n,
            };
            cluster.plug(&pod)?;
            cluster.pods.push(pod);
        }
        let coredns = Pod {
            ns: NetNs::new(unique("coredns"))?,
            addr: format!("10.244.{}.53", opts.coredns_node + 1),
            node: opts.coredns_node,
        };
        cluster.plug(&coredns)?;
        cluster.start_coredns(&coredns)?;
        cluster.coredns = Some(coredns);
        if opts.nodelocal {
            for n in 0..2 {
                cluster.start_nodelocal(n)?;
            }
        }
        for n in 0..2 {
            cluster.write_resolv_conf(
                n,
                if opts.nodelocal {
                    NODELOCAL_DNS
                } else {
                    CLUSTER_DNS
                },
            )?;
        }
        cluster.wait_for_dns()?;
        Ok(cluster)
    }

    /// The upstream resolver and the web servers, and the underlay bridge.
    fn build_internet(&mut self) -> anyhow::Result<()> {
        let inet = &self.inet;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        inet.ip(&["addr", "add", "198.18.50.1/24", "dev", "br0"])?;
        inet.ip(&["addr", "add", &format!("{UPSTREAM_DNS}/24"), "dev", "br0"])?;
        inet.ip(&["link", "set", "br0", "up"])?;
        inet.ip(&["route", "add", "local", "198.18.60.0/24", "dev", "lo"])?;
        inet.ip(&["route", "add", "local", crate::live::RACE_NET, "dev", "lo"])?;
        let conf = self.dir.path().join("upstream.conf");
        std::fs::write(
            &conf,
            format!(
                "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={UPSTREAM_DNS}\nport=53\nuser=root\n\
                 local-ttl=60\nauth-ttl=60\nneg-ttl=1\ncache-size=0\n\
                 host-record=cgr.dev,{WEB_ALLOWED}\nhost-record=denied.test,{WEB_DENIED}\n\
                 synth-domain=race.test,{},n-\n",
                crate::live::RACE_NET
            ),
        )?;
        let name = inet.name.clone();
        self.spawn(None, &name, "upstream-dnsmasq", &strs(&dnsmasq_args(&conf)))?;
        let (cert, key) = crate::live::certificate();
        let nconf = self.dir.path().join("nginx.conf");
        std::fs::write(&nconf, crate::live::nginx_conf(self.dir.path(), cert, key))?;
        let nconf = nconf.to_str().unwrap().to_owned();
        self.spawn(
            None,
            &name,
            "nginx",
            &["nginx", "-c", &nconf, "-e", "/dev/null"],
        )?;
        Ok(())
    }

    /// Node `n`: its namespace on the underlay, its cgroup, its pod bridge, kube-proxy's NAT.
    fn build_node(&mut self, n: usize, opts: &ClusterOptions) -> anyhow::Result<()> {
        let ns = NetNs::new(unique(&format!("node{n}")))?;
        let underlay = format!("198.18.50.1{}", n + 1);
        let peer = unique("ul");
        eth0_to(&ns, &peer, &self.inet)?;
        self.inet
            .ip(&["link", "set", &peer, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{underlay}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", "198.18.50.1"])?;
        ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("10.244.{}.1/24", n + 1),
            "dev",
            "cni0",
        ])?;
        ns.ip(&["link", "set", "cni0", "up"])?;
        // A reply bridged between two pods of this node must go through conntrack to have
        // kube-proxy's DNAT reversed (kube-proxy requires br_netfilter for the same reason).
        let _ = sh(&["modprobe", "br_netfilter"]);
        in_ns(
            &ns,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=1",
            ],
        )
        .context("node sysctls (br_netfilter needed)")?;
        let coredns = format!("10.244.{}.53", opts.coredns_node + 1);
        let rules = format!(
            "table ip kube {{\n\
               chain pre {{ type nat hook prerouting priority dstnat; ip daddr {CLUSTER_DNS} udp dport 53 dnat to {coredns}; ip daddr {CLUSTER_DNS} tcp dport 53 dnat to {coredns}; }}\n\
               chain out {{ type nat hook output priority -100; ip daddr {CLUSTER_DNS} udp dport 53 dnat to {coredns}; ip daddr {CLUSTER_DNS} tcp dport 53 dnat to {coredns}; }}\n\
               chain post {{ type nat hook postrouting priority srcnat; ip saddr {POD_CIDR} ip daddr != {POD_CIDR} masquerade; }}\n\
             }}\n"
        );
        let file = self.dir.path().join(format!("kube{n}.nft"));
        std::fs::write(&file, rules)?;
        in_ns(&ns, &["nft", "-f", file.to_str().unwrap()])?;
        let cgroup = self.cgroup_root.join(format!("node{n}"));
        std::fs::create_dir_all(&cgroup)?;
        self.nodes.push(Node {
            ns,
            cgroup,
            iface: "eth0",
            underlay,
        });
        Ok(())
    }

    /// How node `n` reaches the other node's pods.
    fn build_overlay(&self, n: usize, overlay: Overlay) -> anyhow::Result<()> {
        let node = &self.nodes[n];
        let other = 1 - n;
        let other_cidr = format!("10.244.{}.0/24", other + 1);
        match overlay {
            Overlay::Native => {
                node.ns.ip(&[
                    "route",
                    "add",
                    &other_cidr,
                    "via",
                    &self.nodes[other].underlay,
                ])?;
            }
            Overlay::Vxlan => {
                let mac = |i: usize| format!("02:00:00:00:0{}:01", i + 1);
                node.ns.ip(&[
                    "link",
                    "add",
                    "flannel.1",
                    "address",
                    &mac(n),
                    "type",
                    "vxlan",
                    "id",
                    "1",
                    "dstport",
                    "8472",
                    "local",
                    &node.underlay,
                    "dev",
                    "eth0",
                    "nolearning",
                ])?;
                node.ns.ip(&[
                    "addr",
                    "add",
                    &format!("10.244.{}.0/32", n + 1),
                    "dev",
                    "flannel.1",
                ])?;
                node.ns.ip(&["link", "set", "flannel.1", "up"])?;
                let gw = format!("10.244.{}.0", other + 1);
                node.ns.ip(&[
                    "neigh",
                    "add",
                    &gw,
                    "lladdr",
                    &mac(other),
                    "dev",
                    "flannel.1",
                    "nud",
                    "permanent",
                ])?;
                in_ns(
                    &node.ns,
                    &[
                        "bridge",
                        "fdb",
                        "append",
                        &mac(other),
                        "dev",
                        "flannel.1",
                        "dst",
                        &self.nodes[other].underlay,
                    ],
                )?;
                node.ns.ip(&[
                    "route",
                    "add",
                    &other_cidr,
                    "via",
                    &gw,
                    "dev",
                    "flannel.1",
                    "onlink",
                ])?;
            }
        }
        Ok(())
    }

    /// Plugs `pod` into its node's bridge.
    fn plug(&self, pod: &Pod) -> anyhow::Result<()> {
        let node = &self.nodes[pod.node];
        let host_side = unique("veth");
        eth0_to(&pod.ns, &host_side, &node.ns)?;
        node.ns
            .ip(&["link", "set", &host_side, "master", "cni0", "up"])?;
        pod.ns
            .ip(&["addr", "add", &format!("{}/24", pod.addr), "dev", "eth0"])?;
        pod.ns.ip(&["link", "set", "eth0", "up"])?;
        pod.ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{}.1", pod.node + 1),
        ])?;
        Ok(())
    }

    /// The CoreDNS stand-in: a forwarder to the upstream, in a pod of its node.
    fn start_coredns(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let conf = self.dir.path().join("coredns.conf");
        std::fs::write(
            &conf,
            format!(
                "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={}\nport=53\nuser=root\nserver={UPSTREAM_DNS}\ncache-size=0\n",
                pod.addr
            ),
        )?;
        self.spawn(
            Some(pod.node),
            &pod.ns.name,
            "coredns",
            &strs(&dnsmasq_args(&conf)),
        )
    }

    /// A NodeLocal DNSCache stand-in on node `n`: the link-local address on the node (the real
    /// one puts it on a dummy interface; the loopback device delivers locally the same way and
    /// needs no module), forwarding to the upstream from the node as node-local-dns forwards
    /// external names.
    fn start_nodelocal(&mut self, n: usize) -> anyhow::Result<()> {
        let node = &self.nodes[n];
        node.ns
            .ip(&["addr", "add", &format!("{NODELOCAL_DNS}/32"), "dev", "lo"])?;
        let conf = self.dir.path().join(format!("nodelocal{n}.conf"));
        std::fs::write(
            &conf,
            format!(
                "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={NODELOCAL_DNS}\nport=53\nuser=root\nserver={UPSTREAM_DNS}\ncache-size=0\n"
            ),
        )?;
        let ns = node.ns.name.clone();
        self.spawn(Some(n), &ns, "nodelocal", &strs(&dnsmasq_args(&conf)))
    }

    /// Every pod of node `n` (and the node itself, through `/etc/netns`) asks `server`.
    fn write_resolv_conf(&mut self, n: usize, server: &str) -> anyhow::Result<()> {
        let names: Vec<String> = self
            .pods
            .iter()
            .filter(|p| p.node == n)
            .map(|p| p.ns.name.clone())
            .chain([self.nodes[n].ns.name.clone()])
            .collect();
        for name in names {
            let etc = PathBuf::from("/etc/netns").join(&name);
            std::fs::create_dir_all(&etc)?;
            std::fs::write(
                etc.join("resolv.conf"),
                format!("nameserver {server}\noptions timeout:2 attempts:2\n"),
            )?;
            self.etc.push(etc);
        }
        Ok(())
    }

    /// Starts `cmd` in namespace `ns`, in node `node`'s cgroup (or none), logging to `tag`.
    fn spawn(
        &mut self,
        node: Option<usize>,
        ns: &str,
        tag: &str,
        cmd: &[&str],
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{tag}.log")))?;
        let child = self
            .command(node, ns, cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {tag}"))?;
        self.children.push(child);
        Ok(())
    }

    /// `cmd` in namespace `ns` (with its `/etc/netns` files), in node `node`'s cgroup.
    fn command(&self, node: Option<usize>, ns: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new("sh");
        let cgroup = node.map(|n| self.nodes[n].cgroup.join("cgroup.procs"));
        let enter = match &cgroup {
            Some(procs) => format!("echo $$ > {} && ", procs.display()),
            None => String::new(),
        };
        c.arg("-c")
            .arg(format!("{enter}exec ip netns exec \"$0\" \"$@\""))
            .arg(ns)
            .args(cmd);
        c
    }

    /// The CoreDNS stand-in's pod.
    pub fn coredns(&self) -> &Pod {
        self.coredns.as_ref().expect("set up in new()")
    }

    /// Points pod `pod` at another resolver (a test's own).
    pub fn set_resolver(&mut self, pod: usize, server: &str) -> anyhow::Result<()> {
        self.set_resolv_conf(
            pod,
            &format!("nameserver {server}\noptions timeout:1 attempts:1\n"),
        )
    }

    /// Replaces pod `pod`'s resolv.conf (e.g. `options use-vc` to ask over TCP).
    pub fn set_resolv_conf(&mut self, pod: usize, text: &str) -> anyhow::Result<()> {
        let etc = PathBuf::from("/etc/netns").join(&self.pods[pod].ns.name);
        std::fs::write(etc.join("resolv.conf"), text)?;
        Ok(())
    }

    /// Runs `cmd` to completion in pod `pod`, in its node's cgroup.
    pub fn run_in_pod(&self, pod: &Pod, cmd: &[&str]) -> std::io::Result<Output> {
        self.command(Some(pod.node), &pod.ns.name, cmd).output()
    }

    /// Runs `cmd` on node `n` itself (a hostNetwork pod), in its cgroup.
    pub fn run_on_node(&self, n: usize, cmd: &[&str]) -> std::io::Result<Output> {
        self.command(Some(n), &self.nodes[n].ns.name, cmd).output()
    }

    /// Starts a process in `pod` (its node's cgroup), for servers the test makes.
    pub fn spawn_in_pod(&mut self, pod: usize, tag: &str, cmd: &[&str]) -> anyhow::Result<()> {
        let (node, ns) = (self.pods[pod].node, self.pods[pod].ns.name.clone());
        self.spawn(Some(node), &ns, tag, cmd)
    }

    /// `curl https://URL` from `pod`: the HTTP status, or `None` if it did not connect in `max`.
    pub fn curl(&self, pod: &Pod, url: &str, max: Duration) -> Option<u16> {
        let secs = format!("{:.1}", max.as_secs_f64());
        let out = self
            .run_in_pod(
                pod,
                &[
                    "curl",
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--connect-timeout",
                    &secs,
                    "--max-time",
                    &secs,
                    url,
                ],
            )
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|&c| c != 0)
    }

    /// Waits until the whole DNS chain answers (pod → Service → CoreDNS → upstream).
    fn wait_for_dns(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.run_in_pod(&self.pods[0], &["getent", "hosts", "cgr.dev"])?;
            if String::from_utf8_lossy(&out.stdout).contains(WEB_ALLOWED) {
                return Ok(());
            }
            for c in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    bail!("a cluster server exited with {status}: {}", self.logs());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster's DNS does not answer after 15 s: {}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    out.push_str(&format!(
                        "--- {}\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    ));
                }
            }
        }
        out
    }

    /// A policy for a node's agent: `names`, the cluster DNS Service and the upstream as the
    /// trusted resolvers.
    pub fn policy(names: &[&str], extra_resolvers: &[&str]) -> String {
        let mut resolvers = vec![CLUSTER_DNS, UPSTREAM_DNS];
        resolvers.extend_from_slice(extra_resolvers);
        format!(
            "mode: enforce\nports: [443]\nresolvers: [{}]\nallow:\n  names: [{}]\n",
            resolvers.join(", "),
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The node's cgroup, as `egress run --dns-cgroup` takes it.
    pub fn cgroup_arg(&self, n: usize) -> &Path {
        &self.nodes[n].cgroup
    }
}

/// dnsmasq in the foreground with `conf`, logging to stderr, its pid file beside `conf`
/// (the default one would be shared by every instance).
fn dnsmasq_args(conf: &Path) -> Vec<String> {
    vec![
        "dnsmasq".into(),
        "--keep-in-foreground".into(),
        "--log-facility=-".into(),
        format!("--pid-file={}", conf.with_extension("pid").display()),
        format!("--conf-file={}", conf.display()),
    ]
}

/// A veth pair: `eth0` in `ns`, its peer `peer` in `other`.
fn eth0_to(ns: &NetNs, peer: &str, other: &NetNs) -> anyhow::Result<String> {
    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        &other.name,
    ])
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn in_ns(ns: &NetNs, cmd: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", &ns.name];
    full.extend_from_slice(cmd);
    sh(&full)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for etc in &self.etc {
            let _ = std::fs::remove_dir_all(etc);
        }
        // Processes still in a node's cgroup (a curl that outlived its test) are killed first:
        // a cgroup with members cannot be removed.
        for node in &self.nodes {
            let _ = std::fs::write(node.cgroup.join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(&node.cgroup).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}
