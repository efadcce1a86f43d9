//! The policy file: parsing, validation and normalization.
//!
//! Every value is validated while it is deserialized, so an error carries the file, line and
//! column of the offending value. Unknown keys are errors. A policy that fails validation
//! changes nothing: callers only apply a [`Policy`] they got back whole.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use egress_common::{
    MAX_PORTS,
    maps::{RESOLVERS_CAPACITY, STATIC_CAPACITY},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, de};
use thiserror::Error;

pub use crate::name::{NameError, NamePattern};

/// Longest accepted TTL floor; a larger one would keep stale addresses allowed for too long.
pub const MAX_MIN_TTL: Duration = Duration::from_secs(3600);
/// Longest accepted grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_raw(self) -> u32 {
        match self {
            Mode::Enforce => egress_common::mode::ENFORCE,
            Mode::Audit => egress_common::mode::AUDIT,
        }
    }
}

/// What happens to established connections whose destination a reload no longer allows
/// (`revoked_connections:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Revoked {
    /// They go on (as when an address's TTL runs out); only new connections are refused.
    #[default]
    Keep,
    /// Their flows are forgotten at the reload, so their next packet is dropped.
    Cut,
}

/// A validated, normalized policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub mode: Mode,
    pub ports: Vec<u16>,
    /// `None`: the nameservers of `/etc/resolv.conf`, read again at every start and reload.
    pub resolvers: Option<Vec<IpAddr>>,
    pub allow: Allow,
    pub dns: Dns,
    pub revoked_connections: Revoked,
    pub tls: Tls,
}

/// `tls.sni`: whether a connection to a learned address on a TLS port must name an allowed
/// server in its ClientHello.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sni {
    #[default]
    Enforce,
    Audit,
    Off,
}

/// `tls.quic`: UDP to a learned address on a TLS port (QUIC carries its server name encrypted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quic {
    /// Dropped: clients fall back to TCP, whose ClientHello is judged.
    #[default]
    Deny,
    /// Judged by the address alone: any name on an allowed address is reachable over QUIC.
    Address,
}

/// The `tls:` section, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tls {
    pub sni: Sni,
    pub quic: Quic,
    /// The enforced ports whose connections to learned addresses are judged by server name.
    pub ports: Vec<u16>,
}

impl Tls {
    /// [`egress_common::maps::Config::tls`].
    pub fn as_raw(&self) -> u32 {
        use egress_common::maps::{Config, quic_mode, tls_mode};
        let sni = match self.sni {
            Sni::Enforce => tls_mode::ENFORCE,
            Sni::Audit => tls_mode::AUDIT,
            Sni::Off => tls_mode::OFF,
        };
        let quic = match self.quic {
            Quic::Deny => quic_mode::DENY,
            Quic::Address => quic_mode::ADDRESS,
        };
        Config::tls_bits(sni, quic)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Allow {
    /// The policy's names and those of its presets, sorted and deduplicated.
    pub names: Vec<NamePattern>,
    pub cidrs: Vec<IpNet>,
    pub presets: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dns {
    #[serde(serialize_with = "ser_duration")]
    pub min_ttl: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub grace: Duration,
    /// DNS queries per second one client address may have remembered for learning
    /// (`dns.client_query_rate`); queries beyond it are not, and their answers teach nothing.
    pub client_query_rate: u32,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            client_query_rate: egress_common::maps::DNS_QUERIES_PER_CLIENT_PER_SEC,
        }
    }
}

/// Why a CIDR (or bare address) is invalid.
#[derive(Debug, Error)]
pub enum CidrError {
    #[error(
        "invalid CIDR {raw:?}: expected an address or address/prefix, as in 10.96.0.0/12 or 2001:db8::/32"
    )]
    Syntax { raw: String },
    #[error("invalid CIDR {raw:?}: host bits are set; did you mean {network}?")]
    HostBits { raw: String, network: IpNet },
}

/// Why a resolver is invalid.
#[derive(Debug, Error)]
pub enum ResolverError {
    #[error("invalid resolver {raw:?}: expected the IP address of a DNS server, as in 10.96.0.10")]
    Syntax { raw: String },
}

