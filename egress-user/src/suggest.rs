//! `egress suggest`: a policy fragment from the destinations that were denied (or would have
//! been, in audit mode), read from the pinned `DENIED` record.
//!
//! Names are listed as they were asked. Where [`COLLAPSE_AT`] or more sibling names share a
//! parent of at least two labels (`a.cdn.example.com`, `b.cdn.example.com`, … under
//! `cdn.example.com`), they are collapsed into `*.parent`, and the fragment says so: a wildcard
//! allows every other name below that parent too, so the operator should read it before
//! pasting. Parents of one label (`com`) are never wildcarded. Addresses that no answer named
//! (programs that connect to hard-coded IPs) are listed commented out under `cidrs:`: the
//! fragment never allows them by default.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::records::Denied;

/// Siblings under one parent from which they are collapsed into a wildcard.
pub const COLLAPSE_AT: usize = 3;

/// The policy fragment for `denied`.
pub fn fragment(denied: &[Denied], source: &str) -> String {
    let mut names: BTreeMap<String, &Denied> = BTreeMap::new();
    let mut addrs: Vec<&Denied> = Vec::new();
    for d in denied {
        if d.addr().is_some() {
            addrs.push(d);
        } else if d.key.parse::<crate::policy::NamePattern>().is_ok() {
            names.insert(d.key.clone(), d);
        }
    }
    addrs.sort_by_key(|d| std::cmp::Reverse(d.hits));

    // Group by parent; a parent with enough children becomes a wildcard.
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in names.keys() {
        if let Some((_, parent)) = name.split_once('.')
            && parent.contains('.')
        {
            by_parent.entry(parent).or_default().push(name);
        }
    }
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    let mut collapsed: Vec<&str> = Vec::new();
    for (parent, children) in &by_parent {
        if children.len() >= COLLAPSE_AT {
            let hits: u64 = children.iter().map(|c| names[*c].hits).sum();
            let shown: Vec<&str> = children.iter().take(4).copied().collect();
            let more = children.len().saturating_sub(shown.len());
            entries.insert(
                format!("*.{parent}"),
                format!(
                    "collapsed from {} names ({}{}), {hits} denied; also allows every other name below {parent}",
                    children.len(),
                    shown.join(", "),
                    if more > 0 {
                        format!(", and {more} more")
                    } else {
                        String::new()
                    }
                ),
            );
            collapsed.extend(children.iter().copied());
        }
    }
    for (name, d) in &names {
        if !collapsed.contains(&name.as_str()) {
            entries.insert(
                name.clone(),
                format!(
                    "{} denied, port {} ({}){}",
                    d.hits,
                    d.port,
                    proto(d.proto),
                    if d.tls { ", TLS server name" } else { "" }
                ),
            );
        }
    }

    let mut o = String::new();
    let total: u64 = denied.iter().map(|d| d.hits).sum();
    let _ = writeln!(
        o,
        "# egress suggest: {} destinations denied or audited ({total} events), from {source}.",
        denied.len()
    );
    let _ = writeln!(
        o,
        "# Review before use: every name below was asked for by something on this node."
    );
    let _ = writeln!(o, "allow:\n  names:");
    if entries.is_empty() {
        let _ = writeln!(o, "    []");
    }
    for (name, why) in &entries {
        let _ = writeln!(o, "    - \"{name}\"  # {why}");
    }
    let _ = writeln!(o, "  cidrs:");
    if addrs.is_empty() {
        let _ = writeln!(o, "    []");
    } else {
        let _ = writeln!(
            o,
            "    []\n    # Addresses no DNS answer named (hard-coded IPs); allow one only if you know what it is:"
        );
        for d in addrs {
            let net = d.addr().map(ipnet::IpNet::from).expect("filtered above");
            let _ = writeln!(
                o,
                "    # - {net}  # {} denied, port {} ({})",
                d.hits,
                d.port,
                proto(d.proto)
            );
        }
    }
    o
}

use egress_common::packet::proto_name as proto;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{NamePattern, parse};

    fn d(key: &str, hits: u64) -> Denied {
        Denied {
            key: key.into(),
            hits,
            first_unix_s: 1,
            last_unix_s: 2,
            port: 443,
            proto: 6,
            audit: true,
            tls: false,
        }
    }

    #[test]
    fn siblings_collapse_into_a_wildcard_and_say_so() {
        let denied = [
            d("a.blob.example.net", 1),
            d("b.blob.example.net", 2),
            d("c.blob.example.net", 3),
            d("api.example.com", 7),
            d("x.example.org", 1),
            d("y.example.org", 1),
            d("203.0.113.9", 4),
        ];
        let text = fragment(&denied, "test");
        let p = parse(&text, "suggest.yaml".as_ref()).expect(&text);
        let names: Vec<String> = p.allow.names.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            // The policy's order: exact names, then wildcards.
            [
                "api.example.com",
                "x.example.org",
                "y.example.org",
                "*.blob.example.net"
            ]
        );
        assert!(text.contains("collapsed from 3 names"), "{text}");
        assert!(text.contains("also allows every other name below blob.example.net"));
        // The bare address is only suggested in a comment.
        assert!(p.allow.cidrs.is_empty());
        assert!(text.contains("# - 203.0.113.9/32"), "{text}");
        assert!(
            p.allow
                .names
                .iter()
                .any(|n| *n == NamePattern::Wildcard("blob.example.net".into()))
        );
    }

    #[test]
    fn a_single_label_parent_is_never_wildcarded() {
        let denied = [d("a.com", 1), d("b.com", 1), d("c.com", 1)];
        let p = parse(&fragment(&denied, "t"), "s.yaml".as_ref()).unwrap();
        assert_eq!(p.allow.names.len(), 3);
        assert!(
            p.allow
                .names
                .iter()
                .all(|n| matches!(n, NamePattern::Exact(_)))
        );
    }

    #[test]
    fn nothing_denied_is_still_a_valid_policy() {
        let p = parse(&fragment(&[], "t"), "s.yaml".as_ref()).unwrap();
        assert!(p.allow.names.is_empty() && p.allow.cidrs.is_empty());
    }
}
