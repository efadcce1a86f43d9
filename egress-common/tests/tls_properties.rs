//! Properties of the ClientHello reader and the segment placement the kernel runs (compiled for
//! the host), over generated ClientHellos (names, extension order, GREASE, ECH, padding that
//! pushes the name past any segment) and generated segmentations:
//! - every proper prefix of a ClientHello is `Incomplete`, and the whole one shows its name;
//! - the allow decision made from hashes is the one a string match of the policy gives;
//! - replaying the kernel's segment step over any order of overlapping, repeated and reordered
//!   segments never lets a complete ClientHello reach the server before the verdict (I1), and
//!   the verdict is taken on exactly the bytes the server has (I2).

use std::collections::HashSet;

use egress_common::{
    MAX_LABELS,
    dns::{self},
    hash::name_hashes,
    testing::ClientHello,
    tls::{self, BUF, Hello, MAX_NAME, Segment, TlsError},
};
use proptest::prelude::*;

const K0: u64 = 0x0123_4567_89ab_cdef;
const K1: u64 = 0xfedc_ba98_7654_3210;

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "b", "cdn", "example", "com", "net", "x-1", "R2", "Cgr", "dev",
    ])
    .prop_map(str::to_owned)
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

fn hello() -> impl Strategy<Value = (String, ClientHello)> {
    (
        name(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..3000,
        0usize..33,
    )
        .prop_map(|(n, sni_first, grease, ech, padding, session_id)| {
            let mut c = ClientHello::new(&n);
            c.sni_first = sni_first;
            c.grease = grease;
            c.ech = ech;
            c.padding = padding;
            c.session_id = session_id;
            (n, c)
        })
}

fn parse(bytes: &[u8]) -> Result<Hello, TlsError> {
    let mut buf = Box::new([0u8; BUF]);
    let n = bytes.len().min(BUF);
    buf[..n].copy_from_slice(&bytes[..n]);
    let mut out = Hello::default();
    tls::client_hello(&buf, bytes.len(), &mut out).map(|()| out)
}

/// The kernel's decision for the name in `bytes` (egress-ebpf `tls_wire` then `tls_hash`).
fn kernel_allows(bytes: &[u8], exact: &HashSet<u64>, wild: &HashSet<u64>) -> Option<bool> {
    let mut buf = Box::new([0u8; BUF]);
    buf[..bytes.len()].copy_from_slice(bytes);
    let mut h = Hello::default();
    tls::client_hello(&buf, bytes.len(), &mut h).ok()?;
    let mut wire = Box::new([0u8; dns::BUF]);
    let mut copy = [0u8; MAX_NAME + 1];
    let n = tls::sni_to_wire(
        &buf,
        h.sni_off.into(),
        h.sni_len.into(),
        &mut wire,
        &mut copy,
    )?;
    let q = dns::name(&wire, n, K0, K1, &mut [0; MAX_LABELS], |s| {
        wild.contains(&s)
    })
    .ok()?;
    Some(q.suffix_matched || exact.contains(&q.full))
}

/// One step of the kernel's judgment of a connection (egress-ebpf `egress_tls`), on the host:
/// the held bytes stand for `TLS_PARTIAL`, `next` for the pending entry.
struct Judge {
    base: u32,
    next: u32,
    held: Vec<u8>,
    verdict: Option<bool>,
}

impl Judge {
    /// Whether the segment passes, given the decision `allow` takes on a complete ClientHello.
    fn segment(&mut self, seq: u32, payload: &[u8], mut allow: impl FnMut(&[u8]) -> bool) -> bool {
        if let Some(v) = self.verdict {
            return v;
        }
        let skip = match tls::admit(self.base, self.next, seq, payload.len() as u32) {
            Segment::Gap => return false,
            Segment::Resent => return true,
            Segment::New { skip } => skip as usize,
        };
        let fresh = &payload[skip..];
        let n = fresh.len().min(BUF - self.held.len());
        let mut all = self.held.clone();
        all.extend_from_slice(&fresh[..n]);
        match parse(&all) {
            Err(TlsError::Incomplete) if n == fresh.len() => {
                self.held = all;
                self.next = self.base.wrapping_add(self.held.len() as u32);
                true
            }
            Ok(_) => {
                let v = allow(&all);
                self.verdict = Some(v);
                v
            }
            Err(_) => {
                self.verdict = Some(false);
                false
            }
        }
    }
}

/// Segments of `bytes`: random cut points, each segment possibly repeated, merged with its
/// neighbour, or moved later.
fn segmentation(len: usize) -> impl Strategy<Value = Vec<(usize, usize)>> {
    (
        prop::collection::vec(1usize..len.max(2), 0..6),
        prop::collection::vec((0usize..16, 0usize..16, 0u8..4), 0..12),
    )
        .prop_map(move |(cuts, shuffles)| {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < len).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            cuts.dedup();
            let mut segs: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
            for (a, b, how) in shuffles {
                let (a, b) = (a % segs.len(), b % segs.len());
                match how {
                    0 => segs.swap(a, b),
                    1 => segs.insert(b, segs[a]),
                    2 => {
                        let (s, e) = (segs[a].0.min(segs[b].0), segs[a].1.max(segs[b].1));
                        segs.insert(b, (s, e));
                    }
                    _ => {
                        let s = segs.remove(a);
                        segs.push(s);
                    }
                }
            }
            // TCP goes on until every byte has been acknowledged: the segments in order last.
            segs.extend(cuts.windows(2).map(|w| (w[0], w[1])));
            segs
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_proper_prefix_is_incomplete_and_the_whole_shows_its_name((n, c) in hello()) {
        let b = c.build();
        for cut in 0..b.len() {
            prop_assert_eq!(parse(&b[..cut]), Err(TlsError::Incomplete), "cut {}", cut);
        }
        let h = parse(&b).unwrap();
        prop_assert_eq!(&b[h.sni_off as usize..][..h.sni_len as usize], n.as_bytes());
        prop_assert_eq!(h.flags & tls::hello_flag::ECH != 0, c.ech);
    }

    #[test]
    fn the_hash_decision_is_the_policy_decision(
        (asked, c) in hello(),
        dot in any::<bool>(),
        exact in prop::collection::vec(name(), 0..4),
        wild in prop::collection::vec(name(), 0..3),
    ) {
        let mut c = c;
        let sent = if dot { format!("{asked}.") } else { asked.clone() };
        c.sni = Some(sent.into_bytes());
        let exact_h: HashSet<u64> =
            exact.iter().map(|n| name_hashes(K0, K1, &n.to_ascii_lowercase()).0).collect();
        let wild_h: HashSet<u64> =
            wild.iter().map(|n| name_hashes(K0, K1, &n.to_ascii_lowercase()).0).collect();
        let kernel = kernel_allows(&c.build(), &exact_h, &wild_h);
        let lower = asked.to_ascii_lowercase();
        let policy = exact.iter().any(|e| e.to_ascii_lowercase() == lower)
            || wild.iter().any(|w| lower.ends_with(&format!(".{}", w.to_ascii_lowercase())));
        prop_assert_eq!(kernel, Some(policy), "{} vs exact {:?} wild {:?}", asked, exact, wild);
    }

    #[test]
    fn no_segmentation_lets_a_client_hello_complete_before_its_verdict(
        (c, segs) in hello().prop_flat_map(|(_, c)| {
            let len = c.build().len();
            (Just(c), segmentation(len))
        }),
        allowed in any::<bool>(),
        isn in any::<u32>(),
    ) {
        let b = c.build();
        let base = isn.wrapping_add(1);
        let mut judge = Judge { base, next: base, held: Vec::new(), verdict: None };
        // What the server's TCP has received, in stream order (bytes past its end are held in
        // its out-of-order queue until the gap fills).
        let mut server: Vec<Option<u8>> = vec![None; b.len()];
        let mut judged_on: Option<Vec<u8>> = None;
        for (s, e) in segs {
            let (s, e) = (s.min(b.len()), e.min(b.len()));
            if s >= e {
                continue;
            }
            let seq = base.wrapping_add(s as u32);
            let passes = judge.segment(seq, &b[s..e], |all| {
                judged_on = Some(all.to_vec());
                allowed
            });
            if passes {
                for (i, byte) in b[s..e].iter().enumerate() {
                    server[s + i] = Some(*byte);
                }
            }
            // I1: until the verdict allows it, the server never holds the whole ClientHello.
            let complete = server.iter().all(Option::is_some);
            if complete {
                prop_assert_eq!(judge.verdict, Some(true), "a complete ClientHello passed unjudged or denied");
            }
        }
        // I2: the verdict, once taken, was on the true bytes.
        if let Some(on) = judged_on {
            prop_assert_eq!(&on[..b.len()], &b[..]);
        }
        // The segments in order came last: the verdict is always reached.
        prop_assert_eq!(judge.verdict, Some(allowed));
    }
}
