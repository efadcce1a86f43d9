//! The demo behind `cargo xtask demo`: a throwaway sandbox (two network namespaces joined by a
//! veth "NIC"), echo servers on 443 and 80, the real agent on the client's NIC with an example
//! policy, then connection after connection with what happened to it. Everything is removed at
//! the end, also on Ctrl-C.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use egress_tests::{
    ALLOWED_V4, ALLOWED_V6, Agent, DENIED_V4, DENIED_V6, Servers, TestPins, Topology, egress_bin,
};

const POLICY: &str = "\
# The demo policy: 443 (TCP and UDP) only to the allowed server's addresses.
mode: enforce
ports: [443]
allow:
  cidrs: [198.18.0.2, \"2001:db8::2\"]
";

fn main() -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    println!("== egress demo: building a sandbox (namespaces, veth, servers on 443 and 80)");
    let topo = Topology::new()?;
    let _servers = Servers::start(&topo.server, &[443, 80]);
    let pins = TestPins::new();
    println!("== policy:\n{POLICY}");
    println!(
        "== starting `egress run --iface {} ...` in the client namespace",
        topo.iface
    );
    let agent = Agent::start(&topo, &pins, POLICY, &[])?;
    println!("== agent ready; connecting from the client namespace\n");
    println!(
        "{:<6} {:<28} {:<9} {}",
        "proto", "destination", "verdict", "detail"
    );
    let attempts: [(&str, &str, u16, &str); 8] = [
        ("tcp", ALLOWED_V4, 443, "allowed by cidr 198.18.0.2/32"),
        ("tcp", DENIED_V4, 443, "not in the policy"),
        ("tcp", DENIED_V4, 80, "port 80 is not enforced"),
        ("tcp", ALLOWED_V6, 443, "allowed by cidr 2001:db8::2/128"),
        ("tcp", DENIED_V6, 443, "not in the policy"),
        ("udp", ALLOWED_V4, 443, "QUIC-like datagram, allowed"),
        (
            "udp",
            DENIED_V4,
            443,
            "QUIC-like datagram, not in the policy",
        ),
        ("udp", DENIED_V6, 80, "port 80 is not enforced"),
    ];
    for (proto, dst, port, why) in attempts {
        if stop.load(Ordering::Relaxed) {
            println!("\ninterrupted; cleaning up");
            break;
        }
        let shown = if dst.contains(':') {
            format!("[{dst}]:{port}")
        } else {
            format!("{dst}:{port}")
        };
        let start = Instant::now();
        let ok = match proto {
            "tcp" => topo.connect(dst, port, Duration::from_millis(1500)).is_ok(),
            _ => topo.udp_echo(dst, port, Duration::from_millis(800)),
        };
        let took = start.elapsed();
        let verdict = if ok { "allowed" } else { "DROPPED" };
        let detail = if ok {
            format!("{why}; answered in {:.1} ms", took.as_secs_f64() * 1e3)
        } else {
            format!("{why}; no answer after {:.1} s", took.as_secs_f64())
        };
        println!("{proto:<6} {shown:<28} {verdict:<9} {detail}");
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
    drop(topo);
    println!("== done");
    Ok(())
}
