//! DNS learning by the real programs, on crafted frames (`BPF_PROG_TEST_RUN`): a query leaves
//! through egress, its answer comes in through ingress, and the learned map is checked.

use std::{net::IpAddr, time::Duration};

use egress_common::{
    counters,
    maps::{LearnedValue, Rule},
    tc_action::{DROP, PASS},
    testing::Packet,
};
use egress_tests::{
    dnsmsg::{Rr, query, response, response_with},
    harness::Harness,
    ip,
};
use egress_user::{clock, datapath::Datapath, pins::PinDir};
use hickory_proto::{op::ResponseCode, rr::RecordType};

const CLIENT: &str = "192.0.2.10";
const RESOLVER: &str = "192.0.2.53";
const CLIENT6: &str = "2001:db8::10";
const RESOLVER6: &str = "2001:db8::53";
const PORT: u16 = 41_000;

fn harness() -> Harness {
    Harness::new(&format!(
        "resolvers: [{RESOLVER}, \"{RESOLVER6}\"]\nallow:\n  names: [cgr.dev, \"*.r2.cloudflarestorage.com\", packages.wolfi.dev]\ndns:\n  min_ttl: 5s\n  grace: 30s\n"
    ))
}

fn ask(h: &Harness, client: &str, resolver: &str, id: u16, name: &str, rtype: RecordType) {
    let q = Packet::udp_with(ip(client), PORT, ip(resolver), 53, query(id, name, rtype)).build();
    assert_eq!(h.egress(&q), PASS, "DNS queries are never enforced");
}