/// Why a duration is invalid.
#[derive(Debug, Error)]
pub enum DurationError {
    #[error("invalid duration {raw:?} (write it as 5s, 1m, 2h30m)")]
    Syntax {
        raw: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error(
        "{key} {raw:?} is out of range: at most {}",
        humantime::format_duration(*.max)
    )]
    OutOfRange {
        key: &'static str,
        raw: String,
        max: Duration,
    },
    #[error(
        "invalid duration {raw:?}: whole seconds only (the kernel keeps learned lifetimes in seconds), as in 1s or 30s"
    )]
    SubSecond { raw: String },
}

/// Parses a CIDR or a bare address (as a /32 or /128). Host bits set are an error, because
/// `10.1.2.3/8` is more likely a typo than a wish to allow all of 10/8.
pub fn parse_cidr(raw: &str) -> Result<IpNet, CidrError> {
    let raw = raw.trim();
    let net = match raw.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match raw.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(CidrError::Syntax {
                    raw: raw.to_owned(),
                });
            }
        },
    };
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            raw: raw.to_owned(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// Parses a duration of whole seconds; a fraction (`500ms`, `1.5s`) is an error rather than
/// silently truncated, because the kernel keeps lifetimes in seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(raw.trim()).map_err(|source| DurationError::Syntax {
        raw: raw.to_owned(),
        source,
    })?;
    if d.subsec_nanos() != 0 {
        return Err(DurationError::SubSecond {
            raw: raw.to_owned(),
        });
    }
    Ok(d)
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

// ---- the raw file, with validation at deserialization (so errors carry line:column) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    ports: Option<Ports>,
    #[serde(default)]
    resolvers: Option<Resolvers>,
    #[serde(default)]
    allow: RawAllow,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    revoked_connections: Revoked,
    #[serde(default)]
    tls: RawTls,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    sni: Sni,
    #[serde(default)]
    quic: Quic,
    #[serde(default)]
    ports: Option<TlsPorts>,
}

/// `tls.ports`: distinct ports (each must also be enforced, checked once both are read); an
/// empty list judges no port by server name.
struct TlsPorts(Vec<u16>);

impl<'de> Deserialize<'de> for TlsPorts {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ports = Vec::<u64>::deserialize(d)?;
        distinct_ports(ports, "tls.ports: ")
            .map(TlsPorts)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Quic {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "deny" => Ok(Quic::Deny),
            "address" => Ok(Quic::Address),
            "verify" => Err(de::Error::custom(
                "tls.quic: verify is not implemented (see docs/design.md, TLS server names); \
                 use deny (the default: clients fall back to TCP) or address",
            )),
            other => Err(de::Error::custom(format!(
                "tls.quic: unknown value {other:?}; expected deny or address"
            ))),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    names: Vec<Validated<NamePattern>>,
    #[serde(default)]
    cidrs: Cidrs,
    #[serde(default)]
    presets: Vec<Preset>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    min_ttl: Option<Validated<MinTtl>>,
    #[serde(default)]
    grace: Option<Validated<Grace>>,
    #[serde(default)]
    client_query_rate: Option<QueryRate>,
}

/// `dns.client_query_rate`: a whole number of queries per second, at least 1.
struct QueryRate(u32);

impl<'de> Deserialize<'de> for QueryRate {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(de::Error::custom(
                "dns.client_query_rate must be at least 1 (queries per second per client)",
            )),
            n => Ok(QueryRate(n)),
        }
    }
}

/// A value parsed from a string by `FromStr`, whose error becomes a located serde error.
struct Validated<T>(T);

impl<'de, T> Deserialize<'de> for Validated<T>
where
    T: FromStr,
    T::Err: std::error::Error,
{
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse()
            .map(Validated)
            .map_err(|e| de::Error::custom(with_sources(&e)))
    }
}

/// An error and its sources on one line, as `anyhow` prints `{:#}`: a serde error is a message
/// only, so the chain is rendered here or lost.
fn with_sources(e: &impl std::error::Error) -> String {
    let mut msg = e.to_string();
    for source in std::iter::successors(e.source(), |&s| s.source()) {
        msg.push_str(": ");
        msg.push_str(&source.to_string());
    }
    msg
}

