//! Map names, sizes, and the key/value layouts of every map the datapath and the agent share.
//!
//! The eBPF statics in `egress-ebpf` carry exactly the names in [`names`] (the kernel keeps 15
//! characters plus NUL); the agent reaches maps only through these constants, and an integration
//! test checks that every name exists in the loaded object.

use core::mem::size_of;

/// Names of the maps, which are also their pin file names under the pin directory.
pub mod names {
    /// `Array<u32>`, one slot: the policy generation in force (see [`super::generation`]).
    /// The agent writes a whole policy into the other generation, then switches with this
    /// one write; the programs read it first.
    pub const ACTIVE: &str = "ACTIVE";
    /// `Array<Config>`, one slot per generation: mode and timeouts.
    pub const CONFIG: &str = "CONFIG";
    /// `Array<u32>`, one bitmap of enforced destination ports per generation
    /// ([`super::PORT_WORDS`] words each, generation 0 first).
    pub const PORTS: &str = "PORTS";
    /// `LpmTrie<[u8; 5], StaticValue>`: static IPv4 CIDRs from the policy, keyed by the
    /// generation byte then the address ([`super::static_v4`]).
    pub const STATIC_V4: &str = "STATIC_V4";
    /// `LpmTrie<[u8; 17], StaticValue>`: static IPv6 CIDRs, keyed like [`STATIC_V4`].
    pub const STATIC_V6: &str = "STATIC_V6";
    /// `HashMap<[u8; 4], LearnedValue>`: IPv4 addresses learned from DNS, with expiry. A hash
    /// map, not a trie: learned entries are single addresses, and a hash map offers the
    /// atomic lookup-and-delete garbage collection needs (see `LEARNED_BY`).
    pub const LEARNED_V4: &str = "LEARNED_V4";
    /// `HashMap<[u8; 16], LearnedValue>`: IPv6 addresses learned from DNS, with expiry.
    pub const LEARNED_V6: &str = "LEARNED_V6";
    /// `HashMap<LearnedByKey, u64>`: why each learned address is allowed: one entry per
    /// (address, policy rule) with that rule's expiry, written with the address. A reload
    /// drops the entries of removed rules and revokes the addresses left with none.
    pub const LEARNED_BY: &str = "LEARNED_BY";
    /// `LruHashMap<FlowKey, FlowValue>`: allowed TCP flows.
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<FlowKey, FlowValue>`: allowed UDP flows, apart from the TCP ones so that
    /// datagrams (which anyone can send from any port) cannot evict connections.
    pub const FLOWS_UDP: &str = "FLOWS_UDP";
    /// `LruHashMap<u64, u64>`: the sockets (by cookie) whose SYN egress passed to an allowed
    /// destination, with when: only their connections may pass on the socket's word once
    /// their flow is lost (see `counters::PASS_SOCKET`).
    pub const ADMITTED: &str = "ADMITTED";
    /// `LruHashMap<[u8; 16], u64>`, written by the agent: destinations whose connections a
    /// reload cut (`revoked_connections: cut`), with when; a connection to one of them is not
    /// passed on its socket's word (see `counters::PASS_SOCKET`).
    pub const REVOKED: &str = "REVOKED";
    /// `LruHashMap<[u8; 16], RateState>`: DNS queries remembered per client address in the
    /// current second, to bound what one client can put in the pending-query maps.
    pub const DNS_CLIENTS: &str = "DNS_CLIENTS";
    /// `PerCpuArray<u64>`: verdict counters, see [`crate::counters`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<RateState>`: per-CPU rate limit of denied-destination events.
    pub const EVENT_RATE: &str = "EVENT_RATE";
    /// `RingBuf` of [`super::DenyEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// `HashMap<[u8; 16], u32>`: trusted resolvers (IPv4-mapped for IPv4); the value is the set
    /// of generations that trust it ([`super::generation::bit`]).
    pub const RESOLVERS: &str = "RESOLVERS";
    /// `HashMap<u64, NameValue>`: hashes of allowed exact names (policy names never expire;
    /// CNAME targets learned by the agent carry an expiry).
    pub const NAMES_EXACT: &str = "NAMES_EXACT";
    /// `HashMap<WildKey, u32>`: hashes of the suffixes of allowed `*.suffix` names, each with
    /// the generation whose policy holds it (the value is unused). The generation is in the
    /// key, not the value: the kernel looks a suffix up at every label of every answer, and a
    /// plain presence test keeps that walk as cheap to verify as before generations.
    pub const NAMES_WILD: &str = "NAMES_WILD";
    /// `LruHashMap<PendingKey, PendingValue>`: DNS queries that left the node (learning at
    /// the interface).
    pub const DNS_PENDING: &str = "DNS_PENDING";
    /// `LruHashMap<SockPendingKey, PendingValue>`: DNS queries sent by the node's sockets
    /// (learning at the sockets, see [`super::learn`]).
    pub const SOCK_PENDING: &str = "SOCK_PENDING";
    /// `LruHashMap<TcpStreamKey, TcpStream>`: the node's DNS-over-TCP connections to trusted
    /// resolvers, opened by a SYN the node sent: where the answer stream's next message starts
    /// (see [`crate::dns_tcp`]). An answer segment of a connection not in here teaches nothing.
    pub const DNS_TCP: &str = "DNS_TCP";
    /// `PerCpuArray<DnsBuf>`: scratch space to copy a DNS message into.
    pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
    /// `RingBuf` of [`super::DnsEvent`]: copies of DNS answers for the agent.
    pub const DNS_EVENTS: &str = "DNS_EVENTS";
    /// `HashMap<[u8; 16], AnswerValue>`, written by the agent only: the question name each
    /// answered address last came from, allowed or not (status, denied-destination names).
    pub const ANSWERS: &str = "ANSWERS";
    /// `HashMap<NameKey, DeniedValue>`, written by the agent only: denied destinations by the
    /// name that last resolved to them, or by address text (`egress suggest`).
    pub const DENIED: &str = "DENIED";
    /// `HashMap<[u8; 16], u32>`, written by the agent only: the interfaces egress is attached
    /// to (name, NUL-padded) and how ([`super::attached`]). TCX links are pinned files too;
    /// clsact filters are not, so without this record nothing on disk would say where they are.
    pub const ATTACHED: &str = "ATTACHED";
    /// `Array<u32>`, one bitmap of TLS ports per generation (laid out as [`PORTS`]): the
    /// enforced ports where a connection to a learned address must name an allowed server in
    /// its ClientHello (`tls.ports`).
    pub const TLS_PORTS: &str = "TLS_PORTS";
    /// `LruHashMap<FlowKey, TlsFlow>`: TCP connections to learned addresses on TLS ports whose
    /// ClientHello has not been judged yet, was denied, or was admitted (see `docs/design.md`,
    /// *TLS server names*).
    pub const TLS_PENDING: &str = "TLS_PENDING";
    /// `LruHashMap<FlowKey, TlsHeld>`: the bytes that passed of a ClientHello split over
    /// segments, until the segment that completes it.
    pub const TLS_PARTIAL: &str = "TLS_PARTIAL";
    /// `PerCpuArray<TlsScratch>`: where a ClientHello is read and judged.
    pub const TLS_SCRATCH: &str = "TLS_SCRATCH";
    /// `PerCpuArray<FlowCache>`: the last known flow each CPU passed (see [`super::FlowCache`]).
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    /// `Array<u64>`, one entry: set to the `CLOCK_BOOTTIME` time by whoever removes a flow,
    /// after the removal (the agent, or the `egress` program when a SYN reopens a TLS tuple);
    /// a [`super::FlowCache`] entry of another epoch is not used.
    pub const FLOW_EPOCH: &str = "FLOW_EPOCH";

