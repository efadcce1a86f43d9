//! Writes the seed corpus of the `dns_walk` fuzz target (committed in `fuzz/seeds/dns_walk`): real encodings (hickory-proto) of
//! answers with CNAME chains, AAAA, several records, EDNS and compression, plus queries.
//!
//! Usage: fuzz-corpus DIR

use std::{path::PathBuf, str::FromStr};

use egress_tests::dnsmsg::{Rr, query, response};
use hickory_proto::{
    op::{Edns, Message},
    rr::RecordType,
    serialize::binary::BinEncodable,
};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds/dns_walk".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("query-a", query(1, "cgr.dev.", RecordType::A)),
        (
            "query-aaaa",
            query(2, "packages.wolfi.dev.", RecordType::AAAA),
        ),
        (
            "answer-a",
            response(
                3,
                "cgr.dev.",
                RecordType::A,
                &[Rr::Addr("cgr.dev.", "192.0.2.1", 60)],
            ),
        ),
        (
            "answer-aaaa",
            response(
                4,
                "cgr.dev.",
                RecordType::AAAA,
                &[Rr::Addr("cgr.dev.", "2001:db8::1", 60)],
            ),
        ),
        (
            "answer-cname-chain",
            response(
                5,
                "packages.wolfi.dev.",
                RecordType::A,
                &[
                    Rr::Cname("packages.wolfi.dev.", "edge.cdn.example.net.", 300),
                    Rr::Cname("edge.cdn.example.net.", "pop7.cdn.example.org.", 60),
                    Rr::Addr("pop7.cdn.example.org.", "192.0.2.20", 20),
                    Rr::Addr("pop7.cdn.example.org.", "192.0.2.21", 20),
                ],
            ),
        ),
        (
            "answer-dangling-cname",
            response(
                6,
                "x.r2.cloudflarestorage.com.",
                RecordType::A,
                &[Rr::Cname("x.r2.cloudflarestorage.com.", "y.example.", 30)],
            ),
        ),
    ];
    let many: Vec<String> = (0..40).map(|i| format!("192.0.2.{i}")).collect();
    let rrs: Vec<Rr<'_>> = many.iter().map(|a| Rr::Addr("s3.example.", a, 5)).collect();
    seeds.push((
        "answer-40-records",
        response(7, "s3.example.", RecordType::A, &rrs),
    ));
    let mut edns = Message::from_vec(&response(
        8,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "192.0.2.9", 60)],
    ))?;
    let mut e = Edns::new();
    e.set_max_payload(4096);
    edns.set_edns(e);
    seeds.push(("answer-edns", edns.to_bytes()?));
    let _ = hickory_proto::rr::Name::from_str("x.")?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
