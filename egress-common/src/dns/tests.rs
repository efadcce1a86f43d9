use std::{
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
    serialize::binary::BinEncodable,
};

use super::*;
use crate::hash::name_hashes;

const K0: u64 = 0x1234;
const K1: u64 = 0x5678;

fn buf(bytes: &[u8]) -> Box<[u8; BUF]> {
    let mut b = Box::new([0u8; BUF]);
    b[..bytes.len()].copy_from_slice(bytes);
    b
}

fn response(qname: &str, records: Vec<Record>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0xbeef)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
    for r in records {
        m.add_answer(r);
    }
    m.to_bytes().unwrap()
}

fn a(name: &str, ip: &str, ttl: u32) -> Record {
    Record::from_rdata(
        Name::from_str(name).unwrap(),
        ttl,
        RData::A(rdata::A(Ipv4Addr::from_str(ip).unwrap())),
    )
}

fn aaaa(name: &str, ip: &str, ttl: u32) -> Record {
    Record::from_rdata(
        Name::from_str(name).unwrap(),
        ttl,
        RData::AAAA(rdata::AAAA(Ipv6Addr::from_str(ip).unwrap())),
    )
}

fn cname(name: &str, target: &str, ttl: u32) -> Record {
    Record::from_rdata(
        Name::from_str(name).unwrap(),
        ttl,
        RData::CNAME(rdata::CNAME(Name::from_str(target).unwrap())),
    )
}

/// What one answer taught: the question, the walk, and each (address, TTL) handed to the sink.
type Learned = (Question, Walk, Vec<(Address, u32)>);

/// Parses and walks `msg`. When the walk fails, what the sink received is checked here, for
/// every caller: a malformed answer must teach nothing, not even the records before the fault.
fn learn(msg: &[u8]) -> Result<Learned, DnsError> {
    let b = buf(msg);
    let q = question(&b, msg.len(), K0, K1, &mut [0; MAX_LABELS], |_| false)?;
    let mut got = Vec::new();
    let walked = answers(
        &b,
        msg.len(),
        &q,
        |off| skip_name(&b, msg.len(), off).ok(),
        |a, t| got.push((a, t)),
    );
    match walked {
        Ok(w) => Ok((q, w, got)),
        Err(e) => {
            assert!(got.is_empty(), "{e:?}, yet the sink received {got:?}");
            Err(e)
        }
    }
}

#[test]
fn question_hashes_match_userspace_hashes() {
    let msg = response("A.b.Example.com.", vec![]);
    let b = buf(&msg);
    let mut offered = Vec::new();
    let q = question(&b, msg.len(), K0, K1, &mut [0; MAX_LABELS], |h| {
        offered.push(h);
        false
    })
    .unwrap();
    let (full, suffixes) = name_hashes(K0, K1, "a.b.example.com");
    assert_eq!(q.id, 0xbeef);
    assert_eq!(q.full, full);
    offered.reverse();
    assert_eq!(offered, suffixes.as_slice(), "offered shortest first");
    assert!(!q.suffix_matched);
    // The callback stops being asked once it accepts.
    let example_com = name_hashes(K0, K1, "example.com").0;
    let mut asked = 0;
    let q = question(&b, msg.len(), K0, K1, &mut [0; MAX_LABELS], |h| {
        asked += 1;
        h == example_com
    })
    .unwrap();
    assert!(q.suffix_matched);
    assert_eq!(q.suffix, example_com, "the rule that allowed it");
    assert_eq!(asked, 2);
}

#[test]
fn addresses_across_a_compressed_cname_chain() {
    let msg = response(
        "packages.wolfi.dev.",
        vec![
            cname("packages.wolfi.dev.", "edge.cdn.example.net.", 300),
            cname("edge.cdn.example.net.", "x.y.example.org.", 60),
            a("x.y.example.org.", "192.0.2.10", 30),
            a("x.y.example.org.", "192.0.2.11", 30),
            aaaa("x.y.example.org.", "2001:db8::10", 7),
        ],
    );
    let (_, w, got) = learn(&msg).unwrap();
    assert!(!w.incomplete);
    assert_eq!(
        got,
        vec![
            (Address::V4([192, 0, 2, 10]), 30),
            (Address::V4([192, 0, 2, 11]), 30),
            (
                Address::V6(Ipv6Addr::from_str("2001:db8::10").unwrap().octets()),
                7
            ),
        ]
    );
}

#[test]
fn queries_give_id_and_name_hash() {
    let mut m = Message::new();
    m.set_id(77)
        .set_message_type(MessageType::Query)
        .add_query(Query::query(
            Name::from_str("cgr.dev.").unwrap(),
            RecordType::AAAA,
        ));
    let bytes = m.to_bytes().unwrap();
    assert_eq!(
        query(&buf(&bytes), bytes.len(), K0, K1, &mut [0; MAX_LABELS]),
        Ok((77, name_hashes(K0, K1, "cgr.dev").0))
    );
    // A response is not a query and vice versa.
    let resp = response("cgr.dev.", vec![]);
    assert_eq!(
        query(&buf(&resp), resp.len(), K0, K1, &mut [0; MAX_LABELS]),
        Err(DnsError::NotApplicable)
    );
    assert!(
        question(
            &buf(&bytes),
            bytes.len(),
            K0,
            K1,
            &mut [0; MAX_LABELS],
            |_| false
        )
        .is_err()
    );
}