    /// Every map, for pinning, status and cleanup.
    pub const ALL: [&str; 33] = [
        ACTIVE,
        CONFIG,
        PORTS,
        STATIC_V4,
        STATIC_V6,
        LEARNED_V4,
        LEARNED_V6,
        LEARNED_BY,
        FLOWS,
        FLOWS_UDP,
        REVOKED,
        ADMITTED,
        DNS_CLIENTS,
        COUNTERS,
        EVENT_RATE,
        EVENTS,
        RESOLVERS,
        NAMES_EXACT,
        NAMES_WILD,
        DNS_PENDING,
        SOCK_PENDING,
        DNS_TCP,
        DNS_SCRATCH,
        DNS_EVENTS,
        ANSWERS,
        DENIED,
        ATTACHED,
        TLS_PORTS,
        TLS_PENDING,
        TLS_PARTIAL,
        TLS_SCRATCH,
        FLOW_CACHE,
        FLOW_EPOCH,
    ];
}

/// Nanoseconds in a second (`CLOCK_BOOTTIME` stamps in the maps are nanoseconds).
pub const NS_PER_S: u64 = 1_000_000_000;
/// Static CIDRs a policy may have, per family.
pub const STATIC_CAPACITY: u32 = 16_384;
/// Capacity of each static CIDR map: room for the policy in force and the one being written.
pub const STATIC_MAP_CAPACITY: u32 = generation::COUNT * STATIC_CAPACITY;

/// Policy generations: the policy maps hold two policies, the one in force
/// ([`names::ACTIVE`]) and the one being written. A reload writes the whole new policy into the
/// other generation and then switches with one write, so a program run, and an agent killed at
/// any instant, sees one whole policy, the old or the new, never a mix. Keys carry the
/// generation where an entry's value differs between policies (CONFIG slot, PORTS words, the
/// static CIDR tries); the hash maps whose entries are the same in both (resolvers, names)
/// carry the set of generations that hold them in the value.
pub mod generation {
    /// Generations (0 and 1).
    pub const COUNT: u32 = 2;
    /// Both generations: a CNAME target learned from DNS is state, not policy; it stands for
    /// a rule and goes when that rule leaves the policy.
    pub const ALL: u32 = 0b11;

    /// The bit of generation `g` in a set of generations.
    #[inline(always)]
    pub const fn bit(g: u32) -> u32 {
        1 << (g & 1)
    }

    /// The generation a reload writes while `g` is in force.
    #[inline(always)]
    pub const fn other(g: u32) -> u32 {
        (g & 1) ^ 1
    }
}

/// Data of a [`names::STATIC_V4`] key: the generation byte, then the address. Its prefix
/// length is the CIDR's plus 8, so a lookup matches only CIDRs of the generation it asks for.
#[inline(always)]
pub const fn static_v4(generation: u32, a: [u8; 4]) -> [u8; 5] {
    [generation as u8, a[0], a[1], a[2], a[3]]
}

/// Data of a [`names::STATIC_V6`] key, as [`static_v4`].
#[inline(always)]
pub const fn static_v6(generation: u32, a: [u8; 16]) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = generation as u8;
    let mut i = 0;
    while i < 16 {
        k[i + 1] = a[i];
        i += 1;
    }
    k
}
/// Capacity of each learned-address map (per family).
pub const LEARNED_CAPACITY: u32 = 262_144;
/// Capacity of [`names::LEARNED_BY`] (allocated as used): two rules per learned address.
pub const LEARNED_BY_CAPACITY: u32 = 2 * 2 * LEARNED_CAPACITY;
/// Capacity of each flow table, TCP and UDP (LRU: the least recently used flow is evicted when
/// full).
pub const FLOW_CAPACITY: u32 = 131_072;
/// Capacity of [`names::REVOKED`].
pub const REVOKED_CAPACITY: u32 = 16_384;
/// Clients whose query rate is tracked ([`names::DNS_CLIENTS`], LRU).
pub const DNS_CLIENTS_CAPACITY: u32 = 16_384;
/// DNS queries per second one client address may have remembered. A victim's query is
/// evicted from the 65,536-entry pending map only after 65,536 newer ones; at this rate one
/// client needs 1.3 s to push that many, while answers take milliseconds (an answer slower
/// than that is learned on the next query). High enough for a busy client: the race test
/// resolves 10,000 names a second at its peak, 20,000 queries (A and AAAA).
pub const DNS_QUERIES_PER_CLIENT_PER_SEC: u32 = 50_000;
/// Size of the denied-destination ring buffer in bytes (a power of two, multiple of the page).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Capacity of the exact-name map (policy names plus CNAME targets; allocated as used): room
/// for two policies' names while a reload writes one beside the other, and the targets.
pub const NAMES_EXACT_CAPACITY: u32 = 131_072;
/// Capacity of the wildcard-suffix map (allocated as used), two policies' worth.
pub const NAMES_WILD_CAPACITY: u32 = 32_768;
/// Trusted resolvers a policy may list.
pub const RESOLVERS_CAPACITY: u32 = 64;
/// Capacity of the resolver map: two policies' resolvers (the one in force and the one being
/// written).
pub const RESOLVERS_MAP_CAPACITY: u32 = generation::COUNT * RESOLVERS_CAPACITY;
/// Addresses whose question name is remembered ([`names::ANSWERS`]; allocated as used).
pub const ANSWERS_CAPACITY: u32 = 65_536;
/// Denied destinations remembered for `egress suggest` ([`names::DENIED`]; allocated as used).
pub const DENIED_CAPACITY: u32 = 16_384;
/// Interfaces egress can be attached to at once ([`names::ATTACHED`]).
pub const ATTACHED_CAPACITY: u32 = 256;
/// Bytes of an interface name in [`names::ATTACHED`] (`IFNAMSIZ`, with the NUL).
pub const IFACE_BYTES: usize = 16;