fn answer(
    h: &Harness,
    from: &str,
    to: &str,
    id: u16,
    name: &str,
    rtype: RecordType,
    rrs: &[Rr<'_>],
) {
    let a = Packet::udp_with(ip(from), 53, ip(to), PORT, response(id, name, rtype, rrs)).build();
    assert_eq!(h.ingress(&a), PASS, "ingress never drops");
}

fn learned(h: &Harness, addr: &str) -> Option<f64> {
    let addr: IpAddr = ip(addr);
    let now = clock::boot_ns();
    h.dp.learned()
        .unwrap()
        .into_iter()
        .find(|l| l.addr == addr)
        .map(|l| (l.expires_ns as f64 - now as f64) / 1e9)
}

fn syn(h: &Harness, dst: &str) -> i32 {
    let src = if dst.contains(':') { CLIENT6 } else { CLIENT };
    h.egress(&Packet::tcp(ip(src), ip(dst), 443).build())
}

#[test]
fn an_allowed_answer_is_learned_before_ingress_returns() {
    let h = harness();
    assert_eq!(syn(&h, "198.51.100.1"), DROP);
    learn_answer(&h, 7, "cgr.dev.", "198.51.100.1", 60);
    let left = learned(&h, "198.51.100.1").expect("learned");
    assert!(
        (89.0..=90.5).contains(&left),
        "ttl 60 + grace 30, got {left}"
    );
    assert_eq!(syn(&h, "198.51.100.1"), PASS);
    assert_eq!(h.counter(counters::DNS_ANSWER_LEARNED), 1);
    assert_eq!(h.counter(counters::DNS_ADDR_LEARNED), 1);
}

#[test]
fn error_answers_are_counted_by_rcode_and_only_unparsable_ones_as_malformed() {
    let h = harness();
    let send = |bytes: Vec<u8>| {
        let a = Packet::udp_with(ip(RESOLVER), 53, ip(CLIENT), PORT, bytes).build();
        assert_eq!(h.ingress(&a), PASS, "ingress never drops");
    };
    // Error answers that even carry an address record: counted by rcode, nothing learned.
    for (id, rcode, counter) in [
        (20, ResponseCode::NXDomain, counters::DNS_NXDOMAIN),
        (21, ResponseCode::ServFail, counters::DNS_SERVFAIL),
        (22, ResponseCode::Refused, counters::DNS_REFUSED),
        (23, ResponseCode::NotImp, counters::DNS_OTHER_ERROR),
    ] {
        ask(&h, CLIENT, RESOLVER, id, "cgr.dev.", RecordType::A);
        send(response_with(
            id,
            "cgr.dev.",
            RecordType::A,
            rcode,
            &[Rr::Addr("cgr.dev.", "198.51.100.20", 60)],
        ));
        assert_eq!(h.counter(counter), 1, "{rcode:?}");
    }
    // NODATA: NOERROR without records (the AAAA of an IPv4-only name).
    ask(&h, CLIENT, RESOLVER, 24, "cgr.dev.", RecordType::AAAA);
    send(response(24, "cgr.dev.", RecordType::AAAA, &[]));
    assert_eq!(h.counter(counters::DNS_NODATA), 1);
    assert_eq!(h.counter(counters::DNS_MALFORMED), 0);
    assert_eq!(learned(&h, "198.51.100.20"), None);
    assert_eq!(syn(&h, "198.51.100.20"), DROP);
    // A corrupted answer (its only record cut short) still is malformed.
    ask(&h, CLIENT, RESOLVER, 25, "cgr.dev.", RecordType::A);
    let mut cut = response(
        25,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.21", 60)],
    );
    cut.truncate(cut.len() - 2);
    send(cut);
    assert_eq!(h.counter(counters::DNS_MALFORMED), 1);
    assert_eq!(learned(&h, "198.51.100.21"), None);
    assert_eq!(h.counter(counters::DNS_ANSWER_LEARNED), 0);
}

#[test]
fn names_are_case_insensitive_and_ttls_have_a_floor() {
    let h = harness();
    ask(&h, CLIENT, RESOLVER, 8, "CGR.Dev.", RecordType::A);
    answer(
        &h,
        RESOLVER,
        CLIENT,
        8,
        "CGR.Dev.",
        RecordType::A,
        &[Rr::Addr("CGR.Dev.", "198.51.100.2", 1)],
    );
    let left = learned(&h, "198.51.100.2").expect("learned");
    assert!(
        (34.0..=35.5).contains(&left),
        "min_ttl 5 + grace 30, got {left}"
    );
}

#[test]
fn a_name_not_in_the_policy_teaches_nothing() {
    let h = harness();
    ask(&h, CLIENT, RESOLVER, 9, "evil.example.", RecordType::A);
    answer(
        &h,
        RESOLVER,
        CLIENT,
        9,
        "evil.example.",
        RecordType::A,
        &[Rr::Addr("evil.example.", "198.51.100.3", 60)],
    );
    assert_eq!(learned(&h, "198.51.100.3"), None);
    assert_eq!(syn(&h, "198.51.100.3"), DROP);
    assert_eq!(h.counter(counters::DNS_NOT_ALLOWED), 1);
}

#[test]
fn wildcards_match_any_depth_below_but_not_the_apex() {
    let h = harness();
    for (id, name, addr, allowed) in [
        (10, "x.r2.cloudflarestorage.com.", "198.51.100.10", true),
        (11, "a.b.c.r2.cloudflarestorage.com.", "198.51.100.11", true),
        (12, "r2.cloudflarestorage.com.", "198.51.100.12", false),
        (13, "evilr2.cloudflarestorage.com.", "198.51.100.13", false),
    ] {
        ask(&h, CLIENT, RESOLVER, id, name, RecordType::A);
        answer(
            &h,
            RESOLVER,
            CLIENT,
            id,
            name,
            RecordType::A,
            &[Rr::Addr(name, addr, 60)],
        );
        assert_eq!(learned(&h, addr).is_some(), allowed, "{name}");
    }
}

#[test]
fn names_from_a_preset_are_learned_like_the_policys_own() {
    // No `names:` at all: everything allowed comes from the talos preset.
    let h = Harness::new(&format!(
        "resolvers: [{RESOLVER}]\nallow:\n  presets: [talos]\n"
    ));
    for (id, name, addr, allowed) in [
        (30, "registry.k8s.io.", "198.51.100.30", true),
        (
            31,
            "prod-registry-k8s-io-us-east-1.s3.dualstack.us-east-1.amazonaws.com.",
            "198.51.100.31",
            true,
        ),
        (32, "docker.io.", "198.51.100.32", false),
    ] {
        ask(&h, CLIENT, RESOLVER, id, name, RecordType::A);
        answer(
            &h,
            RESOLVER,
            CLIENT,
            id,
            name,
            RecordType::A,
            &[Rr::Addr(name, addr, 60)],
        );
        assert_eq!(learned(&h, addr).is_some(), allowed, "{name}");
        assert_eq!(syn(&h, addr) == PASS, allowed, "{name}");
    }
}

#[test]
fn a_cname_chain_across_zones_allows_the_addresses_at_its_end() {
    let h = harness();
    ask(
        &h,
        CLIENT,
        RESOLVER,
        14,
        "packages.wolfi.dev.",
        RecordType::A,
    );
    answer(
        &h,
        RESOLVER,
        CLIENT,
        14,
        "packages.wolfi.dev.",
        RecordType::A,
        &[
            Rr::Cname("packages.wolfi.dev.", "edge.cdn.example.net.", 300),
            Rr::Cname("edge.cdn.example.net.", "pop7.cdn.example.org.", 60),
            Rr::Addr("pop7.cdn.example.org.", "198.51.100.20", 20),
            Rr::Addr("pop7.cdn.example.org.", "198.51.100.21", 20),
        ],
    );
    assert!(learned(&h, "198.51.100.20").is_some());
    assert!(learned(&h, "198.51.100.21").is_some());
}

#[test]
fn aaaa_over_ipv6_transport() {
    let h = harness();
    ask(&h, CLIENT6, RESOLVER6, 15, "cgr.dev.", RecordType::AAAA);
    answer(
        &h,
        RESOLVER6,
        CLIENT6,
        15,
        "cgr.dev.",
        RecordType::AAAA,
        &[Rr::Addr("cgr.dev.", "2001:db8:cafe::1", 60)],
    );
    assert!(learned(&h, "2001:db8:cafe::1").is_some());
    assert_eq!(syn(&h, "2001:db8:cafe::1"), PASS);
}

#[test]
fn answers_from_other_sources_teach_nothing() {
    let h = harness();
    ask(&h, CLIENT, RESOLVER, 16, "cgr.dev.", RecordType::A);
    answer(
        &h,
        "192.0.2.66",
        CLIENT,
        16,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.30", 60)],
    );
    assert_eq!(learned(&h, "198.51.100.30"), None);
    assert_eq!(h.counter(counters::DNS_UNTRUSTED), 1);
}

#[test]
fn unsolicited_and_mismatched_answers_teach_nothing() {
    let h = harness();
    // No query at all.
    answer(
        &h,
        RESOLVER,
        CLIENT,
        17,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.40", 60)],
    );
    // A query, but the answer has another id, or another question, or goes to another port.
    ask(&h, CLIENT, RESOLVER, 18, "cgr.dev.", RecordType::A);
    answer(
        &h,
        RESOLVER,
        CLIENT,
        19,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.41", 60)],
    );
    answer(
        &h,
        RESOLVER,
        CLIENT,
        18,
        "x.r2.cloudflarestorage.com.",
        RecordType::A,
        &[Rr::Addr("x.r2.cloudflarestorage.com.", "198.51.100.42", 60)],
    );
    let other_port = Packet::udp_with(
        ip(RESOLVER),
        53,
        ip(CLIENT),
        PORT + 1,
        response(
            18,
            "cgr.dev.",
            RecordType::A,
            &[Rr::Addr("cgr.dev.", "198.51.100.43", 60)],
        ),
    )
    .build();
    h.ingress(&other_port);
    for a in [
        "198.51.100.40",
        "198.51.100.41",
        "198.51.100.42",
        "198.51.100.43",
    ] {
        assert_eq!(learned(&h, a), None, "{a}");
    }
    assert_eq!(h.counter(counters::DNS_UNSOLICITED), 4);
    // The genuine answer still works, once.
    answer(
        &h,
        RESOLVER,
        CLIENT,
        18,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.44", 60)],
    );
    assert!(learned(&h, "198.51.100.44").is_some());
    answer(
        &h,
        RESOLVER,
        CLIENT,
        18,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.45", 60)],
    );
    assert_eq!(learned(&h, "198.51.100.45"), None, "a replayed answer");
}

#[test]
fn malformed_answers_teach_nothing_and_never_crash() {
    let h = harness();
    let good = response(
        20,
        "cgr.dev.",
        RecordType::A,
        &[
            Rr::Cname("cgr.dev.", "x.cgr.dev.", 60),
            Rr::Addr("x.cgr.dev.", "198.51.100.50", 60),
        ],
    );
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut m = good.clone();
        // Corrupt the answer section only, so the question still matches the query.
        let q_end = 12 + "cgr.dev.".len() + 1 + 4;
        for _ in 0..(next() % 4 + 1) {
            let i = q_end + (next() as usize) % (m.len() - q_end);
            m[i] = next() as u8;
        }
        m.truncate(q_end + (next() as usize) % (m.len() - q_end + 1));
        let before = h.dp.learned().unwrap();
        let malformed = h.counter(counters::DNS_MALFORMED);
        ask(&h, CLIENT, RESOLVER, 20, "cgr.dev.", RecordType::A);
        h.ingress(&Packet::udp_with(ip(RESOLVER), 53, ip(CLIENT), PORT, m.clone()).build());
        let after = h.dp.learned().unwrap();
        // An answer the kernel called malformed taught nothing, not even its first records.
        if h.counter(counters::DNS_MALFORMED) > malformed {
            let sorted = |mut v: Vec<egress_user::datapath::Learned>| {
                v.sort_by_key(|l| l.addr);
                v
            };
            assert_eq!(
                sorted(after.clone()),
                sorted(before.clone()),
                "a malformed answer changed the learned map"
            );
        }
        // Whatever was learned must be bytes of this very answer.
        for l in after {
            if before.iter().any(|b| b.addr == l.addr) {
                continue;
            }
            let IpAddr::V4(a) = l.addr else {
                panic!("AAAA from an A-only answer")
            };
            assert!(
                m.windows(4).any(|w| w == a.octets()),
                "learned {a}, not in the answer"
            );
        }
    }
    // Absurd counts and garbage from the resolver's address.
    for n in 0..200u32 {
        let mut junk = vec![0u8; 12 + (n as usize % 300)];
        for b in junk.iter_mut() {
            *b = next() as u8;
        }
        junk[2] = 0x81;
        h.ingress(&Packet::udp_with(ip(RESOLVER), 53, ip(CLIENT), PORT, junk).build());
    }
    assert!(h.counter(counters::DNS_MALFORMED) + h.counter(counters::DNS_UNSOLICITED) > 0);
}

