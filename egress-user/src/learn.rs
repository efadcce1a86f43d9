//! The agent's half of DNS learning. The kernel learns the addresses of allowed answers itself
//! (race-free); the agent consumes the copies it sends to:
//! - allow the target of a CNAME chain that ends without addresses, so the client's follow-up
//!   query for that target is learned by the kernel too;
//! - learn what the kernel left: answers with more records than it walks, and DNS-over-TCP
//!   answers that span segments (the kernel matched them to their query and copies their parts
//!   in stream order; they are joined here);
//! - count and log.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use egress_common::{
    hash::name_hashes,
    maps::{Config, DnsEventHeader, Rule, dns_flag, dns_kind},
};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RData,
};

use crate::{clock, datapath::Datapath, events::read_record, name::NamePattern};

/// Longest CNAME chain followed.
pub const MAX_CHAIN: usize = 16;
/// Long DNS-over-TCP answers joined at once.
const MAX_JOINING: usize = 1024;
/// An answer whose parts have not all arrived this long after its first is dropped (the same
/// bound as an answer's wait for its query, `DNS_QUERY_TIMEOUT_NS`).
const JOIN_TIMEOUT_NS: u64 = egress_common::maps::DNS_QUERY_TIMEOUT_NS;

#[derive(Debug, Default)]
pub struct LearnStats {
    /// DNS copies received from the kernel.
    pub copies: AtomicU64,
    /// CNAME targets allowed because a chain ended without addresses.
    pub cname_targets: AtomicU64,
    /// Addresses learned by the agent (what the kernel left to it).
    pub addresses: AtomicU64,
    /// Long DNS-over-TCP answers joined from their parts and learned.
    pub tcp_answers: AtomicU64,
    /// Copies that could not be parsed.
    pub unparsable: AtomicU64,
    /// Inserts that failed (map full).
    pub insert_failures: AtomicU64,
    /// Answers that could not be recorded in the answer record.
    pub record_failures: AtomicU64,
}

/// One DNS-over-TCP answer being joined: its connection (as the kernel saw it) and the
/// sequence number of its first byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PartKey {
    resolver: [u8; 16],
    client: [u8; 16],
    client_port: [u8; 2],
    msg_seq: u32,
}

struct Joining {
    /// When its first part arrived (`ts_ns` of the copy).
    started_ns: u64,
    len: usize,
    buf: Vec<u8>,
}

/// Long DNS-over-TCP answers, joined from the parts the kernel copies. The kernel has already
/// matched each to a query of its connection and found its name allowed, and copies parts only
/// in stream order from the answer's first byte, so joining is appending: a part that does not
/// continue the answer exactly (a copy lost to a full ring) abandons it. Bounded:
/// [`MAX_JOINING`] answers of at most 65,535 bytes, each for at most [`JOIN_TIMEOUT_NS`]; the
/// oldest is dropped for a new one.
#[derive(Default)]
pub struct Joiner {
    answers: HashMap<PartKey, Joining>,
}

impl Joiner {
    /// Adds a part (`h`: its copy's header) and returns the answer it completes.
    pub fn push(&mut self, h: &DnsEventHeader, part: &[u8]) -> Option<Vec<u8>> {
        let key = PartKey {
            resolver: h.resolver,
            client: h.client,
            client_port: h.client_port,
            msg_seq: h.msg_seq,
        };
        let offset = h.tcp_seq.wrapping_sub(h.msg_seq) as usize;
        let len = usize::from(h.msg_len);
        if offset == 0 {
            // Answers whose parts stopped coming (a lost copy, a closed connection) go first.
            self.answers
                .retain(|_, j| h.ts_ns.saturating_sub(j.started_ns) < JOIN_TIMEOUT_NS);
            if self.answers.len() >= MAX_JOINING
                && let Some(oldest) = self
                    .answers
                    .iter()
                    .min_by_key(|(_, j)| j.started_ns)
                    .map(|(k, _)| *k)
            {
                self.answers.remove(&oldest);
            }
            self.answers.insert(
                key,
                Joining {
                    started_ns: h.ts_ns,
                    len,
                    // Grown as parts arrive: the length is the resolver's word, not yet bytes.
                    buf: Vec::new(),
                },
            );
        }
        let joining = self.answers.get_mut(&key)?;
        if offset != joining.buf.len() || joining.buf.len() + part.len() > joining.len {
            self.answers.remove(&key);
            return None;
        }
        joining.buf.extend_from_slice(part);
        if joining.buf.len() < joining.len {
            return None;
        }
        self.answers.remove(&key).map(|j| j.buf)
    }