struct Cidr(IpNet);
impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        parse_cidr(s).map(Cidr)
    }
}

struct Resolver(IpAddr);
impl FromStr for Resolver {
    type Err = ResolverError;
    fn from_str(s: &str) -> Result<Self, ResolverError> {
        s.trim()
            .parse()
            .map(Resolver)
            .map_err(|_| ResolverError::Syntax { raw: s.to_owned() })
    }
}

struct MinTtl(Duration);
impl FromStr for MinTtl {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        let d = parse_duration(s)?;
        if d > MAX_MIN_TTL {
            return Err(DurationError::OutOfRange {
                key: "dns.min_ttl",
                raw: s.to_owned(),
                max: MAX_MIN_TTL,
            });
        }
        Ok(MinTtl(d))
    }
}

struct Grace(Duration);
impl FromStr for Grace {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        let d = parse_duration(s)?;
        if d > MAX_GRACE {
            return Err(DurationError::OutOfRange {
                key: "dns.grace",
                raw: s.to_owned(),
                max: MAX_GRACE,
            });
        }
        Ok(Grace(d))
    }
}

/// Trusted resolvers: at most [`RESOLVERS_CAPACITY`], what the kernel's map holds for one
/// policy (more could not be written).
struct Resolvers(Vec<IpAddr>);

impl<'de> Deserialize<'de> for Resolvers {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Validated<Resolver>>::deserialize(d)?;
        if list.len() > RESOLVERS_CAPACITY as usize {
            return Err(de::Error::custom(format!(
                "resolvers lists {} addresses; at most {RESOLVERS_CAPACITY} are supported",
                list.len()
            )));
        }
        let mut out: Vec<IpAddr> = list.into_iter().map(|v| v.0.0).collect();
        out.dedup();
        Ok(Self(out))
    }
}

/// Static CIDRs: at most [`STATIC_CAPACITY`] per address family, what the kernel's maps hold
/// for one policy (they hold two: the one in force and the one being written).
#[derive(Default)]
struct Cidrs(Vec<IpNet>);

impl<'de> Deserialize<'de> for Cidrs {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list: Vec<IpNet> = Vec::<Validated<Cidr>>::deserialize(d)?
            .into_iter()
            .map(|v| v.0.0)
            .collect();
        let v4 = list.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
        for (family, n) in [("IPv4", v4), ("IPv6", list.len() - v4)] {
            if n > STATIC_CAPACITY as usize {
                return Err(de::Error::custom(format!(
                    "cidrs lists {n} {family} prefixes; at most {STATIC_CAPACITY} per family are supported"
                )));
            }
        }
        Ok(Self(list))
    }
}

/// Enforced ports: 1 to [`MAX_PORTS`] distinct ports, none of them 0.
struct Ports(Vec<u16>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ports = Vec::<u64>::deserialize(d)?;
        if ports.is_empty() {
            return Err(de::Error::custom(
                "ports is empty: list at least one port, as in [443]",
            ));
        }
        if ports.len() > MAX_PORTS {
            return Err(de::Error::custom(format!(
                "ports lists {} ports; at most {MAX_PORTS} are supported",
                ports.len()
            )));
        }
        distinct_ports(ports, "")
            .map(Ports)
            .map_err(de::Error::custom)
    }
}

/// A list of ports, each 1..=65535 and listed once; errors start with `prefix` (the key, for
/// lists other than `ports`).
fn distinct_ports(ports: Vec<u64>, prefix: &str) -> Result<Vec<u16>, String> {
    if let Some(bad) = ports.iter().find(|&&p| p == 0 || p > u64::from(u16::MAX)) {
        return Err(format!(
            "{prefix}port {bad} is out of range: ports are 1 to 65535"
        ));
    }
    let mut seen = BTreeSet::new();
    for p in &ports {
        if !seen.insert(p) {
            return Err(format!("{prefix}port {p} is listed twice"));
        }
    }
    Ok(ports.into_iter().map(|p| p as u16).collect())
}

