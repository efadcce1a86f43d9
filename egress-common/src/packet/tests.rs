use std::net::IpAddr;

use super::*;
use crate::testing::Packet;

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ip(frame: &[u8]) -> IpPacket {
    match parse_frame(frame) {
        Ok(Frame::Ip(p)) => p,
        other => panic!("expected an IP packet, got {other:?}"),
    }
}

const C4: &str = "192.0.2.1";
const S4: &str = "198.51.100.7";
const C6: &str = "2001:db8::1";
const S6: &str = "2001:db8:1::7";

#[test]
fn tcp_v4_ports_flags_and_addresses() {
    let p = ip(&Packet::tcp(v4(C4), v4(S4), 443).build());
    assert_eq!(p.family, family::V4);
    assert_eq!(p.daddr, v4_mapped([198, 51, 100, 7]));
    assert_eq!(p.saddr, v4_mapped([192, 0, 2, 1]));
    assert_eq!(
        p.transport,
        Transport::ports(
            IPPROTO_TCP,
            40_000u16.to_be_bytes(),
            443u16.to_be_bytes(),
            TCP_SYN
        )
    );
}

#[test]
fn udp_v6() {
    let p = ip(&Packet::udp(v4(C6), v4(S6), 443).build());
    assert_eq!(p.family, family::V6);
    assert_eq!(
        p.daddr,
        "2001:db8:1::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert!(
        (p.transport.kind == Kind::Ports
            && p.transport.proto == IPPROTO_UDP
            && p.transport.dport == 443u16.to_be_bytes())
    );
}

#[test]
fn non_ip_frames_are_not_ip() {
    let mut arp = [0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parse_frame(&arp[..]), Ok(Frame::NotIp));
}

#[test]
fn vlan_tags_up_to_two_are_skipped_more_are_an_error() {
    for tags in 1..=2 {
        let mut pkt = Packet::tcp(v4(C4), v4(S4), 443);
        pkt.vlan_tags = tags;
        assert_eq!(ip(&pkt.build()).transport.kind, Kind::Ports);
    }
    let mut pkt = Packet::tcp(v4(C4), v4(S4), 443);
    pkt.vlan_tags = 3;
    assert_eq!(
        parse_frame(&pkt.build()[..]),
        Err(ParseError::TooManyVlanTags)
    );
}

#[test]
fn ipv4_later_fragment_has_no_ports_first_fragment_has() {
    let mut pkt = Packet::udp(v4(C4), v4(S4), 443);
    pkt.more_fragments = true;
    assert_eq!(ip(&pkt.build()).transport.kind, Kind::Ports);
    pkt.frag_offset = 185;
    assert_eq!(ip(&pkt.build()).transport, Transport::LATER_FRAGMENT);
}

#[test]
fn tiny_first_fragment_is_unparsed() {
    let mut pkt = Packet::tcp(v4(C4), v4(S4), 443);
    pkt.more_fragments = true;
    pkt.transport_len = Some(8);
    assert_eq!(ip(&pkt.build()).transport, Transport::UNPARSED);
    let mut udp = Packet::udp(v4(C4), v4(S4), 443);
    udp.payload = 0;
    udp.transport_len = Some(6);
    assert_eq!(ip(&udp.build()).transport, Transport::UNPARSED);
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let mut f = Packet::tcp(v4(C4), v4(S4), 443).build();
    // Grow the header to IHL 6 with a 4-byte NOP option block.
    f[14] = 0x46;
    f.splice(34..34, [1u8, 1, 1, 0]);
    assert!({
        let t = ip(&f).transport;
        t.kind == Kind::Ports && t.dport == 443u16.to_be_bytes()
    });
}

#[test]
fn bad_ihl_and_version_are_errors() {
    let mut f = Packet::tcp(v4(C4), v4(S4), 443).build();
    f[14] = 0x44;
    assert_eq!(parse_frame(&f[..]), Err(ParseError::BadIpHeader));
    f[14] = 0x65;
    assert_eq!(parse_frame(&f[..]), Err(ParseError::BadIpHeader));
}