#[test]
fn more_answers_than_the_kernel_walks_are_left_to_the_agent() {
    let h = harness();
    let addrs: Vec<String> = (0..40).map(|i| format!("198.51.101.{i}")).collect();
    let rrs: Vec<Rr<'_>> = addrs.iter().map(|a| Rr::Addr("cgr.dev.", a, 60)).collect();
    ask(&h, CLIENT, RESOLVER, 21, "cgr.dev.", RecordType::A);
    answer(&h, RESOLVER, CLIENT, 21, "cgr.dev.", RecordType::A, &rrs);
    let n = addrs.iter().filter(|a| learned(&h, a).is_some()).count();
    assert_eq!(n, egress_common::dns::MAX_ANSWERS);
}

#[test]
fn expired_cname_targets_are_collected_and_policy_names_stay() {
    let mut h = harness();
    let cfg = h.dp.config().unwrap();
    let hash = |n: &str| egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, n).0;
    let now = clock::boot_ns();
    let (policy_names, ..) = h.dp.name_counts().unwrap();
    let rule = Rule::exact(hash("cgr.dev"));
    h.dp.allow_name_until(hash("gone.example"), now + 1, rule)
        .unwrap();
    h.dp.allow_name_until(hash("kept.example"), now + 3_600_000_000_000, rule)
        .unwrap();
    assert_eq!(h.dp.name_counts().unwrap().1, 2);
    h.dp.collect_garbage(now + 2).unwrap();
    assert_eq!(h.dp.exact_name(hash("gone.example")), None);
    assert!(h.dp.exact_name(hash("kept.example")).is_some());
    assert_eq!(h.dp.name_counts().unwrap(), (policy_names, 1, 1));
}

