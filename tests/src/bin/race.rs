//! Resolve-then-connect, as an application does: for N fresh names, `getaddrinfo` (the system
//! resolver, through the namespace's resolv.conf) and, at once, a TCP connect to port 443.
//! Prints one JSON line: how many connects took longer than the threshold (a dropped first SYN
//! costs a 1 s retransmission), failures, and connect-time percentiles.
//!
//! Usage: egress-race COUNT SUFFIX [THRESHOLD_MS]

use std::{
    net::{TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let suffix = args.get(2).cloned().unwrap_or_else(|| "race.test".into());
    let threshold = Duration::from_millis(args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200));
    let tag = std::process::id();
    let mut connect_us = Vec::with_capacity(count);
    let (mut slow, mut failed, mut unresolved) = (0, 0, 0);
    let started = Instant::now();
    for i in 0..count {
        let name = format!("n{tag}x{i}.{suffix}:443");
        let Some(addr) = name.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
            unresolved += 1;
            continue;
        };
        let t = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => {
                let d = t.elapsed();
                if d > threshold {
                    slow += 1;
                }
                connect_us.push(d.as_micros() as u64);
            }
            Err(_) => failed += 1,
        }
    }
    connect_us.sort_unstable();
    let pct = |p: f64| {
        connect_us
            .get(((connect_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"count\":{count},\"connected\":{},\"slow\":{slow},\"failed\":{failed},\"unresolved\":{unresolved},\"threshold_ms\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"seconds\":{:.2}}}",
        connect_us.len(),
        threshold.as_millis(),
        pct(0.5),
        pct(0.99),
        connect_us.last().copied().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
}