#[test]
fn truncated_headers_are_errors_at_every_length() {
    for full in [
        Packet::tcp(v4(C4), v4(S4), 443).build(),
        Packet::tcp(v4(C6), v4(S6), 443).build(),
    ] {
        let l3_end = if full[12] == 0x08 { 14 + 20 } else { 14 + 40 };
        for len in 0..l3_end {
            assert!(parse_frame(&full[..len]).is_err(), "length {len} parsed");
        }
        // The parser needs the 14 TCP bytes up to the flags.
        for len in l3_end..l3_end + 14 {
            assert_eq!(
                ip(&full[..len]).transport,
                Transport::UNPARSED,
                "length {len}"
            );
        }
        assert_eq!(ip(&full[..l3_end + 14]).transport.kind, Kind::Ports);
    }
}

#[test]
fn ipv6_extension_headers_are_walked() {
    for ext in [
        vec![0u8],
        vec![0, 60],
        vec![43],
        vec![51],
        vec![0, 43, 60, 51, 60],
    ] {
        let mut pkt = Packet::tcp(v4(C6), v4(S6), 443);
        pkt.v6_ext = ext.clone();
        assert!(
            {
                let t = ip(&pkt.build()).transport;
                t.kind == Kind::Ports && t.dport == 443u16.to_be_bytes()
            },
            "{ext:?}"
        );
    }
}

#[test]
fn ipv6_too_many_extension_headers_is_unparsed() {
    let mut pkt = Packet::tcp(v4(C6), v4(S6), 443);
    pkt.v6_ext = vec![60; MAX_IPV6_EXT_HEADERS];
    assert_eq!(ip(&pkt.build()).transport.kind, Kind::Ports);
    pkt.v6_ext = vec![60; MAX_IPV6_EXT_HEADERS + 1];
    assert_eq!(ip(&pkt.build()).transport, Transport::UNPARSED);
}

#[test]
fn ipv6_fragments() {
    let mut pkt = Packet::udp(v4(C6), v4(S6), 443);
    pkt.v6_ext = vec![44];
    pkt.more_fragments = true;
    assert_eq!(ip(&pkt.build()).transport.kind, Kind::Ports);
    pkt.frag_offset = 100;
    assert_eq!(ip(&pkt.build()).transport, Transport::LATER_FRAGMENT);
}

#[test]
fn other_protocols_are_reported_as_such() {
    let mut pkt = Packet::tcp(v4(C4), v4(S4), 443);
    pkt.proto = 1;
    assert_eq!(ip(&pkt.build()).transport, Transport::other(1));
    let mut pkt6 = Packet::tcp(v4(C6), v4(S6), 443);
    pkt6.proto = 58;
    pkt6.v6_ext = vec![0];
    assert_eq!(ip(&pkt6.build()).transport, Transport::other(58));
}

#[test]
fn any_prefix_of_any_built_frame_never_panics() {
    let mut frames = vec![];
    for tags in 0..3 {
        let mut a = Packet::tcp(v4(C6), v4(S6), 443);
        a.vlan_tags = tags;
        a.v6_ext = vec![0, 44, 51, 60];
        frames.push(a.build());
        let mut b = Packet::udp(v4(C4), v4(S4), 53);
        b.vlan_tags = tags;
        frames.push(b.build());
    }
    for f in frames {
        for len in 0..=f.len() {
            let _ = parse_frame(&f[..len]);
        }
    }
}

/// Found by the `packet` fuzz target: IPv6 extension headers whose lengths run past the end
/// of the frame. The walk stops where a header cannot be read, so the transport is never
/// `Ports` there (fail-closed for enforced traffic); `l4_off` then lies beyond the frame, which
/// is harmless because it is only used for `Ports`.
#[test]
fn extension_headers_longer_than_the_frame_never_yield_ports() {
    let frame: &[u8] = &[
        0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0xfd, 0x62, 0x86, 0xdd, 0x63,
        0xff, 0xff, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, 0xfd, 0x62, 0x81, 0x00, 0xff, 0x3d,
        0x88, 0xa8, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x62, 0x86, 0xdd, 0x63, 0xff, 0xff, 0x00,
        0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, 0xfd, 0x62, 0x81, 0x00, 0xff, 0x3d, 0x88, 0xa8, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let p = ip(frame);
    assert!(
        p.l4_off > frame.len(),
        "the input no longer reproduces the finding"
    );
    assert_ne!(p.transport.kind, Kind::Ports);
}