/// How egress is attached to an interface, bits of the [`names::ATTACHED`] value.
pub mod attached {
    /// TCX links (pinned as `link_<hook>_<iface>`).
    pub const TCX: u32 = 1;
    /// clsact filters (not pinned: they live on the interface).
    pub const CLSACT: u32 = 2;
}
/// `BPF_F_NO_PREALLOC`: a hash map that allocates entries as they are inserted, for the
/// agent's records, which are usually far from full.
pub const NO_PREALLOC: u32 = 1;
/// Bytes of a name in the agent's records: a DNS name is at most 253 characters.
pub const NAME_BYTES: usize = 256;
/// Outstanding DNS queries remembered (LRU).
pub const DNS_PENDING_CAPACITY: u32 = 65_536;
/// Capacity of [`names::DNS_TCP`] (LRU): DNS-over-TCP connections followed at once. A glibc
/// client opens one per lookup and closes it; more open connections than this evict the least
/// recent, whose later answers then teach nothing (never something false).
pub const DNS_TCP_CAPACITY: u32 = 16_384;
/// An answer must arrive within this long of its query.
pub const DNS_QUERY_TIMEOUT_NS: u64 = 10_000_000_000;
/// Size of the DNS answer ring buffer: records are sized to the message (header + bytes), so
/// about 25,000 typical 100-byte answers, or 1,000 of the largest (4 KiB).
pub const DNS_EVENTS_BYTES: u32 = 4 * 1024 * 1024;
/// `NameValue::expires_ns` of names from the policy: they never expire.
pub const NAME_PERMANENT: u64 = u64::MAX;
/// Scratch slots in [`names::DNS_SCRATCH`]: one per program, so they never share a buffer.
/// The socket programs need their own: the query side runs in the sender's process context,
/// where a softirq running the other programs can interrupt it on the same CPU.
pub const SCRATCH_INGRESS: u32 = 0;
pub const SCRATCH_EGRESS: u32 = 1;
pub const SCRATCH_SOCK_QUERY: u32 = 2;
pub const SCRATCH_SOCK_ANSWER: u32 = 3;
pub const SCRATCH_SLOTS: u32 = 4;

/// Where DNS answers are learned, in [`Config::learn`].
pub mod learn {
    /// At the enforced interfaces (TC ingress and egress): the node's own queries to the
    /// resolvers, as they cross the NIC.
    pub const INTERFACE: u32 = 0;
    /// At the sockets of every process in a cgroup (cgroup_skb on the node's cgroup): pods'
    /// answers too, wherever their DNS is served, after decapsulation and reverse NAT. The
    /// interface programs then only enforce.
    pub const SOCKETS: u32 = 1;
}

/// Words in the enforced-port bitmap (65,536 ports / 32 bits).
pub const PORT_WORDS: u32 = 65_536 / 32;

/// Index of the word and the bit of `port` in the [`names::PORTS`] bitmap.
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u32) {
    ((port as u32) >> 5, 1 << (port as u32 & 31))
}

/// Mode and timeouts, written by the agent into the slot of [`names::CONFIG`] of its
/// generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// One of [`crate::mode`].
    pub mode: u32,
    /// Denied-destination events each CPU may emit per second; the rest are counted only.
    pub events_per_sec: u32,
    /// A TCP flow idle for longer is forgotten (its next packet is evaluated as new).
    pub tcp_idle_ns: u64,
    /// A UDP flow idle for longer is forgotten.
    pub udp_idle_ns: u64,
    /// Key of the name hash ([`crate::hash`]); generated once per pin directory.
    pub hash_k0: u64,
    pub hash_k1: u64,
    /// Floor for the TTL of learned addresses, in seconds.
    pub min_ttl_s: u32,
    /// Added to every learned address's lifetime, in seconds.
    pub grace_s: u32,
    /// Where DNS answers are learned: one of [`learn`].
    pub learn: u32,
    /// DNS queries per second one client address may have remembered (see
    /// [`DNS_QUERIES_PER_CLIENT_PER_SEC`], the default).
    pub client_query_rate: u32,
    /// The generation of the policy this configuration belongs to (its slot): the programs
    /// read the other policy maps of this generation.
    pub generation: u32,
    /// TLS server-name enforcement: [`tls_mode`] in bits 0-1, [`quic_mode`] in bits 2-3.
    pub tls: u32,
}

impl Config {
    /// The [`tls_mode`] in force.
    #[inline(always)]
    pub const fn sni(&self) -> u32 {
        self.tls & 3
    }

    /// The [`quic_mode`] in force.
    #[inline(always)]
    pub const fn quic(&self) -> u32 {
        (self.tls >> 2) & 3
    }

    /// [`Config::tls`] of a server-name mode and a QUIC mode.
    pub const fn tls_bits(sni: u32, quic: u32) -> u32 {
        (sni & 3) | ((quic & 3) << 2)
    }
}