/// The policy of [`harness`] with `names` instead.
fn policy_with(names: &str) -> String {
    format!(
        "resolvers: [{RESOLVER}, \"{RESOLVER6}\"]\nallow:\n  names: [{names}]\ndns:\n  min_ttl: 5s\n  grace: 30s\n"
    )
}

fn learn_answer(h: &Harness, id: u16, name: &str, addr: &str, ttl: u32) {
    let rtype = if addr.contains(':') {
        RecordType::AAAA
    } else {
        RecordType::A
    };
    ask(h, CLIENT, RESOLVER, id, name, rtype);
    answer(
        h,
        RESOLVER,
        CLIENT,
        id,
        name,
        rtype,
        &[Rr::Addr(name, addr, ttl)],
    );
}

#[test]
fn a_reload_revokes_what_only_removed_rules_allowed_and_keeps_shared_addresses() {
    let mut h = Harness::new(&policy_with(
        "cgr.dev, mirror.example, \"*.r2.cloudflarestorage.com\", \"*.shared.example\", exact.shared.example",
    ));
    // cgr.dev alone; an address cgr.dev (long TTL) shares with mirror.example (short TTL); a
    // wildcard's address; a name both exact and under a wildcard.
    learn_answer(&h, 1, "cgr.dev.", "198.51.100.1", 3600);
    learn_answer(&h, 2, "cgr.dev.", "198.51.100.2", 3600);
    learn_answer(&h, 3, "mirror.example.", "198.51.100.2", 60);
    learn_answer(&h, 4, "b.r2.cloudflarestorage.com.", "198.51.100.3", 3600);
    learn_answer(&h, 5, "exact.shared.example.", "198.51.100.4", 3600);
    for a in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        assert_eq!(syn(&h, a), PASS, "{a} learned");
    }
    // Two justifications for the address both an exact name and a wildcard allow.
    let by = h.dp.justifications().unwrap();
    assert_eq!(
        by.iter().filter(|(a, ..)| *a == ip("198.51.100.4")).count(),
        2,
        "{by:?}"
    );

    let done = h.reapply(&policy_with("mirror.example, \"*.shared.example\""));
    assert_eq!(done.reconciled.revoked, 2, "{done:?}");
    assert_eq!(done.reconciled.shortened, 1, "{done:?}");
    assert_eq!(syn(&h, "198.51.100.1"), DROP, "a removed name's address");
    assert_eq!(
        syn(&h, "198.51.100.3"),
        DROP,
        "a removed wildcard's address"
    );
    assert_eq!(
        syn(&h, "198.51.100.2"),
        PASS,
        "shared with a name that stays"
    );
    assert_eq!(
        syn(&h, "198.51.100.4"),
        PASS,
        "the wildcard that stays allows it"
    );
    let left = learned(&h, "198.51.100.2").unwrap();
    assert!(
        left <= 90.5,
        "the shared address keeps only the remaining name's TTL + grace, got {left} s"
    );
    // A removed name's answers teach nothing after the reload.
    learn_answer(&h, 6, "cgr.dev.", "198.51.100.5", 3600);
    assert_eq!(syn(&h, "198.51.100.5"), DROP);
    // And a restart's first apply does the same: a fresh handle on the same pins, a narrower
    // policy.
    let done = h.reapply(&policy_with("mirror.example"));
    assert_eq!(done.reconciled.revoked, 1, "{done:?}");
    assert_eq!(syn(&h, "198.51.100.4"), DROP);
}

