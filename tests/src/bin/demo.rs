//! The demo behind `cargo xtask demo`: a throwaway sandbox (two network namespaces joined by a
//! veth "NIC"), a real resolver (dnsmasq) and TLS server (nginx) on the far side, the real agent
//! on the client's NIC with an example policy, then connection after connection with what
//! happened to it. Everything is removed at the end, also on Ctrl-C.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, Servers, TestPins, egress_bin,
    live::{RESOLVER_V4, RESOLVER_V6, WEB_DENIED, World, WorldOptions},
};

fn policy() -> String {
    format!(
        "# The demo policy: HTTPS (TCP and UDP 443) only to these names and this CIDR.\n\
         mode: enforce\nports: [443]\nresolvers: [{RESOLVER_V4}, \"{RESOLVER_V6}\"]\n\
         allow:\n  names: [cgr.dev, packages.wolfi.dev, \"*.r2.cloudflarestorage.com\"]\n  cidrs: [198.18.0.2]\n"
    )
}

/// The outcome an attempt is expected to have.
const ALLOWED: bool = true;
const DROPPED: bool = false;

enum Try {
    Curl(&'static str, &'static [&'static str]),
    Tcp(&'static str, u16),
    Udp(&'static str, u16),
}

fn main() -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    println!(
        "== egress demo: building a sandbox (namespaces, veth, dnsmasq, nginx on 443, a server on 80)"
    );
    let world = World::new(WorldOptions::default())?;
    let _plain = Servers::start(&world.topo.server, &[80]);
    let pins = TestPins::new();
    let policy = policy();
    println!("== policy:\n{policy}");
    println!(
        "== starting `egress run --iface {} ...` in the client namespace",
        world.topo.iface
    );
    let agent = Agent::start(&world.topo, &pins, &policy, &[])?;
    println!(
        "== agent ready; the client uses curl and its system resolver, as any program would\n"
    );
    println!("{:<60} {:<9} detail", "attempt", "verdict");
    // Each attempt with the verdict the demo expects; a different outcome is printed as a
    // mismatch and fails the demo, so it never shows a verdict that contradicts its reason.
    let attempts = [
        (
            Try::Curl("https://cgr.dev/", &[]),
            ALLOWED,
            "name in the policy: learned from the DNS answer",
        ),
        (
            Try::Curl("https://packages.wolfi.dev/", &[]),
            ALLOWED,
            "CNAME chain across two zones",
        ),
        (
            Try::Curl("https://acct.r2.cloudflarestorage.com/", &[]),
            ALLOWED,
            "matches *.r2.cloudflarestorage.com",
        ),
        (
            Try::Curl("https://r2.cloudflarestorage.com/", &[]),
            DROPPED,
            "the apex: *. covers names below only",
        ),
        (
            Try::Curl("https://denied.test/", &[]),
            DROPPED,
            "name not in the policy",
        ),
        (
            Try::Curl("https://mirror.test/", &[]),
            DROPPED,
            "resolves to cgr.dev's address: its TLS server name is not in the policy",
        ),
        (
            Try::Curl(
                "https://mirror.test/",
                &["--resolve", "mirror.test:443:198.18.0.10"],
            ),
            DROPPED,
            "forced onto cgr.dev's address: dropped by its TLS server name",
        ),
        (
            Try::Curl("https://198.18.0.10/", &[]),
            DROPPED,
            "cgr.dev's address without a server name",
        ),
        (
            Try::Curl("https://198.18.0.13/", &[]),
            DROPPED,
            "bare IP, never resolved from an allowed name",
        ),
        (
            Try::Curl("https://198.18.0.2/", &[]),
            ALLOWED,
            "static CIDR 198.18.0.2/32",
        ),
        (Try::Tcp(WEB_DENIED, 80), ALLOWED, "port 80 is not enforced"),
        (
            Try::Udp(WEB_DENIED, 443),
            DROPPED,
            "QUIC-like datagram to an unknown address",
        ),
    ];
    let mut mismatches = Vec::new();
    for (attempt, expected, why) in attempts {
        if stop.load(Ordering::Relaxed) {
            println!("\ninterrupted; cleaning up");
            break;
        }
        let start = Instant::now();
        let (shown, ok) = match attempt {
            Try::Curl(url, args) => (
                format!(
                    "curl {}{url}",
                    args.iter().map(|a| format!("{a} ")).collect::<String>()
                ),
                world.curl(url, args, Duration::from_secs(2)).is_some(),
            ),
            Try::Tcp(ip, port) => (
                format!("tcp connect {ip}:{port}"),
                world
                    .topo
                    .connect(ip, port, Duration::from_millis(1500))
                    .is_ok(),
            ),
            Try::Udp(ip, port) => (
                format!("udp {ip}:{port}"),
                world.topo.udp_echo(ip, port, Duration::from_millis(800)),
            ),
        };
        let took = start.elapsed().as_secs_f64();
        let (verdict, detail) = if ok {
            ("allowed", format!("{why}; done in {:.0} ms", took * 1e3))
        } else {
            ("DROPPED", format!("{why}; nothing after {took:.1} s"))
        };
        let flag = if ok == expected {
            ""
        } else {
            mismatches.push(shown.clone());
            "   <-- MISMATCH: expected the opposite"
        };
        println!("{shown:<60} {verdict:<9} {detail}{flag}");
    }
    if !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(300));
        println!("\n== `egress status` (read from the pinned maps)");
        let out = std::process::Command::new(egress_bin())
            .arg("status")
            .arg("--pin-dir")
            .arg(pins.path())
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        println!("\n== agent log");
        for line in agent.log_text().lines() {
            println!("  {line}");
        }
    }
    println!("\n== removing the sandbox");
    drop(agent);
    drop(pins);
    drop(world);
    if !mismatches.is_empty() {
        anyhow::bail!(
            "{} attempts did not get the verdict the demo expects: {}",
            mismatches.len(),
            mismatches.join(", ")
        );
    }
    println!("== done: every verdict as expected");
    Ok(())
}