/// `tls.sni` as stored in [`Config::tls`].
pub mod tls_mode {
    /// Connections to learned addresses are judged by address alone.
    pub const OFF: u32 = 0;
    /// A connection to a learned address on a TLS port passes only with an allowed name.
    pub const ENFORCE: u32 = 1;
    /// As `ENFORCE`, but what would be dropped passes and is reported.
    pub const AUDIT: u32 = 2;
}

/// `tls.quic` as stored in [`Config::tls`]: UDP to a learned address on a TLS port.
pub mod quic_mode {
    /// Judged by address alone (any name on the address is reachable over QUIC).
    pub const ADDRESS: u32 = 0;
    /// Denied: clients fall back to TCP, whose ClientHello is judged.
    pub const DENY: u32 = 1;
}

/// Connections whose ClientHello is being judged.
pub const TLS_PENDING_CAPACITY: u32 = 65_536;
/// ClientHellos split over segments being judged at once.
pub const TLS_PARTIAL_CAPACITY: u32 = 1_024;

/// States of [`TlsFlow`].
pub mod tls_state {
    /// SYN seen; no byte of the ClientHello yet.
    pub const AWAIT: u8 = 1;
    /// A proper prefix of the ClientHello passed; its bytes are in `TLS_PARTIAL`.
    pub const PARTIAL: u8 = 2;
    /// The ClientHello was denied: no more payload passes.
    pub const DENIED: u8 = 3;
    /// The ClientHello was admitted: the flow is in `FLOWS`; the entry stays for a
    /// retransmitted SYN (TCP Fast Open) and to record the flow again if it is lost.
    pub const ADMITTED: u8 = 4;
}

/// Value of [`names::TLS_PENDING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsFlow {
    /// `CLOCK_BOOTTIME` ns of the SYN.
    pub opened_ns: u64,
    /// The client's initial sequence number (its SYN's).
    pub isn: u32,
    /// Sequence number of the ClientHello's first byte (`isn + 1`).
    pub base: u32,
    /// Sequence number of the first byte not passed yet.
    pub next: u32,
    /// One of [`tls_state`].
    pub state: u8,
    /// The [`reason`] of a denial.
    pub reason: u8,
    pub _pad: [u8; 2],
    /// [`FlowValue::rule`] of an admitted connection.
    pub rule: u64,
}

/// Value of [`names::TLS_PARTIAL`]: the bytes of a ClientHello that passed so far.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsHeld {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; crate::tls::BUF],
}

/// A TCP segment on its way to the TLS judgment, handed from the verdict to the separately
/// verified function that judges it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSegment {
    pub key: FlowKey,
    pub seq: u32,
    pub payload_off: u32,
    pub payload_len: u32,
    pub tcp_flags: u8,
    /// The segment cannot be judged as stream bytes (URG, or an IP first fragment).
    pub unjudgeable: u8,
    pub _pad: [u8; 2],
}

/// A denied ClientHello, sent through [`names::EVENTS`]: a [`DenyEvent`] first (so a reader
/// of plain events reads its head), then the server name.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsDenyEvent {
    pub event: DenyEvent,
    pub name_len: u16,
    pub _pad: [u8; 6],
    pub name: [u8; crate::tls::MAX_NAME + 1],
}

/// Per-CPU scratch of the TLS judgment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsScratch {
    /// The ClientHello's bytes; also the value written to `TLS_PARTIAL`.
    pub held: TlsHeld,
    /// Room behind `held.bytes`, so that a load of up to [`crate::tls::BUF`] bytes at any
    /// offset inside it stays inside the value (the verifier cannot relate the offset to the
    /// length; it checks each against the value's size).
    pub tail: [u8; crate::tls::BUF],
    /// The server name in DNS wire form, where the DNS hasher reads a question name.
    pub wire: [u8; crate::dns::BUF],
    pub labels: crate::dns::Labels,
    pub seg: TlsSegment,
    pub hello: crate::tls::Hello,
    /// What [`FlowValue::rule`] records for the connection being admitted.
    pub admitted_by: u64,
    pub event: TlsDenyEvent,
}

impl Config {
    /// Lifetime in ns of an address learned from a record with `ttl_s`.
    #[inline(always)]
    pub fn lifetime_ns(&self, ttl_s: u32) -> u64 {
        let ttl = if ttl_s > self.min_ttl_s {
            ttl_s
        } else {
            self.min_ttl_s
        };
        (ttl as u64 + self.grace_s as u64) * NS_PER_S
    }
}

/// Kinds of [`Rule`].
pub mod rule_kind {
    /// No rule (an empty slot).
    pub const NONE: u8 = 0;
    /// An exact policy name; the hash is the name's.
    pub const EXACT: u8 = 1;
    /// A `*.suffix` policy name; the hash is the suffix's.
    pub const WILD: u8 = 2;
}

/// A policy rule, by the hash the name maps are keyed with: what justifies a learned address
/// or a CNAME target. Kept with them so that a reload can revoke what only removed rules
/// allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub hash: u64,
    /// One of [`rule_kind`].
    pub kind: u8,
    pub _pad: [u8; 7],
}

impl Rule {
    pub const NONE: Rule = Rule::new(rule_kind::NONE, 0);
    pub const fn new(kind: u8, hash: u64) -> Self {
        Self {
            hash,
            kind,
            _pad: [0; 7],
        }
    }
    pub const fn exact(hash: u64) -> Self {
        Self::new(rule_kind::EXACT, hash)
    }
    pub const fn wild(hash: u64) -> Self {
        Self::new(rule_kind::WILD, hash)
    }
    pub const fn is_some(&self) -> bool {
        self.kind != rule_kind::NONE
    }
}

/// Value of the name maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameValue {
    /// `CLOCK_BOOTTIME` ns after which the name no longer matches; [`NAME_PERMANENT`] for
    /// policy names.
    pub expires_ns: u64,
    /// The policy rule the entry stands for: itself for policy names, the rule of the question
    /// whose CNAME chain ended at it for a CNAME target.
    pub rule: Rule,
    /// The generations whose policy holds the name ([`generation::bit`]);
    /// [`generation::ALL`] for CNAME targets.
    pub generations: u32,
    pub _pad: u32,
}