    /// Answers being joined, and the most bytes one holds (the bounds the fuzzer checks).
    pub fn held(&self) -> (usize, usize) {
        (
            self.answers.len(),
            self.answers
                .values()
                .map(|j| j.buf.len())
                .max()
                .unwrap_or(0),
        )
    }
}

/// What an answer teaches: the end of the CNAME chain that starts at its question, and the
/// addresses the answer section gives for that end.
#[derive(Debug, PartialEq, Eq)]
pub struct ChainEnd {
    /// The question name (lowercase, no trailing dot).
    pub asked: String,
    /// The chain's last name (`asked` if there is no CNAME).
    pub name: String,
    /// TTL of the last CNAME followed (0 without one).
    pub last_ttl: u32,
    /// A/AAAA records owned by `name`, with their TTLs.
    pub addresses: Vec<(IpAddr, u32)>,
}

/// Follows the CNAME chain from the question (at most [`MAX_CHAIN`] links, loops stop).
pub fn chain_end(msg: &Message) -> Option<ChainEnd> {
    let q = msg.queries().first()?;
    let asked = normalize(&q.name().to_ascii());
    let mut name = asked.clone();
    let mut last_ttl = 0;
    for _ in 0..MAX_CHAIN {
        let next = msg.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(target) if normalize(&r.name().to_ascii()) == name => {
                Some((normalize(&target.0.to_ascii()), r.ttl()))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) if target != name => {
                name = target;
                last_ttl = ttl;
            }
            _ => break,
        }
    }
    let addresses = msg
        .answers()
        .iter()
        .filter(|r| normalize(&r.name().to_ascii()) == name)
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect();
    Some(ChainEnd {
        asked,
        name,
        last_ttl,
        addresses,
    })
}

pub struct Learner {
    names: Vec<NamePattern>,
    tcp: Joiner,
}

impl Learner {
    pub fn new(names: Vec<NamePattern>) -> Self {
        Self {
            names,
            tcp: Joiner::default(),
        }
    }

    pub fn set_names(&mut self, names: Vec<NamePattern>) {
        self.names = names;
    }