#[test]
fn cname_targets_of_a_removed_name_are_revoked_with_it() {
    let mut h = harness();
    let cfg = h.dp.config().unwrap();
    let hash = |n: &str| egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, n).0;
    let now = clock::boot_ns();
    let day = 86_400_000_000_000;
    h.dp.allow_name_until(
        hash("edge.cgr.example"),
        now + day,
        Rule::exact(hash("cgr.dev")),
    )
    .unwrap();
    h.dp.allow_name_until(
        hash("edge.wolfi.example"),
        now + day,
        Rule::exact(hash("packages.wolfi.dev")),
    )
    .unwrap();
    // The target's own answer is learned under its chain's rule.
    learn_answer(&h, 1, "edge.cgr.example.", "198.51.100.9", 3600);
    assert_eq!(syn(&h, "198.51.100.9"), PASS);
    let done = h.reapply(&policy_with("packages.wolfi.dev"));
    assert_eq!(done.reconciled.names, 1, "{done:?}");
    assert_eq!(h.dp.exact_name(hash("edge.cgr.example")), None);
    assert!(h.dp.exact_name(hash("edge.wolfi.example")).is_some());
    assert_eq!(syn(&h, "198.51.100.9"), DROP, "the target's address");
    learn_answer(&h, 2, "edge.cgr.example.", "198.51.100.10", 3600);
    assert_eq!(
        syn(&h, "198.51.100.10"),
        DROP,
        "the target is not learnable"
    );
}

