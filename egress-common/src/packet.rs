//! Header parsing shared by the TC classifier and host tests.
//!
//! The parser is generic over [`Reader`], so the same code runs in the kernel (reading the skb)
//! and on the host (reading a byte slice) where it gets unit tests and a fuzz target. Every loop
//! has a constant bound so the verifier can prove termination.
//!
//! What is parsed, and what the rest gets, is documented in `docs/design.md` ("Parsing").

use seq_macro::seq;

use crate::maps::{family, v4_mapped};

/// Reads `N` bytes at `off` from the start of the frame; `None` when they are not all there.
pub trait Reader {
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

impl Reader for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        let bytes = self.get(off..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// The DNS port, big-endian as the parsed ports are.
pub const DNS_PORT: [u8; 2] = 53u16.to_be_bytes();
/// Offsets in the TCP header: the sequence number, and the byte whose high nibble is the data
/// offset (header length in 32-bit words).
pub const TCP_SEQ_OFF: usize = 4;
/// Offset of the acknowledgment number in the TCP header.
pub const TCP_ACK_OFF: usize = 8;
pub const TCP_DOFF_OFF: usize = 12;

/// The lowercase name of a transport protocol number, for logs and records.
pub const fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    }
}

/// In-band VLAN tags (802.1Q / 802.1ad) skipped before giving up. Tags offloaded to skb
/// metadata (the usual case on egress) are not in the frame at all.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (fail-closed for denied destinations).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
// The unrolled walks below spell these bounds as literals (seq! needs them).
const _: () = assert!(MAX_VLAN_TAGS == 2 && MAX_IPV6_EXT_HEADERS == 8);

/// TCP flag bits in byte 13 of the TCP header.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// How far the transport part of an IP packet could be parsed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP with its ports (and TCP flags; 0 for UDP).
    Ports,
    /// A non-first fragment: no transport header, no ports.
    LaterFragment,
    /// Another protocol (ICMP, ESP, GRE, SCTP, "no next header", ...), in `proto`.
    Other,
    /// TCP/UDP whose header is cut short (a tiny first fragment or a truncated packet), or IPv6
    /// with more extension headers than [`MAX_IPV6_EXT_HEADERS`]: the ports are unknown.
    Unparsed,
}

/// The transport part of an IP packet. A plain struct whose fields are always initialized,
/// not an enum with payloads: LLVM copies enum payloads whole, uninitialized bytes included, and
/// the verifier rejects reading them ("R5 !read_ok").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    pub kind: Kind,
    pub proto: u8,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub tcp_flags: u8,
}

impl Transport {
    pub const LATER_FRAGMENT: Self = Self::bare(Kind::LaterFragment, 0);
    pub const UNPARSED: Self = Self::bare(Kind::Unparsed, 0);

    const fn bare(kind: Kind, proto: u8) -> Self {
        Self {
            kind,
            proto,
            sport: [0; 2],
            dport: [0; 2],
            tcp_flags: 0,
        }
    }

    pub const fn other(proto: u8) -> Self {
        Self::bare(Kind::Other, proto)
    }

    pub const fn ports(proto: u8, sport: [u8; 2], dport: [u8; 2], tcp_flags: u8) -> Self {
        Self {
            kind: Kind::Ports,
            proto,
            sport,
            dport,
            tcp_flags,
        }
    }
}

/// An IP packet's addresses (IPv4-mapped for IPv4) and transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub transport: Transport,
    /// Offset of the transport header from the start of the frame.
    pub l4_off: usize,
    /// Offset just past the IP packet, from its length field: an Ethernet frame may be padded
    /// beyond it (to 60 bytes) until the IP layer trims it. 0 when the length field is 0
    /// (a BIG TCP aggregate over 64 KiB): the packet ends with the frame.
    pub end: usize,
    /// A first fragment (more fragments follow): its transport payload is not the whole
    /// segment or datagram the receiver reassembles.
    pub more_fragments: bool,
}

/// What the frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    Ip(IpPacket),
}

/// Why a frame could not be parsed far enough to know its destination address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The Ethernet, VLAN or IP header is cut short.
    Truncated,
    /// More in-band VLAN tags than [`MAX_VLAN_TAGS`].
    TooManyVlanTags,
    /// The IP version nibble does not match the EtherType, or the IPv4 IHL is below 5.
    BadIpHeader,
}

/// Parses an Ethernet frame.
#[inline(always)]
pub fn parse_frame<R: Reader + ?Sized>(r: &R) -> Result<Frame, ParseError> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes(r.read::<2>(off).ok_or(ParseError::Truncated)?);
    // Unrolled (see the seq-macro note in Cargo.toml): up to MAX_VLAN_TAGS tags.
    seq!(_ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            off += 4;
            ethertype = u16::from_be_bytes(r.read::<2>(off).ok_or(ParseError::Truncated)?);
        }
    });
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(ParseError::TooManyVlanTags);
    }
    let l3 = off + 2;
    match ethertype {
        ETH_P_IP => parse_ipv4(r, l3).map(Frame::Ip),
        ETH_P_IPV6 => parse_ipv6(r, l3).map(Frame::Ip),
        _ => Ok(Frame::NotIp),
    }
}