impl NameValue {
    /// Whether the entry matches under the policy of generation `g` at `now_ns`.
    #[inline(always)]
    pub const fn matches(&self, g: u32, now_ns: u64) -> bool {
        self.generations & generation::bit(g) != 0 && self.expires_ns > now_ns
    }

    /// Whether the entry is a policy name of generation `g` (one that never expires, not a
    /// CNAME target).
    #[inline(always)]
    pub const fn permanent_in(&self, g: u32) -> bool {
        self.generations & generation::bit(g) != 0 && self.expires_ns == NAME_PERMANENT
    }
}

/// Key of [`names::NAMES_WILD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WildKey {
    pub hash: u64,
    pub generation: u32,
    pub _pad: u32,
}

impl WildKey {
    #[inline(always)]
    pub const fn new(hash: u64, generation: u32) -> Self {
        Self {
            hash,
            generation,
            _pad: 0,
        }
    }
}

/// Key of [`names::LEARNED_BY`]: an address (IPv4-mapped for IPv4) and a rule that allowed it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedByKey {
    pub addr: [u8; 16],
    pub rule: Rule,
}

/// Key of [`names::DNS_PENDING`]: who asked, whom, from which port, with which id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PendingKey {
    /// The client's address (IPv4-mapped for IPv4): one client's flood cannot overwrite
    /// another's entry of the same resolver, port and id.
    pub client: [u8; 16],
    pub resolver: [u8; 16],
    pub client_port: [u8; 2],
    pub txid: [u8; 2],
    pub family: u8,
    /// `IPPROTO_UDP` or `IPPROTO_TCP`: an answer over one never matches a query over the other.
    pub proto: u8,
    pub _pad: [u8; 2],
}

/// Key of [`names::SOCK_PENDING`]: which socket asked, from which port, with which id. The
/// socket, not the resolver's address: a host socket's query is already DNATed to a CoreDNS
/// pod when the program sees it, while its answer comes back from the Service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPendingKey {
    /// `bpf_get_socket_cookie`: unique per socket for the life of the system.
    pub cookie: u64,
    pub client_port: [u8; 2],
    pub txid: [u8; 2],
    pub _pad: [u8; 4],
}

impl SockPendingKey {
    pub const fn new(cookie: u64, client_port: [u8; 2], txid: u16) -> Self {
        Self {
            cookie,
            client_port,
            txid: txid.to_be_bytes(),
            _pad: [0; 4],
        }
    }
}

/// Key of [`names::DNS_TCP`]: the connection as the learning programs see it. At the interface:
/// client and resolver addresses (IPv4-mapped for IPv4), the client's port, `cookie` 0. At the
/// sockets: the socket's cookie and the client's port, addresses zero (the resolver address
/// differs before and after the Service's DNAT, see [`SockPendingKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpStreamKey {
    pub client: [u8; 16],
    pub resolver: [u8; 16],
    pub cookie: u64,
    pub client_port: [u8; 2],
    pub family: u8,
    pub _pad: [u8; 5],
}

impl TcpStreamKey {
    pub const fn interface(
        client: [u8; 16],
        resolver: [u8; 16],
        client_port: [u8; 2],
        family: u8,
    ) -> Self {
        Self {
            client,
            resolver,
            cookie: 0,
            client_port,
            family,
            _pad: [0; 5],
        }
    }

    pub const fn socket(cookie: u64, client_port: [u8; 2]) -> Self {
        Self {
            client: [0; 16],
            resolver: [0; 16],
            cookie,
            client_port,
            family: 0,
            _pad: [0; 5],
        }
    }
}

/// Value of [`names::DNS_TCP`]: how far the resolver's answer stream has been followed. Only
/// [`crate::dns_tcp`] changes the positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStream {
    /// When the node sent the SYN.
    pub opened_ns: u64,
    /// The node's initial sequence number (its SYN's): the resolver's SYN-ACK must acknowledge
    /// it.
    pub isn: u32,
    /// Sequence number of the next answer byte expected in order.
    pub next: u32,
    /// Sequence number of the next message's length prefix.
    pub boundary: u32,
    /// Sequence number of the first byte of the message in progress (one that spans segments).
    pub msg_seq: u32,
    /// Length of the message in progress.
    pub msg_len: u16,
    /// One of [`crate::dns_tcp::state`].
    pub state: u8,
    /// The message in progress answers a query of this connection for an allowed name: its
    /// parts are copied to the agent.
    pub vouched: u8,
    pub _pad: [u8; 4],
}

/// Value of [`names::DNS_PENDING`] and [`names::SOCK_PENDING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingValue {
    /// Hash of the question name.
    pub qname: u64,
    pub sent_ns: u64,
}

/// Per-CPU scratch of the DNS walker: the message, its question's label hashes, and what the
/// parser found (handed back from a separately verified function through here).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsBuf {
    /// The header of a copy for the agent: it must come right before `bytes`, so that header
    /// and message go to the ring as one contiguous record.
    pub header: DnsEventHeader,
    pub bytes: [u8; crate::dns::BUF],
    pub labels: crate::dns::Labels,
    pub parsed: DnsParsed,
    pub packet: DnsPacket,
    /// The rules that allow the question (an exact name, a wildcard, or both), for the walk
    /// to record with each address it learns.
    pub rules: [Rule; 2],
    /// The address being learned (IPv4-mapped for IPv4, in `by_key.addr`), handed from the
    /// walk to the separately verified function that writes it, and that function's key and
    /// value: kept here, not on the stack, because Linux 6.1 limits the combined stack of the
    /// call chain to 512 bytes ("combined stack size of 4 calls is 576. Too large").
    pub by_key: LearnedByKey,
    pub learned: LearnedValue,
}

/// The addressing of the DNS packet being handled, handed from the header parser to the
/// separately verified DNS code through the scratch slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPacket {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Offset of the DNS message (UDP) or of the TCP payload in the frame.
    pub payload_off: u32,
    /// TCP only: the segment's sequence and acknowledgment numbers.
    pub seq: u32,
    pub ack: u32,
    /// TCP only: the start and length of the answer in progress, for the copies of its parts
    /// (see [`TcpStream::msg_seq`]).
    pub msg_seq: u32,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub msg_len: u16,
    pub family: u8,
    /// TCP only: the segment's flags.
    pub tcp_flags: u8,
    /// TCP only: offset just past the segment's payload in the frame.
    pub payload_end: u32,
    pub _pad: [u8; 4],
}

