//! Every map of the datapath. Names (the static identifiers) match
//! `egress_common::maps::names`; all are pinned by name under the agent's pin directory.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use egress_common::{
    counters,
    maps::{
        ANSWERS_CAPACITY, ATTACHED_CAPACITY, AnswerValue, Config, DENIED_CAPACITY,
        DNS_CLIENTS_CAPACITY, DNS_EVENTS_BYTES, DNS_PENDING_CAPACITY, DNS_TCP_CAPACITY,
        DeniedValue, DnsBuf, EVENTS_BYTES, FLOW_CAPACITY, FlowCache, FlowKey, FlowValue,
        IFACE_BYTES, LEARNED_BY_CAPACITY, LEARNED_CAPACITY, LearnedByKey, LearnedValue,
        NAMES_EXACT_CAPACITY, NAMES_WILD_CAPACITY, NO_PREALLOC, NameKey, NameValue, PORT_WORDS,
        PendingKey, PendingValue, RESOLVERS_MAP_CAPACITY, REVOKED_CAPACITY, RateState,
        SCRATCH_SLOTS, STATIC_MAP_CAPACITY, SockPendingKey, StaticValue, TLS_PARTIAL_CAPACITY,
        TLS_PENDING_CAPACITY, TcpStream, TcpStreamKey, TlsFlow, TlsHeld, TlsScratch, WildKey,
        generation,
    },
};

// The policy maps: read only through `crate::policy`, which looks at the generation in force.
#[map]
pub(crate) static ACTIVE: Array<u32> = Array::pinned(1, 0);
#[map]
pub(crate) static CONFIG: Array<Config> = Array::pinned(generation::COUNT, 0);
#[map]
pub(crate) static PORTS: Array<u32> = Array::pinned(generation::COUNT * PORT_WORDS, 0);
#[map]
pub(crate) static TLS_PORTS: Array<u32> = Array::pinned(generation::COUNT * PORT_WORDS, 0);
#[map]
pub(crate) static STATIC_V4: LpmTrie<[u8; 5], StaticValue> =
    LpmTrie::pinned(STATIC_MAP_CAPACITY, 0);
#[map]
pub(crate) static STATIC_V6: LpmTrie<[u8; 17], StaticValue> =
    LpmTrie::pinned(STATIC_MAP_CAPACITY, 0);
#[map]
pub(crate) static LEARNED_V4: HashMap<[u8; 4], LearnedValue> =
    HashMap::pinned(LEARNED_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static LEARNED_V6: HashMap<[u8; 16], LearnedValue> =
    HashMap::pinned(LEARNED_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static LEARNED_BY: HashMap<LearnedByKey, u64> =
    HashMap::pinned(LEARNED_BY_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(FLOW_CAPACITY, 0);
#[map]
pub(crate) static FLOWS_UDP: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(FLOW_CAPACITY, 0);
#[map]
pub(crate) static FLOW_CACHE: PerCpuArray<FlowCache> = PerCpuArray::pinned(1, 0);
#[map]
pub(crate) static FLOW_EPOCH: Array<u64> = Array::pinned(1, 0);
#[map]
pub(crate) static ADMITTED: LruHashMap<u64, u64> = LruHashMap::pinned(FLOW_CAPACITY, 0);
#[map]
pub(crate) static REVOKED: LruHashMap<[u8; 16], u64> = LruHashMap::pinned(REVOKED_CAPACITY, 0);
#[map]
pub(crate) static DNS_CLIENTS: LruHashMap<[u8; 16], RateState> =
    LruHashMap::pinned(DNS_CLIENTS_CAPACITY, 0);
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);
#[map]
pub(crate) static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
pub(crate) static RESOLVERS: HashMap<[u8; 16], u32> = HashMap::pinned(RESOLVERS_MAP_CAPACITY, 0);
#[map]
pub(crate) static NAMES_EXACT: HashMap<u64, NameValue> =
    HashMap::pinned(NAMES_EXACT_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static NAMES_WILD: HashMap<WildKey, u32> =
    HashMap::pinned(NAMES_WILD_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static DNS_PENDING: LruHashMap<PendingKey, PendingValue> =
    LruHashMap::pinned(DNS_PENDING_CAPACITY, 0);
#[map]
pub(crate) static SOCK_PENDING: LruHashMap<SockPendingKey, PendingValue> =
    LruHashMap::pinned(DNS_PENDING_CAPACITY, 0);
#[map]
pub(crate) static DNS_TCP: LruHashMap<TcpStreamKey, TcpStream> =
    LruHashMap::pinned(DNS_TCP_CAPACITY, 0);
#[map]
pub(crate) static DNS_SCRATCH: PerCpuArray<DnsBuf> = PerCpuArray::pinned(SCRATCH_SLOTS, 0);
#[map]
pub(crate) static DNS_EVENTS: RingBuf = RingBuf::pinned(DNS_EVENTS_BYTES, 0);
#[map]
pub(crate) static TLS_PENDING: LruHashMap<FlowKey, TlsFlow> =
    LruHashMap::pinned(TLS_PENDING_CAPACITY, 0);
#[map]
pub(crate) static TLS_PARTIAL: LruHashMap<FlowKey, TlsHeld> =
    LruHashMap::pinned(TLS_PARTIAL_CAPACITY, 0);
#[map]
pub(crate) static TLS_SCRATCH: PerCpuArray<TlsScratch> = PerCpuArray::pinned(1, 0);

// The agent's records: no program touches them; they live in the object so that they are
// created and pinned with everything else, and outlive the agent like the other maps.
#[map]
pub(crate) static ANSWERS: HashMap<[u8; 16], AnswerValue> =
    HashMap::pinned(ANSWERS_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static DENIED: HashMap<NameKey, DeniedValue> =
    HashMap::pinned(DENIED_CAPACITY, NO_PREALLOC);
#[map]
pub(crate) static ATTACHED: HashMap<[u8; IFACE_BYTES], u32> =
    HashMap::pinned(ATTACHED_CAPACITY, NO_PREALLOC);