    /// Handles one record of the DNS ring buffer.
    pub fn handle(&mut self, item: &[u8], dp: &mut Datapath, stats: &LearnStats) {
        let Some(h) = read_record::<DnsEventHeader>(item) else {
            return;
        };
        let start = size_of::<DnsEventHeader>();
        let Some(payload) = item.get(start..start + h.len as usize) else {
            return;
        };
        stats.copies.fetch_add(1, Ordering::Relaxed);
        let Ok(cfg) = dp.config() else {
            return;
        };
        match h.kind {
            dns_kind::MESSAGE => {
                let Ok(msg) = Message::from_vec(payload) else {
                    stats.unparsable.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                remember(&msg, h.flags & dns_flag::ALLOWED != 0, dp, stats);
                if h.flags & dns_flag::ALLOWED != 0 {
                    let learn_addresses = h.flags & dns_flag::KERNEL_LEARNED == 0
                        || h.flags & dns_flag::INCOMPLETE != 0;
                    self.follow(&msg, &cfg, dp, stats, learn_addresses);
                }
            }
            dns_kind::TCP_PART => {
                if let Some(whole) = self.tcp.push(&h, payload) {
                    self.tcp_answer(&whole, &cfg, dp, stats);
                }
            }
            _ => {}
        }
    }

    /// The rules that allow `name`, as the kernel finds them: its exact-name entry (a policy
    /// name, or a CNAME target standing for its chain's rule) and the shortest allowed
    /// wildcard suffix. Empty if the name is not allowed.
    fn rules(&self, name: &str, dp: &Datapath, cfg: &Config) -> Vec<Rule> {
        let name = normalize(name);
        let hash = |n: &str| name_hashes(cfg.hash_k0, cfg.hash_k1, n).0;
        let mut rules = Vec::new();
        if let Some(v) = dp.exact_name(hash(&name))
            && v.matches(cfg.generation, clock::boot_ns())
        {
            rules.push(v.rule);
        }
        let shortest = self
            .names
            .iter()
            .filter(|p| p.matches(&name))
            .filter_map(|p| match p {
                NamePattern::Wildcard(suffix) => Some(suffix),
                NamePattern::Exact(_) => None,
            })
            .min_by_key(|suffix| suffix.len());
        if let Some(suffix) = shortest {
            rules.push(Rule::wild(hash(suffix)));
        }
        rules
    }

    /// Follows the CNAME chain from the question; learns the addresses at its end (if asked),
    /// or allows a dangling target.
    fn follow(
        &self,
        msg: &Message,
        cfg: &Config,
        dp: &mut Datapath,
        stats: &LearnStats,
        learn_addresses: bool,
    ) {
        let Some(end) = chain_end(msg) else {
            return;
        };
        // The rules that allowed the question (read now: a reload may have removed them since
        // the kernel matched it, and then nothing is learned).
        let rules = self.rules(&end.asked, dp, cfg);
        let Some(&first) = rules.first() else {
            return;
        };
        let now = clock::boot_ns();
        let found = end.addresses.len();
        if learn_addresses {
            for &(addr, ttl) in &end.addresses {
                let ttl = ttl.min(egress_common::dns::MAX_TTL_S);
                let until = now + cfg.lifetime_ns(ttl);
                let learned = rules
                    .iter()
                    .try_for_each(|&rule| dp.learn(addr, rule, now, until));
                match learned {
                    Ok(()) => stats.addresses.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.insert_failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        let ChainEnd {
            asked,
            name,
            last_ttl,
            ..
        } = end;
        if found == 0 && name != asked {
            let (h, _) = name_hashes(cfg.hash_k0, cfg.hash_k1, &name);
            let ttl = last_ttl.min(egress_common::dns::MAX_TTL_S);
            // The target stands for the question's (first) rule: removing that rule revokes it.
            match dp.allow_name_until(h, now + cfg.lifetime_ns(ttl), first) {
                Ok(()) => {
                    stats.cname_targets.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%asked, target = %name, "allowed the dangling CNAME target");
                }
                Err(_) => {
                    stats.insert_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A long DNS-over-TCP answer, joined: the kernel vouched for it (a query of its
    /// connection, an allowed name) but walked none of it.
    fn tcp_answer(&self, whole: &[u8], cfg: &Config, dp: &mut Datapath, stats: &LearnStats) {
        let Ok(msg) = Message::from_vec(whole) else {
            stats.unparsable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if msg.message_type() != MessageType::Response
            || msg.response_code() != ResponseCode::NoError
        {
            return;
        }
        remember(&msg, true, dp, stats);
        stats.tcp_answers.fetch_add(1, Ordering::Relaxed);
        self.follow(&msg, cfg, dp, stats, true);
    }
}

/// Records which question name answered each address of the answer section, allowed or not
/// (see `records.rs`), so denied destinations can be named and learned ones grouped by name.
fn remember(msg: &Message, allowed: bool, dp: &mut Datapath, stats: &LearnStats) {
    let Some(q) = msg.queries().first() else {
        return;
    };
    let asked = normalize(&q.name().to_ascii());
    for r in msg.answers() {
        let addr = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if dp.record_answer(addr, &asked, allowed).is_err() {
            stats.record_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lowercase, without the trailing dot.
pub(crate) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