/// The parts of a parsed question the eBPF programs use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsParsed {
    /// Hash of the question name.
    pub full: u64,
    /// Offset just past the question.
    pub end: u32,
    pub id: u16,
    pub ancount: u16,
    /// A proper suffix of the name is an allowed wildcard suffix.
    pub suffix_matched: u8,
    /// The response code (`dns::rcode`).
    pub rcode: u8,
    pub _pad: [u8; 6],
    /// The hash of the allowed wildcard suffix, when `suffix_matched`.
    pub suffix: u64,
}

/// Kinds of [`DnsEvent`].
pub mod dns_kind {
    /// A whole answer (a UDP datagram, or a message within one TCP segment) that matched a
    /// query; the kernel has learned what it could (see the flags).
    pub const MESSAGE: u8 = 1;
    /// Part of a DNS-over-TCP answer that spans segments, or is longer than the kernel walks:
    /// the kernel matched its query and found its name allowed at its first segment
    /// (`msg_seq`), and copies every later part in stream order; the agent joins and learns.
    pub const TCP_PART: u8 = 2;
}

/// Flags of [`DnsEvent`].
pub mod dns_flag {
    /// The question name was allowed when the answer arrived.
    pub const ALLOWED: u8 = 1;
    /// The kernel walked the answers and learned their addresses.
    pub const KERNEL_LEARNED: u8 = 2;
    /// More answers than the kernel walks: the agent must learn the rest.
    pub const INCOMPLETE: u8 = 4;
    /// The kernel walked the answers and learned no address (a chain of CNAMEs that ends
    /// without one, say): the agent may have a target to allow before the application asks
    /// for it.
    pub const NO_ADDRESS: u8 = 8;

    /// Whether the agent must see the copy at once (the ring wakes it): it has something to
    /// learn or allow that the kernel did not, or the answer is for a name the policy does not
    /// allow (the name a drop of its addresses is logged and recorded under, for `egress
    /// suggest`, right after). The other copies (answers for allowed names the kernel learned
    /// whole) only feed the agent's records and wait for its next timed read, so the answer of
    /// an allowed name never waits on a wake-up.
    ///
    /// `NO_ADDRESS` is the walk learning no address at all; an answer whose chain ends in a
    /// CNAME but that also carries addresses of other owners is not urgent, and its dangling
    /// target is allowed at the agent's next timed read (rare: resolvers answer the chain in
    /// order).
    #[inline(always)]
    pub const fn urgent(kind: u8, flags: u8) -> bool {
        kind == super::dns_kind::TCP_PART
            || flags & ALLOWED == 0
            || flags & KERNEL_LEARNED == 0
            || flags & (INCOMPLETE | NO_ADDRESS) != 0
    }
}

/// Header of a DNS copy for the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsEventHeader {
    pub ts_ns: u64,
    /// The resolver (source) address, IPv4-mapped for IPv4.
    pub resolver: [u8; 16],
    /// The client's (destination) address, IPv4-mapped for IPv4.
    pub client: [u8; 16],
    /// [`dns_kind::TCP_PART`]: TCP sequence number of the first byte of this part.
    pub tcp_seq: u32,
    /// [`dns_kind::TCP_PART`]: TCP sequence number of the message's first byte (after its
    /// length prefix): the same in every part of one message.
    pub msg_seq: u32,
    /// Payload bytes in [`DnsEvent::payload`].
    pub len: u16,
    /// [`dns_kind::TCP_PART`]: the whole message's length.
    pub msg_len: u16,
    pub client_port: [u8; 2],
    pub kind: u8,
    pub flags: u8,
    pub family: u8,
    pub _pad: [u8; 7],
}

/// A DNS message (UDP) or segment (TCP) copied for the agent: the header, then `len` bytes (the
/// record is exactly that long; this type describes the largest).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    pub header: DnsEventHeader,
    pub payload: [u8; crate::dns::BUF],
}

/// Value of the static CIDR maps. The index of the CIDR in the normalized policy, for status.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaticValue {
    pub rule: u32,
}

/// Value of the learned-address maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedValue {
    /// `CLOCK_BOOTTIME` in ns after which the address admits no new flow. The kernel checks it on
    /// every lookup, so expiry holds even while the agent is down.
    pub expires_ns: u64,
    /// New flows this entry admitted (incremented in the kernel; kept across refreshes).
    pub hits: u64,
    /// `CLOCK_BOOTTIME` ns of the last write (kernel or agent learning). The agent's garbage
    /// collection and revocation compare it to tell whether an entry was refreshed after
    /// they read it.
    pub refreshed_ns: u64,
}

/// Value of [`names::ANSWERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerValue {
    /// The question name, lowercase, without the trailing dot; `len` bytes are used.
    pub name: [u8; NAME_BYTES],
    /// Wall-clock seconds (Unix) of the last answer.
    pub seen_unix_s: u64,
    pub len: u16,
    /// 1 if the question name was allowed.
    pub allowed: u8,
    pub _pad: [u8; 5],
}

/// Key of [`names::DENIED`]: a name or an address as text, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    pub name: [u8; NAME_BYTES],
}

/// Value of [`names::DENIED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedValue {
    /// Denied-destination events (the kernel rate-limits them per CPU, so this undercounts
    /// packets under a flood).
    pub hits: u64,
    pub first_unix_s: u64,
    pub last_unix_s: u64,
    /// The last denied destination port and IP protocol.
    pub port: u16,
    pub proto: u8,
    /// 1 if the mode was audit (would have been dropped), 0 if dropped.
    pub audit: u8,
    /// 1 if the key is a TLS server name a ClientHello carried, 0 if a resolved name or an
    /// address (0 in records written before server names were judged).
    pub tls: u8,
    pub _pad: [u8; 3],
}

