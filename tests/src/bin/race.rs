//! Resolve-then-connect, as an application does: for N fresh names, `getaddrinfo` (the system
//! resolver, through the namespace's resolv.conf) and, at once, a TCP connect to port 443.
//!
//! Every name resolves to an address no earlier name had (the test resolver synthesizes
//! `n-198-19-X-Y.SUFFIX` → 198.19.X.Y, see `live::RACE_NET`), so every connect is the first one
//! to its address: a connect can only be fast if the address was allowed before the
//! application read the answer. An answer with any other address counts as `wrong_address`.
//!
//! Prints one JSON line: how many connects took longer than the threshold (a dropped first SYN
//! costs a 1 s retransmission), failures, and resolve and connect percentiles.
//!
//! Usage: egress-race COUNT SUFFIX [THRESHOLD_MS] [FIRST_ADDRESS]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

/// Every percentile of `v`, 0 to 100, comma-separated (the report's CDF).
fn quantiles(v: &[u64]) -> String {
    let mut v = v.to_vec();
    v.sort_unstable();
    (0..=100)
        .map(|p| {
            v.get(((v.len() as f64 - 1.0) * f64::from(p) / 100.0) as usize)
                .copied()
                .unwrap_or(0)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    let pct = |p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    (pct(0.5), pct(0.99), v.last().copied().unwrap_or(0))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let suffix = args.get(2).cloned().unwrap_or_else(|| "race.test".into());
    let threshold = Duration::from_millis(args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200));
    let first: Ipv4Addr = args
        .get(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(Ipv4Addr::new(198, 19, 0, 1));
    let mut connect_us = Vec::with_capacity(count as usize);
    let mut resolve_us = Vec::with_capacity(count as usize);
    let (mut slow, mut failed, mut unresolved, mut wrong) = (0, 0, 0, 0);
    let started = Instant::now();
    for i in 0..count {
        let want = Ipv4Addr::from(u32::from(first) + i);
        let [a, b, c, d] = want.octets();
        let name = format!("n-{a}-{b}-{c}-{d}.{suffix}:443");
        let t = Instant::now();
        let Some(addr) = name.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
            unresolved += 1;
            continue;
        };
        resolve_us.push(t.elapsed().as_micros() as u64);
        if addr != SocketAddr::new(IpAddr::V4(want), 443) {
            wrong += 1;
            continue;
        }
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
    let connected = connect_us.len();
    let cdf = quantiles(&connect_us);
    let (p50, p99, max) = percentiles(connect_us);
    let (r50, r99, rmax) = percentiles(resolve_us);
    println!(
        "{{\"connect_cdf_us\":[{cdf}],\"count\":{count},\"connected\":{connected},\"slow\":{slow},\"failed\":{failed},\"unresolved\":{unresolved},\"wrong_address\":{wrong},\"threshold_ms\":{},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max},\"resolve_p50_us\":{r50},\"resolve_p99_us\":{r99},\"resolve_max_us\":{rmax},\"seconds\":{:.2}}}",
        threshold.as_millis(),
        started.elapsed().as_secs_f64()
    );
}
