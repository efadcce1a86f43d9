//! The agent's DNS handling: hickory parses any bytes, the CNAME walk yields only addresses
//! that are in the message and only at the end of the chain from the question, and the joiner
//! of long DNS-over-TCP answers returns exactly the parts it was given, contiguous, within its
//! bounds.
#![no_main]

use std::{collections::HashMap, net::IpAddr};

use egress_common::maps::DnsEventHeader;
use egress_user::learn::{Joiner, MAX_CHAIN, chain_end};
use hickory_proto::{
    op::Message,
    rr::{Name, RData},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a UDP answer.
    if let Ok(msg) = Message::from_vec(data)
        && let Some(end) = chain_end(&msg)
    {
        // The reference: the chain followed over hickory's own names (case-insensitive
        // equality), through a table of each owner's first CNAME; the addresses are the A and
        // AAAA records its last name owns, in the order of the answer section.
        let mut cnames: HashMap<Name, (Name, u32)> = HashMap::new();
        for r in msg.answers() {
            if let RData::CNAME(t) = r.data() {
                cnames
                    .entry(r.name().to_lowercase())
                    .or_insert((t.0.to_lowercase(), r.ttl()));
            }
        }
        let mut at = msg.queries()[0].name().to_lowercase();
        let mut last_ttl = 0;
        for _ in 0..MAX_CHAIN {
            match cnames.get(&at) {
                Some((next, ttl)) if *next != at => {
                    at = next.clone();
                    last_ttl = *ttl;
                }
                _ => break,
            }
        }
        let owned: Vec<(IpAddr, u32)> = msg
            .answers()
            .iter()
            .filter(|r| r.name().to_lowercase() == at)
            .filter_map(|r| match r.data() {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
                _ => None,
            })
            .collect();
        assert_eq!(
            end.name,
            at.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
            "the chain ends elsewhere"
        );
        assert_eq!(end.last_ttl, last_ttl);
        assert_eq!(
            end.addresses, owned,
            "addresses not only and all of the chain's end"
        );
        for (addr, _) in &end.addresses {
            let found = match addr {
                IpAddr::V4(a) => data.windows(4).any(|w| w == a.octets()),
                IpAddr::V6(a) => data.windows(16).any(|w| w == a.octets()),
            };
            assert!(found, "{addr} is not in the message");
        }
        assert!(end.name.len() <= 255 * 4, "names come from the message");
    }
    // As parts of long DNS-over-TCP answers, for several connections: the first bytes of
    // each chunk pick the connection, the part's offset in its answer and the answer's length.
    // A joined answer is exactly the concatenation of its parts, at most its length long.
    let mut j = Joiner::default();
    let mut sent: std::collections::HashMap<(u8, u32), Vec<u8>> = Default::default();
    for (i, chunk) in data.chunks(301).enumerate() {
        let [conn, start, skew, l0, l1, payload @ ..] = chunk else {
            break;
        };
        let conn = conn % 4;
        let msg_seq = u32::from(*start % 3) * 1000;
        let msg_len = u16::from_le_bytes([*l0, *l1]);
        let mine = sent.entry((conn, msg_seq)).or_default();
        // Mostly the part that continues the answer; sometimes a gap or an overlap.
        let offset = match skew % 8 {
            0 => 0,
            1 => mine.len() + 3,
            2 => mine.len().saturating_sub(5),
            _ => mine.len(),
        };
        if offset == 0 {
            mine.clear();
        }
        let h = DnsEventHeader {
            ts_ns: i as u64,
            resolver: [conn; 16],
            client: [2; 16],
            tcp_seq: msg_seq.wrapping_add(offset as u32),
            msg_seq,
            len: payload.len() as u16,
            msg_len,
            client_port: [0, 53],
            kind: egress_common::maps::dns_kind::TCP_PART,
            ..DnsEventHeader::default()
        };
        let contiguous = offset == mine.len();
        if contiguous {
            mine.extend_from_slice(payload);
        }
        if let Some(whole) = j.push(&h, payload) {
            assert!(contiguous, "an answer joined across a gap or an overlap");
            assert_eq!(whole.len(), usize::from(msg_len));
            assert_eq!(&whole, mine, "a joined answer differs from its parts");
            mine.clear();
        }
        let (answers, bytes) = j.held();
        assert!(
            answers <= 1024 && bytes <= usize::from(u16::MAX),
            "{answers} answers, {bytes} bytes"
        );
    }
});
