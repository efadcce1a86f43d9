//! The agent's half of DNS learning. The kernel learns the addresses of allowed answers itself
//! (race-free); the agent consumes the copies it sends to:
//! - allow the target of a CNAME chain that ends without addresses, so the client's follow-up
//!   query for that target is learned by the kernel too;
//! - learn what the kernel left: answers with more records than it walks, and DNS over TCP
//!   (reassembled here; the TCP handshake is its anti-spoofing);
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
    rr::{RData, RecordType},
};

use crate::{clock, datapath::Datapath, events::read_record, name::NamePattern};

/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;
/// TCP streams reassembled at once; more, and all are dropped (they teach nothing then).
const MAX_TCP_STREAMS: usize = 1024;
/// Bytes buffered per TCP stream (one DNS message is at most 65,535 + 2).
const MAX_TCP_BUFFER: usize = 65_537;

#[derive(Debug, Default)]
pub struct LearnStats {
    /// DNS copies received from the kernel.
    pub copies: AtomicU64,
    /// CNAME targets allowed because a chain ended without addresses.
    pub cname_targets: AtomicU64,
    /// Addresses learned by the agent (what the kernel left to it).
    pub addresses: AtomicU64,
    /// DNS-over-TCP answers parsed.
    pub tcp_answers: AtomicU64,
    /// Copies that could not be parsed.
    pub unparsable: AtomicU64,
    /// Inserts that failed (map full).
    pub insert_failures: AtomicU64,
    /// Answers that could not be recorded in the answer record.
    pub record_failures: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct StreamKey {
    resolver: [u8; 16],
    client: [u8; 16],
    client_port: [u8; 2],
}

struct Stream {
    next_seq: u32,
    buf: Vec<u8>,
}

/// DNS-over-TCP streams from trusted resolvers, reassembled from the kernel's segment copies
/// into whole messages. Bounded: [`MAX_TCP_STREAMS`] streams of [`MAX_TCP_BUFFER`] bytes.
#[derive(Default)]
pub struct Reassembler {
    streams: HashMap<StreamKey, Stream>,
}

impl Reassembler {
    /// Adds a segment (`seq`: TCP sequence number of its first byte) of the stream of
    /// (`resolver`, `client`, `client_port`) and returns the DNS messages it completes.
    pub fn push(
        &mut self,
        resolver: [u8; 16],
        client: [u8; 16],
        client_port: [u8; 2],
        seq: u32,
        payload: &[u8],
    ) -> Vec<Vec<u8>> {
        let key = StreamKey {
            resolver,
            client,
            client_port,
        };
        if self.streams.len() >= MAX_TCP_STREAMS && !self.streams.contains_key(&key) {
            self.streams.clear();
        }
        let stream = self.streams.entry(key).or_insert_with(|| Stream {
            next_seq: seq,
            buf: Vec::new(),
        });
        let offset = seq.wrapping_sub(stream.next_seq) as i32;
        if offset > 0 {
            // A gap (a lost copy): restart at this segment; what cannot be parsed teaches nothing.
            stream.buf.clear();
            stream.next_seq = seq;
        }
        let skip = if offset < 0 {
            offset.unsigned_abs() as usize
        } else {
            0
        };
        if skip < payload.len() {
            stream.buf.extend_from_slice(&payload[skip..]);
            stream.next_seq = seq.wrapping_add(payload.len() as u32);
        }
        if stream.buf.len() > MAX_TCP_BUFFER {
            self.streams.remove(&key);
            return Vec::new();
        }
        let mut messages = Vec::new();
        let buf = &mut stream.buf;
        while buf.len() >= 2 {
            let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
            if buf.len() < 2 + len {
                break;
            }
            messages.push(buf[2..2 + len].to_vec());
            buf.drain(..2 + len);
        }
        messages
    }

    /// Streams and bytes held (the bounds are what the fuzzer checks).
    pub fn held(&self) -> (usize, usize) {
        (
            self.streams.len(),
            self.streams
                .values()
                .map(|s| s.buf.len())
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
    tcp: Reassembler,
}

impl Learner {
    pub fn new(names: Vec<NamePattern>) -> Self {
        Self {
            names,
            tcp: Reassembler::default(),
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
            dns_kind::UDP => {
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
            dns_kind::TCP => self.tcp_segment(&h, payload, &cfg, dp, stats),
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
            && v.expires_ns > clock::boot_ns()
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

    fn tcp_segment(
        &mut self,
        h: &DnsEventHeader,
        payload: &[u8],
        cfg: &Config,
        dp: &mut Datapath,
        stats: &LearnStats,
    ) {
        let messages = self
            .tcp
            .push(h.resolver, h.client, h.client_port, h.tcp_seq, payload);
        for m in messages {
            let Ok(msg) = Message::from_vec(&m) else {
                stats.unparsable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if msg.message_type() != MessageType::Response
                || msg.response_code() != ResponseCode::NoError
            {
                continue;
            }
            let Some(q) = msg.queries().first() else {
                continue;
            };
            let allowed = !self.rules(&q.name().to_ascii(), dp, cfg).is_empty();
            remember(&msg, allowed, dp, stats);
            if !matches!(
                q.query_type(),
                RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::HTTPS
            ) || !allowed
            {
                continue;
            }
            stats.tcp_answers.fetch_add(1, Ordering::Relaxed);
            self.follow(&msg, cfg, dp, stats, true);
        }
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
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
