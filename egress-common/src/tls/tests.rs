use std::vec::Vec;

use super::*;
use crate::{dns, hash, testing::ClientHello};

fn parse(bytes: &[u8]) -> Result<Hello, TlsError> {
    let mut buf = [0u8; BUF];
    let n = bytes.len().min(BUF);
    buf[..n].copy_from_slice(&bytes[..n]);
    let mut out = Hello::default();
    client_hello(&buf, bytes.len(), &mut out).map(|()| out)
}

fn name_of(bytes: &[u8]) -> Vec<u8> {
    let h = parse(bytes).unwrap();
    bytes[h.sni_off as usize..][..h.sni_len as usize].to_vec()
}

#[test]
fn a_client_hello_shows_its_name_wherever_the_extension_stands() {
    for sni_first in [false, true] {
        for padding in [0, 1500, 6000] {
            let mut c = ClientHello::new("cgr.dev");
            c.sni_first = sni_first;
            c.padding = padding;
            c.grease = true;
            let b = c.build();
            assert_eq!(
                name_of(&b),
                b"cgr.dev",
                "first {sni_first} padding {padding}"
            );
            assert_eq!(parse(&b).unwrap().end as usize, b.len());
        }
    }
}

#[test]
fn every_proper_prefix_is_incomplete() {
    let mut c = ClientHello::new("registry.k8s.io");
    c.padding = 700;
    let b = c.build();
    for n in 0..b.len() {
        assert_eq!(parse(&b[..n]), Err(TlsError::Incomplete), "prefix of {n}");
    }
    assert!(parse(&b).is_ok());
}

#[test]
fn bytes_after_the_record_are_not_read() {
    let mut b = ClientHello::new("cgr.dev").build();
    let end = b.len();
    b.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(parse(&b).unwrap().end as usize, end);
}

#[test]
fn other_protocols_fail_at_their_first_byte() {
    assert_eq!(parse(b"G"), Err(TlsError::NotHello));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(TlsError::NotHello));
    assert_eq!(parse(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(TlsError::NotHello));
    // SSLv2-compatible hello, an alert, a record of version 2.x, a ServerHello.
    assert_eq!(parse(&[0x80, 0x2e, 1, 3, 1]), Err(TlsError::NotHello));
    assert_eq!(parse(&[21, 3, 3, 0, 2, 2, 40]), Err(TlsError::NotHello));
    assert_eq!(parse(&[22, 2, 0]), Err(TlsError::NotHello));
    assert_eq!(parse(&[22, 3, 5]), Err(TlsError::NotHello));
    assert_eq!(parse(&[22, 3, 3, 0, 40, 2]), Err(TlsError::NotHello));
}

#[test]
fn a_client_hello_over_records_or_with_a_length_that_does_not_add_up_is_refused() {
    let b = ClientHello::new("cgr.dev").build();
    // Record length one more than the handshake's.
    let mut longer = b.clone();
    let rec = u16::from_be_bytes([b[3], b[4]]) + 1;
    longer[3..5].copy_from_slice(&rec.to_be_bytes());
    longer.push(0);
    assert_eq!(parse(&longer), Err(TlsError::NotHello));
    // The same ClientHello cut over two records.
    let hs = &b[5..];
    let mut two = vec![22, 3, 1, 0, 20];
    two.extend_from_slice(&hs[..20]);
    two.extend_from_slice(&[22, 3, 1]);
    two.extend_from_slice(&((hs.len() - 20) as u16).to_be_bytes());
    two.extend_from_slice(&hs[20..]);
    assert_eq!(parse(&two), Err(TlsError::NotHello));
    // Too long for the buffer, judged from the header alone.
    let mut c = ClientHello::new("cgr.dev");
    c.padding = BUF;
    assert_eq!(parse(&c.build()[..9]), Err(TlsError::TooLong));
}

#[test]
fn malformed_names_and_extensions_are_refused() {
    let mut none = ClientHello::new("x");
    none.sni = None;
    assert_eq!(parse(&none.build()), Err(TlsError::NoSni));
    let mut long = ClientHello::new("x");
    long.sni = Some(vec![b'a'; 256]);
    assert_eq!(parse(&long.build()), Err(TlsError::Malformed));
    let mut empty = ClientHello::new("x");
    empty.sni = Some(Vec::new());
    assert_eq!(parse(&empty.build()), Err(TlsError::Malformed));
    // Two server_name extensions: the first is the builder's, the second appended by hand.
    let c = ClientHello::new("cgr.dev");
    let twice = with_extension(&c, 0, &[0, 8, 0, 0, 5, b'e', b'v', b'i', b'l', b'.']);
    assert_eq!(parse(&twice), Err(TlsError::Malformed));
    // Name type other than host_name.
    let mut b = c.build();
    let h = parse(&b).unwrap();
    b[h.sni_off as usize - 3] = 1;
    assert_eq!(parse(&b), Err(TlsError::Malformed));
    // An extension running past the block.
    let mut b = c.build();
    let len = b.len();
    b[len - 9] = 0xff;
    assert_eq!(parse(&b), Err(TlsError::Malformed));
}

#[test]
fn more_extensions_than_the_walk_bound_are_refused() {
    let c = ClientHello::new("cgr.dev");
    let mut b = c.build();
    // The builder's own extensions, then empty ones up to exactly the bound: accepted.
    let own = 7;
    for _ in own..MAX_EXTENSIONS {
        b = append_extension(&b, 0x7778, &[]);
    }
    assert_eq!(name_of(&b), b"cgr.dev", "{MAX_EXTENSIONS} extensions");
    // One more: past the walk.
    let b = append_extension(&b, 0x7778, &[]);
    assert_eq!(parse(&b), Err(TlsError::Malformed));
}

