//! Which interfaces to enforce on when `--iface` is not given: those that carry the default
//! routes (IPv4 and IPv6), read from the kernel's routing tables in `/proc/net`.
//!
//! Decision: the main routing table's default routes only. A node whose traffic leaves through
//! policy routing or several uplinks should name them with `--iface`; the agent logs which
//! interfaces it picked, so a surprise is visible at start.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RoutesError {
    #[error(
        "no --iface given and this network namespace has no default route; name the interfaces to enforce on with --iface"
    )]
    NoDefaultRoute,
}

/// Interfaces of the IPv4 and IPv6 default routes, in route order, without duplicates.
pub fn default_route_interfaces() -> Result<Vec<String>, RoutesError> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let ifaces = parse(&v4, &v6);
    if ifaces.is_empty() {
        return Err(RoutesError::NoDefaultRoute);
    }
    Ok(ifaces)
}

/// The interfaces of default routes in `/proc/net/route` and `/proc/net/ipv6_route` text.
pub fn parse(v4: &str, v6: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |iface: &str| {
        if iface != "lo" && !out.iter().any(|i| i == iface) {
            out.push(iface.to_owned());
        }
    };
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...; RTF_UP is flag 0x1.
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8
            && f[1] == "00000000"
            && f[7] == "00000000"
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 1 != 0)
        {
            push(f[0]);
        }
    }
    // dest dest_len src src_len next_hop metric refcnt use flags iface; a default route is
    // ::/0 with a gateway (RTF_GATEWAY 0x2); the unreachable ::/0 routes on lo are skipped.
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 10
            && f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && u32::from_str_radix(f[8], 16).is_ok_and(|flags| flags & 0x3 == 0x3)
        {
            push(f[9]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse;

    const V4: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t00000000\t010300C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
    const V6: &str = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth2\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";

    #[test]
    fn default_routes_of_both_families_in_order_without_duplicates() {
        assert_eq!(parse(V4, V6), ["eth0", "eth1", "eth2"]);
        assert_eq!(parse(V4, ""), ["eth0", "eth1"]);
        assert!(parse("", "").is_empty());
    }

    #[test]
    fn routes_that_are_not_default_are_ignored() {
        let only_subnet = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert!(parse(only_subnet, "").is_empty());
    }
}
