//! The classic Linux setup egress is compared with: a local dnsmasq forwarder that adds the
//! addresses of allowed names to an nftables set (`--nftset`), and an nftables output chain that
//! drops ports 443 (TCP and UDP) to anything not in the set. Established connections pass by
//! conntrack, as in every such ruleset; the sets keep elements for `SET_TIMEOUT` (dnsmasq does
//! not pass the record's TTL to the set), the common choice that keeps them from growing forever.

use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

use crate::{NetNs, sh};

/// How long an address stays in the set after dnsmasq added it.
pub const SET_TIMEOUT: &str = "1h";
const TABLE: &str = "egress_classic";

/// The nftables ruleset in one namespace; removed on drop.
pub struct Rules {
    ns: String,
}

impl Rules {
    pub fn install(ns: &NetNs) -> anyhow::Result<Self> {
        let rules = format!(
            "table inet {TABLE} {{\n\
               set allow4 {{ type ipv4_addr; flags timeout; timeout {SET_TIMEOUT}; }}\n\
               set allow6 {{ type ipv6_addr; flags timeout; timeout {SET_TIMEOUT}; }}\n\
               counter denied {{ }}\n\
               chain output {{\n\
                 type filter hook output priority filter; policy accept;\n\
                 ct state established,related accept\n\
                 meta l4proto {{ tcp, udp }} th dport 443 ip daddr @allow4 accept\n\
                 meta l4proto {{ tcp, udp }} th dport 443 ip6 daddr @allow6 accept\n\
                 meta l4proto {{ tcp, udp }} th dport 443 counter name denied drop\n\
               }}\n\
             }}\n"
        );
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("rules.nft");
        std::fs::write(&file, rules)?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            "nft",
            "-f",
            file.to_str().unwrap(),
        ])?;
        Ok(Self {
            ns: ns.name.clone(),
        })
    }

    /// Adds an address to the set, as dnsmasq would.
    pub fn allow(&self, addr: &str) -> anyhow::Result<()> {
        let set = if addr.contains(':') {
            "allow6"
        } else {
            "allow4"
        };
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "nft",
            "add",
            "element",
            "inet",
            TABLE,
            set,
            &format!("{{ {addr} }}"),
        ])
        .map(drop)
    }

    /// Packets the drop rule has dropped.
    pub fn dropped(&self) -> anyhow::Result<u64> {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "list", "counter", "inet", TABLE, "denied",
        ])?;
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no packet count in {out}"))
    }

    /// Addresses in the IPv4 set.
    pub fn allowed4(&self) -> anyhow::Result<usize> {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "-j", "list", "set", "inet", TABLE, "allow4",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["set"]["elem"].as_array())
            .map(Vec::len)
            .sum())
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        let _ = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "delete", "table", "inet", TABLE,
        ]);
    }
}

/// dnsmasq as the node's local forwarder on 127.0.0.1:53, no cache (every query goes upstream,
/// as with egress), adding the answers for `names` (suffix match, as dnsmasq does) to the sets.
pub struct Forwarder {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Forwarder {
    /// `names`: domains whose answers fill the sets; empty: a plain forwarder.
    pub fn start(ns: &NetNs, upstream: &str, names: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            "--listen-address=127.0.0.1".into(),
            "--port=53".into(),
            "--user=root".into(),
            "--cache-size=0".into(),
            format!("--server={upstream}"),
            format!("--pid-file={}", dir.path().join("pid").display()),
        ];
        if !names.is_empty() {
            args.push(format!(
                "--nftset=/{}/4#inet#{TABLE}#allow4,6#inet#{TABLE}#allow6",
                names.join("/")
            ));
        }
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "dnsmasq"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the local dnsmasq")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !sh(&["ip", "netns", "exec", &ns.name, "ss", "-lnu"])?.contains("127.0.0.1:53") {
            if std::time::Instant::now() > deadline {
                bail!("the local dnsmasq is not listening after 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Self { child, _dir: dir })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