#[test]
fn ech_is_flagged() {
    let mut c = ClientHello::new("public.example");
    c.ech = true;
    assert_eq!(parse(&c.build()).unwrap().flags, hello_flag::ECH);
}

/// `c` with one more extension at the end of its block, lengths fixed up.
fn with_extension(c: &ClientHello, kind: u16, body: &[u8]) -> Vec<u8> {
    append_extension(&c.build(), kind, body)
}

fn append_extension(b: &[u8], kind: u16, body: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    let add = 4 + body.len();
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(body);
    let rec = u16::from_be_bytes([b[3], b[4]]) as usize + add;
    b[3..5].copy_from_slice(&(rec as u16).to_be_bytes());
    let hs = rec - 4;
    b[6..9].copy_from_slice(&(hs as u32).to_be_bytes()[1..]);
    // The extension block's length sits right after the compression methods.
    let sid = b[9 + 34] as usize;
    let at = 9 + 35 + sid;
    let suites = u16::from_be_bytes([b[at], b[at + 1]]) as usize;
    let at = at + 2 + suites;
    let methods = b[at] as usize;
    let at = at + 1 + methods;
    let block = u16::from_be_bytes([b[at], b[at + 1]]) as usize + add;
    b[at..at + 2].copy_from_slice(&(block as u16).to_be_bytes());
    b
}

/// The name's hash through [`sni_to_wire`] and [`dns::name`].
fn wire_hash(name: &[u8]) -> Option<u64> {
    let mut buf = [0u8; BUF];
    buf[100..100 + name.len()].copy_from_slice(name);
    let mut wire = [0u8; dns::BUF];
    let mut copy = [0u8; MAX_NAME + 1];
    let n = sni_to_wire(&buf, 100, name.len(), &mut wire, &mut copy)?;
    assert_eq!(&copy[..n - 2], &name[..n - 2]);
    let mut labels = [0u64; crate::MAX_LABELS];
    dns::name(&wire, n, 7, 9, &mut labels, |_| false)
        .ok()
        .map(|q| q.full)
}

#[test]
fn the_name_hashes_as_the_dns_name_does_case_and_trailing_dot_aside() {
    for name in [
        "cgr.dev",
        "a.b.c.example.com",
        "X",
        "registry.K8S.io",
        "r2.cloudflarestorage.com.",
    ] {
        let (full, _) = hash::name_hashes(7, 9, name);
        assert_eq!(wire_hash(name.as_bytes()), Some(full), "{name}");
    }
    assert_eq!(wire_hash(b"CGR.DEV."), wire_hash(b"cgr.dev"));
}

#[test]
fn names_no_dns_name_equals_hash_to_nothing() {
    for bad in [
        &b"a..b"[..],
        b".a",
        b"a.",
        b"..",
        b".",
        b"a\0b",
        b"evil.test/.example.org",
        b"a b.example.org",
        b"a%2fb.example.org",
        "caf\u{e9}.example.org".as_bytes(),
        b"cgr.dev..",
        &[b'a'; 64],
    ] {
        let bad_str = String::from_utf8_lossy(bad);
        if bad == b"a." {
            // One trailing dot is dropped: "a." is "a".
            assert_eq!(wire_hash(bad), wire_hash(b"a"), "{bad_str}");
            continue;
        }
        assert_eq!(wire_hash(bad), None, "{bad_str}");
    }
    // 63 bytes is a label; 253 bytes a name; longer is not a DNS name.
    assert!(wire_hash(&[b'a'; 63]).is_some());
    let long: Vec<u8> = (0..4)
        .flat_map(|_| [b'a'; 62].into_iter().chain([b'.']))
        .chain(*b"abc")
        .collect();
    // Four 62-byte labels with their dots: 251 bytes once the trailing dot is dropped.
    assert!(wire_hash(&long[..long.len() - 3]).is_some());
    assert_eq!(wire_hash(&long), None, "{} bytes", long.len());
}

#[test]
fn segments_are_placed_by_their_sequence_numbers() {
    let base = u32::MAX - 2;
    // Nothing passed yet: only a segment at base is new.
    assert_eq!(admit(base, base, base, 10), Segment::New { skip: 0 });
    assert_eq!(admit(base, base, base.wrapping_add(1), 10), Segment::Gap);
    assert_eq!(admit(base, base, base.wrapping_sub(1), 10), Segment::Gap);
    // 100 bytes passed (across the wrap of the sequence space).
    let next = base.wrapping_add(100);
    assert_eq!(admit(base, next, base, 100), Segment::Resent);
    assert_eq!(
        admit(base, next, base.wrapping_add(50), 50),
        Segment::Resent
    );
    assert_eq!(
        admit(base, next, base.wrapping_add(50), 51),
        Segment::New { skip: 50 }
    );
    assert_eq!(admit(base, next, next, 1), Segment::New { skip: 0 });
    assert_eq!(admit(base, next, next.wrapping_add(1), 1), Segment::Gap);
}

#[test]
fn real_client_hellos_from_curl_and_openssl() {
    // Captured from curl 7.88 and openssl s_client 3.0 (the fuzz target's seeds).
    let curl = include_bytes!("../../../fuzz/seeds/tls_hello/curl");
    let openssl = include_bytes!("../../../fuzz/seeds/tls_hello/openssl-s_client");
    let none = include_bytes!("../../../fuzz/seeds/tls_hello/openssl-noservername");
    assert_eq!(name_of(curl), b"cgr.dev");
    assert_eq!(name_of(openssl), b"cgr.dev");
    assert_eq!(parse(none), Err(TlsError::NoSni));
    for n in 0..curl.len() {
        assert_eq!(parse(&curl[..n]), Err(TlsError::Incomplete));
    }
}