/// A built-in list of names (`crate::presets`); an unknown one is a located error.
struct Preset(String);

impl Preset {
    fn into_name(self) -> String {
        self.0
    }
}

impl<'de> Deserialize<'de> for Preset {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if crate::presets::get(&name).is_none() {
            return Err(de::Error::custom(format!(
                "unknown preset {name:?}: the presets are {} (`egress presets` lists them)",
                crate::presets::known()
            )));
        }
        Ok(Preset(name))
    }
}

/// Parses and validates policy text; `path` only names the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    // An empty file is far more often a file caught mid-write (truncated, not yet written) or a
    // broken ConfigMap than a wish to allow nothing, which `allow: {}` says explicitly.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(PolicyError::Invalid {
            path: path.to_owned(),
            line: 1,
            column: 1,
            message: "the policy is empty; write `allow: {}` to allow nothing but the defaults"
                .into(),
        });
    }
    let raw: RawPolicy = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        PolicyError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: first_line(&e.to_string()),
        }
    })?;
    let RawPolicy {
        mode,
        ports,
        resolvers,
        allow,
        dns,
        revoked_connections,
        tls,
    } = raw;
    let RawAllow {
        names,
        cidrs,
        presets,
    } = allow;
    let RawDns {
        min_ttl,
        grace,
        client_query_rate,
    } = dns;
    let defaults = Dns::default();
    let presets: Vec<String> = presets.into_iter().map(Preset::into_name).collect();
    // Presets are expanded here, once: everything downstream sees only `allow.names`.
    let mut names: Vec<NamePattern> = names.into_iter().map(|v| v.0).collect();
    for p in &presets {
        names.extend(crate::presets::get(p).expect("validated above").patterns());
    }
    names.sort();
    names.dedup();
    let mut cidrs = cidrs.0;
    cidrs.sort();
    cidrs.dedup();
    let mut ports = ports.map_or_else(|| vec![443], |p| p.0);
    ports.sort_unstable();
    let tls_ports = match tls.ports {
        Some(p) => {
            let mut p = p.0;
            p.sort_unstable();
            if let Some(bad) = p.iter().find(|p| !ports.contains(p)) {
                let (line, column) = key_position(text, "tls");
                return Err(PolicyError::Invalid {
                    path: path.to_owned(),
                    line,
                    column,
                    message: format!(
                        "tls.ports lists {bad}, which is not an enforced port (ports: {ports:?}); \
                         only enforced ports can be judged by server name"
                    ),
                });
            }
            p
        }
        None => ports.iter().copied().filter(|&p| p == 443).collect(),
    };
    Ok(Policy {
        mode,
        ports,
        resolvers: resolvers.map(|r| r.0),
        allow: Allow {
            names,
            cidrs,
            presets,
        },
        dns: Dns {
            min_ttl: min_ttl.map_or(defaults.min_ttl, |v| v.0.0),
            grace: grace.map_or(defaults.grace, |v| v.0.0),
            client_query_rate: client_query_rate.map_or(defaults.client_query_rate, |r| r.0),
        },
        revoked_connections,
        tls: Tls {
            sni: tls.sni,
            quic: tls.quic,
            ports: tls_ports,
        },
    })
}

/// Line and column of the top-level key `key` in the policy text (1, 1 if not found): for
/// errors that compare two sections, found only once both are read.
fn key_position(text: &str, key: &str) -> (u64, u64) {
    text.lines()
        .position(|l| l.starts_with(key) && l[key.len()..].trim_start().starts_with(':'))
        .map_or((1, 1), |i| (i as u64 + 1, 1))
}

/// Reads, parses and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    parse(&read(path)?, path)
}

/// Reads a policy file's text.
pub fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// serde-saphyr renders a source snippet after the message; the location is reported
/// separately, so keep the message line only.
fn first_line(rendered: &str) -> String {
    let mut msg = rendered.lines().next().unwrap_or_default().trim();
    msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // Drop the renderer's own "line X column Y: " prefix; we print file:line:column.
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        msg = after;
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests;
