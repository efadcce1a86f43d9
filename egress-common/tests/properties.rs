//! Properties of the DNS walker the kernel runs (compiled for the host), over generated answers
//! (random names, CNAME chains, A/AAAA/TXT records, name compression by hickory) and random
//! corruptions of them:
//! - it never yields an address that is not in the message, and for an intact message it
//!   yields exactly the IN A/AAAA records of the answer section;
//! - the allow decision made from hashes (exact hash or a matching suffix hash) is the one a
//!   string match of the policy gives, so the walk never runs for a name the policy denies;
//! - it terminates within its bounds: at most 2 × MAX_ANSWERS owner-name skips per message.

use std::{
    cell::Cell,
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use egress_common::{
    dns::{self, Address, BUF, MAX_ANSWERS, MAX_LABELS},
    hash::name_hashes,
};
use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};
use proptest::prelude::*;

const K0: u64 = 0x0123_4567_89ab_cdef;
const K1: u64 = 0xfedc_ba98_7654_3210;

fn label() -> impl Strategy<Value = String> {
    // A small alphabet so that names share suffixes and policies match often.
    prop::sample::select(vec!["a", "b", "cdn", "example", "com", "net", "x-1", "R2"])
        .prop_map(str::to_owned)
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

#[derive(Clone, Debug)]
enum Rec {
    A(String, [u8; 4]),
    Aaaa(String, [u8; 16]),
    Cname(String, String),
    Txt(String),
}

fn rec(q: String) -> impl Strategy<Value = Rec> {
    let owner = prop_oneof![Just(q), name()];
    (owner, 0u8..4, any::<[u8; 16]>(), name()).prop_map(|(o, kind, bytes, target)| match kind {
        0 => Rec::A(o, [bytes[0], bytes[1], bytes[2], bytes[3]]),
        1 => Rec::Aaaa(o, bytes),
        2 => Rec::Cname(o, target),
        _ => Rec::Txt(o),
    })
}

fn answer() -> impl Strategy<Value = (String, Vec<Rec>)> {
    name().prop_flat_map(|q| (Just(q.clone()), prop::collection::vec(rec(q), 0..12)))
}

fn build(q: &str, recs: &[Rec]) -> Vec<u8> {
    let n = |s: &str| Name::from_str(&format!("{s}.")).unwrap();
    let mut m = Message::new();
    m.set_id(7)
        .set_message_type(MessageType::Response)
        .add_query(Query::query(n(q), RecordType::A));
    for r in recs {
        let rec = match r {
            Rec::A(o, a) => Record::from_rdata(n(o), 60, RData::A(Ipv4Addr::from(*a).into())),
            Rec::Aaaa(o, a) => Record::from_rdata(n(o), 60, RData::AAAA(Ipv6Addr::from(*a).into())),
            Rec::Cname(o, t) => Record::from_rdata(n(o), 60, RData::CNAME(rdata::CNAME(n(t)))),
            Rec::Txt(o) => {
                Record::from_rdata(n(o), 60, RData::TXT(rdata::TXT::new(vec!["t".into()])))
            }
        };
        m.add_answer(rec);
    }
    m.to_vec().unwrap()
}

/// Runs the walker; `Err` if the message is rejected. Counts owner-name skips.
fn walk(msg: &[u8]) -> Result<(dns::Question, Vec<Address>, usize), dns::DnsError> {
    let len = msg.len().min(BUF);
    let mut b = Box::new([0u8; BUF]);
    b[..len].copy_from_slice(&msg[..len]);
    let q = dns::question(&b, len, K0, K1, &mut [0; MAX_LABELS], |_| false)?;
    let skips = Cell::new(0usize);
    let mut got = Vec::new();
    let walked = dns::answers(
        &b,
        len,
        &q,
        |off| {
            skips.set(skips.get() + 1);
            dns::skip_name(&b, len, off).ok()
        },
        |a, _| got.push(a),
    );
    // A malformed answer teaches nothing, not even the records before the fault.
    if let Err(e) = walked {
        assert!(got.is_empty(), "{e:?}, yet the sink received {got:?}");
        return Err(e);
    }
    Ok((q, got, skips.get()))
}

fn in_message(msg: &[u8], a: &Address) -> bool {
    match a {
        Address::V4(x) => msg.windows(4).any(|w| w == x),
        Address::V6(x) => msg.windows(16).any(|w| w == x),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn intact_answers_yield_exactly_their_address_records((q, recs) in answer()) {
        let msg = build(&q, &recs);
        let (_, got, skips) = walk(&msg).expect("hickory's own answer is accepted");
        let want: Vec<Address> = recs
            .iter()
            .filter_map(|r| match r {
                Rec::A(_, a) => Some(Address::V4(*a)),
                Rec::Aaaa(_, a) => Some(Address::V6(*a)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(got, want);
        prop_assert!(skips <= 2 * MAX_ANSWERS);
    }

    #[test]
    fn corrupted_answers_never_yield_an_address_not_in_the_message(
        (q, recs) in answer(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut msg = build(&q, &recs);
        for (i, v) in flips {
            let i = i.index(msg.len());
            msg[i] = v;
        }
        if cut.index(4) == 0 {
            let n = cut.index(msg.len());
            msg.truncate(n);
        }
        if let Ok((_, got, skips)) = walk(&msg) {
            for a in &got {
                prop_assert!(in_message(&msg, a), "{:?} not in the message", a);
            }
            prop_assert!(got.len() <= MAX_ANSWERS);
            prop_assert!(skips <= 2 * MAX_ANSWERS);
        }
    }

    #[test]
    fn the_hash_decision_is_the_policy_decision(
        asked in name(),
        exact in prop::collection::vec(name(), 0..4),
        wild in prop::collection::vec(name(), 0..3),
    ) {
        let msg = build(&asked, &[Rec::A(asked.clone(), [192, 0, 2, 1])]);
        let exact_h: HashSet<u64> = exact.iter().map(|n| name_hashes(K0, K1, &n.to_ascii_lowercase()).0).collect();
        let wild_h: HashSet<u64> = wild.iter().map(|n| name_hashes(K0, K1, &n.to_ascii_lowercase()).0).collect();
        let len = msg.len();
        let mut b = Box::new([0u8; BUF]);
        b[..len].copy_from_slice(&msg);
        let q = dns::question(&b, len, K0, K1, &mut [0; MAX_LABELS], |h| wild_h.contains(&h)).unwrap();
        // What the kernel decides (egress-ebpf `name_allowed`).
        let kernel = q.suffix_matched || exact_h.contains(&q.full);
        // What the policy says, by strings: an exact name, or strictly below a wildcard suffix.
        let lower = asked.to_ascii_lowercase();
        let policy = exact.iter().any(|e| e.to_ascii_lowercase() == lower)
            || wild.iter().any(|w| lower.ends_with(&format!(".{}", w.to_ascii_lowercase())));
        prop_assert_eq!(kernel, policy, "{} vs exact {:?} wild {:?}", asked, exact, wild);
    }
}