/// Parses an IP packet that starts at offset 0 (no link-layer header), as socket-level
/// programs see it; the version nibble tells the family.
#[inline(always)]
pub fn parse_ip<R: Reader + ?Sized>(r: &R) -> Result<Frame, ParseError> {
    // The smallest IP header, not one byte: for a 1-byte read at offset 0, LLVM turns the
    // reader's `start + 1 <= end` into `end > start`, from which the verifier proves no
    // readable byte ("invalid access to packet, off=0 size=1, R1 offset is outside of the
    // packet").
    let v = r.read::<20>(0).ok_or(ParseError::Truncated)?;
    match v[0] >> 4 {
        4 => parse_ipv4(r, 0).map(Frame::Ip),
        6 => parse_ipv6(r, 0).map(Frame::Ip),
        _ => Ok(Frame::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4<R: Reader + ?Sized>(r: &R, l3: usize) -> Result<IpPacket, ParseError> {
    // version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol, checksum,
    // saddr, daddr: the fixed 20 bytes in one read.
    let h = r.read::<20>(l3).ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadIpHeader);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(ParseError::BadIpHeader);
    }
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let more_fragments = h[6] & 0x20 != 0;
    let proto = h[9];
    let saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
    let daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
    let transport = if frag_offset != 0 {
        Transport::LATER_FRAGMENT
    } else {
        parse_transport(r, l3 + ihl, proto)
    };
    Ok(IpPacket {
        family: family::V4,
        saddr,
        daddr,
        transport,
        l4_off: l3 + ihl,
        end: if total == 0 { 0 } else { l3 + total },
        more_fragments,
    })
}

#[inline(always)]
fn parse_ipv6<R: Reader + ?Sized>(r: &R, l3: usize) -> Result<IpPacket, ParseError> {
    let h = r.read::<40>(l3).ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::BadIpHeader);
    }
    let mut saddr = [0u8; 16];
    saddr.copy_from_slice(&h[8..24]);
    let mut daddr = [0u8; 16];
    daddr.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut more_fragments = false;
    // Unrolled (see the seq-macro note in Cargo.toml): up to MAX_IPV6_EXT_HEADERS headers.
    let transport = 'walk: {
        seq!(_ in 0..8 {
            match ext_step(r, next, off) {
                Ext::Header { next: n, off: o, more } => {
                    next = n;
                    off = o;
                    more_fragments |= more;
                }
                Ext::Done(t) => break 'walk t,
            }
        });
        // Past the bound: another extension header means the ports are unknown.
        match ext_step(r, next, off) {
            Ext::Header { .. } => Transport::UNPARSED,
            Ext::Done(t) => t,
        }
    };
    Ok(IpPacket {
        family: family::V6,
        saddr,
        daddr,
        transport,
        l4_off: off,
        more_fragments,
        end: match u16::from_be_bytes([h[4], h[5]]) as usize {
            0 => 0,
            payload => l3 + 40 + payload,
        },
    })
}

/// One step of the IPv6 extension-header walk.
enum Ext {
    /// An extension header: what follows it, where, and whether it is the fragment header of
    /// a first fragment.
    Header { next: u8, off: usize, more: bool },
    /// The walk ends with this transport.
    Done(Transport),
}

#[inline(always)]
fn ext_step<R: Reader + ?Sized>(r: &R, next: u8, off: usize) -> Ext {
    match next {
        // Hop-by-hop, routing, destination options, mobility, HIP, shim6, experimental: all
        // share the "next header, length in 8-octet units beyond the first" layout (RFC 8200
        // section 4, RFC 7045).
        0 | 43 | 60 | 135 | 139 | 140 | 253 | 254 => match r.read::<2>(off) {
            Some(e) => Ext::Header {
                next: e[0],
                off: off + (e[1] as usize + 1) * 8,
                more: false,
            },
            None => Ext::Done(Transport::UNPARSED),
        },
        // Authentication header: length in 4-octet units minus 2 (RFC 4302).
        51 => match r.read::<2>(off) {
            Some(e) => Ext::Header {
                next: e[0],
                off: off + (e[1] as usize + 2) * 4,
                more: false,
            },
            None => Ext::Done(Transport::UNPARSED),
        },
        // Fragment header (RFC 8200 section 4.5): a non-zero offset means no transport header
        // follows.
        44 => match r.read::<4>(off) {
            Some(e) if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 => {
                Ext::Done(Transport::LATER_FRAGMENT)
            }
            Some(e) => Ext::Header {
                next: e[0],
                off: off + 8,
                more: e[3] & 1 != 0,
            },
            None => Ext::Done(Transport::UNPARSED),
        },
        proto => Ext::Done(parse_transport(r, off, proto)),
    }
}

#[inline(always)]
fn parse_transport<R: Reader + ?Sized>(r: &R, l4: usize, proto: u8) -> Transport {
    match proto {
        IPPROTO_TCP => match r.read::<14>(l4) {
            Some(t) => Transport::ports(proto, [t[0], t[1]], [t[2], t[3]], t[13]),
            None => Transport::UNPARSED,
        },
        // The whole 8-byte UDP header must be there, not only the ports.
        IPPROTO_UDP => match r.read::<8>(l4) {
            Some(u) => Transport::ports(proto, [u[0], u[1]], [u[2], u[3]], 0),
            None => Transport::UNPARSED,
        },
        other => Transport::other(other),
    }
}

#[cfg(test)]
mod tests;
