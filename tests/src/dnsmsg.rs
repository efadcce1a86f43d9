//! DNS messages for tests, encoded by hickory-proto.

use std::{net::IpAddr, str::FromStr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
    serialize::binary::BinEncodable,
};

/// A record in an answer section.
pub enum Rr<'a> {
    Addr(&'a str, &'a str, u32),
    Cname(&'a str, &'a str, u32),
    /// A TXT record whose data is these bytes (cut into character-strings of 255 bytes).
    Txt(&'a str, &'a [u8], u32),
}

pub fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    m.to_bytes().unwrap()
}

pub fn response(id: u16, name: &str, rtype: RecordType, answers: &[Rr<'_>]) -> Vec<u8> {
    response_with(id, name, rtype, ResponseCode::NoError, answers)
}

/// A response with the response code `rcode` (an error response may still carry records).
pub fn response_with(
    id: u16,
    name: &str,
    rtype: RecordType,
    rcode: ResponseCode,
    answers: &[Rr<'_>],
) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_response_code(rcode)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    for a in answers {
        let r = match a {
            Rr::Addr(owner, addr, ttl) => {
                let data = match IpAddr::from_str(addr).unwrap() {
                    IpAddr::V4(v4) => RData::A(rdata::A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(rdata::AAAA(v6)),
                };
                Record::from_rdata(Name::from_str(owner).unwrap(), *ttl, data)
            }
            Rr::Cname(owner, target, ttl) => Record::from_rdata(
                Name::from_str(owner).unwrap(),
                *ttl,
                RData::CNAME(rdata::CNAME(Name::from_str(target).unwrap())),
            ),
            Rr::Txt(owner, data, ttl) => Record::from_rdata(
                Name::from_str(owner).unwrap(),
                *ttl,
                RData::TXT(rdata::TXT::from_bytes(data.chunks(255).collect())),
            ),
        };
        m.add_answer(r);
    }
    m.to_bytes().unwrap()
}