/// Address family tags used in keys and events.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// A 5-tuple of the flow table. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one
/// layout serves both families.
///
/// Aligned to 8 bytes (its size, 40, is unchanged: the maps' layout is the same): the BPF target
/// has no unaligned loads, so with the `u8` fields' alignment of 1 every copy of a key and every
/// [`FlowKey::words`] was done a byte at a time, and building the key was about a third of the
/// known-flow path's time (docs/design.md, *The per-CPU flow cache*).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `CLOCK_BOOTTIME` ns of the last packet (refreshed at most once per
    /// [`FLOW_TOUCH_INTERVAL_NS`] to keep the known-flow path read-mostly).
    pub last_seen_ns: u64,
    /// The name that admitted the flow, for a connection admitted by its TLS server name: the
    /// hash of the policy name, or of the wildcard's suffix, that matched. 0 for a flow
    /// admitted by its address.
    pub rule: u64,
}

impl FlowValue {
    /// A flow admitted by its address.
    #[inline(always)]
    pub const fn by_address(now_ns: u64) -> Self {
        Self::by_rule(now_ns, 0)
    }

    /// A flow admitted by the policy rule `rule` (its TLS server name; 0: by address).
    #[inline(always)]
    pub const fn by_rule(now_ns: u64, rule: u64) -> Self {
        Self {
            last_seen_ns: now_ns,
            rule,
        }
    }
}

/// How stale `FlowValue::last_seen_ns` may get before a packet refreshes it.
pub const FLOW_TOUCH_INTERVAL_NS: u64 = NS_PER_S;

/// Value of [`names::FLOW_CACHE`] (one per CPU): the flow the last packet of the known-flow path
/// on this CPU belonged to, found in `FLOWS`/`FLOWS_UDP` at jiffy `tick` while
/// [`names::FLOW_EPOCH`] was `epoch`. A later packet of the same flow passes without the
/// flow-table lookup and without reading the clock, if it comes within [`FLOW_CACHE_JIFFIES`]
/// and the epoch is unchanged: bulk traffic on a CPU is mostly one flow, and the lookup of a
/// 40-byte key costs as much as the rest of the path (`bench/REPORT.md`, *Per-packet cost*).
///
/// Removing a flow changes the epoch (after the removal, to the `CLOCK_BOOTTIME` time: a value
/// never written before), so no CPU passes a removed flow from its cache: an entry is stamped
/// with the epoch read *before* its lookup, hence a lookup that still saw the flow carries an
/// epoch written before the change.
///
/// The key is kept as words so the comparison is five 8-byte compares (a [`FlowKey`] is
/// byte-aligned). `tick == 0` means empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCache {
    pub key: [u64; 5],
    pub tick: u64,
    pub epoch: u64,
}

/// How long, in jiffies, a [`FlowCache`] entry stands for the flow table: 2 (2 to 20 ms, by the
/// kernel's `HZ`, as long as jiffies advance: a CPU that keeps the tick from running stretches
/// it). It bounds how stale an entry's idle check is, and how long an evicted flow passes;
/// removals do not wait for it (they change the epoch).
pub const FLOW_CACHE_JIFFIES: u64 = 2;

impl FlowKey {
    /// The key as the words [`FlowCache`] compares.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 5] {
        // SAFETY: `FlowKey` is `repr(C)`, 40 bytes of plain `u8` fields with no padding (the
        // size assertion below), and every bit pattern is a valid `[u64; 5]`; a by-value
        // transmute has no alignment requirement.
        unsafe { core::mem::transmute::<Self, [u64; 5]>(*self) }
    }
}

/// Per-CPU state of the event rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub window_start_ns: u64,
    pub sent: u64,
}

/// What the datapath did with a denied packet, in [`DenyEvent::action`].
pub mod action {
    pub const DROPPED: u8 = 1;
    pub const AUDITED: u8 = 2;
}

/// Why a packet was denied, in [`DenyEvent::reason`].
pub mod reason {
    /// Destination not in any allow map (or its learned entry expired).
    pub const NOT_ALLOWED: u8 = 1;
    /// Headers could not be parsed and the destination is not allowed.
    pub const MALFORMED: u8 = 2;
    /// A ClientHello whose server name is not allowed (the event carries the name).
    pub const TLS_SNI: u8 = 3;
    /// A ClientHello without a server name.
    pub const TLS_NO_SNI: u8 = 4;
    /// The first bytes to a TLS port are not one TLS ClientHello.
    pub const TLS_NOT_HELLO: u8 = 5;
    /// A malformed or oversized ClientHello, or a segment that cannot be judged.
    pub const TLS_MALFORMED: u8 = 6;
    /// Payload of a connection whose ClientHello egress never saw.
    pub const TLS_UNKNOWN: u8 = 7;
    /// UDP to a TLS port under `tls.quic: deny`.
    pub const QUIC: u8 = 8;

    /// The log and record name of a reason.
    pub const fn name(r: u8) -> &'static str {
        match r {
            NOT_ALLOWED => "not-allowed",
            MALFORMED => "malformed",
            TLS_SNI => "sni-not-allowed",
            TLS_NO_SNI => "no-sni",
            TLS_NOT_HELLO => "not-tls",
            TLS_MALFORMED => "tls-malformed",
            TLS_UNKNOWN => "tls-unknown-flow",
            QUIC => "quic-denied",
            _ => "unknown",
        }
    }
}

/// A denied destination, sent to the agent through [`names::EVENTS`] (rate-limited).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// `CLOCK_BOOTTIME` ns.
    pub ts_ns: u64,
    /// Destination, IPv4-mapped for IPv4.
    pub daddr: [u8; 16],
    /// Destination port, big-endian (0 when unknown).
    pub dport: [u8; 2],
    pub family: u8,
    pub proto: u8,
    /// One of [`action`].
    pub action: u8,
    /// One of [`reason`].
    pub reason: u8,
    pub _pad: [u8; 2],
}

// Constructors: callers never spell the padding, which must be zero (keys are compared as bytes).

impl PendingKey {
    pub const fn new(
        client: [u8; 16],
        resolver: [u8; 16],
        client_port: [u8; 2],
        txid: u16,
        family: u8,
        proto: u8,
    ) -> Self {
        Self {
            client,
            resolver,
            client_port,
            txid: txid.to_be_bytes(),
            family,
            proto,
            _pad: [0; 2],
        }
    }
}

