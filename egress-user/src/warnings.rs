//! Patterns that allow far more than they seem. `egress check` prints these and the agent logs
//! them at every load; none fails the policy, because each can be what the operator means
//! (the vendors' own documents list some of them).

use psl::Type;

use crate::name::NamePattern;

/// Zones whose names below belong to a provider's customers (buckets, sites, functions, front
/// doors): a wildcard there allows every customer's name, including an attacker's. Many are in
/// the Public Suffix List's private section, which is checked too; these are the ones that are
/// not, or whose suffixes sit below them.
const TENANT_ZONES: &[&str] = &[
    "amazonaws.com",
    "cloudfront.net",
    "azurefd.net",
    "azureedge.net",
    "azurewebsites.net",
    "blob.core.windows.net",
    "web.core.windows.net",
    "r2.cloudflarestorage.com",
    "r2.dev",
    "workers.dev",
    "pages.dev",
    "storage.googleapis.com",
    "appspot.com",
    "run.app",
    "cloudfunctions.net",
    "herokuapp.com",
    "vercel.app",
    "netlify.app",
    "github.io",
];

/// Zones served by the cluster's own DNS: their answers never reach the node's resolvers.
const CLUSTER_ZONES: &[&str] = &["cluster.local", "svc", "svc.cluster.local"];

/// A warning for each pattern of `names` that allows more than it seems.
pub fn broad_patterns(names: &[NamePattern]) -> Vec<String> {
    names.iter().filter_map(warning).collect()
}

/// Every warning of a policy: its broad patterns, and `tls:` settings that give up the
/// server-name promise.
pub fn policy(p: &crate::policy::Policy) -> Vec<String> {
    use crate::policy::{Quic, Sni};
    let mut out = broad_patterns(&p.allow.names);
    match p.tls.sni {
        Sni::Off => out.push(
            "tls.sni: off: a connection to a learned address reaches every name served there (CDN and cloud front-ends share addresses); see docs/threat-model.md".into(),
        ),
        Sni::Audit => out.push(
            "tls.sni: audit: ClientHellos naming servers the policy does not allow are reported, not dropped".into(),
        ),
        Sni::Enforce => {}
    }
    if p.tls.sni != Sni::Off && p.tls.quic == Quic::Address {
        out.push(
            "tls.quic: address: QUIC to a learned address reaches any name served there (its server name is not judged)".into(),
        );
    }
    if p.tls.sni != Sni::Off && p.tls.ports.is_empty() && !p.allow.names.is_empty() {
        out.push(
            "tls.ports is empty: no enforced port is judged by server name (443 is not enforced, or tls.ports: [] says so)".into(),
        );
    }
    out
}

fn within(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn warning(pattern: &NamePattern) -> Option<String> {
    let name = match pattern {
        NamePattern::Exact(n) | NamePattern::Wildcard(n) => n.as_str(),
    };
    if let Some(zone) = CLUSTER_ZONES.iter().find(|z| within(name, z)) {
        return Some(format!(
            "{pattern}: a cluster-internal name (under {zone}) is answered by the cluster DNS, so it is learned only from answers the trusted resolvers give; allow in-cluster destinations by `cidrs:` (the pod range) instead"
        ));
    }
    let NamePattern::Wildcard(suffix) = pattern else {
        return None;
    };
    if let Some(s) = psl::suffix(suffix.as_bytes())
        && s.is_known()
        && s.as_bytes() == suffix.as_bytes()
    {
        return Some(match s.typ() {
            Some(Type::Private) => tenant(pattern, suffix),
            _ => format!(
                "{pattern} allows every name under the public suffix {suffix}: anyone can register one there. List the names you need (e.g. `example.{suffix}` or `*.example.{suffix}`)"
            ),
        });
    }
    if let Some(zone) = TENANT_ZONES.iter().find(|z| within(suffix, z)) {
        return Some(tenant(pattern, zone));
    }
    None
}

fn tenant(pattern: &NamePattern, zone: &str) -> String {
    format!(
        "{pattern} allows the names of every customer of {zone} (a provider zone: anyone can create a bucket, site or front door there, including an attacker who then receives what this node sends). Allow your own names instead (e.g. `your-account.{zone}`) if you know them"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warns(p: &str) -> Option<String> {
        warning(&p.parse().unwrap())
    }

    #[test]
    fn public_suffixes_tenant_zones_and_cluster_names_warn_ordinary_names_do_not() {
        for p in ["*.com", "*.co.uk", "*.dev"] {
            assert!(warns(p).unwrap().contains("public suffix"), "{p}");
        }
        for p in [
            "*.r2.cloudflarestorage.com",
            "*.azurefd.net",
            "*.blob.core.windows.net",
            "*.s3.dualstack.us-east-1.amazonaws.com",
            "*.storage.googleapis.com",
        ] {
            assert!(warns(p).unwrap().contains("every customer"), "{p}");
        }
        for p in [
            "*.svc.cluster.local",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(warns(p).unwrap().contains("cluster-internal"), "{p}");
        }
        for p in [
            "cgr.dev",
            "*.cgr.dev",
            "*.icr.io",
            "registry.k8s.io",
            "*.pkg.dev",
        ] {
            assert_eq!(warns(p), None, "{p}");
        }
    }
}