/// Garbage collection reads an expired entry and removes it a moment later; the kernel
/// refreshes it in between. Here a second thread runs collections back to back while this one
/// expires the entry by hand and refreshes it through the kernel, a thousand times. After every
/// refresh, once a whole collection pass has run, the entry must be there: a collection that
/// removed it would have thrown the refresh away (and the next connect would be dropped).
#[test]
fn garbage_collection_never_throws_away_a_refresh() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let h = harness();
    let pins = PinDir::new(h.pins().root());
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let restored = Arc::new(AtomicU64::new(0));
    let gc = {
        let (stop, passes, restored) = (stop.clone(), passes.clone(), restored.clone());
        std::thread::spawn(move || {
            let mut dp = Datapath::open_pinned(&pins).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let (done, _) = dp.collect_garbage(clock::boot_ns()).unwrap();
                restored.fetch_add(done.restored as u64, Ordering::Relaxed);
                passes.fetch_add(1, Ordering::Release);
            }
        })
    };
    let raw: aya::maps::HashMap<_, [u8; 4], LearnedValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(h.pins().map(egress_common::maps::names::LEARNED_V4))
                .unwrap(),
        ))
        .unwrap();
    let mut raw = raw;
    let addr = [198, 51, 100, 77];
    let mut lost = 0;
    for i in 0..1000u16 {
        // Expired, as garbage collection will find it.
        let _ = raw.insert(addr, LearnedValue::default(), 0);
        learn_answer(&h, i, "cgr.dev.", "198.51.100.77", 300);
        let seen = passes.load(Ordering::Acquire);
        while passes.load(Ordering::Acquire) < seen + 2 {
            std::hint::spin_loop();
        }
        if syn(&h, "198.51.100.77") != PASS {
            lost += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    gc.join().unwrap();
    assert_eq!(lost, 0, "refreshes thrown away by garbage collection");
    // The race was really run: some refreshes landed between a pass's read and its removal.
    assert!(
        restored.load(Ordering::Relaxed) > 0,
        "no collection ever met a refresh; the test proves nothing"
    );
}

/// One client floods the resolver with queries right after another client asked: the pending
/// map is LRU, so without a per-client bound the flood evicts the other client's entry and its
/// real answer teaches nothing. Here the map holds 4,096 queries and a client may have 1,000 a
/// second remembered; the flood of 8,000 takes well under 4 s even under emulation.
#[test]
fn one_clients_query_flood_cannot_evict_another_clients_pending_query() {
    const FLOODER: &str = "192.0.2.66";
    let h = Harness::with_capacities(
        &format!(
            "resolvers: [{RESOLVER}]\nallow:\n  names: [cgr.dev]\ndns:\n  client_query_rate: 1000\n"
        ),
        &[(egress_common::maps::names::DNS_PENDING, 4096)],
    );
    ask(&h, CLIENT, RESOLVER, 7, "cgr.dev.", RecordType::A);
    let q = query(1, "flood.example.", RecordType::A);
    let started = std::time::Instant::now();
    for i in 0..8_000u16 {
        let mut bytes = q.clone();
        bytes[..2].copy_from_slice(&i.to_be_bytes());
        h.egress(&Packet::udp_with(ip(FLOODER), 1024, ip(RESOLVER), 53, bytes).build());
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the flood was too slow to prove anything"
    );
    answer(
        &h,
        RESOLVER,
        CLIENT,
        7,
        "cgr.dev.",
        RecordType::A,
        &[Rr::Addr("cgr.dev.", "198.51.100.1", 60)],
    );
    assert!(
        learned(&h, "198.51.100.1").is_some(),
        "the other client's answer was not learned: its pending query was evicted"
    );
    assert!(h.counter(counters::DNS_QUERY_RATE_LIMITED) >= 4_000);
}

#[test]
fn names_and_resolvers_of_the_policy_not_in_force_teach_nothing_until_it_is_switched_to() {
    let mut h = harness();
    let other = egress_common::maps::generation::other(h.dp.active().unwrap());
    let cfg = h.dp.config().unwrap();
    let hash = |n: &str| egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, n).0;
    // A whole other policy written beside the one in force: another resolver, another exact
    // name and another wildcard, and not cgr.dev.
    h.dp.write_config(&egress_common::maps::Config {
        generation: other,
        ..cfg
    })
    .unwrap();
    h.dp.write_ports(other, &[443]).unwrap();
    h.dp.write_resolvers(other, &[ip(RESOLVER), ip("192.0.2.54")])
        .unwrap();
    h.dp.write_names(
        other,
        &[hash("other.example")].into(),
        &[hash("wild.example")].into(),
    )
    .unwrap();
    let learn_from = |h: &Harness, resolver: &str, id: u16, name: &str, addr: &str| {
        ask(h, CLIENT, resolver, id, name, RecordType::A);
        answer(
            h,
            resolver,
            CLIENT,
            id,
            name,
            RecordType::A,
            &[Rr::Addr(name, addr, 60)],
        );
    };
    // Not in force: its resolver is not trusted, its names are not allowed.
    learn_from(&h, "192.0.2.54", 1, "cgr.dev.", "198.51.100.1");
    assert_eq!(h.counter(counters::DNS_UNTRUSTED), 1);
    learn_from(&h, RESOLVER, 2, "other.example.", "198.51.100.2");
    learn_from(&h, RESOLVER, 3, "a.wild.example.", "198.51.100.3");
    assert_eq!(h.counter(counters::DNS_NOT_ALLOWED), 2);
    learn_from(&h, RESOLVER, 4, "cgr.dev.", "198.51.100.4");
    assert_eq!(h.counter(counters::DNS_ANSWER_LEARNED), 1);
    for a in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(learned(&h, a), None, "{a}");
    }
    // One write puts all of it in force.
    h.dp.activate(other).unwrap();
    learn_from(&h, "192.0.2.54", 5, "other.example.", "198.51.100.5");
    learn_from(&h, RESOLVER, 6, "b.wild.example.", "198.51.100.6");
    learn_from(&h, RESOLVER, 7, "cgr.dev.", "198.51.100.7");
    assert_eq!(h.counter(counters::DNS_UNTRUSTED), 1);
    assert_eq!(h.counter(counters::DNS_NOT_ALLOWED), 3);
    assert_eq!(h.counter(counters::DNS_ANSWER_LEARNED), 3);
    assert!(learned(&h, "198.51.100.5").is_some());
    assert!(learned(&h, "198.51.100.6").is_some());
    assert_eq!(learned(&h, "198.51.100.7"), None);
}