impl DnsParsed {
    pub const fn new(q: &crate::dns::Question) -> Self {
        Self {
            full: q.full,
            end: q.end as u32,
            id: q.id,
            ancount: q.ancount,
            suffix_matched: q.suffix_matched as u8,
            rcode: q.rcode,
            _pad: [0; 6],
            suffix: q.suffix,
        }
    }
}

impl StaticValue {
    /// `rule`: the CIDR's index in the normalized policy.
    pub const fn new(rule: usize) -> Self {
        Self { rule: rule as u32 }
    }
}

impl AnswerValue {
    pub const fn new(name: [u8; NAME_BYTES], len: u16, seen_unix_s: u64, allowed: bool) -> Self {
        Self {
            name,
            seen_unix_s,
            len,
            allowed: allowed as u8,
            _pad: [0; 5],
        }
    }
}

impl DeniedValue {
    pub const fn new(
        hits: u64,
        first_unix_s: u64,
        last_unix_s: u64,
        port: u16,
        proto: u8,
        audit: bool,
        tls: bool,
    ) -> Self {
        Self {
            hits,
            first_unix_s,
            last_unix_s,
            port,
            proto,
            audit: audit as u8,
            tls: tls as u8,
            _pad: [0; 3],
        }
    }
}

impl FlowKey {
    pub const fn new(
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport: [u8; 2],
        dport: [u8; 2],
        proto: u8,
        family: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            family,
            _pad: [0; 2],
        }
    }

    pub const fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }
    pub const fn sport(&self) -> u16 {
        u16::from_be_bytes(self.sport)
    }
}

impl DenyEvent {
    pub const fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped address.
#[inline(always)]
pub const fn v4_of_mapped(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

// No implicit padding: sizes equal the sum of the fields.
const _: () = assert!(size_of::<Config>() == 64);
const _: () = assert!(size_of::<TlsFlow>() == 32);
const _: () = assert!(size_of::<TlsHeld>() == 8 + crate::tls::BUF);
const _: () = assert!(size_of::<TlsSegment>() == 40 + 4 * 3 + 4);
const _: () = assert!(size_of::<TlsDenyEvent>() == 32 + 8 + crate::tls::MAX_NAME + 1);
// `tail` directly follows the held bytes (see `TlsScratch::tail`); the value stays below the
// 32 KiB a per-CPU array value may take (`PCPU_MIN_UNIT_SIZE`, kernel/bpf/arraymap.c).
const _: () = assert!(
    core::mem::offset_of!(TlsScratch, tail)
        == core::mem::offset_of!(TlsScratch, held) + 8 + crate::tls::BUF
);
const _: () = assert!(size_of::<TlsScratch>() < 32 * 1024);
const _: () = assert!(size_of::<NameValue>() == 8 + 16 + 4 + 4);
const _: () = assert!(size_of::<Rule>() == 16);
const _: () = assert!(size_of::<WildKey>() == 16);
const _: () = assert!(size_of::<LearnedByKey>() == 16 + 16);
const _: () =
    assert!(size_of::<DnsPacket>() == 16 + 16 + 4 + 4 + 4 + 4 + 2 + 2 + 2 + 1 + 1 + 4 + 4);
const _: () = assert!(size_of::<TcpStreamKey>() == 16 + 16 + 8 + 2 + 1 + 5);
const _: () = assert!(size_of::<TcpStream>() == 8 + 4 + 4 + 4 + 4 + 2 + 1 + 1 + 4);
const _: () = assert!(size_of::<DnsParsed>() == 8 + 4 + 2 + 2 + 1 + 1 + 6 + 8);
const _: () = assert!(size_of::<SockPendingKey>() == 16);
const _: () = assert!(size_of::<PendingKey>() == 40);
const _: () = assert!(size_of::<PendingValue>() == 16);
const _: () =
    assert!(size_of::<DnsEventHeader>() == 8 + 16 + 16 + 4 + 4 + 2 + 2 + 2 + 1 + 1 + 1 + 7);
const _: () = assert!(size_of::<DnsEvent>() == size_of::<DnsEventHeader>() + crate::dns::BUF);
// The header is directly followed by the message bytes (see `DnsBuf::header`).
const _: () = assert!(core::mem::offset_of!(DnsBuf, bytes) == size_of::<DnsEventHeader>());
const _: () = assert!(size_of::<StaticValue>() == 4);
const _: () = assert!(size_of::<LearnedValue>() == 24);
const _: () = assert!(size_of::<AnswerValue>() == NAME_BYTES + 8 + 2 + 1 + 5);
const _: () = assert!(size_of::<NameKey>() == NAME_BYTES);
const _: () = assert!(size_of::<DeniedValue>() == 8 * 3 + 2 + 1 + 1 + 1 + 3);
const _: () = assert!(size_of::<FlowKey>() == 16 + 16 + 2 + 2 + 1 + 1 + 2);
const _: () = assert!(align_of::<FlowKey>() == 8);
const _: () = assert!(size_of::<FlowCache>() == 56);
const _: () = assert!(size_of::<FlowValue>() == 16);
const _: () = assert!(size_of::<RateState>() == 16);
const _: () = assert!(size_of::<DenyEvent>() == 8 + 16 + 2 + 1 + 1 + 1 + 1 + 2);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has
    // no padding (asserted above), so every bit pattern is valid and no byte is uninitialized.
    unsafe impl aya::Pod for super::WildKey {}
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StaticValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LearnedValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCache {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NameValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LearnedByKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockPendingKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpStreamKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpStream {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsEventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AnswerValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NameKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DeniedValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsHeld {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsDenyEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in names::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }

    #[test]
    fn port_bits_cover_every_port_once() {
        let mut seen = std::collections::HashSet::new();
        for port in 0..=u16::MAX {
            let (word, bit) = port_bit(port);
            assert!(word < PORT_WORDS);
            assert_eq!(bit.count_ones(), 1);
            assert!(seen.insert((word, bit)));
        }
    }

    #[test]
    fn v4_mapping_round_trips() {
        let a = [192, 0, 2, 7];
        let m = v4_mapped(a);
        assert_eq!(std::net::Ipv6Addr::from(m).to_ipv4_mapped(), Some(a.into()));
        assert_eq!(v4_of_mapped(&m), a);
    }
}