#[test]
fn ttls_are_clamped_to_a_day() {
    let msg = response("a.example.", vec![a("a.example.", "192.0.2.1", 10_000_000)]);
    assert_eq!(learn(&msg).unwrap().2[0].1, MAX_TTL_S);
}

#[test]
fn error_responses_teach_nothing() {
    let mut m = Message::new();
    m.set_id(1)
        .set_message_type(MessageType::Response)
        .set_response_code(ResponseCode::NXDomain)
        .add_query(Query::query(
            Name::from_str("a.example.").unwrap(),
            RecordType::A,
        ))
        .add_answer(a("a.example.", "192.0.2.1", 5));
    let b = m.to_bytes().unwrap();
    assert_eq!(learn(&b).unwrap_err(), DnsError::ErrorResponse);
}

#[test]
fn every_strict_prefix_teaches_nothing() {
    let msg = response(
        "a.example.",
        vec![
            cname("a.example.", "b.example.", 5),
            a("b.example.", "192.0.2.1", 5),
            aaaa("b.example.", "2001:db8::1", 5),
        ],
    );
    for len in 0..msg.len() {
        if let Ok((_, _, got)) = learn(&msg[..len]) {
            assert!(got.is_empty(), "prefix of {len} bytes taught {got:?}");
        }
    }
    assert_eq!(learn(&msg).unwrap().2.len(), 2);
}

#[test]
fn wrong_rdlength_teaches_nothing() {
    let mut msg = response(
        "a.example.",
        vec![
            a("a.example.", "192.0.2.1", 5),
            a("a.example.", "192.0.2.2", 5),
        ],
    );
    // Make the second record's RDLENGTH 3 (and drop a byte so the message still ends there).
    let n = msg.len();
    msg[n - 5] = 3;
    msg.truncate(n - 1);
    assert_eq!(learn(&msg).unwrap_err(), DnsError::BadRecord);
}

#[test]
fn absurd_counts_and_question_pointers_are_rejected() {
    let mut msg = response("a.example.", vec![a("a.example.", "192.0.2.1", 5)]);
    msg[6] = 0xff;
    msg[7] = 0xff;
    assert_eq!(learn(&msg).unwrap_err(), DnsError::AbsurdCount);
    // A question name that is a compression pointer to itself.
    let mut looped = response("a.example.", vec![]);
    looped[12] = 0xc0;
    looped[13] = 12;
    assert_eq!(learn(&looped).unwrap_err(), DnsError::BadName);
    // Two questions.
    let mut two = response("a.example.", vec![]);
    two[5] = 2;
    assert_eq!(learn(&two).unwrap_err(), DnsError::QuestionCount);
}

#[test]
fn a_pointer_loop_in_an_answer_name_ends() {
    let mut msg = response("a.example.", vec![a("a.example.", "192.0.2.1", 5)]);
    // The answer's owner is a pointer (c0 0c) to the question: point it at itself instead.
    let q_end = 12 + "a.example.".len() + 1 + 4;
    assert_eq!(&msg[q_end..q_end + 2], &[0xc0, 12]);
    msg[q_end + 1] = q_end as u8;
    // Pointers are not followed when skipping, so this parses as a 2-byte name.
    assert!(learn(&msg).is_ok());
}

#[test]
fn more_answers_than_the_kernel_walks_are_flagged() {
    let records: Vec<Record> = (0..40)
        .map(|i| a("s3.example.", &format!("192.0.2.{i}"), 5))
        .collect();
    let msg = response("s3.example.", records);
    let (_, w, got) = learn(&msg).unwrap();
    assert!(w.incomplete);
    assert_eq!(got.len(), MAX_ANSWERS);
}

#[test]
fn too_many_labels_and_long_names() {
    let long = (0..MAX_LABELS + 1)
        .map(|_| "a")
        .collect::<Vec<_>>()
        .join(".")
        + ".";
    let msg = response(&long, vec![]);
    assert_eq!(learn(&msg).unwrap_err(), DnsError::TooManyLabels);
}

#[test]
fn random_corruption_never_panics_or_loops() {
    let base = response(
        "x.r2.cloudflarestorage.com.",
        vec![
            cname("x.r2.cloudflarestorage.com.", "y.example.", 5),
            a("y.example.", "192.0.2.1", 5),
            aaaa("y.example.", "2001:db8::1", 5),
        ],
    );
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut m = base.clone();
        for _ in 0..(next() % 6 + 1) {
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
        }
        let cut = (next() as usize) % (m.len() + 1);
        let _ = learn(&m[..cut]);
        let b = buf(&m[..cut]);
        let _ = query(&b, cut, K0, K1, &mut [0; MAX_LABELS]);
    }
    // A full buffer of garbage, and lengths beyond the buffer.
    let junk = Box::new([0xc1u8; BUF]);
    let _ = question(&junk, BUF, K0, K1, &mut [0; MAX_LABELS], |_| false);
    assert_eq!(
        question(&junk, BUF + 1, K0, K1, &mut [0; MAX_LABELS], |_| false),
        Err(DnsError::Truncated)
    );
}
